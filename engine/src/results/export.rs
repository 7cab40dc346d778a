//! Everything in one long table for pandas and R: one row per (recipe, stage, metric),
//! with the stage's swept parameters as columns (empty where a stage lacks one).

use std::collections::{BTreeMap, HashMap};

use super::format::{Cell, Table};
use super::select::{self, DimKey};
use super::RunOverrides;
use crate::store::{ResultRow, StageRecord};

const FIXED: [&str; 11] = [
    "recipe",
    "stage",
    "base",
    "kind",
    "declared_kind",
    "stage_key",
    "metric",
    "value",
    "split",
    "smoke",
    "overrides",
];

/// The export table of `rows` (from `Store::results`), parameters from `stages`, what each
/// recipe's run overrode from `runs`.
pub fn table(
    rows: &[ResultRow],
    stages: &[StageRecord],
    runs: &BTreeMap<String, RunOverrides>,
) -> Table {
    let none = RunOverrides::default();
    let by_stage: HashMap<(&str, &str), &StageRecord> = stages
        .iter()
        .map(|s| ((s.recipe.as_str(), s.stage.as_str()), s))
        .collect();
    let refs: Vec<&StageRecord> = stages.iter().collect();
    let dims = select::dims(&refs);
    let mut columns: Vec<String> = FIXED.map(String::from).to_vec();
    for d in &dims {
        // A parameter labelled like a fixed column keeps its own column.
        if FIXED.contains(&d.name.as_str()) {
            columns.push(format!("param.{}", d.name));
        } else {
            columns.push(d.name.clone());
        }
    }
    let mut t = Table::new(columns);
    // Plan order, then metrics in table order (recall@K by K), as people read them.
    let position: HashMap<(&str, &str), usize> = stages
        .iter()
        .enumerate()
        .map(|(i, s)| ((s.recipe.as_str(), s.stage.as_str()), i))
        .collect();
    let mut rows: Vec<&ResultRow> = rows.iter().collect();
    rows.sort_by_key(|r| {
        (
            position
                .get(&(r.recipe.as_str(), r.stage.as_str()))
                .copied()
                .unwrap_or(usize::MAX),
            super::metric_order(&r.metric),
        )
    });
    for r in rows {
        let s = by_stage.get(&(r.recipe.as_str(), r.stage.as_str()));
        let (smoke, sets) = super::table::overrides_cells(runs.get(&r.recipe).unwrap_or(&none));
        let mut line = vec![
            Cell::text(&r.recipe),
            Cell::text(&r.stage),
            Cell::text(s.map_or(r.stage.as_str(), |s| s.base.as_str())),
            Cell::text(&r.kind),
            Cell::text(s.map_or(r.kind.as_str(), |s| s.declared_kind.as_str())),
            Cell::text(&r.key),
            Cell::text(&r.metric),
            Cell::number(r.value, r.value.to_string()),
            Cell::text(&r.split),
            smoke,
            sets,
        ];
        for d in &dims {
            let DimKey::Param { .. } = &d.key else {
                unreachable!("dims() lists parameters only")
            };
            line.push(match s.and_then(|s| d.value(s)) {
                Some(v) => Cell::param(v),
                None => Cell::missing(),
            });
        }
        t.rows.push(line);
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::results::select::tests::rec;

    #[test]
    fn one_row_per_stage_and_metric_with_parameter_columns() {
        let stages = vec![
            rec(
                "eval[p=1,seed=0]",
                &[("s", "loss.cc.p", "p", "1"), ("t", "seed", "seed", "0")],
                0.5,
            ),
            rec("base", &[], 0.25),
        ];
        let rows: Vec<ResultRow> = stages
            .iter()
            .map(|s| ResultRow {
                recipe: s.recipe.clone(),
                stage: s.stage.clone(),
                kind: s.kind.clone(),
                key: s.key.clone(),
                metric: "recall@1".into(),
                value: s.metrics[0].1,
                split: "test".into(),
            })
            .collect();
        let t = table(&rows, &stages, &BTreeMap::new());
        assert_eq!(
            t.columns,
            [
                "recipe",
                "stage",
                "base",
                "kind",
                "declared_kind",
                "stage_key",
                "metric",
                "value",
                "split",
                "smoke",
                "overrides",
                "p",
                "seed"
            ]
        );
        let csv = t.csv();
        let lines: Vec<&str> = csv.lines().collect();
        assert!(lines[1].ends_with(",recall@1,0.5,test,,,1,0"), "{csv}");
        assert!(lines[2].ends_with(",recall@1,0.25,test,,,,"), "{csv}");
        let j = t.json();
        assert_eq!(j[0]["p"], 1);
        assert!(j[1]["p"].is_null());
    }
}
