//! The GitHub backend through the real binary: the protocol properties of ARCHITECTURE.md one by one.

use std::time::Duration;

use github_emulator::Fault;

use crate::support::{Gh, REPO, code, json_block, stdout_json, text};

fn claim_json(gh: &Gh, token: &str, worker: &str, issue: u64, extra: &[&str]) -> serde_json::Value {
    let issue = issue.to_string();
    let mut args = vec!["claim", issue.as_str(), "--json"];
    args.extend_from_slice(extra);
    let out = gh.run(token, worker, &args);
    assert_eq!(code(&out), 0, "{}", text(&out));
    stdout_json(&out)
}

/// One `claim --strategy fail-fast` attempt.
fn fail_fast(gh: &Gh, token: &str, worker: &str, issue: &str) -> std::process::Output {
    gh.run(token, worker, &["claim", issue, "--strategy", "fail-fast"])
}

/// One `claim --strategy steal-stale` attempt, no retries.
fn steal_stale(gh: &Gh, token: &str, worker: &str, issue: &str) -> std::process::Output {
    let args = [
        "claim",
        issue,
        "--strategy",
        "steal-stale",
        "--max-retries",
        "0",
    ];
    gh.run(token, worker, &args)
}

#[test]
fn claim_status_heartbeat_release_round_trip_within_request_budget() {
    let gh = Gh::new();
    let issue = gh.emu.create_issue(REPO, "Fix the widget");
    let n = issue.to_string();

    gh.emu.clear_requests();
    let claimed = claim_json(
        &gh,
        &gh.alice,
        "w1",
        issue,
        &[
            "--complexity",
            "5",
            "--estimate",
            "45min",
            "--task-type",
            "bug-fix",
            "--priority",
            "high",
        ],
    );
    let claim_requests = gh.count_requests();
    assert!(
        claim_requests <= 4,
        "uncontended claim used {claim_requests} requests: {:#?}",
        gh.emu.requests()
    );
    assert_eq!(claimed["worker_id"], "w1");
    assert_eq!(claimed["adopted"], false);
    let token = claimed["fencing_token"].as_u64().unwrap();
    assert!(token > 1 << 31, "the fencing token is the lock comment id");
    assert_eq!(
        gh.emu.issue_view(REPO, issue).assignees,
        vec!["alice".to_string()]
    );

    // A human reading the issue sees who holds it and until when, beside the JSON.
    let comments = gh.emu.comments(REPO, issue);
    assert_eq!(comments.len(), 1);
    let body = &comments[0].body;
    assert!(body.contains("Locked by `w1`"), "{body}");
    assert!(body.contains("expires"), "{body}");
    let meta = json_block(body);
    assert_eq!(meta["lock"]["task_info"]["complexity"], 5);
    assert_eq!(meta["lock"]["task_info"]["priority"], "high");

    gh.emu.clear_requests();
    let status = gh.run(&gh.bob, "observer", &["status", &n, "--json"]);
    assert_eq!(code(&status), 0, "{}", text(&status));
    let v = stdout_json(&status);
    assert_eq!(v["holder"]["worker_id"], "w1");
    assert_eq!(v["holder"]["fencing_token"].as_u64(), Some(token));
    assert_eq!(v["holder"]["task_info"]["estimated_duration"], "45min");
    // bob's process has never seen his login: one GET /user, then issue + comments.
    let status_requests = gh
        .emu
        .requests()
        .iter()
        .filter(|r| r.path != "/user")
        .count();
    assert!(
        status_requests <= 2,
        "status used {status_requests}: {:#?}",
        gh.emu.requests()
    );

    gh.emu.clear_requests();
    let out = gh.run(&gh.alice, "w1", &["status", &n, "--json"]);
    assert_eq!(code(&out), 0);
    assert!(gh.count_requests() <= 2, "{:#?}", gh.emu.requests());

    gh.emu.clear_requests();
    let hb = gh.run(&gh.alice, "w1", &["heartbeat", &n, "--once", "--json"]);
    assert_eq!(code(&hb), 0, "{}", text(&hb));
    assert_eq!(gh.count_requests(), 1, "{:#?}", gh.emu.requests());
    assert_eq!(stdout_json(&hb)["fencing_token"].as_u64(), Some(token));

    gh.emu.clear_requests();
    let rel = gh.run(&gh.alice, "w1", &["release", &n, "--json"]);
    assert_eq!(code(&rel), 0, "{}", text(&rel));
    assert!(gh.count_requests() <= 2, "{:#?}", gh.emu.requests());
    assert_eq!(stdout_json(&rel)["was_held"], true);
    assert!(gh.emu.issue_view(REPO, issue).assignees.is_empty());
    assert!(gh.held_lock_comments(issue).is_empty());
    assert!(gh.emu.comments(REPO, issue)[0].body.contains("Released"));

    // Releasing again is fine (idempotent), and the issue is free for the next worker.
    let again = gh.run(&gh.alice, "w1", &["release", &n, "--json"]);
    assert_eq!(code(&again), 0, "{}", text(&again));
    assert_eq!(stdout_json(&again)["was_held"], false);
    let next = claim_json(&gh, &gh.bob, "w2", issue, &[]);
    assert!(next["fencing_token"].as_u64().unwrap() > token);
}

#[test]
fn conflicts_exit_3_and_the_same_worker_re_adopts() {
    let gh = Gh::new();
    let issue = gh.emu.create_issue(REPO, "one");
    let n = issue.to_string();
    let first = claim_json(&gh, &gh.alice, "w1", issue, &[]);
    let out = fail_fast(&gh, &gh.bob, "w2", &n);
    assert_eq!(code(&out), 3, "{}", text(&out));
    assert!(text(&out).contains("held by w1"), "{}", text(&out));

    // retry gives up after --max-retries with the same code, without writing while held.
    gh.emu.clear_requests();
    let out = gh.run(
        &gh.bob,
        "w2",
        &[
            "claim",
            &n,
            "--max-retries",
            "2",
            "--initial-backoff",
            "100ms",
        ],
    );
    assert_eq!(code(&out), 3, "{}", text(&out));
    assert!(text(&out).contains("gave up after 3 attempts"));
    let posts = gh.count_method("POST");
    assert!(
        posts <= 1,
        "retries read before writing: {:#?}",
        gh.emu.requests()
    );

    // Same worker id again (e.g. a re-run job): adopts its own lock, same token.
    let again = claim_json(&gh, &gh.alice, "w1", issue, &[]);
    assert_eq!(again["adopted"], true);
    assert_eq!(again["fencing_token"], first["fencing_token"]);
    assert_eq!(gh.held_lock_comments(issue).len(), 1);

    // Someone else cannot release it, but --force can.
    let out = gh.run(&gh.bob, "w2", &["release", &n]);
    assert_eq!(code(&out), 4, "{}", text(&out));
    let out = gh.run(&gh.bob, "w2", &["release", &n, "--force"]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert!(gh.held_lock_comments(issue).is_empty());
    // The forced-out holder learns on its next heartbeat.
    let out = gh.run(&gh.alice, "w1", &["heartbeat", &n, "--once"]);
    assert_eq!(code(&out), 4, "{}", text(&out));
    let out = fail_fast(&gh, &gh.bob, "w3", &n);
    assert_eq!(code(&out), 0, "{}", text(&out));
}

#[test]
fn fencing_tokens_increase_across_grants_steals_and_force() {
    let gh = Gh::new();
    let issue = gh.emu.create_issue(REPO, "fencing");
    let n = issue.to_string();
    let t1 = claim_json(&gh, &gh.alice, "a", issue, &["--ttl", "60s"])["fencing_token"]
        .as_u64()
        .unwrap();
    assert_eq!(code(&gh.run(&gh.alice, "a", &["release", &n])), 0);
    let t2 = claim_json(&gh, &gh.bob, "b", issue, &["--ttl", "60s"])["fencing_token"]
        .as_u64()
        .unwrap();
    // b stops heartbeating; two minutes later on GitHub's clock its lock is stale.
    gh.emu.advance_clock(chrono::Duration::seconds(120));
    let out = fail_fast(&gh, &gh.alice, "c", &n);
    assert_eq!(
        code(&out),
        3,
        "a stale lock still needs steal-stale: {}",
        text(&out)
    );
    assert!(text(&out).contains("steal-stale"));
    let stolen = claim_json(
        &gh,
        &gh.alice,
        "c",
        issue,
        &["--strategy", "steal-stale", "--max-retries", "0"],
    );
    let t3 = stolen["fencing_token"].as_u64().unwrap();
    assert_eq!(stolen["took_over"]["worker_id"], "b");
    let forced = claim_json(&gh, &gh.bob, "d", issue, &["--strategy", "force"]);
    let t4 = forced["fencing_token"].as_u64().unwrap();
    assert!(t1 < t2 && t2 < t3 && t3 < t4, "{t1} {t2} {t3} {t4}");
    assert_eq!(gh.held_lock_comments(issue).len(), 1);
    // Both ousted holders find out on their next heartbeat.
    for w in ["b", "c"] {
        let out = gh.run(&gh.alice, w, &["heartbeat", &n, "--once"]);
        assert_eq!(code(&out), 4, "{w}: {}", text(&out));
    }
    let st = stdout_json(&gh.run(&gh.alice, "x", &["status", &n, "--json"]));
    assert_eq!(st["holder"]["worker_id"], "d");
}

#[test]
fn a_skewed_local_clock_neither_steals_live_locks_nor_keeps_expired_ones() {
    let gh = Gh::new();
    // GitHub's clock runs two hours ahead of this machine's: to a local-clock implementation
    // every fresh lock would look two hours old... or two hours in the future.
    gh.emu.set_clock_offset(chrono::Duration::hours(2));
    let live = gh.emu.create_issue(REPO, "live");
    let n = live.to_string();
    claim_json(&gh, &gh.alice, "holder", live, &["--ttl", "60s"]);
    let out = steal_stale(&gh, &gh.bob, "thief", &n);
    assert_eq!(code(&out), 3, "stole a live lock: {}", text(&out));

    gh.emu.set_clock_offset(chrono::Duration::hours(-2));
    let dead = gh.emu.create_issue(REPO, "dead");
    let n = dead.to_string();
    claim_json(&gh, &gh.alice, "sleepy", dead, &["--ttl", "60s"]);
    let out = steal_stale(&gh, &gh.bob, "thief", &n);
    assert_eq!(code(&out), 3, "stole a live lock: {}", text(&out));
    // 90 s pass on GitHub's clock (none locally): the lease is over, the holder may not renew.
    gh.emu.advance_clock(chrono::Duration::seconds(90));
    let out = gh.run(&gh.alice, "sleepy", &["heartbeat", &n, "--once"]);
    assert_eq!(code(&out), 4, "kept an expired lock: {}", text(&out));
    assert!(text(&out).contains("expired"), "{}", text(&out));
    let out = steal_stale(&gh, &gh.bob, "thief", &n);
    assert_eq!(code(&out), 0, "{}", text(&out));
}

#[test]
fn bots_that_cannot_be_assigned_still_hold_locks() {
    let gh = Gh::new();
    let issue = gh.emu.create_issue(REPO, "bot work");
    let n = issue.to_string();
    let claimed = claim_json(&gh, &gh.bot, "gha-1-1-build-runner-1", issue, &[]);
    assert!(
        gh.emu.issue_view(REPO, issue).assignees.is_empty(),
        "GitHub drops bot assignees"
    );
    // Another job with the same Actions token (GET /user is 403 for it) sees the lock.
    let other = tempfile::tempdir().unwrap();
    let out = gh
        .cmd_in(
            other.path(),
            &gh.bot,
            "gha-1-1-build-runner-2",
            &["claim", &n, "--strategy", "fail-fast"],
        )
        .env("GITHUB_ACTIONS", "true")
        .output()
        .unwrap();
    assert_eq!(code(&out), 3, "{}", text(&out));
    // A collaborator who trusts the workflow identity sees it too.
    let out = gh.run(
        &gh.alice,
        "human",
        &["--trust", "github-actions[bot]", "status", &n, "--json"],
    );
    assert_eq!(
        stdout_json(&out)["holder"]["fencing_token"],
        claimed["fencing_token"]
    );
    let out = gh.run(&gh.bot, "gha-1-1-build-runner-1", &["release", &n]);
    assert_eq!(code(&out), 0, "{}", text(&out));
}

#[test]
fn lock_comments_from_untrusted_authors_are_ignored() {
    let gh = Gh::new();
    let issue = gh.emu.create_issue(REPO, "public");
    let n = issue.to_string();
    // mallory forges a perfect lock comment (copied from a real one).
    let probe = gh.emu.create_issue(REPO, "probe");
    claim_json(&gh, &gh.alice, "real", probe, &[]);
    let forged = gh.emu.comments(REPO, probe)[0]
        .body
        .replace("real", "mallory-worker");
    gh.emu.add_comment(REPO, issue, "mallory", &forged);
    let out = gh.run(
        &gh.alice,
        "w1",
        &["claim", &n, "--strategy", "fail-fast", "--json"],
    );
    assert_eq!(code(&out), 0, "{}", text(&out));
    let st = gh.run(&gh.bob, "obs", &["status", &n, "--json"]);
    let v = stdout_json(&st);
    assert_eq!(v["holder"]["worker_id"], "w1");
    assert_eq!(v["detail"]["ignored"][0]["author"], "mallory");
}

#[test]
fn a_lost_response_never_leaves_two_lock_comments() {
    let gh = Gh::new();
    // The write lands, the response is lost (502): re-read, find it, do not post again.
    let issue = gh.emu.create_issue(REPO, "lost response");
    gh.emu.inject(
        "POST",
        &format!("/issues/{issue}/comments"),
        Fault::ErrorAfterWrite { status: 502 },
        1,
    );
    let v = claim_json(&gh, &gh.alice, "w1", issue, &[]);
    let held = gh.held_lock_comments(issue);
    assert_eq!(
        held,
        vec![(v["fencing_token"].as_u64().unwrap(), "w1".to_string())]
    );
    assert_eq!(
        gh.emu.comments(REPO, issue).len(),
        1,
        "no duplicate comment"
    );

    // The write never landed (502 before it): post again, once.
    let issue = gh.emu.create_issue(REPO, "failed write");
    gh.emu.inject(
        "POST",
        &format!("/issues/{issue}/comments"),
        Fault::ErrorBeforeWrite { status: 502 },
        2,
    );
    claim_json(&gh, &gh.alice, "w1", issue, &[]);
    assert_eq!(gh.emu.comments(REPO, issue).len(), 1);

    // Reads that fail are retried; a backend that stays down is exit 8.
    let issue = gh.emu.create_issue(REPO, "flaky reads");
    gh.emu.inject(
        "GET",
        &format!("/issues/{issue}/comments"),
        Fault::ErrorBeforeWrite { status: 503 },
        2,
    );
    claim_json(&gh, &gh.alice, "w1", issue, &[]);
    let issue = gh.emu.create_issue(REPO, "down");
    gh.emu.inject(
        "GET",
        &format!("/issues/{issue}"),
        Fault::ErrorBeforeWrite { status: 503 },
        100,
    );
    let out = gh.run(&gh.alice, "w1", &["status", &issue.to_string()]);
    assert_eq!(code(&out), 8, "{}", text(&out));
}

#[test]
fn rate_limits_are_waited_out_or_reported() {
    let gh = Gh::new();
    let issue = gh.emu.create_issue(REPO, "limits");
    gh.emu.inject(
        "GET",
        "/comments",
        Fault::SecondaryRateLimit {
            retry_after_secs: 1,
        },
        1,
    );
    claim_json(&gh, &gh.alice, "w1", issue, &[]);
    let limited = gh.emu.requests().iter().filter(|r| r.status == 403).count();
    assert_eq!(limited, 1);

    gh.emu.set_rate_limit(3);
    let mut last = None;
    for _ in 0..3 {
        last = Some(gh.run(&gh.bob, "w2", &["status", &issue.to_string()]));
    }
    let out = last.unwrap();
    assert_eq!(code(&out), 7, "{}", text(&out));
    assert!(text(&out).contains("rate limit"), "{}", text(&out));
    let out = gh.run(&gh.bob, "w2", &["--json", "status", &issue.to_string()]);
    let v = stdout_json(&out);
    assert_eq!(v["error"]["exit_code"], 7);
    let wait = v["error"]["retry_after_secs"].as_u64().unwrap();
    assert!(
        wait > 120 && wait <= 3601,
        "seconds until the limit resets: {wait}"
    );
}

#[test]
fn odd_issues_get_clear_errors_and_leave_nothing_behind() {
    let gh = Gh::new();
    let cases: Vec<(u64, i32, &str, &str)> = vec![
        (
            {
                let i = gh.emu.create_issue(REPO, "closed");
                gh.emu.close_issue(REPO, i);
                i
            },
            2,
            "closed",
            "alice",
        ),
        (
            gh.emu.create_pull_request(REPO, "a PR"),
            2,
            "pull request",
            "alice",
        ),
        (
            {
                let i = gh.emu.create_issue(REPO, "deleted");
                gh.emu.delete_issue(REPO, i);
                i
            },
            6,
            "deleted",
            "alice",
        ),
        (
            {
                let i = gh.emu.create_issue(REPO, "moved");
                gh.emu.transfer_issue(REPO, i, "acme/other");
                i
            },
            6,
            "transferred",
            "alice",
        ),
        (9999, 6, "not found", "alice"),
        (
            {
                let i = gh.emu.create_issue(REPO, "locked");
                gh.emu.lock_issue(REPO, i);
                i
            },
            5,
            "locked",
            "mallory",
        ),
    ];
    for (issue, want, words, who) in cases {
        let token = if who == "mallory" {
            &gh.outsider
        } else {
            &gh.alice
        };
        let out = gh.run(
            token,
            "w1",
            &["claim", &issue.to_string(), "--strategy", "fail-fast"],
        );
        assert_eq!(code(&out), want, "#{issue} ({words}): {}", text(&out));
        assert!(text(&out).contains(words), "#{issue}: {}", text(&out));
        assert!(!text(&out).contains("panicked"));
        if want != 6 {
            assert!(
                gh.held_lock_comments(issue).is_empty(),
                "#{issue} ({words}) kept a lock comment"
            );
        }
    }
    for bad in ["abc", "0", "-3", "12x"] {
        let out = gh.run(&gh.alice, "w1", &["claim", bad]);
        assert_eq!(code(&out), 2, "{bad}: {}", text(&out));
    }
    let out = crate::support::sentinel(gh.data.path())
        .args([
            "--repo",
            "not-a-repo",
            "--api-url",
            &gh.emu.url(),
            "status",
            "1",
        ])
        .output()
        .unwrap();
    assert_eq!(code(&out), 2, "{}", text(&out));
    let out = gh.run(&gh.alice, "w1", &["claim", "1", "--task-info", "{not json"]);
    assert_eq!(code(&out), 2, "{}", text(&out));
}

#[test]
fn thousands_of_comments_and_hand_edited_locks() {
    let gh = Gh::new();
    let issue = gh.emu.create_issue(REPO, "busy");
    for i in 0..1050 {
        gh.emu
            .add_comment(REPO, issue, "bob", &format!("comment {i}"));
    }
    let n = issue.to_string();
    let v = claim_json(&gh, &gh.alice, "w1", issue, &[]);
    let out = fail_fast(&gh, &gh.bob, "w2", &n);
    assert_eq!(
        code(&out),
        3,
        "the lock past page 10 was found: {}",
        text(&out)
    );

    // A human breaks the JSON of the lock comment: it stops counting, loudly, without a panic.
    let id = v["fencing_token"].as_u64().unwrap();
    let body = gh
        .emu
        .comments(REPO, issue)
        .into_iter()
        .find(|c| c.id == id)
        .unwrap()
        .body;
    gh.emu
        .edit_comment(REPO, id, &body.replace("\"worker_id\"", "\"worker\""));
    let out = gh.run(&gh.bob, "w2", &["status", &n, "--json"]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    let st = stdout_json(&out);
    assert_eq!(st["held"], false);
    assert!(
        st["detail"]["ignored"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("malformed")
    );
    let out = fail_fast(&gh, &gh.bob, "w2", &n);
    assert_eq!(code(&out), 0, "{}", text(&out));
}

#[test]
fn tokens_never_appear_in_output_or_logs() {
    let gh = Gh::new();
    let issue = gh.emu.create_issue(REPO, "secret");
    let n = issue.to_string();
    let runs = [
        gh.run(&gh.alice, "w1", &["-vv", "claim", &n]),
        gh.run(&gh.alice, "w1", &["-vv", "--json", "status", &n]),
        gh.run(
            "ghp_wrongtoken0000000000000000",
            "w1",
            &["-vv", "claim", &n],
        ),
        crate::support::sentinel(gh.data.path())
            .args([
                "-vv",
                "--repo",
                REPO,
                "--api-url",
                "http://127.0.0.1:9",
                "status",
                &n,
            ])
            .env("SENTINEL_TOKEN", &gh.alice)
            .output()
            .unwrap(),
    ];
    for out in &runs {
        let all = text(out);
        assert!(!all.contains(&gh.alice), "token leaked: {all}");
        assert!(!all.contains("ghp_wrongtoken"), "token leaked: {all}");
    }
    assert_eq!(code(&runs[2]), 5, "{}", text(&runs[2]));
    assert_eq!(code(&runs[3]), 8, "{}", text(&runs[3]));
    let help = std::process::Command::new(crate::support::bin())
        .args(["--help"])
        .env("SENTINEL_TOKEN", "ghp_envsecret")
        .output()
        .unwrap();
    assert!(!text(&help).contains("ghp_envsecret"));
}

#[test]
fn reads_that_lag_writes_do_not_break_exclusion_with_a_settle_pause() {
    let gh = Gh::new();
    gh.emu.set_read_lag(Duration::from_millis(300));
    let issue = gh.emu.create_issue(REPO, "lagging");
    let n = issue.to_string();
    let a = gh.spawn(&gh.alice, "a", &["claim", &n, "--strategy", "fail-fast"]);
    std::thread::sleep(Duration::from_millis(50));
    let b = gh.spawn(&gh.bob, "b", &["claim", &n, "--strategy", "fail-fast"]);
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    let mut codes = [code(&a), code(&b)];
    codes.sort();
    assert_eq!(codes, [0, 3], "a: {}\nb: {}", text(&a), text(&b));
}

#[test]
fn status_without_an_issue_lists_every_held_lock() {
    let gh = Gh::new();
    let issues: Vec<u64> = (0..3)
        .map(|i| gh.emu.create_issue(REPO, &format!("t{i}")))
        .collect();
    for (i, issue) in issues.iter().enumerate() {
        claim_json(&gh, &gh.alice, &format!("w{i}"), *issue, &[]);
    }
    let out = gh.run(&gh.alice, "w1", &["release", &issues[1].to_string()]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    let v = stdout_json(&gh.run(&gh.bob, "obs", &["status", "--json"]));
    let listed: Vec<(String, String)> = v["locks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            (
                l["lock"].as_str().unwrap().to_string(),
                l["holder"]["worker_id"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        listed,
        vec![
            (format!("#{}", issues[0]), "w0".to_string()),
            (format!("#{}", issues[2]), "w2".to_string())
        ]
    );
    let human = gh.run(&gh.bob, "obs", &["status"]);
    let table = String::from_utf8_lossy(&human.stdout);
    assert!(
        table.contains("WORKER")
            && table.contains("w0")
            && table.contains("w2")
            && !table.contains("w1"),
        "{table}"
    );
}

#[test]
fn token_fallbacks_follow_the_documented_order() {
    let gh = Gh::new();
    let issue = gh.emu.create_issue(REPO, "tokens").to_string();
    let with = |vars: &[(&str, &str)], worker: &str| {
        let mut cmd = crate::support::sentinel(gh.data.path());
        cmd.args([
            "--repo",
            REPO,
            "--api-url",
            &gh.emu.url(),
            "--worker-id",
            worker,
        ])
        .args(["claim", &issue, "--strategy", "fail-fast"])
        .env("SENTINEL_SETTLE", "200ms");
        for (k, v) in vars {
            cmd.env(k, v);
        }
        code(&cmd.output().unwrap())
    };
    assert_eq!(with(&[("GH_TOKEN", &gh.alice)], "a"), 0);
    assert_eq!(
        with(&[("GITHUB_TOKEN", &gh.alice), ("GH_TOKEN", "ghp_bad")], "a"),
        0
    );
    assert_eq!(
        with(
            &[("SENTINEL_TOKEN", "ghp_bad"), ("GITHUB_TOKEN", &gh.alice)],
            "a"
        ),
        5
    );
    assert_eq!(with(&[], "b"), 5, "no token: authentication required");
}

#[test]
fn an_expired_own_lock_must_be_taken_over_like_anyone_elses() {
    let gh = Gh::new();
    let issue = gh.emu.create_issue(REPO, "own stale");
    let n = issue.to_string();
    let first = claim_json(&gh, &gh.alice, "w1", issue, &["--ttl", "60s"]);
    gh.emu.advance_clock(chrono::Duration::seconds(120));
    let out = fail_fast(&gh, &gh.alice, "w1", &n);
    assert_eq!(code(&out), 3, "{}", text(&out));
    assert!(text(&out).contains("steal-stale"), "{}", text(&out));
    let again = claim_json(
        &gh,
        &gh.alice,
        "w1",
        issue,
        &["--strategy", "steal-stale", "--max-retries", "0"],
    );
    assert_eq!(again["adopted"], false);
    assert!(again["fencing_token"].as_u64() > first["fencing_token"].as_u64());
    assert_eq!(gh.held_lock_comments(issue).len(), 1);
}

#[test]
fn a_claim_that_cannot_verify_leaves_nothing_behind() {
    let gh = Gh::new();
    let issue = gh.emu.create_issue(REPO, "never listed");
    // Lists lag far longer than sentinel is willing to wait for its own comment.
    gh.emu
        .set_read_lag_range(Duration::from_secs(30), Duration::from_secs(30));
    let out = gh.run(
        &gh.alice,
        "w1",
        &["claim", &issue.to_string(), "--strategy", "fail-fast"],
    );
    assert_eq!(code(&out), 8, "{}", text(&out));
    assert!(
        gh.emu.comments(REPO, issue).is_empty(),
        "the unverified lock comment was withdrawn"
    );
}

#[test]
fn an_interrupted_claim_withdraws_its_comment() {
    let gh = Gh::new();
    let issue = gh.emu.create_issue(REPO, "ctrl-c");
    // Slow reads keep the claim in its verification phase long enough to interrupt it there
    // (the second: the first is its look before writing).
    gh.emu.inject(
        "GET",
        "/comments",
        Fault::Latency(Duration::from_secs(3)),
        2,
    );
    let child = gh.spawn(&gh.alice, "w1", &["-vv", "claim", &issue.to_string()]);
    let start = std::time::Instant::now();
    while gh.emu.comments(REPO, issue).is_empty() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the claim never posted"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // Well inside the window: the settle pause (400 ms) plus the slow read (3 s).
    std::thread::sleep(Duration::from_millis(1000));
    let kill = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let out = child.wait_with_output().unwrap();
    assert_eq!(code(&out), 130, "{}", text(&out));
    assert!(
        gh.emu.comments(REPO, issue).is_empty(),
        "the half-made claim was withdrawn: {}",
        text(&out)
    );
}

#[test]
fn a_release_from_another_machine_cannot_be_undone_by_a_stale_heartbeat() {
    let gh = Gh::new();
    let issue = gh.emu.create_issue(REPO, "two machines");
    let n = issue.to_string();
    claim_json(&gh, &gh.alice, "w1", issue, &[]);
    // The same worker releases from a machine that never saw the claim (no cache there).
    let elsewhere = tempfile::tempdir().unwrap();
    let out = gh
        .cmd_in(elsewhere.path(), &gh.alice, "w1", &["release", &n])
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert!(gh.held_lock_comments(issue).is_empty());
    claim_json(&gh, &gh.bob, "w2", issue, &[]);
    // The first machine still remembers its comment; its heartbeat must not revive it.
    let out = gh.run(&gh.alice, "w1", &["heartbeat", &n, "--once"]);
    assert_eq!(code(&out), 4, "{}", text(&out));
    let st = stdout_json(&gh.run(&gh.bob, "obs", &["status", &n, "--json"]));
    assert_eq!(st["holder"]["worker_id"], "w2");
    assert_eq!(gh.held_lock_comments(issue).len(), 1);
}

#[test]
fn a_claimer_killed_outright_blocks_no_one_past_its_lease() {
    let gh = Gh::new();
    let issue = gh.emu.create_issue(REPO, "kill -9");
    let n = issue.to_string();
    // A slow read holds the claimer between its POST and its verification (the second read:
    // the first is its look before writing).
    gh.emu.inject(
        "GET",
        "/comments",
        Fault::Latency(Duration::from_secs(3)),
        2,
    );
    let mut child = gh.spawn(&gh.alice, "doomed", &["claim", &n, "--ttl", "60s"]);
    let start = std::time::Instant::now();
    while gh.emu.comments(REPO, issue).is_empty() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the claim never posted"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap(); // SIGKILL: no chance to clean up
    child.wait().unwrap();
    let out = fail_fast(&gh, &gh.bob, "next", &n);
    assert_eq!(
        code(&out),
        3,
        "within its lease the orphan still counts: {}",
        text(&out)
    );
    gh.emu.advance_clock(chrono::Duration::seconds(90));
    let out = steal_stale(&gh, &gh.bob, "next", &n);
    assert_eq!(
        code(&out),
        0,
        "past its lease it is taken over: {}",
        text(&out)
    );
    assert_eq!(gh.held_lock_comments(issue).len(), 1);
}
