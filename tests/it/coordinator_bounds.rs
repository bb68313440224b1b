//! What one client can cost a coordinator node, through a real `sentinel serve`: a waiter whose
//! connection closes is taken back instead of being handed the lock, and bodies that are too
//! large or of the wrong shape are refused with stable codes.

use std::io::Write;
use std::net::TcpStream;
use std::time::Duration;

use serde_json::{Value, json};

use crate::serve::{Node, eventually, exchange_within, free_addr, leader_of};

/// One request to `addr` without a token: the status and the JSON body.
fn call(addr: &str, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
    let (status, text) =
        exchange_within(addr, method, path, body, &[], Duration::from_secs(20)).unwrap();
    let json = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text:?}"));
    (status, json)
}

#[test]
fn a_waiter_whose_client_left_is_not_handed_the_lock() {
    let data = tempfile::tempdir().unwrap();
    let addr = free_addr();
    let _node = Node::start(1, &addr, &[], data.path(), None);
    eventually(20, "a leader", || leader_of(&addr));
    let acquire = json!({"holder": "w1", "ttl_ms": 60_000});
    let (s, held) = call(&addr, "POST", "/locks/g/acquire", Some(&acquire));
    assert_eq!(s, 200, "{held}");
    let token = held["holder"]["fencing_token"].as_u64().unwrap();

    // w2 waits for the lock, then its client goes away without reading an answer.
    let body = json!({"holder": "w2", "ttl_ms": 60_000, "wait_ms": 30_000}).to_string();
    let mut gone = TcpStream::connect(&addr).unwrap();
    write!(
        gone,
        "POST /locks/g/acquire HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    eventually(10, "w2 in the queue", || {
        let (_, status) = call(&addr, "GET", "/locks/g/status", None);
        (status["queue"].as_array()?.len() == 1).then_some(())
    });
    drop(gone);
    eventually(10, "w2 out of the queue", || {
        let (_, status) = call(&addr, "GET", "/locks/g/status", None);
        status["queue"].as_array()?.is_empty().then_some(())
    });

    let release = json!({"holder": "w1", "token": token});
    let (s, released) = call(&addr, "POST", "/locks/g/release", Some(&release));
    assert_eq!(s, 200, "{released}");
    let (_, status) = call(&addr, "GET", "/locks/g/status", None);
    assert_eq!(
        status["held"], false,
        "the lock went to a client that left: {status}"
    );
}

#[test]
fn bodies_of_the_wrong_shape_or_size_are_refused_with_stable_codes() {
    let data = tempfile::tempdir().unwrap();
    let addr = free_addr();
    let _node = Node::start(1, &addr, &[], data.path(), None);
    eventually(20, "a leader", || leader_of(&addr));

    // serde would take an array of the fields in order for the struct.
    let (s, e) = call(
        &addr,
        "POST",
        "/locks/a/acquire",
        Some(&json!(["w1", 60_000])),
    );
    assert_eq!((s, e["code"].as_str()), (400, Some("invalid_body")), "{e}");

    let big = "x".repeat(1000);
    let acquire = json!({"holder": "w1", "ttl_ms": 60_000, "task_info": {
        "task_type": big, "priority": big, "estimated_duration": big, "complexity": 5,
    }});
    let (s, e) = call(&addr, "POST", "/locks/a/acquire", Some(&acquire));
    assert_eq!(
        (s, e["code"].as_str()),
        (200, None),
        "3 KB of task info is fine: {e}"
    );
    let acquire = json!({"holder": "w1", "ttl_ms": 60_000, "task_info": {
        "task_type": big.repeat(2), "priority": big.repeat(2), "estimated_duration": big,
    }});
    let (s, e) = call(&addr, "POST", "/locks/b/acquire", Some(&acquire));
    assert_eq!(
        (s, e["code"].as_str()),
        (413, Some("task_info_too_large")),
        "{}",
        e["message"]
    );

    // A request id used again with other values is no retry.
    let first = json!({"holder": "w1", "ttl_ms": 60_000, "request_id": "req-7"});
    assert_eq!(call(&addr, "POST", "/locks/c/acquire", Some(&first)).0, 200);
    assert_eq!(call(&addr, "POST", "/locks/c/acquire", Some(&first)).0, 200);
    let other = json!({"holder": "w1", "ttl_ms": 30_000, "request_id": "req-7"});
    let (s, e) = call(&addr, "POST", "/locks/c/acquire", Some(&other));
    assert_eq!(
        (s, e["code"].as_str()),
        (409, Some("request_id_reused")),
        "{e}"
    );

    let (s, e) = call(&addr, "GET", "/locks/%FF/status", None);
    assert_eq!((s, e["code"].as_str()), (400, Some("invalid_name")), "{e}");
    assert!(e["message"].as_str().unwrap().contains("not UTF-8"), "{e}");
}

#[test]
fn a_client_that_never_reads_its_answers_is_cut_off() {
    let data = tempfile::tempdir().unwrap();
    let addr = free_addr();
    let _node = Node::start(1, &addr, &[], data.path(), None);
    eventually(20, "a leader", || leader_of(&addr));
    let info = "x".repeat(3_500);
    for i in 0..300 {
        let acquire = json!({"holder": "w1", "ttl_ms": 600_000, "task_info": {"task_type": info}});
        let (s, e) = call(
            &addr,
            "POST",
            &format!("/locks/l{i:03}/acquire"),
            Some(&acquire),
        );
        assert_eq!(s, 200, "{}", e["message"]);
    }
    // 30 pages of about 1 MB asked for on one connection, none read: more than the socket
    // buffers hold, so the node's writes stall.
    const PAGES: usize = 30;
    let mut stalled = TcpStream::connect(&addr).unwrap();
    let ask = format!("GET /locks?limit=1000 HTTP/1.1\r\nHost: {addr}\r\n\r\n").repeat(PAGES);
    stalled.write_all(ask.as_bytes()).unwrap();
    std::thread::sleep(Duration::from_secs(13));
    // The node answers others meanwhile.
    assert_eq!(call(&addr, "GET", "/health", None).0, 200);
    // Reading now: a node without a write deadline would still be waiting to send the rest.
    stalled
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut answers = Vec::new();
    let _ = std::io::Read::read_to_end(&mut stalled, &mut answers);
    let pages = String::from_utf8_lossy(&answers)
        .matches("HTTP/1.1 200")
        .count();
    assert!(
        pages < PAGES,
        "all {pages} answers were delivered after 13 s of not reading"
    );
}

#[test]
fn a_page_of_locks_stays_small_enough_to_relay() {
    let data = tempfile::tempdir().unwrap();
    let addr = free_addr();
    let _node = Node::start(1, &addr, &[], data.path(), None);
    eventually(20, "a leader", || leader_of(&addr));
    // 1,100 locks with 4 KB of task info and long labels each: 1,000 of them take 4.6 MB.
    let info = "x".repeat(4_000);
    let (holder, node) = ("w".repeat(200), "n".repeat(200));
    for i in 0..1_100 {
        let acquire = json!({"holder": holder, "node": node, "ttl_ms": 600_000,
            "task_info": {"task_type": info}});
        let (s, e) = call(
            &addr,
            "POST",
            &format!("/locks/l{i:04}/acquire"),
            Some(&acquire),
        );
        assert_eq!(s, 200, "{}", e["message"]);
    }
    let (mut seen, mut after, mut pages) = (0, String::new(), 0);
    loop {
        let (s, page) = call(&addr, "GET", &format!("/locks?limit=1000{after}"), None);
        assert_eq!(s, 200, "{}", page["message"]);
        // At most 4 MiB and the lock that crossed it.
        let bytes = page.to_string().len();
        assert!(bytes <= (4 << 20) + (8 << 10), "a page of {bytes} bytes");
        seen += page["locks"].as_array().unwrap().len();
        pages += 1;
        match page["next"].as_str() {
            Some(next) => after = format!("&after={next}"),
            None => break,
        }
    }
    assert_eq!(seen, 1_100);
    assert!(pages >= 2);
}

#[test]
fn the_bearer_scheme_is_case_insensitive_and_probes_need_no_token() {
    let data = tempfile::tempdir().unwrap();
    let addr = free_addr();
    let _node = Node::start(1, &addr, &[], data.path(), Some(crate::serve::TOKEN));
    let lower = format!("bearer {}", crate::serve::TOKEN);
    let health = || {
        let headers = [("Authorization", lower.as_str())];
        exchange_within(
            &addr,
            "GET",
            "/health",
            None,
            &headers,
            Duration::from_secs(5),
        )
        .ok()
        .map(|(status, _)| status)
    };
    eventually(20, "an answer", || health().filter(|s| *s != 503));
    assert_eq!(health(), Some(200));
    // A probe carries no token: it learns whether the node serves, and nothing more.
    let (s, body) = call(&addr, "GET", "/health", None);
    assert_eq!((s, body), (200, json!({"ok": true})));
    let (s, e) = call(&addr, "GET", "/locks", None);
    assert_eq!((s, e["code"].as_str()), (401, Some("unauthorized")));
}

#[test]
fn serve_stopped_by_a_signal_exits_0_after_one_json_object() {
    use rustix::process::{Pid, Signal, kill_process};
    use std::io::{BufRead, BufReader, Read};
    use std::process::Stdio;
    for signal in [Signal::TERM, Signal::INT] {
        let data = tempfile::tempdir().unwrap();
        let addr = free_addr();
        let mut node = crate::support::sentinel(data.path())
            .args(["--json", "serve", "--listen", &addr])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut stdout = BufReader::new(node.stdout.take().unwrap());
        let mut first = String::new();
        stdout.read_line(&mut first).unwrap();
        let announced: Value = serde_json::from_str(&first).unwrap();
        assert_eq!(announced["listening"], format!("http://{addr}"));
        eventually(20, "a leader", || leader_of(&addr));
        kill_process(Pid::from_child(&node), signal).unwrap();
        let status = wait_exit(&mut node, Duration::from_secs(20));
        let mut rest = String::new();
        stdout.read_to_string(&mut rest).unwrap();
        assert_eq!((status, rest.as_str()), (Some(0), ""), "{signal:?}");
    }
}

/// The exit code of `child` once it exits, within `limit` (killed and `None` after it).
fn wait_exit(child: &mut std::process::Child, limit: Duration) -> Option<i32> {
    let deadline = std::time::Instant::now() + limit;
    while std::time::Instant::now() < deadline {
        if let Some(status) = child.try_wait().unwrap() {
            return status.code();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

/// Requests that wait hold their connections for up to ten minutes; they may take only three
/// quarters of the connections a node serves, so that `/health`, peers and short requests still
/// get in. Beyond that a waiting request is answered 503 `busy` at once.
#[test]
fn waiting_requests_leave_room_for_health_checks() {
    let data = tempfile::tempdir().unwrap();
    let addr = free_addr();
    // 64 files kept for the node itself: 96 connections, of which 72 may wait.
    let _node = Node::start_limited(&addr, data.path(), 160);
    eventually(20, "a leader", || leader_of(&addr));
    let acquire = json!({"holder": "holder", "ttl_ms": 60_000});
    let (s, held) = call(&addr, "POST", "/locks/busy/acquire", Some(&acquire));
    assert_eq!(s, 200, "{held}");

    // More waiters than the node serves connections, none of them ever answered.
    let mut waiters = Vec::new();
    for i in 0..110 {
        let body = json!({"holder": format!("w{i}"), "ttl_ms": 60_000, "wait_ms": 120_000});
        let body = body.to_string();
        let mut c = TcpStream::connect(&addr).unwrap();
        write!(
            c,
            "POST /locks/busy/acquire HTTP/1.1\r\nHost: {addr}\r\nContent-Type: \
             application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        waiters.push(c);
    }
    let queued = eventually(20, "the waiters in the queue", || {
        let (_, status) = call(&addr, "GET", "/locks/busy/status", None);
        let n = status["waiting"].as_u64()?;
        (n >= 72).then_some(n)
    });
    assert_eq!(queued, 72, "only three quarters of 96 connections may wait");
    let (s, health) = call(&addr, "GET", "/health", None);
    assert_eq!(s, 200, "{health}");
    // The waiters beyond the cap were told at once (the last as soon as the first told closed
    // their connections).
    let busy = waiters
        .iter_mut()
        .filter_map(|c| {
            c.set_read_timeout(Some(Duration::from_millis(100)))
                .unwrap();
            let mut buf = [0u8; 512];
            let n = std::io::Read::read(c, &mut buf).ok()?;
            let text = String::from_utf8_lossy(&buf[..n]).to_string();
            text.starts_with("HTTP/1.1 503").then_some(text)
        })
        .collect::<Vec<_>>();
    assert_eq!(busy.len(), 110 - 72, "{busy:?}");
    assert!(busy.iter().all(|t| t.contains("\"busy\"")), "{busy:?}");
}
