//! The linear probe: a softmax classifier trained on frozen embeddings, the standard
//! measure of how linearly separable a domain's classes are in a learned embedding.

use candle_core::{Tensor, Var};

use crate::ml::device;
use candle_nn::{AdamW, Optimizer, ParamsAdamW};

use super::loss::ce_loss;
use super::rng::Rng;

/// Rows of `dim` features with labels; labels need not be contiguous.
pub struct Features<'a> {
    pub x: &'a [f32],
    pub y: &'a [u32],
    pub dim: usize,
}

/// What the probe reached.
#[derive(Debug, Clone, PartialEq)]
pub struct ProbeResult {
    /// Top-1 accuracy on the test features.
    pub accuracy: f64,
    /// Mean cross-entropy over the last epoch.
    pub final_loss: f64,
}

/// Trains `W x + b` with AdamW on `train` and returns its top-1 accuracy on `test`. Weights
/// start at zero and batches are shuffled from `seed`, so the result is deterministic.
pub fn linear_probe(
    train: &Features,
    test: &Features,
    epochs: usize,
    lr: f64,
    batch_size: usize,
    seed: u64,
) -> candle_core::Result<ProbeResult> {
    let mut classes: Vec<u32> = train.y.to_vec();
    classes.sort_unstable();
    classes.dedup();
    let index = |y: u32| classes.binary_search(&y).ok().map(|i| i as u32);
    let c = classes.len().max(1);
    let d = train.dim;
    let dev = device::compute();
    let w = Var::from_tensor(&Tensor::zeros((d, c), candle_core::DType::F32, &dev)?)?;
    let b = Var::from_tensor(&Tensor::zeros(c, candle_core::DType::F32, &dev)?)?;
    let mut opt = AdamW::new(
        vec![w.clone(), b.clone()],
        ParamsAdamW {
            lr,
            weight_decay: 0.0,
            ..Default::default()
        },
    )?;
    let n = train.y.len();
    let bs = batch_size.clamp(1, n.max(1));
    let mut order: Vec<usize> = (0..n).collect();
    let mut rng = Rng::fork(seed, "probe");
    let mut final_loss = 0.0;
    for _ in 0..epochs {
        rng.shuffle(&mut order);
        let (mut sum, mut steps) = (0.0, 0usize);
        for idx in order.chunks(bs) {
            let mut rows = Vec::with_capacity(idx.len() * d);
            for &i in idx {
                rows.extend_from_slice(&train.x[i * d..(i + 1) * d]);
            }
            let labels: Vec<u32> = idx
                .iter()
                .map(|&i| index(train.y[i]).expect("a training label"))
                .collect();
            let x = Tensor::from_vec(rows, (idx.len(), d), &dev)?;
            let logits = x.matmul(w.as_tensor())?.broadcast_add(b.as_tensor())?;
            let loss = ce_loss(&logits, &labels)?;
            sum += f64::from(loss.to_scalar::<f32>()?);
            steps += 1;
            opt.backward_step(&loss)?;
        }
        final_loss = sum / steps.max(1) as f64;
    }
    let m = test.y.len();
    if m == 0 {
        return Ok(ProbeResult {
            accuracy: 0.0,
            final_loss,
        });
    }
    let x = Tensor::from_slice(test.x, (m, test.dim), &dev)?;
    let pred = x
        .matmul(w.as_tensor())?
        .broadcast_add(b.as_tensor())?
        .argmax(1)?
        .to_vec1::<u32>()?;
    // A test label the probe never saw counts as a miss.
    let correct = pred
        .iter()
        .zip(test.y)
        .filter(|(p, y)| index(**y) == Some(**p))
        .count();
    Ok(ProbeResult {
        accuracy: correct as f64 / m as f64,
        final_loss,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Three classes on three axes with noise: linearly separable, so the probe must reach
    /// near-perfect accuracy; a shuffled-label copy must not.
    #[test]
    fn separable_classes_are_found_and_noise_is_not() {
        let mut rng = Rng::new(3);
        let mut make = |n: usize| {
            let mut x = Vec::new();
            let mut y = Vec::new();
            for i in 0..n {
                let c = (i % 3) as u32;
                for k in 0..4 {
                    let signal = if k == c as usize { 2.0 } else { 0.0 };
                    x.push((signal + 0.3 * rng.normal()) as f32);
                }
                y.push(c + 5);
            }
            (x, y)
        };
        let (tx, ty) = make(300);
        let (ex, ey) = make(150);
        let train = Features {
            x: &tx,
            y: &ty,
            dim: 4,
        };
        let test = Features {
            x: &ex,
            y: &ey,
            dim: 4,
        };
        let r = linear_probe(&train, &test, 30, 0.05, 32, 1).unwrap();
        assert!(r.accuracy > 0.97, "{r:?}");
        let again = linear_probe(&train, &test, 30, 0.05, 32, 1).unwrap();
        assert_eq!(r, again, "deterministic");

        let mut shuffled = ty.clone();
        Rng::new(9).shuffle(&mut shuffled);
        let noise = Features {
            x: &tx,
            y: &shuffled,
            dim: 4,
        };
        let r = linear_probe(&noise, &test, 30, 0.05, 32, 1).unwrap();
        assert!(r.accuracy < 0.6, "{r:?}");
    }
}
