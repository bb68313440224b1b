//! A hostile user against the real binary: every input gets a clear error with the documented exit
//! code, never a panic (exit 101), a hang, a half-written state or a leaked secret.

use std::io::Write;
use std::net::TcpListener;
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::support::{Gh, REPO, code, sentinel, stdout_json, text, wait_all};

fn local(dir: &std::path::Path, args: &[&str]) -> std::process::Output {
    sentinel(dir).args(args).output().unwrap()
}

/// Exit code and combined output, asserting it is not a panic.
fn no_panic(out: &std::process::Output) -> i32 {
    let c = code(out);
    assert_ne!(c, 101, "panicked: {}", text(out));
    assert!(!text(out).contains("panicked"), "{}", text(out));
    c
}

#[test]
fn absurd_numbers_are_refused_not_panicked_on() {
    let gh = Gh::new();
    let issue = gh.emu.create_issue(REPO, "numbers");
    let n = issue.to_string();
    let cases: &[&[&str]] = &[
        &["claim", &n, "--ttl", "100000000000000"],
        &["claim", &n, "--initial-backoff", "18446744073709551615"],
        &["claim", &n, "--max-backoff", "18446744073709551615"],
        &["claim", &n, "--ttl", "0"],
    ];
    for args in cases {
        let out = gh.run(&gh.alice, "w", args);
        assert_eq!(no_panic(&out), 2, "{args:?}: {}", text(&out));
    }
    // A huge --since is "everything", not a panic.
    let out = gh.run(&gh.alice, "w", &["status", "--since", "999999999d"]);
    assert_eq!(no_panic(&out), 0, "{}", text(&out));
    assert!(gh.held_lock_comments(issue).is_empty());
}

#[test]
fn bad_repositories_and_api_urls_are_usage_errors_without_secrets() {
    let dir = tempfile::tempdir().unwrap();
    for (repo, api) in [
        ("../x", "https://api.github.com"),
        ("acme/widgets", "http://"),
        ("acme/widgets", "http://127.0.0.1:99999"),
        (
            "acme/widgets",
            "https://user:hunter2@ghe.example.com/api/v3",
        ),
    ] {
        let out = sentinel(dir.path())
            .args(["--repo", repo, "--api-url", api, "status", "1"])
            .env("SENTINEL_TOKEN", "ghp_secret")
            .output()
            .unwrap();
        assert_eq!(no_panic(&out), 2, "{repo} {api}: {}", text(&out));
        assert!(!text(&out).contains("hunter2") && !text(&out).contains("ghp_secret"));
    }
}

#[test]
fn set_but_empty_environment_counts_as_unset() {
    let dir = tempfile::tempdir().unwrap();
    let out = sentinel(dir.path())
        .args(["--json", "claim", "job"])
        .env("GITHUB_REPOSITORY", "")
        .env("SENTINEL_SERVER", "")
        .env("SENTINEL_NODE_ID", "")
        .env("SENTINEL_WORKER_ID", " ")
        .env("GITHUB_API_URL", "")
        .output()
        .unwrap();
    assert_eq!(no_panic(&out), 0, "{}", text(&out));
    let v = stdout_json(&out);
    assert_eq!(v["backend"], "local");
    assert!(!v["node_id"].as_str().unwrap().is_empty());
}

#[test]
fn with_json_every_failure_is_one_json_object() {
    let dir = tempfile::tempdir().unwrap();
    // An argument error: clap's message, as JSON too.
    let out = local(dir.path(), &["--json", "claim", "job", "--bogus"]);
    assert_eq!(no_panic(&out), 2);
    let v = stdout_json(&out);
    assert_eq!(v["ok"], false);
    assert_eq!(v["error"]["kind"], "usage");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("--bogus"),
        "{v}"
    );
    // A closed stdout is not a panic.
    let mut child = sentinel(dir.path())
        .args(["--json", "claim", ""])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    assert_eq!(no_panic(&out), 2);
}

#[test]
fn with_json_a_signal_prints_one_json_object() {
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(
        code(&local(dir.path(), &["--worker-id", "a", "claim", "job"])),
        0
    );
    let child = sentinel(dir.path())
        .args(["--json", "--worker-id", "b", "claim", "job"])
        .args(["--max-retries", "100", "--initial-backoff", "5s"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let out = child.wait_with_output().unwrap();
    assert_eq!(code(&out), 143, "{}", text(&out));
    let v = stdout_json(&out);
    assert_eq!(v["error"]["kind"], "interrupted");
    assert_eq!(v["error"]["exit_code"], 143);
}

/// SIGINT/SIGTERM at any moment of a local claim: afterwards the lock is free, or the claimer
/// reported it (exit 0). Without the undo, some runs exit 130/143 with the lock held for its TTL.
#[test]
fn an_interrupted_local_claim_holds_nothing_or_reports_the_grant() {
    let dir = tempfile::tempdir().unwrap();
    let mut interrupted = 0;
    for round in 0..150u64 {
        let child = sentinel(dir.path())
            .args(["--worker-id", "w", "claim", "job"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(round % 13));
        let sig = if round % 2 == 0 { "-INT" } else { "-TERM" };
        let _ = std::process::Command::new("kill")
            .args([sig, &child.id().to_string()])
            .status();
        let out = child.wait_with_output().unwrap();
        let st = stdout_json(&local(dir.path(), &["--json", "status", "job"]));
        match out.status.code().unwrap_or(128) {
            0 => {
                assert!(String::from_utf8_lossy(&out.stdout).contains("Claimed job"));
                assert_eq!(
                    code(&local(dir.path(), &["--worker-id", "w", "release", "job"])),
                    0
                );
            }
            // Killed before the handlers were installed (128), or interrupted.
            128 | 130 | 143 => {
                interrupted += 1;
                assert_eq!(st["held"], false, "round {round}: {}", text(&out));
            }
            other => panic!("round {round}: exit {other}: {}", text(&out)),
        }
    }
    assert!(
        interrupted > 0,
        "no run was interrupted; the test proves nothing"
    );
}

/// Processes fanned out from one shell share its default worker id; exactly one may hold the lock.
#[test]
fn processes_fanned_out_from_one_shell_do_not_share_a_lock() {
    let dir = tempfile::tempdir().unwrap();
    let children: Vec<_> = (0..32)
        .map(|_| {
            sentinel(dir.path())
                .args(["claim", "shared", "--strategy", "fail-fast"])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let codes: Vec<i32> = wait_all(children).iter().map(code).collect();
    assert_eq!(codes.iter().filter(|&&c| c == 0).count(), 1, "{codes:?}");
    assert_eq!(codes.iter().filter(|&&c| c == 3).count(), 31, "{codes:?}");
    // With an explicit worker id the same worker re-adopts.
    let a = local(dir.path(), &["--worker-id", "me", "claim", "mine"]);
    assert_eq!(code(&a), 0);
    let again = local(
        dir.path(),
        &["--worker-id", "me", "--json", "claim", "mine"],
    );
    assert_eq!(stdout_json(&again)["adopted"], true);
}

#[test]
fn a_github_that_never_answers_times_out_with_a_message() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    // Accept and hold connections without ever answering.
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in listener.incoming().flatten() {
            held.push(s);
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let out = sentinel(dir.path())
        .args(["--repo", REPO, "--api-url", &url, "status", "1"])
        .env("SENTINEL_TOKEN", "t")
        .env("SENTINEL_HTTP_TIMEOUT", "1s")
        .output()
        .unwrap();
    assert_eq!(no_panic(&out), 8, "{}", text(&out));
    assert!(text(&out).contains("timed out"), "{}", text(&out));
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn an_unreachable_github_is_reported_once_without_colour() {
    let port = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let dir = tempfile::tempdir().unwrap();
    let status = |verbosity: &[&str]| {
        sentinel(dir.path())
            .args(verbosity)
            .args([
                "--repo",
                REPO,
                "--api-url",
                &format!("http://127.0.0.1:{port}"),
            ])
            .args(["status", "1"])
            .env("SENTINEL_TOKEN", "t")
            .output()
            .unwrap()
    };
    let out = status(&[]);
    assert_eq!(no_panic(&out), 8, "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(!stderr.contains('\x1b'), "{stderr}");
    // At -v the retries are told, still without colour codes when stderr is not a terminal.
    let verbose = status(&["-v"]);
    let stderr = String::from_utf8_lossy(&verbose.stderr);
    assert!(stderr.contains("retrying"), "{stderr}");
    assert!(!stderr.contains('\x1b'), "{stderr}");
}

#[test]
fn look_alike_names_and_odd_task_info_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    for name in ["   ", "job\u{200B}", "\u{FEFF}job", "job\u{00A0}"] {
        let out = local(dir.path(), &["claim", name]);
        assert_eq!(no_panic(&out), 2, "{name:?}: {}", text(&out));
    }
    let long_worker = "✓".repeat(256);
    let out = local(dir.path(), &["--worker-id", &long_worker, "claim", "ok"]);
    assert_eq!(no_panic(&out), 0, "256 characters fit: {}", text(&out));
    let out = local(
        dir.path(),
        &["--worker-id", &"✓".repeat(257), "claim", "ok2"],
    );
    assert_eq!(no_panic(&out), 2);
    for info in ["[1,2]", r#"{"priorty":"high"}"#] {
        let out = local(dir.path(), &["claim", "t", "--task-info", info]);
        assert_eq!(no_panic(&out), 2, "{info}: {}", text(&out));
    }
    let mut file = tempfile::NamedTempFile::new().unwrap();
    file.write_all(br#"{"task_type":"bug-fix","priority":"high"}"#)
        .unwrap();
    let arg = format!("@{}", file.path().display());
    let out = local(dir.path(), &["--json", "claim", "t", "--task-info", &arg]);
    assert_eq!(no_panic(&out), 0, "{}", text(&out));
    assert_eq!(stdout_json(&out)["holder"]["task_info"]["priority"], "high");
}

#[test]
fn an_expired_heartbeat_gives_advice_that_works() {
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        sentinel(dir.path())
            .args(["--worker-id", "w"])
            .args(args)
            .output()
            .unwrap()
    };
    assert_eq!(code(&run(&["claim", "job", "--ttl", "1s"])), 0);
    crate::support::age_local_lock(dir.path(), "job", 5_000);
    let out = run(&["heartbeat", "job", "--once"]);
    assert_eq!(code(&out), 4);
    assert!(
        text(&out).contains("--strategy steal-stale"),
        "{}",
        text(&out)
    );
    let out = run(&["claim", "job", "--strategy", "steal-stale"]);
    assert_eq!(code(&out), 0, "{}", text(&out));
}

#[test]
fn inside_actions_a_github_claim_names_its_issue() {
    let gh = Gh::new();
    let issue = gh.emu.create_issue(REPO, "actions");
    let out_file = gh.data.path().join("gh-output");
    let out = gh
        .cmd(&gh.alice, "job-1", &["claim", &issue.to_string()])
        .env("GITHUB_ACTIONS", "true")
        .env("GITHUB_OUTPUT", &out_file)
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{}", text(&out));
    let written = std::fs::read_to_string(&out_file).unwrap();
    assert!(written.contains(&format!("issue={issue}\n")), "{written}");
    assert!(written.contains("acquired=true\n"), "{written}");
}
