//! Similarity-preserving KD (Tung & Mori, ICCV 2019) with hand-written gradients:
//! RepDistiller's `Similarity` (the paper's loss) and torchdistill's `SPKDLoss`.

use super::linalg::{gram, square_times, symmetrise, unit_rows_backward, NORM_EPS};
use super::mask::PairMask;
use super::{check_pair, cst, Mask, MatRef};
use crate::ml::simd::dot as lane_dot;
use num_traits::Float;

/// How the rows of the Gram matrix are normalised.
#[derive(Clone, Copy)]
enum RowNorm {
    /// `G_i / max(‖G_i‖₂, 1e-12)`: RepDistiller, KD-Zoo and the paper.
    L2,
    /// `G_i / max(Σ_j |G_ij|, 1e-12)`: torchdistill, which passes `1` as `F.normalize`'s
    /// second positional argument, and that argument is `p`, not `dim`.
    L1,
}

/// SP as in RepDistiller `distiller_zoo/SP.py::Similarity`: rows are samples (flatten any
/// feature map to one row per sample first), `G = X Xᵀ`, `Ĝ_i = G_i / max(‖G_i‖₂, 1e-12)`,
/// `L = Σ_ij (Ĝ^T_ij − Ĝ^S_ij)² / b²`. Returns `(L, dL/dS)`.
///
/// Student and teacher may have different widths (only the b×b Gram matrices are
/// compared). The products run in parallel over rows with a thread-count-independent
/// result. An empty batch gives 0 (torch would give NaN, 0/0).
///
/// # Panics
/// If a matrix buffer does not match its shape or the row counts differ.
pub fn sp<T: Float + Send + Sync + 'static>(s: MatRef<T>, t: MatRef<T>) -> (T, Vec<T>) {
    check_pair(&s, &t, "sp");
    sp_impl(s, t, RowNorm::L2, None)
}

/// [`sp`] over a random subset of the entries ([`Mask`], pair semantics):
/// `L = Σ_{kept (i,j)} (Ĝ^T_ij − Ĝ^S_ij)² / |kept|`, |kept| counting ordered entries. The
/// rows of G are still normalised over all N entries, so the mask changes which entries
/// are compared, not their values. `keep = 1` gives [`sp`] bit for bit; nothing kept
/// gives 0 with a zero gradient.
///
/// # Panics
/// If a matrix buffer does not match its shape, the row counts differ or `mask.keep` is
/// outside (0, 1].
pub fn sp_masked<T: Float + Send + Sync + 'static>(
    s: MatRef<T>,
    t: MatRef<T>,
    mask: Mask,
) -> (T, Vec<T>) {
    check_pair(&s, &t, "sp_masked");
    mask.assert_valid("sp_masked");
    sp_impl(s, t, RowNorm::L2, Some(&PairMask::new(&mask, s.rows)))
}

/// SP as in torchdistill `mid_level.py::SPKDLoss(reduction='batchmean')`: the same as
/// [`sp`] except that the Gram rows are divided by their **L1** norm
/// `max(Σ_j |G_ij|, 1e-12)`. The values differ from [`sp`]'s; use this one only to compare
/// with torchdistill. |·| gets gradient 0 at 0, as torch's `sign(0) = 0`.
///
/// # Panics
/// If a matrix buffer does not match its shape or the row counts differ.
pub fn sp_torchdistill<T: Float + Send + Sync + 'static>(
    s: MatRef<T>,
    t: MatRef<T>,
) -> (T, Vec<T>) {
    check_pair(&s, &t, "sp_torchdistill");
    sp_impl(s, t, RowNorm::L1, None)
}

/// Row-normalised Gram matrix and the raw row norms (the backward needs them to know
/// whether the clamp was active).
fn normalised_gram<T: Float + Send + Sync + 'static>(
    x: MatRef<T>,
    norm: RowNorm,
) -> (Vec<T>, Vec<T>, Vec<T>) {
    let b = x.rows;
    let g = gram(x);
    let eps = cst::<T>(NORM_EPS);
    let mut h = vec![T::zero(); b * b];
    let mut norms = vec![T::zero(); b];
    for ((hr, gr), nr) in h.chunks_exact_mut(b).zip(g.chunks_exact(b)).zip(&mut norms) {
        *nr = match norm {
            RowNorm::L2 => lane_dot(gr, gr).sqrt(),
            RowNorm::L1 => gr.iter().fold(T::zero(), |acc, v| acc + v.abs()),
        };
        let den = nr.max(eps);
        for (o, &v) in hr.iter_mut().zip(gr) {
            *o = v / den;
        }
    }
    (g, h, norms)
}

/// Backward of the L1 row normalisation `h = g / max(n, eps)`, `n = Σ|g|`: where the clamp
/// is inactive, `dg_j = dh_j / n − sign(g_j) (dh·g) / n²`; where it is active, `dh / eps`.
fn l1_rows_backward<T: Float>(g: &[T], norms: &[T], dh: &[T], b: usize) -> Vec<T> {
    let eps = cst::<T>(NORM_EPS);
    let mut dg = vec![T::zero(); b * b];
    for (((o, gr), dhr), &nr) in dg
        .chunks_exact_mut(b)
        .zip(g.chunks_exact(b))
        .zip(dh.chunks_exact(b))
        .zip(norms)
    {
        if nr > eps {
            let corr = lane_dot(dhr, gr) / (nr * nr);
            for ((ov, &gv), &dv) in o.iter_mut().zip(gr).zip(dhr) {
                let sign = if gv > T::zero() {
                    T::one()
                } else if gv < T::zero() {
                    -T::one()
                } else {
                    T::zero()
                };
                *ov = dv / nr - sign * corr;
            }
        } else {
            for (ov, &dv) in o.iter_mut().zip(dhr) {
                *ov = dv / eps;
            }
        }
    }
    dg
}

/// SP with an optional pair mask; `None` compares all b² entries.
fn sp_impl<T: Float + Send + Sync + 'static>(
    s: MatRef<T>,
    t: MatRef<T>,
    norm: RowNorm,
    mask: Option<&PairMask>,
) -> (T, Vec<T>) {
    let b = s.rows;
    if b == 0 {
        return (T::zero(), Vec::new());
    }
    // With every entry kept the divisor is b² and the loop below performs exactly the
    // unmasked operations, which is what makes keep = 1 bit-identical.
    let count = mask.map_or(b * b, |m| m.count);
    if count == 0 {
        return (T::zero(), vec![T::zero(); s.data.len()]);
    }
    let (gs, hs, ns) = normalised_gram(s, norm);
    let (_, ht, _) = normalised_gram(t, norm);
    let inv_count = cst::<T>(1.0 / count as f64);
    let mut loss = 0.0f64;
    // dL/dĜ^S = 2(Ĝ^S − Ĝ^T)/|kept| on kept entries, 0 elsewhere.
    let mut dh = vec![T::zero(); b * b];
    for (idx, ((o, &x), &y)) in dh.iter_mut().zip(&hs).zip(&ht).enumerate() {
        if mask.is_some_and(|m| !m.kept[idx]) {
            continue;
        }
        let diff = x - y;
        // Squared and summed in f64 so the f32 value is not dominated by b² rounding steps.
        let d = diff.to_f64().unwrap_or(f64::NAN);
        loss += d * d;
        *o = (diff + diff) * inv_count;
    }
    let dg = match norm {
        RowNorm::L2 => unit_rows_backward(&hs, &ns, &dh, b),
        RowNorm::L1 => l1_rows_backward(&gs, &ns, &dh, b),
    };
    let grad = square_times(&symmetrise(&dg, b), s);
    (cst(loss / count as f64), grad)
}
