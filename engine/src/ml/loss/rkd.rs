//! RKD-D (distance) and RKD-A (angle) with hand-written gradients.
//!
//! Both follow lenscloth/RKD `metric/loss.py` including its numerical quirks (clamps,
//! divisors that count degenerate entries); FORMAT.md in the golden vectors spells them out.

use super::{cst, huber, huber_grad, MatRef};
use num_traits::Float;
use rayon::prelude::*;

/// lenscloth clamps squared distances (RKD-D) and torch `F.normalize` clamps norms (RKD-A)
/// at this value. Both clamps pass no gradient to their input when they are active.
const EPS: f64 = 1e-12;

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

/// Sum of squares of `a − b`, accumulated in `LANES` independent partial sums.
///
/// The lane split is what lets LLVM vectorise a float reduction (it may not reassociate a
/// single running sum); it also fixes the summation order, so the result does not depend on
/// the SIMD width the code happens to be compiled for.
#[inline(always)]
fn sq_dist<T: Float>(a: &[T], b: &[T]) -> T {
    const LANES: usize = 8;
    let mut acc = [T::zero(); LANES];
    let mut ac = a.chunks_exact(LANES);
    let mut bc = b.chunks_exact(LANES);
    for (x, y) in (&mut ac).zip(&mut bc) {
        for l in 0..LANES {
            let d = x[l] - y[l];
            acc[l] = acc[l] + d * d;
        }
    }
    let mut tail = T::zero();
    for (&x, &y) in ac.remainder().iter().zip(bc.remainder()) {
        let d = x - y;
        tail = tail + d * d;
    }
    acc.iter().fold(tail, |s, &v| s + v)
}

/// How RKD-A's inner loops form `a·b + c`. The kernels are generic over it so the same
/// source runs fused on CPUs with FMA (one instruction and one rounding instead of two)
/// and unfused elsewhere. Each machine uses one of them for every call, so results
/// stay bit-identical across thread counts; two machines that differ in FMA support may
/// differ in the last bits.
trait Madd {
    fn madd<T: Float>(a: T, b: T, c: T) -> T;
}

/// `a·b + c` with two roundings.
struct Unfused;

impl Madd for Unfused {
    #[inline(always)]
    fn madd<T: Float>(a: T, b: T, c: T) -> T {
        a * b + c
    }
}

/// `fma(a, b, c)`. Only used where the CPU has FMA: without it `mul_add` is a libm call.
#[cfg(target_arch = "x86_64")]
struct Fused;

#[cfg(target_arch = "x86_64")]
impl Madd for Fused {
    #[inline(always)]
    fn madd<T: Float>(a: T, b: T, c: T) -> T {
        a.mul_add(b, c)
    }
}

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

fn pdist<T: Float>(x: MatRef<T>) -> Pdist<T> {
    let n = x.rows;
    let eps = cst::<T>(EPS);
    let clamped = eps.sqrt();
    let mut d = vec![T::zero(); n * n];
    let mut live = vec![false; n * n];
    for i in 0..n {
        let xi = x.row(i);
        for j in i + 1..n {
            // The direct Σ(x_i − x_j)² instead of lenscloth's Gram expansion: it agrees to
            // ~1e-15 on distinct rows and is exactly 0 on duplicate rows, where the expansion
            // could leave round-off above the clamp and make the result summation-order
            // dependent. (a−b)² == (b−a)², so mirroring keeps D exactly symmetric.
            let q = sq_dist(xi, x.row(j));
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
pub fn rkd_distance<T: Float + Send + Sync>(s: MatRef<T>, t: MatRef<T>) -> (T, Vec<T>) {
    check_pair(&s, &t, "rkd_distance");
    let n = s.rows;
    let dim = s.cols;
    let mut grad = vec![T::zero(); n * dim];
    if n < 2 {
        return (T::zero(), grad);
    }
    let ps = pdist(s);
    let pt = pdist(t);
    // torch's mean backward multiplies by 1/numel; doing the same keeps the last bits close.
    let inv_n2 = cst::<T>(1.0 / (n * n) as f64);

    // g_ij = dL/dr_ij; its contraction with D feeds the gradient of μ_S.
    let mut g = vec![T::zero(); n * n];
    let mut loss = 0.0f64;
    let mut g_dot_d = T::zero();
    for ((gv, &d_s), &d_t) in g.iter_mut().zip(&ps.d).zip(&pt.d) {
        let r = d_s / ps.mu - d_t / pt.mu;
        // Accumulated in f64 so the f32 loss value is not dominated by N² rounding steps.
        loss += huber(r).to_f64().unwrap_or(f64::NAN);
        *gv = huber_grad(r) * inv_n2;
        g_dot_d = g_dot_d + *gv * d_s;
    }
    // dL/dD_ij = g_ij/μ + (dL/dμ)(dμ/dD_ij) with dL/dμ = −Σ g D/μ² and dμ/dD_ij = 1/count.
    let mu_term = g_dot_d / (ps.mu * ps.mu * cst(ps.count as f64));

    for i in 0..n {
        let xi = s.row(i);
        let gi = &mut grad[i * dim..(i + 1) * dim];
        for j in 0..n {
            let idx = i * n + j;
            if i == j || !ps.live[idx] {
                continue;
            }
            let big_g = g[idx] / ps.mu - mu_term;
            // D_ij and D_ji are separate entries with equal gradient, and ∂D/∂x_i is
            // (x_i − x_j)/D for both, hence the factor 2.
            let coef = (big_g + big_g) / ps.d[idx];
            for (o, (&a, &b)) in gi.iter_mut().zip(xi.iter().zip(s.row(j))) {
                *o = *o + coef * (a - b);
            }
        }
    }
    (cst(loss / (n * n) as f64), grad)
}

// ---------------------------------------------------------------------------------------
// RKD-A
// ---------------------------------------------------------------------------------------
//
// Layout: everything per vertex is kept transposed (D×N rows over the sample index), so
// the normalisation, both matrix products and the backward all run along contiguous rows
// of length N with no strided access and no scalar tails. Rows are zero-padded past N
// (see `AngleWs::np`) so every tile is full width; zeros contribute nothing to any product.

/// Lane width of the register tiles: two AVX2 registers of f32.
const W: usize = 16;
/// Rows per register tile of `E Eᵀ`: RG·W = 12 AVX2 registers of f32 accumulators, plus
/// the loaded operands, fits the 16 registers.
const RG: usize = 6;
/// Rows (feature dimensions) per register tile of the backward product `Eᵀ g`.
const RB: usize = 4;
/// The vertices are split into this many contiguous chunks (fewer when N is smaller). The
/// partition depends on N only, never on the thread count, which is what makes the
/// fixed-order reduction of the per-chunk gradients bit-reproducible.
const PAR_CHUNKS: usize = 16;

/// Sum with a fixed 8-lane split: vectorisable and independent of the SIMD width.
#[inline(always)]
fn lane_sum<T: Float>(v: &[T]) -> T {
    const LANES: usize = 8;
    let mut acc = [T::zero(); LANES];
    let mut it = v.chunks_exact(LANES);
    for c in &mut it {
        for l in 0..LANES {
            acc[l] = acc[l] + c[l];
        }
    }
    let tail = it.remainder().iter().fold(T::zero(), |s, &x| s + x);
    acc.iter().fold(tail, |s, &x| s + x)
}

/// `cols x rows` transpose of a row-major matrix.
fn transpose<T: Float>(data: &[T], rows: usize, cols: usize) -> Vec<T> {
    let mut out = vec![T::zero(); data.len()];
    for (r, row) in data.chunks_exact(cols.max(1)).take(rows).enumerate() {
        for (c, &v) in row.iter().enumerate() {
            out[c * rows + r] = v;
        }
    }
    out
}

/// One side (student or teacher) transposed: `xt[d*n + j] = x_j[d]`.
#[derive(Clone, Copy)]
struct Side<'a, T> {
    xt: &'a [T],
    dim: usize,
}

/// Per-chunk scratch space, reused for every vertex of the chunk: O(N·D + N²) memory,
/// never the N³ cube. `np` is the padded row length: a multiple of W, at least N + RG − 1.
struct AngleWs<T> {
    np: usize,
    /// Student unit differences transposed, `et_s[d*np + j] = e_ij[d]`, Ds×np.
    et_s: Vec<T>,
    /// Teacher unit differences, Dt×np.
    et_t: Vec<T>,
    /// Unclamped norms `‖x_j − x_i‖` of the student differences.
    norm_s: Vec<T>,
    /// Per-sample scratch: squared norms, then divisors.
    den: Vec<T>,
    /// `2·huber'(A^S − A^T)/N³`, np×np, symmetric, zero outside N×N.
    g: Vec<T>,
    /// dL/dE for the student, transposed, Ds×np.
    det: Vec<T>,
    /// Per-sample scratch: `e_j·dE_j`, then the backward's projection coefficient.
    p: Vec<T>,
    /// One row of dL/dv.
    dv: Vec<T>,
}

impl<T: Float> AngleWs<T> {
    fn new(n: usize, ds: usize, dt: usize) -> Self {
        // Tiles of RG rows start below N, so rows need RG − 1 columns of slack past N.
        let np = (n + RG - 1).div_ceil(W) * W;
        Self {
            np,
            et_s: vec![T::zero(); ds * np],
            et_t: vec![T::zero(); dt * np],
            norm_s: vec![T::zero(); np],
            den: vec![T::zero(); np],
            g: vec![T::zero(); np * np],
            det: vec![T::zero(); ds * np],
            p: vec![T::zero(); np],
            dv: vec![T::zero(); np],
        }
    }
}

/// `et[d][j] = unit(x_j − x_i)[d]` as torch `F.normalize`: divide by `max(‖v‖, 1e-12)`, so a
/// zero difference (j = i, or a duplicate row) maps to 0 without a NaN. Writes the raw
/// norms to `norm`.
#[inline(always)]
fn unit_diffs<T: Float, M: Madd>(
    x: Side<T>,
    n: usize,
    i: usize,
    np: usize,
    et: &mut [T],
    norm: &mut [T],
    den: &mut [T],
) {
    let eps = cst::<T>(EPS);
    let sq = &mut den[..n];
    sq.fill(T::zero());
    for row in x.xt.chunks_exact(n).take(x.dim) {
        let c = row[i];
        for (s, &v) in sq.iter_mut().zip(row) {
            let v = v - c;
            *s = M::madd(v, v, *s);
        }
    }
    for (nr, s) in norm[..n].iter_mut().zip(sq.iter_mut()) {
        *nr = s.sqrt();
        *s = nr.max(eps);
    }
    for (row, out) in x.xt.chunks_exact(n).zip(et.chunks_exact_mut(np)) {
        let c = row[i];
        for ((o, &v), &dn) in out.iter_mut().zip(row).zip(den.iter()) {
            // Division, not multiplication by 1/den, to round like torch.
            *o = (v - c) / dn;
        }
    }
}

/// `acc[r][l] = Σ_d et[d][j0 + r] · et[d][k0 + l]`, i.e. an RR×W block of `E Eᵀ`: per d one
/// broadcast per row and one contiguous W-vector, no horizontal reductions.
#[inline(always)]
fn gram_tile<T: Float, M: Madd, const RR: usize>(
    et: &[T],
    np: usize,
    j0: usize,
    k0: usize,
) -> [[T; W]; RR] {
    let mut acc = [[T::zero(); W]; RR];
    for row in et.chunks_exact(np) {
        let b: &[T; W] = row[k0..k0 + W].try_into().expect("tile inside the row");
        let a: &[T; RR] = row[j0..j0 + RR].try_into().expect("tile inside the row");
        for r in 0..RR {
            for l in 0..W {
                acc[r][l] = M::madd(a[r], b[l], acc[r][l]);
            }
        }
    }
    acc
}

/// Rows `j0..j0+RG` of the upper triangle (k ≥ j) of both angle matrices, turned straight
/// into the Huber terms and rows of the gradient matrix `g`, so the angle matrices are never
/// stored. Tiles start at the W-aligned column at or left of j0, so the first one or two
/// straddle the diagonal; the entries left of it are written to g too (harmless:
/// [`mirror_lower`] overwrites them with the identical mirrored values, as the product
/// e_j·e_k is commutative) but weighted 0 in the loss.
/// Off-diagonal entries stand for both (j,k) and (k,j), so they count twice.
/// Padding rows and columns have e = 0 on both sides, hence Huber 0 and g 0.
#[inline(always)]
fn angle_rows<T: Float, M: Madd>(ws: &mut AngleWs<T>, n: usize, j0: usize, scale2: T) -> f64 {
    let np = ws.np;
    let two = cst::<T>(2.0);
    let mut loss = 0.0f64;
    let mut k0 = j0 / W * W;
    while k0 < n {
        let a_s = gram_tile::<T, M, RG>(&ws.et_s, np, j0, k0);
        let a_t = gram_tile::<T, M, RG>(&ws.et_t, np, j0, k0);
        // Only tiles that start left of the block's last row reach the diagonal.
        let straddles = k0 < j0 + RG;
        for r in 0..RG {
            let j = j0 + r;
            let g_row: &mut [T; W] = (&mut ws.g[j * np + k0..j * np + k0 + W])
                .try_into()
                .expect("tile inside the row");
            let mut h_row = [T::zero(); W];
            for l in 0..W {
                let diff = a_s[r][l] - a_t[r][l];
                g_row[l] = huber_grad(diff) * scale2;
                h_row[l] = huber(diff);
            }
            if straddles {
                for (l, h) in h_row.iter_mut().enumerate() {
                    let k = k0 + l;
                    *h = match k.cmp(&j) {
                        std::cmp::Ordering::Less => T::zero(),
                        std::cmp::Ordering::Equal => *h,
                        std::cmp::Ordering::Greater => two * *h,
                    };
                }
                loss += lane_sum(&h_row).to_f64().unwrap_or(f64::NAN);
            } else {
                loss += (two * lane_sum(&h_row)).to_f64().unwrap_or(f64::NAN);
            }
        }
        k0 += W;
    }
    loss
}

/// Copies the upper triangle of g onto the lower one, making g exactly symmetric.
#[inline(always)]
fn mirror_lower<T: Float>(g: &mut [T], n: usize, np: usize) {
    for j in 0..n {
        for k in j + 1..n {
            g[k * np + j] = g[j * np + k];
        }
    }
}

/// `acc[r][l] = Σ_k et[d0+r][k] · g[k][j0+l]`: an RR×W block of `Eᵀ g = (g E)ᵀ`.
#[inline(always)]
fn ge_tile<T: Float, M: Madd, const RR: usize>(
    et: &[T],
    g: &[T],
    n: usize,
    np: usize,
    d0: usize,
    j0: usize,
) -> [[T; W]; RR] {
    let e_rows: [&[T]; RR] = std::array::from_fn(|r| &et[(d0 + r) * np..(d0 + r) * np + n]);
    let mut acc = [[T::zero(); W]; RR];
    for (k, g_row) in g.chunks_exact(np).take(n).enumerate() {
        let b: &[T; W] = g_row[j0..j0 + W].try_into().expect("tile inside the row");
        for r in 0..RR {
            let a = e_rows[r][k];
            for l in 0..W {
                acc[r][l] = M::madd(a, b[l], acc[r][l]);
            }
        }
    }
    acc
}

/// Rows `d0..d0+RR` of `dEᵀ = Eᵀ g` (the 2 of `gE + gᵀE` is already folded into g).
#[inline(always)]
fn ge_rows<T: Float, M: Madd, const RR: usize>(ws: &mut AngleWs<T>, n: usize, d0: usize) {
    let np = ws.np;
    let mut j0 = 0;
    while j0 < n {
        let acc = ge_tile::<T, M, RR>(&ws.et_s, &ws.g, n, np, d0, j0);
        for (r, row) in acc.iter().enumerate() {
            ws.det[(d0 + r) * np + j0..(d0 + r) * np + j0 + W].copy_from_slice(row);
        }
        j0 += W;
    }
}

/// All cube entries with vertex i: returns the vertex's Huber sum and adds its gradient
/// contribution to `grad_t` (the student gradient transposed, Ds×N).
#[inline(always)]
fn angle_vertex<T: Float, M: Madd>(
    s: Side<T>,
    t: Side<T>,
    n: usize,
    i: usize,
    scale2: T,
    ws: &mut AngleWs<T>,
    grad_t: &mut [T],
) -> f64 {
    let np = ws.np;
    let ds = s.dim;
    unit_diffs::<T, M>(s, n, i, np, &mut ws.et_s, &mut ws.norm_s, &mut ws.den);
    // The teacher's norms are not needed; `p` is free scratch until the backward.
    unit_diffs::<T, M>(t, n, i, np, &mut ws.et_t, &mut ws.p, &mut ws.den);

    let mut loss = 0.0f64;
    for j0 in (0..n).step_by(RG) {
        loss += angle_rows::<T, M>(ws, n, j0, scale2);
    }
    mirror_lower(&mut ws.g, n, np);

    let mut d0 = 0;
    while d0 + RB <= ds {
        ge_rows::<T, M, RB>(ws, n, d0);
        d0 += RB;
    }
    while d0 < ds {
        ge_rows::<T, M, 1>(ws, n, d0);
        d0 += 1;
    }

    // Back through e = v / max(‖v‖, eps):
    //   ‖v‖ > eps: dv = (dE − e (e·dE)) / ‖v‖;
    //   otherwise the clamp is active and torch's clamp passes no gradient, leaving the
    //   numerator path dv = dE / 1e-12. For duplicate rows this is huge (~1e9) but finite
    //   and cancels between the two rows; FORMAT.md's pub_n8_dup_student pins it.
    // Writing both as (dE − e·p)/den with p = 0 in the clamped case keeps the loop
    // branch-free. Column i needs no care: row and column i of g are exactly 0
    // (A_iik = 0·e_ik on both sides), so dE_i = 0 and dv_i = 0.
    let eps = cst::<T>(EPS);
    let p = &mut ws.p[..n];
    p.fill(T::zero());
    for (e_row, de_row) in ws.et_s.chunks_exact(np).zip(ws.det.chunks_exact(np)) {
        for ((pj, &e), &de) in p.iter_mut().zip(e_row).zip(de_row) {
            *pj = M::madd(e, de, *pj);
        }
    }
    for ((pj, dn), &nr) in p.iter_mut().zip(&mut ws.den[..n]).zip(&ws.norm_s[..n]) {
        if nr > eps {
            *dn = nr;
        } else {
            *dn = eps;
            *pj = T::zero();
        }
    }
    let dv = &mut ws.dv[..n];
    for (d, g_row) in grad_t.chunks_exact_mut(n).take(ds).enumerate() {
        let e_row = &ws.et_s[d * np..d * np + n];
        let de_row = &ws.det[d * np..d * np + n];
        for ((((o, &e), &de), &pj), &dn) in dv
            .iter_mut()
            .zip(e_row)
            .zip(de_row)
            .zip(&*p)
            .zip(&ws.den[..n])
        {
            *o = (de - e * pj) / dn;
        }
        // v_ij = x_j − x_i: +dv to every x_j, −Σ_j dv to x_i.
        for (o, &v) in g_row.iter_mut().zip(dv.iter()) {
            *o = *o + v;
        }
        g_row[i] = g_row[i] - lane_sum(dv);
    }
    loss
}

#[inline(always)]
fn angle_chunk_body<T: Float, M: Madd>(
    s: Side<T>,
    t: Side<T>,
    n: usize,
    vertices: std::ops::Range<usize>,
    scale2: T,
) -> (f64, Vec<T>) {
    let mut ws = AngleWs::new(n, s.dim, t.dim);
    let mut grad_t = vec![T::zero(); s.dim * n];
    let mut loss = 0.0f64;
    for i in vertices {
        loss += angle_vertex::<T, M>(s, t, n, i, scale2, &mut ws, &mut grad_t);
    }
    (loss, grad_t)
}

/// The same code compiled with AVX2 and FMA enabled, so the W-wide lane loops run on
/// 256-bit registers with fused multiply-adds.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn angle_chunk_avx2_fma<T: Float>(
    s: Side<T>,
    t: Side<T>,
    n: usize,
    vertices: std::ops::Range<usize>,
    scale2: T,
) -> (f64, Vec<T>) {
    angle_chunk_body::<T, Fused>(s, t, n, vertices, scale2)
}

fn angle_chunk<T: Float>(
    s: Side<T>,
    t: Side<T>,
    n: usize,
    vertices: std::ops::Range<usize>,
    scale2: T,
) -> (f64, Vec<T>) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: the running CPU supports AVX2 and FMA, the features the callee enables.
            return unsafe { angle_chunk_avx2_fma(s, t, n, vertices, scale2) };
        }
    }
    angle_chunk_body::<T, Unfused>(s, t, n, vertices, scale2)
}

/// RKD-A: `L = (1/N³) Σ_ijk huber(A^S_ijk − A^T_ijk)` with `A_ijk = e_ij·e_ik` and
/// `e_ij = (x_j − x_i)/max(‖x_j − x_i‖, 1e-12)`, over the full N×N×N cube (degenerate
/// triples included, as in lenscloth). Returns `(L, dL/dS)`.
///
/// Works one vertex i at a time (O(N·D + N²) scratch per worker, never the cube) and
/// parallelises over vertex chunks with rayon. The chunking depends only on N and the
/// per-chunk gradients are summed in chunk order, so on a given machine the output is
/// bit-identical for any thread count. (CPUs with and without FMA round the inner products
/// differently, so results may differ in the last bits between such machines.) Duplicate
/// student rows follow torch: their zero difference normalises to 0 and its backward is
/// dE/1e-12 (see FORMAT.md, "Duplicate rows").
///
/// # Panics
/// If a matrix buffer does not match its shape or the row counts differ.
pub fn rkd_angle<T: Float + Send + Sync>(s: MatRef<T>, t: MatRef<T>) -> (T, Vec<T>) {
    check_pair(&s, &t, "rkd_angle");
    rkd_angle_with(s, t, angle_chunk)
}

/// Signature of the per-chunk kernel: (student, teacher, N, vertices, 2/N³) → (Huber sum,
/// transposed gradient).
type ChunkFn<T> = fn(Side<T>, Side<T>, usize, std::ops::Range<usize>, T) -> (f64, Vec<T>);

/// [`rkd_angle`] with the chunk kernel as a parameter, so tests can run the unfused path on
/// machines that would otherwise always take the FMA one.
fn rkd_angle_with<T: Float + Send + Sync>(
    s: MatRef<T>,
    t: MatRef<T>,
    chunk_fn: ChunkFn<T>,
) -> (T, Vec<T>) {
    let n = s.rows;
    let ds = s.cols;
    if n == 0 {
        return (T::zero(), Vec::new());
    }
    let st = transpose(s.data, n, ds);
    let tt = transpose(t.data, n, t.cols);
    let side_s = Side { xt: &st, dim: ds };
    let side_t = Side {
        xt: &tt,
        dim: t.cols,
    };
    let n3 = (n as f64).powi(3);
    // The 2 is the symmetric backward of E Eᵀ (gE + gᵀE with g = gᵀ); scaling by a power of
    // two is exact, so folding it in here changes no bits.
    let scale2 = cst::<T>(2.0 / n3);
    let chunk = n.div_ceil(PAR_CHUNKS);
    let starts: Vec<usize> = (0..n).step_by(chunk).collect();
    let parts: Vec<(f64, Vec<T>)> = starts
        .par_iter()
        .map(|&start| chunk_fn(side_s, side_t, n, start..(start + chunk).min(n), scale2))
        .collect();

    // Fixed chunk order, whatever thread ran which chunk.
    let mut loss = 0.0f64;
    let mut grad_t = vec![T::zero(); ds * n];
    for (l, g) in &parts {
        loss += l;
        for (o, &v) in grad_t.iter_mut().zip(g) {
            *o = *o + v;
        }
    }
    (cst(loss / n3), transpose(&grad_t, ds, n))
}

/// The portable (unfused) RKD-A path, whatever the CPU supports.
#[cfg(test)]
pub(super) fn rkd_angle_unfused<T: Float + Send + Sync>(s: MatRef<T>, t: MatRef<T>) -> (T, Vec<T>) {
    check_pair(&s, &t, "rkd_angle");
    rkd_angle_with(s, t, angle_chunk_body::<T, Unfused>)
}
