//! Choosing stages and naming their parameters: `--stage`, `--where PARAM=VALUE`, and the
//! dimensions that pivots and plots group by.
//!
//! A parameter is identified by the stage whose matrix swept it and its path (`student`,
//! `loss.cc.p`); people name it by its label (`p`), its path, or `origin.label` where two
//! stages sweep parameters with the same label. `stage` names the declared stage.

use std::collections::{BTreeSet, HashMap};

use super::ResultsError;
use crate::store::{numeric, StageRecord, StoredParam};

/// What a pivot or a plot groups by.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum DimKey {
    /// The declared stage (`eval` for `eval[p=1,seed=0]`).
    Stage,
    /// The full stage name: one group per stage.
    Name,
    Param {
        origin: String,
        path: String,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct Dim {
    pub key: DimKey,
    /// How tables and legends name it (`p`, or `student.seed` where labels clash).
    pub name: String,
    pub is_seed: bool,
}

impl Dim {
    pub fn stage() -> Self {
        Dim {
            key: DimKey::Stage,
            name: "stage".into(),
            is_seed: false,
        }
    }
    pub fn name() -> Self {
        Dim {
            key: DimKey::Name,
            name: "stage".into(),
            is_seed: false,
        }
    }

    pub fn value<'a>(&self, s: &'a StageRecord) -> Option<&'a str> {
        match &self.key {
            DimKey::Stage => Some(&s.base),
            DimKey::Name => Some(&s.stage),
            DimKey::Param { origin, path } => s
                .params
                .iter()
                .find(|p| &p.origin == origin && &p.path == path)
                .map(|p| p.value.as_str()),
        }
    }
}

fn param_id(p: &StoredParam) -> (String, String) {
    (p.origin.clone(), p.path.clone())
}

/// Every parameter of the stages, in first-appearance order, each named by its label
/// unless another parameter shares the label.
pub fn dims(stages: &[&StageRecord]) -> Vec<Dim> {
    let mut seen: Vec<&StoredParam> = Vec::new();
    let mut ids: BTreeSet<(String, String)> = BTreeSet::new();
    for s in stages {
        for p in &s.params {
            if ids.insert(param_id(p)) {
                seen.push(p);
            }
        }
    }
    let mut labels: HashMap<&str, usize> = HashMap::new();
    for p in &seen {
        *labels.entry(p.label.as_str()).or_default() += 1;
    }
    seen.iter()
        .map(|p| Dim {
            key: DimKey::Param {
                origin: p.origin.clone(),
                path: p.path.clone(),
            },
            name: if labels[p.label.as_str()] > 1 {
                format!("{}.{}", p.origin, p.label)
            } else {
                p.label.clone()
            },
            is_seed: p.is_seed(),
        })
        .collect()
}

/// The parameters that are not seeds and take more than one value among `stages`: what a
/// figure puts on its axis and in its legend when the user does not say.
pub fn varying(stages: &[&StageRecord]) -> Vec<Dim> {
    dims(stages)
        .into_iter()
        .filter(|d| !d.is_seed && distinct(stages, d).len() > 1)
        .collect()
}

/// The dimension a user's name refers to among `stages`.
pub fn resolve(stages: &[&StageRecord], name: &str) -> Result<Dim, ResultsError> {
    if name == "stage" {
        return Ok(Dim::stage());
    }
    let all = dims(stages);
    let mut hits: Vec<&Dim> = all
        .iter()
        .filter(|d| {
            let DimKey::Param { origin, path } = &d.key else {
                return false;
            };
            let label = stages
                .iter()
                .flat_map(|s| &s.params)
                .find(|p| &p.origin == origin && &p.path == path)
                .map(|p| p.label.as_str())
                .unwrap_or_default();
            name == d.name
                || name == label
                || name == path
                || name == format!("{origin}.{label}")
                || name == format!("{origin}.{path}")
        })
        .collect();
    // `p` given where `p` is both a label and another's qualified name: the exact name wins.
    if hits.len() > 1 {
        if let Some(exact) = hits.iter().find(|d| d.name == name) {
            hits = vec![*exact];
        }
    }
    match hits.as_slice() {
        [d] => Ok((*d).clone()),
        [] => Err(ResultsError::UnknownParam {
            name: name.to_string(),
            known: known(&all),
        }),
        many => Err(ResultsError::AmbiguousParam {
            name: name.to_string(),
            candidates: many
                .iter()
                .map(|d| match &d.key {
                    DimKey::Param { origin, path } => format!("{origin}.{path}"),
                    _ => d.name.clone(),
                })
                .collect::<Vec<_>>()
                .join(", "),
        }),
    }
}

fn known(all: &[Dim]) -> String {
    let mut names: Vec<String> = vec!["stage".to_string()];
    names.extend(all.iter().map(|d| d.name.clone()));
    names.join(", ")
}

/// Whether a stage's value of a dimension is `want` (numerically equal counts: `0.1` and
/// `0.10`).
fn matches(value: Option<&str>, want: &str) -> bool {
    match value {
        None => false,
        Some(v) if v == want => true,
        Some(v) => matches!((numeric(v), numeric(want)), (Some(a), Some(b)) if a == b),
    }
}

/// Parses `--where` arguments (`PARAM=VALUE`).
pub fn parse_filters(raw: &[String]) -> Result<Vec<(String, String)>, ResultsError> {
    raw.iter()
        .map(|f| {
            f.split_once('=')
                .filter(|(k, v)| !k.trim().is_empty() && !v.trim().is_empty())
                .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
                .ok_or_else(|| ResultsError::BadFilter(f.clone()))
        })
        .collect()
}

/// The stages kept by `--stage NAME` (declared or full name) and `--where` filters.
pub fn filter<'a>(
    stages: Vec<&'a StageRecord>,
    stage: Option<&str>,
    filters: &[(String, String)],
) -> Result<Vec<&'a StageRecord>, ResultsError> {
    let mut out = stages;
    if let Some(name) = stage {
        let before: Vec<&StageRecord> = out.clone();
        out.retain(|s| s.base == name || s.stage == name);
        if out.is_empty() {
            let mut bases: Vec<&str> = before.iter().map(|s| s.base.as_str()).collect();
            bases.dedup();
            let mut uniq: Vec<&str> = Vec::new();
            for b in bases {
                if !uniq.contains(&b) {
                    uniq.push(b);
                }
            }
            return Err(ResultsError::NothingLeft(format!(
                "--stage {name}; stages with this metric: {}",
                uniq.join(", ")
            )));
        }
    }
    for (name, want) in filters {
        let dim = resolve(&out, name)?;
        let values = distinct(&out, &dim);
        out.retain(|s| matches(dim.value(s), want));
        if out.is_empty() {
            return Err(ResultsError::NothingLeft(format!(
                "--where {name}={want}; its values: {}",
                values.join(", ")
            )));
        }
    }
    Ok(out)
}

/// The distinct values of a dimension, ordered: numerically where every value is a
/// number, otherwise in plan order (the order the matrix lists them).
pub fn distinct(stages: &[&StageRecord], dim: &Dim) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for s in stages {
        if let Some(v) = dim.value(s) {
            if seen.insert(v) {
                out.push(v.to_string());
            }
        }
    }
    if !out.is_empty() && out.iter().all(|v| numeric(v).is_some()) {
        out.sort_by(|a, b| numeric(a).unwrap().total_cmp(&numeric(b).unwrap()));
    }
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub fn rec(stage: &str, params: &[(&str, &str, &str, &str)], metric: f64) -> StageRecord {
        StageRecord {
            recipe: "r".into(),
            stage: stage.into(),
            base: stage.split('[').next().unwrap().into(),
            kind: "evaluate".into(),
            declared_kind: "evaluate".into(),
            key: {
                use sha2::Digest;
                crate::ml::data::hex(&sha2::Sha256::digest(stage.as_bytes()))[..32].to_string()
            },
            current: true,
            status: Some("done".into()),
            wall_s: Some(1.0),
            device: Some("cpu".into()),
            params: params
                .iter()
                .map(|(o, path, l, v)| StoredParam {
                    origin: o.to_string(),
                    path: path.to_string(),
                    label: l.to_string(),
                    value: v.to_string(),
                    value_num: numeric(v),
                })
                .collect(),
            metrics: vec![("recall@1".into(), metric)],
        }
    }

    #[test]
    fn parameters_resolve_by_label_path_or_origin_and_clashes_are_explained() {
        let a = rec(
            "eval[teacher.seed=0,p=1,student.seed=0]",
            &[
                ("teacher", "seed", "seed", "0"),
                ("student", "loss.cc.p", "p", "1"),
                ("student", "seed", "seed", "0"),
            ],
            0.5,
        );
        let s = [&a];
        assert_eq!(resolve(&s, "p").unwrap().name, "p");
        assert_eq!(resolve(&s, "loss.cc.p").unwrap().name, "p");
        assert_eq!(resolve(&s, "student.p").unwrap().name, "p");
        assert_eq!(resolve(&s, "teacher.seed").unwrap().name, "teacher.seed");
        let e = resolve(&s, "seed").unwrap_err().to_string();
        assert!(e.contains("teacher.seed, student.seed"), "{e}");
        let e = resolve(&s, "q").unwrap_err().to_string();
        assert!(e.contains("stage, teacher.seed, p, student.seed"), "{e}");
    }

    #[test]
    fn filters_compare_numbers_numerically_and_values_sort() {
        let a = rec("e[g=0.10]", &[("e", "loss.cc.gamma", "gamma", "0.10")], 0.1);
        let b = rec("e[g=2]", &[("e", "loss.cc.gamma", "gamma", "2")], 0.2);
        let c = rec("e[g=0.5]", &[("e", "loss.cc.gamma", "gamma", "0.5")], 0.3);
        let all = vec![&a, &b, &c];
        let f = parse_filters(&["gamma=0.1".into()]).unwrap();
        assert_eq!(filter(all.clone(), None, &f).unwrap().len(), 1);
        let d = resolve(&all, "gamma").unwrap();
        assert_eq!(distinct(&all, &d), ["0.10", "0.5", "2"]);
        assert!(parse_filters(&["gamma".into()]).is_err());
        let e = filter(all, None, &parse_filters(&["gamma=9".into()]).unwrap())
            .unwrap_err()
            .to_string();
        assert!(e.contains("its values: 0.10, 0.5, 2"), "{e}");
    }
}
