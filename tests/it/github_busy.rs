//! The GitHub backend in a busy repository: `status` of every lock, the janitor, `claim --next` and
//! `metrics --repo-wide` must cost a number of requests that does not grow with people's comments
//! (issue 19). Thousands of ordinary comments are seeded straight into the emulator; sentinel's
//! own locks are taken by the real binary, and every count is of the requests the emulator saw.

use std::path::Path;
use std::process::Output;

use crate::support::{Gh, REPO, code, stdout_json, text};

/// Sentinel's locks in every scenario, as in the issue's measurements.
const LOCKS: usize = 20;

/// `sentinel ARGS` by `worker` with bob's token and `data` as data directory: its output and the
/// number of requests it made.
fn measured(gh: &Gh, data: &Path, worker: &str, args: &[&str]) -> (Output, usize) {
    gh.emu.clear_requests();
    let out = gh.cmd_in(data, &gh.bob, worker, args).output().unwrap();
    (out, gh.count_requests())
}

/// A repository of `issues` issues and `chatter` comments by people, the oldest [`LOCKS`] issues
/// locked by sentinel (the oldest of them with a lease that runs out in a minute), measured from a
/// host that keeps its data directory between calls.
fn busy_repository(issues: usize, chatter: usize) {
    let gh = Gh::new();
    gh.emu.set_rate_limit(1_000_000);
    let numbers: Vec<u64> = (0..issues)
        .map(|i| gh.emu.create_issue(REPO, &format!("task {i}")))
        .collect();
    for i in 0..chatter {
        let n = numbers[i % issues];
        gh.emu
            .add_comment(REPO, n, "carol", "Any news on this one?");
    }
    let claims: Vec<_> = numbers[..LOCKS]
        .iter()
        .enumerate()
        .map(|(k, n)| {
            let ttl = if k == 0 { "60s" } else { "1d" };
            gh.spawn(
                &gh.alice,
                &format!("w{k}"),
                &["claim", &n.to_string(), "--ttl", ttl],
            )
        })
        .collect();
    for out in crate::support::wait_all(claims) {
        assert_eq!(code(&out), 0, "{}", text(&out));
    }
    let first_free = numbers[LOCKS];
    // A lock comment forged by someone without write access, copied from a real one: it must
    // neither show as a lock nor keep the issue from the queue.
    let real = gh.emu.comments(REPO, numbers[1]).pop().unwrap().body;
    gh.emu.add_comment(REPO, first_free, "mallory", &real);

    // The chatter is older than what a listing re-reads for fear of GitHub's lag.
    gh.emu.advance_clock(chrono::Duration::minutes(10));
    let host = tempfile::tempdir().unwrap();
    let d = host.path();
    let (out, cold) = measured(&gh, d, "observer", &["status", "--json"]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    // The first call of a host lists the window in full: 20 lock comments, the forgery and the
    // chatter, 100 a page, and learns who the token is.
    let full = (LOCKS + 1 + chatter).div_ceil(100) + 1;

    // Later calls pay for what changed since: ten minutes and 150 comments of traffic.
    gh.emu.advance_clock(chrono::Duration::minutes(10));
    for i in 0..150 {
        gh.emu
            .add_comment(REPO, numbers[i % issues], "carol", "+1, still happening");
    }
    let budget = 10 + LOCKS.div_ceil(100);

    let (out, status) = measured(&gh, d, "observer", &["status", "--json"]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    let listed = stdout_json(&out);
    let mut held: Vec<u64> = listed["locks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            l["lock"]
                .as_str()
                .unwrap()
                .trim_start_matches('#')
                .parse()
                .unwrap()
        })
        .collect();
    held.sort_unstable();
    assert_eq!(held, numbers[..LOCKS], "{listed:#}");

    let (out, dry) = measured(
        &gh,
        d,
        "janitor",
        &["steal-stale", "--all", "--dry-run", "--json"],
    );
    assert_eq!(code(&out), 0, "{}", text(&out));
    let (out, janitor) = measured(&gh, d, "janitor", &["steal-stale", "--all", "--json"]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert_eq!(
        gh.held_lock_comments(numbers[0]),
        [],
        "the stale lock is released"
    );
    // The janitor's notice is a claim: let it age out of what `claim --next` counts as others
    // claiming right now, so that the queue's order is not spread at random.
    gh.emu.advance_clock(chrono::Duration::seconds(15));
    let (out, next) = measured(&gh, d, "q", &["claim", "--next", "--json"]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    // The oldest issue is free again (the janitor released it); the forgery does not count.
    assert_eq!(stdout_json(&out)["issue"], numbers[0]);
    let (out, next_again) = measured(&gh, d, "q", &["claim", "--next", "--json"]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert_eq!(stdout_json(&out)["issue"], first_free);
    let (out, metrics) = measured(&gh, d, "observer", &["metrics", "--repo-wide", "--json"]);
    assert_eq!(code(&out), 0, "{}", text(&out));

    println!(
        "{issues} issues, {chatter} other comments: first status {cold}; then status {status}, \
         steal-stale --all --dry-run {dry}, steal-stale --all {janitor} (one stale lock), \
         claim --next {next} and {next_again}, metrics --repo-wide {metrics}"
    );
    assert!(
        cold <= full,
        "first status: {cold} requests, at most {full} expected"
    );
    assert!(status <= budget, "status: {status} requests");
    assert!(dry <= budget, "steal-stale --all --dry-run: {dry} requests");
    // Its writes for the one stale lock: notice, read back, delete the stale comment, unassign.
    assert!(
        janitor <= budget + 4,
        "steal-stale --all: {janitor} requests"
    );
    assert!(next <= 10, "claim --next: {next} requests");
    assert!(next_again <= 10, "claim --next: {next_again} requests");
    assert!(metrics <= budget, "metrics --repo-wide: {metrics} requests");
}

#[test]
fn a_quiet_repository() {
    busy_repository(100, 500);
}

#[test]
fn five_thousand_comments_by_people() {
    busy_repository(300, 5_000);
}

#[test]
fn fifty_thousand_comments_by_people() {
    busy_repository(300, 50_000);
}

#[test]
fn a_lock_comment_deleted_by_hand_is_forgotten_within_a_day() {
    let gh = Gh::new();
    let n = gh.emu.create_issue(REPO, "task");
    let out = gh.run(&gh.alice, "w", &["claim", &n.to_string(), "--ttl", "1h"]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    let host = tempfile::tempdir().unwrap();
    let held = |gh: &Gh| {
        let (out, _) = measured(gh, host.path(), "observer", &["status", "--json"]);
        assert_eq!(code(&out), 0, "{}", text(&out));
        stdout_json(&out)["locks"].as_array().unwrap().len()
    };
    assert_eq!(held(&gh), 1);
    let (id, _) = gh.held_lock_comments(n).pop().unwrap();
    gh.emu.delete_comment(REPO, id);
    // A listing cannot show a deletion: the index keeps the lock (now stale) until it is rebuilt.
    gh.emu.advance_clock(chrono::Duration::hours(2));
    assert_eq!(held(&gh), 1);
    // A day on by GitHub's clock (this host's clock stays behind): rebuilt at the next call.
    gh.emu.advance_clock(chrono::Duration::hours(23));
    held(&gh);
    assert_eq!(held(&gh), 0);
}
