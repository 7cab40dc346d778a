//! The `rkd-orch` command line: argument parsing, exit codes and printing only.
//!
//! Exit codes (a stable contract, see README): 0 success, 1 a stage (or the run) failed,
//! 2 a bad recipe or bad usage — reported before anything is run or written.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use rkd_orch::cache::Lookup;
use rkd_orch::plan::{self, Plan, PlanError};
use rkd_orch::plot::{self, Filters, Request};
use rkd_orch::recipe;
use rkd_orch::results::format::{pad, Align};
use rkd_orch::results::pivot::PivotSpec;
use rkd_orch::results::{self, Direction, Format, ResultsError};
use rkd_orch::run::{self, RunOptions, RunsDir};
use rkd_orch::store::{QueryError, Store};
use rkd_orch::{report, stage};

const EXIT_FAILED: u8 = 1;
const EXIT_USAGE: u8 = 2;

#[derive(Parser)]
#[command(
    name = "rkd-orch",
    version,
    about = "Run relational knowledge distillation experiments from YAML recipes"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

/// How a recipe file is read: `--set PATH=VALUE` (repeatable) overrides any key of it,
/// `--name NAME` the name its results are kept under.
#[derive(clap::Args)]
struct SetArgs {
    /// Override a recipe key, e.g. `--set stages.teacher.epochs=2` or
    /// `--set 'stages.*.epochs=1'` (every stage that has epochs); repeatable. The value is
    /// YAML; the override is part of each stage's content key.
    #[arg(long = "set", value_name = "PATH=VALUE")]
    set: Vec<String>,
    /// Keep the results under this name instead of the recipe's `name:` (a copy of a
    /// recipe, or a smoke run beside the real one). Names are not part of content keys:
    /// stages already computed under another name are reused.
    #[arg(long, value_name = "NAME")]
    name: Option<String>,
    /// The most stages the recipe may expand to: a larger matrix, chain or fan-out is
    /// refused at its line before anything is built (docs/engine.md, "Limits").
    #[arg(long, value_name = "N", default_value_t = recipe::expand::DEFAULT_MAX_STAGES)]
    max_stages: usize,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum PlanFormat {
    Text,
    Dot,
    Json,
}

/// Choosing stages for the result commands.
#[derive(clap::Args)]
struct FilterArgs {
    /// Keep stages whose parameter has this value, e.g. `--where sampler=random`; repeatable.
    #[arg(long = "where", value_name = "PARAM=VALUE")]
    filters: Vec<String>,
    /// Keep one declared stage (e.g. `eval`) or one stage by its full name.
    #[arg(long, value_name = "NAME")]
    stage: Option<String>,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum ExportFormat {
    Csv,
    Json,
}

fn parse_size(s: &str) -> Result<(u32, u32), String> {
    let (w, h) = s
        .split_once(['x', 'X'])
        .ok_or_else(|| format!("`{s}`: expected WIDTHxHEIGHT, e.g. 1100x680"))?;
    let px = |v: &str| {
        v.trim()
            .parse::<u32>()
            .ok()
            .filter(|n| (200..=8000).contains(n))
            .ok_or_else(|| format!("`{v}`: expected a number of pixels from 200 to 8000"))
    };
    Ok((px(w)?, px(h)?))
}

#[derive(clap::Args)]
struct RunsArg {
    /// Where the cache, logs and results database live.
    #[arg(long, default_value = "runs", value_name = "DIR")]
    runs_dir: PathBuf,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run every stage of a recipe that is not cached yet (also the resume command).
    Run {
        recipe: PathBuf,
        #[command(flatten)]
        runs: RunsArg,
        #[command(flatten)]
        sets: SetArgs,
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
    },
    /// Show the expanded stages of a recipe, their keys, and whether and why they will run.
    Plan {
        recipe: PathBuf,
        #[command(flatten)]
        runs: RunsArg,
        #[command(flatten)]
        sets: SetArgs,
        /// `text` for people, `dot` for Graphviz, `json` for scripts.
        #[arg(long, value_enum, default_value = "text")]
        format: PlanFormat,
    },
    /// Show the results of a recipe (a file or a recipe name), or of every recipe: the
    /// stages × metrics table, a pivot of one metric over swept parameters, or a comparison.
    Results {
        recipe: Option<String>,
        #[command(flatten)]
        runs: RunsArg,
        #[command(flatten)]
        sets: SetArgs,
        /// Pivot this metric (e.g. recall@1); without --by, one row per stage.
        #[arg(long, value_name = "M")]
        metric: Option<String>,
        /// Group by a swept parameter (label like `p`, path like `loss.cc.p`, or `stage`);
        /// repeat: the last gives the columns, the others the rows. Cells are mean ± std
        /// over seeds.
        #[arg(long, value_name = "PARAM")]
        by: Vec<String>,
        #[command(flatten)]
        filters: FilterArgs,
        /// Which way is better, when the metric's name does not say (or to override it).
        #[arg(long, value_enum, value_name = "DIRECTION")]
        best: Option<Direction>,
        /// Side by side: two stages of RECIPE, or (without RECIPE) two recipes.
        #[arg(long, num_args = 2, value_names = ["A", "B"])]
        compare: Vec<String>,
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
    },
    /// Run one read-only SQL statement on the results database (see docs/results.md).
    Query {
        sql: String,
        #[command(flatten)]
        runs: RunsArg,
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
    },
    /// Draw a figure (PNG or SVG): a metric against a swept parameter, one line per other
    /// parameter, ± std across seeds; or training curves (--curves); or recall@K (--recall).
    Plot {
        recipe: Option<String>,
        /// FILE.png or FILE.svg.
        #[arg(long, short)]
        output: PathBuf,
        #[command(flatten)]
        runs: RunsArg,
        #[command(flatten)]
        sets: SetArgs,
        /// The metric (default recall@1; with --curves, loss/total or loss/<term>).
        #[arg(long, value_name = "M")]
        metric: Option<String>,
        /// The parameter on the x axis (default: the first swept one that is not a seed).
        #[arg(long, value_name = "PARAM")]
        x: Option<String>,
        /// One line per value of this parameter (repeatable; default: the other swept ones).
        #[arg(long, value_name = "PARAM")]
        by: Vec<String>,
        #[command(flatten)]
        filters: FilterArgs,
        /// Training curves: per-epoch loss of each training stage (of each term, for one).
        #[arg(long, conflicts_with_all = ["recall", "x"])]
        curves: bool,
        /// Recall@K against K, per evaluated stage (or per --by group).
        #[arg(long, conflicts_with = "x")]
        recall: bool,
        /// Width x height in pixels.
        #[arg(long, default_value = "1100x680", value_parser = parse_size)]
        size: (u32, u32),
    },
    /// Write one self-contained HTML page: the plan, the tables, the figures and the
    /// provenance (engine version, recipe hash, data fingerprints, seeds).
    Report {
        recipe: String,
        #[command(flatten)]
        runs: RunsArg,
        #[command(flatten)]
        sets: SetArgs,
        /// Default: RUNS_DIR/reports/RECIPE.html.
        #[arg(long, short)]
        output: Option<PathBuf>,
    },
    /// Every result as one long table for pandas or R: one row per recipe, stage and
    /// metric, the swept parameters as columns.
    Export {
        recipe: Option<String>,
        #[command(flatten)]
        runs: RunsArg,
        #[command(flatten)]
        sets: SetArgs,
        #[arg(long, value_enum, default_value = "csv")]
        format: ExportFormat,
        /// Write here instead of stdout.
        #[arg(long, short)]
        output: Option<PathBuf>,
    },
    /// The results database: `rkd-orch db rebuild` makes it again from the cache directory.
    Db {
        #[command(subcommand)]
        command: DbCmd,
    },
    /// Print the JSON Schema of recipes (for editors: VS Code's YAML extension and others).
    Schema,
    /// What is done, running, interrupted, failed or still to run for a recipe.
    Status {
        recipe: PathBuf,
        #[command(flatten)]
        runs: RunsArg,
        #[command(flatten)]
        sets: SetArgs,
    },
    /// Remove cache entries no recipe in the database refers to (and leftovers of killed
    /// stages).
    Gc {
        #[command(flatten)]
        runs: RunsArg,
        /// Only list what would be removed.
        #[arg(long)]
        dry_run: bool,
    },
    /// Evaluate or benchmark the losses on their own.
    Loss {
        #[command(subcommand)]
        command: LossCmd,
    },
    /// Run one stage from its spec file (used by the coordinator; useful to debug a stage).
    #[command(hide = true)]
    Stage {
        #[arg(long)]
        spec: PathBuf,
    },
}

#[derive(Subcommand)]
enum DbCmd {
    /// Rebuild `results.sqlite` from `cache/` and `recipes/` (the old one is kept as a
    /// backup beside it).
    Rebuild {
        #[command(flatten)]
        runs: RunsArg,
    },
}

#[derive(Subcommand)]
enum LossCmd {
    /// Compute losses and gradients (float64) for cases in the golden JSON format.
    Eval {
        /// `{"cases": [{"name", "loss", "params", "student", "teacher", ...}]}`
        #[arg(long)]
        input: PathBuf,
        /// Where to write `{"cases": [{"name", "value", "grad_student"}]}`.
        #[arg(long)]
        output: PathBuf,
    },
    /// Time one loss's forward+backward in float32 (median over repeats after a warm-up).
    Bench {
        #[arg(long, value_parser = clap::builder::PossibleValuesParser::new(rkd_orch::lossbench::LOSSES))]
        loss: String,
        #[arg(long, default_value_t = 128)]
        n: usize,
        #[arg(long, default_value_t = 512)]
        dim: usize,
        #[arg(long, default_value_t = 1)]
        threads: usize,
        #[arg(long, default_value_t = 7)]
        repeat: usize,
        /// Relation masking: keep this fraction of the relations (rkd_*, sp, cc).
        #[arg(long)]
        keep: Option<f64>,
        /// Print one JSON object instead of a line of text.
        #[arg(long)]
        json: bool,
    },
}

impl Cmd {
    /// The recipe options of a command that loads a recipe.
    fn sets(&self) -> Option<&SetArgs> {
        match self {
            Cmd::Run { sets, .. }
            | Cmd::Plan { sets, .. }
            | Cmd::Results { sets, .. }
            | Cmd::Plot { sets, .. }
            | Cmd::Report { sets, .. }
            | Cmd::Export { sets, .. }
            | Cmd::Status { sets, .. } => Some(sets),
            _ => None,
        }
    }
}

fn main() -> ExitCode {
    // Rust ignores SIGPIPE, which turns `rkd-orch results | head` into a panic on the closed
    // pipe; a command-line tool should just stop, as the shell expects.
    // SAFETY: called before any other thread exists; SIG_DFL is a valid disposition.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = Cli::parse();
    if let Some(sets) = cli.command.sets() {
        recipe::expand::set_max_stages(sets.max_stages);
    }
    match cli.command {
        Cmd::Run {
            recipe,
            runs,
            sets,
            jobs,
            threads_per_job,
            gpus,
            keep_going,
            retries,
            grace,
            quiet,
            json,
        } => cmd_run(
            &recipe,
            &sets,
            &runs.runs_dir,
            RunFlags {
                jobs,
                threads_per_job,
                gpus,
                keep_going,
                retries,
                grace,
                quiet,
                json,
            },
        ),
        Cmd::Plan {
            recipe,
            runs,
            sets,
            format,
        } => cmd_plan(&recipe, &sets, &runs.runs_dir, format),
        Cmd::Results {
            recipe,
            runs,
            sets,
            metric,
            by,
            filters,
            best,
            compare,
            format,
        } => cmd_results(
            recipe.as_deref(),
            &sets,
            &runs.runs_dir,
            ResultsArgs {
                metric,
                by,
                filters,
                best,
                compare,
                format,
            },
        ),
        Cmd::Query { sql, runs, format } => cmd_query(&sql, &runs.runs_dir, format),
        Cmd::Plot {
            recipe,
            output,
            runs,
            sets,
            metric,
            x,
            by,
            filters,
            curves,
            recall,
            size,
        } => {
            let request = if curves {
                Request::Curves { metric }
            } else if recall {
                Request::Recall { by }
            } else {
                Request::Sweep {
                    metric: metric.unwrap_or_else(|| "recall@1".into()),
                    x,
                    by,
                }
            };
            cmd_plot(
                recipe.as_deref(),
                &sets,
                &runs.runs_dir,
                &request,
                &filters,
                &output,
                size,
            )
        }
        Cmd::Status { recipe, runs, sets } => cmd_status(&recipe, &sets, &runs.runs_dir),
        Cmd::Gc { runs, dry_run } => cmd_gc(&runs.runs_dir, dry_run),
        Cmd::Db {
            command: DbCmd::Rebuild { runs },
        } => match rkd_orch::rebuild::rebuild(&RunsDir::new(&runs.runs_dir)) {
            Ok(r) => {
                for c in &r.corrupt {
                    eprintln!("warning: corrupt cache entry not ingested: {c}");
                }
                eprintln!(
                    "rebuilt {}: {} stages from the cache, {} bindings of {} recipe{}{}",
                    RunsDir::new(&runs.runs_dir).db().display(),
                    r.entries,
                    r.bindings,
                    r.recipes,
                    if r.recipes == 1 { "" } else { "s" },
                    r.backup
                        .map(|b| format!("; the old database is {}", b.display()))
                        .unwrap_or_default()
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(EXIT_FAILED)
            }
        },
        Cmd::Report {
            recipe,
            runs,
            sets,
            output,
        } => cmd_report(&recipe, &sets, &runs.runs_dir, output.as_deref()),
        Cmd::Export {
            recipe,
            runs,
            sets,
            format,
            output,
        } => cmd_export(
            recipe.as_deref(),
            &sets,
            &runs.runs_dir,
            format,
            output.as_deref(),
        ),
        Cmd::Schema => {
            println!(
                "{}",
                serde_json::to_string_pretty(&recipe::schema::json_schema()).expect("serialisable")
            );
            ExitCode::SUCCESS
        }
        Cmd::Loss { command } => cmd_loss(command),
        Cmd::Stage { spec } => match run_stage(&spec) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e}");
                // A NaN/inf loss fails the same way every time: tell the coordinator not to
                // retry it.
                if matches!(e, stage::StageError::NonFinite { .. }) {
                    ExitCode::from(run::STAGE_EXIT_NONFINITE as u8)
                } else {
                    ExitCode::from(EXIT_FAILED)
                }
            }
        },
    }
}

/// `rkd-orch stage --spec FILE`: one stage, in the process the coordinator started.
fn run_stage(spec: &Path) -> Result<(), stage::StageError> {
    // A debugging aid, used by the tests of the coordinator's kill path: a stage that
    // ignores Ctrl-C/SIGTERM, as a stuck one would.
    if std::env::var_os("RKD_ORCH_STAGE_IGNORE_SIGNALS").is_some() {
        // SAFETY: setting a signal disposition to SIG_IGN before other threads exist.
        unsafe {
            libc::signal(libc::SIGINT, libc::SIG_IGN);
            libc::signal(libc::SIGTERM, libc::SIG_IGN);
        }
    }
    stage::run_from_file(spec)
}

/// `--name`: a recipe name that can also name its files (`runs/recipes/NAME.json`, the
/// report), so nothing is ever written outside the runs directory.
fn check_name(name: &str) -> Result<(), ExitCode> {
    // The same rule as a recipe's `name:` (it names the same things: a file under runs/,
    // rows of the database).
    rkd_orch::recipe::keys::check_name(name, true).map_err(|why| {
        eprintln!("error: --name: {why} (e.g. --name quickstart-mine)");
        ExitCode::from(EXIT_USAGE)
    })
}

/// Parses, validates and plans a recipe (named by `--name` where given); on any problem
/// prints it and returns exit code 2.
fn load_plan(path: &Path, args: &SetArgs) -> Result<Plan, ExitCode> {
    if let Some(name) = &args.name {
        check_name(name)?;
    }
    let sets = args
        .set
        .iter()
        .enumerate()
        .map(|(i, raw)| recipe::SetArg::parse(raw, i + 1))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| {
            eprintln!("error: {e}");
            ExitCode::from(EXIT_USAGE)
        })?;
    let recipe = recipe::load_with(path, &sets).map_err(|e| {
        eprintln!("{e}");
        let n = e.diagnostics.len();
        eprintln!(
            "error: recipe refused ({n} problem{}); nothing was run",
            if n == 1 { "" } else { "s" }
        );
        ExitCode::from(EXIT_USAGE)
    })?;
    let mut plan = plan::build(recipe).map_err(|e| {
        match &e {
            PlanError::Recipe(r) => eprintln!("{r}\nerror: recipe refused; nothing was run"),
            PlanError::Data(d) => eprintln!("{}: error: {d}", path.display()),
        }
        ExitCode::from(EXIT_USAGE)
    })?;
    if let Some(name) = &args.name {
        plan.recipe = name.clone();
    }
    Ok(plan)
}

/// The flags of `rkd-orch run`.
struct RunFlags {
    jobs: Option<usize>,
    threads_per_job: Option<usize>,
    gpus: Option<String>,
    keep_going: bool,
    retries: usize,
    grace: f64,
    quiet: bool,
    json: bool,
}

/// Exit code of a run stopped by Ctrl-C/SIGTERM (128 + SIGINT, as shells report it).
const EXIT_INTERRUPTED: u8 = 130;

/// Under `--json`, a run that cannot start still ends with a `summary` event, so that a
/// script reading stdout always gets one; what is wrong is on stderr, as for every command.
fn json_not_started(error: &str) {
    let event = run::Summary::default().event(None, "failed", Some(error.to_string()));
    println!("{event}");
}

fn cmd_run(path: &Path, sets: &SetArgs, runs_dir: &Path, f: RunFlags) -> ExitCode {
    let plan = match load_plan(path, sets) {
        Ok(p) => p,
        Err(code) => {
            if f.json {
                json_not_started(&format!(
                    "{} is not a valid recipe (see stderr); nothing ran",
                    path.display()
                ));
            }
            return code;
        }
    };
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let slots = match &f.gpus {
        Some(arg) => {
            let ids = run::slots::parse_gpus(arg).and_then(|ids| {
                run::slots::gpu_support()?;
                Ok(ids)
            });
            match ids {
                Ok(ids) => {
                    let threads = f.threads_per_job.unwrap_or((cores / ids.len()).max(1));
                    run::slots::Slots::gpus(&ids, threads).slots().to_vec()
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    if f.json {
                        json_not_started(&format!("{e}; nothing ran"));
                    }
                    return ExitCode::from(EXIT_USAGE);
                }
            }
        }
        None => {
            let jobs = f.jobs.unwrap_or(1).max(1);
            let threads = f.threads_per_job.unwrap_or((cores / jobs).max(1)).max(1);
            vec![run::Slot::Cpu { threads }; jobs]
        }
    };
    let mode = run::Mode::choose(f.quiet, f.json);
    let opts = RunOptions {
        slots,
        keep_going: f.keep_going,
        retries: f.retries,
        mode,
        grace_s: f.grace.max(0.0),
        sets: sets.set.clone(),
    };
    let runs = RunsDir::new(runs_dir);
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    let summary = match run::run(&plan, &runs, &opts, &command) {
        Ok(s) => s,
        Err(e) => {
            // Under --json the error is in the summary event, on stdout.
            if mode != run::Mode::Json {
                eprintln!("error: {e}");
            }
            return ExitCode::from(EXIT_FAILED);
        }
    };
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
        print_results(&runs, Some(&plan.recipe), Format::Table);
    }
    if let Some(sig) = summary.signal {
        if mode == run::Mode::Json {
            return ExitCode::from(EXIT_INTERRUPTED);
        }
        eprintln!(
            "{}: stopped by {}; finished stages are kept — run the same command again to resume",
            plan.recipe,
            run::signals::name(sig)
        );
        return ExitCode::from(EXIT_INTERRUPTED);
    }
    if summary.ok() {
        ExitCode::SUCCESS
    } else {
        if mode != run::Mode::Json {
            for (name, err) in &summary.failed {
                eprintln!("error: stage `{name}` failed: {err}");
            }
        }
        ExitCode::from(EXIT_FAILED)
    }
}

fn cmd_status(path: &Path, sets: &SetArgs, runs_dir: &Path) -> ExitCode {
    let plan = match load_plan(path, sets) {
        Ok(p) => p,
        Err(code) => return code,
    };
    let runs = RunsDir::new(runs_dir);
    let cache = runs.cache();
    let store = Store::open_for_reading(&runs.db()).ok();
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    let w = plan
        .stages
        .iter()
        .map(|s| s.name.chars().count())
        .max()
        .unwrap_or(5)
        .max(5);
    let mut lines = Vec::new();
    for &i in &plan.order {
        let s = &plan.stages[i];
        let ckpt = cache.root().join(format!("{}.ckpt", s.key));
        let outcome = store
            .as_ref()
            .and_then(|st| st.stage_outcome(&s.key).ok().flatten());
        let (state, detail) = if let Lookup::Done(r) = cache.lookup(&s.key) {
            ("done", format!("in {:.1}s on {}", r.wall_s, r.device))
        } else if run::lock::KeyLock::is_held(&runs.locks(), &s.key) {
            ("running", String::new())
        } else {
            match outcome {
                Some((st, err)) if st == "failed" => {
                    let err = err.unwrap_or_default();
                    let first = err.lines().next().unwrap_or("").to_string();
                    if first.starts_with("interrupted") {
                        ("interrupted", first)
                    } else {
                        ("failed", first)
                    }
                }
                _ if ckpt.exists() => ("interrupted", "has epoch checkpoints".to_string()),
                _ => ("pending", String::new()),
            }
        };
        *counts.entry(state).or_default() += 1;
        lines.push(format!(
            "  {}  {:<11}  {}  {detail}",
            pad(&s.name, w, Align::Left),
            state,
            s.short_key()
        ));
    }
    let summary: Vec<String> = ["done", "running", "interrupted", "failed", "pending"]
        .iter()
        .filter_map(|k| counts.get(k).map(|n| format!("{n} {k}")))
        .collect();
    println!(
        "{} ({}): {} stages: {}",
        plan.recipe,
        plan.file,
        plan.stages.len(),
        summary.join(", ")
    );
    for l in lines {
        println!("{}", l.trim_end());
    }
    ExitCode::SUCCESS
}

fn cmd_gc(runs_dir: &Path, dry_run: bool) -> ExitCode {
    let runs = RunsDir::new(runs_dir);
    let result = if dry_run {
        rkd_orch::gc::find(&runs)
    } else {
        rkd_orch::gc::collect(&runs)
    };
    match result {
        Ok(found) => {
            let bytes: u64 = found.iter().map(|g| g.bytes).sum();
            for g in &found {
                println!(
                    "{} {} ({:.1} MiB; {})",
                    if dry_run { "would remove" } else { "removed" },
                    g.path.display(),
                    g.bytes as f64 / (1 << 20) as f64,
                    g.why
                );
            }
            eprintln!(
                "{} {} item{}, {:.1} MiB",
                if dry_run { "would free" } else { "freed" },
                found.len(),
                if found.len() == 1 { "" } else { "s" },
                bytes as f64 / (1 << 20) as f64
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(EXIT_FAILED)
        }
    }
}

fn cmd_plan(path: &Path, sets: &SetArgs, runs_dir: &Path, format: PlanFormat) -> ExitCode {
    let plan = match load_plan(path, sets) {
        Ok(p) => p,
        Err(code) => return code,
    };
    let runs = RunsDir::new(runs_dir);
    let cache = runs.cache();
    // The database is optional here: it only explains *why* a stage will run (and warns
    // before a run takes over another file's recipe name).
    let store = Store::open_for_reading(&runs.db()).ok();
    if let Some(clash) = store
        .as_ref()
        .and_then(|st| run::name_clash(st, &plan).ok().flatten())
    {
        eprintln!("warning: {}", clash.message());
    }
    let statuses: Vec<(bool, String)> = plan
        .stages
        .iter()
        .map(|s| match cache.lookup(&s.key) {
            Lookup::Done(_) => (true, "cached".to_string()),
            Lookup::Corrupt(why) => (false, format!("cache entry corrupt ({why})")),
            Lookup::Missing => {
                let before = store
                    .as_ref()
                    .and_then(|st| st.bound_key(&plan.recipe, &s.name).ok().flatten());
                let old_manifest = before.as_ref().and_then(|k| {
                    let bytes = std::fs::read(cache.entry(k).join("manifest.json")).ok()?;
                    serde_json::from_slice(&bytes).ok()
                });
                let reason = match before.as_deref() {
                    Some(k) if k == s.key => "new (never finished)".to_string(),
                    b => plan::why_run(&s.manifest, b, old_manifest.as_ref()),
                };
                (false, reason)
            }
        })
        .collect();
    let out = match format {
        PlanFormat::Text => plan_text(&plan, &statuses),
        PlanFormat::Dot => plan_dot(&plan, &statuses),
        PlanFormat::Json => plan_json(&plan, &statuses),
    };
    print!("{out}");
    ExitCode::SUCCESS
}

fn plan_text(plan: &Plan, statuses: &[(bool, String)]) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let cached = statuses.iter().filter(|s| s.0).count();
    let _ = writeln!(
        out,
        "{} ({}): {} stages, {} cached, {} to run",
        plan.recipe,
        plan.file,
        plan.stages.len(),
        cached,
        plan.stages.len() - cached
    );
    let w = plan
        .stages
        .iter()
        .map(|s| s.name.chars().count())
        .max()
        .unwrap_or(5)
        .max(5);
    let _ = writeln!(
        out,
        "  {}  {:<12}  {:<12}  {:<28}  inputs",
        pad("stage", w, Align::Left),
        "kind",
        "key",
        "status"
    );
    for &i in &plan.order {
        let s = &plan.stages[i];
        let (done, reason) = &statuses[i];
        let status = if *done {
            reason.clone()
        } else {
            format!("will run: {reason}")
        };
        let inputs: Vec<String> = s
            .inputs
            .iter()
            .map(|(role, src)| format!("{role}={}", plan.stages[*src].name))
            .collect();
        let _ = writeln!(
            out,
            "  {}  {:<12}  {:<12}  {:<28}  {}",
            pad(&s.name, w, Align::Left),
            s.kind,
            s.short_key(),
            status,
            inputs.join(" ")
        );
    }
    out
}

fn plan_dot(plan: &Plan, statuses: &[(bool, String)]) -> String {
    use std::fmt::Write;
    let q = |s: &str| serde_json::to_string(s).expect("a string");
    let mut out = format!("digraph {} {{\n  rankdir=LR;\n  node [shape=box, style=\"rounded,filled\", fontname=\"Helvetica\"];\n", q(&plan.recipe));
    for &i in &plan.order {
        let s = &plan.stages[i];
        let (done, reason) = &statuses[i];
        let (color, state) = if *done {
            ("#d9f2d9", "cached".to_string())
        } else {
            ("#ffe0b3", format!("will run: {reason}"))
        };
        let label = format!("{}\n{} {}\n{}", s.name, s.kind, s.short_key(), state);
        let _ = writeln!(out, "  n{i} [label={}, fillcolor=\"{color}\"];", q(&label));
    }
    for &i in &plan.order {
        for (role, src) in &plan.stages[i].inputs {
            let _ = writeln!(out, "  n{src} -> n{i} [label={}];", q(role));
        }
    }
    out.push_str("}\n");
    out
}

fn plan_json(plan: &Plan, statuses: &[(bool, String)]) -> String {
    // Fields in alphabetical order: the order the document had as a `serde_json` map.
    #[derive(serde::Serialize)]
    struct Doc<'a> {
        file: &'a str,
        recipe: &'a str,
        recipe_sha256: &'a str,
        stages: Stages<'a>,
    }
    /// The stages, each made a JSON value only while it is written: values for all of them
    /// at once would take more memory than the plan itself (a few KB a stage).
    struct Stages<'a>(&'a Plan, &'a [(bool, String)]);
    impl serde::Serialize for Stages<'_> {
        fn serialize<S: serde::Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
            let Stages(plan, statuses) = *self;
            ser.collect_seq(
                plan.order
                    .iter()
                    .map(|&i| plan_json_stage(plan, i, &statuses[i])),
            )
        }
    }
    let doc = Doc {
        file: &plan.file,
        recipe: &plan.recipe,
        recipe_sha256: &plan.recipe_sha256,
        stages: Stages(plan, statuses),
    };
    format!(
        "{}\n",
        serde_json::to_string_pretty(&doc).expect("serialisable")
    )
}

/// One stage of `plan --format json`.
fn plan_json_stage(plan: &Plan, i: usize, (done, reason): &(bool, String)) -> serde_json::Value {
    use serde_json::{json, Value};
    // Swept values as JSON numbers and booleans where they are ones, for scripts.
    let typed = |v: &str| -> Value {
        if let Ok(i) = v.parse::<i64>() {
            json!(i)
        } else if let Ok(f) = v.parse::<f64>() {
            json!(f)
        } else if let Ok(b) = v.parse::<bool>() {
            json!(b)
        } else {
            json!(v)
        }
    };
    let s = &plan.stages[i];
    let params: serde_json::Map<String, Value> = s
        .params
        .iter()
        .map(|p| (p.label.clone(), typed(&p.value)))
        .collect();
    let inputs: Vec<Value> = s
        .inputs
        .iter()
        .map(|(role, src)| json!({"role": role, "stage": plan.stages[*src].name, "key": plan.stages[*src].key}))
        .collect();
    json!({
        "name": s.name,
        "stage": s.base,
        "kind": s.kind,
        "key": s.key,
        "inputs": inputs,
        "cached": done,
        "reason": if *done { Value::Null } else { json!(reason) },
        "params": params,
    })
}

struct ResultsArgs {
    metric: Option<String>,
    by: Vec<String>,
    filters: FilterArgs,
    best: Option<Direction>,
    compare: Vec<String>,
    format: Format,
}

/// A recipe argument: a path names a recipe file (its `name:`, with `--set`s applied to
/// resolve it, or `--name`), anything else a recipe name.
fn recipe_name(arg: &str, sets: &SetArgs) -> Result<String, ExitCode> {
    if Path::new(arg).is_file() {
        load_plan(Path::new(arg), sets).map(|p| p.recipe)
    } else if let Some(name) = &sets.name {
        check_name(name).map(|()| name.clone())
    } else {
        Ok(arg.to_string())
    }
}

/// An optional recipe argument; `--name` alone names the recipe too.
fn optional_recipe_name(arg: Option<&str>, sets: &SetArgs) -> Result<Option<String>, ExitCode> {
    match (arg, &sets.name) {
        (Some(a), _) => recipe_name(a, sets).map(Some),
        (None, Some(name)) => check_name(name).map(|()| Some(name.clone())),
        (None, None) => Ok(None),
    }
}

/// Opens the database for a read command: read-only, never migrated (an older schema is
/// upgraded in memory), refused when it is not an rkd-orch database.
fn open_store(runs_dir: &Path) -> Result<Store, ExitCode> {
    Store::open_for_reading(&RunsDir::new(runs_dir).db()).map_err(|e| {
        eprintln!("error: {e}");
        ExitCode::from(EXIT_FAILED)
    })
}

/// A result command's error: the database failing is a failure (1); anything the user
/// can fix by typing something else is bad usage (2).
fn results_error(e: &ResultsError) -> ExitCode {
    eprintln!("error: {e}");
    match e {
        ResultsError::Store(_) => ExitCode::from(EXIT_FAILED),
        _ => ExitCode::from(EXIT_USAGE),
    }
}

fn cmd_results(
    recipe_arg: Option<&str>,
    sets: &SetArgs,
    runs_dir: &Path,
    args: ResultsArgs,
) -> ExitCode {
    let name = match optional_recipe_name(recipe_arg, sets) {
        Ok(n) => n,
        Err(code) => return code,
    };
    let plain = args.metric.is_none()
        && args.by.is_empty()
        && args.compare.is_empty()
        && args.filters.filters.is_empty()
        && args.filters.stage.is_none();
    if plain {
        let runs = RunsDir::new(runs_dir);
        return if print_results(&runs, name.as_deref(), args.format) {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(EXIT_FAILED)
        };
    }
    let store = match open_store(runs_dir) {
        Ok(s) => s,
        Err(code) => return code,
    };
    let out = if let [a, b] = args.compare.as_slice() {
        match &name {
            Some(recipe) => results::compare_stages_from(&store, recipe, a, b),
            None => results::compare_recipes_from(&store, a, b),
        }
        .map(|c| c.render(args.format))
    } else {
        let filters = match results::select::parse_filters(&args.filters.filters) {
            Ok(f) => f,
            Err(e) => return results_error(&e),
        };
        let recipe = match name.map_or_else(|| results::only_recipe(&store), Ok) {
            Ok(r) => r,
            Err(e) => return results_error(&e),
        };
        // --by alone pivots recall@1, the metric every evaluation has.
        let metric = args.metric.unwrap_or_else(|| "recall@1".into());
        let spec = PivotSpec {
            metric,
            by: args.by,
            filters,
            stage: args.filters.stage,
            direction: args.best,
        };
        results::pivot_from(&store, &recipe, &spec).map(|p| p.render(args.format))
    };
    match out {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => results_error(&e),
    }
}

/// Prints the results table(s) on stdout; false if there was nothing to print.
fn print_results(runs: &RunsDir, recipe: Option<&str>, format: Format) -> bool {
    let store = match Store::open_for_reading(&runs.db()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return false;
        }
    };
    match results::table_from(&store, recipe, format) {
        Ok(None) => {
            match recipe {
                Some(r) => eprintln!(
                    "error: no results for recipe `{r}` in {}",
                    runs.db().display()
                ),
                None => eprintln!("error: no results in {}", runs.db().display()),
            }
            false
        }
        Ok(Some(text)) => {
            print!("{text}");
            true
        }
        Err(e) => {
            eprintln!("error: {e}");
            false
        }
    }
}

fn cmd_query(sql: &str, runs_dir: &Path, format: Format) -> ExitCode {
    let store = match open_store(runs_dir) {
        Ok(s) => s,
        Err(code) => return code,
    };
    match store.query(sql) {
        Ok(q) => {
            print!("{}", results::format::query_table(&q).render(format));
            ExitCode::SUCCESS
        }
        Err(QueryError::Store(e)) => {
            eprintln!("error: {e}");
            ExitCode::from(EXIT_FAILED)
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(EXIT_USAGE)
        }
    }
}

fn cmd_plot(
    recipe_arg: Option<&str>,
    sets: &SetArgs,
    runs_dir: &Path,
    request: &Request,
    filter_args: &FilterArgs,
    output: &Path,
    size: (u32, u32),
) -> ExitCode {
    let name = match optional_recipe_name(recipe_arg, sets) {
        Ok(n) => n,
        Err(code) => return code,
    };
    let store = match open_store(runs_dir) {
        Ok(s) => s,
        Err(code) => return code,
    };
    let filters = match results::select::parse_filters(&filter_args.filters) {
        Ok(f) => f,
        Err(e) => return results_error(&e),
    };
    let recipe = match name.map_or_else(|| results::only_recipe(&store), Ok) {
        Ok(r) => r,
        Err(e) => return results_error(&e),
    };
    let f = Filters {
        stage: filter_args.stage.clone(),
        filters,
    };
    let figure = plot::figure_from(&store, &recipe, request, &f)
        .and_then(|fig| plot::save(&fig, output, size).map(|()| fig));
    match figure {
        Ok(fig) => {
            // The figure's sources, for the notebook or the paper's appendix.
            println!("{}: {}", output.display(), fig.title);
            for (name, key) in &fig.sources {
                println!("  {name}  {key}");
            }
            ExitCode::SUCCESS
        }
        Err(plot::PlotError::Results(e)) => results_error(&e),
        Err(e @ (plot::PlotError::Draw(_) | plot::PlotError::Io { .. })) => {
            eprintln!("error: {e}");
            ExitCode::from(EXIT_FAILED)
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(EXIT_USAGE)
        }
    }
}

fn cmd_report(
    recipe_arg: &str,
    sets: &SetArgs,
    runs_dir: &Path,
    output: Option<&Path>,
) -> ExitCode {
    let recipe = match recipe_name(recipe_arg, sets) {
        Ok(n) => n,
        Err(code) => return code,
    };
    let store = match open_store(runs_dir) {
        Ok(s) => s,
        Err(code) => return code,
    };
    let path = output.map(Path::to_path_buf).unwrap_or_else(|| {
        runs_dir
            .join("reports")
            .join(format!("{}.html", report::file_stem(&recipe)))
    });
    match report::write(&store, &recipe, &RunsDir::new(runs_dir).db(), &path) {
        Ok(summary) => {
            eprintln!("{summary}");
            println!("{}", path.display());
            ExitCode::SUCCESS
        }
        Err(report::ReportError::Results(e)) => results_error(&e),
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(EXIT_FAILED)
        }
    }
}

fn cmd_export(
    recipe_arg: Option<&str>,
    sets: &SetArgs,
    runs_dir: &Path,
    format: ExportFormat,
    output: Option<&Path>,
) -> ExitCode {
    let name = match optional_recipe_name(recipe_arg, sets) {
        Ok(n) => n,
        Err(code) => return code,
    };
    let store = match open_store(runs_dir) {
        Ok(s) => s,
        Err(code) => return code,
    };
    let table = match results::export_from(&store, name.as_deref()) {
        Ok(t) => t,
        Err(e) => return results_error(&e),
    };
    let text = match format {
        ExportFormat::Csv => table.csv(),
        ExportFormat::Json => format!("{}\n", table.json_string()),
    };
    match output {
        None => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Some(path) => match std::fs::write(path, text) {
            Ok(()) => {
                eprintln!("{} rows written to {}", table.rows.len(), path.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: cannot write {}: {e}", path.display());
                ExitCode::from(EXIT_FAILED)
            }
        },
    }
}

fn cmd_loss(cmd: LossCmd) -> ExitCode {
    match cmd {
        LossCmd::Eval { input, output } => {
            let cases = std::fs::read(&input)
                .map_err(|e| format!("cannot read {}: {e}", input.display()))
                .and_then(|b| {
                    serde_json::from_slice::<serde_json::Value>(&b)
                        .map_err(|e| format!("{} is not valid JSON: {e}", input.display()))
                });
            let result = cases.and_then(|c| {
                rkd_orch::ml::loss::eval_cases(&c).map_err(|e| format!("{}: {e}", input.display()))
            });
            match result {
                Ok(out) => {
                    let n = out["cases"].as_array().map_or(0, Vec::len);
                    let text = serde_json::to_vec_pretty(&out).expect("serialisable");
                    if let Err(e) = std::fs::write(&output, text) {
                        eprintln!("error: cannot write {}: {e}", output.display());
                        return ExitCode::from(EXIT_FAILED);
                    }
                    eprintln!("{n} cases evaluated; written to {}", output.display());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::from(EXIT_USAGE)
                }
            }
        }
        LossCmd::Bench {
            loss,
            n,
            dim,
            threads,
            repeat,
            keep,
            json,
        } => match rkd_orch::lossbench::bench(&loss, n, dim, threads, repeat, keep) {
            Ok(row) if json => {
                println!("{}", serde_json::to_string(&row).expect("serialisable"));
                ExitCode::SUCCESS
            }
            Ok(r) => {
                println!(
                    "{:13} N={:5} D={} threads={} keep={} fwd+bwd median {:9.2} ms (min {:.2})  peak RSS {:.0} MiB",
                    r.loss, r.n, r.dim, r.threads, r.keep, r.median_ms, r.min_ms, r.peak_rss_mib
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(EXIT_USAGE)
            }
        },
    }
}
