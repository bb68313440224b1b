//! A `sentinel serve` node's data directory damaged or mixed up between runs, as real processes:
//! locks are claimed through the real CLI, the node is killed, a file of its data directory is
//! deleted, emptied, truncated or changed, and the node must then refuse to start with a message
//! that says what is wrong and how to recover (never a panic, never a silent start that loses
//! locks or hands out fencing tokens again). Restoring the whole directory from a backup brings
//! the locks back.

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::serve::{Node, eventually, exchange_within, free_addr, leader_of, peers_of};
use crate::support::{code, sentinel, stdout_json, text};

/// The coordinator's files inside a node's `--data-dir`.
fn coordinator(data: &Path) -> PathBuf {
    data.join("coordinator")
}

/// `sentinel claim NAME` through the real CLI against `node`: its fencing token.
fn claim(client: &Path, node: &Node, name: &str) -> u64 {
    let out = sentinel(client)
        .env("SENTINEL_SERVER", format!("http://{}", node.addr))
        .args(["--worker-id", "w1", "--json", "claim", name, "--ttl", "10m"])
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{}", text(&out));
    stdout_json(&out)["fencing_token"]
        .as_u64()
        .expect("a fencing token")
}

/// `sentinel status NAME --json` through the real CLI.
fn status(client: &Path, node: &Node, name: &str) -> Value {
    let out = sentinel(client)
        .env("SENTINEL_SERVER", format!("http://{}", node.addr))
        .args(["--worker-id", "w2", "--json", "status", name])
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{}", text(&out));
    stdout_json(&out)
}

/// A one-node cluster in `data` holding `names`, claimed through the CLI, then killed: the
/// tokens.
fn run_and_kill(data: &Path, client: &Path, names: &[&str]) -> Vec<u64> {
    let mut node = Node::start(1, &free_addr(), &[], data, None);
    eventually(20, "a leader", || leader_of(&node.addr));
    let tokens = names.iter().map(|n| claim(client, &node, n)).collect();
    node.kill();
    tokens
}

/// Starts `sentinel serve --id ID` on `data` and expects it to exit without serving: its output.
/// A node that starts instead fails the test (and is killed).
fn refused(data: &Path, id: u64) -> Output {
    let addr = free_addr();
    let mut child = sentinel(data)
        .args(["serve", "--id", &id.to_string(), "--listen", &addr])
        .env("RUST_LOG", "sentinel=info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        use std::io::BufRead;
        let mut line = String::new();
        let _ = std::io::BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let Ok(line) = rx.recv_timeout(Duration::from_secs(30)) else {
        let _ = child.kill();
        let out = child.wait_with_output().unwrap();
        panic!(
            "the node neither served nor exited within 30 s: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    if line.contains("listening") {
        let _ = child.kill();
        let out = child.wait_with_output().unwrap();
        panic!(
            "the node started on a data directory that does not add up: {line}{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    child.wait_with_output().unwrap()
}

/// Checks a refusal: the exit code, what stderr says, no panic, and the way to recover.
fn assert_refused(out: &Output, exit: i32, says: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(code(out), exit, "{stderr}");
    assert!(stderr.contains(says), "{says:?} not in: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(stderr.contains("docs/cluster.md"), "{stderr}");
}

/// Copies a directory tree (a backup taken while the node is stopped).
fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

#[test]
fn a_deleted_log_is_refused_and_a_restored_backup_serves_the_locks() {
    let (data, client, backup) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    let tokens = run_and_kill(data.path(), client.path(), &["a", "b", "c"]);
    copy_dir(data.path(), backup.path());
    let dir = coordinator(data.path());

    std::fs::remove_file(dir.join("raft.redb")).unwrap();
    let out = refused(data.path(), 1);
    assert_refused(&out, 1, "raft.redb) is missing or empty");
    assert!(dir.join("node.json").exists());

    // The documented recovery: restore the whole directory from the backup.
    std::fs::remove_dir_all(&dir).unwrap();
    copy_dir(&coordinator(backup.path()), &dir);
    let node = Node::start(1, &free_addr(), &[], data.path(), None);
    eventually(20, "a leader", || leader_of(&node.addr));
    for (name, token) in ["a", "b", "c"].iter().zip(&tokens) {
        let s = status(client.path(), &node, name);
        assert_eq!(s["holder"]["fencing_token"].as_u64(), Some(*token), "{s}");
    }
}

#[test]
fn an_emptied_or_truncated_log_is_refused_without_a_panic() {
    let (data, client) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    run_and_kill(data.path(), client.path(), &["a", "b"]);
    let log = coordinator(data.path()).join("raft.redb");
    let bytes = std::fs::read(&log).unwrap();

    std::fs::write(&log, b"").unwrap();
    assert_refused(
        &refused(data.path(), 1),
        1,
        "raft.redb) is missing or empty",
    );

    for len in [bytes.len() / 2, 1000] {
        std::fs::write(&log, &bytes[..len]).unwrap();
        let out = refused(data.path(), 1);
        assert_refused(&out, 1, "cannot read the Raft log");
        assert!(text(&out).contains("damaged"), "{}", text(&out));
    }
}

#[test]
fn a_data_dir_started_as_another_node_is_refused() {
    let (data, client) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    run_and_kill(data.path(), client.path(), &["a"]);
    let out = refused(data.path(), 2);
    assert_refused(&out, 2, "belongs to node 1, not to node 2");
}

/// A node with a real snapshot: sequential acquires (one log entry each) until openraft has
/// written one (every 5,000 entries), then killed.
fn run_until_snapshot(data: &Path) -> (u64, Duration) {
    let node = Node::start(1, &free_addr(), &[], data, None);
    eventually(20, "a leader", || leader_of(&node.addr));
    let snapshot = coordinator(data).join("snapshot");
    let started = Instant::now();
    let mut last = 0;
    for i in 0.. {
        if snapshot.exists() {
            break;
        }
        assert!(i < 7_000, "no snapshot after {i} acquires");
        let (s, body) = exchange_within(
            &node.addr,
            "POST",
            &format!("/locks/s-{i}/acquire"),
            Some(&json!({"holder": "w1", "ttl_ms": 600_000})),
            &[],
            Duration::from_secs(30),
        )
        .unwrap();
        assert_eq!(s, 200, "{body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        last = v["holder"]["fencing_token"].as_u64().unwrap();
    }
    let took = started.elapsed();
    drop(node);
    (last, took)
}

#[test]
fn a_changed_snapshot_or_a_log_lost_behind_it_is_refused() {
    let data = tempfile::tempdir().unwrap();
    let (last, took) = run_until_snapshot(data.path());
    eprintln!("a snapshot after {took:?}; last token {last}");
    let dir = coordinator(data.path());
    let snapshot = std::fs::read_to_string(dir.join("snapshot")).unwrap();

    // One lock's name changed in the state: valid JSON, a valid state, a wrong checksum.
    let (head, state) = snapshot.split_once('\n').unwrap();
    assert!(state.contains("\"s-17\""));
    std::fs::write(
        dir.join("snapshot"),
        format!("{head}\n{}", state.replacen("\"s-17\"", "\"s-1X\"", 1)),
    )
    .unwrap();
    assert_refused(&refused(data.path(), 1), 1, "checksum does not match");
    std::fs::write(dir.join("snapshot"), &snapshot).unwrap();

    // The case: the log deleted, the snapshot still there.
    std::fs::remove_file(dir.join("raft.redb")).unwrap();
    assert_refused(
        &refused(data.path(), 1),
        1,
        "raft.redb) is missing or empty",
    );
}

/// The documented recovery in a cluster: the node whose directory is moved away starts fresh and
/// catches up from the others, even node 1, which forms clusters; every member records the same
/// cluster id.
#[test]
fn a_node_with_a_fresh_directory_rejoins_and_every_member_records_one_cluster() {
    let _one_cluster = crate::serve::one_cluster_at_a_time();
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let addrs: Vec<String> = (0..3).map(|_| free_addr()).collect();
    let peers = peers_of(&addrs);
    let mut nodes: Vec<Node> = (0..3)
        .map(|i| Node::start(i as u64 + 1, &addrs[i], &peers, dirs[i].path(), None))
        .collect();
    eventually(30, "a leader known to every node", || {
        let seen: Vec<Option<u64>> = addrs.iter().map(|a| leader_of(a)).collect();
        let first = seen[0]?;
        seen.iter().all(|l| *l == Some(first)).then_some(first)
    });
    let client = tempfile::tempdir().unwrap();
    let token = claim(client.path(), &nodes[1], "kept");

    nodes[0].kill();
    let dir = coordinator(dirs[0].path());
    std::fs::rename(&dir, dirs[0].path().join("coordinator.broken")).unwrap();
    nodes[0].restart();
    // Node 1's own state (its metrics count the locks it holds) has the lock again.
    eventually(30, "node 1 caught up", || {
        let (s, text) = exchange_within(
            &addrs[0],
            "GET",
            "/metrics",
            None,
            &[],
            Duration::from_secs(5),
        )
        .ok()?;
        (s == 200 && text.lines().any(|l| l == "active_locks_gauge 1")).then_some(())
    });
    let ids: Vec<Value> = dirs
        .iter()
        .map(|d| {
            let bytes = std::fs::read(coordinator(d.path()).join("node.json")).unwrap();
            serde_json::from_slice::<Value>(&bytes).unwrap()["cluster_id"].clone()
        })
        .collect();
    assert!(ids[0].is_string(), "{ids:?}");
    assert!(ids.iter().all(|i| *i == ids[0]), "{ids:?}");
    // The cluster is one: node 1 serves the lock taken while it was away, and takes writes.
    let s = status(client.path(), &nodes[0], "kept");
    assert_eq!(s["holder"]["fencing_token"].as_u64(), Some(token), "{s}");
    assert!(claim(client.path(), &nodes[0], "after-rejoin") > token);
}
