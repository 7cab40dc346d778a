//! Derived artifacts: what several stages compute from one teacher (its outputs on the
//! training split, a k-means clustering of its embeddings) is computed once and kept in
//! `cache/derived/`, so the students of a teacher share it.
//!
//! An artifact is named by its kind, the teacher's key and a digest of everything else it
//! depends on — *content* only (the data's fingerprint, never its path), so moving the data
//! reuses it. It is written beside a `.sha256` of its bytes; the checksum lands first, and a
//! file without a matching checksum is recomputed, never trusted. Sharing is best effort: a
//! stage that cannot write the artifact still goes on with what it computed.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::layout;
use super::{honour_umask, sha256_file};
use crate::ml::data::hex;

/// One derived artifact: where it lives and how it is checked.
#[derive(Debug, Clone)]
pub struct Derived {
    /// What it is, for messages (`teacher outputs`, `superclasses`).
    what: &'static str,
    dir: PathBuf,
    stem: String,
    ext: &'static str,
}

impl Derived {
    /// The artifact of `kind` (a file-name prefix) derived from the teacher `teacher_key`,
    /// identified by the digest of `parts` (which should begin with a versioned tag).
    pub fn new(
        what: &'static str,
        cache_root: &Path,
        kind: &str,
        ext: &'static str,
        teacher_key: &str,
        parts: &[&[u8]],
    ) -> Derived {
        let mut h = Sha256::new();
        for p in parts {
            h.update(p);
        }
        let id = &hex(&h.finalize())[..16];
        let name = layout::derived_name(kind, teacher_key, id, ext);
        let stem = name
            .strip_suffix(&format!(".{ext}"))
            .expect("derived_name ends with the extension")
            .to_string();
        Derived {
            what,
            dir: layout::derived(cache_root),
            stem,
            ext,
        }
    }

    pub fn path(&self) -> PathBuf {
        self.dir.join(format!("{}.{}", self.stem, self.ext))
    }

    fn sum_path(&self) -> PathBuf {
        self.dir.join(format!("{}.sha256", self.stem))
    }

    /// The artifact: read by `load` if it is there with a matching checksum and `load` accepts
    /// it (it must check every size it reads); otherwise `compute`d and shared by `save`.
    pub fn get_or_compute<T, E>(
        &self,
        load: impl FnOnce(&Path) -> Option<T>,
        compute: impl FnOnce() -> Result<T, E>,
        save: impl FnOnce(&T, &Path) -> anyhow::Result<()>,
    ) -> Result<T, E> {
        let path = self.path();
        if let (Ok(want), true) = (std::fs::read_to_string(self.sum_path()), path.exists()) {
            match sha256_file(&path) {
                Ok(got) if got == want.trim() => {
                    if let Some(t) = load(&path) {
                        eprintln!("{}: reusing {}", self.what, path.display());
                        return Ok(t);
                    }
                }
                _ => eprintln!(
                    "{}: {} does not match its checksum; recomputing",
                    self.what,
                    path.display()
                ),
            }
        }
        let value = compute()?;
        if let Err(e) = self.commit(&value, save) {
            eprintln!("{}: not shared ({e})", self.what);
        }
        Ok(value)
    }

    /// Writes the artifact under temporary names and renames it into place, its checksum
    /// first: a file is never trusted without its checksum.
    fn commit<T>(
        &self,
        value: &T,
        save: impl FnOnce(&T, &Path) -> anyhow::Result<()>,
    ) -> anyhow::Result<()> {
        std::fs::create_dir_all(&self.dir)?;
        let pid = std::process::id();
        let tmp = self.dir.join(format!("{}.tmp-{pid}", self.stem));
        save(value, &tmp)?;
        honour_umask(&tmp)?;
        let sum = sha256_file(&tmp)?;
        let sum_tmp = self.dir.join(format!("{}.sha256.tmp-{pid}", self.stem));
        std::fs::write(&sum_tmp, &sum)?;
        honour_umask(&sum_tmp)?;
        std::fs::rename(&sum_tmp, self.sum_path())?;
        std::fs::rename(&tmp, self.path())?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: &str = "0123456789abcdef0123456789abcdef";

    fn computed(d: &Derived, value: u32, calls: &mut u32) -> u32 {
        d.get_or_compute(
            |p| std::fs::read_to_string(p).ok()?.parse().ok(),
            || -> Result<u32, std::io::Error> {
                *calls += 1;
                Ok(value)
            },
            |v, p| Ok(std::fs::write(p, v.to_string())?),
        )
        .unwrap()
    }

    #[test]
    fn computed_once_then_shared_and_recomputed_when_damaged() {
        let dir = tempfile::tempdir().unwrap();
        let d = Derived::new("test", dir.path(), "x", "txt", T, &[b"x-v1\0", b"a"]);
        let mut calls = 0;
        assert_eq!(computed(&d, 7, &mut calls), 7);
        assert_eq!(computed(&d, 8, &mut calls), 7, "read back, not recomputed");
        assert_eq!(calls, 1);
        assert_eq!(layout::teacher_of_derived(&d.stem), Some(T));
        // A changed byte fails the checksum: recomputed and rewritten.
        std::fs::write(d.path(), "9").unwrap();
        assert_eq!(computed(&d, 8, &mut calls), 8);
        assert_eq!(computed(&d, 5, &mut calls), 8);
        assert_eq!(calls, 2);
        // Other inputs, another artifact.
        let e = Derived::new("test", dir.path(), "x", "txt", T, &[b"x-v1\0", b"b"]);
        assert_ne!(d.path(), e.path());
        assert!(!dir.path().join("derived").read_dir().unwrap().any(|f| f
            .unwrap()
            .file_name()
            .to_string_lossy()
            .contains(".tmp-")));
    }
}
