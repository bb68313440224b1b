//! Semaphores and shared holds on Redis: what is Redis's own, through the real binary against a
//! real `redis-server`. The promises every backend keeps (limits, kinds, readers and a waiting
//! writer, the reservation rule, racing claims, interrupted claims, the library's guards) are
//! the conformance suite's rows (`conformance/primitives.rs`).

use std::process::Output;
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::Value;

use crate::conformance::{Kind, Subject};
use crate::coordinator_primitives::holders_by;
use crate::redis_cli::LosingProxy;
use crate::servers::Redis;
use crate::support::{code, sentinel, stdout_json, text};

fn run(s: &Subject, worker: &str, args: &[&str]) -> Output {
    s.cli(worker, args).output().unwrap()
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
    let out = run(
        &s,
        "w2",
        &[
            "--json",
            "claim",
            "gpus",
            "-n",
            "--limit",
            "2",
            "--permits",
            "2",
        ],
    );
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
