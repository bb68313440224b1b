//! The table's shared holds, semaphores and reservations: their rules one by one, and a property
//! test over random command logs mixing every kind of hold.

use std::collections::BTreeMap;

use proptest::prelude::*;

use super::super::{LockRecord, LockTable, Op, Response};
use super::{MAX_RESERVATION_MS, RESERVATION_GRACE_MS as GRACE};
use crate::lock::{HoldKind, Takeover, TaskInfo};

const TTL: u64 = 1_000;
/// A claimant's pause before its next attempt, in the unit tests.
const BACK: u64 = 300;

fn claim(name: &str, worker: &str, kind: HoldKind, wait_ms: u64) -> Op {
    Op::Acquire {
        name: name.into(),
        worker_id: worker.into(),
        node_id: format!("node-of-{worker}"),
        ttl_ms: TTL,
        takeover: Takeover::None,
        task_info: TaskInfo::default(),
        readopt: true,
        kind,
        wait_ms,
    }
}

fn with_takeover(mut op: Op, to: Takeover) -> Op {
    if let Op::Acquire { takeover, .. } = &mut op {
        *takeover = to;
    }
    op
}

fn release(name: &str, worker: &str) -> Op {
    Op::Release {
        name: name.into(),
        worker_id: worker.into(),
        force: false,
        fencing_token: None,
    }
}

fn sem(limit: u32, permits: u32) -> HoldKind {
    HoldKind::Semaphore { limit, permits }
}

fn granted(resp: Response) -> LockRecord {
    match resp {
        Response::Granted { record, .. } => record,
        other => panic!("expected a grant, got {other:?}"),
    }
}

fn held_by(resp: &Response) -> &str {
    match resp {
        Response::Held { record, .. } => &record.worker_id,
        other => panic!("expected Held, got {other:?}"),
    }
}

#[test]
fn shared_holds_are_held_together_and_a_waiting_writer_is_not_overtaken() {
    let mut t = LockTable::default();
    let r1 = granted(t.apply(&claim("db", "r1", HoldKind::Shared, BACK), 10));
    let r2 = granted(t.apply(&claim("db", "r2", HoldKind::Shared, BACK), 20));
    assert!(r2.fencing_token > r1.fencing_token);
    // The writer is refused, and reserves the name.
    let resp = t.apply(&claim("db", "w", HoldKind::Exclusive, BACK), 30);
    assert_eq!(held_by(&resp), "r1");
    assert_eq!(t.intent("db", 30).unwrap().worker_id, "w");
    // A later reader would fit beside the readers, but the writer's reservation holds it back.
    match t.apply(&claim("db", "r3", HoldKind::Shared, BACK), 40) {
        Response::Reserved { intent, record } => {
            assert_eq!(intent.worker_id, "w");
            assert_eq!(record.unwrap().worker_id, "r1");
        }
        other => panic!("{other:?}"),
    }
    // The writer coming back renews its reservation; the readers leave; it gets the lock.
    assert_eq!(
        held_by(&t.apply(&claim("db", "w", HoldKind::Exclusive, BACK), 300)),
        "r1"
    );
    assert!(t.intent("db", 300 + BACK + GRACE).is_some());
    for r in ["r1", "r2"] {
        assert!(matches!(
            t.apply(&release("db", r), 310),
            Response::Released { record: Some(_) }
        ));
    }
    // Freed, but still reserved: a reader arriving first is refused, with the reservation.
    assert!(matches!(
        t.apply(&claim("db", "r3", HoldKind::Shared, BACK), 320),
        Response::Reserved { record: None, .. }
    ));
    let w = granted(t.apply(&claim("db", "w", HoldKind::Exclusive, BACK), 330));
    assert!(w.fencing_token > r2.fencing_token);
    assert_eq!(t.get("db"), Some(&w), "an exclusive hold is a plain lock");
    assert!(t.group("db").is_none() && t.intent("db", 330).is_none());
    // A reader behind the writer reserves in turn, and gets in once it is gone.
    assert_eq!(
        held_by(&t.apply(&claim("db", "r3", HoldKind::Shared, BACK), 340)),
        "w"
    );
    t.apply(&release("db", "w"), 350);
    granted(t.apply(&claim("db", "r3", HoldKind::Shared, BACK), 360));
    assert_eq!(t.check(), Ok(()));
}

#[test]
fn a_semaphore_counts_permits_and_a_large_claim_is_not_starved_by_small_ones() {
    let mut t = LockTable::default();
    granted(t.apply(&claim("gpu", "a", sem(4, 2), BACK), 10));
    granted(t.apply(&claim("gpu", "b", sem(4, 1), BACK), 10));
    // 3 of 4 held: 2 more do not fit; the claim reserves.
    assert_eq!(
        held_by(&t.apply(&claim("gpu", "c", sem(4, 2), BACK), 20)),
        "a"
    );
    // One more permit would fit, but c waits first.
    assert!(matches!(
        t.apply(&claim("gpu", "d", sem(4, 1), BACK), 30),
        Response::Reserved { .. }
    ));
    t.apply(&release("gpu", "b"), 40);
    let c = granted(t.apply(&claim("gpu", "c", sem(4, 2), BACK), 50));
    assert_eq!(t.group("gpu").unwrap().used(), 4);
    assert_eq!(t.group("gpu").unwrap().limit, Some(4));
    // Another limit, and other kinds, are refused whatever is free.
    assert_eq!(
        t.apply(&claim("gpu", "d", sem(5, 1), BACK), 60),
        Response::LimitMismatch { limit: 4, asked: 5 }
    );
    for kind in [HoldKind::Exclusive, HoldKind::Shared] {
        assert_eq!(
            t.apply(&claim("gpu", "d", kind, BACK), 60),
            Response::OtherKind {
                shared: false,
                limit: Some(4)
            }
        );
    }
    granted(t.apply(&claim("lock", "x", HoldKind::Exclusive, BACK), 60));
    assert_eq!(
        t.apply(&claim("lock", "d", sem(2, 1), BACK), 60),
        Response::OtherKind {
            shared: false,
            limit: None
        }
    );
    // A hold that cannot exist.
    assert!(matches!(
        t.apply(&claim("gpu", "d", sem(4, 5), BACK), 60),
        Response::Invalid { .. }
    ));
    // Release gives back this worker's permits only; then the group is gone with its last hold.
    let r = t.apply(&release("gpu", "c"), 70);
    assert_eq!(r, Response::Released { record: Some(c) });
    t.apply(&release("gpu", "a"), 70);
    assert!(t.group("gpu").is_none());
    granted(t.apply(&claim("gpu", "d", sem(5, 5), BACK), 80));
}

#[test]
fn a_reservation_lasts_until_its_claimant_would_have_come_back() {
    let mut t = LockTable::default();
    granted(t.apply(&claim("n", "r", HoldKind::Shared, BACK), 0));
    // A last attempt (nothing comes after it) reserves nothing.
    t.apply(&claim("n", "w", HoldKind::Exclusive, 0), 10);
    assert!(t.intent("n", 10).is_none());
    t.apply(&claim("n", "w", HoldKind::Exclusive, BACK), 20);
    let since = t.intent("n", 20).unwrap().since_ms;
    // It lasts the announced pause and the grace for the attempt to arrive.
    assert!(t.intent("n", 20 + BACK + GRACE).is_some());
    // Not back in time: the reservation has ended and a reader gets in.
    let at = 21 + BACK + GRACE;
    granted(t.apply(&claim("n", "r2", HoldKind::Shared, BACK), at));
    // Renewed by each attempt, keeping when it started; ended by the last one.
    t.apply(&claim("n", "w", HoldKind::Exclusive, BACK), at + 100);
    t.apply(&claim("n", "w", HoldKind::Exclusive, BACK), at + 300);
    let intent = t.intent("n", at + 300).unwrap();
    assert_eq!(
        (intent.since_ms, intent.until_ms),
        (at + 100, at + 300 + BACK + GRACE)
    );
    assert!(since < intent.since_ms);
    t.apply(&claim("n", "w", HoldKind::Exclusive, 0), at + 400);
    assert!(t.intent("n", at + 400).is_none());
    // Bounded whatever the claimant says; ended by its release.
    t.apply(&claim("n", "w", HoldKind::Exclusive, u64::MAX), at + 500);
    let until = t.intent("n", at + 500).unwrap().until_ms;
    assert_eq!(until, at + 500 + MAX_RESERVATION_MS + GRACE);
    t.apply(&release("n", "w"), at + 600);
    assert!(t.intent("n", at + 600).is_none());
    // A forced claim is not held back by it.
    t.apply(&claim("n", "w", HoldKind::Exclusive, BACK), at + 700);
    let forced = with_takeover(claim("n", "f", HoldKind::Shared, BACK), Takeover::Any);
    granted(t.apply(&forced, at + 701));
}

#[test]
fn holds_are_renewed_released_and_ended_one_by_one() {
    let mut t = LockTable::default();
    let a = granted(t.apply(&claim("s", "a", HoldKind::Shared, BACK), 0));
    let b = granted(t.apply(&claim("s", "b", HoldKind::Shared, BACK), 500));
    // Re-adoption of the same kind keeps the token; another worker's renewal is refused.
    let again = t.apply(&claim("s", "a", HoldKind::Shared, BACK), 600);
    assert!(
        matches!(again, Response::Granted { adopted: true, ref record, .. } if record.fencing_token == a.fencing_token)
    );
    let renew = |worker: &str, token| Op::Renew {
        name: "s".into(),
        worker_id: worker.into(),
        fencing_token: token,
        ttl_ms: None,
    };
    assert!(matches!(
        t.apply(&renew("c", None), 700),
        Response::NotOwner { .. }
    ));
    assert!(matches!(
        t.apply(&renew("b", Some(a.fencing_token)), 700),
        Response::NotOwner { .. }
    ));
    assert!(
        matches!(t.apply(&renew("b", None), 1400), Response::Renewed { ref record } if record.fencing_token == b.fencing_token)
    );
    // a's lease ran out (600 + TTL): it cannot renew, and the janitor ends only its hold.
    assert!(matches!(
        t.apply(&renew("a", None), 1700),
        Response::Expired { .. }
    ));
    let swept = t.apply(&Op::ReleaseStale { name: "s".into() }, 1700);
    assert!(matches!(swept, Response::Released { record: Some(ref r) } if r.worker_id == "a"));
    assert!(matches!(
        t.apply(&Op::ReleaseStale { name: "s".into() }, 1700),
        Response::Held { stale: false, .. }
    ));
    // b's lease runs out; a steal-stale claim of another kind ends it and takes the name over.
    let steal = with_takeover(claim("s", "w", HoldKind::Exclusive, BACK), Takeover::Stale);
    match t.apply(&steal, 2500) {
        Response::Granted { took_over, .. } => assert_eq!(took_over.unwrap().worker_id, "b"),
        other => panic!("{other:?}"),
    }
    assert!(t.group("s").is_none() && t.get("s").is_some());
    // A withdrawn hold is gone.
    let x = granted(t.apply(&claim("t", "x", sem(2, 1), BACK), 3000));
    assert!(t.withdraw("t", x.fencing_token));
    assert!(t.group("t").is_none());
}

#[test]
fn an_older_table_reads_and_a_table_without_groups_writes_as_before() {
    let old = r#"{"next_token": 3, "locks": {"a": {"worker_id": "w", "node_id": "n",
        "fencing_token": 2, "claimed_at_ms": 0, "heartbeat_ms": 0, "ttl_ms": 1}}}"#;
    let t: LockTable = serde_json::from_str(old).unwrap();
    assert_eq!(t.check(), Ok(()));
    assert_eq!(t.get("a").unwrap().fencing_token, 2);
    let json = serde_json::to_string(&t).unwrap();
    assert!(
        !json.contains("groups") && !json.contains("intents"),
        "{json}"
    );
    // An exclusive acquire is written as before too.
    let json = serde_json::to_string(&claim("a", "w", HoldKind::Exclusive, 0)).unwrap();
    assert!(
        !json.contains("kind") && !json.contains("wait_ms"),
        "{json}"
    );
}

#[test]
fn check_rejects_inconsistent_groups() {
    let mut t = LockTable::default();
    granted(t.apply(&claim("s", "a", sem(3, 2), BACK), 0));
    granted(t.apply(&claim("l", "a", HoldKind::Exclusive, BACK), 0));
    assert_eq!(t.check(), Ok(()));
    let mut bad = t.clone();
    bad.groups.get_mut("s").unwrap().holds[0].permits = 4;
    assert!(bad.check().unwrap_err().contains("limit"));
    let mut bad = t.clone();
    let group = bad.groups["s"].clone();
    bad.groups.insert("l".into(), group);
    assert!(bad.check().is_err());
    let mut bad = t.clone();
    bad.groups.get_mut("s").unwrap().holds[0]
        .lease
        .fencing_token = 2;
    assert!(bad.check().is_err(), "a token shared with a lock");
    let mut bad = t;
    bad.groups.get_mut("s").unwrap().holds.clear();
    assert!(bad.check().is_err());
}

/// One generated step: (command, name, worker, time step, raw number, takeover, readopt, force,
/// kind, the claimant comes back).
type Step = (u8, usize, usize, u8, u64, u8, bool, bool, u8, bool);

fn steps() -> impl Strategy<Value = Vec<Step>> {
    prop::collection::vec(
        (
            0u8..12,
            0usize..2,
            0usize..4,
            0u8..20,
            any::<u64>(),
            0u8..6,
            any::<bool>(),
            any::<bool>(),
            0u8..6,
            any::<bool>(),
        ),
        1..300,
    )
}

/// The kinds a generated claim asks for: mostly one semaphore limit, sometimes another.
fn kind_of(k: u8, n: u64) -> HoldKind {
    match k {
        0 => HoldKind::Exclusive,
        1 | 2 => HoldKind::Shared,
        5 => sem(2, 1 + (n % 2) as u32),
        _ => sem(3, 1 + (n % 3) as u32),
    }
}

fn log_of(steps: &[Step], allow_force: bool, tokens: &[u64]) -> Vec<(Op, u64)> {
    const NAMES: [&str; 2] = ["alpha", "beta"];
    const WORKERS: [&str; 4] = ["w1", "w2", "w3", "w4"];
    let mut now: u64 = 1_000_000;
    let mut log = Vec::with_capacity(steps.len());
    for &(cmd, name, worker, jump, n, takeover, readopt, force, kind, back) in steps {
        now = match jump {
            0 => now.saturating_sub(n % (2 * TTL)),
            1 => now + TTL + n % TTL,
            _ => now + n % (TTL / 4),
        };
        let (name, worker) = (NAMES[name], WORKERS[worker]);
        // A token some grant may have had, so that releases and renewals name grants.
        let token = (n % 3 == 0).then(|| tokens[(n as usize / 3) % tokens.len()]);
        let op = match cmd {
            0..=4 => Op::Acquire {
                name: name.into(),
                worker_id: worker.into(),
                node_id: format!("n-{worker}"),
                ttl_ms: TTL / 2 + n % TTL,
                takeover: match takeover {
                    0..=2 => Takeover::None,
                    3 | 4 => Takeover::Stale,
                    _ if allow_force => Takeover::Any,
                    _ => Takeover::Stale,
                },
                task_info: TaskInfo::default(),
                readopt,
                kind: kind_of(kind, n),
                wait_ms: if back { TTL / 2 } else { 0 },
            },
            5..=7 => Op::Renew {
                name: name.into(),
                worker_id: worker.into(),
                fencing_token: token,
                ttl_ms: None,
            },
            8 => Op::ReleaseStale { name: name.into() },
            _ => Op::Release {
                name: name.into(),
                worker_id: worker.into(),
                force: allow_force && force,
                fencing_token: token,
            },
        };
        log.push((op, now));
    }
    log
}

/// A hold a worker was told it has: (worker, name, token) -> (lease end, kind).
type Beliefs = BTreeMap<(String, String, u64), (u64, HoldKind)>;

/// Every token and lease in the table, by name.
fn leases(t: &LockTable) -> Vec<(&str, &LockRecord)> {
    t.holds()
}

/// Checks one step's answer against the table before and after it, and updates what the
/// workers believe they hold.
fn check_step(
    before: &LockTable,
    t: &LockTable,
    op: &Op,
    resp: &Response,
    now: u64,
    beliefs: &mut Beliefs,
    last_token: &mut BTreeMap<String, u64>,
) {
    let name = op.name().to_string();
    let ctx = || format!("{op:?} at {now} -> {resp:?}");
    match (resp, op) {
        (
            Response::Granted {
                record, adopted, ..
            },
            Op::Acquire {
                worker_id,
                kind,
                takeover,
                ..
            },
        ) => {
            assert_eq!(&record.worker_id, worker_id, "{}", ctx());
            if *adopted {
                assert_eq!(t.next_token(), before.next_token(), "{}", ctx());
            } else {
                // Tokens strictly increase per name, across every kind of hold.
                let last = last_token.get(&name).copied().unwrap_or(0);
                assert!(record.fencing_token > last, "{}", ctx());
                assert_eq!(record.fencing_token, before.next_token(), "{}", ctx());
                last_token.insert(name.clone(), record.fencing_token);
                // Nobody else's live reservation was overtaken, unless forced.
                if *takeover != Takeover::Any
                    && let Some(i) = before.intent(&name, now)
                {
                    assert_eq!(&i.worker_id, worker_id, "overtook {i:?}: {}", ctx());
                }
                assert!(
                    t.intent(&name, now)
                        .is_none_or(|i| &i.worker_id != worker_id)
                );
            }
            let key = (worker_id.clone(), name.clone(), record.fencing_token);
            beliefs.insert(key, (record.expires_at_ms(), *kind));
        }
        (Response::Renewed { .. }, Op::Renew { worker_id, .. }) => {
            for ((w, n, token), (until, _)) in beliefs.iter_mut() {
                if w == worker_id && *n == name {
                    let lease = leases(t)
                        .into_iter()
                        .find(|(ln, r)| *ln == n && r.fencing_token == *token);
                    if let Some((_, r)) = lease {
                        *until = r.expires_at_ms();
                    }
                }
            }
        }
        (
            Response::Released { record },
            Op::Release {
                worker_id,
                force,
                fencing_token,
                ..
            },
        ) => {
            beliefs.retain(|(w, n, token), _| {
                *n != name
                    || (!force && (w != worker_id || fencing_token.is_some_and(|t| t != *token)))
            });
            if let Some(r) = record {
                assert!(
                    leases(before).iter().any(|(n, l)| *n == name && *l == r),
                    "{}",
                    ctx()
                );
            }
        }
        (Response::Released { record }, Op::ReleaseStale { .. }) => {
            if let Some(r) = record {
                assert!(LockTable::is_stale(r, now), "{}", ctx());
            }
        }
        (
            Response::Held { .. }
            | Response::Reserved { .. }
            | Response::OtherKind { .. }
            | Response::LimitMismatch { .. }
            | Response::Invalid { .. },
            Op::Acquire { takeover, .. },
        ) => {
            // A refusal changes no hold, unless the claim could end stale ones.
            if *takeover != Takeover::Stale {
                assert_eq!(leases(t), leases(before), "{}", ctx());
            }
            if let Response::Reserved { intent, .. } = resp {
                assert!(intent.is_live(now), "{}", ctx());
            }
        }
        (
            Response::Held { .. }
            | Response::NotOwner { .. }
            | Response::Expired { .. }
            | Response::NotHeld,
            _,
        ) => assert_eq!(leases(t), leases(before), "{}", ctx()),
        _ => panic!("response does not fit the command: {}", ctx()),
    }
}

/// What the workers believe must be true of the table: every live hold a worker was told of is
/// in it, an exclusive one alone, and never more permits than the limit.
fn check_beliefs(t: &LockTable, beliefs: &mut Beliefs, now: u64, ctx: &str) {
    // A holder measures its lease on its own clock: once over, it never revives.
    beliefs.retain(|(w, n, token), (until, _)| {
        *until >= now
            && leases(t)
                .iter()
                .any(|(ln, r)| ln == n && r.fencing_token == *token && &r.worker_id == w)
    });
    let mut per_name: BTreeMap<&str, Vec<HoldKind>> = BTreeMap::new();
    for ((_, n, _), (_, kind)) in beliefs.iter() {
        per_name.entry(n.as_str()).or_default().push(*kind);
    }
    for (n, kinds) in per_name {
        if kinds.contains(&HoldKind::Exclusive) {
            assert_eq!(
                kinds.len(),
                1,
                "{n}: an exclusive hold beside others: {ctx}"
            );
        }
        let permits: u32 = kinds
            .iter()
            .map(|k| match k {
                HoldKind::Semaphore { permits, .. } => *permits,
                _ => 0,
            })
            .sum();
        if let Some(HoldKind::Semaphore { limit, .. }) = kinds.first() {
            assert!(
                permits <= *limit,
                "{n}: {permits} permits of {limit}: {ctx}"
            );
        }
    }
}

/// Applies a log, checking every step; with `check_leases`, also that every live hold a worker
/// was told of is still its own (no force in the log).
fn run_checked(log: &[(Op, u64)], check_leases: bool) -> (LockTable, Vec<Response>) {
    let mut t = LockTable::default();
    let mut responses = Vec::with_capacity(log.len());
    let mut beliefs = Beliefs::new();
    let mut last_token = BTreeMap::new();
    for (i, (op, now)) in log.iter().enumerate() {
        let before = t.clone();
        let resp = t.apply(op, *now);
        check_step(&before, &t, op, &resp, *now, &mut beliefs, &mut last_token);
        let ctx = format!("step {i}: {op:?} at {now} -> {resp:?}");
        // Structural: unique tokens below the counter, no name both a lock and a group, no
        // semaphore over its limit, no group mixing kinds.
        assert_eq!(t.check(), Ok(()), "{ctx}");
        if check_leases {
            let told = beliefs.len();
            let mut kept = beliefs.clone();
            kept.retain(|_, (until, _)| *until >= *now);
            check_beliefs(&t, &mut beliefs, *now, &ctx);
            assert_eq!(
                kept.len(),
                beliefs.len(),
                "a live hold was lost ({told}): {ctx}"
            );
        }
        responses.push(resp);
    }
    (t, responses)
}

proptest! {
    /// Any log of acquires of every kind, releases, renewals, janitor releases and time steps
    /// (backwards too) keeps the table's invariants at every step — never more permits than the
    /// limit, never an exclusive hold beside another, tokens strictly increasing per name, no
    /// reservation overtaken, no live hold lost without force — and replays, through JSON, to
    /// the same table and answers.
    #[test]
    fn any_log_of_every_kind_of_hold_keeps_invariants_and_replays_identically(
        steps in steps(),
        allow_force in any::<bool>(),
        tokens in prop::collection::vec(1u64..40, 1..5),
    ) {
        let log = log_of(&steps, allow_force, &tokens);
        let (table, responses) = run_checked(&log, !allow_force);
        let json = serde_json::to_string(&table).unwrap();
        let back: LockTable = serde_json::from_str(&json).unwrap();
        prop_assert_eq!(&back, &table);
        let log_json = serde_json::to_string(&log).unwrap();
        let replay_log: Vec<(Op, u64)> = serde_json::from_str(&log_json).unwrap();
        let mut replay = LockTable::default();
        let replayed: Vec<Response> = replay_log.iter().map(|(c, now)| replay.apply(c, *now)).collect();
        prop_assert_eq!(replay, table);
        prop_assert_eq!(replayed, responses);
    }
}
