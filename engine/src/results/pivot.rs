//! A metric over swept parameters: rows are the values of the first `--by` parameters,
//! columns the values of the last, and each cell the mean ± sample std over the stages that
//! differ only by seed, with the best cell marked.
//!
//! A cell never silently averages over anything but seeds: when a parameter that is not a
//! seed still varies inside a cell, the pivot is refused with the parameter's name, to be
//! added to `--by` or fixed with `--where`.

use std::collections::HashMap;

use serde_json::{json, Value};

use super::format::{typed, Cell, Format, Table};
use super::select::{self, Dim, DimKey};
use super::{mean_std, Direction, ResultsError, RunOverrides};
use crate::store::StageRecord;

#[derive(Debug, Clone, Default)]
pub struct PivotSpec {
    pub metric: String,
    /// Parameter names; empty: one row per stage.
    pub by: Vec<String>,
    /// `--where PARAM=VALUE`.
    pub filters: Vec<(String, String)>,
    /// `--stage NAME`: one declared stage (or one full name).
    pub stage: Option<String>,
    /// Overrides the direction the metric's name implies.
    pub direction: Option<Direction>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct PivotCell {
    pub mean: f64,
    pub std: Option<f64>,
    pub n: usize,
    pub best: bool,
    /// (stage name, key) of every stage in the cell: where the number comes from.
    pub stages: Vec<(String, String)>,
}

#[derive(Debug, Clone)]
pub struct Pivot {
    pub recipe: String,
    pub metric: String,
    pub direction: Direction,
    pub row_dims: Vec<Dim>,
    pub col_dim: Option<Dim>,
    /// One entry per row: the value of each row dimension.
    pub rows: Vec<Vec<String>>,
    pub cols: Vec<String>,
    /// `cells[row][col]`.
    pub cells: Vec<Vec<Option<PivotCell>>>,
    /// The seed parameters that vary inside cells (averaged over).
    pub averaged_over: Vec<String>,
    /// Stages with the metric left out because they lack a `--by` parameter.
    pub left_out: Vec<String>,
    /// What the run behind these stages overrode (filled by the caller that has the store).
    pub overrides: RunOverrides,
}

/// Builds the pivot of one recipe's stages.
pub fn pivot(
    recipe: &str,
    stages: &[StageRecord],
    spec: &PivotSpec,
) -> Result<Pivot, ResultsError> {
    let with_metric: Vec<&StageRecord> = stages
        .iter()
        .filter(|s| s.metric(&spec.metric).is_some())
        .collect();
    if with_metric.is_empty() {
        let mut known: Vec<&str> = stages
            .iter()
            .flat_map(|s| s.metrics.iter().map(|(m, _)| m.as_str()))
            .collect();
        known.sort();
        known.dedup();
        return Err(ResultsError::NoMetric {
            recipe: recipe.to_string(),
            metric: spec.metric.clone(),
            known: if known.is_empty() {
                "(none loaded)".into()
            } else {
                known.join(", ")
            },
        });
    }
    let chosen = select::filter(with_metric, spec.stage.as_deref(), &spec.filters)?;

    let mut by: Vec<Dim> = if spec.by.is_empty() {
        vec![Dim::name()]
    } else {
        spec.by
            .iter()
            .map(|b| select::resolve(&chosen, b))
            .collect::<Result<_, _>>()?
    };
    // Stages lacking one of the parameters (a baseline beside a sweep) cannot be placed.
    let (kept, left): (Vec<&StageRecord>, Vec<&StageRecord>) = chosen
        .iter()
        .partition(|s| by.iter().all(|d| d.value(s).is_some()));
    if kept.is_empty() {
        return Err(ResultsError::NothingLeft(format!(
            "no stage with `{}` has all of {}",
            spec.metric,
            spec.by.join(", ")
        )));
    }
    // Two declared stages can share parameters (an evaluation and a transfer of the same
    // students): never average them together.
    let mut bases: Vec<&str> = kept.iter().map(|s| s.base.as_str()).collect();
    bases.sort();
    bases.dedup();
    if bases.len() > 1
        && !by
            .iter()
            .any(|d| matches!(d.key, DimKey::Stage | DimKey::Name))
    {
        by.insert(0, Dim::stage());
    }

    let (row_dims, col_dim) = if by.len() >= 2 {
        let col = by.pop();
        (by, col)
    } else {
        (by, None)
    };
    let axes: Vec<&Dim> = row_dims.iter().chain(col_dim.iter()).collect();

    // Inside a cell, only seeds may vary.
    let mut groups: HashMap<Vec<&str>, Vec<&StageRecord>> = HashMap::new();
    for s in &kept {
        let k: Vec<&str> = axes.iter().map(|d| d.value(s).expect("kept")).collect();
        groups.entry(k).or_default().push(s);
    }
    let others: Vec<Dim> = select::dims(&kept)
        .into_iter()
        .filter(|d| !axes.iter().any(|a| a.key == d.key))
        .collect();
    let mut averaged_over: Vec<String> = Vec::new();
    for d in &others {
        for members in groups.values() {
            let mut vals: Vec<Option<&str>> = members.iter().map(|s| d.value(s)).collect();
            vals.sort();
            vals.dedup();
            if vals.len() > 1 {
                if !d.is_seed {
                    let shown: Vec<&str> = vals.iter().map(|v| v.unwrap_or("(unset)")).collect();
                    return Err(ResultsError::MixedCell {
                        param: d.name.clone(),
                        values: shown.join(", "),
                    });
                }
                if !averaged_over.contains(&d.name) {
                    averaged_over.push(d.name.clone());
                }
            }
        }
    }
    // Two stages in a cell with the same seeds would be counted as repetitions.
    let row_vals: Vec<Vec<String>> = row_dims
        .iter()
        .map(|d| select::distinct(&kept, d))
        .collect();
    let cols: Vec<String> = match &col_dim {
        Some(d) => select::distinct(&kept, d),
        None => vec![spec.metric.clone()],
    };
    let rank = |dim: usize, v: &str| -> usize {
        row_vals[dim]
            .iter()
            .position(|x| x == v)
            .unwrap_or(usize::MAX)
    };
    let mut rows: Vec<Vec<String>> = Vec::new();
    for k in groups.keys() {
        let r: Vec<String> = k[..row_dims.len()].iter().map(|s| s.to_string()).collect();
        if !rows.contains(&r) {
            rows.push(r);
        }
    }
    rows.sort_by_key(|r| {
        r.iter()
            .enumerate()
            .map(|(i, v)| rank(i, v))
            .collect::<Vec<_>>()
    });

    let direction = spec
        .direction
        .unwrap_or_else(|| Direction::of(&spec.metric));
    let mut cells: Vec<Vec<Option<PivotCell>>> = rows
        .iter()
        .map(|r| {
            cols.iter()
                .map(|c| {
                    let mut k: Vec<&str> = r.iter().map(String::as_str).collect();
                    if col_dim.is_some() {
                        k.push(c);
                    }
                    groups.get(&k).map(|members| {
                        let values: Vec<f64> = members
                            .iter()
                            .map(|s| s.metric(&spec.metric).expect("filtered"))
                            .collect();
                        let (mean, std) = mean_std(&values);
                        PivotCell {
                            mean,
                            std,
                            n: values.len(),
                            best: false,
                            stages: members
                                .iter()
                                .map(|s| (s.stage.clone(), s.key.clone()))
                                .collect(),
                        }
                    })
                })
                .collect()
        })
        .collect();
    // The best mean; ties are all marked.
    let best = cells
        .iter()
        .flatten()
        .flatten()
        .map(|c| c.mean)
        .reduce(|a, b| if direction.better(b, a) { b } else { a });
    if let (Some(best), true) = (best, direction != Direction::None) {
        for c in cells.iter_mut().flatten().flatten() {
            c.best = c.mean == best;
        }
    }
    Ok(Pivot {
        recipe: recipe.to_string(),
        metric: spec.metric.clone(),
        direction,
        row_dims,
        col_dim,
        rows,
        cols,
        cells,
        averaged_over,
        left_out: left.iter().map(|s| s.stage.clone()).collect(),
        overrides: RunOverrides::default(),
    })
}

fn fmt_num(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() >= 1.0 && v.abs() < 1e12 {
        format!("{v:.0}")
    } else {
        format!("{v:.4}")
    }
}

impl PivotCell {
    /// `0.8123 ± 0.0100`, with `(n=3)` where the cell counts differ across the table.
    pub fn display(&self, show_n: bool) -> String {
        let mut s = fmt_num(self.mean);
        if let Some(sd) = self.std {
            s.push_str(&format!(" ± {}", fmt_num(sd)));
        }
        if show_n && self.n > 1 {
            s.push_str(&format!(" (n={})", self.n));
        }
        s
    }
}

impl Pivot {
    fn counts(&self) -> Vec<usize> {
        let mut n: Vec<usize> = self.cells.iter().flatten().flatten().map(|c| c.n).collect();
        n.sort();
        n.dedup();
        n
    }

    /// `recall@1, mean ± std over seed (n = 2 per cell)`.
    pub fn caption(&self) -> String {
        let counts = self.counts();
        let mut s = format!("{}: {}", self.recipe, self.metric);
        if !self.averaged_over.is_empty() {
            s.push_str(&format!(
                ", mean ± std over {}",
                self.averaged_over.join(", ")
            ));
            if counts.len() == 1 {
                s.push_str(&format!(" (n = {} per cell)", counts[0]));
            }
        }
        s
    }

    fn corner(&self) -> String {
        let rows: Vec<&str> = self.row_dims.iter().map(|d| d.name.as_str()).collect();
        match &self.col_dim {
            Some(c) => format!("{} \\ {}", rows.join(", "), c.name),
            None => rows.join(", "),
        }
    }

    /// The wide table people read: row values, then one column per column value.
    pub fn display_table(&self) -> Table {
        let show_n = self.counts().len() > 1;
        let name_rows = self.row_dims.iter().any(|d| d.key == DimKey::Name);
        let mut columns: Vec<String> = if self.row_dims.len() == 1 {
            vec![self.corner()]
        } else {
            let mut c: Vec<String> = self.row_dims.iter().map(|d| d.name.clone()).collect();
            if let Some(col) = &self.col_dim {
                let last = c.len() - 1;
                c[last] = format!("{} \\ {}", c[last], col.name);
            }
            c
        };
        if name_rows {
            columns.push("key".into());
        }
        columns.extend(self.cols.iter().cloned());
        let mut t = Table::new(columns);
        for (r, vals) in self.rows.iter().enumerate() {
            let mut line: Vec<Cell> = vals.iter().map(|v| Cell::text(v.clone())).collect();
            if name_rows {
                let key = self.cells[r]
                    .iter()
                    .flatten()
                    .next()
                    .map(|c| c.stages[0].1[..12.min(c.stages[0].1.len())].to_string())
                    .unwrap_or_default();
                line.push(Cell::text(key));
            }
            for c in &self.cells[r] {
                line.push(match c {
                    Some(c) => Cell::number(c.mean, c.display(show_n)).strong(c.best),
                    None => Cell::missing(),
                });
            }
            t.rows.push(line);
        }
        t
    }

    /// One row per cell, for programs: the axes' values typed, mean, std, n, best, and the
    /// stages (names and keys) the cell comes from.
    pub fn tidy_table(&self) -> Table {
        let mut columns = vec!["recipe".to_string(), "metric".to_string()];
        columns.extend(self.row_dims.iter().map(|d| d.name.clone()));
        if let Some(c) = &self.col_dim {
            columns.push(c.name.clone());
        }
        columns.extend(
            [
                "mean",
                "std",
                "n",
                "best",
                "stages",
                "stage_keys",
                "smoke",
                "overrides",
            ]
            .map(String::from),
        );
        let (smoke, sets) = super::table::overrides_cells(&self.overrides);
        let mut t = Table::new(columns);
        for (r, vals) in self.rows.iter().enumerate() {
            for (c, cell) in self.cells[r].iter().enumerate() {
                let Some(cell) = cell else { continue };
                let mut line = vec![Cell::text(&self.recipe), Cell::text(&self.metric)];
                line.extend(vals.iter().map(|v| Cell::param(v)));
                if self.col_dim.is_some() {
                    line.push(Cell::param(&self.cols[c]));
                }
                line.push(Cell::number(cell.mean, fmt_num(cell.mean)));
                line.push(match cell.std {
                    Some(s) => Cell::number(s, fmt_num(s)),
                    None => Cell::missing(),
                });
                line.push(Cell::int(cell.n as i64));
                line.push(Cell {
                    display: cell.best.to_string(),
                    value: Value::Bool(cell.best),
                    numeric: false,
                    strong: false,
                });
                let names: Vec<&str> = cell.stages.iter().map(|s| s.0.as_str()).collect();
                let keys: Vec<&str> = cell.stages.iter().map(|s| s.1.as_str()).collect();
                line.push(Cell::text(names.join(" ")));
                line.push(Cell::text(keys.join(" ")));
                line.push(smoke.clone());
                line.push(sets.clone());
                t.rows.push(line);
            }
        }
        t
    }

    /// Where the best number comes from: its parameters and its stages with their keys.
    pub fn best_note(&self) -> Option<String> {
        let mut notes = Vec::new();
        for (r, vals) in self.rows.iter().enumerate() {
            for (c, cell) in self.cells[r].iter().enumerate() {
                let Some(cell) = cell.as_ref().filter(|c| c.best) else {
                    continue;
                };
                let mut at: Vec<String> = self
                    .row_dims
                    .iter()
                    .zip(vals)
                    .map(|(d, v)| format!("{}={v}", d.name))
                    .collect();
                if let Some(d) = &self.col_dim {
                    at.push(format!("{}={}", d.name, self.cols[c]));
                }
                let stages: Vec<String> = cell
                    .stages
                    .iter()
                    .map(|(n, k)| format!("{n} {}", &k[..12.min(k.len())]))
                    .collect();
                notes.push(format!(
                    "best ({}): {} = {} from {}",
                    self.direction.describe(),
                    at.join(", "),
                    cell.display(true),
                    stages.join(", ")
                ));
            }
        }
        (!notes.is_empty()).then(|| notes.join("\n"))
    }

    pub fn json(&self) -> Value {
        let cells: Vec<Value> = self
            .tidy_table()
            .json()
            .as_array()
            .expect("rows")
            .iter()
            .map(|row| {
                let mut row = row.clone();
                let obj = row.as_object_mut().expect("object");
                obj.remove("recipe");
                obj.remove("metric");
                // Once for the pivot, below.
                obj.remove("smoke");
                obj.remove("overrides");
                let names = obj.remove("stages");
                let keys = obj.remove("stage_keys");
                let split = |v: Option<Value>| -> Vec<String> {
                    v.and_then(|v| v.as_str().map(|s| s.split(' ').map(String::from).collect()))
                        .unwrap_or_default()
                };
                let stages: Vec<Value> = split(names)
                    .into_iter()
                    .zip(split(keys))
                    .map(|(n, k)| json!({"name": n, "key": k}))
                    .collect();
                obj.insert("stages".into(), Value::Array(stages));
                row
            })
            .collect();
        json!({
            "recipe": self.recipe,
            "metric": self.metric,
            "better": match self.direction {
                Direction::Higher => json!("higher"),
                Direction::Lower => json!("lower"),
                Direction::None => Value::Null,
            },
            "rows": self.row_dims.iter().map(|d| d.name.clone()).collect::<Vec<_>>(),
            "columns": self.col_dim.as_ref().map(|d| d.name.clone()),
            "averaged_over": self.averaged_over,
            "left_out": self.left_out,
            "cells": cells,
            "row_values": self.rows.iter().map(|r| r.iter().map(|v| typed(v)).collect::<Vec<_>>()).collect::<Vec<_>>(),
            "column_values": self.cols.iter().map(|v| typed(v)).collect::<Vec<_>>(),
            "smoke": self.overrides.json()["smoke"],
            "sets": self.overrides.json()["sets"],
        })
    }

    pub fn render(&self, format: Format) -> String {
        let mut notes: Vec<String> = Vec::new();
        if !self.left_out.is_empty() {
            notes.push(format!(
                "left out (they lack a --by parameter): {}",
                summarise(&self.left_out)
            ));
        }
        match format {
            Format::Table => {
                let note = self
                    .overrides
                    .note()
                    .map(|n| format!("{n}\n"))
                    .unwrap_or_default();
                let mut out = format!(
                    "{}; * best ({})\n{note}{}",
                    self.caption(),
                    self.direction.describe(),
                    self.display_table().text()
                );
                if self.direction == Direction::None {
                    out = format!("{}\n{note}{}", self.caption(), self.display_table().text());
                }
                if let Some(b) = self.best_note() {
                    out.push_str(&b);
                    out.push('\n');
                }
                for n in notes {
                    out.push_str(&n);
                    out.push('\n');
                }
                out
            }
            Format::Markdown => {
                let mut out = format!("**{}**", self.caption());
                if self.direction != Direction::None {
                    out.push_str(&format!("; **bold**: best ({})", self.direction.describe()));
                }
                out.push_str("\n\n");
                if let Some(n) = self.overrides.note() {
                    out.push_str(&format!("**{n}**\n\n"));
                }
                out.push_str(&self.display_table().markdown());
                if let Some(b) = self.best_note() {
                    out.push_str(&format!("\n{b}\n"));
                }
                for n in notes {
                    out.push_str(&format!("\n{n}\n"));
                }
                out
            }
            Format::Csv => self.tidy_table().csv(),
            Format::Json => format!(
                "{}\n",
                serde_json::to_string_pretty(&self.json()).expect("serialisable")
            ),
        }
    }
}

/// `a, b, c and 7 more`.
pub fn summarise(names: &[String]) -> String {
    if names.len() <= 6 {
        names.join(", ")
    } else {
        format!("{} and {} more", names[..5].join(", "), names.len() - 5)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::results::select::tests::rec;

    /// eval over p ∈ {1, 2} × sampler ∈ {random, superclass} × seed ∈ {0, 1}, minus
    /// (p=2, random, seed=1), plus an unswept baseline.
    fn sweep() -> Vec<StageRecord> {
        let mut v = Vec::new();
        let mut r1 = 0.40;
        for p in ["1", "2"] {
            for sampler in ["superclass", "random"] {
                for seed in ["0", "1"] {
                    if p == "2" && sampler == "random" && seed == "1" {
                        continue;
                    }
                    r1 += 0.01;
                    v.push(rec(
                        &format!("eval[p={p},sampler={sampler},seed={seed}]"),
                        &[
                            ("student", "loss.cc.p", "p", p),
                            ("student", "sampler.kind", "sampler", sampler),
                            ("teacher", "seed", "seed", seed),
                        ],
                        r1,
                    ));
                }
            }
        }
        v.push(rec("eval_base", &[], 0.9));
        v
    }

    fn spec(by: &[&str]) -> PivotSpec {
        PivotSpec {
            metric: "recall@1".into(),
            by: by.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn rows_columns_mean_std_over_seeds_and_the_best_cell() {
        let p = pivot("r", &sweep(), &spec(&["p", "sampler"])).unwrap();
        assert_eq!(p.rows, [vec!["1".to_string()], vec!["2".to_string()]]);
        // Plan order for labels: superclass was listed first.
        assert_eq!(p.cols, ["superclass", "random"]);
        assert_eq!(p.averaged_over, ["seed"]);
        assert_eq!(p.left_out, ["eval_base"]);
        let c = p.cells[0][0].as_ref().unwrap();
        assert_eq!(c.n, 2);
        assert!((c.mean - 0.415).abs() < 1e-9, "{c:?}");
        assert!((c.std.unwrap() - 0.01f64 / 2f64.sqrt()).abs() < 1e-9);
        // p=2, random has one seed: no std.
        let single = p.cells[1][1].as_ref().unwrap();
        assert_eq!((single.n, single.std), (1, None));
        // Highest mean: p=2, random (0.47, one seed).
        assert!(p.cells[1][1].as_ref().unwrap().best);
        assert_eq!(
            p.cells
                .iter()
                .flatten()
                .flatten()
                .filter(|c| c.best)
                .count(),
            1
        );

        let text = p.render(Format::Table);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "r: recall@1, mean ± std over seed; * best (higher is better)"
        );
        assert_eq!(
            lines[1],
            "p \\ sampler             superclass                   random"
        );
        assert_eq!(
            lines[3],
            "1            0.4150 ± 0.0071 (n=2)  0.4350 ± 0.0071 (n=2)"
        );
        assert_eq!(
            lines[4],
            "2            0.4550 ± 0.0071 (n=2)                 0.4700 *"
        );
        assert!(lines[5].starts_with("best (higher is better): p=2, sampler=random = 0.4700 from eval[p=2,sampler=random,seed=0] "), "{text}");
        assert_eq!(lines[6], "left out (they lack a --by parameter): eval_base");

        let md = p.render(Format::Markdown);
        assert!(
            md.contains("| 2 | 0.4550 ± 0.0071 (n=2) | **0.4700** |"),
            "{md}"
        );
        let csv = p.render(Format::Csv);
        let first: Vec<&str> = csv.lines().nth(1).unwrap().split(',').collect();
        assert_eq!(&first[..4], ["r", "recall@1", "1", "superclass"]);
        assert_eq!(first[6], "2");
        let j: Value = serde_json::from_str(&p.render(Format::Json)).unwrap();
        assert_eq!(j["better"], "higher");
        assert_eq!(j["cells"][0]["p"], 1);
        assert_eq!(j["cells"][0]["stages"].as_array().unwrap().len(), 2);
        assert_eq!(j["cells"][3]["best"], true);
        assert_eq!(
            j["cells"][3]["stages"][0]["key"],
            p.cells[1][1].as_ref().unwrap().stages[0].1
        );
    }

    #[test]
    fn lower_is_better_and_overrides() {
        let mut s = sweep();
        for r in &mut s {
            r.metrics = vec![("loss/total".into(), r.metrics[0].1)];
        }
        let mut sp = spec(&["p", "sampler"]);
        sp.metric = "loss/total".into();
        let p = pivot("r", &s, &sp).unwrap();
        assert!(p.cells[0][0].as_ref().unwrap().best, "lowest mean");
        sp.direction = Some(Direction::None);
        let p = pivot("r", &s, &sp).unwrap();
        assert!(p.cells.iter().flatten().flatten().all(|c| !c.best));
        assert!(!p.render(Format::Table).contains('*'));
    }

    #[test]
    fn a_varying_non_seed_parameter_is_refused_and_where_fixes_it() {
        let e = pivot("r", &sweep(), &spec(&["p"])).unwrap_err().to_string();
        assert!(
            e.contains("`sampler` (random, superclass)") && e.contains("--where sampler=VALUE"),
            "{e}"
        );
        let mut sp = spec(&["p"]);
        sp.filters = vec![("sampler".into(), "superclass".into())];
        let p = pivot("r", &sweep(), &sp).unwrap();
        assert_eq!(p.cols, ["recall@1"]);
        assert_eq!(p.rows.len(), 2);
        let t = p.render(Format::Table);
        assert!(t.lines().nth(1).unwrap().starts_with("p  "), "{t}");
    }

    #[test]
    fn without_by_one_row_per_stage_with_its_key_and_several_bases_split() {
        let p = pivot("r", &sweep(), &spec(&[])).unwrap();
        assert_eq!(p.rows.len(), 8);
        let t = p.render(Format::Table);
        assert!(t.lines().nth(1).unwrap().starts_with("stage"), "{t}");
        assert!(t.contains("eval_base") && t.contains(" * "), "{t}");
        // Two declared stages with the same parameters are kept apart.
        let mut s = sweep();
        let mut twin = s[0].clone();
        twin.base = "transfer".into();
        twin.stage = "transfer[p=1,sampler=superclass,seed=0]".into();
        s.push(twin);
        let p = pivot("r", &s, &spec(&["p", "sampler"])).unwrap();
        assert_eq!(p.row_dims[0].name, "stage");
        assert_eq!(p.rows[0], ["eval", "1"]);
        assert_eq!(p.rows.last().unwrap(), &["transfer", "1"]);
        let e = pivot("r", &s, &spec(&["q"])).unwrap_err().to_string();
        assert!(e.contains("parameters: stage, p, sampler, seed"), "{e}");
        let mut sp = spec(&["p"]);
        sp.metric = "nope".into();
        let e = pivot("r", &s, &sp).unwrap_err().to_string();
        assert!(e.contains("metrics: recall@1"), "{e}");
    }
}
