//! The content-addressed stage cache: `cache/<key>/` holds a finished stage's artifacts, its
//! `manifest.json` (what was hashed into the key) and `result.json` (written last).
//!
//! A stage is done exactly when its directory exists with a `result.json` whose artifact
//! checksums hold. Directories appear only by `rename` of a fully written temporary
//! directory, so a killed stage leaves at most a `<key>.tmp-*` directory, never a partial
//! entry. The SQLite store is derived from this directory and can be rebuilt from it.

use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};

use crate::ml::data::hex;
use crate::stage::spec::StageResult;

pub const RESULT_FILE: &str = "result.json";
pub const MANIFEST_FILE: &str = "manifest.json";
const TMP_MARK: &str = ".tmp-";

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

pub fn sha256_file(path: &Path) -> io::Result<String> {
    let mut f = fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex(&h.finalize()))
}

/// The state of one cache entry.
#[derive(Debug)]
pub enum Lookup {
    Done(Box<StageResult>),
    Missing,
    /// The entry exists but cannot be trusted; the reason says why.
    Corrupt(String),
}

#[derive(Clone, Debug)]
pub struct Cache {
    root: PathBuf,
}

/// A temporary stage directory, removed on drop unless committed.
pub struct TmpDir {
    path: PathBuf,
    keep: bool,
}

impl TmpDir {
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TmpDir {
    fn drop(&mut self) {
        if !self.keep {
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}

impl Cache {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn entry(&self, key: &str) -> PathBuf {
        self.root.join(key)
    }

    pub fn create_tmp(&self, key: &str) -> io::Result<TmpDir> {
        static SEQ: AtomicU64 = AtomicU64::new(0);
        fs::create_dir_all(&self.root)?;
        let path = self.root.join(format!(
            "{key}{TMP_MARK}{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        fs::create_dir(&path)?;
        Ok(TmpDir { path, keep: false })
    }

    /// Writes the manifest and the result (last), syncs, and renames the directory into
    /// place. If another process committed the same key meanwhile, ours is discarded: both
    /// computed the same content.
    pub fn commit(
        &self,
        mut tmp: TmpDir,
        result: &StageResult,
        manifest: &serde_json::Value,
    ) -> io::Result<()> {
        write_synced(
            &tmp.path.join(MANIFEST_FILE),
            &serde_json::to_vec_pretty(manifest)?,
        )?;
        write_synced(
            &tmp.path.join(RESULT_FILE),
            &serde_json::to_vec_pretty(result)?,
        )?;
        let target = self.entry(&result.key);
        if target.exists() {
            return Ok(()); // tmp dropped and removed
        }
        fs::rename(&tmp.path, &target)?;
        tmp.keep = true;
        // Make the rename itself durable.
        if let Ok(d) = fs::File::open(&self.root) {
            let _ = d.sync_all();
        }
        Ok(())
    }

    /// Whether `key` is done, verifying every artifact's checksum.
    pub fn lookup(&self, key: &str) -> Lookup {
        let dir = self.entry(key);
        if !dir.exists() {
            return Lookup::Missing;
        }
        let bytes = match fs::read(dir.join(RESULT_FILE)) {
            Ok(b) => b,
            Err(e) => return Lookup::Corrupt(format!("{RESULT_FILE} unreadable: {e}")),
        };
        let result: StageResult = match serde_json::from_slice(&bytes) {
            Ok(r) => r,
            Err(e) => return Lookup::Corrupt(format!("{RESULT_FILE} is not valid: {e}")),
        };
        if result.key != key {
            return Lookup::Corrupt(format!("{RESULT_FILE} belongs to key {}", result.key));
        }
        for (file, want) in &result.artifacts {
            match sha256_file(&dir.join(file)) {
                Ok(got) if &got == want => {}
                Ok(_) => return Lookup::Corrupt(format!("{file} does not match its checksum")),
                Err(e) => return Lookup::Corrupt(format!("{file} unreadable: {e}")),
            }
        }
        Lookup::Done(Box::new(result))
    }

    /// Moves a corrupt entry out of the way (into `cache/corrupt/`) so it is rebuilt, while
    /// keeping it for inspection.
    pub fn quarantine(&self, key: &str) -> io::Result<PathBuf> {
        let dir = self.root.join("corrupt");
        fs::create_dir_all(&dir)?;
        let dest = dir.join(format!("{key}-{}", unix_now()));
        fs::rename(self.entry(key), &dest)?;
        Ok(dest)
    }

    /// Removes temporary directories left by killed stage processes for `key`.
    pub fn remove_stale_tmp(&self, key: &str) {
        let prefix = format!("{key}{TMP_MARK}");
        if let Ok(rd) = fs::read_dir(&self.root) {
            for e in rd.flatten() {
                if e.file_name().to_string_lossy().starts_with(&prefix) {
                    let _ = fs::remove_dir_all(e.path());
                }
            }
        }
    }
}

fn write_synced(path: &Path, bytes: &[u8]) -> io::Result<()> {
    use std::io::Write;
    let mut f = fs::File::create(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn result(key: &str, artifacts: BTreeMap<String, String>) -> StageResult {
        StageResult {
            key: key.into(),
            kind: "train".into(),
            metrics: vec![],
            epochs: vec![],
            artifacts,
            checkpoint: "last_epoch".into(),
            wall_s: 0.0,
            threads: 1,
            device: "cpu".into(),
            engine_version: "test".into(),
            finished_unix: 0,
        }
    }

    #[test]
    fn commit_lookup_corruption_and_quarantine() {
        let root = tempfile::tempdir().unwrap();
        let cache = Cache::new(root.path().join("cache"));
        assert!(matches!(cache.lookup("k1"), Lookup::Missing));

        let tmp = cache.create_tmp("k1").unwrap();
        fs::write(tmp.path().join("w.bin"), b"weights").unwrap();
        let sum = sha256_file(&tmp.path().join("w.bin")).unwrap();
        let r = result("k1", BTreeMap::from([("w.bin".to_string(), sum)]));
        cache
            .commit(tmp, &r, &serde_json::json!({"kind": "train"}))
            .unwrap();
        assert!(matches!(cache.lookup("k1"), Lookup::Done(_)));
        assert!(cache.entry("k1").join(MANIFEST_FILE).exists());

        // Flip a byte: the entry is no longer trusted.
        fs::write(cache.entry("k1").join("w.bin"), b"weightz").unwrap();
        match cache.lookup("k1") {
            Lookup::Corrupt(why) => assert!(why.contains("checksum"), "{why}"),
            other => panic!("expected corrupt, got {other:?}"),
        }
        let moved = cache.quarantine("k1").unwrap();
        assert!(moved.exists());
        assert!(matches!(cache.lookup("k1"), Lookup::Missing));
    }

    #[test]
    fn dropped_tmp_dirs_vanish_and_stale_ones_are_cleaned() {
        let root = tempfile::tempdir().unwrap();
        let cache = Cache::new(root.path());
        let p = {
            let tmp = cache.create_tmp("k2").unwrap();
            tmp.path().to_path_buf()
        };
        assert!(!p.exists());
        let tmp = cache.create_tmp("k3").unwrap();
        let p3 = tmp.path().to_path_buf();
        std::mem::forget(tmp); // as if the process had been killed
        assert!(p3.exists());
        cache.remove_stale_tmp("k3");
        assert!(!p3.exists());
    }
}
