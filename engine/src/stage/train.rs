//! `train` and `distill`: mini-batch training of a model on a weighted loss mix.

use std::collections::BTreeMap;
use std::time::Instant;

use candle_core::Tensor;

use super::checkpoint::{CheckpointError, Checkpoints, SavedEpoch, TrainState, Verified};
use super::StageError;
use crate::cache::derived::Derived;
use crate::ml::data::Split;
use crate::ml::device;
use crate::ml::loss;
use crate::ml::model::{InputShape, Model, ModelMode, Tap};
use crate::ml::optim::{AdamW, AdamWParams, Optim, Sgd};
use crate::ml::rng::Rng;
use crate::ml::sampler::BatchSampler;
use crate::spec::{EpochRecord, Loss, LossTerm, Metric, Optimizer, TrainConfig};

/// The random streams of the loop, by the names they are forked with (and saved under).
const MINING_STREAM: &str = "mining";
const MASK_STREAM: &str = "relation-mask";

fn optimizer(cfg: &Optimizer, model: &Model) -> candle_core::Result<Optim> {
    Ok(match cfg {
        Optimizer::Adam { lr, weight_decay } => Optim::AdamW(AdamW::new(
            model.named_vars(),
            AdamWParams {
                lr: *lr,
                weight_decay: *weight_decay,
                ..Default::default()
            },
        )?),
        Optimizer::Sgd { lr } => Optim::Sgd(Sgd::new(model.named_vars(), *lr)),
    })
}

/// Everything the training loop carries from one epoch to the next: exactly what a
/// checkpoint saves and a resume restores.
struct LoopState {
    model: Model,
    opt: Optim,
    sampler: BatchSampler,
    mining_rng: Rng,
    mask_rng: Rng,
    epochs: Vec<EpochRecord>,
}

impl LoopState {
    /// The state before the first epoch.
    fn fresh(
        cfg: &TrainConfig,
        train: &Split,
        groups: Option<&[u32]>,
        seed: u64,
    ) -> Result<Self, StageError> {
        let (channels, height, width) = train.shape;
        let input = InputShape {
            channels,
            height,
            width,
        };
        let model = Model::new(&cfg.model, input, &mut Rng::fork(seed, "init"))?;
        let opt = optimizer(&cfg.optimizer, &model)?;
        let sampler = BatchSampler::new(
            &cfg.sampler,
            cfg.batch_size,
            groups.unwrap_or(&train.y),
            seed,
        )
        .map_err(anyhow::Error::from)?;
        Ok(Self {
            model,
            opt,
            sampler,
            mining_rng: Rng::fork(seed, MINING_STREAM),
            mask_rng: Rng::fork(seed, MASK_STREAM),
            epochs: Vec::with_capacity(cfg.epochs),
        })
    }

    /// Puts a fresh state where the checkpoint was taken. On error some of it may have
    /// been overwritten already: the caller discards it.
    fn restore(&mut self, ck: &Verified) -> Result<(), CheckpointError> {
        let fail = |why: String| CheckpointError::Restore {
            name: ck.name(),
            why,
        };
        let st = &ck.state;
        let epochs = st
            .epochs
            .iter()
            .map(SavedEpoch::to_record)
            .collect::<Result<Vec<_>, _>>()
            .map_err(fail)?;
        self.mining_rng = st.rng(MINING_STREAM).map_err(fail)?;
        self.mask_rng = st.rng(MASK_STREAM).map_err(fail)?;
        self.sampler
            .restore(&st.sampler)
            .map_err(|e| fail(e.to_string()))?;
        ck.load_into(&mut self.model, &mut self.opt)?;
        self.epochs = epochs;
        Ok(())
    }

    fn train_state(&self) -> TrainState {
        TrainState {
            epoch: self.epochs.len(),
            rngs: [
                (MINING_STREAM.to_string(), self.mining_rng.state()),
                (MASK_STREAM.to_string(), self.mask_rng.state()),
            ]
            .into(),
            sampler: self.sampler.state(),
            epochs: self.epochs.iter().map(SavedEpoch::from_record).collect(),
        }
    }
}

/// The state to start training from: the latest checkpoint that verifies and restores,
/// else a fresh one. Every checkpoint passed over is reported on stderr, never used.
fn start(
    cfg: &TrainConfig,
    train: &Split,
    groups: Option<&[u32]>,
    seed: u64,
    ckpts: &Checkpoints,
) -> Result<LoopState, StageError> {
    ckpts.remove_stale_tmp();
    for epoch in ckpts.epochs() {
        let ck = match ckpts.open(epoch) {
            Ok(ck) if ck.epoch > cfg.epochs => {
                eprintln!(
                    "checkpoint {} is past the stage's {} epochs; ignoring it",
                    ck.name(),
                    cfg.epochs
                );
                continue;
            }
            Ok(ck) => ck,
            Err(e) => {
                eprintln!("{e}; ignoring it");
                continue;
            }
        };
        let mut st = LoopState::fresh(cfg, train, groups, seed)?;
        match st.restore(&ck) {
            Ok(()) => {
                eprintln!(
                    "resuming from checkpoint {} ({} of {} epochs done) in {}",
                    ck.name(),
                    ck.epoch,
                    cfg.epochs,
                    ckpts.root().display()
                );
                return Ok(st);
            }
            Err(e) => eprintln!("{e}; ignoring it"),
        }
    }
    LoopState::fresh(cfg, train, groups, seed)
}

/// What the training loop reports besides the model it leaves behind.
pub struct Trained {
    pub model: Model,
    pub epochs: Vec<EpochRecord>,
    pub metrics: Vec<Metric>,
}

/// The teacher's outputs at every tap the loss mix uses, for every training sample,
/// computed once per stage: the teacher is frozen and the data un-augmented, so every batch
/// just gathers rows.
pub struct TeacherTable {
    taps: Vec<(Tap, Vec<f32>, usize)>,
}

impl TeacherTable {
    pub fn new(teacher: &Model, train: &Split, loss: &[LossTerm]) -> Result<Self, StageError> {
        let wanted = Self::taps_of(loss);
        let bufs = teacher.tap_all(&train.x, train.len(), 1024, &wanted)?;
        let taps = wanted
            .into_iter()
            .zip(bufs)
            .map(|(tap, buf)| {
                let dim = buf.len() / train.len().max(1);
                (tap, buf, dim)
            })
            .collect();
        Ok(Self { taps })
    }

    /// The teacher outputs a loss mix compares with, each once, in a fixed order.
    fn taps_of(loss: &[LossTerm]) -> Vec<Tap> {
        let mut wanted: Vec<Tap> = loss
            .iter()
            .filter(|t| t.loss.needs_teacher())
            .map(|t| t.on)
            .collect();
        wanted.sort();
        wanted.dedup();
        wanted
    }

    /// The table of `teacher` (whose committed cache entry is `teacher_dir`) for `train`,
    /// shared by every student of that teacher on the same data: computed once, kept in
    /// `cache/derived/teacher-<teacher key>-<id>.safetensors` (see [`Derived`]), and reloaded
    /// bit for bit by the next student. `data_id` identifies the training split by content
    /// (the data as its manifest holds it).
    pub fn shared(
        teacher: &Model,
        teacher_dir: &std::path::Path,
        train: &Split,
        loss: &[LossTerm],
        cache_root: &std::path::Path,
        data_id: &str,
    ) -> Result<Self, StageError> {
        let wanted = Self::taps_of(loss);
        let teacher_key = super::key_of_dir(teacher_dir);
        let mut parts: Vec<Vec<u8>> = vec![
            b"teacher-table-v1\0".to_vec(),
            teacher_key.as_bytes().to_vec(),
            data_id.as_bytes().to_vec(),
        ];
        for t in &wanted {
            parts.push(t.to_string().into_bytes());
            parts.push(b"\0".to_vec());
        }
        let parts: Vec<&[u8]> = parts.iter().map(Vec::as_slice).collect();
        let artifact = Derived::new(
            "teacher outputs",
            cache_root,
            "teacher",
            "safetensors",
            &teacher_key,
            &parts,
        );
        let load = |path: &std::path::Path| {
            let mut tensors = candle_core::safetensors::load(path, &device::host()).ok()?;
            let mut taps = Vec::new();
            for tap in &wanted {
                let t = tensors.remove(&tap.to_string())?;
                let (rows, dim) = t.dims2().ok()?;
                if rows != train.len() {
                    return None;
                }
                taps.push((*tap, t.flatten_all().ok()?.to_vec1::<f32>().ok()?, dim));
            }
            Some(Self { taps })
        };
        let save = |table: &Self, path: &std::path::Path| -> anyhow::Result<()> {
            let tensors: std::collections::HashMap<String, Tensor> = table
                .taps
                .iter()
                .map(|(tap, buf, dim)| {
                    Tensor::from_slice(buf, (train.len(), *dim), &device::host())
                        .map(|t| (tap.to_string(), t))
                })
                .collect::<candle_core::Result<_>>()?;
            candle_core::safetensors::save(&tensors, path)?;
            Ok(())
        };
        artifact.get_or_compute(load, || Self::new(teacher, train, loss), save)
    }

    /// The teacher's rows `idx` at `tap`, as a batch tensor.
    fn batch(&self, tap: Tap, idx: &[usize]) -> Result<Tensor, StageError> {
        let (_, buf, dim) = self
            .taps
            .iter()
            .find(|(t, _, _)| *t == tap)
            .ok_or(StageError::NoTeacher)?;
        let mut rows = Vec::with_capacity(idx.len() * dim);
        for &i in idx {
            rows.extend_from_slice(&buf[i * dim..(i + 1) * dim]);
        }
        Ok(Tensor::from_vec(
            rows,
            (idx.len(), *dim),
            &device::compute(),
        )?)
    }
}

/// Trains a model on `train`. `groups` are the superclass ids of the training samples when
/// the sampler balances batches over teacher clusters (otherwise batches follow the labels).
pub fn train(
    cfg: &TrainConfig,
    train: &Split,
    teacher: Option<&TeacherTable>,
    groups: Option<&[u32]>,
    seed: u64,
    on_epoch: impl FnMut(&EpochRecord, usize),
) -> Result<Trained, StageError> {
    train_resumable(cfg, train, teacher, groups, seed, None, |_| {}, on_epoch)
}

/// [`train`], resuming from the latest valid checkpoint in `ckpts` (then `on_resume` is
/// called with its epoch) and writing checkpoints as it goes. The result is bit for bit
/// that of an uninterrupted run: the checkpoint holds every bit of state the loop carries
/// between epochs, and everything else is recomputed deterministically.
#[allow(clippy::too_many_arguments)]
pub fn train_resumable(
    cfg: &TrainConfig,
    train: &Split,
    teacher: Option<&TeacherTable>,
    groups: Option<&[u32]>,
    seed: u64,
    ckpts: Option<&Checkpoints>,
    mut on_resume: impl FnMut(usize),
    mut on_epoch: impl FnMut(&EpochRecord, usize),
) -> Result<Trained, StageError> {
    let mut st = match ckpts {
        Some(c) => start(cfg, train, groups, seed, c)?,
        None => LoopState::fresh(cfg, train, groups, seed)?,
    };
    let first = st.epochs.len() + 1;
    if first > 1 {
        on_resume(first - 1);
    }
    let emb_dim = cfg.model.embedding_dim();
    // Cross-entropy needs labels 0..C−1: a class's position in `train_classes`.
    let class_index: std::collections::HashMap<u32, u32> = cfg
        .data
        .train_classes
        .iter()
        .enumerate()
        .map(|(i, c)| (*c, i as u32))
        .collect();
    // Wall times count training time: a resumed run continues from the checkpointed
    // epoch's (the work lost between that checkpoint and the interruption is not counted).
    let wall_before = st.epochs.last().map_or(0.0, |r| r.wall_s);
    let started = Instant::now();
    let mut last_checkpoint = started;

    for epoch in first..=cfg.epochs {
        let mut sums: BTreeMap<String, f64> = BTreeMap::new();
        let mut steps = 0usize;
        // The sampler drops an incomplete last batch: relational losses see the batch as a
        // whole, and a tiny remainder would give a noisy, differently scaled step.
        for (step, idx) in st.sampler.epoch().iter().enumerate() {
            let idx = idx.as_slice();
            let x = Tensor::from_vec(
                train.gather(idx),
                (idx.len(), train.dim),
                &device::compute(),
            )?;
            let out = st.model.forward_all(&x, ModelMode::Train)?;
            let mut total: Option<Tensor> = None;
            for term in &cfg.loss {
                let student = out
                    .tap(term.on)
                    .ok_or_else(|| anyhow::anyhow!("the model has no `{}` output", term.on))?;
                // A fresh relation mask for every step and term, from the stage's own stream.
                let mask = term.keep.map(|keep| loss::Mask {
                    keep,
                    seed: st.mask_rng.next_u64(),
                });
                let teacher_batch = |t: Option<&TeacherTable>| -> Result<Tensor, StageError> {
                    t.ok_or(StageError::NoTeacher)?.batch(term.on, idx)
                };
                let value = match &term.loss {
                    Loss::Triplet { margin, mining } => {
                        let labels: Vec<u32> = idx.iter().map(|&i| train.y[i]).collect();
                        let e = student.detach().flatten_all()?.to_vec1::<f32>()?;
                        let triplets = loss::mine_triplets(
                            loss::MatRef::new(&e, idx.len(), emb_dim)
                                .map_err(anyhow::Error::from)?,
                            &labels,
                            *mining,
                            &mut || st.mining_rng.next_u64(),
                        );
                        loss::triplet_loss(student, &triplets, *margin)?
                    }
                    Loss::Ce => {
                        let labels: Vec<u32> =
                            idx.iter().map(|&i| class_index[&train.y[i]]).collect();
                        loss::ce_loss(student, &labels)?
                    }
                    Loss::RkdD => loss::rkd_distance_loss(student, &teacher_batch(teacher)?, mask)?,
                    Loss::RkdA => loss::rkd_angle_loss(student, &teacher_batch(teacher)?, mask)?,
                    Loss::Sp => loss::sp_loss(student, &teacher_batch(teacher)?, mask)?,
                    Loss::Cc { kernel } => {
                        loss::cc_loss(student, &teacher_batch(teacher)?, *kernel, mask)?
                    }
                    Loss::Kd { temperature } => {
                        loss::kd_loss(student, &teacher_batch(teacher)?, *temperature)?
                    }
                };
                let v = f64::from(value.to_scalar::<f32>()?);
                if !v.is_finite() {
                    return Err(StageError::NonFinite {
                        term: term.name().to_string(),
                        epoch,
                        step: step + 1,
                        value: v,
                    });
                }
                *sums.entry(term.name().to_string()).or_default() += v;
                let weighted = (value * term.weight)?;
                total = Some(match total {
                    Some(t) => (t + weighted)?,
                    None => weighted,
                });
            }
            let total = total.ok_or(StageError::NoLoss)?;
            let tv = f64::from(total.to_scalar::<f32>()?);
            if !tv.is_finite() {
                return Err(StageError::NonFinite {
                    term: "total".into(),
                    epoch,
                    step: step + 1,
                    value: tv,
                });
            }
            *sums.entry("total".into()).or_default() += tv;
            st.opt.backward_step(&total)?;
            steps += 1;
        }
        let losses = sums
            .into_iter()
            .map(|(k, v)| (k, v / steps.max(1) as f64))
            .collect();
        let rec = EpochRecord {
            epoch,
            losses,
            wall_s: wall_before + started.elapsed().as_secs_f64(),
        };
        st.epochs.push(rec.clone());
        if let Some(c) = ckpts.filter(|c| c.due(epoch, cfg.epochs, last_checkpoint.elapsed())) {
            // A failed checkpoint costs only resumability, never the run's result.
            match c.write(&st.model, &st.opt, &st.train_state()) {
                Ok(took) => eprintln!(
                    "checkpoint epoch-{epoch} written in {:.1} ms",
                    took.as_secs_f64() * 1e3
                ),
                Err(e) => eprintln!("warning: {e}; training goes on without it"),
            }
            last_checkpoint = Instant::now();
        }
        on_epoch(&rec, cfg.epochs);
    }

    let LoopState { model, epochs, .. } = st;
    let metrics = epochs
        .last()
        .map(|last| {
            last.losses
                .iter()
                .map(|(k, v)| Metric {
                    name: format!("loss/{k}"),
                    value: *v,
                    split: "train".into(),
                })
                .collect()
        })
        .unwrap_or_default();
    Ok(Trained {
        model,
        epochs,
        metrics,
    })
}

#[cfg(test)]
mod resume_tests;

#[cfg(test)]
mod conv_tests {
    use super::*;
    use crate::ml::data::{self, DataSource, DataSpec};
    use crate::ml::model::ModelSpec;
    use crate::spec::{Loss, LossTerm, Optimizer, TrainConfig};

    fn config(model: ModelSpec, loss: Vec<LossTerm>) -> TrainConfig {
        TrainConfig {
            data: DataSpec {
                // 64 features, viewed as 1×8×8 images by the test.
                source: DataSource::Synthetic {
                    classes: 6,
                    dim: 64,
                    train_per_class: 16,
                    test_per_class: 4,
                    seed: 1,
                },
                train_classes: vec![0, 1, 2, 3],
                eval_classes: vec![4, 5],
                train_limit: None,
                eval_limit: None,
                transforms: Vec::new(),
            },
            model,
            loss,
            optimizer: Optimizer::Adam {
                lr: 1e-3,
                weight_decay: 0.0,
            },
            epochs: 2,
            batch_size: 16,
            seed: 3,
            sampler: Default::default(),
        }
    }

    fn term(loss: Loss, on: Tap) -> LossTerm {
        LossTerm {
            loss,
            weight: 1.0,
            on,
            keep: None,
        }
    }

    /// A convnet teacher trained with CE distils into a ResNet-8 student through a hidden
    /// tap (pooled stage features) and the embedding, via the stage's own training loop.
    #[test]
    fn a_convnet_teacher_distils_into_a_resnet_through_hidden_taps() {
        let teacher_cfg = config(
            ModelSpec::Convnet {
                channels: vec![4, 8],
                embedding: 8,
                l2norm: false,
                classes: Some(4),
            },
            vec![term(Loss::Ce, Tap::Logits)],
        );
        let mut data = data::load(&teacher_cfg.data).unwrap();
        data.train.shape = (1, 8, 8);
        data.eval.shape = (1, 8, 8);
        let teacher = train(&teacher_cfg, &data.train, None, None, 1, |_, _| {}).unwrap();
        assert_eq!(teacher.model.input_shape().to_string(), "1×8×8");
        let student_cfg = config(
            ModelSpec::Resnet {
                depth: 8,
                width: 4,
                embedding: 8,
                l2norm: true,
                classes: None,
            },
            vec![
                term(Loss::RkdD, Tap::Hidden(2)),
                term(Loss::Sp, Tap::Embedding),
            ],
        );
        let table = TeacherTable::new(&teacher.model, &data.train, &student_cfg.loss).unwrap();
        let student = train(&student_cfg, &data.train, Some(&table), None, 2, |_, _| {}).unwrap();
        let last = &student.epochs.last().unwrap().losses;
        assert!(
            last["rkd_d"].is_finite() && last["sp"].is_finite(),
            "{last:?}"
        );
        let emb = student
            .model
            .embed_all(&data.eval.x, data.eval.len(), 5)
            .unwrap();
        assert_eq!(emb.len(), data.eval.len() * 8);
    }
}
