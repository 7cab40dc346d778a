use super::*;
use crate::recipe::parse;

const BASE: &str = r#"
# a comment
data:
  syn: {kind: synthetic, classes: 4, dim: 8}
stages:
  teacher:
    kind: train
    model: {hidden: [16], embedding: 4}
    loss: {triplet: 1.0}
    epochs: 1
  student:
    kind: distill
    teacher: teacher
    model: {hidden: [8], embedding: 4}
    loss: {rkd_d: 1.0, rkd_a: 2.0}
    epochs: 1
  eval:
    kind: evaluate
    model: student
"#;

fn plan_of(text: &str) -> Plan {
    build(parse("r.yaml", "r", text).unwrap()).unwrap()
}

fn keys(p: &Plan) -> Vec<(String, String)> {
    let mut k: Vec<(String, String)> = p
        .stages
        .iter()
        .map(|s| (s.name.clone(), s.key.clone()))
        .collect();
    k.sort();
    k
}

#[test]
fn order_follows_dependencies_and_the_file() {
    let p = plan_of(BASE);
    let names: Vec<&str> = p.order.iter().map(|&i| p.stages[i].name.as_str()).collect();
    assert_eq!(names, ["teacher", "student", "eval"]);
    assert_eq!(p.dependants(0), vec![1]);
    assert_eq!(p.stages[1].inputs, vec![("teacher".to_string(), 0)]);
}

#[test]
fn keys_ignore_names_comments_and_order_but_not_content() {
    let base = keys(&plan_of(BASE));
    // Re-ordered keys, re-ordered loss terms, other comments, flow style: same keys.
    let reordered = r#"
stages:
  eval: {model: student, kind: evaluate}
  student:
    loss: {rkd_a: 2.0, rkd_d: 1.0}   # swapped
    epochs: 1
    model: {embedding: 4, hidden: [8]}
    teacher: teacher
    kind: distill
  teacher: {kind: train, epochs: 1, loss: {triplet: 1.0}, model: {hidden: [16], embedding: 4}}
data:
  syn: {dim: 8, classes: 4, kind: synthetic}
"#;
    assert_eq!(keys(&plan_of(reordered)), base);

    // A renamed stage keeps its key (and so does everything downstream).
    let renamed = plan_of(
        &BASE
            .replace("  teacher:\n", "  prof:\n")
            .replace("teacher: teacher", "teacher: prof"),
    );
    let mut a: Vec<String> = renamed.stages.iter().map(|s| s.key.clone()).collect();
    let mut b: Vec<String> = base.iter().map(|(_, k)| k.clone()).collect();
    a.sort();
    b.sort();
    assert_eq!(a, b);

    // A changed teacher changes the teacher's key and, through it, every dependant's.
    let changed = keys(&plan_of(&BASE.replacen("epochs: 1", "epochs: 2", 1)));
    for ((n1, k1), (_, k2)) in base.iter().zip(&changed) {
        assert_ne!(k1, k2, "stage {n1} should have a new key");
    }
    // The seed is part of the key.
    let seeded = keys(&plan_of(&format!("seed: 3\n{BASE}")));
    assert_ne!(seeded[2], base[2]); // teacher
}

#[test]
fn manifest_holds_the_fingerprint_not_the_location() {
    let p = plan_of(BASE);
    let m = &p.stages[0].manifest.to_value();
    assert_eq!(m["cache_version"], CACHE_VERSION);
    let fp = m["config"]["data"]["source"]["fingerprint"]
        .as_str()
        .unwrap();
    assert!(fp.starts_with("sha256:"));
    assert_eq!(p.stages[0].manifest.key(), p.stages[0].key);
    assert_eq!(
        p.stages[1].manifest.to_value()["inputs"]["teacher"],
        p.stages[0].key.as_str()
    );
}

#[test]
fn cycles_are_printed_as_a_path() {
    let text = r#"
data:
  syn: {kind: synthetic}
stages:
  a: {kind: distill, teacher: b, model: {}, loss: {rkd_d: 1}}
  b: {kind: distill, teacher: a, model: {}, loss: {rkd_d: 1}}
  c: {kind: evaluate, model: a}
"#;
    let err = parse("r.yaml", "r", text).unwrap_err().to_string();
    assert!(
        err.contains("stages form a cycle: a → b → a")
            || err.contains("stages form a cycle: b → a → b"),
        "{err}"
    );
    assert!(
        err.starts_with("r.yaml:5:") || err.starts_with("r.yaml:6:"),
        "{err}"
    );
}
