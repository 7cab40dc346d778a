//! CPU kernels of the conv models as candle `CustomOp`s with hand-written backward passes:
//! 2-D convolution, BatchNorm and 2×2 max-pooling.
//!
//! Why not candle's own ops:
//! - conv2d: candle's backward computes the input gradient with a direct `conv_transpose2d`
//!   (a scalar dot product per pixel and tap) and the kernel gradient as a convolution whose
//!   kernel is the whole gradient map; on this machine a 16→16 3×3 convolution on a batch of
//!   128 32×32 maps took about 0.8 s forward and backward. Here all three products are
//!   im2col + `gemm`.
//! - BatchNorm: `candle_nn::BatchNorm` is a chain of about a dozen broadcast tensor ops,
//!   each allocating a full-size tensor forward and again backward (about 250 ms forward and
//!   backward on a 128×16×32×32 batch); here it is one pass for the statistics and one for
//!   the output, and two for the backward.
//! - max-pool: candle's backward multiplies the gradient by the fraction of the window that
//!   ties for the maximum (¼ for a unique maximum) and, for odd sides, routes it to the wrong
//!   windows.
//!
//! Determinism: every output element is computed inside one rayon task by a fixed sequence
//! of operations (`gemm` on one thread, whose summation order is fixed by its blocking), and
//! the kernel gradient sums fixed chunks of the batch in batch order. Results are therefore
//! bit-identical for any number of threads.

use candle_core::{
    backend::BackendStorage, bail, CpuStorage, CustomOp1, CustomOp2, CustomOp3, DType, Layout,
    Result, Shape, Tensor, WithDType,
};
use num_traits::Float;
use rayon::prelude::*;

use crate::ml::matmul::{self as matrix, Parallelism};

/// The element types the kernels run on: f32 for models, f64 for gradient checks.
trait Elem: Float + std::ops::AddAssign + WithDType + Send + Sync + 'static {}
impl Elem for f32 {}
impl Elem for f64 {}

/// Runs `f` on the contiguous host data of `t` (copying only if `t` is strided).
fn with_host<T: Elem, R>(t: &Tensor, f: impl FnOnce(&[T]) -> Result<R>) -> Result<R> {
    let t = t.contiguous()?;
    let (storage, layout) = t.storage_and_layout();
    let candle_core::Storage::Cpu(cpu) = &*storage else {
        bail!("the conv kernels run on CPU tensors only")
    };
    let data = cpu.as_slice::<T>()?;
    let Some((start, end)) = layout.contiguous_offsets() else {
        bail!("internal: a contiguous tensor without contiguous offsets")
    };
    f(&data[start..end])
}

fn contiguous<'a, T>(data: &'a [T], layout: &Layout, what: &str) -> Result<&'a [T]> {
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => bail!("{what} must be contiguous"),
    }
}

/// The shapes of one convolution (square kernel, no dilation, no groups).
#[derive(Clone, Copy, Debug)]
struct Geom {
    batch: usize,
    c_in: usize,
    h: usize,
    w: usize,
    c_out: usize,
    k: usize,
    stride: usize,
    pad: usize,
    ho: usize,
    wo: usize,
}

impl Geom {
    fn new(x: &Shape, kernel: &Shape, stride: usize, pad: usize) -> Result<Self> {
        let (batch, c_in, h, w) = x.dims4()?;
        let (c_out, kc, kh, kw) = kernel.dims4()?;
        if kc != c_in || kh != kw || stride == 0 {
            bail!("conv2d: kernel {kernel:?} (stride {stride}) does not fit input {x:?}");
        }
        if h + 2 * pad < kh || w + 2 * pad < kw {
            bail!("conv2d: a {h}×{w} input padded by {pad} is smaller than the {kh}×{kw} kernel");
        }
        Ok(Self {
            batch,
            c_in,
            h,
            w,
            c_out,
            k: kh,
            stride,
            pad,
            ho: (h + 2 * pad - kh) / stride + 1,
            wo: (w + 2 * pad - kw) / stride + 1,
        })
    }

    /// Rows of the im2col matrix: one per (input channel, kernel row, kernel column).
    fn ckk(&self) -> usize {
        self.c_in * self.k * self.k
    }

    fn pixels_out(&self) -> usize {
        self.ho * self.wo
    }

    fn sample_in(&self) -> usize {
        self.c_in * self.h * self.w
    }

    fn sample_out(&self) -> usize {
        self.c_out * self.ho * self.wo
    }

    /// The output columns `ox` whose input column `ox·stride + kw − pad` is inside the image.
    fn valid_cols(&self, kw: usize) -> std::ops::Range<usize> {
        let lo = (self.pad.saturating_sub(kw))
            .div_ceil(self.stride)
            .min(self.wo);
        let hi = (self.w + self.pad)
            .saturating_sub(kw)
            .div_ceil(self.stride)
            .clamp(lo, self.wo);
        lo..hi
    }

    /// The input row of output row `oy` at kernel row `kh`, if inside the image.
    fn input_row(&self, oy: usize, kh: usize) -> Option<usize> {
        (oy * self.stride + kh)
            .checked_sub(self.pad)
            .filter(|&iy| iy < self.h)
    }
}

/// One sample's (C·k·k) × (Ho·Wo) patch matrix; every element is written.
fn im2col<T: Elem>(x: &[T], g: &Geom, col: &mut [T]) {
    let (hw, pixels) = (g.h * g.w, g.pixels_out());
    for c in 0..g.c_in {
        let plane = &x[c * hw..(c + 1) * hw];
        for kh in 0..g.k {
            for kw in 0..g.k {
                let row = &mut col[((c * g.k + kh) * g.k + kw) * pixels..][..pixels];
                let cols = g.valid_cols(kw);
                for oy in 0..g.ho {
                    let dst = &mut row[oy * g.wo..(oy + 1) * g.wo];
                    let Some(iy) = g.input_row(oy, kh) else {
                        dst.fill(T::zero());
                        continue;
                    };
                    let src = &plane[iy * g.w..(iy + 1) * g.w];
                    dst[..cols.start].fill(T::zero());
                    dst[cols.end..].fill(T::zero());
                    if g.stride == 1 {
                        let from = cols.start + kw - g.pad;
                        dst[cols.clone()].copy_from_slice(&src[from..from + cols.len()]);
                    } else {
                        for ox in cols.clone() {
                            dst[ox] = src[ox * g.stride + kw - g.pad];
                        }
                    }
                }
            }
        }
    }
}

/// Adds the patch-matrix gradient `col` back onto one sample's input gradient `dx`, in a
/// fixed order.
fn col2im<T: Elem>(col: &[T], g: &Geom, dx: &mut [T]) {
    let (hw, pixels) = (g.h * g.w, g.pixels_out());
    for c in 0..g.c_in {
        let plane = &mut dx[c * hw..(c + 1) * hw];
        for kh in 0..g.k {
            for kw in 0..g.k {
                let row = &col[((c * g.k + kh) * g.k + kw) * pixels..][..pixels];
                let cols = g.valid_cols(kw);
                for oy in 0..g.ho {
                    let Some(iy) = g.input_row(oy, kh) else {
                        continue;
                    };
                    let src = &row[oy * g.wo..(oy + 1) * g.wo];
                    let dst = &mut plane[iy * g.w..(iy + 1) * g.w];
                    for ox in cols.clone() {
                        let ix = ox * g.stride + kw - g.pad;
                        dst[ix] += src[ox];
                    }
                }
            }
        }
    }
}

fn conv_fwd<T: Elem>(x: &[T], kernel: &[T], g: &Geom) -> Vec<T> {
    let mut out = vec![T::zero(); g.batch * g.sample_out()];
    if out.is_empty() {
        return out;
    }
    out.par_chunks_mut(g.sample_out())
        .enumerate()
        .for_each_init(
            || vec![T::zero(); g.ckk() * g.pixels_out()],
            |col, (i, o)| {
                im2col(&x[i * g.sample_in()..(i + 1) * g.sample_in()], g, col);
                // out (C_out × pixels) = W (C_out × ckk) · col (ckk × pixels)
                matrix::product(
                    g.c_out,
                    g.pixels_out(),
                    g.ckk(),
                    o,
                    false,
                    (kernel, g.ckk(), 1),
                    (col, g.pixels_out(), 1),
                    Parallelism::None,
                );
            },
        );
    out
}

/// Samples per task of the kernel gradient; fixed, so that the order in which per-sample
/// contributions are summed does not depend on the thread count.
const KERNEL_GRAD_CHUNK: usize = 8;

/// (input gradient, kernel gradient).
fn conv_bwd<T: Elem>(x: &[T], kernel: &[T], dy: &[T], g: &Geom) -> (Vec<T>, Vec<T>) {
    let (ckk, pixels) = (g.ckk(), g.pixels_out());
    let mut dx = vec![T::zero(); g.batch * g.sample_in()];
    let mut dw = vec![T::zero(); g.c_out * ckk];
    if dx.is_empty() || dy.is_empty() {
        return (dx, dw);
    }
    let partials: Vec<Vec<T>> = dx
        .par_chunks_mut(KERNEL_GRAD_CHUNK * g.sample_in())
        .enumerate()
        .map(|(chunk, dxc)| {
            let mut dw = vec![T::zero(); g.c_out * ckk];
            let mut col = vec![T::zero(); ckk * pixels];
            let mut dcol = vec![T::zero(); ckk * pixels];
            for (j, dxb) in dxc.chunks_mut(g.sample_in()).enumerate() {
                let i = chunk * KERNEL_GRAD_CHUNK + j;
                let dyb = &dy[i * g.sample_out()..(i + 1) * g.sample_out()];
                im2col(&x[i * g.sample_in()..(i + 1) * g.sample_in()], g, &mut col);
                // dW (C_out × ckk) += dy_b (C_out × pixels) · colᵀ (pixels × ckk)
                matrix::product(
                    g.c_out,
                    ckk,
                    pixels,
                    &mut dw,
                    j > 0,
                    (dyb, pixels, 1),
                    (&col, 1, pixels),
                    Parallelism::None,
                );
                // dcol (ckk × pixels) = Wᵀ (ckk × C_out) · dy_b (C_out × pixels)
                matrix::product(
                    ckk,
                    pixels,
                    g.c_out,
                    &mut dcol,
                    false,
                    (kernel, 1, ckk),
                    (dyb, pixels, 1),
                    Parallelism::None,
                );
                col2im(&dcol, g, dxb);
            }
            dw
        })
        .collect();
    for p in &partials {
        for (d, v) in dw.iter_mut().zip(p) {
            *d += *v;
        }
    }
    (dx, dw)
}

struct Conv2dOp {
    stride: usize,
    padding: usize,
}

impl Conv2dOp {
    fn bwd_typed<T: Elem>(
        &self,
        x: &Tensor,
        kernel: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let g = Geom::new(x.shape(), kernel.shape(), self.stride, self.padding)?;
        let (dx, dw) = with_host::<T, _>(x, |xs| {
            with_host::<T, _>(kernel, |ks| {
                with_host::<T, _>(dy, |dys| Ok(conv_bwd(xs, ks, dys, &g)))
            })
        })?;
        Ok((
            Some(Tensor::from_vec(dx, x.shape(), x.device())?),
            Some(Tensor::from_vec(dw, kernel.shape(), kernel.device())?),
        ))
    }
}

impl CustomOp2 for Conv2dOp {
    fn name(&self) -> &'static str {
        "conv2d-im2col"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let g = Geom::new(l1.shape(), l2.shape(), self.stride, self.padding)?;
        let out = match (s1, s2) {
            (CpuStorage::F32(x), CpuStorage::F32(k)) => CpuStorage::F32(conv_fwd(
                contiguous(x, l1, "conv2d input")?,
                contiguous(k, l2, "conv2d kernel")?,
                &g,
            )),
            (CpuStorage::F64(x), CpuStorage::F64(k)) => CpuStorage::F64(conv_fwd(
                contiguous(x, l1, "conv2d input")?,
                contiguous(k, l2, "conv2d kernel")?,
                &g,
            )),
            _ => bail!(
                "conv2d: input {:?} and kernel {:?} must both be F32 or both F64",
                s1.dtype(),
                s2.dtype()
            ),
        };
        Ok((out, (g.batch, g.c_out, g.ho, g.wo).into()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        kernel: &Tensor,
        _res: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        match x.dtype() {
            DType::F32 => self.bwd_typed::<f32>(x, kernel, dy),
            DType::F64 => self.bwd_typed::<f64>(x, kernel, dy),
            dt => bail!("conv2d: dtype {dt:?} unsupported (F32 or F64)"),
        }
    }
}

/// `x` (B, C, H, W) convolved with `kernel` (C_out, C, k, k), zero padding `padding`, as
/// candle's `conv2d(kernel, padding, stride, 1, 1)`.
pub(crate) fn conv2d(x: &Tensor, kernel: &Tensor, stride: usize, padding: usize) -> Result<Tensor> {
    x.contiguous()?
        .apply_op2(&kernel.contiguous()?, Conv2dOp { stride, padding })
}

/// 2×2 max-pool with stride 2, as PyTorch's `max_pool2d(x, 2)`: a trailing odd row/column
/// is dropped (floor mode) and the gradient of a window goes to its first maximum.
pub(crate) fn max_pool2(x: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op1(MaxPool2)
}

struct MaxPool2;

/// Calls `visit(plane, output index within the plane, input index)` with the first maximum
/// (row-major) of each 2×2 window; NaN wins, as in PyTorch, so that it propagates.
fn window_argmax<T: Float>(
    x: &[T],
    planes: usize,
    h: usize,
    w: usize,
    mut visit: impl FnMut(usize, usize, usize),
) {
    let (ho, wo) = (h / 2, w / 2);
    for p in 0..planes {
        let plane = &x[p * h * w..(p + 1) * h * w];
        for i in 0..ho {
            for j in 0..wo {
                let at = |k: usize| (2 * i + k / 2) * w + 2 * j + k % 2;
                let mut best = 0;
                for k in 1..4 {
                    let (v, b) = (plane[at(k)], plane[at(best)]);
                    if (v > b || v.is_nan()) && !b.is_nan() {
                        best = k;
                    }
                }
                visit(p, i * wo + j, p * h * w + at(best));
            }
        }
    }
}

fn pool_fwd<T: Float>(x: &[T], planes: usize, h: usize, w: usize) -> Vec<T> {
    let per = (h / 2) * (w / 2);
    let mut out = vec![T::zero(); planes * per];
    window_argmax(x, planes, h, w, |p, o, src| out[p * per + o] = x[src]);
    out
}

fn pool_bwd<T: Float>(x: &[T], grad: &[T], planes: usize, h: usize, w: usize) -> Vec<T> {
    let per = (h / 2) * (w / 2);
    let mut out = vec![T::zero(); x.len()];
    window_argmax(x, planes, h, w, |p, o, src| out[src] = grad[p * per + o]);
    out
}

impl MaxPool2 {
    fn bwd_typed<T: Elem>(arg: &Tensor, grad: &Tensor) -> Result<Tensor> {
        let (b, c, h, w) = arg.dims4()?;
        let dx = with_host::<T, _>(arg, |x| {
            with_host::<T, _>(grad, |g| Ok(pool_bwd(x, g, b * c, h, w)))
        })?;
        Tensor::from_vec(dx, arg.shape(), arg.device())
    }
}

impl CustomOp1 for MaxPool2 {
    fn name(&self) -> &'static str {
        "max-pool-2x2"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let (b, c, h, w) = layout.shape().dims4()?;
        let out = match storage {
            CpuStorage::F32(v) => CpuStorage::F32(pool_fwd(
                contiguous(v, layout, "max-pool input")?,
                b * c,
                h,
                w,
            )),
            CpuStorage::F64(v) => CpuStorage::F64(pool_fwd(
                contiguous(v, layout, "max-pool input")?,
                b * c,
                h,
                w,
            )),
            other => bail!(
                "max-pool: dtype {:?} unsupported (F32 or F64)",
                other.dtype()
            ),
        };
        Ok((out, (b, c, h / 2, w / 2).into()))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(match arg.dtype() {
            DType::F32 => Self::bwd_typed::<f32>(arg, grad_res)?,
            DType::F64 => Self::bwd_typed::<f64>(arg, grad_res)?,
            dt => bail!("max-pool: dtype {dt:?} unsupported (F32 or F64)"),
        }))
    }
}

/// Per-channel mean and biased variance of `x` (B, C, H, W), summed in f64 in a fixed order
/// (channels in parallel, each channel sequentially).
pub(crate) fn channel_stats(x: &Tensor) -> Result<(Vec<f64>, Vec<f64>)> {
    let (b, c, h, w) = x.dims4()?;
    match x.dtype() {
        DType::F32 => with_host::<f32, _>(x, |v| Ok(stats_typed(v, b, c, h * w))),
        DType::F64 => with_host::<f64, _>(x, |v| Ok(stats_typed(v, b, c, h * w))),
        dt => bail!("batch-norm: dtype {dt:?} unsupported (F32 or F64)"),
    }
}

fn stats_typed<T: Elem>(x: &[T], b: usize, c: usize, hw: usize) -> (Vec<f64>, Vec<f64>) {
    let n = (b * hw) as f64;
    (0..c)
        .into_par_iter()
        .map(|ch| {
            let planes = || (0..b).map(move |i| &x[(i * c + ch) * hw..(i * c + ch + 1) * hw]);
            let sum: f64 = planes().flatten().map(|&v| WithDType::to_f64(v)).sum();
            let mean = sum / n;
            let sq: f64 = planes()
                .flatten()
                .map(|&v| (WithDType::to_f64(v) - mean).powi(2))
                .sum();
            (mean, sq / n)
        })
        .unzip()
}

/// `y = (x − mean_c) · invstd_c · γ_c + β_c` with the per-channel statistics given. In
/// training the statistics are the batch's own and the backward differentiates through
/// them; in evaluation they are constants (the running statistics).
struct BatchNormOp {
    mean: Vec<f64>,
    invstd: Vec<f64>,
    train: bool,
}

impl BatchNormOp {
    fn fwd_typed<T: Elem>(&self, x: &[T], gamma: &[T], beta: &[T], c: usize, hw: usize) -> Vec<T> {
        let cast = |v: f64| <T as WithDType>::from_f64(v);
        // y = (x − mean_c) · scale_c + β_c. Subtracting the mean first (rather than folding
        // it into the shift, as PyTorch does) avoids cancellation when |mean| ≫ std.
        let coef: Vec<(T, T, T)> = (0..c)
            .map(|ch| {
                let s = self.invstd[ch] * WithDType::to_f64(gamma[ch]);
                (cast(self.mean[ch]), cast(s), beta[ch])
            })
            .collect();
        let mut y = vec![T::zero(); x.len()];
        y.par_chunks_mut(hw)
            .zip(x.par_chunks(hw))
            .enumerate()
            .for_each(|(plane, (yp, xp))| {
                let (m, s, b) = coef[plane % c];
                for (o, &v) in yp.iter_mut().zip(xp) {
                    *o = (v - m) * s + b;
                }
            });
        y
    }

    /// (dx, dγ, dβ).
    fn bwd_typed<T: Elem>(
        &self,
        x: &[T],
        gamma: &[T],
        dy: &[T],
        b: usize,
        c: usize,
        hw: usize,
    ) -> (Vec<T>, Vec<T>, Vec<T>) {
        let cast = |v: f64| <T as WithDType>::from_f64(v);
        let f = |v: T| WithDType::to_f64(v);
        // Σ dy and Σ dy · x̂ per channel, in f64 and a fixed order.
        let (dbeta, dgamma): (Vec<f64>, Vec<f64>) = (0..c)
            .into_par_iter()
            .map(|ch| {
                let (mut sd, mut sdx) = (0.0, 0.0);
                for i in 0..b {
                    let at = (i * c + ch) * hw..(i * c + ch + 1) * hw;
                    for (&d, &v) in dy[at.clone()].iter().zip(&x[at]) {
                        sd += f(d);
                        sdx += f(d) * (f(v) - self.mean[ch]) * self.invstd[ch];
                    }
                }
                (sd, sdx)
            })
            .unzip();
        let n = (b * hw) as f64;
        // Training: dx = γ·invstd/N · (N·dy − Σdy − x̂·Σdy·x̂), written per channel as
        // dx = dy·a + (x − mean)·k + m; evaluation: dx = dy·γ·invstd.
        let coef: Vec<[T; 4]> = (0..c)
            .map(|ch| {
                let a = f(gamma[ch]) * self.invstd[ch];
                let (k, m) = if self.train {
                    (-a * dgamma[ch] * self.invstd[ch] / n, -a * dbeta[ch] / n)
                } else {
                    (0.0, 0.0)
                };
                [cast(a), cast(self.mean[ch]), cast(k), cast(m)]
            })
            .collect();
        let mut dx = vec![T::zero(); x.len()];
        dx.par_chunks_mut(hw)
            .zip(x.par_chunks(hw).zip(dy.par_chunks(hw)))
            .enumerate()
            .for_each(|(plane, (o, (xp, dp)))| {
                let [a, mean, k, m] = coef[plane % c];
                for ((o, &v), &d) in o.iter_mut().zip(xp).zip(dp) {
                    *o = d * a + (v - mean) * k + m;
                }
            });
        (
            dx,
            dgamma.into_iter().map(cast).collect(),
            dbeta.into_iter().map(cast).collect(),
        )
    }

    fn bwd_host<T: Elem>(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (b, c, h, w) = x.dims4()?;
        let (dx, dg, db) = with_host::<T, _>(x, |xs| {
            with_host::<T, _>(gamma, |gs| {
                with_host::<T, _>(dy, |ds| Ok(self.bwd_typed(xs, gs, ds, b, c, h * w)))
            })
        })?;
        Ok((
            Some(Tensor::from_vec(dx, x.shape(), x.device())?),
            Some(Tensor::from_vec(dg, c, x.device())?),
            Some(Tensor::from_vec(db, c, x.device())?),
        ))
    }
}

impl CustomOp3 for BatchNormOp {
    fn name(&self) -> &'static str {
        "batch-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (_, c, h, w) = l1.shape().dims4()?;
        if l2.shape().dims() != [c] || l3.shape().dims() != [c] || self.mean.len() != c {
            bail!("batch-norm: weight, bias and statistics must have {c} entries");
        }
        let out = match (s1, s2, s3) {
            (CpuStorage::F32(x), CpuStorage::F32(g), CpuStorage::F32(b)) => {
                CpuStorage::F32(self.fwd_typed(
                    contiguous(x, l1, "batch-norm input")?,
                    contiguous(g, l2, "batch-norm weight")?,
                    contiguous(b, l3, "batch-norm bias")?,
                    c,
                    h * w,
                ))
            }
            (CpuStorage::F64(x), CpuStorage::F64(g), CpuStorage::F64(b)) => {
                CpuStorage::F64(self.fwd_typed(
                    contiguous(x, l1, "batch-norm input")?,
                    contiguous(g, l2, "batch-norm weight")?,
                    contiguous(b, l3, "batch-norm bias")?,
                    c,
                    h * w,
                ))
            }
            _ => bail!(
                "batch-norm: input {:?}, weight {:?} and bias {:?} must share F32 or F64",
                s1.dtype(),
                s2.dtype(),
                s3.dtype()
            ),
        };
        Ok((out, l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        _beta: &Tensor,
        _res: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        match x.dtype() {
            DType::F32 => self.bwd_host::<f32>(x, gamma, dy),
            DType::F64 => self.bwd_host::<f64>(x, gamma, dy),
            dt => bail!("batch-norm: dtype {dt:?} unsupported (F32 or F64)"),
        }
    }
}

/// BatchNorm of `x` (B, C, H, W) with weight `gamma` and bias `beta` (C), normalising with
/// the given per-channel `mean` and `invstd` = 1/√(var + eps). `train` says whether those
/// are the batch's own statistics (which the gradient then flows through, as PyTorch's
/// training mode) or constants (evaluation).
pub(crate) fn batch_norm(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    mean: Vec<f64>,
    invstd: Vec<f64>,
    train: bool,
) -> Result<Tensor> {
    x.contiguous()?.apply_op3(
        &gamma.contiguous()?,
        &beta.contiguous()?,
        BatchNormOp {
            mean,
            invstd,
            train,
        },
    )
}

#[cfg(test)]
mod tests;
