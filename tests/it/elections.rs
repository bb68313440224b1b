//! Elections: `elect` and `leader` through the real binary on the local backend and on a real
//! `sentinel serve` node, the coordinator's `/election/` API over HTTP with its server-sent
//! events. The conformance suite runs elections on every backend (and GitHub's refusal):
//! `conformance/primitives.rs`.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::serve::{TOKEN, eventually, leader_of};
use crate::server_cli::{cli, one_node};
use crate::support::{Running, code, local, stdout_json, text, wait_for};

/// A `sentinel` command line as `worker`, on one backend.
type Cli<'a> = &'a dyn Fn(&str, &[&str]) -> Command;

/// `leader NAME --json`'s `leader` object (null when nobody leads).
fn leader(sentinel: Cli<'_>, name: &str) -> Value {
    let out = sentinel("observer", &["--json", "leader", name])
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{}", text(&out));
    stdout_json(&out)["leader"].clone()
}

fn leads(sentinel: Cli<'_>, name: &str, worker: &str) -> bool {
    leader(sentinel, name)["worker_id"] == worker
}

/// Candidate `a` leads and publishes its value; `b` campaigns behind it and leads, with a larger
/// fencing token, once `a`'s command has ended with its own exit code.
fn candidates_follow_one_another(sentinel: Cli<'_>, dir: &Path) {
    let stop = dir.join("stop");
    let a_script = format!(
        "while [ ! -e '{}' ]; do sleep 0.05; done; exit 7",
        stop.display()
    );
    let a = Running::spawn(&mut sentinel(
        "a",
        &[
            "--json",
            "elect",
            "e",
            "--value",
            "http://a:1",
            "--ttl",
            "3s",
            "--",
            "sh",
            "-c",
            &a_script,
        ],
    ));
    wait_for(Duration::from_secs(20), "a to lead", || {
        leads(sentinel, "e", "a")
    });
    let first = leader(sentinel, "e");
    assert_eq!(first["value"], "http://a:1", "{first}");
    assert!(
        first["since"].is_string() && first["expires_at"].is_string(),
        "{first}"
    );
    let a_token = first["fencing_token"].as_u64().unwrap();

    let mut b = Running::spawn(&mut sentinel(
        "b",
        &[
            "--json",
            "elect",
            "e",
            "--ttl",
            "3s",
            "--",
            "sh",
            "-c",
            "echo \"$SENTINEL_FENCING_TOKEN\"",
        ],
    ));
    // `b` campaigns while `a` leads; `a` is renewed past its TTL meanwhile.
    std::thread::sleep(Duration::from_secs(4));
    assert!(b.is_running(), "b stopped campaigning while a led");
    assert!(leads(sentinel, "e", "a"), "{}", leader(sentinel, "e"));

    std::fs::write(&stop, "").unwrap();
    let a = a.exit_within(Duration::from_secs(20));
    assert_eq!(
        code(&a),
        7,
        "the command's exit code passes through: {}",
        text(&a)
    );
    let b = b.exit_within(Duration::from_secs(30));
    assert_eq!(code(&b), 0, "{}", text(&b));
    let stdout = String::from_utf8_lossy(&b.stdout);
    let b_token: u64 = stdout.lines().next().unwrap().trim().parse().unwrap();
    assert!(b_token > a_token, "{b_token} after {a_token}");
    let report: Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(
        (&report["command"], &report["released"]),
        (&json!("elect"), &json!(true)),
        "{report}"
    );
    assert!(leader(sentinel, "e").is_null());
}

/// A leader whose lock is taken from it stops its command with SIGTERM and exits 4.
fn a_deposed_leader_stops_its_command(sentinel: Cli<'_>, dir: &Path) {
    let got = dir.join("got-term");
    let script = format!(
        "trap 'echo term > \"{}\"; exit 143' TERM; sleep 60 & wait",
        got.display()
    );
    let a = Running::spawn(&mut sentinel(
        "a",
        &["elect", "d", "--ttl", "3s", "--", "sh", "-c", &script],
    ));
    wait_for(Duration::from_secs(20), "a to lead", || {
        leads(sentinel, "d", "a")
    });
    let out = sentinel("admin", &["release", "d", "--force"])
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{}", text(&out));
    let a = a.exit_within(Duration::from_secs(15));
    assert_eq!(code(&a), 4, "{}", text(&a));
    assert!(got.exists(), "the command got no SIGTERM: {}", text(&a));
}

/// `leader --watch` prints the leader, then one line per change of it, and exits 0 on SIGTERM.
fn leader_watch_prints_each_change(sentinel: Cli<'_>, dir: &Path) {
    let lines = dir.join("watch.jsonl");
    let mut cmd = sentinel("observer", &["leader", "w", "--watch", "--every", "50ms"]);
    cmd.stdout(std::fs::File::create(&lines).unwrap());
    let mut watch = Running::spawn_with_stdout(&mut cmd);
    let seen = || -> Vec<Value> {
        std::fs::read_to_string(&lines)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    wait_for(Duration::from_secs(10), "the first line", || {
        seen().len() == 1
    });
    for (n, (worker, args)) in [
        ("w1", &["claim", "w", "--ttl", "1m"][..]),
        ("w1", &["release", "w"]),
        ("w2", &["claim", "w", "--ttl", "1m"]),
    ]
    .into_iter()
    .enumerate()
    {
        let out = sentinel(worker, args).output().unwrap();
        assert_eq!(code(&out), 0, "{}", text(&out));
        wait_for(Duration::from_secs(10), "a line per change", || {
            seen().len() == n + 2
        });
    }
    watch.signal("TERM");
    let out = watch.exit_within(Duration::from_secs(10));
    assert_eq!(code(&out), 0, "{}", text(&out));
    let leaders: Vec<Value> = seen()
        .iter()
        .map(|l| l["leader"]["worker_id"].clone())
        .collect();
    assert_eq!(
        leaders,
        [Value::Null, json!("w1"), Value::Null, json!("w2")]
    );
}

#[test]
fn elections_on_the_local_backend() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let sentinel = |worker: &str, args: &[&str]| local(&data, worker, args);
    candidates_follow_one_another(&sentinel, tmp.path());
    a_deposed_leader_stops_its_command(&sentinel, tmp.path());
    leader_watch_prints_each_change(&sentinel, tmp.path());
}

#[test]
fn elections_on_the_coordinator() {
    let tmp = tempfile::tempdir().unwrap();
    let (_node, url) = one_node(tmp.path());
    let data = tmp.path().join("client");
    let sentinel = |worker: &str, args: &[&str]| cli(&data, &url, worker, args);
    candidates_follow_one_another(&sentinel, tmp.path());
    a_deposed_leader_stops_its_command(&sentinel, tmp.path());
    leader_watch_prints_each_change(&sentinel, tmp.path());
}

/// A candidate without `--wait` campaigns until elected: it says it waits until the election
/// is free, not until a deadline that only ended a round of its retries.
#[test]
fn a_candidate_without_wait_names_no_deadline() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let stop = tmp.path().join("stop");
    let script = format!("while [ ! -e '{}' ]; do sleep 0.05; done", stop.display());
    let a = Running::spawn(&mut local(
        &data,
        "a",
        &["elect", "e", "--", "sh", "-c", &script],
    ));
    wait_for(Duration::from_secs(20), "a to lead", || {
        leads(&|w: &str, args: &[&str]| local(&data, w, args), "e", "a")
    });
    let b = Running::spawn(&mut local(&data, "b", &["elect", "e", "--", "true"]));
    std::thread::sleep(Duration::from_millis(800));
    std::fs::write(&stop, "").unwrap();
    assert_eq!(code(&a.exit_within(Duration::from_secs(10))), 0);
    let b = b.exit_within(Duration::from_secs(20));
    assert_eq!(code(&b), 0, "{}", text(&b));
    let said = String::from_utf8_lossy(&b.stderr);
    assert!(said.contains("waiting for it until it is free"), "{said}");
}

/// A `run` whose claim waited on the coordinator longer than its TTL keeps the lock it was
/// granted: the lease is counted from a renewal made on the grant, not from the start of the
/// wait (which would take it for ended at once, exit 4).
#[test]
fn a_claim_granted_after_a_wait_longer_than_its_ttl_keeps_its_lease() {
    let tmp = tempfile::tempdir().unwrap();
    let (_node, url) = one_node(tmp.path());
    let sentinel = |worker: &str, args: &[&str]| cli(tmp.path(), &url, worker, args);
    let out = sentinel("w1", &["claim", "x", "--ttl", "1m"])
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{}", text(&out));
    let run = Running::spawn(&mut sentinel(
        "w2",
        &[
            "run", "x", "--ttl", "3s", "--wait", "1m", "--", "sleep", "3",
        ],
    ));
    eventually(20, "w2 to wait", || {
        let out = sentinel("observer", &["--json", "status", "x"])
            .output()
            .unwrap();
        (stdout_json(&out)["queue"].as_array().map(Vec::len) == Some(1)).then_some(())
    });
    std::thread::sleep(Duration::from_secs(4));
    let out = sentinel("w1", &["release", "x"]).output().unwrap();
    assert_eq!(code(&out), 0, "{}", text(&out));
    let out = run.exit_within(Duration::from_secs(30));
    assert_eq!(code(&out), 0, "{}", text(&out));
}

/// `/election/{name}/…` over HTTP: campaign, leader, proclaim, resign, and the server-sent events
/// of `observe`, one per change of leader or value and none per renewal.
#[test]
fn the_election_api_campaigns_proclaims_resigns_and_is_observed() {
    let tmp = tempfile::tempdir().unwrap();
    let (node, _url) = one_node(tmp.path());
    let addr = node.addr.clone();
    eventually(20, "a leader", || leader_of(&addr));
    let observer = {
        let addr = addr.clone();
        std::thread::spawn(move || events(&addr, "/election/api/observe", 4))
    };
    let (status, granted) = post(
        &addr,
        "/election/api/campaign",
        json!({"holder": "a", "ttl_ms": 60000, "value": "v1"}),
    );
    assert_eq!(status, 200, "{granted}");
    let token = granted["holder"]["fencing_token"].as_u64().unwrap();
    let (status, busy) = post(
        &addr,
        "/election/api/campaign",
        json!({"holder": "b", "ttl_ms": 60000}),
    );
    assert_eq!(
        (status, &busy["code"]),
        (409, &json!("lock_held")),
        "{busy}"
    );
    let (_, now) = get(&addr, "/election/api/leader");
    assert_eq!(
        (&now["leader"]["worker_id"], &now["leader"]["value"]),
        (&json!("a"), &json!("v1")),
        "{now}"
    );
    // A renewal is no event; a proclamation is.
    let (status, _) = post(
        &addr,
        "/locks/api/renew",
        json!({"holder": "a", "token": token}),
    );
    assert_eq!(status, 200);
    let (status, wrong) = post(
        &addr,
        "/election/api/proclaim",
        json!({"holder": "b", "token": token, "value": "x"}),
    );
    assert_eq!(
        (status, &wrong["code"]),
        (409, &json!("not_holder")),
        "{wrong}"
    );
    let (status, bad) = post(
        &addr,
        "/election/api/proclaim",
        json!({"holder": "a", "token": token, "value": "a\nb"}),
    );
    assert_eq!(
        (status, &bad["code"]),
        (400, &json!("invalid_body")),
        "{bad}"
    );
    let (status, _) = post(
        &addr,
        "/election/api/proclaim",
        json!({"holder": "a", "token": token, "value": "v2"}),
    );
    assert_eq!(status, 200);
    let (_, now) = get(&addr, "/election/api/leader");
    assert_eq!(now["leader"]["value"], "v2", "{now}");
    let (status, _) = post(
        &addr,
        "/election/api/resign",
        json!({"holder": "a", "token": token}),
    );
    assert_eq!(status, 200);
    let (_, now) = get(&addr, "/election/api/leader");
    assert!(now["leader"].is_null(), "{now}");
    let seen: Vec<(Value, Value)> = observer
        .join()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["leader"]["worker_id"].clone(),
                e["leader"]["value"].clone(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            (Value::Null, Value::Null),
            (json!("a"), json!("v1")),
            (json!("a"), json!("v2")),
            (Value::Null, Value::Null),
        ]
    );
}

fn post(addr: &str, path: &str, body: Value) -> (u16, Value) {
    call(addr, "POST", path, Some(body))
}

fn get(addr: &str, path: &str) -> (u16, Value) {
    call(addr, "GET", path, None)
}

fn call(addr: &str, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let auth = format!("Bearer {TOKEN}");
    let (status, body) = crate::serve::exchange_within(
        addr,
        method,
        path,
        body.as_ref(),
        &[("Authorization", &auth)],
        Duration::from_secs(20),
    )
    .unwrap();
    (status, serde_json::from_str(&body).unwrap())
}

/// The first `count` server-sent events of `GET path`, as JSON; fails after 30 s.
fn events(addr: &str, path: &str, count: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut s = TcpStream::connect(addr).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {TOKEN}\r\n\r\n"
    )
    .unwrap();
    let mut lines = BufReader::new(s.try_clone().unwrap());
    let mut found = Vec::new();
    let mut line = String::new();
    while found.len() < count {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "only {} events in 30 s: {found:?}",
            found.len()
        );
        s.set_read_timeout(Some(left)).unwrap();
        line.clear();
        if lines.read_line(&mut line).unwrap() == 0 {
            panic!("the stream ended after {found:?}");
        }
        if let Some(data) = line.trim_end().strip_prefix("data: ") {
            found.push(serde_json::from_str(data).unwrap());
        }
    }
    found
}
