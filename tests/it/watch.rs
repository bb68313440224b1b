//! `sentinel watch` against real `sentinel serve` processes: one JSON line per event, each
//! revision once and in order across a leader killed under the watch (the stream resumes on
//! another node from the last revision it printed), a stream resumed with `--since-revision`,
//! and `GET /watch` refusing what it cannot follow; and on the local backend, the table's
//! events.

use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::serve::{
    Node, TOKEN, eventually, free_addr, leader_of, one_cluster_at_a_time, peers_of,
};
use crate::server_cli::cli;
use crate::support::{Running, code, text, wait_for};

/// The JSON lines a watch printed so far.
fn lines(path: &std::path::Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

fn ok(out: std::process::Output) {
    assert_eq!(code(&out), 0, "{}", text(&out));
}

#[test]
fn a_watch_sees_every_event_once_across_a_leader_kill() {
    let _one = one_cluster_at_a_time();
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let addrs: Vec<String> = (0..3).map(|_| free_addr()).collect();
    let peers = peers_of(&addrs);
    let mut nodes: Vec<Node> = (0..3)
        .map(|i| Node::start(i as u64 + 1, &addrs[i], &peers, dirs[i].path(), Some(TOKEN)))
        .collect();
    let leader = eventually(30, "a leader", || leader_of(&addrs[0])) as usize - 1;
    // The watch talks to the leader first: killing it cuts the watch's own connection.
    let mut order: Vec<String> = vec![format!("http://{}", addrs[leader])];
    order.extend(
        (0..3)
            .filter(|i| *i != leader)
            .map(|i| format!("http://{}", addrs[i])),
    );
    let servers = order.join(",");
    let tmp = tempfile::tempdir().unwrap();
    let client = tmp.path().join("client");
    let sentinel = |worker: &str, args: &[&str]| cli(&client, &servers, worker, args);

    let out_path = tmp.path().join("watch.jsonl");
    let out = std::fs::File::create(&out_path).unwrap();
    let watcher = |args: &[&str]| {
        let mut cmd = crate::support::sentinel(&client);
        cmd.env("SENTINEL_SERVER", &servers)
            .env("SENTINEL_AUTH_TOKEN", TOKEN)
            .arg("watch")
            .args(args);
        cmd
    };
    let mut watch = Running::spawn_with_stdout(watcher(&["--prefix", "job/"]).stdout(out));
    // Events before and after the kill; one outside the prefix is never shown.
    let round = |from: usize| {
        for i in from..from + 3 {
            let name = format!("job/{i}");
            ok(sentinel("w", &["claim", &name]).output().unwrap());
            ok(sentinel("w", &["release", &name]).output().unwrap());
        }
        ok(sentinel("w", &["claim", "other"]).output().unwrap());
        ok(sentinel("w", &["release", "other"]).output().unwrap());
    };
    // The stream is open once it has told where it starts; events from then on are seen.
    std::thread::sleep(Duration::from_millis(500));
    round(0);
    wait_for(Duration::from_secs(20), "six events", || {
        lines(&out_path).len() == 6
    });
    // The watch is stopped while its node dies and the next events happen: it can only see
    // them by resuming from the last revision it printed.
    watch.signal("STOP");
    nodes[leader].kill();
    round(3);
    watch.signal("CONT");
    wait_for(Duration::from_secs(30), "twelve events", || {
        lines(&out_path).len() == 12
    });
    watch.signal("TERM");
    let exit = watch.exit_within(Duration::from_secs(10));
    assert_eq!(code(&exit), 0, "{}", text(&exit));

    let events = lines(&out_path);
    let revisions: Vec<u64> = events
        .iter()
        .map(|e| e["revision"].as_u64().unwrap())
        .collect();
    assert!(
        revisions.windows(2).all(|w| w[0] < w[1]),
        "each revision once, in order: {revisions:?}"
    );
    for (i, pair) in events.chunks(2).enumerate() {
        let name = format!("job/{i}");
        assert_eq!(pair[0]["event"], "acquired", "{events:?}");
        assert_eq!(pair[1]["event"], "released", "{events:?}");
        for e in pair {
            assert_eq!(e["lock"], name.as_str(), "{events:?}");
            assert_eq!(e["worker_id"], "w", "{events:?}");
            assert!(e["fencing_token"].is_u64(), "{e}");
        }
        assert_eq!(pair[0]["fencing_token"], pair[1]["fencing_token"]);
    }

    // Resumed after the first three events: exactly the rest.
    let since = revisions[2].to_string();
    let resumed_path = tmp.path().join("resumed.jsonl");
    let resumed = std::fs::File::create(&resumed_path).unwrap();
    let mut watch = Running::spawn_with_stdout(
        watcher(&["--prefix", "job/", "--since-revision", &since]).stdout(resumed),
    );
    wait_for(Duration::from_secs(20), "the events after it", || {
        lines(&resumed_path).len() == 9
    });
    assert_eq!(lines(&resumed_path), events[3..]);
    watch.signal("INT");
    assert_eq!(code(&watch.exit_within(Duration::from_secs(10))), 0);
}

/// On the local backend: claims, releases and a stale hold taken over, each one line with
/// the next revision, and a watch resumed after a revision it printed.
#[test]
fn a_local_watch_sees_each_change_of_the_table() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let sentinel = |worker: &str, args: &[&str]| crate::support::local(&data, worker, args);
    let watcher = |args: &[&str]| {
        let mut cmd = crate::support::sentinel(&data);
        cmd.arg("watch").args(args);
        cmd
    };
    let out_path = tmp.path().join("watch.jsonl");
    let out = std::fs::File::create(&out_path).unwrap();
    let mut watch = Running::spawn_with_stdout(watcher(&["--prefix", "job/"]).stdout(out));
    std::thread::sleep(Duration::from_millis(500));
    ok(sentinel("a", &["claim", "job/1"]).output().unwrap());
    ok(sentinel("a", &["claim", "other"]).output().unwrap());
    ok(sentinel("a", &["release", "job/1"]).output().unwrap());
    ok(sentinel("a", &["claim", "job/2", "--ttl", "1s"])
        .output()
        .unwrap());
    std::thread::sleep(Duration::from_millis(1_100));
    ok(
        sentinel("b", &["claim", "job/2", "--strategy", "steal-stale"])
            .output()
            .unwrap(),
    );
    wait_for(Duration::from_secs(10), "five events", || {
        lines(&out_path).len() == 5
    });
    watch.signal("TERM");
    assert_eq!(code(&watch.exit_within(Duration::from_secs(10))), 0);
    let events = lines(&out_path);
    let seen: Vec<(&str, &str, &str)> = events
        .iter()
        .map(|e| {
            let s = |k: &str| e[k].as_str().unwrap();
            (s("event"), s("lock"), s("worker_id"))
        })
        .collect();
    assert_eq!(
        seen,
        [
            ("acquired", "job/1", "a"),
            ("released", "job/1", "a"),
            ("acquired", "job/2", "a"),
            ("expired", "job/2", "a"),
            ("acquired", "job/2", "b"),
        ]
    );
    let revisions: Vec<u64> = events
        .iter()
        .map(|e| e["revision"].as_u64().unwrap())
        .collect();
    assert!(revisions.windows(2).all(|w| w[0] < w[1]), "{revisions:?}");
    // Resumed after the second: the three after it, then nothing more.
    let resumed_path = tmp.path().join("resumed.jsonl");
    let resumed = std::fs::File::create(&resumed_path).unwrap();
    let since = revisions[1].to_string();
    let mut watch = Running::spawn_with_stdout(
        watcher(&["--prefix", "job/", "--since-revision", &since]).stdout(resumed),
    );
    wait_for(Duration::from_secs(10), "three events", || {
        lines(&resumed_path).len() == 3
    });
    watch.signal("INT");
    assert_eq!(code(&watch.exit_within(Duration::from_secs(10))), 0);
    assert_eq!(lines(&resumed_path), events[2..]);
}

#[test]
fn a_watch_needs_a_backend_with_events_and_a_valid_query() {
    let tmp = tempfile::tempdir().unwrap();
    let out = crate::support::sentinel(tmp.path())
        .args(["--backend", "github", "watch", "x"])
        .output()
        .unwrap();
    assert_eq!(code(&out), 2, "{}", text(&out));
    assert!(text(&out).contains("--server"), "{}", text(&out));
    let (_node, url) = crate::server_cli::one_node(tmp.path());
    for query in ["prefix=a&name=b", "since_revision=x", "other=1", "name="] {
        let out = Command::new("curl")
            .args(["-s", "-o", "/dev/null", "-w", "%{http_code}"])
            .args(["-H", &format!("Authorization: Bearer {TOKEN}")])
            .arg(format!("{url}/watch?{query}"))
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), "400", "{query}");
    }
    let out = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}"])
        .arg(format!("{url}/watch?prefix="))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "401", "no token");
}
