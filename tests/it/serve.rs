//! `sentinel serve` as real processes on loopback: one node (the API, its errors, a restart
//! after `kill -9`), then a three-node cluster that loses its leader to `kill -9`.

use std::fs::OpenOptions;
use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use rustix::process::{Pid, Resource, Rlimit, Signal, kill_process, setrlimit};
use serde_json::{Value, json};

use crate::support::sentinel;

/// The token of the three-node cluster; every request of these tests carries it (a node without
/// a token ignores it).
pub(crate) const TOKEN: &str = "t0p-s3cret-cluster-token";
/// The peer token of the test clusters: every node started with other peers gets it.
pub(crate) const PEER_TOKEN: &str = "p33r-s3cret-raft-token";

/// A `sentinel serve` process, killed when dropped (also used by `server_cli` and `cluster`).
pub(crate) struct Node {
    pub(crate) id: u64,
    pub(crate) addr: String,
    peers: Vec<String>,
    data: PathBuf,
    token: Option<&'static str>,
    /// The peer token, given when the node has other peers.
    peer_token: &'static str,
    /// `RUST_LOG` of the process.
    log_filter: &'static str,
    /// More environment for the process (libfaketime's, say).
    env: Vec<(String, String)>,
    /// The process's limit on open files, if lower than the test's.
    files: Option<u64>,
    /// More `serve` options (`--acl FILE`, say); a restart takes them as they are then.
    pub(crate) args: Vec<String>,
    child: Option<Child>,
}

impl Node {
    pub(crate) fn start(
        id: u64,
        addr: &str,
        peers: &[String],
        data: &Path,
        token: Option<&'static str>,
    ) -> Node {
        Node::start_logging(id, addr, peers, data, token, "sentinel=info")
    }

    /// [`Node::start`] with the process's `RUST_LOG`.
    pub(crate) fn start_logging(
        id: u64,
        addr: &str,
        peers: &[String],
        data: &Path,
        token: Option<&'static str>,
        log_filter: &'static str,
    ) -> Node {
        Node::start_with(id, addr, peers, data, token, PEER_TOKEN, log_filter)
    }

    /// [`Node::start_logging`] with a peer token of its own.
    pub(crate) fn start_with(
        id: u64,
        addr: &str,
        peers: &[String],
        data: &Path,
        token: Option<&'static str>,
        peer_token: &'static str,
        log_filter: &'static str,
    ) -> Node {
        let mut node = Node::stopped(id, addr, peers, data, token);
        node.peer_token = peer_token;
        node.log_filter = log_filter;
        node.restart();
        node
    }

    /// [`Node::start`] with more environment for the process.
    pub(crate) fn start_env(
        id: u64,
        addr: &str,
        peers: &[String],
        data: &Path,
        token: Option<&'static str>,
        env: Vec<(String, String)>,
    ) -> Node {
        let mut node = Node::stopped(id, addr, peers, data, token);
        node.env = env;
        node.restart();
        node
    }

    /// A lone node (no token) that may open at most `files` files, so that it serves fewer
    /// connections.
    pub(crate) fn start_limited(addr: &str, data: &Path, files: u64) -> Node {
        let mut node = Node::stopped(1, addr, &[], data, None);
        node.files = Some(files);
        node.restart();
        node
    }

    /// A node with the defaults, not started yet.
    fn stopped(
        id: u64,
        addr: &str,
        peers: &[String],
        data: &Path,
        token: Option<&'static str>,
    ) -> Node {
        Node {
            id,
            addr: addr.to_string(),
            peers: peers.to_vec(),
            data: data.to_path_buf(),
            token,
            peer_token: PEER_TOKEN,
            log_filter: "sentinel=info",
            env: Vec::new(),
            files: None,
            args: Vec::new(),
            child: None,
        }
    }

    /// Starts the process and waits for the line that says it listens. The log of an earlier run
    /// of the node is kept: a restart appends to it.
    pub(crate) fn restart(&mut self) {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.data.join(format!("node-{}.log", self.id)))
            .unwrap();
        let mut cmd = sentinel(&self.data);
        cmd.args([
            "serve",
            "--id",
            &self.id.to_string(),
            "--listen",
            &self.addr,
        ]);
        for p in &self.peers {
            cmd.args(["--peer", p]);
        }
        cmd.args(&self.args);
        if let Some(token) = self.token {
            cmd.env("SENTINEL_AUTH_TOKEN", token);
        }
        if self.peers.len() > 1 {
            cmd.env("SENTINEL_PEER_TOKEN", self.peer_token);
        }
        if let Some(files) = self.files {
            let limit = Rlimit {
                current: Some(files),
                maximum: Some(files),
            };
            // SAFETY: setrlimit is a plain system call, safe between fork and exec.
            unsafe {
                cmd.pre_exec(move || {
                    setrlimit(Resource::Nofile, limit).map_err(std::io::Error::from)
                });
            }
        }
        let mut child = cmd
            .env("RUST_LOG", self.log_filter)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        self.child = Some(child);
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| panic!("node {} did not start: {}", self.id, self.log()));
        assert!(
            line.contains(&format!(
                "node {} listening on http://{}",
                self.id, self.addr
            )),
            "{line:?}: {}",
            self.log()
        );
    }

    /// [`Node::start_env`] with more `serve` options, and no token but what they give.
    pub(crate) fn start_args(
        id: u64,
        addr: &str,
        peers: &[String],
        data: &Path,
        args: &[String],
    ) -> Node {
        let mut node = Node::stopped(id, addr, peers, data, None);
        node.args = args.to_vec();
        node.restart();
        node
    }

    /// Whether the process was started and not killed since.
    pub(crate) fn is_running(&self) -> bool {
        self.child.is_some()
    }

    pub(crate) fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends `signal` to the running process: `Signal::STOP` freezes it (the kernel still accepts
    /// TCP connections for it, nothing answers them), `Signal::CONT` lets it go on.
    pub(crate) fn signal(&self, signal: Signal) {
        let child = self.child.as_ref().expect("the node runs");
        kill_process(Pid::from_child(child), signal).unwrap();
    }

    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(self.data.join(format!("node-{}.log", self.id))).unwrap_or_default()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The `--peer` list of nodes 1, 2, … at `addrs`.
pub(crate) fn peers_of(addrs: &[String]) -> Vec<String> {
    addrs
        .iter()
        .enumerate()
        .map(|(i, a)| format!("{}={a}", i + 1))
        .collect()
}

/// Taken by every test that runs a multi-node cluster, for as long as the cluster runs. Raft
/// here beats every 50 ms; `cargo test` runs four tests at once on two cores, and two clusters
/// electing at the same time starve each other into elections that do not settle.
pub(crate) fn one_cluster_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static CLUSTERS: std::sync::Mutex<()> = std::sync::Mutex::new(());
    CLUSTERS.lock().unwrap_or_else(|e| e.into_inner())
}

/// A loopback address with a port that was free a moment ago, below the kernel's ephemeral
/// range where it can: a port the kernel hands out (to another test's server bound to port 0, or
/// to any outgoing connection) could be taken between this pick and the node's bind, and a
/// cluster's addresses are fixed in its members' `--peer` lists. Picks go round the range in
/// turn from a random place, so two picks of this process never meet.
pub(crate) fn free_addr() -> String {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    const LOWEST: u32 = 10_000;
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32_768);
    let span = ephemeral_low.saturating_sub(LOWEST);
    if span >= 1_000 {
        static START: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
        let start = *START.get_or_init(|| fastrand::u32(..span));
        for _ in 0..span {
            let turn = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let port = LOWEST + (start + turn) % span;
            if let Ok(l) = TcpListener::bind(("127.0.0.1", port as u16)) {
                return l.local_addr().unwrap().to_string();
            }
        }
    }
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().to_string()
}

/// One HTTP/1.1 exchange with the test token: the status and the JSON body.
pub(crate) fn http(
    addr: &str,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> Result<(u16, Value), String> {
    exchange(addr, method, path, body, Some(TOKEN))
}

fn exchange(
    addr: &str,
    method: &str,
    path: &str,
    body: Option<Value>,
    token: Option<&str>,
) -> Result<(u16, Value), String> {
    let (status, body) = raw(addr, method, path, body, token)?;
    let json = serde_json::from_str(&body).map_err(|e| format!("{e}: {body:?}"))?;
    Ok((status, json))
}

/// One HTTP/1.1 exchange: the status and the body as text.
fn raw(
    addr: &str,
    method: &str,
    path: &str,
    body: Option<Value>,
    token: Option<&str>,
) -> Result<(u16, String), String> {
    let auth = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("Authorization", a.as_str())).collect();
    exchange_within(
        addr,
        method,
        path,
        body.as_ref(),
        &headers,
        Duration::from_secs(40),
    )
}

/// The start of the error of an exchange that got no complete answer in time.
pub(crate) const NO_ANSWER: &str = "no answer within";

/// One HTTP/1.1 exchange that ends by `timeout` whatever the peer does (a stopped process
/// accepts the connection and never answers): the status and the body as text.
pub(crate) fn exchange_within(
    addr: &str,
    method: &str,
    path: &str,
    body: Option<&Value>,
    headers: &[(&str, &str)],
    timeout: Duration,
) -> Result<(u16, String), String> {
    let deadline = Instant::now() + timeout;
    let left = || deadline.saturating_duration_since(Instant::now());
    let no_answer = || format!("{NO_ANSWER} {timeout:?}");
    let mut s =
        TcpStream::connect_timeout(&addr.parse().unwrap(), timeout.min(Duration::from_secs(2)))
            .map_err(|e| e.to_string())?;
    s.set_write_timeout(Some(left().max(Duration::from_millis(1))))
        .unwrap();
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let headers: String = headers
        .iter()
        .map(|(k, v)| format!("{k}: {v}\r\n"))
        .collect();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         {headers}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .map_err(|e| match e.kind() {
        ErrorKind::WouldBlock | ErrorKind::TimedOut => no_answer(),
        _ => e.to_string(),
    })?;
    let mut answer = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        let left = left();
        if left.is_zero() {
            return Err(no_answer());
        }
        s.set_read_timeout(Some(left)).unwrap();
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e.to_string()),
        }
    }
    let answer = String::from_utf8(answer).map_err(|e| e.to_string())?;
    let (head, body) = answer.split_once("\r\n\r\n").ok_or("no header end")?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or("no status")?;
    Ok((status, body.to_string()))
}

fn get(addr: &str, path: &str) -> (u16, Value) {
    http(addr, "GET", path, None).unwrap()
}

fn post(addr: &str, path: &str, body: Value) -> (u16, Value) {
    http(addr, "POST", path, Some(body)).unwrap()
}

/// Polls until `check` holds, for at most `secs` seconds.
pub(crate) fn eventually<T>(secs: u64, what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The leader a node reports on `/health`, once it knows one.
pub(crate) fn leader_of(addr: &str) -> Option<u64> {
    match http(addr, "GET", "/health", None) {
        Ok((200, v)) => v["leader"].as_u64(),
        _ => None,
    }
}

fn token(v: &Value) -> u64 {
    v["holder"]["fencing_token"]
        .as_u64()
        .unwrap_or_else(|| panic!("no token in {v}"))
}

#[test]
fn one_node_serves_locks_and_keeps_them_across_kill_9() {
    let data = tempfile::tempdir().unwrap();
    let addr = free_addr();
    let mut node = Node::start(1, &addr, &[], data.path(), None);
    eventually(20, "a leader", || leader_of(&addr));

    let acquire =
        json!({"holder": "w1", "ttl_ms": 60_000, "request_id": "req-1", "node": "host-a"});
    let (s, first) = post(&addr, "/locks/build%2042/acquire", acquire.clone());
    assert_eq!(s, 200, "{first}");
    assert_eq!(first["lock"], "build 42");
    assert_eq!(first["holder"]["worker_id"], "w1");
    assert_eq!(first["holder"]["node_id"], "host-a");
    let t1 = token(&first);
    // A retry of the same request is answered, not granted again.
    let (s, again) = post(&addr, "/locks/build%2042/acquire", acquire);
    assert_eq!((s, token(&again)), (200, t1));

    let (s, held) = post(
        &addr,
        "/locks/build%2042/acquire",
        json!({"holder": "w2", "ttl_ms": 60_000}),
    );
    assert_eq!(
        (s, held["code"].as_str()),
        (409, Some("lock_held")),
        "{held}"
    );
    assert_eq!(token(&held), t1);

    // A waiter is held by the server and handed the lock on release, with a new token.
    let waiter = {
        let addr = addr.clone();
        std::thread::spawn(move || {
            post(
                &addr,
                "/locks/build%2042/acquire",
                json!({"holder": "w2", "ttl_ms": 60_000, "wait_ms": 20_000}),
            )
        })
    };
    eventually(10, "the waiter in the queue", || {
        let (_, s) = get(&addr, "/locks/build%2042/status");
        (s["queue"].as_array()?.len() == 1).then_some(())
    });
    let (s, v) = post(
        &addr,
        "/locks/build%2042/release",
        json!({"holder": "w1", "token": t1 + 1}),
    );
    assert_eq!((s, v["code"].as_str()), (409, Some("not_holder")), "{v}");
    let (s, v) = post(
        &addr,
        "/locks/build%2042/renew",
        json!({"holder": "w1", "token": t1}),
    );
    assert_eq!((s, v["renewed"].as_bool()), (200, Some(true)), "{v}");
    let (s, v) = post(
        &addr,
        "/locks/build%2042/release",
        json!({"holder": "w1", "token": t1}),
    );
    assert_eq!((s, v["released"].as_bool()), (200, Some(true)), "{v}");
    let (s, granted) = waiter.join().unwrap();
    assert_eq!(s, 200, "{granted}");
    assert_eq!(granted["holder"]["worker_id"], "w2");
    let t2 = token(&granted);
    assert!(t2 > t1);

    // Bad input gets a 4xx with a stable code.
    let long = "x".repeat(257);
    for (method, path, body, status, code) in [
        (
            "POST",
            "/locks//acquire".to_string(),
            json!({"holder": "w", "ttl_ms": 1000}),
            400,
            "invalid_name",
        ),
        (
            "POST",
            format!("/locks/{long}/acquire"),
            json!({"holder": "w", "ttl_ms": 1000}),
            400,
            "invalid_name",
        ),
        (
            "POST",
            "/locks/a%0Ab/acquire".to_string(),
            json!({"holder": "w", "ttl_ms": 1000}),
            400,
            "invalid_name",
        ),
        (
            "POST",
            "/locks/a/acquire".to_string(),
            json!("not an object"),
            400,
            "invalid_body",
        ),
        (
            "POST",
            "/locks/a/acquire".to_string(),
            json!({"holder": "w"}),
            400,
            "invalid_body",
        ),
        (
            "POST",
            "/locks/a/acquire".to_string(),
            json!({"holder": "w", "ttl_ms": 0}),
            400,
            "invalid_body",
        ),
        (
            "POST",
            "/locks/a/acquire".to_string(),
            json!({"holder": "", "ttl_ms": 1000}),
            400,
            "invalid_body",
        ),
        (
            "POST",
            "/locks/a/acquire".to_string(),
            json!({"holder": "w", "ttl_ms": 1000, "extra": 1}),
            400,
            "invalid_body",
        ),
        (
            "POST",
            "/locks/a/acquire".to_string(),
            json!({"holder": "w", "ttl_ms": 1000, "request_id": "a b"}),
            400,
            "invalid_body",
        ),
        (
            "POST",
            "/locks/a/acquire".to_string(),
            json!({"holder": "w", "ttl_ms": 1000, "wait_ms": 1u64 << 40}),
            400,
            "invalid_body",
        ),
        (
            "POST",
            "/locks/a/release".to_string(),
            json!({"holder": "w", "token": -1}),
            400,
            "invalid_body",
        ),
        (
            "GET",
            "/locks/a/acquire".to_string(),
            json!(null),
            405,
            "method_not_allowed",
        ),
        (
            "DELETE",
            "/locks".to_string(),
            json!(null),
            405,
            "method_not_allowed",
        ),
        (
            "GET",
            "/locks/a/explode".to_string(),
            json!(null),
            404,
            "unknown_route",
        ),
        (
            "GET",
            "/nowhere".to_string(),
            json!(null),
            404,
            "unknown_route",
        ),
        (
            "GET",
            "/locks?limit=0".to_string(),
            json!(null),
            400,
            "invalid_query",
        ),
        (
            "GET",
            "/locks?limit=x".to_string(),
            json!(null),
            400,
            "invalid_query",
        ),
        (
            "POST",
            "/locks/build%2042/acquire".to_string(),
            json!({"holder": "w3", "ttl_ms": 1000, "request_id": "req-1"}),
            409,
            "request_id_reused",
        ),
    ] {
        let body = (!body.is_null()).then_some(body);
        let (s, v) = http(&addr, method, &path, body).unwrap();
        assert_eq!(
            (s, v["code"].as_str()),
            (status, Some(code)),
            "{method} {path}: {v}"
        );
        assert!(v["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
    }
    let (s, v) = http(
        &addr,
        "POST",
        "/locks/a/acquire",
        Some(json!({"holder": "x".repeat(70_000), "ttl_ms": 1000})),
    )
    .unwrap();
    assert_eq!((s, v["code"].as_str()), (413, Some("body_too_large")));

    // Pages of held locks.
    for i in 0..5 {
        let (s, _) = post(
            &addr,
            &format!("/locks/page-{i}/acquire"),
            json!({"holder": "w", "ttl_ms": 60_000}),
        );
        assert_eq!(s, 200);
    }
    let mut names = Vec::new();
    let mut path = "/locks?limit=2".to_string();
    for _ in 0..10 {
        let (s, page) = get(&addr, &path);
        assert_eq!(s, 200, "{page}");
        let locks = page["locks"].as_array().unwrap();
        assert!(locks.len() <= 2);
        names.extend(
            locks
                .iter()
                .map(|l| l["lock"].as_str().unwrap().to_string()),
        );
        match page["next"].as_str() {
            Some(next) => path = format!("/locks?limit=2&after={next}"),
            None => break,
        }
    }
    assert_eq!(
        names,
        ["build 42", "page-0", "page-1", "page-2", "page-3", "page-4"]
    );

    // Metrics: seven new grants (the retry and the refusals are not grants), six held locks.
    let (s, text) = raw(&addr, "GET", "/metrics", None, None).unwrap();
    assert_eq!(s, 200);
    for line in [
        "lock_acquisitions_total 7",
        "lock_acquisition_duration_seconds_count 7",
        "active_locks_gauge 6",
        "leader_elections_total 1",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "{line:?} missing in:\n{text}"
        );
    }
    let commits = text
        .lines()
        .find_map(|l| l.strip_prefix("consensus_commit_latency_seconds_count "))
        .and_then(|n| n.parse::<u64>().ok());
    assert!(commits.is_some_and(|n| n >= 10), "{text}");

    // kill -9 loses no acknowledged write.
    node.kill();
    node.restart();
    eventually(20, "a leader after the restart", || leader_of(&addr));
    let (s, status) = get(&addr, "/locks/build%2042/status");
    assert_eq!(s, 200, "{status}");
    assert_eq!(status["holder"]["worker_id"], "w2");
    assert_eq!(token(&status), t2);
    let (_, page) = get(&addr, "/locks");
    assert_eq!(page["locks"].as_array().unwrap().len(), 6);
    // The answer to a request made before the crash is remembered too.
    let (s, v) = post(
        &addr,
        "/locks/build%2042/acquire",
        json!({"holder": "w1", "ttl_ms": 60_000, "request_id": "req-1", "node": "host-a"}),
    );
    assert_eq!((s, token(&v)), (200, t1));
}

#[test]
fn three_nodes_elect_a_new_leader_after_kill_9_and_the_old_one_catches_up() {
    let _one_cluster = crate::serve::one_cluster_at_a_time();
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let addrs: Vec<String> = (0..3).map(|_| free_addr()).collect();
    let peers = peers_of(&addrs);
    let mut nodes: Vec<Node> = (0..3)
        .map(|i| Node::start(i as u64 + 1, &addrs[i], &peers, dirs[i].path(), Some(TOKEN)))
        .collect();
    let leader = eventually(30, "one leader known to every node", || {
        let seen: Vec<Option<u64>> = addrs.iter().map(|a| leader_of(a)).collect();
        let first = seen[0]?;
        seen.iter().all(|l| *l == Some(first)).then_some(first)
    });
    let li = (leader - 1) as usize;
    let followers: Vec<usize> = (0..3).filter(|&i| i != li).collect();

    // The cluster formed with the token (peers send it); clients without it are turned away.
    for addr in [&addrs[li], &addrs[followers[0]]] {
        for token in [None, Some("wrong"), Some("t0p-s3cret-cluster-toke")] {
            let (s, v) = exchange(addr, "GET", "/locks/x/status", None, token).unwrap();
            assert_eq!(
                (s, v["code"].as_str()),
                (401, Some("unauthorized")),
                "{token:?}"
            );
        }
    }

    // A follower forwards the write to the leader; another follower reads it.
    let (s, v) = post(
        &addrs[followers[0]],
        "/locks/deploy/acquire",
        json!({"holder": "w1", "ttl_ms": 60_000}),
    );
    assert_eq!(s, 200, "{v}");
    let t1 = token(&v);
    let (s, v) = get(&addrs[followers[1]], "/locks/deploy/status");
    assert_eq!((s, token(&v)), (200, t1), "{v}");
    let (s, v) = get(&addrs[followers[1]], "/cluster/status");
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["leader"], leader);
    assert_eq!(v["members"].as_array().unwrap().len(), 3);
    assert_eq!(v["followers"].as_array().unwrap().len(), 2);

    // kill -9 the leader: the first write sent to a follower right after, with no retry, is
    // held there until a new leader serves it (not answered 503 for the client to retry).
    nodes[li].kill();
    let killed = Instant::now();
    let (s, v) = post(
        &addrs[followers[0]],
        "/locks/after-failover/acquire",
        json!({"holder": "w2", "ttl_ms": 60_000, "request_id": "failover-1"}),
    );
    assert_eq!(s, 200, "{v}");
    eprintln!(
        "a new leader served a write {:?} after kill -9 of the leader",
        killed.elapsed()
    );
    let new_leader = eventually(5, "the new leader", || leader_of(&addrs[followers[0]]));
    assert_ne!(new_leader, leader);
    let (s, v) = get(&addrs[followers[0]], "/locks/deploy/status");
    assert_eq!(
        (s, token(&v)),
        (200, t1),
        "no acknowledged grant is lost: {v}"
    );

    // The old leader comes back as a follower and catches up.
    nodes[li].restart();
    eventually(20, "the old leader following the new one", || {
        (leader_of(&addrs[li]) == Some(new_leader)).then_some(())
    });
    eventually(20, "the old leader caught up", || {
        let (_, v) = get(&addrs[li], "/cluster/status");
        let lag = v["followers"]
            .as_array()?
            .iter()
            .find(|f| f["id"] == leader)?["lag"]
            .as_u64()?;
        (lag == 0).then_some(())
    });
    let (s, v) = get(&addrs[li], "/locks/after-failover/status");
    assert_eq!(
        (s, v["holder"]["worker_id"].as_str()),
        (200, Some("w2")),
        "{v}"
    );
    for node in &nodes {
        assert!(
            !node.log().contains(TOKEN),
            "node {} logged the token",
            node.id
        );
    }
}

/// A metric's value in a Prometheus text exposition.
fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in:\n{text}"))
}

#[test]
fn concurrent_requests_share_log_entries() {
    let data = tempfile::tempdir().unwrap();
    let addr = free_addr();
    let _node = Node::start(1, &addr, &[], data.path(), None);
    eventually(20, "a leader", || leader_of(&addr));
    let (_, text) = raw(&addr, "GET", "/metrics", None, None).unwrap();
    let (entries_before, commands_before) = (
        metric(&text, "consensus_commands_per_entry_count"),
        metric(&text, "consensus_commands_per_entry_sum"),
    );

    const CLIENTS: usize = 64;
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(CLIENTS));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let (addr, barrier) = (addr.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                let (s, v) = post(
                    &addr,
                    &format!("/locks/lock-{}/acquire", i % 8),
                    json!({"holder": format!("w{i}"), "ttl_ms": 60_000, "wait_ms": 30_000}),
                );
                assert_eq!(s, 200, "{v}");
                let t = token(&v);
                let (s, v) = post(
                    &addr,
                    &format!("/locks/lock-{}/release", i % 8),
                    json!({"holder": format!("w{i}"), "token": t}),
                );
                assert_eq!(s, 200, "{v}");
                (i % 8, t)
            })
        })
        .collect();
    let mut tokens: Vec<(usize, u64)> = clients.into_iter().map(|c| c.join().unwrap()).collect();
    // Eight clients took turns on each lock: eight distinct tokens per lock.
    tokens.sort();
    tokens.dedup();
    assert_eq!(tokens.len(), CLIENTS, "{tokens:?}");

    let (_, text) = raw(&addr, "GET", "/metrics", None, None).unwrap();
    let entries = metric(&text, "consensus_commands_per_entry_count") - entries_before;
    let commands = metric(&text, "consensus_commands_per_entry_sum") - commands_before;
    // 64 acquires and 64 releases, plus ticks; one entry each would be at least 128 entries.
    assert!(commands >= 2.0 * CLIENTS as f64, "{commands} commands");
    println!("{commands} commands in {entries} entries");
    assert!(
        entries <= commands / 2.0,
        "{commands} commands took {entries} entries: no group commit"
    );
}

#[test]
fn stalled_clients_are_cut_off_and_others_are_served() {
    let data = tempfile::tempdir().unwrap();
    let addr = free_addr();
    let _node = Node::start(1, &addr, &[], data.path(), None);
    eventually(20, "a leader", || leader_of(&addr));
    let connect = || {
        let s = TcpStream::connect_timeout(&addr.parse().unwrap(), Duration::from_secs(2)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        s
    };
    let started = Instant::now();
    // Half a request head, then nothing.
    let mut head = connect();
    write!(head, "POST /locks/a/acquire HTTP/1.1\r\nHost: x\r\n").unwrap();
    // A whole head, then 10 of the 200 bytes of body it announced.
    let mut body = connect();
    write!(
        body,
        "POST /locks/a/acquire HTTP/1.1\r\nHost: x\r\nContent-Length: 200\r\n\r\n{{\"holder\":"
    )
    .unwrap();
    // An idle connection, a hundred of them: none keeps others from being served.
    let idle: Vec<TcpStream> = (0..100).map(|_| connect()).collect();
    let (s, v) = post(
        &addr,
        "/locks/b/acquire",
        json!({"holder": "w1", "ttl_ms": 60_000}),
    );
    assert_eq!(s, 200, "{v}");

    let mut answer = String::new();
    let _ = body.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer:?}");
    assert!(answer.contains("\"code\":\"body_timeout\""), "{answer:?}");
    let mut rest = Vec::new();
    // Closed by the node (end of stream or reset), not timed out on our side.
    let closed = head.read_to_end(&mut rest);
    assert!(
        closed.is_ok()
            || matches!(&closed, Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset),
        "{closed:?} {rest:?}"
    );
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(9) && took < Duration::from_secs(25),
        "{took:?}"
    );
    drop(idle);
}
