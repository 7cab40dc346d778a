//! The coordinator loop: opens the run (snapshot, database, invocation), ingests what the
//! cache already has, then drives the [`Scheduler`] with what the [`Executor`] reports,
//! ingesting each result as its stage finishes and telling the progress UI. It alone writes
//! the results database. The scheduler decides; the executor runs; this module does the
//! I/O between them (locks, cache lookups, the database, the terminal).

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::clash::{name_clash, recipe_path};
use super::executor::{Ended, Executor, Report};
use super::lock::KeyLock;
use super::progress::{self, Mode, Progress};
use super::scheduler::{Action, Exit, Policy, Scheduler, State, Verdict};
use super::snapshot::write_snapshot;
use super::summary::Summary;
use super::{io, signals, RunError, RunOptions, RunsDir};
use crate::cache::{Cache, Lookup};
use crate::plan::Plan;
use crate::spec::{Event, StageSpec};
use crate::store::{NewInvocation, Store};

/// A stage the coordinator started and has not seen end.
struct Running {
    started: Instant,
    /// Held while it runs: no other coordinator starts it meanwhile.
    _lock: KeyLock,
}

/// What the coordinator knows so far. [`run_with`] keeps it while [`coordinate`] works, so
/// that when the coordinator itself fails (a full disk, a database error) the run is still
/// reported and closed: running stages stopped, a summary with the error (on stdout under
/// `--json`), the invocation marked failed.
struct Tally {
    sched: Scheduler,
    running: BTreeMap<usize, Running>,
    /// The errors of the stages that failed.
    errors: BTreeMap<usize, String>,
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

/// Runs `plan` with `exec`, to the end; the summary says what happened to each stage. An
/// error is the coordinator's own (the summary has been printed all the same).
pub fn run_with(
    plan: &Plan,
    runs: &RunsDir,
    opts: &RunOptions,
    command: &str,
    exec: &mut dyn Executor,
) -> Result<Summary, RunError> {
    let started = Instant::now();
    let names: Vec<&str> = plan.stages.iter().map(|s| s.name.as_str()).collect();
    let mut ui = Progress::new(opts.mode, &names, opts.slots.len());
    let inputs: Vec<Vec<usize>> = plan
        .stages
        .iter()
        .map(|s| s.inputs.iter().map(|(_, src)| *src).collect())
        .collect();
    let policy = Policy {
        keep_going: opts.keep_going,
        retries: opts.retries,
        grace_s: opts.grace_s,
    };
    let mut t = Tally {
        sched: Scheduler::new(plan.order.clone(), inputs, &opts.slots, policy),
        running: BTreeMap::new(),
        errors: BTreeMap::new(),
        db: None,
        invocation_lock: None,
    };
    let failure = coordinate(plan, runs, opts, command, exec, &mut ui, &mut t).err();
    // A coordinator that cannot go on must not leave its stages running unobserved; they
    // resume from their checkpoints on the next run. They, and a stage whose end the
    // coordinator failed to record (what it committed is found in the cache next time),
    // count as interrupted.
    for i in t.sched.abort() {
        exec.signal(i, libc::SIGKILL);
    }
    t.running.clear();
    let stopped = t.sched.signal();
    for &i in &plan.order {
        if matches!(t.sched.state(i), State::Pending | State::Waiting)
            && stopped.is_none()
            && failure.is_none()
        {
            ui.info(
                &plan.stages[i].name,
                "not started (an earlier stage failed; --keep-going runs independent stages anyway)",
            );
        }
    }
    let mut summary = summarise(plan, &t.sched, &mut t.errors);
    summary.wall_s = started.elapsed().as_secs_f64();
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
    let Some((store, invocation)) = t.db else {
        return Err(failure.expect("the database is opened unless the coordinator failed"));
    };
    let closed = store.finish_invocation(invocation, status);
    // Closed or not, the lock's file goes (a run closing it later needs no file).
    if let Some(lock) = t.invocation_lock {
        let _ = fs::remove_file(lock.path());
    }
    match failure {
        // Best effort: the database may be what failed (a full disk); `status` and the
        // summary still say what happened.
        Some(e) => Err(e),
        None => closed.map(|()| summary).map_err(RunError::from),
    }
}

/// Each stage by its outcome, in the plan's order.
fn summarise(plan: &Plan, sched: &Scheduler, errors: &mut BTreeMap<usize, String>) -> Summary {
    let mut summary = Summary {
        signal: sched.signal(),
        ..Default::default()
    };
    for &i in &plan.order {
        let name = plan.stages[i].name.clone();
        match sched.state(i) {
            State::Cached => summary.cached.push(name),
            State::Ran => summary.ran.push(name),
            State::Failed => summary
                .failed
                .push((name, errors.remove(&i).unwrap_or_default())),
            State::Interrupted => summary.interrupted.push(name),
            State::Skipped { .. } => summary.skipped.push(name),
            // Its turn never came: an earlier stage failed or the run was stopped.
            State::Pending | State::Waiting => summary.not_started.push(name),
            State::Starting { .. } | State::Running { .. } => {
                unreachable!("the loop waits for every running stage")
            }
        }
    }
    summary
}

/// Runs the plan, recording what happens in `t`; an error is the coordinator's own (it
/// cannot create a directory, write a stage's spec, or write the database), not a stage's.
fn coordinate(
    plan: &Plan,
    runs: &RunsDir,
    opts: &RunOptions,
    command: &str,
    exec: &mut dyn Executor,
    ui: &mut Progress,
    t: &mut Tally,
) -> Result<(), RunError> {
    let clock = Instant::now();
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
        sched,
        running,
        errors,
        ..
    } = t;

    let n = plan.stages.len();
    let mut corrupt_notes = Vec::new();
    for &i in &plan.order {
        let s = &plan.stages[i];
        store.bind_stage(&crate::store::Binding::planned(&plan.recipe, s), invocation)?;
        match cache.lookup(&s.key) {
            Lookup::Done(result) => {
                store.ingest(&result, &s.manifest.to_string())?;
                sched.cached(i);
            }
            Lookup::Corrupt(why) => {
                // Another coordinator may be committing it this instant; only an entry
                // nobody is writing is corrupt.
                if !KeyLock::is_held(&locks, &s.key) {
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
    let to_run = sched.pending();
    ui.header(&plan.recipe, n - to_run, to_run, &sched.slots().describe());
    for (i, note) in corrupt_notes {
        ui.info(&plan.stages[i].name, &note);
    }
    for &i in &plan.order {
        if sched.state(i) == State::Cached {
            ui.cached(&plan.stages[i].name, plan.stages[i].short_key());
        }
    }

    // Signals seen so far (the handler counts them).
    let mut signals_seen = 0;
    // The errors stages reported before exiting (their logs may be unwritable).
    let mut reported: BTreeMap<usize, String> = BTreeMap::new();
    loop {
        // Signals: the first stops new starts and is forwarded to every running stage; the
        // second (or the end of the grace period) kills them.
        let (count, sig) = signals::received();
        let now = clock.elapsed().as_secs_f64();
        while signals_seen < count {
            signals_seen += 1;
            if let Some(Action::Forward { signal, stages }) = sched.signal_received(sig, now) {
                ui.note(&format!(
                    "{}: stopping — sent {} to {} running stage{}; waiting up to {:.0}s (send it again to kill them now)",
                    signals::name(signal),
                    signals::name(signal),
                    stages.len(),
                    if stages.len() == 1 { "" } else { "s" },
                    opts.grace_s
                ));
                for i in stages {
                    exec.signal(i, signal);
                }
            }
        }
        for action in sched.tick(now) {
            if let Action::Kill { stages } = action {
                ui.note("killing the running stages now");
                for i in stages {
                    exec.signal(i, libc::SIGKILL);
                }
            }
        }

        while let Some(action) = sched.next_action() {
            let (i, slot) = match action {
                Action::Start { stage, slot } => (stage, slot),
                Action::Skip { stage, because } => {
                    let why = format!("input `{}` did not finish", plan.stages[because].name);
                    ui.skipped(&plan.stages[stage].name, &why);
                    continue;
                }
                Action::Forward { .. } | Action::Kill { .. } => unreachable!("from a tick"),
            };
            let s = &plan.stages[i];
            let Some(lock) =
                KeyLock::try_acquire(&locks, &s.key).map_err(io("cannot lock", &locks))?
            else {
                if sched.lock_busy(i) {
                    ui.info(
                        &s.name,
                        "waiting  (another rkd-orch run is computing this stage)",
                    );
                }
                continue;
            };
            // Whoever held the lock may have finished it.
            if let Lookup::Done(result) = cache.lookup(&s.key) {
                store.ingest(&result, &s.manifest.to_string())?;
                sched.found_cached(i);
                ui.cached(&s.name, s.short_key());
                continue;
            }
            cache.remove_stale_tmp(&s.key);
            exec.start(i, &stage_spec(plan, i, &cache), sched.slot(slot))?;
            ui.started(
                &s.name,
                s.short_key(),
                s.config.kind(),
                &sched.slot(slot).device(),
            );
            sched.started(i);
            running.insert(
                i,
                Running {
                    started: Instant::now(),
                    _lock: lock,
                },
            );
        }
        if sched.finished() {
            break;
        }
        // Time to look at the signals, or at the locks of waiting stages.
        let Some(report) = exec.wait(Duration::from_millis(100)) else {
            continue;
        };
        let (i, ended) = match report {
            Report::Event(i, ev) => {
                let name = plan.stages[i].name.as_str();
                match &ev {
                    Event::Epoch { epoch, epochs, .. } => {
                        let edge = *epoch == 1 || epoch == epochs;
                        let value = serde_json::to_value(&ev).expect("serialisable event");
                        ui.epoch(name, progress::event_text(&ev), value, edge);
                    }
                    Event::Metric { name: m, value } => ui.metric(name, m, *value),
                    Event::Resumed { epoch } => ui.resumed(name, *epoch),
                    Event::Failed { error } => {
                        reported.insert(i, error.clone());
                    }
                }
                continue;
            }
            Report::Exit(i, ended) => (i, ended),
        };
        let r = running.remove(&i).expect("a running stage");
        let stage_error = reported.remove(&i);
        let s = &plan.stages[i];
        let secs = r.started.elapsed().as_secs_f64();
        let (failure, nonfinite) = match ended {
            Ended::Success => match cache.lookup(&s.key) {
                Lookup::Done(result) => {
                    store.ingest(&result, &s.manifest.to_string())?;
                    (None, false)
                }
                Lookup::Missing => (
                    Some("the stage exited successfully but committed no result".to_string()),
                    false,
                ),
                Lookup::Corrupt(why) => (
                    Some(format!("the stage committed a corrupt result: {why}")),
                    false,
                ),
            },
            Ended::Failure { why, nonfinite } => (Some(why), nonfinite),
        };
        let Some(why) = failure else {
            ui.done(&s.name, secs);
            sched.exited(i, Exit::Ok);
            continue;
        };
        cache.remove_stale_tmp(&s.key);
        let exit = Exit::Failed {
            retryable: !nonfinite,
        };
        // Recorded before the scheduler hears of it: a stage whose end cannot be recorded
        // counts as interrupted.
        let verdict = sched.verdict(i, exit);
        if let Verdict::Interrupted { signal } = verdict {
            let why = format!("interrupted by {}", signals::name(signal));
            store.record_failure(&s.key, s.config.kind(), &s.manifest.to_string(), &why)?;
            ui.ended(&s.name, "interrupted", secs, &why, true);
            sched.exited(i, exit);
            continue;
        }
        let log = exec.log(&s.key);
        let tail = exec.log_tail(&s.key, 12);
        let error = stage_error
            .or_else(|| last_error_line(&tail))
            .unwrap_or_else(|| why.clone());
        if let Verdict::Retry { attempt, of } = verdict {
            ui.ended(
                &s.name,
                "retrying",
                secs,
                &format!("{error} (attempt {attempt} of {of})"),
                false,
            );
            sched.exited(i, exit);
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
        errors.insert(i, error);
        sched.exited(i, exit);
    }

    Ok(())
}

/// What stage `i`'s process is given: its configuration, and the committed cache entries
/// of its inputs.
fn stage_spec(plan: &Plan, i: usize, cache: &Cache) -> StageSpec {
    let s = &plan.stages[i];
    StageSpec {
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
    }
}

fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}

/// The stage's own `error: …` line, which is more useful than the exit status.
fn last_error_line(tail: &[String]) -> Option<String> {
    tail.iter()
        .rev()
        .find_map(|l| l.strip_prefix("error: ").map(str::to_string))
}

#[cfg(test)]
#[path = "coordinator_tests.rs"]
mod tests;
