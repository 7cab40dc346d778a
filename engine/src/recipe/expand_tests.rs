//! The recipe language beyond single stages: defaults, matrix sweeps, fan-out,
//! self-distillation chains and `--set`, with every problem at its line and column.

use super::*;
use crate::spec::{Kernel, Loss, Optimizer, TrainConfig};

/// Line numbers below refer to this text (line 1 is `name: sweep`).
const SWEEP: &str = "name: sweep
data:
  syn: {kind: synthetic, classes: 6, dim: 8, train_per_class: 10, test_per_class: 5}
defaults:
  epochs: 1
  batch_size: 12
  optimizer: {kind: adam, lr: 0.001, weight_decay: 0.01}
stages:
  teacher:
    kind: train
    model: {hidden: [16], embedding: 8}
    loss: {triplet: 1.0}
    matrix:
      seeds: [0, 1]
  student:
    kind: distill
    teacher: teacher
    model: {hidden: [8], embedding: 4}
    loss: {cc: 1.0}
    optimizer: {lr: 0.01}
    matrix:
      loss.cc.p: [1, 2, 3]
      sampler_free.kind: [x]
  eval:
    kind: evaluate
    model: student
";

fn sweep() -> String {
    // `sampler_free` is a deliberate mistake used by one test; drop it for the others.
    SWEEP.replace("      sampler_free.kind: [x]\n", "")
}

fn parse_sets(text: &str, sets: &[&str]) -> Result<Recipe, RecipeError> {
    let sets: Vec<SetArg> = sets
        .iter()
        .enumerate()
        .map(|(i, s)| SetArg::parse(s, i + 1).unwrap())
        .collect();
    parse_with("r.yaml", "r", text, &sets)
}

fn errors(text: &str, sets: &[&str]) -> Vec<String> {
    match parse_sets(text, sets) {
        Ok(_) => panic!("expected the recipe to be refused"),
        Err(e) => e.to_string().lines().map(str::to_string).collect(),
    }
}

fn names(r: &Recipe) -> Vec<&str> {
    r.stages.iter().map(|s| s.name.as_str()).collect()
}

fn training(r: &Recipe, name: &str) -> TrainConfig {
    r.stages
        .iter()
        .find(|s| s.name == name)
        .and_then(|s| s.config.training())
        .unwrap_or_else(|| panic!("no training stage {name}"))
        .clone()
}

#[test]
fn a_matrix_expands_and_dependants_fan_out_with_it() {
    let r = parse_sets(&sweep(), &[]).unwrap();
    assert_eq!(
        names(&r),
        [
            "teacher[seed=0]",
            "teacher[seed=1]",
            "student[seed=0,p=1]",
            "student[seed=0,p=2]",
            "student[seed=0,p=3]",
            "student[seed=1,p=1]",
            "student[seed=1,p=2]",
            "student[seed=1,p=3]",
            "eval[seed=0,p=1]",
            "eval[seed=0,p=2]",
            "eval[seed=0,p=3]",
            "eval[seed=1,p=1]",
            "eval[seed=1,p=2]",
            "eval[seed=1,p=3]",
        ]
    );
    // The sweep reached the config: teacher seeds and CC orders.
    assert_eq!(training(&r, "teacher[seed=1]").seed, 1);
    let s = training(&r, "student[seed=1,p=3]");
    assert!(matches!(
        s.loss[0].loss,
        Loss::Cc {
            kernel: Kernel::Taylor { p: 3, .. }
        }
    ));
    // Each variant is wired to the matching variant of what it uses.
    let e = r
        .stages
        .iter()
        .find(|s| s.name == "eval[seed=1,p=2]")
        .unwrap();
    assert_eq!(e.inputs[0].stage, "student[seed=1,p=2]");
    let st = r
        .stages
        .iter()
        .find(|s| s.name == "student[seed=1,p=2]")
        .unwrap();
    assert_eq!(st.inputs[0].stage, "teacher[seed=1]");
    assert_eq!(st.base, "student");
    let labels: Vec<(&str, &str, &str)> = st
        .params
        .iter()
        .map(|p| (p.origin.as_str(), p.path.as_str(), p.value.as_str()))
        .collect();
    assert_eq!(
        labels,
        [("teacher", "seed", "1"), ("student", "loss.cc.p", "2")]
    );
}

#[test]
fn defaults_are_inherited_merged_and_overridden() {
    let r = parse_sets(&sweep(), &[]).unwrap();
    let t = training(&r, "teacher[seed=0]");
    assert_eq!((t.epochs, t.batch_size), (1, 12));
    assert_eq!(
        t.optimizer,
        Optimizer::Adam {
            lr: 0.001,
            weight_decay: 0.01
        }
    );
    // The student's optimizer changes only lr and keeps the default's other settings.
    let s = training(&r, "student[seed=0,p=1]");
    assert_eq!(
        s.optimizer,
        Optimizer::Adam {
            lr: 0.01,
            weight_decay: 0.01
        }
    );
    // An optimizer of another kind replaces the default whole.
    let text = sweep().replace("optimizer: {lr: 0.01}", "optimizer: {kind: sgd, lr: 0.1}");
    let r = parse_sets(&text, &[]).unwrap();
    assert_eq!(
        training(&r, "student[seed=0,p=1]").optimizer,
        Optimizer::Sgd { lr: 0.1 }
    );
}

#[test]
fn a_stage_written_with_defaults_has_the_key_of_the_same_stage_written_out() {
    let inline = "data:
  syn: {kind: synthetic}
stages:
  t:
    kind: train
    model: {hidden: [8], embedding: 4}
    loss: {triplet: 1}
    epochs: 1
    optimizer: {kind: adam, lr: 0.01}
";
    let with_defaults = "# the same stage, with its settings in defaults
data:
  syn: {kind: synthetic}
defaults: {optimizer: {lr: 0.01}, epochs: 1}
stages:
  t: {loss: {triplet: 1}, model: {embedding: 4, hidden: [8]}, kind: train}
";
    let a = crate::plan::build(parse_sets(inline, &[]).unwrap()).unwrap();
    let b = crate::plan::build(parse_sets(with_defaults, &[]).unwrap()).unwrap();
    assert_eq!(a.stages[0].key, b.stages[0].key);
    // And `--set` is part of the key.
    let c = crate::plan::build(parse_sets(inline, &["stages.t.epochs=2"]).unwrap()).unwrap();
    assert_ne!(a.stages[0].key, c.stages[0].key);
    let d = crate::plan::build(parse_sets(inline, &["stages.t.epochs=1"]).unwrap()).unwrap();
    assert_eq!(a.stages[0].key, d.stages[0].key);
}

#[test]
fn exclude_include_and_labels() {
    let text = sweep().replace(
        "      loss.cc.p: [1, 2, 3]\n",
        "      loss.cc.p: [1, 2, 3]
      loss.cc.weight: [0.5, 1]
      exclude:
        - {p: 3, cc: 0.5}
      include:
        - {p: 8, cc: 2}
",
    );
    let r = parse_sets(&text, &[]).unwrap();
    let students: Vec<&str> = names(&r)
        .into_iter()
        .filter(|n| n.starts_with("student[seed=0"))
        .collect();
    assert_eq!(
        students,
        [
            "student[seed=0,p=1,cc=0.5]",
            "student[seed=0,p=1,cc=1]",
            "student[seed=0,p=2,cc=0.5]",
            "student[seed=0,p=2,cc=1]",
            "student[seed=0,p=3,cc=1]",
            "student[seed=0,p=8,cc=2]",
        ]
    );
    assert_eq!(training(&r, "student[seed=0,p=8,cc=2]").loss[0].weight, 2.0);
}

#[test]
fn self_distillation_is_a_chain_and_a_variant_can_be_named_exactly() {
    let text = format!(
        "{}  born:
    kind: self_distill
    teacher: teacher
    generations: 3
    loss: {{rkd_d: 1}}
  eval_born:
    kind: evaluate
    model: born
  eval_last:
    kind: evaluate
    model: \"born[seed=1,gen=3]\"
",
        sweep()
    );
    let r = parse_sets(&text, &[]).unwrap();
    let born: Vec<&str> = names(&r)
        .into_iter()
        .filter(|n| n.starts_with("born["))
        .collect();
    assert_eq!(
        born,
        [
            "born[seed=0,gen=1]",
            "born[seed=0,gen=2]",
            "born[seed=0,gen=3]",
            "born[seed=1,gen=1]",
            "born[seed=1,gen=2]",
            "born[seed=1,gen=3]",
        ]
    );
    let stage = |n: &str| r.stages.iter().find(|s| s.name == n).unwrap();
    // A chain: generation g is taught by g − 1, the first by the teacher.
    assert_eq!(
        stage("born[seed=1,gen=1]").inputs[0].stage,
        "teacher[seed=1]"
    );
    assert_eq!(
        stage("born[seed=1,gen=3]").inputs[0].stage,
        "born[seed=1,gen=2]"
    );
    assert_eq!(stage("born[seed=1,gen=3]").kind, "self_distill");
    // Same architecture as the teacher unless told otherwise.
    assert_eq!(
        training(&r, "born[seed=0,gen=2]").model,
        training(&r, "teacher[seed=0]").model
    );
    assert_eq!(
        names(&r)
            .iter()
            .filter(|n| n.starts_with("eval_born["))
            .count(),
        6
    );
    assert_eq!(stage("eval_last").inputs[0].stage, "born[seed=1,gen=3]");
}

#[test]
fn set_overrides_any_key_and_wildcards_every_stage_that_has_it() {
    let r = parse_sets(
        &sweep(),
        &[
            "stages.*.epochs=3",
            "stages.teacher.model.embedding=16",
            "data.syn.train_per_class=4",
            "stages.student.matrix.loss.cc.p=[4]",
        ],
    )
    .unwrap();
    assert_eq!(training(&r, "teacher[seed=0]").epochs, 3);
    assert_eq!(training(&r, "student[seed=0,p=4]").epochs, 3);
    assert_eq!(training(&r, "teacher[seed=0]").model.embedding_dim(), 16);
    assert_eq!(names(&r).len(), 6);
    // A loss term written as a bare weight takes options from --set.
    let r = parse_sets(
        &sweep().replace("loss: {cc: 1.0}", "loss: {cc: 0.5, rkd_d: 1}"),
        &["stages.student.loss.rkd_d.keep=0.5"],
    )
    .unwrap();
    let s = training(&r, "student[seed=0,p=1]");
    let rkd = s.loss.iter().find(|t| t.name() == "rkd_d").unwrap();
    assert_eq!((rkd.weight, rkd.keep), (1.0, Some(0.5)));
}

#[test]
fn every_language_mistake_is_reported_at_its_line_and_column() {
    let errs = errors(SWEEP, &[]);
    assert_eq!(
        errs,
        ["r.yaml:23:7: stages.student.matrix: `sampler_free.kind` is not a key of a distill stage; expected one of: teacher, data, model, loss, sampler, optimizer, epochs, batch_size, seed"]
    );

    let cases: Vec<(String, &str)> = vec![
        // p < 1 inside a matrix: reported once, at the value.
        (
            sweep().replace("loss.cc.p: [1, 2, 3]", "loss.cc.p: [0, 2]"),
            "r.yaml:22:19: stages.student[seed=0,p=0].loss.cc.p: must be at least 1, found 0",
        ),
        (
            sweep().replace("loss.cc.p: [1, 2, 3]", "loss.cc.p: []"),
            "r.yaml:22:18: stages.student.matrix.loss.cc.p: empty list, so the matrix has no combination; give at least one value",
        ),
        (
            sweep().replace("      seeds: [0, 1]\n", "      {}\n").replace("    matrix:\n      {}", "    matrix: {}"),
            "r.yaml:13:5: stages.teacher.matrix: empty matrix; give at least one path with a list of values",
        ),
        (
            sweep().replace("loss.cc.p: [1, 2, 3]", "loss.cc.p: 3"),
            "r.yaml:22:18: stages.student.matrix.loss.cc.p: expected a list of values, e.g. [1, 2, 3]",
        ),
        (
            sweep().replace("loss.cc.p: [1, 2, 3]", "loss.cc.p: [1]\n      exclude: [{q: 1}]"),
            "r.yaml:23:18: stages.student.matrix.exclude: `q` is not swept by this matrix; did you mean `p`?",
        ),
        (
            sweep().replace("loss.cc.p: [1, 2, 3]", "loss.cc.p: [1]\n      exclude: [{p: 5}]"),
            "r.yaml:23:21: stages.student.matrix.exclude: entry 1 matches no combination; check its values against the lists",
        ),
        (
            sweep().replace("loss.cc.p: [1, 2, 3]", "loss.cc.p: [1]\n      exclude: [{p: 1}]"),
            "r.yaml:21:5: stages.student.matrix: every combination is excluded, so the stage would never run",
        ),
        (
            sweep().replace("loss.cc.p: [1, 2, 3]", "teacher: [a, b]"),
            "r.yaml:22:7: stages.student.matrix: `teacher` cannot be swept; declare one stage per value instead",
        ),
        // A default's mistake is reported once, where the default is written.
        (
            sweep().replace("  epochs: 1\n", "  epochs: -1\n"),
            "r.yaml:5:11: stages.teacher[seed=0].epochs: expected a whole number ≥ 0, found `-1`",
        ),
        (
            sweep().replace("  epochs: 1\n", "  epoch: 1\n"),
            "r.yaml:5:3: defaults: unknown key `epoch`; did you mean `epochs`?",
        ),
        (
            sweep().replace("model: student", "model: \"student[p=9]\""),
            "r.yaml:25:12: stages.eval.model: `student` has no variant `student[p=9]`; its variants are student[seed=0,p=1], student[seed=0,p=2], student[seed=0,p=3], student[seed=1,p=1], student[seed=1,p=2], student[seed=1,p=3]",
        ),
        (
            sweep().replace("model: student", "model: studnt"),
            "r.yaml:25:12: stages.eval.model: no stage named `studnt`; did you mean `student`?",
        ),
        (
            format!("{}  born: {{kind: self_distill, teacher: teacher, loss: {{rkd_d: 1}}}}\n", sweep()),
            "r.yaml:26:3: stages.born: missing `generations:` (how many students in the chain; generation g is taught by g − 1)",
        ),
    ];
    for (text, want) in cases {
        let errs = errors(&text, &[]);
        assert_eq!(errs, [want], "{text}");
    }
}

#[test]
fn set_mistakes_name_the_argument() {
    let errs = errors(
        &sweep(),
        &[
            "stages.techer.epochs=3",
            "stages.student.loss.cc.p=0",
            "stages.*.recall_at=[1, 0]",
            "stage.teacher.epochs=1",
        ],
    );
    assert_eq!(
        errs,
        [
            "--set stages.techer.epochs=3: no entry `techer` under `stages:`; did you mean `teacher`?",
            "--set stages.student.loss.cc.p=0: `loss.cc.p` of stage `student` is swept by its matrix, which would override this value; set `stages.student.matrix.loss.cc.p=[…]` instead",
            "--set stages.*.recall_at=[1, 0]: stages.eval[seed=0,p=1].recall_at[1]: must be at least 1, found 0",
            "--set stage.teacher.epochs=1: unknown top-level key `stage`; did you mean `stages`?",
        ]
    );
    assert!(SetArg::parse("epochs", 1)
        .unwrap_err()
        .contains("expected PATH=VALUE"));
    assert!(SetArg::parse("stages.t.epochs=[1", 1)
        .unwrap_err()
        .contains("the value is not valid YAML"));
}

/// Samplers, data sets and transfer stages: each mistake at its line and column.
#[test]
fn sampler_data_and_transfer_mistakes_point_at_the_line() {
    let base = "data:
  syn: {kind: synthetic, classes: 6, dim: 8}
stages:
  t:
    kind: train
    model: {hidden: [8], embedding: 4}
    loss: {triplet: 1}
    batch_size: 32
    sampler: SAMPLER
";
    let cases = [
        (
            "{kind: class_balanced, classes_per_batch: 5}",
            "r.yaml:9:56: stages.t.sampler.classes_per_batch: 5 groups per batch but there are only 3 training classes; lower `classes_per_batch`",
        ),
        (
            "{kind: class_balanced, classes_per_batch: 2, per_class: 8}",
            "r.yaml:9:70: stages.t.sampler: 2 × 8 = 16 samples per batch, but batch_size is 32; drop one of them or make them agree",
        ),
        (
            "{kind: pk, p: 3}",
            "r.yaml:9:14: stages.t.sampler: batch_size 32 does not split into 3 groups of at least 2 samples; set `k:` or a batch_size that is a multiple of 3",
        ),
        (
            "{kind: superclass, clusters: 4, classes_per_batch: 2}",
            "r.yaml:9:14: stages.t.sampler: superclass batches come from k-means on a teacher's embeddings; use it on a distill or self_distill stage",
        ),
        (
            "{kind: class_balance, classes_per_batch: 2}",
            "r.yaml:9:21: stages.t.sampler.kind: unknown sampler `class_balance`; did you mean `class_balanced`?",
        ),
        (
            "balanced",
            "r.yaml:9:14: stages.t.sampler: `balanced` needs its batch shape; write e.g. {kind: class_balanced, classes_per_batch: 8}, {kind: superclass, clusters: 10, classes_per_batch: 8} or {kind: pk, p: 8, k: 4}; expected one of: random, class_balanced, superclass, pk",
        ),
    ];
    for (sampler, want) in cases {
        let errs = errors(&base.replace("SAMPLER", sampler), &[]);
        assert_eq!(errs, [want], "{sampler}");
    }
    // A balanced sampler sets the batch: 2 classes × 16 = 32.
    let r = parse_sets(
        &base.replace("SAMPLER", "{kind: class_balanced, classes_per_batch: 2}"),
        &[],
    )
    .unwrap();
    let t = training(&r, "t");
    assert_eq!(t.batch_size, 32);
    assert_eq!(
        t.sampler,
        crate::ml::sampler::SamplerSpec::ClassBalanced {
            classes_per_batch: 2,
            per_class: 16
        }
    );

    let data_cases = [
        (
            "{kind: cifar10}",
            "r.yaml:2:3: data.d: missing `path:` (the directory of the CIFAR binary version, e.g. cifar-10-batches-bin)",
        ),
        (
            "{kind: cifar100, path: /nonexistent, labels: fin}",
            "r.yaml:2:51: data.d.labels: unknown label set `fin`; did you mean `fine`?",
        ),
        (
            "{kind: synthetic, transforms: [{kind: rotate}]}",
            "r.yaml:2:37: data.d.transforms[0]: missing `degrees:` (e.g. degrees: 30)",
        ),
        (
            "{kind: synthetic, transforms: [{kind: subsample, fraction: 2}]}",
            "r.yaml:2:37: data.d.transforms[0]: `fraction` is the share of samples kept, in (0, 1]; got 2",
        ),
        (
            "{kind: synthetic, transforms: [rotate]}",
            "r.yaml:2:37: data.d.transforms[0]: `rotate` needs parameters; write e.g. {kind: rotate, degrees: 30}",
        ),
    ];
    for (data, want) in data_cases {
        let text = format!(
            "data:\n  d: {data}\nstages:\n  t: {{kind: train, model: {{}}, loss: {{triplet: 1}}}}\n"
        );
        let errs = errors(&text, &[]);
        assert_eq!(
            errs.first().map(String::as_str),
            Some(want),
            "{data}: {errs:#?}"
        );
    }

    let transfer = "data:
  src: {kind: synthetic, classes: 6, dim: 8}
  shifted: {kind: synthetic, classes: 6, dim: 8, seed: 5, transforms: [{kind: subsample, fraction: 0.5, seed: 1}]}
stages:
  t: {kind: train, data: src, model: {}, loss: {triplet: 1}}
  x: {kind: transfer, model: t, probe: {epochs: 0}}
";
    assert_eq!(
        errors(transfer, &[]),
        [
            "r.yaml:6:3: stages.x: missing `data:` (the data set or domain the model is transferred to)",
        ]
    );
    let errs = errors(
        &transfer.replace("probe: {epochs: 0}", "data: shifted, probe: {epochs: 0}"),
        &[],
    );
    assert_eq!(
        errs,
        ["r.yaml:6:64: stages.x.probe.epochs: must be at least 1, found 0"]
    );
    let r = parse_sets(
        &transfer.replace("probe: {epochs: 0}", "data: shifted, probe: true"),
        &[],
    )
    .unwrap();
    let StageConfig::Transfer(x) = &r.stages[1].config else {
        panic!("a transfer stage")
    };
    assert_eq!(x.probe.as_ref().unwrap().epochs, 20);
    assert_eq!(x.data.transforms.len(), 1);
}

#[test]
fn matrix_labels_name_a_mapping_value_by_its_keys() {
    let text = sweep().replace(
        "    loss: {cc: 1.0}\n    optimizer: {lr: 0.01}\n    matrix:\n      loss.cc.p: [1, 2, 3]\n",
        "    optimizer: {lr: 0.01}
    matrix:
      loss: [{rkd_d: 1, rkd_a: 2}, {rkd_d: 1}, {rkd_a: 1}, {rkd_a: 3}]
",
    );
    let r = parse_sets(&text, &[]).unwrap();
    let students: Vec<&str> = names(&r)
        .into_iter()
        .filter(|n| n.starts_with("student[seed=0"))
        .collect();
    // A mix is named by its terms; two values that would share a name get their position.
    assert_eq!(
        students,
        [
            "student[seed=0,loss=rkd_d+rkd_a]",
            "student[seed=0,loss=rkd_d]",
            "student[seed=0,loss=rkd_a#3]",
            "student[seed=0,loss=rkd_a#4]",
        ]
    );
    assert_eq!(
        training(&r, "student[seed=0,loss=rkd_a#4]").loss[0].weight,
        3.0
    );
    // A mapping with a `kind` is still named by it (the shipped recipes' names).
    let kinds = sweep().replace(
        "      loss.cc.p: [1, 2, 3]\n",
        "      sampler: [{kind: random}, {kind: class_balanced, classes_per_batch: 3}]\n",
    );
    let r = parse_sets(&kinds, &[]).unwrap();
    assert!(names(&r).contains(&"student[seed=1,sampler=class_balanced]"));
}

/// A teacher, a `defaults: model:` meant for the students, and a self-distillation chain.
const BORN_UNDER_DEFAULTS: &str = "name: born
data:
  syn: {kind: synthetic, classes: 6, dim: 8, train_per_class: 10, test_per_class: 5}
defaults:
  model: {hidden: [4], embedding: 2}
stages:
  teacher:
    kind: train
    model: {hidden: [16], embedding: 8}
    loss: {triplet: 1.0}
  born:
    kind: self_distill
    teacher: teacher
    generations: 2
    loss: {rkd_d: 1}
";

#[test]
fn self_distillation_keeps_the_teachers_architecture_under_a_default_model() {
    let r = parse_sets(BORN_UNDER_DEFAULTS, &[]).unwrap();
    let teacher = training(&r, "teacher").model;
    assert_eq!(training(&r, "born[gen=1]").model, teacher);
    assert_eq!(training(&r, "born[gen=2]").model, teacher);
    // The same keys as the chain written with the teacher's architecture.
    let explicit = BORN_UNDER_DEFAULTS.replace(
        "    generations: 2\n",
        "    generations: 2\n    model: {hidden: [16], embedding: 8}\n",
    );
    let keys = |text: &str| -> Vec<String> {
        let p = crate::plan::build(parse_sets(text, &[]).unwrap()).unwrap();
        p.stages.iter().map(|s| s.key.clone()).collect()
    };
    assert_eq!(keys(BORN_UNDER_DEFAULTS), keys(&explicit));
    // A model of the stage's own wins, merged with the default's keys as for any stage.
    let own = BORN_UNDER_DEFAULTS.replace(
        "    generations: 2\n",
        "    generations: 2\n    model: {embedding: 3}\n",
    );
    let r = parse_sets(&own, &[]).unwrap();
    let m = training(&r, "born[gen=2]").model;
    assert_eq!(m.tap_dim(crate::ml::model::Tap::Embedding), Some(3));
    assert_ne!(m, teacher);
    // So does a swept one.
    let swept = BORN_UNDER_DEFAULTS.replace(
        "    generations: 2\n",
        "    generations: 2\n    matrix: {model.embedding: [5]}\n",
    );
    let r = parse_sets(&swept, &[]).unwrap();
    let m = training(&r, "born[embedding=5,gen=1]").model;
    assert_eq!(m.tap_dim(crate::ml::model::Tap::Embedding), Some(5));
}

#[test]
fn expansion_limits_are_checked_before_anything_is_built() {
    // 10^6 combinations, refused at the `matrix` key (line 13) without building them.
    let values: Vec<String> = (0..1000).map(|i| i.to_string()).collect();
    let big = sweep().replace(
        "      seeds: [0, 1]\n",
        &format!(
            "      seeds: [{}]\n      epochs: [{}]\n",
            values.join(", "),
            values.join(", ")
        ),
    );
    let e = errors(&big, &[]);
    assert!(
        e[0].starts_with("r.yaml:13:5: stages.teacher.matrix: 1000000 combinations (1000 × 1000)"),
        "{e:?}"
    );
    assert!(e[0].contains("`--max-stages N` raises it"), "{e:?}");
    // Generations: too many, and more than any integer holds, at the value.
    for g in ["1000000000000", "100000000000000000000000000"] {
        let chain = BORN_UNDER_DEFAULTS.replace("generations: 2", &format!("generations: {g}"));
        let e = errors(&chain, &[]);
        assert!(
            e[0].starts_with(&format!(
                "r.yaml:14:18: stages.born.generations: {g} generations are more than"
            )),
            "{e:?}"
        );
    }
}

#[test]
fn the_stage_limit_counts_the_fan_out() {
    // 2 teachers × 3 students + 6 evaluations = 14 stages with the teacher's 2.
    let r = parse_sets(&sweep(), &[]).unwrap();
    assert_eq!(r.stages.len(), 14);
    super::expand::set_max_stages(13);
    let e = parse_sets(&sweep(), &[]);
    super::expand::set_max_stages(super::expand::DEFAULT_MAX_STAGES);
    let e = e.unwrap_err().to_string();
    assert!(
        e.starts_with("r.yaml:23:3: stages.eval: expands to 6 stages (6 variants of its inputs × 1 combination), which with the 8 before it is more than the recipe may have; the limit is 13 stages"),
        "{e}"
    );
}
