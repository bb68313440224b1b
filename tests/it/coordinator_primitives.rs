//! Semaphores and shared holds on real `sentinel serve` processes, through the HTTP API: a
//! semaphore's limit, its FIFO queue and its refusals, shared holds against a writer, and the
//! permits held when a three-node cluster loses its leader to `kill -9`.

use std::time::Duration;

use serde_json::{Value, json};

use crate::serve::{Node, TOKEN, eventually, exchange_within, free_addr, leader_of, peers_of};

/// One request with the cluster token: the status and the JSON body.
fn call(addr: &str, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let auth = format!("Bearer {TOKEN}");
    let headers = [("Authorization", auth.as_str())];
    let timeout = Duration::from_secs(40);
    let (status, text) = exchange_within(addr, method, path, body.as_ref(), &headers, timeout)
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
    let json = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text:?}"));
    (status, json)
}

fn post(addr: &str, path: &str, body: Value) -> (u16, Value) {
    call(addr, "POST", path, Some(body))
}

fn get(addr: &str, path: &str) -> (u16, Value) {
    call(addr, "GET", path, None)
}

/// Sends `body` to `path` from a thread of its own: a request that waits on the server.
fn post_in_background(
    addr: &str,
    path: &str,
    body: Value,
) -> std::thread::JoinHandle<(u16, Value)> {
    let (addr, path) = (addr.to_string(), path.to_string());
    std::thread::spawn(move || post(&addr, &path, body))
}

fn token(v: &Value) -> u64 {
    v["holder"]["fencing_token"]
        .as_u64()
        .unwrap_or_else(|| panic!("no token in {v}"))
}

/// The worker ids of a status's holders, and their tokens.
fn holders(status: &Value) -> Vec<(String, u64)> {
    holders_by(status, "fencing_token")
}

/// The worker ids of a status's holders, and each one's number `key` (`fencing_token`,
/// `permits`).
pub(crate) fn holders_by(status: &Value, key: &str) -> Vec<(String, u64)> {
    status["holders"]
        .as_array()
        .unwrap_or_else(|| panic!("no holders in {status}"))
        .iter()
        .map(|h| {
            let id = h["worker_id"].as_str().unwrap().to_string();
            (id, h[key].as_u64().unwrap())
        })
        .collect()
}

/// Waits until the status of `path` shows `n` waiters.
fn waiting(addr: &str, path: &str, n: u64) {
    eventually(10, &format!("{n} waiting for {path}"), || {
        let (_, s) = get(addr, path);
        (s["waiting"].as_u64() == Some(n)).then_some(())
    });
}

fn one_node() -> (tempfile::TempDir, String, Node) {
    let data = tempfile::tempdir().unwrap();
    let addr = free_addr();
    let node = Node::start(1, &addr, &[], data.path(), Some(TOKEN));
    eventually(20, "a leader", || leader_of(&addr));
    (data, addr, node)
}

#[test]
fn a_semaphore_of_two_lets_the_third_in_on_release_and_refuses_other_limits_and_kinds() {
    let (_data, addr, _node) = one_node();
    let sem = |holder: &str| json!({"holder": holder, "ttl_ms": 60_000, "limit": 2});
    let (s, w1) = post(&addr, "/semaphores/pool/acquire", sem("w1"));
    assert_eq!(s, 200, "{w1}");
    assert_eq!(
        (w1["kind"].as_str(), w1["limit"].as_u64()),
        (Some("semaphore"), Some(2))
    );
    assert_eq!(w1["holder"]["permits"], 1);
    let (s, w2) = post(&addr, "/semaphores/pool/acquire", sem("w2"));
    assert_eq!(s, 200, "{w2}");
    let (t1, t2) = (token(&w1), token(&w2));
    assert!(t2 > t1);

    // Full: told at once, or queued on the server.
    let (s, v) = post(&addr, "/semaphores/pool/acquire", sem("w3"));
    assert_eq!((s, v["code"].as_str()), (409, Some("lock_held")), "{v}");
    let mut third = sem("w3");
    third["wait_ms"] = 20_000.into();
    third["request_id"] = "w3-acquire".into();
    let waiter = post_in_background(&addr, "/semaphores/pool/acquire", third.clone());
    waiting(&addr, "/semaphores/pool/status", 1);
    let (s, status) = get(&addr, "/semaphores/pool/status");
    assert_eq!(s, 200, "{status}");
    assert_eq!(status["kind"], "semaphore");
    assert_eq!(status["limit"], 2);
    assert_eq!(status["permits_held"], 2);
    assert_eq!(holders(&status), [("w1".into(), t1), ("w2".into(), t2)]);
    assert_eq!(status["queue"][0]["holder"], "w3");

    // Another limit names both; a lock claim on the semaphore is another kind.
    let (s, v) = post(
        &addr,
        "/semaphores/pool/acquire",
        json!({"holder": "w4", "ttl_ms": 60_000, "limit": 3, "wait_ms": 1_000}),
    );
    assert_eq!(
        (s, v["code"].as_str()),
        (409, Some("limit_mismatch")),
        "{v}"
    );
    assert_eq!(
        (v["limit"].as_u64(), v["requested_limit"].as_u64()),
        (Some(2), Some(3))
    );
    let message = v["message"].as_str().unwrap();
    assert!(
        message.contains("limit 2") && message.contains('3'),
        "{message}"
    );
    for body in [
        json!({"holder": "w4", "ttl_ms": 60_000}),
        json!({"holder": "w4", "ttl_ms": 60_000, "shared": true, "wait_ms": 1_000}),
    ] {
        let (s, v) = post(&addr, "/locks/pool/acquire", body);
        assert_eq!((s, v["code"].as_str()), (409, Some("kind_conflict")), "{v}");
        assert_eq!(v["limit"], 2, "{v}");
    }

    // A release lets the waiter in, with a larger token; a retry of its request is not a
    // second grant.
    let (s, v) = post(
        &addr,
        "/semaphores/pool/release",
        json!({"holder": "w1", "token": t1}),
    );
    assert_eq!((s, v["released"].as_bool()), (200, Some(true)), "{v}");
    let (s, w3) = waiter.join().unwrap();
    assert_eq!(s, 200, "{w3}");
    let t3 = token(&w3);
    assert!(t3 > t2);
    let (s, again) = post(&addr, "/semaphores/pool/acquire", third);
    assert_eq!((s, token(&again)), (200, t3), "{again}");
    let (_, status) = get(&addr, "/semaphores/pool/status");
    assert_eq!(holders(&status), [("w2".into(), t2), ("w3".into(), t3)]);
    // A renewal of a hold, by its token.
    let (s, v) = post(
        &addr,
        "/semaphores/pool/renew",
        json!({"holder": "w3", "token": t3}),
    );
    assert_eq!((s, v["renewed"].as_bool()), (200, Some(true)), "{v}");

    // Bad claims are refused before anything is proposed.
    for (path, body, field) in [
        (
            "/semaphores/x/acquire",
            json!({"holder": "w", "ttl_ms": 1_000}),
            "limit",
        ),
        (
            "/semaphores/x/acquire",
            json!({"holder": "w", "ttl_ms": 1_000, "limit": 0}),
            "limit",
        ),
        (
            "/semaphores/x/acquire",
            json!({"holder": "w", "ttl_ms": 1_000, "limit": 10_001}),
            "limit",
        ),
        (
            "/semaphores/x/acquire",
            json!({"holder": "w", "ttl_ms": 1_000, "limit": 2, "permits": 3}),
            "permits",
        ),
        (
            "/semaphores/x/acquire",
            json!({"holder": "w", "ttl_ms": 1_000, "limit": 2, "shared": true}),
            "shared",
        ),
        (
            "/locks/x/acquire",
            json!({"holder": "w", "ttl_ms": 1_000, "limit": 2}),
            "limit",
        ),
    ] {
        let (s, v) = post(&addr, path, body);
        assert_eq!((s, v["code"].as_str()), (400, Some("invalid_body")), "{v}");
        assert!(v["message"].as_str().unwrap().contains(field), "{v}");
    }
    let (_, free) = get(&addr, "/semaphores/x/status");
    assert_eq!(
        (free["held"].as_bool(), free["kind"].as_str()),
        (Some(false), Some("semaphore"))
    );
}

#[test]
fn shared_holds_exclude_a_writer_and_a_waiting_writer_holds_back_later_readers() {
    let (_data, addr, _node) = one_node();
    let read = |holder: &str, wait_ms: u64| json!({"holder": holder, "ttl_ms": 60_000, "shared": true, "wait_ms": wait_ms});
    let write = |holder: &str, wait_ms: u64| json!({"holder": holder, "ttl_ms": 60_000, "wait_ms": wait_ms});
    let (s, r1) = post(&addr, "/locks/data/acquire", read("r1", 0));
    assert_eq!(s, 200, "{r1}");
    let (s, r2) = post(&addr, "/locks/data/acquire", read("r2", 0));
    assert_eq!(s, 200, "{r2}");
    let (_, status) = get(&addr, "/locks/data/status");
    assert_eq!(status["kind"], "shared");
    assert_eq!(status["holders"].as_array().unwrap().len(), 2);
    assert!(status["holder"].is_null(), "{status}");
    assert!(status["holders"][0]["shared"].as_bool().unwrap());

    // A writer is refused while readers hold, or waits for them.
    let (s, v) = post(&addr, "/locks/data/acquire", write("w", 0));
    assert_eq!((s, v["code"].as_str()), (409, Some("lock_held")), "{v}");
    let writer = post_in_background(&addr, "/locks/data/acquire", write("w", 20_000));
    waiting(&addr, "/locks/data/status", 1);
    // A reader behind the waiting writer does not get in past it.
    let (s, v) = post(&addr, "/locks/data/acquire", read("r3", 0));
    assert_eq!((s, v["code"].as_str()), (409, Some("lock_held")), "{v}");
    let reader = post_in_background(&addr, "/locks/data/acquire", read("r3", 20_000));
    waiting(&addr, "/locks/data/status", 2);

    for (holder, v) in [("r1", &r1), ("r2", &r2)] {
        let (s, v) = post(
            &addr,
            "/locks/data/release",
            json!({"holder": holder, "token": token(v)}),
        );
        assert_eq!(s, 200, "{v}");
    }
    let (s, w) = writer.join().unwrap();
    assert_eq!(s, 200, "{w}");
    let tw = token(&w);
    assert!(tw > token(&r2));
    // Held by the writer alone: the lock's single-holder keys are there, as for any lock.
    let (_, status) = get(&addr, "/locks/data/status");
    assert_eq!(status["kind"], "exclusive");
    assert_eq!(status["holder"]["worker_id"], "w", "{status}");
    assert_eq!(status["waiting"], 1);

    let (s, v) = post(
        &addr,
        "/locks/data/release",
        json!({"holder": "w", "token": tw}),
    );
    assert_eq!(s, 200, "{v}");
    let (s, r3) = reader.join().unwrap();
    assert_eq!(s, 200, "{r3}");
    assert!(token(&r3) > tw);
    assert_eq!(r3["holder"]["shared"], true);
    // The listing shows shared locks and semaphores beside locks.
    let (_, list) = get(&addr, "/locks");
    let data = list["locks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["lock"] == "data")
        .unwrap_or_else(|| panic!("data is not listed: {list}"));
    assert_eq!(data["kind"], "shared");
}

#[test]
fn a_new_leader_after_kill_9_keeps_exactly_the_permits_held() {
    let _one_cluster = crate::serve::one_cluster_at_a_time();
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let addrs: Vec<String> = (0..3).map(|_| free_addr()).collect();
    let peers = peers_of(&addrs);
    let mut nodes: Vec<Node> = (0..3)
        .map(|i| Node::start(i as u64 + 1, &addrs[i], &peers, dirs[i].path(), Some(TOKEN)))
        .collect();
    let leader = eventually(30, "one leader known to every node", || {
        let seen: Vec<Option<u64>> = addrs.iter().map(|a| leader_of(a)).collect();
        let first = seen[0]?;
        seen.iter().all(|l| *l == Some(first)).then_some(first)
    });
    let li = (leader - 1) as usize;
    let followers: Vec<usize> = (0..3).filter(|&i| i != li).collect();

    // Two permits of two taken through a follower, and a shared hold.
    let sem = |holder: &str| json!({"holder": holder, "ttl_ms": 60_000, "limit": 2, "request_id": format!("{holder}-1")});
    let mut held = Vec::new();
    for holder in ["w1", "w2"] {
        let (s, v) = post(
            &addrs[followers[0]],
            "/semaphores/slots/acquire",
            sem(holder),
        );
        assert_eq!(s, 200, "{v}");
        held.push((holder.to_string(), token(&v)));
    }
    let (s, r) = post(
        &addrs[followers[0]],
        "/locks/docs/acquire",
        json!({"holder": "r1", "ttl_ms": 60_000, "shared": true}),
    );
    assert_eq!(s, 200, "{r}");

    nodes[li].kill();
    let (s, status) = eventually(20, "a new leader's status", || {
        followers.iter().find_map(|&i| {
            let (s, v) = call(&addrs[i], "GET", "/semaphores/slots/status", None);
            (s == 200).then_some((s, v))
        })
    });
    assert_eq!(s, 200);
    assert_eq!(
        holders(&status),
        held,
        "the new leader has exactly the holds: {status}"
    );
    assert_eq!(status["permits_held"], 2);
    // No third permit, and the first requests, retried, are answered as they were.
    let addr = &addrs[followers[1]];
    let (s, v) = post(addr, "/semaphores/slots/acquire", sem("w3"));
    assert_eq!((s, v["code"].as_str()), (409, Some("lock_held")), "{v}");
    for (holder, t) in &held {
        let (s, v) = post(addr, "/semaphores/slots/acquire", sem(holder));
        assert_eq!((s, token(&v)), (200, *t), "{v}");
    }
    let (_, docs) = get(addr, "/locks/docs/status");
    assert_eq!(holders(&docs), [("r1".into(), token(&r))]);
    // The holders renew and release through the new leader; then the third gets in.
    let (s, v) = post(
        addr,
        "/semaphores/slots/renew",
        json!({"holder": "w2", "token": held[1].1}),
    );
    assert_eq!(s, 200, "{v}");
    let (s, v) = post(
        addr,
        "/semaphores/slots/release",
        json!({"holder": "w1", "token": held[0].1}),
    );
    assert_eq!(s, 200, "{v}");
    let mut third = sem("w3");
    third["request_id"] = "w3-2".into();
    let (s, v) = post(addr, "/semaphores/slots/acquire", third);
    assert_eq!(s, 200, "{v}");
    assert!(token(&v) > held[1].1);
    let (_, status) = get(addr, "/semaphores/slots/status");
    assert_eq!(status["holders"].as_array().unwrap().len(), 2, "{status}");
}
