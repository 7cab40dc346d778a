//! Train-level resume tests: N epochs uninterrupted against k epochs, a crash that drops
//! every in-memory object, and a resume from the checkpoint on disk. Weights (BatchNorm
//! running statistics included), per-epoch losses and final metrics must agree bit for bit.

use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};

use super::*;
use crate::ml::data::{self, DataSource, DataSpec, Split};
use crate::ml::loss::Mining;
use crate::ml::model::ModelSpec;
use crate::ml::sampler::SamplerSpec;
use crate::spec::{Kernel, Loss, LossTerm, Optimizer, TrainConfig};
use crate::stage::checkpoint::Checkpoints;

fn data_spec(dim: usize) -> DataSpec {
    DataSpec {
        source: DataSource::Synthetic {
            classes: 6,
            dim,
            train_per_class: 24,
            test_per_class: 4,
            seed: 5,
        },
        train_classes: vec![0, 1, 2, 3],
        eval_classes: vec![4, 5],
        train_limit: None,
        eval_limit: None,
        transforms: Vec::new(),
    }
}

fn config(model: ModelSpec, loss: Vec<LossTerm>, epochs: usize) -> TrainConfig {
    TrainConfig {
        data: data_spec(64),
        model,
        loss,
        optimizer: Optimizer::Adam {
            lr: 3e-3,
            weight_decay: 0.01,
        },
        epochs,
        batch_size: 16,
        seed: 3,
        sampler: SamplerSpec::Random,
    }
}

fn term(loss: Loss, weight: f64, keep: Option<f64>) -> LossTerm {
    LossTerm {
        loss,
        weight,
        on: Tap::Embedding,
        keep,
    }
}

fn split(cfg: &TrainConfig, image: bool) -> Split {
    let mut d = data::load(&cfg.data).unwrap();
    if image {
        d.train.shape = (1, 8, 8);
    }
    d.train
}

/// Everything a run reports, as bits.
#[derive(Debug, PartialEq)]
struct Outcome {
    weights: Vec<(String, Vec<u32>)>,
    losses: Vec<(usize, Vec<(String, u64)>)>,
    metrics: Vec<(String, u64)>,
}

fn outcome(t: &Trained) -> Outcome {
    Outcome {
        weights: t
            .model
            .named_tensors()
            .unwrap()
            .into_iter()
            .map(|(n, t)| {
                let v = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                (n, v.into_iter().map(f32::to_bits).collect())
            })
            .collect(),
        losses: t
            .epochs
            .iter()
            .map(|r| {
                let l = r.losses.iter().map(|(k, v)| (k.clone(), v.to_bits()));
                (r.epoch, l.collect())
            })
            .collect(),
        metrics: t
            .metrics
            .iter()
            .map(|m| (m.name.clone(), m.value.to_bits()))
            .collect(),
    }
}

/// Runs `cfg` with checkpoints in `dir`; with `crash_after = Some(k)` the run dies right
/// after epoch k (unwinding drops the model, optimiser, RNGs and sampler). Returns the
/// result and the epoch it resumed from, if any.
fn run(
    cfg: &TrainConfig,
    train: &Split,
    teacher: Option<&TeacherTable>,
    ckpts: &Checkpoints,
    crash_after: Option<usize>,
) -> Option<(Trained, Option<usize>)> {
    let mut resumed = None;
    let r = catch_unwind(AssertUnwindSafe(|| {
        train_resumable(
            cfg,
            train,
            teacher,
            None,
            cfg.seed,
            Some(ckpts),
            |e| resumed = Some(e),
            |rec, _| {
                if crash_after == Some(rec.epoch) {
                    // Unwinds without the panic hook's message.
                    resume_unwind(Box::new("simulated crash"));
                }
            },
        )
        .unwrap()
    }));
    r.ok().map(|t| (t, resumed))
}

/// Uninterrupted vs. crashed after each of `crashes` in turn (each resume continuing the
/// previous one), then finished.
fn check_resume(
    cfg: &TrainConfig,
    train: &Split,
    teacher: Option<&TeacherTable>,
    crashes: &[usize],
) {
    let reference =
        train_resumable(cfg, train, teacher, None, cfg.seed, None, |_| {}, |_, _| {}).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ckpts = Checkpoints::new(dir.path(), "key");
    let mut expect_resume = None;
    for &k in crashes {
        assert!(run(cfg, train, teacher, &ckpts, Some(k)).is_none());
        assert_eq!(ckpts.epochs(), vec![k], "the latest checkpoint only");
        expect_resume = Some(k);
    }
    let (resumed, from) = run(cfg, train, teacher, &ckpts, None).unwrap();
    assert_eq!(from, expect_resume);
    // Wall times differ; everything else must not.
    assert_eq!(outcome(&resumed), outcome(&reference));
    assert_eq!(resumed.epochs.len(), cfg.epochs);
    assert!(
        resumed
            .epochs
            .windows(2)
            .all(|w| w[0].wall_s <= w[1].wall_s),
        "resumed wall times continue from the checkpoint's"
    );
}

#[test]
fn an_mlp_with_triplet_loss_resumes_bit_identically() {
    let cfg = config(
        ModelSpec::Mlp {
            hidden: vec![32, 16],
            embedding: 8,
            l2norm: true,
            classes: None,
        },
        // Random mining draws from the mining stream at every step.
        vec![term(
            Loss::Triplet {
                margin: 0.2,
                mining: Mining::Random,
            },
            1.0,
            None,
        )],
        6,
    );
    let train = split(&cfg, false);
    check_resume(&cfg, &train, None, &[2, 4]);
}

#[test]
fn a_distill_with_rkd_cc_masking_and_a_class_balanced_sampler_resumes_bit_identically() {
    let teacher_cfg = config(
        ModelSpec::Mlp {
            hidden: vec![32],
            embedding: 16,
            l2norm: true,
            classes: None,
        },
        vec![term(
            Loss::Triplet {
                margin: 0.2,
                mining: Mining::SemiHard,
            },
            1.0,
            None,
        )],
        2,
    );
    let train = split(&teacher_cfg, false);
    let teacher = super::train(&teacher_cfg, &train, None, None, 1, |_, _| {}).unwrap();
    let mut cfg = config(
        ModelSpec::Mlp {
            hidden: vec![16],
            embedding: 8,
            l2norm: false,
            classes: None,
        },
        vec![
            term(
                Loss::Cc {
                    kernel: Kernel::Taylor { p: 2, gamma: 0.4 },
                },
                1.0,
                Some(0.5),
            ),
            term(Loss::RkdA, 2.0, Some(0.3)),
            term(Loss::RkdD, 1.0, Some(0.7)),
            term(
                Loss::Triplet {
                    margin: 0.1,
                    mining: Mining::DistanceWeighted,
                },
                0.5,
                None,
            ),
        ],
        5,
    );
    cfg.sampler = SamplerSpec::ClassBalanced {
        classes_per_batch: 2,
        per_class: 6,
    };
    let table = TeacherTable::new(&teacher.model, &train, &cfg.loss).unwrap();
    check_resume(&cfg, &train, Some(&table), &[3]);
}

#[test]
fn a_convnet_with_batchnorm_resumes_bit_identically() {
    let mut cfg = config(
        ModelSpec::Convnet {
            channels: vec![4, 8],
            embedding: 8,
            l2norm: false,
            classes: Some(4),
        },
        vec![term(Loss::Ce, 1.0, None)],
        4,
    );
    let train = split(&cfg, true);
    check_resume(&cfg, &train, None, &[1, 2]);
    // And with plain SGD (whose only state is the step count).
    cfg.optimizer = Optimizer::Sgd { lr: 0.05 };
    check_resume(&cfg, &train, None, &[2]);
    // The running statistics did move (so the test would see them lost).
    let t = super::train(&cfg, &train, None, None, cfg.seed, |_, _| {}).unwrap();
    let mean = t
        .model
        .named_tensors()
        .unwrap()
        .into_iter()
        .find(|(n, _)| n.ends_with(".running_mean"))
        .unwrap()
        .1;
    let v = mean.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert!(v.iter().any(|x| *x != 0.0), "{v:?}");
}

#[test]
fn a_corrupt_checkpoint_is_never_used_and_training_restarts_cleanly() {
    let cfg = config(
        ModelSpec::Mlp {
            hidden: vec![16],
            embedding: 8,
            l2norm: true,
            classes: None,
        },
        vec![term(
            Loss::Triplet {
                margin: 0.2,
                mining: Mining::Random,
            },
            1.0,
            None,
        )],
        4,
    );
    let train = split(&cfg, false);
    let reference = super::train(&cfg, &train, None, None, cfg.seed, |_, _| {}).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ckpts = Checkpoints::new(dir.path(), "key");
    assert!(run(&cfg, &train, None, &ckpts, Some(2)).is_none());
    let weights = ckpts.root().join("epoch-2").join("model.safetensors");
    let mut bytes = std::fs::read(&weights).unwrap();
    let n = bytes.len();
    bytes[n - 3] ^= 0x01;
    std::fs::write(&weights, bytes).unwrap();
    let (t, from) = run(&cfg, &train, None, &ckpts, None).unwrap();
    assert_eq!(
        from, None,
        "the corrupt checkpoint must not be resumed from"
    );
    assert_eq!(outcome(&t), outcome(&reference));
    // Replaced by the restarted run's own checkpoints.
    assert_eq!(ckpts.epochs(), vec![3]);
}
