//! Derived artifacts (`cache/derived/`) are keyed by content: moving the data set to another
//! directory reuses the teacher's outputs and its k-means clustering instead of recomputing
//! them (k-means used to hash the data's path).

use std::path::Path;
use std::process::Command;

use rkd_orch::ml::data::write_idx;

/// Four classes of 5×5 "images" in IDX files under `dir`.
fn write_data(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    let make = |n: usize, seed: u64| {
        let mut s = seed;
        let mut imgs = Vec::with_capacity(n * 25);
        let labels: Vec<u8> = (0..n).map(|i| (i % 4) as u8).collect();
        for &c in &labels {
            for p in 0..25u8 {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let noise = (s >> 58) as u8;
                imgs.push(if p % 4 == c { 200 + noise } else { noise });
            }
        }
        (imgs, labels)
    };
    let (ti, tl) = make(256, 1);
    let (vi, vl) = make(64, 2);
    write_idx(&dir.join("train-images-idx3-ubyte"), &[256, 5, 5], &ti).unwrap();
    write_idx(&dir.join("train-labels-idx1-ubyte"), &[256], &tl).unwrap();
    write_idx(&dir.join("t10k-images-idx3-ubyte"), &[64, 5, 5], &vi).unwrap();
    write_idx(&dir.join("t10k-labels-idx1-ubyte"), &[64], &vl).unwrap();
}

fn recipe(data: &Path, student_epochs: u32) -> String {
    format!(
        r#"
name: derived
data:
  d: {{kind: fashion-mnist, path: {}, train_classes: [0, 1, 2, 3], eval_classes: []}}
defaults: {{data: d, batch_size: 32, optimizer: {{kind: adam, lr: 0.003}}}}
stages:
  teacher: {{kind: train, model: {{hidden: [16], embedding: 8}}, loss: {{triplet: 1}}, epochs: 1}}
  student:
    kind: distill
    teacher: teacher
    model: {{hidden: [8], embedding: 4}}
    loss: {{rkd_d: 1}}
    sampler: {{kind: superclass, clusters: 2, classes_per_batch: 2, per_class: 16}}
    epochs: {student_epochs}
"#,
        data.display()
    )
}

fn run(dir: &Path, text: &str) -> String {
    let path = dir.join("derived.yaml");
    std::fs::write(&path, text).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_rkd-orch"))
        .args(["run", "--quiet", "--runs-dir"])
        .arg(dir.join("runs"))
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Every stage's log, in one text.
    let mut logs = String::new();
    for e in std::fs::read_dir(dir.join("runs/logs")).unwrap() {
        logs += &std::fs::read_to_string(e.unwrap().path()).unwrap();
    }
    logs
}

#[test]
fn moving_the_data_reuses_what_was_derived_from_it() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    write_data(&a);
    let first = run(dir.path(), &recipe(&a, 1));
    assert!(first.contains("superclasses: k-means"), "{first}");
    std::fs::rename(&a, &b).unwrap();
    // Same data elsewhere, a student with another key: the teacher is cached (its key has
    // the content, not the path), and what was derived from it is reused.
    let second = run(dir.path(), &recipe(&b, 2));
    let reused = |what: &str| second.matches(&format!("{what}: reusing")).count();
    assert_eq!(reused("superclasses"), 1, "{second}");
    assert_eq!(reused("teacher outputs"), 1, "{second}");
    let derived: Vec<String> = std::fs::read_dir(dir.path().join("runs/cache/derived"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    let count = |prefix: &str| derived.iter().filter(|n| n.starts_with(prefix)).count();
    // One artifact and its checksum each.
    assert_eq!((count("kmeans-"), count("teacher-")), (2, 2), "{derived:?}");
}
