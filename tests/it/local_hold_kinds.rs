//! Semaphores (`--limit`, `--permits`) and shared holds (`--shared`) on the local backend,
//! through the real binary: what is the local backend's own (holds seen from inside `run`,
//! expired holds in the table). The promises every backend keeps (limits, kinds, readers and a
//! waiting writer, the reservation rule, concurrent processes, the library's guards) are the
//! conformance suite's rows (`conformance/primitives.rs`).

use std::path::Path;
use std::process::Output;

use serde_json::Value;

use crate::support::{code, local, local_status, stdout_json, text};

/// `--json claim NAME -n --ttl 1m ARGS…` as `worker`.
fn fail_fast(data: &Path, worker: &str, name: &str, args: &[&str]) -> Output {
    let mut all = vec!["--json", "claim", name, "-n", "--ttl", "1m"];
    all.extend_from_slice(args);
    run(data, worker, &all)
}

fn run(data: &Path, worker: &str, args: &[&str]) -> Output {
    local(data, worker, args).output().unwrap()
}

/// The worker ids of a `status --json`'s holders, and their permits.
fn holders(status: &Value) -> Vec<(String, u64)> {
    status["holders"]
        .as_array()
        .unwrap_or_else(|| panic!("no holders: {status}"))
        .iter()
        .map(|h| {
            let worker = h["worker_id"].as_str().unwrap().to_string();
            (worker, h["permits"].as_u64().unwrap())
        })
        .collect()
}

/// Moves the heartbeat of `worker`'s holds of the group `name` back by `by_ms`, as if they had
/// not renewed for that long.
fn age_holds(data: &Path, name: &str, worker: &str, by_ms: u64) {
    let path = data.join("local").join("locks.json");
    let mut table: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let holds = table["groups"][name]["holds"].as_array_mut().unwrap();
    for lease in holds.iter_mut().map(|h| &mut h["lease"]) {
        if lease["worker_id"] == worker {
            let hb = lease["heartbeat_ms"].as_u64().unwrap();
            lease["heartbeat_ms"] = (hb - by_ms).into();
        }
    }
    std::fs::write(&path, serde_json::to_vec_pretty(&table).unwrap()).unwrap();
}

#[test]
fn run_shared_holds_its_share_while_the_command_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    assert_eq!(code(&fail_fast(d, "r1", "schema", &["--shared"])), 0);
    let status_cmd = format!(
        "{} --data-dir {} --json status schema",
        crate::support::bin().display(),
        d.display()
    );
    let out = run(
        d,
        "r2",
        &[
            "run",
            "schema",
            "--shared",
            "-n",
            "--",
            "sh",
            "-c",
            &status_cmd,
        ],
    );
    assert_eq!(code(&out), 0, "{}", text(&out));
    let inside: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        holders(&inside),
        [("r1".to_string(), 1), ("r2".to_string(), 1)],
        "{inside}"
    );
    // Given back when the command ended; the exclusive `run` is refused meanwhile.
    assert_eq!(holders(&local_status(d, "schema")), [("r1".to_string(), 1)]);
    let out = run(d, "w", &["run", "schema", "-n", "--", "true"]);
    assert_eq!(code(&out), 3, "{}", text(&out));
    let out = run(
        d,
        "s",
        &[
            "run",
            "gpus",
            "--limit",
            "2",
            "--permits",
            "2",
            "-n",
            "--",
            "true",
        ],
    );
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert_eq!(local_status(d, "gpus")["held"], false);
}

#[test]
fn the_janitor_and_steal_stale_end_expired_holds_only() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    for reader in ["r1", "r2"] {
        let out = fail_fast(d, reader, "schema", &["--shared"]);
        assert_eq!(code(&out), 0, "{}", text(&out));
    }
    age_holds(d, "schema", "r1", 120_000);
    let status = local_status(d, "schema");
    assert_eq!(status["holders"][0]["stale"], true, "{status}");
    assert_eq!(status["holders"][1]["stale"], false, "{status}");
    let out = run(d, "janitor", &["--json", "steal-stale", "--all"]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    let swept = stdout_json(&out);
    let actions: Vec<(&str, &str)> = swept["locks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            (
                l["holder"]["worker_id"].as_str().unwrap(),
                l["action"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(actions, [("r1", "released"), ("r2", "live")], "{swept}");
    assert_eq!(holders(&local_status(d, "schema")), [("r2".to_string(), 1)]);
    // Its lease ended: the holder cannot renew it.
    let out = run(d, "r1", &["heartbeat", "--once", "schema"]);
    assert_eq!(code(&out), 4, "{}", text(&out));

    // A live reader is left to its holder; an expired one is taken over.
    let out = run(d, "w", &["steal-stale", "schema"]);
    assert_eq!(code(&out), 3, "{}", text(&out));
    age_holds(d, "schema", "r2", 120_000);
    let out = run(d, "w", &["--json", "steal-stale", "schema"]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert_eq!(stdout_json(&out)["took_over"]["worker_id"], "r2");
    let status = local_status(d, "schema");
    assert_eq!(status["holder"]["worker_id"], "w", "{status}");
}
