//! The embedded local backend through the real binary: many processes, crashes, leases.

use std::process::Stdio;
use std::time::Duration;

use crate::support::{age_local_lock, code, sentinel, sole_winner, stdout_json, text, wait_all};

fn local(dir: &std::path::Path, worker: &str, args: &[&str]) -> std::process::Command {
    let mut cmd = sentinel(dir);
    cmd.args(["--worker-id", worker]).args(args);
    cmd
}

#[test]
fn sixteen_processes_claim_one_name_exactly_one_wins() {
    for round in 0..5 {
        let dir = tempfile::tempdir().unwrap();
        let name = format!("build-{round}");
        let children: Vec<_> = (0..16)
            .map(|i| {
                local(
                    dir.path(),
                    &format!("w{i}"),
                    &["claim", &name, "--strategy", "fail-fast", "--json"],
                )
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
            })
            .collect();
        let winner = sole_winner(&wait_all(children));
        let st = stdout_json(
            &local(dir.path(), "observer", &["status", &name, "--json"])
                .output()
                .unwrap(),
        );
        assert_eq!(st["holder"]["worker_id"], format!("w{winner}"));
        assert_eq!(st["holder"]["fencing_token"], 1);
    }
}

#[test]
fn leases_strategies_and_fencing_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let run = |worker: &str, args: &[&str]| local(d, worker, args).output().unwrap();

    let a = stdout_json(&run("a", &["claim", "db-migrate", "--ttl", "1s", "--json"]));
    let t1 = a["fencing_token"].as_u64().unwrap();
    let again = stdout_json(&run("a", &["claim", "db-migrate", "--ttl", "1s", "--json"]));
    assert_eq!(again["adopted"], true);
    assert_eq!(again["fencing_token"].as_u64(), Some(t1));
    assert_eq!(
        code(&run(
            "b",
            &["claim", "db-migrate", "--strategy", "fail-fast"]
        )),
        3
    );
    assert_eq!(code(&run("b", &["release", "db-migrate"])), 4);

    age_local_lock(d, "db-migrate", 1_200);
    // Stale now: plain claims still wait, the holder may not renew, steal-stale takes it.
    let out = run("b", &["claim", "db-migrate", "--strategy", "fail-fast"]);
    assert_eq!(code(&out), 3);
    assert!(text(&out).contains("steal-stale"), "{}", text(&out));
    assert_eq!(code(&run("a", &["heartbeat", "db-migrate", "--once"])), 4);
    let b = stdout_json(&run(
        "b",
        &["claim", "db-migrate", "--strategy", "steal-stale", "--json"],
    ));
    let t2 = b["fencing_token"].as_u64().unwrap();
    assert_eq!(b["took_over"]["worker_id"], "a");
    let c = stdout_json(&run(
        "c",
        &["claim", "db-migrate", "--strategy", "force", "--json"],
    ));
    let t3 = c["fencing_token"].as_u64().unwrap();
    assert!(t1 < t2 && t2 < t3);
    assert_eq!(code(&run("b", &["heartbeat", "db-migrate", "--once"])), 4);
    assert_eq!(code(&run("c", &["heartbeat", "db-migrate", "--once"])), 0);
    assert_eq!(code(&run("c", &["release", "db-migrate"])), 0);
    assert_eq!(
        code(&run("c", &["release", "db-migrate"])),
        0,
        "release is idempotent"
    );
    let st = stdout_json(&run("x", &["status", "--json"]));
    assert_eq!(st["locks"].as_array().unwrap().len(), 0);
    let d4 = stdout_json(&run("d", &["claim", "db-migrate", "--json"]));
    assert!(d4["fencing_token"].as_u64().unwrap() > t3);
}

#[test]
fn bad_names_and_options_are_usage_errors() {
    let dir = tempfile::tempdir().unwrap();
    let long = "x".repeat(257);
    for args in [
        vec!["claim", long.as_str()],
        vec!["claim", "a\u{7}b"],
        vec!["claim", "ok", "--ttl", "soon"],
        vec!["claim", "ok", "--ttl", "0s"],
        vec!["claim", "ok", "--strategy", "sometimes"],
        vec!["claim", "ok", "--task-info", "[1,2]"],
        vec!["--backend", "server", "claim", "ok"],
        vec!["frobnicate"],
    ] {
        let out = local(dir.path(), "w", &args).output().unwrap();
        assert_eq!(code(&out), 2, "{args:?}: {}", text(&out));
        assert!(!text(&out).contains("panicked"));
    }
    let out = local(dir.path(), "w", &["--json", "claim", &long])
        .output()
        .unwrap();
    let v = stdout_json(&out);
    assert_eq!(v["ok"], false);
    assert_eq!(v["error"]["exit_code"], 2);
}

#[test]
fn processes_killed_mid_claim_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    for round in 0..4 {
        let children: Vec<_> = (0..12)
            .map(|i| {
                local(
                    dir.path(),
                    &format!("w{round}-{i}"),
                    &["claim", &format!("job-{round}-{i}"), "--json"],
                )
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .unwrap()
            })
            .collect();
        // Kill every other process at a moment somewhere inside its run.
        std::thread::sleep(Duration::from_millis(2 + 3 * round as u64));
        let mut finished = Vec::new();
        for (i, mut child) in children.into_iter().enumerate() {
            if i % 2 == 0 {
                let _ = child.kill();
            }
            let out = child.wait_with_output().unwrap();
            if out.status.success() {
                finished.push(format!("job-{round}-{i}"));
            }
        }
        let st = local(dir.path(), "observer", &["status", "--json"])
            .output()
            .unwrap();
        assert_eq!(code(&st), 0, "state survived: {}", text(&st));
        let listed: Vec<String> = stdout_json(&st)["locks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["lock"].as_str().unwrap().to_string())
            .collect();
        for name in &finished {
            assert!(
                listed.contains(name),
                "{name} was granted but is missing: {listed:?}"
            );
        }
    }
}

#[test]
fn default_worker_ids_differ_per_actions_job_and_runner() {
    let dir = tempfile::tempdir().unwrap();
    let id = |job: &str, runner: &str| {
        let out = sentinel(dir.path())
            .args(["claim", &format!("{job}-{runner}"), "--json"])
            .env("GITHUB_ACTIONS", "true")
            .env("GITHUB_RUN_ID", "42")
            .env("GITHUB_RUN_ATTEMPT", "1")
            .env("GITHUB_JOB", job)
            .env("RUNNER_NAME", runner)
            .output()
            .unwrap();
        stdout_json(&out)["worker_id"].as_str().unwrap().to_string()
    };
    let a = id("build", "runner-1");
    assert_eq!(a, "gha-42-1-build-runner-1");
    assert_ne!(a, id("build", "runner-2"));
    assert_ne!(a, id("test", "runner-1"));
}

#[test]
fn inside_actions_results_go_to_the_runner_files() {
    let dir = tempfile::tempdir().unwrap();
    let output = dir.path().join("output");
    let summary = dir.path().join("summary");
    let run = |args: &[&str]| {
        local(dir.path(), "job-1", args)
            .env("GITHUB_ACTIONS", "true")
            .env("GITHUB_OUTPUT", &output)
            .env("GITHUB_STEP_SUMMARY", &summary)
            .output()
            .unwrap()
    };
    assert_eq!(code(&run(&["claim", "deploy"])), 0);
    let written = std::fs::read_to_string(&output).unwrap();
    for line in [
        "acquired=true\n",
        "lock=deploy\n",
        "holder=job-1\n",
        "fencing_token=1\n",
        "worker_id=job-1\n",
    ] {
        assert!(written.contains(line), "{line} missing from {written}");
    }
    let table = std::fs::read_to_string(&summary).unwrap();
    assert!(
        table.contains("| sentinel | lock | worker | fencing token | expires |")
            && table.contains("| 🔒 claimed | deploy | `job-1` | 1 |"),
        "{table}"
    );
    let failed = local(
        dir.path(),
        "job-2",
        &["--json", "claim", "deploy", "--strategy", "fail-fast"],
    )
    .env("GITHUB_ACTIONS", "true")
    .env("GITHUB_OUTPUT", &output)
    .output()
    .unwrap();
    assert_eq!(code(&failed), 3);
    assert!(
        std::fs::read_to_string(&output)
            .unwrap()
            .ends_with("acquired=false\n")
    );
    assert_eq!(stdout_json(&failed)["error"]["exit_code"], 3);
    assert!(
        String::from_utf8_lossy(&failed.stderr)
            .contains("::error title=sentinel::deploy is held by job-1")
    );
}
