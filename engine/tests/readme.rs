//! What the README says about the shipped recipes is what the engine does: every stage count
//! it quotes (`rkd-orch plan recipes/X.yaml  # N stages`, `X: N stages, …` in a printed
//! run) matches `plan`, and the test command it gives is the one CI runs.

use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn planned_stages(recipe: &str) -> usize {
    let runs = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_rkd-orch"))
        .current_dir(root())
        .args(["plan", recipe, "--format", "json", "--runs-dir"])
        .arg(runs.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "plan {recipe}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    plan["stages"].as_array().unwrap().len()
}

/// The number in `N stages` after `prefix` on `line`, if the line has one.
fn stages_after(line: &str, prefix: &str) -> Option<usize> {
    let rest = &line[line.find(prefix)? + prefix.len()..];
    let n: String = rest
        .trim_start()
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    let after = rest.trim_start()[n.len()..].trim_start();
    (after.starts_with("stages") && !n.is_empty()).then(|| n.parse().unwrap())
}

#[test]
fn the_readmes_stage_counts_match_plan() {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let mut checked = 0;
    for line in readme.lines() {
        // `rkd-orch plan recipes/X.yaml   # 86 stages, …`
        if let Some(at) = line.find("rkd-orch plan recipes/") {
            let recipe = line[at + "rkd-orch plan ".len()..]
                .split_whitespace()
                .next()
                .unwrap();
            if let Some(n) = stages_after(line, "#") {
                assert_eq!(
                    planned_stages(recipe),
                    n,
                    "README says `{line}`, plan disagrees"
                );
                checked += 1;
            }
        }
        // A printed run: `quickstart: 8 stages, 0 cached, …`
        if let Some((name, _)) = line.split_once(':') {
            let recipe = format!("recipes/{name}.yaml");
            if root().join(&recipe).exists() {
                if let Some(n) = stages_after(line, ":") {
                    assert_eq!(
                        planned_stages(&recipe),
                        n,
                        "README says `{line}`, plan disagrees"
                    );
                    checked += 1;
                }
            }
        }
    }
    assert!(
        checked >= 2,
        "expected the README to quote the stage counts of at least two recipes, found {checked}"
    );
    // Prose may quote it too: the ablation's count in words must be the planned one.
    let n = planned_stages("recipes/ablation_taylor_p.yaml");
    assert!(
        readme.contains(&format!("{n} stages")),
        "the README's Sweeps section does not say {n} stages"
    );
}

#[test]
fn ci_runs_the_readmes_test_command() {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let section = &readme[readme.find("## Run the tests").expect("a test section")..];
    let block = section
        .split("```sh")
        .nth(1)
        .unwrap()
        .split("```")
        .next()
        .unwrap();
    let command = block.trim();
    assert_eq!(command, "cargo test --release");
    let ci = std::fs::read_to_string(root().join(".ci/run")).unwrap();
    assert!(
        ci.lines().any(|l| l.trim() == command),
        ".ci/run does not run the README's test command `{command}` on a line of its own"
    );
}
