//! RKD-A computed directly, vertex by vertex over (N−1)² angle pairs (tiled, vectorised,
//! FMA where the CPU has it): the first fast RKD-A, kept as the independent cross-check of
//! the Gram-form kernel that training uses (`angle_gram.rs`), which is why it is compiled
//! for tests only. Unmasked and masked (`Mask`) forms.

use super::mask::{AngleStream, GapSampler};
use super::rkd::EPS;
use super::{check_pair, cst, huber, huber_grad, Mask, MatRef};
use crate::ml::simd::sum as lane_sum;
use num_traits::Float;
use rayon::prelude::*;

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

// ---------------------------------------------------------------------------------------
// RKD-A, masked
// ---------------------------------------------------------------------------------------
//
// The dense kernel above gets its speed from register-tiled products over whole N×N angle
// blocks, so masking its output would still pay for every angle. The masked kernel forms
// only the kept angles instead: per vertex the unit differences are stored row-major (one
// contiguous row e_j per sample), each kept angle is a dot product of two rows, and the
// Huber gradients form a sparse symmetric N×N matrix C whose product dE = C·E is taken row
// by row as a gather over each row's kept partners. Per vertex that is O(N + kept) stream
// draws and O(kept·D) multiply-adds, against O(N²·D) for the dense block.

/// Per-chunk scratch of the masked RKD-A, reused for every vertex of the chunk:
/// O(N·D + kept) memory.
struct MaskedWs<T> {
    /// Student unit differences, row-major N×Ds: row j is e_ij.
    es: Vec<T>,
    /// Teacher unit differences, N×Dt.
    et: Vec<T>,
    /// Unclamped norms ‖x_j − x_i‖ of the student differences.
    norm_s: Vec<T>,
    /// The teacher's, written but not needed (its unit rows get no gradient).
    norm_t: Vec<T>,
    /// The kept partners k ≥ j of the row being generated.
    ks: Vec<usize>,
    /// Their angles, student and teacher.
    a_s: Vec<T>,
    a_t: Vec<T>,
    /// Upper triangle (k ≥ j) of C in CSR form: row j is `up_idx/up_coef[up_start[j]..up_start[j+1]]`.
    up_start: Vec<usize>,
    up_idx: Vec<usize>,
    up_coef: Vec<T>,
    /// Strictly lower triangle (k < j) of C in CSR form, the transpose of the upper one.
    low_start: Vec<usize>,
    low_fill: Vec<usize>,
    low_idx: Vec<usize>,
    low_coef: Vec<T>,
    /// One row of dE, then of dv.
    de: Vec<T>,
    /// Σ_j dv_j, the gradient row i receives with a minus sign.
    dv_sum: Vec<T>,
}

impl<T: Float> MaskedWs<T> {
    fn new(n: usize, ds: usize, dt: usize) -> Self {
        Self {
            es: vec![T::zero(); n * ds],
            et: vec![T::zero(); n * dt],
            norm_s: vec![T::zero(); n],
            norm_t: vec![T::zero(); n],
            ks: Vec::with_capacity(n),
            a_s: Vec::with_capacity(n),
            a_t: Vec::with_capacity(n),
            up_start: Vec::with_capacity(n + 1),
            up_idx: Vec::new(),
            up_coef: Vec::new(),
            low_start: vec![0; n + 1],
            low_fill: vec![0; n],
            low_idx: Vec::new(),
            low_coef: Vec::new(),
            de: vec![T::zero(); ds],
            dv_sum: vec![T::zero(); ds],
        }
    }
}

/// `acc[l] += a[l]·b[l]` for the W lanes of one chunk.
#[inline(always)]
fn lanes_madd<T: Float, M: Madd>(acc: &mut [T; W], a: &[T], b: &[T], c0: usize) {
    let a: &[T; W] = a[c0..c0 + W].try_into().expect("chunk inside the row");
    let b: &[T; W] = b[c0..c0 + W].try_into().expect("chunk inside the row");
    for l in 0..W {
        acc[l] = M::madd(a[l], b[l], acc[l]);
    }
}

/// The columns past the last full chunk, then the lanes, folded in a fixed order.
#[inline(always)]
fn lanes_finish<T: Float, M: Madd>(acc: &[T; W], a: &[T], b: &[T], full: usize) -> T {
    let mut tail = T::zero();
    for (&x, &y) in a[full..].iter().zip(&b[full..]) {
        tail = M::madd(x, y, tail);
    }
    acc.iter().fold(tail, |s, &v| s + v)
}

/// `a·b` with a fixed W-lane split (each lane a sequential sum, the lanes folded in order),
/// so the result does not depend on the SIMD width, and equals [`dot4`]'s for the same
/// pair of rows: batching changes no bits.
#[inline(always)]
fn dot1<T: Float, M: Madd>(a: &[T], b: &[T]) -> T {
    let d = a.len();
    let b = &b[..d];
    let full = d / W * W;
    let mut acc = [T::zero(); W];
    let mut c0 = 0;
    while c0 < full {
        lanes_madd::<T, M>(&mut acc, a, b, c0);
        c0 += W;
    }
    lanes_finish::<T, M>(&acc, a, b, full)
}

/// `[a·b0, a·b1, a·b2, a·b3]`, each exactly as [`dot1`] computes it. Four rows at once load
/// `a` once per four products and give the CPU 4·W independent accumulator chains. Written
/// out per row rather than as a loop over a const-generic row count: LLVM (rustc 1.95) left
/// such a loop rolled, with the accumulators on the stack and scalar code.
#[inline(always)]
fn dot4<T: Float, M: Madd>(a: &[T], b: [&[T]; 4]) -> [T; 4] {
    let d = a.len();
    let (b0, b1, b2, b3) = (&b[0][..d], &b[1][..d], &b[2][..d], &b[3][..d]);
    let full = d / W * W;
    let mut acc0 = [T::zero(); W];
    let mut acc1 = [T::zero(); W];
    let mut acc2 = [T::zero(); W];
    let mut acc3 = [T::zero(); W];
    let mut c0 = 0;
    while c0 < full {
        lanes_madd::<T, M>(&mut acc0, a, b0, c0);
        lanes_madd::<T, M>(&mut acc1, a, b1, c0);
        lanes_madd::<T, M>(&mut acc2, a, b2, c0);
        lanes_madd::<T, M>(&mut acc3, a, b3, c0);
        c0 += W;
    }
    [
        lanes_finish::<T, M>(&acc0, a, b0, full),
        lanes_finish::<T, M>(&acc1, a, b1, full),
        lanes_finish::<T, M>(&acc2, a, b2, full),
        lanes_finish::<T, M>(&acc3, a, b3, full),
    ]
}

/// `out[t] = a · e_{ks[t]}` for the rows `e_k` of the row-major `e` (width `a.len()`), four
/// rows per [`dot4`] and the rest one by one.
#[inline(always)]
fn row_dots<T: Float, M: Madd>(a: &[T], e: &[T], ks: &[usize], out: &mut Vec<T>) {
    let d = a.len();
    out.clear();
    let mut quads = ks.chunks_exact(4);
    for q in &mut quads {
        out.extend(dot4::<T, M>(
            a,
            std::array::from_fn(|r| &e[q[r] * d..][..d]),
        ));
    }
    for &k in quads.remainder() {
        out.push(dot1::<T, M>(a, &e[k * d..][..d]));
    }
}

/// How the masked kernel calls [`row_dots`]. With FMA it is a separate, non-inlined
/// function: inlined into the (large) per-chunk body, the accumulators of [`dot4`] were
/// spilled to the stack on every iteration (rustc 1.95), which made the whole masked RKD-A
/// 1.4× slower; compiled on its own they stay in registers.
trait RowDots: Madd {
    fn row_dots<T: Float>(a: &[T], e: &[T], ks: &[usize], out: &mut Vec<T>);
}

impl RowDots for Unfused {
    #[inline(always)]
    fn row_dots<T: Float>(a: &[T], e: &[T], ks: &[usize], out: &mut Vec<T>) {
        row_dots::<T, Unfused>(a, e, ks, out)
    }
}

#[cfg(target_arch = "x86_64")]
impl RowDots for Fused {
    #[inline(always)]
    fn row_dots<T: Float>(a: &[T], e: &[T], ks: &[usize], out: &mut Vec<T>) {
        // SAFETY: `Fused` is only used on CPUs with AVX2 and FMA (see `masked_chunk`).
        unsafe { row_dots_avx2_fma(a, e, ks, out) }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline(never)]
fn row_dots_avx2_fma<T: Float>(a: &[T], e: &[T], ks: &[usize], out: &mut Vec<T>) {
    row_dots::<T, Fused>(a, e, ks, out)
}

/// Row j of `unit(x_j − x_i)` for all j, row-major, as torch `F.normalize` (divide by
/// `max(‖v‖, 1e-12)`, so a zero difference maps to 0); the raw norms go to `norm`.
#[inline(always)]
fn unit_rows_from<T: Float, M: Madd>(x: MatRef<T>, i: usize, out: &mut [T], norm: &mut [T]) {
    let d = x.cols;
    let eps = cst::<T>(EPS);
    let xi = x.row(i);
    for (j, nr) in norm.iter_mut().enumerate().take(x.rows) {
        let row = &mut out[j * d..(j + 1) * d];
        for ((o, &v), &c) in row.iter_mut().zip(x.row(j)).zip(xi) {
            *o = v - c;
        }
        let sq = dot1::<T, M>(row, row);
        *nr = sq.sqrt();
        let den = nr.max(eps);
        for o in row.iter_mut() {
            // Division, not multiplication by 1/den, to round like torch.
            *o = *o / den;
        }
    }
}

/// `out = Σ_{(k, c) in lists} c · e_k` over the two lists in order, four rows per pass
/// over `out`. Each output element is one sequential chain of multiply-adds in list order.
#[inline(always)]
fn gather_row<T: Float, M: Madd>(e: &[T], d: usize, lists: [(&[usize], &[T]); 2], out: &mut [T]) {
    out.fill(T::zero());
    let row = |k: usize| &e[k * d..(k + 1) * d];
    for (idx, coef) in lists {
        let mut iq = idx.chunks_exact(4);
        let mut cq = coef.chunks_exact(4);
        for (ks, cs) in (&mut iq).zip(&mut cq) {
            let (x0, x1, x2, x3) = (row(ks[0]), row(ks[1]), row(ks[2]), row(ks[3]));
            for ((((o, &a0), &a1), &a2), &a3) in out.iter_mut().zip(x0).zip(x1).zip(x2).zip(x3) {
                *o = M::madd(
                    cs[3],
                    a3,
                    M::madd(cs[2], a2, M::madd(cs[1], a1, M::madd(cs[0], a0, *o))),
                );
            }
        }
        for (&k, &c) in iq.remainder().iter().zip(cq.remainder()) {
            for (o, &a) in out.iter_mut().zip(row(k)) {
                *o = M::madd(c, a, *o);
            }
        }
    }
}

/// The kept angles with vertex i: returns their Huber sum and their number (ordered
/// (j, k), so off-diagonal ones count twice), both unnormalised, and adds the
/// corresponding unnormalised gradient to `grad` (row-major N×Ds).
#[inline(always)]
fn masked_vertex<T: Float, M: RowDots>(
    s: MatRef<T>,
    t: MatRef<T>,
    i: usize,
    vertex_key: u64,
    gaps: &GapSampler,
    ws: &mut MaskedWs<T>,
    grad: &mut [T],
) -> (f64, u64) {
    let n = s.rows;
    let (ds, dt) = (s.cols, t.cols);
    let MaskedWs {
        es,
        et,
        norm_s,
        norm_t,
        ks,
        a_s,
        a_t,
        up_start,
        up_idx,
        up_coef,
        low_start,
        low_fill,
        low_idx,
        low_coef,
        de,
        dv_sum,
    } = ws;
    unit_rows_from::<T, M>(s, i, es, norm_s);
    unit_rows_from::<T, M>(t, i, et, norm_t);

    // Forward: row j's kept partners k ≥ j come straight from its stream; each angle is
    // one dot product per side. C_jk = 2·huber'(A^S_jk − A^T_jk) for every kept ordered
    // entry: off-diagonal, (j,k) and (k,j) each contribute huber'·e_k to dE_j; on the
    // diagonal, huber(e_j·e_j) contributes huber'·2e_j. Both are "dE_j += C_jk e_k".
    let two = cst::<T>(2.0);
    let mut loss = 0.0f64;
    let mut count = 0u64;
    up_start.clear();
    up_idx.clear();
    up_coef.clear();
    low_start.fill(0);
    for j in 0..n {
        up_start.push(up_idx.len());
        ks.clear();
        ks.extend(AngleStream::from_vertex_key(vertex_key, gaps, j, n));
        let ej_s = &es[j * ds..(j + 1) * ds];
        let ej_t = &et[j * dt..(j + 1) * dt];
        let mut push = |k: usize, a_s: T, a_t: T| {
            let diff = a_s - a_t;
            let w: u32 = if k == j { 1 } else { 2 };
            loss += f64::from(w) * huber(diff).to_f64().unwrap_or(f64::NAN);
            count += u64::from(w);
            up_idx.push(k);
            up_coef.push(two * huber_grad(diff));
            if k > j {
                low_start[k + 1] += 1;
            }
        };
        M::row_dots(ej_s, es, ks, a_s);
        M::row_dots(ej_t, et, ks, a_t);
        for ((&k, &x), &y) in ks.iter().zip(a_s.iter()).zip(a_t.iter()) {
            push(k, x, y);
        }
    }
    up_start.push(up_idx.len());

    // The lower triangle, by a counting sort of the upper one: rows j are visited in
    // ascending order, so each lower row lists its partners ascending too.
    for k in 0..n {
        low_start[k + 1] += low_start[k];
    }
    low_fill.copy_from_slice(&low_start[..n]);
    low_idx.resize(low_start[n], 0);
    low_coef.resize(low_start[n], T::zero());
    for j in 0..n {
        for p in up_start[j]..up_start[j + 1] {
            let k = up_idx[p];
            if k > j {
                let q = low_fill[k];
                low_idx[q] = j;
                low_coef[q] = up_coef[p];
                low_fill[k] = q + 1;
            }
        }
    }

    // Backward, one row at a time: dE_j = Σ_k C_jk e_k over its partners (ascending k),
    // then back through e = v / max(‖v‖, eps) exactly as the dense kernel does:
    //   ‖v‖ > eps: dv = (dE − e (e·dE)) / ‖v‖;  otherwise dv = dE / 1e-12 (torch's clamp
    //   passes no gradient to the norm), which is what duplicate rows get.
    // v_ij = x_j − x_i: +dv to row j, −Σ_j dv to row i.
    let eps = cst::<T>(EPS);
    dv_sum.fill(T::zero());
    for j in 0..n {
        let (lo, up) = (low_start[j]..low_start[j + 1], up_start[j]..up_start[j + 1]);
        if lo.is_empty() && up.is_empty() {
            continue;
        }
        gather_row::<T, M>(
            es,
            ds,
            [
                (&low_idx[lo.clone()], &low_coef[lo]),
                (&up_idx[up.clone()], &up_coef[up]),
            ],
            de,
        );
        let ej = &es[j * ds..(j + 1) * ds];
        let nr = norm_s[j];
        if nr > eps {
            let p = dot1::<T, M>(ej, de);
            for (o, &e) in de.iter_mut().zip(ej) {
                *o = (*o - e * p) / nr;
            }
        } else {
            for o in de.iter_mut() {
                *o = *o / eps;
            }
        }
        for ((g, sum), &v) in grad[j * ds..(j + 1) * ds]
            .iter_mut()
            .zip(dv_sum.iter_mut())
            .zip(de.iter())
        {
            *g = *g + v;
            *sum = *sum + v;
        }
    }
    for (g, &v) in grad[i * ds..(i + 1) * ds].iter_mut().zip(dv_sum.iter()) {
        *g = *g - v;
    }
    (loss, count)
}

#[inline(always)]
fn masked_chunk_body<T: Float, M: RowDots>(
    s: MatRef<T>,
    t: MatRef<T>,
    mask: &Mask,
    gaps: &GapSampler,
    vertices: std::ops::Range<usize>,
) -> (f64, u64, Vec<T>) {
    let mut ws = MaskedWs::new(s.rows, s.cols, t.cols);
    let mut grad = vec![T::zero(); s.rows * s.cols];
    let mut loss = 0.0f64;
    let mut count = 0u64;
    for i in vertices {
        let key = mask.angle_vertex_key(i);
        let (l, c) = masked_vertex::<T, M>(s, t, i, key, gaps, &mut ws, &mut grad);
        loss += l;
        count += c;
    }
    (loss, count, grad)
}

/// The same code compiled with AVX2 and FMA enabled.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn masked_chunk_avx2_fma<T: Float>(
    s: MatRef<T>,
    t: MatRef<T>,
    mask: &Mask,
    gaps: &GapSampler,
    vertices: std::ops::Range<usize>,
) -> (f64, u64, Vec<T>) {
    masked_chunk_body::<T, Fused>(s, t, mask, gaps, vertices)
}

fn masked_chunk<T: Float>(
    s: MatRef<T>,
    t: MatRef<T>,
    mask: &Mask,
    gaps: &GapSampler,
    vertices: std::ops::Range<usize>,
) -> (f64, u64, Vec<T>) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: the running CPU supports AVX2 and FMA, the features the callee enables.
            return unsafe { masked_chunk_avx2_fma(s, t, mask, gaps, vertices) };
        }
    }
    masked_chunk_body::<T, Unfused>(s, t, mask, gaps, vertices)
}

/// RKD-A over a random subset of the angles ([`Mask`], triplet semantics):
/// `L = Σ_{kept (i;j,k)} huber(A^S_ijk − A^T_ijk) / |kept|`, where {j, k} is kept for
/// vertex i with probability `keep` (symmetric in j, k; the diagonal j = k included) and
/// |kept| counts ordered (j, k). Everything else, degenerate triples and duplicate rows
/// included, is as in [`rkd_angle`]. Returns `(L, dL/dS)`; nothing kept gives 0 with a
/// zero gradient.
///
/// Only the kept angles are evaluated: per vertex, the kept partners of each j are
/// generated directly by geometric skipping (O(1 + kept) draws, not N), and each kept
/// angle is one dot product of unit-difference rows. The cost is O(N²·D + kept·D) overall,
/// about `keep` times that of [`rkd_angle`] for large N (with a larger constant: the dense
/// kernel's register-tiled products are faster per angle than sparse dot products).
/// `keep = 1` agrees with [`rkd_angle`] to rounding (a different summation order), not
/// bit for bit. Parallel over vertex chunks with a fixed-order reduction, so the result is
/// bit-identical for any thread count on a given machine (FMA and non-FMA CPUs may differ
/// in the last bits, as for [`rkd_angle`]).
///
/// # Panics
/// If a matrix buffer does not match its shape, the row counts differ or `mask.keep` is
/// outside (0, 1].
pub fn rkd_angle_masked<T: Float + Send + Sync>(
    s: MatRef<T>,
    t: MatRef<T>,
    mask: Mask,
) -> (T, Vec<T>) {
    check_pair(&s, &t, "rkd_angle_masked");
    mask.assert_valid("rkd_angle_masked");
    rkd_angle_masked_with(s, t, &mask, masked_chunk)
}

/// Signature of the masked per-chunk kernel: (student, teacher, mask, gap sampler,
/// vertices) → (unnormalised Huber sum, kept count, unnormalised gradient).
type MaskedChunkFn<T> =
    fn(MatRef<T>, MatRef<T>, &Mask, &GapSampler, std::ops::Range<usize>) -> (f64, u64, Vec<T>);

fn rkd_angle_masked_with<T: Float + Send + Sync>(
    s: MatRef<T>,
    t: MatRef<T>,
    mask: &Mask,
    chunk_fn: MaskedChunkFn<T>,
) -> (T, Vec<T>) {
    let n = s.rows;
    let ds = s.cols;
    if n == 0 {
        return (T::zero(), Vec::new());
    }
    let gaps = GapSampler::new(mask.keep);
    let chunk = n.div_ceil(PAR_CHUNKS);
    let starts: Vec<usize> = (0..n).step_by(chunk).collect();
    let parts: Vec<(f64, u64, Vec<T>)> = starts
        .par_iter()
        .map(|&start| chunk_fn(s, t, mask, &gaps, start..(start + chunk).min(n)))
        .collect();

    // Fixed chunk order, whatever thread ran which chunk.
    let mut loss = 0.0f64;
    let mut count = 0u64;
    let mut grad = vec![T::zero(); n * ds];
    for (l, c, g) in &parts {
        loss += l;
        count += c;
        for (o, &v) in grad.iter_mut().zip(g) {
            *o = *o + v;
        }
    }
    if count == 0 {
        return (T::zero(), vec![T::zero(); n * ds]);
    }
    // The normalisation is linear, so one scaling at the end replaces knowing |kept| up
    // front (which would take a second pass over the streams).
    let inv = cst::<T>(1.0 / count as f64);
    for o in &mut grad {
        *o = *o * inv;
    }
    (cst(loss / count as f64), grad)
}

/// The portable (unfused) masked RKD-A path, whatever the CPU supports.
#[cfg(test)]
pub(super) fn rkd_angle_masked_unfused<T: Float + Send + Sync>(
    s: MatRef<T>,
    t: MatRef<T>,
    mask: Mask,
) -> (T, Vec<T>) {
    check_pair(&s, &t, "rkd_angle_masked");
    mask.assert_valid("rkd_angle_masked");
    rkd_angle_masked_with(s, t, &mask, masked_chunk_body::<T, Unfused>)
}
