//! Tests of the key-value store in the state: each rule on a small history, the encoding pinned
//! by a golden file, and a model-based property test (puts, merges, compare-and-set and deletes
//! applied through the state machine give what a plain map gives, every write's revision is its
//! event's, and the state survives a snapshot).

use std::collections::BTreeMap;

use proptest::prelude::*;
use serde_json::{Value, json};

use super::tests::{TTL, encoded_history, golden, one};
use super::*;
use sentinel_core::kv::{Compare, DEFAULT_QUOTA, Merge, Op};
use sentinel_core::lock::TaskInfo;

fn put(id: &str, key: &str, value: Value, merge: Merge, if_revision: Option<u64>) -> Command {
    Command::KvPut(KvPut {
        request_id: id.into(),
        key: key.into(),
        value,
        if_revision,
        merge,
        writer: "w".into(),
        quota: DEFAULT_QUOTA,
    })
}

fn delete(id: &str, key: &str, if_revision: Option<u64>) -> Command {
    Command::KvDelete(KvDelete {
        request_id: id.into(),
        key: key.into(),
        if_revision,
        writer: "w".into(),
    })
}

fn apply(s: &mut LockState, index: u64, command: Command) -> Applied {
    let applied = one(
        s,
        index,
        1,
        &Proposal {
            at_ms: index,
            command,
        },
    );
    assert_eq!(s.check(), Ok(()), "after entry {index}");
    applied
}

fn answer(a: &Applied) -> Answer {
    a.answer.clone().expect("an answer")
}

#[test]
fn writes_are_numbered_by_the_events_revision_and_compared_by_it() {
    let mut s = LockState::default();
    let a = apply(
        &mut s,
        1,
        put("r1", "k", json!("v1"), Merge::Replace, Some(0)),
    );
    assert_eq!(
        answer(&a),
        Answer::KvWritten {
            revision: 1,
            value: None
        }
    );
    assert_eq!(a.events.len(), 1);
    assert_eq!(
        (
            a.events[0].event,
            a.events[0].key.as_deref(),
            a.events[0].revision
        ),
        (EventKind::Put, Some("k"), 1)
    );
    // Create-only fails on an existing key; a stale revision fails; the right one writes.
    let b = apply(&mut s, 2, put("r2", "k", json!(0), Merge::Replace, Some(0)));
    assert_eq!(answer(&b), Answer::CompareFailed { revision: 1 });
    assert!(b.events.is_empty());
    let c = apply(
        &mut s,
        3,
        put("r3", "k", json!("v2"), Merge::Replace, Some(7)),
    );
    assert_eq!(answer(&c), Answer::CompareFailed { revision: 1 });
    let d = apply(
        &mut s,
        4,
        put("r4", "k", json!("v2"), Merge::Replace, Some(1)),
    );
    assert_eq!(
        answer(&d).clone(),
        Answer::KvWritten {
            revision: 2,
            value: None
        }
    );
    let v = s.kv_get("k").unwrap();
    assert_eq!(
        (
            v.value.clone(),
            v.create_revision,
            v.mod_revision,
            v.version
        ),
        (json!("v2"), 1, 2, 2)
    );
    // A delete compares too, and a missing key deletes nothing.
    let e = apply(&mut s, 5, delete("r5", "k", Some(1)));
    assert_eq!(answer(&e), Answer::CompareFailed { revision: 2 });
    let f = apply(&mut s, 6, delete("r6", "k", Some(2)));
    assert_eq!(answer(&f), Answer::KvDeleted { revision: Some(3) });
    assert_eq!(f.events[0].event, EventKind::Deleted);
    let g = apply(&mut s, 7, delete("r7", "k", None));
    assert_eq!(answer(&g), Answer::KvDeleted { revision: None });
    assert!(g.events.is_empty());
    assert_eq!((s.kv_get("k"), s.kv_bytes()), (None, 0));
}

#[test]
fn a_write_after_a_lease_ended_takes_the_revision_after_the_expiry() {
    let mut s = LockState::default();
    let acquire = Command::Acquire(Acquire {
        request_id: "a".into(),
        name: "lock".into(),
        holder: "h".into(),
        node: String::new(),
        ttl_ms: TTL,
        wait_ms: 0,
        readopt: false,
        task_info: TaskInfo::default(),
        session: None,
    });
    one(
        &mut s,
        1,
        1,
        &Proposal {
            at_ms: 0,
            command: acquire,
        },
    );
    let p = Proposal {
        at_ms: TTL + 1,
        command: put("r", "k", json!(1), Merge::Replace, None),
    };
    let applied = one(&mut s, 2, 1, &p);
    let kinds: Vec<_> = applied
        .events
        .iter()
        .map(|e| (e.event, e.revision))
        .collect();
    assert_eq!(kinds, [(EventKind::Expired, 2), (EventKind::Put, 3)]);
    assert_eq!(
        answer(&applied),
        Answer::KvWritten {
            revision: 3,
            value: None
        }
    );
    assert_eq!(s.kv_get("k").unwrap().mod_revision, 3);
}

#[test]
fn merges_combine_with_the_stored_value_and_conflicts_change_nothing() {
    let mut s = LockState::default();
    apply(&mut s, 1, put("r1", "n", json!(5), Merge::Add, None));
    let a = apply(&mut s, 2, put("r2", "n", json!(3), Merge::Add, None));
    assert_eq!(
        answer(&a),
        Answer::KvWritten {
            revision: 2,
            value: Some(json!(8))
        }
    );
    apply(
        &mut s,
        3,
        put("r3", "set", json!(["a"]), Merge::Union, None),
    );
    apply(
        &mut s,
        4,
        put("r4", "set", json!(["b", "a"]), Merge::Union, None),
    );
    assert_eq!(s.kv_get("set").unwrap().value, json!(["a", "b"]));
    let before = s.clone();
    let c = apply(&mut s, 5, put("r5", "set", json!(1), Merge::Add, None));
    assert!(matches!(answer(&c), Answer::MergeConflict { .. }), "{c:?}");
    assert!(c.events.is_empty());
    assert_eq!(s.kv, before.kv);
    assert_eq!(s.revision(), before.revision());
}

#[test]
fn a_retry_is_answered_from_memory_and_applied_once() {
    let mut s = LockState::default();
    let first = apply(&mut s, 1, put("r1", "n", json!(1), Merge::Add, None));
    let again = apply(&mut s, 2, put("r1", "n", json!(1), Merge::Add, None));
    assert_eq!(answer(&again), answer(&first));
    assert!(again.events.is_empty());
    assert_eq!(s.kv_get("n").unwrap().value, json!(1));
    // The same id for another write is not a retry.
    let other = apply(&mut s, 3, put("r1", "n", json!(2), Merge::Add, None));
    assert_eq!(answer(&other), Answer::RequestIdReused);
}

#[test]
fn the_quota_refuses_growth_but_not_shrinking() {
    let mut s = LockState::default();
    let with_quota = |id: &str, key: &str, value: Value, quota| {
        Command::KvPut(KvPut {
            request_id: id.into(),
            key: key.into(),
            value,
            if_revision: None,
            merge: Merge::Replace,
            writer: String::new(),
            quota,
        })
    };
    let quota = 2 * ENTRY_OVERHEAD + 20;
    apply(&mut s, 1, with_quota("r1", "a", json!("12345678"), quota));
    assert_eq!(s.kv_bytes(), 1 + 10 + ENTRY_OVERHEAD);
    let refused = apply(&mut s, 2, with_quota("r2", "b", json!("12345678"), quota));
    assert_eq!(
        answer(&refused),
        Answer::Refused {
            limit: Limit::KvQuota
        }
    );
    assert!(s.kv_get("b").is_none());
    // Over the quota (a node that lowered it), a write that shrinks a key still goes through.
    let shrink = apply(&mut s, 3, with_quota("r3", "a", json!(1), 1));
    assert!(matches!(answer(&shrink), Answer::KvWritten { .. }));
    assert_eq!(s.kv_bytes(), 1 + 1 + ENTRY_OVERHEAD);
}

#[test]
fn keys_survive_a_snapshot_and_a_damaged_one_is_refused() {
    let mut s = LockState::default();
    apply(
        &mut s,
        1,
        put("r1", "a/1", json!({"x": [1, 2]}), Merge::Replace, None),
    );
    apply(&mut s, 2, put("r2", "a/2", json!(2), Merge::Add, None));
    let json = s.to_json().unwrap();
    let back = LockState::from_json(&json).unwrap();
    assert_eq!(back, s);
    assert_eq!(back.kv_bytes(), s.kv_bytes());
    let mut v: Value = serde_json::from_slice(&json).unwrap();
    v["kv"]["a/1"]["mod_revision"] = 99.into();
    let ahead = serde_json::to_vec(&v).unwrap();
    assert!(
        LockState::from_json(&ahead)
            .unwrap_err()
            .contains("out of order")
    );
}

#[test]
fn the_kv_encoding_is_stable() {
    let history = encoded_history([
        (
            1,
            put("r1", "cfg/a", json!({"n": 1}), Merge::Replace, Some(0)),
        ),
        (2, put("r2", "cfg/a", json!({"m": 2}), Merge::Deep, Some(1))),
        (3, put("r3", "count", json!(2), Merge::Add, None)),
        (4, put("r4", "cfg/a", json!(1), Merge::Replace, Some(1))),
        (5, delete("r5", "cfg/a", None)),
        (
            6,
            txn(
                "r6",
                vec![at("count", 3)],
                vec![
                    put_op("count", json!(1), Merge::Add),
                    Op::Delete { key: "x".into() },
                ],
            ),
        ),
    ]);
    golden("kv_history.jsonl", &history);
}

#[test]
fn a_page_of_keys_is_in_order_under_its_prefix() {
    let mut s = LockState::default();
    for (i, k) in ["a", "b/1", "b/2", "b/3", "c"].into_iter().enumerate() {
        apply(
            &mut s,
            i as u64 + 1,
            put(k, k, json!(i), Merge::Replace, None),
        );
    }
    let keys = |prefix, after| -> Vec<String> {
        s.kv_range(prefix, after)
            .map(|(k, _)| k.to_string())
            .collect()
    };
    assert_eq!(keys("b/", None), ["b/1", "b/2", "b/3"]);
    assert_eq!(keys("b/", Some("b/1")), ["b/2", "b/3"]);
    assert_eq!(keys("b/", Some("a")), ["b/1", "b/2", "b/3"]);
    assert_eq!(keys("", Some("b/3")), ["c"]);
    assert!(keys("b/", Some("c")).is_empty());
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Arbitrary writes, merges and deletes (key, kind, number, compare choice), some compared:
    /// the state's
    /// answers and keys are a plain map's, each write's revision is its event's, and the
    /// state reads back from a snapshot as it was.
    #[test]
    fn the_store_is_a_map_with_revisions(ops in prop::collection::vec(
        (0usize..4, 0u8..5, -5i64..5, 0u8..4), 1..120)
    ) {
        let mut s = LockState::default();
        let mut model: BTreeMap<String, (Value, u64)> = BTreeMap::new();
        let mut revision = 0;
        for (i, (k, kind, n, cmp)) in ops.into_iter().enumerate() {
            let key = format!("k{k}");
            let found = model.get(&key).map_or(0, |(_, r)| *r);
            let if_revision = match cmp {
                0 => Some(found),
                1 => Some(found + 1),
                _ => None,
            };
            let id = format!("r{i}");
            let (command, merge, value) = match kind {
                0 => (delete(&id, &key, if_revision), None, Value::Null),
                1 => (put(&id, &key, json!(n), Merge::Add, if_revision), Some(Merge::Add), json!(n)),
                2 => (put(&id, &key, json!([n]), Merge::Union, if_revision), Some(Merge::Union), json!([n])),
                3 => (put(&id, &key, json!(n), Merge::Max, if_revision), Some(Merge::Max), json!(n)),
                _ => (put(&id, &key, json!(format!("s{n}")), Merge::Replace, if_revision), Some(Merge::Replace), json!(format!("s{n}"))),
            };
            let applied = one(&mut s, i as u64 + 1, 1, &Proposal { at_ms: 0, command });
            prop_assert_eq!(s.check(), Ok(()));
            let got = applied.answer.clone().unwrap();
            let expected = if if_revision.is_some_and(|r| r != found) {
                Answer::CompareFailed { revision: found }
            } else if let Some(merge) = merge {
                let stored = model.get(&key).map(|(v, _)| v);
                match sentinel_core::kv::merge(stored, value, merge) {
                    Ok(v) => {
                        revision += 1;
                        let answered = matches!(merge, Merge::Add | Merge::Max).then(|| v.clone());
                        model.insert(key.clone(), (v, revision));
                        Answer::KvWritten { revision, value: answered }
                    }
                    Err(why) => Answer::MergeConflict { why },
                }
            } else if model.remove(&key).is_some() {
                revision += 1;
                Answer::KvDeleted { revision: Some(revision) }
            } else {
                Answer::KvDeleted { revision: None }
            };
            prop_assert_eq!(&got, &expected);
            // A change is one event, with the write's revision.
            let events: Vec<u64> = applied.events.iter().map(|e| e.revision).collect();
            match got {
                Answer::KvWritten { revision, .. } | Answer::KvDeleted { revision: Some(revision) } => {
                    prop_assert_eq!(events, vec![revision]);
                }
                _ => prop_assert!(events.is_empty()),
            }
        }
        let state: BTreeMap<String, (Value, u64)> = s
            .kv_range("", None)
            .map(|(k, v)| (k.to_string(), (v.value.clone(), v.mod_revision)))
            .collect();
        prop_assert_eq!(state, model);
        prop_assert_eq!(s.revision(), revision);
        let back = LockState::from_json(&s.to_json().unwrap()).unwrap();
        prop_assert_eq!(back, s);
    }
}

#[test]
fn an_entry_carries_at_most_its_bound_of_values_and_always_one_command() {
    let quarter = MAX_ENTRY_VALUE_BYTES / 4 + 1;
    assert_eq!(fitting([quarter; 10]), 3);
    assert_eq!(fitting([0; 300]), 300);
    assert_eq!(fitting([usize::MAX, 1]), 1);
    assert_eq!(fitting([1, usize::MAX]), 1);
    assert_eq!(fitting([]), 0);
    // A write weighs its key and its value's JSON; lock commands weigh nothing.
    let p = put("r", "key", json!("x".repeat(1000)), Merge::Replace, None);
    assert_eq!(p.value_bytes(), 3 + 1002);
    assert_eq!(delete("r", "key", None).value_bytes(), 0);
}

fn txn(id: &str, compare: Vec<Compare>, ops: Vec<Op>) -> Command {
    Command::KvTxn(KvTxn {
        request_id: id.into(),
        compare,
        ops,
        writer: "w".into(),
        quota: DEFAULT_QUOTA,
    })
}

fn put_op(key: &str, value: Value, merge: Merge) -> Op {
    Op::Put {
        key: key.into(),
        value,
        merge,
    }
}

fn at(key: &str, revision: u64) -> Compare {
    Compare {
        key: key.into(),
        revision: Some(revision),
        value: None,
        exists: None,
    }
}

#[test]
fn a_transaction_writes_all_or_nothing_with_consecutive_revisions() {
    let mut s = LockState::default();
    apply(&mut s, 1, put("r1", "a", json!(1), Merge::Replace, None));
    // Compares hold: the writes take revisions 2, 3 (a delete of nothing takes none), 4.
    let ops = vec![
        put_op("a", json!(2), Merge::Add),
        put_op("b", json!(["x"]), Merge::Union),
        Op::Delete { key: "none".into() },
        Op::Delete { key: "a".into() },
    ];
    let compare = vec![
        at("a", 1),
        Compare {
            key: "b".into(),
            revision: None,
            value: None,
            exists: Some(false),
        },
    ];
    let done = apply(&mut s, 2, txn("t1", compare, ops));
    assert_eq!(
        answer(&done),
        Answer::TxnDone {
            revisions: vec![2, 3, 0, 4]
        }
    );
    let events: Vec<_> = done
        .events
        .iter()
        .map(|e| (e.event, e.key.clone().unwrap(), e.revision))
        .collect();
    assert_eq!(
        events,
        [
            (EventKind::Put, "a".to_string(), 2),
            (EventKind::Put, "b".to_string(), 3),
            (EventKind::Deleted, "a".to_string(), 4)
        ]
    );
    assert!(s.kv_get("a").is_none());
    assert_eq!(s.kv_get("b").unwrap().value, json!(["x"]));

    // A compare that fails, or a write that cannot be made, changes nothing at all.
    let before = s.clone();
    let failed = apply(
        &mut s,
        3,
        txn("t2", vec![at("b", 2)], vec![Op::Delete { key: "b".into() }]),
    );
    assert_eq!(
        answer(&failed),
        Answer::TxnFailed {
            compare: 0,
            revision: 3
        }
    );
    let ops = vec![
        put_op("c", json!(1), Merge::Replace),
        put_op("b", json!(1), Merge::Add),
    ];
    let conflict = apply(&mut s, 4, txn("t3", vec![], ops));
    assert!(matches!(answer(&conflict), Answer::MergeConflict { .. }));
    assert!(failed.events.is_empty() && conflict.events.is_empty());
    assert_eq!(
        (&s.kv, s.kv_bytes(), s.revision()),
        (&before.kv, before.kv_bytes(), before.revision())
    );

    // Writes to one key within a transaction see each other.
    let ops = vec![
        put_op("n", json!(1), Merge::Add),
        put_op("n", json!(2), Merge::Add),
    ];
    apply(&mut s, 5, txn("t4", vec![], ops));
    let n = s.kv_get("n").unwrap();
    assert_eq!(
        (n.value.clone(), n.version, n.create_revision),
        (json!(3), 2, n.mod_revision - 1)
    );
}
