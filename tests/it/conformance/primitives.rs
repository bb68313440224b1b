//! The coordination primitives on every backend: semaphores and shared holds where a name may
//! have several holders (the coordinator, local, Redis, PostgreSQL), elections wherever there
//! are named locks (all of those and etcd), and on the others the refusal (exit 2 naming the
//! backends that keep them, the library's usage error), never silence.
//!
//! What is one backend's own stays in its file: a hold whose lease ran out (gone on Redis, stale
//! on PostgreSQL and the local table), the coordinator's server-side queue, a lost answer.

use std::process::{Output, Stdio};
use std::sync::atomic::AtomicU32;

use futures_util::StreamExt;
use serde_json::{Value, json};

use sentinel::distributed::flush_releases;
use sentinel::error::Error;

use super::*;
use crate::coordinator_primitives::holders_by;
use crate::support::wait_for;

const TTL: Duration = Duration::from_secs(60);

impl Subject {
    /// Whether a name may have several holders here (`--limit`, `--shared`).
    fn holds_groups(&self) -> bool {
        !matches!(self.kind, Kind::Github | Kind::Etcd)
    }

    /// Whether its claims poll, keeping the name for a refused claim by the reservation rule,
    /// rather than queueing on a server.
    fn polls(&self) -> bool {
        matches!(self.kind, Kind::Local | Kind::Redis | Kind::Postgres)
    }
}

fn run(s: &Subject, worker: &str, args: &[&str]) -> Output {
    s.cli(worker, args).output().unwrap()
}

/// `--json claim NAME -n --ttl 1m ARGS…` as `worker`.
fn fail_fast(s: &Subject, worker: &str, name: &str, args: &[&str]) -> Output {
    let mut all = vec!["--json", "claim", name, "-n", "--ttl", "1m"];
    all.extend_from_slice(args);
    run(s, worker, &all)
}

fn status(s: &Subject, name: &str) -> Value {
    let out = run(s, "w9", &["--json", "status", name]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    stdout_json(&out)
}

/// The worker ids of a status's holders, and their permits.
fn holders(status: &Value) -> Vec<(String, u64)> {
    holders_by(status, "permits")
}

/// A backend with one holder per lock refuses `args` (exit 2) naming the backends that keep
/// several, and the library's semaphores and shared holds alike.
fn refused(s: &Subject, args: &[&str]) {
    let job = s.lock("job");
    for cmd in ["claim", "run"] {
        let mut all = vec![cmd, job.as_str(), "-n"];
        all.extend_from_slice(args);
        if cmd == "run" {
            all.extend(["--", "true"]);
        }
        let out = run(s, "w1", &all);
        assert_eq!(code(&out), 2, "{:?} {all:?}: {}", s.kind, text(&out));
        for backend in ["--server", "local", "Redis", "PostgreSQL"] {
            assert!(text(&out).contains(backend), "{backend}: {}", text(&out));
        }
    }
    let rt = runtime();
    let client = LockClient::new(s.backend(&rt), "a").unwrap();
    rt.block_on(async {
        let shared = client.try_acquire_shared(&job, TTL).await;
        assert!(matches!(shared, Err(Error::Usage(_))), "{shared:?}");
        let permits = client.semaphore(job.clone(), 2).try_acquire(1, TTL).await;
        assert!(matches!(permits, Err(Error::Usage(_))), "{permits:?}");
    });
    assert_eq!(status(s, &job)["held"], false);
}

/// A semaphore lets its limit of permits be held and no more, across processes and tasks; another
/// limit is a usage error naming both, another kind a conflict; `heartbeat` and `release` act on
/// the worker's own hold; the status shows every hold; the library's permits are guards.
pub fn semaphores(s: &Subject) {
    if !s.holds_groups() {
        return refused(s, &["--limit", "2"]);
    }
    semaphore_limit(s);
    concurrent_processes(s);
    racing_tasks(s);
    semaphore_guards(s);
}

fn semaphore_limit(s: &Subject) {
    let claim = |worker: &str, args: &[&str]| fail_fast(s, worker, "builders", args);
    let out = claim("w1", &["--limit", "3", "--permits", "2"]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    let first = stdout_json(&out);
    assert_eq!(
        (&first["kind"], &first["limit"], &first["permits"]),
        (&"semaphore".into(), &3.into(), &2.into()),
        "{first}"
    );
    let out = claim("w2", &["--limit", "3"]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    let second = stdout_json(&out);
    assert!(
        second["fencing_token"].as_u64() > first["fencing_token"].as_u64(),
        "{first} {second}"
    );
    // Full: a third permit is a conflict, as a held lock is.
    let out = claim("w3", &["--limit", "3"]);
    assert_eq!(code(&out), 3, "{}", text(&out));
    // Another limit for the same name: a usage error naming both.
    let out = claim("w3", &["--limit", "5"]);
    assert_eq!(code(&out), 2, "{}", text(&out));
    assert!(
        text(&out).contains("limit 3") && text(&out).contains("not 5"),
        "{}",
        text(&out)
    );
    // A plain or shared claim on a semaphore: a conflict.
    for args in [&[][..], &["--shared"]] {
        let out = claim("w3", args);
        assert_eq!(code(&out), 3, "{args:?}: {}", text(&out));
    }

    let st = status(s, "builders");
    assert_eq!(
        (&st["kind"], &st["limit"]),
        (&"semaphore".into(), &3.into())
    );
    assert_eq!((&st["held"], &st["holder"]), (&true.into(), &Value::Null));
    assert_eq!(holders(&st), [("w1".to_string(), 2), ("w2".to_string(), 1)]);
    for (h, token) in st["holders"]
        .as_array()
        .unwrap()
        .iter()
        .zip([&first, &second])
    {
        assert_eq!(h["fencing_token"], token["fencing_token"], "{st}");
        assert_eq!(h["shared"], false, "{st}");
        assert!(h["expires_at"].is_string(), "{st}");
    }
    assert_eq!(st["queue"], json!([]), "{st}");
    let out = run(s, "w9", &["status", "builders"]);
    assert!(
        text(&out).contains("semaphore of limit 3, 3 permits held"),
        "{}",
        text(&out)
    );
    let all = stdout_json(&run(s, "w9", &["--json", "status"]));
    let listed: Vec<(&str, &str)> = all["locks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            let worker = l["holder"]["worker_id"].as_str().unwrap();
            (l["lock"].as_str().unwrap(), worker)
        })
        .collect();
    assert_eq!(listed, [("builders", "w1"), ("builders", "w2")], "{all}");

    let out = run(s, "w2", &["heartbeat", "--once", "builders"]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    let out = run(s, "w3", &["heartbeat", "--once", "builders"]);
    assert_eq!(code(&out), 4, "{}", text(&out));
    let out = run(s, "w3", &["release", "builders"]);
    assert_eq!(code(&out), 4, "{}", text(&out));
    // A release gives back this worker's permits and no one else's.
    let out = run(s, "w1", &["--json", "release", "builders"]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert_eq!(stdout_json(&out)["was_held"], true);
    assert_eq!(holders(&status(s, "builders")), [("w2".to_string(), 1)]);
    let out = claim("w3", &["--limit", "3", "--permits", "2"]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert_eq!(
        holders(&status(s, "builders")),
        [("w2".to_string(), 1), ("w3".to_string(), 2)]
    );
    for worker in ["w2", "w3"] {
        let out = run(s, worker, &["release", "builders"]);
        assert_eq!(code(&out), 0, "{}", text(&out));
    }
    // Free again: another limit may start the name afresh, and a lock may take it; then
    // neither a semaphore nor a shared claim gets in beside the lock.
    assert_eq!(status(s, "builders")["held"], false);
    let out = claim("w4", &[]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    for args in [&["--limit", "2"][..], &["--shared"]] {
        let out = claim("w5", args);
        assert_eq!(code(&out), 3, "{args:?}: {}", text(&out));
    }
    assert_eq!(code(&run(s, "w4", &["release", "builders"])), 0);
    let out = claim("w5", &["--limit", "5"]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert_eq!(code(&run(s, "w5", &["release", "builders"])), 0);

    // Every kind of hold counts as a lock does: 5 grants, 5 releases, 5 conflicts.
    let m = stdout_json(&run(s, "w9", &["metrics", "--json"]));
    let counters = &m["by_backend"][s.name()];
    assert_eq!(counters["total_acquisitions"], 5, "{m}");
    assert_eq!(counters["total_releases"], 5, "{m}");
    assert_eq!(counters["total_conflicts"], 5, "{m}");
}

/// Processes of the real binary claim one semaphore at once: exactly its limit are granted, each
/// with a token of its own, and the others are refused (exit 3).
fn concurrent_processes(s: &Subject) {
    let _burst = burst();
    let children: Vec<_> = (0..8)
        .map(|i| {
            s.cli(
                &format!("p{i}"),
                &["--json", "claim", "pool", "--limit", "3", "-n"],
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
        })
        .collect();
    let outs = wait_all(children);
    assert!(outs.iter().all(|o| matches!(code(o), 0 | 3)), "{outs:?}");
    let mut granted: Vec<u64> = outs
        .iter()
        .filter(|o| code(o) == 0)
        .map(|o| stdout_json(o)["fencing_token"].as_u64().unwrap())
        .collect();
    assert_eq!(granted.len(), 3, "{:?}: {outs:?}", s.kind);
    granted.sort_unstable();
    granted.dedup();
    assert_eq!(granted.len(), 3, "one token each");
    assert_eq!(holders(&status(s, "pool")).len(), 3);
    for (i, o) in outs.iter().enumerate() {
        if code(o) == 0 {
            assert_eq!(code(&run(s, &format!("p{i}"), &["release", "pool"])), 0);
        }
    }
}

/// Tasks, each with a backend (a connection) of its own, race for a semaphore's permits (one or
/// two at a time, polling): never more than its limit are held at once.
fn racing_tasks(s: &Subject) {
    const LIMIT: u32 = 3;
    let _burst = burst();
    let rt = runtime();
    let held = Arc::new(AtomicU32::new(0));
    let most = Arc::new(AtomicU32::new(0));
    let racy = s.id("racy");
    let tasks: Vec<_> = (0..10u32)
        .map(|i| {
            let backend = s.backend(&rt);
            let (held, most, racy) = (held.clone(), most.clone(), racy.clone());
            rt.spawn(async move {
                for round in 0..8u32 {
                    let permits = 1 + (i + round) % 2;
                    let mut req = acquire(&racy, &format!("w{i}"), TTL, Takeover::None);
                    req.kind = HoldKind::Semaphore {
                        limit: LIMIT,
                        permits,
                    };
                    let grant = loop {
                        match backend.try_acquire(&req).await.unwrap() {
                            Attempt::Granted(g) => break g,
                            Attempt::Held(_) => req.attempt += 1,
                        }
                        tokio::time::sleep(Duration::from_millis(3)).await;
                    };
                    let now = held.fetch_add(permits, Ordering::SeqCst) + permits;
                    most.fetch_max(now, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    held.fetch_sub(permits, Ordering::SeqCst);
                    let token = Some(grant.holder.fencing_token);
                    let released = backend
                        .release(&release(&req.lock, &req.claimant.worker_id, token))
                        .await
                        .unwrap();
                    assert!(released.was_held);
                }
            })
        })
        .collect();
    rt.block_on(async {
        for t in tasks {
            t.await.unwrap();
        }
    });
    let most = most.load(Ordering::SeqCst);
    assert!(most <= LIMIT, "{most} permits held at once, limit {LIMIT}");
    assert!(
        most >= 2,
        "the tasks never overlapped ({most}): the test shows nothing"
    );
}

/// `LockClient::semaphore`: each hold a guard with its own token, a full semaphore refusing
/// more, another limit or more permits than the limit a usage error, a released or dropped
/// guard giving its permits back.
fn semaphore_guards(s: &Subject) {
    let rt = runtime();
    let a = LockClient::new(s.backend(&rt), "a").unwrap();
    let b = LockClient::new(s.backend(&rt), "b").unwrap();
    let gpus = s.lock("gpus");
    rt.block_on(async {
        let two = a.semaphore(gpus.clone(), 3).acquire(2, TTL).await.unwrap();
        let one = b.semaphore(gpus.clone(), 3).acquire(1, TTL).await.unwrap();
        assert!(one.fencing_token() > two.fencing_token());
        let full = a
            .semaphore(gpus.clone(), 3)
            .try_acquire(1, TTL)
            .await
            .unwrap();
        assert!(full.is_none(), "a fourth permit of three: {full:?}");
        let other_limit = b.semaphore(gpus.clone(), 4).try_acquire(1, TTL).await;
        assert!(
            matches!(other_limit, Err(Error::Usage(_))),
            "{other_limit:?}"
        );
        let too_many = b.semaphore(gpus.clone(), 3).try_acquire(4, TTL).await;
        assert!(matches!(too_many, Err(Error::Usage(_))), "{too_many:?}");
        assert!(two.release().await.unwrap());
        let again = b
            .semaphore(gpus.clone(), 3)
            .try_acquire(2, TTL)
            .await
            .unwrap();
        assert!(again.is_some(), "the two permits given back are free");
        drop((one, again));
        assert!(flush_releases(Duration::from_secs(20)).await);
        let all = a
            .semaphore(gpus.clone(), 3)
            .try_acquire(3, TTL)
            .await
            .unwrap();
        assert!(all.is_some(), "dropped guards gave their permits back");
        assert!(all.unwrap().release().await.unwrap());
        // A semaphore claim on a lock is a conflict, not a wait.
        let lock = a.try_acquire(&gpus, TTL).await.unwrap().unwrap();
        assert!(
            b.semaphore(gpus.clone(), 2)
                .try_acquire(1, TTL)
                .await
                .unwrap()
                .is_none()
        );
        assert!(lock.release().await.unwrap());
    });
}

/// Readers hold together and keep a writer out; a writer that waits is not starved by readers
/// that come later (they wait behind its reservation on a polling backend, behind it in the
/// server's queue on the coordinator); `run --shared` holds its share while the command runs;
/// the library's shared holds are guards.
pub fn shared_holds(s: &Subject) {
    if !s.holds_groups() {
        return refused(s, &["--shared"]);
    }
    shared_holds_and_a_waiting_writer(s);
    shared_guards(s);
}

fn shared_holds_and_a_waiting_writer(s: &Subject) {
    let claim = |worker: &str, args: &[&str]| fail_fast(s, worker, "schema", args);
    for reader in ["r1", "r2"] {
        let out = claim(reader, &["--shared"]);
        assert_eq!(code(&out), 0, "{}", text(&out));
        assert_eq!(stdout_json(&out)["kind"], "shared", "{}", text(&out));
    }
    // A claim that does not wait keeps no place: the next reader still gets in.
    let out = claim("writer", &[]);
    assert_eq!(code(&out), 3, "{}", text(&out));
    let st = status(s, "schema");
    assert_eq!(
        (&st["kind"], &st["holder"]),
        (&"shared".into(), &Value::Null)
    );
    assert_eq!(holders(&st), [("r1".to_string(), 1), ("r2".to_string(), 1)]);
    assert!(st["holders"][0]["shared"] == true, "{st}");
    let out = claim("w", &["--limit", "2"]);
    assert_eq!(
        code(&out),
        3,
        "a semaphore claim on shared holds: {}",
        text(&out)
    );
    let out = run(s, "r3", &["run", "schema", "--shared", "-n", "--", "true"]);
    assert_eq!(code(&out), 0, "{}", text(&out));

    let writer = Running::spawn(&mut s.cli(
        "writer",
        &[
            "--json",
            "claim",
            "schema",
            "--ttl",
            "1m",
            "--wait",
            "40s",
            "--initial-backoff",
            "100ms",
            "--max-backoff",
            "300ms",
        ],
    ));
    eventually(20, "the writer waiting", || {
        let st = status(s, "schema");
        (st["queue"][0]["worker_id"] == "writer").then_some(())
    });
    // Readers would fit beside r1 and r2, but the writer waits: they wait behind it.
    let out = claim("r3", &["--shared"]);
    assert_eq!(code(&out), 3, "{}", text(&out));
    if s.polls() {
        assert!(text(&out).contains("reserved"), "{}", text(&out));
    }
    let out = run(s, "r4", &["run", "schema", "--shared", "-n", "--", "true"]);
    assert_eq!(code(&out), 3, "{}", text(&out));
    for reader in ["r1", "r2"] {
        let out = run(s, reader, &["release", "schema"]);
        assert_eq!(code(&out), 0, "{}", text(&out));
    }
    let out = writer.exit_within(Duration::from_secs(30));
    assert_eq!(code(&out), 0, "{}", text(&out));
    let granted = stdout_json(&out);
    let st = status(s, "schema");
    assert_eq!(st["kind"], "exclusive", "{st}");
    assert_eq!(st["holder"]["worker_id"], "writer", "{st}");
    assert_eq!(holders(&st), [("writer".to_string(), 1)]);
    assert_eq!(st["queue"], json!([]), "{st}");
    let out = claim("r3", &["--shared"]);
    assert_eq!(code(&out), 3, "{}", text(&out));
    let out = run(s, "writer", &["release", "schema"]);
    assert_eq!(code(&out), 0, "{}", text(&out));

    let out = run(
        s,
        "r3",
        &[
            "run",
            "schema",
            "--shared",
            "-n",
            "--",
            "sh",
            "-c",
            "echo $SENTINEL_FENCING_TOKEN",
        ],
    );
    assert_eq!(code(&out), 0, "{}", text(&out));
    let token: u64 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    assert!(
        token > granted["fencing_token"].as_u64().unwrap(),
        "{token}"
    );
    assert_eq!(status(s, "schema")["held"], false);
}

/// `acquire_shared`: readers together, each a guard with its own token, keeping a writer out
/// until both are gone, and kept out by it.
fn shared_guards(s: &Subject) {
    let rt = runtime();
    let a = LockClient::new(s.backend(&rt), "a").unwrap();
    let b = LockClient::new(s.backend(&rt), "b").unwrap();
    let schema = s.lock("schema");
    rt.block_on(async {
        let r1 = a.acquire_shared(&schema, TTL).await.unwrap();
        let r2 = b.try_acquire_shared(&schema, TTL).await.unwrap().unwrap();
        assert!(r2.fencing_token() > r1.fencing_token());
        assert!(b.try_acquire(&schema, TTL).await.unwrap().is_none());
        assert!(r1.release().await.unwrap() && r2.release().await.unwrap());
        let writer = b.try_acquire(&schema, TTL).await.unwrap();
        assert!(writer.is_some(), "the readers are gone");
        assert!(a.try_acquire_shared(&schema, TTL).await.unwrap().is_none());
        assert!(writer.unwrap().release().await.unwrap());
    });
}

/// The reservation rule of the backends that poll, attempt by attempt: the first refused attempt
/// that says it comes back (`wait`) keeps the name from every other worker's claim until then
/// and a second more; a claim's last attempt, or a fail-fast one, keeps nothing and ends its
/// own; one not back in time holds nobody back.
pub fn reservations(s: &Subject) {
    let rt = runtime();
    let b = s.backend(&rt);
    let schema = s.id("schema");
    let claim = |worker: &str, kind: HoldKind, attempt: u32, wait_ms: u64| {
        let mut req = acquire(&schema, worker, TTL, Takeover::None);
        (req.kind, req.attempt, req.wait) = (kind, attempt, Duration::from_millis(wait_ms));
        rt.block_on(b.try_acquire(&req)).unwrap()
    };
    let queue = || -> Vec<String> {
        let st = rt.block_on(b.status(&schema)).unwrap();
        match st {
            sentinel::backend::Status::Holds(h) => {
                h.queue.into_iter().map(|w| w.worker_id).collect()
            }
            _ => Vec::new(),
        }
    };
    // Whether a reader's fail-fast claim is granted; refused, it was for the reservation.
    let reader = |worker: &str| match claim(worker, HoldKind::Shared, 0, 0) {
        Attempt::Granted(_) => true,
        Attempt::Held(h) => {
            let why = h.liveness.as_deref().unwrap_or_default();
            assert!(why.contains("reserved"), "{:?}: {h:?}", s.kind);
            false
        }
    };
    assert!(reader("r1"));
    // A fail-fast claim (one attempt, no next) reserves nothing.
    assert!(matches!(
        claim("writer", HoldKind::Exclusive, 0, 0),
        Attempt::Held(_)
    ));
    assert_eq!(queue(), Vec::<String>::new());
    assert!(reader("r2"));
    // The first refused attempt of a claim that comes back reserves the name: readers that
    // would fit wait.
    assert!(matches!(
        claim("writer", HoldKind::Exclusive, 0, 1000),
        Attempt::Held(_)
    ));
    assert_eq!(queue(), ["writer"]);
    assert!(!reader("r3"), "a reader overtook the waiting writer");
    // Its last attempt, refused, ends it: the readers get in again.
    assert!(matches!(
        claim("writer", HoldKind::Exclusive, 1, 0),
        Attempt::Held(_)
    ));
    assert_eq!(queue(), Vec::<String>::new());
    assert!(reader("r3"));
    // Reserved again, for its pause of 1 s and a second more (not the claim's TTL of a minute),
    // and not back by then: nobody waits for it.
    let reserved = Instant::now();
    assert!(matches!(
        claim("writer", HoldKind::Exclusive, 2, 1000),
        Attempt::Held(_)
    ));
    assert!(!reader("r4"));
    std::thread::sleep(
        (reserved + Duration::from_millis(2400)).saturating_duration_since(Instant::now()),
    );
    assert_eq!(queue(), Vec::<String>::new());
    assert!(reader("r4"));
    // A forced claim takes the name from the readers while the writer waits: the lock it holds
    // refuses the writer's next attempt, which keeps the reservation, and its last attempt,
    // refused by that lock too, ends it.
    assert!(matches!(
        claim("writer", HoldKind::Exclusive, 3, 1000),
        Attempt::Held(_)
    ));
    let mut force = acquire(&schema, "x", TTL, Takeover::Any);
    force.wait = Duration::ZERO;
    let x = granted(rt.block_on(b.try_acquire(&force)).unwrap());
    for (attempt, wait_ms, waiting) in [(4, 1000, vec!["writer"]), (5, 0, vec![])] {
        match claim("writer", HoldKind::Exclusive, attempt, wait_ms) {
            Attempt::Held(h) => assert_eq!(h.worker_id, "x", "{h:?}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(queue(), waiting, "{:?}: attempt {attempt}", s.kind);
    }
    let token = Some(x.holder.fencing_token);
    assert!(
        rt.block_on(b.release(&release(&schema, "x", token)))
            .unwrap()
            .was_held
    );
}

/// Elections: one leader at a time, publishing its value to `leader`; a campaign waits its turn
/// and follows a leader that steps down, with a larger token; `elect`'s command runs while it
/// leads and its exit code passes through. GitHub refuses `elect` and `leader` (exit 2).
pub fn elections(s: &Subject) {
    if s.kind == Kind::Github {
        for args in [&["elect", "e", "--", "true"][..], &["leader", "e"]] {
            let out = run(s, "w1", args);
            assert_eq!(code(&out), 2, "{args:?}: {}", text(&out));
            for backend in ["coordinator", "local", "Redis", "PostgreSQL", "etcd"] {
                assert!(text(&out).contains(backend), "{backend}: {}", text(&out));
            }
        }
        return;
    }
    campaigns_wait_their_turn(s);
    the_leader_publishes_its_value(s);
}

/// `LeaderElection::campaign` waits until elected and `observe` streams each change of leader:
/// a second candidate leads once the first steps down, and an observer sees the first leader,
/// then the second.
fn campaigns_wait_their_turn(s: &Subject) {
    let rt = runtime();
    let ttl = Duration::from_secs(3) + s.resolution();
    let name = s.lock("scheduler");
    let candidate = |worker: &str| {
        LeaderElection::new(LockClient::new(s.backend(&rt), worker).unwrap(), &name, ttl)
    };
    let (a, b, watcher) = (candidate("a"), candidate("b"), candidate("w"));
    rt.block_on(async {
        let first = a.campaign().await.unwrap();
        let mut changes = std::pin::pin!(watcher.observe(Duration::from_millis(50)));
        let seen = changes.next().await.unwrap().unwrap().unwrap();
        assert_eq!(
            (seen.worker_id.as_str(), seen.fencing_token),
            ("a", first.fencing_token())
        );
        let second = {
            let mut campaign = std::pin::pin!(b.campaign());
            let waited = tokio::time::timeout(Duration::from_secs(1), campaign.as_mut()).await;
            assert!(waited.is_err(), "{:?}: b was elected while a led", s.kind);
            assert!(first.step_down().await.unwrap());
            tokio::time::timeout(Duration::from_secs(20), campaign)
                .await
                .expect("b elected after a stepped down")
                .unwrap()
        };
        let next = loop {
            match changes.next().await.unwrap().unwrap() {
                Some(h) if h.worker_id == "b" => break h,
                _ => continue,
            }
        };
        assert_eq!(next.fencing_token, second.fencing_token());
        assert!(second.fencing_token() > seen.fencing_token);
        assert!(second.step_down().await.unwrap());
    });
}

/// `elect --value` publishes the value with the leadership: `leader --json` reports the leader's
/// worker, value, start and token while its command runs; the command's exit code passes through,
/// and nobody leads afterwards.
fn the_leader_publishes_its_value(s: &Subject) {
    let stop = s.data.path().join("stop-leading");
    let script = format!(
        "while [ ! -e '{}' ]; do sleep 0.05; done; exit 7",
        stop.display()
    );
    let leader = || {
        let out = run(s, "observer", &["--json", "leader", "e"]);
        assert_eq!(code(&out), 0, "{}", text(&out));
        stdout_json(&out)["leader"].clone()
    };
    let elect = Running::spawn(&mut s.cli(
        "a",
        &[
            "elect",
            "e",
            "--value",
            "http://a:1",
            "--ttl",
            "5s",
            "--",
            "sh",
            "-c",
            &script,
        ],
    ));
    wait_for(Duration::from_secs(20), "a to lead", || {
        leader()["worker_id"] == "a"
    });
    let now = leader();
    assert_eq!(now["value"], "http://a:1", "{now}");
    assert!(now["since"].is_string(), "{now}");
    let st = status(s, "e");
    assert_eq!(
        now["fencing_token"], st["holder"]["fencing_token"],
        "{now} {st}"
    );
    std::fs::write(&stop, "").unwrap();
    let out = elect.exit_within(Duration::from_secs(20));
    assert_eq!(
        code(&out),
        7,
        "the command's exit code passes through: {}",
        text(&out)
    );
    assert_eq!(leader(), Value::Null);
}

/// A claim of permits or of a shared hold interrupted by SIGINT/SIGTERM at any moment holds
/// nothing afterwards, or has reported its grant.
pub fn interrupted_hold_claims(s: &Subject) {
    let _burst = burst();
    let mut interrupted = 0;
    for round in 0..40u64 {
        let kind: &[&str] = match round % 4 < 2 {
            true => &["--shared"],
            false => &["--limit", "2", "--permits", "2"],
        };
        let mut args = vec!["claim", "job"];
        args.extend_from_slice(kind);
        let child = s
            .cli("w", &args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // A claim takes about 10 ms from the process's start (its handlers are installed after
        // about 7): signals land all over it, and at 0 before the handlers.
        std::thread::sleep(Duration::from_micros(match round % 20 {
            0 => 0,
            n => 4000 + n * 500,
        }));
        let signal = if round % 2 == 0 { "-INT" } else { "-TERM" };
        let _ = Command::new("kill")
            .args([signal, &child.id().to_string()])
            .status();
        let out = child.wait_with_output().unwrap();
        match out.status.code().unwrap_or(128) {
            0 => {
                let out = run(s, "w", &["release", "job"]);
                assert_eq!(code(&out), 0, "{}", text(&out));
            }
            // Killed before the handlers were installed (128), or interrupted.
            128 | 130 | 143 => {
                interrupted += 1;
                let st = status(s, "job");
                assert_eq!(st["held"], false, "round {round}: {}\n{st}", text(&out));
            }
            other => panic!("round {round}: exit {other}: {}", text(&out)),
        }
    }
    assert!(
        interrupted > 0,
        "no claim was interrupted: the test proves nothing"
    );
}
