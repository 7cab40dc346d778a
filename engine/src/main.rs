//! The `rkd-orch` command line: the commands and their arguments (clap), each dispatched to
//! its file under `cli/`. Exit codes (a stable contract, see README) and the mapping of
//! every error to one are `rkd_orch::exit`'s.

mod cli;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use rkd_orch::exit::CliError;
use rkd_orch::recipe;

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

#[derive(Subcommand)]
enum Cmd {
    /// Run every stage of a recipe that is not cached yet (also the resume command).
    Run(cli::run::RunArgs),
    /// Show the expanded stages of a recipe, their keys, and whether and why they will run.
    Plan(cli::plan::PlanArgs),
    /// Show the results of a recipe (a file or a recipe name), or of every recipe: the
    /// stages × metrics table, a pivot of one metric over swept parameters, or a comparison.
    Results(cli::results::ResultsArgs),
    /// Run one read-only SQL statement on the results database (see docs/results.md).
    Query(cli::results::QueryArgs),
    /// Draw a figure (PNG or SVG): a metric against a swept parameter, one line per other
    /// parameter, ± std across seeds; or training curves (--curves); or recall@K (--recall).
    Plot(cli::results::PlotArgs),
    /// Write one self-contained HTML page: the plan, the tables, the figures and the
    /// provenance (engine version, recipe hash, data fingerprints, seeds).
    Report(cli::results::ReportArgs),
    /// Every result as one long table for pandas or R: one row per recipe, stage and
    /// metric, the swept parameters as columns.
    Export(cli::results::ExportArgs),
    /// The results database: `rkd-orch db rebuild` makes it again from the cache directory.
    Db {
        #[command(subcommand)]
        command: cli::gc::DbCmd,
    },
    /// Print the JSON Schema of recipes (for editors: VS Code's YAML extension and others).
    Schema,
    /// What is done, running, interrupted, failed or still to run for a recipe.
    Status(cli::status::StatusArgs),
    /// Remove cache entries no recipe in the database refers to (and leftovers of killed
    /// stages).
    Gc(cli::gc::GcArgs),
    /// Evaluate or benchmark the losses on their own.
    Loss {
        #[command(subcommand)]
        command: cli::loss::LossCmd,
    },
    /// Run one stage from its spec file (used by the coordinator; useful to debug a stage).
    #[command(hide = true)]
    Stage(cli::stage::StageArgs),
}

impl Cmd {
    /// The recipe options of a command that loads a recipe.
    fn sets(&self) -> Option<&cli::SetArgs> {
        match self {
            Cmd::Run(a) => Some(&a.sets),
            Cmd::Plan(a) => Some(&a.sets),
            Cmd::Results(a) => Some(&a.sets),
            Cmd::Plot(a) => Some(&a.sets),
            Cmd::Report(a) => Some(&a.sets),
            Cmd::Export(a) => Some(&a.sets),
            Cmd::Status(a) => Some(&a.sets),
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
    let result: Result<(), CliError> = match cli.command {
        Cmd::Run(a) => cli::run::run(a),
        Cmd::Plan(a) => cli::plan::run(a),
        Cmd::Results(a) => cli::results::results(a),
        Cmd::Query(a) => cli::results::query(a),
        Cmd::Plot(a) => cli::results::plot(a),
        Cmd::Report(a) => cli::results::report(a),
        Cmd::Export(a) => cli::results::export(a),
        Cmd::Db { command } => cli::gc::db(command),
        Cmd::Schema => {
            println!(
                "{}",
                serde_json::to_string_pretty(&recipe::schema::json_schema()).expect("serialisable")
            );
            Ok(())
        }
        Cmd::Status(a) => cli::status::run(a),
        Cmd::Gc(a) => cli::gc::gc(a),
        Cmd::Loss { command } => cli::loss::run(command),
        Cmd::Stage(a) => cli::stage::run(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            e.report();
            e.exit_code()
        }
    }
}
