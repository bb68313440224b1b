//! Sessions on a real `sentinel serve` node, over its HTTP API: holds taken in a session share
//! its lease and its renewals, all end together when it is not renewed (a waiter gets the lock,
//! a watcher sees them expire), a close releases them, and the node keeps its sessions across
//! a `kill -9`; and the library's `Session`, which renews by itself and says when it is lost.

use std::time::Duration;

use serde_json::{Value, json};

use sentinel::secret::Secret;
use sentinel::server::{ServerBackend, server_urls};

use crate::serve::{Node, TOKEN, eventually, free_addr, http, leader_of};

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
