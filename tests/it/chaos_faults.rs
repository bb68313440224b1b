//! The coordinator's chaos test under the faults of a hostile network, clock, peer and disk, with
//! the same load and checker as `cluster` (locks, semaphore permits, shared holds and elections;
//! no name held in a way its kind forbids, tokens in order, no acknowledged grant lost). Three real `sentinel serve` processes reach each other through a
//! fault-injecting proxy per node ([`crate::proxy`]) that sorts connections by the sending node,
//! so one node's links can be cut, held or delayed apart from the others'; clients reach the
//! nodes directly. Node 3 runs under libfaketime, its wall clock an hour ahead and running ten
//! times too fast. In order:
//!
//! 1. forged and fuzzed Raft RPCs to every node, without the peer token, with a wrong one and
//!    with the client token: all refused, no term or leader changes;
//! 2. every peer link delayed by 10 ms each way (served), then by 30 ms (writes trickle or
//!    stop: openraft gives an AppendEntries the heartbeat interval, 50 ms, as its deadline),
//!    then healed;
//! 3. a lossy link: one follower's links dropped in bursts of 250 ms;
//! 4. the leader partitioned from both followers (a blackhole both ways): the majority elects a
//!    leader that serves, the old leader grants nothing, and steps down once healed;
//! 5. node 3 (skewed clock) made leader after the leader is killed, by cutting the third node's
//!    requests one way (so that only node 3's vote requests arrive), serving under load; then
//!    killed with `kill -9`, and the next leader serves;
//! 6. a follower's Raft log lost: the node refuses to start; with the log back it catches up.
//!
//! A second test runs the documented recoveries of a lost data directory under the same load: a
//! follower rejoining with a fresh directory, and one restored from a copy taken earlier.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::clock_skew::libfaketime;
use crate::cluster::{Cluster, Load, RECOVERY, Setup, TTL_MS, call};
use crate::proxy::{Dir, Fault};
use crate::serve::{PEER_TOKEN, TOKEN};
use crate::support::sentinel;

const PEER: &str = "x-sentinel-peer-token";
/// How far ahead of a node's term the forged RPCs' terms are, at the least.
const FORGED_TERMS_AHEAD: u64 = 5;
/// The node under libfaketime (node 3).
const SKEWED: usize = 2;

/// Puts `fault` on every link of node `i`, both ways: what it sends and what it receives.
fn isolate(cluster: &Cluster, i: usize, fault: Fault) {
    for (j, p) in cluster.proxies.iter().enumerate() {
        if j == i {
            p.set(None, Dir::Both, fault);
        } else {
            p.set(Some(i as u64 + 1), Dir::Both, fault);
        }
    }
}

/// Lifts every fault of every link.
fn heal(cluster: &Cluster) {
    for p in &cluster.proxies {
        p.heal();
    }
}

/// A node's term and leader, in its own view.
fn term_and_leader(cluster: &Cluster, i: usize) -> (Value, Value) {
    let v = cluster.own_view(i).expect("the node answers");
    (v["term"].clone(), v["leader"].clone())
}

/// One raw HTTP/1.1 request (any bytes as body) within 5 s: the status, None if the node closed
/// the connection without one.
fn raw_post(addr: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Option<u16> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(5))).unwrap();
    let headers: String = headers
        .iter()
        .map(|(k, v)| format!("{k}: {v}\r\n"))
        .collect();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n{headers}\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).ok()?;
    s.write_all(body).ok()?;
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer);
    answer.split_whitespace().nth(1)?.parse().ok()
}

/// Forged and fuzzed Raft RPCs at node `i`, none carrying the peer token: every one must be
/// refused (401 without it or with a wrong one, 403 with the client token instead); the
/// refusals, for the report.
fn forge(cluster: &Cluster, i: usize, rng: &mut fastrand::Rng) -> usize {
    let addr = &cluster.addrs[i];
    let (term, leader) = term_and_leader(cluster, i);
    let term = term.as_u64().unwrap_or(1);
    let leader = leader.as_u64().unwrap_or(1);
    let ahead = term + FORGED_TERMS_AHEAD;
    // A leader's append that would overwrite the log, a vote that would depose the leader, and
    // a snapshot that would replace the state: each from a real member, in a later term.
    let append = json!({
        "vote": {"leader_id": {"term": ahead, "node_id": leader}, "committed": true},
        "prev_log_id": null,
        "entries": [{"log_id": {"leader_id": {"term": ahead, "node_id": leader}, "index": 1},
                     "payload": "Blank"}],
        "leader_commit": {"leader_id": {"term": ahead, "node_id": leader}, "index": 1},
    })
    .to_string();
    let vote = json!({
        "vote": {"leader_id": {"term": term + 100, "node_id": leader}, "committed": false},
        "last_log_id": {"leader_id": {"term": term + 100, "node_id": leader}, "index": 1u64 << 40},
    })
    .to_string();
    let snapshot = json!({
        "vote": {"leader_id": {"term": ahead, "node_id": leader}, "committed": true},
        "meta": {"last_log_id": null, "last_membership": {"log_id": null,
                 "membership": {"configs": [], "nodes": {}}}, "snapshot_id": "forged"},
        "offset": 0, "data": [], "done": true,
    })
    .to_string();
    let client = format!("Bearer {TOKEN}");
    let routes = [
        ("/raft/append", append),
        ("/raft/vote", vote),
        ("/raft/snapshot", snapshot),
    ];
    // Wrong peer tokens: empty, a prefix and an extension of the real one, another length, a
    // case change, the client token in the peer header.
    let longer = format!("{PEER_TOKEN}x");
    let wrong = [
        "",
        &PEER_TOKEN[..PEER_TOKEN.len() - 1],
        longer.as_str(),
        "x",
        &PEER_TOKEN.to_uppercase(),
        TOKEN,
    ];
    let mut refused = 0;
    for (path, body) in &routes {
        let mut tries: Vec<(Vec<(&str, &str)>, u16)> = vec![
            (vec![], 401),
            (vec![("Authorization", client.as_str())], 403),
            (vec![("x-sentinel-peer-id", "1")], 401),
        ];
        for w in &wrong {
            tries.push((vec![(PEER, w), ("x-sentinel-peer-id", "1")], 401));
        }
        for (headers, want) in tries {
            let got = raw_post(addr, path, &headers, body.as_bytes());
            assert_eq!(got, Some(want), "{path} {headers:?} at node {}", i + 1);
            refused += 1;
        }
        // Fuzzed: the body with bytes changed, cut short or doubled, with a wrong token or none.
        for _ in 0..10 {
            let mut fuzzed = body.as_bytes().to_vec();
            match rng.u8(..3) {
                0 => {
                    for _ in 0..rng.usize(1..8) {
                        let k = rng.usize(..fuzzed.len());
                        fuzzed[k] = rng.u8(..);
                    }
                }
                1 => fuzzed.truncate(rng.usize(..fuzzed.len())),
                _ => fuzzed.extend_from_within(..),
            }
            let w = wrong[rng.usize(..wrong.len())];
            let headers: Vec<(&str, &str)> = if rng.bool() { vec![(PEER, w)] } else { vec![] };
            let got = raw_post(addr, path, &headers, &fuzzed);
            assert_eq!(
                got,
                Some(401),
                "fuzzed {path} {headers:?} at node {}",
                i + 1
            );
            refused += 1;
        }
    }
    refused
}

/// `sentinel serve` as node `i` of `cluster` on its data directory, expected to refuse to
/// start: its exit code and stderr. Bounded: a node that serves instead fails the test.
fn refused_start(cluster: &Cluster, i: usize) -> (i32, String) {
    let mut cmd = sentinel(cluster.data(i));
    cmd.args([
        "serve",
        "--id",
        &(i + 1).to_string(),
        "--listen",
        &cluster.addrs[i],
    ]);
    for p in &cluster.peers {
        cmd.args(["--peer", p]);
    }
    let mut child = cmd
        .env("SENTINEL_AUTH_TOKEN", TOKEN)
        .env("SENTINEL_PEER_TOKEN", PEER_TOKEN)
        .env("RUST_LOG", "sentinel=info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let began = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if began.elapsed() > Duration::from_secs(20) {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "node {} started on a data directory without its log: {}",
                i + 1,
                String::from_utf8_lossy(&out.stdout)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    let code = out.status.code().unwrap_or(-1);
    (code, String::from_utf8_lossy(&out.stderr).into_owned())
}

/// Copies a directory tree (a node's data directory, the node stopped).
fn copy_dir(from: &Path, to: &Path) {
    let status = Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .unwrap();
    assert!(
        status.success(),
        "cp -a {} {}",
        from.display(),
        to.display()
    );
}

#[test]
fn three_nodes_keep_locks_exclusive_through_partitions_skewed_clocks_forged_rpcs_and_lost_disks() {
    let _one_cluster = crate::serve::one_cluster_at_a_time();
    // As README says of every test whose tool is missing: skipped, not failed (`.ci/run`
    // installs faketime, so there it always runs).
    let Some(lib) = libfaketime() else {
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED: libfaketime is not installed (apt-get install faketime)"
        );
        return;
    };
    let started = Instant::now();
    let mut env = vec![Vec::new(); 3];
    env[SKEWED] = vec![
        ("LD_PRELOAD".into(), lib.display().to_string()),
        ("FAKETIME".into(), "+1h x10".into()),
        ("FAKETIME_DONT_FAKE_MONOTONIC".into(), "1".into()),
    ];
    let mut cluster = Cluster::start_with(Setup {
        name: "chaos-faults",
        proxies: true,
        env,
    });
    let all = [0, 1, 2];
    let others = |i: usize| -> Vec<usize> { all.iter().copied().filter(|&j| j != i).collect() };
    cluster.agreed_leader(&all, 30);
    let mut load = Load::start(&cluster, started);
    let mut rng = fastrand::Rng::with_seed(0x00c4_a0f5);

    load.phases.begin("steady");
    std::thread::sleep(Duration::from_secs(2));

    // 1. Forged and fuzzed Raft RPCs, under load: refused; no node's term or leader moves.
    load.phases.begin("forged and fuzzed Raft RPCs");
    let before: Vec<_> = all.iter().map(|&i| term_and_leader(&cluster, i)).collect();
    let refused: usize = all.iter().map(|&i| forge(&cluster, i, &mut rng)).sum();
    std::thread::sleep(RECOVERY);
    let after: Vec<_> = all.iter().map(|&i| term_and_leader(&cluster, i)).collect();
    // The forged terms are 5 and 100 ahead: a node that took one would show it. An election of
    // its own (a starved CPU can cause one) moves a term by one or two, and is no failure.
    for (b, a) in before.iter().zip(&after) {
        let (b, a) = (b.0.as_u64().unwrap_or(0), a.0.as_u64().unwrap_or(0));
        assert!(
            a < b + FORGED_TERMS_AHEAD,
            "forged RPCs moved a term: {before:?} -> {after:?}\n{}",
            cluster.logs()
        );
    }
    load.report.push(format!(
        "{refused} forged or fuzzed Raft RPCs refused; terms and leaders {before:?} -> {after:?}"
    ));

    // 2. Every peer link slow: 10 ms each way is served; past an AppendEntries round trip of
    // 50 ms (openraft's deadline for one is the heartbeat interval) replication mostly times
    // out, and writes trickle or stop until the links are fast again.
    load.phases.begin("peer links delayed 10 ms each way");
    for p in &cluster.proxies {
        p.set(None, Dir::Both, Fault::Delay(Duration::from_millis(10)));
    }
    std::thread::sleep(Duration::from_secs(2));
    load.phases
        .begin_unavailable("peer links delayed 30 ms each way");
    for p in &cluster.proxies {
        p.set(None, Dir::Both, Fault::Delay(Duration::from_millis(30)));
    }
    std::thread::sleep(Duration::from_secs(2));
    heal(&cluster);
    let healed = Instant::now();
    let (took, by) = cluster.probe_write(&all, "after-delay", healed);
    load.report.push(format!(
        "links fast again: node {} served a write {took:?} later",
        by + 1
    ));
    std::thread::sleep(RECOVERY);

    // 3. A lossy link: a follower's traffic dropped in bursts longer than an election timeout.
    let l = cluster.agreed_leader(&all, 20);
    let f = (l + 2) % 3;
    load.phases
        .begin(format!("follower (node {}) links lossy", f + 1));
    for _ in 0..6 {
        isolate(&cluster, f, Fault::Blackhole);
        std::thread::sleep(Duration::from_millis(250));
        heal(&cluster);
        std::thread::sleep(Duration::from_millis(250));
    }
    cluster.caught_up(f, 30);
    std::thread::sleep(RECOVERY);

    // 4. The leader partitioned from both followers.
    let l = cluster.agreed_leader(&all, 20);
    let (term, _) = term_and_leader(&cluster, l);
    load.phases
        .begin(format!("leader (node {}) partitioned", l + 1));
    isolate(&cluster, l, Fault::Blackhole);
    let cut = Instant::now();
    let (took, by) = cluster.probe_write(&others(l), "failover-partition", cut);
    load.report.push(format!(
        "leader node {} partitioned: the majority's leader (node {}) served a write {took:?} later",
        l + 1,
        by + 1
    ));
    // The old leader, cut off, grants nothing: its proposals find no quorum.
    let body = json!({"holder": "minority", "ttl_ms": TTL_MS, "request_id": "minority"});
    let answer = call(
        &cluster.addrs[l],
        "POST",
        "/locks/partition-minority/acquire",
        Some(&body),
        Duration::from_secs(3),
    );
    assert!(
        !matches!(answer, Ok((200, _))),
        "the partitioned old leader granted a lock: {answer:?}\n{}",
        cluster.logs()
    );
    load.report.push(format!(
        "the partitioned old leader answered an acquire with {:?}",
        answer.map(|(s, v)| format!("{s} {}", v["code"]))
    ));
    std::thread::sleep(Duration::from_millis(1_000));
    heal(&cluster);
    let healed = Instant::now();
    let new = cluster.caught_up(l, 30);
    let (new_term, _) = term_and_leader(&cluster, l);
    assert!(
        new_term.as_u64() > term.as_u64(),
        "node {} kept term {term} after the partition\n{}",
        l + 1,
        cluster.logs()
    );
    load.report.push(format!(
        "healed: node {} stepped down (term {term} -> {new_term}, node {} leads) and caught up \
         {:?} later",
        l + 1,
        new + 1,
        healed.elapsed()
    ));
    std::thread::sleep(RECOVERY);

    // 5. The skewed node made leader: the leader killed while the third node's requests are cut
    // one way (it still hears and answers the others), so that only the skewed node's vote
    // requests arrive. If the third node's log is the longer one, it refuses that vote and no
    // leader can be elected until the cut heals (as Raft must): then another round.
    load.phases
        .begin(format!("node {} (clock +1h, x10) made leader", SKEWED + 1));
    let mut rounds = 0;
    loop {
        let l = cluster.agreed_leader(&all, 20);
        if l == SKEWED {
            break;
        }
        rounds += 1;
        assert!(
            rounds <= 8,
            "node {} never led\n{}",
            SKEWED + 1,
            cluster.logs()
        );
        let x = 3 - l - SKEWED;
        for (j, p) in cluster.proxies.iter().enumerate() {
            if j != x {
                p.set(Some(x as u64 + 1), Dir::ToTarget, Fault::Blackhole);
            }
        }
        cluster.nodes[l].kill();
        let killed = Instant::now();
        while killed.elapsed() < Duration::from_secs(5)
            && cluster
                .own_view(SKEWED)
                .is_none_or(|v| v["state"] != "leader")
        {
            std::thread::sleep(Duration::from_millis(20));
        }
        load.report.push(format!(
            "round {rounds}: leader node {} killed, node {} cut one way: skewed node {} {}",
            l + 1,
            x + 1,
            SKEWED + 1,
            if killed.elapsed() < Duration::from_secs(5) {
                format!("led {:?} later", killed.elapsed())
            } else {
                "did not lead within 5 s".to_string()
            }
        ));
        heal(&cluster);
        cluster.nodes[l].restart();
        cluster.caught_up(l, 30);
    }
    std::thread::sleep(Duration::from_secs(2));
    load.phases
        .begin(format!("skewed leader (node {}) killed", SKEWED + 1));
    cluster.nodes[SKEWED].kill();
    let killed = Instant::now();
    let (took, by) = cluster.probe_write(&others(SKEWED), "failover-from-skewed", killed);
    load.report.push(format!(
        "skewed leader node {} killed: node {} served a write {took:?} later",
        SKEWED + 1,
        by + 1
    ));
    cluster.nodes[SKEWED].restart();
    cluster.caught_up(SKEWED, 30);
    std::thread::sleep(RECOVERY);

    // 6. A follower's Raft log lost (moved aside): the node refuses to start, and once the log
    // is back it catches up. (The documented recovery, a fresh directory, is the test below.)
    let l = cluster.agreed_leader(&all, 20);
    let f = (l + 1) % 3;
    load.phases
        .begin(format!("follower (node {}) log lost", f + 1));
    cluster.nodes[f].kill();
    let log = cluster.data(f).join("coordinator/raft.redb");
    let aside = cluster.data(f).join("raft.redb.aside");
    std::fs::rename(&log, &aside).unwrap();
    let (code, stderr) = refused_start(&cluster, f);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("raft.redb) is missing") && !stderr.contains("panicked"),
        "{stderr}"
    );
    std::fs::rename(&aside, &log).unwrap();
    cluster.nodes[f].restart();
    let restarted = Instant::now();
    cluster.caught_up(f, 30);
    load.report.push(format!(
        "node {} without its log refused to start (exit 1); with its log back it caught up {:?} \
         after its start",
        f + 1,
        restarted.elapsed()
    ));
    std::thread::sleep(RECOVERY);

    load.finish(&cluster);
    // A node never panicked, whatever it was sent.
    for n in &cluster.nodes {
        assert!(!n.log().contains("panicked"), "node {}: {}", n.id, n.log());
    }
}

/// The documented recoveries of a member whose data directory is lost or damaged, under load:
/// a follower's directory moved away (it rejoins with a fresh one), then a follower's whole
/// directory restored from a copy taken earlier. The cluster must keep serving with every node
/// up, and the checker must pass. Without openraft's `loosen-follower-log-revert` feature the
/// leader asserted that a follower's log never goes back, and its process exited.
#[test]
fn a_follower_rejoining_with_a_fresh_or_restored_directory_keeps_every_node_up() {
    let _one_cluster = crate::serve::one_cluster_at_a_time();
    let started = Instant::now();
    let mut cluster = Cluster::start_with(Setup {
        name: "chaos-rejoin",
        ..Setup::default()
    });
    let all = [0, 1, 2];
    cluster.agreed_leader(&all, 30);
    let mut load = Load::start(&cluster, started);
    load.phases.begin("steady");
    std::thread::sleep(Duration::from_secs(2));

    // A copy of a follower's whole directory, taken stopped (as a backup must be).
    let l = cluster.agreed_leader(&all, 20);
    let b = (l + 1) % 3;
    load.phases
        .begin(format!("follower (node {}) backed up", b + 1));
    let backup = tempfile::tempdir().unwrap();
    cluster.nodes[b].kill();
    copy_dir(&cluster.data(b).join("coordinator"), backup.path());
    cluster.nodes[b].restart();
    cluster.caught_up(b, 30);
    std::thread::sleep(Duration::from_secs(2));

    // Rejoin: the directory moved away, the node started again with a fresh one.
    let l = cluster.agreed_leader(&all, 20);
    let f = (l + 1) % 3;
    load.phases
        .begin(format!("follower (node {}) rejoined fresh", f + 1));
    cluster.nodes[f].kill();
    let dir = cluster.data(f).join("coordinator");
    std::fs::rename(&dir, cluster.data(f).join("coordinator.broken")).unwrap();
    cluster.nodes[f].restart();
    cluster.caught_up(f, 30);
    std::thread::sleep(RECOVERY);

    // Restore: the backup's whole directory in place of the node's (it may lead by now: then
    // the others elect another leader first).
    load.phases
        .begin(format!("node {} restored from a backup", b + 1));
    cluster.nodes[b].kill();
    let dir = cluster.data(b).join("coordinator");
    std::fs::remove_dir_all(&dir).unwrap();
    copy_dir(&backup.path().join("coordinator"), &dir);
    cluster.nodes[b].restart();
    cluster.caught_up(b, 30);
    std::thread::sleep(RECOVERY);

    load.finish(&cluster);
    for n in &cluster.nodes {
        assert!(!n.log().contains("panicked"), "node {}: {}", n.id, n.log());
    }
}
