//! Barriers, what is each backend's own: a participant killed while it waits (the local backend
//! and a real `sentinel serve` node), the coordinator's barrier status, a count out of range, and
//! the library's `LockClient::barrier` with a cancelled wait. What every backend promises (opening
//! at the count and not before, a timeout leaving, counts that differ, clients meeting, the
//! refusal elsewhere) is a conformance row: tests/it/conformance/barriers.rs.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use sentinel::backend::LockBackend;
use sentinel::barrier::Arrived;
use sentinel::distributed::LockClient;
use sentinel::local::LocalBackend;
use sentinel::secret::Secret;
use sentinel::server::{ServerBackend, server_urls};

use crate::serve::TOKEN;
use crate::server_cli::{cli, one_node};
use crate::support::{Running, code, local, text, wait_for};

/// A `sentinel` command line as `worker`, on one backend.
type Cli<'a> = &'a dyn Fn(&str, &[&str]) -> Command;
/// How many participants wait at a barrier, as the backend itself keeps it.
type Waiting<'a> = &'a dyn Fn(&str) -> usize;

fn participant(sentinel: Cli<'_>, worker: &str, args: &[&str]) -> Running {
    let mut all = vec!["--json", "barrier"];
    all.extend_from_slice(args);
    Running::spawn(&mut sentinel(worker, &all))
}

/// A participant killed while it waits stops counting (the coordinator at once, when its
/// connection closes; the local backend when its arrival's lease runs out), so it never opens
/// the barrier for a later one.
fn a_killed_participant_does_not_count(sentinel: Cli<'_>, waiting: Waiting<'_>) {
    let mut gone = participant(sentinel, "gone", &["killed", "--count", "2"]);
    wait_for(Duration::from_secs(20), "the participant waiting", || {
        waiting("killed") == 1
    });
    gone.signal("KILL");
    wait_for(
        Duration::from_secs(10),
        "the killed one to stop counting",
        || waiting("killed") == 0,
    );
    let out = sentinel(
        "late",
        &["barrier", "killed", "--count", "2", "--timeout", "500ms"],
    )
    .output()
    .unwrap();
    assert_eq!(code(&out), 3, "{}", text(&out));
}

#[test]
fn barriers_on_the_local_backend() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let sentinel = |worker: &str, args: &[&str]| local(&data, worker, args);
    let table = data.join("local").join("locks.json");
    let waiting = |name: &str| local_waiting(&table, name);
    a_killed_participant_does_not_count(&sentinel, &waiting);
}

/// Live arrivals at a local barrier, read from the table file as the backend writes it.
pub(crate) fn local_waiting(table: &Path, name: &str) -> usize {
    let Ok(raw) = std::fs::read_to_string(table) else {
        return 0;
    };
    let table: Value = serde_json::from_str(&raw).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    table["barriers"][name]["arrivals"]
        .as_object()
        .map_or(0, |a| {
            a.values()
                .filter(|a| a["expires_ms"].as_u64() >= Some(now))
                .count()
        })
}

#[test]
fn barriers_on_the_coordinator() {
    let tmp = tempfile::tempdir().unwrap();
    let (_node, url) = one_node(tmp.path());
    let data = tmp.path().join("client");
    let sentinel = |worker: &str, args: &[&str]| cli(&data, &url, worker, args);
    let waiting = |name: &str| {
        let status = coordinator_status(&url, name);
        status["arrived"].as_u64().unwrap() as usize
    };
    a_killed_participant_does_not_count(&sentinel, &waiting);
    // The status names who waits.
    let first = participant(
        &sentinel,
        "a",
        &["shown", "--count", "2", "--timeout", "30s"],
    );
    wait_for(Duration::from_secs(20), "one participant waiting", || {
        waiting("shown") == 1
    });
    let status = coordinator_status(&url, "shown");
    assert_eq!(status["count"], 2, "{status}");
    assert_eq!(status["waiting"][0]["holder"], "a", "{status}");
    drop(first);
}

/// `GET /barriers/{name}/status` with the client token.
pub(crate) fn coordinator_status(url: &str, name: &str) -> Value {
    let out = Command::new("curl")
        .args(["-sf", "-H", &format!("Authorization: Bearer {TOKEN}")])
        .arg(format!("{url}/barriers/{name}/status"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// A count out of range is refused before anything waits.
#[test]
fn a_barrier_count_of_zero_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let out = local(tmp.path(), "w1", &["barrier", "b", "--count", "0"])
        .output()
        .unwrap();
    assert_eq!(code(&out), 2, "{}", text(&out));
}

/// The library's barrier on both backends: a wait cancelled by a timeout leaves the barrier at
/// once (well within the local arrival's 2 s lease, and the coordinator
/// would keep it for its whole wait), so it does not open it for a later participant.
#[test]
fn the_librarys_cancelled_barrier_wait_leaves() {
    let tmp = tempfile::tempdir().unwrap();
    let (_node, url) = one_node(tmp.path());
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = tmp.path().join("lib");
    let table = dir.join("locks.json");
    let server =
        || ServerBackend::new(server_urls(&url).unwrap(), Some(&Secret::new(TOKEN))).unwrap();
    rt.block_on(async {
        let local = || LocalBackend::open(&dir).unwrap();
        cancel(&local, &|| local_waiting(&table, "lib")).await;
        let waiting = || coordinator_status(&url, "lib")["arrived"].as_u64().unwrap() as usize;
        cancel(&server, &waiting).await;
    });
}

async fn cancel<B: LockBackend + 'static>(backend: &dyn Fn() -> B, waiting: &dyn Fn() -> usize) {
    let a = LockClient::new(backend(), "a").unwrap();
    let b = LockClient::new(backend(), "b").unwrap();
    let (at_a, at_b) = (a.barrier("lib", 2), b.barrier("lib", 2));
    let cancelled = tokio::time::timeout(Duration::from_millis(300), at_a.wait(None)).await;
    assert!(cancelled.is_err(), "nobody else came");
    wait_for(
        Duration::from_secs(1),
        "the cancelled wait to leave",
        || waiting() == 0,
    );
    assert_eq!(
        at_b.wait(Some(Duration::from_millis(300))).await.unwrap(),
        Arrived::NotOpened {
            arrived: 0,
            count: 2
        },
        "{}",
        backend().name()
    );
}
