//! `--limit`/`--permits` (a semaphore) and `--shared` (a read hold) through the real binary: what
//! only the coordinator does (a waiting claim queues on the server) and the options clap refuses.
//! The promises every backend keeps, and the refusal by the backends with one holder per lock,
//! are the conformance suite's rows (`conformance/primitives.rs`).

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

/// A semaphore claim that waits queues on the server, shows in the status, and gets the permit a
/// release gives back (the promises every backend keeps are the conformance suite's rows).
#[test]
fn a_waiting_semaphore_claim_queues_on_the_server() {
    let tmp = tempfile::tempdir().unwrap();
    let (_node, url) = one_node(tmp.path());
    let claim = |worker: &str, args: &[&str]| fail_fast(tmp.path(), &url, worker, "builders", args);
    let out = claim("w1", &["--limit", "3", "--permits", "2"]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    let out = claim("w2", &["--limit", "3"]);
    assert_eq!(code(&out), 0, "{}", text(&out));
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
    assert_eq!(
        holders(&status),
        [("w1".to_string(), 2), ("w2".to_string(), 1)]
    );
    let out = run(tmp.path(), &url, "w2", &["release", "builders"]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    let out = waiter.wait_with_output().unwrap();
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert_eq!(stdout_json(&out)["permits"], 1, "{}", text(&out));
}

#[test]
fn semaphore_and_shared_options_that_make_no_sense_are_usage_errors() {
    let tmp = tempfile::tempdir().unwrap();
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
