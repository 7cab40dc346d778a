//! The one layout of a runs directory: every path under it is made here, and every name
//! found in it is parsed here (for `gc`), so the naming schemes are written once.
//!
//! ```text
//! runs/
//!   results.sqlite           the store (derived from cache/ and recipes/)
//!   cache/<key>/             a committed stage (see the module above)
//!   cache/<key>.tmp-<pid>-<n>/   a stage being written, or left by a killed one
//!   cache/<key>.ckpt/        epoch checkpoints of a stage that trains
//!   cache/corrupt/<key>-<unix time>[-n]/   entries moved aside because they failed their seal
//!   cache/derived/<kind>-<teacher key>-<id>.<ext>   artifacts shared by the students of one teacher
//!   logs/<key>.log           a stage process's stderr
//!   specs/<key>.json         the spec a stage process reads
//!   locks/<name>.lock        flocks: one per stage key, one per invocation
//!   recipes/<recipe>.json    the stage bindings of each recipe's last run
//! ```

use std::path::{Path, PathBuf};

use super::Cache;

pub const DB_FILE: &str = "results.sqlite";
const CACHE_DIR: &str = "cache";
/// Marks a temporary entry: `<key>.tmp-<pid>-<n>`.
pub const TMP_MARK: &str = ".tmp-";
const CKPT_SUFFIX: &str = ".ckpt";
const CORRUPT_DIR: &str = "corrupt";
const DERIVED_DIR: &str = "derived";
const LOG_EXT: &str = "log";
const SPEC_EXT: &str = "json";

/// A runs directory and the paths under it.
#[derive(Clone, Debug)]
pub struct RunsLayout {
    pub root: PathBuf,
}

impl RunsLayout {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }
    pub fn cache(&self) -> Cache {
        Cache::new(self.cache_root())
    }
    pub fn cache_root(&self) -> PathBuf {
        self.root.join(CACHE_DIR)
    }
    pub fn db(&self) -> PathBuf {
        self.root.join(DB_FILE)
    }
    pub fn logs(&self) -> PathBuf {
        self.root.join("logs")
    }
    /// The log of stage `key`.
    pub fn log(&self, key: &str) -> PathBuf {
        self.logs().join(format!("{key}.{LOG_EXT}"))
    }
    pub fn specs(&self) -> PathBuf {
        self.root.join("specs")
    }
    /// The spec file of stage `key`.
    pub fn spec(&self, key: &str) -> PathBuf {
        self.specs().join(format!("{key}.{SPEC_EXT}"))
    }
    pub fn locks(&self) -> PathBuf {
        self.root.join("locks")
    }
    /// Snapshots of each recipe's stage bindings (`<recipe>.json`).
    pub fn recipes(&self) -> PathBuf {
        self.root.join("recipes")
    }
    /// The snapshot of recipe `name` (a name the recipe parser has checked).
    pub fn snapshot(&self, name: &str) -> PathBuf {
        self.recipes().join(format!("{name}.json"))
    }

    /// The stage key a file under `logs/` or `specs/` belongs to, if it is named like one.
    pub fn key_of_log_or_spec(file_name: &str) -> Option<&str> {
        file_name
            .strip_suffix(&format!(".{LOG_EXT}"))
            .or_else(|| file_name.strip_suffix(&format!(".{SPEC_EXT}")))
    }
}

/// The paths under a cache root (`runs/cache`), which a stage process knows without the rest
/// of the runs directory.
pub fn entry(cache_root: &Path, key: &str) -> PathBuf {
    cache_root.join(key)
}
pub fn tmp_entry(cache_root: &Path, key: &str, pid: u32, seq: u64) -> PathBuf {
    cache_root.join(format!("{key}{TMP_MARK}{pid}-{seq}"))
}
/// The epoch checkpoints of stage `key`, next to its future entry.
pub fn checkpoints(cache_root: &Path, key: &str) -> PathBuf {
    cache_root.join(format!("{key}{CKPT_SUFFIX}"))
}
pub fn corrupt(cache_root: &Path) -> PathBuf {
    cache_root.join(CORRUPT_DIR)
}
/// Artifacts shared by the stages of one teacher (teacher tables, k-means superclasses).
pub fn derived(cache_root: &Path) -> PathBuf {
    cache_root.join(DERIVED_DIR)
}
/// The file name of a derived artifact: `<kind>-<teacher key>-<id>.<ext>`, named after the
/// teacher so that `gc` drops it with the teacher.
pub fn derived_name(kind: &str, teacher_key: &str, id: &str, ext: &str) -> String {
    format!("{kind}-{teacher_key}-{id}.{ext}")
}

pub fn is_key(name: &str) -> bool {
    name.len() == 32 && name.chars().all(|c| c.is_ascii_hexdigit())
}

/// What a name directly under the cache root is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheName<'a> {
    /// A committed entry.
    Entry(&'a str),
    /// A temporary entry of `key`, written by process `pid` (if the name holds one).
    Tmp {
        key: &'a str,
        pid: Option<i32>,
    },
    Checkpoints(&'a str),
    Corrupt,
    Derived,
    Other,
}

impl<'a> CacheName<'a> {
    pub fn parse(name: &'a str) -> CacheName<'a> {
        if is_key(name) {
            CacheName::Entry(name)
        } else if let Some((key, rest)) = name.split_once(TMP_MARK) {
            let pid = rest.split('-').next().and_then(|p| p.parse().ok());
            CacheName::Tmp { key, pid }
        } else if let Some(key) = name.strip_suffix(CKPT_SUFFIX) {
            CacheName::Checkpoints(key)
        } else if name == CORRUPT_DIR {
            CacheName::Corrupt
        } else if name == DERIVED_DIR {
            CacheName::Derived
        } else {
            CacheName::Other
        }
    }
}

/// The teacher key in the name of a derived artifact (see [`derived_name`]). Files of the
/// older unnamed form have none: their teacher cannot be told.
pub fn teacher_of_derived(file_name: &str) -> Option<&str> {
    file_name
        .split_once('-')
        .map(|(_, rest)| rest)
        .and_then(|rest| rest.get(..32))
        .filter(|k| is_key(k))
}

#[cfg(test)]
mod tests {
    use super::*;

    const K: &str = "0123456789abcdef0123456789abcdef";

    #[test]
    fn every_name_it_makes_it_parses_back() {
        let root = Path::new("/r/cache");
        let name = |p: PathBuf| p.file_name().unwrap().to_string_lossy().into_owned();
        assert_eq!(CacheName::parse(&name(entry(root, K))), CacheName::Entry(K));
        assert_eq!(
            CacheName::parse(&name(tmp_entry(root, K, 42, 7))),
            CacheName::Tmp {
                key: K,
                pid: Some(42)
            }
        );
        assert_eq!(
            CacheName::parse(&name(checkpoints(root, K))),
            CacheName::Checkpoints(K)
        );
        assert_eq!(CacheName::parse(&name(corrupt(root))), CacheName::Corrupt);
        assert_eq!(CacheName::parse(&name(derived(root))), CacheName::Derived);
        assert_eq!(CacheName::parse("notes.txt"), CacheName::Other);
        let d = derived_name("kmeans", K, "00ff00ff00ff00ff", "json");
        assert_eq!(teacher_of_derived(&d), Some(K));
        assert_eq!(teacher_of_derived("kmeans-short.json"), None);
        let runs = RunsLayout::new("/r");
        for p in [runs.log(K), runs.spec(K)] {
            assert_eq!(RunsLayout::key_of_log_or_spec(&name(p)), Some(K));
        }
        assert_eq!(runs.cache_root(), root);
    }
}
