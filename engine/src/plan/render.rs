//! The plan as `rkd-orch plan` prints it: a table for people (`text`), Graphviz (`dot`), or
//! a JSON document for scripts (`json`), each stage with whether and why it will run.

use std::fmt::Write;

use serde_json::{json, Value};

use super::Plan;
use crate::text::{pad, Align};

/// A stage as the plan shows it (computed by `run::status`, which reads the runs directory).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlanStatus<'a> {
    /// In the cache: it will not run.
    Cached,
    /// It will run, for this reason.
    WillRun { why: &'a str },
}

impl PlanStatus<'_> {
    fn label(&self) -> String {
        match self {
            PlanStatus::Cached => "cached".to_string(),
            PlanStatus::WillRun { why } => format!("will run: {why}"),
        }
    }
}

/// The widest stage name, at least as wide as the column's header.
pub fn name_width(plan: &Plan) -> usize {
    plan.stages
        .iter()
        .map(|s| s.name.chars().count())
        .max()
        .unwrap_or(5)
        .max(5)
}

/// `plan --format text`; `statuses` in the plan's stage order.
pub fn text(plan: &Plan, statuses: &[PlanStatus]) -> String {
    let mut out = String::new();
    let cached = statuses
        .iter()
        .filter(|s| **s == PlanStatus::Cached)
        .count();
    let _ = writeln!(
        out,
        "{} ({}): {} stages, {} cached, {} to run",
        plan.recipe,
        plan.file,
        plan.stages.len(),
        cached,
        plan.stages.len() - cached
    );
    let w = name_width(plan);
    let _ = writeln!(
        out,
        "  {}  {:<12}  {:<12}  {:<28}  inputs",
        pad("stage", w, Align::Left),
        "kind",
        "key",
        "status"
    );
    for &i in &plan.order {
        let s = &plan.stages[i];
        let inputs: Vec<String> = s
            .inputs
            .iter()
            .map(|(role, src)| format!("{role}={}", plan.stages[*src].name))
            .collect();
        let _ = writeln!(
            out,
            "  {}  {:<12}  {:<12}  {:<28}  {}",
            pad(&s.name, w, Align::Left),
            s.kind,
            s.short_key(),
            statuses[i].label(),
            inputs.join(" ")
        );
    }
    out
}

/// `plan --format dot`.
pub fn dot(plan: &Plan, statuses: &[PlanStatus]) -> String {
    let q = |s: &str| serde_json::to_string(s).expect("a string");
    let mut out = format!("digraph {} {{\n  rankdir=LR;\n  node [shape=box, style=\"rounded,filled\", fontname=\"Helvetica\"];\n", q(&plan.recipe));
    for &i in &plan.order {
        let s = &plan.stages[i];
        let color = match statuses[i] {
            PlanStatus::Cached => "#d9f2d9",
            PlanStatus::WillRun { .. } => "#ffe0b3",
        };
        let label = format!(
            "{}\n{} {}\n{}",
            s.name,
            s.kind,
            s.short_key(),
            statuses[i].label()
        );
        let _ = writeln!(out, "  n{i} [label={}, fillcolor=\"{color}\"];", q(&label));
    }
    for &i in &plan.order {
        for (role, src) in &plan.stages[i].inputs {
            let _ = writeln!(out, "  n{src} -> n{i} [label={}];", q(role));
        }
    }
    out.push_str("}\n");
    out
}

/// `plan --format json`.
pub fn json(plan: &Plan, statuses: &[PlanStatus]) -> String {
    // Fields in alphabetical order: the order the document had as a `serde_json` map.
    #[derive(serde::Serialize)]
    struct Doc<'a> {
        file: &'a str,
        recipe: &'a str,
        recipe_sha256: &'a str,
        stages: Stages<'a>,
    }
    /// The stages, each made a JSON value only while it is written: values for all of them
    /// at once would take more memory than the plan itself (a few KB a stage).
    struct Stages<'a>(&'a Plan, &'a [PlanStatus<'a>]);
    impl serde::Serialize for Stages<'_> {
        fn serialize<S: serde::Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
            let Stages(plan, statuses) = *self;
            ser.collect_seq(plan.order.iter().map(|&i| json_stage(plan, i, statuses[i])))
        }
    }
    let doc = Doc {
        file: &plan.file,
        recipe: &plan.recipe,
        recipe_sha256: &plan.recipe_sha256,
        stages: Stages(plan, statuses),
    };
    format!(
        "{}\n",
        serde_json::to_string_pretty(&doc).expect("serialisable")
    )
}

/// One stage of `plan --format json`.
fn json_stage(plan: &Plan, i: usize, status: PlanStatus) -> Value {
    // Swept values as JSON numbers and booleans where they are ones, for scripts.
    let typed = |v: &str| -> Value {
        if let Ok(i) = v.parse::<i64>() {
            json!(i)
        } else if let Ok(f) = v.parse::<f64>() {
            json!(f)
        } else if let Ok(b) = v.parse::<bool>() {
            json!(b)
        } else {
            json!(v)
        }
    };
    let s = &plan.stages[i];
    let params: serde_json::Map<String, Value> = s
        .params
        .iter()
        .map(|p| (p.label.clone(), typed(&p.value)))
        .collect();
    let inputs: Vec<Value> = s
        .inputs
        .iter()
        .map(|(role, src)| json!({"role": role, "stage": plan.stages[*src].name, "key": plan.stages[*src].key}))
        .collect();
    let (cached, reason) = match status {
        PlanStatus::Cached => (true, Value::Null),
        PlanStatus::WillRun { why } => (false, json!(why)),
    };
    json!({
        "name": s.name,
        "stage": s.base,
        "kind": s.kind,
        "key": s.key,
        "inputs": inputs,
        "cached": cached,
        "reason": reason,
        "params": params,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const RECIPE: &str = r#"
data:
  syn: {kind: synthetic, classes: 4, dim: 8}
stages:
  teacher:
    kind: train
    model: {hidden: [16], embedding: 4}
    loss: {triplet: 1.0}
    epochs: 1
  eval:
    kind: evaluate
    model: teacher
"#;

    #[test]
    fn each_format_says_what_is_cached_and_why_the_rest_runs() {
        let plan =
            super::super::build(crate::recipe::parse("r.yaml", "r", RECIPE).unwrap()).unwrap();
        let statuses = [PlanStatus::Cached, PlanStatus::WillRun { why: "new" }];
        let t = text(&plan, &statuses);
        assert!(
            t.starts_with("r (r.yaml): 2 stages, 1 cached, 1 to run\n"),
            "{t}"
        );
        assert!(t.contains(" cached "), "{t}");
        assert!(t.contains(" will run: new "), "{t}");
        let d = dot(&plan, &statuses);
        assert!(d.contains("fillcolor=\"#d9f2d9\""), "{d}");
        assert!(d.contains("will run: new"), "{d}");
        let j: Value = serde_json::from_str(&json(&plan, &statuses)).unwrap();
        assert_eq!(j["stages"][0]["cached"], true);
        assert_eq!(j["stages"][0]["reason"], Value::Null);
        assert_eq!(j["stages"][1]["cached"], false);
        assert_eq!(j["stages"][1]["reason"], "new");
        assert_eq!(j["stages"][1]["inputs"][0]["stage"], "teacher");
    }
}
