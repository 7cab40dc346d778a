//! Figures of a recipe's results: a metric against a swept parameter (one line per value of
//! another, ± std across seeds as error bars), training curves, and recall@K curves.
//!
//! A [`Figure`] is plain data built from the store (testable without drawing); `draw`
//! renders it with plotters to PNG or SVG. Every figure carries the stage keys its numbers
//! come from: printed under the plot, and in full in the file's metadata (a PNG `tEXt`
//! chunk, the SVG's `<desc>`), so any figure can be traced to its stages and recipe.

mod draw;

use std::collections::HashMap;

use crate::results::pivot::{self, Pivot, PivotSpec};
use crate::results::select;
use crate::results::{Direction, ResultsError, RunOverrides};
use crate::store::{numeric, StageRecord};

pub use draw::{save, svg_string, xml_escape, DEFAULT_SIZE};

#[derive(Debug, thiserror::Error)]
pub enum PlotError {
    #[error(transparent)]
    Results(#[from] ResultsError),
    #[error("cannot draw the figure: {0}")]
    Draw(String),
    #[error("cannot write {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Usage(String),
}

#[derive(Debug, Clone, PartialEq)]
pub enum XAxis {
    /// Positions are the values; `integer`: ticks only at whole numbers (epochs).
    Numeric { integer: bool },
    /// Positions 0, 1, …, labelled with these names (`random`, `class_balanced`; K = 1, 2, 4).
    Categorical(Vec<String>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Point {
    pub x: f64,
    pub y: f64,
    /// Half-height of the error bar (the std across seeds).
    pub err: Option<f64>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// The legend's entry; series with the same label in different panels are one colour.
    pub label: String,
    pub points: Vec<Point>,
    /// The small multiple it is drawn in (`p = 2`); `None`: one plot for every series.
    pub panel: Option<String>,
}

/// Above this many lines one plot is a tangle: recall@K curves grouped by two or more
/// parameters are drawn as small multiples, one panel per value of the first.
pub const PANEL_ABOVE: usize = 6;

#[derive(Debug, Clone)]
pub struct Figure {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub x_axis: XAxis,
    pub series: Vec<Series>,
    /// What the legend's labels are values of (`p`, `stage`).
    pub legend_title: Option<String>,
    /// Lines join the points (a trend over x); `false`: dots only, each labelled with its
    /// value (one number per category, e.g. a metric per stage).
    pub connect: bool,
    pub recipe: String,
    pub recipe_sha256: Option<String>,
    /// What the run behind the numbers overrode: drawn under the title (a smoke run in red).
    pub overrides: RunOverrides,
    /// (stage name, key) of every stage drawn.
    pub sources: Vec<(String, String)>,
}

impl Figure {
    /// Everything needed to find the figure's numbers again: the recipe (and the hash of
    /// its file) and each stage with its full key.
    pub fn provenance(&self) -> String {
        let mut s = format!(
            "rkd-orch {} figure of recipe {}",
            env!("CARGO_PKG_VERSION"),
            self.recipe
        );
        if let Some(sha) = &self.recipe_sha256 {
            s.push_str(&format!(" (recipe sha256 {sha})"));
        }
        if let Some(note) = self.overrides.note() {
            s.push_str(&format!("; {note}"));
        }
        s.push_str(&format!("; {} stages:", self.sources.len()));
        for (name, key) in &self.sources {
            s.push_str(&format!("\n{name} {key}"));
        }
        s
    }
}

/// Filters shared by every figure.
#[derive(Debug, Clone, Default)]
pub struct Filters {
    pub stage: Option<String>,
    pub filters: Vec<(String, String)>,
}

/// More lines than this make an unreadable legend; narrow with `--stage`/`--where`/`--by`.
pub const MAX_SERIES: usize = 20;

fn too_many(n: usize, what: &str) -> PlotError {
    PlotError::Usage(format!(
        "{n} {what} would make {n} lines (at most {MAX_SERIES} are legible): narrow with --stage NAME or --where PARAM=VALUE{}",
        if what == "stages" { ", or group them with --by PARAM" } else { "" }
    ))
}

fn x_axis_of(values: &[String]) -> (XAxis, Vec<f64>) {
    let nums: Option<Vec<f64>> = values.iter().map(|v| numeric(v)).collect();
    match nums {
        // Three or more numbers: spacing by value shows the trend; two are clearer as
        // labelled categories.
        Some(n) if n.len() >= 3 => (
            XAxis::Numeric {
                integer: n.iter().all(|v| v.fract() == 0.0),
            },
            n,
        ),
        _ => (
            XAxis::Categorical(values.to_vec()),
            (0..values.len()).map(|i| i as f64).collect(),
        ),
    }
}

fn sources_of(p: &Pivot) -> Vec<(String, String)> {
    p.cells
        .iter()
        .flatten()
        .flatten()
        .flat_map(|c| c.stages.iter().cloned())
        .collect()
}

fn y_label_of(p: &Pivot) -> String {
    if p.averaged_over.is_empty() {
        p.metric.clone()
    } else {
        format!(
            "{} (mean ± std over {})",
            p.metric,
            p.averaged_over.join(", ")
        )
    }
}

/// A legend label and the pivot cells along the x axis.
type Line<'a> = (String, Vec<Option<&'a pivot::PivotCell>>);

/// A metric against a swept parameter `x`, one line per combination of the `by`
/// parameters; seeds averaged (error bars ± std).
pub fn sweep(
    recipe: &str,
    stages: &[StageRecord],
    metric: &str,
    x: &str,
    by: &[String],
    f: &Filters,
) -> Result<Figure, PlotError> {
    let mut all_by = by.to_vec();
    all_by.push(x.to_string());
    let p = pivot::pivot(
        recipe,
        stages,
        &PivotSpec {
            metric: metric.to_string(),
            by: all_by,
            filters: f.filters.clone(),
            stage: f.stage.clone(),
            direction: Some(Direction::None),
        },
    )?;
    // With one axis the pivot has rows only: a single line over the row values.
    let (xs, series_of): (Vec<String>, Vec<Line>) = match &p.col_dim {
        Some(_) => (
            p.cols.clone(),
            p.rows
                .iter()
                .enumerate()
                .map(|(r, vals)| {
                    let label = if p.row_dims.len() == 1 {
                        vals[0].clone()
                    } else {
                        p.row_dims
                            .iter()
                            .zip(vals)
                            .map(|(d, v)| format!("{}={v}", d.name))
                            .collect::<Vec<_>>()
                            .join(", ")
                    };
                    (label, p.cells[r].iter().map(Option::as_ref).collect())
                })
                .collect(),
        ),
        None => (
            p.rows.iter().map(|r| r[0].clone()).collect(),
            vec![(
                metric.to_string(),
                p.cells.iter().map(|row| row[0].as_ref()).collect(),
            )],
        ),
    };
    if series_of.len() > MAX_SERIES {
        return Err(too_many(series_of.len(), "parameter combinations"));
    }
    let (x_axis, positions) = x_axis_of(&xs);
    let series = series_of
        .into_iter()
        .map(|(label, cells)| Series {
            label,
            panel: None,
            points: cells
                .iter()
                .zip(&positions)
                .filter_map(|(c, &x)| {
                    c.map(|c| Point {
                        x,
                        y: c.mean,
                        err: c.std,
                    })
                })
                .collect(),
        })
        .collect();
    let x_name = p.col_dim.as_ref().unwrap_or(&p.row_dims[0]).name.clone();
    // Declared stages have no order: one dot each, not a line through them.
    let per_stage = p.col_dim.is_none() && p.row_dims[0].key == select::DimKey::Stage;
    let legend_title = p.col_dim.as_ref().map(|_| {
        p.row_dims
            .iter()
            .map(|d| d.name.clone())
            .collect::<Vec<_>>()
            .join(", ")
    });
    Ok(Figure {
        title: if per_stage {
            format!("{recipe}: {metric} per stage")
        } else {
            format!("{recipe}: {metric} vs {x_name}")
        },
        x_label: param_label(stages, &x_name),
        y_label: y_label_of(&p),
        // Categories even for numeric-looking stage names.
        x_axis: if per_stage {
            XAxis::Categorical(xs.clone())
        } else {
            x_axis
        },
        series,
        legend_title,
        connect: !per_stage,
        recipe: recipe.to_string(),
        recipe_sha256: None,
        overrides: RunOverrides::default(),
        sources: sources_of(&p),
    })
}

/// `p (loss.cc.p)`: the label people use and the recipe path it sets.
fn param_label(stages: &[StageRecord], name: &str) -> String {
    let path = stages
        .iter()
        .flat_map(|s| &s.params)
        .find(|p| p.label == name || format!("{}.{}", p.origin, p.label) == name)
        .map(|p| p.path.clone());
    match path {
        Some(path) if path != name => format!("{name} ({path})"),
        _ => name.to_string(),
    }
}

/// Training curves: the per-epoch mean of `metric` (default `loss/total`) for each training
/// stage; for a single stage, every loss term of it.
pub fn curves(
    recipe: &str,
    stages: &[StageRecord],
    epochs: &HashMap<String, crate::store::EpochRows>,
    metric: Option<&str>,
    f: &Filters,
) -> Result<Figure, PlotError> {
    let trained: Vec<&StageRecord> = stages
        .iter()
        .filter(|s| epochs.get(&s.key).is_some_and(|e| !e.is_empty()))
        .collect();
    if trained.is_empty() {
        return Err(PlotError::Usage(format!(
            "no stage of `{recipe}` has training curves (train and distill stages record one loss per epoch)"
        )));
    }
    let chosen = select::filter(trained, f.stage.as_deref(), &f.filters)?;
    let mut series = Vec::new();
    let (title, y_label);
    if chosen.len() == 1 && metric.is_none() {
        // One stage: each term of its loss mix, and the weighted total.
        let s = chosen[0];
        let mut names: Vec<&str> = epochs[&s.key].iter().map(|(_, n, _)| n.as_str()).collect();
        names.sort_by_key(|n| (*n != "loss/total", n.to_string()));
        names.dedup();
        for n in names {
            series.push(Series {
                panel: None,
                label: n.trim_start_matches("loss/").to_string(),
                points: epochs[&s.key]
                    .iter()
                    .filter(|(_, m, _)| m == n)
                    .map(|(e, _, v)| Point {
                        x: *e as f64,
                        y: *v,
                        err: None,
                    })
                    .collect(),
            });
        }
        title = format!("{recipe}: training loss of {}", s.stage);
        y_label = "loss (mean over the epoch's steps; terms unweighted)".to_string();
    } else {
        let metric = metric.unwrap_or("loss/total");
        if chosen.len() > MAX_SERIES {
            return Err(too_many(chosen.len(), "stages"));
        }
        for s in &chosen {
            let points: Vec<Point> = epochs[&s.key]
                .iter()
                .filter(|(_, m, _)| m == metric)
                .map(|(e, _, v)| Point {
                    x: *e as f64,
                    y: *v,
                    err: None,
                })
                .collect();
            if !points.is_empty() {
                series.push(Series {
                    label: s.stage.clone(),
                    points,
                    panel: None,
                });
            }
        }
        if series.is_empty() {
            return Err(PlotError::Usage(format!(
                "no per-epoch `{metric}` in the selected stages; per-epoch metrics are loss/total and loss/<term>"
            )));
        }
        title = format!("{recipe}: {metric} per epoch");
        y_label = format!("{metric} (mean over the epoch's steps)");
    }
    Ok(Figure {
        title,
        x_label: "epoch".into(),
        y_label,
        x_axis: XAxis::Numeric { integer: true },
        legend_title: Some(if chosen.len() == 1 { "term" } else { "stage" }.into()),
        series,
        connect: true,
        recipe: recipe.to_string(),
        recipe_sha256: None,
        overrides: RunOverrides::default(),
        sources: chosen
            .iter()
            .map(|s| (s.stage.clone(), s.key.clone()))
            .collect(),
    })
}

/// Recall@K against K: one line per evaluated stage, or per combination of `by` parameters
/// (mean ± std over seeds).
pub fn recall(
    recipe: &str,
    stages: &[StageRecord],
    by: &[String],
    f: &Filters,
) -> Result<Figure, PlotError> {
    let mut ks: Vec<usize> = stages
        .iter()
        .flat_map(|s| &s.metrics)
        .filter_map(|(m, _)| m.strip_prefix("recall@")?.parse().ok())
        .collect();
    ks.sort();
    ks.dedup();
    if ks.is_empty() {
        return Err(PlotError::Usage(format!(
            "no stage of `{recipe}` has recall@K metrics (evaluate and transfer stages do)"
        )));
    }
    let labels: Vec<String> = ks.iter().map(|k| k.to_string()).collect();
    let mut series: Vec<Series> = Vec::new();
    let mut sources: Vec<(String, String)> = Vec::new();
    let mut legend_title = Some("stage".to_string());
    let mut y_label = "recall@K".to_string();
    if by.is_empty() {
        let with: Vec<&StageRecord> = stages
            .iter()
            .filter(|s| s.metrics.iter().any(|(m, _)| m.starts_with("recall@")))
            .collect();
        let chosen = select::filter(with, f.stage.as_deref(), &f.filters)?;
        if chosen.len() > MAX_SERIES {
            return Err(too_many(chosen.len(), "stages"));
        }
        for s in chosen {
            series.push(Series {
                label: s.stage.clone(),
                panel: None,
                points: ks
                    .iter()
                    .enumerate()
                    .filter_map(|(i, k)| {
                        s.metric(&format!("recall@{k}")).map(|y| Point {
                            x: i as f64,
                            y,
                            err: None,
                        })
                    })
                    .collect(),
            });
            sources.push((s.stage.clone(), s.key.clone()));
        }
    } else {
        // The same grouping as `results --metric recall@K --by …`, once per K.
        let mut index: HashMap<String, usize> = HashMap::new();
        // Each series' values of the grouping parameters, and their names.
        let mut values: Vec<Vec<String>> = Vec::new();
        let mut names: Vec<String> = Vec::new();
        for (i, k) in ks.iter().enumerate() {
            let p = match pivot::pivot(
                recipe,
                stages,
                &PivotSpec {
                    metric: format!("recall@{k}"),
                    by: by.to_vec(),
                    filters: f.filters.clone(),
                    stage: f.stage.clone(),
                    direction: Some(Direction::None),
                },
            ) {
                Ok(p) => p,
                Err(ResultsError::NoMetric { .. }) => continue,
                Err(e) => return Err(e.into()),
            };
            names = p
                .row_dims
                .iter()
                .chain(p.col_dim.iter())
                .map(|d| d.name.clone())
                .collect();
            legend_title = Some(names.join(", "));
            if !p.averaged_over.is_empty() {
                y_label = format!("recall@K (mean ± std over {})", p.averaged_over.join(", "));
            }
            for (r, vals) in p.rows.iter().enumerate() {
                for (c, cell) in p.cells[r].iter().enumerate() {
                    let Some(cell) = cell else { continue };
                    let mut key: Vec<String> = vals.clone();
                    if p.col_dim.is_some() {
                        key.push(p.cols[c].clone());
                    }
                    let label = key.join(", ");
                    let at = *index.entry(label.clone()).or_insert_with(|| {
                        series.push(Series {
                            label,
                            points: Vec::new(),
                            panel: None,
                        });
                        values.push(key.clone());
                        series.len() - 1
                    });
                    series[at].points.push(Point {
                        x: i as f64,
                        y: cell.mean,
                        err: cell.std,
                    });
                    for s in &cell.stages {
                        if !sources.contains(s) {
                            sources.push(s.clone());
                        }
                    }
                }
            }
        }
        if series.len() > MAX_SERIES {
            return Err(too_many(series.len(), "parameter combinations"));
        }
        if series.len() > PANEL_ABOVE && names.len() >= 2 {
            for (s, v) in series.iter_mut().zip(&values) {
                s.panel = Some(format!("{} = {}", names[0], v[0]));
                s.label = v[1..].join(", ");
            }
            legend_title = Some(names[1..].join(", "));
        }
    }
    Ok(Figure {
        title: format!("{recipe}: recall@K"),
        x_label: "K (neighbours retrieved)".into(),
        y_label,
        x_axis: XAxis::Categorical(labels),
        series,
        legend_title,
        connect: true,
        recipe: recipe.to_string(),
        recipe_sha256: None,
        overrides: RunOverrides::default(),
        sources,
    })
}

/// Which figure `rkd-orch plot` draws.
#[derive(Debug, Clone)]
pub enum Request {
    /// A metric against `x` (default: the first swept parameter that is not a seed), one
    /// line per value of `by` (default: the other swept parameters).
    Sweep {
        metric: String,
        x: Option<String>,
        by: Vec<String>,
    },
    /// Training curves (per-epoch loss).
    Curves { metric: Option<String> },
    /// Recall@K against K.
    Recall { by: Vec<String> },
}

/// What a sweep figure shows when the user leaves it open: the declared stage whose
/// variants differ (if several do, the user must choose), the first of its swept
/// parameters on the x axis, one line per value of the others.
fn sweep_defaults(
    stages: &[StageRecord],
    metric: &str,
    x: Option<&str>,
    by: &[String],
    f: &Filters,
) -> Result<(String, Vec<String>, Filters), PlotError> {
    let with: Vec<&StageRecord> = stages
        .iter()
        .filter(|s| s.metric(metric).is_some())
        .collect();
    let mut chosen = select::filter(with, f.stage.as_deref(), &f.filters)?;
    let mut f = f.clone();
    if let Some(x) = x {
        let x_dim = select::resolve(&chosen, x)?;
        chosen.retain(|s| x_dim.value(s).is_some());
    }
    if f.stage.is_none() {
        let mut swept: Vec<(String, Vec<String>)> = Vec::new();
        for s in &chosen {
            if swept.iter().any(|(b, _)| *b == s.base) {
                continue;
            }
            let mine: Vec<&StageRecord> = chosen
                .iter()
                .copied()
                .filter(|t| t.base == s.base)
                .collect();
            let v: Vec<String> = select::varying(&mine).into_iter().map(|d| d.name).collect();
            if !v.is_empty() {
                swept.push((s.base.clone(), v));
            }
        }
        match swept.as_slice() {
            [(base, _)] => {
                f.stage = Some(base.clone());
                chosen.retain(|s| s.base == *base);
            }
            [] => {}
            many if by.is_empty() || x.is_none() => {
                let list: Vec<String> = many
                    .iter()
                    .map(|(b, v)| format!("{b} ({})", v.join(", ")))
                    .collect();
                return Err(PlotError::Usage(format!(
                    "several declared stages sweep parameters with `{metric}`: {}; choose one with --stage NAME",
                    list.join("; ")
                )));
            }
            _ => {}
        }
    }
    let varying = select::varying(&chosen);
    let x = match (x, varying.first()) {
        (Some(x), _) => x.to_string(),
        (None, Some(d)) => d.name.clone(),
        // Nothing swept (or only seeds): the metric of each declared stage, mean ± std over
        // its seeds.
        (None, None) => "stage".to_string(),
    };
    let by = if by.is_empty() {
        let x_dim = select::resolve(&chosen, &x)?;
        varying
            .iter()
            .filter(|d| d.key != x_dim.key)
            .map(|d| d.name.clone())
            .collect()
    } else {
        by.to_vec()
    };
    Ok((x, by, f))
}

/// Builds the requested figure of a recipe from the store, with the recipe's hash for its
/// provenance.
pub fn figure_from(
    store: &crate::store::Store,
    recipe: &str,
    req: &Request,
    f: &Filters,
) -> Result<Figure, PlotError> {
    let stages = crate::results::load(store, recipe, None)?;
    let mut fig = match req {
        Request::Sweep { metric, x, by } => {
            let (x, by, f) = sweep_defaults(&stages, metric, x.as_deref(), by, f)?;
            sweep(recipe, &stages, metric, &x, &by, &f)?
        }
        Request::Curves { metric } => {
            let keys: Vec<&str> = stages
                .iter()
                .filter(|s| matches!(s.kind.as_str(), "train" | "distill"))
                .map(|s| s.key.as_str())
                .collect();
            let epochs = store.epoch_metrics(&keys).map_err(ResultsError::from)?;
            curves(recipe, &stages, &epochs, metric.as_deref(), f)?
        }
        Request::Recall { by } => recall(recipe, &stages, by, f)?,
    };
    if let Some(inv) = store.invocation(recipe).map_err(ResultsError::from)? {
        fig.recipe_sha256 = Some(inv.recipe_sha256.clone());
        fig.overrides = RunOverrides::of(&inv);
    }
    Ok(fig)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::results::select::tests::rec;

    fn sweep_records() -> Vec<StageRecord> {
        let mut v = Vec::new();
        for (i, p) in ["1", "2", "4"].iter().enumerate() {
            for sampler in ["random", "superclass"] {
                for seed in ["0", "1"] {
                    let mut r = rec(
                        &format!("eval[p={p},sampler={sampler},seed={seed}]"),
                        &[
                            ("student", "loss.cc.p", "p", p),
                            ("student", "sampler.kind", "sampler", sampler),
                            ("teacher", "seed", "seed", seed),
                        ],
                        0.5 + i as f64 * 0.1 + if seed == "1" { 0.02 } else { 0.0 },
                    );
                    r.metrics.push(("recall@4".into(), 0.9));
                    v.push(r);
                }
            }
        }
        v
    }

    #[test]
    fn a_sweep_has_one_line_per_value_of_by_with_error_bars_over_seeds() {
        let s = sweep_records();
        let f = sweep(
            "r",
            &s,
            "recall@1",
            "p",
            &["sampler".into()],
            &Filters::default(),
        )
        .unwrap();
        assert_eq!(f.title, "r: recall@1 vs p");
        assert_eq!(f.x_label, "p (loss.cc.p)");
        assert_eq!(f.x_axis, XAxis::Numeric { integer: true });
        assert_eq!(f.series.len(), 2);
        assert_eq!(f.series[0].label, "random");
        assert_eq!(f.legend_title.as_deref(), Some("sampler"));
        let pts = &f.series[0].points;
        assert_eq!(pts.iter().map(|p| p.x).collect::<Vec<_>>(), [1.0, 2.0, 4.0]);
        assert!((pts[0].y - 0.51).abs() < 1e-9);
        assert!((pts[0].err.unwrap() - 0.02 / 2f64.sqrt()).abs() < 1e-9);
        assert_eq!(f.sources.len(), 12);
        assert!(f.y_label.contains("mean ± std over seed"));
        // Categorical x with a single line.
        let f = sweep(
            "r",
            &s,
            "recall@1",
            "sampler",
            &[],
            &Filters {
                stage: None,
                filters: vec![("p".into(), "2".into())],
            },
        )
        .unwrap();
        assert_eq!(
            f.x_axis,
            XAxis::Categorical(vec!["random".into(), "superclass".into()])
        );
        assert_eq!(f.series.len(), 1);
        assert!(f.provenance().contains("eval[p=2,sampler=random,seed=0] "));
    }

    #[test]
    fn sweep_defaults_pick_the_swept_stage_or_ask_which() {
        let mut s = sweep_records();
        let f = Filters::default();
        let (x, by, chosen) = sweep_defaults(&s, "recall@1", None, &[], &f).unwrap();
        assert_eq!(
            (x.as_str(), by.as_slice()),
            ("p", ["sampler".to_string()].as_slice())
        );
        assert_eq!(chosen.stage.as_deref(), Some("eval"));
        // A second declared stage with its own sweep: the user must choose.
        for gen in ["1", "2"] {
            let mut r = rec(
                &format!("eval_born[gen={gen}]"),
                &[("born", "gen", "gen", gen)],
                0.3,
            );
            r.base = "eval_born".into();
            s.push(r);
        }
        let e = sweep_defaults(&s, "recall@1", None, &[], &f)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("eval (p, sampler); eval_born (gen); choose one with --stage NAME"),
            "{e}"
        );
        let (x, by, _) = sweep_defaults(&s, "recall@1", Some("gen"), &[], &f).unwrap();
        assert_eq!((x.as_str(), by.len()), ("gen", 0));
    }

    #[test]
    fn recall_curves_per_stage_or_grouped_and_training_curves() {
        let s = sweep_records();
        let f = recall(
            "r",
            &s,
            &["p".into(), "sampler".into()],
            &Filters::default(),
        )
        .unwrap();
        assert_eq!(f.x_axis, XAxis::Categorical(vec!["1".into(), "4".into()]));
        assert_eq!(f.series.len(), 6);
        assert_eq!(f.series[0].label, "1, random");
        assert_eq!(f.series[0].points.len(), 2);
        assert_eq!(
            recall("r", &s, &[], &Filters::default())
                .unwrap()
                .series
                .len(),
            12
        );
        let mut many = s.clone();
        for i in 0..10 {
            let mut extra = s[0].clone();
            extra.stage = format!("extra{i}");
            many.push(extra);
        }
        let e = recall("r", &many, &[], &Filters::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("at most 20"), "{e}");

        let mut epochs = HashMap::new();
        epochs.insert(
            s[0].key.clone(),
            vec![
                (1, "loss/total".to_string(), 1.0),
                (1, "loss/cc".to_string(), 0.5),
                (2, "loss/total".to_string(), 0.8),
                (2, "loss/cc".to_string(), 0.4),
            ],
        );
        let f = curves("r", &s, &epochs, None, &Filters::default()).unwrap();
        assert_eq!(
            f.series
                .iter()
                .map(|s| s.label.as_str())
                .collect::<Vec<_>>(),
            ["total", "cc"]
        );
        assert_eq!(f.series[0].points[1].y, 0.8);
    }
}
