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
pub mod status;

use crate::cache::Lookup;
use crate::plan::Plan;
use crate::spec::{Event, StageSpec};
use crate::store::{Invocation, NewInvocation, Store, StoreError};
use lock::KeyLock;
pub use progress::Mode;
use progress::Progress;
pub use slots::Slot;
use slots::Slots;

// The runs directory's layout is the cache's (one place for every path under it).
pub use crate::cache::layout::{RunsLayout as RunsDir, DB_FILE};

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
    /// The `--set PATH=VALUE` arguments the plan was made with, as typed: recorded with the
    /// run, so that its results can say what they overrode.
    pub sets: Vec<String>,
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
    /// Not run because an input failed, was skipped or was interrupted.
    pub skipped: Vec<String>,
    /// Stopped by a signal (they resume from their last checkpoint on the next run).
    pub interrupted: Vec<String>,
    /// Never started: the run was stopped, or an earlier stage failed (without
    /// `--keep-going`), before their turn. Nothing is wrong with them; the next run starts them.
    pub not_started: Vec<String>,
    /// The signal that interrupted the run, if one did.
    pub signal: Option<i32>,
    pub wall_s: f64,
}

impl Summary {
    /// The `summary` event of `--json`: the stages by outcome, the run's `status` and the
    /// coordinator's own `error`. The one shape of it, also for a run that could not start.
    pub fn event(
        &self,
        recipe: Option<&str>,
        status: &str,
        error: Option<String>,
    ) -> serde_json::Value {
        serde_json::json!({
            "event": "summary",
            "recipe": recipe,
            "ran": self.ran,
            "cached": self.cached,
            "failed": self.failed.iter().map(|(n, e)| serde_json::json!({"stage": n, "error": e})).collect::<Vec<_>>(),
            "skipped": self.skipped,
            "interrupted": self.interrupted,
            "not_started": self.not_started,
            "wall_s": self.wall_s,
            "status": status,
            "error": error,
        })
    }

    pub fn ok(&self) -> bool {
        self.failed.is_empty()
            && self.skipped.is_empty()
            && self.interrupted.is_empty()
            && self.not_started.is_empty()
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

/// What the coordinator knows so far. [`run`] keeps it while [`coordinate`] works, so that
/// when the coordinator itself fails (a full disk, a database error) the run is still
/// reported and closed: running stages stopped, a summary with the error (on stdout under
/// `--json`), the invocation marked failed.
struct Tally {
    state: Vec<State>,
    running: BTreeMap<usize, Running>,
    /// The first signal and when it came.
    stopping: Option<(i32, Instant)>,
    /// The database and this run's invocation, once opened.
    db: Option<(Store, i64)>,
    /// Held while the run lasts: an invocation whose lock nobody holds has ended.
    invocation_lock: Option<KeyLock>,
}

/// The lock taken around creating an invocation (see [`close_abandoned`]).
const BEGIN_LOCK: &str = "invocations";

fn invocation_lock(id: i64) -> String {
    format!("invocation-{id}")
}

/// Waits for the lock `name` (held by other coordinators for milliseconds only).
fn wait_for_lock(dir: &Path, name: &str) -> Result<KeyLock, RunError> {
    loop {
        if let Some(l) = KeyLock::try_acquire(dir, name).map_err(io("cannot lock", dir))? {
            return Ok(l);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Marks `failed` the invocations left `running` by coordinators that are gone: one killed
/// (even by `kill -9`), or one that could not write its status at the end (a full disk).
/// Every coordinator holds `invocation-<id>.lock` while it runs, and the kernel drops the
/// lock when it dies. Called with [`BEGIN_LOCK`] held.
fn close_abandoned(store: &Store, locks: &Path) -> Result<(), RunError> {
    for id in store.running_invocations()? {
        if !KeyLock::is_held(locks, &invocation_lock(id)) {
            store.finish_invocation(id, "failed")?;
        }
    }
    Ok(())
}

pub fn run(
    plan: &Plan,
    runs: &RunsDir,
    opts: &RunOptions,
    command: &str,
) -> Result<Summary, RunError> {
    let started = Instant::now();
    let names: Vec<&str> = plan.stages.iter().map(|s| s.name.as_str()).collect();
    let mut ui = Progress::new(opts.mode, &names, opts.slots.len());
    let mut t = Tally {
        state: vec![State::Pending; plan.stages.len()],
        running: BTreeMap::new(),
        stopping: None,
        db: None,
        invocation_lock: None,
    };
    let failure = coordinate(plan, runs, opts, command, &mut ui, &mut t).err();
    // A coordinator that cannot go on must not leave its stages running unobserved; they
    // resume from their checkpoints on the next run.
    for r in std::mem::take(&mut t.running).values() {
        signals::signal_group(r.pgid, libc::SIGKILL);
    }
    // Those, and a stage whose exit the coordinator failed to record (what it committed is
    // found in the cache next time).
    for st in t.state.iter_mut().filter(|st| **st == State::Running) {
        *st = State::Interrupted;
    }
    let Tally {
        state,
        stopping,
        db,
        invocation_lock,
        ..
    } = t;
    for &i in &plan.order {
        if matches!(state[i], State::Pending | State::Waiting)
            && stopping.is_none()
            && failure.is_none()
        {
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
            State::Skipped(_) => summary.skipped.push(name),
            // Its turn never came: an earlier stage failed or the run was stopped.
            State::Pending | State::Waiting => summary.not_started.push(name),
            State::Running => unreachable!("the loop waits for every running stage"),
        }
    }
    let status = if failure.is_some() {
        "failed"
    } else if summary.signal.is_some() {
        "interrupted"
    } else if summary.ok() {
        "ok"
    } else {
        "failed"
    };
    ui.summary(summary.event(
        Some(&plan.recipe),
        status,
        failure.as_ref().map(|e| e.to_string()),
    ));
    let Some((store, invocation)) = db else {
        return Err(failure.expect("the database is opened unless the coordinator failed"));
    };
    let closed = store.finish_invocation(invocation, status);
    // Closed or not, the lock's file goes (a run closing it later needs no file).
    if let Some(lock) = invocation_lock {
        let _ = fs::remove_file(lock.path());
    }
    match failure {
        // Best effort: the database may be what failed (a full disk); `status` and the
        // summary still say what happened.
        Some(e) => Err(e),
        None => closed.map(|()| summary).map_err(RunError::from),
    }
}

/// Runs the plan, recording what happens in `t`; an error is the coordinator's own (it
/// cannot create a directory, write a stage's spec, or write the database), not a stage's.
fn coordinate(
    plan: &Plan,
    runs: &RunsDir,
    opts: &RunOptions,
    command: &str,
    ui: &mut Progress,
    t: &mut Tally,
) -> Result<(), RunError> {
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
    let locks = runs.locks();
    // Held while the database is opened and migrated (two coordinators creating it at once:
    // SQLite's switch of a new file to WAL fails in one of them with "database is locked",
    // whatever the busy timeout), while an invocation is created and locked, and while
    // abandoned ones are closed, so that a new invocation is never taken for an abandoned
    // one. Other coordinators wait for it for milliseconds only.
    let begin = wait_for_lock(&locks, BEGIN_LOCK)?;
    let store = Store::open_rw(&runs.db())?;
    let clash = name_clash(&store, plan)?;
    if let Some(c) = &clash {
        ui.warning(&c.message(), c.json());
    }
    let path = recipe_path(&plan.file);
    close_abandoned(&store, &locks)?;
    let invocation = store.begin_run(&NewInvocation {
        recipe: &plan.recipe,
        file: &plan.file,
        path: path.as_deref(),
        sha256: &plan.recipe_sha256,
        command,
        sets: Some(&opts.sets),
    })?;
    t.invocation_lock = KeyLock::try_acquire(&locks, &invocation_lock(invocation))
        .map_err(io("cannot lock", &locks))?;
    drop(begin);
    let (store, invocation) = t.db.insert((store, invocation));
    let invocation = *invocation;
    let Tally {
        state,
        running,
        stopping,
        ..
    } = t;
    let mut slots = Slots::new_from(&opts.slots);

    let n = plan.stages.len();
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
    let mut attempts = vec![0usize; n];
    let mut any_failed = false;
    let mut killed = false;
    let mut waiting_shown = vec![false; n];
    // The errors stages reported before exiting (their logs may be unwritable).
    let mut reported: BTreeMap<usize, String> = BTreeMap::new();
    loop {
        // Signals: the first stops new starts and forwards it to every running stage; the
        // second (or the end of the grace period) kills them.
        let (count, sig) = signals::received();
        if count >= 1 && stopping.is_none() {
            *stopping = Some((sig, Instant::now()));
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
                    Event::Failed { error } => {
                        reported.insert(i, error.clone());
                    }
                }
            }
            Msg::Exit(i, status) => {
                let r = running.remove(&i).expect("a running stage");
                let stage_error = reported.remove(&i);
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
                if let Some((sig, _)) = *stopping {
                    let why = format!("interrupted by {}", signals::name(sig));
                    store.record_failure(&s.key, s.config.kind(), &s.manifest.to_string(), &why)?;
                    ui.ended(&s.name, "interrupted", secs, &why, true);
                    state[i] = State::Interrupted;
                    continue;
                }
                let tail = log_tail(&log, 12);
                let error = stage_error
                    .or_else(|| last_error_line(&tail))
                    .unwrap_or_else(|| why.clone());
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

    Ok(())
}

/// A run that takes over a recipe name last run from another file with other content: the
/// copy of a recipe that kept `name: quickstart` would silently replace the `quickstart`
/// results (and `gc` would then remove the stages only the original had).
#[derive(Debug, Clone)]
pub struct NameClash {
    pub recipe: String,
    /// The file of this run, as typed.
    pub file: String,
    /// The last run under this name.
    pub previous: Invocation,
}

impl NameClash {
    pub fn message(&self) -> String {
        format!(
            "recipe name `{r}` was last run from {prev} (other content, sha256 {sha}); running {file} under the same name replaces those results (`rkd-orch results {r}` will show this run's). To keep both, give this one its own name: change `name:` in {file}, or add --name NAME",
            r = self.recipe,
            prev = self.previous.recipe_file,
            sha = &self.previous.recipe_sha256[..12.min(self.previous.recipe_sha256.len())],
            file = self.file,
        )
    }

    /// The `--json` event's fields.
    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "kind": "recipe_name_taken",
            "recipe": self.recipe,
            "file": self.file,
            "previous_file": self.previous.recipe_file,
            "previous_sha256": self.previous.recipe_sha256,
            "previous_invocation": self.previous.id,
        })
    }
}

/// The absolute path of a recipe file, where it resolves.
pub fn recipe_path(file: &str) -> Option<String> {
    fs::canonicalize(file).ok().map(|p| p.display().to_string())
}

/// Whether running `plan` would take over a name that another file with other content was
/// last run under. The same file edited is not a clash (that is how recipes evolve), nor is
/// the same content under another path (a moved or checked-out-again file).
pub fn name_clash(store: &Store, plan: &Plan) -> Result<Option<NameClash>, StoreError> {
    let Some(previous) = store.invocation(&plan.recipe)? else {
        return Ok(None);
    };
    if previous.recipe_sha256 == plan.recipe_sha256 {
        return Ok(None);
    }
    let here = recipe_path(&plan.file);
    // Runs before schema version 3 (and rebuilt databases) recorded the file only as typed:
    // resolve it from here, which is right whenever the runs are started from one directory.
    let there = previous
        .recipe_path
        .clone()
        .or_else(|| recipe_path(&previous.recipe_file));
    let same_file = match (&here, &there) {
        (Some(a), Some(b)) => a == b,
        _ => previous.recipe_file == plan.file,
    };
    Ok((!same_file).then(|| NameClash {
        recipe: plan.recipe.clone(),
        file: plan.file.clone(),
        previous,
    }))
}

/// What a recipe's stages are bound to, kept as `runs/recipes/<name>.json` (written by
/// rename) so that `rkd-orch db rebuild` can restore the bindings from files alone.
pub fn write_snapshot(plan: &Plan, runs: &RunsDir) -> Result<(), RunError> {
    let dir = runs.recipes();
    // The file is named after the recipe, so only a checked name may make it (the parser
    // refuses any other; this keeps a plan built some other way inside `runs/recipes/`).
    if let Err(why) = crate::recipe::keys::check_name(&plan.recipe, true) {
        return Err(RunError::Io {
            what: "refusing to name a snapshot after the recipe in",
            path: dir,
            source: std::io::Error::new(std::io::ErrorKind::InvalidInput, why),
        });
    }
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
        manifest: s.manifest.clone(),
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
        Event::Metric { name, value } => progress::metric_text(name, *value),
        Event::Resumed { epoch } => format!("resumed  from the checkpoint of epoch {epoch}"),
        Event::Failed { error } => format!("failed: {error}"),
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

/// The last `n` lines of a stage's log, from at most its last 64 KiB: a log can be huge, or
/// not a regular file at all.
fn log_tail(path: &Path, n: usize) -> Vec<String> {
    use std::io::{Read, Seek, SeekFrom};
    const MAX: u64 = 64 << 10;
    let mut bytes = Vec::new();
    if let Ok(mut f) = fs::File::open(path) {
        let len = f.metadata().map(|m| m.len()).unwrap_or(0);
        let _ = f.seek(SeekFrom::Start(len.saturating_sub(MAX)));
        let _ = f.take(MAX).read_to_end(&mut bytes);
    }
    let text = String::from_utf8_lossy(&bytes);
    let lines: Vec<String> = text.lines().map(str::to_string).collect();
    lines[lines.len().saturating_sub(n)..].to_vec()
}

/// The stage's own `error: …` line, which is more useful than the exit status.
fn last_error_line(tail: &[String]) -> Option<String> {
    tail.iter()
        .rev()
        .find_map(|l| l.strip_prefix("error: ").map(str::to_string))
}
