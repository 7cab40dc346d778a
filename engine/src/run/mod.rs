//! The coordinator: runs a plan's stages, each in its own child process (`rkd-orch stage
//! --spec FILE`), as many at a time as there are slots, dependants as soon as their inputs
//! are done. It alone writes the results database.
//!
//! [`scheduler`] decides what starts when (pure: no I/O, no processes, no clock);
//! [`executor`] is how a stage is run, [`local`] its child-process implementation;
//! [`coordinator`] drives the two, with the cache, the database and the progress UI.

use std::path::{Path, PathBuf};

pub mod clash;
pub mod coordinator;
pub mod executor;
pub mod local;
pub mod lock;
pub mod progress;
pub mod scheduler;
pub mod signals;
pub mod slots;
pub mod snapshot;
pub mod status;
pub mod summary;

use crate::store::StoreError;
pub use clash::{name_clash, recipe_path, NameClash};
pub use coordinator::run_with;
pub use executor::{Executor, STAGE_EXIT_NONFINITE};
pub use progress::Mode;
pub use slots::Slot;
pub use snapshot::{write_snapshot, Snapshot};
pub use summary::Summary;

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

/// Runs `plan` to the end, each stage a child process of this one ([`local::Local`]).
pub fn run(
    plan: &crate::plan::Plan,
    runs: &RunsDir,
    opts: &RunOptions,
    command: &str,
) -> Result<Summary, RunError> {
    run_with(plan, runs, opts, command, &mut local::Local::new(runs))
}
