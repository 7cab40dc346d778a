//! Triplet margin loss, the metric-learning baseline of the RKD paper.

use super::{cst, MatRef};
use num_traits::Float;

/// torch `pairwise_distance` adds this to every coordinate of the difference. Leaving it out
/// shifts the loss by ~1e-7, which the golden tolerances detect.
const PAIRWISE_EPS: f64 = 1e-6;

/// `‖a − b + eps‖₂`, writing `a − b + eps` into `u` for the backward.
fn shifted_dist<T: Float>(a: &[T], b: &[T], u: &mut [T]) -> T {
    let eps = cst::<T>(PAIRWISE_EPS);
    let mut sq = T::zero();
    for ((o, &x), &y) in u.iter_mut().zip(a).zip(b) {
        *o = x - y + eps;
        sq = sq + *o * *o;
    }
    sq.sqrt()
}

/// torch `F.triplet_margin_loss(p=2, eps=1e-6, swap=False, reduction="mean")` on rows of `s`:
/// `L = mean_m max(0, margin + d(a,p) − d(a,n))`, `d(a,b) = ‖a − b + 1e-6‖₂`.
/// Returns `(L, dL/dS)`.
///
/// A triplet at or below the hinge (`margin + d_ap − d_an ≤ 0`) gets gradient 0, as in torch.
/// An empty triplet list gives 0 with a zero gradient (torch would give NaN, the mean of
/// nothing, which would poison training on a batch with no valid anchor).
///
/// # Panics
/// If the buffer does not match its shape or a triplet index is out of range.
pub fn triplet<T: Float>(s: MatRef<T>, triplets: &[[usize; 3]], margin: T) -> (T, Vec<T>) {
    s.assert_valid("triplet");
    let dim = s.cols;
    let mut grad = vec![T::zero(); s.rows * dim];
    if triplets.is_empty() {
        return (T::zero(), grad);
    }
    let inv_m = T::one() / cst(triplets.len() as f64);
    let mut u_ap = vec![T::zero(); dim];
    let mut u_an = vec![T::zero(); dim];
    let mut loss = 0.0f64;
    for &[a, p, ng] in triplets {
        assert!(
            a < s.rows && p < s.rows && ng < s.rows,
            "triplet: [{a}, {p}, {ng}] out of range for {} rows",
            s.rows
        );
        let d_ap = shifted_dist(s.row(a), s.row(p), &mut u_ap);
        let d_an = shifted_dist(s.row(a), s.row(ng), &mut u_an);
        let h = margin + d_ap - d_an;
        if h <= T::zero() {
            continue;
        }
        loss += h.to_f64().unwrap_or(f64::NAN);
        // ∂‖u‖/∂u = u/‖u‖, and torch's norm backward gives 0 where ‖u‖ = 0.
        let c_ap = if d_ap > T::zero() {
            inv_m / d_ap
        } else {
            T::zero()
        };
        let c_an = if d_an > T::zero() {
            inv_m / d_an
        } else {
            T::zero()
        };
        for d in 0..dim {
            let gp = c_ap * u_ap[d];
            let gn = c_an * u_an[d];
            grad[a * dim + d] = grad[a * dim + d] + gp - gn;
            grad[p * dim + d] = grad[p * dim + d] - gp;
            grad[ng * dim + d] = grad[ng * dim + d] + gn;
        }
    }
    (cst(loss / triplets.len() as f64), grad)
}
