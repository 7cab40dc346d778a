//! Evaluation metrics: Recall@K and NMI (metric learning on unseen classes), nearest-
//! prototype few-shot accuracy (N-way K-shot episodes), and top-1 accuracy.

use rayon::prelude::*;

use super::cluster::kmeans;
use super::rng::Rng;

/// Recall@K: the fraction of queries for which at least one of the K nearest other samples
/// (Euclidean distance; the query itself excluded) has the query's label. Every sample is a
/// query against all others, as in the RKD paper's evaluation. Ties are broken by index so
/// the result is deterministic.
pub fn recall_at_k(emb: &[f32], dim: usize, labels: &[u32], ks: &[usize]) -> Vec<f64> {
    let n = labels.len();
    assert_eq!(
        emb.len(),
        n * dim,
        "embedding size does not match the labels"
    );
    let kmax = ks
        .iter()
        .copied()
        .max()
        .unwrap_or(0)
        .min(n.saturating_sub(1));
    if n < 2 || kmax == 0 {
        return vec![0.0; ks.len()];
    }
    let norms: Vec<f32> = emb
        .chunks(dim)
        .map(|r| r.iter().map(|v| v * v).sum())
        .collect();
    // For each query, the rank (1-based) of the first neighbour with the same label among
    // the kmax nearest, or usize::MAX if none.
    let first_hit: Vec<usize> = (0..n)
        .into_par_iter()
        .map(|q| {
            let eq = &emb[q * dim..(q + 1) * dim];
            // (distance, index), kept sorted, at most kmax long.
            let mut best: Vec<(f32, usize)> = Vec::with_capacity(kmax + 1);
            for j in 0..n {
                if j == q {
                    continue;
                }
                let ej = &emb[j * dim..(j + 1) * dim];
                let dot: f32 = eq.iter().zip(ej).map(|(a, b)| a * b).sum();
                let d = norms[q] + norms[j] - 2.0 * dot;
                if best.len() == kmax && d >= best[kmax - 1].0 {
                    continue;
                }
                let pos = best.partition_point(|&(bd, _)| bd <= d);
                best.insert(pos, (d, j));
                best.truncate(kmax);
            }
            best.iter()
                .position(|&(_, j)| labels[j] == labels[q])
                .map_or(usize::MAX, |p| p + 1)
        })
        .collect();
    ks.iter()
        .map(|&k| first_hit.iter().filter(|&&r| r <= k).count() as f64 / n as f64)
        .collect()
}

/// Normalised mutual information between the labels and a k-means clustering of the
/// embeddings with as many clusters as there are classes (the RKD paper's clustering
/// metric): 2·I(Y; C) / (H(Y) + H(C)), natural logarithms (scikit-learn's default
/// "arithmetic" normalisation). k-means++ is seeded, so the value is deterministic.
pub fn nmi(emb: &[f32], dim: usize, labels: &[u32], seed: u64) -> f64 {
    let n = labels.len();
    let mut classes: Vec<u32> = labels.to_vec();
    classes.sort_unstable();
    classes.dedup();
    let k = classes.len();
    if n == 0 || k < 2 || n < k {
        return 0.0;
    }
    let Ok(km) = kmeans(emb, n, dim, k, seed, 100) else {
        return 0.0;
    };
    nmi_of(labels, &km.assignments)
}

/// NMI of two labelings of the same samples.
pub fn nmi_of(a: &[u32], b: &[u32]) -> f64 {
    use std::collections::HashMap;
    let n = a.len() as f64;
    let mut joint: HashMap<(u32, u32), f64> = HashMap::new();
    let mut pa: HashMap<u32, f64> = HashMap::new();
    let mut pb: HashMap<u32, f64> = HashMap::new();
    for (&x, &y) in a.iter().zip(b) {
        *joint.entry((x, y)).or_default() += 1.0;
        *pa.entry(x).or_default() += 1.0;
        *pb.entry(y).or_default() += 1.0;
    }
    let entropy = |p: &HashMap<u32, f64>| -> f64 {
        // Summed in key order so that the result does not depend on hashing.
        let mut v: Vec<(&u32, &f64)> = p.iter().collect();
        v.sort_by_key(|(k, _)| **k);
        -v.iter().map(|(_, c)| (*c / n) * (*c / n).ln()).sum::<f64>()
    };
    let (ha, hb) = (entropy(&pa), entropy(&pb));
    let mut cells: Vec<(&(u32, u32), &f64)> = joint.iter().collect();
    cells.sort_by_key(|(k, _)| **k);
    let mi: f64 = cells
        .iter()
        .map(|((x, y), c)| {
            let pxy = *c / n;
            pxy * (pxy / ((pa[x] / n) * (pb[y] / n))).ln()
        })
        .sum();
    if ha + hb == 0.0 {
        return 1.0;
    }
    (2.0 * mi / (ha + hb)).clamp(0.0, 1.0)
}

/// The episodes of a few-shot evaluation: `ways` classes, `shots` support and `queries`
/// query samples of each, `episodes` times.
#[derive(serde::Serialize, serde::Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct FewShotSpec {
    pub ways: usize,
    pub shots: usize,
    pub queries: usize,
    pub episodes: usize,
}

/// Few-shot accuracy: mean over episodes and its 95% confidence half-width.
#[derive(Debug, Clone, PartialEq)]
pub struct FewShot {
    pub accuracy: f64,
    pub ci95: f64,
    pub episodes: usize,
}

/// N-way K-shot episodes on the given (unseen-class) embeddings: each episode draws `ways`
/// classes, `shots` support and `queries` query samples of each (without replacement), and
/// classifies each query by its nearest class prototype (mean of the support embeddings,
/// Euclidean distance), as the RKD paper's few-shot evaluation does. Classes with fewer than
/// shots + queries samples are not drawn. None if fewer than `ways` classes qualify.
pub fn few_shot(
    emb: &[f32],
    dim: usize,
    labels: &[u32],
    spec: &FewShotSpec,
    seed: u64,
) -> Option<FewShot> {
    let FewShotSpec {
        ways,
        shots,
        queries,
        episodes,
    } = *spec;
    let mut by_class: std::collections::BTreeMap<u32, Vec<usize>> = Default::default();
    for (i, &y) in labels.iter().enumerate() {
        by_class.entry(y).or_default().push(i);
    }
    let eligible: Vec<&Vec<usize>> = by_class
        .values()
        .filter(|v| v.len() >= shots + queries)
        .collect();
    if eligible.len() < ways || ways < 2 || shots == 0 || queries == 0 || episodes == 0 {
        return None;
    }
    let mut rng = Rng::fork(seed, "few-shot");
    let row = |i: usize| &emb[i * dim..(i + 1) * dim];
    let mut accs = Vec::with_capacity(episodes);
    for _ in 0..episodes {
        let mut classes: Vec<usize> = (0..eligible.len()).collect();
        rng.shuffle(&mut classes);
        let mut protos = vec![0f64; ways * dim];
        let mut query_sets = Vec::with_capacity(ways);
        for (w, &c) in classes[..ways].iter().enumerate() {
            let mut idx = eligible[c].clone();
            // A partial Fisher–Yates: the first shots + queries are a uniform sample.
            for j in 0..shots + queries {
                let r = j + rng.below(idx.len() - j);
                idx.swap(j, r);
            }
            for &s in &idx[..shots] {
                for (p, v) in protos[w * dim..(w + 1) * dim].iter_mut().zip(row(s)) {
                    *p += f64::from(*v) / shots as f64;
                }
            }
            query_sets.push(idx[shots..shots + queries].to_vec());
        }
        let mut correct = 0usize;
        for (w, qs) in query_sets.iter().enumerate() {
            for &q in qs {
                let best = (0..ways)
                    .map(|c| {
                        let d: f64 = protos[c * dim..(c + 1) * dim]
                            .iter()
                            .zip(row(q))
                            .map(|(p, v)| (p - f64::from(*v)).powi(2))
                            .sum();
                        (d, c)
                    })
                    .min_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)))
                    .map(|(_, c)| c);
                correct += usize::from(best == Some(w));
            }
        }
        accs.push(correct as f64 / (ways * queries) as f64);
    }
    let m = accs.len() as f64;
    let mean = accs.iter().sum::<f64>() / m;
    let var = accs.iter().map(|a| (a - mean).powi(2)).sum::<f64>() / (m - 1.0).max(1.0);
    Some(FewShot {
        accuracy: mean,
        ci95: 1.96 * (var / m).sqrt(),
        episodes,
    })
}

/// Top-1 accuracy of row-wise argmax of `logits` (n × classes) against `labels`, which are
/// positions 0..classes−1.
pub fn top1(logits: &[f32], classes: usize, labels: &[u32]) -> f64 {
    if labels.is_empty() {
        return 0.0;
    }
    let correct = logits
        .chunks(classes)
        .zip(labels)
        .filter(|(row, &y)| {
            let arg = row
                .iter()
                .enumerate()
                .max_by(|a, b| a.1.total_cmp(b.1).then(b.0.cmp(&a.0)))
                .map(|(i, _)| i as u32);
            arg == Some(y)
        })
        .count();
    correct as f64 / labels.len() as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blobs(classes: u32, per: usize, spread: f32) -> (Vec<f32>, Vec<u32>) {
        let mut rng = Rng::new(7);
        let mut emb = Vec::new();
        let mut labels = Vec::new();
        for c in 0..classes {
            for _ in 0..per {
                emb.push(c as f32 * 10.0 + spread * rng.normal() as f32);
                emb.push((c % 2) as f32 * 10.0 + spread * rng.normal() as f32);
                labels.push(c + 5);
            }
        }
        (emb, labels)
    }

    #[test]
    fn nmi_is_one_for_separated_classes_and_low_for_noise() {
        let (emb, labels) = blobs(4, 30, 0.5);
        assert!((nmi(&emb, 2, &labels, 1) - 1.0).abs() < 1e-12);
        let (emb, labels) = blobs(4, 30, 200.0);
        assert!(nmi(&emb, 2, &labels, 1) < 0.3);
        // Permuted cluster ids do not matter; merging two clusters loses information.
        assert!((nmi_of(&[0, 0, 1, 1], &[7, 7, 3, 3]) - 1.0).abs() < 1e-12);
        let merged = nmi_of(&[0, 0, 1, 1, 2, 2], &[0, 0, 1, 1, 1, 1]);
        assert!(merged > 0.5 && merged < 1.0, "{merged}");
        assert_eq!(nmi_of(&[0, 1, 0, 1], &[0, 0, 1, 1]), 0.0);
    }

    fn fs(ways: usize, shots: usize, queries: usize, episodes: usize) -> FewShotSpec {
        FewShotSpec {
            ways,
            shots,
            queries,
            episodes,
        }
    }

    #[test]
    fn few_shot_is_perfect_on_separated_classes_and_at_chance_on_noise() {
        let (emb, labels) = blobs(6, 20, 0.5);
        let r = few_shot(&emb, 2, &labels, &fs(5, 1, 5, 50), 3).unwrap();
        assert_eq!(r.accuracy, 1.0);
        assert_eq!(r.ci95, 0.0);
        let (emb, labels) = blobs(6, 20, 500.0);
        let r = few_shot(&emb, 2, &labels, &fs(5, 1, 5, 400), 3).unwrap();
        assert!((r.accuracy - 0.2).abs() < 0.05, "{r:?}");
        assert!(r.ci95 > 0.0 && r.ci95 < 0.05, "{r:?}");
        assert_eq!(few_shot(&emb, 2, &labels, &fs(5, 1, 5, 400), 3), Some(r));
        // Too few classes, or too few samples per class.
        assert_eq!(few_shot(&emb, 2, &labels, &fs(7, 1, 5, 10), 3), None);
        assert_eq!(few_shot(&emb, 2, &labels, &fs(5, 10, 15, 10), 3), None);
    }

    #[test]
    fn top1_counts_argmax_hits() {
        let logits = [0.1f32, 0.9, 0.8, 0.2, 0.5, 0.5];
        assert_eq!(top1(&logits, 2, &[1, 0, 0]), 1.0);
        assert_eq!(top1(&logits, 2, &[0, 0, 1]), 1.0 / 3.0);
    }

    #[test]
    fn recall_on_a_hand_made_example() {
        // 1-D points: 0 and 1 are class A, 10 and 11.5 class B, 5 is class A but closer to B's side.
        let emb = [0.0f32, 1.0, 10.0, 11.5, 5.0];
        let labels = [0u32, 0, 1, 1, 0];
        // Nearest of each: 0→1 (hit), 1→0 (hit), 10→11.5 (hit), 11.5→10 (hit), 5→1 (hit at distance 4 vs 5)
        assert_eq!(recall_at_k(&emb, 1, &labels, &[1]), vec![1.0]);
        let labels = [0u32, 1, 1, 0, 0];
        // 0→1 (miss), 1→0 (miss), 10→11.5 (miss), 11.5→10 (miss), 5→1 (miss); at K=2: 0:{1,5} hit ...
        let r = recall_at_k(&emb, 1, &labels, &[1, 2, 4]);
        assert_eq!(r[0], 0.0);
        assert_eq!(r[1], 3.0 / 5.0); // 0:{1,5}✓ 1:{0,5}✗ 10:{11.5,5}✗ 11.5:{10,5}✓ 5:{1,0}✓
        assert_eq!(r[2], 1.0);
    }

    #[test]
    fn separated_clusters_give_perfect_recall() {
        let mut emb = Vec::new();
        let mut labels = Vec::new();
        for c in 0..3u32 {
            for i in 0..5 {
                emb.extend([c as f32 * 100.0 + i as f32, 0.5 * i as f32]);
                labels.push(c);
            }
        }
        assert_eq!(recall_at_k(&emb, 2, &labels, &[1, 8]), vec![1.0, 1.0]);
    }
}
