//! Batch-level triplet mining for the triplet baseline.

use super::MatRef;

/// How the triplets are picked. Except for [`Mining::All`], there is one triplet per valid
/// anchor and its positive is uniform at random.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mining {
    /// A uniformly random negative.
    Random,
    /// The closest negative that is farther than the positive (`d_an > d_ap`); the closest
    /// negative overall when there is none (FaceNet's semi-hard rule with the usual fallback).
    #[serde(alias = "semihard")]
    SemiHard,
    /// The closest negative.
    Hard,
    /// Every valid `(anchor, positive, negative)` of the batch, so the triplet loss becomes
    /// the mean over all of them. There are `Σ_a |pos(a)|·|neg(a)|`, cubic in the batch size.
    All,
    /// Distance-weighted sampling (Wu et al., ICCV 2017, "Sampling Matters in Deep Embedding
    /// Learning"), as lenscloth/RKD `metric/pairsampler.py::DistanceWeighted` does it on
    /// L2-normalised embeddings of dimension n: distances are clamped below at 0.5, only
    /// negatives closer than 1.4 are eligible (uniform over all negatives if none is), and an
    /// eligible negative is drawn with probability ∝ `min(λ, 1/q(d))`, λ = 1e5, where
    /// `q(d) = d^{n−2} (1 − d²/4)^{(n−3)/2} / Z` is the density of the distance between two
    /// uniform points on the unit sphere in ℝⁿ. Two differences from lenscloth: one random
    /// positive per anchor (lenscloth uses every positive pair), and the paper's λ clip on the
    /// normalised density (lenscloth has no clip).
    DistanceWeighted,
}

/// Distance-weighted sampling: distances below this are clamped up to it (lenscloth
/// `cut_off`), which bounds `1/q(d)` for near-duplicates.
const DW_CUTOFF: f64 = 0.5;
/// Only negatives closer than this are eligible (lenscloth `nonzero_loss_cutoff`): farther
/// ones already satisfy typical margins and would contribute no loss.
const DW_NONZERO_LOSS_CUTOFF: f64 = 1.4;
/// The paper's clip λ on the weight `1/q(d)`.
const DW_LAMBDA: f64 = 1e5;

/// Squared Euclidean distance in f64: mining only compares distances, squaring keeps the
/// order, and f64 keeps near-ties from being decided by f32 rounding.
fn sq_dist(a: &[f32], b: &[f32]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(&x, &y)| {
            let d = f64::from(x) - f64::from(y);
            d * d
        })
        .sum()
}

/// `ln Γ(m/2)` for an integer `m ≥ 1`, exactly as a finite sum: `Γ(k) = (k−1)!` and
/// `Γ(k + 1/2) = √π · Π_{j<k} (j + 1/2)`. The sphere-distance density only needs these
/// half-integer arguments, and std has no stable `ln_gamma`.
fn ln_gamma_half(m: usize) -> f64 {
    if m % 2 == 0 {
        (1..m / 2).map(|i| (i as f64).ln()).sum()
    } else {
        0.5 * std::f64::consts::PI.ln() + (0..m / 2).map(|j| (j as f64 + 0.5).ln()).sum::<f64>()
    }
}

/// `−ln q(d)` for the normalised distance density on the unit sphere in ℝⁿ, n ≥ 2:
/// `q(d) = d^{n−2} (1 − d²/4)^{(n−3)/2} / Z` with
/// `Z = ∫₀² … = 2^{n−2} B((n−1)/2, (n−1)/2)` (substitute u = d²/4).
pub(super) struct SphereDensity {
    n: f64,
    ln_z: f64,
}

impl SphereDensity {
    pub(super) fn new(dim: usize) -> Self {
        let n = dim as f64;
        let ln_beta = 2.0 * ln_gamma_half(dim - 1) - ln_gamma_half(2 * (dim - 1));
        Self {
            n,
            ln_z: (n - 2.0) * std::f64::consts::LN_2 + ln_beta,
        }
    }

    /// `−ln q(d)` for `0 < d < 2`.
    pub(super) fn neg_ln_q(&self, d: f64) -> f64 {
        let ln_unnormalised =
            (self.n - 2.0) * d.ln() + (self.n - 3.0) / 2.0 * (1.0 - 0.25 * d * d).ln();
        self.ln_z - ln_unnormalised
    }
}

/// Rows scaled to unit L2 norm in f64 (torch `F.normalize`, eps 1e-12: a zero row stays 0).
fn unit_rows_f64(emb: MatRef<f32>) -> Vec<f64> {
    let mut out: Vec<f64> = emb.data.iter().map(|&v| f64::from(v)).collect();
    if emb.cols == 0 {
        return out;
    }
    for row in out.chunks_exact_mut(emb.cols) {
        let den = row.iter().map(|v| v * v).sum::<f64>().sqrt().max(1e-12);
        for v in row.iter_mut() {
            *v /= den;
        }
    }
    out
}

/// Uniform in [0, 1) from the top 53 bits of one rng draw.
fn unit_interval(rng: &mut dyn FnMut() -> u64) -> f64 {
    (rng() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

/// The distance-weighted negative for `anchor` among `negatives` (see
/// [`Mining::DistanceWeighted`]); consumes exactly one rng draw.
fn distance_weighted_negative(
    unit: &[f64],
    dim: usize,
    anchor: usize,
    negatives: &[usize],
    density: Option<&SphereDensity>,
    rng: &mut dyn FnMut() -> u64,
    log_w: &mut Vec<(usize, f64)>,
) -> usize {
    let a = &unit[anchor * dim..(anchor + 1) * dim];
    log_w.clear();
    for &j in negatives {
        let b = &unit[j * dim..(j + 1) * dim];
        let d = a
            .iter()
            .zip(b)
            .map(|(x, y)| (x - y) * (x - y))
            .sum::<f64>()
            .sqrt()
            .max(DW_CUTOFF);
        if d < DW_NONZERO_LOSS_CUTOFF {
            // In log space: 1/q(d) spans hundreds of orders of magnitude for large n, far
            // outside f64, while its logarithm is modest. Without a proper density (n < 2)
            // every eligible negative weighs the same.
            let lw = density.map_or(0.0, |q| q.neg_ln_q(d).min(DW_LAMBDA.ln()));
            log_w.push((j, lw));
        }
    }
    let u = unit_interval(rng);
    if log_w.is_empty() {
        // lenscloth's fallback: uniform over all negatives.
        return negatives[((u * negatives.len() as f64) as usize).min(negatives.len() - 1)];
    }
    let max = log_w.iter().fold(f64::NEG_INFINITY, |m, &(_, w)| m.max(w));
    let total: f64 = log_w.iter().map(|&(_, w)| (w - max).exp()).sum();
    let target = u * total;
    let mut acc = 0.0;
    for &(j, w) in log_w.iter() {
        acc += (w - max).exp();
        if target < acc {
            return j;
        }
    }
    // Only reachable through rounding in the running sum when u is within an ulp of 1.
    log_w[log_w.len() - 1].0
}

/// Triplets `[anchor, positive, negative]` for anchors (in row order) that have at least
/// one other row with their label and one row with a different label: one per such anchor,
/// or with [`Mining::All`] every combination (positives, then negatives, in row order).
///
/// The positive is drawn as `positives[rng_u64() % count]`; with [`Mining::Random`] the
/// negative is then drawn the same way, and with [`Mining::DistanceWeighted`] it takes one
/// more draw, used as a uniform number in [0, 1). [`Mining::All`] draws nothing. The other
/// modes use no randomness for the negative and break distance ties towards the lower row
/// index, so the result is a pure function of the inputs and the rng stream.
///
/// # Panics
/// If the buffer does not match its shape or `labels.len() != emb.rows`.
pub fn mine_triplets(
    emb: MatRef<f32>,
    labels: &[u32],
    mining: Mining,
    rng_u64: &mut dyn FnMut() -> u64,
) -> Vec<[usize; 3]> {
    emb.assert_valid("mine_triplets");
    assert!(
        labels.len() == emb.rows,
        "mine_triplets: {} labels for {} rows",
        labels.len(),
        emb.rows
    );
    let n = emb.rows;
    let mut out = Vec::with_capacity(n);
    let mut positives = Vec::with_capacity(n);
    let mut negatives = Vec::with_capacity(n);
    // Only distance-weighted sampling needs the normalised embeddings and the density.
    let (unit, density) = if mining == Mining::DistanceWeighted {
        let density = (emb.cols >= 2).then(|| SphereDensity::new(emb.cols));
        (unit_rows_f64(emb), density)
    } else {
        (Vec::new(), None)
    };
    let mut log_w = Vec::with_capacity(n);
    for a in 0..n {
        positives.clear();
        negatives.clear();
        for j in 0..n {
            if j == a {
                continue;
            }
            if labels[j] == labels[a] {
                positives.push(j);
            } else {
                negatives.push(j);
            }
        }
        if positives.is_empty() || negatives.is_empty() {
            continue;
        }
        if mining == Mining::All {
            for &p in &positives {
                out.extend(negatives.iter().map(|&ng| [a, p, ng]));
            }
            continue;
        }
        let pick = |len: usize, rng: &mut dyn FnMut() -> u64| (rng() % len as u64) as usize;
        let p = positives[pick(positives.len(), rng_u64)];
        let anchor = emb.row(a);
        let closest = |keep: &dyn Fn(f64) -> bool| {
            let mut best: Option<(f64, usize)> = None;
            for &j in &negatives {
                let d = sq_dist(anchor, emb.row(j));
                if keep(d) && best.is_none_or(|(bd, _)| d < bd) {
                    best = Some((d, j));
                }
            }
            best.map(|(_, j)| j)
        };
        let ng = match mining {
            Mining::Random => negatives[pick(negatives.len(), rng_u64)],
            Mining::Hard => closest(&|_| true).expect("negatives is non-empty"),
            Mining::SemiHard => {
                let d_ap = sq_dist(anchor, emb.row(p));
                closest(&|d| d > d_ap)
                    .or_else(|| closest(&|_| true))
                    .expect("negatives is non-empty")
            }
            Mining::DistanceWeighted => distance_weighted_negative(
                &unit,
                emb.cols,
                a,
                &negatives,
                density.as_ref(),
                rng_u64,
                &mut log_w,
            ),
            Mining::All => unreachable!("handled before the positive is drawn"),
        };
        out.push([a, p, ng]);
    }
    out
}
