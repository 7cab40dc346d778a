use candle_core::{DType, Device, Tensor};
use candle_nn::{AdamW, Optimizer, ParamsAdamW, VarMap};

use super::*;
// The conv layers are tested through the models they make up (tests may look upward).
use crate::ml::model::{InputShape, Model, ModelError, ModelSpec, Tap};
use crate::ml::rng::Rng;

fn convnet(classes: Option<usize>) -> ModelSpec {
    ModelSpec::Convnet {
        channels: vec![4, 6],
        embedding: 5,
        l2norm: true,
        classes,
    }
}

fn resnet8(classes: Option<usize>) -> ModelSpec {
    ModelSpec::Resnet {
        depth: 8,
        width: 4,
        embedding: 5,
        l2norm: false,
        classes,
    }
}

fn shape(c: usize, s: usize) -> InputShape {
    InputShape {
        channels: c,
        height: s,
        width: s,
    }
}

/// A batch of `b` rows of `input.dim()` features, drawn from `seed`.
fn batch(b: usize, input: InputShape, seed: u64) -> Tensor {
    let mut rng = Rng::new(seed);
    let v: Vec<f32> = (0..b * input.dim()).map(|_| rng.normal() as f32).collect();
    Tensor::from_vec(v, (b, input.dim()), &Device::Cpu).unwrap()
}

fn bits(t: &Tensor) -> Vec<u32> {
    t.flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
        .into_iter()
        .map(f32::to_bits)
        .collect()
}

fn tensor_of(m: &Model, name: &str) -> Tensor {
    m.named_tensors()
        .unwrap()
        .into_iter()
        .find(|(n, _)| n == name)
        .unwrap_or_else(|| panic!("no tensor {name}"))
        .1
}

#[test]
fn every_tap_has_its_declared_shape() {
    for spec in [convnet(Some(3)), resnet8(Some(3))] {
        for input in [shape(1, 8), shape(3, 8)] {
            let m = Model::new(&spec, input, &mut Rng::new(1)).unwrap();
            let x = batch(4, input, 2);
            let taps = spec.taps();
            assert_eq!(taps.len(), 2 + spec.hidden_taps(), "{spec:?}");
            for mode in [ModelMode::Train, ModelMode::Eval] {
                let out = m.forward_all(&x, mode).unwrap();
                for (tap, width) in &taps {
                    let t = out.tap(*tap).unwrap();
                    assert_eq!(t.dims(), &[4, *width], "{spec:?} {input} {tap}");
                }
                assert!(out.tap(Tap::Hidden(spec.hidden_taps() + 1)).is_none());
            }
            let rows = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let all: Vec<Tap> = taps.iter().map(|(t, _)| *t).collect();
            let bufs = m.tap_all(&rows, 4, 3, &all).unwrap();
            for ((tap, width), buf) in taps.iter().zip(&bufs) {
                assert_eq!(buf.len(), 4 * width, "{tap}");
            }
            // Eval mode: a row's outputs do not depend on the rows it is batched with.
            assert_eq!(m.tap_all(&rows, 4, 1, &all).unwrap(), bufs);
        }
    }
    assert_eq!(convnet(None).hidden_widths(), vec![4, 6]);
    assert_eq!(resnet8(None).hidden_widths(), vec![4, 8, 16]);
}

#[test]
fn same_seed_same_weights() {
    for spec in [convnet(Some(2)), resnet8(Some(2))] {
        let input = shape(3, 8);
        let a = Model::new(&spec, input, &mut Rng::new(9)).unwrap();
        let b = Model::new(&spec, input, &mut Rng::new(9)).unwrap();
        let c = Model::new(&spec, input, &mut Rng::new(10)).unwrap();
        let (ta, tb, tc) = (
            a.named_tensors().unwrap(),
            b.named_tensors().unwrap(),
            c.named_tensors().unwrap(),
        );
        let mut differ = false;
        for (((na, xa), (nb, xb)), (_, xc)) in ta.iter().zip(&tb).zip(&tc) {
            assert_eq!(na, nb);
            assert_eq!(bits(xa), bits(xb), "{na}");
            differ |= bits(xa) != bits(xc);
        }
        assert!(differ, "another seed gives other weights");
    }
}

#[test]
fn parameter_names_are_pytorch_like() {
    let m = Model::new(&resnet8(Some(2)), shape(3, 8), &mut Rng::new(1)).unwrap();
    let names: Vec<String> = m
        .named_tensors()
        .unwrap()
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    for want in [
        "conv1.weight",
        "bn1.running_mean",
        "layer1.0.conv1.weight",
        "layer1.0.bn2.running_var",
        "layer2.0.downsample.0.weight",
        "layer3.0.downsample.1.bias",
        "embed.weight",
        "classifier.bias",
    ] {
        assert!(names.iter().any(|n| n == want), "{want} not in {names:?}");
    }
    // Identity shortcuts in stage 1; no conv biases in front of a BatchNorm.
    assert!(!names.iter().any(|n| n.starts_with("layer1.0.downsample")));
    assert!(!names
        .iter()
        .any(|n| n.contains("conv") && n.ends_with(".bias")));
    // Kaiming-uniform bound 1/√fan_in: stem fan_in = 3·3·3.
    let w = tensor_of(&m, "conv1.weight");
    let max = w
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(
        max <= 1.0 / 27f32.sqrt() && max > 0.5 / 27f32.sqrt(),
        "{max}"
    );
}

#[test]
fn vars_exclude_running_stats() {
    for spec in [convnet(Some(2)), resnet8(None)] {
        let m = Model::new(&spec, shape(1, 8), &mut Rng::new(1)).unwrap();
        let all = m.named_tensors().unwrap();
        let buffers = all
            .iter()
            .filter(|(n, _)| n.ends_with(".running_mean") || n.ends_with(".running_var"))
            .count();
        assert!(buffers > 0);
        assert_eq!(m.vars().len(), all.len() - buffers, "{spec:?}");
        // The optimiser's vars are the trainable ones: a training step leaves the running
        // statistics to the forward pass alone.
        let vars = m.vars();
        let x = batch(4, shape(1, 8), 3);
        let out = m.forward_all(&x, ModelMode::Train).unwrap();
        let mut loss = out.embedding.sum_all().unwrap();
        if let Some(l) = &out.logits {
            loss = (loss + l.sum_all().unwrap()).unwrap();
        }
        let grads = loss.backward().unwrap();
        for v in &vars {
            assert!(grads.get(v.as_tensor()).is_some(), "a var without gradient");
        }
    }
}

#[test]
fn batch_norm_matches_pytorch_in_both_modes() {
    let varmap = VarMap::new();
    let mut rng = Rng::new(0);
    let bn = {
        let mut vars = varmap.data().lock().unwrap();
        let mut init = ParamInit::new(&mut vars, &mut rng);
        BatchNorm::init(&mut init, "bn", 2).unwrap()
    };
    // 2 samples × 2 channels × 1×2: channel 0 holds 1,2,3,4; channel 1 holds 0,0,0,8.
    let x = Tensor::from_vec(
        vec![1f32, 2., 0., 0., 3., 4., 0., 8.],
        (2, 2, 1, 2),
        &Device::Cpu,
    )
    .unwrap();
    let y = bn.forward(&x, ModelMode::Train).unwrap();
    let y: Vec<f32> = y.flatten_all().unwrap().to_vec1().unwrap();
    // Channel 0: mean 2.5, biased var 1.25, unbiased 5/3.
    let s0 = (1.25f32 + 1e-5).sqrt();
    for (got, want) in
        [y[0], y[1], y[4], y[5]]
            .iter()
            .zip([-1.5 / s0, -0.5 / s0, 0.5 / s0, 1.5 / s0])
    {
        assert!((got - want).abs() < 1e-5, "{got} vs {want}");
    }
    let stat = |name: &str| -> Vec<f32> {
        varmap.data().lock().unwrap()[name]
            .as_tensor()
            .to_vec1()
            .unwrap()
    };
    // running = 0.9 · running + 0.1 · batch statistic (variance unbiased).
    let mean = stat("bn.running_mean");
    let var = stat("bn.running_var");
    assert!(
        (mean[0] - 0.25).abs() < 1e-6 && (mean[1] - 0.2).abs() < 1e-6,
        "{mean:?}"
    );
    assert!((var[0] - (0.9 + 0.1 * 5.0 / 3.0)).abs() < 1e-6, "{var:?}");
    assert!((var[1] - (0.9 + 0.1 * 16.0)).abs() < 1e-5, "{var:?}");
    // Eval mode normalises with the running statistics.
    let e: Vec<f32> = bn
        .forward(&x, ModelMode::Eval)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let want = (1.0 - 0.25) / (var[0] + 1e-5).sqrt();
    assert!((e[0] - want).abs() < 1e-6, "{} vs {want}", e[0]);
    // One value per channel cannot give an unbiased variance.
    let one = Tensor::zeros((1, 2, 1, 1), DType::F32, &Device::Cpu).unwrap();
    assert!(bn.forward(&one, ModelMode::Train).is_err());
    assert!(bn.forward(&one, ModelMode::Eval).is_ok());
}

#[test]
fn train_mode_differs_from_eval_and_moves_running_stats() {
    for spec in [convnet(None), resnet8(None)] {
        let input = shape(1, 8);
        let m = Model::new(&spec, input, &mut Rng::new(4)).unwrap();
        let x = batch(4, input, 5);
        let eval_before = bits(&m.forward(&x, ModelMode::Eval).unwrap());
        // Eval passes leave the running statistics alone.
        assert_eq!(bits(&m.forward(&x, ModelMode::Eval).unwrap()), eval_before);
        let mean_before = bits(&tensor_of(&m, "bn1.running_mean"));
        let var_before = bits(&tensor_of(&m, "bn1.running_var"));
        let train = bits(&m.forward(&x, ModelMode::Train).unwrap());
        assert_ne!(train, eval_before, "{spec:?}");
        assert_ne!(bits(&tensor_of(&m, "bn1.running_mean")), mean_before);
        assert_ne!(bits(&tensor_of(&m, "bn1.running_var")), var_before);
        assert_ne!(
            bits(&m.forward(&x, ModelMode::Eval).unwrap()),
            eval_before,
            "eval uses the updated running statistics"
        );
    }
}

#[test]
fn save_load_roundtrip_restores_running_stats() {
    for spec in [convnet(Some(3)), resnet8(Some(3))] {
        let input = shape(3, 8);
        let m = Model::new(&spec, input, &mut Rng::new(6)).unwrap();
        for s in 0..3 {
            m.forward_all(&batch(4, input, 10 + s), ModelMode::Train)
                .unwrap();
        }
        let dir = tempfile::tempdir().unwrap();
        m.save(dir.path()).unwrap();
        let loaded = Model::load(dir.path()).unwrap();
        assert_eq!(loaded.input_shape(), input);
        assert_eq!(loaded.file(), m.file());
        for ((na, ta), (nb, tb)) in m
            .named_tensors()
            .unwrap()
            .iter()
            .zip(&loaded.named_tensors().unwrap())
        {
            assert_eq!(na, nb);
            assert_eq!(bits(ta), bits(tb), "{na}");
        }
        let x = batch(4, input, 20);
        let (a, b) = (
            m.forward_all(&x, ModelMode::Eval).unwrap(),
            loaded.forward_all(&x, ModelMode::Eval).unwrap(),
        );
        for (tap, _) in spec.taps() {
            assert_eq!(
                bits(a.tap(tap).unwrap()),
                bits(b.tap(tap).unwrap()),
                "{tap}"
            );
        }
        // The checkpoint holds the moved running statistics under PyTorch's names,
        // readable without candle.
        let bytes = std::fs::read(dir.path().join(crate::ml::model::WEIGHTS_FILE)).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let rm = st.tensor("bn1.running_mean").unwrap();
        assert!(rm.data().iter().any(|b| *b != 0), "running mean was saved");
        assert!(st.tensor("bn1.running_var").is_ok());
    }
}

/// Two classes of 1×8×8 images: bright left half or bright right half, plus noise.
fn toy(n: usize, seed: u64) -> (Tensor, Tensor) {
    let mut rng = Rng::new(seed);
    let mut x = Vec::with_capacity(n * 64);
    let mut y = Vec::with_capacity(n);
    for i in 0..n {
        let class = (i % 2) as u32;
        for _r in 0..8 {
            for c in 0..8 {
                let bright = (c < 4) == (class == 0);
                x.push(if bright { 1.0 } else { 0.0 } + 0.3 * rng.normal() as f32);
            }
        }
        y.push(class);
    }
    (
        Tensor::from_vec(x, (n, 64), &Device::Cpu).unwrap(),
        Tensor::from_vec(y, n, &Device::Cpu).unwrap(),
    )
}

#[test]
fn adamw_lowers_the_loss_on_a_toy_problem() {
    for spec in [convnet(Some(2)), resnet8(Some(2))] {
        let m = Model::new(&spec, shape(1, 8), &mut Rng::new(3)).unwrap();
        let mut opt = AdamW::new(
            m.vars(),
            ParamsAdamW {
                lr: 1e-2,
                ..Default::default()
            },
        )
        .unwrap();
        let (x, y) = toy(8, 1);
        let loss = |m: &Model| {
            let logits = m.forward_all(&x, ModelMode::Train).unwrap().logits.unwrap();
            candle_nn::loss::cross_entropy(&logits, &y).unwrap()
        };
        let first = loss(&m).to_scalar::<f32>().unwrap();
        for _ in 0..12 {
            opt.backward_step(&loss(&m)).unwrap();
        }
        let last = loss(&m).to_scalar::<f32>().unwrap();
        assert!(last < 0.5 * first, "{spec:?}: {first} → {last}");
    }
}

#[test]
fn inputs_the_model_cannot_take_are_refused() {
    let deep = ModelSpec::Convnet {
        channels: vec![2; 4],
        embedding: 2,
        l2norm: false,
        classes: None,
    };
    let e = Model::new(&deep, shape(1, 8), &mut Rng::new(0))
        .err()
        .unwrap();
    assert!(matches!(e, ModelError::Input { .. }), "{e}");
    assert!(e.to_string().contains("at most 3"), "{e}");
    assert!(Model::new(&deep, shape(1, 16), &mut Rng::new(0)).is_ok());
    // Non-square, odd sides train (our conv2d backward takes any shape).
    let odd = InputShape {
        channels: 1,
        height: 8,
        width: 7,
    };
    let m = Model::new(&resnet8(None), odd, &mut Rng::new(0)).unwrap();
    let loss = m.forward(&batch(4, odd, 1), ModelMode::Train).unwrap();
    loss.sum_all().unwrap().backward().unwrap();
    let e = Model::new(&resnet8(None), shape(1, 0), &mut Rng::new(0))
        .err()
        .unwrap();
    assert!(matches!(e, ModelError::Input { .. }), "{e}");
    // Odd square sides are fine, for both.
    for spec in [convnet(None), resnet8(None)] {
        let m = Model::new(&spec, shape(1, 7), &mut Rng::new(0)).unwrap();
        let x = batch(4, shape(1, 7), 1);
        let loss = m.forward(&x, ModelMode::Train).unwrap().sum_all().unwrap();
        loss.backward().unwrap();
    }
}

/// conv (stride 2) → BN (train) → ReLU → max-pool, in f64, against central differences:
/// checks candle's conv2d and BatchNorm backward (strided, odd and even sides) and ours.
#[test]
fn conv_bn_pool_gradients_match_finite_differences() {
    let dev = Device::Cpu;
    let mut rng = Rng::new(11);
    let mut draw = |n: usize| -> Vec<f64> { (0..n).map(|_| rng.normal()).collect() };
    for (side, stride) in [(7, 2), (8, 2), (6, 1)] {
        let x = candle_core::Var::from_vec(draw(2 * 2 * side * side), (2, 2, side, side), &dev)
            .unwrap();
        let k = candle_core::Var::from_vec(draw(3 * 2 * 9), (3, 2, 3, 3), &dev).unwrap();
        let gamma = Tensor::from_vec(draw(3), 3, &dev).unwrap();
        let beta = Tensor::from_vec(draw(3), 3, &dev).unwrap();
        let stat = |v: f64| candle_core::Var::from_vec(vec![v; 3], 3, &dev).unwrap();
        let (rm, rv) = (stat(0.0), stat(1.0));
        let bn = BatchNorm::new(
            3,
            gamma,
            beta,
            rm.as_tensor().clone(),
            rv.as_tensor().clone(),
        )
        .unwrap();
        let out_side = (side - 1) / stride + 1;
        let r = Tensor::from_vec(
            draw(2 * 3 * (out_side / 2) * (out_side / 2)),
            (2, 3, out_side / 2, out_side / 2),
            &dev,
        )
        .unwrap();
        let f = |x: &Tensor, k: &Tensor| -> Tensor {
            let conv = Conv::new(k.clone(), stride, 1);
            let h = bn
                .forward(&conv.forward(x).unwrap(), ModelMode::Train)
                .unwrap();
            let y = max_pool2(&h.relu().unwrap()).unwrap();
            (y * &r).unwrap().sum_all().unwrap()
        };
        let grads = f(x.as_tensor(), k.as_tensor()).backward().unwrap();
        for (var, is_x) in [(&x, true), (&k, false)] {
            let g: Vec<f64> = grads
                .get(var)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            let base: Vec<f64> = var.as_tensor().flatten_all().unwrap().to_vec1().unwrap();
            for i in (0..base.len()).step_by(5) {
                let eps = 1e-6;
                let at = |d: f64| {
                    let mut v = base.clone();
                    v[i] += d;
                    let t = Tensor::from_vec(v, var.shape(), &dev).unwrap();
                    let value = if is_x {
                        f(&t, k.as_tensor())
                    } else {
                        f(x.as_tensor(), &t)
                    };
                    value.to_scalar::<f64>().unwrap()
                };
                let fd = (at(eps) - at(-eps)) / (2.0 * eps);
                assert!(
                    (fd - g[i]).abs() < 1e-5 * (1.0 + fd.abs()),
                    "side {side} stride {stride} {} [{i}]: {} vs {fd}",
                    if is_x { "x" } else { "kernel" },
                    g[i]
                );
            }
        }
    }
}

/// One AdamW step on a batch of 128, per model and input shape; and an FNV hash of the
/// parameters after two steps, to compare across thread counts. Timing only, no
/// assertions:
/// `RAYON_NUM_THREADS=2 cargo test --release --lib conv_step_bench -- --ignored --nocapture`
#[test]
#[ignore = "timing, run by hand"]
fn conv_step_bench() {
    use std::time::Instant;
    let specs = [
        (
            "convnet [32,64]",
            ModelSpec::Convnet {
                channels: vec![32, 64],
                embedding: 128,
                l2norm: true,
                classes: Some(10),
            },
        ),
        (
            "resnet-8 w16",
            ModelSpec::Resnet {
                depth: 8,
                width: 16,
                embedding: 128,
                l2norm: true,
                classes: Some(10),
            },
        ),
    ];
    let threads = candle_core::utils::get_num_threads();
    for input in [shape(1, 28), shape(3, 32)] {
        for (name, spec) in &specs {
            let m = Model::new(spec, input, &mut Rng::new(1)).unwrap();
            let mut opt = AdamW::new(m.vars(), ParamsAdamW::default()).unwrap();
            let x = batch(128, input, 2);
            let y = Tensor::from_vec(
                (0..128u32).map(|i| i % 10).collect::<Vec<_>>(),
                128,
                &Device::Cpu,
            )
            .unwrap();
            let loss = |m: &Model| {
                let logits = m.forward_all(&x, ModelMode::Train).unwrap().logits.unwrap();
                candle_nn::loss::cross_entropy(&logits, &y).unwrap()
            };
            // Two steps for the determinism hash (also the warm-up).
            for _ in 0..2 {
                opt.backward_step(&loss(&m)).unwrap();
            }
            let mut h: u64 = 0xcbf2_9ce4_8422_2325;
            for (_, t) in m.named_tensors().unwrap() {
                for b in bits(&t) {
                    h = (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01B3);
                }
            }
            let steps = 3;
            let (mut fwd, mut bwd) = (0.0, 0.0);
            for _ in 0..steps {
                let t0 = Instant::now();
                let l = loss(&m);
                let _ = l.to_scalar::<f32>().unwrap();
                let t1 = Instant::now();
                opt.backward_step(&l).unwrap();
                fwd += (t1 - t0).as_secs_f64();
                bwd += t1.elapsed().as_secs_f64();
            }
            let ms = |s: f64| 1e3 * s / steps as f64;
            println!(
                "BENCH threads={threads} {name} on {input}: step {:.0} ms (forward {:.0}, \
                 backward+update {:.0}); params after 2 steps fnv={h:016x}",
                ms(fwd + bwd),
                ms(fwd),
                ms(bwd)
            );
        }
    }
}
