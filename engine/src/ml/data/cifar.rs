//! The binary versions of CIFAR-10 and CIFAR-100 (`data_batch_*.bin`, `train.bin`).

use std::path::Path;

use super::*;

/// The record layout of one CIFAR flavour and the label it yields.
pub(super) struct CifarFormat {
    name: &'static str,
    /// Label bytes before the pixels of each record, with each label's name and range.
    labels: &'static [(&'static str, u8)],
    /// Which of `labels` the samples carry.
    use_label: usize,
    files_hint: &'static str,
    python_probe: &'static str,
}

pub(super) const CIFAR10: CifarFormat = CifarFormat {
    name: "CIFAR-10",
    labels: &[("label", 10)],
    use_label: 0,
    files_hint: "data_batch_1.bin … data_batch_5.bin and test_batch.bin (cifar-10-binary.tar.gz, extracted; or its parent directory holding cifar-10-batches-bin/)",
    python_probe: "data_batch_1",
};
pub(super) const CIFAR100_LABELS: &[(&str, u8)] = &[("coarse label", 20), ("fine label", 100)];
pub(super) const CIFAR100_FINE: CifarFormat = CifarFormat {
    name: "CIFAR-100",
    labels: CIFAR100_LABELS,
    use_label: 1,
    files_hint: "train.bin and test.bin (cifar-100-binary.tar.gz, extracted; or its parent directory holding cifar-100-binary/)",
    python_probe: "meta",
};
pub(super) const CIFAR100_COARSE: CifarFormat = CifarFormat {
    use_label: 0,
    ..CIFAR100_FINE
};

/// Reads CIFAR binary batches and concatenates them; `source_dir` is the path the user gave,
/// for the hint when files are missing.
pub(super) fn read_cifar(
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
