//! The coordinator: runs a plan's stages, each in its own child process (`rkd-orch stage
//! --spec FILE`), as many at a time as there are slots, dependants as soon as their inputs
//! are done. It alone writes the results database.

use std::collections::BTreeMap;
use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::Instant;

use crate::cache::{Cache, Lookup};
use crate::plan::Plan;
use crate::stage::spec::{Event, StageSpec};
use crate::store::{Store, StoreError};

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
}

#[derive(Clone, Debug)]
pub struct RunOptions {
    pub jobs: usize,
    pub threads_per_job: usize,
    /// Keep starting independent stages after one failed.
    pub keep_going: bool,
    pub quiet: bool,
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
    Running,
    Cached,
    Ran,
    Failed(String),
    Skipped(String),
}

/// What happened to each stage, in the plan's order.
#[derive(Debug, Default)]
pub struct Summary {
    pub cached: Vec<String>,
    pub ran: Vec<String>,
    pub failed: Vec<(String, String)>,
    pub skipped: Vec<String>,
    pub wall_s: f64,
}

impl Summary {
    pub fn ok(&self) -> bool {
        self.failed.is_empty() && self.skipped.is_empty()
    }
}

enum Msg {
    Event(usize, Event),
    Exit(usize, std::io::Result<ExitStatus>),
}

/// Prints progress lines on stderr (stdout is left for results).
struct Console {
    quiet: bool,
    width: usize,
}

impl Console {
    fn line(&self, stage: &str, text: &str) {
        if !self.quiet {
            eprintln!("  {stage:<w$}  {text}", w = self.width);
        }
    }
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
    let cache = runs.cache();
    let mut store = Store::open_rw(&runs.db())?;
    let invocation =
        store.begin_invocation(&plan.recipe, &plan.file, &plan.recipe_sha256, command)?;
    let console = Console {
        quiet: opts.quiet,
        width: plan
            .stages
            .iter()
            .map(|s| s.name.len())
            .max()
            .unwrap_or(5)
            .max(5),
    };

    let n = plan.stages.len();
    let mut state = vec![State::Pending; n];
    for &i in &plan.order {
        let s = &plan.stages[i];
        store.bind_stage(&crate::store::Binding::planned(&plan.recipe, s), invocation)?;
        match cache.lookup(&s.key) {
            Lookup::Done(result) => {
                store.ingest(&result, &s.manifest.to_string())?;
                state[i] = State::Cached;
            }
            Lookup::Corrupt(why) => {
                let moved = cache
                    .quarantine(&s.key)
                    .map_err(io("cannot move aside", &cache.entry(&s.key)))?;
                console.line(
                    &s.name,
                    &format!(
                        "cache entry is corrupt ({why}); moved to {} and rebuilding",
                        moved.display()
                    ),
                );
            }
            Lookup::Missing => {}
        }
    }
    let to_run = state.iter().filter(|s| **s == State::Pending).count();
    if !opts.quiet {
        eprintln!(
            "{}: {} stages, {} cached, {} to run ({} job{} × {} thread{})",
            plan.recipe,
            n,
            n - to_run,
            to_run,
            opts.jobs,
            if opts.jobs == 1 { "" } else { "s" },
            opts.threads_per_job,
            if opts.threads_per_job == 1 { "" } else { "s" },
        );
    }
    for &i in &plan.order {
        if state[i] == State::Cached {
            console.line(
                &plan.stages[i].name,
                &format!("cached   {}", plan.stages[i].short_key()),
            );
        }
    }

    let (tx, rx) = mpsc::channel::<Msg>();
    let mut running = 0usize;
    let mut stage_started: BTreeMap<usize, Instant> = BTreeMap::new();
    let mut any_failed = false;
    let mut last_shown: BTreeMap<usize, Instant> = BTreeMap::new();
    loop {
        // Skip stages whose inputs failed; start those whose inputs are done.
        for &i in &plan.order {
            if state[i] != State::Pending {
                continue;
            }
            let inputs = &plan.stages[i].inputs;
            if let Some((_, bad)) = inputs
                .iter()
                .find(|(_, s)| matches!(state[*s], State::Failed(_) | State::Skipped(_)))
            {
                let why = format!("input `{}` did not finish", plan.stages[*bad].name);
                console.line(&plan.stages[i].name, &format!("skipped  ({why})"));
                state[i] = State::Skipped(why);
                continue;
            }
            let ready = inputs
                .iter()
                .all(|(_, s)| matches!(state[*s], State::Cached | State::Ran));
            let may_start = !any_failed || opts.keep_going;
            if ready && may_start && running < opts.jobs {
                spawn(plan, i, runs, opts, &tx)?;
                console.line(
                    &plan.stages[i].name,
                    &format!(
                        "started  {} ({})",
                        plan.stages[i].short_key(),
                        plan.stages[i].config.kind()
                    ),
                );
                stage_started.insert(i, Instant::now());
                state[i] = State::Running;
                running += 1;
            }
        }
        if running == 0 {
            break;
        }
        let msg = rx.recv().expect("a running stage holds a sender");
        match msg {
            Msg::Event(i, ev) => {
                // Long stages would flood the terminal: show the first and last epoch and
                // at most one line a second in between.
                let show = match &ev {
                    Event::Epoch { epoch, epochs, .. } => {
                        let last = last_shown.get(&i).copied();
                        *epoch == 1
                            || epoch == epochs
                            || last.is_none_or(|t: Instant| t.elapsed().as_secs_f64() >= 1.0)
                    }
                    Event::Metric { .. } => true,
                };
                if show {
                    last_shown.insert(i, Instant::now());
                    console.line(&plan.stages[i].name, &describe(&ev));
                }
            }
            Msg::Exit(i, status) => {
                running -= 1;
                let s = &plan.stages[i];
                let secs = stage_started[&i].elapsed().as_secs_f64();
                let log = runs.logs().join(format!("{}.log", s.key));
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
                match failure {
                    None => {
                        console.line(&s.name, &format!("done     in {secs:.1}s"));
                        state[i] = State::Ran;
                    }
                    Some(why) => {
                        cache.remove_stale_tmp(&s.key);
                        let tail = log_tail(&log, 12);
                        let error = last_error_line(&tail).unwrap_or_else(|| why.clone());
                        store.record_failure(
                            &s.key,
                            s.config.kind(),
                            &s.manifest.to_string(),
                            &error,
                        )?;
                        console.line(&s.name, &format!("FAILED   after {secs:.1}s: {why}"));
                        if !opts.quiet {
                            eprintln!("    last lines of {}:", log.display());
                            for l in &tail {
                                eprintln!("    | {l}");
                            }
                        }
                        state[i] = State::Failed(error);
                        any_failed = true;
                    }
                }
            }
        }
    }

    for &i in &plan.order {
        if state[i] == State::Pending {
            console.line(
                &plan.stages[i].name,
                "not started (an earlier stage failed; --keep-going runs independent stages anyway)",
            );
        }
    }
    let mut summary = Summary {
        wall_s: started.elapsed().as_secs_f64(),
        ..Default::default()
    };
    for &i in &plan.order {
        let name = plan.stages[i].name.clone();
        match &state[i] {
            State::Cached => summary.cached.push(name),
            State::Ran => summary.ran.push(name),
            State::Failed(e) => summary.failed.push((name, e.clone())),
            // Pending here means it was never started because an earlier stage failed.
            State::Skipped(_) | State::Pending => summary.skipped.push(name),
            State::Running => unreachable!("the loop waits for every running stage"),
        }
    }
    store.finish_invocation(invocation, if summary.ok() { "ok" } else { "failed" })?;
    Ok(summary)
}

fn spawn(
    plan: &Plan,
    i: usize,
    runs: &RunsDir,
    opts: &RunOptions,
    tx: &mpsc::Sender<Msg>,
) -> Result<(), RunError> {
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
    let mut child = Command::new(exe)
        .arg("stage")
        .arg("--spec")
        .arg(&spec_path)
        .env("RAYON_NUM_THREADS", opts.threads_per_job.to_string())
        // Backtraces are slow to capture in hot loops and the stage reports its own errors.
        .env("RUST_BACKTRACE", "0")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log))
        .spawn()
        .map_err(io("cannot start a stage process for", &spec_path))?;
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
    Ok(())
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
