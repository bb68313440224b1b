//! The coordinator's key-value store under leader kills: counters that clients raise
//! concurrently, one by compare-and-set (read the value and its revision, write value + 1 only
//! if the revision is unchanged) and one by `add` merge writes, while the leader is killed with
//! `kill -9` and restarted twice. Every request is retried with its request id, on any node,
//! until it is answered; afterwards each counter holds exactly the number of increments its
//! clients were told succeeded: none lost, none applied twice (a retry of a write whose answer
//! was lost must get that answer, not a second write or a compare failure that makes the client
//! write again).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::cluster::{Cluster, Setup, call};
use crate::serve::{NO_ANSWER, eventually, one_cluster_at_a_time};

const CAS_KEY: &str = "kv-chaos/cas";
const ADD_KEY: &str = "kv-chaos/add";
/// How long one exchange may take before the client asks another node.
const CALL_TIMEOUT: Duration = Duration::from_secs(2);
/// How long one request is retried before the test fails.
const REQUEST_BUDGET: Duration = Duration::from_secs(45);

struct Shared {
    addrs: Vec<String>,
    stop: AtomicBool,
    cas_done: AtomicU64,
    adds_done: AtomicU64,
}

/// Sends one request (the same body, so the same request id) to the nodes in turn until one
/// answers with anything but a 503; panics when the budget runs out.
fn settle(
    shared: &Shared,
    node: &mut usize,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> (u16, Value) {
    let began = Instant::now();
    loop {
        assert!(
            began.elapsed() < REQUEST_BUDGET,
            "{method} {path} {body:?} unanswered for {REQUEST_BUDGET:?}"
        );
        let addr = &shared.addrs[*node % shared.addrs.len()];
        match call(addr, method, path, body, CALL_TIMEOUT) {
            Ok((503, _)) => {}
            Ok(answer) => return answer,
            Err(e) if e.starts_with(NO_ANSWER) => {}
            Err(_) => {}
        }
        *node += 1;
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One compare-and-set increment: read, write value + 1 at that revision; again from the read
/// when another client wrote first.
fn cas_increment(shared: &Shared, node: &mut usize, client: usize, n: u64) {
    let path = format!("/kv/{CAS_KEY}");
    for attempt in 0.. {
        let (status, read) = settle(shared, node, "GET", &path, None);
        let (value, revision) = match status {
            200 => (
                read["value"].as_u64().unwrap(),
                read["mod_revision"].as_u64().unwrap(),
            ),
            404 => (0, 0),
            _ => panic!("GET {path}: {status} {read}"),
        };
        let body = json!({
            "value": value + 1,
            "if_revision": revision,
            "writer": format!("c{client}"),
            "request_id": format!("cas-{client}-{n}-{attempt}"),
        });
        let (status, answer) = settle(shared, node, "PUT", &path, Some(&body));
        match (status, answer["code"].as_str()) {
            (200, _) => {
                shared.cas_done.fetch_add(1, Ordering::SeqCst);
                return;
            }
            (409, Some("compare_failed")) => continue,
            _ => panic!("PUT {path}: {status} {answer}"),
        }
    }
}

fn add_increment(shared: &Shared, node: &mut usize, client: usize, n: u64) {
    let path = format!("/kv/{ADD_KEY}");
    let body = json!({
        "value": 1, "merge": "add", "writer": format!("c{client}"),
        "request_id": format!("add-{client}-{n}"),
    });
    let (status, answer) = settle(shared, node, "PUT", &path, Some(&body));
    assert_eq!(status, 200, "PUT {path}: {answer}");
    shared.adds_done.fetch_add(1, Ordering::SeqCst);
}

#[test]
fn counters_lose_no_increment_and_apply_none_twice_through_leader_kills() {
    let _one = one_cluster_at_a_time();
    let mut cluster = Cluster::start_with(Setup {
        name: "kv-chaos",
        ..Setup::default()
    });
    let shared = Arc::new(Shared {
        addrs: cluster.addrs.clone(),
        stop: AtomicBool::new(false),
        cas_done: AtomicU64::new(0),
        adds_done: AtomicU64::new(0),
    });
    cluster.agreed_leader(&[0, 1, 2], 30);
    let clients: Vec<_> = (0..6)
        .map(|c| {
            let shared = shared.clone();
            std::thread::spawn(move || {
                let mut node = c;
                let mut n = 0;
                while !shared.stop.load(Ordering::SeqCst) {
                    match c % 2 {
                        0 => cas_increment(&shared, &mut node, c, n),
                        _ => add_increment(&shared, &mut node, c, n),
                    }
                    n += 1;
                }
            })
        })
        .collect();
    for round in 0..2 {
        std::thread::sleep(Duration::from_secs(2));
        let leader = cluster.agreed_leader(&[0, 1, 2], 30);
        let before =
            shared.cas_done.load(Ordering::SeqCst) + shared.adds_done.load(Ordering::SeqCst);
        cluster.nodes[leader].kill();
        let others: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
        cluster.agreed_leader(&others, 30);
        // The survivors serve: increments go on (a client may first wait out a call to the dead
        // node, so progress is waited for, not timed).
        let done =
            || shared.cas_done.load(Ordering::SeqCst) + shared.adds_done.load(Ordering::SeqCst);
        let what = format!(
            "round {round}: increments while node {} is down",
            leader + 1
        );
        eventually(30, &what, || (done() > before + 10).then_some(()));
        cluster.nodes[leader].restart();
        cluster.caught_up(leader, 30);
    }
    std::thread::sleep(Duration::from_secs(1));
    shared.stop.store(true, Ordering::SeqCst);
    for c in clients {
        c.join().expect("a client failed");
    }
    let mut node = 0;
    let value = |node: &mut usize, key: &str| {
        let (status, v) = settle(&shared, node, "GET", &format!("/kv/{key}"), None);
        assert_eq!(status, 200, "{key}: {v}");
        v["value"].as_u64().unwrap()
    };
    let (cas, adds) = (
        shared.cas_done.load(Ordering::SeqCst),
        shared.adds_done.load(Ordering::SeqCst),
    );
    println!("kv chaos: {cas} compare-and-set increments, {adds} add increments");
    assert!(
        cas > 10 && adds > 10,
        "too little load: {cas} CAS, {adds} adds"
    );
    assert_eq!(
        value(&mut node, CAS_KEY),
        cas,
        "compare-and-set counter\n{}",
        cluster.logs()
    );
    assert_eq!(
        value(&mut node, ADD_KEY),
        adds,
        "add counter\n{}",
        cluster.logs()
    );
}
