//! A synthetic data set generated in code: Gaussian classes in the first dimensions, noise in
//! the rest. For tests and for trying the engine without downloading anything.

use super::*;

/// Number of leading dimensions that carry the class signal in the synthetic set.
pub(super) const SIGNAL_DIMS: usize = 8;

pub(super) fn synthetic(
    classes: u32,
    dim: usize,
    train_per_class: usize,
    test_per_class: usize,
    seed: u64,
) -> (Split, Split) {
    let signal = SIGNAL_DIMS.min(dim);
    let mut proto_rng = Rng::fork(seed, "synthetic-prototypes");
    let protos: Vec<Vec<f32>> = (0..classes)
        .map(|_| {
            (0..dim)
                .map(|d| {
                    if d < signal {
                        (proto_rng.normal() * 1.0) as f32
                    } else {
                        0.0
                    }
                })
                .collect()
        })
        .collect();
    let make = |per_class: usize, stream: &str| {
        let mut rng = Rng::fork(seed, stream);
        let mut x = Vec::with_capacity(classes as usize * per_class * dim);
        let mut y = Vec::with_capacity(classes as usize * per_class);
        // Interleave classes so that any prefix (train_limit) keeps every class.
        for _ in 0..per_class {
            for (c, p) in protos.iter().enumerate() {
                for (d, &pd) in p.iter().enumerate() {
                    let sd = if d < signal { 0.35 } else { 1.5 };
                    x.push(pd + (rng.normal() * sd) as f32);
                }
                y.push(c as u32);
            }
        }
        Split {
            x,
            y,
            dim,
            shape: (1, 1, dim),
        }
    };
    (
        make(train_per_class, "synthetic-train"),
        make(test_per_class, "synthetic-test"),
    )
}
