//! What crosses the process boundary back from a stage: its progress events (JSON lines on
//! stdout) and `result.json`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// One final metric of a stage.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Metric {
    pub name: String,
    pub value: f64,
    /// What the metric was measured on, e.g. `test/unseen-classes` or `train`.
    pub split: String,
}

/// Mean loss of each term over one epoch.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct EpochRecord {
    pub epoch: usize,
    /// `total` and one entry per loss term (unweighted), averaged over the epoch's steps.
    pub losses: BTreeMap<String, f64>,
    pub wall_s: f64,
}

/// `result.json`: written last into a stage's directory; its presence (with checksums
/// that hold) is what makes a stage done.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct StageResult {
    pub key: String,
    pub kind: String,
    pub metrics: Vec<Metric>,
    pub epochs: Vec<EpochRecord>,
    /// Artifact file name → SHA-256 of its bytes.
    pub artifacts: BTreeMap<String, String>,
    /// Which checkpoint the metrics describe. We report the last epoch and never select a
    /// checkpoint on the test split.
    pub checkpoint: String,
    pub wall_s: f64,
    pub threads: usize,
    pub device: String,
    pub engine_version: String,
    pub finished_unix: u64,
}

/// Progress events: one JSON object per line on a stage process's stdout.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    Epoch {
        epoch: usize,
        epochs: usize,
        losses: BTreeMap<String, f64>,
        wall_s: f64,
    },
    Metric {
        name: String,
        value: f64,
    },
    /// The stage resumed from a checkpoint: `epoch` epochs were restored and training goes
    /// on at `epoch + 1`.
    Resumed {
        epoch: usize,
    },
    /// The stage failed (or panicked) with this error; sent before it exits, because its log
    /// — where the error is also written — may be on a full disk.
    Failed {
        error: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_tagged_json_lines() {
        let line = serde_json::to_string(&Event::Resumed { epoch: 3 }).unwrap();
        assert_eq!(line, r#"{"event":"resumed","epoch":3}"#);
        // Like the other events: internally tagged, snake_case.
        let epoch = serde_json::to_string(&Event::Metric {
            name: "m".into(),
            value: 1.0,
        })
        .unwrap();
        assert!(epoch.starts_with(r#"{"event":"metric","#), "{epoch}");
        assert_eq!(
            serde_json::from_str::<Event>(&line).unwrap(),
            Event::Resumed { epoch: 3 }
        );
    }
}
