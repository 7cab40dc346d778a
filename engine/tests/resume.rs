//! Resume after `kill -9`, through the real binary: stage processes killed at pseudo-random
//! moments (alone, as the OOM killer would, or with their coordinator, as a power cut
//! would) resume from their epoch checkpoints, and the finished run's metrics and per-epoch
//! losses are bit for bit those of an uninterrupted run. A damaged checkpoint is reported
//! and never used.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

use rusqlite::Connection;

/// A teacher, and an 80-epoch student (about 30 ms an epoch on one core, so that the four
/// kills of the random-moments test, 1.3 s in all, land inside it even on a fast machine)
/// whose loss mix uses both of the loop's random streams (relation masks, random mining)
/// and whose sampler uses the teacher's k-means superclasses.
const RECIPE: &str = r#"
name: resume
seed: 7
data:
  syn: {kind: synthetic, classes: 8, dim: 64, train_per_class: 1600, test_per_class: 16}
stages:
  teacher:
    kind: train
    model: {hidden: [64], embedding: 16, l2norm: true}
    loss: {triplet: {mining: semi_hard}}
    optimizer: {kind: adam, lr: 0.003, weight_decay: 0.01}
    epochs: 3
    batch_size: 32
  student:
    kind: distill
    teacher: teacher
    model: {hidden: [128, 64], embedding: 8}
    loss:
      rkd_d: {weight: 1.0, keep: 0.5}
      cc: {weight: 1.0, kernel: taylor, p: 2, gamma: 0.4}
      triplet: {weight: 0.5, mining: random}
    sampler: {kind: superclass, clusters: 6, classes_per_batch: 3, per_class: 8}
    optimizer: {kind: adam, lr: 0.003, weight_decay: 0.01}
    epochs: 80
    batch_size: 24
  eval: {kind: evaluate, model: student, recall_at: [1, 4]}
"#;

/// (stage, metric, value bits) of every final metric, and (stage, epoch, loss name, value
/// bits) of every epoch's losses.
type Outcome = (Vec<(String, String, u64)>, Vec<(String, i64, String, u64)>);

struct Env {
    dir: tempfile::TempDir,
    recipe: PathBuf,
}

impl Env {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let recipe = dir.path().join("resume.yaml");
        std::fs::write(&recipe, RECIPE).unwrap();
        Self { dir, recipe }
    }

    fn runs(&self) -> PathBuf {
        self.dir.path().join("runs")
    }

    fn command(&self, threads: usize) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_rkd-orch"));
        c.arg("run")
            .arg(&self.recipe)
            .arg("--runs-dir")
            .arg(self.runs())
            .args(["-q", "--threads-per-job", &threads.to_string()])
            // A checkpoint after every epoch (the default spaces them by seconds), so that
            // kills land before, between and during checkpoint writes.
            .env("RKD_CHECKPOINT_SECS", "0");
        c
    }

    /// Runs the recipe to the end.
    fn run(&self, threads: usize) -> Output {
        let out = self.command(threads).output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// Starts the recipe in a process group of its own (its stage processes join it).
    fn spawn(&self, threads: usize) -> Child {
        self.command(threads)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .process_group(0)
            .spawn()
            .unwrap()
    }

    /// The content key of the stage `name`, once the coordinator has written its spec.
    fn key(&self, name: &str) -> Option<String> {
        std::fs::read_dir(self.runs().join("specs"))
            .ok()?
            .flatten()
            .find_map(|e| {
                let spec: serde_json::Value =
                    serde_json::from_slice(&std::fs::read(e.path()).ok()?).ok()?;
                (spec["name"] == name).then(|| spec["key"].as_str().unwrap().to_string())
            })
    }

    /// The stage log of the latest attempt of the stage `name`.
    fn log(&self, name: &str) -> String {
        let key = self.key(name).unwrap();
        std::fs::read_to_string(self.runs().join("logs").join(format!("{key}.log")))
            .unwrap_or_default()
    }

    fn checkpoints(&self, name: &str) -> PathBuf {
        let key = self.key(name).unwrap();
        self.runs().join("cache").join(format!("{key}.ckpt"))
    }

    /// Everything a finished run reports that must not depend on interruptions: final
    /// metrics, per-epoch losses, and the students' weights (as their checksum).
    fn outcome(&self) -> Outcome {
        let c = Connection::open(self.runs().join("results.sqlite")).unwrap();
        let metrics = c
            .prepare(
                "SELECT stage, metric, value FROM results WHERE recipe = 'resume'
                 ORDER BY stage, metric",
            )
            .unwrap()
            .query_map([], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get::<_, f64>(2)?.to_bits()))
            })
            .unwrap()
            .map(Result::unwrap)
            .collect();
        let losses: Vec<_> = c
            .prepare(
                "SELECT rs.stage, e.epoch, e.name, e.value FROM epoch_metrics e
                 JOIN recipe_stages rs USING (key) WHERE rs.recipe = 'resume'
                 ORDER BY rs.stage, e.epoch, e.name",
            )
            .unwrap()
            .query_map([], |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get::<_, f64>(3)?.to_bits(),
                ))
            })
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(
            losses.iter().filter(|l| l.0 == "student").count(),
            80 * 4,
            "80 epochs × (total + 3 terms)"
        );
        (metrics, losses)
    }

    fn student_weights(&self) -> Vec<u8> {
        let key = self.key("student").unwrap();
        std::fs::read(
            self.runs()
                .join("cache")
                .join(key)
                .join("model.safetensors"),
        )
        .unwrap()
    }
}

/// Live `rkd-orch stage` processes started by the coordinator `coordinator`, with the stage
/// names of their specs. (Each stage runs in a process group of its own, so they are found
/// by their parent.)
fn stage_processes(coordinator: u32) -> Vec<(u32, String)> {
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let (Ok(stat), Ok(cmdline)) = (
            std::fs::read_to_string(e.path().join("stat")),
            std::fs::read(e.path().join("cmdline")),
        ) else {
            continue;
        };
        // `pid (comm) state ppid pgrp …`; comm may hold spaces, so split after `)`.
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map_or("", |(_, rest)| rest)
            .split_whitespace()
            .collect();
        if fields.len() < 3 || fields[0] == "Z" || fields[1] != coordinator.to_string() {
            continue;
        }
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let Some(i) = args.iter().position(|a| a == "--spec") else {
            continue;
        };
        if !args.iter().any(|a| a == "stage") {
            continue;
        }
        let name = std::fs::read(&args[i + 1])
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .and_then(|v| v["name"].as_str().map(str::to_string))
            .unwrap_or_default();
        found.push((pid, name));
    }
    found
}

/// `kill -9 pid`, or `kill -9 -pgid` for a whole process group.
fn kill9(pid: i32) {
    // SAFETY: kill(2) touches no memory of ours.
    let r = unsafe { libc::kill(pid, libc::SIGKILL) };
    let err = std::io::Error::last_os_error();
    // The stage may have finished during the delay: nothing left to kill is fine (the trial
    // then checks an uninterrupted run).
    assert!(
        r == 0 || err.raw_os_error() == Some(libc::ESRCH),
        "kill -9 {pid}: {err}"
    );
}

/// Waits until the student's stage process runs; its pid (None if the run ended first).
fn wait_for_student(child: &mut Child) -> Option<u32> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some((pid, _)) = stage_processes(child.id())
            .into_iter()
            .find(|(_, n)| n == "student")
        {
            return Some(pid);
        }
        if child.try_wait().unwrap().is_some() {
            return None;
        }
        assert!(Instant::now() < deadline, "the student never started");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn stage_processes_killed_at_random_moments_resume_to_bit_identical_results() {
    let reference = Env::new();
    reference.run(2);

    let env = Env::new();
    // Deterministic pseudo-random delays after the student starts (SplitMix64 of the
    // trial number: 27, 552, 349 and 372 ms): the first lands before its first checkpoint
    // (a restart from scratch), the others anywhere in its 80 epochs, before, during or
    // after a checkpoint write.
    let mut resumed = 0;
    let mut interrupted = 0;
    for trial in 0..4u64 {
        let delay = Duration::from_millis(10 + splitmix(48 + trial) % 590);
        // Alternate thread counts: results must not depend on them.
        let mut child = env.spawn(1 + trial as usize % 2);
        let Some(pid) = wait_for_student(&mut child) else {
            break; // the run finished before the student started: nothing to interrupt
        };
        std::thread::sleep(delay);
        // Odd trials kill the stage process alone (the coordinator sees it die and
        // fails the run); even ones the whole process group, coordinator included.
        if trial % 2 == 1 {
            kill9(pid as i32);
        } else {
            kill9(-(child.id() as i32));
        }
        let status = child.wait().unwrap();
        if !status.success() {
            interrupted += 1;
        }
        let log = env.log("student");
        if resumed_in(&log) {
            resumed += 1;
        }
        let last = log
            .lines()
            .rev()
            .find(|l| l.starts_with("checkpoint epoch-"));
        eprintln!(
            "trial {trial}: killed {} after {delay:?}: {status}; resumed from {:?}; last: {last:?}",
            if trial % 2 == 1 {
                "the stage"
            } else {
                "the group"
            },
            resumed_from(&log),
        );
        // A killed stage leaves no half-written checkpoint behind that would be used:
        // every `epoch-*` directory there verifies (checked by the resume itself), and
        // at most one is kept.
        let ckpt = env.checkpoints("student");
        let epochs = std::fs::read_dir(&ckpt)
            .map(|rd| {
                rd.flatten()
                    .filter(|e| e.file_name().to_string_lossy().starts_with("epoch-"))
                    .count()
            })
            .unwrap_or(0);
        assert!(epochs <= 2, "{epochs} checkpoints in {}", ckpt.display());
    }
    env.run(2);
    if resumed_in(&env.log("student")) {
        resumed += 1;
    }
    assert!(
        interrupted >= 3,
        "only {interrupted} of 4 kills interrupted a run"
    );
    assert!(
        resumed >= 2,
        "only {resumed} runs resumed from a checkpoint:\n{}",
        env.log("student")
    );
    assert_eq!(env.outcome(), reference.outcome());
    assert_eq!(env.student_weights(), reference.student_weights());
    // Committed: the checkpoints are gone.
    assert!(!env.checkpoints("student").exists());
    assert!(!env.checkpoints("teacher").exists());
}

fn splitmix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn resumed_in(log: &str) -> bool {
    resumed_from(log).is_some()
}

/// The epoch a stage log says it resumed from.
fn resumed_from(log: &str) -> Option<u32> {
    let rest = log.split("resuming from checkpoint epoch-").nth(1)?;
    rest.split(' ').next()?.parse().ok()
}

#[test]
fn a_flipped_byte_in_the_latest_checkpoint_is_reported_and_never_used() {
    let reference = Env::new();
    reference.run(1);

    let env = Env::new();
    let mut child = env.spawn(1);
    wait_for_student(&mut child).expect("the student started");
    let ckpt = env.checkpoints("student");
    let latest = |dir: &Path| -> Option<u32> {
        std::fs::read_dir(dir)
            .ok()?
            .flatten()
            .filter_map(|e| {
                e.file_name()
                    .to_string_lossy()
                    .strip_prefix("epoch-")?
                    .parse()
                    .ok()
            })
            .max()
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while latest(&ckpt).is_none_or(|e| e < 3) {
        assert!(
            Instant::now() < deadline,
            "no checkpoint in {}",
            ckpt.display()
        );
        assert!(child.try_wait().unwrap().is_none(), "the run ended");
        std::thread::sleep(Duration::from_millis(2));
    }
    kill9(-(child.id() as i32));
    child.wait().unwrap();

    let e = latest(&ckpt).unwrap();
    let weights = ckpt.join(format!("epoch-{e}")).join("model.safetensors");
    let mut bytes = std::fs::read(&weights).unwrap();
    let i = bytes.len() / 2;
    bytes[i] ^= 0x10;
    std::fs::write(&weights, &bytes).unwrap();

    let out = env.run(1);
    let log = env.log("student");
    assert!(
        log.contains(&format!(
            "checkpoint epoch-{e} is corrupt (model.safetensors does not match its checksum); ignoring it"
        )),
        "{log}"
    );
    // Never resumed from the damaged checkpoint. If the kill came after it was in place
    // but before its predecessor was removed, that one is the previous valid checkpoint
    // and is used; otherwise training restarts from scratch.
    if let Some(from) = resumed_from(&log) {
        assert!(from < e, "resumed from epoch-{from}:\n{log}");
    }
    assert!(out.status.success());
    assert_eq!(env.outcome(), reference.outcome());
    assert_eq!(env.student_weights(), reference.student_weights());
}
