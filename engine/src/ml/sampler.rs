//! Mini-batch samplers: which training samples share a batch.
//!
//! Relational losses (RKD, SP, CC) compare the samples of one batch with each other, so the
//! batch composition is part of the method, not only of the optimiser: the CC paper (Peng et
//! al. 2019) compares random batches with class-uniform (CUR) and superclass-uniform (SUR)
//! ones, and triplet training wants P classes × K samples so that every anchor has positives.
//! This module builds those batches reproducibly from a seed and lets a stopped run resume
//! with bit-identical batches. The k-means that gives SUR its superclasses is in
//! [`super::cluster`].

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::rng::Rng;

/// How a training epoch is cut into mini-batches.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum SamplerSpec {
    /// Every epoch shuffles all training indices and cuts them into consecutive batches of the
    /// configured batch size, dropping the incomplete last one. The baseline: class
    /// composition of a batch follows the data set's class frequencies, so with many classes
    /// most batches hold few positive pairs.
    #[default]
    Random,
    /// Class-uniform batches (CUR in the CC paper): each batch holds `classes_per_batch`
    /// classes with `per_class` samples each. Guarantees intra-class pairs in every batch,
    /// which correlation-congruence and triplet-style losses need to see class structure.
    ClassBalanced {
        classes_per_batch: usize,
        per_class: usize,
    },
    /// Superclass-uniform batches (SUR in the CC paper): like `class_balanced`, but over
    /// `clusters` groups found by k-means on the teacher's embeddings instead of over labels.
    /// Samples the teacher finds similar land in the same batch, so relational losses see
    /// the teacher's local structure even without (or across) labels.
    Superclass {
        clusters: usize,
        classes_per_batch: usize,
        per_class: usize,
    },
    /// P classes × K samples: the same batches as `class_balanced`, under the name the
    /// triplet literature uses (Hermans et al. 2017), so triplet recipes read naturally.
    Pk { p: usize, k: usize },
}

impl SamplerSpec {
    /// The name used in recipes and error messages.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Random => "random",
            Self::ClassBalanced { .. } => "class_balanced",
            Self::Superclass { .. } => "superclass",
            Self::Pk { .. } => "pk",
        }
    }

    /// Samples per batch. `configured` is the stage's `batch_size`, which only `random`
    /// uses: the balanced samplers fix their batch size as groups × samples per group.
    pub fn batch_size(&self, configured: usize) -> usize {
        match self.balanced() {
            None => configured,
            Some(b) => b.batch_size(),
        }
    }

    /// Whether the sampler groups by k-means clusters of the teacher's embeddings (so the
    /// caller must run [`kmeans`] first and pass its assignments as the group ids).
    pub fn needs_clusters(&self) -> bool {
        matches!(self, Self::Superclass { .. })
    }

    /// The number of k-means clusters to compute, for the samplers that need them.
    pub fn clusters(&self) -> Option<usize> {
        match self {
            Self::Superclass { clusters, .. } => Some(*clusters),
            _ => None,
        }
    }

    /// Checks what can be checked without data: no zero sizes, and no more clusters per
    /// batch than clusters. [`BatchSampler::new`] calls it too; recipes can call it early.
    pub fn validate(&self) -> Result<(), SamplerError> {
        let zero = |field: &'static str| SamplerError::ZeroField {
            sampler: self.name(),
            field,
        };
        match *self {
            Self::Random => {}
            Self::ClassBalanced {
                classes_per_batch,
                per_class,
            } => {
                if classes_per_batch == 0 {
                    return Err(zero("classes_per_batch"));
                }
                if per_class == 0 {
                    return Err(zero("per_class"));
                }
            }
            Self::Superclass {
                clusters,
                classes_per_batch,
                per_class,
            } => {
                if clusters == 0 {
                    return Err(zero("clusters"));
                }
                if classes_per_batch == 0 {
                    return Err(zero("classes_per_batch"));
                }
                if per_class == 0 {
                    return Err(zero("per_class"));
                }
                if classes_per_batch > clusters {
                    return Err(SamplerError::MoreGroupsPerBatchThanClusters {
                        classes_per_batch,
                        clusters,
                    });
                }
            }
            Self::Pk { p, k } => {
                if p == 0 {
                    return Err(zero("p"));
                }
                if k == 0 {
                    return Err(zero("k"));
                }
            }
        }
        Ok(())
    }

    /// The shape of a balanced sampler; `None` for `random`.
    fn balanced(&self) -> Option<Balanced> {
        match *self {
            Self::Random => None,
            Self::ClassBalanced {
                classes_per_batch,
                per_class,
            } => Some(Balanced {
                groups_per_batch: classes_per_batch,
                per_group: per_class,
                groups: "classes",
                groups_field: "classes_per_batch",
            }),
            Self::Superclass {
                classes_per_batch,
                per_class,
                ..
            } => Some(Balanced {
                groups_per_batch: classes_per_batch,
                per_group: per_class,
                groups: "clusters",
                groups_field: "classes_per_batch",
            }),
            Self::Pk { p, k } => Some(Balanced {
                groups_per_batch: p,
                per_group: k,
                groups: "classes",
                groups_field: "p",
            }),
        }
    }
}

/// Errors from building a sampler, resuming one, or clustering for `superclass`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SamplerError {
    #[error("sampler `{sampler}`: `{field}` must be at least 1")]
    ZeroField {
        sampler: &'static str,
        field: &'static str,
    },
    #[error("the training split is empty, so there is nothing to draw batches from")]
    NoSamples,
    #[error(
        "{sampler} needs {needed} {groups} per batch but the training split has \
         {available} {groups}; lower `{field}`"
    )]
    TooFewGroups {
        sampler: &'static str,
        groups: &'static str,
        field: &'static str,
        needed: usize,
        available: usize,
    },
    #[error(
        "superclass asks for {classes_per_batch} clusters per batch but k-means makes only \
         `clusters: {clusters}`; lower `classes_per_batch` or raise `clusters`"
    )]
    MoreGroupsPerBatchThanClusters {
        classes_per_batch: usize,
        clusters: usize,
    },
    #[error(
        "superclass was given {found} distinct group ids but `clusters` is {clusters}, so \
         they cannot be the assignments of that k-means; pass the k-means assignments of the \
         training split (not its class labels)"
    )]
    NotClusterIds { found: usize, clusters: usize },
    #[error(
        "{sampler} batches hold {batch_size} samples but the training split has only {n}, so \
         not one batch fits; lower the samples per batch"
    )]
    BatchLargerThanSplit {
        sampler: &'static str,
        batch_size: usize,
        n: usize,
    },
    #[error(
        "cannot resume the batch sampler: the saved state belongs to a different sampler, \
         batch size, seed or training split (saved fingerprint {saved}, this run {current}); \
         resume with the recipe and data the state was saved with, or start afresh"
    )]
    StateMismatch { saved: String, current: String },
}

/// The shape of a balanced batch: `groups_per_batch` groups × `per_group` samples, plus the
/// words that name the recipe fields in error messages.
#[derive(Clone, Copy, Debug)]
struct Balanced {
    groups_per_batch: usize,
    per_group: usize,
    groups: &'static str,
    groups_field: &'static str,
}

impl Balanced {
    fn batch_size(&self) -> usize {
        // Saturating: an absurd product then fails as "batch larger than the split".
        self.groups_per_batch.saturating_mul(self.per_group)
    }
}

/// Where a sampler stands between epochs, for checkpoints. Restoring it into a
/// [`BatchSampler`] built from the same spec, batch size, group ids and seed continues with
/// bit-identical epochs.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SamplerState {
    /// Epochs already returned by [`BatchSampler::epoch`].
    pub epochs_drawn: u64,
    /// A hash (16 hex digits, FNV-1a) of everything the batches depend on, so that a state
    /// is never silently applied to a different sampler or split.
    pub fingerprint: String,
}

/// Draws the batches of successive epochs.
///
/// Batches are lists of indices into the training split. Each epoch has the same number of
/// batches for every kind: `floor(n / batch_size)`, so epochs stay comparable across
/// samplers.
///
/// Balanced samplers (`class_balanced`, `superclass`, `pk`) build an epoch like this:
/// - groups (classes or clusters) are taken from a shuffled cycle over all groups, so over
///   an epoch every group is used the same number of times, give or take one;
/// - inside a group, samples come from a shuffled queue of that group's samples and are
///   drawn without replacement; an exhausted queue is reshuffled, so a sample repeats only
///   after its whole group has been used;
/// - a group with fewer than `per_class` samples cannot fill its slot without repetition:
///   it is drawn from its queue again and again (reshuffled each time), so each of its
///   samples appears `per_class / size` times in the batch, give or take one;
/// - a batch lists its groups one after another (`per_class` samples of the first group,
///   then of the second, …), the P × K layout that triplet mining expects.
///
/// Balanced epochs are derived from `(seed, epoch index)` alone: the group cycle and the
/// queues restart every epoch. That keeps the resume state down to an epoch counter.
#[derive(Clone, Debug)]
pub struct BatchSampler {
    seed: u64,
    epochs_drawn: u64,
    fingerprint: u64,
    mode: Mode,
}

#[derive(Clone, Debug)]
enum Mode {
    /// The training loop's original scheme, kept call for call: one `Rng::fork(seed,
    /// "batches")` for the whole run, and `order` reshuffled in place every epoch.
    Random {
        batch_size: usize,
        rng: Rng,
        order: Vec<usize>,
    },
    Balanced {
        shape: Balanced,
        /// Sample indices of each group (ascending), groups in ascending id order.
        members: Vec<Vec<usize>>,
        batches_per_epoch: usize,
    },
}

/// The random sampler's stream name. `stage/train.rs` has used this stream since before
/// samplers existed; changing it would change every existing result.
const RANDOM_STREAM: &str = "batches";

impl BatchSampler {
    /// A sampler over a training split whose samples have the group ids `groups` (class
    /// labels, or k-means cluster ids for `superclass`; `random` only uses their count).
    /// `batch_size` is the stage's configured batch size, used by `random` only; like the
    /// training loop it is capped at the split size.
    pub fn new(
        spec: &SamplerSpec,
        batch_size: usize,
        groups: &[u32],
        seed: u64,
    ) -> Result<Self, SamplerError> {
        spec.validate()?;
        let n = groups.len();
        if n == 0 {
            return Err(SamplerError::NoSamples);
        }
        let mut fp = Fnv::new();
        fp.str(spec.name());
        fp.u64(seed);
        fp.u64(n as u64);
        let mode = match spec.balanced() {
            None => {
                if batch_size == 0 {
                    return Err(SamplerError::ZeroField {
                        sampler: spec.name(),
                        field: "batch_size",
                    });
                }
                let batch_size = batch_size.min(n);
                fp.u64(batch_size as u64);
                Mode::Random {
                    batch_size,
                    rng: Rng::fork(seed, RANDOM_STREAM),
                    order: (0..n).collect(),
                }
            }
            Some(shape) => {
                let mut by_group: BTreeMap<u32, Vec<usize>> = BTreeMap::new();
                for (i, &g) in groups.iter().enumerate() {
                    by_group.entry(g).or_default().push(i);
                }
                if let Some(clusters) = spec.clusters() {
                    if by_group.len() > clusters {
                        return Err(SamplerError::NotClusterIds {
                            found: by_group.len(),
                            clusters,
                        });
                    }
                }
                if by_group.len() < shape.groups_per_batch {
                    return Err(SamplerError::TooFewGroups {
                        sampler: spec.name(),
                        groups: shape.groups,
                        field: shape.groups_field,
                        needed: shape.groups_per_batch,
                        available: by_group.len(),
                    });
                }
                let batches_per_epoch = n / shape.batch_size();
                if batches_per_epoch == 0 {
                    return Err(SamplerError::BatchLargerThanSplit {
                        sampler: spec.name(),
                        batch_size: shape.batch_size(),
                        n,
                    });
                }
                fp.u64(shape.groups_per_batch as u64);
                fp.u64(shape.per_group as u64);
                for &g in groups {
                    fp.u64(u64::from(g));
                }
                Mode::Balanced {
                    shape,
                    members: by_group.into_values().collect(),
                    batches_per_epoch,
                }
            }
        };
        Ok(Self {
            seed,
            epochs_drawn: 0,
            fingerprint: fp.finish(),
            mode,
        })
    }

    /// Samples per batch (every batch has exactly this many).
    pub fn batch_size(&self) -> usize {
        match &self.mode {
            Mode::Random { batch_size, .. } => *batch_size,
            Mode::Balanced { shape, .. } => shape.batch_size(),
        }
    }

    /// Batches in every epoch: `floor(n / batch_size)`.
    pub fn batches_per_epoch(&self) -> usize {
        match &self.mode {
            Mode::Random {
                batch_size, order, ..
            } => order.len() / batch_size,
            Mode::Balanced {
                batches_per_epoch, ..
            } => *batches_per_epoch,
        }
    }

    /// Epochs drawn so far (restored ones included).
    pub fn epochs_drawn(&self) -> u64 {
        self.epochs_drawn
    }

    /// The batches of the next epoch, as indices into the training split.
    pub fn epoch(&mut self) -> Vec<Vec<usize>> {
        let batches = match &mut self.mode {
            Mode::Random {
                batch_size,
                rng,
                order,
            } => {
                rng.shuffle(order);
                order.chunks_exact(*batch_size).map(<[_]>::to_vec).collect()
            }
            Mode::Balanced {
                shape,
                members,
                batches_per_epoch,
            } => balanced_epoch(
                &mut Rng::fork(self.seed, &balanced_stream(self.epochs_drawn)),
                shape,
                members,
                *batches_per_epoch,
            ),
        };
        self.epochs_drawn += 1;
        batches
    }

    /// The state to checkpoint after an epoch.
    pub fn state(&self) -> SamplerState {
        SamplerState {
            epochs_drawn: self.epochs_drawn,
            fingerprint: format!("{:016x}", self.fingerprint),
        }
    }

    /// Puts the sampler where `state` was taken, whatever it has drawn so far. The sampler
    /// must have been built from the same spec, batch size, group ids and seed; otherwise
    /// this fails rather than resume with different batches.
    pub fn restore(&mut self, state: &SamplerState) -> Result<(), SamplerError> {
        let current = format!("{:016x}", self.fingerprint);
        if state.fingerprint != current {
            return Err(SamplerError::StateMismatch {
                saved: state.fingerprint.clone(),
                current,
            });
        }
        if let Mode::Random { rng, order, .. } = &mut self.mode {
            // `Rng` does not expose its state, so replay the run's shuffles from the start:
            // O(n) per epoch (≈ 60,000 × 100 draws at most), negligible next to training.
            *rng = Rng::fork(self.seed, RANDOM_STREAM);
            order.iter_mut().enumerate().for_each(|(i, o)| *o = i);
            for _ in 0..state.epochs_drawn {
                rng.shuffle(order);
            }
        }
        // Balanced epochs depend on (seed, epoch index) only: the counter is the whole state.
        self.epochs_drawn = state.epochs_drawn;
        Ok(())
    }
}

/// The stream of one balanced epoch. Distinct from [`RANDOM_STREAM`] so that switching
/// sampler kind does not reuse the random sampler's numbers.
fn balanced_stream(epoch: u64) -> String {
    format!("balanced-batches/epoch-{epoch}")
}

fn balanced_epoch(
    rng: &mut Rng,
    shape: &Balanced,
    members: &[Vec<usize>],
    batches: usize,
) -> Vec<Vec<usize>> {
    let mut group_cycle = Cycle::new((0..members.len()).collect(), rng);
    let mut queues: Vec<Cycle> = members.iter().map(|m| Cycle::new(m.clone(), rng)).collect();
    let mut chosen = Vec::with_capacity(shape.groups_per_batch);
    (0..batches)
        .map(|_| {
            chosen.clear();
            group_cycle.take(shape.groups_per_batch, rng, &mut chosen);
            let mut batch = Vec::with_capacity(shape.batch_size());
            for &g in &chosen {
                queues[g].take(shape.per_group, rng, &mut batch);
            }
            batch
        })
        .collect()
}

/// A shuffled sequence consumed in order and reshuffled when exhausted, so each item is
/// used once per pass.
#[derive(Debug)]
struct Cycle {
    items: Vec<usize>,
    pos: usize,
}

impl Cycle {
    fn new(mut items: Vec<usize>, rng: &mut Rng) -> Self {
        rng.shuffle(&mut items);
        Self { items, pos: 0 }
    }

    /// Appends the next `m` items to `out`. When a pass ends in the middle of a take, the
    /// items already taken by this call go to the back of the fresh pass (keeping its
    /// order otherwise), so one take repeats an item only if it asks for more items than
    /// the cycle holds: a batch never gets the same group twice, nor the same sample twice
    /// from a group that has `per_class` samples or more.
    fn take(&mut self, m: usize, rng: &mut Rng, out: &mut Vec<usize>) {
        let start = out.len();
        for _ in 0..m {
            if self.pos == self.items.len() {
                rng.shuffle(&mut self.items);
                self.pos = 0;
                let taken = &out[start..];
                if !taken.is_empty() {
                    let (fresh, again): (Vec<usize>, Vec<usize>) =
                        self.items.iter().partition(|i| !taken.contains(i));
                    self.items = fresh;
                    self.items.extend(again);
                }
            }
            out.push(self.items[self.pos]);
            self.pos += 1;
        }
    }
}

/// FNV-1a, 64-bit: a stable hash for the state fingerprint (std's hashers are not
/// guaranteed stable across Rust versions, and a checkpoint outlives the binary).
struct Fnv(u64);

impl Fnv {
    fn new() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }
    fn bytes(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01B3);
        }
    }
    fn str(&mut self, s: &str) {
        self.u64(s.len() as u64);
        self.bytes(s.as_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.bytes(&v.to_le_bytes());
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

#[cfg(test)]
mod tests;
