//! The work queue `claim --next` through the real binary: which issue it takes, and many workers
//! draining one backlog.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Output;
use std::time::Duration;

use serde_json::{Value, json};

use crate::support::{Gh, REPO, Running, code, sentinel, stdout_json, text, wait_for};

/// `claim --next ARGS --json` by `worker`: the issue it claimed, or the exit code.
fn next(gh: &Gh, token: &str, worker: &str, args: &[&str]) -> Result<u64, i32> {
    let mut all = vec!["claim", "--next", "--json"];
    all.extend_from_slice(args);
    let out = gh.run(token, worker, &all);
    match code(&out) {
        0 => {
            let v = stdout_json(&out);
            assert_eq!(v["worker_id"], worker);
            assert_eq!(v["lock"], format!("{REPO}#{}", v["issue"]));
            Ok(v["issue"].as_u64().unwrap())
        }
        c => Err(c),
    }
}

#[test]
fn claim_next_takes_the_oldest_free_matching_issue() {
    let gh = Gh::new();
    let issue = |title: &str, labels: &[&str]| {
        let n = gh.emu.create_issue(REPO, title);
        if !labels.is_empty() {
            gh.emu.add_labels(REPO, n, labels);
        }
        n
    };
    let closed = issue("closed", &["bug"]);
    gh.emu.close_issue(REPO, closed);
    let pr = gh.emu.create_pull_request(REPO, "a pull request");
    gh.emu.add_labels(REPO, pr, &["bug"]);
    let stale = issue("stale lock", &["bug"]);
    let live = issue("live lock", &["bug"]);
    let excluded = issue("won't fix", &["bug", "wontfix"]);
    let only_ui = issue("ui only", &["ui"]);
    let bug_ui = issue("bug and ui", &["bug", "ui"]);
    let chatty = issue("bug with comments", &["bug"]);
    gh.emu
        .add_comment(REPO, chatty, "bob", "I can reproduce this");
    let last = issue("last bug", &["Bug"]);

    let claim = |worker: &str, n: u64, extra: &[&str]| {
        let mut args = vec!["claim".to_string(), n.to_string()];
        args.extend(extra.iter().map(|s| s.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = gh.run(&gh.alice, worker, &args);
        assert_eq!(code(&out), 0, "{}", text(&out));
    };
    claim("sleepy", stale, &["--ttl", "60s"]);
    gh.emu.advance_clock(chrono::Duration::seconds(120));
    claim("busy", live, &[]);
    // Nobody else is claiming right now: a worker on its own takes the oldest free issue.
    gh.emu.advance_clock(chrono::Duration::seconds(30));
    gh.emu.clear_requests();

    let q = |args: &[&str]| next(&gh, &gh.bob, "q", args);
    assert_eq!(
        q(&["--label", "bug", "--exclude-label", "wontfix"]),
        Ok(bug_ui),
        "closed issue, pull request, stale and live locks and wontfix skipped"
    );
    // Every --label must be present, and labels match whatever their case.
    assert_eq!(q(&["--label", "ui", "--label", "bug"]), Err(3));
    assert_eq!(q(&["--label", "ui"]), Ok(only_ui));
    let before = gh.count_requests();
    assert_eq!(q(&["--label", "BUG"]), Ok(excluded));
    let requests = gh.count_requests() - before;
    assert!(requests <= 5, "{:#?}", gh.emu.requests());
    // Human output is the issue number alone, for scripts.
    let out = gh.run(&gh.bob, "q", &["claim", "--next", "--exclude-label", "ui"]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        chatty.to_string()
    );
    assert_eq!(q(&[]), Ok(last));
    // Every matching issue is locked now (the stale one too: a stale lock is not free).
    let out = gh.run(&gh.bob, "q", &["claim", "--next", "--label", "bug"]);
    assert_eq!(code(&out), 3, "{}", text(&out));
    assert!(text(&out).contains("no free open issue"), "{}", text(&out));
    assert_eq!(
        gh.held_lock_comments(stale)
            .into_iter()
            .map(|(_, w)| w)
            .collect::<Vec<_>>(),
        ["sleepy"]
    );
    // Skipped from the listing alone: neither written to nor even read.
    for n in [closed, pr, stale, live] {
        let path = format!("/repos/{REPO}/issues/{n}");
        let touched: Vec<_> = gh
            .emu
            .requests()
            .into_iter()
            .filter(|r| r.path == path || r.path.starts_with(&format!("{path}/")))
            .collect();
        assert!(touched.is_empty(), "#{n}: {touched:#?}");
    }
    // The claims are ordinary locks: heartbeat and release work as usual.
    let n = bug_ui.to_string();
    assert_eq!(code(&gh.run(&gh.bob, "q", &["heartbeat", &n, "--once"])), 0);
    assert_eq!(code(&gh.run(&gh.bob, "q", &["release", &n])), 0);
    assert_eq!(q(&["--label", "bug"]), Ok(bug_ui));
}

#[test]
fn claim_next_is_a_usage_error_on_the_local_backend() {
    let dir = tempfile::tempdir().unwrap();
    let out = sentinel(dir.path())
        .args(["--worker-id", "w", "claim", "--next", "--json"])
        .output()
        .unwrap();
    assert_eq!(code(&out), 2, "{}", text(&out));
    assert!(
        stdout_json(&out)["error"]["message"]
            .as_str()
            .unwrap()
            .contains("no queue of work")
    );
    for args in [
        &["claim", "--next", "7"][..],
        &["claim", "--next", "--strategy", "fail-fast"],
        &["claim", "7", "--label", "bug"],
        &["claim", "7", "--fail-label", "broken"],
        &["run", "7", "--retry-failed", "true"],
    ] {
        let out = sentinel(dir.path()).args(args).output().unwrap();
        assert_eq!(code(&out), 2, "{args:?}: {}", text(&out));
    }
}

/// 8 worker processes under two tokens drain 40 issues while lists lag writes: each worker keeps
/// claiming until none is free, keeping its locks. Every issue is claimed exactly once.
#[test]
fn eight_workers_drain_forty_issues_each_claimed_exactly_once() {
    const ISSUES: usize = 40;
    const WORKERS: usize = 8;
    let gh = Gh::new();
    let issues: BTreeSet<u64> = (0..ISSUES)
        .map(|i| gh.emu.create_issue(REPO, &format!("task {i}")))
        .collect();
    gh.emu.set_read_lag(Duration::from_millis(250));
    gh.emu.clear_requests();
    let started = std::time::Instant::now();
    let claimed: Vec<(String, Vec<u64>)> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..WORKERS)
            .map(|i| {
                let gh = &gh;
                s.spawn(move || {
                    let worker = format!("worker-{i}");
                    let token = if i % 2 == 0 { &gh.alice } else { &gh.bob };
                    let data = tempfile::tempdir().unwrap();
                    let mut mine = Vec::new();
                    loop {
                        let out = gh
                            .cmd_in(data.path(), token, &worker, &["claim", "--next", "--json"])
                            .output()
                            .unwrap();
                        match code(&out) {
                            0 => mine.push(stdout_json(&out)["issue"].as_u64().unwrap()),
                            3 => break,
                            c => panic!("{worker}: exit {c}: {}", text(&out)),
                        }
                        assert!(mine.len() <= ISSUES, "{worker} claims forever");
                    }
                    (worker, mine)
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap()).collect()
    });
    let elapsed = started.elapsed();

    let mut owner: BTreeMap<u64, String> = BTreeMap::new();
    for (worker, mine) in &claimed {
        for n in mine {
            if let Some(first) = owner.insert(*n, worker.clone()) {
                panic!("#{n} claimed by {first} and {worker}");
            }
        }
    }
    assert_eq!(owner.keys().copied().collect::<BTreeSet<_>>(), issues);
    for (n, worker) in &owner {
        let held: Vec<String> = gh
            .held_lock_comments(*n)
            .into_iter()
            .map(|(_, w)| w)
            .collect();
        assert_eq!(held, [worker.as_str()], "#{n}");
    }
    let requests = gh.emu.requests();
    let mut by_kind: BTreeMap<String, usize> = BTreeMap::new();
    for r in &requests {
        let kind = if r.path.ends_with("/issues") {
            "list issues"
        } else if r.path.ends_with("/issues/comments") {
            "list lock comments"
        } else if r.path.ends_with("/comments") {
            "read or post an issue's comments"
        } else if r.path.ends_with("/assignees") {
            "assign"
        } else if r.path.contains("/issues/comments/") {
            "delete a losing comment"
        } else {
            "other"
        };
        *by_kind.entry(format!("{} {kind}", r.method)).or_default() += 1;
    }
    let per_issue = requests.len() as f64 / ISSUES as f64;
    let claims: Vec<usize> = claimed.iter().map(|(_, m)| m.len()).collect();
    println!(
        "claim --next: {WORKERS} workers drained {ISSUES} issues in {elapsed:.1?} (claims per worker {claims:?}) \
         with {} requests = {per_issue:.2} per claimed issue, the {WORKERS} final empty-queue runs included; {by_kind:#?}",
        requests.len()
    );
    // How many races are lost depends on how the scheduler interleaves the workers (CI once saw
    // 26 losses and 8.15 requests per issue where this machine sees fewer), so the budget is the
    // protocol's own price for what happened: a run lists the issues and the lock comments (2),
    // an attempt posts, reads back and assigns or deletes (3), a lost race lists the lock
    // comments again (1), and a worker looks itself up once (1). Each worker may spend one read
    // more: a look before writing where the listing cannot vouch for an issue, or a read again
    // past the list lag. One request more per claim or per lost race still fails.
    let losses = by_kind
        .get("DELETE delete a losing comment")
        .copied()
        .unwrap_or(0);
    let budget = 5 * ISSUES + 4 * losses + 4 * WORKERS;
    assert!(
        requests.len() <= budget,
        "{} requests for {ISSUES} claims and {losses} lost races; the protocol's price is {budget}",
        requests.len()
    );
}

/// `run --next` claims like `claim --next`, hands the issue number to the command and releases it
/// when the command ends.
#[test]
fn run_next_works_the_oldest_free_issue_and_releases_it() {
    let gh = Gh::new();
    let other = gh.emu.create_issue(REPO, "not queued");
    let first = gh.emu.create_issue(REPO, "first");
    let second = gh.emu.create_issue(REPO, "second");
    gh.emu.add_labels(REPO, first, &["queue"]);
    gh.emu.add_labels(REPO, second, &["queue"]);
    let seen = gh.data.path().join("seen");
    let script = format!("echo \"$SENTINEL_LOCK\" > {}; exit 5", seen.display());
    let out = gh.run(
        &gh.alice,
        "runner-1",
        &[
            "run", "--next", "--label", "queue", "--", "sh", "-c", &script,
        ],
    );
    assert_eq!(code(&out), 5, "the command's exit code: {}", text(&out));
    assert_eq!(
        std::fs::read_to_string(&seen).unwrap().trim(),
        first.to_string()
    );
    for n in [other, first, second] {
        assert!(gh.held_lock_comments(n).is_empty(), "#{n} is still held");
    }
    // An empty queue: the command never runs, exit 3.
    std::fs::remove_file(&seen).unwrap();
    let out = gh.run(
        &gh.alice,
        "runner-1",
        &[
            "run", "--next", "--label", "nothing", "--", "sh", "-c", &script,
        ],
    );
    assert_eq!(code(&out), 3, "{}", text(&out));
    assert!(!seen.exists());
}

/// `gh.cmd` inside Actions, with the runner's output and summary files in the test's data
/// directory.
fn in_actions(gh: &Gh, worker: &str, args: &[&str]) -> Output {
    gh.cmd(&gh.alice, worker, args)
        .env("GITHUB_ACTIONS", "true")
        .env("GITHUB_OUTPUT", gh.data.path().join("output"))
        .env("GITHUB_STEP_SUMMARY", gh.data.path().join("summary"))
        .output()
        .unwrap()
}

/// A runner file `in_actions` wrote, empty when none was.
fn runner_file(gh: &Gh, name: &str) -> String {
    std::fs::read_to_string(gh.data.path().join(name)).unwrap_or_default()
}

/// Inside Actions, `run --next` writes what `claim --next` writes, so that later steps read the
/// issue from the `run` step's outputs.
#[test]
fn run_next_inside_actions_writes_the_claims_outputs_and_summary() {
    let gh = Gh::new();
    let n = gh.emu.create_issue(REPO, "queued");
    let out = in_actions(&gh, "job-1", &["run", "--next", "--json", "--", "true"]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["issue"], n);
    let token = v["fencing_token"].as_u64().unwrap();
    let written = runner_file(&gh, "output");
    for line in [
        "acquired=true\n".to_string(),
        format!("lock={n}\n"),
        format!("issue={n}\n"),
        "holder=job-1\n".to_string(),
        "worker_id=job-1\n".to_string(),
        format!("fencing_token={token}\n"),
    ] {
        assert!(written.contains(&line), "{line:?} missing from {written:?}");
    }
    let table = runner_file(&gh, "summary");
    assert!(
        table.contains("| sentinel | lock | worker | fencing token | expires |")
            && table.contains(&format!("| 🔒 claimed | {REPO}#{n} | `job-1` | {token} |")),
        "{table}"
    );
    assert!(gh.held_lock_comments(n).is_empty(), "released");
}

/// A command that fails leaves its issue labelled and released; the queue skips it from then on,
/// unless asked to retry failed issues. `--fail-label` names the label, and `''` turns it off.
#[test]
fn a_failing_command_labels_its_issue_and_the_queue_skips_it() {
    let gh = Gh::new();
    let failing = gh.emu.create_issue(REPO, "fails");
    let fine = gh.emu.create_issue(REPO, "works");
    for n in [failing, fine] {
        gh.emu.add_labels(REPO, n, &["queue"]);
    }
    let labels = |n: u64| gh.emu.issue_view(REPO, n).labels;
    let run = |args: &[&str]| {
        let mut all = vec!["run", "--next", "--label", "queue", "--json"];
        all.extend_from_slice(args);
        let out = gh.run(&gh.alice, "w1", &all);
        let v = stdout_json(&out);
        let n = v["issue"].as_u64().unwrap();
        assert!(gh.held_lock_comments(n).is_empty(), "#{n} released");
        (code(&out), n, v["labelled"].clone(), text(&out))
    };
    // With `--fail-label ''` nothing is labelled.
    let (code_, n, labelled, _) = run(&["--fail-label", "", "--", "sh", "-c", "exit 2"]);
    assert_eq!((code_, n, labelled), (2, failing, Value::Null));
    assert_eq!(labels(failing), ["queue"]);
    // By default, `sentinel:failed`.
    let (code_, n, labelled, out) = run(&["--", "sh", "-c", "exit 1"]);
    assert_eq!((code_, n), (1, failing), "the command's exit code: {out}");
    assert_eq!(labelled, "sentinel:failed");
    assert_eq!(labels(failing), ["queue", "sentinel:failed"]);
    assert!(
        out.contains(&format!("labelled #{failing} sentinel:failed")),
        "{out}"
    );

    // The next worker skips the failed issue, though it is older and free.
    let q = |args: &[&str]| next(&gh, &gh.bob, "w2", args);
    assert_eq!(q(&["--label", "queue"]), Ok(fine));
    let out = gh.run(&gh.bob, "w2", &["claim", "--next", "--label", "queue"]);
    assert_eq!(code(&out), 3, "{}", text(&out));
    assert!(
        text(&out).contains(&format!(
            "no free open issue labelled queue in {REPO}: 1 locked (live or stale), 1 labelled sentinel:failed"
        )),
        "{}",
        text(&out)
    );
    assert_eq!(q(&["--label", "queue", "--retry-failed"]), Ok(failing));
    for n in [failing, fine] {
        let out = gh.run(&gh.bob, "w2", &["release", &n.to_string()]);
        assert_eq!(code(&out), 0, "{}", text(&out));
    }
    // Nobody else claiming right now: the oldest free issue, not a random pick among them.
    gh.emu.advance_clock(chrono::Duration::seconds(30));

    // A label of one's own: that one is skipped, and put on.
    let (code_, n, labelled, _) = run(&["--fail-label", "broken", "--", "sh", "-c", "exit 2"]);
    assert_eq!((code_, n, labelled), (2, failing, json!("broken")));
    assert_eq!(labels(failing), ["queue", "sentinel:failed", "broken"]);
    // A command that succeeds, or that a signal passed on to it stopped (a cancelled job), is
    // not a failure of its issue.
    let (code_, n, labelled, _) = run(&["--", "true"]);
    assert_eq!((code_, n, labelled), (0, fine, Value::Null));
    let started = gh.data.path().join("started");
    let script = format!("touch {}; exec sleep 30", started.display());
    let mut runner = Running::spawn(&mut gh.cmd(
        &gh.alice,
        "w1",
        &[
            "run", "--next", "--label", "queue", "--", "sh", "-c", &script,
        ],
    ));
    wait_for(Duration::from_secs(20), "the command", || started.exists());
    runner.signal("TERM");
    let out = runner.exit_within(Duration::from_secs(20));
    assert_eq!(code(&out), 143, "{}", text(&out));
    assert!(gh.held_lock_comments(fine).is_empty(), "released");
    assert_eq!(labels(fine), ["queue"]);
}

/// An empty queue is what a worker draining it waits for: a notice, not an error, exiting with
/// the conflict exit code, and saying why nothing was taken.
#[test]
fn an_empty_queue_is_a_notice_with_the_conflict_exit_code() {
    let gh = Gh::new();
    let not_ready = gh.emu.create_issue(REPO, "not ready");
    let out = in_actions(&gh, "job-1", &["claim", "--next", "--label", "ready"]);
    assert_eq!(code(&out), 3, "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "::notice title=sentinel::no open issue labelled ready in {REPO}\n"
        )),
        "{stderr}"
    );
    assert!(!stderr.contains("::error"), "{stderr}");
    assert!(runner_file(&gh, "output").ends_with("acquired=false\n"));

    let out = in_actions(
        &gh,
        "job-1",
        &[
            "run",
            "--next",
            "--label",
            "ready",
            "--conflict-exit-code",
            "7",
            "--json",
            "--",
            "true",
        ],
    );
    assert_eq!(code(&out), 7, "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("::notice title=sentinel::no open issue labelled ready"),
        "{stderr}"
    );
    assert!(!stderr.contains("::error"), "{stderr}");
    let v = stdout_json(&out);
    assert_eq!(
        (v["ok"].clone(), v["error"]["kind"].clone()),
        (json!(false), json!("conflict"))
    );
    assert_eq!(v["error"]["exit_code"], 7);
    assert!(runner_file(&gh, "output").ends_with("acquired=false\n"));

    // Outside Actions: one plain line, not an error.
    gh.emu.close_issue(REPO, not_ready);
    let out = gh.run(&gh.alice, "w", &["claim", "--next"]);
    assert_eq!(code(&out), 3, "{}", text(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        format!("sentinel: no open issue in {REPO}\n")
    );
    assert!(out.stdout.is_empty());
}
