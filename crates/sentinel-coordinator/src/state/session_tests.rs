//! Tests of sessions: holds in a session share its lease, are renewed by its renewal, end with
//! it, and are released by its close; and their encoding.

use super::tests::{encoded_history, golden, one, renew};
use super::*;
use sentinel_core::lock::TaskInfo;

fn step(s: &mut LockState, index: u64, at_ms: u64, command: Command) -> Applied {
    let applied = one(s, index, 1, &Proposal { at_ms, command });
    assert_eq!(s.check(), Ok(()), "after entry {index}");
    applied
}

fn open(id: &str, holder: &str, ttl_ms: u64) -> Command {
    Command::OpenSession(OpenSession {
        request_id: id.into(),
        holder: holder.into(),
        ttl_ms,
    })
}

fn call(id: &str, holder: &str, session: u64) -> SessionCall {
    SessionCall {
        request_id: id.into(),
        holder: holder.into(),
        session,
    }
}

fn acquire(id: &str, name: &str, holder: &str, session: Option<u64>, wait_ms: u64) -> Command {
    Command::Acquire(Acquire {
        request_id: id.into(),
        name: name.into(),
        holder: holder.into(),
        node: String::new(),
        ttl_ms: 60_000,
        wait_ms,
        readopt: false,
        task_info: TaskInfo::default(),
        session,
    })
}

/// `holder` renews its hold `(name, token)` into session `session`.
fn adopt(id: &str, (name, token): (&str, u64), holder: &str, session: u64) -> Command {
    match renew(id, name, holder, token) {
        Command::Renew(r) => Command::Renew(Renew {
            session: Some(session),
            ..r
        }),
        other => other,
    }
}

fn session_of(a: &Applied) -> u64 {
    match &a.answer {
        Some(Answer::Session { session, .. }) => *session,
        other => panic!("expected a session, got {other:?}"),
    }
}

fn lease(a: Option<&Answer>) -> sentinel_core::table::LockRecord {
    match a {
        Some(Answer::Granted { lease, .. }) => lease.clone(),
        other => panic!("expected a grant, got {other:?}"),
    }
}

#[test]
fn holds_in_a_session_share_its_lease_and_its_renewals() {
    let mut s = LockState::default();
    let id = session_of(&step(&mut s, 1, 1_000, open("o", "w1", 3_000)));
    assert_eq!(id, position(1, 0));
    // The acquire's own TTL does not count: the hold's lease is the session's.
    let a = lease(
        step(&mut s, 2, 1_500, acquire("a", "x", "w1", Some(id), 0))
            .answer
            .as_ref(),
    );
    let b = lease(
        step(&mut s, 3, 2_000, acquire("b", "y", "w1", Some(id), 0))
            .answer
            .as_ref(),
    );
    assert_eq!((a.expires_at_ms(), b.expires_at_ms()), (4_000, 4_000));
    // One renewal renews both.
    let kept = step(&mut s, 4, 3_500, Command::KeepSession(call("k", "w1", id)));
    assert_eq!(
        kept.answer,
        Some(Answer::Session {
            session: id,
            expires_at_ms: 6_500
        })
    );
    assert_eq!(s.get("x").map(|l| l.lease.expires_at_ms()), Some(6_500));
    assert_eq!(s.get("y").map(|l| l.lease.expires_at_ms()), Some(6_500));
    // Not renewed again: the session and both holds end at once; a waiter gets its lock.
    step(&mut s, 5, 4_000, acquire("c", "x", "w2", None, 60_000));
    let ended = step(&mut s, 6, 6_501, Command::Tick);
    let expired: Vec<_> = ended
        .events
        .iter()
        .filter(|e| e.event == EventKind::Expired)
        .map(|e| e.lock.as_str())
        .collect();
    assert_eq!(expired, ["x", "y"]);
    assert_eq!(s.session(id), None);
    assert_eq!(s.get("x").map(|l| l.lease.worker_id.as_str()), Some("w2"));
    let late = step(&mut s, 7, 6_600, Command::KeepSession(call("k2", "w1", id)));
    assert_eq!(late.answer, Some(Answer::NoSession));
}

#[test]
fn a_waiting_acquire_in_a_session_is_bound_when_granted_and_a_close_releases_all() {
    let mut s = LockState::default();
    step(&mut s, 1, 0, acquire("held", "x", "w0", None, 0));
    let id = session_of(&step(&mut s, 2, 0, open("o", "w1", 10_000)));
    let queued = step(&mut s, 3, 0, acquire("a", "x", "w1", Some(id), 60_000));
    assert_eq!(queued.answer, Some(Answer::Queued { position: 1 }));
    step(&mut s, 4, 0, acquire("b", "y", "w1", Some(id), 0));
    // w0 gives x back at 5,000: w1's waiting acquire gets it, with the session's lease.
    let handed = step(
        &mut s,
        5,
        5_000,
        Command::Release(Release {
            request_id: "r".into(),
            name: "x".into(),
            holder: "w0".into(),
            token: position(1, 0),
        }),
    );
    let granted = lease(handed.settled.first().map(|x| &x.answer));
    assert_eq!(granted.worker_id, "w1");
    assert_eq!(s.get("x").map(|l| l.lease.expires_at_ms()), Some(10_000));
    assert_eq!(
        s.answer("a").map(|a| lease(Some(a)).expires_at_ms()),
        Some(10_000),
        "a retry is told the bound lease"
    );
    // Someone else cannot close it; its holder can, and both holds are released.
    let theirs = step(
        &mut s,
        6,
        5_100,
        Command::CloseSession(call("c0", "w2", id)),
    );
    assert_eq!(theirs.answer, Some(Answer::NoSession));
    let closed = step(&mut s, 7, 5_200, Command::CloseSession(call("c", "w1", id)));
    let Some(Answer::SessionClosed { released, .. }) = &closed.answer else {
        panic!("{closed:?}")
    };
    let names: Vec<_> = released.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["x", "y"]);
    assert_eq!((s.get("x"), s.get("y"), s.session(id)), (None, None, None));
    let events: Vec<_> = closed
        .events
        .iter()
        .map(|e| (e.event, e.lock.as_str()))
        .collect();
    assert_eq!(
        events,
        [(EventKind::Released, "x"), (EventKind::Released, "y")]
    );
}

#[test]
fn only_an_open_session_of_the_holder_takes_holds() {
    let mut s = LockState::default();
    let id = session_of(&step(&mut s, 1, 0, open("o", "w1", 1_000)));
    for (req, holder, session) in [("a", "w2", id), ("b", "w1", id + 1)] {
        let a = step(&mut s, 2, 10, acquire(req, "x", holder, Some(session), 0));
        assert_eq!(a.answer, Some(Answer::NoSession), "{req}");
    }
    assert_eq!(s.get("x"), None);
    // A retry of the open is the same session; a new leader starts it afresh.
    let again = step(&mut s, 3, 20, open("o", "w1", 1_000));
    assert_eq!(session_of(&again), id);
    let fresh = one(
        &mut s,
        4,
        2,
        &Proposal {
            at_ms: 900,
            command: Command::Tick,
        },
    );
    assert!(fresh.events.is_empty());
    assert_eq!(s.session(id).map(Session::expires_at_ms), Some(1_900));
    let restored = LockState::from_json(&s.to_json().unwrap()).unwrap();
    assert_eq!(restored, s);
}

#[test]
fn a_hold_taken_alone_moves_into_a_session_and_out_of_its_old_one() {
    let mut s = LockState::default();
    let token = lease(
        step(&mut s, 1, 0, acquire("a", "x", "w1", None, 0))
            .answer
            .as_ref(),
    )
    .fencing_token;
    let first = session_of(&step(&mut s, 2, 0, open("o1", "w1", 10_000)));
    let second = session_of(&step(&mut s, 3, 1_000, open("o2", "w1", 20_000)));
    // Only the holder's open session takes it, and only with its token.
    for (req, holder, session, token) in
        [("n1", "w2", first, token), ("n2", "w1", second + 1, token)]
    {
        let refused = step(&mut s, 4, 1_000, adopt(req, ("x", token), holder, session));
        assert_eq!(refused.answer, Some(Answer::NoSession), "{req}");
    }
    let stale = step(&mut s, 4, 1_000, adopt("n3", ("x", token + 1), "w1", first));
    assert!(
        matches!(stale.answer, Some(Answer::NotHolder { .. })),
        "{stale:?}"
    );
    let moved = step(&mut s, 5, 2_000, adopt("m1", ("x", token), "w1", first));
    let Some(Answer::Renewed { lease: bound }) = &moved.answer else {
        panic!("{moved:?}")
    };
    assert_eq!(
        (bound.fencing_token, bound.expires_at_ms()),
        (token, 10_000)
    );
    // Moved on into the second session: the first one's close leaves it held.
    step(&mut s, 6, 3_000, adopt("m2", ("x", token), "w1", second));
    assert_eq!(s.get("x").map(|l| l.lease.expires_at_ms()), Some(21_000));
    let closed = step(
        &mut s,
        7,
        4_000,
        Command::CloseSession(call("c1", "w1", first)),
    );
    let Some(Answer::SessionClosed { released, .. }) = &closed.answer else {
        panic!("{closed:?}")
    };
    assert!(released.is_empty(), "{released:?}");
    assert_eq!(s.get("x").map(|l| l.lease.fencing_token), Some(token));
    // It ends with the second session, which nobody renews.
    step(&mut s, 8, 21_001, Command::Tick);
    assert_eq!((s.get("x"), s.session(second)), (None, None));
}

#[test]
fn sessions_keep_their_encoding() {
    let entries = [
        (0, open("o", "w1", 5_000)),
        (10, acquire("a", "x", "w1", Some(position(1, 0)), 0)),
        (20, Command::KeepSession(call("k", "w1", position(1, 0)))),
        (30, acquire("b", "y", "w1", Some(position(1, 0)), 0)),
        (40, Command::CloseSession(call("c", "w1", position(1, 0)))),
        (50, Command::KeepSession(call("k2", "w1", position(1, 0)))),
        (60, open("o2", "w2", 5_000)),
        (70, acquire("a3", "z", "w2", None, 0)),
        (80, adopt("m", ("z", position(8, 0)), "w2", position(7, 0))),
    ];
    golden("sessions.jsonl", &encoded_history(entries));
}

mod properties {
    use proptest::prelude::*;

    use super::*;

    /// The lease of the hold `(name, token)`, a lock's or a group's.
    fn lease_of(s: &LockState, name: &str, token: u64) -> Option<sentinel_core::table::LockRecord> {
        if let Some(slot) = s.get(name).filter(|l| l.lease.fencing_token == token) {
            return Some(slot.lease.clone());
        }
        s.group(name)?
            .holds
            .iter()
            .find(|h| h.lease.fencing_token == token)
            .map(|h| h.lease.clone())
    }

    proptest! {
        /// Any history of sessions (open, renew, close, let lapse), of acquires in them or
        /// not, waiting or not, of holds moved into them, and releases: every hold a session keeps ends exactly when the
        /// session does, the state's invariants hold after every entry, and the log replays
        /// and resumes from a snapshot to the same state and answers.
        #[test]
        fn holds_in_a_session_end_with_it(
            steps in prop::collection::vec((0u8..8, 0usize..3, 0usize..2, 0u16..1_500, 0u8..3), 1..120),
            cut in any::<prop::sample::Index>(),
        ) {
            let mut s = LockState::default();
            let mut now = 0u64;
            let mut log = Vec::new();
            let mut results = Vec::new();
            let mut opened: Vec<(u64, String)> = Vec::new();
            for (i, (what, name, who, dt, pick)) in steps.into_iter().enumerate() {
                now += u64::from(dt);
                let index = i as u64 + 1;
                let holder = format!("w{who}");
                let name = format!("l{name}");
                let session = opened.get(pick as usize % opened.len().max(1)).map(|(id, _)| *id);
                let command = match what {
                    0 => open(&format!("o{i}"), &holder, 1_000 + u64::from(pick) * 500),
                    1 | 2 => acquire(&format!("a{i}"), &name, &holder, session.filter(|_| what == 1), u64::from(dt)),
                    3 => Command::KeepSession(call(&format!("k{i}"), &holder, session.unwrap_or(0))),
                    4 => Command::CloseSession(call(&format!("c{i}"), &holder, session.unwrap_or(0))),
                    5 => match s.get(&name) {
                        Some(l) => Command::Release(Release {
                            request_id: format!("r{i}"),
                            name: name.clone(),
                            holder: l.lease.worker_id.clone(),
                            token: l.lease.fencing_token,
                        }),
                        None => Command::Tick,
                    },
                    6 => match s.get(&name) {
                        Some(l) => adopt(&format!("m{i}"), (&name, l.lease.fencing_token), &l.lease.worker_id.clone(), session.unwrap_or(0)),
                        None => Command::Tick,
                    },
                    _ => Command::Tick,
                };
                let p = Proposal { at_ms: now, command };
                let applied = one(&mut s, index, 1, &p);
                prop_assert_eq!(s.check(), Ok(()));
                if let Some(Answer::Session { session, .. }) = &applied.answer {
                    opened.push((*session, holder.clone()));
                }
                for (id, _) in &opened {
                    let Some(session) = s.session(*id) else { continue };
                    for (lock, token) in &session.holds {
                        if let Some(lease) = lease_of(&s, lock, *token) {
                            prop_assert_eq!(lease.expires_at_ms(), session.expires_at_ms());
                            prop_assert_eq!(&lease.worker_id, &session.holder);
                        }
                    }
                }
                log.push((index, p));
                results.push(applied);
            }
            let mut replay = LockState::default();
            for ((index, p), applied) in log.iter().zip(&results) {
                prop_assert_eq!(&one(&mut replay, *index, 1, p), applied);
            }
            prop_assert_eq!(&replay, &s);
            let cut = cut.index(log.len() + 1);
            let mut head = LockState::default();
            for (index, p) in &log[..cut] {
                one(&mut head, *index, 1, p);
            }
            let mut resumed = LockState::from_json(&head.to_json().unwrap()).unwrap();
            for ((index, p), applied) in log[cut..].iter().zip(&results[cut..]) {
                prop_assert_eq!(&one(&mut resumed, *index, 1, p), applied);
            }
            prop_assert_eq!(resumed, s);
        }
    }
}
