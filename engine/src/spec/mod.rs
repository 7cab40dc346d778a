//! The vocabulary shared by recipe, plan, run, stage, cache and store: what one stage is (its
//! resolved configuration and its loss terms), the spec the coordinator hands to a stage
//! process, its manifest, and what the stage writes back. It imports nothing of the crate
//! but the input types of `ml` (data, model and sampler specs), so that every layer above
//! can speak it and none of them needs another to do so.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

mod config;
mod loss;
mod manifest;
mod protocol;

pub use config::*;
pub use loss::*;
pub use manifest::*;
pub use protocol::*;

/// Everything a stage process needs, written as JSON by the coordinator.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct StageSpec {
    pub key: String,
    /// The stage's name in its recipe (for messages only; not part of the key).
    pub name: String,
    pub config: StageConfig,
    /// Input role → the committed cache directory of the stage that provides it.
    pub inputs: BTreeMap<String, PathBuf>,
    /// The content that was hashed into `key`; stored next to the artifacts.
    pub manifest: Manifest,
    /// The cache root (`runs/cache`).
    pub cache_dir: PathBuf,
}
