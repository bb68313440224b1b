//! Tests of barriers: the rules of [`super::barriers`] on small histories, and a model-based
//! property test — a barrier opens for exactly its `count` waiting participants, at the arrival
//! that completes it and never before, and the log replays to the same state.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;

use super::tests::{encoded_history, golden, one};
use super::*;

fn arrive(id: &str, name: &str, holder: &str, count: u32, wait_ms: u64) -> Command {
    Command::Arrive(Arrive {
        request_id: id.into(),
        name: name.into(),
        holder: holder.into(),
        node: String::new(),
        count,
        wait_ms,
    })
}

fn withdraw(id: &str, name: &str, holder: &str, of: &str) -> Command {
    Command::Withdraw(Withdraw {
        request_id: id.into(),
        name: name.into(),
        holder: holder.into(),
        acquire_id: of.into(),
    })
}

fn step(s: &mut LockState, index: u64, at_ms: u64, command: Command) -> Applied {
    let applied = one(s, index, 1, &Proposal { at_ms, command });
    assert_eq!(s.check(), Ok(()), "after entry {index}");
    applied
}

#[test]
fn a_barrier_opens_for_all_at_the_last_arrival_and_not_before() {
    let mut s = LockState::default();
    let a = step(&mut s, 1, 0, arrive("a", "b", "w1", 3, 10_000));
    assert_eq!(a.answer, Some(Answer::Queued { position: 1 }));
    let a = step(&mut s, 2, 10, arrive("b", "b", "w2", 3, 10_000));
    assert_eq!(a.answer, Some(Answer::Queued { position: 2 }));
    assert_eq!(s.barrier("b").map(|b| b.arrivals.len()), Some(2));
    assert_eq!(s.waiting(), 2);
    let a = step(&mut s, 3, 20, arrive("c", "b", "w3", 3, 10_000));
    assert_eq!(a.answer, Some(Answer::Opened { count: 3 }));
    let opened: Vec<_> = a.settled.iter().map(|x| x.request_id.as_str()).collect();
    assert_eq!(opened, ["a", "b"]);
    assert!(
        a.settled
            .iter()
            .all(|x| x.answer == Answer::Opened { count: 3 })
    );
    assert_eq!(s.answer("a"), Some(&Answer::Opened { count: 3 }));
    // The name starts afresh: the next arrival waits for a whole new round.
    assert_eq!(s.barrier("b"), None);
    let a = step(&mut s, 4, 30, arrive("d", "b", "w1", 2, 10_000));
    assert_eq!(a.answer, Some(Answer::Queued { position: 1 }));
}

#[test]
fn a_barrier_of_one_opens_at_once_and_a_retry_is_answered_the_same() {
    let mut s = LockState::default();
    let first = step(&mut s, 1, 0, arrive("a", "b", "w1", 1, 0));
    assert_eq!(first.answer, Some(Answer::Opened { count: 1 }));
    let retry = step(&mut s, 2, 5, arrive("a", "b", "w1", 1, 0));
    assert_eq!(retry.answer, first.answer);
}

#[test]
fn an_arrival_that_stops_waiting_does_not_count() {
    let mut s = LockState::default();
    step(&mut s, 1, 0, arrive("a", "b", "w1", 2, 100));
    // Its wait ran out at 100: the time passing ends it, and it is told how many were there.
    let a = step(&mut s, 2, 101, Command::Tick);
    assert_eq!(a.settled.len(), 1);
    assert_eq!(
        a.settled[0].answer,
        Answer::NotOpened {
            arrived: 0,
            count: 2
        }
    );
    assert_eq!(s.barrier("b"), None);
    // A withdrawn one (its client left) does not count either.
    step(&mut s, 3, 110, arrive("c", "b", "w2", 2, 10_000));
    let w = step(&mut s, 4, 120, withdraw("w", "b", "w2", "c"));
    assert_eq!(w.answer, Some(Answer::Withdrawn { lease: None }));
    assert_eq!(s.answer("c"), Some(&Answer::Withdrawn { lease: None }));
    assert_eq!(s.waiting(), 0);
    let a = step(&mut s, 5, 130, arrive("d", "b", "w3", 2, 10_000));
    assert_eq!(a.answer, Some(Answer::Queued { position: 1 }));
    // Without a wait, an arrival that does not complete the barrier leaves at once.
    let a = step(&mut s, 6, 140, arrive("e", "b", "w4", 3, 0));
    assert_eq!(a.answer, Some(Answer::CountMismatch { count: 2 }));
    let a = step(&mut s, 7, 150, arrive("f", "other", "w4", 3, 0));
    assert_eq!(
        a.answer,
        Some(Answer::NotOpened {
            arrived: 0,
            count: 3
        })
    );
    assert_eq!(s.barrier("other"), None);
}

#[test]
fn an_arrival_withdrawn_before_it_came_is_never_counted() {
    let mut s = LockState::default();
    step(&mut s, 1, 0, withdraw("w", "b", "w1", "a"));
    let a = step(&mut s, 2, 5, arrive("a", "b", "w1", 2, 10_000));
    assert_eq!(a.answer, Some(Answer::Withdrawn { lease: None }));
    assert_eq!(s.barrier("b"), None);
}

#[test]
fn counts_out_of_range_are_refused_and_barriers_are_apart_from_locks() {
    let mut s = LockState::default();
    for count in [0, MAX_COUNT + 1] {
        let a = step(
            &mut s,
            1,
            0,
            arrive(&format!("a{count}"), "b", "w1", count, 10),
        );
        assert_eq!(
            a.answer,
            Some(Answer::Refused {
                limit: Limit::Count
            })
        );
    }
    let lock = Command::Acquire(Acquire {
        request_id: "l".into(),
        name: "b".into(),
        holder: "w1".into(),
        node: String::new(),
        ttl_ms: 50,
        wait_ms: 0,
        readopt: false,
        task_info: Default::default(),
        session: None,
    });
    step(&mut s, 2, 0, lock);
    step(&mut s, 3, 0, arrive("x", "b", "w2", 2, 1_000));
    // The lock's lease ends at 50 and the arrival's wait at 1,000: each in its own index.
    let a = step(&mut s, 4, 60, Command::Tick);
    assert!(a.settled.is_empty(), "{:?}", a.settled);
    assert_eq!(s.get("b"), None);
    assert_eq!(s.barrier("b").map(|b| b.arrivals.len()), Some(1));
    let restored = LockState::from_json(&s.to_json().unwrap()).unwrap();
    assert_eq!(restored, s);
}

#[test]
fn arrivals_answers_and_snapshots_keep_their_encoding() {
    // What logs, snapshots and remembered answers on disk hold of barriers: each entry, each
    // answer, and the snapshot with participants waiting, one per line.
    let entries = [
        (0, arrive("a", "b", "w1", 2, 5_000)),
        (10, arrive("x", "b", "w2", 3, 0)),
        (20, arrive("c", "other", "w2", 2, 100)),
        (130, arrive("d", "b", "w3", 2, 5_000)),
        (140, arrive("e", "b", "w3", 0, 0)),
        (150, arrive("f", "b", "w4", 2, 5_000)),
        (160, withdraw("g", "b", "w4", "f")),
        (170, arrive("h", "b", "w5", 2, 5_000)),
    ];
    golden("barriers.jsonl", &encoded_history(entries));
}

proptest! {
    /// Any history of arrivals, retries, withdrawals and time: every opening settles exactly
    /// `count` distinct arrivals that were all waiting (or arriving) then, nobody is opened
    /// otherwise, and the log replays to the same state and answers. A step is (what, barrier,
    /// participant, time step, wait).
    #[test]
    fn barriers_open_for_exactly_their_count(
        steps in prop::collection::vec((0u8..4, 0usize..2, 0usize..5, 0u16..300, 0u16..600), 1..150)
    ) {
        let mut s = LockState::default();
        let mut log = Vec::new();
        let mut results = Vec::new();
        let mut now = 0u64;
        // Arrivals waiting per barrier, as the answers told: request id -> deadline.
        let mut waiting: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
        let mut counts: BTreeMap<String, u32> = BTreeMap::new();
        let mut opened = BTreeSet::new();
        for (i, (what, b, p, dt, wait)) in steps.into_iter().enumerate() {
            let index = i as u64 + 1;
            now += u64::from(dt);
            let name = format!("b{b}");
            let count = if b == 0 { 3 } else { 2 };
            let holder = format!("p{p}");
            let command = match what {
                0 | 1 => arrive(&format!("r{i}"), &name, &holder, count, u64::from(wait)),
                // A retry of an earlier arrival, if any.
                2 => arrive(&format!("r{}", i / 2), &name, &holder, count, u64::from(wait)),
                _ => match waiting.get(&name).and_then(|w| w.keys().next()) {
                    Some(id) => withdraw(&format!("w{i}"), &name, &s.requests[id.as_str()].holder.clone(), id),
                    None => Command::Tick,
                },
            };
            let proposal = Proposal { at_ms: now, command: command.clone() };
            let applied = one(&mut s, index, 1, &proposal);
            prop_assert_eq!(s.check(), Ok(()));
            // Waits that ended before this command are settled as not opened.
            let mut opened_now = BTreeSet::new();
            for x in &applied.settled {
                match &x.answer {
                    Answer::Opened { count } => {
                        prop_assert!(waiting.get(&x.name).is_some_and(|w| w.contains_key(&x.request_id)));
                        prop_assert_eq!(*count, counts[&x.name]);
                        opened_now.insert(x.request_id.clone());
                    }
                    Answer::NotOpened { .. } | Answer::Withdrawn { .. } => {}
                    other => prop_assert!(false, "settled {:?}", other),
                }
                if let Some(w) = waiting.get_mut(&x.name) {
                    w.remove(&x.request_id);
                }
            }
            if let (Command::Arrive(a), Some(answer)) = (&command, &applied.answer) {
                match answer {
                    Answer::Queued { .. } => {
                        prop_assert!(opened_now.is_empty());
                        waiting.entry(a.name.clone()).or_default().insert(a.request_id.clone(), now + u64::from(wait));
                        counts.insert(a.name.clone(), a.count);
                    }
                    Answer::Opened { count } if !opened.contains(&a.request_id) => {
                        // A fresh opening: this arrival and `count - 1` that waited.
                        prop_assert_eq!(opened_now.len() + 1, *count as usize);
                        opened.insert(a.request_id.clone());
                    }
                    _ => prop_assert!(opened_now.is_empty()),
                }
            }
            opened.extend(opened_now);
            // Nobody the state keeps waiting was told anything else, and no barrier is full.
            for (name, b) in &s.barriers {
                let told: BTreeSet<_> = waiting.get(name).map(|w| w.keys().cloned().collect()).unwrap_or_default();
                let kept: BTreeSet<_> = b.arrivals.iter().map(|a| a.request_id.clone()).collect();
                prop_assert_eq!(told, kept);
                prop_assert!(b.arrivals.len() < b.count as usize);
            }
            log.push((index, proposal));
            results.push(applied);
        }
        let mut replay = LockState::default();
        for ((index, p), applied) in log.iter().zip(&results) {
            prop_assert_eq!(&one(&mut replay, *index, 1, p), applied);
        }
        prop_assert_eq!(replay, s);
    }
}
