//! A small, explicitly seeded random number generator.
//!
//! candle's own RNG (`Tensor::randn`, VarMap initialisers) draws from the thread RNG and
//! cannot be seeded on CPU, and `rand`'s `StdRng` does not promise the same stream across
//! versions. Reproducible runs (and bit-identical resumes) need a generator whose stream is
//! fixed by this file alone, so we carry one: xoshiro256++ seeded through SplitMix64.

/// xoshiro256++ (Blackman & Vigna), seeded by SplitMix64 from a single `u64`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rng {
    s: [u64; 4],
}

impl Rng {
    pub fn new(seed: u64) -> Self {
        let mut sm = seed;
        let mut next = || {
            sm = sm.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = sm;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        };
        Self {
            s: [next(), next(), next(), next()],
        }
    }

    /// The generator's whole state: restoring it with [`Rng::from_state`] continues the
    /// stream exactly where it was (checkpoints save it between epochs).
    pub fn state(&self) -> [u64; 4] {
        self.s
    }

    /// A generator continuing from a saved [`Rng::state`]. `None` for the all-zero state,
    /// which xoshiro can never reach and from which it would only ever draw zeros: such a
    /// state can only come from a damaged or hand-edited file.
    pub fn from_state(s: [u64; 4]) -> Option<Self> {
        (s != [0; 4]).then_some(Self { s })
    }

    /// A generator for a named sub-task, independent of how many numbers `self` has drawn.
    pub fn fork(seed: u64, stream: &str) -> Self {
        // FNV-1a over the stream name, mixed into the seed.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in stream.bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01B3);
        }
        Self::new(seed ^ h.rotate_left(17))
    }

    pub fn next_u64(&mut self) -> u64 {
        let result = (self.s[0].wrapping_add(self.s[3]))
            .rotate_left(23)
            .wrapping_add(self.s[0]);
        let t = self.s[1] << 17;
        self.s[2] ^= self.s[0];
        self.s[3] ^= self.s[1];
        self.s[1] ^= self.s[2];
        self.s[0] ^= self.s[3];
        self.s[2] ^= t;
        self.s[3] = self.s[3].rotate_left(45);
        result
    }

    /// Uniform in [0, 1) with 53 bits of precision.
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform integer in [0, n). Uses rejection so that every value is equally likely.
    pub fn below(&mut self, n: usize) -> usize {
        assert!(n > 0, "Rng::below(0)");
        let n = n as u64;
        let zone = u64::MAX - (u64::MAX % n);
        loop {
            let v = self.next_u64();
            if v < zone {
                return (v % n) as usize;
            }
        }
    }

    /// Standard normal by Box–Muller (one value per call; simple and deterministic).
    pub fn normal(&mut self) -> f64 {
        let u1 = 1.0 - self.uniform(); // (0, 1]: ln stays finite
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }

    /// Fisher–Yates shuffle.
    pub fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = self.below(i + 1);
            v.swap(i, j);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_stream_and_forks_differ() {
        let a: Vec<u64> = (0..5).map(|_| Rng::new(7).next_u64()).collect();
        assert!(a.windows(2).all(|w| w[0] == w[1]));
        let mut r = Rng::new(7);
        let s1: Vec<u64> = (0..4).map(|_| r.next_u64()).collect();
        let mut r2 = Rng::new(8);
        let s2: Vec<u64> = (0..4).map(|_| r2.next_u64()).collect();
        assert_ne!(s1, s2);
        assert_ne!(
            Rng::fork(7, "init").next_u64(),
            Rng::fork(7, "batches").next_u64()
        );
    }

    #[test]
    fn a_restored_state_continues_the_stream_exactly() {
        let mut r = Rng::fork(11, "mining");
        for _ in 0..37 {
            r.next_u64();
        }
        let saved = r.state();
        // Through JSON, as a checkpoint stores it: u64s must survive exactly.
        let json = serde_json::to_string(&saved).unwrap();
        let back: [u64; 4] = serde_json::from_str(&json).unwrap();
        let mut restored = Rng::from_state(back).unwrap();
        let a: Vec<u64> = (0..100).map(|_| r.next_u64()).collect();
        let b: Vec<u64> = (0..100).map(|_| restored.next_u64()).collect();
        assert_eq!(a, b);
        assert_eq!(r, restored);
        assert!(Rng::from_state([0; 4]).is_none());
    }

    #[test]
    fn below_and_uniform_stay_in_range_and_shuffle_is_a_permutation() {
        let mut r = Rng::new(1);
        let mut counts = [0usize; 3];
        for _ in 0..3000 {
            counts[r.below(3)] += 1;
            let u = r.uniform();
            assert!((0.0..1.0).contains(&u));
        }
        assert!(counts.iter().all(|&c| c > 800), "{counts:?}");
        let mut v: Vec<usize> = (0..100).collect();
        r.shuffle(&mut v);
        let mut sorted = v.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..100).collect::<Vec<_>>());
        assert_ne!(v, sorted);
    }

    #[test]
    fn normal_has_roughly_unit_variance() {
        let mut r = Rng::new(3);
        let xs: Vec<f64> = (0..20000).map(|_| r.normal()).collect();
        let mean = xs.iter().sum::<f64>() / xs.len() as f64;
        let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / xs.len() as f64;
        assert!(mean.abs() < 0.03, "{mean}");
        assert!((var - 1.0).abs() < 0.05, "{var}");
    }
}
