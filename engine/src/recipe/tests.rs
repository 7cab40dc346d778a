use super::*;

const GOOD: &str = r#"
name: t
data:
  syn:
    kind: synthetic
    classes: 6
    dim: 16
stages:
  teacher:
    kind: train
    model: {hidden: [32], embedding: 8, l2norm: true}
    loss: {triplet: {weight: 1.0, margin: 0.2}}
    epochs: 2
    batch_size: 32
  student:
    kind: distill
    teacher: teacher
    model: {hidden: [16], embedding: 4}
    loss: {rkd_d: 1.0, rkd_a: 2.0}
  eval:
    kind: evaluate
    model: student
"#;

fn errors(text: &str) -> Vec<String> {
    match parse("r.yaml", "r", text) {
        Ok(_) => panic!("expected the recipe to be refused"),
        Err(e) => e.to_string().lines().map(str::to_string).collect(),
    }
}

#[test]
fn a_good_recipe_parses_with_defaults_filled_in() {
    let r = parse("r.yaml", "r", GOOD).unwrap();
    assert_eq!(r.name, "t");
    assert_eq!(r.stages.len(), 3);
    let StageConfig::Distill(d) = &r.stages[1].config else {
        panic!("student is a distill stage")
    };
    assert_eq!(d.epochs, 10);
    assert_eq!(d.batch_size, 128);
    assert_eq!(
        d.loss.iter().map(|t| t.name()).collect::<Vec<_>>(),
        ["rkd_a", "rkd_d"]
    );
    assert_eq!(d.data.train_classes, vec![0, 1, 2]);
    assert_eq!(d.data.eval_classes, vec![3, 4, 5]);
    assert_eq!(
        r.stages[1].inputs,
        vec![InputRef {
            role: "teacher",
            stage: "teacher".into(),
            pos: Pos::at(17, 14)
        }]
    );
    let StageConfig::Evaluate(e) = &r.stages[2].config else {
        panic!()
    };
    assert_eq!(e.recall_at, vec![1, 2, 4, 8]);
}

#[test]
fn unknown_key_points_at_its_line_and_suggests_the_right_one() {
    let text = GOOD.replace("    epochs: 2\n", "    epoch: 2\n");
    let errs = errors(&text);
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert_eq!(
        errs[0],
        "r.yaml:13:5: stages.teacher (train): unknown key `epoch`; did you mean `epochs`?"
    );
}

#[test]
fn every_problem_is_reported_at_once() {
    let text = GOOD
        .replace("epochs: 2", "epochs: two")
        .replace("rkd_a: 2.0", "rkd_a: -1")
        .replace("teacher: teacher", "teacher: teachr")
        .replace("model: student", "model: nobody")
        .replace("l2norm: true", "l2norm: yes please");
    let errs = errors(&text);
    assert_eq!(errs.len(), 5, "{errs:#?}");
    assert!(
        errs[0].starts_with("r.yaml:11:49: stages.teacher.model.l2norm: expected true or false"),
        "{errs:#?}"
    );
    assert!(errs[1].starts_with("r.yaml:13:13: stages.teacher.epochs: expected a whole number"));
    assert!(errs[2].contains("no stage named `teachr`; did you mean `teacher`?"));
    assert!(errs[3].contains("rkd_a (weight): must be a finite number ≥ 0, found -1"));
    assert!(errs[4].contains("no stage named `nobody`"));
}

#[test]
fn structural_mistakes_are_explained() {
    // A relational loss on a stage without a teacher.
    let errs = errors(&GOOD.replace(
        "loss: {triplet: {weight: 1.0, margin: 0.2}}",
        "loss: {rkd_d: 1.0}",
    ));
    assert!(
        errs[0].contains("compares with a teacher; use `kind: distill`"),
        "{errs:?}"
    );
    // An evaluate stage as a teacher.
    let errs = errors(&GOOD.replace("teacher: teacher", "teacher: eval"));
    assert!(
        errs[0].contains("is an evaluate stage and produces no model"),
        "{errs:?}"
    );
    // Unknown kinds.
    let errs = errors(&GOOD.replace("kind: distill", "kind: distil"));
    assert!(
        errs[0].contains("unknown stage kind `distil`; did you mean `distill`?"),
        "{errs:?}"
    );
    let errs = errors(&GOOD.replace("kind: synthetic", "kind: cifar"));
    assert!(
        errs[0].contains("unknown data set kind `cifar`"),
        "{errs:?}"
    );
    // Out of range.
    let errs = errors(&GOOD.replace("batch_size: 32", "batch_size: 1"));
    assert!(
        errs[0].contains("batch_size: must be at least 3, found 1"),
        "{errs:?}"
    );
    // Overlapping class splits defeat the protocol.
    let errs = errors(&GOOD.replace(
        "dim: 16",
        "dim: 16\n    train_classes: [0, 1]\n    eval_classes: [1, 2]",
    ));
    assert!(errs[0].contains("share [1]"), "{errs:?}");
    // Missing essentials.
    let errs = errors("data: {s: {kind: synthetic}}\n");
    assert!(errs[0].contains("missing `stages:`"), "{errs:?}");
}

#[test]
fn yaml_level_errors_have_positions() {
    let errs = errors("stages:\n  a: {kind: train\n");
    assert!(errs[0].starts_with("r.yaml:3:"), "{errs:?}");
    assert!(errs[0].contains("invalid YAML"), "{errs:?}");
    let errs = errors("data: {}\ndata: {}\n");
    assert!(
        errs[0].starts_with("r.yaml:2:1: duplicate key `data` (first defined at line 1)"),
        "{errs:?}"
    );
}

#[test]
fn missing_data_files_are_reported_before_anything_runs() {
    let text = "data:\n  fm:\n    kind: fashion-mnist\n    path: /nonexistent/fm\nstages:\n  t: {kind: train, model: {}, loss: {triplet: 1}}\n";
    let errs = errors(text);
    assert_eq!(errs.len(), 1, "{errs:#?}");
    assert!(
        errs[0].starts_with(
            "r.yaml:4:11: data.fm: data files not found: /nonexistent/fm/train-images-idx3-ubyte, "
        ),
        "{errs:?}"
    );
    assert!(errs[0].contains("dataset-fashion-mnist"));
}
