//! Relation masking: which relations a masked loss compares, as pure functions of
//! `(seed, indices)`.
//!
//! Every decision is a function of the seed and the indices alone (a hash for the pair
//! losses; for RKD-A a counter-based stream private to one (vertex, row)), never a draw
//! from a stream shared between relations, so it does not depend on the order in which
//! (or the thread on which) relations are visited, nor on the batch size: the same seed
//! gives the same decisions for the same indices whatever N is. Only integer hashing and
//! IEEE `+ − ×` and comparisons are used (no libm `ln`), so the mask is also the same on
//! every platform.

/// A random subset of relations: each is kept with probability `keep`, decided by `seed`.
///
/// `keep` must lie in (0, 1]; `keep = 1` keeps every relation, which gives the unmasked
/// loss. The masked losses ([`rkd_distance_masked`](super::rkd_distance_masked),
/// [`rkd_angle_masked`](super::rkd_angle_masked), [`sp_masked`](super::sp_masked),
/// [`cc_masked`](super::cc_masked)) average over the kept relations only:
///
/// * **Pair losses** (RKD-D, SP, CC) compare N×N relation matrices. The mask is symmetric:
///   the unordered pair {i, j}, and each diagonal entry (i, i), is kept with probability
///   `keep`, decided by [`Mask::keeps_pair`] from `(seed, min(i,j), max(i,j))`.
///   `L = Σ_{kept (i,j)} term_ij / |kept|`, where |kept| counts ordered entries (a kept
///   off-diagonal pair counts twice, a kept diagonal entry once). Only which entries are
///   compared changes: RKD-D's scales μ_S, μ_T are still the means over all off-diagonal
///   pairs, SP still normalises full Gram rows, CC's kernel is unchanged.
/// * **RKD-A** compares the N³ angles (i; j, k) at vertex i. The mask is symmetric in
///   (j, k): for vertex i, {j, k} (and each diagonal j = k) is kept with probability
///   `keep`, decided by [`Mask::keeps_angle`] from `(seed, i, min(j,k), max(j,k))`.
///   `L = Σ_{kept (i;j,k)} huber(A^S_ijk − A^T_ijk) / |kept|`, |kept| again counting
///   ordered (j, k). Only the kept angles are evaluated, so the cost scales with `keep`.
///
/// If nothing is kept (possible for a small N and a small `keep`), the loss is 0 with a
/// zero gradient. A training loop draws a fresh `seed` at every step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Mask {
    pub keep: f64,
    pub seed: u64,
}

/// splitmix64's increment, the 64-bit golden ratio.
const GOLDEN: u64 = 0x9e37_79b9_7f4a_7c15;
/// Domain constants, so that the pair mask and the angle mask of one seed are unrelated.
const PAIR_DOMAIN: u64 = 0x5041_4952_5f4d_534b;
const ANGLE_DOMAIN: u64 = 0x414e_474c_455f_4d4b;
/// 2⁻⁵³: the spacing of the uniform doubles drawn from 53 random bits.
const UNIT: f64 = 1.0 / (1u64 << 53) as f64;

/// splitmix64's finaliser: a bijection of u64 with full avalanche, so nearby inputs
/// (consecutive indices, counters) give unrelated outputs.
#[inline(always)]
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Folds one more word into a hash. The added constant keeps a zero state from mapping
/// zero words to zero; `mix` being a bijection keeps distinct words distinct.
#[inline(always)]
fn absorb(h: u64, v: u64) -> u64 {
    mix(h.wrapping_add(GOLDEN) ^ v)
}

impl Mask {
    /// `None` if `keep` is in (0, 1], else why not (NaN fails both comparisons).
    pub(super) fn invalid_reason(&self) -> Option<String> {
        if self.keep > 0.0 && self.keep <= 1.0 {
            None
        } else {
            Some(format!("mask keep must be in (0, 1], got {}", self.keep))
        }
    }

    /// Panics with the caller's name when `keep` is outside (0, 1].
    pub(super) fn assert_valid(&self, what: &str) {
        if let Some(reason) = self.invalid_reason() {
            panic!("{what}: {reason}");
        }
    }

    /// Whether the pair losses compare entry (i, j) (and (j, i)): the symmetric pair mask.
    /// Uniform `u ∈ [0, 1)` from 53 hashed bits, kept iff `u < keep`, so `keep = 1` keeps
    /// everything.
    pub fn keeps_pair(&self, i: usize, j: usize) -> bool {
        let (a, b) = (i.min(j), i.max(j));
        let h = absorb(absorb(mix(self.seed ^ PAIR_DOMAIN), a as u64), b as u64);
        ((h >> 11) as f64 * UNIT) < self.keep
    }

    /// Whether RKD-A compares the angles (i; j, k) and (i; k, j). With lo = min(j, k), the
    /// partners k' ≥ lo that vertex i keeps with lo are a run of Bernoulli(keep) trials
    /// over k' = lo, lo+1, …, drawn by geometric skipping from a counter-based stream keyed
    /// by (seed, i, lo). This replays that stream up to max(j, k), O(|j − k|·keep + 1):
    /// meant for inspection and tests, not for inner loops.
    pub fn keeps_angle(&self, i: usize, j: usize, k: usize) -> bool {
        let (lo, hi) = (j.min(k), j.max(k));
        let gaps = GapSampler::new(self.keep);
        AngleStream::new(self, &gaps, i, lo, hi.saturating_add(1))
            .find(|&x| x >= hi)
            .is_some_and(|x| x == hi)
    }

    /// The hash of vertex i that [`AngleStream`] keys its streams on.
    #[inline(always)]
    pub(super) fn angle_vertex_key(&self, i: usize) -> u64 {
        absorb(mix(self.seed ^ ANGLE_DOMAIN), i as u64)
    }
}

/// The symmetric pair mask materialised for one batch: O(N²) hashes, which is small next
/// to the O(N²·D) Gram products of the pair losses.
pub(super) struct PairMask {
    /// Row-major N×N, `kept[i*n + j] == kept[j*n + i]`.
    pub(super) kept: Vec<bool>,
    /// Number of kept ordered entries (off-diagonal pairs count twice).
    pub(super) count: usize,
}

impl PairMask {
    pub(super) fn new(mask: &Mask, n: usize) -> Self {
        let mut kept = vec![false; n * n];
        let mut count = 0;
        for a in 0..n {
            for b in a..n {
                if mask.keeps_pair(a, b) {
                    kept[a * n + b] = true;
                    kept[b * n + a] = true;
                    count += if a == b { 1 } else { 2 };
                }
            }
        }
        Self { kept, count }
    }
}

/// Draws geometric gaps `G ≥ 1`, `P(G = g) = (1 − keep)^{g−1} · keep`, by inversion:
/// `G − 1 = max{g ≥ 0 : qᵍ ≥ u}` with `q = 1 − keep` and `u` uniform in (0, 1], so
/// `P(G − 1 ≥ g) = qᵍ` exactly as for independent Bernoulli(keep) trials. The maximum is
/// found bit by bit from a table of `q^(2^m)` (repeated squaring), which needs only
/// multiplications: `ln` would be shorter but is a libm call whose last bit can differ
/// between platforms, and a one-bit change in a gap moves every later decision.
pub(super) struct GapSampler {
    /// `pow[m] = q^(2^m)` for the levels that can ever be taken.
    pow: [f64; 64],
    levels: usize,
}

impl GapSampler {
    pub(super) fn new(keep: f64) -> Self {
        let q = 1.0 - keep;
        let mut pow = [0.0; 64];
        let mut levels = 0;
        let mut p = q;
        // A level with q^(2^m) < 2⁻⁵³ ≤ u can never be taken (the running product only
        // shrinks), nor can any level above it, so the table stops there. That bounds the
        // work per draw by log2(37 / keep) instead of 64 steps, without making the result
        // depend on anything but `keep` (in particular not on N). keep = 1 gives q = 0
        // and no levels: every gap is 1.
        while levels < pow.len() && p >= UNIT {
            pow[levels] = p;
            levels += 1;
            p = p * p;
        }
        Self { pow, levels }
    }

    /// The gap for one random word.
    #[inline(always)]
    fn gap(&self, x: u64) -> u64 {
        // (0, 1], so u = 1 (only q⁰ ≥ u) is possible and u = 0 (every g) is not.
        let u = ((x >> 11) + 1) as f64 * UNIT;
        let mut cur = 1.0f64;
        let mut g = 0u64;
        for m in (0..self.levels).rev() {
            let c = cur * self.pow[m];
            if c >= u {
                cur = c;
                g |= 1 << m;
            }
        }
        // Saturating: with keep below ~1e-16, q rounds to 1 and g can be 2⁶⁴ − 1, i.e.
        // "nothing more is kept".
        g.saturating_add(1)
    }
}

/// The k in `from..n` (ascending) that RKD-A keeps together with j at vertex i, where
/// `from` is j itself when generating row j: a run of Bernoulli(keep) trials over
/// k = j, j+1, … realised by jumping geometric gaps, so it costs O(1 + kept) rather than
/// O(N). The gaps come from splitmix64 keyed by (seed, i, j) (a counter-based stream:
/// word r is `mix(key + r·GOLDEN)`), which makes the decision for (i; j, k) a function of
/// (seed, keep, i, j, k) only: independent of N, of the visiting order and of threads.
pub(super) struct AngleStream<'a> {
    gaps: &'a GapSampler,
    key: u64,
    counter: u64,
    /// First index not decided yet.
    next: usize,
    n: usize,
}

impl<'a> AngleStream<'a> {
    /// The stream of vertex i, row j, truncated before `n`; decisions start at k = j.
    pub(super) fn new(mask: &Mask, gaps: &'a GapSampler, i: usize, j: usize, n: usize) -> Self {
        Self::from_vertex_key(mask.angle_vertex_key(i), gaps, j, n)
    }

    /// As [`AngleStream::new`] with the vertex hash precomputed.
    #[inline(always)]
    pub(super) fn from_vertex_key(
        vertex_key: u64,
        gaps: &'a GapSampler,
        j: usize,
        n: usize,
    ) -> Self {
        Self {
            gaps,
            key: absorb(vertex_key, j as u64),
            counter: 0,
            next: j,
            n,
        }
    }
}

impl Iterator for AngleStream<'_> {
    type Item = usize;

    #[inline(always)]
    fn next(&mut self) -> Option<usize> {
        if self.next >= self.n {
            return None;
        }
        self.counter += 1;
        let word = mix(self.key.wrapping_add(self.counter.wrapping_mul(GOLDEN)));
        let g = self.gaps.gap(word);
        // The next kept index is next + g − 1; anything at or past n ends the row.
        let k = usize::try_from(g - 1)
            .ok()
            .and_then(|d| self.next.checked_add(d))
            .filter(|&k| k < self.n);
        match k {
            Some(k) => {
                self.next = k + 1;
                Some(k)
            }
            None => {
                self.next = self.n;
                None
            }
        }
    }
}
