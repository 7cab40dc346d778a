//! `rkd-orch run`: the coordinator over a recipe, with its slots, and what is printed when
//! it ends.

use std::path::PathBuf;

use rkd_orch::exit::CliError;
use rkd_orch::results::Format;
use rkd_orch::run::{self, RunOptions};

use super::{load_plan, RunsArg, SetArgs};

#[derive(clap::Args)]
pub struct RunArgs {
    recipe: PathBuf,
    #[command(flatten)]
    runs: RunsArg,
    #[command(flatten)]
    pub sets: SetArgs,
    /// Stages run at the same time (CPU slots).
    #[arg(long, short = 'j', value_name = "N")]
    jobs: Option<usize>,
    /// Threads each stage may use (default: cores / jobs).
    #[arg(long, value_name = "N")]
    threads_per_job: Option<usize>,
    /// GPUs to run stages on, one stage per GPU at a time: `0,1` or `all`.
    #[arg(long, value_name = "IDS")]
    gpus: Option<String>,
    /// After a failure, keep starting stages that do not depend on it.
    #[arg(long)]
    keep_going: bool,
    /// Start a failed stage again up to N times (a NaN/inf loss is not retried).
    #[arg(long, default_value_t = 0, value_name = "N")]
    retries: usize,
    /// After Ctrl-C/SIGTERM, seconds the running stages get to stop before they are
    /// killed (a second Ctrl-C kills them at once).
    #[arg(long, default_value_t = 10.0, value_name = "SECS")]
    grace: f64,
    /// Print only the results table and errors.
    #[arg(long, short)]
    quiet: bool,
    /// One JSON object per event on stdout (plan, started, epoch, metric, done,
    /// failed, …, summary) instead of progress and the table.
    #[arg(long, conflicts_with = "quiet")]
    json: bool,
}

/// Under `--json`, a run that cannot start still ends with a `summary` event, so that a
/// script reading stdout always gets one; what is wrong is on stderr, as for every command.
fn json_not_started(error: &str) {
    let event = run::Summary::default().event(None, "failed", Some(error.to_string()));
    println!("{event}");
}

/// The slots of `--gpus`, or of `--jobs` and `--threads-per-job`.
fn slots(a: &RunArgs) -> Result<Vec<run::Slot>, String> {
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    Ok(match &a.gpus {
        Some(arg) => {
            let ids = run::slots::parse_gpus(arg)?;
            run::slots::gpu_support()?;
            let threads = a.threads_per_job.unwrap_or((cores / ids.len()).max(1));
            run::slots::Slots::gpus(&ids, threads).slots().to_vec()
        }
        None => {
            let jobs = a.jobs.unwrap_or(1).max(1);
            let threads = a.threads_per_job.unwrap_or((cores / jobs).max(1)).max(1);
            vec![run::Slot::Cpu { threads }; jobs]
        }
    })
}

pub fn run(a: RunArgs) -> Result<(), CliError> {
    let plan = load_plan(&a.recipe, &a.sets).inspect_err(|_| {
        if a.json {
            json_not_started(&format!(
                "{} is not a valid recipe (see stderr); nothing ran",
                a.recipe.display()
            ));
        }
    })?;
    let slots = slots(&a).map_err(|e| {
        if a.json {
            json_not_started(&format!("{e}; nothing ran"));
        }
        CliError::Gpus(e)
    })?;
    let mode = run::Mode::choose(a.quiet, a.json);
    // Under --json everything is in the events on stdout: the errors too.
    let told = |e: CliError| {
        if mode == run::Mode::Json {
            CliError::Reported(Box::new(e))
        } else {
            e
        }
    };
    let opts = RunOptions {
        slots,
        keep_going: a.keep_going,
        retries: a.retries,
        mode,
        grace_s: a.grace.max(0.0),
        sets: a.sets.set.clone(),
    };
    let runs = a.runs.dir();
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    let summary = run::run(&plan, &runs, &opts, &command).map_err(|e| told(e.into()))?;
    if mode != run::Mode::Quiet && mode != run::Mode::Json {
        eprintln!(
            "{}: {} ran, {} cached, {} failed, {} skipped{}{} in {:.1}s; results in {}",
            plan.recipe,
            summary.ran.len(),
            summary.cached.len(),
            summary.failed.len(),
            summary.skipped.len(),
            if summary.interrupted.is_empty() {
                String::new()
            } else {
                format!(", {} interrupted", summary.interrupted.len())
            },
            if summary.not_started.is_empty() {
                String::new()
            } else {
                format!(", {} not started", summary.not_started.len())
            },
            summary.wall_s,
            runs.db().display()
        );
    }
    if mode != run::Mode::Json && !(summary.ran.is_empty() && summary.cached.is_empty()) {
        // The run's outcome decides the exit code, not the table's.
        if let Err(e) = super::results::print_results(&runs, Some(&plan.recipe), Format::Table) {
            e.report();
        }
    }
    if let Some(sig) = summary.signal {
        return Err(told(CliError::Interrupted {
            recipe: plan.recipe.clone(),
            signal: run::signals::name(sig),
        }));
    }
    if summary.ok() {
        Ok(())
    } else {
        Err(told(CliError::StagesFailed(summary.failed)))
    }
}
