//! Semaphores (`--limit`, `--permits`) and shared holds (`--shared`) on the local backend,
//! through the real binary: held by several processes of one host at once, as `flock -s` is,
//! with the reservation that keeps a waiting writer from being starved by later readers.

use std::path::Path;
use std::process::{Output, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::support::{Running, code, local, local_status, stdout_json, text, wait_for};

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
fn a_local_semaphore_lets_its_limit_of_permits_be_held_and_no_more() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let out = fail_fast(d, "w1", "builders", &["--limit", "3", "--permits", "2"]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    let first = stdout_json(&out);
    assert_eq!(
        (&first["kind"], &first["limit"], &first["permits"]),
        (&"semaphore".into(), &3.into(), &2.into()),
        "{first}"
    );
    let out = fail_fast(d, "w2", "builders", &["--limit", "3"]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    let second = stdout_json(&out);
    assert!(second["fencing_token"].as_u64() > first["fencing_token"].as_u64());
    // Full: one more permit is a conflict, as a held lock is.
    let out = fail_fast(d, "w3", "builders", &["--limit", "3"]);
    assert_eq!(code(&out), 3, "{}", text(&out));
    // Another limit: a usage error naming both.
    let out = fail_fast(d, "w3", "builders", &["--limit", "5"]);
    assert_eq!(code(&out), 2, "{}", text(&out));
    assert!(
        text(&out).contains("limit 3") && text(&out).contains("not 5"),
        "{}",
        text(&out)
    );

    // The status: kind, limit, a row per hold with its own token, lease and permits.
    let status = local_status(d, "builders");
    assert_eq!(
        (&status["kind"], &status["limit"], &status["held"]),
        (&"semaphore".into(), &3.into(), &true.into()),
        "{status}"
    );
    assert_eq!(status["holder"], Value::Null, "{status}");
    assert_eq!(
        holders(&status),
        [("w1".to_string(), 2), ("w2".to_string(), 1)]
    );
    for (h, claimed) in status["holders"]
        .as_array()
        .unwrap()
        .iter()
        .zip([&first, &second])
    {
        assert_eq!(h["fencing_token"], claimed["fencing_token"], "{status}");
        assert_eq!(h["shared"], false, "{status}");
        assert!(h["expires_at"].is_string(), "{status}");
    }
    assert_eq!(status["queue"], Value::Array(vec![]), "{status}");
    let out = run(d, "w9", &["status", "builders"]);
    assert!(
        text(&out).contains("semaphore of limit 3, 3 permits held"),
        "{}",
        text(&out)
    );
    // The list: a row per hold.
    let all = stdout_json(&run(d, "w9", &["--json", "status"]));
    let listed: Vec<&str> = all["locks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["holder"]["worker_id"].as_str().unwrap())
        .collect();
    assert_eq!(listed, ["w1", "w2"], "{all}");

    // heartbeat and release find this worker's own hold among the others.
    let out = run(d, "w2", &["heartbeat", "--once", "builders"]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    let out = run(d, "w3", &["heartbeat", "--once", "builders"]);
    assert_eq!(code(&out), 4, "{}", text(&out));
    let out = run(d, "w3", &["release", "builders"]);
    assert_eq!(code(&out), 4, "{}", text(&out));
    let out = run(d, "w1", &["--json", "release", "builders"]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert_eq!(stdout_json(&out)["was_held"], true);
    let out = fail_fast(d, "w3", "builders", &["--limit", "3", "--permits", "2"]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert_eq!(
        holders(&local_status(d, "builders")),
        [("w2".to_string(), 1), ("w3".to_string(), 2)]
    );
    // Once every hold is given back the name is free, and may take another limit.
    for w in ["w2", "w3"] {
        assert_eq!(code(&run(d, w, &["release", "builders"])), 0);
    }
    assert_eq!(local_status(d, "builders")["held"], false);
    let out = fail_fast(d, "w4", "builders", &["--limit", "5"]);
    assert_eq!(code(&out), 0, "{}", text(&out));
}

#[test]
fn plain_and_shared_or_semaphore_claims_of_one_name_conflict() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    assert_eq!(code(&fail_fast(d, "x", "plain", &[])), 0);
    for args in [&["--shared"][..], &["--limit", "2"]] {
        let out = fail_fast(d, "y", "plain", args);
        assert_eq!(code(&out), 3, "{args:?}: {}", text(&out));
    }
    let out = fail_fast(d, "y", "plain", &["--limit", "2"]);
    assert!(
        text(&out).contains("held as an exclusive lock"),
        "{}",
        text(&out)
    );
    assert_eq!(code(&fail_fast(d, "x", "read", &["--shared"])), 0);
    assert_eq!(code(&fail_fast(d, "x", "sem", &["--limit", "2"])), 0);
    for (name, args) in [
        ("read", &[][..]),
        ("read", &["--limit", "2"]),
        ("sem", &[]),
        ("sem", &["--shared"]),
    ] {
        let out = fail_fast(d, "y", name, args);
        assert_eq!(code(&out), 3, "{name} {args:?}: {}", text(&out));
    }
    // Shared holds sit together.
    let out = fail_fast(d, "y", "read", &["--shared"]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    let status = local_status(d, "read");
    assert_eq!(status["kind"], "shared", "{status}");
    assert_eq!(
        holders(&status),
        [("x".to_string(), 1), ("y".to_string(), 1)]
    );
    assert!(status["holders"][0]["shared"] == true, "{status}");
    // A plain lock still reads as it always did.
    let status = local_status(d, "plain");
    assert_eq!(
        (&status["kind"], &status["holder"]["worker_id"]),
        (&"exclusive".into(), &"x".into()),
        "{status}"
    );
}

#[test]
fn a_waiting_writer_is_not_starved_by_later_readers() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    for reader in ["r1", "r2"] {
        let out = fail_fast(d, reader, "schema", &["--shared"]);
        assert_eq!(code(&out), 0, "{}", text(&out));
    }
    let out = fail_fast(d, "writer", "schema", &[]);
    assert_eq!(code(&out), 3, "{}", text(&out));
    // A fail-fast claim reserves nothing: a reader still gets in.
    let out = fail_fast(d, "r3", "schema", &["--shared"]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert_eq!(code(&run(d, "r3", &["release", "schema"])), 0);

    let writer = Running::spawn(&mut local(
        d,
        "writer",
        &[
            "--json",
            "claim",
            "schema",
            "--wait",
            "30s",
            "--initial-backoff",
            "50ms",
            "--max-backoff",
            "200ms",
        ],
    ));
    wait_for(Duration::from_secs(20), "the writer to wait", || {
        local_status(d, "schema")["queue"][0]["worker_id"] == "writer"
    });
    // Readers arriving now would fit beside the readers, but the writer came first.
    for reader in ["r3", "r4", "r5"] {
        let out = fail_fast(d, reader, "schema", &["--shared"]);
        assert_eq!(code(&out), 3, "{}", text(&out));
        assert!(
            text(&out).contains("reserved for the waiting exclusive claim of \"writer\""),
            "{}",
            text(&out)
        );
    }
    let status = local_status(d, "schema");
    assert_eq!(status["detail"]["waiting"], 1, "{status}");
    assert_eq!(status["queue"][0]["shared"], false, "{status}");
    for reader in ["r1", "r2"] {
        assert_eq!(code(&run(d, reader, &["release", "schema"])), 0);
    }
    let out = writer.exit_within(Duration::from_secs(30));
    assert_eq!(code(&out), 0, "{}", text(&out));
    let status = local_status(d, "schema");
    assert_eq!(
        (&status["kind"], &status["holder"]["worker_id"]),
        (&"exclusive".into(), &"writer".into()),
        "{status}"
    );
    assert_eq!(
        status["queue"],
        Value::Array(vec![]),
        "the reservation ended: {status}"
    );
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

/// Claims of many processes on one semaphore: never more permits granted at once than its
/// limit, each grant told a distinct token, and this host's counters counting them.
#[test]
fn concurrent_processes_never_hold_more_permits_than_the_limit() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let children: Vec<_> = (0..8)
        .map(|i| {
            local(
                d,
                &format!("w{i}"),
                &["--json", "claim", "pool", "--limit", "3", "-n"],
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
        })
        .collect();
    let outs = crate::support::wait_all(children);
    let granted: Vec<u64> = outs
        .iter()
        .filter(|o| code(o) == 0)
        .map(|o| stdout_json(o)["fencing_token"].as_u64().unwrap())
        .collect();
    assert_eq!(granted.len(), 3, "{outs:?}");
    assert!(outs.iter().all(|o| matches!(code(o), 0 | 3)), "{outs:?}");
    let mut distinct = granted.clone();
    distinct.sort_unstable();
    distinct.dedup();
    assert_eq!(distinct.len(), 3);
    assert_eq!(holders(&local_status(d, "pool")).len(), 3);
    // This host's counters count each hold as an acquisition, each refusal as a conflict, and
    // a worker's release of its permit as a release.
    let holder = outs.iter().position(|o| code(o) == 0).unwrap();
    let out = run(d, &format!("w{holder}"), &["release", "pool"]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    let m = stdout_json(&run(d, "observer", &["metrics", "--json"]));
    for (key, want) in [
        ("total_acquisitions", 3),
        ("total_conflicts", 5),
        ("total_releases", 1),
    ] {
        assert_eq!(m[key], want, "{key}: {m}");
    }
}
