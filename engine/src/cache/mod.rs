//! The content-addressed stage cache: `cache/<key>/` holds a finished stage's artifacts, its
//! `manifest.json` (what was hashed into the key), `result.json` and `seal.json` (written
//! last): the SHA-256 of every other file of the entry.
//!
//! A stage is done exactly when its directory exists with a seal whose checksums hold for
//! every file it lists — `result.json` and `manifest.json` included, so an edited metric is
//! caught like a flipped byte in the weights. Directories appear only by `rename` of a fully
//! written temporary directory, so a killed stage leaves at most a `<key>.tmp-*` directory,
//! never a partial entry. The SQLite store is derived from this directory and can be rebuilt
//! from it.
//!
//! The seal detects damage and edits made by hand; it is not a signature (whoever rewrites
//! the seal too can make the entry say anything). An entry without a seal was written by an
//! rkd-orch before seals existed: its metrics cannot be verified, so it is treated like a
//! corrupt one (moved to `cache/corrupt/` and rebuilt, with the same key and, training being
//! deterministic, the same numbers).

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};

use crate::ml::data::hex;
use crate::spec::StageResult;

pub mod derived;
pub mod layout;

pub use layout::RunsLayout;

pub const RESULT_FILE: &str = "result.json";
pub const MANIFEST_FILE: &str = "manifest.json";
pub const SEAL_FILE: &str = "seal.json";
/// The layout of `seal.json`; a seal of another format is not trusted.
const SEAL_FORMAT: u32 = 1;

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

/// `seal.json`: the checksum of every file of a committed entry but itself.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Seal {
    format: u32,
    key: String,
    /// File name → SHA-256.
    files: BTreeMap<String, String>,
}

/// Gives a file the mode a plain `create` would have given it (0666 less the umask).
/// Some writers create files with mode 0600 — the safetensors crate writes through a
/// `tempfile`, which is private by design — and collaborators sharing a runs directory must
/// be able to read the checkpoints like every other file.
pub fn honour_umask(path: &Path) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let Some(umask) = umask() else {
        return Ok(()); // unknown: keep the writer's (stricter) mode
    };
    fs::set_permissions(path, fs::Permissions::from_mode(0o666 & !umask))
}

/// The process's umask, read from `/proc/self/status`: the `umask(2)` call can only read it
/// by setting it, which would race with other threads creating files.
fn umask() -> Option<u32> {
    static UMASK: std::sync::OnceLock<Option<u32>> = std::sync::OnceLock::new();
    *UMASK.get_or_init(|| {
        let status = fs::read_to_string("/proc/self/status").ok()?;
        let line = status.lines().find_map(|l| l.strip_prefix("Umask:"))?;
        u32::from_str_radix(line.trim(), 8).ok()
    })
}

/// `dir/stem`, or `dir/stem-1`, `dir/stem-2`, … if that name (or that name followed by one
/// of `sidecars`, such as SQLite's `-wal`) is taken: a name derived from the clock can repeat
/// within one second.
pub fn unique_path(dir: &Path, stem: &str, sidecars: &[&str]) -> PathBuf {
    let taken = |p: &PathBuf| {
        p.exists()
            || sidecars
                .iter()
                .any(|s| Path::new(&format!("{}{s}", p.display())).exists())
    };
    let mut path = dir.join(stem);
    let mut n = 0;
    while taken(&path) {
        n += 1;
        path = dir.join(format!("{stem}-{n}"));
    }
    path
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
        layout::entry(&self.root, key)
    }

    /// The epoch checkpoints of stage `key` (see `stage::checkpoint`).
    pub fn checkpoints(&self, key: &str) -> PathBuf {
        layout::checkpoints(&self.root, key)
    }

    pub fn create_tmp(&self, key: &str) -> io::Result<TmpDir> {
        static SEQ: AtomicU64 = AtomicU64::new(0);
        fs::create_dir_all(&self.root)?;
        let path = layout::tmp_entry(
            &self.root,
            key,
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed),
        );
        fs::create_dir(&path)?;
        Ok(TmpDir { path, keep: false })
    }

    /// Writes the manifest, the result and the seal (last), syncs, and renames the directory
    /// into place. If another process committed the same key meanwhile, ours is discarded:
    /// both computed the same content.
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
        let mut files = BTreeMap::new();
        for e in fs::read_dir(&tmp.path)? {
            let e = e?;
            let name = e.file_name().to_string_lossy().into_owned();
            if e.file_type()?.is_file() && name != SEAL_FILE {
                honour_umask(&e.path())?;
                // The artifacts were hashed for the result moments ago, by this process.
                let sum = match result.artifacts.get(&name) {
                    Some(sum) => sum.clone(),
                    None => sha256_file(&e.path())?,
                };
                files.insert(name, sum);
            }
        }
        let seal = Seal {
            format: SEAL_FORMAT,
            key: result.key.clone(),
            files,
        };
        write_synced(&tmp.path.join(SEAL_FILE), &serde_json::to_vec(&seal)?)?;
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

    /// Whether `key` is done: the seal lists `result.json`, `manifest.json` and every
    /// artifact, and every file it lists matches its checksum.
    pub fn lookup(&self, key: &str) -> Lookup {
        let dir = self.entry(key);
        if !dir.exists() {
            return Lookup::Missing;
        }
        match verify(&dir, key) {
            Ok(result) => Lookup::Done(Box::new(result)),
            Err(why) => Lookup::Corrupt(why),
        }
    }

    /// Moves a corrupt entry out of the way (into `cache/corrupt/`) so it is rebuilt, while
    /// keeping it for inspection.
    pub fn quarantine(&self, key: &str) -> io::Result<PathBuf> {
        let dir = layout::corrupt(&self.root);
        fs::create_dir_all(&dir)?;
        // Unique: the same key may be quarantined twice within a second.
        let dest = unique_path(&dir, &format!("{key}-{}", unix_now()), &[]);
        fs::rename(self.entry(key), &dest)?;
        Ok(dest)
    }

    /// Removes temporary directories left by killed stage processes for `key`.
    pub fn remove_stale_tmp(&self, key: &str) {
        let prefix = format!("{key}{}", layout::TMP_MARK);
        if let Ok(rd) = fs::read_dir(&self.root) {
            for e in rd.flatten() {
                if e.file_name().to_string_lossy().starts_with(&prefix) {
                    let _ = fs::remove_dir_all(e.path());
                }
            }
        }
    }
}

/// Checks the entry in `dir` against its seal; returns its result, or why it is not trusted.
fn verify(dir: &Path, key: &str) -> Result<StageResult, String> {
    let seal_bytes = match fs::read(dir.join(SEAL_FILE)) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(format!(
                "no {SEAL_FILE}: written by an older rkd-orch, so its {RESULT_FILE} and \
                 {MANIFEST_FILE} cannot be verified"
            ))
        }
        Err(e) => return Err(format!("{SEAL_FILE} unreadable: {e}")),
    };
    let seal: Seal = serde_json::from_slice(&seal_bytes)
        .map_err(|e| format!("{SEAL_FILE} is not valid: {e}"))?;
    if seal.format != SEAL_FORMAT {
        return Err(format!(
            "{SEAL_FILE} has format {}, this rkd-orch writes {SEAL_FORMAT}",
            seal.format
        ));
    }
    if seal.key != key {
        return Err(format!("{SEAL_FILE} belongs to key {}", seal.key));
    }
    for required in [RESULT_FILE, MANIFEST_FILE] {
        if !seal.files.contains_key(required) {
            return Err(format!("{SEAL_FILE} does not cover {required}"));
        }
    }
    let mut result_bytes = Vec::new();
    for (file, want) in &seal.files {
        // `result.json` is hashed from the bytes that are parsed below: what is checked is
        // what is served.
        let got = if file == RESULT_FILE {
            result_bytes =
                fs::read(dir.join(file)).map_err(|e| format!("{file} unreadable: {e}"))?;
            hex(&Sha256::digest(&result_bytes))
        } else {
            sha256_file(&dir.join(file)).map_err(|e| format!("{file} unreadable: {e}"))?
        };
        if &got != want {
            return Err(format!("{file} does not match its checksum"));
        }
    }
    let result: StageResult = serde_json::from_slice(&result_bytes)
        .map_err(|e| format!("{RESULT_FILE} is not valid: {e}"))?;
    if result.key != key {
        return Err(format!("{RESULT_FILE} belongs to key {}", result.key));
    }
    // The artifacts' own checksums (in the result) agree with the seal's, which has just
    // verified the files: no need to hash them twice.
    for (file, want) in &result.artifacts {
        if seal.files.get(file) != Some(want) {
            return Err(format!("{file} does not match its checksum"));
        }
    }
    Ok(result)
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

    /// Commits an entry `key` with one artifact, `w.bin`.
    fn committed(cache: &Cache, key: &str) {
        let tmp = cache.create_tmp(key).unwrap();
        fs::write(tmp.path().join("w.bin"), b"weights").unwrap();
        let sum = sha256_file(&tmp.path().join("w.bin")).unwrap();
        let r = result(key, BTreeMap::from([("w.bin".to_string(), sum)]));
        cache
            .commit(tmp, &r, &serde_json::json!({"kind": "train"}))
            .unwrap();
    }

    fn corrupt_reason(cache: &Cache, key: &str) -> String {
        match cache.lookup(key) {
            Lookup::Corrupt(why) => why,
            other => panic!("expected corrupt, got {other:?}"),
        }
    }

    #[test]
    fn the_seal_covers_the_result_and_the_manifest() {
        let root = tempfile::tempdir().unwrap();
        let cache = Cache::new(root.path());
        for file in [RESULT_FILE, MANIFEST_FILE] {
            committed(&cache, "k4");
            let path = cache.entry("k4").join(file);
            // An edit that keeps the file valid JSON (a metric, a configuration value).
            let text = fs::read_to_string(&path).unwrap();
            fs::write(&path, text.replacen("\"train\"", "\"distill\"", 1)).unwrap();
            let why = corrupt_reason(&cache, "k4");
            assert!(why.contains(file) && why.contains("checksum"), "{why}");
            cache.quarantine("k4").unwrap();
        }
        // A file the seal does not list (an editor's swap file) is not part of the entry.
        committed(&cache, "k5");
        fs::write(cache.entry("k5").join(".result.json.swp"), b"x").unwrap();
        assert!(matches!(cache.lookup("k5"), Lookup::Done(_)));
        // Removing a sealed file is caught.
        fs::remove_file(cache.entry("k5").join("w.bin")).unwrap();
        assert!(corrupt_reason(&cache, "k5").contains("w.bin unreadable"));
    }

    #[test]
    fn an_entry_without_a_seal_is_not_trusted() {
        let root = tempfile::tempdir().unwrap();
        let cache = Cache::new(root.path());
        committed(&cache, "k6");
        // As the previous engine left it: result and manifest, no seal.
        fs::remove_file(cache.entry("k6").join(SEAL_FILE)).unwrap();
        let why = corrupt_reason(&cache, "k6");
        assert!(why.contains("older rkd-orch"), "{why}");
        // A seal of another entry, or of an unknown format, is refused too.
        committed(&cache, "k7");
        fs::copy(
            cache.entry("k7").join(SEAL_FILE),
            cache.entry("k6").join(SEAL_FILE),
        )
        .unwrap();
        assert!(corrupt_reason(&cache, "k6").contains("belongs to key k7"));
        let seal = cache.entry("k7").join(SEAL_FILE);
        let text = fs::read_to_string(&seal).unwrap();
        fs::write(&seal, text.replace("\"format\":1", "\"format\":9")).unwrap();
        assert!(corrupt_reason(&cache, "k7").contains("format 9"));
    }

    #[test]
    fn committed_files_honour_the_umask() {
        use std::os::unix::fs::PermissionsExt;
        let root = tempfile::tempdir().unwrap();
        let cache = Cache::new(root.path());
        let tmp = cache.create_tmp("k8").unwrap();
        let private = tmp.path().join("w.bin");
        fs::write(&private, b"weights").unwrap();
        // As the safetensors crate leaves its files.
        fs::set_permissions(&private, fs::Permissions::from_mode(0o600)).unwrap();
        let sum = sha256_file(&private).unwrap();
        let r = result("k8", BTreeMap::from([("w.bin".to_string(), sum)]));
        cache.commit(tmp, &r, &serde_json::json!({})).unwrap();
        let want = 0o666 & !umask().expect("Linux reports the umask");
        for e in fs::read_dir(cache.entry("k8")).unwrap() {
            let e = e.unwrap();
            let mode = e.metadata().unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, want, "{:?}: {mode:o}", e.file_name());
        }
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
