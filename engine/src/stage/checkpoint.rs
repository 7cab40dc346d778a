//! Epoch checkpoints of a training stage, so that a re-run after an interruption resumes
//! from the last finished epoch instead of from scratch (docs/resume.md).
//!
//! A stage's checkpoints live next to its future cache entry, in `<cache>/<key>.ckpt/`:
//!
//! ```text
//! <key>.ckpt/
//!   epoch-7/                 the latest checkpoint (older ones are removed once it is in place)
//!     model.safetensors      every tensor of the model, BatchNorm running statistics included
//!     optimizer.safetensors  the optimiser's step count and moments
//!     state.json             epoch, RNG states, sampler state, the epoch records so far
//!     manifest.json          format, stage key, epoch and the SHA-256 of the three files above
//!   tmp-<pid>-<n>/           a checkpoint being written (or left by a killed process)
//! ```
//!
//! A checkpoint is written into a `tmp-*` directory, every file synced, then renamed into
//! place, so an `epoch-*` directory is always complete; a kill leaves at most a `tmp-*`
//! directory, which is ignored and cleaned up. Before use a checkpoint is verified (manifest,
//! key, epoch, every checksum); one that fails is reported and never used.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::cache::sha256_file;
use crate::ml::model::Model;
use crate::ml::optim::{Optim, OptimError};
use crate::ml::rng::Rng;
use crate::ml::sampler::SamplerState;
use crate::spec::EpochRecord;

pub const MODEL_FILE: &str = "model.safetensors";
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";
pub const STATE_FILE: &str = "state.json";
pub const MANIFEST_FILE: &str = "manifest.json";
/// The files a checkpoint must have, besides its manifest.
const FILES: [&str; 3] = [MODEL_FILE, OPTIMIZER_FILE, STATE_FILE];
/// Bumped when what a checkpoint holds changes meaning; other formats are ignored.
const FORMAT: u32 = 1;
const EPOCH_PREFIX: &str = "epoch-";
const TMP_PREFIX: &str = "tmp-";
/// Environment variable: the least training time, in seconds, between two checkpoints
/// (default [`DEFAULT_INTERVAL_S`]; 0: after every epoch; `off`: never). Not part of a
/// stage's key: where a run resumes from never changes its results.
pub const INTERVAL_ENV: &str = "RKD_CHECKPOINT_SECS";
/// Epochs longer than this get a checkpoint each; shorter ones one every so many seconds,
/// so that syncing a checkpoint (milliseconds to, on a busy disk, a second) stays a small
/// fraction of training however short the epochs are. A kill loses at most this much
/// training time plus one epoch.
pub const DEFAULT_INTERVAL_S: f64 = 2.0;

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("checkpoint {name} is corrupt ({why})")]
    Corrupt { name: String, why: String },
    #[error("checkpoint {name} was written for stage {found}, not this one")]
    OtherStage { name: String, found: String },
    #[error("checkpoint {name} has format {found}; this engine reads format {FORMAT}")]
    Format { name: String, found: u32 },
    #[error("checkpoint {name} cannot be restored: {why}")]
    Restore { name: String, why: String },
    #[error("cannot write checkpoint {name} under {}: {source}", dir.display())]
    Write {
        name: String,
        dir: PathBuf,
        source: io::Error,
    },
}

/// One epoch's record as a checkpoint keeps it: losses as the bits of their f64, because
/// a resumed run must report exactly the numbers an uninterrupted one would, and a decimal
/// round trip through JSON is not guaranteed to be exact (serde_json's default float parser
/// is not correctly rounded).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SavedEpoch {
    pub epoch: usize,
    /// Loss name → `f64::to_bits`, as 16 hex digits.
    pub losses: BTreeMap<String, String>,
    /// Informational (wall times are never compared).
    pub wall_s: f64,
}

impl SavedEpoch {
    pub fn from_record(r: &EpochRecord) -> Self {
        Self {
            epoch: r.epoch,
            losses: r
                .losses
                .iter()
                .map(|(k, v)| (k.clone(), format!("{:016x}", v.to_bits())))
                .collect(),
            wall_s: r.wall_s,
        }
    }

    pub fn to_record(&self) -> Result<EpochRecord, String> {
        let losses = self
            .losses
            .iter()
            .map(|(k, v)| {
                u64::from_str_radix(v, 16)
                    .ok()
                    .filter(|_| v.len() == 16)
                    .map(|b| (k.clone(), f64::from_bits(b)))
                    .ok_or_else(|| {
                        format!("loss `{k}` of epoch {} is not 16 hex digits", self.epoch)
                    })
            })
            .collect::<Result<_, _>>()?;
        Ok(EpochRecord {
            epoch: self.epoch,
            losses,
            wall_s: self.wall_s,
        })
    }
}

/// `state.json`: where the training loop stood after `epoch`, besides its tensors.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TrainState {
    /// The last finished epoch (1-based); training resumes at `epoch + 1`.
    pub epoch: usize,
    /// The loop's random streams by name (xoshiro256++ states).
    pub rngs: BTreeMap<String, [u64; 4]>,
    pub sampler: SamplerState,
    /// Every epoch so far, in order (`epochs.len() == epoch`).
    pub epochs: Vec<SavedEpoch>,
}

impl TrainState {
    /// The named stream, as a generator continuing where it was.
    pub fn rng(&self, name: &str) -> Result<Rng, String> {
        let s = self
            .rngs
            .get(name)
            .ok_or_else(|| format!("{STATE_FILE} has no `{name}` random stream"))?;
        Rng::from_state(*s).ok_or_else(|| format!("random stream `{name}` is all zeros"))
    }
}

/// `manifest.json`: what makes a checkpoint directory trustworthy.
#[derive(Serialize, Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct Manifest {
    format: u32,
    key: String,
    epoch: usize,
    /// File name → SHA-256 of its bytes.
    files: BTreeMap<String, String>,
}

/// A checkpoint whose manifest, key and checksums hold, with its parsed state.
#[derive(Debug)]
pub struct Verified {
    pub epoch: usize,
    pub dir: PathBuf,
    pub state: TrainState,
}

impl Verified {
    pub fn name(&self) -> String {
        epoch_name(self.epoch)
    }

    /// Loads the model's tensors and the optimiser's state. Either may have been changed
    /// when this fails: the caller must then start from freshly built ones.
    pub fn load_into(&self, model: &mut Model, opt: &mut Optim) -> Result<(), CheckpointError> {
        let fail = |why: String| CheckpointError::Restore {
            name: self.name(),
            why,
        };
        model
            .load_weights(&self.dir.join(MODEL_FILE))
            .map_err(|e| fail(format!("{MODEL_FILE}: {e}")))?;
        opt.load(&self.dir.join(OPTIMIZER_FILE))
            .map_err(|e: OptimError| fail(e.to_string()))?;
        Ok(())
    }
}

fn epoch_name(epoch: usize) -> String {
    format!("{EPOCH_PREFIX}{epoch}")
}

/// The checkpoints of one stage.
#[derive(Clone, Debug)]
pub struct Checkpoints {
    root: PathBuf,
    key: String,
    /// The least time between two checkpoints; `None`: write none (existing ones are still
    /// read).
    interval: Option<Duration>,
}

impl Checkpoints {
    /// The checkpoints of stage `key` in the cache `cache_dir`, one after every epoch.
    pub fn new(cache_dir: &Path, key: &str) -> Self {
        Self {
            root: crate::cache::layout::checkpoints(cache_dir, key),
            key: key.to_string(),
            interval: Some(Duration::ZERO),
        }
    }

    /// At most one checkpoint per `interval` of training (`None`: none at all).
    pub fn with_interval(mut self, interval: Option<Duration>) -> Self {
        self.interval = interval;
        self
    }

    /// As [`Checkpoints::new`], with the interval of `$RKD_CHECKPOINT_SECS`.
    pub fn from_env(cache_dir: &Path, key: &str) -> Self {
        let default = Duration::from_secs_f64(DEFAULT_INTERVAL_S);
        let interval = match std::env::var(INTERVAL_ENV) {
            Err(_) => Some(default),
            Ok(v) if v.trim() == "off" => None,
            Ok(v) => match v.trim().parse::<f64>() {
                Ok(s) if s.is_finite() && s >= 0.0 => Some(Duration::from_secs_f64(s)),
                _ => {
                    eprintln!(
                        "warning: {INTERVAL_ENV}={v:?} is neither seconds nor `off`; \
                         using {DEFAULT_INTERVAL_S}"
                    );
                    Some(default)
                }
            },
        };
        Self::new(cache_dir, key).with_interval(interval)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Whether a checkpoint is due after `epoch` of `total`, `since` the last one (or the
    /// start of training). Never after the last epoch: the stage commits its result right
    /// away, and the checkpoint would be thrown away.
    pub fn due(&self, epoch: usize, total: usize, since: Duration) -> bool {
        self.interval.is_some_and(|iv| since >= iv) && epoch < total
    }

    /// Epochs of the `epoch-*` directories present, latest first (unverified).
    pub fn epochs(&self) -> Vec<usize> {
        let mut found: Vec<usize> = fs::read_dir(&self.root)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                name.strip_prefix(EPOCH_PREFIX)?.parse().ok()
            })
            .collect();
        found.sort_unstable_by(|a, b| b.cmp(a));
        found
    }

    /// The checkpoint of `epoch`, if it can be trusted.
    pub fn open(&self, epoch: usize) -> Result<Verified, CheckpointError> {
        let name = epoch_name(epoch);
        let dir = self.root.join(&name);
        let corrupt = |why: String| CheckpointError::Corrupt {
            name: name.clone(),
            why,
        };
        let bytes = fs::read(dir.join(MANIFEST_FILE))
            .map_err(|e| corrupt(format!("{MANIFEST_FILE} unreadable: {e}")))?;
        let m: Manifest = serde_json::from_slice(&bytes)
            .map_err(|e| corrupt(format!("{MANIFEST_FILE} is not valid: {e}")))?;
        if m.format != FORMAT {
            return Err(CheckpointError::Format {
                name,
                found: m.format,
            });
        }
        if m.key != self.key {
            return Err(CheckpointError::OtherStage { name, found: m.key });
        }
        if m.epoch != epoch {
            return Err(corrupt(format!("{MANIFEST_FILE} says epoch {}", m.epoch)));
        }
        for f in FILES {
            if !m.files.contains_key(f) {
                return Err(corrupt(format!("{MANIFEST_FILE} does not list {f}")));
            }
        }
        for (file, want) in &m.files {
            match sha256_file(&dir.join(file)) {
                Ok(got) if &got == want => {}
                Ok(_) => return Err(corrupt(format!("{file} does not match its checksum"))),
                Err(e) => return Err(corrupt(format!("{file} unreadable: {e}"))),
            }
        }
        let state: TrainState = serde_json::from_slice(
            &fs::read(dir.join(STATE_FILE))
                .map_err(|e| corrupt(format!("{STATE_FILE} unreadable: {e}")))?,
        )
        .map_err(|e| corrupt(format!("{STATE_FILE} is not valid: {e}")))?;
        if state.epoch != epoch || state.epochs.len() != epoch {
            return Err(corrupt(format!(
                "{STATE_FILE} is for epoch {} with {} epoch records",
                state.epoch,
                state.epochs.len()
            )));
        }
        Ok(Verified { epoch, dir, state })
    }

    /// Writes the checkpoint of `state.epoch` atomically, then removes every other
    /// checkpoint. Returns how long it took.
    pub fn write(
        &self,
        model: &Model,
        opt: &Optim,
        state: &TrainState,
    ) -> Result<Duration, CheckpointError> {
        let started = Instant::now();
        let name = epoch_name(state.epoch);
        let fail = |dir: &Path| {
            let (name, dir) = (name.clone(), dir.to_path_buf());
            move |source: io::Error| CheckpointError::Write { name, dir, source }
        };
        let candle_io = |e: candle_core::Error| io::Error::other(e.to_string());

        fs::create_dir_all(&self.root).map_err(fail(&self.root))?;
        let tmp = TmpDir::create(&self.root).map_err(fail(&self.root))?;
        let t = tmp.0.as_path();
        model
            .save_weights(&t.join(MODEL_FILE))
            .map_err(candle_io)
            .map_err(fail(t))?;
        opt.save(&t.join(OPTIMIZER_FILE))
            .map_err(candle_io)
            .map_err(fail(t))?;
        let json = serde_json::to_vec_pretty(state).map_err(io::Error::other);
        write_synced(&t.join(STATE_FILE), &json.map_err(fail(t))?).map_err(fail(t))?;
        let mut files = BTreeMap::new();
        for f in FILES {
            let p = t.join(f);
            // candle writes the safetensors without syncing them, and private (0600).
            fs::File::open(&p)
                .and_then(|h| h.sync_all())
                .and_then(|()| crate::cache::honour_umask(&p))
                .map_err(fail(t))?;
            files.insert(f.to_string(), sha256_file(&p).map_err(fail(t))?);
        }
        let manifest = Manifest {
            format: FORMAT,
            key: self.key.clone(),
            epoch: state.epoch,
            files,
        };
        // Compact: with no insignificant whitespace, any changed byte of the manifest
        // changes its meaning (or breaks it) and is caught when it is verified.
        let json = serde_json::to_vec(&manifest).map_err(io::Error::other);
        write_synced(&t.join(MANIFEST_FILE), &json.map_err(fail(t))?).map_err(fail(t))?;
        sync_dir(t).map_err(fail(t))?;

        let target = self.root.join(&name);
        // Only a checkpoint that was refused (or one from a concurrent run of the same
        // stage, with the same content) can be in the way; rename cannot replace a
        // non-empty directory.
        if target.exists() {
            fs::remove_dir_all(&target).map_err(fail(&target))?;
        }
        fs::rename(t, &target).map_err(fail(&target))?;
        tmp.keep();
        sync_dir(&self.root).map_err(fail(&self.root))?;
        for e in self.epochs() {
            if e != state.epoch {
                let _ = fs::remove_dir_all(self.root.join(epoch_name(e)));
            }
        }
        Ok(started.elapsed())
    }

    /// Removes `tmp-*` directories left by processes that no longer run (a kill while a
    /// checkpoint was being written).
    pub fn remove_stale_tmp(&self) {
        for e in fs::read_dir(&self.root).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(rest) = name.strip_prefix(TMP_PREFIX) else {
                continue;
            };
            let pid = rest.split('-').next().and_then(|p| p.parse::<i32>().ok());
            if pid.is_some_and(|p| p != std::process::id() as i32 && alive(p)) {
                continue; // being written by a concurrent run of the same stage
            }
            let _ = fs::remove_dir_all(e.path());
        }
    }

    /// Removes every checkpoint of the stage (after its result is committed, or after a
    /// failure that a resume would only repeat).
    pub fn remove_all(&self) -> io::Result<()> {
        match fs::remove_dir_all(&self.root) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}

fn alive(pid: i32) -> bool {
    // Signal 0 checks for existence only; EPERM means it exists under another user.
    // SAFETY: kill(2) with signal 0 sends nothing and touches no memory.
    let r = unsafe { libc::kill(pid, 0) };
    r == 0 || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// A directory under construction, removed on drop unless kept.
struct TmpDir(PathBuf, bool);

impl TmpDir {
    fn create(root: &Path) -> io::Result<Self> {
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let p = root.join(format!(
            "{TMP_PREFIX}{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        fs::create_dir(&p)?;
        Ok(Self(p, false))
    }

    fn keep(mut self) {
        self.1 = true;
    }
}

impl Drop for TmpDir {
    fn drop(&mut self) {
        if !self.1 {
            let _ = fs::remove_dir_all(&self.0);
        }
    }
}

fn write_synced(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut f = fs::File::create(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

/// Makes a directory's entries (a created file, a rename) durable.
fn sync_dir(dir: &Path) -> io::Result<()> {
    fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ml::model::{InputShape, ModelSpec};
    use crate::ml::optim::{AdamW, AdamWParams};
    use crate::ml::sampler::{BatchSampler, SamplerSpec};

    fn model(seed: u64) -> Model {
        let spec = ModelSpec::Mlp {
            hidden: vec![6],
            embedding: 3,
            l2norm: false,
            classes: None,
        };
        Model::new(&spec, InputShape::flat(4), &mut Rng::new(seed)).unwrap()
    }

    fn adam(m: &Model) -> Optim {
        Optim::AdamW(AdamW::new(m.named_vars(), AdamWParams::default()).unwrap())
    }

    fn state(epoch: usize) -> TrainState {
        let mut sampler = BatchSampler::new(&SamplerSpec::Random, 2, &[0, 1, 0, 1], 9).unwrap();
        for _ in 0..epoch {
            sampler.epoch();
        }
        let mut r = Rng::new(4);
        r.next_u64();
        TrainState {
            epoch,
            rngs: [("mining".to_string(), r.state())].into(),
            sampler: sampler.state(),
            epochs: (1..=epoch)
                .map(|e| {
                    SavedEpoch::from_record(&EpochRecord {
                        epoch: e,
                        // Values whose shortest decimal form is long: bits must survive.
                        losses: [("total".to_string(), 0.1 + 0.2 / e as f64)].into(),
                        wall_s: e as f64,
                    })
                })
                .collect(),
        }
    }

    fn bits(m: &Model) -> Vec<(String, Vec<u32>)> {
        m.named_tensors()
            .unwrap()
            .into_iter()
            .map(|(n, t)| {
                let v = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                (n, v.into_iter().map(f32::to_bits).collect())
            })
            .collect()
    }

    #[test]
    fn a_written_checkpoint_reads_back_exactly_and_replaces_the_previous_one() {
        let root = tempfile::tempdir().unwrap();
        let ck = Checkpoints::new(root.path(), "k1");
        assert!(ck.epochs().is_empty());
        let m = model(1);
        let o = adam(&m);
        ck.write(&m, &o, &state(1)).unwrap();
        ck.write(&m, &o, &state(2)).unwrap();
        // Only the latest is kept, and nothing temporary is left.
        assert_eq!(ck.epochs(), vec![2]);
        let names: Vec<String> = fs::read_dir(ck.root())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["epoch-2"]);

        let v = ck.open(2).unwrap();
        assert_eq!(v.state, state(2));
        let rec = v.state.epochs[1].to_record().unwrap();
        assert_eq!(
            rec.losses["total"].to_bits(),
            (0.1 + 0.2 / 2.0f64).to_bits()
        );
        let mut r = Rng::new(4);
        r.next_u64();
        assert_eq!(v.state.rng("mining").unwrap(), r);
        assert!(v.state.rng("mask").is_err());

        let mut other = model(2);
        let mut o2 = adam(&other);
        assert_ne!(bits(&other), bits(&m));
        v.load_into(&mut other, &mut o2).unwrap();
        assert_eq!(bits(&other), bits(&m));

        // Another stage's key does not open it.
        let foreign = Checkpoints::new(root.path(), "k2");
        fs::rename(ck.root(), foreign.root()).unwrap();
        let err = foreign.open(2).unwrap_err();
        assert!(matches!(err, CheckpointError::OtherStage { .. }), "{err}");

        foreign.remove_all().unwrap();
        assert!(!foreign.root().exists());
        foreign.remove_all().unwrap(); // already gone: fine
    }

    #[test]
    fn any_flipped_byte_is_detected() {
        let root = tempfile::tempdir().unwrap();
        let ck = Checkpoints::new(root.path(), "k");
        let m = model(1);
        ck.write(&m, &adam(&m), &state(3)).unwrap();
        let dir = ck.root().join("epoch-3");
        for file in [MODEL_FILE, OPTIMIZER_FILE, STATE_FILE, MANIFEST_FILE] {
            let p = dir.join(file);
            let good = fs::read(&p).unwrap();
            // Every byte of the small files, a spread of the tensor files' bytes.
            let step = if good.len() > 2000 { 37 } else { 1 };
            for i in (0..good.len()).step_by(step) {
                let mut bad = good.clone();
                bad[i] ^= 0x04;
                fs::write(&p, &bad).unwrap();
                let err = ck
                    .open(3)
                    .expect_err(&format!("{file} byte {i} flipped went unnoticed"));
                if file != MANIFEST_FILE {
                    assert_eq!(
                        err.to_string(),
                        format!(
                            "checkpoint epoch-3 is corrupt ({file} does not match its checksum)"
                        )
                    );
                }
            }
            fs::write(&p, &good).unwrap();
            ck.open(3).unwrap();
        }
        // A missing file too.
        fs::remove_file(dir.join(OPTIMIZER_FILE)).unwrap();
        let err = ck.open(3).unwrap_err().to_string();
        assert!(err.contains("optimizer.safetensors unreadable"), "{err}");
    }

    #[test]
    fn a_killed_write_leaves_only_a_tmp_dir_which_is_ignored_and_cleaned() {
        let root = tempfile::tempdir().unwrap();
        let ck = Checkpoints::new(root.path(), "k");
        let m = model(1);
        ck.write(&m, &adam(&m), &state(1)).unwrap();
        // As if killed half-way through writing epoch 2: a partial tmp dir of a process
        // that cannot exist (Linux pids stop at 2^22), and one of ours from an earlier
        // attempt in this process.
        let dead = ck.root().join(format!("{TMP_PREFIX}4194305-0"));
        fs::create_dir(&dead).unwrap();
        fs::write(dead.join(MODEL_FILE), b"partial").unwrap();
        let ours = ck
            .root()
            .join(format!("{TMP_PREFIX}{}-99", std::process::id()));
        fs::create_dir(&ours).unwrap();
        assert!(!alive(4_194_305));
        assert_eq!(ck.epochs(), vec![1]);
        ck.open(1).unwrap();
        ck.remove_stale_tmp();
        assert!(!dead.exists() && !ours.exists());
        assert!(ck.root().join("epoch-1").exists());
        // A tmp dir of a live process (a concurrent run of the same stage) is left alone.
        let live = ck.root().join(format!("{TMP_PREFIX}1-0"));
        fs::create_dir(&live).unwrap();
        ck.remove_stale_tmp();
        assert!(live.exists());
    }

    #[test]
    fn a_refused_checkpoint_in_the_way_is_replaced() {
        let root = tempfile::tempdir().unwrap();
        let ck = Checkpoints::new(root.path(), "k");
        let m = model(1);
        let o = adam(&m);
        ck.write(&m, &o, &state(2)).unwrap();
        fs::write(ck.root().join("epoch-2").join(STATE_FILE), b"{}").unwrap();
        assert!(ck.open(2).is_err());
        ck.write(&m, &o, &state(2)).unwrap();
        assert_eq!(ck.open(2).unwrap().state, state(2));
    }

    /// `cargo test --release --lib checkpoint_write_time -- --ignored --nocapture`: the cost
    /// of one checkpoint of the quickstart teacher (784-512-256-128 MLP with AdamW: 2.3 MB
    /// of weights, 4.6 MB of moments), as written after an epoch.
    #[test]
    #[ignore = "a measurement, not a check"]
    fn checkpoint_write_time_of_the_quickstart_teacher() {
        let spec = ModelSpec::Mlp {
            hidden: vec![512, 256],
            embedding: 128,
            l2norm: true,
            classes: None,
        };
        let m = Model::new(&spec, InputShape::flat(784), &mut Rng::new(1)).unwrap();
        let o = adam(&m);
        let root = tempfile::tempdir_in(std::env::current_dir().unwrap()).unwrap();
        let ck = Checkpoints::new(root.path(), "k");
        let mut times: Vec<f64> = (1..=20)
            .map(|e| {
                let mut st = state(0);
                st.epoch = e;
                st.epochs = (1..=e).map(|_| state(1).epochs[0].clone()).collect();
                ck.write(&m, &o, &st).unwrap().as_secs_f64() * 1e3
            })
            .collect();
        let open = Instant::now();
        ck.open(20).unwrap();
        let open_ms = open.elapsed().as_secs_f64() * 1e3;
        times.sort_by(f64::total_cmp);
        eprintln!(
            "checkpoint write: min {:.1} ms, median {:.1} ms, max {:.1} ms; verify {open_ms:.1} ms",
            times[0], times[10], times[19]
        );
    }

    #[test]
    fn due_after_the_interval_but_never_after_the_last_epoch() {
        let c = Checkpoints::new(Path::new("/nonexistent"), "k");
        let sec = Duration::from_secs(1);
        assert!(c.due(1, 6, Duration::ZERO) && c.due(5, 6, Duration::ZERO));
        assert!(!c.due(6, 6, sec));
        let c = c.with_interval(Some(sec));
        assert!(!c.due(1, 6, sec / 2) && c.due(1, 6, sec));
        let off = c.with_interval(None);
        assert!(!off.due(1, 6, sec * 100));
    }
}
