//! The local executor: each stage a child process of the coordinator (`rkd-orch stage
//! --spec runs/specs/<key>.json`), in its own process group, its stderr the stage's log
//! (`runs/logs/<key>.log`), its stdout the JSON lines of its progress events, read by a
//! thread per stage.

use std::collections::BTreeMap;
use std::fs;
use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use super::executor::{Ended, Executor, Report, STAGE_EXIT_NONFINITE};
use super::slots::Slot;
use super::{io, signals, RunError, RunsDir};
use crate::spec::{Event, StageSpec};

enum Msg {
    Event(usize, Event),
    Exit(usize, std::io::Result<ExitStatus>),
}

pub struct Local {
    runs: RunsDir,
    tx: mpsc::Sender<Msg>,
    rx: mpsc::Receiver<Msg>,
    /// The process group of each started stage that has not been reported ended.
    groups: BTreeMap<usize, u32>,
}

impl Local {
    pub fn new(runs: &RunsDir) -> Self {
        let (tx, rx) = mpsc::channel();
        Local {
            runs: runs.clone(),
            tx,
            rx,
            groups: BTreeMap::new(),
        }
    }
}

impl Executor for Local {
    fn start(&mut self, stage: usize, spec: &StageSpec, slot: &Slot) -> Result<(), RunError> {
        let spec_path = self.runs.spec(&spec.key);
        fs::write(
            &spec_path,
            serde_json::to_vec_pretty(spec).expect("serialisable spec"),
        )
        .map_err(io("cannot write", &spec_path))?;
        let log_path = self.log(&spec.key);
        let log = fs::File::create(&log_path).map_err(io("cannot create", &log_path))?;
        let exe = std::env::current_exe().map_err(io("cannot locate", Path::new("rkd-orch")))?;
        let mut cmd = Command::new(exe);
        cmd.arg("stage")
            .arg("--spec")
            .arg(&spec_path)
            .envs(slot.env())
            // Backtraces are slow to capture in hot loops and the stage reports its own errors.
            .env("RUST_BACKTRACE", "0")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            // Its own process group: a Ctrl-C on the terminal reaches the coordinator only,
            // which forwards it (and can kill the whole group, helpers included).
            .process_group(0);
        // SAFETY: prctl is async-signal-safe; between fork and exec nothing else runs.
        unsafe {
            cmd.pre_exec(|| {
                // If the coordinator dies (even by kill -9), its stages die with it instead of
                // running on unobserved; the next run resumes them from their checkpoints.
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let mut child = cmd
            .spawn()
            .map_err(io("cannot start a stage process for", &spec_path))?;
        self.groups.insert(stage, child.id());
        let stdout = child.stdout.take().expect("piped");
        let tx = self.tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Ok(ev) = serde_json::from_str::<Event>(&line) {
                    let _ = tx.send(Msg::Event(stage, ev));
                }
            }
            let _ = tx.send(Msg::Exit(stage, child.wait()));
        });
        Ok(())
    }

    fn wait(&mut self, timeout: Duration) -> Option<Report> {
        match self.rx.recv_timeout(timeout).ok()? {
            Msg::Event(i, ev) => Some(Report::Event(i, ev)),
            Msg::Exit(i, status) => {
                self.groups.remove(&i);
                Some(Report::Exit(i, ended(status)))
            }
        }
    }

    fn signal(&mut self, stage: usize, signal: i32) {
        if let Some(&pgid) = self.groups.get(&stage) {
            signals::signal_group(pgid, signal);
        }
    }

    fn log(&self, key: &str) -> PathBuf {
        self.runs.log(key)
    }

    fn log_tail(&self, key: &str, n: usize) -> Vec<String> {
        log_tail(&self.log(key), n)
    }
}

fn ended(status: std::io::Result<ExitStatus>) -> Ended {
    match status {
        Ok(st) if st.success() => Ended::Success,
        Ok(st) => Ended::Failure {
            why: format!("stage process {}", describe_exit(st)),
            nonfinite: st.code() == Some(STAGE_EXIT_NONFINITE),
        },
        Err(e) => Ended::Failure {
            why: format!("cannot wait for the stage process: {e}"),
            nonfinite: false,
        },
    }
}

fn describe_exit(st: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (st.code(), st.signal()) {
        (Some(c), _) => format!("exited with status {c}"),
        (None, Some(sig)) => format!("was killed by signal {sig}"),
        _ => "ended abnormally".into(),
    }
}

/// The last `n` lines of a stage's log, from at most its last 64 KiB: a log can be huge, or
/// not a regular file at all.
fn log_tail(path: &Path, n: usize) -> Vec<String> {
    use std::io::{Read, Seek, SeekFrom};
    const MAX: u64 = 64 << 10;
    let mut bytes = Vec::new();
    if let Ok(mut f) = fs::File::open(path) {
        let len = f.metadata().map(|m| m.len()).unwrap_or(0);
        let _ = f.seek(SeekFrom::Start(len.saturating_sub(MAX)));
        let _ = f.take(MAX).read_to_end(&mut bytes);
    }
    let text = String::from_utf8_lossy(&bytes);
    let lines: Vec<String> = text.lines().map(str::to_string).collect();
    lines[lines.len().saturating_sub(n)..].to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;

    #[test]
    fn exits_are_described_for_people() {
        assert_eq!(ended(Ok(ExitStatus::from_raw(0))), Ended::Success);
        assert_eq!(
            ended(Ok(ExitStatus::from_raw(1 << 8))),
            Ended::Failure {
                why: "stage process exited with status 1".into(),
                nonfinite: false
            }
        );
        assert_eq!(
            ended(Ok(ExitStatus::from_raw(STAGE_EXIT_NONFINITE << 8))),
            Ended::Failure {
                why: "stage process exited with status 3".into(),
                nonfinite: true
            }
        );
        assert_eq!(
            ended(Ok(ExitStatus::from_raw(9))),
            Ended::Failure {
                why: "stage process was killed by signal 9".into(),
                nonfinite: false
            }
        );
    }

    #[test]
    fn the_log_tail_is_its_last_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.log");
        let text: String = (0..100).map(|i| format!("line {i}\n")).collect();
        fs::write(&path, text).unwrap();
        assert_eq!(log_tail(&path, 2), vec!["line 98", "line 99"]);
        assert!(log_tail(&dir.path().join("missing"), 3).is_empty());
    }
}
