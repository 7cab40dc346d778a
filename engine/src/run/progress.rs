//! What a run shows while it works. On a terminal: an overall bar (stages done / total, ETA)
//! and one live line per running stage, redrawn in place, above which lasting events scroll.
//! Elsewhere (a log file, CI): plain lines, epoch lines throttled. `--quiet`: nothing but
//! errors. `--json`: one JSON object per event on stdout, for scripts.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::time::Instant;

use serde_json::{json, Value};

use crate::spec::Event;
use crate::text::{pad, Align};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Tty,
    Plain,
    Quiet,
    Json,
}

impl Mode {
    /// `--json` wins, then `--quiet`; otherwise a live display only when stderr is a
    /// terminal (and `TERM` is not `dumb`).
    pub fn choose(quiet: bool, json: bool) -> Mode {
        if json {
            Mode::Json
        } else if quiet {
            Mode::Quiet
        } else if std::io::stderr().is_terminal()
            && std::env::var("TERM").map_or(true, |t| t != "dumb")
        {
            Mode::Tty
        } else {
            Mode::Plain
        }
    }
}

/// A running stage's live line.
struct Live {
    text: String,
    device: String,
}

pub struct Progress {
    mode: Mode,
    width: usize,
    total: usize,
    finished: usize,
    /// Durations of the stages that ran here, for the ETA.
    durations: Vec<f64>,
    jobs: usize,
    live: BTreeMap<String, Live>,
    drawn: usize,
    last_draw: Option<Instant>,
    last_epoch_line: BTreeMap<String, Instant>,
    started: Instant,
}

impl Progress {
    pub fn new(mode: Mode, names: &[&str], jobs: usize) -> Self {
        Progress {
            mode,
            width: names
                .iter()
                .map(|n| n.chars().count())
                .max()
                .unwrap_or(5)
                .max(5),
            total: names.len(),
            finished: 0,
            durations: Vec::new(),
            jobs: jobs.max(1),
            live: BTreeMap::new(),
            drawn: 0,
            last_draw: None,
            last_epoch_line: BTreeMap::new(),
            started: Instant::now(),
        }
    }

    pub fn mode(&self) -> Mode {
        self.mode
    }

    fn json(&self, v: Value) {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{v}");
        let _ = out.flush();
    }

    /// A lasting line about `stage` (plain and terminal modes).
    fn line(&mut self, stage: &str, text: &str) {
        match self.mode {
            Mode::Plain => eprintln!("  {}  {text}", pad(stage, self.width, Align::Left)),
            Mode::Tty => {
                self.clear();
                eprintln!("  {}  {text}", pad(stage, self.width, Align::Left));
                self.draw(true);
            }
            Mode::Quiet | Mode::Json => {}
        }
    }

    /// A lasting line not about one stage.
    pub fn note(&mut self, text: &str) {
        match self.mode {
            Mode::Plain => eprintln!("{text}"),
            Mode::Tty => {
                self.clear();
                eprintln!("{text}");
                self.draw(true);
            }
            Mode::Quiet => {}
            Mode::Json => self.json(json!({"event": "note", "text": text})),
        }
    }

    /// An error: shown in every mode but JSON (where it is an event).
    pub fn error(&mut self, stage: &str, text: &str, detail: &[String]) {
        match self.mode {
            Mode::Json => {
                self.json(json!({"event": "error", "stage": stage, "text": text, "log": detail}))
            }
            _ => {
                self.clear();
                eprintln!("  {}  {text}", pad(stage, self.width, Align::Left));
                for l in detail {
                    eprintln!("    | {l}");
                }
                self.draw(true);
            }
        }
    }

    pub fn header(&mut self, recipe: &str, cached: usize, to_run: usize, slots: &str) {
        self.finished = cached;
        match self.mode {
            Mode::Json => self.json(json!({
                "event": "plan", "recipe": recipe, "stages": self.total,
                "cached": cached, "to_run": to_run, "slots": slots,
            })),
            Mode::Quiet => {}
            _ => {
                self.clear();
                eprintln!(
                    "{recipe}: {} stages, {cached} cached, {to_run} to run ({slots})",
                    self.total
                );
                self.draw(true);
            }
        }
    }

    pub fn cached(&mut self, stage: &str, key: &str) {
        if self.mode == Mode::Json {
            self.json(json!({"event": "cached", "stage": stage, "key": key}));
        } else {
            self.line(stage, &format!("cached   {key}"));
        }
    }

    pub fn started(&mut self, stage: &str, key: &str, kind: &str, device: &str) {
        self.live.insert(
            stage.to_string(),
            Live {
                text: "starting".into(),
                device: device.to_string(),
            },
        );
        if self.mode == Mode::Json {
            self.json(json!({"event": "started", "stage": stage, "key": key, "kind": kind, "device": device}));
        } else {
            self.line(stage, &format!("started  {key} ({kind}, {device})"));
        }
    }

    pub fn epoch(&mut self, stage: &str, text: String, value: Value, first_or_last: bool) {
        if let Some(l) = self.live.get_mut(stage) {
            l.text = text.clone();
        }
        match self.mode {
            Mode::Json => {
                let mut v = value;
                v["stage"] = json!(stage);
                self.json(v);
            }
            Mode::Plain => {
                // Long stages would flood a log: the first and last epoch, and at most one
                // line a second in between.
                let due = self
                    .last_epoch_line
                    .get(stage)
                    .is_none_or(|t| t.elapsed().as_secs_f64() >= 1.0);
                if first_or_last || due {
                    self.last_epoch_line
                        .insert(stage.to_string(), Instant::now());
                    self.line(stage, &text);
                }
            }
            Mode::Tty => self.draw(false),
            Mode::Quiet => {}
        }
    }

    pub fn metric(&mut self, stage: &str, name: &str, value: f64) {
        if self.mode == Mode::Json {
            self.json(json!({"event": "metric", "stage": stage, "name": name, "value": value}));
        } else {
            self.line(stage, &metric_text(name, value));
        }
    }

    /// Something the user should know before trusting the run's results: on stderr in
    /// every mode but JSON (`--quiet` included), a `warning` event there.
    pub fn warning(&mut self, text: &str, fields: Value) {
        match self.mode {
            Mode::Json => {
                let mut v = fields;
                v["event"] = json!("warning");
                v["text"] = json!(text);
                self.json(v);
            }
            _ => {
                self.clear();
                eprintln!("warning: {text}");
                self.draw(true);
            }
        }
    }

    pub fn resumed(&mut self, stage: &str, epoch: usize) {
        if self.mode == Mode::Json {
            self.json(json!({"event": "resumed", "stage": stage, "epoch": epoch}));
        } else {
            self.line(
                stage,
                &format!("resumed  from the checkpoint of epoch {epoch}"),
            );
        }
    }

    pub fn info(&mut self, stage: &str, text: &str) {
        if self.mode == Mode::Json {
            self.json(json!({"event": "info", "stage": stage, "text": text}));
        } else {
            self.line(stage, text);
        }
    }

    pub fn done(&mut self, stage: &str, secs: f64) {
        self.live.remove(stage);
        self.finished += 1;
        self.durations.push(secs);
        if self.mode == Mode::Json {
            self.json(json!({"event": "done", "stage": stage, "wall_s": secs}));
        } else {
            self.line(stage, &format!("done     in {secs:.1}s"));
        }
    }

    /// A stage that ended without a result (failed, interrupted, or to be retried).
    pub fn ended(&mut self, stage: &str, status: &str, secs: f64, why: &str, counts: bool) {
        self.live.remove(stage);
        if counts {
            self.finished += 1;
        }
        if self.mode == Mode::Json {
            self.json(json!({"event": status, "stage": stage, "wall_s": secs, "reason": why}));
        } else {
            let label = format!("{:<8}", status.to_uppercase());
            self.error(stage, &format!("{label} after {secs:.1}s: {why}"), &[]);
        }
    }

    pub fn skipped(&mut self, stage: &str, why: &str) {
        self.finished += 1;
        if self.mode == Mode::Json {
            self.json(json!({"event": "skipped", "stage": stage, "reason": why}));
        } else {
            self.line(stage, &format!("skipped  ({why})"));
        }
    }

    pub fn summary(&mut self, v: Value) {
        self.clear();
        self.live.clear();
        if self.mode == Mode::Json {
            let mut v = v;
            v["event"] = json!("summary");
            self.json(v);
        }
    }

    /// Erases the live block (terminal mode).
    fn clear(&mut self) {
        if self.mode != Mode::Tty || self.drawn == 0 {
            return;
        }
        let mut err = std::io::stderr().lock();
        for _ in 0..self.drawn {
            let _ = write!(err, "\x1b[1A\x1b[2K");
        }
        let _ = err.flush();
        self.drawn = 0;
    }

    /// Redraws the bar and the running stages (terminal mode), at most 10 times a second
    /// unless `force`.
    fn draw(&mut self, force: bool) {
        if self.mode != Mode::Tty {
            return;
        }
        if !force
            && self
                .last_draw
                .is_some_and(|t| t.elapsed().as_millis() < 100)
        {
            return;
        }
        self.clear();
        self.last_draw = Some(Instant::now());
        let mut err = std::io::stderr().lock();
        let cols = terminal_width();
        let done = self.finished.min(self.total);
        let bar_w = 30usize;
        let filled = (bar_w * done).checked_div(self.total).unwrap_or(bar_w);
        let eta = self
            .eta()
            .map_or(String::new(), |s| format!(", ETA {}", clock(s)));
        let head = format!(
            "[{}{}] {done}/{} stages, {} elapsed{eta}",
            "#".repeat(filled),
            "-".repeat(bar_w - filled),
            self.total,
            clock(self.started.elapsed().as_secs_f64()),
        );
        let _ = writeln!(err, "{}", truncate(&head, cols));
        let mut n = 1;
        for (stage, l) in &self.live {
            let text = format!(
                "  {}  {}  [{}]",
                pad(stage, self.width, Align::Left),
                l.text,
                l.device
            );
            let _ = writeln!(err, "{}", truncate(&text, cols));
            n += 1;
        }
        let _ = err.flush();
        self.drawn = n;
    }

    /// Remaining stages × mean duration of those that ran, spread over the slots.
    fn eta(&self) -> Option<f64> {
        if self.durations.is_empty() {
            return None;
        }
        let mean = self.durations.iter().sum::<f64>() / self.durations.len() as f64;
        let left = self.total.saturating_sub(self.finished);
        Some(mean * left as f64 / self.jobs as f64)
    }
}

/// `recall@1 = 0.8123`, `queries = 5000`: a metric as the results table shows it (counts
/// as integers).
pub fn metric_text(name: &str, value: f64) -> String {
    format!(
        "{name} = {}",
        crate::results::table::format_value(name, value)
    )
}

/// A stage's progress event as a line of text (`epoch  3/30  loss 0.4123 (…)  1.2s`).
pub fn event_text(ev: &Event) -> String {
    match ev {
        Event::Epoch {
            epoch,
            epochs,
            losses,
            wall_s,
        } => {
            let mut s = format!(
                "epoch {epoch:>w$}/{epochs}  loss {:.4}",
                losses.get("total").copied().unwrap_or(f64::NAN),
                w = epochs.to_string().len()
            );
            if losses.len() > 2 {
                let terms: Vec<String> = losses
                    .iter()
                    .filter(|(k, _)| k.as_str() != "total")
                    .map(|(k, v)| format!("{k} {v:.4}"))
                    .collect();
                s.push_str(&format!(" ({})", terms.join(", ")));
            }
            s.push_str(&format!("  {wall_s:.1}s"));
            s
        }
        Event::Metric { name, value } => metric_text(name, *value),
        Event::Resumed { epoch } => format!("resumed  from the checkpoint of epoch {epoch}"),
        Event::Failed { error } => format!("failed: {error}"),
    }
}

fn clock(secs: f64) -> String {
    let s = secs.round() as u64;
    if s >= 3600 {
        format!("{}h{:02}m", s / 3600, (s % 3600) / 60)
    } else if s >= 60 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{s}s")
    }
}

fn truncate(s: &str, cols: usize) -> String {
    if s.chars().count() <= cols {
        s.to_string()
    } else {
        s.chars().take(cols.saturating_sub(1)).collect::<String>() + "…"
    }
}

fn terminal_width() -> usize {
    // SAFETY: TIOCGWINSZ fills a winsize struct for a terminal descriptor and fails otherwise.
    unsafe {
        let mut ws: libc::winsize = std::mem::zeroed();
        if libc::ioctl(libc::STDERR_FILENO, libc::TIOCGWINSZ, &mut ws) == 0 && ws.ws_col > 0 {
            ws.ws_col as usize
        } else {
            100
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clock_and_truncate() {
        assert_eq!(clock(5.2), "5s");
        assert_eq!(clock(125.0), "2m05s");
        assert_eq!(clock(7322.0), "2h02m");
        assert_eq!(truncate("abcdef", 4), "abc…");
        assert_eq!(truncate("abc", 4), "abc");
    }

    #[test]
    fn counts_print_as_integers_and_rates_with_four_decimals() {
        assert_eq!(metric_text("queries", 5000.0), "queries = 5000");
        assert_eq!(metric_text("recall@1", 0.81234), "recall@1 = 0.8123");
        assert_eq!(metric_text("recall@1", 1.0), "recall@1 = 1.0000");
    }

    #[test]
    fn eta_spreads_the_mean_over_slots() {
        let mut p = Progress::new(Mode::Quiet, &["a", "b", "c", "d", "e"], 2);
        assert_eq!(p.eta(), None);
        p.done("a", 10.0);
        // 4 left × 10 s / 2 slots.
        assert_eq!(p.eta(), Some(20.0));
    }
}
