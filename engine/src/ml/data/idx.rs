//! IDX files (the MNIST family's format: Fashion-MNIST and any other image/label pair),
//! gzip-compressed or not.

use std::io::Read;
use std::path::Path;

use super::*;

pub(super) fn read_maybe_gz(path: &Path) -> Result<Vec<u8>, DataError> {
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
pub(super) fn idx_shape(sample_dims: &[usize]) -> (usize, usize, usize) {
    match sample_dims {
        [] => (1, 1, 1),
        [n] => (1, 1, *n),
        [lead @ .., h, w] => (lead.iter().product(), *h, *w),
    }
}

pub(super) fn read_idx_raw(images: &Path, labels: &Path) -> Result<RawSplit, DataError> {
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
