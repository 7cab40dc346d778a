//! What the run behind a recipe's results changed from the recipe file: its `--set`
//! arguments, and whether one of them changed the scale (a *smoke* run: fewer epochs, less
//! data). Every result command shows it beside the numbers, because the latest run of a
//! name is what `results`, `plot` and `report` show, and smoke numbers are easily taken for
//! the real ones.

use serde_json::{json, Value};

use crate::store::{Invocation, Store, StoreError};

#[derive(Debug, Clone, Default, PartialEq)]
pub struct RunOverrides {
    /// The `--set PATH=VALUE` arguments of the run, as typed; `None` when the run did not
    /// record them (a database from before schema version 3, or rebuilt).
    pub sets: Option<Vec<String>>,
    /// Those of them that change a scale key (`store::SCALE_KEYS`).
    pub smoke: Vec<String>,
    /// The run's number in `invocations`.
    pub invocation: Option<i64>,
}

impl RunOverrides {
    pub fn of(inv: &Invocation) -> Self {
        Self {
            sets: inv.sets.clone(),
            smoke: inv.smoke_sets().iter().map(|s| s.to_string()).collect(),
            invocation: Some(inv.id),
        }
    }

    /// The overrides of a recipe's latest run (none if it never ran).
    pub fn load(store: &Store, recipe: &str) -> Result<Self, StoreError> {
        Ok(store
            .invocation(recipe)?
            .map(|i| Self::of(&i))
            .unwrap_or_default())
    }

    pub fn is_smoke(&self) -> bool {
        !self.smoke.is_empty()
    }

    fn sets(&self) -> &[String] {
        self.sets.as_deref().unwrap_or_default()
    }

    /// `--set 'stages.*.epochs=1' --set data.syn.train_limit=64`, as a shell takes it.
    pub fn command_text(&self) -> String {
        self.sets()
            .iter()
            .map(|s| format!("--set {}", shell_quote(s)))
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// The line shown above a table or in a figure, `None` for a run of the file as written:
    /// `smoke run #4: --set 'stages.*.epochs=1' — … changes the scale …: these are not the
    /// recipe's full-scale numbers`, or `run #4 with --set …` for other overrides.
    pub fn note(&self) -> Option<String> {
        if self.sets().is_empty() {
            return None;
        }
        let run = self
            .invocation
            .map(|i| format!(" #{i}"))
            .unwrap_or_default();
        Some(if self.is_smoke() {
            let scale: Vec<String> = self.smoke.iter().map(|s| shell_quote(s)).collect();
            format!(
                "smoke run{run}: {} — {} {} the scale (epochs, data limits, …): these are not the recipe's full-scale numbers",
                self.command_text(),
                scale.join(", "),
                if scale.len() == 1 { "changes" } else { "change" }
            )
        } else {
            format!("run{run} with {}", self.command_text())
        })
    }

    /// For programs: `smoke` (true/false, null when not recorded) and the `--set` list.
    pub fn json(&self) -> Value {
        json!({
            "smoke": self.sets.as_ref().map(|_| self.is_smoke()),
            "sets": self.sets,
        })
    }
}

/// `s` as one shell word: as it is when that is safe, else in single quotes.
fn shell_quote(s: &str) -> String {
    let plain = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.,:/=@+%".contains(c));
    if plain {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smoke_is_a_scale_override_and_the_note_can_be_pasted_back() {
        let o = |sets: &[&str]| RunOverrides {
            sets: Some(sets.iter().map(|s| s.to_string()).collect()),
            smoke: crate::store::scale_overrides(
                &sets.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
            )
            .iter()
            .map(|s| s.to_string())
            .collect(),
            invocation: Some(4),
        };
        assert_eq!(o(&[]).note(), None);
        assert_eq!(RunOverrides::default().note(), None);
        let plain = o(&["stages.student.loss.cc.p=3"]);
        assert!(!plain.is_smoke());
        assert_eq!(
            plain.note().unwrap(),
            "run #4 with --set stages.student.loss.cc.p=3"
        );
        for smoke in [
            "stages.*.epochs=1",
            "data.fmnist.train_limit=2000",
            "data.syn.test_per_class=4",
            "stages.born.generations=1",
            "stages.eval.few_shot={episodes: 10}",
            "stages.student.matrix.epochs=[1, 2]",
        ] {
            assert!(o(&[smoke]).is_smoke(), "{smoke}");
        }
        // A sampler's batch shape is not a scale.
        assert!(!o(&["stages.student.sampler.per_class=4"]).is_smoke());
        let s = o(&["stages.*.epochs=1", "stages.t.seed=3"]);
        let note = s.note().unwrap();
        assert!(
            note.starts_with("smoke run #4: --set 'stages.*.epochs=1' --set stages.t.seed=3 — 'stages.*.epochs=1' changes"),
            "{note}"
        );
        assert_eq!(s.json()["smoke"], true);
        assert!(RunOverrides::default().json()["smoke"].is_null());
    }
}
