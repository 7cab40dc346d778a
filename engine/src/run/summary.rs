//! What a run came to: each stage's outcome, the line that ends the run and the `summary`
//! event of `--json`.

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
