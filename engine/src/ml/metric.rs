//! Retrieval metrics of the metric-learning protocol.

use rayon::prelude::*;

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

#[cfg(test)]
mod tests {
    use super::*;

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
