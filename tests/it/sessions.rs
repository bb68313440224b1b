//! Sessions on a real `sentinel serve` node, over its HTTP API: holds taken in a session share
//! its lease and its renewals, all end together when it is not renewed (a waiter gets the lock,
//! a watcher sees them expire), a close releases them, and the node keeps its sessions across
//! a `kill -9`; the library's `Session`, which renews by itself and says when it is lost; and
//! the `heartbeat` sidecar, which keeps several locks in one session.

use std::time::Duration;

use serde_json::{Value, json};

use sentinel::secret::Secret;
use sentinel::server::{ServerBackend, server_urls};

use crate::serve::{Node, TOKEN, eventually, free_addr, http, leader_of};
use crate::server_cli::{cli, one_node};
use crate::support::{Running, code, stdout_json, text};

fn post(addr: &str, path: &str, body: Value) -> (u16, Value) {
    http(addr, "POST", path, Some(body)).unwrap()
}

fn get(addr: &str, path: &str) -> (u16, Value) {
    http(addr, "GET", path, None).unwrap()
}

#[test]
fn holds_in_a_session_live_and_end_with_it() {
    let data = tempfile::tempdir().unwrap();
    let addr = free_addr();
    let mut node = Node::start(1, &addr, &[], data.path(), Some(TOKEN));
    eventually(20, "a leader", || leader_of(&addr));
    let (code, opened) = post(&addr, "/sessions", json!({"holder": "w1", "ttl_ms": 2000}));
    assert_eq!(code, 200, "{opened}");
    let id = opened["session"].as_u64().unwrap();
    for lock in ["a", "b"] {
        let body = json!({"holder": "w1", "ttl_ms": 600_000, "session": id});
        let (code, v) = post(&addr, &format!("/locks/{lock}/acquire"), body);
        assert_eq!(code, 200, "{v}");
        // The hold's lease is the session's two seconds, not the acquire's ten minutes.
        let expires: chrono::DateTime<chrono::Utc> =
            v["holder"]["expires_at"].as_str().unwrap().parse().unwrap();
        assert!(
            expires < chrono::Utc::now() + chrono::Duration::seconds(10),
            "{v}"
        );
    }
    // Another holder cannot take a hold in it, nor renew or close it.
    let theirs = json!({"holder": "w2", "ttl_ms": 60_000, "session": id});
    let (code, v) = post(&addr, "/locks/c/acquire", theirs);
    assert_eq!((code, v["code"].as_str()), (409, Some("no_session")), "{v}");
    let (code, _) = post(
        &addr,
        &format!("/sessions/{id}/keepalive"),
        json!({"holder": "w2"}),
    );
    assert_eq!(code, 409);
    let (_, session) = get(&addr, &format!("/sessions/{id}"));
    assert_eq!(
        session["holds"].as_array().map(Vec::len),
        Some(2),
        "{session}"
    );

    // Renewed past its first TTL, the session keeps both holds; it survives a kill -9.
    for _ in 0..3 {
        std::thread::sleep(Duration::from_millis(700));
        let (code, v) = post(
            &addr,
            &format!("/sessions/{id}/keepalive"),
            json!({"holder": "w1"}),
        );
        assert_eq!(code, 200, "{v}");
    }
    node.kill();
    node.restart();
    eventually(20, "a leader", || leader_of(&addr));
    let (code, v) = post(
        &addr,
        &format!("/sessions/{id}/keepalive"),
        json!({"holder": "w1"}),
    );
    assert_eq!(code, 200, "{v}");
    let (_, a) = get(&addr, "/locks/a/status");
    assert_eq!(a["holder"]["worker_id"], "w1", "{a}");

    // A waiter of `a`; then no more renewals: both holds end with the session, and the waiter
    // gets `a`.
    let waiter = std::thread::spawn({
        let addr = addr.clone();
        move || {
            post(
                &addr,
                "/locks/a/acquire",
                json!({"holder": "w3", "ttl_ms": 60_000, "wait_ms": 30_000}),
            )
        }
    });
    let (code, v) = waiter.join().unwrap();
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["holder"]["worker_id"], "w3");
    let (_, b) = get(&addr, "/locks/b/status");
    assert_eq!(b["held"], false, "{b}");
    let (code, _) = get(&addr, &format!("/sessions/{id}"));
    assert_eq!(code, 404);

    // A close releases what is in it at once.
    let (_, opened) = post(
        &addr,
        "/sessions",
        json!({"holder": "w1", "ttl_ms": 60_000}),
    );
    let id = opened["session"].as_u64().unwrap();
    let body = json!({"holder": "w1", "ttl_ms": 60_000, "session": id});
    assert_eq!(post(&addr, "/locks/d/acquire", body).0, 200);
    let (code, closed) = post(
        &addr,
        &format!("/sessions/{id}/close"),
        json!({"holder": "w1"}),
    );
    assert_eq!(code, 200, "{closed}");
    assert_eq!(closed["released"][0]["lock"], "d", "{closed}");
    let (_, d) = get(&addr, "/locks/d/status");
    assert_eq!(d["held"], false, "{d}");
}

#[test]
fn the_librarys_session_keeps_its_holds_alive_and_says_when_it_is_lost() {
    let data = tempfile::tempdir().unwrap();
    let addr = free_addr();
    let _node = Node::start(1, &addr, &[], data.path(), Some(TOKEN));
    eventually(20, "a leader", || leader_of(&addr));
    let url = format!("http://{addr}");
    let server = ServerBackend::new(server_urls(&url).unwrap(), Some(&Secret::new(TOKEN))).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let session = server
            .open_session("lib", Duration::from_secs(3))
            .await
            .unwrap();
        for lock in ["la", "lb"] {
            let held = session.acquire(lock, Duration::ZERO).await.unwrap();
            assert_eq!(held.map(|h| h.worker_id), Some("lib".to_string()));
        }
        // Past two TTLs, the keep-alive has kept both.
        tokio::time::sleep(Duration::from_secs(7)).await;
        assert_eq!(session.lost().borrow().clone(), None);
        for lock in ["la", "lb"] {
            let (_, status) = get(&addr, &format!("/locks/{lock}/status"));
            assert_eq!(status["holder"]["worker_id"], "lib", "{status}");
        }
        // Someone else's claim is refused while the session holds it.
        let other = server
            .open_session("other", Duration::from_secs(3))
            .await
            .unwrap();
        assert_eq!(other.acquire("la", Duration::ZERO).await.unwrap(), None);
        let mut released = session.close().await.unwrap();
        released.sort();
        assert_eq!(released, ["la", "lb"]);
        assert!(other.acquire("la", Duration::ZERO).await.unwrap().is_some());

        // Closed behind its back: the keep-alive finds it gone and says so.
        let mut lost = other.lost();
        let (code, _) = post(
            &addr,
            &format!("/sessions/{}/close", other.id()),
            json!({"holder": "other"}),
        );
        assert_eq!(code, 200);
        tokio::time::timeout(Duration::from_secs(5), lost.wait_for(Option::is_some))
            .await
            .expect("the loss is told within the renewal interval")
            .unwrap();
        let gone = other.acquire("lc", Duration::ZERO).await;
        assert!(
            matches!(gone, Err(sentinel::Error::NotOwner(_))),
            "{gone:?}"
        );
    });
}

/// One node that knows its leader, the CLI of a worker through it, and who holds a lock there.
struct CliNode {
    node: Node,
    url: String,
    data: std::path::PathBuf,
}

impl CliNode {
    fn start(tmp: &std::path::Path) -> CliNode {
        let (node, url) = one_node(tmp);
        eventually(20, "a leader", || leader_of(&node.addr));
        let data = tmp.join("client");
        CliNode { node, url, data }
    }

    fn cli(&self, worker: &str, args: &[&str]) -> std::process::Command {
        cli(&self.data, &self.url, worker, args)
    }

    fn holder_of(&self, name: &str) -> Value {
        let (_, st) = get(&self.node.addr, &format!("/locks/{name}/status"));
        st["holder"]["worker_id"].clone()
    }
}

/// `sentinel heartbeat` with several locks moves them into one session, which its one renewal
/// keeps alive: they outlive their TTL, the session lists them, they end together when the
/// sidecar stops without `--release-on-exit`, a close releases them with it, and a lock taken
/// from the session is the sidecar's loss (exit 4).
#[test]
fn a_sidecar_keeps_several_locks_in_one_session() {
    let tmp = tempfile::tempdir().unwrap();
    let node = CliNode::start(tmp.path());
    let claim = |name: &str| {
        let out = node
            .cli("w1", &["claim", name, "--ttl", "3s"])
            .output()
            .unwrap();
        assert_eq!(code(&out), 0, "{}", text(&out));
    };
    for name in ["a", "b", "c"] {
        claim(name);
    }
    let mut sidecar = Running::spawn(&mut node.cli("w1", &["--json", "heartbeat", "a", "b", "c"]));
    std::thread::sleep(Duration::from_secs(7));
    for name in ["a", "b", "c"] {
        assert_eq!(node.holder_of(name), "w1", "{name} outlived its 3s TTL");
    }
    sidecar.signal("TERM");
    let out = sidecar.exit_within(Duration::from_secs(5));
    assert_eq!(code(&out), 0, "{}", text(&out));
    let v = stdout_json(&out);
    let id = v["session"].as_u64().expect("a session");
    assert!(v["renewals"].as_u64().unwrap() >= 3, "{v}");
    let (code_, session) = get(&node.node.addr, &format!("/sessions/{id}"));
    assert_eq!(code_, 200, "{session}");
    let mut locks: Vec<_> = session["holds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["lock"].as_str().unwrap().to_string())
        .collect();
    locks.sort();
    assert_eq!(locks, ["a", "b", "c"], "{session}");
    // Not renewed any more, the session ends within its TTL, and every lock with it.
    eventually(50, "the locks to end with the session", || {
        ["a", "b", "c"]
            .iter()
            .all(|n| node.holder_of(n).is_null())
            .then_some(())
    });

    // With --release-on-exit, SIGTERM closes the session: released at once.
    for name in ["a", "b"] {
        claim(name);
    }
    let mut sidecar = Running::spawn(&mut node.cli(
        "w1",
        &["--json", "heartbeat", "a", "b", "--release-on-exit"],
    ));
    std::thread::sleep(Duration::from_secs(2));
    sidecar.signal("TERM");
    let out = sidecar.exit_within(Duration::from_secs(5));
    assert_eq!(code(&out), 0, "{}", text(&out));
    let mut released: Vec<String> =
        serde_json::from_value(stdout_json(&out)["released"].clone()).unwrap();
    released.sort();
    assert_eq!(released, ["a", "b"]);
    assert!(node.holder_of("a").is_null() && node.holder_of("b").is_null());

    // Taken from the session behind its back: the sidecar exits 4 naming the lock.
    for name in ["a", "b"] {
        claim(name);
    }
    let sidecar = Running::spawn(&mut node.cli("w1", &["--json", "heartbeat", "a", "b"]));
    std::thread::sleep(Duration::from_secs(2));
    let out = node
        .cli("w2", &["release", "b", "--force"])
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{}", text(&out));
    let out = sidecar.exit_within(Duration::from_secs(6));
    assert_eq!(code(&out), 4, "{}", text(&out));
    assert!(text(&out).contains("b (fencing token"), "{}", text(&out));
    assert_eq!(node.holder_of("a"), "w1");
}

/// `run LOCK --also OTHER` on the coordinator keeps its locks in one session: they outlive
/// their TTL while the command runs, the session is closed after it (releasing them), and a lock
/// taken from the session stops the command (exit 4).
#[test]
fn run_also_keeps_its_locks_in_one_session() {
    let tmp = tempfile::tempdir().unwrap();
    let node = CliNode::start(tmp.path());
    let args = [
        "--json", "run", "a", "--also", "b", "--ttl", "3s", "--", "sleep", "5",
    ];
    let run = Running::spawn(&mut node.cli("w1", &args));
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(
        (node.holder_of("a"), node.holder_of("b")),
        ("w1".into(), "w1".into())
    );
    let out = run.exit_within(Duration::from_secs(10));
    assert_eq!(code(&out), 0, "{}", text(&out));
    let v = stdout_json(&out);
    let id = v["session"].as_u64().expect("a session");
    assert_eq!(v["released"], true, "{v}");
    assert_eq!(get(&node.node.addr, &format!("/sessions/{id}")).0, 404);
    assert!(node.holder_of("a").is_null() && node.holder_of("b").is_null());

    let run = Running::spawn(&mut node.cli(
        "w1",
        &[
            "run", "a", "--also", "b", "--ttl", "3s", "--", "sleep", "30",
        ],
    ));
    eventually(20, "the run to hold b", || {
        (node.holder_of("b") == "w1").then_some(())
    });
    let out = node
        .cli("w2", &["release", "b", "--force"])
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{}", text(&out));
    let out = run.exit_within(Duration::from_secs(40));
    assert_eq!(code(&out), 4, "{}", text(&out));
    assert!(text(&out).contains("b (fencing token"), "{}", text(&out));
}
