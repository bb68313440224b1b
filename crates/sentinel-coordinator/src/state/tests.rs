//! Unit tests of the lock state: each rule of the module documentation on a small history.

use super::*;
use sentinel_core::lock::TaskInfo;
use sentinel_core::table::LockRecord;

pub(super) const TTL: u64 = 1_000;

fn acquire(id: &str, name: &str, holder: &str, ttl_ms: u64, wait_ms: u64) -> Command {
    Command::Acquire(Acquire {
        request_id: id.into(),
        name: name.into(),
        holder: holder.into(),
        node: format!("node-of-{holder}"),
        ttl_ms,
        wait_ms,
        readopt: false,
        task_info: TaskInfo::default(),
        session: None,
    })
}

pub(super) fn release(id: &str, name: &str, holder: &str, token: u64) -> Command {
    Command::Release(Release {
        request_id: id.into(),
        name: name.into(),
        holder: holder.into(),
        token,
    })
}

pub(super) fn renew(id: &str, name: &str, holder: &str, token: u64) -> Command {
    Command::Renew(Renew {
        request_id: id.into(),
        name: name.into(),
        holder: holder.into(),
        token,
        ttl_ms: None,
        value: None,
        session: None,
    })
}

/// The token a grant by the first command of the entry at `index` gets.
fn t(index: u64) -> u64 {
    position(index, 0)
}

/// Applies an entry of the one proposal `p` at log `index`.
pub(super) fn one(s: &mut LockState, index: u64, term: u64, p: &Proposal) -> Applied {
    let mut applied = s.apply(index, term, &Batch(vec![p.clone()]));
    assert_eq!(applied.len(), 1);
    applied.remove(0)
}

/// Applies `command` at log `index` and leader time `at_ms`, checking the invariants.
fn step(s: &mut LockState, index: u64, at_ms: u64, command: Command) -> Applied {
    let applied = one(s, index, 1, &Proposal { at_ms, command });
    assert_eq!(s.check(), Ok(()), "after entry {index}");
    applied
}

fn answer(a: Applied) -> Answer {
    a.answer.expect("an answer")
}

fn granted(o: Answer) -> LockRecord {
    match o {
        Answer::Granted { lease, .. } => lease,
        other => panic!("expected a grant, got {other:?}"),
    }
}

#[test]
fn a_free_lock_is_granted_with_the_commands_position_as_token() {
    let mut s = LockState::default();
    let lease = granted(answer(step(
        &mut s,
        7,
        1_000,
        acquire("r1", "a", "w1", TTL, 0),
    )));
    assert_eq!(lease.fencing_token, t(7));
    assert_eq!((lease.claimed_at_ms, lease.heartbeat_ms), (1_000, 1_000));
    assert_eq!(lease.expires_at_ms(), 2_000);
    assert_eq!(
        (lease.worker_id.as_str(), lease.node_id.as_str()),
        ("w1", "node-of-w1")
    );
    assert_eq!(s.held(), 1);
    assert_eq!(s.get("a").map(|s| &s.lease), Some(&lease));
    // Someone else is told who holds it; the holder itself too, without re-adoption.
    for (id, who) in [("r2", "w2"), ("r3", "w1")] {
        assert_eq!(
            answer(step(&mut s, 8, 1_100, acquire(id, "a", who, TTL, 0))),
            Answer::Held {
                holder: lease.clone()
            }
        );
    }
}

#[test]
fn one_entry_of_many_commands_gives_each_grant_its_own_token() {
    let mut s = LockState::default();
    step(&mut s, 1, 0, acquire("r1", "a", "w1", TTL, 0));
    let p = |command| Proposal { at_ms: 10, command };
    // Release of w1, a grant to w2 and a waiter w3, then w2 (who cannot know its token yet)
    // and w3 again: all in entry 2.
    let applied = s.apply(
        2,
        1,
        &Batch(vec![
            p(release("r2", "a", "w1", t(1))),
            p(acquire("r3", "a", "w2", TTL, 0)),
            p(acquire("r4", "a", "w3", TTL, 5_000)),
            p(release("r5", "a", "w2", position(2, 1))),
            p(acquire("r6", "b", "w3", TTL, 0)),
        ]),
    );
    assert_eq!(s.check(), Ok(()));
    let batch_answers: Vec<Answer> = applied.into_iter().map(answer).collect();
    assert!(matches!(batch_answers[0], Answer::Released { .. }));
    assert_eq!(
        granted(batch_answers[1].clone()).fencing_token,
        position(2, 1)
    );
    assert_eq!(batch_answers[2], Answer::Queued { position: 1 });
    assert!(matches!(batch_answers[3], Answer::NotHolder { .. }));
    assert_eq!(
        granted(batch_answers[4].clone()).fencing_token,
        position(2, 4)
    );
    // The waiter is handed the lock by entry 3 with a larger token than w2's.
    let a = step(&mut s, 3, 20, release("r7", "a", "w2", position(2, 1)));
    assert_eq!(granted(a.settled[0].answer.clone()).fencing_token, t(3));
    // An entry longer than the positions an index spans answers only the first ones.
    let long = Batch(vec![p(Command::Tick); POSITIONS_PER_ENTRY as usize + 5]);
    assert_eq!(s.apply(4, 1, &long).len(), POSITIONS_PER_ENTRY as usize);
    assert!(MAX_BATCH < POSITIONS_PER_ENTRY as usize);
}

fn withdraw(id: &str, name: &str, holder: &str, acquire_id: &str) -> Command {
    Command::Withdraw(Withdraw {
        request_id: id.into(),
        name: name.into(),
        holder: holder.into(),
        acquire_id: acquire_id.into(),
    })
}

#[test]
fn a_withdrawn_acquire_leaves_the_queue_gives_back_its_grant_or_never_runs() {
    let mut s = LockState::default();
    let first = granted(answer(step(&mut s, 1, 0, acquire("r1", "a", "w1", TTL, 0))));
    step(&mut s, 2, 0, acquire("r2", "a", "w2", TTL, 5_000));
    step(&mut s, 3, 0, acquire("r3", "a", "w3", TTL, 5_000));
    // A waiter gives up: out of the queue, its request answered as withdrawn.
    let a = step(&mut s, 4, 10, withdraw("w1x", "a", "w2", "r2"));
    assert_eq!(a.answer, Some(Answer::Withdrawn { lease: None }));
    assert_eq!(a.settled[0].request_id, "r2");
    assert_eq!(s.answer("r2"), Some(&Answer::Withdrawn { lease: None }));
    assert_eq!(s.waiting(), 1);
    // Only the acquire's own holder may take it back.
    let a = step(&mut s, 5, 10, withdraw("w2x", "a", "w3", "r1"));
    assert_eq!(a.answer, Some(Answer::RequestIdReused));
    // The holder gives up after its grant: released, and the next waiter gets the lock.
    let a = step(&mut s, 6, 20, withdraw("w3x", "a", "w1", "r1"));
    assert_eq!(
        a.answer,
        Some(Answer::Withdrawn {
            lease: Some(first.clone())
        })
    );
    let next = granted(a.settled[0].answer.clone());
    assert_eq!((next.worker_id.as_str(), next.fencing_token), ("w3", t(6)));
    // A retry of the taken-back acquire does not believe it holds the lock.
    assert!(matches!(
        answer(step(&mut s, 7, 30, acquire("r1", "a", "w1", TTL, 0))),
        Answer::Withdrawn { lease: Some(_) }
    ));
    // Taken back before it arrived: the acquire is never executed.
    step(&mut s, 8, 40, withdraw("w4x", "b", "w1", "r9"));
    assert_eq!(
        answer(step(&mut s, 9, 50, acquire("r9", "b", "w1", TTL, 0))),
        Answer::Withdrawn { lease: None }
    );
    assert!(s.get("b").is_none());
}

#[test]
fn a_waiter_withdrawn_as_its_lock_falls_free_is_never_granted_so_no_token_is_granted_twice() {
    // w1's lease ends at 100; w2 and w3 wait. The command that withdraws w2 at 200 is also the
    // first to see w1's lease ended. Were the lock handed to w2 before the withdrawal took it
    // back, w2 and then w3 would both be granted the lock at this command's position.
    let mut s = LockState::default();
    step(&mut s, 1, 0, acquire("r1", "g", "w1", 100, 0));
    step(&mut s, 2, 10, acquire("r2", "g", "w2", TTL, 5_000));
    step(&mut s, 3, 20, acquire("r3", "g", "w3", TTL, 5_000));
    let a = step(&mut s, 4, 200, withdraw("w2x", "g", "w2", "r2"));
    assert_eq!(a.answer, Some(Answer::Withdrawn { lease: None }));
    let grants: Vec<(String, u64)> = a
        .settled
        .iter()
        .filter_map(|x| match &x.answer {
            Answer::Granted { lease, .. } => Some((lease.worker_id.clone(), lease.fencing_token)),
            _ => None,
        })
        .collect();
    assert_eq!(grants, vec![("w3".to_string(), t(4))]);
    assert_eq!(s.answer("r2"), Some(&Answer::Withdrawn { lease: None }));
    assert_eq!(
        s.get("g").map(|slot| slot.lease.worker_id.as_str()),
        Some("w3")
    );
}

#[test]
fn waiters_get_the_lock_in_arrival_order_with_new_tokens() {
    let mut s = LockState::default();
    let first = granted(answer(step(&mut s, 1, 0, acquire("r1", "a", "w1", TTL, 0))));
    assert_eq!(
        answer(step(&mut s, 2, 10, acquire("r2", "a", "w2", TTL, 5_000))),
        Answer::Queued { position: 1 }
    );
    assert_eq!(
        answer(step(&mut s, 3, 20, acquire("r3", "a", "w3", TTL, 5_000))),
        Answer::Queued { position: 2 }
    );
    assert_eq!(s.waiting(), 2);
    let a = step(&mut s, 4, 30, release("r4", "a", "w1", first.fencing_token));
    assert_eq!(a.answer, Some(Answer::Released { lease: first }));
    assert_eq!(a.settled.len(), 1);
    assert_eq!(a.settled[0].request_id, "r2");
    let second = granted(a.settled[0].answer.clone());
    assert_eq!(
        (second.worker_id.as_str(), second.fencing_token),
        ("w2", t(4))
    );
    assert_eq!(second.heartbeat_ms, 30);
    // The waiter's request now answers with its grant.
    assert_eq!(s.answer("r2"), Some(&a.settled[0].answer));
    let a = step(&mut s, 5, 40, release("r5", "a", "w2", t(4)));
    assert_eq!(granted(a.settled[0].answer.clone()).fencing_token, t(5));
    assert_eq!(s.get("a").unwrap().lease.worker_id, "w3");
    assert_eq!(s.waiting(), 0);
    step(&mut s, 6, 50, release("r6", "a", "w3", t(5)));
    assert_eq!(s.held(), 0);
    assert_eq!(s.next_event_ms(), None);
}

#[test]
fn a_lease_ends_exactly_at_its_ttl_and_the_next_waiter_gets_it() {
    let mut s = LockState::default();
    granted(answer(step(
        &mut s,
        1,
        1_000,
        acquire("r1", "a", "w1", 500, 0),
    )));
    step(&mut s, 2, 1_000, acquire("r2", "a", "w2", TTL, 60_000));
    assert_eq!(s.next_event_ms(), Some(1_501));
    // At 1_500 the lease is still live: a renewal works and nobody is handed the lock...
    let mut live = s.clone();
    assert!(matches!(
        answer(step(&mut live, 3, 1_500, renew("r3", "a", "w1", t(1)))),
        Answer::Renewed { .. }
    ));
    let a = step(&mut s, 3, 1_500, Command::Tick);
    assert_eq!(a, Applied::default());
    assert_eq!(s.get("a").unwrap().lease.worker_id, "w1");
    // ...one millisecond later it has ended and the waiter holds a fresh lease.
    let a = step(&mut s, 4, 1_501, Command::Tick);
    assert_eq!(a.answer, None);
    let lease = granted(a.settled[0].answer.clone());
    assert_eq!(
        (lease.worker_id.as_str(), lease.fencing_token),
        ("w2", t(4))
    );
    assert_eq!(lease.heartbeat_ms, 1_501);
    // The former holder can neither renew nor release it.
    assert!(matches!(
        answer(step(&mut s, 5, 1_502, renew("r5", "a", "w1", t(1)))),
        Answer::NotHolder { holder: Some(h) } if h.worker_id == "w2"
    ));
    assert!(matches!(
        answer(step(&mut s, 6, 1_502, release("r6", "a", "w1", t(1)))),
        Answer::NotHolder { .. }
    ));
}

#[test]
fn a_late_entry_ends_leases_and_waits_in_the_order_they_ended() {
    // Lease ends after 1_100; the first waiter gives up after 1_050, the second after 5_000.
    let mut s = LockState::default();
    step(&mut s, 1, 1_000, acquire("r1", "a", "w1", 100, 0));
    step(&mut s, 2, 1_000, acquire("r2", "a", "w2", TTL, 50));
    step(&mut s, 3, 1_000, acquire("r3", "a", "w3", TTL, 4_000));
    // No entry until much later: the first waiter had given up before the lease ended, the
    // second was still waiting, so it holds the lock from the entry's time.
    let a = step(&mut s, 4, 3_000, Command::Tick);
    assert_eq!(a.settled.len(), 2);
    assert_eq!(a.settled[0].request_id, "r2");
    assert!(matches!(a.settled[0].answer, Answer::TimedOut { .. }));
    assert_eq!(a.settled[1].request_id, "r3");
    let lease = granted(a.settled[1].answer.clone());
    assert_eq!((lease.heartbeat_ms, lease.fencing_token), (3_000, t(4)));
}

#[test]
fn a_wait_ends_at_its_deadline_and_loses_a_tie_with_the_lease() {
    let mut s = LockState::default();
    step(&mut s, 1, 0, acquire("r1", "a", "w1", 1_000, 0));
    step(&mut s, 2, 0, acquire("r2", "a", "w2", TTL, 1_000));
    step(&mut s, 3, 500, acquire("r3", "a", "w3", TTL, 10));
    assert_eq!(s.next_event_ms(), Some(511));
    assert!(step(&mut s, 4, 510, Command::Tick).settled.is_empty());
    let a = step(&mut s, 5, 511, Command::Tick);
    assert_eq!(a.settled[0].request_id, "r3");
    assert_eq!(
        a.settled[0].answer,
        Answer::TimedOut {
            holder: s.get("a").unwrap().lease.clone()
        }
    );
    assert_eq!(s.answer("r3"), Some(&a.settled[0].answer));
    // w2 waits up to and including 1_000, the lease is live up to and including 1_000: at
    // 1_001 both have ended, and the waiter had given up.
    let a = step(&mut s, 6, 1_001, Command::Tick);
    assert_eq!(a.settled.len(), 1);
    assert!(matches!(a.settled[0].answer, Answer::TimedOut { .. }));
    assert_eq!(s.held(), 0);
}

#[test]
fn a_retried_request_gets_its_first_answer_and_never_a_second_grant() {
    let mut s = LockState::default();
    let first = answer(step(&mut s, 1, 0, acquire("r1", "a", "w1", TTL, 0)));
    let before = s.clone();
    assert_eq!(
        answer(step(&mut s, 2, 10, acquire("r1", "a", "w1", TTL, 0))),
        first
    );
    let mut expected = before;
    one(
        &mut expected,
        2,
        1,
        &Proposal {
            at_ms: 10,
            command: Command::Tick,
        },
    );
    assert_eq!(s, expected, "a retry changes nothing");
    // A waiter's retry says it is queued, and after the hand-over it says granted.
    step(&mut s, 3, 20, acquire("r2", "a", "w2", TTL, 5_000));
    assert_eq!(
        answer(step(&mut s, 4, 30, acquire("r2", "a", "w2", TTL, 5_000))),
        Answer::Queued { position: 1 }
    );
    assert_eq!(s.waiting(), 1);
    let grant = step(&mut s, 5, 40, release("r3", "a", "w1", t(1))).settled[0]
        .answer
        .clone();
    assert_eq!(
        answer(step(&mut s, 6, 50, acquire("r2", "a", "w2", TTL, 5_000))),
        grant
    );
    // A release retried after the lock changed hands still says released.
    assert!(matches!(
        answer(step(&mut s, 7, 60, release("r3", "a", "w1", t(1)))),
        Answer::Released { .. }
    ));
    // The same id for another request is refused and not remembered for it.
    assert_eq!(
        answer(step(&mut s, 8, 70, acquire("r3", "a", "w1", TTL, 0))),
        Answer::RequestIdReused
    );
    assert_eq!(
        answer(step(&mut s, 9, 70, acquire("r1", "b", "w1", TTL, 0))),
        Answer::RequestIdReused
    );
    assert_eq!(
        answer(step(&mut s, 9, 70, acquire("r1", "a", "w2", TTL, 0))),
        Answer::RequestIdReused
    );
    // Same kind, lock and holder, other values: not a retry either.
    assert_eq!(
        answer(step(&mut s, 9, 70, acquire("r1", "a", "w1", 2 * TTL, 0))),
        Answer::RequestIdReused
    );
    assert_eq!(
        answer(step(&mut s, 9, 70, release("r3", "a", "w1", t(1) + 1))),
        Answer::RequestIdReused
    );
    assert!(s.get("b").is_none());
}

#[test]
fn answers_are_forgotten_after_the_window() {
    let mut s = LockState::default();
    step(&mut s, 1, 0, acquire("r1", "a", "w1", TTL, 0));
    step(&mut s, 2, REQUEST_WINDOW_MS, Command::Tick);
    assert!(s.answer("r1").is_some());
    step(&mut s, 3, REQUEST_WINDOW_MS + 1, Command::Tick);
    assert_eq!(s.answer("r1"), None);
    // Now the id is new again.
    assert!(matches!(
        answer(step(
            &mut s,
            4,
            REQUEST_WINDOW_MS + 2,
            acquire("r1", "a", "w1", TTL, 0)
        )),
        Answer::Granted { .. }
    ));
}

#[test]
fn release_and_renew_need_the_holder_and_its_token() {
    let mut s = LockState::default();
    step(&mut s, 3, 0, acquire("r1", "a", "w1", TTL, 0));
    for (id, holder, token) in [("r2", "w2", t(3)), ("r3", "w1", t(2)), ("r4", "w1", t(4))] {
        assert!(matches!(
            answer(step(&mut s, 4, 10, release(id, "a", holder, token))),
            Answer::NotHolder { holder: Some(_) }
        ));
        assert!(matches!(
            answer(step(
                &mut s,
                4,
                10,
                renew(&format!("{id}x"), "a", holder, token)
            )),
            Answer::NotHolder { holder: Some(_) }
        ));
    }
    assert_eq!(
        answer(step(&mut s, 5, 10, release("r5", "b", "w1", t(3)))),
        Answer::NotHolder { holder: None }
    );
    let renewed = answer(step(&mut s, 6, 600, renew("r6", "a", "w1", t(3))));
    assert!(
        matches!(renewed, Answer::Renewed { lease } if lease.heartbeat_ms == 600 && lease.expires_at_ms() == 1_600)
    );
    assert!(matches!(
        answer(step(&mut s, 7, 1_600, release("r7", "a", "w1", t(3)))),
        Answer::Released { .. }
    ));
    assert_eq!(s.held(), 0);
}

#[test]
fn a_grant_cannot_be_released_by_the_entry_that_made_it() {
    // The waiter w2 is granted by entry 9 (the lease of w1 ended). A release in that same
    // entry naming that grant's token was proposed before the grant existed: refused, so the
    // next waiter can never be granted the same token as well.
    let mut s = LockState::default();
    step(&mut s, 1, 0, acquire("r1", "a", "w1", 10, 0));
    step(&mut s, 2, 0, acquire("r2", "a", "w2", TTL, 5_000));
    step(&mut s, 3, 0, acquire("r3", "a", "w3", TTL, 5_000));
    let a = step(&mut s, 9, 100, release("r4", "a", "w2", t(9)));
    assert!(matches!(a.answer, Some(Answer::NotHolder { .. })));
    assert_eq!(granted(a.settled[0].answer.clone()).fencing_token, t(9));
    assert_eq!(s.get("a").unwrap().lease.worker_id, "w2");
}

#[test]
fn re_adoption_renews_the_own_lease_with_the_same_token() {
    let mut s = LockState::default();
    step(&mut s, 1, 0, acquire("r1", "a", "w1", TTL, 0));
    let mut again = Acquire {
        request_id: "r2".into(),
        name: "a".into(),
        holder: "w1".into(),
        node: "elsewhere".into(),
        ttl_ms: 5_000,
        wait_ms: 0,
        readopt: true,
        task_info: TaskInfo {
            priority: Some("high".into()),
            ..TaskInfo::default()
        },
        session: None,
    };
    match answer(step(&mut s, 2, 500, Command::Acquire(again.clone()))) {
        Answer::Granted { lease, adopted } => {
            assert!(adopted);
            assert_eq!(lease.fencing_token, t(1));
            assert_eq!(
                (lease.claimed_at_ms, lease.heartbeat_ms, lease.ttl_ms),
                (0, 500, 5_000)
            );
            assert_eq!(lease.node_id, "elsewhere");
            assert_eq!(lease.task_info.priority.as_deref(), Some("high"));
        }
        other => panic!("{other:?}"),
    }
    // Someone else's readopt is a plain acquire.
    again.request_id = "r3".into();
    again.holder = "w2".into();
    assert!(matches!(
        answer(step(&mut s, 3, 600, Command::Acquire(again))),
        Answer::Held { .. }
    ));
}

/// Applies `command` at log `index`, in `term`, at leader time `at_ms`, checking the invariants.
fn in_term(s: &mut LockState, index: u64, term: u64, at_ms: u64, command: Command) -> Applied {
    let applied = one(s, index, term, &Proposal { at_ms, command });
    assert_eq!(s.check(), Ok(()), "after entry {index}");
    applied
}

#[test]
fn a_new_leader_starts_every_lease_afresh_and_moves_waits_with_them() {
    let mut s = LockState::default();
    in_term(&mut s, 1, 1, 1_000, acquire("r1", "a", "w1", 500, 0));
    in_term(&mut s, 2, 1, 1_000, acquire("r2", "b", "w1", 60_000, 0));
    // w2 waits for "a" until 1_600: it would get it at 1_501.
    let queued = in_term(&mut s, 3, 1, 1_100, acquire("r3", "a", "w2", 500, 500));
    assert_eq!(answer(queued), Answer::Queued { position: 1 });
    // The leader dies; a new one's first command comes 300 ms (of its lease clock) after the
    // last: every lease counts its TTL again from there, and the wait moves on with its lease.
    let a = in_term(&mut s, 4, 2, 1_400, Command::Tick);
    assert!(a.settled.is_empty());
    assert_eq!(s.get("a").unwrap().lease.heartbeat_ms, 1_400);
    assert_eq!(s.get("a").unwrap().lease.expires_at_ms(), 1_900);
    assert_eq!(s.get("a").unwrap().lease.claimed_at_ms, 1_000);
    assert_eq!(s.get("b").unwrap().lease.expires_at_ms(), 61_400);
    assert_eq!(s.get("a").unwrap().queue[0].until_ms, 2_000);
    // The same term again starts nothing afresh: at 1_901 "a" ends and goes to the waiter.
    let a = in_term(&mut s, 5, 2, 1_901, Command::Tick);
    assert_eq!(s.get("b").unwrap().lease.expires_at_ms(), 61_400);
    assert_eq!(a.settled.len(), 1);
    assert!(
        matches!(&a.settled[0].answer, Answer::Granted { lease, .. } if lease.worker_id == "w2")
    );
    assert_eq!(s.get("a").unwrap().lease.expires_at_ms(), 2_401);
    // A lease that a long quiet time would have ended before the new leader's first command
    // is live again from it: the new leader's first command comes before any end is judged.
    in_term(&mut s, 6, 3, 30_000, Command::Tick);
    assert_eq!(s.get("a").unwrap().lease.expires_at_ms(), 30_500);
    assert_eq!(s.get("b").unwrap().lease.expires_at_ms(), 90_000);
    // A stamp behind the state's time (a new leader whose clock is behind) counts as the
    // state's time: the leases start afresh from there, no earlier.
    in_term(&mut s, 7, 4, 10, Command::Tick);
    assert_eq!(s.clock_ms(), 30_000);
    assert_eq!(s.get("b").unwrap().lease.expires_at_ms(), 90_000);
    assert_eq!(LockState::from_json(&s.to_json().unwrap()).unwrap(), s);
}

#[test]
fn time_never_goes_backwards() {
    let mut s = LockState::default();
    step(&mut s, 1, 5_000, acquire("r1", "a", "w1", TTL, 0));
    // A new leader whose clock is behind: its stamps count as the state's time.
    let lease = match answer(step(&mut s, 2, 10, renew("r2", "a", "w1", t(1)))) {
        Answer::Renewed { lease } => lease,
        other => panic!("{other:?}"),
    };
    assert_eq!(lease.heartbeat_ms, 5_000);
    assert_eq!(s.clock_ms(), 5_000);
}

#[test]
fn limits_refuse_without_changing_anything() {
    let mut s = LockState::default();
    for i in 0..MAX_HELD_LOCKS {
        one(
            &mut s,
            1 + i as u64,
            1,
            &Proposal {
                at_ms: 0,
                command: acquire(&format!("r{i}"), &format!("lock-{i}"), "w", TTL, 0),
            },
        );
    }
    assert_eq!(s.held(), MAX_HELD_LOCKS);
    let before = s.clone();
    let refused = one(
        &mut s,
        u64::MAX,
        1,
        &Proposal {
            at_ms: 0,
            command: acquire("over", "one-more", "w", TTL, 0),
        },
    );
    assert_eq!(
        refused.answer,
        Some(Answer::Refused {
            limit: Limit::HeldLocks
        })
    );
    assert_eq!(s.held(), before.held());
    assert!(s.get("one-more").is_none());
    // Held locks can still be waited for.
    assert!(matches!(
        one(
            &mut s,
            u64::MAX,
            1,
            &Proposal {
                at_ms: 0,
                command: acquire("w", "lock-0", "w2", TTL, 10)
            }
        )
        .answer,
        Some(Answer::Queued { .. })
    ));
}

#[test]
fn snapshots_round_trip_and_bad_ones_are_refused() {
    let mut s = LockState::default();
    step(&mut s, 1, 0, acquire("r1", "a", "w1", TTL, 0));
    step(&mut s, 2, 0, acquire("r2", "a", "w2", TTL, 500));
    step(&mut s, 3, 0, acquire("r3", "b", "w1", TTL, 0));
    let json = s.to_json().unwrap();
    assert_eq!(LockState::from_json(&json).unwrap(), s);

    let mut v: serde_json::Value = serde_json::from_slice(&json).unwrap();
    v["clock_ms"] = 5_000.into();
    let stale = serde_json::to_vec(&v).unwrap();
    assert!(LockState::from_json(&stale).unwrap_err().contains("ended"));

    let mut v: serde_json::Value = serde_json::from_slice(&json).unwrap();
    v["requests"].as_object_mut().unwrap().remove("r2");
    let orphan = serde_json::to_vec(&v).unwrap();
    assert!(LockState::from_json(&orphan).unwrap_err().contains("r2"));

    assert!(LockState::from_json(b"{\"clock_ms\": -1}").is_err());
    assert!(LockState::from_json(b"").is_err());
}

#[test]
fn the_log_encoding_is_stable() {
    // Entries already in a log must keep reading back: pin the encoding.
    let p = Proposal {
        at_ms: 1_761_859_800_000,
        command: acquire("r1", "build-42", "w1", 30_000, 5_000),
    };
    let json = serde_json::to_string(&p).unwrap();
    assert_eq!(
        json,
        r#"{"at_ms":1761859800000,"command":{"op":"acquire","request_id":"r1","name":"build-42","holder":"w1","node":"node-of-w1","ttl_ms":30000,"wait_ms":5000,"readopt":false}}"#
    );
    assert_eq!(serde_json::from_str::<Proposal>(&json).unwrap(), p);
    // An entry is the list of its proposals.
    let batch = serde_json::to_string(&Batch(vec![p.clone(), p.clone()])).unwrap();
    assert_eq!(batch, format!("[{json},{json}]"));
    let tick = r#"{"at_ms":5,"command":{"op":"tick"}}"#;
    assert_eq!(
        serde_json::from_str::<Proposal>(tick).unwrap().command,
        Command::Tick
    );
}

/// A history as its golden file holds it: each proposal, its answer and what it settled, one
/// JSON line each, entry `i + 1` at its time, and the snapshot at the end.
pub(super) fn encoded_history<const N: usize>(entries: [(u64, Command); N]) -> String {
    let mut s = LockState::default();
    let mut lines = String::new();
    for (i, (at_ms, command)) in entries.into_iter().enumerate() {
        let p = Proposal { at_ms, command };
        lines += &serde_json::to_string(&p).unwrap();
        lines.push('\n');
        let applied = one(&mut s, i as u64 + 1, 1, &p);
        assert_eq!(s.check(), Ok(()), "after entry {}", i + 1);
        lines += &serde_json::to_string(&applied.answer).unwrap();
        lines.push('\n');
        for settled in &applied.settled {
            lines += &serde_json::to_string(settled).unwrap();
            lines.push('\n');
        }
    }
    let snapshot = String::from_utf8(s.to_json().unwrap()).unwrap();
    assert_eq!(LockState::from_json(snapshot.as_bytes()).unwrap(), s);
    lines + &snapshot + "\n"
}

/// Compares `actual` with the file `testdata/NAME` beside this crate, or writes it when
/// `SENTINEL_BLESS` is set.
pub(super) fn golden(name: &str, actual: &str) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("testdata")
        .join(name);
    if std::env::var_os("SENTINEL_BLESS").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, actual).unwrap();
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (SENTINEL_BLESS=1 writes it)", path.display()));
    assert_eq!(
        actual,
        expected,
        "{} changed: entries in logs, snapshots on disk and answers to clients must keep reading back",
        path.display()
    );
}

#[test]
fn a_snapshot_written_before_request_digests_loads_and_takes_retries() {
    // Written by the version before request digests: its remembered requests have none, and a
    // retry of them is answered whatever its values (as then).
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/snapshot-v1.json");
    let mut s = LockState::from_json(&std::fs::read(path).unwrap()).unwrap();
    let Some(Answer::Granted { lease, .. }) = s.answer("r1").cloned() else {
        panic!("r1 was granted")
    };
    let retry = acquire("r1", "a", "w1", 5 * TTL, 0);
    let again = answer(step(&mut s, 3, 1_100, retry));
    assert!(
        matches!(&again, Answer::Granted { lease: l, .. } if *l == lease),
        "{again:?}"
    );
}

#[test]
fn entries_snapshots_and_answers_keep_their_encoding() {
    // Every command, every answer and every stored field, through one history. The files are
    // what logs and snapshots already on disk hold: a change to them breaks a running cluster.
    let info = TaskInfo {
        complexity: Some(3),
        estimated_duration: Some("45min".into()),
        task_type: Some("bug-fix".into()),
        priority: Some("high".into()),
        value: None,
    };
    let mut with_info = acquire("r1", "a", "w1", TTL, 0);
    if let Command::Acquire(a) = &mut with_info {
        a.task_info = info.clone();
    }
    let mut waiting = acquire("r2", "a", "w2", TTL, 5_000);
    if let Command::Acquire(a) = &mut waiting {
        a.task_info = info;
        a.readopt = true;
    }
    let mut renew_ttl = renew("r5", "a", "w1", t(1));
    if let Command::Renew(r) = &mut renew_ttl {
        r.ttl_ms = Some(2 * TTL);
    }
    let entries: Vec<(u64, Vec<Command>)> = vec![
        (1_000, vec![with_info]),
        (
            1_100,
            vec![
                waiting,
                acquire("r3", "a", "w3", TTL, 100),
                acquire("r4", "a", "w4", TTL, 0),
                renew_ttl,
                release("r6", "a", "w9", t(1)),
                release("r1", "a", "w1", t(1)),
                acquire("r7", "b", "w1", TTL, 0),
            ],
        ),
        (1_300, vec![Command::Tick]),
        (1_400, vec![withdraw("r8", "b", "w1", "r7")]),
        (1_500, vec![withdraw("r9", "c", "w5", "r10")]),
        (1_600, vec![acquire("r10", "c", "w5", TTL, 0)]),
        (1_700, vec![release("r11", "a", "w1", t(1))]),
    ];
    let mut s = LockState::default();
    let mut log = String::new();
    let mut answers = String::new();
    for (i, (at_ms, commands)) in entries.into_iter().enumerate() {
        let index = i as u64 + 1;
        let batch = Batch(
            commands
                .into_iter()
                .map(|command| Proposal { at_ms, command })
                .collect(),
        );
        log += &serde_json::to_string(&batch).unwrap();
        log.push('\n');
        let applied = s.apply(index, 1, &batch);
        assert_eq!(s.check(), Ok(()));
        let batch_answers: Vec<Option<Answer>> = applied.iter().map(|a| a.answer.clone()).collect();
        answers += &serde_json::to_string(&batch_answers).unwrap();
        answers.push('\n');
        for settled in applied.iter().flat_map(|a| &a.settled) {
            answers += &serde_json::to_string(settled).unwrap();
            answers.push('\n');
        }
        if index == 2 {
            let snapshot = String::from_utf8(s.to_json().unwrap()).unwrap();
            assert_eq!(LockState::from_json(snapshot.as_bytes()).unwrap(), s);
            golden("snapshot.json", &(snapshot + "\n"));
        }
    }
    for o in [
        Answer::Refused {
            limit: Limit::HeldLocks,
        },
        Answer::Refused {
            limit: Limit::Waiters,
        },
    ] {
        answers += &serde_json::to_string(&o).unwrap();
        answers.push('\n');
    }
    golden("log.jsonl", &log);
    golden("answers.jsonl", &answers);
    for line in log.lines() {
        let batch: Batch = serde_json::from_str(line).unwrap();
        assert_eq!(serde_json::to_string(&batch).unwrap(), line);
    }
}

fn sem(id: &str, name: &str, holder: &str, limit: u32, permits: u32, wait_ms: u64) -> Command {
    let Command::Acquire(acquire) = acquire(id, name, holder, TTL, wait_ms) else {
        unreachable!()
    };
    Command::Claim(Claim {
        acquire,
        shared: false,
        limit: Some(limit),
        permits,
    })
}

fn shared(id: &str, name: &str, holder: &str, wait_ms: u64) -> Command {
    let Command::Acquire(acquire) = acquire(id, name, holder, TTL, wait_ms) else {
        unreachable!()
    };
    Command::Claim(Claim {
        acquire,
        shared: true,
        limit: None,
        permits: 1,
    })
}

#[test]
fn a_semaphore_holds_its_limit_and_lets_waiters_in_as_permits_come_back() {
    let mut s = LockState::default();
    let a = granted(answer(step(&mut s, 1, 0, sem("r1", "s", "w1", 2, 1, 0))));
    let b = granted(answer(step(&mut s, 2, 0, sem("r2", "s", "w2", 2, 1, 0))));
    assert_eq!((a.fencing_token, b.fencing_token), (t(1), t(2)));
    assert_eq!(s.held(), 2);
    // Full: the third is told who holds it, or waits.
    assert!(matches!(
        answer(step(&mut s, 3, 0, sem("r3", "s", "w3", 2, 1, 0))),
        Answer::Held { .. }
    ));
    assert_eq!(
        answer(step(&mut s, 4, 0, sem("r4", "s", "w3", 2, 1, 5_000))),
        Answer::Queued { position: 1 }
    );
    // Another limit, or a lock claim, on the semaphore: refused at once, even with a wait.
    assert_eq!(
        answer(step(&mut s, 5, 0, sem("r5", "s", "w4", 3, 1, 5_000))),
        Answer::LimitMismatch { limit: 2 }
    );
    for (id, command) in [
        ("r6", acquire("r6", "s", "w4", TTL, 5_000)),
        ("r7", shared("r7", "s", "w4", 5_000)),
    ] {
        assert_eq!(
            answer(step(&mut s, 6, 0, command)),
            Answer::OtherKind {
                kind: Kind::Semaphore,
                limit: Some(2)
            },
            "{id}"
        );
    }
    // A release lets the waiter in, with a larger token.
    let a2 = step(&mut s, 7, 10, release("r8", "s", "w1", t(1)));
    assert!(matches!(a2.answer, Some(Answer::Released { .. })));
    let c = granted(a2.settled[0].answer.clone());
    assert_eq!((c.worker_id.as_str(), c.fencing_token), ("w3", t(7)));
    assert_eq!(s.group("s").map(|g| g.used()), Some(2));
    // A semaphore claim on a lock is refused too.
    step(&mut s, 8, 10, acquire("r9", "l", "w1", TTL, 0));
    assert_eq!(
        answer(step(&mut s, 9, 10, sem("r10", "l", "w2", 2, 1, 5_000))),
        Answer::OtherKind {
            kind: Kind::Exclusive,
            limit: None
        }
    );
    // Nonsense claims change nothing.
    for bad in [
        sem("r11", "x", "w1", 2, 3, 0),
        sem("r12", "x", "w1", 0, 0, 0),
    ] {
        assert_eq!(
            answer(step(&mut s, 10, 10, bad)),
            Answer::Refused {
                limit: Limit::Permits
            }
        );
    }
    assert!(s.group("x").is_none());
}

#[test]
fn a_semaphore_waiter_needing_many_permits_is_not_overtaken() {
    let mut s = LockState::default();
    step(&mut s, 1, 0, sem("r1", "s", "w1", 3, 2, 0));
    // w2 needs 2 (only 1 is free) and waits; w3 needs 1, which is free, but waits behind w2.
    step(&mut s, 2, 0, sem("r2", "s", "w2", 3, 2, 5_000));
    assert_eq!(
        answer(step(&mut s, 3, 0, sem("r3", "s", "w3", 3, 1, 5_000))),
        Answer::Queued { position: 2 }
    );
    // w1 gives back its 2: w2 (2) and w3 (1) both fit, in order, with this command's token.
    let a = step(&mut s, 4, 10, release("r4", "s", "w1", t(1)));
    let grants: Vec<(String, u64)> = a
        .settled
        .iter()
        .map(|x| {
            (
                x.request_id.clone(),
                granted(x.answer.clone()).fencing_token,
            )
        })
        .collect();
    assert_eq!(grants, [("r2".into(), t(4)), ("r3".into(), t(4))]);
    // When the head's wait runs out, the waiters behind it that fit go in.
    let mut s = LockState::default();
    step(&mut s, 1, 0, sem("r1", "s", "w1", 3, 2, 0));
    step(&mut s, 2, 0, sem("r2", "s", "w2", 3, 2, 100));
    step(&mut s, 3, 0, sem("r3", "s", "w3", 3, 1, 5_000));
    let a = step(&mut s, 4, 200, Command::Tick);
    assert!(matches!(a.settled[0].answer, Answer::TimedOut { .. }));
    assert_eq!(a.settled[1].request_id, "r3");
    assert_eq!(granted(a.settled[1].answer.clone()).fencing_token, t(4));
}

#[test]
fn shared_holds_exclude_a_writer_and_a_waiting_writer_holds_back_later_readers() {
    let mut s = LockState::default();
    let r1 = granted(answer(step(&mut s, 1, 0, shared("r1", "d", "w1", 0))));
    let r2 = granted(answer(step(&mut s, 2, 0, shared("r2", "d", "w2", 0))));
    // A writer is told it is held, or waits; a reader after a waiting writer waits too.
    assert!(matches!(
        answer(step(&mut s, 3, 0, acquire("r3", "d", "w3", TTL, 0))),
        Answer::Held { .. }
    ));
    assert_eq!(
        answer(step(&mut s, 4, 0, acquire("r4", "d", "w3", TTL, 5_000))),
        Answer::Queued { position: 1 }
    );
    assert_eq!(
        answer(step(&mut s, 5, 0, shared("r5", "d", "w4", 5_000))),
        Answer::Queued { position: 2 }
    );
    // The writer goes in when the last reader is gone; the reader after it when it is.
    assert!(
        step(&mut s, 6, 10, release("r6", "d", "w1", r1.fencing_token))
            .settled
            .is_empty()
    );
    let a = step(&mut s, 7, 10, release("r7", "d", "w2", r2.fencing_token));
    let writer = granted(a.settled[0].answer.clone());
    assert_eq!(
        (writer.worker_id.as_str(), writer.fencing_token),
        ("w3", t(7))
    );
    assert_eq!(s.group("d").map(|g| g.kind()), Some(Kind::Exclusive));
    let a = step(&mut s, 8, 10, release("r8", "d", "w3", t(7)));
    assert_eq!(a.settled[0].request_id, "r5");
    assert_eq!(s.group("d").map(|g| g.kind()), Some(Kind::Shared));
}

#[test]
fn a_reader_waiting_for_a_lock_turns_it_into_a_shared_lock_and_gets_it_after() {
    let mut s = LockState::default();
    let l = granted(answer(step(&mut s, 1, 0, acquire("r1", "a", "w1", TTL, 0))));
    step(&mut s, 2, 0, acquire("r2", "a", "w2", TTL, 5_000));
    assert_eq!(
        answer(step(&mut s, 3, 0, shared("r3", "a", "w3", 5_000))),
        Answer::Queued { position: 2 }
    );
    assert!(s.get("a").is_none());
    // The lock's holder still renews and releases it as before; its queue is served in order.
    assert!(matches!(
        answer(step(&mut s, 4, 10, renew("r4", "a", "w1", l.fencing_token))),
        Answer::Renewed { .. }
    ));
    let a = step(&mut s, 5, 20, release("r5", "a", "w1", l.fencing_token));
    assert_eq!(a.settled[0].request_id, "r2");
    let a = step(&mut s, 6, 20, release("r6", "a", "w2", t(5)));
    assert_eq!(a.settled[0].request_id, "r3");
    // Withdrawn, the reader's hold ends and the name is free again, for any kind.
    let a = step(&mut s, 7, 30, withdraw("r7", "a", "w3", "r3"));
    assert!(matches!(
        a.answer,
        Some(Answer::Withdrawn { lease: Some(_) })
    ));
    assert!(s.group("a").is_none() && s.held() == 0);
    assert!(matches!(
        answer(step(&mut s, 8, 30, sem("r8", "a", "w1", 1, 1, 0))),
        Answer::Granted { .. }
    ));
}

#[test]
fn holds_end_at_their_ttl_restart_with_a_new_leader_and_survive_snapshots() {
    let mut s = LockState::default();
    step(&mut s, 1, 0, sem("r1", "s", "w1", 1, 1, 0));
    step(&mut s, 2, 500, sem("r2", "s", "w2", 1, 1, 800));
    step(&mut s, 3, 600, shared("r3", "d", "w1", 0));
    let json = s.to_json().unwrap();
    assert_eq!(LockState::from_json(&json).unwrap(), s);
    // A new leader at 900: w1's hold lasts its TTL from then, and w2's wait as much longer.
    let a = one(
        &mut s,
        4,
        2,
        &Proposal {
            at_ms: 900,
            command: Command::Tick,
        },
    );
    assert!(a.settled.is_empty());
    assert_eq!(s.check(), Ok(()));
    assert_eq!(s.next_event_ms(), Some(1_901));
    // At 1,901 w1's hold has ended and w2, still waiting until 2,200, gets it.
    let a = one(
        &mut s,
        5,
        2,
        &Proposal {
            at_ms: 1_901,
            command: Command::Tick,
        },
    );
    assert_eq!(a.settled[0].request_id, "r2");
    assert!(matches!(a.settled[0].answer, Answer::Granted { .. }));
    assert_eq!(s.check(), Ok(()));
    // A snapshot breaking a group's invariant is refused.
    let mut v: serde_json::Value = serde_json::from_slice(&s.to_json().unwrap()).unwrap();
    v["groups"]["s"]["holds"][0]["permits"] = 2.into();
    let over = serde_json::to_vec(&v).unwrap();
    assert!(LockState::from_json(&over).unwrap_err().contains("permits"));
}

#[test]
fn the_claim_encoding_is_stable() {
    let p = Proposal {
        at_ms: 5,
        command: sem("r1", "s", "w1", 3, 2, 0),
    };
    let json = serde_json::to_string(&p).unwrap();
    assert_eq!(
        json,
        r#"{"at_ms":5,"command":{"op":"claim","request_id":"r1","name":"s","holder":"w1","node":"node-of-w1","ttl_ms":1000,"wait_ms":0,"readopt":false,"limit":3,"permits":2}}"#
    );
    assert_eq!(serde_json::from_str::<Proposal>(&json).unwrap(), p);
    let p = Proposal {
        at_ms: 5,
        command: shared("r1", "d", "w1", 0),
    };
    let json = serde_json::to_string(&p).unwrap();
    assert!(
        json.ends_with(r#""readopt":false,"shared":true,"permits":1}}"#),
        "{json}"
    );
    assert_eq!(serde_json::from_str::<Proposal>(&json).unwrap(), p);
}

#[test]
fn groups_and_their_answers_keep_their_encoding() {
    // Snapshots on disk hold groups from now on: pin their shape, and the new answers'.
    let mut s = LockState::default();
    step(&mut s, 1, 1_000, sem("r1", "s", "w1", 3, 2, 0));
    step(&mut s, 2, 1_000, sem("r2", "s", "w2", 3, 2, 5_000));
    step(&mut s, 3, 1_000, shared("r3", "d", "w1", 0));
    step(&mut s, 4, 1_000, acquire("r4", "d", "w2", TTL, 5_000));
    let snapshot = String::from_utf8(s.to_json().unwrap()).unwrap();
    assert_eq!(LockState::from_json(snapshot.as_bytes()).unwrap(), s);
    golden("snapshot-groups.json", &(snapshot + "\n"));
    for (answer, json) in [
        (
            Answer::OtherKind {
                kind: Kind::Semaphore,
                limit: Some(3),
            },
            r#"{"outcome":"other_kind","kind":"semaphore","limit":3}"#,
        ),
        (
            Answer::OtherKind {
                kind: Kind::Shared,
                limit: None,
            },
            r#"{"outcome":"other_kind","kind":"shared"}"#,
        ),
        (
            Answer::LimitMismatch { limit: 3 },
            r#"{"outcome":"limit_mismatch","limit":3}"#,
        ),
        (
            Answer::Refused {
                limit: Limit::Permits,
            },
            r#"{"outcome":"refused","limit":"permits"}"#,
        ),
    ] {
        assert_eq!(serde_json::to_string(&answer).unwrap(), json);
        assert_eq!(serde_json::from_str::<Answer>(json).unwrap(), answer);
    }
}
