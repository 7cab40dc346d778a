//! Ctrl-C and SIGTERM for the coordinator. The handler only counts signals (all a signal
//! handler may safely do); the scheduling loop polls the count, forwards the first signal to
//! every running stage's process group, and kills them at once on the second.

use std::sync::atomic::{AtomicI32, AtomicUsize, Ordering};

static COUNT: AtomicUsize = AtomicUsize::new(0);
static LAST: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_signal(sig: libc::c_int) {
    LAST.store(sig, Ordering::SeqCst);
    COUNT.fetch_add(1, Ordering::SeqCst);
}

/// Installs the counting handler for SIGINT and SIGTERM (once per process).
pub fn install() {
    // SAFETY: `on_signal` only touches atomics, which is async-signal-safe; the sigaction
    // struct is fully initialised before use.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_signal as *const () as usize;
        libc::sigemptyset(&mut sa.sa_mask);
        // Restart interrupted system calls: the loop notices the count on its next poll.
        sa.sa_flags = libc::SA_RESTART;
        libc::sigaction(libc::SIGINT, &sa, std::ptr::null_mut());
        libc::sigaction(libc::SIGTERM, &sa, std::ptr::null_mut());
    }
}

/// How many SIGINT/SIGTERM arrived so far, and the last one.
pub fn received() -> (usize, i32) {
    (COUNT.load(Ordering::SeqCst), LAST.load(Ordering::SeqCst))
}

/// Sends `sig` to the process group `pgid` (a stage process and anything it started).
pub fn signal_group(pgid: u32, sig: i32) {
    // SAFETY: kill(2) with a negative pid addresses a process group; a group that is already
    // gone just yields ESRCH.
    unsafe {
        libc::kill(-(pgid as libc::pid_t), sig);
    }
}

pub fn name(sig: i32) -> &'static str {
    match sig {
        libc::SIGINT => "SIGINT",
        libc::SIGTERM => "SIGTERM",
        libc::SIGKILL => "SIGKILL",
        _ => "a signal",
    }
}
