//! What one stage process does: read its spec, train or evaluate, write artifacts into a
//! temporary directory of the cache, and commit it by renaming it into place.
//!
//! Runs inside `rkd-orch stage --spec FILE`, a child process of the coordinator. It reports
//! progress as JSON lines on stdout and diagnostics on stderr; it never touches SQLite.

pub mod spec;
pub mod train;

use std::io::Write;
use std::path::Path;
use std::time::Instant;

use crate::cache::{self, Cache};
use crate::ml::data;
use crate::ml::metric::recall_at_k;
use crate::ml::model::{Model, MODEL_FILE, WEIGHTS_FILE};
use spec::{Event, Metric, StageConfig, StageResult, StageSpec, ROLE_MODEL, ROLE_TEACHER};

#[derive(Debug, thiserror::Error)]
pub enum StageError {
    #[error(
        "loss `{term}` became {value} at epoch {epoch}, step {step}; nothing was cached \
         (try a lower learning rate or a smaller loss weight)"
    )]
    NonFinite {
        term: String,
        epoch: usize,
        step: usize,
        value: f64,
    },
    #[error("a relational loss needs a teacher, and this stage has none")]
    NoTeacher,
    #[error("the loss mix is empty")]
    NoLoss,
    #[error("input `{0}` is missing from the stage spec")]
    MissingInput(String),
    #[error(transparent)]
    Data(#[from] data::DataError),
    #[error(transparent)]
    Model(#[from] crate::ml::model::ModelError),
    #[error("tensor computation failed: {0}")]
    Candle(#[from] candle_core::Error),
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

/// The stage's RNG seed: derived from its content key, so that it is fixed by what the
/// stage computes (including the recipe's `seed`) and by nothing else.
pub fn seed_from_key(key: &str) -> u64 {
    u64::from_str_radix(&key[..16.min(key.len())], 16).unwrap_or(0)
}

fn emit(event: &Event) {
    let line = serde_json::to_string(event).expect("serialisable event");
    let mut out = std::io::stdout().lock();
    // A closed pipe means the coordinator is gone; the stage still finishes and commits.
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// Runs the stage described by the spec file and commits its artifacts to the cache.
pub fn run_from_file(spec_path: &Path) -> Result<(), StageError> {
    let spec: StageSpec = serde_json::from_slice(
        &std::fs::read(spec_path)
            .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", spec_path.display()))?,
    )
    .map_err(|e| anyhow::anyhow!("invalid stage spec {}: {e}", spec_path.display()))?;
    run(&spec)
}

pub fn run(spec: &StageSpec) -> Result<(), StageError> {
    let cache = Cache::new(&spec.cache_dir);
    let tmp = cache.create_tmp(&spec.key).map_err(anyhow::Error::from)?;
    let outcome = execute(spec, tmp.path());
    match outcome {
        Ok(result) => {
            cache
                .commit(tmp, &result, &spec.manifest)
                .map_err(anyhow::Error::from)?;
            Ok(())
        }
        // Dropping `tmp` removes the half-written directory: a failed stage caches nothing.
        Err(e) => Err(e),
    }
}

fn execute(spec: &StageSpec, dir: &Path) -> Result<StageResult, StageError> {
    let started = Instant::now();
    let seed = seed_from_key(&spec.key);
    eprintln!(
        "stage {} ({}) key {} seed {seed:#018x}",
        spec.name,
        spec.config.kind(),
        spec.key
    );
    let input = |role: &str| {
        spec.inputs
            .get(role)
            .ok_or_else(|| StageError::MissingInput(role.to_string()))
    };
    let data = data::load(spec.config.data())?;
    eprintln!(
        "data: {} training samples, {} evaluation samples, {} features",
        data.train.len(),
        data.eval.len(),
        data.train.dim
    );
    let mut metrics: Vec<Metric> = Vec::new();
    let mut epochs = Vec::new();
    let mut artifacts = Vec::new();
    let on_epoch = |rec: &spec::EpochRecord, total: usize| {
        emit(&Event::Epoch {
            epoch: rec.epoch,
            epochs: total,
            losses: rec.losses.clone(),
            wall_s: rec.wall_s,
        });
    };
    match &spec.config {
        StageConfig::Train(cfg) => {
            let t = train::train(cfg, &data.train, None, seed, on_epoch)?;
            t.model.save(dir)?;
            (metrics, epochs) = (t.metrics, t.epochs);
            artifacts.extend([WEIGHTS_FILE, MODEL_FILE]);
        }
        StageConfig::Distill(cfg) => {
            let teacher = Model::load(&input(ROLE_TEACHER)?.clone())?;
            let table = train::TeacherTable::new(&teacher, &data.train, &cfg.loss)?;
            let t = train::train(cfg, &data.train, Some(&table), seed, on_epoch)?;
            t.model.save(dir)?;
            (metrics, epochs) = (t.metrics, t.epochs);
            artifacts.extend([WEIGHTS_FILE, MODEL_FILE]);
        }
        StageConfig::Evaluate(cfg) => {
            let model = Model::load(input(ROLE_MODEL)?)?;
            let emb = model.embed_all(&data.eval.x, data.eval.len(), 1024)?;
            let recalls = recall_at_k(
                &emb,
                model.file().spec.embedding_dim(),
                &data.eval.y,
                &cfg.recall_at,
            );
            for (k, r) in cfg.recall_at.iter().zip(recalls) {
                emit(&Event::Metric {
                    name: format!("recall@{k}"),
                    value: r,
                });
                metrics.push(Metric {
                    name: format!("recall@{k}"),
                    value: r,
                    split: "test/unseen-classes".into(),
                });
            }
            metrics.push(Metric {
                name: "queries".into(),
                value: data.eval.len() as f64,
                split: "test/unseen-classes".into(),
            });
        }
    }
    Ok(StageResult {
        key: spec.key.clone(),
        kind: spec.config.kind().to_string(),
        metrics,
        epochs,
        artifacts: artifacts
            .into_iter()
            .map(|f| cache::sha256_file(&dir.join(f)).map(|h| (f.to_string(), h)))
            .collect::<std::io::Result<_>>()
            .map_err(anyhow::Error::from)?,
        checkpoint: "last_epoch".into(),
        wall_s: started.elapsed().as_secs_f64(),
        threads: candle_core::utils::get_num_threads(),
        device: "cpu".into(),
        engine_version: env!("CARGO_PKG_VERSION").into(),
        finished_unix: cache::unix_now(),
    })
}
