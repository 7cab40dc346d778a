//! Where stage processes run. The coordinator hands an [`Executor`] a stage's spec and a
//! slot, and hears back the stage's progress events and its end; it never deals with
//! processes itself. [`super::local::Local`] runs each stage as a child process on this
//! machine; a batch system (Slurm) is another implementation of the same trait, scheduled
//! by the same [`super::scheduler::Scheduler`].

use std::path::PathBuf;
use std::time::Duration;

use super::slots::Slot;
use super::RunError;
use crate::spec::{Event, StageSpec};

/// Exit status of a stage process whose loss became NaN/inf: deterministic, so not retried.
pub const STAGE_EXIT_NONFINITE: i32 = 3;

/// How a stage process ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ended {
    /// Exit status 0: it says it committed its result (the coordinator checks the cache).
    Success,
    /// Anything else. `why` is for people (`stage process exited with status 1`,
    /// `stage process was killed by signal 9`); `nonfinite` is the NaN/inf loss exit.
    Failure { why: String, nonfinite: bool },
}

/// What an executor reports about the stage it was given as `stage` (the coordinator's
/// index of it).
#[derive(Clone, Debug, PartialEq)]
pub enum Report {
    Event(usize, Event),
    /// The last report of a stage.
    Exit(usize, Ended),
}

/// Runs stages.
pub trait Executor {
    /// Starts `spec` in `slot` as `stage`; its reports come from [`Executor::wait`].
    fn start(&mut self, stage: usize, spec: &StageSpec, slot: &Slot) -> Result<(), RunError>;

    /// The next report of any started stage, waiting up to `timeout` for one.
    fn wait(&mut self, timeout: Duration) -> Option<Report>;

    /// Sends `signal` (SIGINT/SIGTERM to ask it to stop, SIGKILL to end it) to a started
    /// stage, everything it started included; nothing if it has ended.
    fn signal(&mut self, stage: usize, signal: i32);

    /// The log of the stage with this content key.
    fn log(&self, key: &str) -> PathBuf;

    /// The last `n` lines of that log, for a failure's message.
    fn log_tail(&self, key: &str, n: usize) -> Vec<String>;
}
