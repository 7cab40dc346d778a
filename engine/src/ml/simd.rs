//! The fixed-lane reductions every hand-written kernel shares (losses, k-means, metrics).
//!
//! Each splits its reduction into [`LANES`] independent partial sums and adds them up in a
//! fixed order at the end. The split is what lets LLVM vectorise a float reduction (it may
//! not reassociate one running sum); it also fixes the summation order, so a result does not
//! depend on the SIMD width the code is compiled for, nor on the thread count of the
//! caller. They use plain `a + b·c` (two roundings, never a fused multiply-add), so a copy
//! compiled for AVX2 (callers' `#[target_feature]` trampolines inline them) rounds exactly
//! like the portable one.

use num_traits::Float;

/// Independent partial sums in every reduction of this module.
pub const LANES: usize = 8;

/// `Σ (a − b)²` with the fixed lane split.
#[inline(always)]
pub fn sq_dist<T: Float>(a: &[T], b: &[T]) -> T {
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

/// [`sq_dist`] from one point to four others at once, with exactly the same operations per
/// pair (so the same bits). One pair is a single chain of dependent additions, which keeps
/// the CPU waiting on their latency; four independent chains overlap (about a quarter off
/// the whole k-means on the development machine).
#[inline(always)]
pub fn sq_dist_x4<T: Float>(a: &[T], b: [&[T]; 4]) -> [T; 4] {
    let z = [T::zero(); LANES];
    let (mut a0, mut a1, mut a2, mut a3) = (z, z, z, z);
    let mut ac = a.chunks_exact(LANES);
    let mut b0 = b[0].chunks_exact(LANES);
    let mut b1 = b[1].chunks_exact(LANES);
    let mut b2 = b[2].chunks_exact(LANES);
    let mut b3 = b[3].chunks_exact(LANES);
    for ((((x, y0), y1), y2), y3) in (&mut ac)
        .zip(&mut b0)
        .zip(&mut b1)
        .zip(&mut b2)
        .zip(&mut b3)
    {
        for l in 0..LANES {
            let d = x[l] - y0[l];
            a0[l] = a0[l] + d * d;
            let d = x[l] - y1[l];
            a1[l] = a1[l] + d * d;
            let d = x[l] - y2[l];
            a2[l] = a2[l] + d * d;
            let d = x[l] - y3[l];
            a3[l] = a3[l] + d * d;
        }
    }
    let finish = |acc: [T; LANES], rest: &[T]| {
        let mut tail = T::zero();
        for (&x, &y) in ac.remainder().iter().zip(rest) {
            let d = x - y;
            tail = tail + d * d;
        }
        acc.iter().fold(tail, |s, &v| s + v)
    };
    [
        finish(a0, b0.remainder()),
        finish(a1, b1.remainder()),
        finish(a2, b2.remainder()),
        finish(a3, b3.remainder()),
    ]
}

/// `a · b` with the fixed lane split.
#[inline(always)]
pub fn dot<T: Float>(a: &[T], b: &[T]) -> T {
    let mut acc = [T::zero(); LANES];
    let mut ac = a.chunks_exact(LANES);
    let mut bc = b.chunks_exact(LANES);
    for (x, y) in (&mut ac).zip(&mut bc) {
        for l in 0..LANES {
            acc[l] = acc[l] + x[l] * y[l];
        }
    }
    let mut tail = T::zero();
    for (&x, &y) in ac.remainder().iter().zip(bc.remainder()) {
        tail = tail + x * y;
    }
    acc.iter().fold(tail, |s, &v| s + v)
}

/// `Σ v` with the fixed lane split.
#[inline(always)]
pub fn sum<T: Float>(v: &[T]) -> T {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ml::rng::Rng;

    #[test]
    fn four_way_distance_matches_the_single_one_bit_for_bit() {
        let mut rng = Rng::new(4);
        for dim in [1usize, 7, 8, 13, 64, 130] {
            let v: Vec<f32> = (0..5 * dim).map(|_| rng.normal() as f32 * 3.0).collect();
            let r = |i: usize| &v[i * dim..(i + 1) * dim];
            let four = sq_dist_x4(r(0), [r(1), r(2), r(3), r(4)]);
            for (j, d) in four.iter().enumerate() {
                assert_eq!(d.to_bits(), sq_dist(r(0), r(j + 1)).to_bits(), "{dim}");
            }
        }
    }

    #[test]
    fn reductions_agree_with_plain_sums() {
        let a: Vec<f64> = (0..21).map(|i| i as f64 * 0.5).collect();
        let b: Vec<f64> = (0..21).map(|i| 10.0 - i as f64).collect();
        let plain_dot: f64 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
        let plain_sq: f64 = a.iter().zip(&b).map(|(x, y)| (x - y) * (x - y)).sum();
        assert!((dot(&a, &b) - plain_dot).abs() < 1e-9);
        assert!((sq_dist(&a, &b) - plain_sq).abs() < 1e-9);
        assert!((sum(&a) - a.iter().sum::<f64>()).abs() < 1e-12);
    }
}
