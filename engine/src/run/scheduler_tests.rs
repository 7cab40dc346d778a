use super::*;
use crate::run::slots::Slots;

fn cpu(n: usize) -> Vec<Slot> {
    Slots::cpu(n, 1).slots().to_vec()
}

fn policy(keep_going: bool, retries: usize) -> Policy {
    Policy {
        keep_going,
        retries,
        grace_s: 10.0,
    }
}

fn sched(inputs: Vec<Vec<usize>>, slots: usize, policy: Policy) -> Scheduler {
    let order = (0..inputs.len()).collect();
    Scheduler::new(order, inputs, &cpu(slots), policy)
}

/// One pass: every action of it, stages started as soon as they are handed out.
fn pass(s: &mut Scheduler, now: f64) -> Vec<Action> {
    let mut out = s.tick(now);
    while let Some(a) = s.next_action() {
        if let Action::Start { stage, .. } = a {
            s.started(stage);
        }
        out.push(a);
    }
    out
}

fn starts(actions: &[Action]) -> Vec<usize> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Start { stage, .. } => Some(*stage),
            _ => None,
        })
        .collect()
}

/// Runs to the end, the oldest running stage ending first with `exit(stage, attempt)`;
/// returns the stages in the order they started, and checks the slots on the way.
fn drive(s: &mut Scheduler, mut exit: impl FnMut(usize, usize) -> Exit) -> Vec<usize> {
    let mut started = Vec::new();
    let mut attempts = vec![0; s.inputs.len()];
    let mut queue = std::collections::VecDeque::new();
    loop {
        for a in pass(s, 0.0) {
            if let Action::Start { stage, .. } = a {
                started.push(stage);
                queue.push_back(stage);
                attempts[stage] += 1;
            }
        }
        check_slots(s);
        if s.finished() {
            return started;
        }
        let i = queue
            .pop_front()
            .expect("something runs while not finished");
        s.exited(i, exit(i, attempts[i]));
    }
}

/// No slot is given to two stages, and no more stages run than there are slots.
fn check_slots(s: &Scheduler) {
    let mut used: Vec<usize> = (0..s.inputs.len())
        .filter_map(|i| s.state(i).slot())
        .collect();
    let n = used.len();
    assert!(
        n <= s.slots().len(),
        "{n} stages on {} slots",
        s.slots().len()
    );
    used.sort();
    used.dedup();
    assert_eq!(used.len(), n, "a slot given twice");
}

#[test]
fn ready_stages_start_in_file_order_as_slots_allow() {
    // 0 → 2, 1 independent, 3 ← 2.
    let mut s = sched(vec![vec![], vec![], vec![0], vec![2]], 2, policy(false, 0));
    let first = pass(&mut s, 0.0);
    assert_eq!(
        first,
        vec![
            Action::Start { stage: 0, slot: 0 },
            Action::Start { stage: 1, slot: 1 }
        ]
    );
    assert!(pass(&mut s, 0.0).is_empty(), "no slot free, 2 not ready");
    assert_eq!(s.exited(1, Exit::Ok), Verdict::Ran);
    assert!(
        starts(&pass(&mut s, 0.0)).is_empty(),
        "a free slot, but 2 waits for 0"
    );
    s.exited(0, Exit::Ok);
    assert_eq!(pass(&mut s, 0.0), vec![Action::Start { stage: 2, slot: 0 }]);
    s.exited(2, Exit::Ok);
    assert_eq!(starts(&pass(&mut s, 0.0)), vec![3]);
    s.exited(3, Exit::Ok);
    assert!(s.finished());
    assert!((0..4).all(|i| s.state(i) == State::Ran));
}

#[test]
fn the_dependency_order_decides_not_the_index() {
    let order = vec![2, 0, 1];
    let mut s = Scheduler::new(
        order,
        vec![vec![], vec![], vec![]],
        &cpu(1),
        policy(false, 0),
    );
    assert_eq!(drive(&mut s, |_, _| Exit::Ok), vec![2, 0, 1]);
}

#[test]
fn cached_stages_are_not_started_and_count_as_done() {
    let mut s = sched(vec![vec![], vec![0]], 1, policy(false, 0));
    s.cached(0);
    assert_eq!(s.pending(), 1);
    assert_eq!(drive(&mut s, |_, _| Exit::Ok), vec![1]);
    assert_eq!(s.state(0), State::Cached);
}

#[test]
fn a_failure_skips_dependants_and_stops_new_starts() {
    // 0 fails; 1 needs 0, 2 needs 1; 3 is independent but comes later.
    let inputs = vec![vec![], vec![0], vec![1], vec![]];
    let mut s = sched(inputs, 1, policy(false, 0));
    let fail = Exit::Failed { retryable: true };
    assert_eq!(starts(&pass(&mut s, 0.0)), vec![0]);
    assert_eq!(s.exited(0, fail), Verdict::Failed);
    assert_eq!(
        pass(&mut s, 0.0),
        vec![
            Action::Skip {
                stage: 1,
                because: 0
            },
            Action::Skip {
                stage: 2,
                because: 1
            },
        ],
        "skipped through the chain, 3 not started"
    );
    assert!(s.finished());
    assert_eq!(s.state(3), State::Pending, "not started");
}

#[test]
fn keep_going_runs_the_independent_stages() {
    let inputs = vec![vec![], vec![0], vec![], vec![2]];
    let mut s = sched(inputs, 1, policy(true, 0));
    let started = drive(&mut s, |i, _| {
        if i == 0 {
            Exit::Failed { retryable: true }
        } else {
            Exit::Ok
        }
    });
    assert_eq!(started, vec![0, 2, 3]);
    assert_eq!(s.state(0), State::Failed);
    assert_eq!(s.state(1), State::Skipped { because: 0 });
    assert_eq!(s.state(3), State::Ran);
}

#[test]
fn a_failed_stage_is_retried_unless_its_failure_is_deterministic() {
    let mut s = sched(vec![vec![], vec![0]], 1, policy(false, 2));
    assert_eq!(starts(&pass(&mut s, 0.0)), vec![0]);
    let fail = Exit::Failed { retryable: true };
    assert_eq!(s.exited(0, fail), Verdict::Retry { attempt: 1, of: 3 });
    assert_eq!(s.state(0), State::Pending);
    assert_eq!(starts(&pass(&mut s, 0.0)), vec![0]);
    assert_eq!(s.exited(0, fail), Verdict::Retry { attempt: 2, of: 3 });
    assert_eq!(starts(&pass(&mut s, 0.0)), vec![0]);
    assert_eq!(s.exited(0, Exit::Ok), Verdict::Ran, "the third attempt");
    assert_eq!(starts(&pass(&mut s, 0.0)), vec![1]);

    // Out of retries.
    let mut s = sched(vec![vec![]], 1, policy(false, 1));
    let started = drive(&mut s, |_, _| Exit::Failed { retryable: true });
    assert_eq!(started, vec![0, 0]);
    assert_eq!(s.state(0), State::Failed);

    // A NaN loss fails at once, retries or not.
    let mut s = sched(vec![vec![]], 1, policy(false, 5));
    pass(&mut s, 0.0);
    assert_eq!(
        s.exited(0, Exit::Failed { retryable: false }),
        Verdict::Failed
    );
}

#[test]
fn a_signal_stops_new_starts_and_interrupts_the_running_stages() {
    let mut s = sched(vec![vec![], vec![], vec![], vec![0]], 2, policy(true, 3));
    assert_eq!(starts(&pass(&mut s, 0.0)), vec![0, 1]);
    assert_eq!(
        s.signal_received(libc::SIGINT, 1.0),
        Some(Action::Forward {
            signal: libc::SIGINT,
            stages: vec![0, 1]
        })
    );
    assert_eq!(s.signal(), Some(libc::SIGINT));
    // Stage 0 ends well anyway; its slot is not handed to 2 (nor 3 to its dependant).
    assert_eq!(s.exited(0, Exit::Ok), Verdict::Ran);
    assert!(pass(&mut s, 2.0).is_empty());
    assert!(!s.finished(), "1 still runs");
    // Before the grace period is over, nothing is killed; after it, what runs is.
    assert!(s.tick(10.9).is_empty());
    assert_eq!(s.tick(11.0), vec![Action::Kill { stages: vec![1] }]);
    assert!(s.tick(12.0).is_empty(), "killed once");
    // A failure while stopping is an interruption, never retried.
    assert_eq!(
        s.exited(1, Exit::Failed { retryable: true }),
        Verdict::Interrupted {
            signal: libc::SIGINT
        }
    );
    assert!(s.finished());
    assert_eq!(s.state(1), State::Interrupted);
    assert_eq!(s.state(2), State::Pending, "not started");
    assert_eq!(s.state(3), State::Pending, "not started (0 ran)");
}

#[test]
fn a_second_signal_kills_at_once() {
    let mut s = sched(vec![vec![]], 1, policy(false, 0));
    pass(&mut s, 0.0);
    assert!(s.signal_received(libc::SIGTERM, 0.0).is_some());
    assert!(s.tick(0.1).is_empty());
    assert_eq!(s.signal_received(libc::SIGINT, 0.2), None);
    assert_eq!(s.tick(0.2), vec![Action::Kill { stages: vec![0] }]);
    assert_eq!(
        s.signal(),
        Some(libc::SIGTERM),
        "the first signal names the stop"
    );
}

#[test]
fn a_signal_with_nothing_running_ends_the_run() {
    let mut s = sched(vec![vec![], vec![]], 1, policy(false, 0));
    s.signal_received(libc::SIGINT, 0.0);
    assert!(pass(&mut s, 0.0).is_empty());
    assert!(s.finished());
}

#[test]
fn a_busy_lock_makes_a_stage_wait_and_frees_its_slot() {
    // 0 is being computed by another run; 1 is independent; 2 needs 0.
    let mut s = sched(vec![vec![], vec![], vec![0]], 1, policy(false, 0));
    s.tick(0.0);
    assert_eq!(s.next_action(), Some(Action::Start { stage: 0, slot: 0 }));
    assert!(s.lock_busy(0), "the first wait is reported");
    // The same pass goes on to 1, on the slot 0 left.
    assert_eq!(s.next_action(), Some(Action::Start { stage: 1, slot: 0 }));
    s.started(1);
    assert_eq!(s.next_action(), None);
    assert!(!s.finished(), "1 runs");
    s.exited(1, Exit::Ok);
    assert!(!s.finished(), "0 waits for the other run");
    s.tick(0.0);
    assert_eq!(s.next_action(), Some(Action::Start { stage: 0, slot: 0 }));
    assert!(!s.lock_busy(0), "reported once");
    assert_eq!(s.next_action(), None);
    // The other run finished it: found in the cache, and 2 starts in the same pass.
    s.tick(0.0);
    assert_eq!(s.next_action(), Some(Action::Start { stage: 0, slot: 0 }));
    s.found_cached(0);
    assert_eq!(s.next_action(), Some(Action::Start { stage: 2, slot: 0 }));
    s.started(2);
    s.exited(2, Exit::Ok);
    assert_eq!(s.state(0), State::Cached);
    assert!(pass(&mut s, 0.0).is_empty());
    assert!(s.finished());
}

#[test]
fn a_stopped_run_does_not_wait_for_locks() {
    let mut s = sched(vec![vec![]], 1, policy(false, 0));
    s.tick(0.0);
    s.next_action();
    s.lock_busy(0);
    assert!(!s.finished());
    s.signal_received(libc::SIGINT, 0.0);
    assert!(s.finished());
    assert_eq!(s.state(0), State::Waiting, "reported as not started");
}

#[test]
fn slots_are_never_oversubscribed() {
    // A pseudo-random DAG of 40 stages: each reads up to two earlier ones.
    let mut x = 0x9e37_79b9_u64;
    let mut rnd = move |n: usize| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        (x % n as u64) as usize
    };
    let inputs: Vec<Vec<usize>> = (0..40)
        .map(|i| {
            if i == 0 {
                vec![]
            } else {
                let mut v = vec![rnd(i), rnd(i)];
                v.dedup();
                v.truncate(rnd(3));
                v
            }
        })
        .collect();
    for slots in [1, 3, 8] {
        let mut s = sched(inputs.clone(), slots, policy(true, 1));
        let mut failures = 0;
        // `drive` checks the slots after every pass.
        let started = drive(&mut s, |i, attempt| {
            if i % 7 == 3 && attempt == 1 {
                failures += 1;
                Exit::Failed { retryable: true }
            } else {
                Exit::Ok
            }
        });
        assert_eq!(
            started.len(),
            40 + failures,
            "every stage ran, retried once"
        );
        assert!((0..40).all(|i| s.state(i) == State::Ran));
    }
}

#[test]
fn gpu_slots_give_each_stage_its_own_gpu() {
    let ids = vec!["0".to_string(), "2".to_string()];
    let gpus = Slots::gpus(&ids, 4).slots().to_vec();
    let mut s = Scheduler::new(
        vec![0, 1, 2],
        vec![vec![], vec![], vec![]],
        &gpus,
        policy(false, 0),
    );
    let actions = pass(&mut s, 0.0);
    let devices: Vec<String> = actions
        .iter()
        .map(|a| match a {
            Action::Start { slot, .. } => s.slot(*slot).device(),
            _ => unreachable!(),
        })
        .collect();
    assert_eq!(devices, vec!["gpu0", "gpu2"], "two GPUs, two stages");
    s.exited(1, Exit::Ok);
    assert_eq!(
        pass(&mut s, 0.0),
        vec![Action::Start { stage: 2, slot: 1 }],
        "the GPU 1 left"
    );
}

#[test]
fn abort_interrupts_what_runs() {
    let mut s = sched(vec![vec![], vec![], vec![]], 2, policy(false, 0));
    s.tick(0.0);
    s.next_action();
    s.started(0);
    s.next_action(); // 1 handed out, not yet started
    assert_eq!(
        s.abort(),
        vec![0],
        "only a started stage has something to kill"
    );
    assert_eq!(s.state(0), State::Interrupted);
    assert_eq!(s.state(1), State::Pending, "not started");
    assert_eq!(s.state(2), State::Pending);
    assert!(s.finished());
}
