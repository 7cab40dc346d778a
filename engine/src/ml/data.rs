//! Data sets: IDX files (Fashion-MNIST and any other IDX pair, gzip or not) and a synthetic
//! set generated in code, split for the metric-learning protocol (train on some classes,
//! evaluate retrieval on the unseen ones).

use std::io::Read;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::rng::Rng;

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
}

impl DataSource {
    /// The files this source reads (empty for generated data), in a fixed order.
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
                h.update(b"idx-files-v1\0");
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

const FM_FILES: [&str; 4] = [
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
];

/// `dir/name.gz` if it exists, else `dir/name` (the error, if any, then names the plain file).
fn resolve_gz(dir: &Path, name: &str) -> PathBuf {
    let gz = dir.join(format!("{name}.gz"));
    if gz.exists() {
        gz
    } else {
        dir.join(name)
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
}

/// Samples as rows of `dim` f32 features, with their labels.
#[derive(Clone, Debug)]
pub struct Split {
    pub x: Vec<f32>,
    pub y: Vec<u32>,
    pub dim: usize,
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

    fn filter(self, classes: &[u32], limit: Option<usize>) -> Split {
        let mut x = Vec::new();
        let mut y = Vec::new();
        for i in 0..self.len() {
            if limit.is_some_and(|l| y.len() >= l) {
                break;
            }
            if classes.contains(&self.y[i]) {
                x.extend_from_slice(self.row(i));
                y.push(self.y[i]);
            }
        }
        Split {
            x,
            y,
            dim: self.dim,
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

pub fn load(spec: &DataSpec) -> Result<Loaded, DataError> {
    let (train, test) = match &spec.source {
        DataSource::Synthetic {
            classes,
            dim,
            train_per_class,
            test_per_class,
            seed,
        } => synthetic(*classes, *dim, *train_per_class, *test_per_class, *seed),
        src => {
            let f = src.files();
            (read_idx_pair(&f[0], &f[1])?, read_idx_pair(&f[2], &f[3])?)
        }
    };
    let train = train.filter(&spec.train_classes, spec.train_limit);
    let eval = test.filter(&spec.eval_classes, spec.eval_limit);
    if train.is_empty() {
        return Err(DataError::Empty {
            split: "training",
            classes: spec.train_classes.clone(),
        });
    }
    if eval.is_empty() {
        return Err(DataError::Empty {
            split: "test",
            classes: spec.eval_classes.clone(),
        });
    }
    Ok(Loaded { train, eval })
}

fn read_maybe_gz(path: &Path) -> Result<Vec<u8>, DataError> {
    let io = |source| DataError::Io {
        path: path.to_path_buf(),
        source,
    };
    let raw = std::fs::read(path).map_err(io)?;
    if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::MultiGzDecoder::new(&raw[..])
            .read_to_end(&mut out)
            .map_err(io)?;
        Ok(out)
    } else {
        Ok(raw)
    }
}

/// Parses an IDX file of unsigned bytes; returns its dimensions and data.
pub fn parse_idx(path: &Path, bytes: &[u8]) -> Result<(Vec<usize>, Vec<u8>), DataError> {
    let bad = |reason: String| DataError::Format {
        path: path.to_path_buf(),
        reason,
    };
    if bytes.len() < 4 || bytes[0] != 0 || bytes[1] != 0 {
        return Err(bad("missing the IDX magic number (00 00 type ndims)".into()));
    }
    if bytes[2] != 0x08 {
        return Err(bad(format!(
            "element type 0x{:02x} is not supported (only unsigned bytes, 0x08)",
            bytes[2]
        )));
    }
    let ndims = bytes[3] as usize;
    let header = 4 + 4 * ndims;
    if bytes.len() < header {
        return Err(bad("truncated header".into()));
    }
    let dims: Vec<usize> = (0..ndims)
        .map(|d| u32::from_be_bytes(bytes[4 + 4 * d..8 + 4 * d].try_into().unwrap()) as usize)
        .collect();
    let n: usize = dims.iter().product();
    if bytes.len() - header != n {
        return Err(bad(format!(
            "dimensions {dims:?} need {n} data bytes, the file has {}",
            bytes.len() - header
        )));
    }
    Ok((dims, bytes[header..].to_vec()))
}

/// Reads an images/labels IDX pair; pixels are scaled to [0, 1].
pub fn read_idx_pair(images: &Path, labels: &Path) -> Result<Split, DataError> {
    let (idims, pixels) = parse_idx(images, &read_maybe_gz(images)?)?;
    let (ldims, labs) = parse_idx(labels, &read_maybe_gz(labels)?)?;
    if idims.len() < 2 {
        return Err(DataError::Format {
            path: images.to_path_buf(),
            reason: format!("an image file needs at least 2 dimensions, found {idims:?}"),
        });
    }
    if ldims.len() != 1 {
        return Err(DataError::Format {
            path: labels.to_path_buf(),
            reason: format!("a label file has 1 dimension, found {ldims:?}"),
        });
    }
    if idims[0] != ldims[0] {
        return Err(DataError::CountMismatch {
            images: images.to_path_buf(),
            labels: labels.to_path_buf(),
            n_images: idims[0],
            n_labels: ldims[0],
        });
    }
    let dim = idims[1..].iter().product();
    Ok(Split {
        x: pixels.iter().map(|&p| f32::from(p) / 255.0).collect(),
        y: labs.iter().map(|&l| u32::from(l)).collect(),
        dim,
    })
}

/// Writes an IDX file of unsigned bytes (gzip-compressed if `path` ends in `.gz`).
/// Used by tests and by anyone who wants to export a data set in the same format.
pub fn write_idx(path: &Path, dims: &[usize], data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut bytes = vec![0u8, 0, 0x08, dims.len() as u8];
    for &d in dims {
        bytes.extend_from_slice(&(d as u32).to_be_bytes());
    }
    bytes.extend_from_slice(data);
    if path.extension().is_some_and(|e| e == "gz") {
        let f = std::fs::File::create(path)?;
        let mut enc = flate2::write::GzEncoder::new(f, flate2::Compression::fast());
        enc.write_all(&bytes)?;
        enc.finish()?;
        Ok(())
    } else {
        std::fs::write(path, bytes)
    }
}

/// Number of leading dimensions that carry the class signal in the synthetic set.
const SIGNAL_DIMS: usize = 8;

fn synthetic(
    classes: u32,
    dim: usize,
    train_per_class: usize,
    test_per_class: usize,
    seed: u64,
) -> (Split, Split) {
    let signal = SIGNAL_DIMS.min(dim);
    let mut proto_rng = Rng::fork(seed, "synthetic-prototypes");
    let protos: Vec<Vec<f32>> = (0..classes)
        .map(|_| {
            (0..dim)
                .map(|d| {
                    if d < signal {
                        (proto_rng.normal() * 1.0) as f32
                    } else {
                        0.0
                    }
                })
                .collect()
        })
        .collect();
    let make = |per_class: usize, stream: &str| {
        let mut rng = Rng::fork(seed, stream);
        let mut x = Vec::with_capacity(classes as usize * per_class * dim);
        let mut y = Vec::with_capacity(classes as usize * per_class);
        // Interleave classes so that any prefix (train_limit) keeps every class.
        for _ in 0..per_class {
            for (c, p) in protos.iter().enumerate() {
                for (d, &pd) in p.iter().enumerate() {
                    let sd = if d < signal { 0.35 } else { 1.5 };
                    x.push(pd + (rng.normal() * sd) as f32);
                }
                y.push(c as u32);
            }
        }
        Split { x, y, dim }
    };
    (
        make(train_per_class, "synthetic-train"),
        make(test_per_class, "synthetic-test"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idx_roundtrip_gz_and_plain_and_class_filter() {
        let dir = tempfile::tempdir().unwrap();
        let imgs: Vec<u8> = (0..6 * 4).map(|v| v as u8 * 10).collect();
        let labs = vec![0u8, 1, 2, 0, 1, 2];
        for ext in ["", ".gz"] {
            let ip = dir.path().join(format!("i{ext}"));
            let lp = dir.path().join(format!("l{ext}"));
            write_idx(&ip, &[6, 2, 2], &imgs).unwrap();
            write_idx(&lp, &[6], &labs).unwrap();
            let s = read_idx_pair(&ip, &lp).unwrap();
            assert_eq!(s.dim, 4);
            assert_eq!(s.len(), 6);
            assert_eq!(s.row(1)[0], 40.0 / 255.0);
            let f = s.clone().filter(&[2], None);
            assert_eq!(f.y, vec![2, 2]);
            assert_eq!(f.row(1), s.row(5));
        }
    }

    #[test]
    fn idx_errors_name_the_problem() {
        let p = Path::new("x.idx");
        let e = parse_idx(p, &[1, 2, 3]).unwrap_err().to_string();
        assert!(e.contains("magic"), "{e}");
        let e = parse_idx(p, &[0, 0, 8, 1, 0, 0, 0, 5, 1, 2])
            .unwrap_err()
            .to_string();
        assert!(e.contains("need 5 data bytes"), "{e}");
        let e = parse_idx(p, &[0, 0, 0x0d, 1, 0, 0, 0, 0])
            .unwrap_err()
            .to_string();
        assert!(e.contains("0x0d"), "{e}");
    }

    #[test]
    fn synthetic_is_deterministic_and_balanced() {
        let src = DataSource::Synthetic {
            classes: 4,
            dim: 12,
            train_per_class: 10,
            test_per_class: 5,
            seed: 3,
        };
        let spec = DataSpec {
            source: src.clone(),
            train_classes: vec![0, 1],
            eval_classes: vec![2, 3],
            train_limit: None,
            eval_limit: Some(6),
        };
        let a = load(&spec).unwrap();
        let b = load(&spec).unwrap();
        assert_eq!(a.train.x, b.train.x);
        assert_eq!(a.train.len(), 20);
        assert_eq!(a.eval.y, vec![2, 3, 2, 3, 2, 3]);
        assert_eq!(src.fingerprint().unwrap(), src.fingerprint().unwrap());
        let other = DataSource::Synthetic {
            classes: 4,
            dim: 12,
            train_per_class: 10,
            test_per_class: 5,
            seed: 4,
        };
        assert_ne!(src.fingerprint().unwrap(), other.fingerprint().unwrap());
    }

    #[test]
    fn empty_class_filter_is_an_error() {
        let spec = DataSpec {
            source: DataSource::Synthetic {
                classes: 2,
                dim: 4,
                train_per_class: 2,
                test_per_class: 2,
                seed: 0,
            },
            train_classes: vec![0],
            eval_classes: vec![7],
            train_limit: None,
            eval_limit: None,
        };
        let e = load(&spec).unwrap_err().to_string();
        assert!(e.contains("[7]"), "{e}");
    }
}
