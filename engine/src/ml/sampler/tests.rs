use super::*;
use std::collections::BTreeSet;

/// `classes` classes with the given sizes, interleaved so that indices do not follow
/// classes (a sampler that ignored labels would be caught).
fn labels(sizes: &[usize]) -> Vec<u32> {
    let mut left = sizes.to_vec();
    let mut out = Vec::new();
    while left.iter().any(|&l| l > 0) {
        for (c, l) in left.iter_mut().enumerate() {
            if *l > 0 {
                *l -= 1;
                out.push(c as u32);
            }
        }
    }
    out
}

fn cur(k: usize, n: usize) -> SamplerSpec {
    SamplerSpec::ClassBalanced {
        classes_per_batch: k,
        per_class: n,
    }
}

/// Checks that `batch` is `k` distinct groups × `n` samples, laid out group by group.
fn assert_balanced_batch(batch: &[usize], groups: &[u32], k: usize, n: usize) {
    assert_eq!(batch.len(), k * n);
    let ids: Vec<u32> = batch.iter().map(|&i| groups[i]).collect();
    let distinct: BTreeSet<u32> = ids.iter().copied().collect();
    assert_eq!(distinct.len(), k, "{ids:?}");
    for chunk in ids.chunks(n) {
        assert!(chunk.iter().all(|&g| g == chunk[0]), "{ids:?}");
    }
}

fn assert_no_duplicates(batch: &[usize]) {
    let set: BTreeSet<usize> = batch.iter().copied().collect();
    assert_eq!(set.len(), batch.len(), "{batch:?}");
}

#[test]
fn random_reproduces_the_training_loop_sequence() {
    for (n, bs, seed) in [(103usize, 10usize, 7u64), (64, 64, 1), (50, 80, 3)] {
        // The loop of stage/train.rs before samplers existed.
        let mut batch_rng = Rng::fork(seed, "batches");
        let bs_old = bs.min(n);
        let mut order: Vec<usize> = (0..n).collect();
        let mut old = Vec::new();
        for _epoch in 1..=5 {
            batch_rng.shuffle(&mut order);
            let epoch: Vec<Vec<usize>> = order.chunks_exact(bs_old).map(|c| c.to_vec()).collect();
            old.push(epoch);
        }
        let groups = vec![0u32; n];
        let mut s = BatchSampler::new(&SamplerSpec::Random, bs, &groups, seed).unwrap();
        let new: Vec<_> = (0..5).map(|_| s.epoch()).collect();
        assert_eq!(new, old, "n = {n}, bs = {bs}");
        assert_eq!(s.batch_size(), bs_old);
        assert_eq!(s.batches_per_epoch(), n / bs_old);
    }
}

#[test]
fn class_balanced_batches_hold_k_classes_with_n_each() {
    let groups = labels(&[30, 25, 40, 12, 33, 20]);
    let mut s = BatchSampler::new(&cur(3, 4), 999, &groups, 11).unwrap();
    assert_eq!(s.batch_size(), 12);
    for _ in 0..3 {
        for b in s.epoch() {
            assert_balanced_batch(&b, &groups, 3, 4);
            assert_no_duplicates(&b);
        }
    }
}

#[test]
fn superclass_batches_follow_the_cluster_ids() {
    // Cluster ids that cut across the labels: the sampler must group by these.
    let clusters: Vec<u32> = (0..200u32).map(|i| (i * 7 / 3) % 5).collect();
    let spec = SamplerSpec::Superclass {
        clusters: 5,
        classes_per_batch: 2,
        per_class: 5,
    };
    assert!(spec.needs_clusters());
    assert_eq!(spec.clusters(), Some(5));
    let mut s = BatchSampler::new(&spec, 0, &clusters, 2).unwrap();
    for b in s.epoch() {
        assert_balanced_batch(&b, &clusters, 2, 5);
        assert_no_duplicates(&b);
    }
}

#[test]
fn pk_batches_hold_p_classes_with_k_each() {
    let groups = labels(&[9, 9, 9, 9, 9, 9, 9, 9]);
    let spec = SamplerSpec::Pk { p: 4, k: 3 };
    let mut s = BatchSampler::new(&spec, 0, &groups, 5).unwrap();
    assert_eq!(spec.batch_size(128), 12);
    for b in s.epoch() {
        assert_balanced_batch(&b, &groups, 4, 3);
        assert_no_duplicates(&b);
    }
    // Same batches as class_balanced with the same shape: they are the same sampler.
    let mut c = BatchSampler::new(&cur(4, 3), 0, &groups, 5).unwrap();
    let mut p = BatchSampler::new(&spec, 0, &groups, 5).unwrap();
    assert_eq!(c.epoch(), p.epoch());
}

#[test]
fn every_kind_has_floor_n_over_batch_size_batches_of_the_declared_size() {
    let groups = labels(&[17, 23, 9, 31, 14]); // n = 94
    let cases = [
        (SamplerSpec::Random, 10, 10),
        (cur(2, 5), 10, 10),
        (cur(3, 4), 0, 12),
        (SamplerSpec::Pk { p: 5, k: 2 }, 0, 10),
        (
            SamplerSpec::Superclass {
                clusters: 5,
                classes_per_batch: 4,
                per_class: 3,
            },
            0,
            12,
        ),
    ];
    for (spec, configured, bs) in cases {
        assert_eq!(spec.batch_size(configured), bs, "{spec:?}");
        let mut s = BatchSampler::new(&spec, configured, &groups, 3).unwrap();
        assert_eq!(s.batches_per_epoch(), 94 / bs);
        for _ in 0..2 {
            let e = s.epoch();
            assert_eq!(e.len(), 94 / bs, "{spec:?}");
            assert!(e.iter().all(|b| b.len() == bs), "{spec:?}");
        }
    }
}

#[test]
fn balanced_epochs_use_groups_and_samples_evenly() {
    // 7 groups, 3 per batch: 21 slots per cycle do not divide evenly into batches, so
    // the group cycle wraps inside batches.
    let groups = labels(&[40, 40, 40, 40, 40, 40, 40]);
    let mut s = BatchSampler::new(&cur(3, 4), 0, &groups, 9).unwrap();
    for _ in 0..3 {
        let epoch = s.epoch();
        assert_eq!(epoch.len(), 280 / 12);
        let mut group_uses = [0usize; 7];
        let mut sample_uses = vec![0usize; groups.len()];
        for b in &epoch {
            assert_balanced_batch(b, &groups, 3, 4);
            for chunk in b.chunks(4) {
                group_uses[groups[chunk[0]] as usize] += 1;
            }
            for &i in b {
                sample_uses[i] += 1;
            }
        }
        let (lo, hi) = (group_uses.iter().min(), group_uses.iter().max());
        assert!(hi.unwrap() - lo.unwrap() <= 1, "{group_uses:?}");
        // Inside a group, a sample repeats only once the whole group has been used.
        for g in 0..7u32 {
            let uses: Vec<usize> = (0..groups.len())
                .filter(|&i| groups[i] == g)
                .map(|i| sample_uses[i])
                .collect();
            let (lo, hi) = (uses.iter().min().unwrap(), uses.iter().max().unwrap());
            assert!(hi - lo <= 1, "group {g}: {uses:?}");
        }
    }
}

#[test]
fn no_duplicate_in_a_batch_when_groups_are_large_enough() {
    // Group sizes that are not multiples of per_class, and just as many groups as a
    // batch needs: every queue and the group cycle wrap inside batches.
    let groups = labels(&[7, 5, 6, 11]);
    let mut s = BatchSampler::new(&cur(4, 5), 0, &groups, 4).unwrap();
    for _ in 0..20 {
        for b in s.epoch() {
            assert_balanced_batch(&b, &groups, 4, 5);
            assert_no_duplicates(&b);
        }
    }
}

#[test]
fn a_group_smaller_than_per_class_repeats_its_samples_evenly() {
    // Class 2 has 2 samples but each batch takes 5 per class.
    let groups = labels(&[20, 20, 2]);
    let mut s = BatchSampler::new(&cur(3, 5), 0, &groups, 8).unwrap();
    let small: Vec<usize> = (0..groups.len()).filter(|&i| groups[i] == 2).collect();
    for b in s.epoch() {
        assert_balanced_batch(&b, &groups, 3, 5);
        let uses: Vec<usize> = small
            .iter()
            .map(|s| b.iter().filter(|&&i| i == *s).count())
            .collect();
        uses.iter()
            .for_each(|&u| assert!(u == 2 || u == 3, "{uses:?}"));
    }
}

#[test]
fn save_and_restore_give_identical_later_epochs_for_every_kind() {
    let groups = labels(&[21, 17, 30, 12, 25]);
    let specs = [
        (SamplerSpec::Random, 8),
        (cur(3, 4), 0),
        (SamplerSpec::Pk { p: 2, k: 6 }, 0),
        (
            SamplerSpec::Superclass {
                clusters: 6,
                classes_per_batch: 4,
                per_class: 2,
            },
            0,
        ),
    ];
    for (spec, bs) in specs {
        let mut full = BatchSampler::new(&spec, bs, &groups, 42).unwrap();
        let all: Vec<_> = (0..7).map(|_| full.epoch()).collect();
        // Consecutive epochs differ (the sampler is not stuck on one epoch).
        assert_ne!(all[0], all[1], "{spec:?}");
        for e in [0usize, 1, 3, 6] {
            let mut first = BatchSampler::new(&spec, bs, &groups, 42).unwrap();
            (0..e).for_each(|_| drop(first.epoch()));
            let json = serde_json::to_string(&first.state()).unwrap();
            let state: SamplerState = serde_json::from_str(&json).unwrap();
            assert_eq!(state.epochs_drawn, e as u64);
            let mut resumed = BatchSampler::new(&spec, bs, &groups, 42).unwrap();
            resumed.restore(&state).unwrap();
            let rest: Vec<_> = (e..6).map(|_| resumed.epoch()).collect();
            assert_eq!(rest, all[e..6], "{spec:?} resumed after {e}");
            // Restoring rewinds a sampler that has run ahead, too.
            first.epoch();
            first.restore(&state).unwrap();
            assert_eq!(first.epoch(), all[e], "{spec:?} rewound to {e}");
        }
    }
}

#[test]
fn restore_rejects_a_state_from_another_sampler_or_split() {
    let groups = labels(&[20, 20, 20]);
    let mut a = BatchSampler::new(&cur(2, 4), 0, &groups, 1).unwrap();
    a.epoch();
    let state = a.state();
    let mut other_labels = groups.clone();
    other_labels.swap(0, 1);
    for mut b in [
        BatchSampler::new(&cur(2, 4), 0, &groups, 2).unwrap(),
        BatchSampler::new(&cur(2, 3), 0, &groups, 1).unwrap(),
        BatchSampler::new(&cur(2, 4), 0, &other_labels, 1).unwrap(),
        BatchSampler::new(&SamplerSpec::Random, 8, &groups, 1).unwrap(),
    ] {
        let err = b.restore(&state).unwrap_err();
        assert!(matches!(err, SamplerError::StateMismatch { .. }), "{err}");
    }
    let r = BatchSampler::new(&SamplerSpec::Random, 8, &groups, 1).unwrap();
    let rs = r.state();
    let mut r9 = BatchSampler::new(&SamplerSpec::Random, 9, &groups, 1).unwrap();
    assert!(r9.restore(&rs).is_err());
}

#[test]
fn seeds_and_epochs_change_the_batches() {
    let groups = labels(&[20, 20, 20, 20]);
    let draw = |seed| {
        BatchSampler::new(&cur(2, 4), 0, &groups, seed)
            .unwrap()
            .epoch()
    };
    assert_eq!(draw(1), draw(1));
    assert_ne!(draw(1), draw(2));
}

#[test]
fn too_few_groups_is_an_actionable_error() {
    let groups = labels(&[10, 10, 10, 10, 10]);
    let err = BatchSampler::new(&cur(8, 2), 0, &groups, 0).unwrap_err();
    assert_eq!(
        err.to_string(),
        "class_balanced needs 8 classes per batch but the training split has 5 classes; \
         lower `classes_per_batch`"
    );
    let err = BatchSampler::new(&SamplerSpec::Pk { p: 6, k: 2 }, 0, &groups, 0).unwrap_err();
    assert!(err.to_string().contains("lower `p`"), "{err}");
    let sur = SamplerSpec::Superclass {
        clusters: 8,
        classes_per_batch: 6,
        per_class: 2,
    };
    let err = BatchSampler::new(&sur, 0, &groups, 0).unwrap_err();
    assert!(
        err.to_string().starts_with(
            "superclass needs 6 clusters per batch but the training split has 5 clusters"
        ),
        "{err}"
    );
}

#[test]
fn other_impossible_setups_are_errors() {
    let groups = labels(&[10, 10, 10]);
    let err =
        |spec: SamplerSpec, bs: usize, g: &[u32]| BatchSampler::new(&spec, bs, g, 0).unwrap_err();
    assert!(matches!(
        err(cur(0, 2), 0, &groups),
        SamplerError::ZeroField {
            field: "classes_per_batch",
            ..
        }
    ));
    assert!(matches!(
        err(SamplerSpec::Pk { p: 2, k: 0 }, 0, &groups),
        SamplerError::ZeroField { field: "k", .. }
    ));
    assert!(matches!(
        err(SamplerSpec::Random, 0, &groups),
        SamplerError::ZeroField {
            field: "batch_size",
            ..
        }
    ));
    assert_eq!(err(SamplerSpec::Random, 4, &[]), SamplerError::NoSamples);
    assert!(matches!(
        err(cur(3, 11), 0, &groups),
        SamplerError::BatchLargerThanSplit {
            batch_size: 33,
            n: 30,
            ..
        }
    ));
    let sur = |clusters, classes_per_batch| SamplerSpec::Superclass {
        clusters,
        classes_per_batch,
        per_class: 2,
    };
    assert!(matches!(
        err(sur(2, 3), 0, &groups),
        SamplerError::MoreGroupsPerBatchThanClusters { .. }
    ));
    // Class labels passed where cluster ids belong.
    let many = labels(&[4, 4, 4, 4, 4, 4]);
    assert_eq!(
        err(sur(4, 2), 0, &many),
        SamplerError::NotClusterIds {
            found: 6,
            clusters: 4
        }
    );
}

#[test]
fn spec_reads_and_writes_the_recipe_shape() {
    let cases = [
        (r#"{"kind":"random"}"#, SamplerSpec::Random),
        (
            r#"{"kind":"class_balanced","classes_per_batch":8,"per_class":4}"#,
            cur(8, 4),
        ),
        (
            r#"{"kind":"superclass","clusters":20,"classes_per_batch":8,"per_class":4}"#,
            SamplerSpec::Superclass {
                clusters: 20,
                classes_per_batch: 8,
                per_class: 4,
            },
        ),
        (
            r#"{"kind":"pk","p":8,"k":4}"#,
            SamplerSpec::Pk { p: 8, k: 4 },
        ),
    ];
    for (json, spec) in cases {
        assert_eq!(serde_json::from_str::<SamplerSpec>(json).unwrap(), spec);
        assert_eq!(serde_json::to_string(&spec).unwrap(), json);
    }
    assert!(serde_json::from_str::<SamplerSpec>(r#"{"kind":"pk","p":8,"k":4,"q":1}"#).is_err());
    assert!(serde_json::from_str::<SamplerSpec>(r#"{"kind":"cur"}"#).is_err());
    assert_eq!(SamplerSpec::default(), SamplerSpec::Random);
    assert_eq!(SamplerSpec::Random.batch_size(64), 64);
    assert_eq!(cur(8, 4).batch_size(64), 32);
    assert!(!SamplerSpec::Random.needs_clusters());
    assert!(!cur(8, 4).needs_clusters());
}
