//! Two stages of a recipe, or two recipes, side by side: every metric of each, the
//! difference B − A, and which is better.

use serde_json::Value;

use super::format::{Cell, Format, Table};
use super::table::format_value;
use super::{metric_order, Direction, ResultsError};
use crate::store::StageRecord;

#[derive(Debug, Clone)]
pub struct CompareRow {
    /// The stage (comparing recipes; `None` comparing two stages).
    pub stage: Option<String>,
    pub metric: String,
    pub a: Option<f64>,
    pub b: Option<f64>,
    /// Whether both sides are the very same stage (same content key): no difference can
    /// come from it.
    pub same_key: bool,
}

#[derive(Debug, Clone)]
pub struct Comparison {
    /// What A and B are, with keys (`eval[p=1] 0123456789ab`) or recipe names.
    pub a: String,
    pub b: String,
    pub title: String,
    pub rows: Vec<CompareRow>,
    /// What the runs behind A and B overrode, one line each where they did (filled by the
    /// caller that has the store).
    pub notes: Vec<String>,
}

/// A stage by its full name, or by its declared name when that has one variant.
fn find<'a>(
    recipe: &str,
    stages: &'a [StageRecord],
    name: &str,
) -> Result<&'a StageRecord, ResultsError> {
    if let Some(s) = stages.iter().find(|s| s.stage == name) {
        return Ok(s);
    }
    let variants: Vec<&StageRecord> = stages.iter().filter(|s| s.base == name).collect();
    if variants.len() == 1 {
        return Ok(variants[0]);
    }
    let like: Vec<String> = stages
        .iter()
        .filter(|s| s.stage.contains(name) || name.contains(s.base.as_str()))
        .map(|s| s.stage.clone())
        .collect();
    let hint = match (variants.len(), like.is_empty()) {
        (n, _) if n > 1 => format!(
            "; `{name}` has {n} variants, name one: {}",
            super::pivot::summarise(&variants.iter().map(|s| s.stage.clone()).collect::<Vec<_>>())
        ),
        (_, false) => format!("; did you mean: {}", super::pivot::summarise(&like)),
        _ => String::new(),
    };
    Err(ResultsError::NoStage {
        recipe: recipe.to_string(),
        name: name.to_string(),
        hint,
    })
}

fn short(key: &str) -> &str {
    &key[..12.min(key.len())]
}

/// Two stages of one recipe.
pub fn stages(
    recipe: &str,
    all: &[StageRecord],
    a: &str,
    b: &str,
) -> Result<Comparison, ResultsError> {
    let (sa, sb) = (find(recipe, all, a)?, find(recipe, all, b)?);
    let mut metrics: Vec<&str> = sa
        .metrics
        .iter()
        .chain(&sb.metrics)
        .map(|(m, _)| m.as_str())
        .collect();
    metrics.sort_by_key(|m| metric_order(m));
    metrics.dedup();
    let rows = metrics
        .iter()
        .map(|m| CompareRow {
            stage: None,
            metric: m.to_string(),
            a: sa.metric(m),
            b: sb.metric(m),
            same_key: sa.key == sb.key,
        })
        .collect();
    Ok(Comparison {
        a: format!("{} {}", sa.stage, short(&sa.key)),
        b: format!("{} {}", sb.stage, short(&sb.key)),
        title: format!(
            "{recipe}: A = {} ({}), B = {} ({})",
            sa.stage,
            short(&sa.key),
            sb.stage,
            short(&sb.key)
        ),
        rows,
        notes: Vec::new(),
    })
}

/// Two recipes, stage by stage (matched by name).
pub fn recipes(
    a: &str,
    sa: &[StageRecord],
    b: &str,
    sb: &[StageRecord],
) -> Result<Comparison, ResultsError> {
    let mut names: Vec<&str> = Vec::new();
    for s in sa.iter().chain(sb) {
        if !s.metrics.is_empty() && !names.contains(&s.stage.as_str()) {
            names.push(&s.stage);
        }
    }
    let mut rows = Vec::new();
    for name in names {
        let (x, y) = (
            sa.iter().find(|s| s.stage == name),
            sb.iter().find(|s| s.stage == name),
        );
        let mut metrics: Vec<&str> = x
            .iter()
            .chain(y.iter())
            .flat_map(|s| s.metrics.iter().map(|(m, _)| m.as_str()))
            .collect();
        metrics.sort_by_key(|m| metric_order(m));
        metrics.dedup();
        for m in metrics {
            rows.push(CompareRow {
                stage: Some(name.to_string()),
                metric: m.to_string(),
                a: x.and_then(|s| s.metric(m)),
                b: y.and_then(|s| s.metric(m)),
                same_key: matches!((x, y), (Some(x), Some(y)) if x.key == y.key),
            });
        }
    }
    if rows.is_empty() {
        return Err(ResultsError::Usage(format!(
            "neither `{a}` nor `{b}` has results to compare"
        )));
    }
    Ok(Comparison {
        a: a.to_string(),
        b: b.to_string(),
        title: format!("A = recipe {a}, B = recipe {b} (stages matched by name)"),
        rows,
        notes: Vec::new(),
    })
}

impl Comparison {
    pub fn table(&self, full_precision_labels: bool) -> Table {
        let by_stage = self.rows.iter().any(|r| r.stage.is_some());
        // The title says what A and B are; columns stay narrow.
        let (a, b) = if full_precision_labels {
            ("a".to_string(), "b".to_string())
        } else {
            ("A".to_string(), "B".to_string())
        };
        let mut columns: Vec<String> = Vec::new();
        if by_stage {
            columns.push("stage".into());
        }
        columns.extend(["metric".to_string(), a, b, "B − A".into(), "better".into()]);
        if by_stage {
            columns.push("note".into());
        }
        let mut t = Table::new(columns);
        for r in &self.rows {
            let mut line = Vec::new();
            if let Some(s) = &r.stage {
                line.push(Cell::text(s.clone()));
            }
            line.push(Cell::text(r.metric.clone()));
            let num = |v: Option<f64>| match v {
                Some(v) => Cell::number(v, format_value(&r.metric, v)),
                None => Cell::missing(),
            };
            line.push(num(r.a));
            line.push(num(r.b));
            let diff = match (r.a, r.b) {
                (Some(a), Some(b)) => Some(b - a),
                _ => None,
            };
            line.push(match diff {
                Some(d) => Cell::number(d, format!("{d:+.4}")),
                None => Cell::missing(),
            });
            let dir = Direction::of(&r.metric);
            let better = match (r.a, r.b) {
                (Some(a), Some(b)) if dir.better(a, b) => "A",
                (Some(a), Some(b)) if dir.better(b, a) => "B",
                (Some(_), Some(_)) if dir != Direction::None => "=",
                _ => "",
            };
            line.push(Cell {
                display: better.into(),
                value: if better.is_empty() {
                    Value::Null
                } else {
                    Value::from(better)
                },
                numeric: false,
                strong: false,
            });
            if by_stage {
                line.push(Cell::text(if r.same_key { "same stage" } else { "" }));
            }
            t.rows.push(line);
        }
        t
    }

    pub fn render(&self, format: Format) -> String {
        match format {
            Format::Table => {
                let notes: String = self.notes.iter().map(|n| format!("{n}\n")).collect();
                format!("{}\n{notes}{}", self.title, self.table(false).text())
            }
            Format::Markdown => {
                let notes: String = self.notes.iter().map(|n| format!("**{n}**\n\n")).collect();
                format!(
                    "**{}**\n\n{notes}{}",
                    self.title,
                    self.table(false).markdown()
                )
            }
            Format::Csv => self.table(true).csv(),
            Format::Json => {
                let mut doc = serde_json::json!({"a": self.a, "b": self.b, "notes": self.notes});
                doc["rows"] = self.table(true).json();
                format!(
                    "{}\n",
                    serde_json::to_string_pretty(&doc).expect("serialisable")
                )
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::results::select::tests::rec;

    #[test]
    fn two_stages_side_by_side_with_the_difference() {
        let mut a = rec("eval[p=1]", &[], 0.5);
        a.metrics.push(("queries".into(), 100.0));
        let b = rec("eval[p=2]", &[], 0.625);
        let c = comparison_of(&[a, b]);
        let t = c.render(Format::Table);
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[0].starts_with("r: A = eval[p=1] ("), "{t}");
        assert!(
            lines[3].starts_with("recall@1") && lines[3].ends_with("0.6250  +0.1250  B"),
            "{t}"
        );
        assert!(
            lines[4].starts_with("queries") && lines[4].contains("100"),
            "{t}"
        );
        let j: Value = serde_json::from_str(&c.render(Format::Json)).unwrap();
        assert_eq!(j["rows"][0]["B − A"], 0.125);
        assert!(c
            .render(Format::Csv)
            .starts_with("metric,a,b,B − A,better\n"));
    }

    fn comparison_of(v: &[StageRecord]) -> Comparison {
        stages("r", v, "eval[p=1]", "eval[p=2]").unwrap()
    }

    #[test]
    fn unknown_stages_get_suggestions_and_recipes_compare_by_stage() {
        let v = [rec("eval[p=1]", &[], 0.5), rec("eval[p=2]", &[], 0.6)];
        let e = stages("r", &v, "eval", "eval[p=2]")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("has 2 variants, name one: eval[p=1], eval[p=2]"),
            "{e}"
        );
        let w = [rec("eval[p=1]", &[], 0.5), rec("other", &[], 0.1)];
        let c = recipes("x", &v, "y", &w).unwrap();
        let t = c.render(Format::Table);
        assert!(t.contains("same stage"), "{t}");
        assert!(
            t.lines()
                .any(|l| l.starts_with("other") && l.contains(" -  ")),
            "{t}"
        );
    }
}
