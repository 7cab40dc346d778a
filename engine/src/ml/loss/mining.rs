//! Batch-level triplet mining for the triplet baseline.

use super::MatRef;

/// How the negative of each triplet is picked (the positive is always uniform at random).
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
}

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

/// One `[anchor, positive, negative]` per anchor (in row order) that has at least one other
/// row with its label and one row with a different label.
///
/// The positive is drawn as `positives[rng_u64() % count]`; with [`Mining::Random`] the
/// negative is then drawn the same way. The other modes use no randomness for the negative
/// and break distance ties towards the lower row index, so the result is a pure function of
/// the inputs and the rng stream.
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
        };
        out.push([a, p, ng]);
    }
    out
}
