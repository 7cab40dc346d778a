use candle_core::{Device, Var};

use super::*;
use crate::ml::rng::Rng;

fn randn(dims: &[usize], seed: u64) -> Tensor {
    let mut rng = Rng::new(seed);
    let n = dims.iter().product();
    let v: Vec<f64> = (0..n).map(|_| rng.normal()).collect();
    Tensor::from_vec(v, dims, &Device::Cpu).unwrap()
}

fn values(t: &Tensor) -> Vec<f64> {
    t.flatten_all().unwrap().to_vec1().unwrap()
}

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.dims(), b.dims());
    values(a)
        .iter()
        .zip(values(b))
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}

/// (batch, c_in, side_h, side_w, c_out, k, stride, padding): the shapes the models use,
/// odd and non-square sides, and a batch that is not a multiple of the gradient chunk.
const CASES: [[usize; 8]; 7] = [
    [3, 2, 7, 7, 3, 3, 1, 1],
    [2, 2, 7, 6, 3, 3, 2, 1],
    [10, 3, 8, 6, 4, 3, 2, 1],
    [2, 4, 7, 5, 5, 1, 2, 0],
    [2, 4, 6, 6, 2, 1, 1, 0],
    [1, 1, 5, 5, 2, 3, 2, 0],
    [2, 2, 3, 3, 2, 3, 1, 2],
];

#[test]
fn conv2d_matches_candle_forward_and_backward() {
    for (i, &[b, c, h, w, o, k, stride, pad]) in CASES.iter().enumerate() {
        let seed = 10 * i as u64;
        let x = Var::from_tensor(&randn(&[b, c, h, w], seed)).unwrap();
        let kernel = Var::from_tensor(&randn(&[o, c, k, k], seed + 1)).unwrap();
        let ours = conv2d(x.as_tensor(), kernel.as_tensor(), stride, pad).unwrap();
        let theirs = x.conv2d(&kernel, pad, stride, 1, 1).unwrap();
        assert!(max_diff(&ours, &theirs) < 1e-12, "case {i}");
        // The gradients of Σ r·y, against candle's where its backward is sound (it
        // takes the output padding of a strided convolution from the height alone, so
        // not for sides of different parity), and against central differences.
        let r = randn(ours.dims(), seed + 2);
        let loss = |y: &Tensor| (y * &r).unwrap().sum_all().unwrap();
        let g = loss(&ours).backward().unwrap();
        let (gx, gk) = (g.get(&x).unwrap(), g.get(&kernel).unwrap());
        if stride == 1 || h % 2 == w % 2 {
            let g2 = loss(&theirs).backward().unwrap();
            assert!(max_diff(gx, g2.get(&x).unwrap()) < 1e-10, "case {i} dx");
            assert!(
                max_diff(gk, g2.get(&kernel).unwrap()) < 1e-10,
                "case {i} dk"
            );
        }
        for (var, grad, is_x) in [(&x, gx, true), (&kernel, gk, false)] {
            let base = values(var.as_tensor());
            let grad = values(grad);
            for j in (0..base.len()).step_by(3) {
                let at = |d: f64| {
                    let mut v = base.clone();
                    v[j] += d;
                    let t = Tensor::from_vec(v, var.shape(), &Device::Cpu).unwrap();
                    let y = if is_x {
                        conv2d(&t, kernel.as_tensor(), stride, pad)
                    } else {
                        conv2d(x.as_tensor(), &t, stride, pad)
                    };
                    loss(&y.unwrap()).to_scalar::<f64>().unwrap()
                };
                let fd = (at(1e-6) - at(-1e-6)) / 2e-6;
                assert!(
                    (fd - grad[j]).abs() < 1e-6,
                    "case {i} [{j}]: {} vs {fd}",
                    grad[j]
                );
            }
        }
    }
}

#[test]
fn conv2d_is_bit_identical_across_thread_counts() {
    let x = randn(&[20, 3, 9, 9], 1).to_dtype(DType::F32).unwrap();
    let k = randn(&[8, 3, 3, 3], 2).to_dtype(DType::F32).unwrap();
    let r = randn(&[20, 8, 5, 5], 3).to_dtype(DType::F32).unwrap();
    let run = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| {
            let (xv, kv) = (Var::from_tensor(&x).unwrap(), Var::from_tensor(&k).unwrap());
            let y = conv2d(xv.as_tensor(), kv.as_tensor(), 2, 1).unwrap();
            let g = (&y * &r).unwrap().sum_all().unwrap().backward().unwrap();
            [y, g.get(&xv).unwrap().clone(), g.get(&kv).unwrap().clone()].map(|t| {
                t.flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap()
                    .into_iter()
                    .map(f32::to_bits)
                    .collect::<Vec<_>>()
            })
        })
    };
    let one = run(1);
    for threads in [2, 3, 8] {
        assert_eq!(run(threads), one, "{threads} threads");
    }
}

#[test]
fn conv2d_rejects_what_it_cannot_compute() {
    let x = randn(&[1, 2, 4, 4], 0);
    assert!(
        conv2d(&x, &randn(&[3, 3, 3, 3], 1), 1, 1).is_err(),
        "channels"
    );
    assert!(
        conv2d(&x, &randn(&[3, 2, 3, 2], 1), 1, 1).is_err(),
        "non-square"
    );
    assert!(
        conv2d(&x, &randn(&[3, 2, 7, 7], 1), 1, 1).is_err(),
        "too small"
    );
    let f32k = randn(&[3, 2, 3, 3], 1).to_dtype(DType::F32).unwrap();
    assert!(conv2d(&x, &f32k, 1, 1).is_err(), "mixed dtypes");
}

#[test]
fn max_pool_gradients_go_to_the_first_maximum_of_the_right_window() {
    // 3×3 map: pooling reads only the top-left 2×2 window, whose maximum is 5 at (1, 1).
    let x = Var::from_vec(
        vec![1f32, 2., 9., 3., 5., 9., 9., 9., 9.],
        (1, 1, 3, 3),
        &Device::Cpu,
    )
    .unwrap();
    let y = max_pool2(x.as_tensor()).unwrap();
    assert_eq!(
        y.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        vec![5.0]
    );
    let g = y.sum_all().unwrap().backward().unwrap();
    let g: Vec<f32> = g.get(&x).unwrap().flatten_all().unwrap().to_vec1().unwrap();
    assert_eq!(g, vec![0., 0., 0., 0., 1., 0., 0., 0., 0.]);

    // Ties: the whole gradient goes to the first maximum (PyTorch's choice).
    let x = Var::from_vec(vec![3f32, 3., 1., 3.], (1, 1, 2, 2), &Device::Cpu).unwrap();
    let y = max_pool2(x.as_tensor()).unwrap();
    let g = (y * 2.0).unwrap().sum_all().unwrap().backward().unwrap();
    let g: Vec<f32> = g.get(&x).unwrap().flatten_all().unwrap().to_vec1().unwrap();
    assert_eq!(g, vec![2., 0., 0., 0.]);

    // The forward pass agrees with candle's on even sides, also from a strided input.
    let x = randn(&[2, 3, 8, 8], 4);
    let xt = x.transpose(2, 3).unwrap();
    for x in [&x, &xt] {
        assert_eq!(
            values(&max_pool2(x).unwrap()),
            values(&x.max_pool2d(2).unwrap())
        );
    }
}

/// The fused BatchNorm against `candle_nn::BatchNorm` (PyTorch's formulas, built from
/// tensor ops) in f64: outputs and the gradients of x, γ and β, in both modes.
#[test]
fn batch_norm_matches_candle_nn_in_both_modes() {
    use candle_nn::ModuleT;
    let (b, c, h, w) = (3, 4, 5, 3);
    let x = Var::from_tensor(&randn(&[b, c, h, w], 1).affine(3.0, 7.0).unwrap()).unwrap();
    let gamma = Var::from_tensor(&randn(&[c], 2)).unwrap();
    let beta = Var::from_tensor(&randn(&[c], 3)).unwrap();
    let r = randn(&[b, c, h, w], 4);
    let running_mean = randn(&[c], 5);
    let running_var = (randn(&[c], 6).abs().unwrap() + 0.5).unwrap();
    for train in [true, false] {
        let reference = candle_nn::BatchNorm::new(
            c,
            running_mean.copy().unwrap(),
            running_var.copy().unwrap(),
            gamma.as_tensor().clone(),
            beta.as_tensor().clone(),
            1e-5,
        )
        .unwrap();
        let theirs = reference.forward_t(x.as_tensor(), train).unwrap();
        let (mean, var) = if train {
            channel_stats(x.as_tensor()).unwrap()
        } else {
            (values(&running_mean), values(&running_var))
        };
        let invstd = var.iter().map(|v| 1.0 / (v + 1e-5f64).sqrt()).collect();
        let ours = batch_norm(
            x.as_tensor(),
            gamma.as_tensor(),
            beta.as_tensor(),
            mean,
            invstd,
            train,
        )
        .unwrap();
        assert!(max_diff(&ours, &theirs) < 1e-10, "train {train}");
        let ga = (&ours * &r).unwrap().sum_all().unwrap().backward().unwrap();
        let gb = (&theirs * &r)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        for v in [&x, &gamma, &beta] {
            let d = max_diff(ga.get(v).unwrap(), gb.get(v).unwrap());
            assert!(d < 1e-9, "train {train}: gradient differs by {d}");
        }
    }
}

#[test]
fn batch_norm_is_bit_identical_across_thread_counts() {
    let x = randn(&[6, 5, 7, 7], 1).to_dtype(DType::F32).unwrap();
    let r = randn(&[6, 5, 7, 7], 2).to_dtype(DType::F32).unwrap();
    let run = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| {
            let xv = Var::from_tensor(&x).unwrap();
            let g = Var::from_tensor(&Tensor::ones(5, DType::F32, &Device::Cpu).unwrap()).unwrap();
            let b = Var::from_tensor(&Tensor::zeros(5, DType::F32, &Device::Cpu).unwrap()).unwrap();
            let (mean, var) = channel_stats(xv.as_tensor()).unwrap();
            let invstd = var.iter().map(|v| 1.0 / (v + 1e-5).sqrt()).collect();
            let y = batch_norm(xv.as_tensor(), &g, &b, mean, invstd, true).unwrap();
            let grads = (&y * &r).unwrap().sum_all().unwrap().backward().unwrap();
            [
                y,
                grads.get(&xv).unwrap().clone(),
                grads.get(&g).unwrap().clone(),
            ]
            .map(|t| {
                t.flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap()
                    .into_iter()
                    .map(f32::to_bits)
                    .collect::<Vec<_>>()
            })
        })
    };
    let one = run(1);
    for threads in [2, 5] {
        assert_eq!(run(threads), one, "{threads} threads");
    }
}
