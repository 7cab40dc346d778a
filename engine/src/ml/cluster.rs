//! k-means (k-means++ seeding, Lloyd iterations): the superclasses of the `superclass`
//! sampler (clusters of a teacher's embeddings) and the clustering behind NMI.

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::rng::Rng;
use super::simd::sq_dist;

/// Input k-means cannot cluster.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClusterError {
    #[error("k-means input holds {len} values but {n} points × {dim} dimensions need {}", n * dim)]
    Shape { len: usize, n: usize, dim: usize },
    #[error("k-means needs at least one dimension and one cluster (got dim = {dim}, k = {k})")]
    Empty { dim: usize, k: usize },
    #[error("k-means with k = {k} needs at least {k} points but got {n}; lower `clusters`")]
    TooFewPoints { k: usize, n: usize },
    #[error(
        "k-means input is not finite at point {point}, dimension {dim}; the teacher \
         embeddings contain NaN or infinity"
    )]
    NonFinite { point: usize, dim: usize },
}

/// A k-means clustering, serialisable so that it can be cached as an artifact.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct KMeans {
    pub k: usize,
    pub dim: usize,
    /// The cluster of each point, in `0..k`.
    pub assignments: Vec<u32>,
    /// `k × dim`, row-major.
    pub centroids: Vec<f32>,
    /// Sum of squared distances of the points to their centroids.
    pub inertia: f64,
    /// Lloyd iterations run (centroid update + reassignment).
    pub iterations: usize,
    /// Whether the assignments stopped changing before `max_iter`.
    pub converged: bool,
}

/// k-means on `n` points of dimension `dim` (row-major `x`) with k-means++ seeding (D²
/// sampling, Arthur & Vassilvitskii 2007) and Lloyd iterations until the assignments stop
/// changing or `max_iter` iterations have run.
///
/// A cluster left empty by an update is re-seeded with the point farthest from its own
/// centroid (taken from a cluster that keeps at least one point). If every point already
/// sits on its centroid (fewer distinct points than k), the cluster stays empty: there is
/// nothing left to split.
///
/// Deterministic for a given seed: rayon only splits the points of the distance passes
/// (each point's result depends on that point alone), every sum runs in a fixed order
/// (8-lane distances, potentials and centroid sums over ascending point indices), and the
/// AVX2 kernels round like the portable ones, so neither the thread count nor the CPU
/// changes a bit.
pub fn kmeans(
    x: &[f32],
    n: usize,
    dim: usize,
    k: usize,
    seed: u64,
    max_iter: usize,
) -> Result<KMeans, ClusterError> {
    check_kmeans_input(x, n, dim, k)?;
    let centroids = plus_plus(x, dim, k, &mut Rng::fork(seed, "kmeans++"));
    Ok(lloyd(x, dim, k, centroids, max_iter))
}

fn check_kmeans_input(x: &[f32], n: usize, dim: usize, k: usize) -> Result<(), ClusterError> {
    if dim == 0 || k == 0 {
        return Err(ClusterError::Empty { dim, k });
    }
    if n.checked_mul(dim) != Some(x.len()) {
        return Err(ClusterError::Shape {
            len: x.len(),
            n,
            dim,
        });
    }
    if n < k {
        return Err(ClusterError::TooFewPoints { k, n });
    }
    if let Some(at) = x.iter().position(|v| !v.is_finite()) {
        return Err(ClusterError::NonFinite {
            point: at / dim,
            dim: at % dim,
        });
    }
    Ok(())
}

/// Greedy k-means++ seeding: the first centre uniform; for each next one, draw
/// `2 + ⌊ln k⌋` candidates with probability proportional to the squared distance to the
/// nearest centre so far (D² sampling) and keep the one that lowers the total squared
/// distance most. Plain k-means++ (one candidate) puts two centres in one well-separated
/// cluster often enough to leave another without one, which Lloyd cannot undo; the greedy
/// variant (Arthur & Vassilvitskii's suggestion, scikit-learn's default) rarely does.
fn plus_plus(x: &[f32], dim: usize, k: usize, rng: &mut Rng) -> Vec<f32> {
    let n = x.len() / dim;
    let row = |i: usize| &x[i * dim..(i + 1) * dim];
    let trials = 2 + (k as f64).ln().floor() as usize;
    let mut centroids = Vec::with_capacity(k * dim);
    let first = rng.below(n);
    centroids.extend_from_slice(row(first));
    let mut d2: Vec<f64> = (0..n)
        .map(|i| f64::from(sq_dist(row(i), row(first))))
        .collect();
    let mut candidate_d2 = vec![0f64; n];
    let mut best_d2 = vec![0f64; n];
    for _ in 1..k {
        let total: f64 = d2.iter().sum();
        if total == 0.0 {
            // Every point coincides with a centre: any choice duplicates one.
            centroids.extend_from_slice(row(rng.below(n)));
            continue;
        }
        let mut best: Option<(usize, f64)> = None;
        for _ in 0..trials {
            let pick = d2_sample(&d2, rng.uniform() * total);
            closer(x, dim, row(pick), &d2, &mut candidate_d2);
            let potential: f64 = candidate_d2.iter().sum();
            if best.is_none_or(|b| potential < b.1) {
                best = Some((pick, potential));
                std::mem::swap(&mut best_d2, &mut candidate_d2);
            }
        }
        let (pick, _) = best.expect("at least two trials");
        centroids.extend_from_slice(row(pick));
        std::mem::swap(&mut d2, &mut best_d2);
    }
    centroids
}

/// The point at which the running sum of `d2` first exceeds `target` (`0 ≤ target < Σ d2`).
fn d2_sample(d2: &[f64], target: f64) -> usize {
    let mut acc = 0.0;
    let mut pick = 0;
    for (i, &d) in d2.iter().enumerate() {
        if d > 0.0 {
            // Remember the last eligible point: rounding may leave `acc` just short of
            // `target` at the end, and a zero-distance point (an existing centre) must never
            // be picked while others are left.
            pick = i;
            acc += d;
            if acc > target {
                break;
            }
        }
    }
    pick
}

/// Lloyd's iterations from the given centroids.
fn lloyd(x: &[f32], dim: usize, k: usize, mut centroids: Vec<f32>, max_iter: usize) -> KMeans {
    let n = x.len() / dim;
    let mut assignments = vec![0u32; n];
    let mut dist = vec![0f32; n];
    assign(x, dim, &centroids, &mut assignments, &mut dist);
    let mut iterations = 0;
    let mut converged = false;
    while iterations < max_iter {
        iterations += 1;
        let mut counts = update_centroids(x, dim, k, &assignments, &mut centroids);
        for (i, d) in dist.iter_mut().enumerate() {
            let c = assignments[i] as usize;
            *d = sq_dist(
                &x[i * dim..(i + 1) * dim],
                &centroids[c * dim..(c + 1) * dim],
            );
        }
        let reseeded = reseed_empty(
            x,
            dim,
            &mut centroids,
            &mut counts,
            &mut assignments,
            &mut dist,
        );
        let changes = assign(x, dim, &centroids, &mut assignments, &mut dist);
        // After a re-seed the centroids are not the means of the assignments yet, so an
        // unchanged assignment does not mean convergence: run one more update.
        if changes == 0 && !reseeded {
            converged = true;
            break;
        }
    }
    let inertia = (0..n)
        .map(|i| {
            let c = assignments[i] as usize;
            x[i * dim..(i + 1) * dim]
                .iter()
                .zip(&centroids[c * dim..(c + 1) * dim])
                .map(|(&a, &b)| {
                    let d = f64::from(a) - f64::from(b);
                    d * d
                })
                .sum::<f64>()
        })
        .sum();
    KMeans {
        k,
        dim,
        assignments,
        centroids,
        inertia,
        iterations,
        converged,
    }
}

/// Assigns each point to its nearest centroid (the lowest index on ties), records the
/// squared distance, and returns how many assignments changed.
fn assign(
    x: &[f32],
    dim: usize,
    centroids: &[f32],
    assignments: &mut [u32],
    dist: &mut [f32],
) -> usize {
    // Each point's result depends on that point alone, so splitting the points over threads
    // changes no bit; the change count is an integer sum.
    x.par_chunks(dim * BLOCK)
        .zip(assignments.par_chunks_mut(BLOCK))
        .zip(dist.par_chunks_mut(BLOCK))
        .map(|((xb, ab), db)| kernels::nearest(xb, dim, centroids, ab, db))
        .sum()
}

/// `out[i] = min(d2[i], |x_i − c|²)`, over threads; the caller sums `out` sequentially.
fn closer(x: &[f32], dim: usize, c: &[f32], d2: &[f64], out: &mut [f64]) {
    x.par_chunks(dim * BLOCK)
        .zip(d2.par_chunks(BLOCK))
        .zip(out.par_chunks_mut(BLOCK))
        .for_each(|((xb, db), ob)| kernels::closer(xb, dim, c, db, ob));
}

/// Points per rayon task in the distance passes: about a million multiply-adds at k = 50,
/// d = 128, far above a task's overhead.
const BLOCK: usize = 256;

/// The distance loops, compiled twice: portably and for AVX2, dispatched at run time. The
/// AVX2 build runs the same additions and multiplications in the same order (no FMA), so
/// it rounds exactly like the portable one and results do not depend on the CPU.
mod kernels {
    use crate::ml::simd::{sq_dist, sq_dist_x4};

    #[inline(always)]
    fn nearest_body(
        x: &[f32],
        dim: usize,
        centroids: &[f32],
        assignments: &mut [u32],
        dist: &mut [f32],
    ) -> usize {
        let mut changes = 0;
        let k = centroids.len() / dim;
        let centre = |c: usize| &centroids[c * dim..(c + 1) * dim];
        for ((p, a), d) in x.chunks_exact(dim).zip(assignments).zip(dist) {
            let mut best = (0u32, f32::INFINITY);
            let mut consider = |c: usize, dc: f32| {
                if dc < best.1 {
                    best = (c as u32, dc);
                }
            };
            let mut c = 0;
            while c + 4 <= k {
                let ds = sq_dist_x4(p, [centre(c), centre(c + 1), centre(c + 2), centre(c + 3)]);
                for (j, &dc) in ds.iter().enumerate() {
                    consider(c + j, dc);
                }
                c += 4;
            }
            for c in c..k {
                consider(c, sq_dist(p, centre(c)));
            }
            if *a != best.0 {
                changes += 1;
                *a = best.0;
            }
            *d = best.1;
        }
        changes
    }

    #[inline(always)]
    fn closer_body(x: &[f32], dim: usize, c: &[f32], d2: &[f64], out: &mut [f64]) {
        for ((p, &d), o) in x.chunks_exact(dim).zip(d2).zip(out) {
            *o = d.min(f64::from(sq_dist(p, c)));
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn nearest_avx2(
        x: &[f32],
        dim: usize,
        centroids: &[f32],
        assignments: &mut [u32],
        dist: &mut [f32],
    ) -> usize {
        nearest_body(x, dim, centroids, assignments, dist)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn closer_avx2(x: &[f32], dim: usize, c: &[f32], d2: &[f64], out: &mut [f64]) {
        closer_body(x, dim, c, d2, out)
    }

    pub(super) fn nearest(
        x: &[f32],
        dim: usize,
        centroids: &[f32],
        assignments: &mut [u32],
        dist: &mut [f32],
    ) -> usize {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx2") {
                // SAFETY: the running CPU supports AVX2, the only feature the callee enables.
                return unsafe { nearest_avx2(x, dim, centroids, assignments, dist) };
            }
        }
        nearest_body(x, dim, centroids, assignments, dist)
    }

    pub(super) fn closer(x: &[f32], dim: usize, c: &[f32], d2: &[f64], out: &mut [f64]) {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx2") {
                // SAFETY: the running CPU supports AVX2, the only feature the callee enables.
                return unsafe { closer_avx2(x, dim, c, d2, out) };
            }
        }
        closer_body(x, dim, c, d2, out)
    }
}

/// Sets each non-empty centroid to the mean of its points (summed in f64, in point order)
/// and returns the cluster sizes. Empty clusters keep their old centroid.
fn update_centroids(
    x: &[f32],
    dim: usize,
    k: usize,
    assignments: &[u32],
    centroids: &mut [f32],
) -> Vec<usize> {
    let mut sums = vec![0f64; k * dim];
    let mut counts = vec![0usize; k];
    for (p, &a) in x.chunks_exact(dim).zip(assignments) {
        let a = a as usize;
        counts[a] += 1;
        for (s, &v) in sums[a * dim..(a + 1) * dim].iter_mut().zip(p) {
            *s += f64::from(v);
        }
    }
    for (c, &count) in counts.iter().enumerate() {
        if count > 0 {
            for (dst, &s) in centroids[c * dim..(c + 1) * dim]
                .iter_mut()
                .zip(&sums[c * dim..(c + 1) * dim])
            {
                *dst = (s / count as f64) as f32;
            }
        }
    }
    counts
}

/// Moves, for each empty cluster, the point farthest from its own centroid into it. Only
/// points of clusters with two or more members qualify, so no cluster is emptied in turn.
/// Returns whether anything moved.
fn reseed_empty(
    x: &[f32],
    dim: usize,
    centroids: &mut [f32],
    counts: &mut [usize],
    assignments: &mut [u32],
    dist: &mut [f32],
) -> bool {
    let mut moved = false;
    for c in 0..counts.len() {
        if counts[c] > 0 {
            continue;
        }
        let mut far: Option<(usize, f32)> = None;
        for (i, &d) in dist.iter().enumerate() {
            if d > far.map_or(0.0, |f| f.1) && counts[assignments[i] as usize] > 1 {
                far = Some((i, d));
            }
        }
        let Some((i, _)) = far else {
            // Every point sits on its centroid: the data has fewer distinct points than k.
            break;
        };
        centroids[c * dim..(c + 1) * dim].copy_from_slice(&x[i * dim..(i + 1) * dim]);
        counts[assignments[i] as usize] -= 1;
        counts[c] = 1;
        assignments[i] = c as u32;
        dist[i] = 0.0;
        moved = true;
    }
    moved
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{BTreeMap, BTreeSet};

    /// `k` Gaussian blobs of `per` points in `dim` dimensions, centres 20σ apart on the axes.
    fn blobs(k: usize, per: usize, dim: usize, seed: u64) -> (Vec<f32>, Vec<u32>) {
        let mut rng = Rng::new(seed);
        let mut x = Vec::with_capacity(k * per * dim);
        let mut y = Vec::with_capacity(k * per);
        for i in 0..k * per {
            // Interleave the blobs so that point order carries no information.
            let c = i % k;
            for d in 0..dim {
                let centre = if d % k == c { 20.0 } else { 0.0 };
                x.push((centre + rng.normal()) as f32);
            }
            y.push(c as u32);
        }
        (x, y)
    }

    fn assert_is_relabelling(pred: &[u32], truth: &[u32]) {
        let mut map = BTreeMap::new();
        for (&p, &t) in pred.iter().zip(truth) {
            assert_eq!(*map.entry(t).or_insert(p), p, "true class {t} is split");
        }
        let images: BTreeSet<u32> = map.values().copied().collect();
        assert_eq!(images.len(), map.len(), "two classes merged: {map:?}");
    }

    #[test]
    fn kmeans_recovers_well_separated_blobs() {
        let (x, y) = blobs(6, 50, 12, 3);
        for seed in 0..10 {
            let km = kmeans(&x, 300, 12, 6, seed, 100).unwrap();
            assert!(km.converged);
            assert_eq!(km.centroids.len(), 6 * 12);
            assert_is_relabelling(&km.assignments, &y);
            // Within-blob scatter is ≈ dim · σ² per point.
            assert!(km.inertia < 300.0 * 12.0 * 1.5, "{}", km.inertia);
        }
    }

    #[test]
    fn kmeans_is_deterministic_for_a_seed() {
        let (x, _) = blobs(5, 40, 10, 8);
        let a = kmeans(&x, 200, 10, 7, 9, 50).unwrap();
        let b = kmeans(&x, 200, 10, 7, 9, 50).unwrap();
        assert_eq!(a, b);
        let c = kmeans(&x, 200, 10, 7, 10, 50).unwrap();
        assert_ne!(a.centroids, c.centroids);
        // Cacheable as JSON without losing a bit.
        let back: KMeans = serde_json::from_str(&serde_json::to_string(&a).unwrap()).unwrap();
        assert_eq!(back, a);
    }

    #[test]
    fn kmeans_does_not_depend_on_the_thread_count() {
        let (x, _) = blobs(7, 300, 24, 6);
        let run = |threads| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            pool.install(|| kmeans(&x, 2100, 24, 9, 4, 100).unwrap())
        };
        let one = run(1);
        assert_eq!(run(3), one);
        assert_eq!(run(4), one);
    }

    #[test]
    fn kmeans_plus_plus_is_no_worse_than_random_init() {
        // Many small blobs: uniform initial centres often land two in one blob and leave
        // another blob without one, a local optimum that Lloyd cannot leave.
        let (x, _) = blobs(12, 20, 12, 5);
        let n = 240;
        let (mut pp, mut random) = (0.0, 0.0);
        for seed in 0..8 {
            pp += kmeans(&x, n, 12, 12, seed, 100).unwrap().inertia;
            let mut rng = Rng::new(seed);
            let mut idx: Vec<usize> = (0..n).collect();
            rng.shuffle(&mut idx);
            let init: Vec<f32> = idx[..12]
                .iter()
                .flat_map(|&i| x[i * 12..(i + 1) * 12].iter().copied())
                .collect();
            random += lloyd(&x, 12, 12, init, 100).inertia;
        }
        assert!(pp <= random, "k-means++ {pp} vs random {random}");
    }

    #[test]
    fn kmeans_reseeds_an_empty_cluster() {
        let (x, y) = blobs(3, 30, 6, 2);
        // Start with the third centre far from every point: it gets no point at first.
        let mut init = vec![0f32; 3 * 6];
        init[..6].copy_from_slice(&x[..6]);
        init[6..12].copy_from_slice(&x[6..12]);
        init[12..].iter_mut().for_each(|v| *v = 1e4);
        let km = lloyd(&x, 6, 3, init, 100);
        let sizes = (0..3u32).map(|c| km.assignments.iter().filter(|&&a| a == c).count());
        assert!(sizes.into_iter().all(|s| s > 0), "{:?}", km.assignments);
        assert_is_relabelling(&km.assignments, &y);
        assert!(km.converged);
    }

    #[test]
    fn kmeans_survives_duplicates_and_k_equal_n() {
        // All points equal: clusters beyond the first cannot be filled and must not panic.
        let same = vec![1.5f32; 10 * 3];
        let km = kmeans(&same, 10, 3, 4, 0, 20).unwrap();
        assert!(km.assignments.iter().all(|&a| a < 4));
        assert_eq!(km.inertia, 0.0);
        // k = n over distinct points: every point its own cluster.
        let (x, _) = blobs(2, 5, 4, 1);
        let km = kmeans(&x, 10, 4, 10, 3, 20).unwrap();
        let distinct: BTreeSet<u32> = km.assignments.iter().copied().collect();
        assert_eq!(distinct.len(), 10);
        assert!(km.inertia < 1e-9, "{}", km.inertia);
        // k = n with duplicates among the points.
        let mut dup = x.clone();
        dup[4..8].copy_from_slice(&x[..4]);
        let km = kmeans(&dup, 10, 4, 10, 3, 20).unwrap();
        assert!(km.assignments.iter().all(|&a| a < 10));
        // max_iter = 0: seeding and one assignment only.
        let km = kmeans(&x, 10, 4, 3, 3, 0).unwrap();
        assert_eq!((km.iterations, km.converged), (0, false));
    }

    #[test]
    fn kmeans_rejects_bad_input() {
        let x = vec![0f32; 12];
        assert_eq!(
            kmeans(&x, 5, 3, 2, 0, 10),
            Err(ClusterError::Shape {
                len: 12,
                n: 5,
                dim: 3
            })
        );
        assert_eq!(
            kmeans(&x, 4, 3, 5, 0, 10),
            Err(ClusterError::TooFewPoints { k: 5, n: 4 })
        );
        assert_eq!(
            kmeans(&x, 4, 3, 0, 0, 10),
            Err(ClusterError::Empty { dim: 3, k: 0 })
        );
        let mut bad = x.clone();
        bad[7] = f32::NAN;
        assert_eq!(
            kmeans(&bad, 4, 3, 2, 0, 10),
            Err(ClusterError::NonFinite { point: 2, dim: 1 })
        );
    }

    /// The size a superclass run clusters: a Fashion-MNIST-sized teacher table, once with
    /// cluster structure (blob centres 3σ apart) and once without any (pure noise, the
    /// slowest case for Lloyd: assignments keep shifting at the margins for long).
    /// `cargo test --release --lib kmeans_timing -- --ignored --nocapture`
    #[test]
    #[ignore = "timing, run by hand"]
    fn kmeans_timing() {
        let (n, dim, k) = (30_000, 128, 50);
        let (blob, _) = blobs(k, n / k, dim, 1);
        for (name, scale) in [("clustered", 0.15f32), ("no structure", 0.0)] {
            let mut rng = Rng::new(2);
            let x: Vec<f32> = blob
                .iter()
                .map(|&v| v * scale + rng.normal() as f32)
                .collect();
            let t = std::time::Instant::now();
            let km = kmeans(&x, n, dim, k, 0, 300).unwrap();
            let s = t.elapsed().as_secs_f64();
            println!(
                "kmeans {name}, n={n} dim={dim} k={k}, {} threads: {s:.3} s, {} iterations, \
                 converged {}",
                rayon::current_num_threads(),
                km.iterations,
                km.converged
            );
        }
    }
}
