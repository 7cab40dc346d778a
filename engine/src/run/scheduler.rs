//! The scheduler: which stage starts next, on which slot, and what a stage's end means for
//! the others. Pure — no files, no processes, no clock: the coordinator tells it what
//! happened (a stage started, was found in the cache, waits for another run's lock, exited,
//! a signal came, so many seconds have passed) and carries out the actions it returns.
//! Because it knows nothing of how a stage runs, a child process ([`super::local`]) and a
//! batch job are scheduled alike.
//!
//! The rules (docs/engine.md): stages start in dependency order, file order among the
//! ready ones, as long as a slot is free; a stage whose input failed, was skipped or was
//! interrupted is skipped; after a failure no stage starts unless `keep_going`; a failed
//! stage starts again up to `retries` times unless its failure is deterministic; the first
//! signal stops new starts and is forwarded to the running stages, the second (or the end
//! of the grace period) kills them, and a stage that then fails was interrupted.

use super::slots::{Slot, Slots};

/// Where a stage stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    Pending,
    /// Another coordinator holds this stage's lock (it is running it).
    Waiting,
    /// Handed out by [`Scheduler::next_action`] and not yet answered by
    /// [`Scheduler::started`], [`Scheduler::lock_busy`] or [`Scheduler::found_cached`].
    Starting {
        slot: usize,
    },
    Running {
        slot: usize,
    },
    Cached,
    Ran,
    Failed,
    /// Could not run: input `because` failed, was skipped or was interrupted.
    Skipped {
        because: usize,
    },
    /// Stopped by a signal, or by the coordinator's own failure.
    Interrupted,
}

impl State {
    fn done(self) -> bool {
        matches!(self, State::Cached | State::Ran)
    }
    fn dead(self) -> bool {
        matches!(
            self,
            State::Failed | State::Skipped { .. } | State::Interrupted
        )
    }
    fn slot(self) -> Option<usize> {
        match self {
            State::Starting { slot } | State::Running { slot } => Some(slot),
            _ => None,
        }
    }
}

/// What the coordinator is to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Take stage `stage`'s lock and start it on `slot` (or report why not).
    Start { stage: usize, slot: usize },
    /// Stage `stage` cannot run: its input `because` did not finish.
    Skip { stage: usize, because: usize },
    /// The first signal: no stage starts any more; forward `signal` to these stages.
    Forward { signal: i32, stages: Vec<usize> },
    /// A second signal, or the grace period is over: kill these stages now.
    Kill { stages: Vec<usize> },
}

/// How a started stage ended, as far as scheduling cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    /// It committed its result.
    Ok,
    /// It did not. `retryable` is false for a deterministic failure (a NaN/inf loss),
    /// which would fail the same way again.
    Failed { retryable: bool },
}

/// What a stage's end came to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Ran,
    /// It failed while the run was stopping on `signal`: it resumes next time.
    Interrupted {
        signal: i32,
    },
    /// It goes back to pending; this was attempt `attempt` of `of`.
    Retry {
        attempt: usize,
        of: usize,
    },
    Failed,
}

/// The rules' settings.
#[derive(Clone, Debug)]
pub struct Policy {
    pub keep_going: bool,
    pub retries: usize,
    pub grace_s: f64,
}

#[derive(Clone, Copy, Debug)]
struct Stopping {
    signal: i32,
    since_s: f64,
    signals: usize,
}

#[derive(Debug)]
pub struct Scheduler {
    /// Indices of the stages, inputs before the stages that use them.
    order: Vec<usize>,
    inputs: Vec<Vec<usize>>,
    state: Vec<State>,
    attempts: Vec<usize>,
    /// Whether the stage has waited for another run's lock.
    waited: Vec<bool>,
    slots: Slots,
    policy: Policy,
    any_failed: bool,
    stopping: Option<Stopping>,
    killed: bool,
    /// Where in `order` the current pass is (see [`Scheduler::next_action`]).
    cursor: usize,
}

impl Scheduler {
    /// `inputs[i]`: the stages stage `i` reads; `order`: a dependency order of all stages.
    pub fn new(order: Vec<usize>, inputs: Vec<Vec<usize>>, slots: &[Slot], policy: Policy) -> Self {
        let n = inputs.len();
        debug_assert_eq!(order.len(), n);
        Scheduler {
            order,
            inputs,
            state: vec![State::Pending; n],
            attempts: vec![0; n],
            waited: vec![false; n],
            slots: Slots::new_from(slots),
            policy,
            any_failed: false,
            stopping: None,
            killed: false,
            cursor: 0,
        }
    }

    pub fn state(&self, stage: usize) -> State {
        self.state[stage]
    }

    /// Stages in dependency order.
    pub fn order(&self) -> &[usize] {
        &self.order
    }

    pub fn slot(&self, slot: usize) -> &Slot {
        self.slots.get(slot)
    }

    pub fn slots(&self) -> &Slots {
        &self.slots
    }

    /// The signal the run is stopping on, if any.
    pub fn signal(&self) -> Option<i32> {
        self.stopping.map(|s| s.signal)
    }

    /// The stages started and not yet ended, in stage order.
    pub fn running(&self) -> Vec<usize> {
        (0..self.state.len())
            .filter(|&i| matches!(self.state[i], State::Running { .. }))
            .collect()
    }

    /// How many stages are pending.
    pub fn pending(&self) -> usize {
        self.state.iter().filter(|s| **s == State::Pending).count()
    }

    /// Whether the run is over: nothing runs, and nothing waits for another run's lock
    /// (unless the run is stopping, when waiting is over too).
    pub fn finished(&self) -> bool {
        self.running().is_empty()
            && (self.stopping.is_some() || !self.state.contains(&State::Waiting))
    }

    /// Stage `stage` was found in the cache before anything started.
    pub fn cached(&mut self, stage: usize) {
        debug_assert_eq!(self.state[stage], State::Pending);
        self.state[stage] = State::Cached;
    }

    /// Begins a scheduling pass and returns the signal actions due at `now_s` (seconds on
    /// any clock, the same for every call). Call [`Scheduler::next_action`] until it says `None`.
    pub fn tick(&mut self, now_s: f64) -> Vec<Action> {
        self.cursor = 0;
        let mut out = Vec::new();
        if let Some(s) = self.stopping {
            let running = self.running();
            if !self.killed
                && !running.is_empty()
                && (s.signals >= 2 || now_s - s.since_s >= self.policy.grace_s)
            {
                self.killed = true;
                out.push(Action::Kill { stages: running });
            }
        }
        out
    }

    /// A SIGINT/SIGTERM arrived at `now_s`. The first stops new starts; the actions due
    /// come from the next [`Scheduler::tick`], except the forwarding of the first, returned
    /// here.
    pub fn signal_received(&mut self, signal: i32, now_s: f64) -> Option<Action> {
        match &mut self.stopping {
            Some(s) => {
                s.signals += 1;
                None
            }
            None => {
                self.stopping = Some(Stopping {
                    signal,
                    since_s: now_s,
                    signals: 1,
                });
                Some(Action::Forward {
                    signal,
                    stages: self.running(),
                })
            }
        }
    }

    /// The next action of this pass: stages are considered once per pass, in order, so that
    /// a stage whose lock is busy is tried again on the next pass, not at once. `None` when
    /// the pass is over (no more stage can start or be skipped now).
    pub fn next_action(&mut self) -> Option<Action> {
        if self.stopping.is_some() {
            return None;
        }
        while self.cursor < self.order.len() {
            let i = self.order[self.cursor];
            self.cursor += 1;
            if !matches!(self.state[i], State::Pending | State::Waiting) {
                continue;
            }
            if let Some(&bad) = self.inputs[i].iter().find(|&&s| self.state[s].dead()) {
                self.state[i] = State::Skipped { because: bad };
                return Some(Action::Skip {
                    stage: i,
                    because: bad,
                });
            }
            let ready = self.inputs[i].iter().all(|&s| self.state[s].done());
            if !ready || (self.any_failed && !self.policy.keep_going) {
                continue;
            }
            // No slot free: the pass ends (a stage further down would not get one either).
            let Some(slot) = self.slots.take() else {
                self.cursor = self.order.len();
                return None;
            };
            self.state[i] = State::Starting { slot };
            return Some(Action::Start { stage: i, slot });
        }
        None
    }

    /// The stage handed out by [`Scheduler::next_action`] is running.
    pub fn started(&mut self, stage: usize) {
        let State::Starting { slot } = self.state[stage] else {
            panic!("stage {stage} was not being started");
        };
        self.attempts[stage] += 1;
        self.state[stage] = State::Running { slot };
    }

    /// Another run holds the stage's lock: it waits, and its slot is free again. Returns
    /// whether this is the first time it waits (so that the wait is reported once).
    pub fn lock_busy(&mut self, stage: usize) -> bool {
        self.release(stage);
        self.state[stage] = State::Waiting;
        !std::mem::replace(&mut self.waited[stage], true)
    }

    /// The stage was found in the cache when it was to start (whoever held its lock
    /// finished it); its slot is free again.
    pub fn found_cached(&mut self, stage: usize) {
        self.release(stage);
        self.state[stage] = State::Cached;
    }

    /// What [`Scheduler::exited`] would make of `exit`, without changing anything: the
    /// coordinator records the outcome first, so that a stage whose end it failed to record
    /// counts as interrupted, like one it was running when it failed.
    pub fn verdict(&self, stage: usize, exit: Exit) -> Verdict {
        match exit {
            Exit::Ok => Verdict::Ran,
            Exit::Failed { retryable } => match self.stopping {
                Some(s) => Verdict::Interrupted { signal: s.signal },
                None => {
                    let attempt = self.attempts[stage];
                    if retryable && attempt <= self.policy.retries {
                        Verdict::Retry {
                            attempt,
                            of: self.policy.retries + 1,
                        }
                    } else {
                        Verdict::Failed
                    }
                }
            },
        }
    }

    /// A running stage ended; its slot is free again.
    pub fn exited(&mut self, stage: usize, exit: Exit) -> Verdict {
        debug_assert!(matches!(self.state[stage], State::Running { .. }));
        let verdict = self.verdict(stage, exit);
        self.release(stage);
        self.state[stage] = match verdict {
            Verdict::Ran => State::Ran,
            Verdict::Interrupted { .. } => State::Interrupted,
            Verdict::Retry { .. } => State::Pending,
            Verdict::Failed => {
                self.any_failed = true;
                State::Failed
            }
        };
        verdict
    }

    /// The coordinator cannot go on: every running stage is interrupted (a stage handed
    /// out but not started is not started). Returns the running ones, to be killed.
    pub fn abort(&mut self) -> Vec<usize> {
        let running = self.running();
        for i in 0..self.state.len() {
            self.release(i);
            match self.state[i] {
                State::Running { .. } => self.state[i] = State::Interrupted,
                State::Starting { .. } => self.state[i] = State::Pending,
                _ => {}
            }
        }
        running
    }

    fn release(&mut self, stage: usize) {
        if let Some(slot) = self.state[stage].slot() {
            self.slots.give_back(slot);
        }
    }
}

#[cfg(test)]
#[path = "scheduler_tests.rs"]
mod tests;
