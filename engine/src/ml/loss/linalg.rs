//! Dense kernels shared by the Gram-matrix losses (SP, CC): `X Xᵀ`, `M X` and row-wise L2
//! normalisation with its backward.
//!
//! Determinism: every output element is computed inside one task by a fixed sequence of
//! operations (sums over ascending indices, or a fixed 8-lane split for the row norms);
//! rayon only decides which thread computes which whole output row. Results are therefore
//! bit-identical for any thread count. The AVX2 entry points compile the same source for
//! wider registers without FMA, so they round exactly like the portable path and results
//! do not depend on the CPU either.

use super::{cst, MatRef};
use crate::ml::matmul;
use crate::ml::simd::dot as lane_dot;
use num_traits::Float;
use rayon::prelude::*;

/// torch `F.normalize` clamps norms at this value; the clamp passes no gradient when active.
pub(super) const NORM_EPS: f64 = 1e-12;

/// Rough number of multiply-adds below which a rayon task costs more than it saves.
const MIN_TASK_WORK: usize = 1 << 15;

/// Rows per rayon task so that each task gets at least [`MIN_TASK_WORK`].
fn min_rows(work_per_row: usize) -> usize {
    (MIN_TASK_WORK / work_per_row.max(1)).max(1)
}

/// Output columns per register tile in [`combine_rows_body`]: eight AVX2 registers of f32,
/// enough independent accumulator chains to hide the latency of the additions.
const TILE: usize = 64;

/// `out[c − from] = Σ_j coef[j] · b_j[c]` (overwriting `out`) for the columns `c ≥ from` of
/// the rows `b_j`. Each output element is a plain sequential sum over j ascending, formed
/// as an axpy along the row so it vectorises over c with no horizontal reduction (a
/// dot-product formulation of the same sums left LLVM with scalar code and spills).
/// Full tiles of [`TILE`] columns keep their accumulators in registers across all j; the
/// remaining columns are accumulated in `out`, four rows per pass so it is loaded and
/// stored a quarter as often. Both paths perform the same additions in the same order, so
/// the tile boundaries change no bits.
#[inline(always)]
fn combine_rows_body<T: Float>(coef: &[T], b: MatRef<T>, from: usize, out: &mut [T]) {
    let row = |j: usize| &b.row(j)[from..];
    let mut tiles = out.chunks_exact_mut(TILE);
    let mut c0 = 0;
    for tile in &mut tiles {
        let mut acc = [T::zero(); TILE];
        for (j, &c) in coef.iter().enumerate() {
            let x: &[T; TILE] = row(j)[c0..c0 + TILE]
                .try_into()
                .expect("tile inside the row");
            for l in 0..TILE {
                acc[l] = acc[l] + c * x[l];
            }
        }
        tile.copy_from_slice(&acc);
        c0 += TILE;
    }
    let rest = tiles.into_remainder();
    rest.fill(T::zero());
    let k = coef.len();
    let mut j = 0;
    while j + 4 <= k {
        let (c0_, c1, c2, c3) = (coef[j], coef[j + 1], coef[j + 2], coef[j + 3]);
        let rows = rest
            .iter_mut()
            .zip(&row(j)[c0..])
            .zip(&row(j + 1)[c0..])
            .zip(&row(j + 2)[c0..])
            .zip(&row(j + 3)[c0..]);
        for ((((o, &x0), &x1), &x2), &x3) in rows {
            *o = *o + c0_ * x0 + c1 * x1 + c2 * x2 + c3 * x3;
        }
        j += 4;
    }
    while j < k {
        let c = coef[j];
        for (o, &v) in rest.iter_mut().zip(&row(j)[c0..]) {
            *o = *o + c * v;
        }
        j += 1;
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn combine_rows_avx2<T: Float>(coef: &[T], b: MatRef<T>, from: usize, out: &mut [T]) {
    combine_rows_body(coef, b, from, out)
}

fn combine_rows<T: Float>(coef: &[T], b: MatRef<T>, from: usize, out: &mut [T]) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the running CPU supports AVX2, the only feature the callee enables.
            return unsafe { combine_rows_avx2(coef, b, from, out) };
        }
    }
    combine_rows_body(coef, b, from, out)
}

/// `cols x rows` transpose of a row-major matrix.
fn transpose<T: Float>(x: MatRef<T>) -> Vec<T> {
    let mut out = vec![T::zero(); x.data.len()];
    for r in 0..x.rows {
        for (c, &v) in x.row(r).iter().enumerate() {
            out[c * x.rows + r] = v;
        }
    }
    out
}

/// `X Xᵀ` (n×n, row-major), with `G_ij = Σ_d x_i[d] x_j[d]` summed sequentially over d.
/// Row i is formed from the rows of `Xᵀ`, columns j ≥ i only; the lower triangle is then
/// mirrored. That is exact, not an approximation: `G_ji` would be the same products
/// (multiplication commutes) added in the same order. So the result is exactly symmetric,
/// which the backward passes rely on.
pub(super) fn gram<T: Float + Send + Sync + 'static>(x: MatRef<T>) -> Vec<T> {
    let (n, d) = (x.rows, x.cols);
    let mut g = vec![T::zero(); n * n];
    if n == 0 {
        return g;
    }
    if blas_like::<T>() && n * n * d >= GEMM_MIN_WORK {
        // X (n×d, row stride d) times Xᵀ (d×n: row stride 1, column stride d).
        matmul::product(
            n,
            n,
            d,
            &mut g,
            false,
            (x.data, d, 1),
            (x.data, 1, d),
            matmul::parallelism(n * n * d),
        );
        mirror_upper(&mut g, n);
        return g;
    }
    let xt_data = transpose(x);
    let xt = MatRef {
        data: &xt_data[..],
        rows: d,
        cols: n,
    };
    g.par_chunks_mut(n)
        .enumerate()
        .with_min_len(min_rows(n * d / 2))
        .for_each(|(i, row)| combine_rows(x.row(i), xt, i, &mut row[i..]));
    mirror_upper(&mut g, n);
    g
}

/// Below this many multiply-adds the portable kernels win (no packing, no dispatch).
const GEMM_MIN_WORK: usize = 1 << 16;

/// Whether `T` is a type the `gemm` crate multiplies (f32, f64). Its kernels are the
/// machine's best (AVX-512 or AVX2+FMA, chosen at run time), about 2× the portable ones.
/// They reduce each output element in an order fixed by the blocking, not by the thread
/// count, so results stay identical for any number of threads; they may differ in the
/// last bits between CPUs with different vector units.
fn blas_like<T: 'static>() -> bool {
    use std::any::TypeId;
    TypeId::of::<T>() == TypeId::of::<f32>() || TypeId::of::<T>() == TypeId::of::<f64>()
}

/// Copies the upper triangle of a square matrix onto the lower one.
fn mirror_upper<T: Float>(g: &mut [T], n: usize) {
    for i in 1..n {
        for j in 0..i {
            g[i * n + j] = g[j * n + i];
        }
    }
}

/// `M X` for a square `m` (n×n, row-major) and `x` (n×d).
pub(super) fn square_times<T: Float + Send + Sync + 'static>(m: &[T], x: MatRef<T>) -> Vec<T> {
    let (n, d) = (x.rows, x.cols);
    debug_assert_eq!(m.len(), n * n);
    let mut out = vec![T::zero(); n * d];
    if d == 0 || n == 0 {
        return out;
    }
    if blas_like::<T>() && n * n * d >= GEMM_MIN_WORK {
        matmul::product(
            n,
            d,
            n,
            &mut out,
            false,
            (m, n, 1),
            (x.data, d, 1),
            matmul::parallelism(n * d * n),
        );
        return out;
    }
    out.par_chunks_mut(d)
        .enumerate()
        .with_min_len(min_rows(n * d))
        .for_each(|(i, o)| combine_rows(&m[i * n..(i + 1) * n], x, 0, o));
    out
}

/// `m + mᵀ` for a square n×n matrix: the backward of `G = X Xᵀ` is `(dG + dGᵀ) X`.
pub(super) fn symmetrise<T: Float>(m: &[T], n: usize) -> Vec<T> {
    let mut out = vec![T::zero(); n * n];
    for i in 0..n {
        for j in 0..n {
            out[i * n + j] = m[i * n + j] + m[j * n + i];
        }
    }
    out
}

/// Row-wise `unit(x) = x / max(‖x‖₂, 1e-12)`, torch `F.normalize(p=2, dim=1)`. Returns the
/// normalised rows and the raw norms; the backward needs the latter to know where the clamp
/// was active. A zero row maps to zero, without a NaN.
pub(super) fn unit_rows<T: Float>(x: MatRef<T>) -> (Vec<T>, Vec<T>) {
    let eps = cst::<T>(NORM_EPS);
    let mut y = vec![T::zero(); x.data.len()];
    let mut norms = vec![T::zero(); x.rows];
    if x.cols == 0 {
        return (y, norms);
    }
    for ((yr, nr), xr) in y
        .chunks_exact_mut(x.cols)
        .zip(&mut norms)
        .zip(x.data.chunks_exact(x.cols))
    {
        *nr = lane_dot(xr, xr).sqrt();
        let den = nr.max(eps);
        for (o, &v) in yr.iter_mut().zip(xr) {
            // Division, not multiplication by 1/den, to round like torch.
            *o = v / den;
        }
    }
    (y, norms)
}

/// Backward of [`unit_rows`]: `dx = (dy − y (y·dy)) / ‖x‖` where the clamp is inactive.
/// Where it is active (‖x‖ ≤ 1e-12, e.g. a zero row) torch's clamp passes no gradient to
/// the norm, leaving the numerator path `dx = dy / 1e-12`.
pub(super) fn unit_rows_backward<T: Float>(y: &[T], norms: &[T], dy: &[T], cols: usize) -> Vec<T> {
    let eps = cst::<T>(NORM_EPS);
    let mut dx = vec![T::zero(); dy.len()];
    if cols == 0 {
        return dx;
    }
    for (((o, yr), dyr), &nr) in dx
        .chunks_exact_mut(cols)
        .zip(y.chunks_exact(cols))
        .zip(dy.chunks_exact(cols))
        .zip(norms)
    {
        if nr > eps {
            let p = lane_dot(yr, dyr);
            for ((ov, &yv), &dv) in o.iter_mut().zip(yr).zip(dyr) {
                *ov = (dv - yv * p) / nr;
            }
        } else {
            for (ov, &dv) in o.iter_mut().zip(dyr) {
                *ov = dv / eps;
            }
        }
    }
    dx
}

/// The portable kernels, for tests that check the AVX2 path rounds identically.
#[cfg(test)]
pub(super) fn gram_and_product_portable<T: Float>(x: MatRef<T>, m: &[T]) -> (Vec<T>, Vec<T>) {
    let n = x.rows;
    let xt_data = transpose(x);
    let xt = MatRef {
        data: &xt_data[..],
        rows: x.cols,
        cols: n,
    };
    let mut g = vec![T::zero(); n * n];
    for i in 0..n {
        combine_rows_body(x.row(i), xt, i, &mut g[i * n + i..(i + 1) * n]);
    }
    mirror_upper(&mut g, n);
    let mut p = vec![T::zero(); n * x.cols];
    for i in 0..n {
        combine_rows_body(
            &m[i * n..(i + 1) * n],
            x,
            0,
            &mut p[i * x.cols..(i + 1) * x.cols],
        );
    }
    (g, p)
}
