//! What the engine stores and reports can be trusted, tested through the real binary: every
//! file of a cache entry is sealed (an edited metric is caught and rebuilt); damaged data
//! files give errors, not panics; read-only commands never write the database and refuse
//! one that is not rkd-orch's; `db rebuild` keeps a backup that opens with everything; a
//! `--json` run always ends with a summary and closes its invocation; files honour the umask.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use rusqlite::Connection;

const RECIPE: &str = r#"
name: tiny
seed: 1
data:
  syn:
    kind: synthetic
    classes: 8
    dim: 24
    train_per_class: 48
    test_per_class: 24
stages:
  teacher:
    kind: train
    model: {hidden: [32], embedding: 16, l2norm: true}
    loss: {triplet: {weight: 1.0, margin: 0.2, mining: semi_hard}}
    optimizer: {kind: adam, lr: 0.003}
    epochs: 3
    batch_size: 32
  student:
    kind: distill
    teacher: teacher
    model: {hidden: [16], embedding: 8}
    loss: {rkd_d: 1.0, rkd_a: 2.0}
    optimizer: {kind: adam, lr: 0.003}
    epochs: 3
    batch_size: 32
  eval_teacher: {kind: evaluate, model: teacher}
  eval_student: {kind: evaluate, model: student, recall_at: [1, 4]}
"#;

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
        let p = self.dir.path().join("tiny.yaml");
        std::fs::write(&p, text).unwrap();
        p
    }
    fn runs(&self) -> PathBuf {
        self.dir.path().join("runs")
    }
    fn db(&self) -> PathBuf {
        self.runs().join("results.sqlite")
    }
    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_rkd-orch"));
        c.args(args).arg("--runs-dir").arg(self.runs());
        c
    }
    fn cmd(&self, args: &[&str]) -> Output {
        self.command(args).output().unwrap()
    }
    /// Runs the recipe quietly and asserts that it succeeded.
    fn run_ok(&self, recipe: &Path) -> String {
        let out = self.cmd(&["run", "-q", recipe.to_str().unwrap()]);
        let (stdout, stderr) = text(&out);
        assert!(out.status.success(), "{stdout}\n{stderr}");
        stdout
    }
    /// Stage name → content key, from `plan --format json`.
    fn keys(&self, recipe: &Path) -> Vec<(String, String)> {
        let out = self.cmd(&["plan", "--format", "json", recipe.to_str().unwrap()]);
        let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        doc["stages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                (
                    s["name"].as_str().unwrap().to_string(),
                    s["key"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    }
    fn key(&self, recipe: &Path, stage: &str) -> String {
        self.keys(recipe)
            .into_iter()
            .find(|(n, _)| n == stage)
            .unwrap()
            .1
    }
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// recall@1 of `stage` in the results database, read with sqlite directly.
fn recall1(db: &Path, stage: &str) -> f64 {
    Connection::open(db)
        .unwrap()
        .query_row(
            "SELECT value FROM results WHERE stage = ?1 AND metric = 'recall@1' AND is_current",
            [stage],
            |r| r.get(0),
        )
        .unwrap()
}

/// The JSON events a `--json` run printed.
fn events(out: &Output) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// Removes the stage logs, so that [`ran`] can tell which stages the next run started.
fn clear_logs(env: &Env) {
    for e in std::fs::read_dir(env.runs().join("logs")).unwrap() {
        std::fs::remove_file(e.unwrap().path()).unwrap();
    }
}

/// The stages that ran since [`clear_logs`]: each started stage writes its log, a cached
/// one none.
fn ran(env: &Env, recipe: &Path) -> Vec<String> {
    env.keys(recipe)
        .into_iter()
        .filter(|(_, key)| env.runs().join("logs").join(format!("{key}.log")).exists())
        .map(|(name, _)| name)
        .collect()
}

fn invocation_statuses(db: &Path) -> Vec<String> {
    let c = Connection::open(db).unwrap();
    let mut st = c
        .prepare("SELECT status FROM invocations ORDER BY id")
        .unwrap();
    st.query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

#[test]
fn an_edited_metric_or_manifest_is_caught_quarantined_and_rebuilt_to_the_same_numbers() {
    let env = Env::new();
    let r = env.recipe(RECIPE);
    env.run_ok(&r);
    let truth = recall1(&env.db(), "eval_student");
    let entry = env.runs().join("cache").join(env.key(&r, "eval_student"));

    // Edit the metric in the cached result, keeping the file valid JSON.
    let path = entry.join("result.json");
    let result: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let mut edited = result.clone();
    for m in edited["metrics"].as_array_mut().unwrap() {
        if m["name"] == "recall@1" {
            m["value"] = serde_json::json!(0.99);
        }
    }
    std::fs::write(&path, serde_json::to_vec_pretty(&edited).unwrap()).unwrap();

    let out = env.cmd(&["plan", r.to_str().unwrap()]);
    let (plan, _) = text(&out);
    clear_logs(&env);
    assert!(
        plan.lines().any(|l| l.contains("eval_student")
            && l.contains("corrupt")
            && l.contains("result.json")),
        "{plan}"
    );
    let out = env.cmd(&["run", r.to_str().unwrap()]);
    let (_, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("cache entry is corrupt (result.json does not match its checksum"),
        "{stderr}"
    );
    assert_eq!(ran(&env, &r), ["eval_student"]);
    assert_eq!(recall1(&env.db(), "eval_student"), truth);
    let corrupt = env.runs().join("cache").join("corrupt");
    assert_eq!(std::fs::read_dir(&corrupt).unwrap().count(), 1);

    // The manifest is covered too (an added space changes no meaning, but its bytes).
    let entry = env.runs().join("cache").join(env.key(&r, "eval_teacher"));
    let manifest = entry.join("manifest.json");
    let text_before = std::fs::read_to_string(&manifest).unwrap();
    std::fs::write(&manifest, format!(" {text_before}")).unwrap();
    let out = env.cmd(&["run", r.to_str().unwrap()]);
    let (_, stderr) = text(&out);
    assert!(
        stderr.contains("manifest.json does not match its checksum"),
        "{stderr}"
    );
    assert_eq!(std::fs::read_dir(&corrupt).unwrap().count(), 2);
}

#[test]
fn an_entry_without_a_seal_from_an_older_engine_is_rebuilt_not_trusted() {
    let env = Env::new();
    let r = env.recipe(RECIPE);
    env.run_ok(&r);
    let truth = recall1(&env.db(), "eval_teacher");
    let entry = env.runs().join("cache").join(env.key(&r, "eval_teacher"));
    // As the previous engine wrote it: no seal.
    std::fs::remove_file(entry.join("seal.json")).unwrap();
    clear_logs(&env);
    let out = env.cmd(&["run", r.to_str().unwrap()]);
    let (_, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("written by an older rkd-orch"), "{stderr}");
    assert_eq!(ran(&env, &r), ["eval_teacher"]);
    assert_eq!(recall1(&env.db(), "eval_teacher"), truth);
    assert!(entry.join("seal.json").exists());
}

#[test]
fn with_umask_022_every_file_under_runs_is_0644_and_every_directory_0755() {
    let env = Env::new();
    let r = env.recipe(RECIPE);
    let mut c = env.command(&["run", "-q", r.to_str().unwrap()]);
    // SAFETY: umask is async-signal-safe; it runs in the child between fork and exec.
    unsafe {
        c.pre_exec(|| {
            libc::umask(0o022);
            Ok(())
        });
    }
    let out = c.output().unwrap();
    assert!(out.status.success(), "{}", text(&out).1);
    let mut wrong = Vec::new();
    let mut stack = vec![env.runs()];
    let mut seen = 0;
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let e = e.unwrap();
            let meta = e.metadata().unwrap();
            let mode = meta.permissions().mode() & 0o777;
            let want = if meta.is_dir() { 0o755 } else { 0o644 };
            if mode != want {
                wrong.push(format!("{:o} {}", mode, e.path().display()));
            }
            if meta.is_dir() {
                stack.push(e.path());
            }
            seen += 1;
        }
    }
    assert!(seen > 20, "{seen} paths");
    assert!(wrong.is_empty(), "{wrong:#?}");
}

/// An IDX image file whose header multiplies past 2^64 (4 · 2^31 · 2^31).
#[test]
fn an_idx_header_whose_dimensions_overflow_fails_the_stage_with_the_file_named() {
    let env = Env::new();
    let dir = env.dir.path();
    let mut header = vec![0u8, 0, 0x08, 3];
    for d in [4u32, 0x8000_0000, 0x8000_0000] {
        header.extend_from_slice(&d.to_be_bytes());
    }
    std::fs::write(dir.join("bad-images.idx"), &header).unwrap();
    let mut labels = vec![0u8, 0, 0x08, 1, 0, 0, 0, 4];
    labels.extend_from_slice(&[0, 1, 2, 3]);
    std::fs::write(dir.join("labels.idx"), &labels).unwrap();
    let d = dir.display();
    let r = env.recipe(&format!(
        r#"
name: idx
data:
  bad:
    kind: idx
    train_images: {d}/bad-images.idx
    train_labels: {d}/labels.idx
    test_images: {d}/bad-images.idx
    test_labels: {d}/labels.idx
    train_classes: [0, 1]
    eval_classes: [2, 3]
stages:
  t: {{kind: train, epochs: 1, batch_size: 3, model: {{hidden: [4], embedding: 2}}, loss: {{triplet: 1}}}}
"#
    ));
    let out = env.cmd(&["run", r.to_str().unwrap()]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(
        stderr.contains("bad-images.idx is not a valid IDX file: dimensions [4, 2147483648, 2147483648] multiply past"),
        "{stderr}"
    );
}

#[test]
fn read_only_commands_leave_an_empty_or_foreign_database_as_it_is_and_refuse_it() {
    let env = Env::new();
    let r = env.recipe(RECIPE);
    std::fs::create_dir_all(env.runs()).unwrap();
    let recipe = r.to_str().unwrap();
    let png = env.dir.path().join("f.png");
    let png = png.to_str().unwrap();
    let readers: Vec<Vec<&str>> = vec![
        vec!["query", "SELECT 1"],
        vec!["results"],
        vec!["results", "tiny", "--by", "seed"],
        vec!["export", "tiny"],
        vec!["report", recipe],
        vec!["plot", "tiny", "--curves", "-o", png],
        vec!["status", recipe],
        vec!["plan", recipe],
        vec!["gc", "--dry-run"],
    ];
    let db = env.db();
    let sidecars = |db: &Path| {
        ["-wal", "-shm", "-journal"]
            .iter()
            .filter(|s| PathBuf::from(format!("{}{s}", db.display())).exists())
            .count()
    };

    // A zero-length file (a run killed as it created the database).
    std::fs::write(&db, b"").unwrap();
    for args in &readers {
        let out = env.cmd(args);
        assert_eq!(std::fs::metadata(&db).unwrap().len(), 0, "{args:?} wrote");
        assert_eq!(sidecars(&db), 0, "{args:?}");
        if matches!(args[0], "query" | "results" | "export") {
            let (_, stderr) = text(&out);
            assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
            assert!(stderr.contains("is empty"), "{args:?}: {stderr}");
        }
    }

    // Somebody else's SQLite file.
    std::fs::remove_file(&db).unwrap();
    {
        let c = Connection::open(&db).unwrap();
        c.execute_batch("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT); INSERT INTO notes (body) VALUES ('mine');")
            .unwrap();
    }
    let before = std::fs::read(&db).unwrap();
    for args in &readers {
        let out = env.cmd(args);
        assert!(std::fs::read(&db).unwrap() == before, "{args:?} wrote");
        if matches!(args[0], "query" | "results" | "export" | "gc") {
            let (_, stderr) = text(&out);
            assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
            assert!(
                stderr.contains("is not an rkd-orch results database") && stderr.contains("notes"),
                "{args:?}: {stderr}"
            );
        }
    }
    // A run refuses it too, before writing to it.
    let out = env.cmd(&["run", recipe]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).1.contains("is not an rkd-orch results database"));
    assert!(std::fs::read(&db).unwrap() == before, "run wrote");
}

#[test]
fn a_damaged_database_is_a_failure_with_what_to_do_not_bad_sql() {
    let env = Env::new();
    let r = env.recipe(RECIPE);
    env.run_ok(&r);
    let db = env.db();
    // Damage the pages after the schema (the header and page 1 stay readable).
    let mut bytes = std::fs::read(&db).unwrap();
    let page = 4096;
    assert!(bytes.len() > 3 * page, "{}", bytes.len());
    for b in &mut bytes[page..] {
        *b = 0xa5;
    }
    std::fs::write(&db, &bytes).unwrap();
    for sql in ["SELECT * FROM metrics", "SELECT COUNT(*) FROM results"] {
        let out = env.cmd(&["query", sql]);
        let (_, stderr) = text(&out);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(!stderr.contains("bad SQL"), "{stderr}");
        assert!(stderr.contains("db rebuild"), "{stderr}");
    }
    // Not a database at all.
    std::fs::write(&db, vec![0x5a; 2 * page]).unwrap();
    let out = env.cmd(&["query", "SELECT 1"]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("is damaged"), "{stderr}");
    // What the message says to do works: the damaged file is kept byte for byte.
    let out = env.cmd(&["db", "rebuild"]);
    assert!(out.status.success(), "{}", text(&out).1);
    let backup = std::fs::read_dir(env.runs())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            name.starts_with("results.sqlite.bak-")
                && !name.ends_with("-wal")
                && !name.ends_with("-shm")
        })
        .unwrap();
    assert!(std::fs::read(&backup).unwrap() == vec![0x5a; 2 * page]);
    assert!(recall1(&db, "eval_student") > 0.0);
    // Bad SQL is still the user's (exit 2).
    let out = env.cmd(&["query", "SELEC 1"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).1.contains("bad SQL"));
}

#[test]
fn an_older_database_is_read_without_being_upgraded() {
    let env = Env::new();
    std::fs::create_dir_all(env.runs()).unwrap();
    let db = env.db();
    {
        let c = Connection::open(&db).unwrap();
        c.execute_batch(rkd_orch::store::schema::V1).unwrap();
        c.pragma_update(None, "user_version", 1).unwrap();
        c.execute_batch(
            "INSERT INTO invocations (recipe, recipe_file, recipe_sha256, command, engine_version)
               VALUES ('old', 'old.yaml', 'abc', 'run', '0.0.1');
             INSERT INTO stages (key, kind, manifest, status) VALUES ('k1', 'evaluate', '{}', 'done');
             INSERT INTO recipe_stages VALUES ('old', 'eval', 'k1', 'evaluate', 1);
             INSERT INTO metrics VALUES ('k1', 'recall@1', 0.25, 'test');",
        )
        .unwrap();
    }
    let before = std::fs::read(&db).unwrap();
    let out = env.cmd(&["query", "SELECT stage, value FROM results"]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stdout.contains("eval") && stdout.contains("0.25"),
        "{stdout}"
    );
    let out = env.cmd(&["results"]);
    assert!(out.status.success(), "{}", text(&out).1);
    assert!(std::fs::read(&db).unwrap() == before, "a reader wrote");
    let version: i64 = Connection::open(&db)
        .unwrap()
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(version, 1);
}

#[test]
fn db_rebuild_backs_up_the_wal_of_a_killed_run_under_a_new_name_each_time() {
    let env = Env::new();
    let r = env.recipe(RECIPE);
    env.run_ok(&r);
    let db = env.db();
    // A killed run leaves committed transactions in the WAL only: a connection that never
    // closes (so never checkpoints) commits a marker.
    let c = Connection::open(&db).unwrap();
    c.pragma_update(None, "wal_autocheckpoint", 0).unwrap();
    c.execute(
        "INSERT INTO invocations (recipe, recipe_file, recipe_sha256, command, engine_version, status)
         VALUES ('marker', 'm.yaml', 'x', 'killed', '0', 'running')",
        [],
    )
    .unwrap();
    std::mem::forget(c);
    assert!(
        std::fs::metadata(format!("{}-wal", db.display()))
            .unwrap()
            .len()
            > 0
    );
    // Backups of earlier rebuilds, under the names of this second and the next ones.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let earlier: Vec<PathBuf> = (0..30)
        .map(|s| env.runs().join(format!("results.sqlite.bak-{}", now + s)))
        .collect();
    for p in &earlier {
        std::fs::write(p, b"an earlier backup").unwrap();
    }
    let backups = || -> Vec<PathBuf> {
        std::fs::read_dir(env.runs())
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| {
                let n = p.file_name().unwrap().to_string_lossy().into_owned();
                n.starts_with("results.sqlite.bak-") && !earlier.contains(p)
            })
            .collect()
    };
    let out = env.cmd(&["db", "rebuild"]);
    assert!(out.status.success(), "{}", text(&out).1);
    let first = backups();
    assert_eq!(first.len(), 1, "{first:?}");
    let marker: i64 = Connection::open(&first[0])
        .unwrap()
        .query_row(
            "SELECT COUNT(*) FROM invocations WHERE recipe = 'marker'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(marker, 1, "the backup holds what was only in the WAL");
    let out = env.cmd(&["db", "rebuild"]);
    assert!(out.status.success(), "{}", text(&out).1);
    assert_eq!(backups().len(), 2);
    for p in &earlier {
        assert!(
            std::fs::read(p).unwrap() == b"an earlier backup",
            "{p:?} overwritten"
        );
    }
    // The rebuilt database has every stage again.
    let done: i64 = Connection::open(&db)
        .unwrap()
        .query_row(
            "SELECT COUNT(*) FROM stages WHERE status = 'done'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(done, 4);
}

#[test]
fn a_json_run_whose_coordinator_fails_still_ends_with_a_summary_and_closes_its_invocation() {
    let env = Env::new();
    let r = env.recipe(RECIPE);
    let teacher = env.key(&r, "teacher");
    // Where the coordinator writes the teacher's spec, a directory: it cannot.
    std::fs::create_dir_all(env.runs().join("specs").join(format!("{teacher}.json"))).unwrap();
    let out = env.cmd(&["run", "--json", r.to_str().unwrap()]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(stderr.is_empty(), "{stderr}");
    let all = events(&out);
    let summary = all.last().unwrap();
    assert_eq!(summary["event"], "summary", "{stdout}");
    assert_eq!(summary["status"], "failed");
    let error = summary["error"].as_str().unwrap();
    assert!(error.contains(&format!("specs/{teacher}.json")), "{error}");
    assert_eq!(invocation_statuses(&env.db()), ["failed"]);

    // A recipe that does not load still ends in a summary on stdout (its problems on stderr).
    let bad = env.dir.path().join("bad.yaml");
    std::fs::write(&bad, "name: bad\nstages: {x: {kind: nope}}\n").unwrap();
    let out = env.cmd(&["run", "--json", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(events(&out).last().unwrap()["event"], "summary");
}

#[test]
fn a_stage_that_cannot_write_its_log_still_has_its_error_recorded() {
    let env = Env::new();
    let r = env.recipe(RECIPE);
    let teacher = env.key(&r, "teacher");
    // The teacher's log on a full disk: every write to it fails with ENOSPC.
    std::fs::create_dir_all(env.runs().join("logs")).unwrap();
    std::os::unix::fs::symlink(
        "/dev/full",
        env.runs().join("logs").join(format!("{teacher}.log")),
    )
    .unwrap();
    let out = env.cmd(&["run", "--json", r.to_str().unwrap()]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(stderr.is_empty(), "{stderr}");
    let all = events(&out);
    let summary = all.last().unwrap();
    assert_eq!(summary["event"], "summary");
    assert_eq!(summary["failed"][0]["stage"], "teacher", "{summary}");
    let error: String = Connection::open(env.db())
        .unwrap()
        .query_row("SELECT error FROM stages WHERE key = ?1", [&teacher], |r| {
            r.get(0)
        })
        .unwrap();
    assert!(error.contains("No space left on device"), "{error}");
    assert_eq!(invocation_statuses(&env.db()), ["failed"]);
}

#[test]
fn a_json_run_stopped_by_sigint_prints_nothing_on_stderr_and_a_killed_run_is_closed_later() {
    let env = Env::new();
    let r = env.recipe(&RECIPE.replacen("epochs: 3", "epochs: 100000", 1));
    for kill in [false, true] {
        let mut child = env
            .command(&["run", "--json", "--grace", "30", r.to_str().unwrap()])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Wait for the teacher's first epoch: it is training.
        let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
        let mut lines = Vec::new();
        loop {
            let mut line = String::new();
            assert!(std::io::BufRead::read_line(&mut stdout, &mut line).unwrap() > 0);
            let done = line.contains("\"event\":\"epoch\"");
            lines.push(line);
            if done {
                break;
            }
        }
        let sig = if kill { libc::SIGKILL } else { libc::SIGINT };
        // SAFETY: signalling our own child.
        unsafe { libc::kill(child.id() as i32, sig) };
        let mut rest = String::new();
        std::io::Read::read_to_string(&mut stdout, &mut rest).unwrap();
        let out = child.wait_with_output().unwrap();
        if !kill {
            let (_, stderr) = text(&out);
            assert_eq!(out.status.code(), Some(130), "{stderr}");
            assert!(stderr.is_empty(), "{stderr}");
            let last: serde_json::Value =
                serde_json::from_str(rest.lines().last().unwrap()).unwrap();
            assert_eq!(last["event"], "summary", "{rest}");
            assert_eq!(last["status"], "interrupted");
            assert_eq!(invocation_statuses(&env.db()), ["interrupted"]);
        }
    }
    // kill -9 left its invocation `running`; the next run closes it.
    assert_eq!(invocation_statuses(&env.db()), ["interrupted", "running"]);
    let quick = env.dir.path().join("quick.yaml");
    std::fs::write(&quick, RECIPE.replace("name: tiny", "name: quick")).unwrap();
    let out = env.cmd(&["run", "-q", quick.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out).1);
    assert_eq!(
        invocation_statuses(&env.db()),
        ["interrupted", "failed", "ok"]
    );
}

#[test]
fn plot_to_an_unwritable_path_names_the_path() {
    let env = Env::new();
    let r = env.recipe(RECIPE);
    env.run_ok(&r);
    let blocker = env.dir.path().join("not-a-dir");
    std::fs::write(&blocker, b"").unwrap();
    let png = blocker.join("curves.png");
    let out = env.cmd(&["plot", "tiny", "--curves", "-o", png.to_str().unwrap()]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("cannot write {}", png.display())),
        "{stderr}"
    );
    assert!(!stderr.contains("Error("), "{stderr}");
}
