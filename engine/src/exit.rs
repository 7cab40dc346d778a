//! Exit codes, a stable contract (README, "Exit codes"), and the one mapping from an error of
//! a command to its code and its message on stderr.
//!
//! Every command returns `Result<(), CliError>`; `main` prints the error with
//! [`CliError::report`] and exits with [`CliError::exit_code`], so the rule "what the user
//! can fix by typing something else is bad usage (2); anything else failing is a failure
//! (1)" is written once, here.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use crate::gc::GcError;
use crate::lossbench::BenchError;
use crate::ml::loss::EvalError;
use crate::plan::PlanError;
use crate::plot::PlotError;
use crate::rebuild::RebuildError;
use crate::recipe::RecipeError;
use crate::report::ReportError;
use crate::results::ResultsError;
use crate::run::RunError;
use crate::stage::StageError;
use crate::store::{QueryError, StoreError};

/// Success.
pub const OK: u8 = 0;
/// A stage, the run or the command failed.
pub const FAILED: u8 = 1;
/// A bad recipe or bad usage, reported before anything is run or written.
pub const USAGE: u8 = 2;
/// A stage process whose loss became NaN/inf: deterministic, so the coordinator does not
/// retry it (the coordinator's own constant; this is the same code as a `u8`).
pub const NONFINITE: u8 = crate::run::STAGE_EXIT_NONFINITE as u8;
/// A run stopped by Ctrl-C/SIGTERM (128 + SIGINT, as shells report it).
pub const INTERRUPTED: u8 = 130;

/// Why a command did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// A `--set PATH=VALUE` that does not parse.
    #[error("{0}")]
    Set(String),
    /// A `--name` that cannot name a recipe's files.
    #[error("--name: {0} (e.g. --name quickstart-mine)")]
    Name(String),
    /// A recipe refused by the parser: all its problems at `file:line:column`.
    #[error("{}", recipe_refused(.0))]
    Recipe(RecipeError),
    /// A recipe that parsed but could not be planned.
    #[error("{}", plan_refused(.path, .error))]
    Plan { path: PathBuf, error: PlanError },
    /// `--gpus` that cannot be honoured.
    #[error("{0}")]
    Gpus(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Results(#[from] ResultsError),
    #[error(transparent)]
    Query(#[from] QueryError),
    #[error(transparent)]
    Plot(#[from] PlotError),
    #[error(transparent)]
    Report(#[from] ReportError),
    #[error(transparent)]
    Run(#[from] RunError),
    #[error(transparent)]
    Gc(#[from] GcError),
    #[error(transparent)]
    Rebuild(#[from] RebuildError),
    #[error(transparent)]
    Stage(#[from] StageError),
    #[error(transparent)]
    Bench(#[from] BenchError),
    /// The database has no results to show.
    #[error("{}", no_results(.recipe, .db))]
    NoResults { recipe: Option<String>, db: PathBuf },
    /// An input file named on the command line cannot be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// An input file named on the command line is not JSON.
    #[error("{} is not valid JSON: {source}", path.display())]
    NotJson {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    /// The loss cases of `loss eval` are not what it takes.
    #[error("{}: {source}", path.display())]
    LossCases {
        path: PathBuf,
        #[source]
        source: EvalError,
    },
    /// An output file cannot be written.
    #[error("cannot write {}: {source}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Stages of a run failed: (stage, error) of each.
    #[error("{}", stages_failed(.0))]
    StagesFailed(Vec<(String, String)>),
    /// A run stopped by a signal (`signal`: its name); its finished stages are kept.
    #[error(
        "{recipe}: stopped by {signal}; finished stages are kept — run the same command again to resume"
    )]
    Interrupted {
        recipe: String,
        signal: &'static str,
    },
    /// Already told elsewhere (under `run --json`, in the summary event on stdout): nothing
    /// more is printed, the exit code is the error's.
    #[error(transparent)]
    Reported(Box<CliError>),
}

impl CliError {
    /// The process exit code of this error (see the constants above).
    pub fn exit_code(&self) -> ExitCode {
        ExitCode::from(self.code())
    }

    fn code(&self) -> u8 {
        match self {
            CliError::Set(_)
            | CliError::Name(_)
            | CliError::Recipe(_)
            | CliError::Plan { .. }
            | CliError::Gpus(_)
            | CliError::Bench(_)
            | CliError::Read { .. }
            | CliError::NotJson { .. }
            | CliError::LossCases { .. } => USAGE,
            CliError::Results(e) => results_code(e),
            CliError::Query(QueryError::Store(_)) => FAILED,
            CliError::Query(_) => USAGE,
            CliError::Plot(PlotError::Results(e)) => results_code(e),
            CliError::Plot(PlotError::Draw(_) | PlotError::Io { .. }) => FAILED,
            CliError::Plot(PlotError::Usage(_)) => USAGE,
            CliError::Report(ReportError::Results(e)) => results_code(e),
            CliError::Report(_) => FAILED,
            CliError::Stage(StageError::NonFinite { .. }) => NONFINITE,
            CliError::Store(_)
            | CliError::Run(_)
            | CliError::Gc(_)
            | CliError::Rebuild(_)
            | CliError::Stage(_)
            | CliError::NoResults { .. }
            | CliError::Write { .. }
            | CliError::StagesFailed(_) => FAILED,
            CliError::Interrupted { .. } => INTERRUPTED,
            CliError::Reported(e) => e.code(),
        }
    }

    /// Prints the error on stderr, as `error: MESSAGE` unless it has a layout of its own.
    pub fn report(&self) {
        match self {
            CliError::Reported(_) => {}
            CliError::StagesFailed(failed) if failed.is_empty() => {}
            CliError::Recipe(_)
            | CliError::Plan { .. }
            | CliError::StagesFailed(_)
            | CliError::Interrupted { .. } => eprintln!("{self}"),
            _ => eprintln!("error: {self}"),
        }
    }
}

/// A result command's error: the database failing is a failure; anything the user can fix by
/// typing something else is bad usage.
fn results_code(e: &ResultsError) -> u8 {
    match e {
        ResultsError::Store(_) => FAILED,
        _ => USAGE,
    }
}

fn recipe_refused(e: &RecipeError) -> String {
    let n = e.diagnostics.len();
    format!(
        "{e}\nerror: recipe refused ({n} problem{}); nothing was run",
        if n == 1 { "" } else { "s" }
    )
}

fn plan_refused(path: &Path, error: &PlanError) -> String {
    match error {
        PlanError::Recipe(r) => format!("{r}\nerror: recipe refused; nothing was run"),
        PlanError::Data(d) => format!("{}: error: {d}", path.display()),
    }
}

fn no_results(recipe: &Option<String>, db: &Path) -> String {
    match recipe {
        Some(r) => format!("no results for recipe `{r}` in {}", db.display()),
        None => format!("no results in {}", db.display()),
    }
}

/// One line for each failed stage.
fn stages_failed(failed: &[(String, String)]) -> String {
    let lines: Vec<String> = failed
        .iter()
        .map(|(name, err)| format!("error: stage `{name}` failed: {err}"))
        .collect();
    lines.join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_follow_the_contract() {
        let code = |e: CliError| e.code();
        assert_eq!(code(CliError::Set("x".into())), USAGE);
        assert_eq!(
            code(CliError::Results(ResultsError::BadFilter("x".into()))),
            USAGE
        );
        assert_eq!(
            code(CliError::Results(ResultsError::Store(StoreError::Missing(
                "db".into()
            )))),
            FAILED
        );
        assert_eq!(code(CliError::Query(QueryError::Write)), USAGE);
        assert_eq!(
            code(CliError::Report(ReportError::Plot(PlotError::Usage(
                "x".into()
            )))),
            FAILED
        );
        assert_eq!(code(CliError::StagesFailed(vec![])), FAILED);
        let stop = || CliError::Interrupted {
            recipe: "r".into(),
            signal: "SIGINT",
        };
        assert_eq!(code(stop()), INTERRUPTED);
        assert_eq!(code(CliError::Reported(Box::new(stop()))), INTERRUPTED);
        assert_eq!(OK, 0);
        assert_eq!(NONFINITE, 3);
    }
}
