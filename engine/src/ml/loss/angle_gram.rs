//! RKD-A from Gram matrices: O(N²·D + N³) work and O(N²) memory, instead of the O(N³·D)
//! of forming every vertex's unit difference vectors.
//!
//! With `M^i_jk = ⟨x_j − x_i, x_k − x_i⟩ = G_jk − G_ij − G_ik + G_ii` and
//! `m_ij = max(‖x_j − x_i‖, 1e-12)`, the angle is `A_ijk = M^i_jk / (m_ij m_ik)`: exactly
//! lenscloth's `⟨unit(x_j − x_i), unit(x_k − x_i)⟩`, including its duplicate-row behaviour
//! (a zero difference gives M = 0 exactly, since identical rows give bit-identical Gram
//! entries, and the clamped norm passes its gradient to the numerator only).
//!
//! The backward collects the loss's dependence on the Gram entries in a matrix P (so that
//! `∂L/∂X = (P + Pᵀ) X`) and on the norms in a matrix Q (`∂L/∂m_ij / n_ij`, zero where the
//! clamp is active), then applies both with one matrix product:
//! `∂L/∂X = (P + Pᵀ − R + diag(R·1)) X` with `R = Q + Qᵀ`.
//!
//! Everything is computed in f64, whatever the input type: the Gram form subtracts entries
//! of size ‖x‖², so the rows are centred first (angles do not change under translation)
//! and the arithmetic is done in double precision, which keeps f32 training inputs exact
//! to f32 rounding. Work is split into a fixed number of vertex chunks (depending on N
//! only) whose partial results are summed in order, so the output does not depend on the
//! number of threads.

use rayon::prelude::*;

use super::linalg::{gram, square_times};
use super::mask::{AngleStream, GapSampler, Mask};
use super::{check_pair, cst, MatRef};
use crate::ml::simd::sq_dist;
use num_traits::Float;

/// Vertex chunks: enough for two threads to balance, few enough that each chunk's N×N
/// accumulator stays small (8 MiB each at N = 1024).
const CHUNKS: usize = 8;
const EPS: f64 = 1e-12;

/// The geometry of one side (student or teacher): centred rows, Gram matrix, clamped
/// pairwise distances and their reciprocals.
struct Side {
    x: Vec<f64>,
    dim: usize,
    g: Vec<f64>,
    /// ‖x_j − x_i‖ (unclamped).
    dist: Vec<f64>,
    /// 1 / max(‖x_j − x_i‖, 1e-12).
    inv: Vec<f64>,
}

impl Side {
    fn new<T: Float + Send + Sync>(m: MatRef<T>) -> Self {
        let (n, d) = (m.rows, m.cols);
        let mut mean = vec![0.0f64; d];
        for r in 0..n {
            for (acc, v) in mean.iter_mut().zip(m.row(r)) {
                *acc += v.to_f64().unwrap_or(0.0);
            }
        }
        mean.iter_mut().for_each(|v| *v /= n.max(1) as f64);
        let mut x = vec![0.0f64; n * d];
        for r in 0..n {
            for c in 0..d {
                x[r * d + c] = m.data[r * d + c].to_f64().unwrap_or(0.0) - mean[c];
            }
        }
        let xm = MatRef {
            data: &x[..],
            rows: n,
            cols: d,
        };
        let g = gram(xm);
        // Distances from the Gram expansion, except where it cancels (close or duplicate
        // rows): there from the differences themselves, so that a duplicated row gives
        // exactly 0 (and so the clamp), as in the reference.
        let mut dist = vec![0.0f64; n * n];
        dist.par_chunks_mut(n).enumerate().for_each(|(i, row)| {
            let xi = &x[i * d..(i + 1) * d];
            let gii = g[i * n + i];
            for (j, out) in row.iter_mut().enumerate() {
                let gjj = g[j * n + j];
                let q = gii + gjj - 2.0 * g[i * n + j];
                *out = if q > 1e-6 * (gii + gjj) {
                    q.sqrt()
                } else {
                    sq_dist(xi, &x[j * d..(j + 1) * d]).sqrt()
                };
            }
        });
        let inv = dist.iter().map(|&v| 1.0 / v.max(EPS)).collect();
        Side {
            x,
            dim: d,
            g,
            dist,
            inv,
        }
    }
}

/// What one chunk of vertices contributes.
struct Part {
    loss: f64,
    /// Ordered (j, k) angles that entered the loss (N³ per N vertices when unmasked).
    count: f64,
    /// Contributions to P at (j, k) for j ≤ k (N×N, upper triangle used).
    p_jk: Vec<f64>,
    /// Gradient rows computed directly (vertices with a duplicate partner), N×D, or empty.
    direct: Vec<f64>,
}

/// The per-(i, j) row kernel over k in `k0..n`: loads are contiguous in k, the Huber is
/// branchless, so it vectorises. Returns (Huber sum, Σ_k h, Σ_k d·A) and accumulates
/// per-k terms into `p_row` (P_jk), `col_h` (Σ_j h for P_ik) and `col_da` (for ∂L/∂m_ik).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn row_kernel(
    gs_j: &[f64],
    gs_i: &[f64],
    is: &[f64],
    gt_j: &[f64],
    gt_i: &[f64],
    it: &[f64],
    cs: f64,
    ct: f64,
    isj: f64,
    itj: f64,
    p_row: &mut [f64],
    col_h: &mut [f64],
    col_da: &mut [f64],
) -> (f64, f64, f64) {
    let (mut loss, mut hsum, mut dasum) = (0.0f64, 0.0f64, 0.0f64);
    for k in 0..gs_j.len() {
        let a_s = (gs_j[k] - gs_i[k] + cs) * (isj * is[k]);
        let a_t = (gt_j[k] - gt_i[k] + ct) * (itj * it[k]);
        let x = a_s - a_t;
        let c = x.clamp(-1.0, 1.0);
        // huber(x) = c·(x − c/2) with c = clamp(x, −1, 1); each j < k pair stands for
        // (j, k) and (k, j), hence the factor 2.
        loss += c * (x - 0.5 * c);
        let d = 2.0 * c;
        let h = d * (isj * is[k]);
        p_row[k] += h;
        col_h[k] += h;
        hsum += h;
        let da = d * a_s;
        col_da[k] += da;
        dasum += da;
    }
    (2.0 * loss, hsum, dasum)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[allow(clippy::too_many_arguments)]
unsafe fn row_kernel_avx2(
    gs_j: &[f64],
    gs_i: &[f64],
    is: &[f64],
    gt_j: &[f64],
    gt_i: &[f64],
    it: &[f64],
    cs: f64,
    ct: f64,
    isj: f64,
    itj: f64,
    p_row: &mut [f64],
    col_h: &mut [f64],
    col_da: &mut [f64],
) -> (f64, f64, f64) {
    row_kernel(
        gs_j, gs_i, is, gt_j, gt_i, it, cs, ct, isj, itj, p_row, col_h, col_da,
    )
}

/// Processes vertices `range`; writes the vertex-owned rows of `p_row` (P at (i, ·)) and
/// `q` (∂L/∂m_i· / n_i·), returns the loss and the shared P_jk accumulator.
#[allow(clippy::too_many_arguments)]
fn chunk(
    s: &Side,
    t: &Side,
    range: std::ops::Range<usize>,
    p_rows: &mut [f64],
    q_rows: &mut [f64],
    avx2: bool,
    mask: Option<(&Mask, &GapSampler)>,
) -> Part {
    let n = s.inv.len().isqrt();
    let range_len = range.len();
    let mut p_jk = vec![0.0f64; n * n];
    let mut loss = 0.0f64;
    let mut col_h = vec![0.0f64; n];
    let mut col_da = vec![0.0f64; n];
    let mut direct: Vec<f64> = Vec::new();
    let mut count = 0.0f64;
    let mut kept_k: Vec<usize> = Vec::new();
    for (local, i) in range.enumerate() {
        // A vertex with a duplicate of itself among the other rows: the clamped norm makes
        // the numerator's gradient ~1e12 times larger than the rest, and pushing it through
        // the Gram matrix would cost the other rows their precision in the final product.
        // Such vertices (rare) take the direct path, where those terms cancel exactly as in
        // the reference (x_j − x_i = 0 receives +g and −g).
        if (0..n).any(|j| j != i && s.dist[i * n + j] <= EPS) {
            if direct.is_empty() {
                direct = vec![0.0f64; n * s.dim];
            }
            let (l, c) = direct_vertex(s, t, i, &mut direct, mask);
            loss += l;
            count += c;
            continue;
        }
        col_h.iter_mut().for_each(|v| *v = 0.0);
        col_da.iter_mut().for_each(|v| *v = 0.0);
        let (gs_i, gt_i) = (&s.g[i * n..(i + 1) * n], &t.g[i * n..(i + 1) * n]);
        let (is, it) = (&s.inv[i * n..(i + 1) * n], &t.inv[i * n..(i + 1) * n]);
        let (gs_ii, gt_ii) = (gs_i[i], gt_i[i]);
        let p_i = &mut p_rows[local * n..(local + 1) * n];
        let mut p_ii = 0.0f64;
        let mut da_row = vec![0.0f64; n];
        let vertex_key = mask.map(|(m, _)| m.angle_vertex_key(i));
        for j in 0..n {
            let (isj, itj) = (is[j], it[j]);
            let cs = gs_ii - gs_i[j];
            let ct = gt_ii - gt_i[j];
            if let (Some((_, gaps)), Some(vk)) = (mask, vertex_key) {
                // Only the kept k ≥ j, generated directly (O(1 + kept) per row).
                kept_k.clear();
                kept_k.extend(AngleStream::from_vertex_key(vk, gaps, j, n));
                let (mut hsum, mut dasum) = (0.0f64, 0.0f64);
                for &k in &kept_k {
                    let a_s = (s.g[j * n + k] - gs_i[k] + cs) * (isj * is[k]);
                    let a_t = (t.g[j * n + k] - gt_i[k] + ct) * (itj * it[k]);
                    let x = a_s - a_t;
                    let c = x.clamp(-1.0, 1.0);
                    // A pair j < k stands for (j, k) and (k, j); the diagonal for itself.
                    let mult = if k == j { 1.0 } else { 2.0 };
                    loss += mult * c * (x - 0.5 * c);
                    count += mult;
                    let h = mult * c * (isj * is[k]);
                    let da = mult * c * a_s;
                    if k == j {
                        // M_jj = G_jj − 2 G_ij + G_ii; A = M/m_j², so m_j enters twice.
                        p_jk[j * n + j] += h;
                        p_i[j] -= 2.0 * h;
                        p_ii += h;
                        da_row[j] += 2.0 * da;
                    } else {
                        p_jk[j * n + k] += h;
                        col_h[k] += h;
                        hsum += h;
                        col_da[k] += da;
                        dasum += da;
                    }
                }
                p_i[j] -= hsum;
                p_ii += hsum;
                da_row[j] += dasum;
                continue;
            }
            // Diagonal term k = j: counted once, A = M_jj / m_j².
            let m_s = s.g[j * n + j] - 2.0 * gs_i[j] + gs_ii;
            let m_t = t.g[j * n + j] - 2.0 * gt_i[j] + gt_ii;
            let a_s = m_s * isj * isj;
            let x = a_s - m_t * itj * itj;
            let c = x.clamp(-1.0, 1.0);
            loss += c * (x - 0.5 * c);
            let h = c * isj * isj;
            p_jk[j * n + j] += h;
            p_i[j] -= 2.0 * h;
            p_ii += h;
            da_row[j] += 2.0 * c * a_s;
            // Pairs k > j.
            let k0 = j + 1;
            if k0 < n {
                let args = (
                    &s.g[j * n + k0..(j + 1) * n],
                    &gs_i[k0..],
                    &is[k0..],
                    &t.g[j * n + k0..(j + 1) * n],
                    &gt_i[k0..],
                    &it[k0..],
                );
                let (p_row, _) = p_jk[j * n + k0..].split_at_mut(n - k0);
                let (l, hsum, dasum) = if avx2 {
                    #[cfg(target_arch = "x86_64")]
                    {
                        // SAFETY: `avx2` is true only when the CPU supports AVX2.
                        unsafe {
                            row_kernel_avx2(
                                args.0,
                                args.1,
                                args.2,
                                args.3,
                                args.4,
                                args.5,
                                cs,
                                ct,
                                isj,
                                itj,
                                p_row,
                                &mut col_h[k0..],
                                &mut col_da[k0..],
                            )
                        }
                    }
                    #[cfg(not(target_arch = "x86_64"))]
                    unreachable!()
                } else {
                    row_kernel(
                        args.0,
                        args.1,
                        args.2,
                        args.3,
                        args.4,
                        args.5,
                        cs,
                        ct,
                        isj,
                        itj,
                        p_row,
                        &mut col_h[k0..],
                        &mut col_da[k0..],
                    )
                };
                loss += l;
                // M_jk = G_jk − G_ij − G_ik + G_ii: the G_ij and G_ii parts of this row.
                p_i[j] -= hsum;
                p_ii += hsum;
                da_row[j] += dasum;
            }
        }
        for k in 0..n {
            p_i[k] -= col_h[k];
            da_row[k] += col_da[k];
        }
        p_i[i] += p_ii;
        // ∂L/∂m_ij = −(Σ d·A)/m_ij; through m = n (where unclamped) to the rows.
        let q_i = &mut q_rows[local * n..(local + 1) * n];
        for j in 0..n {
            let dist = s.dist[i * n + j];
            q_i[j] = if dist > EPS {
                -da_row[j] * is[j] / dist
            } else {
                0.0
            };
        }
    }
    if mask.is_none() {
        count = (n * n) as f64 * range_len as f64;
    }
    Part {
        loss,
        count,
        p_jk,
        direct,
    }
}

/// Vertex `i` the direct way, as the reference computes it: unit difference vectors
/// `e_j = (x_j − x_i)/max(‖x_j − x_i‖, 1e-12)`, angles `e_j·e_k`, and the backward through
/// the normalisation, accumulated into `grad` (N×D). Returns the vertex's Huber sum.
fn direct_vertex(
    s: &Side,
    t: &Side,
    i: usize,
    grad: &mut [f64],
    mask: Option<(&Mask, &GapSampler)>,
) -> (f64, f64) {
    let (n, d) = (s.inv.len().isqrt(), s.dim);
    let xi = &s.x[i * d..(i + 1) * d];
    let mut e = vec![0.0f64; n * d];
    for j in 0..n {
        let inv = s.inv[i * n + j];
        for c in 0..d {
            e[j * d + c] = (s.x[j * d + c] - xi[c]) * inv;
        }
    }
    let (gt_i, it) = (&t.g[i * n..(i + 1) * n], &t.inv[i * n..(i + 1) * n]);
    let gt_ii = gt_i[i];
    let mut de = vec![0.0f64; n * d];
    let mut loss = 0.0f64;
    // kept[j*n + k] for the ordered pairs of this vertex (all of them when unmasked).
    let kept: Vec<bool> = match mask {
        None => vec![true; n * n],
        Some((m, gaps)) => {
            let mut kept = vec![false; n * n];
            let vk = m.angle_vertex_key(i);
            for j in 0..n {
                for k in AngleStream::from_vertex_key(vk, gaps, j, n) {
                    kept[j * n + k] = true;
                    kept[k * n + j] = true;
                }
            }
            kept
        }
    };
    let count = kept.iter().filter(|&&k| k).count() as f64;
    for j in 0..n {
        for k in 0..n {
            if !kept[j * n + k] {
                continue;
            }
            let a_s: f64 = (0..d).map(|c| e[j * d + c] * e[k * d + c]).sum();
            // Same grouping as the main kernel: (G_jk − G_ik) + (G_ii − G_ij) is exactly 0
            // when j or k is i, where the clamped norm would magnify any rounding by 1e12.
            let a_t = ((t.g[j * n + k] - gt_i[k]) + (gt_ii - gt_i[j])) * (it[j] * it[k]);
            let x = a_s - a_t;
            let c = x.clamp(-1.0, 1.0);
            loss += c * (x - 0.5 * c);
            // A_jk depends on e_j and e_k.
            for col in 0..d {
                de[j * d + col] += c * e[k * d + col];
                de[k * d + col] += c * e[j * d + col];
            }
        }
    }
    for j in 0..n {
        let dist = s.dist[i * n + j];
        let (ej, dej) = (&e[j * d..(j + 1) * d], &de[j * d..(j + 1) * d]);
        // unit(v) backward: (dE − e(e·dE))/‖v‖ where unclamped, dE/1e-12 where clamped.
        let proj: f64 = if dist > EPS {
            ej.iter().zip(dej).map(|(a, b)| a * b).sum()
        } else {
            0.0
        };
        let inv = s.inv[i * n + j];
        for c in 0..d {
            let dv = (dej[c] - ej[c] * proj) * inv;
            grad[j * d + c] += dv;
            grad[i * d + c] -= dv;
        }
    }
    (loss, count)
}

/// RKD-A (lenscloth `RKdAngle`) and its gradient with respect to the student, computed
/// from Gram matrices. Same semantics as [`super::rkd_angle`].
pub fn rkd_angle_gram<T: Float + Send + Sync>(s: MatRef<T>, t: MatRef<T>) -> (T, Vec<T>) {
    check_pair(&s, &t, "rkd_angle");
    angle(s, t, None)
}

/// RKD-A over the angles `mask` keeps (see [`Mask`]), normalised over the kept ones; only
/// those angles are evaluated, so the O(N³) part costs about `keep` times the full one.
pub fn rkd_angle_gram_masked<T: Float + Send + Sync>(
    s: MatRef<T>,
    t: MatRef<T>,
    mask: Mask,
) -> (T, Vec<T>) {
    check_pair(&s, &t, "rkd_angle_masked");
    mask.assert_valid("rkd_angle_masked");
    if mask.keep >= 1.0 {
        // Every angle is kept: the vectorised dense kernel gives the same loss, exactly
        // normalised by N³, for a fraction of the cost of drawing the mask angle by angle.
        return angle(s, t, None);
    }
    angle(s, t, Some(mask))
}

fn angle<T: Float + Send + Sync>(s: MatRef<T>, t: MatRef<T>, mask: Option<Mask>) -> (T, Vec<T>) {
    let n = s.rows;
    if n == 0 {
        return (T::zero(), Vec::new());
    }
    let (ss, ts) = rayon::join(|| Side::new(s), || Side::new(t));
    #[cfg(target_arch = "x86_64")]
    let avx2 = std::arch::is_x86_feature_detected!("avx2");
    #[cfg(not(target_arch = "x86_64"))]
    let avx2 = false;

    let gaps = mask.map(|m| GapSampler::new(m.keep));
    let mask_ref = mask.as_ref().zip(gaps.as_ref());
    let size = n.div_ceil(CHUNKS);
    let mut p_rows = vec![0.0f64; n * n];
    let mut q_rows = vec![0.0f64; n * n];
    let parts: Vec<Part> = p_rows
        .par_chunks_mut(size * n)
        .zip(q_rows.par_chunks_mut(size * n))
        .enumerate()
        .map(|(c, (p, q))| {
            let start = c * size;
            chunk(&ss, &ts, start..(start + size).min(n), p, q, avx2, mask_ref)
        })
        .collect();

    // Fixed chunk order: the sums do not depend on which thread ran which chunk.
    let mut loss = 0.0f64;
    let mut count = 0.0f64;
    let mut p = p_rows;
    let mut direct = vec![0.0f64; n * ss.dim];
    for part in &parts {
        loss += part.loss;
        count += part.count;
        for (o, v) in p.iter_mut().zip(&part.p_jk) {
            *o += v;
        }
        for (o, v) in direct.iter_mut().zip(&part.direct) {
            *o += v;
        }
    }
    if count == 0.0 {
        // Nothing kept: the loss is 0 and so is its gradient.
        return (T::zero(), vec![T::zero(); n * s.cols]);
    }
    // The normaliser: N³ unmasked, the number of kept ordered angles otherwise.
    let n3 = count;
    // W = (P + Pᵀ) − R + diag(R·1), R = Q + Qᵀ, scaled by the normaliser.
    let mut w = vec![0.0f64; n * n];
    for a in 0..n {
        let mut rsum = 0.0;
        for b in 0..n {
            let r = q_rows[a * n + b] + q_rows[b * n + a];
            rsum += r;
            w[a * n + b] = (p[a * n + b] + p[b * n + a] - r) / n3;
        }
        w[a * n + a] += rsum / n3;
    }
    let grad = square_times(
        &w,
        MatRef {
            data: &ss.x[..],
            rows: n,
            cols: ss.dim,
        },
    );
    let grad = grad
        .into_iter()
        .zip(&direct)
        .map(|(g, d)| cst(g + d / n3))
        .collect();
    (cst(loss / n3), grad)
}

#[cfg(test)]
mod tests {
    use super::super::angle_direct::rkd_angle;
    use super::*;

    fn data(n: usize, d: usize, seed: u64, scale: f64) -> Vec<f64> {
        let mut s = seed;
        (0..n * d)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 11) as f64 / (1u64 << 53) as f64 - 0.5) * scale
            })
            .collect()
    }

    fn close(a: &[f64], b: &[f64], rel: f64) {
        let max = b.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        for (x, y) in a.iter().zip(b) {
            assert!((x - y).abs() <= rel * max + 1e-25, "{x} vs {y} (max {max})");
        }
    }

    #[test]
    fn agrees_with_the_direct_computation() {
        for (n, ds, dt, scale) in [
            (1, 3, 2, 1.0),
            (2, 3, 5, 1.0),
            (7, 5, 3, 1.0),
            (33, 17, 9, 1e3),
            (20, 8, 8, 1e-3),
        ] {
            let s = data(n, ds, 1 + n as u64, scale);
            let t = data(n, dt, 99 + n as u64, scale);
            let (sm, tm) = (
                MatRef::new(&s, n, ds).unwrap(),
                MatRef::new(&t, n, dt).unwrap(),
            );
            let (v1, g1) = rkd_angle_gram(sm, tm);
            let (v2, g2) = rkd_angle(sm, tm);
            assert!(
                (v1 - v2).abs() <= 1e-12 * v2.abs() + 1e-15,
                "n={n}: {v1} vs {v2}"
            );
            close(&g1, &g2, 1e-10);
        }
    }

    #[test]
    fn duplicate_rows_match_the_reference_behaviour() {
        let (n, d) = (8, 4);
        let mut s = data(n, d, 5, 1.0);
        let row2: Vec<f64> = s[2 * d..3 * d].to_vec();
        s[5 * d..6 * d].copy_from_slice(&row2);
        let t = data(n, 6, 6, 1.0);
        let (sm, tm) = (
            MatRef::new(&s, n, d).unwrap(),
            MatRef::new(&t, n, 6).unwrap(),
        );
        let (v1, g1) = rkd_angle_gram(sm, tm);
        let (v2, g2) = rkd_angle(sm, tm);
        assert!((v1 - v2).abs() <= 1e-12 * v2.abs());
        assert!(g1.iter().all(|g| g.is_finite()));
        // Duplicated rows carry gradients near 1e9; compare each row at its own scale.
        for r in 0..n {
            close(&g1[r * d..(r + 1) * d], &g2[r * d..(r + 1) * d], 1e-7);
        }
    }

    #[test]
    fn f32_inputs_and_thread_counts_give_the_same_bits() {
        let (n, d) = (40, 16);
        let s: Vec<f32> = data(n, d, 3, 1.0).into_iter().map(|v| v as f32).collect();
        let t: Vec<f32> = data(n, 8, 4, 1.0).into_iter().map(|v| v as f32).collect();
        let run = |threads| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap()
                .install(|| {
                    rkd_angle_gram(
                        MatRef::new(&s, n, d).unwrap(),
                        MatRef::new(&t, n, 8).unwrap(),
                    )
                })
        };
        let (a, b, c) = (run(1), run(2), run(3));
        assert_eq!(a.0.to_bits(), b.0.to_bits());
        assert_eq!(a.1, b.1);
        assert_eq!(a.1, c.1);
    }
}

#[cfg(test)]
mod masked_tests {
    use super::*;

    /// The masked loss computed the obvious way: every ordered (i; j, k), the mask decided
    /// by `Mask::keeps_angle`, angles from unit difference vectors.
    fn brute(s: &[f64], t: &[f64], n: usize, ds: usize, dt: usize, mask: Mask) -> f64 {
        let unit = |x: &[f64], d: usize, i: usize, j: usize| -> Vec<f64> {
            let v: Vec<f64> = (0..d).map(|c| x[j * d + c] - x[i * d + c]).collect();
            let norm = v.iter().map(|a| a * a).sum::<f64>().sqrt().max(EPS);
            v.iter().map(|a| a / norm).collect()
        };
        let (mut sum, mut count) = (0.0, 0.0);
        for i in 0..n {
            for j in 0..n {
                for k in 0..n {
                    if !mask.keeps_angle(i, j, k) {
                        continue;
                    }
                    let dot = |x: &[f64], d: usize| -> f64 {
                        let (a, b) = (unit(x, d, i, j), unit(x, d, i, k));
                        a.iter().zip(&b).map(|(p, q)| p * q).sum()
                    };
                    let x = dot(s, ds) - dot(t, dt);
                    sum += if x.abs() < 1.0 {
                        0.5 * x * x
                    } else {
                        x.abs() - 0.5
                    };
                    count += 1.0;
                }
            }
        }
        if count == 0.0 {
            0.0
        } else {
            sum / count
        }
    }

    fn data(n: usize, d: usize, seed: u64) -> Vec<f64> {
        let mut s = seed;
        (0..n * d)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                (s >> 11) as f64 / (1u64 << 53) as f64 - 0.5
            })
            .collect()
    }

    #[test]
    fn masked_value_matches_brute_force_and_gradient_matches_finite_differences() {
        let (n, ds, dt) = (11, 5, 3);
        let mut s = data(n, ds, 1);
        let t = data(n, dt, 2);
        // A duplicate row exercises the direct path too.
        let r3: Vec<f64> = s[3 * ds..4 * ds].to_vec();
        s[8 * ds..9 * ds].copy_from_slice(&r3);
        for keep in [0.3, 0.7, 1.0] {
            let mask = Mask { keep, seed: 42 };
            let (v, g) = rkd_angle_gram_masked(
                MatRef::new(&s, n, ds).unwrap(),
                MatRef::new(&t, n, dt).unwrap(),
                mask,
            );
            let b = brute(&s, &t, n, ds, dt, mask);
            // The Gram form's rounding grows like ε·spread²/(‖x_j − x_i‖·‖x_k − x_i‖) for
            // close points (here in the teacher); 1e-10 is far inside the golden tolerance.
            assert!((v - b).abs() <= 1e-10 * b.abs(), "keep {keep}: {v} vs {b}");
            // Finite differences on rows that are not duplicated (the duplicated rows sit
            // at a kink of the clamp).
            for &(r, c) in &[(0usize, 0usize), (5, 2), (10, 4)] {
                let h = 1e-6;
                let f = |delta: f64| {
                    let mut x = s.clone();
                    x[r * ds + c] += delta;
                    brute(&x, &t, n, ds, dt, mask)
                };
                let fd = (f(h) - f(-h)) / (2.0 * h);
                assert!(
                    (fd - g[r * ds + c]).abs() < 1e-6,
                    "keep {keep} ({r},{c}): {fd} vs {}",
                    g[r * ds + c]
                );
            }
        }
        // keep = 1 is the unmasked loss.
        let full = rkd_angle_gram(
            MatRef::new(&s, n, ds).unwrap(),
            MatRef::new(&t, n, dt).unwrap(),
        );
        let one = rkd_angle_gram_masked(
            MatRef::new(&s, n, ds).unwrap(),
            MatRef::new(&t, n, dt).unwrap(),
            Mask { keep: 1.0, seed: 9 },
        );
        assert!((full.0 - one.0).abs() <= 1e-14 * full.0.abs());
    }
}
