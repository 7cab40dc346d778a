//! Runs a child process to completion and reports what it cost: wall time and its own peak
//! resident memory, from `wait4`'s `rusage` (`getrusage(RUSAGE_CHILDREN)` would report the
//! largest of *all* children so far, not this one). Shared by the fuzz test and the plan
//! bench (`#[path]`-included: a file in a subdirectory of `tests/` is no test of its own).

// Each includer reads the fields it needs.
#![allow(dead_code)]

use std::io::Read;
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

pub struct Measured {
    pub status: ExitStatus,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// Peak resident set size of the child, in KiB (Linux reports `ru_maxrss` in KiB).
    pub max_rss_kib: u64,
    pub wall: Duration,
}

/// Runs `cmd` with its stdout and stderr captured (read on threads, so a child that writes
/// a lot never blocks on a full pipe).
// The child is reaped by `wait4` below, which clippy does not see.
#[allow(clippy::zombie_processes)]
pub fn run(cmd: &mut Command) -> Measured {
    let start = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the child");
    let drain = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = r.read_to_end(&mut buf);
            buf
        })
    };
    let out = drain(Box::new(child.stdout.take().expect("piped")));
    let err = drain(Box::new(child.stderr.take().expect("piped")));
    let pid = child.id() as libc::pid_t;
    let mut status: libc::c_int = 0;
    // SAFETY: `rusage` is plain old data that wait4 fills in; the pid is our own child, which
    // std has not reaped (we never call `Child::wait`).
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let rc = loop {
        let rc = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
        if rc != -1 || std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
            break rc;
        }
    };
    assert_eq!(rc, pid, "wait4: {}", std::io::Error::last_os_error());
    let wall = start.elapsed();
    Measured {
        status: ExitStatus::from_raw(status),
        stdout: out.join().expect("stdout reader"),
        stderr: err.join().expect("stderr reader"),
        max_rss_kib: usage.ru_maxrss.max(0) as u64,
        wall,
    }
}
