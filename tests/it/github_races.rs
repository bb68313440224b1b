//! Mutual exclusion under real concurrency: many `sentinel claim` processes against one issue,
//! with GitHub's list lag switched on (ARCHITECTURE.md, "Invariants").

use std::process::Stdio;
use std::time::Duration;

use crate::support::{Gh, REPO, code, sole_winner, stdout_json, wait_all};

/// Rounds per race test; raise with SENTINEL_RACE_ROUNDS for a longer soak.
fn rounds() -> usize {
    std::env::var("SENTINEL_RACE_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(15)
}

/// Starts 16 fail-fast claimers together and checks exactly one wins and every reader agrees.
/// Like jobs on separate runners, every process has its own fresh data directory; `in_actions`
/// runs them as GitHub Actions jobs would (the workflow identity is trusted).
fn race(gh: &Gh, issue: u64, tokens: &[&str], in_actions: bool) {
    let workers: Vec<String> = (0..16).map(|i| format!("racer-{issue}-{i}")).collect();
    let issue_s = issue.to_string();
    let dirs: Vec<tempfile::TempDir> = (0..=16).map(|_| tempfile::tempdir().unwrap()).collect();
    let command = |i: usize, worker: &str, args: &[&str]| {
        let mut cmd = gh.cmd_in(dirs[i].path(), tokens[i % tokens.len()], worker, args);
        if in_actions {
            cmd.env("GITHUB_ACTIONS", "true");
        }
        cmd
    };
    let children: Vec<_> = workers
        .iter()
        .enumerate()
        .map(|(i, w)| {
            command(
                i,
                w,
                &["claim", &issue_s, "--strategy", "fail-fast", "--json"],
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
        })
        .collect();
    let outs = wait_all(children);
    let winner_index = sole_winner(&outs);
    let winner = &workers[winner_index];
    let granted = stdout_json(&outs[winner_index]);
    assert_eq!(granted["worker_id"], winner.as_str());
    let token = granted["fencing_token"].as_u64().unwrap();

    let status = command(16, "observer", &["status", &issue_s, "--json"])
        .output()
        .unwrap();
    assert_eq!(code(&status), 0);
    let status = stdout_json(&status);
    assert_eq!(status["holder"]["worker_id"], winner.as_str());
    assert_eq!(status["holder"]["fencing_token"].as_u64(), Some(token));

    // The losers cleaned up after themselves: one held lock comment is left, the winner's.
    let held = gh.held_lock_comments(issue);
    assert_eq!(held, vec![(token, winner.clone())]);
}

#[test]
fn sixteen_claimers_one_token_exactly_one_wins() {
    let gh = Gh::new();
    gh.emu.set_read_lag(Duration::from_millis(250));
    for round in 0..rounds() {
        let issue = gh.emu.create_issue(REPO, &format!("race {round}"));
        race(&gh, issue, &[&gh.bot], true);
    }
}

#[test]
fn sixteen_claimers_two_tokens_exactly_one_wins() {
    let gh = Gh::new();
    gh.emu.set_read_lag(Duration::from_millis(250));
    for round in 0..rounds() {
        let issue = gh.emu.create_issue(REPO, &format!("race {round}"));
        race(&gh, issue, &[&gh.alice, &gh.bob], false);
    }
}
