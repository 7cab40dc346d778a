//! `train` and `distill`: mini-batch training of a model on a weighted loss mix.

use std::collections::BTreeMap;
use std::time::Instant;

use candle_core::{Device, Tensor};
use candle_nn::{AdamW, Optimizer as _, ParamsAdamW, SGD};

use super::spec::{EpochRecord, LossTerm, Metric, Optimizer, TrainConfig};
use super::StageError;
use crate::ml::data::Split;
use crate::ml::loss;
use crate::ml::model::Model;
use crate::ml::rng::Rng;

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

/// Per-sample teacher embeddings of the training split, computed once per stage: the
/// teacher is frozen and the data un-augmented, so every batch just gathers rows.
pub struct TeacherTable {
    pub emb: Vec<f32>,
    pub dim: usize,
}

impl TeacherTable {
    pub fn new(teacher: &Model, train: &Split) -> candle_core::Result<Self> {
        Ok(Self {
            emb: teacher.embed_all(&train.x, train.len(), 1024)?,
            dim: teacher.file().spec.embedding_dim(),
        })
    }
}

pub fn train(
    cfg: &TrainConfig,
    train: &Split,
    teacher: Option<&TeacherTable>,
    seed: u64,
    mut on_epoch: impl FnMut(&EpochRecord, usize),
) -> Result<Trained, StageError> {
    let model = Model::new(&cfg.model, train.dim, &mut Rng::fork(seed, "init"))?;
    let mut opt = Opt::new(&cfg.optimizer, &model)?;
    let mut batch_rng = Rng::fork(seed, "batches");
    let mut mining_rng = Rng::fork(seed, "mining");
    let n = train.len();
    let bs = cfg.batch_size.min(n);
    let emb_dim = cfg.model.embedding_dim();
    let mut epochs = Vec::with_capacity(cfg.epochs);
    let mut order: Vec<usize> = (0..n).collect();
    let started = Instant::now();

    for epoch in 1..=cfg.epochs {
        batch_rng.shuffle(&mut order);
        let mut sums: BTreeMap<String, f64> = BTreeMap::new();
        let mut steps = 0usize;
        // Drop the last incomplete batch: relational losses see the batch as a whole, and a
        // tiny remainder would give a noisy, differently scaled step.
        for (step, idx) in order.chunks_exact(bs).enumerate() {
            let x = Tensor::from_vec(train.gather(idx), (idx.len(), train.dim), &Device::Cpu)?;
            let emb = model.forward(&x)?;
            let teacher_batch = match teacher {
                Some(t) => {
                    let mut rows = Vec::with_capacity(idx.len() * t.dim);
                    for &i in idx {
                        rows.extend_from_slice(&t.emb[i * t.dim..(i + 1) * t.dim]);
                    }
                    Some(Tensor::from_vec(rows, (idx.len(), t.dim), &Device::Cpu)?)
                }
                None => None,
            };
            let mut total: Option<Tensor> = None;
            for term in &cfg.loss {
                let value = match term {
                    LossTerm::Triplet { margin, mining, .. } => {
                        let labels: Vec<u32> = idx.iter().map(|&i| train.y[i]).collect();
                        let e = emb.detach().flatten_all()?.to_vec1::<f32>()?;
                        let triplets = loss::mine_triplets(
                            loss::MatRef::new(&e, idx.len(), emb_dim)
                                .map_err(anyhow::Error::from)?,
                            &labels,
                            *mining,
                            &mut || mining_rng.next_u64(),
                        );
                        loss::triplet_loss(&emb, &triplets, *margin)?
                    }
                    LossTerm::RkdD { .. } => {
                        let t = teacher_batch.as_ref().ok_or(StageError::NoTeacher)?;
                        loss::rkd_distance_loss(&emb, t)?
                    }
                    LossTerm::RkdA { .. } => {
                        let t = teacher_batch.as_ref().ok_or(StageError::NoTeacher)?;
                        loss::rkd_angle_loss(&emb, t)?
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
                let weighted = (value * term.weight())?;
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
