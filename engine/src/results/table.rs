//! The default results table: one row per stage that has metrics, one column per metric
//! (stages × metrics), per recipe.

use std::collections::{BTreeMap, HashMap};

use super::format::{Cell, Format, Table};
use super::{metric_order, RunOverrides};
use crate::store::ResultRow;

/// Per-term training losses are in `epoch_metrics` and `export`; the table keeps the total.
fn shown(metric: &str) -> bool {
    !metric.starts_with("loss/") || metric == "loss/total"
}

fn header(metric: &str) -> String {
    match metric {
        "loss/total" => "train loss".to_string(),
        m => m.to_string(),
    }
}

pub fn format_value(metric: &str, v: f64) -> String {
    if metric == "queries" {
        format!("{v:.0}")
    } else {
        format!("{v:.4}")
    }
}

/// The rows of one recipe, grouped by stage in plan order (stages missing from
/// `stage_order` appended by name), and the metric columns in display order.
struct Grouped<'a> {
    stages: Vec<&'a str>,
    metrics: Vec<&'a str>,
    /// stage → metric → row
    cells: HashMap<&'a str, HashMap<&'a str, &'a ResultRow>>,
}

fn group<'a>(rows: &[&'a ResultRow], order: Option<&'a Vec<String>>) -> Grouped<'a> {
    let mut cells: HashMap<&str, HashMap<&str, &ResultRow>> = HashMap::new();
    let mut metrics: Vec<&str> = Vec::new();
    let mut seen_metric: HashMap<&str, ()> = HashMap::new();
    let mut by_name: Vec<&str> = Vec::new();
    for r in rows {
        let entry = cells.entry(r.stage.as_str()).or_default();
        if entry.is_empty() {
            by_name.push(&r.stage);
        }
        entry.insert(&r.metric, r);
        if shown(&r.metric) && seen_metric.insert(&r.metric, ()).is_none() {
            metrics.push(&r.metric);
        }
    }
    metrics.sort_by_key(|m| metric_order(m));
    let mut stages: Vec<&str> = order
        .map(|v| v.iter().map(String::as_str).collect())
        .unwrap_or_default();
    stages.retain(|s| cells.contains_key(s));
    let placed: std::collections::HashSet<&str> = stages.iter().copied().collect();
    by_name.retain(|s| !placed.contains(s));
    stages.extend(by_name);
    Grouped {
        stages,
        metrics,
        cells,
    }
}

/// The recipes of `rows`, in the order they first appear.
fn recipes(rows: &[ResultRow]) -> Vec<&str> {
    let mut out: Vec<&str> = Vec::new();
    for r in rows {
        if out.last() != Some(&r.recipe.as_str()) && !out.contains(&r.recipe.as_str()) {
            out.push(&r.recipe);
        }
    }
    out
}

/// One table per recipe (short keys, as people read them).
pub fn tables(
    rows: &[ResultRow],
    stage_order: &BTreeMap<String, Vec<String>>,
) -> Vec<(String, Table)> {
    let mut out = Vec::new();
    for recipe in recipes(rows) {
        let mine: Vec<&ResultRow> = rows.iter().filter(|r| r.recipe == recipe).collect();
        let g = group(&mine, stage_order.get(recipe));
        let mut columns = vec!["stage".to_string(), "kind".to_string(), "key".to_string()];
        columns.extend(g.metrics.iter().map(|m| header(m)));
        let mut table = Table::new(columns);
        for s in &g.stages {
            let cells = &g.cells[s];
            let first = cells.values().next().expect("a stage has rows");
            let mut line = vec![
                Cell::text(*s),
                Cell::text(first.kind.clone()),
                Cell::text(&first.key[..12.min(first.key.len())]),
            ];
            for m in &g.metrics {
                line.push(match cells.get(m) {
                    Some(r) => Cell::number(r.value, format_value(m, r.value)),
                    None => Cell::missing(),
                });
            }
            table.rows.push(line);
        }
        out.push((recipe.to_string(), table));
    }
    out
}

/// The text tables, one per recipe, each under a `recipe NAME` line.
pub fn render(rows: &[ResultRow], stage_order: &BTreeMap<String, Vec<String>>) -> String {
    render_as(rows, stage_order, &BTreeMap::new(), Format::Table)
}

/// The tables in `format`; `runs` holds what each recipe's latest run overrode (a line
/// under the recipe's name; `smoke` and `overrides` columns for programs).
pub fn render_as(
    rows: &[ResultRow],
    stage_order: &BTreeMap<String, Vec<String>>,
    runs: &BTreeMap<String, RunOverrides>,
    format: Format,
) -> String {
    let none = RunOverrides::default();
    let run_of = |recipe: &str| runs.get(recipe).unwrap_or(&none);
    match format {
        Format::Table | Format::Markdown => {
            let mut out = String::new();
            for (recipe, t) in tables(rows, stage_order) {
                let note = run_of(&recipe).note();
                if format == Format::Table {
                    let note = note.map(|n| format!("{n}\n")).unwrap_or_default();
                    out.push_str(&format!("recipe {recipe}\n{note}{}\n", t.text()));
                } else {
                    let note = note.map(|n| format!("**{n}**\n\n")).unwrap_or_default();
                    out.push_str(&format!("### recipe {recipe}\n\n{note}{}\n", t.markdown()));
                }
            }
            out
        }
        // For programs: one table over every recipe, full keys, full precision.
        Format::Csv | Format::Json => {
            let all: Vec<&ResultRow> = rows.iter().collect();
            let mut metrics: Vec<&str> = Vec::new();
            for r in &all {
                if shown(&r.metric) && !metrics.contains(&r.metric.as_str()) {
                    metrics.push(&r.metric);
                }
            }
            metrics.sort_by_key(|m| metric_order(m));
            let mut columns: Vec<String> =
                ["recipe", "stage", "kind", "stage_key", "smoke", "overrides"]
                    .map(String::from)
                    .to_vec();
            columns.extend(metrics.iter().map(|m| m.to_string()));
            let mut table = Table::new(columns);
            for recipe in recipes(rows) {
                let mine: Vec<&ResultRow> =
                    all.iter().copied().filter(|r| r.recipe == recipe).collect();
                let g = group(&mine, stage_order.get(recipe));
                let run = run_of(recipe);
                for s in &g.stages {
                    let cells = &g.cells[s];
                    let first = cells.values().next().expect("a stage has rows");
                    let (smoke, sets) = overrides_cells(run);
                    let mut line = vec![
                        Cell::text(recipe),
                        Cell::text(*s),
                        Cell::text(first.kind.clone()),
                        Cell::text(first.key.clone()),
                        smoke,
                        sets,
                    ];
                    for m in &metrics {
                        line.push(match cells.get(m) {
                            Some(r) => Cell::number(r.value, format_value(m, r.value)),
                            None => Cell::missing(),
                        });
                    }
                    table.rows.push(line);
                }
            }
            table.render(format)
        }
    }
}

/// The `smoke` (a boolean; empty when the run did not record its overrides) and `overrides`
/// (`--set …` as typed) cells of a recipe's rows.
pub fn overrides_cells(run: &RunOverrides) -> (Cell, Cell) {
    let smoke = match &run.sets {
        Some(_) => Cell {
            display: run.is_smoke().to_string(),
            value: serde_json::Value::Bool(run.is_smoke()),
            numeric: false,
            strong: false,
        },
        None => Cell::text(""),
    };
    (smoke, Cell::text(run.command_text()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(stage: &str, metric: &str, value: f64) -> ResultRow {
        ResultRow {
            recipe: "q".into(),
            stage: stage.into(),
            kind: "evaluate".into(),
            key: "0123456789abcdef".into(),
            metric: metric.into(),
            value,
            split: "test".into(),
        }
    }

    #[test]
    fn pivot_orders_stages_and_metrics() {
        let rows = vec![
            row("b", "recall@8", 0.9),
            row("b", "recall@1", 0.5),
            row("a", "recall@1", 0.25),
            row("a", "loss/triplet", 0.1),
        ];
        let order = BTreeMap::from([("q".to_string(), vec!["a".to_string(), "b".to_string()])]);
        let t = render(&rows, &order);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines[0], "recipe q");
        assert!(lines[1].starts_with("stage"));
        assert!(lines[1].find("recall@1").unwrap() < lines[1].find("recall@8").unwrap());
        assert!(
            !t.contains("loss/triplet"),
            "per-term losses stay out of the table"
        );
        assert!(
            lines[3].starts_with("a ") && lines[3].contains("0.2500") && lines[3].ends_with('-')
        );
        assert!(lines[4].starts_with("b ") && lines[4].contains("0.9000"));
        assert_eq!(lines[5], "");

        let none = BTreeMap::new();
        let csv = render_as(&rows, &order, &none, Format::Csv);
        assert_eq!(
            csv,
            "recipe,stage,kind,stage_key,smoke,overrides,recall@1,recall@8\nq,a,evaluate,0123456789abcdef,,,0.25,\nq,b,evaluate,0123456789abcdef,,,0.5,0.9\n"
        );
        let json: serde_json::Value =
            serde_json::from_str(&render_as(&rows, &order, &none, Format::Json)).unwrap();
        assert_eq!(json[1]["recall@8"], 0.9);
        let md = render_as(&rows, &order, &none, Format::Markdown);
        assert!(
            md.starts_with("### recipe q\n\n| stage | kind | key | recall@1 | recall@8 |"),
            "{md}"
        );
    }
}
