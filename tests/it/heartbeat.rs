//! The `heartbeat` sidecar through the real binary: renewals on schedule and at their request
//! cost, loss detected within a beat, clean stops on signals, failures ridden out while the lease
//! lasts and not a moment longer, settings that cannot work refused.

use std::path::Path;
use std::time::{Duration, Instant};

use github_emulator::Fault;

use crate::support::{Gh, REPO, Running, code, local, local_status, stdout_json, text, wait_for};

const SECOND: Duration = Duration::from_secs(1);

/// Claims `name` on the local backend and starts a sidecar on it once the claim is done.
fn local_sidecar(dir: &Path, worker: &str, name: &str, ttl: &str, extra: &[&str]) -> Running {
    let out = local(dir, worker, &["claim", name, "--ttl", ttl])
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{}", text(&out));
    let claimed = local_status(dir, name)["holder"]["heartbeat_last"].clone();
    let mut args = vec!["heartbeat", name, "--json"];
    args.extend_from_slice(extra);
    let sidecar = Running::spawn(&mut local(dir, worker, &args));
    // Signals are only answered once the sidecar listens, which it does before its first renewal.
    wait_for(10 * SECOND, "the first renewal", || {
        local_status(dir, name)["holder"]["heartbeat_last"] != claimed
    });
    sidecar
}

#[test]
fn local_sidecar_keeps_a_short_lease_alive_and_releases_it_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut sidecar = local_sidecar(
        d,
        "w1",
        "job",
        "3s",
        &["--interval", "1s", "--release-on-exit"],
    );
    // More than twice the TTL: without renewals the lease would have run out long ago.
    std::thread::sleep(7 * SECOND);
    assert!(sidecar.is_running());
    let st = local_status(d, "job");
    assert_eq!(st["holder"]["worker_id"], "w1");
    assert_eq!(st["holder"]["stale"], false, "{st}");
    let steal = local(
        d,
        "w2",
        &[
            "claim",
            "job",
            "--strategy",
            "steal-stale",
            "--max-retries",
            "0",
        ],
    )
    .output()
    .unwrap();
    assert_eq!(code(&steal), 3, "a kept lock is live: {}", text(&steal));

    sidecar.signal("TERM");
    let out = sidecar.exit_within(3 * SECOND);
    assert_eq!(code(&out), 0, "{}", text(&out));
    let v = stdout_json(&out);
    assert_eq!(v["stopped_by"], "SIGTERM");
    assert_eq!(v["released"], true);
    assert!(v["renewals"].as_u64().unwrap() >= 6, "{v}");
    assert_eq!(local_status(d, "job")["held"], false);
}

#[test]
fn local_sidecar_stopped_by_sigint_without_release_on_exit_keeps_the_lock() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut sidecar = local_sidecar(d, "w1", "kept", "30s", &[]);
    sidecar.signal("INT");
    let out = sidecar.exit_within(3 * SECOND);
    assert_eq!(code(&out), 0, "{}", text(&out));
    let v = stdout_json(&out);
    assert_eq!(v["stopped_by"], "SIGINT");
    assert_eq!(v["released"], false);
    assert_eq!(
        v["interval_secs"], 10.0,
        "30s, or a third of the TTL if shorter"
    );
    assert_eq!(local_status(d, "kept")["holder"]["worker_id"], "w1");
}

#[test]
fn local_sidecar_exits_4_within_a_beat_when_taken_over_or_force_released() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let taken = local_sidecar(d, "w1", "taken", "30s", &["--interval", "1s"]);
    let freed = local_sidecar(d, "w1", "freed", "30s", &["--interval", "1s"]);
    let force = local(d, "w2", &["claim", "taken", "--strategy", "force"])
        .output()
        .unwrap();
    assert_eq!(code(&force), 0, "{}", text(&force));
    let release = local(d, "w2", &["release", "freed", "--force"])
        .output()
        .unwrap();
    assert_eq!(code(&release), 0, "{}", text(&release));
    for (name, sidecar, words) in [("taken", taken, "w2"), ("freed", freed, "not held")] {
        let out = sidecar.exit_within(3 * SECOND);
        assert_eq!(code(&out), 4, "{name}: {}", text(&out));
        assert!(text(&out).contains(words), "{name}: {}", text(&out));
        assert_eq!(stdout_json(&out)["error"]["kind"], "not_owner");
    }
    // The new holder kept what it took.
    assert_eq!(local_status(d, "taken")["holder"]["worker_id"], "w2");
}

#[test]
fn settings_that_cannot_keep_a_lock_alive_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let out = local(d, "w1", &["claim", "short", "--ttl", "3s"])
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{}", text(&out));
    for (args, words) in [
        (
            vec!["heartbeat", "short", "--interval", "500ms"],
            "at least 1s",
        ),
        (vec!["heartbeat", "short", "--interval", "2s"], "at most 1s"),
        (
            vec!["heartbeat", "short", "--once", "--interval", "1s"],
            "cannot be used",
        ),
        (
            vec!["heartbeat", "short", "--once", "--release-on-exit"],
            "cannot be used",
        ),
    ] {
        let out = local(d, "w1", &args).output().unwrap();
        assert_eq!(code(&out), 2, "{args:?}: {}", text(&out));
        assert!(text(&out).contains(words), "{args:?}: {}", text(&out));
    }
    let out = local(d, "w1", &["claim", "tiny", "--ttl", "2s"])
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{}", text(&out));
    let out = local(d, "w1", &["heartbeat", "tiny"]).output().unwrap();
    assert_eq!(code(&out), 2, "{}", text(&out));
    assert!(text(&out).contains("too short"), "{}", text(&out));
}

/// Claims `issue` for `worker` and starts a sidecar on it once the claim is done; the request
/// log holds only the sidecar's requests from then on.
fn github_sidecar(gh: &Gh, worker: &str, issue: u64, ttl: &str, extra: &[&str]) -> Running {
    let n = issue.to_string();
    let out = gh.run(&gh.alice, worker, &["claim", &n, "--ttl", ttl]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    gh.emu.clear_requests();
    let mut args = vec!["heartbeat", n.as_str(), "--json"];
    args.extend_from_slice(extra);
    let sidecar = Running::spawn(&mut gh.cmd(&gh.alice, worker, &args));
    wait_for(10 * SECOND, "the first renewal", || {
        gh.emu
            .requests()
            .iter()
            .any(|r| r.method == "PATCH" && r.status == 200)
    });
    sidecar
}

#[test]
fn github_sidecar_renews_with_one_comment_edit_per_beat() {
    let gh = Gh::new();
    let issue = gh.emu.create_issue(REPO, "kept alive");
    let mut sidecar = github_sidecar(
        &gh,
        "w1",
        issue,
        "3s",
        &["--interval", "1s", "--release-on-exit"],
    );
    let token = gh.held_lock_comments(issue)[0].0;
    let edits = format!("/repos/{REPO}/issues/comments/{token}");
    std::thread::sleep(7 * SECOND);
    let during = gh.emu.requests();
    assert!(
        during
            .iter()
            .all(|r| r.method == "PATCH" && r.path == edits),
        "only edits of our own comment: {during:#?}"
    );
    assert!((6..=9).contains(&during.len()), "{during:#?}");
    let out = gh.run(
        &gh.bob,
        "thief",
        &[
            "claim",
            &issue.to_string(),
            "--strategy",
            "steal-stale",
            "--max-retries",
            "0",
        ],
    );
    assert_eq!(code(&out), 3, "a kept lock is live: {}", text(&out));

    sidecar.signal("TERM");
    let out = sidecar.exit_within(5 * SECOND);
    assert_eq!(code(&out), 0, "{}", text(&out));
    let v = stdout_json(&out);
    assert_eq!(v["released"], true);
    // Every renewal was one request: the edits of our comment, less the release's own.
    let edited = gh
        .emu
        .requests()
        .iter()
        .filter(|r| r.method == "PATCH" && r.path == edits)
        .count();
    assert_eq!(v["renewals"].as_u64(), Some(edited as u64 - 1), "{v}");
    assert_eq!(gh.emu.comments(REPO, issue).len(), 1, "never a new comment");
    assert!(gh.held_lock_comments(issue).is_empty());
}

#[test]
fn github_sidecar_exits_4_within_a_beat_when_taken_over_or_force_released() {
    let gh = Gh::new();
    let taken = gh.emu.create_issue(REPO, "taken");
    let freed = gh.emu.create_issue(REPO, "freed");
    let a = github_sidecar(&gh, "w1", taken, "30s", &["--interval", "1s"]);
    let b = github_sidecar(&gh, "w2", freed, "30s", &["--interval", "1s"]);
    let started = Instant::now();
    let out = gh.run(
        &gh.bob,
        "w3",
        &["claim", &taken.to_string(), "--strategy", "force"],
    );
    assert_eq!(code(&out), 0, "{}", text(&out));
    let out = gh.run(&gh.bob, "w3", &["release", &freed.to_string(), "--force"]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    for (issue, sidecar) in [(taken, a), (freed, b)] {
        let out = sidecar.exit_within(5 * SECOND);
        assert_eq!(code(&out), 4, "#{issue}: {}", text(&out));
        assert!(text(&out).contains("gone"), "#{issue}: {}", text(&out));
    }
    assert!(started.elapsed() < 8 * SECOND, "{:?}", started.elapsed());
    assert_eq!(gh.held_lock_comments(taken).len(), 1);
    assert!(gh.held_lock_comments(freed).is_empty());
}

#[test]
fn github_sidecar_exits_4_when_its_lease_expired_on_githubs_clock() {
    let gh = Gh::new();
    let issue = gh.emu.create_issue(REPO, "expired");
    let sidecar = github_sidecar(&gh, "w1", issue, "30s", &["--interval", "1s"]);
    // The machine was suspended for a minute and a half: GitHub's clock moved on, ours did not.
    gh.emu.advance_clock(chrono::Duration::seconds(90));
    let out = sidecar.exit_within(5 * SECOND);
    assert_eq!(code(&out), 4, "{}", text(&out));
    assert!(text(&out).contains("expired"), "{}", text(&out));
    assert!(gh.held_lock_comments(issue).is_empty(), "marked released");
}

/// Whether the log has a successful edit after its `after`-th request.
fn renewed_after(gh: &Gh, after: usize) -> bool {
    gh.emu
        .requests()
        .iter()
        .skip(after)
        .any(|r| r.method == "PATCH" && r.status == 200)
}

#[test]
fn github_sidecar_rides_out_5xx_and_a_secondary_limit_shorter_than_the_lease() {
    let gh = Gh::new();
    let issue = gh.emu.create_issue(REPO, "flaky");
    let mut sidecar = github_sidecar(&gh, "w1", issue, "12s", &["--interval", "1s"]);
    // More 502s than one request's own retries (4 attempts): the sidecar must try again itself.
    gh.emu.inject(
        "PATCH",
        "/comments/",
        Fault::ErrorBeforeWrite { status: 502 },
        6,
    );
    let failed = |status: u16| {
        gh.emu
            .requests()
            .iter()
            .rposition(|r| r.status == status)
            .map_or(0, |i| i + 1)
    };
    wait_for(15 * SECOND, "the 502s", || {
        gh.emu.requests().iter().filter(|r| r.status == 502).count() == 6
    });
    wait_for(10 * SECOND, "a renewal after the 502s", || {
        renewed_after(&gh, failed(502))
    });
    gh.emu.inject(
        "PATCH",
        "/comments/",
        Fault::SecondaryRateLimit {
            retry_after_secs: 1,
        },
        1,
    );
    wait_for(5 * SECOND, "the secondary limit", || failed(403) > 0);
    wait_for(5 * SECOND, "a renewal after the secondary limit", || {
        renewed_after(&gh, failed(403))
    });
    assert!(sidecar.is_running());
    let st = stdout_json(&gh.run(&gh.bob, "obs", &["status", &issue.to_string(), "--json"]));
    assert_eq!(st["holder"]["worker_id"], "w1");
    assert_eq!(st["holder"]["stale"], false, "{st}");
    sidecar.signal("TERM");
    let out = sidecar.exit_within(5 * SECOND);
    assert_eq!(code(&out), 0, "{}", text(&out));
}

#[test]
fn github_sidecar_held_off_past_its_lease_by_the_rate_limit_lets_go_when_the_lease_ends() {
    let gh = Gh::new();
    // The claim spends 3 requests of 5 and the sidecar the rest, then every renewal is refused
    // until the hourly window resets, long after the lease.
    gh.emu.set_rate_limit(5);
    let issue = gh.emu.create_issue(REPO, "starved");
    let sidecar = github_sidecar(&gh, "w1", issue, "6s", &["--interval", "1s"]);
    wait_for(10 * SECOND, "the rate limit", || {
        gh.emu.requests().iter().any(|r| r.status == 403)
    });
    let limited = Instant::now();
    let out = sidecar.exit_within(10 * SECOND);
    assert_eq!(code(&out), 4, "{}", text(&out));
    assert!(text(&out).contains("rate limit"), "{}", text(&out));
    // It kept the lock while the lease lasted (the last renewal 2s before the 403, TTL 6s less
    // a 1s margin), then let go instead of waiting an hour or giving up at once with exit 7.
    let held = limited.elapsed();
    assert!(held >= 2 * SECOND && held < 5 * SECOND, "{held:?}");
    assert_eq!(
        gh.emu.requests().iter().filter(|r| r.status == 403).count(),
        1,
        "no request inside the rate-limit window"
    );
}

#[test]
fn github_sidecar_gives_up_when_an_outage_outlasts_the_lease() {
    let gh = Gh::new();
    let issue = gh.emu.create_issue(REPO, "down");
    let sidecar = github_sidecar(&gh, "w1", issue, "4s", &["--interval", "1s"]);
    let down = Instant::now();
    gh.emu.inject(
        "PATCH",
        "/comments/",
        Fault::ErrorBeforeWrite { status: 503 },
        1000,
    );
    let out = sidecar.exit_within(10 * SECOND);
    assert_eq!(code(&out), 4, "{}", text(&out));
    assert!(text(&out).contains("gave up"), "{}", text(&out));
    // It held on while the lease could still be counted on (TTL less a 1s margin, from the last
    // renewal up to a beat before the outage), and let go before GitHub's lease ran out.
    let held = down.elapsed();
    assert!(held >= 2 * SECOND && held < 5 * SECOND, "{held:?}");
}

#[test]
fn github_sidecar_spaces_renewals_out_when_the_rate_limit_runs_low() {
    let gh = Gh::new();
    gh.emu.set_rate_limit(50);
    let issue = gh.emu.create_issue(REPO, "thrifty");
    let mut sidecar = github_sidecar(&gh, "w1", issue, "9s", &["--interval", "1s"]);
    std::thread::sleep(7 * SECOND);
    // 47 requests left for the hour: one a second would run dry in under a minute, so it renews
    // only every TTL/3 = 3s.
    let patches = gh.count_method("PATCH");
    assert!((2..=4).contains(&patches), "{patches} renewals in 7s");
    let st = stdout_json(&gh.run(&gh.bob, "obs", &["status", &issue.to_string(), "--json"]));
    assert_eq!(st["holder"]["stale"], false, "{st}");
    sidecar.signal("TERM");
    let out = sidecar.exit_within(5 * SECOND);
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert!(text(&out).contains("requests left"), "{}", text(&out));
}

/// One sidecar for several locks: it keeps every one of them past their TTL, releases them all
/// on SIGTERM with `--release-on-exit`, and exits 4 as soon as one is taken from it.
#[test]
fn one_local_sidecar_keeps_several_locks_and_stands_or_falls_with_each() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let claim = |name: &str| {
        let out = local(d, "w1", &["claim", name, "--ttl", "3s"])
            .output()
            .unwrap();
        assert_eq!(code(&out), 0, "{}", text(&out));
    };
    for name in ["a", "b", "c"] {
        claim(name);
    }
    let mut sidecar = Running::spawn(&mut local(
        d,
        "w1",
        &["--json", "heartbeat", "a", "b", "--release-on-exit"],
    ));
    std::thread::sleep(7 * SECOND);
    for name in ["a", "b"] {
        let st = local_status(d, name);
        assert_eq!(st["holder"]["stale"], false, "{name} was kept: {st}");
    }
    assert!(local_status(d, "c")["holder"]["stale"] == true, "c was not");
    sidecar.signal("TERM");
    let out = sidecar.exit_within(5 * SECOND);
    assert_eq!(code(&out), 0, "{}", text(&out));
    let v = stdout_json(&out);
    assert_eq!(
        (v["locks"].clone(), v["session"].clone()),
        (serde_json::json!(["a", "b"]), serde_json::Value::Null),
        "{v}"
    );
    assert_eq!(v["released"], serde_json::json!(["a", "b"]), "{v}");
    assert!(v["renewals"].as_u64().unwrap() >= 3, "{v}");
    for name in ["a", "b"] {
        assert_eq!(local_status(d, name)["held"], false, "{name}");
    }

    // Taken from it: exit 4 naming the lock and who took it; the other stays held.
    for name in ["a", "b"] {
        claim(name);
    }
    let sidecar = Running::spawn(&mut local(d, "w1", &["--json", "heartbeat", "a", "b"]));
    std::thread::sleep(SECOND);
    let force = local(d, "w2", &["claim", "b", "--strategy", "force"])
        .output()
        .unwrap();
    assert_eq!(code(&force), 0, "{}", text(&force));
    let out = sidecar.exit_within(5 * SECOND);
    assert_eq!(code(&out), 4, "{}", text(&out));
    assert!(text(&out).contains("w2"), "{}", text(&out));
    assert_eq!(local_status(d, "a")["holder"]["worker_id"], "w1");
}
