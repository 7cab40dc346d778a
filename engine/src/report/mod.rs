//! `rkd-orch report RECIPE`: one self-contained HTML page (inline SVG figures, no external
//! file, script or font) with the plan, the tables, the figures and the provenance — what
//! a reader needs to trust a number and find where it came from.
//!
//! Every figure and pivot names the stages (and content keys) it comes from, so any number
//! on the page can be traced to `runs/cache/<key>/` and to the recipe's file by its hash.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write;
use std::path::Path;

use serde_json::Value;

use crate::plot::{self, Figure, Filters, PlotError};
use crate::results::pivot::{self, PivotSpec};
use crate::results::select;
use crate::results::table;
use crate::results::{metric_order, Direction, ResultsError, RunOverrides};
use crate::store::{StageRecord, Store};

mod page;
use page::{esc, overrides_html, Page, STYLE};

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error(transparent)]
    Results(#[from] ResultsError),
    #[error(transparent)]
    Plot(#[from] PlotError),
    #[error("cannot write {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// A file name for a recipe's report: its name with anything unusual replaced.
pub fn file_stem(recipe: &str) -> String {
    recipe
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Writes the report and returns a one-line summary of what is in it.
pub fn write(store: &Store, recipe: &str, db: &Path, out: &Path) -> Result<String, ReportError> {
    let (html, summary) = build(store, recipe, db)?;
    let io = |source| ReportError::Io {
        path: out.display().to_string(),
        source,
    };
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    std::fs::write(out, html).map_err(io)?;
    Ok(summary)
}

/// What the page shows of one stage's manifest.
#[derive(Default)]
struct Manifest {
    data_kind: Option<String>,
    fingerprint: Option<String>,
    seed: Option<i64>,
    inputs: Vec<(String, String)>,
}

fn manifest_of(json: &str) -> Manifest {
    let v: Value = serde_json::from_str(json).unwrap_or(Value::Null);
    let source = &v["config"]["data"]["source"];
    Manifest {
        data_kind: source["kind"].as_str().map(String::from),
        fingerprint: source["fingerprint"].as_str().map(String::from),
        seed: v["config"]["seed"].as_i64(),
        inputs: v["inputs"]
            .as_object()
            .map(|m| {
                m.iter()
                    .map(|(role, key)| (role.clone(), key.as_str().unwrap_or("").to_string()))
                    .collect()
            })
            .unwrap_or_default(),
    }
}

/// The metric a sweep is judged by: recall@1 where the stages have it, else their first
/// metric where higher is better (a probe's accuracy). Training losses are in the curves,
/// and diagnostics (`queries`, `superclass/inertia`) judge nothing.
fn main_metric(stages: &[&StageRecord]) -> Option<String> {
    let mut names: Vec<&str> = stages
        .iter()
        .flat_map(|s| s.metrics.iter().map(|(m, _)| m.as_str()))
        .filter(|m| Direction::of(m) == Direction::Higher)
        .collect();
    names.sort_by_key(|m| metric_order(m));
    names.dedup();
    if names.contains(&"recall@1") {
        Some("recall@1".into())
    } else {
        names.first().map(|m| m.to_string())
    }
}

pub fn build(store: &Store, recipe: &str, db: &Path) -> Result<(String, String), ReportError> {
    let stages = crate::results::load(store, recipe, None)?;
    let inv = store.invocation(recipe).map_err(ResultsError::from)?;
    let overrides = inv.as_ref().map(RunOverrides::of).unwrap_or_default();
    // Every figure names the recipe's hash and what its run overrode.
    let stamp = |fig: &mut Figure| {
        fig.recipe_sha256 = inv.as_ref().map(|i| i.recipe_sha256.clone());
        fig.overrides = overrides.clone();
    };
    let keys: Vec<&str> = stages.iter().map(|s| s.key.as_str()).collect();
    let manifests: HashMap<String, Manifest> = store
        .manifests(&keys)
        .map_err(ResultsError::from)?
        .into_iter()
        .map(|(k, m)| (k, manifest_of(&m)))
        .collect();
    let name_of: HashMap<&str, &str> = stages
        .iter()
        .map(|s| (s.key.as_str(), s.stage.as_str()))
        .collect();
    let mut page = Page {
        html: String::new(),
        figures: 0,
        tables: 0,
    };
    let done = stages
        .iter()
        .filter(|s| s.status.as_deref() == Some("done"))
        .count();
    let failed = stages
        .iter()
        .filter(|s| s.status.as_deref() == Some("failed"))
        .count();

    let _ = write!(
        page.html,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>rkd-orch report: {r}</title><style>{STYLE}</style></head><body>\n<h1>Recipe <code>{r}</code></h1>\n",
        r = esc(recipe)
    );
    page.p(&format!(
        "{} stages: {done} done, {failed} failed, {} not run. Generated by rkd-orch {} from <code>{}</code>.",
        stages.len(),
        stages.len() - done - failed,
        env!("CARGO_PKG_VERSION"),
        esc(&db.display().to_string())
    ));
    if let Some(note) = overrides.note() {
        let class = if overrides.is_smoke() {
            "banner smoke"
        } else {
            "banner"
        };
        let _ = writeln!(page.html, "<p class=\"{class}\">{}</p>", esc(&note));
    }
    page.html.push_str("<nav><a href=\"#provenance\">Provenance</a><a href=\"#results\">Results</a><a href=\"#sweeps\">Sweeps</a><a href=\"#curves\">Curves</a><a href=\"#plan\">Plan</a><a href=\"#artifacts\">Artifacts</a></nav>\n");

    // Provenance.
    page.h2("provenance", "Provenance");
    page.html.push_str("<table><tbody>");
    let mut row = |k: &str, v: String| {
        let _ = write!(page.html, "<tr><th>{}</th><td>{v}</td></tr>", esc(k));
    };
    if let Some(i) = &inv {
        row(
            "recipe file",
            format!("<code>{}</code>", esc(&i.recipe_file)),
        );
        row(
            "recipe sha256",
            format!("<code>{}</code>", esc(&i.recipe_sha256)),
        );
        row("engine version (run)", esc(&i.engine_version));
        if let Some(path) = &i.recipe_path {
            row("recipe path", format!("<code>{}</code>", esc(path)));
        }
        row("command", format!("<code>{}</code>", esc(&i.command)));
        row(
            "overrides",
            match &i.sets {
                None => "not recorded (a run before schema version 3, or a rebuilt database)"
                    .to_string(),
                Some(s) if s.is_empty() => "none: the recipe file as written".to_string(),
                Some(_) => format!(
                    "<code>{}</code>{}",
                    esc(&overrides.command_text()),
                    if overrides.is_smoke() {
                        " — <b>smoke run</b>: changes the scale (epochs, data limits, …)"
                    } else {
                        ""
                    }
                ),
            },
        );
        row(
            "run",
            format!(
                "#{} started {}, finished {}, {}",
                i.id,
                esc(&i.started_at),
                esc(i.finished_at.as_deref().unwrap_or("(not finished)")),
                esc(&i.status)
            ),
        );
    }
    row("engine version (report)", esc(env!("CARGO_PKG_VERSION")));
    row(
        "results schema",
        format!(
            "version {}",
            store.schema_version().map_err(ResultsError::from)?
        ),
    );
    page.html.push_str("</tbody></table>\n");

    // Data fingerprints: the content of each data set, whatever its path.
    let mut data: BTreeMap<(String, String), Vec<&str>> = BTreeMap::new();
    for s in &stages {
        if let Some(m) = manifests.get(&s.key) {
            if let (Some(k), Some(f)) = (&m.data_kind, &m.fingerprint) {
                data.entry((k.clone(), f.clone()))
                    .or_default()
                    .push(&s.stage);
            }
        }
    }
    let mut t = crate::results::Table::new(vec![
        "data kind".into(),
        "content fingerprint".into(),
        "used by".into(),
    ]);
    for ((k, f), users) in &data {
        t.rows.push(vec![
            crate::results::format::Cell::text(k.clone()),
            crate::results::format::Cell::text(f.clone()),
            crate::results::format::Cell::text(format!(
                "{} stages: {}",
                users.len(),
                pivot::summarise(&users.iter().map(|u| u.to_string()).collect::<Vec<_>>())
            )),
        ]);
    }
    page.table(
        &t,
        "Data sets, by the fingerprint of their content (part of every stage's key)",
    );

    // Seeds: the swept ones, and each training stage's resolved seed.
    let mut swept: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for s in &stages {
        for p in s.params.iter().filter(|p| p.is_seed()) {
            let v = swept.entry(format!("{}.{}", p.origin, p.path)).or_default();
            if !v.contains(&p.value) {
                v.push(p.value.clone());
            }
        }
    }
    let swept_text = if swept.is_empty() {
        "no seed is swept (each training stage has one seed, below)".to_string()
    } else {
        swept
            .iter()
            .map(|(k, v)| format!("<code>{}</code> ∈ {{{}}}", esc(k), esc(&v.join(", "))))
            .collect::<Vec<_>>()
            .join("; ")
    };
    page.p(&format!(
        "Seeds swept: {swept_text}. Results marked mean ± std average over these."
    ));
    let mut t =
        crate::results::Table::new(vec!["training stage".into(), "seed".into(), "key".into()]);
    for s in stages
        .iter()
        .filter(|s| matches!(s.kind.as_str(), "train" | "distill"))
    {
        if let Some(seed) = manifests.get(&s.key).and_then(|m| m.seed) {
            t.rows.push(vec![
                crate::results::format::Cell::text(s.stage.clone()),
                crate::results::format::Cell::int(seed),
                crate::results::format::Cell::text(s.key.clone()),
            ]);
        }
    }
    if !t.rows.is_empty() {
        page.html
            .push_str("<details><summary>The seed of every training stage</summary>");
        page.supplement(&t, "Resolved seeds (from each stage's manifest)");
        page.html.push_str("</details>\n");
    }

    // Results: the stages × metrics table.
    page.h2("results", "Results");
    let rows = store.results(Some(recipe)).map_err(ResultsError::from)?;
    let order = BTreeMap::from([(
        recipe.to_string(),
        store
            .recipe_stage_order(recipe)
            .map_err(ResultsError::from)?,
    )]);
    match table::tables(&rows, &order).into_iter().next() {
        Some((_, t)) => {
            page.tables += 1;
            let caption = format!(
                "<b>Table {}.</b> Final metrics of every stage (train loss: last epoch's mean); keys are the first 12 characters of each stage's content key{}",
                page.tables,
                overrides_html(&overrides)
            );
            page.table_with(&t, &caption);
        }
        None => page.p("No stage has finished yet."),
    }

    // Sweeps: per declared stage with swept parameters, a pivot and a figure.
    page.h2("sweeps", "Sweeps");
    let mut bases: Vec<&str> = Vec::new();
    for s in &stages {
        if !bases.contains(&s.base.as_str()) {
            bases.push(&s.base);
        }
    }
    let mut any_sweep = false;
    let mut swept_bases: Vec<String> = Vec::new();
    for base in &bases {
        let mine: Vec<&StageRecord> = stages.iter().filter(|s| s.base == *base).collect();
        let Some(metric) = main_metric(&mine) else {
            continue;
        };
        let with: Vec<&StageRecord> = mine
            .iter()
            .copied()
            .filter(|s| s.metric(&metric).is_some())
            .collect();
        let varying = select::varying(&with);
        if varying.is_empty() {
            continue;
        }
        any_sweep = true;
        let _ = writeln!(page.html, "<h3>{}</h3>", esc(base));
        let by: Vec<String> = varying.iter().map(|d| d.name.clone()).collect();
        let spec = PivotSpec {
            metric: metric.clone(),
            by: by.clone(),
            filters: Vec::new(),
            stage: Some(base.to_string()),
            direction: None,
        };
        match pivot::pivot(recipe, &stages, &spec) {
            Ok(mut p) => {
                p.overrides = overrides.clone();
                page.pivot(&p)
            }
            Err(e) => page.p(&format!("No table: {}", esc(&e.to_string()))),
        }
        let f = Filters {
            stage: Some(base.to_string()),
            filters: Vec::new(),
        };
        let fig = plot::sweep(recipe, &stages, &metric, &by[0], &by[1..], &f);
        match fig {
            Ok(mut fig) => {
                stamp(&mut fig);
                page.figure(&fig)?;
            }
            Err(e) => page.p(&format!("No figure: {}", esc(&e.to_string()))),
        }
        if with
            .iter()
            .any(|s| s.metrics.iter().any(|(m, _)| m.starts_with("recall@")))
        {
            match plot::recall(recipe, &stages, &by, &f) {
                Ok(mut fig) => {
                    stamp(&mut fig);
                    fig.title = format!("{recipe}: recall@K of {base}");
                    page.figure(&fig)?;
                }
                Err(e) => page.p(&format!("No recall@K figure: {}", esc(&e.to_string()))),
            }
        }
        swept_bases.push(base.to_string());
    }
    if !any_sweep {
        page.p(
            "No swept parameter: every declared stage has a single variant (or only seeds vary).",
        );
    }

    // Curves: recall@K and training losses.
    page.h2("curves", "Curves");
    // Recall@K of the stages outside sweeps (those are drawn with their sweep above).
    let with_recall: Vec<&StageRecord> = stages
        .iter()
        .filter(|s| !swept_bases.contains(&s.base))
        .filter(|s| s.metrics.iter().any(|(m, _)| m.starts_with("recall@")))
        .collect();
    if !with_recall.is_empty() && with_recall.len() <= plot::MAX_SERIES {
        let unswept: Vec<StageRecord> = with_recall.iter().map(|s| (*s).clone()).collect();
        match plot::recall(recipe, &unswept, &[], &Filters::default()) {
            Ok(mut fig) => {
                stamp(&mut fig);
                if !swept_bases.is_empty() {
                    fig.title = format!("{recipe}: recall@K of the stages outside sweeps");
                }
                page.figure(&fig)?;
            }
            Err(e) => page.p(&format!("No recall@K figure: {}", esc(&e.to_string()))),
        }
    } else if !with_recall.is_empty() {
        page.p(&format!(
            "{} evaluated stages outside sweeps: too many lines for one figure; draw a subset with <code>rkd-orch plot {} --recall --stage NAME</code>.",
            with_recall.len(),
            esc(recipe)
        ));
    }
    let trained: Vec<&str> = stages
        .iter()
        .filter(|s| matches!(s.kind.as_str(), "train" | "distill"))
        .map(|s| s.key.as_str())
        .collect();
    let epochs = store.epoch_metrics(&trained).map_err(ResultsError::from)?;
    let curve_groups: Vec<Filters> = if trained.len() <= plot::MAX_SERIES {
        vec![Filters::default()]
    } else {
        bases
            .iter()
            .filter(|b| {
                stages
                    .iter()
                    .any(|s| s.base == **b && epochs.contains_key(&s.key))
            })
            .map(|b| Filters {
                stage: Some(b.to_string()),
                filters: Vec::new(),
            })
            .collect()
    };
    if !trained.is_empty() {
        for f in curve_groups {
            // Only the weighted total: per-term curves of one stage are `plot --curves --stage`.
            match plot::curves(recipe, &stages, &epochs, Some("loss/total"), &f) {
                Ok(mut fig) => {
                    stamp(&mut fig);
                    page.figure(&fig)?;
                }
                Err(e) => page.p(&format!(
                    "No training-curve figure{}: {}",
                    f.stage.map(|s| format!(" for {s}")).unwrap_or_default(),
                    esc(&e.to_string())
                )),
            }
        }
    }

    // The plan: every stage with its kind, key, inputs and parameters.
    page.h2("plan", "Plan");
    let mut t = crate::results::Table::new(
        [
            "stage",
            "kind",
            "key",
            "status",
            "wall s",
            "device",
            "inputs",
            "parameters",
        ]
        .map(String::from)
        .to_vec(),
    );
    use crate::results::format::Cell;
    let all_refs: Vec<&StageRecord> = stages.iter().collect();
    let all_dims = select::dims(&all_refs);
    let param_names: HashMap<(&str, &str), String> = all_dims
        .iter()
        .filter_map(|d| match &d.key {
            select::DimKey::Param { origin, path } => {
                Some(((origin.as_str(), path.as_str()), d.name.clone()))
            }
            _ => None,
        })
        .collect();
    for s in &stages {
        let m = manifests.get(&s.key);
        let inputs: Vec<String> = m
            .map(|m| {
                m.inputs
                    .iter()
                    .map(|(role, key)| {
                        let who = name_of
                            .get(key.as_str())
                            .copied()
                            .unwrap_or(&key[..12.min(key.len())]);
                        format!("{role}={who}")
                    })
                    .collect()
            })
            .unwrap_or_default();
        let params: Vec<String> = s
            .params
            .iter()
            .map(|p| {
                let name = param_names
                    .get(&(p.origin.as_str(), p.path.as_str()))
                    .map_or(p.label.as_str(), String::as_str);
                format!("{name}={}", p.value)
            })
            .collect();
        let kind = if s.declared_kind == s.kind {
            s.kind.clone()
        } else {
            format!("{} ({})", s.declared_kind, s.kind)
        };
        t.rows.push(vec![
            Cell::text(s.stage.clone()),
            Cell::text(kind),
            Cell::text(s.key.clone()),
            Cell::text(s.status.clone().unwrap_or_else(|| "not run".into())),
            match s.wall_s {
                Some(w) => Cell::number(w, format!("{w:.2}")),
                None => Cell::missing(),
            },
            Cell::text(s.device.clone().unwrap_or_default()),
            Cell::text(inputs.join(" ")),
            Cell::text(params.join(" ")),
        ]);
    }
    // What each parameter label sets, once, instead of the full path in every row.
    let refs: Vec<&StageRecord> = stages.iter().collect();
    let legend: Vec<String> = select::dims(&refs)
        .iter()
        .filter_map(|d| match &d.key {
            select::DimKey::Param { origin, path } => Some(format!(
                "<code>{}</code> = <code>{}</code> of <code>{}</code>'s matrix",
                esc(&d.name),
                esc(path),
                esc(origin)
            )),
            _ => None,
        })
        .collect();
    if !legend.is_empty() {
        page.p(&format!("Parameters: {}.", legend.join("; ")));
    }
    let open = if stages.len() <= 200 { " open" } else { "" };
    let _ = write!(
        page.html,
        "<details{open}><summary>{} stages in plan order</summary>",
        stages.len()
    );
    page.supplement(&t, "The plan: each stage's content key is the directory runs/cache/<key>/ holding its manifest, artifacts and result");
    page.html.push_str("</details>\n");

    // Artifacts.
    page.h2("artifacts", "Artifacts");
    let arts = store.artifacts(&keys).map_err(ResultsError::from)?;
    let mut t = crate::results::Table::new(
        ["stage", "file", "bytes", "sha256"]
            .map(String::from)
            .to_vec(),
    );
    for s in &stages {
        for (file, sha, bytes) in arts.get(&s.key).into_iter().flatten() {
            t.rows.push(vec![
                Cell::text(s.stage.clone()),
                Cell::text(format!("cache/{}/{file}", s.key)),
                bytes.map_or_else(Cell::missing, Cell::int),
                Cell::text(sha.clone()),
            ]);
        }
    }
    if t.rows.is_empty() {
        page.p("No artifact recorded (run the recipe again with this version to record them).");
    } else {
        let _ = write!(
            page.html,
            "<details><summary>{} files</summary>",
            t.rows.len()
        );
        page.supplement(
            &t,
            "Artifacts, relative to the runs directory, with the checksums the cache verifies",
        );
        page.html.push_str("</details>\n");
    }
    page.p(&format!(
        "Reproduce: <code>rkd-orch run {}</code> (cached stages are not recomputed); query: <code>rkd-orch results {}</code>, <code>rkd-orch query \"SELECT * FROM results WHERE recipe = '{}'\"</code>.",
        esc(inv.as_ref().map_or(recipe, |i| i.recipe_file.as_str())),
        esc(recipe),
        esc(recipe)
    ));
    page.html.push_str("</body></html>\n");
    let summary = format!(
        "report of {recipe}: {} stages, {} tables, {} figures",
        stages.len(),
        page.tables,
        page.figures
    );
    Ok((page.html, summary))
}
