//! The coordinator's `/kv` routes over HTTP, on a real `sentinel serve` process: writes,
//! compare-and-set, merges, deletes, pages, transactions and their refusals, the quota, a stale
//! read on a follower, and the key events on the watch stream. (The CLI's `sentinel kv` is
//! tested in `kv`; counters under leader kills in `kv_chaos`.)

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::serve::{
    Node, TOKEN, eventually, free_addr, http, leader_of, one_cluster_at_a_time, peers_of,
};

/// What a stream (`GET path`, server-sent events) sent within `within`.
fn stream_for(addr: &str, path: &str, within: Duration) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {TOKEN}\r\n\r\n"
    )
    .unwrap();
    let deadline = Instant::now() + within;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        s.set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .unwrap();
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(_) => break,
        }
    }
    String::from_utf8_lossy(&got).into_owned()
}

fn call(addr: &str, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    http(addr, method, path, body).unwrap()
}

#[test]
fn keys_are_written_compared_merged_deleted_and_listed() {
    let dir = tempfile::tempdir().unwrap();
    let addr = free_addr();
    let args = ["--kv-quota".to_string(), "4096".to_string()];
    let _node = Node::start_args(1, &addr, &[], dir.path(), &args);
    eventually(30, "a leader", || leader_of(&addr));

    // A write, a read, create-only refused, compare-and-set on the revision.
    let (s, v) = call(
        &addr,
        "PUT",
        "/kv/jobs%2F1/state",
        Some(json!({"value": {"step": 1}, "if_revision": 0})),
    );
    assert_eq!(s, 200, "{v}");
    let first = v["revision"].as_u64().unwrap();
    assert!(v.get("value").is_none(), "a replace answers no value: {v}");
    let (s, v) = call(&addr, "GET", "/kv/jobs%2F1/state", None);
    assert_eq!(
        (s, &v["key"], &v["value"]),
        (200, &json!("jobs/1/state"), &json!({"step": 1}))
    );
    assert_eq!(
        (v["mod_revision"].as_u64(), v["version"].as_u64()),
        (Some(first), Some(1))
    );
    let (s, v) = call(
        &addr,
        "PUT",
        "/kv/jobs%2F1/state",
        Some(json!({"value": 0, "if_revision": 0})),
    );
    assert_eq!(
        (s, v["code"].as_str(), v["revision"].as_u64()),
        (409, Some("compare_failed"), Some(first))
    );
    let (s, v) = call(
        &addr,
        "PUT",
        "/kv/jobs%2F1/state",
        Some(json!({"value": {"step": 2}, "merge": "deep", "if_revision": first})),
    );
    assert_eq!(s, 200, "{v}");

    // A counter answers its new count; a merge that does not fit is refused.
    for _ in 0..3 {
        call(
            &addr,
            "PUT",
            "/kv/count",
            Some(json!({"value": 2, "merge": "add"})),
        );
    }
    let (s, v) = call(
        &addr,
        "PUT",
        "/kv/count",
        Some(json!({"value": 1, "merge": "add"})),
    );
    assert_eq!((s, &v["value"]), (200, &json!(7)));
    let (s, v) = call(
        &addr,
        "PUT",
        "/kv/count",
        Some(json!({"value": "1", "merge": "add"})),
    );
    assert_eq!((s, v["code"].as_str()), (400, Some("invalid_body")), "{v}");
    let (s, v) = call(
        &addr,
        "PUT",
        "/kv/count",
        Some(json!({"value": [1], "merge": "union"})),
    );
    assert_eq!(
        (s, v["code"].as_str()),
        (409, Some("merge_conflict")),
        "{v}"
    );

    // A transaction: compares, then writes, all or none; a key named txn is still a key.
    let (s, v) = call(
        &addr,
        "POST",
        "/kv/txn",
        Some(json!({
            "compare": [{"key": "count", "value": 7}, {"key": "fresh", "exists": false}],
            "ops": [{"op": "put", "key": "fresh", "value": true}, {"op": "delete", "key": "count"}],
        })),
    );
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["revisions"].as_array().unwrap().len(), 2);
    let (s, v) = call(
        &addr,
        "POST",
        "/kv/txn",
        Some(json!({
            "compare": [{"key": "fresh", "exists": false}],
            "ops": [{"op": "put", "key": "never", "value": 1}],
        })),
    );
    assert_eq!(
        (s, v["code"].as_str(), v["compare"].as_u64()),
        (409, Some("compare_failed"), Some(0)),
        "{v}"
    );
    assert_eq!(call(&addr, "GET", "/kv/never", None).0, 404);
    assert_eq!(
        call(&addr, "PUT", "/kv/txn", Some(json!({"value": "a key"}))).0,
        200
    );
    assert_eq!(
        call(&addr, "GET", "/kv/txn", None).1["value"],
        json!("a key")
    );
    assert_eq!(call(&addr, "POST", "/kv/other", Some(json!({}))).0, 405);

    // Pages in key order under a prefix.
    for i in 0..5 {
        call(
            &addr,
            "PUT",
            &format!("/kv/p%2F{i}"),
            Some(json!({"value": i})),
        );
    }
    let (s, v) = call(&addr, "GET", "/kv?prefix=p/&limit=2", None);
    assert_eq!(s, 200, "{v}");
    let keys = |v: &Value| -> Vec<String> {
        v["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["key"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(
        (keys(&v), &v["next"]),
        (vec!["p/0".to_string(), "p/1".to_string()], &json!("p/1"))
    );
    let (_, v) = call(&addr, "GET", "/kv?prefix=p/&limit=2&after=p/3", None);
    assert_eq!(
        (keys(&v), &v["next"]),
        (vec!["p/4".to_string()], &Value::Null)
    );

    // Deletes: compared, and of a missing key changing nothing.
    let (s, v) = call(
        &addr,
        "DELETE",
        "/kv/p%2F0",
        Some(json!({"if_revision": 1})),
    );
    assert_eq!((s, v["code"].as_str()), (409, Some("compare_failed")));
    let (s, v) = call(&addr, "DELETE", "/kv/p%2F0", None);
    assert_eq!((s, &v["deleted"]), (200, &json!(true)));
    let (s, v) = call(&addr, "DELETE", "/kv/p%2F0", None);
    assert_eq!((s, &v["deleted"]), (200, &json!(false)));

    // A key with a TTL shows it, and is gone once it ran out (the leader ticks for it).
    let (s, v) = call(
        &addr,
        "PUT",
        "/kv/brief",
        Some(json!({"value": 1, "ttl_ms": 1000})),
    );
    assert_eq!(s, 200, "{v}");
    let (_, v) = call(&addr, "GET", "/kv/brief", None);
    assert_eq!(v["ttl_ms"], 1000, "{v}");
    assert!(v["expires_at"].is_string(), "{v}");
    eventually(10, "the key's TTL running out", || {
        (call(&addr, "GET", "/kv/brief", None).0 == 404).then_some(())
    });

    // Refusals before anything is proposed, and the quota (4,096 bytes here).
    assert_eq!(
        call(&addr, "GET", "/kv/a%0Ab", None).1["code"],
        "invalid_name"
    );
    let big = "x".repeat(3_500);
    let (s, v) = call(&addr, "PUT", "/kv/big", Some(json!({"value": big})));
    assert_eq!((s, v["code"].as_str()), (429, Some("kv_quota")), "{v}");
    let huge = "x".repeat(600 << 10);
    let (s, _) = call(&addr, "PUT", "/kv/huge", Some(json!({"value": huge})));
    assert_eq!(s, 413);
}

#[test]
fn a_follower_reads_stale_or_forwards_and_the_watch_sees_key_events() {
    let _one = one_cluster_at_a_time();
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let addrs: Vec<String> = (0..3).map(|_| free_addr()).collect();
    let peers = peers_of(&addrs);
    let _nodes: Vec<Node> = (0..3)
        .map(|i| Node::start(i as u64 + 1, &addrs[i], &peers, dirs[i].path(), Some(TOKEN)))
        .collect();
    let leader = eventually(30, "a leader", || leader_of(&addrs[0])) as usize - 1;
    let follower = &addrs[(leader + 1) % 3];

    // A write sent to a follower is forwarded; a linearizable read on it sees it at once.
    let (s, v) = call(
        follower,
        "PUT",
        "/kv/w%2Fk",
        Some(json!({"value": 1, "writer": "me"})),
    );
    assert_eq!(s, 200, "{v}");
    let revision = v["revision"].as_u64().unwrap();
    assert_eq!(
        call(follower, "GET", "/kv/w%2Fk", None).1["value"],
        json!(1)
    );
    // A stale read is the follower's own copy: it has the write once it applied it.
    let stale = eventually(10, "the follower applying the write", || {
        let (s, v) = call(follower, "GET", "/kv/w%2Fk?stale=true", None);
        (s == 200).then_some(v)
    });
    assert_eq!(stale["mod_revision"].as_u64(), Some(revision));
    call(
        follower,
        "DELETE",
        "/kv/w%2Fk",
        Some(json!({"writer": "me"})),
    );

    // The watch stream has the key's put and delete, by key and revision, without the value.
    let path = format!("/watch?prefix=w/&since_revision={}", revision - 1);
    let text = stream_for(&addrs[leader], &path, Duration::from_secs(2));
    let events: Vec<Value> = text
        .lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .filter_map(|d| serde_json::from_str(d.trim()).ok())
        .collect();
    assert!(events.len() >= 2, "expected the key's events, got {text:?}");
    assert_eq!(
        (
            &events[0]["event"],
            &events[0]["key"],
            &events[0]["worker_id"],
            events[0]["revision"].as_u64()
        ),
        (&json!("put"), &json!("w/k"), &json!("me"), Some(revision))
    );
    assert_eq!(
        (&events[1]["event"], &events[1]["key"]),
        (&json!("deleted"), &json!("w/k"))
    );
    assert!(events[0].get("value").is_none() && events[0].get("lock").is_none());
}
