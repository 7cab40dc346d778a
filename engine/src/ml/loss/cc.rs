//! Correlation congruence (Peng et al., ICCV 2019) with hand-written gradients: the paper's
//! Taylor-expanded Gaussian kernel (KD-Zoo `kd_losses/cc.py::CC`), its exact limit and a
//! bilinear kernel, plus the torchdistill and RepDistiller variants, whose semantics differ.

use super::linalg::{gram, square_times, symmetrise, unit_rows, unit_rows_backward};
use super::mask::PairMask;
use super::{check_pair, cst, Mask, MatRef};
use num_traits::Float;
use std::borrow::Cow;

/// Kernel of [`cc`], applied elementwise to `C = F̂ F̂ᵀ` of the L2-normalised rows
/// `F̂_i = F_i / max(‖F_i‖₂, 1e-12)`. Serialised as `{"kind": "taylor", "p": 2, "gamma": 0.4}`
/// (a recipe's CC term, in its stage's content key).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum CcKernel {
    /// The paper's kernel: `K = Σ_{p=0}^{P} e^{−2γ} (2γ)^p / p! · C^{∘p}`, the order-P Taylor
    /// expansion of the Gaussian RBF (KD-Zoo uses P = 2; torchdistill's sample γ = 0.4).
    /// The p = 0 term is e^{−2γ} everywhere, diagonal included.
    Taylor { p: u32, gamma: f64 },
    /// The exact Gaussian RBF `K_ij = exp(−γ‖F̂_i − F̂_j‖²)`, evaluated as
    /// `exp(−2γ(1 − C_ij))`: the P → ∞ limit of [`CcKernel::Taylor`] for every input. The two
    /// forms agree for nonzero rows; a zero row (F̂ = 0) gets e^{−2γ}, as in the series.
    Gaussian { gamma: f64 },
    /// `K = C`, the cosine-similarity matrix. torchdistill's bilinear kernel uses the
    /// **unnormalised** `F Fᵀ` instead (see [`cc_torchdistill`]); this one normalises like the
    /// other kernels of [`cc`], so switching kernels does not also switch the feature scale.
    Bilinear,
}

/// Kernel of [`cc_torchdistill`], applied to the **unnormalised** `F Fᵀ`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum CcTorchdistillKernel {
    /// torchdistill's `gaussian`: `K = e^{−2γ} (1 + Σ_{p=1}^{P} (2γ)^p/p! · (F Fᵀ)^{∘p})`.
    Gaussian { p: u32, gamma: f64 },
    /// torchdistill's `bilinear`: `K = F Fᵀ`.
    Bilinear,
}

/// An elementwise kernel `k(c)` and its derivative, with constants already in `T`.
enum KernelFn<T> {
    /// `scale · Σ_p coeffs[p] c^p`, derivative `scale · Σ_p dcoeffs[p] c^p`.
    Poly {
        scale: T,
        coeffs: Vec<T>,
        dcoeffs: Vec<T>,
    },
    /// `exp(−2γ(1 − c))`, derivative `2γ k`; `scale = e^{−2γ}`.
    Exp { two_gamma: T, scale: T },
    /// `c`, derivative 1.
    Identity,
}

impl<T: Float> KernelFn<T> {
    /// The Taylor kernel `e^{−2γ} Σ_{p=0}^{P} (2γ)^p/p! · c^p`. The bracket is evaluated by
    /// Horner's rule (P multiply-adds, no powers) and scaled by e^{−2γ} at the end, the
    /// order torchdistill uses. Terms whose f64 coefficient underflows to exactly 0 are
    /// dropped: they add nothing for |c| ≤ 1, and this keeps a huge P (e.g. `u32::MAX`) from
    /// allocating billions of zero coefficients.
    fn taylor(p: u32, gamma: f64) -> Self {
        let two_gamma = 2.0 * gamma;
        let mut b = vec![1.0f64];
        for k in 1..=u64::from(p) {
            let next = b[b.len() - 1] * two_gamma / k as f64;
            if next == 0.0 {
                break;
            }
            b.push(next);
        }
        let dcoeffs = b
            .iter()
            .enumerate()
            .skip(1)
            .map(|(k, &v)| cst(v * k as f64))
            .collect();
        KernelFn::Poly {
            scale: cst((-two_gamma).exp()),
            coeffs: b.iter().map(|&v| cst(v)).collect(),
            dcoeffs,
        }
    }

    fn from_cc(kernel: CcKernel) -> Self {
        match kernel {
            CcKernel::Taylor { p, gamma } => Self::taylor(p, gamma),
            CcKernel::Gaussian { gamma } => KernelFn::Exp {
                two_gamma: cst(2.0 * gamma),
                scale: cst((-2.0 * gamma).exp()),
            },
            CcKernel::Bilinear => KernelFn::Identity,
        }
    }

    fn from_torchdistill(kernel: CcTorchdistillKernel) -> Self {
        match kernel {
            CcTorchdistillKernel::Gaussian { p, gamma } => Self::taylor(p, gamma),
            CcTorchdistillKernel::Bilinear => KernelFn::Identity,
        }
    }

    /// `(k(c) − k(0), k'(c))`. The constant `k(0)` is the same for student and teacher and
    /// cancels in `K^S − K^T`; leaving it out before the subtraction keeps that difference
    /// from being lost to rounding when the kernel is dominated by it (|C| ≪ 1, e.g.
    /// torchdistill's unnormalised kernel on small features: in f32 the golden
    /// `pub_n8_tiny` cases lost three digits to it).
    #[inline(always)]
    fn eval_centred(&self, c: T) -> (T, T) {
        match self {
            KernelFn::Poly {
                scale,
                coeffs,
                dcoeffs,
            } => {
                let horner = |cs: &[T]| cs.iter().rev().fold(T::zero(), |acc, &v| acc * c + v);
                let tail = coeffs.get(1..).unwrap_or(&[]);
                (*scale * (c * horner(tail)), *scale * horner(dcoeffs))
            }
            KernelFn::Exp { two_gamma, scale } => {
                // exp(−2γ(1 − c)) − e^{−2γ} = e^{−2γ} (e^{2γc} − 1), with exp_m1 for small c.
                let k = (-*two_gamma * (T::one() - c)).exp();
                (*scale * (*two_gamma * c).exp_m1(), *two_gamma * k)
            }
            KernelFn::Identity => (c, T::one()),
        }
    }
}

/// How the kernel difference is reduced.
#[derive(Clone, Copy)]
enum Reduction {
    /// `Σ(K^S − K^T)² / N²` (`F.mse_loss`): the paper and KD-Zoo.
    SquaredMean,
    /// `‖K^S − K^T‖_F / N²` (`torch.dist(·,·,2)`, not squared): torchdistill's `batchmean`.
    FrobeniusOverN2,
}

/// Correlation congruence as in the paper (golden: KD-Zoo `kd_losses/cc.py::CC`):
/// `F̂_i = F_i / max(‖F_i‖₂, 1e-12)`, `C = F̂ F̂ᵀ`, `K = kernel(C)` elementwise and
/// `L = (1/N²) Σ_ij (K^S_ij − K^T_ij)²`. Returns `(L, dL/dS)`.
///
/// Student and teacher may have different widths. The Gram products run in parallel over
/// rows with a thread-count-independent result. An empty batch gives 0 (torch: NaN).
///
/// # Panics
/// If a matrix buffer does not match its shape or the row counts differ.
pub fn cc<T: Float + Send + Sync + 'static>(
    s: MatRef<T>,
    t: MatRef<T>,
    kernel: CcKernel,
) -> (T, Vec<T>) {
    check_pair(&s, &t, "cc");
    kernel_loss(
        s,
        t,
        true,
        &KernelFn::from_cc(kernel),
        Reduction::SquaredMean,
        None,
    )
}

/// [`cc`] over a random subset of the entries ([`Mask`], pair semantics):
/// `L = Σ_{kept (i,j)} (K^S_ij − K^T_ij)² / |kept|`, |kept| counting ordered entries. The
/// features, their normalisation and the kernel are unchanged; only which entries of K
/// are compared changes. `keep = 1` gives [`cc`] bit for bit; nothing kept gives 0 with a
/// zero gradient.
///
/// # Panics
/// If a matrix buffer does not match its shape, the row counts differ or `mask.keep` is
/// outside (0, 1].
pub fn cc_masked<T: Float + Send + Sync + 'static>(
    s: MatRef<T>,
    t: MatRef<T>,
    kernel: CcKernel,
    mask: Mask,
) -> (T, Vec<T>) {
    check_pair(&s, &t, "cc_masked");
    mask.assert_valid("cc_masked");
    kernel_loss(
        s,
        t,
        true,
        &KernelFn::from_cc(kernel),
        Reduction::SquaredMean,
        Some(&PairMask::new(&mask, s.rows)),
    )
}

/// Correlation congruence as in torchdistill `mid_level.py::CCKDLoss(reduction='batchmean')`:
/// the kernel acts on the **unnormalised** `F Fᵀ` and `L = ‖K^S − K^T‖_F / N²`, the
/// Frobenius norm **not squared**. Without normalisation the value grows like
/// `scale^{2P}` (7.4e27 for P = 4 on inputs of scale 1e3); torchdistill feeds it the
/// outputs of a trainable linear layer. Use it only to compare with torchdistill; [`cc`] is
/// the paper's loss.
///
/// Where `K^S = K^T` exactly the norm has no derivative; the gradient is then 0, as torch's
/// norm backward gives.
///
/// # Panics
/// If a matrix buffer does not match its shape or the row counts differ.
pub fn cc_torchdistill<T: Float + Send + Sync + 'static>(
    s: MatRef<T>,
    t: MatRef<T>,
    kernel: CcTorchdistillKernel,
) -> (T, Vec<T>) {
    check_pair(&s, &t, "cc_torchdistill");
    kernel_loss(
        s,
        t,
        false,
        &KernelFn::from_torchdistill(kernel),
        Reduction::FrobeniusOverN2,
        None,
    )
}

/// The rows fed to the kernel and, when normalised, the raw row norms. Borrows the input
/// unchanged when there is no normalisation.
fn features<T: Float>(x: MatRef<'_, T>, normalise: bool) -> (Cow<'_, [T]>, Vec<T>) {
    if normalise {
        let (y, norms) = unit_rows(x);
        (Cow::Owned(y), norms)
    } else {
        (Cow::Borrowed(x.data), Vec::new())
    }
}

/// The kernel-matrix losses: optional row normalisation, `C = F Fᵀ`, `K = k(C)`, reduction
/// over the entries the optional pair mask keeps (`None`: all N²; the divisor N² becomes
/// |kept|).
fn kernel_loss<T: Float + Send + Sync + 'static>(
    s: MatRef<T>,
    t: MatRef<T>,
    normalise: bool,
    kernel: &KernelFn<T>,
    reduction: Reduction,
    mask: Option<&PairMask>,
) -> (T, Vec<T>) {
    let n = s.rows;
    if n == 0 {
        return (T::zero(), Vec::new());
    }
    // With every entry kept the divisor is N² and the loop below performs exactly the
    // unmasked operations, which is what makes keep = 1 bit-identical.
    let count = mask.map_or(n * n, |m| m.count);
    if count == 0 {
        return (T::zero(), vec![T::zero(); s.data.len()]);
    }
    let (fs, norms_s) = features(s, normalise);
    let (ft, _) = features(t, normalise);
    let fs_mat = MatRef {
        data: &fs[..],
        rows: n,
        cols: s.cols,
    };
    let cs = gram(fs_mat);
    let ct = gram(MatRef {
        data: &ft[..],
        rows: n,
        cols: t.cols,
    });

    // diff = K^S − K^T and k'(C^S); the loss in f64 so an f32 value does not carry N²
    // rounding steps (and so a torchdistill norm of ~1e27 cannot overflow when squared).
    let mut diff = vec![T::zero(); n * n];
    let mut dk = vec![T::zero(); n * n];
    let mut sum_sq = 0.0f64;
    for (idx, (((d, dkv), &c_s), &c_t)) in
        diff.iter_mut().zip(&mut dk).zip(&cs).zip(&ct).enumerate()
    {
        if mask.is_some_and(|m| !m.kept[idx]) {
            // Not compared: diff = 0 leaves it out of the sum and of dL/dK.
            continue;
        }
        let (k_s, dk_s) = kernel.eval_centred(c_s);
        let (k_t, _) = kernel.eval_centred(c_t);
        *d = k_s - k_t;
        *dkv = dk_s;
        let v = d.to_f64().unwrap_or(f64::NAN);
        sum_sq += v * v;
    }
    let n2 = count as f64;
    let (value, factor) = match reduction {
        // dL/dK = 2(K^S − K^T)/N² (/|kept| when masked).
        Reduction::SquaredMean => (sum_sq / n2, 2.0 / n2),
        // dL/dK = (K^S − K^T)/(‖K^S − K^T‖ N²); 0 where the norm is 0.
        Reduction::FrobeniusOverN2 => {
            let norm = sum_sq.sqrt();
            let f = if norm > 0.0 { 1.0 / (norm * n2) } else { 0.0 };
            (norm / n2, f)
        }
    };
    let factor = cst::<T>(factor);
    // dL/dC = dL/dK ⊙ k'(C), then C = F Fᵀ gives dF = (dC + dCᵀ) F.
    let dc: Vec<T> = diff
        .iter()
        .zip(&dk)
        .map(|(&d, &k)| d * factor * k)
        .collect();
    let dfeat = square_times(&symmetrise(&dc, n), fs_mat);
    let grad = if normalise {
        unit_rows_backward(&fs, &norms_s, &dfeat, s.cols)
    } else {
        dfeat
    };
    (cst(value), grad)
}

/// RepDistiller `distiller_zoo/CC.py::Correlation`, a simplified variant that is **not**
/// the paper's loss: `Δ = |S − T|` (same shape required) and
/// `L = (1/(N−1)) Σ_{i=0}^{N−2} Σ_d Δ_{i,d} Δ_{i+1,d}`. It pairs each row only with the next
/// one, so it depends on the batch order and builds no kernel. Returns `(L, dL/dS)`.
///
/// |·| gets gradient 0 where `S = T` exactly (torch's `sign(0) = 0`). With fewer than two
/// rows there are no pairs; this returns 0 with a zero gradient where torch would give NaN.
///
/// # Panics
/// If a matrix buffer does not match its shape or the shapes of `s` and `t` differ.
pub fn cc_repdistiller<T: Float>(s: MatRef<T>, t: MatRef<T>) -> (T, Vec<T>) {
    check_pair(&s, &t, "cc_repdistiller");
    assert!(
        s.cols == t.cols,
        "cc_repdistiller: student has {} columns but teacher has {} (|S − T| needs equal shapes)",
        s.cols,
        t.cols
    );
    let (n, d) = (s.rows, s.cols);
    let mut grad = vec![T::zero(); n * d];
    if n < 2 || d == 0 {
        return (T::zero(), grad);
    }
    let delta: Vec<T> = s
        .data
        .iter()
        .zip(t.data)
        .map(|(&a, &b)| (a - b).abs())
        .collect();
    let inv = cst::<T>(1.0 / (n - 1) as f64);
    let mut loss = 0.0f64;
    for (a, b) in delta.chunks_exact(d).zip(delta.chunks_exact(d).skip(1)) {
        for (&x, &y) in a.iter().zip(b) {
            loss += (x * y).to_f64().unwrap_or(f64::NAN);
        }
    }
    for i in 0..n {
        let (prev, next) = (i.checked_sub(1), (i + 1 < n).then_some(i + 1));
        for k in 0..d {
            let idx = i * d + k;
            let diff = s.data[idx] - t.data[idx];
            if diff == T::zero() {
                continue;
            }
            let mut neighbours = T::zero();
            if let Some(p) = prev {
                neighbours = neighbours + delta[p * d + k];
            }
            if let Some(q) = next {
                neighbours = neighbours + delta[q * d + k];
            }
            grad[idx] = diff.signum() * neighbours * inv;
        }
    }
    (cst(loss / (n - 1) as f64), grad)
}
