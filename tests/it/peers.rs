//! Peers are peers: the Raft routes of `sentinel serve` take the peer token only, refuse what
//! would panic openraft, and a misconfigured peer token is one clear warning, not a flood.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::serve::{
    Node, PEER_TOKEN, TOKEN, eventually, exchange_within, free_addr, leader_of, peers_of,
};
use crate::support::{Running, code, sentinel, text};

const PEER: &str = "x-sentinel-peer-token";

/// One POST of `body` to `path` with `headers`: the status and the JSON answer.
fn post(addr: &str, path: &str, body: &Value, headers: &[(&str, &str)]) -> (u16, Value) {
    let (status, text) = exchange_within(
        addr,
        "POST",
        path,
        Some(body),
        headers,
        Duration::from_secs(20),
    )
    .unwrap();
    let v = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, v)
}

/// A node's `/health`: its state, leader and term.
fn health(addr: &str) -> Value {
    let auth = format!("Bearer {TOKEN}");
    let (status, text) = exchange_within(
        addr,
        "GET",
        "/health",
        None,
        &[("Authorization", &auth)],
        Duration::from_secs(5),
    )
    .unwrap();
    assert_eq!(status, 200, "{text}");
    serde_json::from_str(&text).unwrap()
}

/// An AppendEntries that names `leader` with `term`, and the entries given.
fn append(term: u64, leader: u64, prev: Value, entries: Value) -> Value {
    json!({
        "vote": {"leader_id": {"term": term, "node_id": leader}, "committed": true},
        "prev_log_id": prev,
        "entries": entries,
        "leader_commit": null,
    })
}

#[test]
fn raft_routes_take_only_the_peer_token_and_refuse_what_would_panic_openraft() {
    let _one_cluster = crate::serve::one_cluster_at_a_time();
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let addrs: Vec<String> = (0..3).map(|_| free_addr()).collect();
    let peers = peers_of(&addrs);
    let mut nodes: Vec<Node> = (0..3)
        .map(|i| Node::start(i as u64 + 1, &addrs[i], &peers, dirs[i].path(), Some(TOKEN)))
        .collect();
    let leader = eventually(20, "a leader", || {
        let seen: Vec<Option<u64>> = addrs.iter().map(|a| leader_of(a)).collect();
        let first = seen[0]?;
        seen.iter().all(|l| *l == Some(first)).then_some(first)
    });
    let before = health(&addrs[0]);
    let f = (0..3).find(|&i| i as u64 + 1 != leader).unwrap();
    let follower = &addrs[f];

    // The forged append that made openraft panic: a term of u64::MAX.
    let forged = append(u64::MAX, leader, Value::Null, json!([]));
    let client = format!("Bearer {TOKEN}");
    for (headers, status, code) in [
        (vec![], 401, "unauthorized"),
        (vec![("Authorization", client.as_str())], 403, "forbidden"),
        (vec![(PEER, "wrong-peer-token")], 401, "unauthorized"),
        (vec![(PEER, PEER_TOKEN)], 400, "invalid_body"),
    ] {
        let (s, v) = post(follower, "/raft/append", &forged, &headers);
        assert_eq!(
            (s, v["code"].as_str()),
            (status, Some(code)),
            "{headers:?}: {v}"
        );
    }
    let with_peer = [(PEER, PEER_TOKEN)];
    let (s, v) = post(
        follower,
        "/raft/vote",
        &json!({
            "vote": {"leader_id": {"term": u64::MAX, "node_id": leader}, "committed": false},
            "last_log_id": null,
        }),
        &with_peer,
    );
    assert_eq!((s, v["code"].as_str()), (400, Some("invalid_body")), "{v}");
    // From a node outside the membership: refused, whatever it asks.
    let (s, v) = post(
        follower,
        "/raft/vote",
        &json!({
            "vote": {"leader_id": {"term": 1000, "node_id": 9}, "committed": false},
            "last_log_id": null,
        }),
        &with_peer,
    );
    assert_eq!((s, v["code"].as_str()), (403, Some("forbidden")), "{v}");
    let (s, v) = post(
        follower,
        "/raft/append",
        &append(1000, 9, Value::Null, json!([])),
        &with_peer,
    );
    assert_eq!((s, v["code"].as_str()), (403, Some("forbidden")), "{v}");
    // Entries that are not consecutive after prev_log_id.
    let gap = append(
        1,
        leader,
        json!({"leader_id": {"term": 1, "node_id": leader}, "index": 3}),
        json!([{"log_id": {"leader_id": {"term": 1, "node_id": leader}, "index": 5}, "payload": "Blank"}]),
    );
    let (s, v) = post(follower, "/raft/append", &gap, &with_peer);
    assert_eq!((s, v["code"].as_str()), (400, Some("invalid_body")), "{v}");
    // A snapshot chunk far beyond what was received.
    let chunk = json!({
        "vote": {"leader_id": {"term": 1, "node_id": leader}, "committed": true},
        "meta": {
            "last_log_id": {"leader_id": {"term": 1, "node_id": leader}, "index": 1},
            "last_membership": {
                "log_id": {"leader_id": {"term": 1, "node_id": leader}, "index": 0},
                "membership": {"configs": [[1, 2, 3]], "nodes": {
                    "1": {"addr": addrs[0]}, "2": {"addr": addrs[1]}, "3": {"addr": addrs[2]},
                }},
            },
            "snapshot_id": "forged",
        },
        "offset": 1u64 << 40,
        "data": [1, 2, 3],
        "done": false,
    });
    let (s, v) = post(follower, "/raft/snapshot", &chunk, &with_peer);
    assert!(s == 400 || v.get("Err").is_some(), "{s} {v}");

    // Nothing reached openraft: the nodes agree on a leader, and no term moved to a forged one
    // (1000, u64::MAX). A term a few above the first is an election: with 120 ms election
    // timeouts, a test machine busy compiling can stall a follower long enough for one.
    std::thread::sleep(Duration::from_secs(1));
    let first = before["term"].as_u64().unwrap();
    eventually(20, "the nodes agreeing on a leader", || {
        let seen: Vec<Option<u64>> = addrs.iter().map(|a| leader_of(a)).collect();
        seen.iter()
            .all(|l| l.is_some() && *l == seen[0])
            .then_some(())
    });
    for addr in &addrs {
        let h = health(addr);
        let term = h["term"].as_u64().unwrap();
        assert!(
            (first..first + 100).contains(&term),
            "term {term} after {first}: {h}"
        );
    }
    // Nor was anything persisted: the follower restarts and rejoins.
    nodes[f].kill();
    nodes[f].restart();
    eventually(20, "the restarted follower knowing a leader", || {
        leader_of(follower).map(|_| ())
    });
    for n in &nodes {
        assert!(!n.log().contains("panicked"), "{}", n.log());
    }
}

#[test]
fn a_single_node_serves_no_raft_routes() {
    let data = tempfile::tempdir().unwrap();
    let addr = free_addr();
    let _node = Node::start(1, &addr, &[], data.path(), None);
    for path in ["/raft/append", "/raft/vote", "/raft/snapshot"] {
        let (s, v) = post(&addr, path, &json!({}), &[(PEER, PEER_TOKEN)]);
        assert_eq!(
            (s, v["code"].as_str()),
            (404, Some("unknown_route")),
            "{path}: {v}"
        );
    }
}

#[test]
fn misconfigured_peers_are_refused_at_start() {
    let data = tempfile::tempdir().unwrap();
    let (a, b) = (free_addr(), free_addr());
    let serve = |args: &[&str], peer_token: Option<&str>| {
        let mut cmd = sentinel(data.path());
        cmd.args(["serve", "--listen", &a]).args(args);
        if let Some(t) = peer_token {
            cmd.env("SENTINEL_PEER_TOKEN", t);
        }
        Running::spawn(&mut cmd).exit_within(Duration::from_secs(20))
    };
    let two = ["--peer", &format!("1={a}"), "--peer", &format!("2={b}")].map(String::from);
    let two: Vec<&str> = two.iter().map(String::as_str).collect();
    // Peers without a peer token.
    let out = serve(&[&["--id", "1"], &two[..]].concat(), None);
    assert_eq!(code(&out), 2, "{}", text(&out));
    assert!(
        text(&out).contains("needs the cluster's peer token"),
        "{}",
        text(&out)
    );
    // An --id not in the --peer list.
    let out = serve(&[&["--id", "3"], &two[..]].concat(), Some(PEER_TOKEN));
    assert_eq!(code(&out), 2, "{}", text(&out));
    assert!(
        text(&out).contains("--id 3 is not in the --peer list"),
        "{}",
        text(&out)
    );
    // The client token as the peer token.
    let out = serve(
        &[&["--id", "1", "--auth-token", "same-token"], &two[..]].concat(),
        Some("same-token"),
    );
    assert_eq!(code(&out), 2, "{}", text(&out));
    assert!(text(&out).contains("must differ"), "{}", text(&out));
    assert!(!text(&out).contains("same-token"), "{}", text(&out));
}

/// Lines of a log that are warnings about the peer token.
fn token_warnings(log: &str) -> Vec<&str> {
    log.lines()
        .filter(|l| l.contains("WARN") && l.contains("peer token"))
        .collect()
}

#[test]
fn a_wrong_peer_token_is_one_warning_on_each_side_not_a_flood() {
    let _one_cluster = crate::serve::one_cluster_at_a_time();
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let addrs: Vec<String> = (0..3).map(|_| free_addr()).collect();
    let peers = peers_of(&addrs);
    // At -vv's filter: openraft at info, sentinel at debug.
    let filter = "sentinel=debug,info";
    let mut nodes: Vec<Node> = (0..3)
        .map(|i| {
            Node::start_with(
                i as u64 + 1,
                &addrs[i],
                &peers,
                dirs[i].path(),
                None,
                PEER_TOKEN,
                filter,
            )
        })
        .collect();
    let leader = eventually(20, "a leader", || {
        let seen: Vec<Option<u64>> = addrs.iter().map(|a| leader_of(a)).collect();
        let first = seen[0]?;
        seen.iter().all(|l| *l == Some(first)).then_some(first)
    });
    // A follower restarts with another peer token: the leader's appends are refused.
    let f = (0..3).find(|&i| i as u64 + 1 != leader).unwrap();
    let follower = f as u64 + 1;
    nodes[f].kill();
    let before: Vec<usize> = nodes.iter().map(|n| n.log().lines().count()).collect();
    nodes[f] = Node::start_with(
        follower,
        &addrs[f],
        &peers,
        dirs[f].path(),
        None,
        "another-peer-token",
        filter,
    );
    std::thread::sleep(Duration::from_secs(5));
    let logs: Vec<String> = nodes.iter().map(Node::log).collect();
    let lines: usize = logs
        .iter()
        .zip(&before)
        .map(|(l, b)| l.lines().count() - b)
        .sum();
    eprintln!("{lines} log lines in 5 s at -vv from three nodes, one with another peer token");
    let count = |log: &str, what: &str| {
        token_warnings(log)
            .iter()
            .filter(|l| l.contains(what))
            .count()
    };
    // The leader's appends are refused, and the follower's votes (it hears no leader).
    assert_eq!(
        count(&logs[f], &format!("peer {leader} sent a wrong peer token")),
        1,
        "{}",
        logs[f]
    );
    assert_eq!(
        count(
            &logs[leader as usize - 1],
            &format!("peer {follower} at {}", addrs[f])
        ),
        1,
        "{}",
        logs[leader as usize - 1]
    );
    for (i, log) in logs.iter().enumerate() {
        assert!(!log.contains(PEER_TOKEN) && !log.contains("another-peer-token"));
        // At most one warning per peer that refused or was refused.
        assert!(token_warnings(log).len() <= 4, "node {}: {log}", i + 1);
    }
    assert!(lines < 2_000, "{lines} log lines in 5 s");
    // The others still serve.
    assert_eq!(leader_of(&addrs[leader as usize - 1]), Some(leader));
}

/// A node's own `/cluster/status` (not forwarded to the leader).
fn own_status(addr: &str) -> Option<Value> {
    let auth = format!("Bearer {TOKEN}");
    let (status, text) = exchange_within(
        addr,
        "GET",
        "/cluster/status",
        None,
        &[("Authorization", &auth), ("x-sentinel-forwarded", "test")],
        Duration::from_secs(5),
    )
    .ok()?;
    (status == 200).then(|| serde_json::from_str(&text).ok())?
}

/// Snapshots travel in chunks that the receiving node assembles and checks itself before
/// openraft installs them: a follower that missed more than the log keeps catches up by one.
///
#[test]
fn a_follower_behind_the_purged_log_catches_up_by_a_snapshot() {
    let _one_cluster = crate::serve::one_cluster_at_a_time();
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let addrs: Vec<String> = (0..3).map(|_| free_addr()).collect();
    let peers = peers_of(&addrs);
    let env = || {
        vec![
            ("SENTINEL_SNAPSHOT_EVERY".to_string(), "100".to_string()),
            (
                "RUST_LOG".to_string(),
                "sentinel=info,openraft=info".to_string(),
            ),
        ]
    };
    let mut nodes: Vec<Node> = (0..3)
        .map(|i| {
            Node::start_env(
                i as u64 + 1,
                &addrs[i],
                &peers,
                dirs[i].path(),
                Some(TOKEN),
                env(),
            )
        })
        .collect();
    let leader = eventually(20, "a leader", || {
        let seen: Vec<Option<u64>> = addrs.iter().map(|a| leader_of(a)).collect();
        let first = seen[0]?;
        seen.iter().all(|l| *l == Some(first)).then_some(first)
    });
    let l = leader as usize - 1;
    let f = (0..3).find(|&i| i != l).unwrap();
    nodes[f].kill();
    // One request at a time, so one entry each: past several snapshots (every 100 entries) and
    // the 100 entries kept after each. Each lock carries the most task info a client may send,
    // so that the snapshot takes many chunks and longer to send than an election timeout.
    let auth = format!("Bearer {TOKEN}");
    let task_type = "x".repeat(4_000);
    for i in 0..400 {
        let body = json!({
            "holder": "w",
            "ttl_ms": 3_600_000,
            "request_id": format!("r{i}"),
            "task_info": {"task_type": task_type},
        });
        let (s, text) = exchange_within(
            &addrs[l],
            "POST",
            &format!("/locks/s{i}/acquire"),
            Some(&body),
            &[("Authorization", &auth)],
            Duration::from_secs(20),
        )
        .unwrap();
        assert_eq!(s, 200, "{text}");
    }
    let target = eventually(30, "the leader's snapshot", || {
        let v = own_status(&addrs[l])?;
        dirs[l]
            .path()
            .join("coordinator/snapshot")
            .exists()
            .then(|| v["applied_index"].as_u64())?
    });
    nodes[f].restart();
    let deadline = Instant::now() + Duration::from_secs(60);
    while own_status(&addrs[f])
        .and_then(|v| v["applied_index"].as_u64())
        .is_none_or(|applied| applied < target)
    {
        if Instant::now() > deadline {
            let tail = |n: &Node| {
                let log = n.log();
                let lines: Vec<&str> = log
                    .lines()
                    .filter(|l| l.contains("napshot") || l.contains("WARN") || l.contains("ERROR"))
                    .collect();
                lines[lines.len().saturating_sub(30)..].join("\n")
            };
            panic!(
                "the follower did not catch up to {target}\n--- leader ---\n{}\n--- follower ---\n{}",
                tail(&nodes[l]),
                tail(&nodes[f])
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        dirs[f].path().join("coordinator/snapshot").exists(),
        "the follower caught up without a snapshot: {}",
        nodes[f].log()
    );
    for n in &nodes {
        assert!(!n.log().contains("panicked"), "{}", n.log());
    }
}

#[test]
fn a_cluster_member_restarted_without_the_peer_token_refuses_to_start() {
    let _one_cluster = crate::serve::one_cluster_at_a_time();
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let addrs: Vec<String> = (0..2).map(|_| free_addr()).collect();
    let peers = peers_of(&addrs);
    let mut nodes: Vec<Node> = (0..2)
        .map(|i| Node::start(i as u64 + 1, &addrs[i], &peers, dirs[i].path(), None))
        .collect();
    eventually(20, "a leader", || {
        let seen: Vec<Option<u64>> = addrs.iter().map(|a| leader_of(a)).collect();
        let first = seen[0]?;
        seen.iter().all(|l| *l == Some(first)).then_some(first)
    });
    nodes[1].kill();
    // Its log names node 1 as a member: without --peer it still needs the peer token.
    let mut cmd = sentinel(dirs[1].path());
    cmd.args(["serve", "--id", "2", "--listen", &addrs[1]]);
    let out = Running::spawn(&mut cmd).exit_within(Duration::from_secs(20));
    assert_eq!(code(&out), 2, "{}", text(&out));
    assert!(
        text(&out).contains("log has other members"),
        "{}",
        text(&out)
    );
}
