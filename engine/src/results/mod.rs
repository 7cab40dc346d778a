//! What the result commands compute from the store: the default stages × metrics table,
//! pivots of a metric over swept parameters (mean ± std across seeds, best cell marked),
//! comparisons, and the long export; `format` renders any of them as text, Markdown, CSV
//! or JSON. Figures are in `crate::plot`, the HTML page in `crate::report`.

pub mod compare;
pub mod export;
pub mod format;
pub mod overrides;
pub mod pivot;
pub mod select;
pub mod table;

pub use format::{Format, Table};
pub use overrides::RunOverrides;

use std::collections::BTreeMap;

use crate::store::{Selection, StageRecord, Store};
pub use table::{render, render_as};

/// Orders metric columns: recall@K by K, then the rest by name, training losses last.
pub fn metric_order(name: &str) -> (u8, usize, String) {
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

/// Which way a metric is better, for marking the best cell.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Direction {
    /// Higher is better (recall, accuracy, probe top-1, NMI).
    Higher,
    /// Lower is better (losses, errors).
    Lower,
    /// Mark no cell.
    None,
}

impl Direction {
    /// The direction of a metric by its name; `None` where the name does not say
    /// (`queries`, `superclass/inertia` as a diagnostic).
    pub fn of(metric: &str) -> Self {
        let m = metric.to_ascii_lowercase();
        const HIGHER: [&str; 8] = [
            "recall", "accuracy", "acc", "top1", "top5", "probe", "nmi", "map",
        ];
        const LOWER: [&str; 3] = ["loss", "error", "err"];
        let words: Vec<&str> = m
            .split(|c: char| !c.is_ascii_alphanumeric())
            .filter(|w| !w.is_empty())
            .collect();
        let has = |list: &[&str]| {
            words
                .iter()
                .any(|w| list.iter().any(|l| w == l || w.starts_with(l)))
        };
        if has(&LOWER) {
            Direction::Lower
        } else if has(&HIGHER) || m.starts_with("recall@") {
            Direction::Higher
        } else {
            Direction::None
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            Direction::Higher => "higher is better",
            Direction::Lower => "lower is better",
            Direction::None => "no best marked",
        }
    }

    /// Whether `a` is better than `b`.
    pub fn better(self, a: f64, b: f64) -> bool {
        match self {
            Direction::Higher => a > b,
            Direction::Lower => a < b,
            Direction::None => false,
        }
    }
}

/// Errors of the result commands: each says what to type instead.
#[derive(Debug, thiserror::Error)]
pub enum ResultsError {
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error("no results for recipe `{recipe}`{hint}")]
    NoRecipe { recipe: String, hint: String },
    #[error("no stage of `{recipe}` has the metric `{metric}`; metrics: {known}")]
    NoMetric {
        recipe: String,
        metric: String,
        known: String,
    },
    #[error("`{name}` is not a swept parameter of the selected stages; parameters: {known}")]
    UnknownParam { name: String, known: String },
    #[error("`{name}` names several parameters ({candidates}); say which one")]
    AmbiguousParam { name: String, candidates: String },
    #[error(
        "cells would mix different values of `{param}` ({values}): add it to --by, or keep one with --where {param}=VALUE"
    )]
    MixedCell { param: String, values: String },
    #[error("--where {0}: expected PARAM=VALUE, e.g. --where sampler=random")]
    BadFilter(String),
    #[error("no stage is left after the filters ({0})")]
    NothingLeft(String),
    #[error("no stage named `{name}` in recipe `{recipe}`{hint}")]
    NoStage {
        recipe: String,
        name: String,
        hint: String,
    },
    #[error("{0}")]
    Usage(String),
}

/// Fails, naming the recipes the database has, when `recipe` is not one of them.
pub fn check_recipe(store: &Store, recipe: &str) -> Result<(), ResultsError> {
    let recipes = store.recipes()?;
    if recipes.iter().any(|r| r == recipe) {
        return Ok(());
    }
    Err(ResultsError::NoRecipe {
        recipe: recipe.to_string(),
        hint: if recipes.is_empty() {
            "; the database has no recipe yet (`rkd-orch run RECIPE`)".into()
        } else {
            format!("; recipes: {}", recipes.join(", "))
        },
    })
}

/// The recipe a command means when none is given: the database's only one.
pub fn only_recipe(store: &Store) -> Result<String, ResultsError> {
    match store.recipes()?.as_slice() {
        [one] => Ok(one.clone()),
        [] => Err(ResultsError::Usage(
            "the database has no recipe yet (`rkd-orch run RECIPE`)".into(),
        )),
        many => Err(ResultsError::Usage(format!(
            "the database has {} recipes; name one: {}",
            many.len(),
            many.join(", ")
        ))),
    }
}

/// The current stages of a recipe (only the metric's rows where one is given).
pub fn load(
    store: &Store,
    recipe: &str,
    metric: Option<&str>,
) -> Result<Vec<StageRecord>, ResultsError> {
    check_recipe(store, recipe)?;
    Ok(store.stages(&Selection {
        recipe: Some(recipe),
        metric,
        include_stale: false,
    })?)
}

/// The stages × metrics table of one recipe (or of all), each recipe's with what its run
/// overrode; `None` when there is no result to show.
pub fn table_from(
    store: &Store,
    recipe: Option<&str>,
    format: Format,
) -> Result<Option<String>, crate::store::StoreError> {
    let rows = store.results(recipe)?;
    if rows.is_empty() {
        return Ok(None);
    }
    let mut order = BTreeMap::new();
    for r in store.recipes()? {
        order.insert(r.clone(), store.recipe_stage_order(&r)?);
    }
    Ok(Some(render_as(&rows, &order, &runs_of(store)?, format)))
}

/// What each recipe's latest run overrode.
fn runs_of(store: &Store) -> Result<BTreeMap<String, RunOverrides>, crate::store::StoreError> {
    store
        .recipes()?
        .into_iter()
        .map(|r| Ok((r.clone(), RunOverrides::load(store, &r)?)))
        .collect()
}

/// `results RECIPE --metric M --by …`.
pub fn pivot_from(
    store: &Store,
    recipe: &str,
    spec: &pivot::PivotSpec,
) -> Result<pivot::Pivot, ResultsError> {
    let stages = load(store, recipe, Some(&spec.metric))?;
    match pivot::pivot(recipe, &stages, spec) {
        Ok(mut p) => {
            p.overrides = RunOverrides::load(store, recipe)?;
            Ok(p)
        }
        // Only the metric was loaded: list the metrics the recipe does have.
        Err(ResultsError::NoMetric { recipe, metric, .. }) => Err(ResultsError::NoMetric {
            known: store.metric_names(Some(&recipe))?.join(", "),
            recipe,
            metric,
        }),
        other => other,
    }
}

/// `results RECIPE --compare A B`.
pub fn compare_stages_from(
    store: &Store,
    recipe: &str,
    a: &str,
    b: &str,
) -> Result<compare::Comparison, ResultsError> {
    let stages = load(store, recipe, None)?;
    let mut c = compare::stages(recipe, &stages, a, b)?;
    c.notes.extend(RunOverrides::load(store, recipe)?.note());
    Ok(c)
}

/// `results --compare RECIPE_A RECIPE_B`.
pub fn compare_recipes_from(
    store: &Store,
    a: &str,
    b: &str,
) -> Result<compare::Comparison, ResultsError> {
    let (sa, sb) = (load(store, a, None)?, load(store, b, None)?);
    let mut c = compare::recipes(a, &sa, b, &sb)?;
    for (side, recipe) in [("A", a), ("B", b)] {
        if let Some(n) = RunOverrides::load(store, recipe)?.note() {
            c.notes.push(format!("{side} ({recipe}): {n}"));
        }
    }
    Ok(c)
}

/// `export`: every current result of one recipe or all.
pub fn export_from(store: &Store, recipe: Option<&str>) -> Result<Table, ResultsError> {
    if let Some(r) = recipe {
        check_recipe(store, r)?;
    }
    let rows = store.results(recipe)?;
    let stages = store.stages(&Selection {
        recipe,
        metric: None,
        include_stale: false,
    })?;
    Ok(export::table(&rows, &stages, &runs_of(store)?))
}

/// Mean and sample standard deviation (n − 1; `None` for a single value).
pub fn mean_std(values: &[f64]) -> (f64, Option<f64>) {
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    if values.len() < 2 {
        return (mean, None);
    }
    let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0);
    (mean, Some(var.sqrt()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_direction_follows_the_name() {
        for m in ["recall@1", "probe_top1", "accuracy", "nmi", "mAP"] {
            assert_eq!(Direction::of(m), Direction::Higher, "{m}");
        }
        for m in ["loss/total", "loss/rkd_d", "val_loss", "error_rate"] {
            assert_eq!(Direction::of(m), Direction::Lower, "{m}");
        }
        for m in ["queries", "superclass/inertia"] {
            assert_eq!(Direction::of(m), Direction::None, "{m}");
        }
    }

    #[test]
    fn mean_and_sample_std() {
        assert_eq!(mean_std(&[0.5]), (0.5, None));
        let (m, s) = mean_std(&[1.0, 2.0, 3.0]);
        assert!((m - 2.0).abs() < 1e-12 && (s.unwrap() - 1.0).abs() < 1e-12);
    }
}
