//! A node whose wall clock runs an hour ahead (libfaketime) in a three-node cluster of real
//! `sentinel serve` processes: made leader, it must not end a lease early (its clock is not the
//! leases' clock), the times it shows are not an hour ahead, and once it dies the next leader's
//! clock is not stuck an hour ahead either: a short lease ends on time.
//!
//! Both ways libfaketime can run are covered: with the monotonic clock shifted too (its default)
//! and with the monotonic clock left alone (`FAKETIME_DONT_FAKE_MONOTONIC=1`).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::serve::{Node, TOKEN, eventually, exchange_within, free_addr, leader_of, peers_of};

/// How far the skewed node's wall clock runs ahead.
const SKEW: &str = "+1h";
const SKEW_SECS: i64 = 3_600;
/// How far a time the cluster shows may be from the test's wall clock: the state's clock runs
/// behind by the time without a leader, a few seconds here.
const NEAR: chrono::Duration = chrono::Duration::seconds(60);

/// Debian's libfaketime (`apt-get install faketime`), under `/usr/lib/<multiarch>/faketime/`.
pub(crate) fn libfaketime() -> Option<PathBuf> {
    std::fs::read_dir("/usr/lib")
        .ok()?
        .flatten()
        .map(|e| e.path().join("faketime/libfaketime.so.1"))
        .find(|p| p.is_file())
}

/// The environment that runs a process under libfaketime, an hour ahead.
fn faketime_env(lib: &Path, real_monotonic: bool) -> Vec<(String, String)> {
    let mut env = vec![
        ("LD_PRELOAD".to_string(), lib.display().to_string()),
        ("FAKETIME".to_string(), SKEW.to_string()),
    ];
    if real_monotonic {
        env.push(("FAKETIME_DONT_FAKE_MONOTONIC".into(), "1".into()));
    }
    env
}

fn call(addr: &str, method: &str, path: &str, body: Option<Value>) -> Result<(u16, Value), String> {
    let auth = format!("Bearer {TOKEN}");
    let (status, text) = exchange_within(
        addr,
        method,
        path,
        body.as_ref(),
        &[("Authorization", &auth)],
        Duration::from_secs(15),
    )?;
    let v = serde_json::from_str(&text).map_err(|e| format!("{e}: {text:?}"))?;
    Ok((status, v))
}

/// The leader every running node agrees on, once they do.
fn agreed_leader(nodes: &[Node]) -> Option<u64> {
    let seen: Vec<Option<u64>> = nodes
        .iter()
        .filter(|n| n.is_running())
        .map(|n| leader_of(&n.addr))
        .collect();
    let first = seen.first().copied().flatten()?;
    let leads = nodes.iter().any(|n| n.is_running() && n.id == first);
    (leads && seen.iter().all(|l| *l == Some(first))).then_some(first)
}

/// An acquire through any running node (a follower forwards it), retried under the same request
/// id until a node answers it: 200 granted or 409 held.
fn acquire(
    nodes: &[Node],
    name: &str,
    holder: &str,
    ttl_ms: u64,
    request_id: &str,
) -> (u16, Value) {
    let body = json!({"holder": holder, "ttl_ms": ttl_ms, "request_id": request_id});
    eventually(30, &format!("an answer to {request_id}"), || {
        nodes.iter().filter(|n| n.is_running()).find_map(|n| {
            let (s, v) = call(
                &n.addr,
                "POST",
                &format!("/locks/{name}/acquire"),
                Some(body.clone()),
            )
            .ok()?;
            matches!(s, 200 | 409).then_some((s, v))
        })
    })
}

fn holder(v: &Value) -> String {
    v["holder"]["worker_id"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// A time the cluster shows, as the distance from the test's own wall clock.
fn off_now(v: &Value, field: &str) -> chrono::Duration {
    let at = v["holder"][field]
        .as_str()
        .unwrap_or_else(|| panic!("no {field} in {v}"));
    let at = chrono::DateTime::parse_from_rfc3339(at).unwrap();
    at.with_timezone(&chrono::Utc) - chrono::Utc::now()
}

/// Kills the leader and starts it again until node `id` leads, a quorum running.
fn make_leader(nodes: &mut [Node], id: u64) -> usize {
    for round in 1..=20 {
        let leader = eventually(30, "a leader every node knows", || agreed_leader(nodes));
        if leader == id {
            return round;
        }
        let li = (leader - 1) as usize;
        nodes[li].kill();
        eventually(30, "a new leader", || {
            agreed_leader(nodes).filter(|&l| l != leader)
        });
        nodes[li].restart();
    }
    panic!("node {id} never became leader");
}

fn skewed_leader(lib: &Path, real_monotonic: bool) {
    let _one_cluster = crate::serve::one_cluster_at_a_time();
    let variant = if real_monotonic {
        "wall clock +1h, true monotonic clock"
    } else {
        "wall and monotonic clocks +1h"
    };
    // libfaketime does shift the clock it is meant to.
    let out = Command::new("date")
        .arg("+%s")
        .envs(faketime_env(lib, real_monotonic))
        .output()
        .unwrap();
    let faked: i64 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    let ahead = faked - chrono::Utc::now().timestamp();
    assert!((SKEW_SECS - 60..SKEW_SECS + 60).contains(&ahead), "{ahead}");

    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let addrs: Vec<String> = (0..3).map(|_| free_addr()).collect();
    let peers = peers_of(&addrs);
    // The cluster starts under true clocks (the state's clock starts from the first leader's
    // wall clock); node 3, an hour ahead, joins it.
    let mut nodes: Vec<Node> = (0..2)
        .map(|i| {
            Node::start_env(
                i as u64 + 1,
                &addrs[i],
                &peers,
                dirs[i].path(),
                Some(TOKEN),
                Vec::new(),
            )
        })
        .collect();
    eventually(30, "a leader", || agreed_leader(&nodes));
    let (s, v) = acquire(&nodes, "before", "alice", 600_000, "alice-1");
    assert_eq!(s, 200, "{v}");
    let alice = v["holder"]["fencing_token"].clone();
    nodes.push(Node::start_env(
        3,
        &addrs[2],
        &peers,
        dirs[2].path(),
        Some(TOKEN),
        faketime_env(lib, real_monotonic),
    ));
    let rounds = make_leader(&mut nodes, 3);
    eprintln!("{variant}: the skewed node 3 leads after {rounds} round(s) of leader kills");

    // Under the skewed leader: the lease granted before keeps its full TTL.
    let (s, v) = acquire(&nodes, "before", "bob", 600_000, "bob-1");
    assert_eq!(
        (s, holder(&v)),
        (409, "alice".to_string()),
        "{variant}: {v}"
    );
    assert_eq!(v["holder"]["fencing_token"], alice, "{variant}: {v}");
    // A lease it grants keeps its full TTL, and shows no time an hour ahead.
    let (s, v) = acquire(&nodes, "after", "carol", 30_000, "carol-1");
    assert_eq!(s, 200, "{v}");
    let granted = Instant::now();
    let off = off_now(&v, "claimed_at");
    assert!(
        off.abs() < NEAR,
        "{variant}: claimed_at {off} from now: {v}"
    );
    std::thread::sleep(Duration::from_secs(2));
    let (s, v) = acquire(&nodes, "after", "dave", 30_000, "dave-1");
    assert_eq!(
        (s, holder(&v)),
        (409, "carol".to_string()),
        "{variant}: {v}"
    );
    // And a short lease still ends.
    let ended = short_lease(&nodes, "short-1", variant);
    eprintln!("{variant}: under the skewed leader a 1 s lease was handed on after {ended:?}");

    // The skewed node dies: the next leader's clock is not an hour ahead.
    nodes[2].kill();
    let next = eventually(30, "a leader after node 3", || agreed_leader(&nodes));
    assert_ne!(next, 3);
    let (s, v) = acquire(&nodes, "before", "bob", 600_000, "bob-2");
    assert_eq!(
        (s, holder(&v)),
        (409, "alice".to_string()),
        "{variant}: {v}"
    );
    if granted.elapsed() < Duration::from_secs(25) {
        let (s, v) = acquire(&nodes, "after", "dave", 30_000, "dave-2");
        assert_eq!(
            (s, holder(&v)),
            (409, "carol".to_string()),
            "{variant}: {v}"
        );
    }
    let ended = short_lease(&nodes, "short-2", variant);
    eprintln!("{variant}: after the skewed leader died a 1 s lease was handed on after {ended:?}");
}

/// Erin takes `name` for 1 s; frank is refused at once and granted once it ended (within 10 s):
/// how long after erin's grant frank got it.
fn short_lease(nodes: &[Node], name: &str, variant: &str) -> Duration {
    let (s, v) = acquire(nodes, name, "erin", 1_000, &format!("{name}-erin"));
    assert_eq!(s, 200, "{variant}: {v}");
    let granted = Instant::now();
    let off = off_now(&v, "expires_at");
    assert!(
        off.abs() < NEAR,
        "{variant}: expires_at {off} from now: {v}"
    );
    let (s, v) = acquire(nodes, name, "frank", 1_000, &format!("{name}-frank-0"));
    assert_eq!((s, holder(&v)), (409, "erin".to_string()), "{variant}: {v}");
    let mut attempt = 0;
    loop {
        std::thread::sleep(Duration::from_millis(250));
        attempt += 1;
        let (s, v) = acquire(
            nodes,
            name,
            "frank",
            1_000,
            &format!("{name}-frank-{attempt}"),
        );
        if s == 200 {
            return granted.elapsed();
        }
        assert!(
            granted.elapsed() < Duration::from_secs(10),
            "{variant}: a 1 s lease still held {:?} after its grant: {v}",
            granted.elapsed()
        );
    }
}

#[test]
fn a_leader_an_hour_ahead_neither_ends_leases_early_nor_pushes_the_clock() {
    let Some(lib) = libfaketime() else {
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED: libfaketime is not installed (apt-get install faketime)"
        );
        return;
    };
    skewed_leader(&lib, false);
    skewed_leader(&lib, true);
}
