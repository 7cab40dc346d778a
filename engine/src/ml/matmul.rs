//! The one wrapper of the `gemm` crate's matrix product, shared by the convolution kernels
//! and the losses' Gram matrices. `gemm`'s kernels are the machine's best (AVX-512 or
//! AVX2+FMA, chosen at run time); they reduce each output element in an order fixed by the
//! blocking, not by the thread count, so results do not depend on the number of threads.

use num_traits::One;

pub use gemm::Parallelism;

/// A matrix operand: its data with the row and column strides of its elements.
pub type Operand<'a, T> = (&'a [T], usize, usize);

/// `dst (m×n, row-major) = [dst +] lhs · rhs` with `lhs` m×k and `rhs` k×n. `T` must be f32
/// or f64 (the types `gemm` multiplies; anything else panics inside `gemm`).
#[allow(clippy::too_many_arguments)]
pub fn product<T: Copy + One + 'static>(
    m: usize,
    n: usize,
    k: usize,
    dst: &mut [T],
    accumulate: bool,
    lhs: Operand<T>,
    rhs: Operand<T>,
    parallelism: Parallelism,
) {
    assert_eq!(dst.len(), m * n, "matrix product: destination is not m×n");
    let fits = |(data, rs, cs): Operand<T>, rows: usize, cols: usize| {
        rows == 0 || cols == 0 || (rows - 1) * rs + (cols - 1) * cs < data.len()
    };
    assert!(
        fits(lhs, m, k) && fits(rhs, k, n),
        "matrix product: operand smaller than its shape"
    );
    // SAFETY: the asserts keep every strided access inside the slices; `dst` is exactly m×n
    // and row-major (row stride n, column stride 1). With `accumulate` false `gemm` does not
    // read `dst`.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            lhs.0.as_ptr(),
            lhs.2 as isize,
            lhs.1 as isize,
            rhs.0.as_ptr(),
            rhs.2 as isize,
            rhs.1 as isize,
            T::one(),
            T::one(),
            false,
            false,
            false,
            parallelism,
        );
    }
}

/// Threads for a product of `work` multiply-adds: rayon's, above the size where splitting
/// pays for itself.
pub fn parallelism(work: usize) -> Parallelism {
    match rayon::current_num_threads() {
        t if t > 1 && work >= PARALLEL_WORK => Parallelism::Rayon(t),
        _ => Parallelism::None,
    }
}

const PARALLEL_WORK: usize = 1 << 24;
