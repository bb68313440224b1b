//! Semaphores (`--limit`, `--permits`) and shared holds (`--shared`) on Redis, through the real
//! binary and the library against a real `redis-server`.
//!
//! The scenarios are written once against the conformance suite's [`Subject`] and
//! `postgres_hold_kinds.rs` runs them on PostgreSQL too: the limit and its mismatch, kinds that
//! conflict, readers together, a waiting writer that later readers do not starve (the
//! reservation), `run --shared`, a worker's own release and renewal, the status, racing claims
//! and the library's guards. What differs, a hold whose lease ran out (gone on Redis, stale on
//! PostgreSQL), is tested in each file.

use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use serde_json::Value;

use sentinel::backend::LockBackend;
use sentinel::distributed::{DistributedLock, LockClient, flush_releases};
use sentinel::error::Error;
use sentinel::lock::{
    AcquireRequest, Attempt, Claimant, HoldKind, LockId, ReleaseRequest, Takeover,
};

use crate::conformance::{Kind, Subject, burst};
use crate::coordinator_primitives::holders_by;
use crate::redis_cli::LosingProxy;
use crate::serve::eventually;
use crate::servers::Redis;
use crate::support::{Running, code, sentinel, stdout_json, text};

const TTL: Duration = Duration::from_secs(60);

fn run(s: &Subject, worker: &str, args: &[&str]) -> Output {
    s.cli(worker, args).output().unwrap()
}

/// `claim NAME -n --ttl 1m ARGS…` as `worker`, with `--json`.
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

fn multi_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// A semaphore lets its limit of permits be held and no more; another limit is a usage error
/// naming both, another kind a conflict; `heartbeat` and `release` act on the worker's own hold.
pub(crate) fn semaphore_limit(s: &Subject) {
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
        assert!(
            text(&out).contains("semaphore of limit 3"),
            "{}",
            text(&out)
        );
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
    assert_eq!(st["queue"], Value::Array(Vec::new()), "{st}");
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
    let out = run(s, "w1", &["--json", "release", "builders"]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert_eq!(stdout_json(&out)["was_held"], true);
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
    // Free again: another limit may start the name afresh, and a lock may take it.
    let out = claim("w4", &[]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    let out = claim("w5", &["--limit", "2"]);
    assert_eq!(code(&out), 3, "{}", text(&out));
    assert!(text(&out).contains("held as a lock"), "{}", text(&out));

    // Every kind of hold counts as a lock does: 4 grants, 3 releases, 4 conflicts.
    let m = stdout_json(&run(s, "w9", &["metrics", "--json"]));
    let counters = &m["by_backend"][st["backend"].as_str().unwrap()];
    assert_eq!(counters["total_acquisitions"], 4, "{m}");
    assert_eq!(counters["total_releases"], 3, "{m}");
    assert_eq!(counters["total_conflicts"], 4, "{m}");
}

/// Readers hold together and keep a writer out; a writer that waits reserves the name, so a
/// reader that comes later waits behind it instead of starving it; `run --shared` holds its share
/// while the command runs.
pub(crate) fn shared_holds_and_a_waiting_writer(s: &Subject) {
    let claim = |worker: &str, args: &[&str]| fail_fast(s, worker, "schema", args);
    for reader in ["r1", "r2"] {
        let out = claim(reader, &["--shared"]);
        assert_eq!(code(&out), 0, "{}", text(&out));
        assert_eq!(stdout_json(&out)["kind"], "shared", "{}", text(&out));
    }
    // A claim that does not wait reserves nothing: the next reader still gets in.
    let out = claim("writer", &[]);
    assert_eq!(code(&out), 3, "{}", text(&out));
    let st = status(s, "schema");
    assert_eq!(
        (&st["kind"], &st["holder"]),
        (&"shared".into(), &Value::Null)
    );
    assert_eq!(holders(&st), [("r1".to_string(), 1), ("r2".to_string(), 1)]);
    assert!(st["holders"][0]["shared"] == true, "{st}");
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
    eventually(20, "the writer's reservation", || {
        let st = status(s, "schema");
        (st["queue"][0]["worker_id"] == "writer").then_some(())
    });
    // Readers would fit beside r1 and r2, but the writer waits: they wait behind it.
    let out = claim("r3", &["--shared"]);
    assert_eq!(code(&out), 3, "{}", text(&out));
    assert!(text(&out).contains("reserved"), "{}", text(&out));
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
    assert_eq!(st["queue"], Value::Array(Vec::new()), "{st}");
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

/// Tasks, each with a backend (a connection) of its own, race for a semaphore's permits (one or
/// two at a time, waiting as the claim loop does): never more than its limit are held at once.
pub(crate) fn racing_claims_never_exceed_the_limit(s: &Subject) {
    const LIMIT: u32 = 3;
    let _burst = burst();
    let rt = multi_thread();
    let held = Arc::new(AtomicU32::new(0));
    let most = Arc::new(AtomicU32::new(0));
    let tasks: Vec<_> = (0..10u32)
        .map(|i| {
            let backend = s.backend(&rt);
            let (held, most) = (held.clone(), most.clone());
            rt.spawn(async move {
                for round in 0..12u32 {
                    let permits = 1 + (i + round) % 2;
                    let mut req = AcquireRequest {
                        lock: LockId::Name("racy".into()),
                        claimant: Claimant {
                            worker_id: format!("w{i}"),
                            node_id: "n".into(),
                        },
                        ttl: TTL,
                        takeover: Takeover::None,
                        task_info: Default::default(),
                        readopt: false,
                        attempt: 0,
                        wait: Duration::ZERO,
                        kind: HoldKind::Semaphore {
                            limit: LIMIT,
                            permits,
                        },
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
                    let released = backend
                        .release(&ReleaseRequest {
                            lock: req.lock.clone(),
                            worker_id: req.claimant.worker_id.clone(),
                            force: false,
                            fencing_token: Some(grant.holder.fencing_token),
                        })
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

/// A claim of permits or of a shared hold interrupted by SIGINT/SIGTERM at any moment holds
/// nothing afterwards, or has reported its grant.
pub(crate) fn interrupted_claims(s: &Subject) {
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
        match code_or_signal(&out) {
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

fn code_or_signal(out: &Output) -> i32 {
    out.status.code().unwrap_or(128)
}

/// The library's semaphores and shared holds are guards, on any backend that keeps several holds
/// per name.
pub(crate) fn library_guards(s: &Subject) {
    let rt = multi_thread();
    let a = LockClient::new(s.backend(&rt), "a").unwrap();
    let b = LockClient::new(s.backend(&rt), "b").unwrap();
    rt.block_on(async {
        let two = a.semaphore("gpus", 3).acquire(2, TTL).await.unwrap();
        let one = b.semaphore("gpus", 3).acquire(1, TTL).await.unwrap();
        assert!(one.fencing_token() > two.fencing_token());
        let full = a.semaphore("gpus", 3).try_acquire(1, TTL).await.unwrap();
        assert!(full.is_none(), "a fourth permit of three: {full:?}");
        let other_limit = b.semaphore("gpus", 4).try_acquire(1, TTL).await;
        assert!(
            matches!(other_limit, Err(Error::Usage(_))),
            "{other_limit:?}"
        );
        let too_many = b.semaphore("gpus", 3).try_acquire(4, TTL).await;
        assert!(matches!(too_many, Err(Error::Usage(_))), "{too_many:?}");
        assert!(two.release().await.unwrap());
        let again = b.semaphore("gpus", 3).try_acquire(2, TTL).await.unwrap();
        assert!(again.is_some(), "the two permits given back are free");
        drop((one, again));
        assert!(flush_releases(Duration::from_secs(20)).await);
        let all = a.semaphore("gpus", 3).try_acquire(3, TTL).await.unwrap();
        assert!(all.is_some(), "dropped guards gave their permits back");

        let r1 = a.acquire_shared("schema", TTL).await.unwrap();
        let r2 = b.try_acquire_shared("schema", TTL).await.unwrap().unwrap();
        assert!(r2.fencing_token() > r1.fencing_token());
        assert!(b.try_acquire("schema", TTL).await.unwrap().is_none());
        assert!(r1.release().await.unwrap() && r2.release().await.unwrap());
        let writer = b.try_acquire("schema", TTL).await.unwrap();
        assert!(writer.is_some(), "the readers are gone");
        assert!(a.try_acquire_shared("schema", TTL).await.unwrap().is_none());
        // A semaphore claim on a lock is a conflict, not a wait.
        let refused = a.semaphore("schema", 2).try_acquire(1, TTL).await.unwrap();
        assert!(refused.is_none());
    });
}

#[test]
fn a_semaphore_lets_its_limit_of_permits_be_held_on_redis() {
    let Some(s) = Subject::new(Kind::Redis) else {
        return;
    };
    semaphore_limit(&s);
}

#[test]
fn shared_holds_keep_a_writer_out_and_do_not_starve_it_on_redis() {
    let Some(s) = Subject::new(Kind::Redis) else {
        return;
    };
    shared_holds_and_a_waiting_writer(&s);
}

#[test]
fn racing_semaphore_claims_never_exceed_the_limit_on_redis() {
    let Some(s) = Subject::new(Kind::Redis) else {
        return;
    };
    racing_claims_never_exceed_the_limit(&s);
}

#[test]
fn interrupted_claims_of_holds_hold_nothing_or_report_it_on_redis() {
    let Some(s) = Subject::new(Kind::Redis) else {
        return;
    };
    interrupted_claims(&s);
}

#[test]
fn semaphores_and_shared_holds_are_guards_on_redis() {
    let Some(s) = Subject::new(Kind::Redis) else {
        return;
    };
    library_guards(&s);
}

/// Redis's leases end by themselves: a hold whose lease ran out is gone, takes no permits, is
/// neither listed nor renewable, and the janitor finds nothing stale.
#[test]
fn expired_holds_are_gone_on_redis() {
    let Some(s) = Subject::new(Kind::Redis) else {
        return;
    };
    let out = run(
        &s,
        "w1",
        &[
            "--json",
            "claim",
            "gpus",
            "--limit",
            "2",
            "--permits",
            "2",
            "--ttl",
            "1s",
        ],
    );
    assert_eq!(code(&out), 0, "{}", text(&out));
    let first = stdout_json(&out)["fencing_token"].as_u64().unwrap();
    for reader in ["r1", "r2"] {
        let ttl = if reader == "r1" { "1s" } else { "1m" };
        let out = run(&s, reader, &["claim", "schema", "--shared", "--ttl", ttl]);
        assert_eq!(code(&out), 0, "{}", text(&out));
    }
    std::thread::sleep(Duration::from_millis(1300));
    let st = status(&s, "gpus");
    assert_eq!(st["held"], false, "{st}");
    assert_eq!(holders(&status(&s, "schema")), [("r2".to_string(), 1)]);
    let all = stdout_json(&run(&s, "w9", &["--json", "status"]));
    assert_eq!(all["locks"].as_array().unwrap().len(), 1, "{all}");
    let sweep = stdout_json(&run(&s, "j", &["steal-stale", "--all", "--json"]));
    assert_eq!(sweep["locks"][0]["action"], "live", "{sweep}");
    let out = run(&s, "w1", &["heartbeat", "--once", "gpus"]);
    assert_eq!(code(&out), 4, "{}", text(&out));
    let out = fail_fast(&s, "w2", "gpus", &["--limit", "2", "--permits", "2"]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert!(stdout_json(&out)["fencing_token"].as_u64().unwrap() > first);
    // `steal-stale` is a plain claim here: the live reader keeps the writer out.
    let out = run(&s, "w3", &["steal-stale", "schema"]);
    assert_eq!(code(&out), 3, "{}", text(&out));
}

/// A claim of permits whose answer was lost is retried and recognises its own hold instead of
/// taking a second one; a release of it whose answer was lost still reports what it freed.
#[test]
fn a_hold_whose_answer_was_lost_is_granted_once_on_redis() {
    let Some(server) = Redis::start() else { return };
    let data = tempfile::tempdir().unwrap();
    // The default worker id, so that a second grant is not a re-adoption; the node id marks
    // the claim's command for the proxy.
    let node = "node-7c1e";
    let via = |proxy: &LosingProxy, args: &[&str]| {
        sentinel(data.path())
            .args(["--backend", "redis", "--node-id", node])
            .env(
                "SENTINEL_REDIS_URL",
                format!("redis://127.0.0.1:{}", proxy.port),
            )
            .args(args)
            .output()
            .unwrap()
    };
    let direct = |args: &[&str]| {
        sentinel(data.path())
            .args(["--backend", "redis", "--worker-id", "w9"])
            .env("SENTINEL_REDIS_URL", server.url())
            .args(args)
            .output()
            .unwrap()
    };
    let proxy = LosingProxy::start(server.port(), node.as_bytes());
    let out = via(&proxy, &["--json", "claim", "gpus", "--limit", "3", "-n"]);
    assert!(proxy.lost.load(Ordering::SeqCst), "no answer was lost");
    assert_eq!(code(&out), 0, "{}", text(&out));
    let worker = stdout_json(&out)["worker_id"].as_str().unwrap().to_string();
    let st = stdout_json(&direct(&["--json", "status", "gpus"]));
    assert_eq!(holders(&st), [(worker.clone(), 1)], "{st}");
    // A release names no node: its marker is the (default) worker id the claim was given.
    let marker: &'static str = Box::leak(worker.into_boxed_str());
    let proxy = LosingProxy::start(server.port(), marker.as_bytes());
    let out = via(&proxy, &["--json", "release", "gpus"]);
    assert!(proxy.lost.load(Ordering::SeqCst), "no answer was lost");
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert_eq!(stdout_json(&out)["was_held"], true, "{}", text(&out));
    let st = stdout_json(&direct(&["--json", "status", "gpus"]));
    assert_eq!(st["held"], false, "{st}");
}
