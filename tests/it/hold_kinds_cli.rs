//! `claim`, `run`, `heartbeat`, `release` and `status` with `--limit`/`--permits` (a semaphore)
//! and `--shared` (a read hold), through the real binary against a real `sentinel serve` node;
//! and the backends that hold one holder per lock refusing them with exit 2.

use std::path::Path;
use std::process::{Output, Stdio};

use serde_json::Value;

use crate::coordinator_primitives::holders_by;
use crate::serve::eventually;
use crate::server_cli::{cli, one_node, run};
use crate::support::{code, local, stdout_json, text};

/// The worker ids of a `status --json`'s holders, and their permits.
fn holders(status: &Value) -> Vec<(String, u64)> {
    holders_by(status, "permits")
}

/// `claim NAME -n --ttl 1m ARGS…` as `worker`, with `--json`.
fn fail_fast(data: &Path, url: &str, worker: &str, name: &str, args: &[&str]) -> Output {
    let mut all = vec!["--json", "claim", name, "-n", "--ttl", "1m"];
    all.extend_from_slice(args);
    run(data, url, worker, &all)
}

#[test]
fn a_semaphore_lets_its_limit_of_permits_be_held_and_no_more() {
    let tmp = tempfile::tempdir().unwrap();
    let (_node, url) = one_node(tmp.path());
    let claim = |worker: &str, args: &[&str]| fail_fast(tmp.path(), &url, worker, "builders", args);

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
        text(&out).contains('3') && text(&out).contains('5'),
        "{}",
        text(&out)
    );
    // A plain claim on a semaphore: a conflict.
    let out = claim("w3", &[]);
    assert_eq!(code(&out), 3, "{}", text(&out));

    let out = run(tmp.path(), &url, "w9", &["--json", "status", "builders"]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    let status = stdout_json(&out);
    assert_eq!(status["kind"], "semaphore", "{status}");
    assert_eq!(status["limit"], 3, "{status}");
    assert_eq!(
        holders(&status),
        [("w1".to_string(), 2), ("w2".to_string(), 1)]
    );
    let out = run(tmp.path(), &url, "w9", &["status", "builders"]);
    assert!(
        text(&out).contains("semaphore of limit 3, 3 permits held"),
        "{}",
        text(&out)
    );
    let out = run(tmp.path(), &url, "w9", &["--json", "status"]);
    let all = stdout_json(&out);
    let listed: Vec<&str> = all["locks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["holder"]["worker_id"].as_str().unwrap())
        .collect();
    assert_eq!(listed, ["w1", "w2"], "{}", text(&out));

    // The CLI's heartbeat and release find this worker's own hold among the others.
    let out = run(tmp.path(), &url, "w2", &["heartbeat", "--once", "builders"]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    let out = run(tmp.path(), &url, "w3", &["heartbeat", "--once", "builders"]);
    assert_eq!(code(&out), 4, "{}", text(&out));
    let out = run(tmp.path(), &url, "w1", &["--json", "release", "builders"]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert_eq!(stdout_json(&out)["was_held"], true);
    let out = claim("w3", &["--limit", "3", "--permits", "2"]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    let out = run(tmp.path(), &url, "w9", &["--json", "status", "builders"]);
    assert_eq!(
        holders(&stdout_json(&out)),
        [("w2".to_string(), 1), ("w3".to_string(), 2)]
    );

    // A claim that waits queues on the server, shows in the status, and gets the permit a
    // release gives back.
    let waiter = cli(
        tmp.path(),
        &url,
        "w4",
        &[
            "--json", "claim", "builders", "--limit", "3", "--wait", "30s",
        ],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let status = eventually(20, "w4 waiting", || {
        let out = run(tmp.path(), &url, "w9", &["--json", "status", "builders"]);
        let status = stdout_json(&out);
        (status["queue"][0]["worker_id"] == "w4").then_some(status)
    });
    assert_eq!(status["detail"]["waiting"], 1, "{status}");
    let out = run(tmp.path(), &url, "w2", &["release", "builders"]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    let out = waiter.wait_with_output().unwrap();
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert_eq!(stdout_json(&out)["permits"], 1, "{}", text(&out));
}

#[test]
fn shared_holds_are_held_together_and_keep_a_writer_out() {
    let tmp = tempfile::tempdir().unwrap();
    let (_node, url) = one_node(tmp.path());
    let claim = |worker: &str, args: &[&str]| fail_fast(tmp.path(), &url, worker, "schema", args);
    for reader in ["r1", "r2"] {
        let out = claim(reader, &["--shared"]);
        assert_eq!(code(&out), 0, "{}", text(&out));
        assert_eq!(stdout_json(&out)["kind"], "shared", "{}", text(&out));
    }
    let out = claim("writer", &[]);
    assert_eq!(code(&out), 3, "{}", text(&out));
    let out = run(tmp.path(), &url, "w9", &["--json", "status", "schema"]);
    let status = stdout_json(&out);
    assert_eq!(status["kind"], "shared", "{status}");
    assert_eq!(status["held"], true, "{status}");
    assert_eq!(status["holder"], Value::Null, "{status}");
    assert_eq!(
        holders(&status),
        [("r1".to_string(), 1), ("r2".to_string(), 1)]
    );

    // `run --shared` holds its share while the command runs, and gives it back.
    let out = run(
        tmp.path(),
        &url,
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
    for reader in ["r1", "r2"] {
        let out = run(tmp.path(), &url, reader, &["release", "schema"]);
        assert_eq!(code(&out), 0, "{}", text(&out));
    }
    let out = claim("writer", &[]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    let out = run(tmp.path(), &url, "w9", &["--json", "status", "schema"]);
    let status = stdout_json(&out);
    assert_eq!(status["kind"], "exclusive", "{status}");
    assert_eq!(status["holder"]["worker_id"], "writer", "{status}");
    assert_eq!(holders(&status), [("writer".to_string(), 1)]);
}

#[test]
fn backends_with_one_holder_per_lock_refuse_shared_holds_and_semaphores() {
    let tmp = tempfile::tempdir().unwrap();
    // Refused before any request: the endpoint needs no server. (The local backend holds them:
    // local_hold_kinds.rs.)
    let etcd = format!("http://127.0.0.2:{}", crate::support::closed_port());
    for args in [
        &["claim", "x", "--shared"][..],
        &["claim", "x", "--limit", "2"],
        &["run", "x", "--limit", "2", "--", "true"],
    ] {
        let out = local(tmp.path(), "w1", &[])
            .args(["--backend", "etcd", "--etcd-endpoints", &etcd])
            .args(args)
            .output()
            .unwrap();
        assert_eq!(code(&out), 2, "{args:?}: {}", text(&out));
        assert!(text(&out).contains("--server"), "{}", text(&out));
    }
    // Usage errors clap catches: permits without a limit, more permits than the limit.
    for args in [
        &["claim", "x", "--permits", "2"][..],
        &["claim", "x", "--limit", "2", "--permits", "3"],
        &["claim", "x", "--limit", "2", "--shared"],
        &["claim", "x", "--limit", "0"],
    ] {
        let out = local(tmp.path(), "w1", args).output().unwrap();
        assert_eq!(code(&out), 2, "{args:?}: {}", text(&out));
    }
    let status = crate::support::local_status(tmp.path(), "x");
    assert_eq!(status["held"], false, "{status}");
}
