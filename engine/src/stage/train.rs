//! `train` and `distill`: mini-batch training of a model on a weighted loss mix.

use std::collections::BTreeMap;
use std::time::Instant;

use candle_core::{Device, Tensor};
use candle_nn::{AdamW, Optimizer as _, ParamsAdamW, SGD};

use super::spec::{EpochRecord, Kernel, Loss, LossTerm, Metric, Optimizer, TrainConfig};
use super::StageError;
use crate::ml::data::Split;
use crate::ml::loss;
use crate::ml::model::{InputShape, Model, ModelMode, Tap};
use crate::ml::rng::Rng;
use crate::ml::sampler::BatchSampler;

/// Optimisers behind one interface (candle's `Optimizer` trait is not object safe).
enum Opt {
    Adam(AdamW),
    Sgd(SGD),
}

impl Opt {
    fn new(cfg: &Optimizer, model: &Model) -> candle_core::Result<Self> {
        Ok(match cfg {
            Optimizer::Adam { lr, weight_decay } => Opt::Adam(AdamW::new(
                model.vars(),
                ParamsAdamW {
                    lr: *lr,
                    weight_decay: *weight_decay,
                    ..Default::default()
                },
            )?),
            Optimizer::Sgd { lr } => Opt::Sgd(SGD::new(model.vars(), *lr)?),
        })
    }

    fn backward_step(&mut self, loss: &Tensor) -> candle_core::Result<()> {
        match self {
            Opt::Adam(o) => o.backward_step(loss),
            Opt::Sgd(o) => o.backward_step(loss),
        }
    }
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
        let mut wanted: Vec<Tap> = loss
            .iter()
            .filter(|t| t.loss.needs_teacher())
            .map(|t| t.on)
            .collect();
        wanted.sort();
        wanted.dedup();
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
        Ok(Tensor::from_vec(rows, (idx.len(), *dim), &Device::Cpu)?)
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
    mut on_epoch: impl FnMut(&EpochRecord, usize),
) -> Result<Trained, StageError> {
    let (channels, height, width) = train.shape;
    let input = InputShape {
        channels,
        height,
        width,
    };
    let model = Model::new(&cfg.model, input, &mut Rng::fork(seed, "init"))?;
    let mut opt = Opt::new(&cfg.optimizer, &model)?;
    let mut sampler = BatchSampler::new(
        &cfg.sampler,
        cfg.batch_size,
        groups.unwrap_or(&train.y),
        seed,
    )
    .map_err(anyhow::Error::from)?;
    let mut mining_rng = Rng::fork(seed, "mining");
    let mut mask_rng = Rng::fork(seed, "relation-mask");
    let emb_dim = cfg.model.embedding_dim();
    // Cross-entropy needs labels 0..C−1: a class's position in `train_classes`.
    let class_index: std::collections::HashMap<u32, u32> = cfg
        .data
        .train_classes
        .iter()
        .enumerate()
        .map(|(i, c)| (*c, i as u32))
        .collect();
    let mut epochs = Vec::with_capacity(cfg.epochs);
    let started = Instant::now();

    for epoch in 1..=cfg.epochs {
        let mut sums: BTreeMap<String, f64> = BTreeMap::new();
        let mut steps = 0usize;
        // The sampler drops an incomplete last batch: relational losses see the batch as a
        // whole, and a tiny remainder would give a noisy, differently scaled step.
        for (step, idx) in sampler.epoch().iter().enumerate() {
            let idx = idx.as_slice();
            let x = Tensor::from_vec(train.gather(idx), (idx.len(), train.dim), &Device::Cpu)?;
            let out = model.forward_all(&x, ModelMode::Train)?;
            let mut total: Option<Tensor> = None;
            for term in &cfg.loss {
                let student = out
                    .tap(term.on)
                    .ok_or_else(|| anyhow::anyhow!("the model has no `{}` output", term.on))?;
                // A fresh relation mask for every step and term, from the stage's own stream.
                let mask = term.keep.map(|keep| loss::Mask {
                    keep,
                    seed: mask_rng.next_u64(),
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
                            &mut || mining_rng.next_u64(),
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
                        loss::cc_loss(student, &teacher_batch(teacher)?, cc_kernel(*kernel), mask)?
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
            opt.backward_step(&total)?;
            steps += 1;
        }
        let losses = sums
            .into_iter()
            .map(|(k, v)| (k, v / steps.max(1) as f64))
            .collect();
        let rec = EpochRecord {
            epoch,
            losses,
            wall_s: started.elapsed().as_secs_f64(),
        };
        on_epoch(&rec, cfg.epochs);
        epochs.push(rec);
    }

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

fn cc_kernel(k: Kernel) -> loss::CcKernel {
    match k {
        Kernel::Taylor { p, gamma } => loss::CcKernel::Taylor { p, gamma },
        Kernel::Gaussian { gamma } => loss::CcKernel::Gaussian { gamma },
        Kernel::Bilinear => loss::CcKernel::Bilinear,
    }
}

#[cfg(test)]
mod conv_tests {
    use super::*;
    use crate::ml::data::{self, DataSource, DataSpec};
    use crate::ml::model::ModelSpec;
    use crate::stage::spec::{Loss, LossTerm, Optimizer, TrainConfig};

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
