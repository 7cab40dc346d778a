//! Data sets: IDX files (Fashion-MNIST and any other IDX pair, gzip or not), the binary
//! versions of CIFAR-10 and CIFAR-100, and a synthetic set generated in code, split for the
//! metric-learning protocol (train on some classes, evaluate retrieval on the unseen ones),
//! optionally passed through domain-shift transforms.
//!
//! Every sample is a row of `c·h·w` features in channel-major (C, H, W) order; [`Split::shape`]
//! says how to view a row as an image. Pixels of image data are scaled to [0, 1].

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::rng::Rng;

mod cifar;
mod idx;
mod synthetic;
#[cfg(test)]
mod tests;
mod transform;

pub use idx::{parse_idx, read_idx_pair, write_idx};
pub use transform::Transform;

use cifar::*;
use idx::*;
use synthetic::*;
use transform::*;

/// Where Debian's `dataset-fashion-mnist` package installs the IDX files.
pub const DEBIAN_FASHION_MNIST: &str = "/usr/share/datasets/fashion-mnist";

#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a valid IDX file: {reason}")]
    Format { path: PathBuf, reason: String },
    #[error("{path} is not a valid {format} binary file: {reason}")]
    Cifar {
        path: PathBuf,
        format: &'static str,
        reason: String,
    },
    #[error("{path} not found: {hint}")]
    Missing { path: PathBuf, hint: String },
    #[error("{images} holds {n_images} images but {labels} holds {n_labels} labels")]
    CountMismatch {
        images: PathBuf,
        labels: PathBuf,
        n_images: usize,
        n_labels: usize,
    },
    #[error("the {split} split has no samples of classes {classes:?}")]
    Empty {
        split: &'static str,
        classes: Vec<u32>,
    },
    #[error("data transform {index} (`{kind}`): {reason}")]
    Transform {
        /// Position in `transforms`, from 1 as a user counts.
        index: usize,
        kind: &'static str,
        reason: String,
    },
}

/// Which of CIFAR-100's two labels a sample carries.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum CifarLabels {
    /// The 100 classes.
    Fine,
    /// The 20 superclasses.
    Coarse,
}

/// The files or generator a data set comes from.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum DataSource {
    /// A directory with the four standard Fashion-MNIST (or MNIST) IDX files, `.gz` or not.
    FashionMnist { path: PathBuf },
    /// Any IDX pair for training and one for testing.
    Idx {
        train_images: PathBuf,
        train_labels: PathBuf,
        test_images: PathBuf,
        test_labels: PathBuf,
    },
    /// Gaussian clusters in `dim` dimensions: the class signal lives in a subspace and every
    /// class shares a strong nuisance variation elsewhere, so an embedding that learns to
    /// ignore the nuisance on the training classes also does better on unseen ones.
    Synthetic {
        classes: u32,
        dim: usize,
        train_per_class: usize,
        test_per_class: usize,
        seed: u64,
    },
    /// The binary version of CIFAR-10: a directory with `data_batch_1.bin` …
    /// `data_batch_5.bin` and `test_batch.bin`, or one that holds `cifar-10-batches-bin/`.
    Cifar10 { path: PathBuf },
    /// The binary version of CIFAR-100: a directory with `train.bin` and `test.bin`, or one
    /// that holds `cifar-100-binary/`.
    Cifar100 { path: PathBuf, labels: CifarLabels },
}

const FM_FILES: [&str; 4] = [
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
];

const CIFAR10_FILES: [&str; 6] = [
    "data_batch_1.bin",
    "data_batch_2.bin",
    "data_batch_3.bin",
    "data_batch_4.bin",
    "data_batch_5.bin",
    "test_batch.bin",
];
const CIFAR10_SUBDIR: &str = "cifar-10-batches-bin";
const CIFAR100_FILES: [&str; 2] = ["train.bin", "test.bin"];
const CIFAR100_SUBDIR: &str = "cifar-100-binary";
/// Shape of a CIFAR image: 3 colour planes (R, G, B) of 32×32, stored plane by plane.
const CIFAR_SHAPE: (usize, usize, usize) = (3, 32, 32);
const CIFAR_PIXELS: usize = CIFAR_SHAPE.0 * CIFAR_SHAPE.1 * CIFAR_SHAPE.2;

impl DataSource {
    /// The files this source reads (empty for generated data), in a fixed order: for
    /// sources with a train and a test part, the training files first.
    pub fn files(&self) -> Vec<PathBuf> {
        match self {
            DataSource::FashionMnist { path } => {
                FM_FILES.iter().map(|f| resolve_gz(path, f)).collect()
            }
            DataSource::Idx {
                train_images,
                train_labels,
                test_images,
                test_labels,
            } => vec![
                train_images.clone(),
                train_labels.clone(),
                test_images.clone(),
                test_labels.clone(),
            ],
            DataSource::Synthetic { .. } => Vec::new(),
            DataSource::Cifar10 { path } => {
                let dir = resolve_subdir(path, CIFAR10_SUBDIR, CIFAR10_FILES[0]);
                CIFAR10_FILES.iter().map(|f| dir.join(f)).collect()
            }
            DataSource::Cifar100 { path, .. } => {
                let dir = resolve_subdir(path, CIFAR100_SUBDIR, CIFAR100_FILES[0]);
                CIFAR100_FILES.iter().map(|f| dir.join(f)).collect()
            }
        }
    }

    /// How many classes the labels can take, where that is known without reading files
    /// (an IDX pair can hold anything).
    pub fn n_classes(&self) -> Option<u32> {
        match self {
            DataSource::FashionMnist { .. } | DataSource::Cifar10 { .. } => Some(10),
            DataSource::Cifar100 {
                labels: CifarLabels::Fine,
                ..
            } => Some(100),
            DataSource::Cifar100 {
                labels: CifarLabels::Coarse,
                ..
            } => Some(20),
            DataSource::Synthetic { classes, .. } => Some(*classes),
            DataSource::Idx { .. } => None,
        }
    }

    /// The (channels, height, width) of a sample, where that is known without reading
    /// files. Synthetic features are a 1×1×dim "image" with no spatial structure.
    pub fn shape(&self) -> Option<(usize, usize, usize)> {
        match self {
            DataSource::FashionMnist { .. } => Some((1, 28, 28)),
            DataSource::Cifar10 { .. } | DataSource::Cifar100 { .. } => Some(CIFAR_SHAPE),
            DataSource::Synthetic { dim, .. } => Some((1, 1, *dim)),
            DataSource::Idx { .. } => None,
        }
    }

    /// A content fingerprint: SHA-256 over the bytes of every file (not their paths, so a
    /// copy of the same data elsewhere keeps every cache key), or over the generator's
    /// parameters for synthetic data.
    pub fn fingerprint(&self) -> Result<String, DataError> {
        let mut h = Sha256::new();
        match self {
            DataSource::Synthetic { .. } => {
                h.update(b"synthetic-v1\0");
                h.update(serde_json::to_vec(self).expect("serialisable"));
            }
            _ => {
                match self {
                    // The same files read the same way as before CIFAR existed: the tag must
                    // not change, or every cached Fashion-MNIST result would be orphaned.
                    DataSource::FashionMnist { .. } | DataSource::Idx { .. } => {
                        h.update(b"idx-files-v1\0");
                    }
                    DataSource::Cifar10 { .. } => h.update(b"cifar10-bin-v1\0"),
                    // The stage manifest keeps only the kind and this fingerprint of the
                    // source, so the label choice must be hashed here: fine and coarse
                    // labels read the same files but are different data sets.
                    DataSource::Cifar100 { labels, .. } => {
                        h.update(b"cifar100-bin-v1\0");
                        h.update(match labels {
                            CifarLabels::Fine => b"fine\0".as_slice(),
                            CifarLabels::Coarse => b"coarse\0".as_slice(),
                        });
                    }
                    DataSource::Synthetic { .. } => unreachable!("handled above"),
                }
                for path in self.files() {
                    let bytes = std::fs::read(&path).map_err(|source| DataError::Io {
                        path: path.clone(),
                        source,
                    })?;
                    h.update((bytes.len() as u64).to_le_bytes());
                    h.update(&bytes);
                }
            }
        }
        Ok(format!("sha256:{}", hex(&h.finalize())))
    }
}

/// `dir/name.gz` if it exists, else `dir/name` (the error, if any, then names the plain file).
fn resolve_gz(dir: &Path, name: &str) -> PathBuf {
    let gz = dir.join(format!("{name}.gz"));
    if gz.exists() {
        gz
    } else {
        dir.join(name)
    }
}

/// `dir` if it holds `probe`, else `dir/sub` if that does (the directory the official archive
/// extracts to), else `dir` (errors then name the files where the user pointed).
fn resolve_subdir(dir: &Path, sub: &str, probe: &str) -> PathBuf {
    if !dir.join(probe).exists() && dir.join(sub).join(probe).exists() {
        dir.join(sub)
    } else {
        dir.to_path_buf()
    }
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A data set and the class split of the metric-learning protocol.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DataSpec {
    pub source: DataSource,
    /// Classes whose training images train the model.
    pub train_classes: Vec<u32>,
    /// Unseen classes whose test images are used for retrieval evaluation.
    pub eval_classes: Vec<u32>,
    /// Keep only the first N training samples (after the class filter).
    pub train_limit: Option<usize>,
    /// Keep only the first N evaluation samples (after the class filter).
    pub eval_limit: Option<usize>,
    /// Domain-shift transforms, applied in order to both splits after the class filter and
    /// the limits. Last and omitted when empty, so that the serialisation (and with it every
    /// cache key) of a spec without transforms is what it was before transforms existed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub transforms: Vec<Transform>,
}

/// Samples as rows of `dim` f32 features, with their labels.
#[derive(Clone, Debug)]
pub struct Split {
    pub x: Vec<f32>,
    pub y: Vec<u32>,
    /// Features per row; always `shape.0 * shape.1 * shape.2`.
    pub dim: usize,
    /// (channels, height, width) of a row, laid out channel-major: a batch of rows reshapes
    /// to (B, C, H, W).
    pub shape: (usize, usize, usize),
}

impl Split {
    pub fn len(&self) -> usize {
        self.y.len()
    }

    pub fn is_empty(&self) -> bool {
        self.y.is_empty()
    }

    pub fn row(&self, i: usize) -> &[f32] {
        &self.x[i * self.dim..(i + 1) * self.dim]
    }

    /// The rows `idx`, gathered contiguously (a mini-batch).
    pub fn gather(&self, idx: &[usize]) -> Vec<f32> {
        let mut out = Vec::with_capacity(idx.len() * self.dim);
        for &i in idx {
            out.extend_from_slice(self.row(i));
        }
        out
    }

    fn select(&self, idx: &[usize]) -> Split {
        Split {
            x: self.gather(idx),
            y: idx.iter().map(|&i| self.y[i]).collect(),
            dim: self.dim,
            shape: self.shape,
        }
    }
}

/// Indices of the first `limit` samples whose label is in `classes`.
fn filter_indices(labels: &[u32], classes: &[u32], limit: Option<usize>) -> Vec<usize> {
    let mut idx = Vec::new();
    for (i, l) in labels.iter().enumerate() {
        if limit.is_some_and(|l| idx.len() >= l) {
            break;
        }
        if classes.contains(l) {
            idx.push(i);
        }
    }
    idx
}

/// Image data as read from disk, still one byte per pixel: filtering before widening to f32
/// keeps peak memory at a quarter (CIFAR-10's training set is 150 MB as bytes, 600 MB as f32).
struct RawSplit {
    pixels: Vec<u8>,
    labels: Vec<u32>,
    shape: (usize, usize, usize),
}

impl RawSplit {
    fn dim(&self) -> usize {
        self.shape.0 * self.shape.1 * self.shape.2
    }

    /// The rows `idx`, pixels scaled to [0, 1].
    fn select(&self, idx: &[usize]) -> Split {
        let dim = self.dim();
        let mut x = Vec::with_capacity(idx.len() * dim);
        for &i in idx {
            x.extend(
                self.pixels[i * dim..(i + 1) * dim]
                    .iter()
                    .map(|&p| f32::from(p) / 255.0),
            );
        }
        Split {
            x,
            y: idx.iter().map(|&i| self.labels[i]).collect(),
            dim,
            shape: self.shape,
        }
    }
}

/// A whole source split, before the class filter.
enum Full {
    Raw(RawSplit),
    Float(Split),
}

impl Full {
    fn labels(&self) -> &[u32] {
        match self {
            Full::Raw(r) => &r.labels,
            Full::Float(s) => &s.y,
        }
    }

    fn select(&self, idx: &[usize]) -> Split {
        match self {
            Full::Raw(r) => r.select(idx),
            Full::Float(s) => s.select(idx),
        }
    }
}

/// The two sides of the protocol.
#[derive(Clone, Debug)]
pub struct Loaded {
    /// Training split, training classes only.
    pub train: Split,
    /// Test split, unseen classes only.
    pub eval: Split,
}

/// Loads the source, keeps the protocol's classes and limits, then applies the transforms in
/// order to each split. Transforms come after the filter and limits so that they only touch
/// the samples that are used (rotating all of CIFAR to use two classes would be waste);
/// randomised transforms key their draws on a sample's index in the source split, so which
/// samples are kept or how they are perturbed does not depend on the other samples.
pub fn load(spec: &DataSpec) -> Result<Loaded, DataError> {
    for (i, t) in spec.transforms.iter().enumerate() {
        t.check(&spec.source)
            .map_err(|reason| transform_error(i, t, reason))?;
    }
    let (train, test) = match &spec.source {
        DataSource::Synthetic {
            classes,
            dim,
            train_per_class,
            test_per_class,
            seed,
        } => {
            let (a, b) = synthetic(*classes, *dim, *train_per_class, *test_per_class, *seed);
            (Full::Float(a), Full::Float(b))
        }
        DataSource::FashionMnist { .. } | DataSource::Idx { .. } => {
            let f = spec.source.files();
            (
                Full::Raw(read_idx_raw(&f[0], &f[1])?),
                Full::Raw(read_idx_raw(&f[2], &f[3])?),
            )
        }
        DataSource::Cifar10 { path } => {
            let f = spec.source.files();
            let (train, test) = f.split_at(5);
            (
                Full::Raw(read_cifar(train, &CIFAR10, path)?),
                Full::Raw(read_cifar(test, &CIFAR10, path)?),
            )
        }
        DataSource::Cifar100 { path, labels } => {
            let f = spec.source.files();
            let fmt = match labels {
                CifarLabels::Fine => &CIFAR100_FINE,
                CifarLabels::Coarse => &CIFAR100_COARSE,
            };
            (
                Full::Raw(read_cifar(&f[..1], fmt, path)?),
                Full::Raw(read_cifar(&f[1..], fmt, path)?),
            )
        }
    };
    let train_idx = filter_indices(train.labels(), &spec.train_classes, spec.train_limit);
    let eval_idx = filter_indices(test.labels(), &spec.eval_classes, spec.eval_limit);
    let mut train_split = train.select(&train_idx);
    drop(train);
    let mut eval_split = test.select(&eval_idx);
    drop(test);
    if train_split.is_empty() {
        return Err(DataError::Empty {
            split: "training",
            classes: spec.train_classes.clone(),
        });
    }
    // No eval classes at all declares a data set for the classification protocol only.
    if eval_split.is_empty() && !spec.eval_classes.is_empty() {
        return Err(DataError::Empty {
            split: "test",
            classes: spec.eval_classes.clone(),
        });
    }
    apply_transforms(&spec.transforms, &mut train_split, train_idx, "train")?;
    apply_transforms(&spec.transforms, &mut eval_split, eval_idx, "test")?;
    Ok(Loaded {
        train: train_split,
        eval: eval_split,
    })
}
