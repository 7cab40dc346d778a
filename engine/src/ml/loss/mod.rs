//! Relational knowledge-distillation losses with hand-written backward passes.
//!
//! The semantics follow the reference code bit for bit where it matters (see
//! `engine/tests/data/golden/FORMAT.md`): RKD-D and RKD-A are lenscloth/RKD `metric/loss.py`
//! (`RkdDistance`, `RKdAngle`), the triplet baseline is torch's
//! `F.triplet_margin_loss(p=2, eps=1e-6, swap=False, reduction="mean")`, SP is RepDistiller's
//! `Similarity`, CC is the paper's Taylor-expanded Gaussian kernel (KD-Zoo `CC`), KD is
//! RepDistiller's `DistillKL`. [`sp_torchdistill`], [`cc_torchdistill`] and
//! [`cc_repdistiller`] reproduce the other public implementations, whose semantics differ
//! from the papers', so a user can check results against whichever reference they have.
//!
//! Layers:
//! * pure, float-generic functions on row-major matrices ([`rkd_distance`], [`rkd_angle`],
//!   [`sp`], [`cc`], [`kd`], [`ce`], [`triplet`], ...) that return the loss value and
//!   dLoss/dStudent. They are the single source of truth; everything else wraps them.
//!   Keeping them free of candle makes them testable in f64 against the golden vectors and
//!   reusable outside a tensor graph.
//! * relation masking ([`Mask`]): [`rkd_distance_masked`], [`rkd_angle_masked`],
//!   [`sp_masked`] and [`cc_masked`] compare a seeded random subset of the relations and
//!   average over the kept ones (the "mask relations as BERT masks tokens" experiment).
//! * [`mine_triplets`], the batch-level triplet sampler.
//! * candle adapters ([`rkd_distance_loss`], [`rkd_angle_loss`], [`sp_loss`], [`cc_loss`],
//!   [`kd_loss`], [`ce_loss`], [`triplet_loss`]) that expose the pure functions as
//!   `CustomOp1`s so `loss.backward()` reaches the student. The four relational ones take an
//!   optional [`Mask`].
//! * [`eval_cases`], which evaluates a batch of cases in the golden-vector JSON format, so
//!   the library can be held against the references from outside Rust.

#[cfg(test)]
mod angle_direct;
mod angle_gram;
mod candle_ops;
mod cc;
mod eval;
mod linalg;
mod logits;
mod mask;
mod mining;
mod rkd;
mod sp;
mod triplet;

use num_traits::Float;

// RKD-A: the Gram-matrix form is the one used everywhere (O(N²D + N³)); the direct
// per-vertex form (`angle_direct`, compiled for tests) is its independent cross-check.
pub use angle_gram::{rkd_angle_gram as rkd_angle, rkd_angle_gram_masked as rkd_angle_masked};
pub use candle_ops::{
    cc_loss, ce_loss, kd_loss, rkd_angle_loss, rkd_distance_loss, sp_loss, triplet_loss,
};
pub use cc::{cc, cc_masked, cc_repdistiller, cc_torchdistill, CcKernel, CcTorchdistillKernel};
pub use eval::{eval_cases, EvalError};
pub use logits::{ce, kd};
pub use mask::Mask;
pub use mining::{mine_triplets, Mining};
pub use rkd::{rkd_distance, rkd_distance_masked};
pub use sp::{sp, sp_masked, sp_torchdistill};
pub use triplet::triplet;

/// Errors raised when wrapping raw buffers.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LossError {
    #[error("matrix buffer has {len} elements but {rows}x{cols} needs {}", rows * cols)]
    BadShape {
        len: usize,
        rows: usize,
        cols: usize,
    },
}

/// A borrowed row-major `rows x cols` matrix.
///
/// The fields are public so callers can build one in a `const`-like way, but every loss
/// re-checks `data.len() == rows * cols` because a silently short buffer would otherwise
/// read the wrong rows rather than fail.
#[derive(Debug, Clone, Copy)]
pub struct MatRef<'a, T> {
    pub data: &'a [T],
    pub rows: usize,
    pub cols: usize,
}

impl<'a, T> MatRef<'a, T> {
    /// Wraps `data` as a `rows x cols` row-major matrix.
    pub fn new(data: &'a [T], rows: usize, cols: usize) -> Result<Self, LossError> {
        if rows.checked_mul(cols) != Some(data.len()) {
            return Err(LossError::BadShape {
                len: data.len(),
                rows,
                cols,
            });
        }
        Ok(Self { data, rows, cols })
    }

    /// Row `i` as a slice.
    pub fn row(&self, i: usize) -> &'a [T] {
        &self.data[i * self.cols..(i + 1) * self.cols]
    }

    /// Panics with the caller's name when the public fields were filled inconsistently.
    fn assert_valid(&self, what: &str) {
        assert!(
            self.rows.checked_mul(self.cols) == Some(self.data.len()),
            "{what}: matrix buffer has {} elements but {}x{} needs {}",
            self.data.len(),
            self.rows,
            self.cols,
            self.rows * self.cols
        );
    }
}

/// Checks both buffers and that student and teacher have the same number of rows (samples);
/// the widths may differ.
fn check_pair<T>(s: &MatRef<T>, t: &MatRef<T>, what: &str) {
    s.assert_valid(what);
    t.assert_valid(what);
    assert!(
        s.rows == t.rows,
        "{what}: student has {} rows but teacher has {}",
        s.rows,
        t.rows
    );
}

/// Smooth-L1 with β = 1 (torch `F.smooth_l1_loss`): `0.5x²` if `|x| < 1`, else `|x| − 0.5`.
#[inline(always)]
pub fn huber<T: Float>(x: T) -> T {
    let a = x.abs();
    if a < T::one() {
        half::<T>() * x * x
    } else {
        a - half::<T>()
    }
}

/// Derivative of [`huber`]: `clamp(x, −1, 1)`. Continuous, so there is no kink to special-case.
#[inline(always)]
pub fn huber_grad<T: Float>(x: T) -> T {
    x.max(-T::one()).min(T::one())
}

#[inline(always)]
fn half<T: Float>() -> T {
    cst(0.5)
}

/// Converts an f64 (a constant or an f64-accumulated loss) to `T`. num-traits' float-to-float
/// casts always succeed (NaN stays NaN, overflow saturates to ±inf), so the `expect` cannot
/// fire for f32/f64.
#[inline(always)]
fn cst<T: Float>(x: f64) -> T {
    T::from(x).expect("constant representable in the float type")
}

#[cfg(test)]
mod tests;
