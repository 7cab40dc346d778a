//! What is known of each stage of a plan before it runs, from the runs directory alone: the
//! cache (the truth), the per-key locks, the database and the epoch checkpoints. One
//! computation behind `rkd-orch status` (what is done, running, interrupted, failed or still
//! to run) and `rkd-orch plan` (whether and why each stage will run).

use crate::cache::{Lookup, MANIFEST_FILE};
use crate::plan::render::PlanStatus;
use crate::plan::{self, Plan, PlannedStage};
use crate::store::Store;

use super::lock::KeyLock;
use super::RunsDir;

/// One stage's status.
#[derive(Debug, Clone, PartialEq)]
pub enum StageStatus {
    /// Done: sealed in the cache.
    Cached { wall_s: f64, device: String },
    /// Not in the cache (or its entry cannot be trusted): the next run runs it, for `why`.
    WillRun { why: String, last: LastRun },
}

/// What the runs directory says of a stage that is not cached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LastRun {
    /// Another coordinator holds its lock: it is running it now.
    Running,
    /// Stopped by a signal (`detail`: the first line of what was recorded), or it has epoch
    /// checkpoints to resume from.
    Interrupted { detail: String },
    /// Its last run failed (`error`: the first line of the error).
    Failed { error: String },
    /// Nothing is known of it: it never started.
    Pending,
}

/// The states of `rkd-orch status`, in the order its summary line counts them.
pub const STATES: [&str; 5] = ["done", "running", "interrupted", "failed", "pending"];

impl StageStatus {
    /// The state `rkd-orch status` shows (one of [`STATES`]).
    pub fn state(&self) -> &'static str {
        match self {
            StageStatus::Cached { .. } => "done",
            StageStatus::WillRun { last, .. } => match last {
                LastRun::Running => "running",
                LastRun::Interrupted { .. } => "interrupted",
                LastRun::Failed { .. } => "failed",
                LastRun::Pending => "pending",
            },
        }
    }

    /// What `rkd-orch status` says after the state.
    pub fn detail(&self) -> String {
        match self {
            StageStatus::Cached { wall_s, device } => format!("in {wall_s:.1}s on {device}"),
            StageStatus::WillRun { last, .. } => match last {
                LastRun::Interrupted { detail } => detail.clone(),
                LastRun::Failed { error } => error.clone(),
                LastRun::Running | LastRun::Pending => String::new(),
            },
        }
    }

    /// The status as `rkd-orch plan` shows it.
    pub fn for_plan(&self) -> PlanStatus<'_> {
        match self {
            StageStatus::Cached { .. } => PlanStatus::Cached,
            StageStatus::WillRun { why, .. } => PlanStatus::WillRun { why },
        }
    }
}

/// The status of every stage of `plan` (in the plan's stage order) in the runs directory
/// `runs`. The database (`store`, read-only) is optional: without it, nothing is known of
/// failures, and a stage that is not cached is "new".
pub fn statuses(plan: &Plan, runs: &RunsDir, store: Option<&Store>) -> Vec<StageStatus> {
    plan.stages
        .iter()
        .map(|s| stage_status(plan, s, runs, store))
        .collect()
}

fn stage_status(
    plan: &Plan,
    s: &PlannedStage,
    runs: &RunsDir,
    store: Option<&Store>,
) -> StageStatus {
    let cache = runs.cache();
    let why = match cache.lookup(&s.key) {
        Lookup::Done(r) => {
            return StageStatus::Cached {
                wall_s: r.wall_s,
                device: r.device,
            }
        }
        Lookup::Corrupt(why) => format!("cache entry corrupt ({why})"),
        Lookup::Missing => why_run(plan, s, runs, store),
    };
    let last = if KeyLock::is_held(&runs.locks(), &s.key) {
        LastRun::Running
    } else {
        let outcome = store.and_then(|st| st.stage_outcome(&s.key).ok().flatten());
        match outcome {
            Some((state, err)) if state == "failed" => {
                let err = err.unwrap_or_default();
                let first = err.lines().next().unwrap_or("").to_string();
                // The coordinator records a stage stopped by a signal as failed, with an
                // error that says so.
                if first.starts_with("interrupted") {
                    LastRun::Interrupted { detail: first }
                } else {
                    LastRun::Failed { error: first }
                }
            }
            _ if cache.checkpoints(&s.key).exists() => LastRun::Interrupted {
                detail: "has epoch checkpoints".to_string(),
            },
            _ => LastRun::Pending,
        }
    };
    StageStatus::WillRun { why, last }
}

/// Why stage `s`, not in the cache, will run: compared with the key the same stage of the
/// same recipe had last time (from the database) and that key's manifest (from the cache).
fn why_run(plan: &Plan, s: &PlannedStage, runs: &RunsDir, store: Option<&Store>) -> String {
    let before = store.and_then(|st| st.bound_key(&plan.recipe, &s.name).ok().flatten());
    let old_manifest = before.as_ref().and_then(|k| {
        let bytes = std::fs::read(runs.cache().entry(k).join(MANIFEST_FILE)).ok()?;
        serde_json::from_slice(&bytes).ok()
    });
    match before.as_deref() {
        Some(k) if k == s.key => "new (never finished)".to_string(),
        b => plan::why_run(&s.manifest, b, old_manifest.as_ref()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RECIPE: &str = r#"
data:
  syn: {kind: synthetic, classes: 4, dim: 8}
stages:
  teacher:
    kind: train
    model: {hidden: [16], embedding: 4}
    loss: {triplet: 1.0}
    epochs: 1
  eval:
    kind: evaluate
    model: teacher
"#;

    #[test]
    fn what_the_runs_directory_says_of_each_stage() {
        let plan = plan::build(crate::recipe::parse("r.yaml", "r", RECIPE).unwrap()).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let runs = RunsDir::new(dir.path());
        let pending = StageStatus::WillRun {
            why: "new".into(),
            last: LastRun::Pending,
        };
        assert_eq!(statuses(&plan, &runs, None), vec![pending.clone(); 2]);
        assert_eq!(pending.state(), "pending");
        assert_eq!(pending.for_plan(), PlanStatus::WillRun { why: "new" });

        // Epoch checkpoints: a stage stopped part-way, to resume.
        let key = &plan.stages[0].key;
        std::fs::create_dir_all(runs.cache().checkpoints(key)).unwrap();
        // An entry that cannot be trusted is run again, and says why.
        std::fs::create_dir_all(runs.cache().entry(&plan.stages[1].key)).unwrap();
        let s = statuses(&plan, &runs, None);
        assert_eq!(
            s[0],
            StageStatus::WillRun {
                why: "new".into(),
                last: LastRun::Interrupted {
                    detail: "has epoch checkpoints".into()
                }
            }
        );
        assert_eq!(s[0].state(), "interrupted");
        assert_eq!(s[0].detail(), "has epoch checkpoints");
        let StageStatus::WillRun { why, last } = &s[1] else {
            panic!("{:?}", s[1]);
        };
        assert!(why.starts_with("cache entry corrupt ("), "{why}");
        assert_eq!(*last, LastRun::Pending);

        let done = StageStatus::Cached {
            wall_s: 1.5,
            device: "cpu".into(),
        };
        assert_eq!(
            (done.state(), done.detail(), done.for_plan()),
            ("done", "in 1.5s on cpu".to_string(), PlanStatus::Cached)
        );
    }
}
