//! The `gh auth token` fallback through the real binary, with a fake `gh` first on PATH.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use crate::support::{Gh, REPO, code, stdout_json, text};

/// A directory holding an executable `gh` running `script`, to put first on PATH.
fn fake_gh(script: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gh");
    std::fs::write(&path, format!("#!/bin/sh\n{script}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

/// `sentinel` against the emulator with no token anywhere, `gh_dir` first on PATH.
fn without_token(gh: &Gh, gh_dir: &Path, worker: &str, args: &[&str]) -> Command {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut dirs = vec![gh_dir.to_path_buf()];
    dirs.extend(std::env::split_paths(&path));
    let mut cmd = crate::support::sentinel(gh.data.path());
    cmd.args([
        "--repo",
        REPO,
        "--api-url",
        &gh.emu.url(),
        "--worker-id",
        worker,
    ])
    .args(args)
    .env("PATH", std::env::join_paths(dirs).unwrap())
    .env("SENTINEL_SETTLE", "200ms");
    cmd
}

#[test]
fn a_logged_in_gh_cli_supplies_the_token_and_it_is_never_shown() {
    let gh = Gh::new();
    let issue = gh.emu.create_issue(REPO, "gh login");
    let n = issue.to_string();
    let dir = fake_gh(&format!(
        "echo \"$@\" > \"$(dirname \"$0\")/args\"\necho '{}'",
        gh.alice
    ));
    gh.emu.clear_requests();
    let out: Output = without_token(&gh, dir.path(), "w1", &["-vv", "--json", "claim", &n])
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert_eq!(stdout_json(&out)["worker_id"], "w1");
    let requests = gh.emu.requests();
    assert!(!requests.is_empty());
    assert!(
        requests.iter().all(|r| r.login.as_deref() == Some("alice")),
        "{requests:?}"
    );
    assert_eq!(gh.emu.issue_view(REPO, issue).assignees, vec!["alice"]);
    let host = gh.emu.url().trim_start_matches("http://").to_string();
    let args = std::fs::read_to_string(dir.path().join("args")).unwrap();
    assert_eq!(args.trim(), format!("auth token --hostname {host}"));
    let all = text(&out);
    assert!(all.contains("GitHub token from `gh auth token`"), "{all}");
    assert!(!all.contains(&gh.alice), "token leaked: {all}");

    // A token in the environment wins, and gh is not even asked.
    std::fs::remove_file(dir.path().join("args")).unwrap();
    let out = without_token(&gh, dir.path(), "w1", &["-v", "status", &n])
        .env("GH_TOKEN", &gh.bob)
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert!(text(&out).contains("GitHub token from GH_TOKEN"));
    assert!(!dir.path().join("args").exists(), "gh was run");
}

#[test]
fn a_failing_or_hanging_gh_cli_means_no_token_not_a_hang() {
    let gh = Gh::new();
    let n = gh.emu.create_issue(REPO, "gh broken").to_string();
    let claim = ["claim", n.as_str(), "--strategy", "fail-fast"];

    let failing = fake_gh("echo 'not logged in' >&2\nexit 1");
    let out = without_token(&gh, failing.path(), "w", &claim)
        .output()
        .unwrap();
    assert_eq!(code(&out), 5, "{}", text(&out));
    assert!(text(&out).contains("gh auth login"), "{}", text(&out));

    let hanging = fake_gh("exec sleep 60");
    let started = Instant::now();
    let out = without_token(&gh, hanging.path(), "w", &claim)
        .output()
        .unwrap();
    let took = started.elapsed();
    assert_eq!(code(&out), 5, "{}", text(&out));
    assert!(
        took < Duration::from_secs(20),
        "waited {took:?} for a hanging gh"
    );
    assert!(text(&out).contains("did not finish"), "{}", text(&out));
}
