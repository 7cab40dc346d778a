//! Per-key locks: two coordinators on the same runs directory never train the same stage at
//! the same time. A lock is an `flock` on `runs/locks/<key>.lock`, held by the coordinator
//! while the stage runs; the kernel drops it when the process dies, so a `kill -9` never
//! leaves a stale lock behind.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

/// A held lock; released on drop.
#[derive(Debug)]
pub struct KeyLock {
    file: File,
    path: PathBuf,
}

impl KeyLock {
    /// Takes the lock of `key` under `dir` if nobody holds it (None if somebody does).
    pub fn try_acquire(dir: &Path, key: &str) -> io::Result<Option<KeyLock>> {
        fs::create_dir_all(dir)?;
        let path = dir.join(format!("{key}.lock"));
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)?;
        // SAFETY: flock on a file descriptor we own.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc == 0 {
            Ok(Some(KeyLock { file, path }))
        } else {
            let err = io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
                Ok(None)
            } else {
                Err(err)
            }
        }
    }

    /// Whether some process holds the lock of `key` right now.
    pub fn is_held(dir: &Path, key: &str) -> bool {
        if !dir.join(format!("{key}.lock")).exists() {
            return false;
        }
        matches!(KeyLock::try_acquire(dir, key), Ok(None))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for KeyLock {
    fn drop(&mut self) {
        // SAFETY: unlocking our own descriptor; closing it would release the lock anyway.
        unsafe {
            libc::flock(self.file.as_raw_fd(), libc::LOCK_UN);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lock_excludes_others_until_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let a = KeyLock::try_acquire(dir.path(), "k")
            .unwrap()
            .expect("free");
        // flock locks belong to the open file description: a second open in the same
        // process conflicts, as a second coordinator would.
        assert!(KeyLock::try_acquire(dir.path(), "k").unwrap().is_none());
        assert!(KeyLock::is_held(dir.path(), "k"));
        assert!(KeyLock::try_acquire(dir.path(), "other").unwrap().is_some());
        drop(a);
        assert!(!KeyLock::is_held(dir.path(), "k"));
        assert!(KeyLock::try_acquire(dir.path(), "k").unwrap().is_some());
    }
}
