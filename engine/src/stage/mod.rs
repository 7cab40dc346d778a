//! What one stage process does: read its spec, train or evaluate, write artifacts into a
//! temporary directory of the cache, and commit it by renaming it into place.
//!
//! Runs inside `rkd-orch stage --spec FILE`, a child process of the coordinator. It reports
//! progress as JSON lines on stdout and diagnostics on stderr; it never touches SQLite.

pub mod checkpoint;
pub mod train;

use std::io::Write;
use std::path::Path;
use std::time::Instant;

use crate::cache::derived::Derived;
use crate::cache::{self, Cache};
use crate::ml::cluster::{kmeans, KMeans};
use crate::ml::data;
use crate::ml::metric::{few_shot, nmi, recall_at_k, top1};
use crate::ml::model::{Model, MODEL_FILE, WEIGHTS_FILE};
use crate::ml::probe::{linear_probe, Features};
use crate::spec::{
    self, Event, Metric, StageConfig, StageResult, StageSpec, ROLE_MODEL, ROLE_TEACHER,
};
use checkpoint::Checkpoints;

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

/// The superclasses of a distill stage's `superclass` sampler, as a stage artifact.
const SUPERCLASS_FILE: &str = "superclasses.json";

/// k-means on the teacher's embeddings of the training split. Every student of the same
/// teacher, data *content* and k shares one clustering: it is computed once, with a seed
/// derived from the teacher's key, and kept in `cache/derived/` (see [`Derived`]).
fn superclasses(
    spec: &StageSpec,
    teacher: &Model,
    teacher_dir: &Path,
    train: &data::Split,
    k: usize,
) -> Result<KMeans, StageError> {
    let teacher_key = key_of_dir(teacher_dir);
    // v2: keyed by the data's content (its manifest form); v1 hashed its location too, so
    // moving the data re-clustered.
    let data = spec.manifest.data().to_string();
    let artifact = Derived::new(
        "superclasses",
        &spec.cache_dir,
        "kmeans",
        "json",
        &teacher_key,
        &[
            b"superclasses-v2\0",
            teacher_key.as_bytes(),
            data.as_bytes(),
            &(k as u64).to_le_bytes(),
        ],
    );
    let load = |path: &Path| {
        let km: KMeans = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
        // Every size read from the file is checked before it indexes anything.
        let valid = km.assignments.len() == train.len()
            && km.k == k
            && km.assignments.iter().all(|&a| (a as usize) < k);
        valid.then_some(km)
    };
    let compute = || -> Result<KMeans, StageError> {
        let dim = teacher.file().spec.embedding_dim();
        let emb = teacher.embed_all(&train.x, train.len(), 1024)?;
        let started = Instant::now();
        let km = kmeans(&emb, train.len(), dim, k, seed_from_key(&teacher_key), 100)
            .map_err(anyhow::Error::from)?;
        eprintln!(
            "superclasses: k-means k={k} on {} teacher embeddings: {} iterations, inertia {:.4}, {:.2}s",
            train.len(),
            km.iterations,
            km.inertia,
            started.elapsed().as_secs_f64()
        );
        Ok(km)
    };
    let save = |km: &KMeans, path: &Path| Ok(std::fs::write(path, serde_json::to_vec(km)?)?);
    artifact.get_or_compute(load, compute, save)
}

/// The key of a committed cache entry, from its directory's name.
pub(crate) fn key_of_dir(dir: &Path) -> String {
    dir.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// An `evaluate` stage: on the unseen classes, Recall@K, NMI and few-shot episodes (metric
/// protocol); or top-1 on the test images of the training classes (classification).
fn evaluate(
    model: &Model,
    cfg: &spec::EvalConfig,
    data: &data::Loaded,
    seed: u64,
    metrics: &mut Vec<Metric>,
) -> Result<(), StageError> {
    let mut put = |name: String, value: f64, split: &str| record(metrics, name, value, split);
    match cfg.protocol {
        spec::Protocol::Metric => {
            let split = "test/unseen-classes";
            let dim = model.file().spec.embedding_dim();
            // One pass of the model serves retrieval, clustering and few-shot.
            let emb = model.embed_all(&data.eval.x, data.eval.len(), 1024)?;
            retrieval(&emb, dim, &data.eval.y, &cfg.recall_at, split, &mut put);
            if cfg.nmi {
                put("nmi".into(), nmi(&emb, dim, &data.eval.y, seed), split);
            }
            if let Some(fs) = &cfg.few_shot {
                let r = few_shot(&emb, dim, &data.eval.y, fs, seed).ok_or_else(|| {
                    anyhow::anyhow!(
                        "few-shot: {}-way {}-shot episodes with {} queries need {} unseen classes with at least {} test samples each",
                        fs.ways, fs.shots, fs.queries, fs.ways, fs.shots + fs.queries
                    )
                })?;
                let tag = format!("{}way{}shot", fs.ways, fs.shots);
                put(format!("fewshot/{tag}"), r.accuracy, split);
                put(format!("fewshot/{tag}/ci95"), r.ci95, split);
            }
        }
        spec::Protocol::Classification => {
            // The classification protocol tests on the training classes' test images.
            let mut seen = cfg.data.clone();
            seen.eval_classes = cfg.data.train_classes.clone();
            let test = data::load(&seen)?.eval;
            let classes = model.file().spec.classes().ok_or_else(|| {
                anyhow::anyhow!(
                    "the classification protocol needs a model with a classifier head (`classes:`)"
                )
            })?;
            let index: std::collections::HashMap<u32, u32> = cfg
                .data
                .train_classes
                .iter()
                .enumerate()
                .map(|(i, c)| (*c, i as u32))
                .collect();
            let labels: Vec<u32> = test.y.iter().map(|y| index[y]).collect();
            let logits = model
                .tap_all(&test.x, test.len(), 1024, &[crate::ml::model::Tap::Logits])?
                .remove(0);
            let split = "test/seen-classes";
            put("top1".into(), top1(&logits, classes, &labels), split);
            put("queries".into(), test.len() as f64, split);
        }
    }
    Ok(())
}

/// Emits a final metric as a progress event and keeps it for `result.json`.
fn record(metrics: &mut Vec<Metric>, name: String, value: f64, split: &str) {
    emit(&Event::Metric {
        name: name.clone(),
        value,
    });
    metrics.push(Metric {
        name,
        value,
        split: split.into(),
    });
}

/// Recall@K of embeddings `emb` (each sample a query against the others), and the number of
/// queries.
fn retrieval(
    emb: &[f32],
    dim: usize,
    labels: &[u32],
    ks: &[usize],
    split: &str,
    put: &mut impl FnMut(String, f64, &str),
) {
    for (k, r) in ks.iter().zip(recall_at_k(emb, dim, labels, ks)) {
        put(format!("recall@{k}"), r, split);
    }
    put("queries".into(), labels.len() as f64, split);
}

/// The stage's RNG seed: derived from its content key, so that it is fixed by what the
/// stage computes (including the recipe's `seed`) and by nothing else.
pub fn seed_from_key(key: &str) -> u64 {
    u64::from_str_radix(&key[..16.min(key.len())], 16).unwrap_or(0)
}

fn emit(event: &impl serde::Serialize) {
    let line = serde_json::to_string(event).expect("serialisable event");
    let mut out = std::io::stdout().lock();
    // A closed pipe means the coordinator is gone; the stage still finishes and commits.
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// Runs the stage described by the spec file and commits its artifacts to the cache. Its
/// error, or its panic, also goes to the coordinator as a [`Event::Failed`] on stdout.
pub fn run_from_file(spec_path: &Path) -> Result<(), StageError> {
    report_panics();
    let outcome = read_spec(spec_path).and_then(|spec| run(&spec));
    if let Err(e) = &outcome {
        emit(&Event::Failed {
            error: e.to_string(),
        });
    }
    outcome
}

fn read_spec(spec_path: &Path) -> Result<StageSpec, StageError> {
    let bytes = std::fs::read(spec_path)
        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", spec_path.display()))?;
    Ok(serde_json::from_slice(&bytes)
        .map_err(|e| anyhow::anyhow!("invalid stage spec {}: {e}", spec_path.display()))?)
}

/// Sends a panic's message to the coordinator before the default hook prints it: on a full
/// disk the log cannot take it (and a failed write to stderr is itself a panic).
fn report_panics() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let text = info.to_string().replace('\n', " ");
        emit(&Event::Failed {
            error: format!("the stage {text}"),
        });
        default(info);
    }));
}

pub fn run(spec: &StageSpec) -> Result<(), StageError> {
    let cache = Cache::new(&spec.cache_dir);
    let tmp = cache.create_tmp(&spec.key).map_err(anyhow::Error::from)?;
    let ckpts = Checkpoints::from_env(&spec.cache_dir, &spec.key);
    let outcome = execute(spec, tmp.path(), &ckpts);
    match outcome {
        Ok(result) => {
            cache
                .commit(tmp, &result, &spec.manifest.to_value())
                .map_err(anyhow::Error::from)?;
            // Only once the result is in place: a kill before this line resumes from the
            // checkpoints (or finds the stage done and leaves them, see docs/resume.md).
            remove_checkpoints(&ckpts);
            Ok(())
        }
        // Training is deterministic: resuming would reach the same non-finite loss again.
        Err(e @ StageError::NonFinite { .. }) => {
            remove_checkpoints(&ckpts);
            Err(e)
        }
        // Dropping `tmp` removes the half-written directory: a failed stage caches nothing.
        // Checkpoints stay for other failures (a full disk, a missing input): a re-run
        // after the cause is fixed resumes from them.
        Err(e) => Err(e),
    }
}

fn remove_checkpoints(ckpts: &Checkpoints) {
    if let Err(e) = ckpts.remove_all() {
        eprintln!(
            "warning: cannot remove the checkpoints in {}: {e}",
            ckpts.root().display()
        );
    }
}

fn execute(spec: &StageSpec, dir: &Path, ckpts: &Checkpoints) -> Result<StageResult, StageError> {
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
    let on_resume = |epoch: usize| emit(&Event::Resumed { epoch });
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
            let t = train::train_resumable(
                cfg,
                &data.train,
                None,
                None,
                seed,
                Some(ckpts),
                on_resume,
                on_epoch,
            )?;
            t.model.save(dir)?;
            (metrics, epochs) = (t.metrics, t.epochs);
            artifacts.extend([WEIGHTS_FILE, MODEL_FILE]);
        }
        StageConfig::Distill(cfg) => {
            let teacher = Model::load(&input(ROLE_TEACHER)?.clone())?;
            let table = train::TeacherTable::shared(
                &teacher,
                input(ROLE_TEACHER)?,
                &data.train,
                &cfg.loss,
                &spec.cache_dir,
                // The data as hashed into the key: its content fingerprint, not its path.
                &spec.manifest.data().to_string(),
            )?;
            let teacher_dir = input(ROLE_TEACHER)?;
            let groups = match cfg.sampler.clusters() {
                Some(k) => {
                    let km = superclasses(spec, &teacher, teacher_dir, &data.train, k)?;
                    std::fs::write(
                        dir.join(SUPERCLASS_FILE),
                        serde_json::to_vec(&km).map_err(anyhow::Error::from)?,
                    )
                    .map_err(anyhow::Error::from)?;
                    artifacts.push(SUPERCLASS_FILE);
                    metrics.push(Metric {
                        name: "superclass/inertia".into(),
                        value: km.inertia,
                        split: "train".into(),
                    });
                    Some(km.assignments)
                }
                None => None,
            };
            let t = train::train_resumable(
                cfg,
                &data.train,
                Some(&table),
                groups.as_deref(),
                seed,
                Some(ckpts),
                on_resume,
                on_epoch,
            )?;
            t.model.save(dir)?;
            metrics.extend(t.metrics);
            epochs = t.epochs;
            artifacts.extend([WEIGHTS_FILE, MODEL_FILE]);
        }
        StageConfig::Evaluate(cfg) => {
            let model = Model::load(input(ROLE_MODEL)?)?;
            evaluate(&model, cfg, &data, seed, &mut metrics)?;
        }
        StageConfig::Transfer(cfg) => {
            let model = Model::load(input(ROLE_MODEL)?)?;
            if model.file().input_dim != data.eval.dim {
                return Err(anyhow::anyhow!(
                    "the model takes {} features per sample but the target data set has {}; transfer needs inputs of the same shape",
                    model.file().input_dim,
                    data.eval.dim
                )
                .into());
            }
            let split = "transfer/eval-classes";
            let dim = model.file().spec.embedding_dim();
            let emb = model.embed_all(&data.eval.x, data.eval.len(), 1024)?;
            let mut put =
                |name: String, value: f64, split: &str| record(&mut metrics, name, value, split);
            retrieval(&emb, dim, &data.eval.y, &cfg.recall_at, split, &mut put);
            if let Some(probe) = &cfg.probe {
                // The probe learns the target's eval classes from their training images and
                // is scored on their test images: both sides of the same, unseen, classes.
                let mut probe_spec = cfg.data.clone();
                probe_spec.train_classes = cfg.data.eval_classes.clone();
                let probe_data = data::load(&probe_spec)?;
                let train_emb =
                    model.embed_all(&probe_data.train.x, probe_data.train.len(), 1024)?;
                let r = linear_probe(
                    &Features {
                        x: &train_emb,
                        y: &probe_data.train.y,
                        dim,
                    },
                    &Features {
                        x: &emb,
                        y: &data.eval.y,
                        dim,
                    },
                    probe.epochs,
                    probe.lr,
                    probe.batch_size,
                    seed,
                )?;
                put("probe_top1".into(), r.accuracy, split);
                put("probe_train_loss".into(), r.final_loss, split);
            }
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
