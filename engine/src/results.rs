//! Results tables: the metrics of a recipe's stages as a text table (stages × metrics).

use std::collections::BTreeMap;

use crate::store::ResultRow;

/// Orders metric columns: recall@K by K, then the rest by name, training losses last.
fn metric_order(name: &str) -> (u8, usize, String) {
    if let Some(k) = name
        .strip_prefix("recall@")
        .and_then(|k| k.parse::<usize>().ok())
    {
        (0, k, String::new())
    } else if name.starts_with("loss/") {
        (2, 0, name.to_string())
    } else {
        (1, 0, name.to_string())
    }
}

/// Renders one table per recipe. `stage_order` gives each recipe's stages in plan order;
/// stages missing from it are appended by name.
pub fn render(rows: &[ResultRow], stage_order: &BTreeMap<String, Vec<String>>) -> String {
    let mut out = String::new();
    let mut recipes: Vec<&str> = Vec::new();
    for r in rows {
        if !recipes.contains(&r.recipe.as_str()) {
            recipes.push(&r.recipe);
        }
    }
    for recipe in recipes {
        let rows: Vec<&ResultRow> = rows.iter().filter(|r| r.recipe == recipe).collect();
        let mut metrics: Vec<&str> = Vec::new();
        for r in &rows {
            // Per-term training losses are in `epoch_metrics`; the table keeps the total.
            let shown = !r.metric.starts_with("loss/") || r.metric == "loss/total";
            if shown && !metrics.contains(&r.metric.as_str()) {
                metrics.push(&r.metric);
            }
        }
        metrics.sort_by_key(|m| metric_order(m));
        let mut stages: Vec<&str> = stage_order
            .get(recipe)
            .map(|v| v.iter().map(String::as_str).collect())
            .unwrap_or_default();
        stages.retain(|s| rows.iter().any(|r| r.stage == *s));
        for r in &rows {
            if !stages.contains(&r.stage.as_str()) {
                stages.push(&r.stage);
            }
        }
        let mut header = vec!["stage".to_string(), "kind".to_string(), "key".to_string()];
        header.extend(metrics.iter().map(|m| match *m {
            "loss/total" => "train loss".to_string(),
            m => m.to_string(),
        }));
        let mut table = vec![header];
        for s in &stages {
            let first = rows.iter().find(|r| r.stage == *s).expect("stage has rows");
            let mut line = vec![
                s.to_string(),
                first.kind.clone(),
                first.key[..12.min(first.key.len())].to_string(),
            ];
            for m in &metrics {
                line.push(
                    rows.iter()
                        .find(|r| r.stage == *s && r.metric == *m)
                        .map(|r| format_value(m, r.value))
                        .unwrap_or_else(|| "-".into()),
                );
            }
            table.push(line);
        }
        out.push_str(&format!("recipe {recipe}\n"));
        out.push_str(&format_table(&table));
        out.push('\n');
    }
    out
}

fn format_value(metric: &str, v: f64) -> String {
    if metric == "queries" {
        format!("{v:.0}")
    } else {
        format!("{v:.4}")
    }
}

/// Left-aligns text columns and right-aligns the metric columns.
fn format_table(rows: &[Vec<String>]) -> String {
    let cols = rows[0].len();
    let widths: Vec<usize> = (0..cols)
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for (i, r) in rows.iter().enumerate() {
        let cells: Vec<String> = r
            .iter()
            .enumerate()
            .map(|(c, v)| {
                if c < 3 {
                    format!("{v:<w$}", w = widths[c])
                } else {
                    format!("{v:>w$}", w = widths[c])
                }
            })
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
        if i == 0 {
            let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
            out.push_str(&rule.join("  "));
            out.push('\n');
        }
    }
    out
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
    }
}
