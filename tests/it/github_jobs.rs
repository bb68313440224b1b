//! Actions-aware liveness (issue 14), through the real binary against the emulator's Actions
//! jobs endpoints: a claim made inside a workflow job records the job, and a lock whose job has
//! completed is free for `--strategy steal-stale` at once whatever its TTL, while a lock whose job
//! still runs stays live past its TTL; a token without `actions: read` falls back to the TTL rule.

use std::process::{Command, Output};

use serde_json::Value;

use crate::support::{Gh, REPO, code, json_block, stdout_json, text};

const RUN: u64 = 4_242_001;

/// The environment GitHub Actions gives every step of job `job` (its YAML key) of attempt 1 of
/// run [`RUN`], on runner `runner`.
fn in_job(mut cmd: Command, job: &str, runner: &str) -> Command {
    cmd.env("GITHUB_ACTIONS", "true")
        .env("GITHUB_RUN_ID", RUN.to_string())
        .env("GITHUB_RUN_ATTEMPT", "1")
        .env("GITHUB_JOB", job)
        .env("RUNNER_NAME", runner);
    cmd
}

/// alice's worker `holder` claims `issue` from inside job `build` on `runner-7` (which the
/// emulator runs) with `ttl`; returns the job's id and the grant's fencing token.
fn claim_in_job(gh: &Gh, issue: u64, ttl: &str) -> (u64, u64) {
    let job = gh.emu.start_job(REPO, RUN, 1, "build", "runner-7");
    let n = issue.to_string();
    let cmd = gh.cmd(&gh.alice, "holder", &["claim", &n, "--ttl", ttl, "--json"]);
    let out = in_job(cmd, "build", "runner-7").output().unwrap();
    assert_eq!(code(&out), 0, "{}", text(&out));
    (job, stdout_json(&out)["fencing_token"].as_u64().unwrap())
}

/// bob's worker `thief`, outside Actions, with one steal-stale attempt.
fn steal_once(gh: &Gh, issue: u64) -> Output {
    let n = issue.to_string();
    gh.run(
        &gh.bob,
        "thief",
        &[
            "claim",
            &n,
            "--strategy",
            "steal-stale",
            "--max-retries",
            "0",
            "--json",
        ],
    )
}

/// Requests to the Actions endpoints since the last `clear_requests`, with their statuses.
fn actions_requests(gh: &Gh) -> Vec<u16> {
    gh.emu
        .requests()
        .iter()
        .filter(|r| r.path.contains("/actions/"))
        .map(|r| r.status)
        .collect()
}

#[test]
fn a_claim_inside_a_job_records_the_job_in_its_lock_comment() {
    let gh = Gh::new();
    let issue = gh.emu.create_issue(REPO, "build it");
    let (_, token) = claim_in_job(&gh, issue, "10m");
    let comment = gh
        .emu
        .comments(REPO, issue)
        .into_iter()
        .find(|c| c.id == token)
        .expect("the lock comment");
    let lock = &json_block(&comment.body)["lock"];
    assert_eq!(
        lock["actions_job"],
        serde_json::json!({
            "run_id": RUN,
            "run_attempt": 1,
            "job": "build",
            "runner_name": "runner-7",
        }),
        "{}",
        comment.body
    );
    assert!(
        comment
            .body
            .contains("held by GitHub Actions job 'build' of run 4242001 attempt 1"),
        "people see it too: {}",
        comment.body
    );

    // A renewal from the same job keeps it; a claim outside Actions records none.
    let n = issue.to_string();
    let cmd = gh.cmd(&gh.alice, "holder", &["heartbeat", &n, "--once"]);
    let out = in_job(cmd, "build", "runner-7").output().unwrap();
    assert_eq!(code(&out), 0, "{}", text(&out));
    let body = &gh.emu.comments(REPO, issue)[0].body;
    assert_eq!(json_block(body)["lock"]["actions_job"]["job"], "build");
    let plain = gh.emu.create_issue(REPO, "by hand");
    let out = gh.run(&gh.alice, "laptop", &["claim", &plain.to_string()]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    let body = &gh.emu.comments(REPO, plain)[0].body;
    assert!(
        json_block(body)["lock"].get("actions_job").is_none(),
        "{body}"
    );
}

#[test]
fn a_lock_whose_job_completed_is_taken_over_at_once_whatever_its_ttl() {
    let gh = Gh::new();
    let issue = gh.emu.create_issue(REPO, "deploy");
    let (job, victim) = claim_in_job(&gh, issue, "1h");
    // The job dies (a cancelled run, a crashed runner) without releasing its lock.
    gh.emu.complete_job(job, "failure");

    let out = steal_once(&gh, issue);
    assert_eq!(code(&out), 0, "{}", text(&out));
    let v = stdout_json(&out);
    assert_eq!(v["took_over"]["worker_id"], "holder", "{v}");
    assert_eq!(v["took_over"]["fencing_token"].as_u64(), Some(victim));
    assert_eq!(v["took_over"]["stale"], true, "{v}");
    assert_eq!(
        v["took_over"]["liveness"],
        "job 'build' of run 4242001 attempt 1 completed (failure)"
    );
    assert!(
        v["fencing_token"].as_u64().unwrap() > victim,
        "a larger fencing token: {v}"
    );
    assert_eq!(
        gh.held_lock_comments(issue),
        vec![(v["fencing_token"].as_u64().unwrap(), "thief".to_string())]
    );
    let out = gh.run(
        &gh.alice,
        "holder",
        &["heartbeat", &issue.to_string(), "--once"],
    );
    assert_eq!(code(&out), 4, "the holder learns it lost: {}", text(&out));
}

#[test]
fn a_lock_whose_job_is_still_running_stays_live_past_its_ttl() {
    let gh = Gh::new();
    let issue = gh.emu.create_issue(REPO, "long build");
    let (_, token) = claim_in_job(&gh, issue, "60s");
    // The lease ran out on GitHub's clock, but the job is still in progress.
    gh.emu.advance_clock(chrono::Duration::seconds(120));

    let out = steal_once(&gh, issue);
    assert_eq!(code(&out), 3, "{}", text(&out));
    assert!(
        text(&out).contains("job 'build' of run 4242001 attempt 1 is in progress"),
        "{}",
        text(&out)
    );
    let n = issue.to_string();
    let out = gh.run(&gh.bob, "thief", &["claim", &n, "--strategy", "fail-fast"]);
    assert_eq!(code(&out), 3, "{}", text(&out));
    assert_eq!(
        gh.held_lock_comments(issue),
        vec![(token, "holder".to_string())]
    );

    let out = gh.run(&gh.bob, "observer", &["status", &n, "--json"]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    let holder = &stdout_json(&out)["holder"];
    assert_eq!(holder["stale"], false, "{holder}");
    assert_eq!(
        holder["liveness"],
        "job 'build' of run 4242001 attempt 1 is in progress"
    );
}

#[test]
fn without_actions_read_the_ttl_rule_decides() {
    let gh = Gh::new();
    gh.emu.deny_actions_read("bob");
    let issue = gh.emu.create_issue(REPO, "deploy");
    let (job, victim) = claim_in_job(&gh, issue, "1h");
    gh.emu.complete_job(job, "cancelled");

    // A live lease: held, however many times bob asks; GitHub is asked once and the refusal
    // remembered.
    gh.emu.clear_requests();
    let n = issue.to_string();
    let out = gh.run(
        &gh.bob,
        "thief",
        &[
            "claim",
            &n,
            "--strategy",
            "steal-stale",
            "--max-retries",
            "2",
            "--initial-backoff",
            "10ms",
            "--max-backoff",
            "10ms",
        ],
    );
    assert_eq!(code(&out), 3, "{}", text(&out));
    assert_eq!(actions_requests(&gh), [403], "{:#?}", gh.emu.requests());
    assert!(text(&out).contains("live until"), "{}", text(&out));

    // A lease that ran out: taken, as before.
    gh.emu.advance_clock(chrono::Duration::seconds(3700));
    let out = steal_once(&gh, issue);
    assert_eq!(code(&out), 0, "{}", text(&out));
    let v = stdout_json(&out);
    assert_eq!(v["took_over"]["fencing_token"].as_u64(), Some(victim));
    assert!(v["took_over"].get("liveness").is_none(), "{v}");
}

#[test]
fn status_says_why_a_lock_of_a_completed_job_is_stale() {
    let gh = Gh::new();
    let issue = gh.emu.create_issue(REPO, "release");
    let (job, token) = claim_in_job(&gh, issue, "1h");
    gh.emu.complete_job(job, "failure");
    let why = "job 'build' of run 4242001 attempt 1 completed (failure)";
    let n = issue.to_string();

    let out = gh.run(&gh.bob, "observer", &["status", &n]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert!(
        text(&out).contains(&format!("stale: {why}")),
        "{}",
        text(&out)
    );
    let out = gh.run(&gh.bob, "observer", &["status", &n, "--json"]);
    let holder = &stdout_json(&out)["holder"];
    assert_eq!(
        (&holder["stale"], &holder["liveness"]),
        (&Value::Bool(true), &Value::from(why)),
        "{holder}"
    );

    // Every lock: the table's STATE column and the JSON say the same.
    let out = gh.run(&gh.bob, "observer", &["status"]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    let row = String::from_utf8_lossy(&out.stdout)
        .lines()
        .find(|l| l.starts_with(&format!("#{issue}\t")))
        .unwrap_or_else(|| panic!("no row for #{issue}: {}", text(&out)))
        .to_string();
    assert_eq!(
        row.split('\t').nth(5),
        Some(format!("stale: {why}").as_str())
    );
    let out = gh.run(&gh.bob, "observer", &["status", "--json"]);
    let locks = stdout_json(&out)["locks"].clone();
    assert_eq!(locks[0]["holder"]["fencing_token"].as_u64(), Some(token));
    assert_eq!(locks[0]["holder"]["liveness"], why, "{locks}");

    // The janitor frees it like any stale lock, and says why.
    let out = gh.run(&gh.bob, "janitor", &["steal-stale", "--all"]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert!(text(&out).contains(why), "{}", text(&out));
    assert!(gh.held_lock_comments(issue).is_empty());
}
