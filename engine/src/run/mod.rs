//! The coordinator: runs a plan's stages, each in its own child process (`rkd-orch stage
//! --spec FILE`), as many at a time as there are slots, dependants as soon as their inputs
//! are done. It alone writes the results database.

use std::collections::BTreeMap;
use std::fs;
use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub mod lock;
pub mod progress;
pub mod signals;
pub mod slots;

use crate::cache::{Cache, Lookup};
use crate::plan::Plan;
use crate::stage::spec::{Event, StageSpec};
use crate::store::{Store, StoreError};
use lock::KeyLock;
pub use progress::Mode;
use progress::Progress;
pub use slots::Slot;
use slots::Slots;

pub const DB_FILE: &str = "results.sqlite";

/// The directories under a runs directory.
#[derive(Clone, Debug)]
pub struct RunsDir {
    pub root: PathBuf,
}

impl RunsDir {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }
    pub fn cache(&self) -> Cache {
        Cache::new(self.root.join("cache"))
    }
    pub fn db(&self) -> PathBuf {
        self.root.join(DB_FILE)
    }
    pub fn logs(&self) -> PathBuf {
        self.root.join("logs")
    }
    pub fn specs(&self) -> PathBuf {
        self.root.join("specs")
    }
    pub fn locks(&self) -> PathBuf {
        self.root.join("locks")
    }
    /// Snapshots of each recipe's stage bindings (`<recipe>.json`).
    pub fn recipes(&self) -> PathBuf {
        self.root.join("recipes")
    }
}

#[derive(Clone, Debug)]
pub struct RunOptions {
    /// Where stages run: CPU slots or GPUs.
    pub slots: Vec<Slot>,
    /// Keep starting independent stages after one failed.
    pub keep_going: bool,
    /// Start a failed stage again up to this many times (not for a NaN/inf loss, which
    /// would fail the same way).
    pub retries: usize,
    pub mode: Mode,
    /// After the first Ctrl-C/SIGTERM, how long running stages get to stop before they are
    /// killed.
    pub grace_s: f64,
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> RunError + 'a {
    move |source| RunError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum State {
    Pending,
    /// Another coordinator holds this stage's lock (it is running it).
    Waiting,
    Running,
    Cached,
    Ran,
    Failed(String),
    Skipped(String),
    Interrupted,
}

/// What happened to each stage, in the plan's order.
#[derive(Debug, Default)]
pub struct Summary {
    pub cached: Vec<String>,
    pub ran: Vec<String>,
    pub failed: Vec<(String, String)>,
    pub skipped: Vec<String>,
    /// Stopped by a signal (they resume from their last checkpoint on the next run).
    pub interrupted: Vec<String>,
    /// The signal that interrupted the run, if one did.
    pub signal: Option<i32>,
    pub wall_s: f64,
}

impl Summary {
    pub fn ok(&self) -> bool {
        self.failed.is_empty() && self.skipped.is_empty() && self.interrupted.is_empty()
    }
}

enum Msg {
    Event(usize, Event),
    Exit(usize, std::io::Result<ExitStatus>),
}

/// Exit status of a stage process whose loss became NaN/inf: deterministic, so not retried.
pub const STAGE_EXIT_NONFINITE: i32 = 3;

/// A stage process that is running.
struct Running {
    pgid: u32,
    slot: usize,
    started: Instant,
    _lock: KeyLock,
}

pub fn run(
    plan: &Plan,
    runs: &RunsDir,
    opts: &RunOptions,
    command: &str,
) -> Result<Summary, RunError> {
    let started = Instant::now();
    for dir in [
        runs.root.clone(),
        runs.logs(),
        runs.specs(),
        runs.root.join("cache"),
    ] {
        fs::create_dir_all(&dir).map_err(io("cannot create", &dir))?;
    }
    signals::install();
    write_snapshot(plan, runs)?;
    let cache = runs.cache();
    let mut store = Store::open_rw(&runs.db())?;
    let invocation =
        store.begin_invocation(&plan.recipe, &plan.file, &plan.recipe_sha256, command)?;
    let names: Vec<&str> = plan.stages.iter().map(|s| s.name.as_str()).collect();
    let mut slots = Slots::new_from(&opts.slots);
    let mut ui = Progress::new(opts.mode, &names, slots.len());

    let n = plan.stages.len();
    let mut state = vec![State::Pending; n];
    let mut corrupt_notes = Vec::new();
    for &i in &plan.order {
        let s = &plan.stages[i];
        store.bind_stage(&crate::store::Binding::planned(&plan.recipe, s), invocation)?;
        match cache.lookup(&s.key) {
            Lookup::Done(result) => {
                store.ingest(&result, &s.manifest.to_string())?;
                state[i] = State::Cached;
            }
            Lookup::Corrupt(why) => {
                // Another coordinator may be committing it this instant; only an entry
                // nobody is writing is corrupt.
                if !KeyLock::is_held(&runs.locks(), &s.key) {
                    let moved = cache
                        .quarantine(&s.key)
                        .map_err(io("cannot move aside", &cache.entry(&s.key)))?;
                    corrupt_notes.push((
                        i,
                        format!(
                            "cache entry is corrupt ({why}); moved to {} and rebuilding",
                            moved.display()
                        ),
                    ));
                }
            }
            Lookup::Missing => {}
        }
    }
    let to_run = state.iter().filter(|s| **s == State::Pending).count();
    ui.header(&plan.recipe, n - to_run, to_run, &slots.describe());
    for (i, note) in corrupt_notes {
        ui.info(&plan.stages[i].name, &note);
    }
    for &i in &plan.order {
        if state[i] == State::Cached {
            ui.cached(&plan.stages[i].name, plan.stages[i].short_key());
        }
    }

    let (tx, rx) = mpsc::channel::<Msg>();
    let mut running: BTreeMap<usize, Running> = BTreeMap::new();
    let mut attempts = vec![0usize; n];
    let mut any_failed = false;
    let mut stopping: Option<(i32, Instant)> = None;
    let mut killed = false;
    let mut waiting_shown = vec![false; n];
    loop {
        // Signals: the first stops new starts and forwards it to every running stage; the
        // second (or the end of the grace period) kills them.
        let (count, sig) = signals::received();
        if count >= 1 && stopping.is_none() {
            stopping = Some((sig, Instant::now()));
            ui.note(&format!(
                "{}: stopping — sent {} to {} running stage{}; waiting up to {:.0}s (send it again to kill them now)",
                signals::name(sig),
                signals::name(sig),
                running.len(),
                if running.len() == 1 { "" } else { "s" },
                opts.grace_s
            ));
            for r in running.values() {
                signals::signal_group(r.pgid, sig);
            }
        }
        if let Some((_, since)) = stopping {
            if !killed
                && !running.is_empty()
                && (count >= 2 || since.elapsed().as_secs_f64() >= opts.grace_s)
            {
                killed = true;
                ui.note("killing the running stages now");
                for r in running.values() {
                    signals::signal_group(r.pgid, libc::SIGKILL);
                }
            }
        }

        if stopping.is_none() {
            for &i in &plan.order {
                if !matches!(state[i], State::Pending | State::Waiting) {
                    continue;
                }
                let inputs = &plan.stages[i].inputs;
                if let Some((_, bad)) = inputs.iter().find(|(_, s)| {
                    matches!(
                        state[*s],
                        State::Failed(_) | State::Skipped(_) | State::Interrupted
                    )
                }) {
                    let why = format!("input `{}` did not finish", plan.stages[*bad].name);
                    ui.skipped(&plan.stages[i].name, &why);
                    state[i] = State::Skipped(why);
                    continue;
                }
                let ready = inputs
                    .iter()
                    .all(|(_, s)| matches!(state[*s], State::Cached | State::Ran));
                if !ready || (any_failed && !opts.keep_going) {
                    continue;
                }
                let s = &plan.stages[i];
                let Some(slot) = slots.take() else { break };
                let lock = match KeyLock::try_acquire(&runs.locks(), &s.key)
                    .map_err(io("cannot lock", &runs.locks()))?
                {
                    Some(l) => l,
                    None => {
                        slots.give_back(slot);
                        if !waiting_shown[i] {
                            waiting_shown[i] = true;
                            ui.info(
                                &s.name,
                                "waiting  (another rkd-orch run is computing this stage)",
                            );
                        }
                        state[i] = State::Waiting;
                        continue;
                    }
                };
                // Whoever held the lock may have finished it.
                if let Lookup::Done(result) = cache.lookup(&s.key) {
                    slots.give_back(slot);
                    store.ingest(&result, &s.manifest.to_string())?;
                    ui.cached(&s.name, s.short_key());
                    state[i] = State::Cached;
                    continue;
                }
                let pgid = spawn(plan, i, runs, slots.get(slot), &tx)?;
                ui.started(
                    &s.name,
                    s.short_key(),
                    s.config.kind(),
                    &slots.get(slot).device(),
                );
                running.insert(
                    i,
                    Running {
                        pgid,
                        slot,
                        started: Instant::now(),
                        _lock: lock,
                    },
                );
                attempts[i] += 1;
                state[i] = State::Running;
            }
        }
        let waiting = state.contains(&State::Waiting);
        if running.is_empty() && (!waiting || stopping.is_some()) {
            break;
        }
        let msg = match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(m) => m,
            // Time to look at the signals, or at the locks of waiting stages.
            Err(_) => continue,
        };
        match msg {
            Msg::Event(i, ev) => {
                let name = plan.stages[i].name.as_str();
                match &ev {
                    Event::Epoch { epoch, epochs, .. } => {
                        let edge = *epoch == 1 || epoch == epochs;
                        let value = serde_json::to_value(&ev).expect("serialisable event");
                        ui.epoch(name, describe(&ev), value, edge);
                    }
                    Event::Metric { name: m, value } => ui.metric(name, m, *value),
                    Event::Resumed { epoch } => ui.resumed(name, *epoch),
                }
            }
            Msg::Exit(i, status) => {
                let r = running.remove(&i).expect("a running stage");
                slots.give_back(r.slot);
                let s = &plan.stages[i];
                let secs = r.started.elapsed().as_secs_f64();
                let log = runs.logs().join(format!("{}.log", s.key));
                let nonfinite =
                    matches!(&status, Ok(st) if st.code() == Some(STAGE_EXIT_NONFINITE));
                let failure = match status {
                    Ok(st) if st.success() => match cache.lookup(&s.key) {
                        Lookup::Done(result) => {
                            store.ingest(&result, &s.manifest.to_string())?;
                            None
                        }
                        Lookup::Missing => Some(
                            "the stage exited successfully but committed no result".to_string(),
                        ),
                        Lookup::Corrupt(why) => {
                            Some(format!("the stage committed a corrupt result: {why}"))
                        }
                    },
                    Ok(st) => Some(format!("stage process {}", describe_exit(st))),
                    Err(e) => Some(format!("cannot wait for the stage process: {e}")),
                };
                let Some(why) = failure else {
                    ui.done(&s.name, secs);
                    state[i] = State::Ran;
                    continue;
                };
                cache.remove_stale_tmp(&s.key);
                if let Some((sig, _)) = stopping {
                    let why = format!("interrupted by {}", signals::name(sig));
                    store.record_failure(&s.key, s.config.kind(), &s.manifest.to_string(), &why)?;
                    ui.ended(&s.name, "interrupted", secs, &why, true);
                    state[i] = State::Interrupted;
                    continue;
                }
                let tail = log_tail(&log, 12);
                let error = last_error_line(&tail).unwrap_or_else(|| why.clone());
                if attempts[i] <= opts.retries && !nonfinite {
                    ui.ended(
                        &s.name,
                        "retrying",
                        secs,
                        &format!("{error} (attempt {} of {})", attempts[i], opts.retries + 1),
                        false,
                    );
                    state[i] = State::Pending;
                    continue;
                }
                // The error, the exit status and the end of the log, for the database.
                let record = format!(
                    "{error}\n{why}\nlast lines of {}:\n{}",
                    log.display(),
                    tail.join("\n")
                );
                store.record_failure(&s.key, s.config.kind(), &s.manifest.to_string(), &record)?;
                ui.ended(&s.name, "failed", secs, &why, true);
                if ui.mode() != Mode::Json {
                    let mut detail = vec![format!("last lines of {}:", log.display())];
                    detail.extend(tail);
                    ui.error(&s.name, "", &detail);
                }
                state[i] = State::Failed(error);
                any_failed = true;
            }
        }
    }

    for &i in &plan.order {
        if matches!(state[i], State::Pending | State::Waiting) && stopping.is_none() {
            ui.info(
                &plan.stages[i].name,
                "not started (an earlier stage failed; --keep-going runs independent stages anyway)",
            );
        }
    }
    let mut summary = Summary {
        wall_s: started.elapsed().as_secs_f64(),
        signal: stopping.map(|(s, _)| s),
        ..Default::default()
    };
    for &i in &plan.order {
        let name = plan.stages[i].name.clone();
        match &state[i] {
            State::Cached => summary.cached.push(name),
            State::Ran => summary.ran.push(name),
            State::Failed(e) => summary.failed.push((name, e.clone())),
            State::Interrupted => summary.interrupted.push(name),
            // Pending here means it was never started because an earlier stage failed or
            // the run was stopped.
            State::Skipped(_) | State::Pending | State::Waiting => summary.skipped.push(name),
            State::Running => unreachable!("the loop waits for every running stage"),
        }
    }
    ui.summary(serde_json::json!({
        "recipe": plan.recipe,
        "ran": summary.ran,
        "cached": summary.cached,
        "failed": summary.failed.iter().map(|(n, e)| serde_json::json!({"stage": n, "error": e})).collect::<Vec<_>>(),
        "skipped": summary.skipped,
        "interrupted": summary.interrupted,
        "wall_s": summary.wall_s,
    }));
    let status = if summary.signal.is_some() {
        "interrupted"
    } else if summary.ok() {
        "ok"
    } else {
        "failed"
    };
    store.finish_invocation(invocation, status)?;
    Ok(summary)
}

/// What a recipe's stages are bound to, kept as `runs/recipes/<name>.json` (written by
/// rename) so that `rkd-orch db rebuild` can restore the bindings from files alone.
pub fn write_snapshot(plan: &Plan, runs: &RunsDir) -> Result<(), RunError> {
    let dir = runs.recipes();
    fs::create_dir_all(&dir).map_err(io("cannot create", &dir))?;
    let stages: Vec<serde_json::Value> = plan
        .order
        .iter()
        .map(|&i| {
            let s = &plan.stages[i];
            serde_json::json!({
                "name": s.name,
                "base": s.base,
                "kind": s.kind,
                "run_kind": s.config.kind(),
                "key": s.key,
                "inputs": s.inputs.iter().map(|(role, src)| serde_json::json!({"role": role, "stage": plan.stages[*src].name})).collect::<Vec<_>>(),
                "params": s.params.iter().map(|p| serde_json::json!({"origin": p.origin, "path": p.path, "label": p.label, "value": p.value, "named": p.named})).collect::<Vec<_>>(),
            })
        })
        .collect();
    let doc = serde_json::json!({
        "recipe": plan.recipe,
        "file": plan.file,
        "recipe_sha256": plan.recipe_sha256,
        "stages": stages,
    });
    let path = dir.join(format!("{}.json", plan.recipe));
    let tmp = dir.join(format!(".{}.json.tmp-{}", plan.recipe, std::process::id()));
    fs::write(&tmp, serde_json::to_vec_pretty(&doc).expect("serialisable"))
        .map_err(io("cannot write", &tmp))?;
    fs::rename(&tmp, &path).map_err(io("cannot write", &path))?;
    Ok(())
}

/// Starts stage `i` in `slot`; returns its process group id.
fn spawn(
    plan: &Plan,
    i: usize,
    runs: &RunsDir,
    slot: &Slot,
    tx: &mpsc::Sender<Msg>,
) -> Result<u32, RunError> {
    let s = &plan.stages[i];
    let cache = runs.cache();
    cache.remove_stale_tmp(&s.key);
    let spec = StageSpec {
        key: s.key.clone(),
        name: s.name.clone(),
        config: s.config.clone(),
        inputs: s
            .inputs
            .iter()
            .map(|(role, src)| (role.clone(), absolute(&cache.entry(&plan.stages[*src].key))))
            .collect(),
        manifest: s.manifest.to_value(),
        cache_dir: absolute(cache.root()),
    };
    let spec_path = runs.specs().join(format!("{}.json", s.key));
    fs::write(
        &spec_path,
        serde_json::to_vec_pretty(&spec).expect("serialisable spec"),
    )
    .map_err(io("cannot write", &spec_path))?;
    let log_path = runs.logs().join(format!("{}.log", s.key));
    let log = fs::File::create(&log_path).map_err(io("cannot create", &log_path))?;
    let exe = std::env::current_exe().map_err(io("cannot locate", Path::new("rkd-orch")))?;
    let mut cmd = Command::new(exe);
    cmd.arg("stage")
        .arg("--spec")
        .arg(&spec_path)
        .envs(slot.env())
        // Backtraces are slow to capture in hot loops and the stage reports its own errors.
        .env("RUST_BACKTRACE", "0")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log))
        // Its own process group: a Ctrl-C on the terminal reaches the coordinator only,
        // which forwards it (and can kill the whole group, helpers included).
        .process_group(0);
    // SAFETY: prctl is async-signal-safe; between fork and exec nothing else runs.
    unsafe {
        cmd.pre_exec(|| {
            // If the coordinator dies (even by kill -9), its stages die with it instead of
            // running on unobserved; the next run resumes them from their checkpoints.
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    let mut child = cmd
        .spawn()
        .map_err(io("cannot start a stage process for", &spec_path))?;
    let pgid = child.id();
    let stdout = child.stdout.take().expect("piped");
    let tx = tx.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Ok(ev) = serde_json::from_str::<Event>(&line) {
                let _ = tx.send(Msg::Event(i, ev));
            }
        }
        let _ = tx.send(Msg::Exit(i, child.wait()));
    });
    Ok(pgid)
}

fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}

fn describe(ev: &Event) -> String {
    match ev {
        Event::Epoch {
            epoch,
            epochs,
            losses,
            wall_s,
        } => {
            let mut s = format!(
                "epoch {epoch:>w$}/{epochs}  loss {:.4}",
                losses.get("total").copied().unwrap_or(f64::NAN),
                w = epochs.to_string().len()
            );
            if losses.len() > 2 {
                let terms: Vec<String> = losses
                    .iter()
                    .filter(|(k, _)| k.as_str() != "total")
                    .map(|(k, v)| format!("{k} {v:.4}"))
                    .collect();
                s.push_str(&format!(" ({})", terms.join(", ")));
            }
            s.push_str(&format!("  {wall_s:.1}s"));
            s
        }
        Event::Metric { name, value } => format!("{name} = {value:.4}"),
        Event::Resumed { epoch } => format!("resumed  from the checkpoint of epoch {epoch}"),
    }
}

fn describe_exit(st: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (st.code(), st.signal()) {
        (Some(c), _) => format!("exited with status {c}"),
        (None, Some(sig)) => format!("was killed by signal {sig}"),
        _ => "ended abnormally".into(),
    }
}

fn log_tail(path: &Path, n: usize) -> Vec<String> {
    let text = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<String> = text.lines().map(str::to_string).collect();
    lines[lines.len().saturating_sub(n)..].to_vec()
}

/// The stage's own `error: …` line, which is more useful than the exit status.
fn last_error_line(tail: &[String]) -> Option<String> {
    tail.iter()
        .rev()
        .find_map(|l| l.strip_prefix("error: ").map(str::to_string))
}
