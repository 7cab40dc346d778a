//! The engine's promises, tested for real: signals reach the stage process groups and the run
//! exits 130; a second signal kills at once; two coordinators on one runs directory share
//! the work and never train a stage twice; a crashed stage fails its dependants, and
//! `--retries` brings it back; a flipped byte in a cache entry is caught and rebuilt;
//! `--json`, `status`, `gc`, and `--gpus` in a CPU-only build.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use rusqlite::Connection;

/// `long` trains for several seconds (400 small epochs); the rest is quick.
const RECIPE: &str = r#"
name: eng
data:
  syn: {kind: synthetic, classes: 8, dim: 64, train_per_class: 400, test_per_class: 20}
defaults: {batch_size: 32, model: {hidden: [64], embedding: 8}, loss: {triplet: 1}}
stages:
  long: {kind: train, epochs: 400}
  a: {kind: train, epochs: 3, seed: 1}
  b: {kind: train, epochs: 3, seed: 2}
  c: {kind: train, epochs: 3, seed: 3}
  d: {kind: train, epochs: 3, seed: 4}
  eval_long: {kind: evaluate, model: long}
  eval_a: {kind: evaluate, model: a}
"#;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_rkd-orch"))
}

struct Env {
    dir: tempfile::TempDir,
}

impl Env {
    fn new() -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
        }
    }
    fn recipe(&self, text: &str) -> PathBuf {
        let p = self.dir.path().join("eng.yaml");
        std::fs::write(&p, text).unwrap();
        p
    }
    fn runs(&self) -> PathBuf {
        self.dir.path().join("runs")
    }
    fn command(&self, args: &[&str], recipe: Option<&Path>) -> Command {
        let mut c = bin();
        c.args(args);
        if let Some(r) = recipe {
            c.arg(r);
        }
        c.arg("--runs-dir").arg(self.runs());
        c
    }
    fn cmd(&self, args: &[&str], recipe: &Path) -> Output {
        self.command(args, Some(recipe)).output().unwrap()
    }
    fn spawn(&self, args: &[&str], recipe: &Path) -> Child {
        self.command(args, Some(recipe))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }
    /// Process ids of this environment's stage processes.
    fn stage_pids(&self) -> Vec<i32> {
        let out = Command::new("pgrep")
            .arg("-f")
            .arg(format!("{}/specs/", self.runs().display()))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }
    /// Waits until a stage process of this environment runs (and its log says it trains).
    fn wait_for_stage(&self) -> i32 {
        let t = Instant::now();
        loop {
            if let Some(&pid) = self.stage_pids().first() {
                return pid;
            }
            assert!(t.elapsed() < Duration::from_secs(20), "no stage started");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// The state column of `stage` in `rkd-orch status` output.
fn state_of<'a>(status: &'a str, stage: &str) -> &'a str {
    status
        .lines()
        .map(str::split_whitespace)
        .find_map(|mut w| (w.next() == Some(stage)).then(|| w.next()).flatten())
        .unwrap_or_else(|| panic!("{stage} not in {status}"))
}

fn signal(pid: u32, sig: i32) {
    // SAFETY: sending a signal to a child we spawned.
    unsafe {
        libc::kill(pid as i32, sig);
    }
}

fn metrics(db: &Path) -> Vec<(String, String, f64)> {
    let c = Connection::open(db).unwrap();
    let mut s = c
        .prepare(
            "SELECT stage, metric, value FROM results WHERE recipe = 'eng' ORDER BY stage, metric",
        )
        .unwrap();
    s.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

#[test]
fn ctrl_c_reaches_the_stages_marks_them_interrupted_exits_130_and_resumes() {
    let env = Env::new();
    let r = env.recipe(RECIPE);
    let child = env.spawn(&["run", "--grace", "20"], &r);
    let stage = env.wait_for_stage();
    std::thread::sleep(Duration::from_millis(300));
    let t = Instant::now();
    signal(child.id(), libc::SIGINT);
    let out = child.wait_with_output().unwrap();
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(130), "{stderr}");
    // The stage died of the forwarded signal, well before the grace period ended.
    assert!(t.elapsed() < Duration::from_secs(10), "{stderr}");
    // SAFETY: probing whether a pid exists.
    assert!(
        unsafe { libc::kill(stage, 0) } != 0,
        "the stage process is gone"
    );
    assert!(
        stderr.contains("SIGINT: stopping — sent SIGINT to 1 running stage"),
        "{stderr}"
    );
    assert!(stderr.contains("INTERRUPTED"), "{stderr}");
    // The stages whose turn never came are "not started", not "skipped" (the word for
    // the dependants of a failure).
    assert!(
        stderr.contains(" 0 skipped, 1 interrupted, ") && stderr.contains(" not started in "),
        "{stderr}"
    );
    assert!(
        stderr.contains("run the same command again to resume"),
        "{stderr}"
    );
    assert!(env.stage_pids().is_empty());
    let (status, _) = text(&env.cmd(&["status"], &r));
    assert_eq!(state_of(&status, "long"), "interrupted", "{status}");
    // Resume: everything finishes.
    let out = env.cmd(&["run", "-q"], &r);
    assert!(out.status.success(), "{}", text(&out).1);
    let (status, _) = text(&env.cmd(&["status"], &r));
    assert!(status.contains("7 stages: 7 done"), "{status}");
}

#[test]
fn a_second_signal_or_the_end_of_the_grace_period_kills_a_stuck_stage() {
    let env = Env::new();
    // Far longer than the test: the second round resumes `long` from the first round's
    // checkpoint, and on a fast machine 400 epochs end inside the 1 s grace period (then
    // nothing is left to kill and the assertion below would test nothing).
    let r = env.recipe(&RECIPE.replace(
        "long: {kind: train, epochs: 400}",
        "long: {kind: train, epochs: 40000}",
    ));
    for second in [true, false] {
        let mut cmd = env.command(
            &["run", "--grace", if second { "60" } else { "1" }],
            Some(&r),
        );
        cmd.env("RKD_ORCH_STAGE_IGNORE_SIGNALS", "1")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let child = cmd.spawn().unwrap();
        env.wait_for_stage();
        std::thread::sleep(Duration::from_millis(300));
        let t = Instant::now();
        signal(child.id(), libc::SIGTERM);
        if second {
            std::thread::sleep(Duration::from_millis(500));
            signal(child.id(), libc::SIGTERM);
        }
        let out = child.wait_with_output().unwrap();
        let (_, stderr) = text(&out);
        assert_eq!(out.status.code(), Some(130), "{stderr}");
        assert!(
            stderr.contains("killing the running stages now"),
            "{stderr}"
        );
        assert!(t.elapsed() < Duration::from_secs(8), "{stderr}");
        assert!(env.stage_pids().is_empty(), "no stage survives");
    }
}

#[test]
fn two_coordinators_share_the_work_and_never_train_a_stage_twice() {
    let env = Env::new();
    let r = env.recipe(&RECIPE.replace("epochs: 400", "epochs: 60"));
    let a = env.spawn(&["run", "--json"], &r);
    let b = env.spawn(&["run", "--json"], &r);
    let (oa, ob) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    // Under --json everything, errors included, is on stdout: its last line is the summary.
    let last = |o: &Output| text(o).0.lines().last().unwrap_or("").to_string();
    assert!(oa.status.success(), "{}", last(&oa));
    assert!(ob.status.success(), "{}", last(&ob));
    let events = |o: &Output| -> Vec<serde_json::Value> {
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    let (ea, eb) = (events(&oa), events(&ob));
    for stage in ["long", "a", "b", "c", "d", "eval_long", "eval_a"] {
        let started = ea
            .iter()
            .chain(&eb)
            .filter(|e| e["event"] == "started" && e["stage"] == stage)
            .count();
        assert_eq!(started, 1, "{stage} trained {started} times");
    }
    // Both saw the whole recipe finish, with the same numbers.
    for e in [&ea, &eb] {
        let summary = e.last().unwrap();
        assert_eq!(summary["event"], "summary");
        assert_eq!(
            summary["ran"].as_array().unwrap().len() + summary["cached"].as_array().unwrap().len(),
            7
        );
    }
    // Five training stages × (loss/total, loss/triplet), two evaluations × (4 recalls,
    // queries, nmi).
    assert_eq!(
        metrics(&env.runs().join("results.sqlite")).len(),
        5 * 2 + 2 * 6
    );
}

#[test]
fn a_crashed_stage_fails_its_dependants_and_retries_bring_it_back() {
    let env = Env::new();
    let r = env.recipe(RECIPE);
    // Crash the long stage (SIGKILL from outside, as the OOM killer would).
    let killer = |env: &Env| {
        let pid = env.wait_for_stage();
        std::thread::sleep(Duration::from_millis(200));
        // SAFETY: killing our own stage process.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    };
    let child = env.spawn(&["run", "--keep-going"], &r);
    killer(&env);
    let out = child.wait_with_output().unwrap();
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("stage process was killed by signal 9"),
        "{stderr}"
    );
    assert!(
        stderr.contains("eval_long") && stderr.contains("skipped  (input `long` did not finish)"),
        "{stderr}"
    );
    // --keep-going: the independent stages finished.
    let (status, _) = text(&env.cmd(&["status"], &r));
    assert_eq!(state_of(&status, "long"), "failed", "{status}");
    assert!(status.contains("5 done"), "{status}");
    let db = Connection::open(env.runs().join("results.sqlite")).unwrap();
    let err: String = db
        .query_row(
            "SELECT s.error FROM stages s JOIN recipe_stages r USING (key) WHERE r.stage = 'long'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert!(
        err.contains("killed by signal 9") && err.contains("last lines of"),
        "{err}"
    );

    // The same crash with --retries 1: the second attempt finishes.
    let fresh = Env::new();
    let r = fresh.recipe(&RECIPE.replace("epochs: 400", "epochs: 100"));
    let child = fresh.spawn(&["run", "--retries", "1"], &r);
    killer(&fresh);
    let out = child.wait_with_output().unwrap();
    let (_, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("RETRYING") && stderr.contains("(attempt 1 of 2)"),
        "{stderr}"
    );
}

#[test]
fn a_flipped_byte_in_a_cache_entry_is_caught_and_the_stage_rebuilt() {
    let env = Env::new();
    let r = env.recipe(&RECIPE.replace("epochs: 400", "epochs: 2"));
    assert!(env.cmd(&["run", "-q"], &r).status.success());
    let before = metrics(&env.runs().join("results.sqlite"));
    let key: String = Connection::open(env.runs().join("results.sqlite"))
        .unwrap()
        .query_row("SELECT key FROM recipe_stages WHERE stage = 'a'", [], |r| {
            r.get(0)
        })
        .unwrap();
    let weights = env
        .runs()
        .join("cache")
        .join(&key)
        .join("model.safetensors");
    let mut bytes = std::fs::read(&weights).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    std::fs::write(&weights, bytes).unwrap();
    let (plan, _) = text(&env.cmd(&["plan"], &r));
    assert!(
        plan.contains(
            "will run: cache entry corrupt (model.safetensors does not match its checksum)"
        ),
        "{plan}"
    );
    let out = env.cmd(&["run"], &r);
    let (_, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains(
            "cache entry is corrupt (model.safetensors does not match its checksum); moved to"
        ),
        "{stderr}"
    );
    // Rebuilt to the same numbers; the damaged copy kept aside for inspection.
    assert_eq!(metrics(&env.runs().join("results.sqlite")), before);
    assert!(env.runs().join("cache/corrupt").read_dir().unwrap().count() == 1);
}

#[test]
fn gc_removes_only_what_no_recipe_refers_to() {
    let env = Env::new();
    let quick = RECIPE.replace("epochs: 400", "epochs: 2");
    let r = env.recipe(&quick);
    assert!(env.cmd(&["run", "-q"], &r).status.success());
    // A changed stage leaves its old entry unreferenced.
    let r = env.recipe(&quick.replace("epochs: 3, seed: 1", "epochs: 4, seed: 1"));
    assert!(env.cmd(&["run", "-q"], &r).status.success());
    let entries = || -> usize {
        std::fs::read_dir(env.runs().join("cache"))
            .unwrap()
            .filter(|e| e.as_ref().unwrap().file_name().len() == 32)
            .count()
    };
    assert_eq!(entries(), 7 + 2);
    let out = env.command(&["gc", "--dry-run"], None).output().unwrap();
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(
        stdout.matches("would remove").count(),
        2 * 3,
        "entries, logs, specs: {stdout}"
    );
    assert_eq!(entries(), 9, "a dry run removes nothing");
    assert!(env.command(&["gc"], None).status().unwrap().success());
    assert_eq!(entries(), 7);
    // Everything the recipe uses is still cached.
    let (plan, _) = text(&env.cmd(&["plan"], &r));
    assert!(plan.contains("7 stages, 7 cached, 0 to run"), "{plan}");
}

#[test]
fn json_events_quiet_and_gpus_in_a_cpu_build() {
    let env = Env::new();
    let r = env.recipe(&RECIPE.replace("epochs: 400", "epochs: 2"));
    let out = env.cmd(&["run", "--json", "-j", "2", "--threads-per-job", "1"], &r);
    assert!(out.status.success());
    let events: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert_eq!(events[0]["event"], "plan");
    assert_eq!(events[0]["slots"], "2 jobs × 1 thread");
    let kinds: std::collections::BTreeSet<&str> = events
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    for k in ["plan", "started", "epoch", "metric", "done", "summary"] {
        assert!(kinds.contains(k), "{k} in {kinds:?}");
    }
    let started = events.iter().find(|e| e["event"] == "started").unwrap();
    assert_eq!(started["device"], "cpu×1");
    assert!(out.stderr.is_empty(), "{}", text(&out).1);

    let out = env.cmd(&["run", "-q"], &r);
    let (stdout, stderr) = text(&out);
    assert!(stderr.is_empty(), "{stderr}");
    assert!(stdout.contains("recipe eng"), "{stdout}");

    let out = env.cmd(&["run", "--gpus", "0,1"], &r);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out).1.contains("runs stages on the CPU only"),
        "{}",
        text(&out).1
    );
}

#[test]
fn the_database_is_rebuilt_from_the_cache_alone() {
    let env = Env::new();
    let r = env.recipe(&RECIPE.replace("epochs: 400", "epochs: 2"));
    assert!(env.cmd(&["run", "-q"], &r).status.success());
    let db = env.runs().join("results.sqlite");
    let before = metrics(&db);
    let (table_before, _) = text(&env.cmd(&["results"], &r));
    // Lose the database entirely.
    for f in ["results.sqlite", "results.sqlite-wal", "results.sqlite-shm"] {
        let _ = std::fs::remove_file(env.runs().join(f));
    }
    let out = env.command(&["db", "rebuild"], None).output().unwrap();
    let (_, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("7 stages from the cache, 7 bindings of 1 recipe"),
        "{stderr}"
    );
    assert_eq!(metrics(&db), before);
    let (table_after, _) = text(&env.cmd(&["results"], &r));
    assert_eq!(table_after, table_before);
    // A second rebuild keeps the first database as a backup.
    let out = env.command(&["db", "rebuild"], None).output().unwrap();
    assert!(
        text(&out).1.contains("the old database is"),
        "{}",
        text(&out).1
    );
    assert_eq!(metrics(&db), before);
}
