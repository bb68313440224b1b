//! `steal-stale LOCK` and the janitor `steal-stale --all`, on GitHub and on the local backend,
//! through the real binary.

use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::Duration;

use crate::support::{Gh, REPO, code, json_block, sentinel, stdout_json, text};

fn claim(gh: &Gh, token: &str, worker: &str, issue: u64, extra: &[&str]) -> u64 {
    let n = issue.to_string();
    let mut args = vec!["claim", n.as_str(), "--json"];
    args.extend_from_slice(extra);
    let out = gh.run(token, worker, &args);
    assert_eq!(code(&out), 0, "{}", text(&out));
    stdout_json(&out)["fencing_token"].as_u64().unwrap()
}

/// Every comment of every issue, as they truly are now.
fn snapshot(gh: &Gh, issues: &[u64]) -> BTreeMap<u64, Vec<(u64, String, String)>> {
    issues
        .iter()
        .map(|&i| {
            let comments = gh
                .emu
                .comments(REPO, i)
                .into_iter()
                .map(|c| (c.id, c.body, c.updated_at.to_rfc3339()))
                .collect();
            (i, comments)
        })
        .collect()
}

/// `(lock, action, worker)` of every entry of a `steal-stale --all --json` report.
fn actions(report: &serde_json::Value) -> Vec<(String, String, String)> {
    report["locks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            (
                l["lock"].as_str().unwrap().to_string(),
                l["action"].as_str().unwrap().to_string(),
                l["holder"]["worker_id"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[test]
fn steal_stale_takes_a_free_or_stale_issue_and_refuses_a_live_one() {
    let gh = Gh::new();
    let free = gh.emu.create_issue(REPO, "free");
    let out = gh.run(
        &gh.bob,
        "thief",
        &["steal-stale", &free.to_string(), "--json"],
    );
    assert_eq!(code(&out), 0, "{}", text(&out));
    let v = stdout_json(&out);
    assert_eq!(
        (v["command"].as_str(), v["worker_id"].as_str()),
        (Some("steal-stale"), Some("thief"))
    );
    assert!(v["took_over"].is_null());

    let stale = gh.emu.create_issue(REPO, "stale");
    let n = stale.to_string();
    let victim_token = claim(&gh, &gh.alice, "sleepy", stale, &["--ttl", "60s"]);
    // Two minutes pass on GitHub's clock without a heartbeat.
    gh.emu.advance_clock(chrono::Duration::seconds(120));
    gh.emu.clear_requests();
    let out = gh.run(&gh.bob, "thief", &["steal-stale", &n, "--json"]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    let steal_requests = gh.count_requests();
    println!("requests per steal-stale of a stale lock: {steal_requests}");
    assert!(steal_requests <= 5, "{:#?}", gh.emu.requests());
    let v = stdout_json(&out);
    assert_eq!(v["took_over"]["worker_id"], "sleepy");
    assert_eq!(v["took_over"]["fencing_token"].as_u64(), Some(victim_token));
    assert_eq!(v["took_over"]["stale"], true);
    assert!(v["fencing_token"].as_u64().unwrap() > victim_token);
    assert_eq!(gh.held_lock_comments(stale).len(), 1);
    let out = gh.run(&gh.alice, "sleepy", &["heartbeat", &n, "--once"]);
    assert_eq!(code(&out), 4, "the victim learns it lost: {}", text(&out));
    // Human output names the victim too.
    let again = gh.emu.create_issue(REPO, "stale again");
    claim(&gh, &gh.alice, "dozy", again, &["--ttl", "60s"]);
    gh.emu.advance_clock(chrono::Duration::seconds(120));
    let out = gh.run(&gh.bob, "thief", &["steal-stale", &again.to_string()]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert!(text(&out).contains("Took over from dozy"), "{}", text(&out));

    let live = gh.emu.create_issue(REPO, "live");
    let n = live.to_string();
    let token = claim(&gh, &gh.alice, "busy", live, &[]);
    gh.emu.clear_requests();
    let out = gh.run(&gh.bob, "thief", &["steal-stale", &n]);
    assert_eq!(code(&out), 3, "{}", text(&out));
    assert!(
        text(&out).contains("held by busy") && text(&out).contains("live until"),
        "{}",
        text(&out)
    );
    assert_eq!(
        gh.count_method("POST"),
        0,
        "a live lock is not even raced for"
    );
    assert_eq!(
        gh.held_lock_comments(live),
        vec![(token, "busy".to_string())]
    );
    let out = gh.run(&gh.alice, "busy", &["heartbeat", &n, "--once"]);
    assert_eq!(code(&out), 0, "{}", text(&out));
}

#[test]
fn the_janitor_releases_only_stale_issues_and_leaves_a_record() {
    let gh = Gh::new();
    let stale: Vec<u64> = (0..3)
        .map(|i| gh.emu.create_issue(REPO, &format!("stale {i}")))
        .collect();
    for (i, &issue) in stale.iter().enumerate() {
        let token = if i == 2 { &gh.bob } else { &gh.alice };
        claim(&gh, token, &format!("dead-{i}"), issue, &["--ttl", "60s"]);
    }
    gh.emu.advance_clock(chrono::Duration::seconds(120));
    let live: Vec<u64> = (0..2)
        .map(|i| gh.emu.create_issue(REPO, &format!("live {i}")))
        .collect();
    for (i, &issue) in live.iter().enumerate() {
        claim(&gh, &gh.bob, &format!("alive-{i}"), issue, &[]);
    }
    let released = gh.emu.create_issue(REPO, "released");
    claim(&gh, &gh.alice, "done", released, &[]);
    assert_eq!(
        code(&gh.run(&gh.alice, "done", &["release", &released.to_string()])),
        0
    );
    let free = gh.emu.create_issue(REPO, "never claimed");
    let mut all = stale.clone();
    all.extend(&live);
    all.extend([released, free]);

    // --dry-run lists and changes nothing.
    let before = snapshot(&gh, &all);
    gh.emu.clear_requests();
    let out = gh.run(
        &gh.bob,
        "janitor",
        &["steal-stale", "--all", "--dry-run", "--json"],
    );
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert_eq!(
        gh.count_method("POST") + gh.count_method("PATCH") + gh.count_method("DELETE"),
        0
    );
    assert_eq!(snapshot(&gh, &all), before);
    let report = stdout_json(&out);
    assert_eq!(report["dry_run"], true);
    assert_eq!(report["released"], 0);
    let mut want: Vec<(String, String, String)> = stale
        .iter()
        .enumerate()
        .map(|(i, n)| (format!("#{n}"), "would_release".into(), format!("dead-{i}")))
        .chain(
            live.iter()
                .enumerate()
                .map(|(i, n)| (format!("#{n}"), "live".into(), format!("alive-{i}"))),
        )
        .collect();
    assert_eq!(actions(&report), want);
    let human = gh.run(&gh.bob, "janitor", &["steal-stale", "--all", "--dry-run"]);
    let human = String::from_utf8_lossy(&human.stdout).to_string();
    assert!(
        human.contains(&format!("Would release stale lock #{} of dead-0", stale[0]))
            && human.contains("2 live locks left alone"),
        "{human}"
    );

    // The real run releases the three stale locks and nothing else.
    let live_before = snapshot(&gh, &live);
    gh.emu.clear_requests();
    let out = gh.run(&gh.bob, "janitor", &["steal-stale", "--all", "--json"]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    let requests = gh.count_requests();
    let report = stdout_json(&out);
    assert_eq!(report["released"], 3);
    for w in want.iter_mut().filter(|w| w.1 == "would_release") {
        w.1 = "released".into();
    }
    assert_eq!(actions(&report), want);
    // The listing is one page of recent comments, then one read of each held issue.
    let per_stale = (requests - 1 - live.len()) as f64 / stale.len() as f64;
    println!(
        "janitor: {requests} requests for {} stale and {} live locks = {per_stale:.1} per stale lock beyond the listing (one page) and one read per live lock",
        stale.len(),
        live.len()
    );
    assert!(per_stale <= 5.0, "{:#?}", gh.emu.requests());
    assert_eq!(snapshot(&gh, &live), live_before, "live locks untouched");
    for (i, &issue) in stale.iter().enumerate() {
        assert!(
            gh.held_lock_comments(issue).is_empty(),
            "#{issue} still held"
        );
        assert!(
            gh.emu.issue_view(REPO, issue).assignees.is_empty(),
            "#{issue} still assigned"
        );
        let comments = gh.emu.comments(REPO, issue);
        assert_eq!(comments.len(), 1, "only the record is left on #{issue}");
        let body = &comments[0].body;
        let victim = format!("dead-{i}");
        assert!(
            body.contains(&format!(
                "released stale lock of `{victim}` (last heartbeat "
            )),
            "{body}"
        );
        let meta = json_block(body);
        assert_eq!(meta["lock"]["state"], "released");
        assert_eq!(meta["lock"]["released_by"], "janitor");
        assert_eq!(meta["lock"]["takeover"]["worker_id"], victim.as_str());
        assert_eq!(meta["lock"]["takeover"]["force"], false);
        let token = if i == 2 { &gh.bob } else { &gh.alice };
        let out = gh.run(token, &victim, &["heartbeat", &issue.to_string(), "--once"]);
        assert_eq!(code(&out), 4, "{victim}: {}", text(&out));
        // The issue is free for the next worker.
        claim(&gh, &gh.alice, "next", issue, &["--strategy", "fail-fast"]);
    }
    for (i, &issue) in live.iter().enumerate() {
        let out = gh.run(
            &gh.bob,
            &format!("alive-{i}"),
            &["heartbeat", &issue.to_string(), "--once"],
        );
        assert_eq!(code(&out), 0, "{}", text(&out));
    }
    // Nothing stale is left: a second run changes nothing.
    let out = gh.run(&gh.bob, "janitor", &["steal-stale", "--all"]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("No stale locks."),
        "{}",
        text(&out)
    );
}

#[test]
fn the_janitor_goes_on_past_a_lock_it_cannot_release_then_fails() {
    let gh = Gh::new();
    let broken = gh.emu.create_issue(REPO, "GitHub keeps failing here");
    let fine = gh.emu.create_issue(REPO, "fine");
    claim(&gh, &gh.alice, "dead-1", broken, &["--ttl", "60s"]);
    claim(&gh, &gh.alice, "dead-2", fine, &["--ttl", "60s"]);
    gh.emu.advance_clock(chrono::Duration::seconds(120));
    gh.emu.inject(
        "POST",
        &format!("/issues/{broken}/comments"),
        github_emulator::Fault::ErrorBeforeWrite { status: 502 },
        100,
    );
    let out = gh.run(&gh.bob, "janitor", &["steal-stale", "--all", "--json"]);
    assert_eq!(code(&out), 8, "{}", text(&out));
    let message = stdout_json(&out)["error"]["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        message.contains("released 1 stale lock(s), but could not release")
            && message.contains(&format!("#{broken}: ")),
        "{message}"
    );
    assert!(
        gh.held_lock_comments(fine).is_empty(),
        "the other lock was released"
    );
    assert_eq!(gh.held_lock_comments(broken).len(), 1);
}

/// The janitor's listing lags behind a renewal it could not yet see: the lock looks stale to it,
/// but its holder renewed first. The holder must keep the lock.
#[test]
fn a_holder_renewing_while_the_janitor_looks_keeps_its_lock() {
    let gh = Gh::new();
    let issue = gh.emu.create_issue(REPO, "renewing");
    let n = issue.to_string();
    let token = claim(&gh, &gh.alice, "holder", issue, &["--ttl", "60s"]);
    gh.emu.advance_clock(chrono::Duration::seconds(50));
    // From now on lists show a write only 2 s after it happened.
    let lag = Duration::from_secs(2);
    gh.emu.set_read_lag_range(lag, lag);
    let out = gh.run(&gh.alice, "holder", &["heartbeat", &n, "--once"]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    // 20 s later (GitHub's clock) the renewed lease runs until +110 s, but the lists still show
    // the heartbeat of +0 s, stale since +60 s.
    gh.emu.advance_clock(chrono::Duration::seconds(20));
    let out = gh
        .cmd(&gh.bob, "janitor", &["steal-stale", "--all", "--json"])
        .env("SENTINEL_SETTLE", "2500ms")
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{}", text(&out));
    let report = stdout_json(&out);
    assert_eq!(report["released"], 0, "{report}");
    assert_eq!(
        actions(&report),
        vec![(
            format!("#{issue}"),
            "skipped".to_string(),
            "holder".to_string()
        )]
    );
    assert_eq!(
        gh.held_lock_comments(issue),
        vec![(token, "holder".to_string())]
    );
    assert_eq!(
        gh.emu.comments(REPO, issue).len(),
        1,
        "the notice was withdrawn"
    );
    let out = gh.run(&gh.alice, "holder", &["heartbeat", &n, "--once"]);
    assert_eq!(code(&out), 0, "the holder still holds it: {}", text(&out));
}

fn local(dir: &std::path::Path, worker: &str, args: &[&str]) -> std::process::Output {
    sentinel(dir)
        .args(["--worker-id", worker])
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn local_steal_stale_and_janitor() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let out = local(d, "thief", &["steal-stale", "free", "--json"]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert!(stdout_json(&out)["took_over"].is_null());
    for (name, worker, ttl) in [
        ("stale-a", "dead-a", "1s"),
        ("stale-b", "dead-b", "1s"),
        ("live", "alive", "5m"),
    ] {
        let out = local(d, worker, &["claim", name, "--ttl", ttl]);
        assert_eq!(code(&out), 0, "{}", text(&out));
    }
    std::thread::sleep(Duration::from_millis(1200));

    let out = local(d, "thief", &["steal-stale", "live"]);
    assert_eq!(code(&out), 3, "{}", text(&out));
    assert!(text(&out).contains("held by alive"), "{}", text(&out));
    let out = local(d, "thief", &["steal-stale", "stale-a", "--json"]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert_eq!(stdout_json(&out)["took_over"]["worker_id"], "dead-a");
    assert_eq!(
        code(&local(d, "dead-a", &["heartbeat", "stale-a", "--once"])),
        4
    );

    let status = |d| stdout_json(&local(d, "observer", &["status", "--json"]));
    let before = status(d);
    let out = local(
        d,
        "janitor",
        &["steal-stale", "--all", "--dry-run", "--json"],
    );
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert_eq!(status(d), before, "--dry-run changes nothing");
    let dry = stdout_json(&out);
    let listed = |v: &serde_json::Value| -> Vec<(String, String)> {
        actions(v).into_iter().map(|(l, a, _)| (l, a)).collect()
    };
    assert_eq!(
        listed(&dry),
        [
            ("free", "live"),
            ("live", "live"),
            ("stale-a", "live"),
            ("stale-b", "would_release")
        ]
        .map(|(l, a)| (l.to_string(), a.to_string()))
    );
    let out = local(d, "janitor", &["steal-stale", "--all"]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("Released stale lock stale-b of dead-b"),
        "{}",
        text(&out)
    );
    let after: Vec<String> = status(d)["locks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["lock"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(after, ["free", "live", "stale-a"]);
    assert_eq!(
        code(&local(d, "dead-b", &["heartbeat", "stale-b", "--once"])),
        4
    );
    assert_eq!(
        code(&local(d, "alive", &["heartbeat", "live", "--once"])),
        0
    );
}

/// Locally a stale holder cannot renew, so the race that matters is a stale lock taken over by
/// a new worker between the janitor's listing and its release: the new, live holder must keep it.
#[test]
fn local_janitors_never_release_the_worker_that_took_a_stale_lock_over() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for round in 0..4 {
        let name = format!("hot-{round}");
        assert_eq!(code(&local(d, "old", &["claim", &name, "--ttl", "1s"])), 0);
        std::thread::sleep(Duration::from_millis(1050));
        let spawn = |worker: &str, args: &[&str]| {
            sentinel(d)
                .args(["--worker-id", worker, "--json"])
                .args(args)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        };
        let mut children: Vec<_> = (0..3)
            .map(|i| spawn(&format!("janitor-{i}"), &["steal-stale", "--all"]))
            .collect();
        children.push(spawn("thief", &["steal-stale", &name, "--ttl", "5m"]));
        let outs: Vec<_> = children
            .into_iter()
            .map(|c| c.wait_with_output().unwrap())
            .collect();
        for out in &outs {
            assert_eq!(code(out), 0, "{}", text(out));
        }
        let released: u64 = outs[..3]
            .iter()
            .map(|o| stdout_json(o)["released"].as_u64().unwrap())
            .sum();
        assert!(released <= 1, "one stale lock, released {released} times");
        let out = local(d, "thief", &["heartbeat", &name, "--once"]);
        assert_eq!(
            code(&out),
            0,
            "round {round}: the new holder lost its lock: {}",
            text(&out)
        );
    }
}
