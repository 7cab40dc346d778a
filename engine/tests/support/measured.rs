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
    /// Empty when the output was only counted ([`run_counting`]).
    pub stdout: Vec<u8>,
    pub stdout_lines: usize,
    pub stderr: Vec<u8>,
    /// Peak resident set size of the child, in KiB (Linux reports `ru_maxrss` in KiB).
    pub max_rss_kib: u64,
    pub wall: Duration,
}

/// Runs `cmd` with its stdout and stderr captured (read on threads, so a child that writes
/// a lot never blocks on a full pipe).
pub fn run(cmd: &mut Command) -> Measured {
    measure(cmd, true)
}

/// Like [`run`], but stdout is only counted, not kept. Linux starts a child's `ru_maxrss` at
/// its parent's peak when it forks (the peak is carried across `exec`), so a parent that held
/// large outputs would inflate every later child's figure.
pub fn run_counting(cmd: &mut Command) -> Measured {
    measure(cmd, false)
}

// The child is reaped by `wait4` below, which clippy does not see.
#[allow(clippy::zombie_processes)]
fn measure(cmd: &mut Command, keep_stdout: bool) -> Measured {
    let start = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the child");
    // (bytes kept, lines read) of a pipe.
    let drain = |mut r: Box<dyn Read + Send>, keep: bool| {
        std::thread::spawn(move || {
            let (mut kept, mut lines) = (Vec::new(), 0);
            let mut buf = [0u8; 1 << 16];
            while let Ok(n @ 1..) = r.read(&mut buf) {
                lines += buf[..n].iter().filter(|&&b| b == b'\n').count();
                if keep {
                    kept.extend_from_slice(&buf[..n]);
                }
            }
            (kept, lines)
        })
    };
    let out = drain(Box::new(child.stdout.take().expect("piped")), keep_stdout);
    let err = drain(Box::new(child.stderr.take().expect("piped")), true);
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
    let (stdout, stdout_lines) = out.join().expect("stdout reader");
    Measured {
        status: ExitStatus::from_raw(status),
        stdout,
        stdout_lines,
        stderr: err.join().expect("stderr reader").0,
        max_rss_kib: usage.ru_maxrss.max(0) as u64,
        wall,
    }
}
