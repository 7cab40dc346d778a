//! Domain-shift transforms (invert, rotate, noise, subsample), applied to both splits after
//! loading, each draw keyed by (seed, split, sample index) so that results never depend on
//! the order or number of samples loaded.

use serde::{Deserialize, Serialize};

use super::*;

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
pub(super) enum TransformRepr {
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

pub(super) fn is_2d((_, h, w): (usize, usize, usize)) -> bool {
    h > 1 && w > 1
}

pub(super) fn not_2d((c, h, w): (usize, usize, usize)) -> String {
    format!(
        "rotation needs 2-D images, but samples have shape (channels {c}, height {h}, width {w})"
    )
}

pub(super) fn transform_error(i: usize, t: &Transform, reason: String) -> DataError {
    DataError::Transform {
        index: i + 1,
        kind: t.kind(),
        reason,
    }
}

/// Applies `transforms` in order. `origin[i]` is row i's index in the source split (`part`
/// is "train" or "test"), which keys the random draws.
pub(super) fn apply_transforms(
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

pub(super) fn invert(split: &mut Split) {
    for v in &mut split.x {
        *v = 1.0 - *v;
    }
}

/// sin and cos of the angle, exact for quarter turns so that 90°, 180°, 270° and 360° move
/// pixels exactly instead of blurring them by libm's rounding of π/2.
pub(super) fn sin_cos_degrees(degrees: f64) -> (f64, f64) {
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
pub(super) struct Tap {
    out: u32,
    src: u32,
    weight: f32,
}

/// The taps of a rotation by `degrees` about the centre of an h×w plane. Every image has the
/// same geometry, so the sampling map is built once and applied to every plane.
pub(super) fn rotation_taps(h: usize, w: usize, degrees: f64) -> Vec<Tap> {
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

pub(super) fn rotate(split: &mut Split, degrees: f64) {
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
pub(super) fn sample_rngs(seed: u64, stream: &str, part: &str) -> impl Fn(usize) -> Rng {
    let base = Rng::fork(seed, &format!("{stream}/{part}")).next_u64();
    move |index| Rng::new(base.wrapping_add(index as u64))
}

pub(super) fn add_noise(split: &mut Split, origin: &[usize], std: f64, seed: u64, part: &str) {
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
pub(super) fn subsample(
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
