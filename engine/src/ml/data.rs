//! Data sets: IDX files (Fashion-MNIST and any other IDX pair, gzip or not), the binary
//! versions of CIFAR-10 and CIFAR-100, and a synthetic set generated in code, split for the
//! metric-learning protocol (train on some classes, evaluate retrieval on the unseen ones),
//! optionally passed through domain-shift transforms.
//!
//! Every sample is a row of `c·h·w` features in channel-major (C, H, W) order; [`Split::shape`]
//! says how to view a row as an image. Pixels of image data are scaled to [0, 1].

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

/// A domain-shift transform, applied to both splits after loading (see [`load`]).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(
    tag = "kind",
    rename_all = "snake_case",
    deny_unknown_fields,
    from = "TransformRepr"
)]
pub enum Transform {
    /// Pixel v becomes 1 − v (dark on light becomes light on dark).
    Invert,
    /// Rotates each image about its centre, counter-clockwise as displayed (rows downward)
    /// for positive angles, with bilinear interpolation; pixels from outside the image are 0.
    Rotate { degrees: f64 },
    /// Adds N(0, std²) to every pixel, then clamps to [0, 1]. The noise of a sample depends
    /// only on (seed, split, its index in the source split), not on which other samples
    /// were kept.
    Noise { std: f64, seed: u64 },
    /// Keeps each sample with probability `fraction`, decided by (seed, split, its index in
    /// the source split); a class that had samples keeps at least one.
    Subsample { fraction: f64, seed: u64 },
}

/// What [`Transform`] deserialises through. serde ignores unknown fields next to the tag of
/// an internally tagged *unit* variant even with `deny_unknown_fields`, so
/// `{kind: invert, degrees: 90}` would be accepted and the angle silently dropped; an empty
/// struct variant rejects it. Same JSON shape, so serialisation stays derived on `Transform`.
#[derive(Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
enum TransformRepr {
    Invert {},
    Rotate { degrees: f64 },
    Noise { std: f64, seed: u64 },
    Subsample { fraction: f64, seed: u64 },
}

impl From<TransformRepr> for Transform {
    fn from(r: TransformRepr) -> Self {
        match r {
            TransformRepr::Invert {} => Transform::Invert,
            TransformRepr::Rotate { degrees } => Transform::Rotate { degrees },
            TransformRepr::Noise { std, seed } => Transform::Noise { std, seed },
            TransformRepr::Subsample { fraction, seed } => Transform::Subsample { fraction, seed },
        }
    }
}

impl Transform {
    /// The `kind:` tag, as written in recipes.
    pub fn kind(&self) -> &'static str {
        match self {
            Transform::Invert => "invert",
            Transform::Rotate { .. } => "rotate",
            Transform::Noise { .. } => "noise",
            Transform::Subsample { .. } => "subsample",
        }
    }

    /// Checks the parameters, and that the source is data the transform makes sense on
    /// where that is known without reading files. Returns the reason if not.
    pub fn check(&self, source: &DataSource) -> Result<(), String> {
        let synthetic = matches!(source, DataSource::Synthetic { .. });
        match *self {
            Transform::Invert => Ok(()),
            Transform::Rotate { degrees } => {
                if !degrees.is_finite() {
                    return Err(format!("`degrees` must be a finite angle, got {degrees}"));
                }
                match source.shape() {
                    Some(shape) if !is_2d(shape) => Err(not_2d(shape)),
                    _ => Ok(()),
                }
            }
            Transform::Noise { std, .. } => {
                if !(std.is_finite() && std >= 0.0) {
                    return Err(format!("`std` must be finite and ≥ 0, got {std}"));
                }
                if synthetic {
                    // Clamping to [0, 1] would silently destroy unbounded Gaussian features.
                    return Err(
                        "noise clamps to the pixel range [0, 1] and applies to image data, not to a synthetic data set".into(),
                    );
                }
                Ok(())
            }
            Transform::Subsample { fraction, .. } => {
                if fraction > 0.0 && fraction <= 1.0 {
                    Ok(())
                } else {
                    Err(format!(
                        "`fraction` is the share of samples kept, in (0, 1]; got {fraction}"
                    ))
                }
            }
        }
    }
}

fn is_2d((_, h, w): (usize, usize, usize)) -> bool {
    h > 1 && w > 1
}

fn not_2d((c, h, w): (usize, usize, usize)) -> String {
    format!(
        "rotation needs 2-D images, but samples have shape (channels {c}, height {h}, width {w})"
    )
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

fn transform_error(i: usize, t: &Transform, reason: String) -> DataError {
    DataError::Transform {
        index: i + 1,
        kind: t.kind(),
        reason,
    }
}

/// Applies `transforms` in order. `origin[i]` is row i's index in the source split (`part`
/// is "train" or "test"), which keys the random draws.
fn apply_transforms(
    transforms: &[Transform],
    split: &mut Split,
    mut origin: Vec<usize>,
    part: &str,
) -> Result<(), DataError> {
    for (i, t) in transforms.iter().enumerate() {
        match *t {
            Transform::Invert => invert(split),
            Transform::Rotate { degrees } => {
                // Known only now for IDX data.
                if !is_2d(split.shape) {
                    return Err(transform_error(i, t, not_2d(split.shape)));
                }
                rotate(split, degrees);
            }
            Transform::Noise { std, seed } => add_noise(split, &origin, std, seed, part),
            Transform::Subsample { fraction, seed } => {
                origin = subsample(split, &origin, fraction, seed, part);
            }
        }
    }
    Ok(())
}

fn invert(split: &mut Split) {
    for v in &mut split.x {
        *v = 1.0 - *v;
    }
}

/// sin and cos of the angle, exact for quarter turns so that 90°, 180°, 270° and 360° move
/// pixels exactly instead of blurring them by libm's rounding of π/2.
fn sin_cos_degrees(degrees: f64) -> (f64, f64) {
    let r = degrees.rem_euclid(360.0); // exact: fmod introduces no rounding
    if r == 0.0 {
        (0.0, 1.0)
    } else if r == 90.0 {
        (1.0, 0.0)
    } else if r == 180.0 {
        (0.0, -1.0)
    } else if r == 270.0 {
        (-1.0, 0.0)
    } else {
        r.to_radians().sin_cos()
    }
}

/// One bilinear tap of a rotation: output pixel `out` takes `weight` of input pixel `src`
/// (both within one channel plane).
struct Tap {
    out: u32,
    src: u32,
    weight: f32,
}

/// The taps of a rotation by `degrees` about the centre of an h×w plane. Every image has the
/// same geometry, so the sampling map is built once and applied to every plane.
fn rotation_taps(h: usize, w: usize, degrees: f64) -> Vec<Tap> {
    let (sin, cos) = sin_cos_degrees(degrees);
    let (cy, cx) = ((h as f64 - 1.0) / 2.0, (w as f64 - 1.0) / 2.0);
    let mut taps = Vec::with_capacity(h * w * 4);
    for i in 0..h {
        for j in 0..w {
            // Centred coordinates with y upward, so a positive angle turns counter-clockwise
            // on screen; inverse rotation finds where the output pixel comes from.
            let (xo, yo) = (j as f64 - cx, cy - i as f64);
            let xs = xo * cos + yo * sin;
            let ys = -xo * sin + yo * cos;
            let (r, c) = (cy - ys, cx + xs);
            let (r0, c0) = (r.floor(), c.floor());
            let (fr, fc) = (r - r0, c - c0);
            for (dr, dc, wt) in [
                (0, 0, (1.0 - fr) * (1.0 - fc)),
                (0, 1, (1.0 - fr) * fc),
                (1, 0, fr * (1.0 - fc)),
                (1, 1, fr * fc),
            ] {
                let (rr, cc) = (r0 as i64 + dr, c0 as i64 + dc);
                // Outside the image contributes 0 (zero fill); zero weights are skipped so
                // that an exact sampling position copies the pixel exactly.
                if wt > 0.0 && (0..h as i64).contains(&rr) && (0..w as i64).contains(&cc) {
                    taps.push(Tap {
                        out: (i * w + j) as u32,
                        src: (rr as usize * w + cc as usize) as u32,
                        weight: wt as f32,
                    });
                }
            }
        }
    }
    taps
}

fn rotate(split: &mut Split, degrees: f64) {
    let (_, h, w) = split.shape;
    let taps = rotation_taps(h, w, degrees);
    let mut out = vec![0f32; h * w];
    for plane in split.x.chunks_exact_mut(h * w) {
        out.fill(0.0);
        for t in &taps {
            out[t.out as usize] += t.weight * plane[t.src as usize];
        }
        plane.copy_from_slice(&out);
    }
}

/// A generator for one sample of one split: its draws depend on (seed, stream, part, the
/// sample's index in the source split) and on nothing else.
fn sample_rngs(seed: u64, stream: &str, part: &str) -> impl Fn(usize) -> Rng {
    let base = Rng::fork(seed, &format!("{stream}/{part}")).next_u64();
    move |index| Rng::new(base.wrapping_add(index as u64))
}

fn add_noise(split: &mut Split, origin: &[usize], std: f64, seed: u64, part: &str) {
    let rng_of = sample_rngs(seed, "noise", part);
    let dim = split.dim;
    for (row, &o) in split.x.chunks_exact_mut(dim).zip(origin) {
        let mut rng = rng_of(o);
        for v in row {
            *v = (f64::from(*v) + std * rng.normal()).clamp(0.0, 1.0) as f32;
        }
    }
}

/// Keeps the rows whose draw falls below `fraction`; returns the kept rows' origins.
fn subsample(
    split: &mut Split,
    origin: &[usize],
    fraction: f64,
    seed: u64,
    part: &str,
) -> Vec<usize> {
    let rng_of = sample_rngs(seed, "subsample", part);
    let draws: Vec<f64> = origin.iter().map(|&o| rng_of(o).uniform()).collect();
    let mut keep: Vec<bool> = draws.iter().map(|&u| u < fraction).collect();
    // A class that vanished would break the protocol (no positives to retrieve, or a class
    // the model never sees), so each keeps its sample with the lowest draw: the one that
    // would be kept first as the fraction grows.
    let mut best: std::collections::BTreeMap<u32, (bool, usize)> = Default::default();
    for (i, &c) in split.y.iter().enumerate() {
        let e = best.entry(c).or_insert((false, i));
        e.0 |= keep[i];
        if draws[i] < draws[e.1] {
            e.1 = i;
        }
    }
    for (any_kept, i) in best.into_values() {
        if !any_kept {
            keep[i] = true;
        }
    }
    let idx: Vec<usize> = (0..split.len()).filter(|&i| keep[i]).collect();
    *split = split.select(&idx);
    idx.iter().map(|&i| origin[i]).collect()
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
    // The header is untrusted: its dimensions can multiply past what a `usize` holds (four
    // of 2^31 wrap to 0 and would pass the length check below), so every product is
    // checked, the size of one sample (all dimensions but the first) included, since the
    // loader indexes rows by it.
    let product = |ds: &[usize]| ds.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d));
    let n = match (product(dims.get(1..).unwrap_or(&[])), product(&dims)) {
        (Some(_), Some(n)) => n,
        _ => {
            return Err(bad(format!(
                "dimensions {dims:?} multiply past {} bytes, more than this machine can address: the header is damaged",
                usize::MAX
            )))
        }
    };
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
    let raw = read_idx_raw(images, labels)?;
    let all: Vec<usize> = (0..raw.labels.len()).collect();
    Ok(raw.select(&all))
}

/// The image shape of an IDX file's per-sample dimensions: [n] → 1×1×n features,
/// [h, w] → one h×w plane, [a, …, h, w] → a·… planes of h×w (IDX has no channel convention;
/// this keeps the file's own order, which is channel-major for C×H×W data).
fn idx_shape(sample_dims: &[usize]) -> (usize, usize, usize) {
    match sample_dims {
        [] => (1, 1, 1),
        [n] => (1, 1, *n),
        [lead @ .., h, w] => (lead.iter().product(), *h, *w),
    }
}

fn read_idx_raw(images: &Path, labels: &Path) -> Result<RawSplit, DataError> {
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
    Ok(RawSplit {
        pixels,
        labels: labs.iter().map(|&l| u32::from(l)).collect(),
        shape: idx_shape(&idims[1..]),
    })
}

/// The record layout of one CIFAR flavour and the label it yields.
struct CifarFormat {
    name: &'static str,
    /// Label bytes before the pixels of each record, with each label's name and range.
    labels: &'static [(&'static str, u8)],
    /// Which of `labels` the samples carry.
    use_label: usize,
    files_hint: &'static str,
    python_probe: &'static str,
}

const CIFAR10: CifarFormat = CifarFormat {
    name: "CIFAR-10",
    labels: &[("label", 10)],
    use_label: 0,
    files_hint: "data_batch_1.bin … data_batch_5.bin and test_batch.bin (cifar-10-binary.tar.gz, extracted; or its parent directory holding cifar-10-batches-bin/)",
    python_probe: "data_batch_1",
};
const CIFAR100_LABELS: &[(&str, u8)] = &[("coarse label", 20), ("fine label", 100)];
const CIFAR100_FINE: CifarFormat = CifarFormat {
    name: "CIFAR-100",
    labels: CIFAR100_LABELS,
    use_label: 1,
    files_hint: "train.bin and test.bin (cifar-100-binary.tar.gz, extracted; or its parent directory holding cifar-100-binary/)",
    python_probe: "meta",
};
const CIFAR100_COARSE: CifarFormat = CifarFormat {
    use_label: 0,
    ..CIFAR100_FINE
};

/// Reads CIFAR binary batches and concatenates them; `source_dir` is the path the user gave,
/// for the hint when files are missing.
fn read_cifar(
    files: &[PathBuf],
    fmt: &CifarFormat,
    source_dir: &Path,
) -> Result<RawSplit, DataError> {
    let record = fmt.labels.len() + CIFAR_PIXELS;
    let mut pixels = Vec::new();
    let mut labels = Vec::new();
    for path in files {
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let dir = path.parent().unwrap_or(source_dir);
                // The Python (pickle) version is the more common download; say so if that is
                // what is there, since its file names are almost the same.
                let python = if dir.join(fmt.python_probe).exists() {
                    " — this directory looks like the Python (pickle) version, which is not supported"
                } else {
                    ""
                };
                return Err(DataError::Missing {
                    path: path.clone(),
                    hint: format!(
                        "{} `path:` must be the binary version, a directory with {}{python}",
                        fmt.name, fmt.files_hint
                    ),
                });
            }
            Err(source) => {
                return Err(DataError::Io {
                    path: path.clone(),
                    source,
                })
            }
        };
        let bad = |reason: String| DataError::Cifar {
            path: path.clone(),
            format: fmt.name,
            reason,
        };
        if bytes.is_empty() {
            return Err(bad("the file is empty".into()));
        }
        if bytes.len() % record != 0 {
            return Err(bad(format!(
                "its {} bytes are not a whole number of {record}-byte records ({} label byte{} + {CIFAR_PIXELS} pixel bytes): the file is truncated, or not the binary version of {}",
                bytes.len(),
                fmt.labels.len(),
                if fmt.labels.len() == 1 { "" } else { "s" },
                fmt.name
            )));
        }
        pixels.reserve(bytes.len() / record * CIFAR_PIXELS);
        for (k, rec) in bytes.chunks_exact(record).enumerate() {
            for (b, &(what, n)) in fmt.labels.iter().enumerate() {
                if rec[b] >= n {
                    return Err(bad(format!(
                        "record {k} (byte offset {}) has {what} {}, but {} {what}s are 0..{}",
                        k * record + b,
                        rec[b],
                        fmt.name,
                        n - 1
                    )));
                }
            }
            labels.push(u32::from(rec[fmt.use_label]));
            // The record stores R, G and B planes of 32×32 row-major: already (C, H, W).
            pixels.extend_from_slice(&rec[fmt.labels.len()..]);
        }
    }
    Ok(RawSplit {
        pixels,
        labels,
        shape: CIFAR_SHAPE,
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
        Split {
            x,
            y,
            dim,
            shape: (1, 1, dim),
        }
    };
    (
        make(train_per_class, "synthetic-train"),
        make(test_per_class, "synthetic-test"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn synth(classes: u32, dim: usize, seed: u64) -> DataSource {
        DataSource::Synthetic {
            classes,
            dim,
            train_per_class: 10,
            test_per_class: 5,
            seed,
        }
    }

    fn spec(source: DataSource, train: &[u32], eval: &[u32]) -> DataSpec {
        DataSpec {
            source,
            train_classes: train.to_vec(),
            eval_classes: eval.to_vec(),
            train_limit: None,
            eval_limit: None,
            transforms: Vec::new(),
        }
    }

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
            assert_eq!(s.shape, (1, 2, 2));
            assert_eq!(s.len(), 6);
            assert_eq!(s.row(1)[0], 40.0 / 255.0);
            let f = s.select(&filter_indices(&s.y, &[2], None));
            assert_eq!(f.y, vec![2, 2]);
            assert_eq!(f.row(1), s.row(5));
            assert_eq!(filter_indices(&s.y, &[1, 2], Some(3)), vec![1, 2, 4]);
        }
    }

    #[test]
    fn idx_shapes_follow_the_file_dimensions() {
        assert_eq!(idx_shape(&[7]), (1, 1, 7));
        assert_eq!(idx_shape(&[28, 28]), (1, 28, 28));
        assert_eq!(idx_shape(&[3, 32, 32]), (3, 32, 32));
        assert_eq!(idx_shape(&[2, 3, 4, 5]), (6, 4, 5));
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

    /// Dimensions whose product overflows a `usize` are an error naming the file, not a
    /// wrapped size (4 · 2^31 · 2^31 = 2^64 wraps to 0, which an empty data part matched).
    #[test]
    fn idx_dimensions_that_overflow_are_refused() {
        let p = Path::new("damaged-images-idx3-ubyte");
        let header = |dims: &[u32]| {
            let mut b = vec![0u8, 0, 0x08, dims.len() as u8];
            for d in dims {
                b.extend_from_slice(&d.to_be_bytes());
            }
            b
        };
        for dims in [
            &[4, 0x8000_0000, 0x8000_0000][..],
            &[0x8000_0000, 0x8000_0000, 0x8000_0000, 0][..],
            // No samples, but one sample's size alone overflows.
            &[0, 0xffff_ffff, 0xffff_ffff, 0xffff_ffff][..],
        ] {
            let e = parse_idx(p, &header(dims)).unwrap_err().to_string();
            assert!(e.contains("damaged-images-idx3-ubyte"), "{e}");
            assert!(e.contains("multiply past"), "{e}");
        }
        // Through the loader, as a stage reads it: an error, not a panic.
        let dir = tempfile::tempdir().unwrap();
        let images = dir.path().join("images.idx");
        let labels = dir.path().join("labels.idx");
        std::fs::write(&images, header(&[4, 0x8000_0000, 0x8000_0000])).unwrap();
        write_idx(&labels, &[4], &[0, 1, 2, 3]).unwrap();
        let e = read_idx_pair(&images, &labels).err().unwrap().to_string();
        assert!(
            e.contains("images.idx") && e.contains("multiply past"),
            "{e}"
        );
    }

    #[test]
    fn synthetic_is_deterministic_and_balanced() {
        let src = synth(4, 12, 3);
        let mut spec = spec(src.clone(), &[0, 1], &[2, 3]);
        spec.eval_limit = Some(6);
        let a = load(&spec).unwrap();
        let b = load(&spec).unwrap();
        assert_eq!(a.train.x, b.train.x);
        assert_eq!(a.train.len(), 20);
        assert_eq!(a.train.shape, (1, 1, 12));
        assert_eq!(a.eval.y, vec![2, 3, 2, 3, 2, 3]);
        assert_eq!(src.fingerprint().unwrap(), src.fingerprint().unwrap());
        assert_ne!(
            src.fingerprint().unwrap(),
            synth(4, 12, 4).fingerprint().unwrap()
        );
    }

    #[test]
    fn empty_class_filter_is_an_error() {
        let spec = spec(synth(2, 4, 0), &[0], &[7]);
        let e = load(&spec).unwrap_err().to_string();
        assert!(e.contains("[7]"), "{e}");
    }

    /// Cache keys are SHA-256 of these serialisations: the strings were captured from the code
    /// before CIFAR and transforms existed and must never change.
    #[test]
    fn spec_without_transforms_serialises_as_before() {
        let s = DataSpec {
            source: DataSource::Synthetic {
                classes: 4,
                dim: 6,
                train_per_class: 3,
                test_per_class: 2,
                seed: 9,
            },
            train_classes: vec![0, 1],
            eval_classes: vec![2, 3],
            train_limit: Some(5),
            eval_limit: None,
            transforms: Vec::new(),
        };
        let json = r#"{"source":{"kind":"synthetic","classes":4,"dim":6,"train_per_class":3,"test_per_class":2,"seed":9},"train_classes":[0,1],"eval_classes":[2,3],"train_limit":5,"eval_limit":null}"#;
        assert_eq!(serde_json::to_string(&s).unwrap(), json);
        assert_eq!(serde_json::from_str::<DataSpec>(json).unwrap(), s);
        let fm = DataSpec {
            source: DataSource::FashionMnist {
                path: "/d/fm".into(),
            },
            train_classes: vec![0],
            eval_classes: vec![1],
            train_limit: None,
            eval_limit: Some(7),
            transforms: Vec::new(),
        };
        assert_eq!(
            serde_json::to_string(&fm).unwrap(),
            r#"{"source":{"kind":"fashion-mnist","path":"/d/fm"},"train_classes":[0],"eval_classes":[1],"train_limit":null,"eval_limit":7}"#
        );
        // With transforms, they come last.
        let mut t = s.clone();
        t.transforms = vec![Transform::Invert];
        let tj = serde_json::to_string(&t).unwrap();
        assert!(
            tj.starts_with(&json[..json.len() - 1]),
            "{tj} does not extend {json}"
        );
        assert!(
            tj.ends_with(r#","transforms":[{"kind":"invert"}]}"#),
            "{tj}"
        );
    }

    #[test]
    fn serde_shapes_of_cifar_sources_and_transforms() {
        let cases: Vec<(DataSource, &str)> = vec![
            (
                DataSource::Cifar10 {
                    path: "/data/cifar".into(),
                },
                r#"{"kind":"cifar10","path":"/data/cifar"}"#,
            ),
            (
                DataSource::Cifar100 {
                    path: "/data/c100".into(),
                    labels: CifarLabels::Fine,
                },
                r#"{"kind":"cifar100","path":"/data/c100","labels":"fine"}"#,
            ),
            (
                DataSource::Cifar100 {
                    path: "/data/c100".into(),
                    labels: CifarLabels::Coarse,
                },
                r#"{"kind":"cifar100","path":"/data/c100","labels":"coarse"}"#,
            ),
        ];
        for (src, json) in cases {
            assert_eq!(serde_json::to_string(&src).unwrap(), json);
            assert_eq!(serde_json::from_str::<DataSource>(json).unwrap(), src);
        }
        let ts = vec![
            Transform::Invert,
            Transform::Rotate { degrees: 90.0 },
            Transform::Noise { std: 0.1, seed: 7 },
            Transform::Subsample {
                fraction: 0.25,
                seed: 3,
            },
        ];
        let json = r#"[{"kind":"invert"},{"kind":"rotate","degrees":90.0},{"kind":"noise","std":0.1,"seed":7},{"kind":"subsample","fraction":0.25,"seed":3}]"#;
        assert_eq!(serde_json::to_string(&ts).unwrap(), json);
        assert_eq!(serde_json::from_str::<Vec<Transform>>(json).unwrap(), ts);
        for bad in [
            r#"{"kind":"rotate","degrees":1,"extra":2}"#,
            r#"{"kind":"flip"}"#,
            r#"{"kind":"invert","degrees":1}"#,
            r#"{"kind":"noise","std":0.1}"#,
        ] {
            assert!(serde_json::from_str::<Transform>(bad).is_err(), "{bad}");
        }
        assert!(serde_json::from_str::<DataSource>(r#"{"kind":"cifar100","path":"x"}"#).is_err());
    }

    #[test]
    fn n_classes_and_shape_without_reading_files() {
        let p = PathBuf::from("/nowhere");
        let fm = DataSource::FashionMnist { path: p.clone() };
        let c10 = DataSource::Cifar10 { path: p.clone() };
        let fine = DataSource::Cifar100 {
            path: p.clone(),
            labels: CifarLabels::Fine,
        };
        let coarse = DataSource::Cifar100 {
            path: p.clone(),
            labels: CifarLabels::Coarse,
        };
        let idx = DataSource::Idx {
            train_images: p.clone(),
            train_labels: p.clone(),
            test_images: p.clone(),
            test_labels: p,
        };
        assert_eq!(fm.n_classes(), Some(10));
        assert_eq!(c10.n_classes(), Some(10));
        assert_eq!(fine.n_classes(), Some(100));
        assert_eq!(coarse.n_classes(), Some(20));
        assert_eq!(synth(7, 5, 0).n_classes(), Some(7));
        assert_eq!(idx.n_classes(), None);
        assert_eq!(fm.shape(), Some((1, 28, 28)));
        assert_eq!(c10.shape(), Some((3, 32, 32)));
        assert_eq!(coarse.shape(), Some((3, 32, 32)));
        assert_eq!(synth(7, 5, 0).shape(), Some((1, 1, 5)));
        assert_eq!(idx.shape(), None);
    }

    /// A CIFAR record: label bytes, then a recognisable picture — pixel (c, r, col) of
    /// sample `tag` is (tag + 7c + 3r + col) mod 256.
    fn cifar_record(labels: &[u8], tag: u8) -> Vec<u8> {
        let mut rec = labels.to_vec();
        for c in 0..3usize {
            for r in 0..32usize {
                for col in 0..32usize {
                    rec.push((tag as usize + 7 * c + 3 * r + col) as u8);
                }
            }
        }
        rec
    }

    fn expected_pixel(tag: u8, c: usize, r: usize, col: usize) -> f32 {
        f32::from((tag as usize + 7 * c + 3 * r + col) as u8) / 255.0
    }

    /// Six CIFAR-10 files; batch b holds two records with labels (2b, 2b+1) mod 10 and tags
    /// 10b, 10b+1; the test batch holds labels 9, 0, 5.
    fn write_cifar10(dir: &Path) {
        std::fs::create_dir_all(dir).unwrap();
        for b in 1..=5u8 {
            let mut bytes = cifar_record(&[(2 * b) % 10], 10 * b);
            bytes.extend(cifar_record(&[(2 * b + 1) % 10], 10 * b + 1));
            std::fs::write(dir.join(format!("data_batch_{b}.bin")), bytes).unwrap();
        }
        let mut test = cifar_record(&[9], 200);
        test.extend(cifar_record(&[0], 201));
        test.extend(cifar_record(&[5], 202));
        std::fs::write(dir.join("test_batch.bin"), test).unwrap();
    }

    /// CIFAR-100 train: (coarse, fine) = (3, 42), (19, 99), (0, 7); test: (3, 43), (1, 5).
    fn write_cifar100(dir: &Path) {
        std::fs::create_dir_all(dir).unwrap();
        let mut train = cifar_record(&[3, 42], 1);
        train.extend(cifar_record(&[19, 99], 2));
        train.extend(cifar_record(&[0, 7], 3));
        std::fs::write(dir.join("train.bin"), train).unwrap();
        let mut test = cifar_record(&[3, 43], 4);
        test.extend(cifar_record(&[1, 5], 5));
        std::fs::write(dir.join("test.bin"), test).unwrap();
    }

    #[test]
    fn cifar10_roundtrip_labels_chw_and_scaling() {
        let dir = tempfile::tempdir().unwrap();
        write_cifar10(dir.path());
        let src = DataSource::Cifar10 {
            path: dir.path().into(),
        };
        let all: Vec<u32> = (0..10).collect();
        let d = load(&spec(src, &all, &all)).unwrap();
        // Batches in order 1..5, records in file order.
        assert_eq!(d.train.y, vec![2, 3, 4, 5, 6, 7, 8, 9, 0, 1]);
        assert_eq!(d.eval.y, vec![9, 0, 5]);
        assert_eq!(d.train.shape, (3, 32, 32));
        assert_eq!(d.train.dim, 3072);
        let tags = [10u8, 11, 20, 21, 30, 31, 40, 41, 50, 51];
        for (i, &tag) in tags.iter().enumerate() {
            let row = d.train.row(i);
            for (c, r, col) in [(0, 0, 0), (0, 0, 31), (1, 1, 2), (2, 31, 31), (2, 5, 0)] {
                assert_eq!(row[c * 1024 + r * 32 + col], expected_pixel(tag, c, r, col));
            }
            assert!(row.iter().all(|v| (0.0..=1.0).contains(v)));
        }
        // A pixel byte of 255 is exactly 1.0, as in the IDX path.
        assert_eq!(expected_pixel(200, 0, 10, 25), 1.0);
        assert_eq!(d.eval.row(0)[10 * 32 + 25], 1.0);
        let filtered = load(&spec(d_src(dir.path()), &[0, 1], &[5])).unwrap();
        assert_eq!(filtered.train.y, vec![0, 1]);
        assert_eq!(filtered.train.row(0)[0], expected_pixel(50, 0, 0, 0));
        assert_eq!(filtered.eval.y, vec![5]);
        assert_eq!(filtered.eval.row(0)[1024], expected_pixel(202, 1, 0, 0));
    }

    fn d_src(p: &Path) -> DataSource {
        DataSource::Cifar10 { path: p.into() }
    }

    #[test]
    fn cifar100_fine_and_coarse_labels() {
        let dir = tempfile::tempdir().unwrap();
        write_cifar100(dir.path());
        let src = |labels| DataSource::Cifar100 {
            path: dir.path().into(),
            labels,
        };
        let all: Vec<u32> = (0..100).collect();
        let fine = load(&spec(src(CifarLabels::Fine), &all, &all)).unwrap();
        assert_eq!(fine.train.y, vec![42, 99, 7]);
        assert_eq!(fine.eval.y, vec![43, 5]);
        assert_eq!(fine.train.shape, (3, 32, 32));
        // Two label bytes precede the pixels.
        assert_eq!(fine.train.row(1)[0], expected_pixel(2, 0, 0, 0));
        assert_eq!(
            fine.eval.row(1)[2 * 1024 + 32 + 1],
            expected_pixel(5, 2, 1, 1)
        );
        let coarse = load(&spec(src(CifarLabels::Coarse), &all[..20], &all[..20])).unwrap();
        assert_eq!(coarse.train.y, vec![3, 19, 0]);
        assert_eq!(coarse.eval.y, vec![3, 1]);
        assert_eq!(coarse.train.x, fine.train.x);
        assert_ne!(
            src(CifarLabels::Fine).fingerprint().unwrap(),
            src(CifarLabels::Coarse).fingerprint().unwrap(),
            "fine and coarse are different data sets and must not share cache keys"
        );
    }

    #[test]
    fn cifar_finds_the_extracted_subdirectory() {
        let dir = tempfile::tempdir().unwrap();
        write_cifar10(&dir.path().join("cifar-10-batches-bin"));
        write_cifar100(&dir.path().join("cifar-100-binary"));
        let c10 = d_src(dir.path());
        assert_eq!(
            c10.files()[5],
            dir.path().join("cifar-10-batches-bin/test_batch.bin")
        );
        assert_eq!(load(&spec(c10, &[9], &[9])).unwrap().eval.y, vec![9]);
        let c100 = DataSource::Cifar100 {
            path: dir.path().into(),
            labels: CifarLabels::Fine,
        };
        assert_eq!(
            c100.files(),
            vec![
                dir.path().join("cifar-100-binary/train.bin"),
                dir.path().join("cifar-100-binary/test.bin")
            ]
        );
        assert_eq!(load(&spec(c100, &[42], &[5])).unwrap().train.y, vec![42]);
        // Pointing at the sub-directory itself works too.
        let inner = d_src(&dir.path().join("cifar-10-batches-bin"));
        assert_eq!(inner.files(), d_src(dir.path()).files());
    }

    #[test]
    fn cifar_errors_name_the_file_and_the_problem() {
        let dir = tempfile::tempdir().unwrap();
        write_cifar10(dir.path());
        let batch3 = dir.path().join("data_batch_3.bin");
        let mut bytes = std::fs::read(&batch3).unwrap();
        bytes.pop();
        std::fs::write(&batch3, &bytes).unwrap();
        let all: Vec<u32> = (0..10).collect();
        let e = load(&spec(d_src(dir.path()), &all, &all))
            .unwrap_err()
            .to_string();
        assert!(e.contains(&batch3.display().to_string()), "{e}");
        assert!(
            e.contains("6145 bytes are not a whole number of 3073-byte records"),
            "{e}"
        );

        // A label out of range names the record.
        let mut bytes = cifar_record(&[3], 0);
        bytes.extend(cifar_record(&[12], 0));
        std::fs::write(&batch3, &bytes).unwrap();
        let e = load(&spec(d_src(dir.path()), &all, &all))
            .unwrap_err()
            .to_string();
        assert!(e.contains("data_batch_3.bin"), "{e}");
        assert!(
            e.contains("record 1") && e.contains("label 12") && e.contains("0..9"),
            "{e}"
        );

        let c100 = DataSource::Cifar100 {
            path: dir.path().into(),
            labels: CifarLabels::Coarse,
        };
        std::fs::write(dir.path().join("train.bin"), cifar_record(&[25, 1], 0)).unwrap();
        std::fs::write(dir.path().join("test.bin"), cifar_record(&[1, 1], 0)).unwrap();
        let e = load(&spec(c100, &[1], &[1])).unwrap_err().to_string();
        assert!(
            e.contains("train.bin") && e.contains("coarse label 25"),
            "{e}"
        );

        // A missing file says what the directory should hold, and spots the Python version.
        let empty = tempfile::tempdir().unwrap();
        std::fs::write(empty.path().join("data_batch_1"), b"pickle").unwrap();
        let e = load(&spec(d_src(empty.path()), &all, &all))
            .unwrap_err()
            .to_string();
        assert!(e.contains("data_batch_1.bin not found"), "{e}");
        assert!(e.contains("binary version") && e.contains("Python"), "{e}");
    }

    #[test]
    fn cifar_fingerprint_hashes_content_not_location() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a");
        write_cifar10(&a);
        let before = d_src(&a).fingerprint().unwrap();
        let b = dir.path().join("b");
        std::fs::rename(&a, &b).unwrap();
        assert_eq!(d_src(&b).fingerprint().unwrap(), before);
        // Through the sub-directory discovery too.
        let c = dir.path().join("c");
        std::fs::create_dir(&c).unwrap();
        std::fs::rename(&b, c.join("cifar-10-batches-bin")).unwrap();
        assert_eq!(d_src(&c).fingerprint().unwrap(), before);
        let test = c.join("cifar-10-batches-bin/test_batch.bin");
        let mut bytes = std::fs::read(&test).unwrap();
        bytes[100] ^= 1;
        std::fs::write(&test, bytes).unwrap();
        assert_ne!(d_src(&c).fingerprint().unwrap(), before);
    }

    /// `n` images of the given shape whose pixels are all distinct values in [0, 1].
    fn images(n: usize, shape: (usize, usize, usize)) -> Split {
        let dim = shape.0 * shape.1 * shape.2;
        let total = n * dim;
        Split {
            x: (0..total).map(|i| i as f32 / total as f32).collect(),
            y: (0..n).map(|i| (i % 3) as u32).collect(),
            dim,
            shape,
        }
    }

    fn apply(ts: &[Transform], s: &Split) -> Split {
        let mut s = s.clone();
        let origin = (0..s.len()).collect();
        apply_transforms(ts, &mut s, origin, "train").unwrap();
        s
    }

    fn max_diff(a: &[f32], b: &[f32]) -> f32 {
        assert_eq!(a.len(), b.len());
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max)
    }

    #[test]
    fn invert_twice_is_identity() {
        let s = images(4, (1, 3, 3));
        let once = apply(&[Transform::Invert], &s);
        assert_eq!(once.row(0)[0], 1.0);
        assert_eq!(once.row(1)[2], 1.0 - s.row(1)[2]);
        let twice = apply(&[Transform::Invert, Transform::Invert], &s);
        assert!(max_diff(&twice.x, &s.x) < 1e-6);
    }

    #[test]
    fn rotate_identity_quarter_turn_and_full_turn() {
        let s = images(3, (3, 5, 5));
        let rot = |d: f64| apply(&[Transform::Rotate { degrees: d }], &s);
        assert_eq!(rot(0.0).x, s.x);
        assert_eq!(rot(360.0).x, s.x);
        assert_eq!(rot(-720.0).x, s.x);
        // Counter-clockwise as displayed: top-right goes to top-left, top-left to
        // bottom-left, in every channel.
        let r90 = rot(90.0);
        for i in 0..s.len() {
            for c in 0..3 {
                let plane = |x: &Split| x.row(i)[c * 25..(c + 1) * 25].to_vec();
                let (src, dst) = (plane(&s), plane(&r90));
                assert_eq!(dst[0], src[4]); // (0,0) ← (0,4)
                assert_eq!(dst[20], src[0]); // (4,0) ← (0,0)
                assert_eq!(dst[12], src[12]); // the centre stays
                assert_eq!(dst[5 + 3], src[3 * 5 + 3]); // (1,3) ← (3,3)
            }
        }
        // The exact quarter-turn matches the general bilinear path within interpolation.
        assert!(max_diff(&rot(90.000001).x, &r90.x) < 1e-4);
        assert!(max_diff(&rot(359.999999).x, &s.x) < 1e-4);
        // Four quarter turns are the identity; 90 then -90 too.
        let back = apply(
            &[
                Transform::Rotate { degrees: 90.0 },
                Transform::Rotate { degrees: -90.0 },
            ],
            &s,
        );
        assert_eq!(back.x, s.x);
        // 45°: the centre is kept exactly, the corners come from outside (zero fill), and
        // values stay in [0, 1].
        let s7 = images(1, (1, 7, 7));
        let r45 = apply(&[Transform::Rotate { degrees: 45.0 }], &s7);
        assert_eq!(r45.x[24], s7.x[24]);
        assert_eq!(r45.x[0], 0.0); // 4.2 pixels from the centre, sampled from row -1.2
        assert_ne!(r45.x[3], 0.0);
        assert!(r45.x.iter().all(|v| (0.0..=1.0 + 1e-6).contains(v)));
    }

    #[test]
    fn rotate_non_square_about_the_centre() {
        // A single bright pixel right of centre in a 3×4 plane (centre at row 1, col 1.5)
        // turns to straight above the centre: between columns 1 and 2, half in each.
        let mut s = images(1, (1, 3, 4));
        s.x.iter_mut().for_each(|v| *v = 0.0);
        s.x[4 + 3] = 1.0; // (1, 3): 1.5 right of the centre
        let r = apply(&[Transform::Rotate { degrees: 90.0 }], &s);
        // It lands 1.5 rows above the centre, at (-0.5, 1.5): only its lower half is inside,
        // shared by columns 1 and 2 of row 0.
        let mut want = vec![0.0f32; 12];
        want[1] = 0.25;
        want[2] = 0.25;
        assert_eq!(r.x, want);
    }

    #[test]
    fn noise_is_seeded_per_sample_and_clamped() {
        let s = images(6, (1, 4, 4));
        let noise = |seed| Transform::Noise { std: 0.3, seed };
        let a = apply(&[noise(1)], &s);
        assert_eq!(a.x, apply(&[noise(1)], &s).x);
        assert_ne!(a.x, apply(&[noise(2)], &s).x);
        assert_ne!(a.x, s.x);
        assert!(a.x.iter().all(|v| (0.0..=1.0).contains(v)));
        assert!(a.x.contains(&0.0) && a.x.contains(&1.0));
        // A sample's noise follows its index in the source split, not its row position.
        let mut tail = s.select(&[3, 4, 5]);
        apply_transforms(&[noise(1)], &mut tail, vec![3, 4, 5], "train").unwrap();
        assert_eq!(tail.x, a.x[3 * 16..]);
        // The test split draws different noise.
        let mut t = s.clone();
        apply_transforms(&[noise(1)], &mut t, (0..6).collect(), "test").unwrap();
        assert_ne!(t.x, a.x);
        let zero = apply(&[Transform::Noise { std: 0.0, seed: 1 }], &s);
        assert_eq!(zero.x, s.x);
    }

    #[test]
    fn subsample_keeps_about_the_fraction_deterministically_and_every_class() {
        let s = images(3000, (1, 2, 2));
        let sub = |fraction, seed| Transform::Subsample { fraction, seed };
        let a = apply(&[sub(0.3, 5)], &s);
        assert!((800..1000).contains(&a.len()), "{}", a.len());
        assert_eq!(a.x, apply(&[sub(0.3, 5)], &s).x);
        assert_ne!(a.y.len(), 0);
        assert_ne!(a.x, apply(&[sub(0.3, 6)], &s).x);
        assert_eq!(apply(&[sub(1.0, 5)], &s).x, s.x);
        // Kept rows are unchanged rows of the input, in order.
        let first = a.row(0).to_vec();
        assert!((0..s.len()).any(|i| s.row(i) == &first[..]));
        // A tiny fraction still keeps one sample of each class.
        let tiny = apply(&[sub(1e-9, 5)], &s);
        assert_eq!(tiny.len(), 3);
        let mut classes = tiny.y.clone();
        classes.sort_unstable();
        assert_eq!(classes, vec![0, 1, 2]);
        // Composes: keeps ≈ the product of the fractions.
        let two = apply(&[sub(0.5, 1), sub(0.5, 2)], &s);
        assert!((600..900).contains(&two.len()), "{}", two.len());
    }

    #[test]
    fn load_applies_transforms_in_order_to_both_splits() {
        let dir = tempfile::tempdir().unwrap();
        let n = 40;
        let imgs: Vec<u8> = (0..n * 9).map(|v| (v * 7) as u8).collect();
        let labs: Vec<u8> = (0..n).map(|i| (i % 4) as u8).collect();
        let p = |f: &str| dir.path().join(f);
        for (i, l) in [("tri", "trl"), ("tei", "tel")] {
            write_idx(&p(i), &[n, 3, 3], &imgs).unwrap();
            write_idx(&p(l), &[n], &labs).unwrap();
        }
        let src = DataSource::Idx {
            train_images: p("tri"),
            train_labels: p("trl"),
            test_images: p("tei"),
            test_labels: p("tel"),
        };
        let plain = spec(src.clone(), &[0, 1], &[2, 3]);
        let base = load(&plain).unwrap();
        assert_eq!(base.train.shape, (1, 3, 3));
        let mut inv = plain.clone();
        inv.transforms = vec![Transform::Invert];
        let inverted = load(&inv).unwrap();
        for (d, b) in [(&inverted.train, &base.train), (&inverted.eval, &base.eval)] {
            assert_eq!(d.y, b.y);
            assert!(d
                .x
                .iter()
                .zip(&b.x)
                .all(|(a, b)| (a + b - 1.0).abs() < 1e-6));
        }
        // Order matters: clamping noise then inverting differs from inverting then noise
        // only where clamping bit; both stay deterministic.
        let mut a = plain.clone();
        a.transforms = vec![
            Transform::Subsample {
                fraction: 0.5,
                seed: 1,
            },
            Transform::Rotate { degrees: 30.0 },
            Transform::Noise { std: 0.2, seed: 1 },
        ];
        let a1 = load(&a).unwrap();
        assert_eq!(a1.train.x, load(&a).unwrap().train.x);
        assert!(a1.train.len() < base.train.len() && a1.eval.len() < base.eval.len());
        assert!(a1.train.x.iter().all(|v| (0.0..=1.0).contains(v)));
        // The limit applies before the transforms.
        let mut lim = a.clone();
        lim.train_limit = Some(10);
        assert!(load(&lim).unwrap().train.len() <= 10);

        // Rotation needs 2-D images: a 1-D IDX file is refused at load time.
        write_idx(&p("flat"), &[n, 9], &imgs).unwrap();
        let mut flat = spec(
            DataSource::Idx {
                train_images: p("flat"),
                train_labels: p("trl"),
                test_images: p("flat"),
                test_labels: p("tel"),
            },
            &[0],
            &[1],
        );
        flat.transforms = vec![Transform::Invert, Transform::Rotate { degrees: 10.0 }];
        let e = load(&flat).unwrap_err().to_string();
        assert!(
            e.contains("transform 2 (`rotate`)") && e.contains("2-D"),
            "{e}"
        );
    }

    #[test]
    fn transform_parameters_and_sources_are_checked() {
        let syn = synth(4, 8, 0);
        let img = DataSource::Cifar10 { path: "x".into() };
        assert!(Transform::Invert.check(&syn).is_ok());
        assert!(Transform::Subsample {
            fraction: 0.5,
            seed: 0
        }
        .check(&syn)
        .is_ok());
        for (t, src, needle) in [
            (Transform::Rotate { degrees: 5.0 }, &syn, "2-D"),
            (Transform::Noise { std: 0.1, seed: 0 }, &syn, "synthetic"),
            (Transform::Noise { std: -1.0, seed: 0 }, &img, "≥ 0"),
            (Transform::Rotate { degrees: f64::NAN }, &img, "finite"),
            (
                Transform::Subsample {
                    fraction: 0.0,
                    seed: 0,
                },
                &img,
                "(0, 1]",
            ),
            (
                Transform::Subsample {
                    fraction: 1.5,
                    seed: 0,
                },
                &img,
                "(0, 1]",
            ),
        ] {
            let e = t.check(src).unwrap_err();
            assert!(e.contains(needle), "{t:?}: {e}");
        }
        let mut s = spec(syn, &[0], &[1]);
        s.transforms = vec![Transform::Noise { std: 0.1, seed: 0 }];
        let e = load(&s).unwrap_err().to_string();
        assert!(e.contains("transform 1 (`noise`)"), "{e}");
    }
}
