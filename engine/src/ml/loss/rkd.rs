//! RKD-D (distance) with a hand-written gradient; RKD-A is in `angle_gram.rs` (and its
//! test cross-check in `angle_direct.rs`).
//!
//! Both follow lenscloth/RKD `metric/loss.py` including its numerical quirks (clamps,
//! divisors that count degenerate entries); FORMAT.md in the golden vectors spells them out.

use super::linalg::{gram, square_times};
use super::mask::PairMask;
use super::{check_pair, cst, huber, huber_grad, Mask, MatRef};
use crate::ml::simd::sq_dist;
use num_traits::Float;

/// lenscloth clamps squared distances (RKD-D) and torch `F.normalize` clamps norms (RKD-A)
/// at this value. Both clamps pass no gradient to their input when they are active.
pub(super) const EPS: f64 = 1e-12;

// ---------------------------------------------------------------------------------------
// RKD-D
// ---------------------------------------------------------------------------------------

/// Pairwise distances of lenscloth's `pdist` after its clamp and diagonal overwrite.
struct Pdist<T> {
    /// `D_ij`, n×n, diagonal 0.
    d: Vec<T>,
    /// Whether `q_ij > 1e-12`, i.e. whether the clamp lets gradient through.
    live: Vec<bool>,
    /// Mean of the strictly positive entries (the clamp makes that every off-diagonal one).
    mu: T,
    /// How many entries `mu` averages over; its gradient is spread over exactly these.
    count: usize,
}

fn pdist<T: Float + Send + Sync + 'static>(x: MatRef<T>) -> Pdist<T> {
    let n = x.rows;
    let eps = cst::<T>(EPS);
    let clamped = eps.sqrt();
    let mut d = vec![T::zero(); n * n];
    let mut live = vec![false; n * n];
    // lenscloth's Gram expansion q_ij = ‖x_i‖² + ‖x_j‖² − 2 x_i·x_j, with the Gram matrix
    // from the fast matrix product. Where the expansion cancels (q tiny next to the norms:
    // duplicate or near-duplicate rows), q is recomputed directly as Σ(x_i − x_j)², which is
    // exactly 0 on duplicates: the expansion could leave round-off above the clamp there
    // and make the result depend on the summation order.
    let g = gram(x);
    let cancel = cst::<T>(1e-6);
    for i in 0..n {
        for j in i + 1..n {
            let (gii, gjj) = (g[i * n + i], g[j * n + j]);
            let mut q = gii + gjj - (g[i * n + j] + g[i * n + j]);
            if q <= cancel * (gii + gjj) {
                q = sq_dist(x.row(i), x.row(j));
            }
            let (v, l) = if q > eps {
                (q.sqrt(), true)
            } else {
                (clamped, false)
            };
            d[i * n + j] = v;
            d[j * n + i] = v;
            live[i * n + j] = l;
            live[j * n + i] = l;
        }
    }
    let mut sum = T::zero();
    let mut count = 0usize;
    for &v in &d {
        if v > T::zero() {
            sum = sum + v;
            count += 1;
        }
    }
    let mu = sum / cst(count as f64);
    Pdist { d, live, mu, count }
}

/// RKD-D: `L = (1/N²) Σ_ij huber(D^S_ij/μ_S − D^T_ij/μ_T)`, returning `(L, dL/dS)`.
///
/// `D_ij = sqrt(max(q_ij, 1e-12))` with the diagonal set to 0 and `μ` the mean of the
/// positive entries. The gradient flows through `μ_S`; entries held up by the clamp (e.g.
/// duplicate rows) pass none. The divisor is N², diagonal included, as in lenscloth.
/// With fewer than two rows there are no pairs; torch would return NaN (mean of nothing),
/// which would poison a training run, so this returns 0 with a zero gradient instead.
///
/// # Panics
/// If a matrix buffer does not match its shape or the row counts differ.
pub fn rkd_distance<T: Float + Send + Sync + 'static>(s: MatRef<T>, t: MatRef<T>) -> (T, Vec<T>) {
    check_pair(&s, &t, "rkd_distance");
    distance_impl(s, t, None)
}

/// RKD-D over a random subset of the pairs ([`Mask`], pair semantics):
/// `L = Σ_{kept (i,j)} huber(D^S_ij/μ_S − D^T_ij/μ_T) / |kept|`, |kept| counting ordered
/// entries. μ_S and μ_T are still the means over **all** off-diagonal pairs, so the scale
/// of the relation does not depend on the mask, and the gradient through μ_S reaches every
/// pair, kept or not. `keep = 1` gives [`rkd_distance`] bit for bit; nothing kept gives 0
/// with a zero gradient.
///
/// # Panics
/// If a matrix buffer does not match its shape, the row counts differ or `mask.keep` is
/// outside (0, 1].
pub fn rkd_distance_masked<T: Float + Send + Sync + 'static>(
    s: MatRef<T>,
    t: MatRef<T>,
    mask: Mask,
) -> (T, Vec<T>) {
    check_pair(&s, &t, "rkd_distance_masked");
    mask.assert_valid("rkd_distance_masked");
    distance_impl(s, t, Some(&PairMask::new(&mask, s.rows)))
}

/// [`rkd_distance`] with an optional pair mask; `None` is the full N² mean.
fn distance_impl<T: Float + Send + Sync + 'static>(
    s: MatRef<T>,
    t: MatRef<T>,
    mask: Option<&PairMask>,
) -> (T, Vec<T>) {
    let n = s.rows;
    let dim = s.cols;
    let grad = vec![T::zero(); n * dim];
    // With every entry kept the divisor is N² and the loop below takes exactly the
    // unmasked path's operations, which is what makes keep = 1 bit-identical.
    let count = mask.map_or(n * n, |m| m.count);
    if n < 2 || count == 0 {
        return (T::zero(), grad);
    }
    let ps = pdist(s);
    let pt = pdist(t);
    // torch's mean backward multiplies by 1/numel; doing the same keeps the last bits close.
    let inv_count = cst::<T>(1.0 / count as f64);

    // g_ij = dL/dr_ij; its contraction with D feeds the gradient of μ_S.
    let mut g = vec![T::zero(); n * n];
    let mut loss = 0.0f64;
    let mut g_dot_d = T::zero();
    for (idx, ((gv, &d_s), &d_t)) in g.iter_mut().zip(&ps.d).zip(&pt.d).enumerate() {
        if mask.is_some_and(|m| !m.kept[idx]) {
            // Not compared: no loss term and g = 0. The μ term below still reaches it.
            continue;
        }
        let r = d_s / ps.mu - d_t / pt.mu;
        // Accumulated in f64 so the f32 loss value is not dominated by N² rounding steps.
        loss += huber(r).to_f64().unwrap_or(f64::NAN);
        *gv = huber_grad(r) * inv_count;
        g_dot_d = g_dot_d + *gv * d_s;
    }
    // dL/dD_ij = g_ij/μ + (dL/dμ)(dμ/dD_ij) with dL/dμ = −Σ g D/μ² and dμ/dD_ij = 1/count.
    let mu_term = g_dot_d / (ps.mu * ps.mu * cst(ps.count as f64));

    // dX_i = Σ_j c_ij (x_i − x_j) with c_ij = 2·(dL/dD_ij)/D_ij on live off-diagonal
    // entries (D_ij and D_ji are separate entries with equal gradient, and ∂D/∂x_i is
    // (x_i − x_j)/D for both): dX = (diag(c·1) − c) X, one matrix product.
    let mut w = vec![T::zero(); n * n];
    for i in 0..n {
        let mut row_sum = T::zero();
        for j in 0..n {
            let idx = i * n + j;
            if i == j || !ps.live[idx] {
                continue;
            }
            let big_g = g[idx] / ps.mu - mu_term;
            let coef = (big_g + big_g) / ps.d[idx];
            w[idx] = T::zero() - coef;
            row_sum = row_sum + coef;
        }
        w[i * n + i] = row_sum;
    }
    (cst(loss / count as f64), square_times(&w, s))
}
