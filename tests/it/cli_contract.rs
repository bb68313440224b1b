//! The command-line contract scripts rely on (issue 14), through the real binary on the local
//! backend: blank environment variables, `run` without `--`, waiting, the conflict exit code,
//! output into pipes and addresses.

use crate::support::{code, local, sentinel, stdout_json, text};

#[test]
fn blank_environment_variables_count_as_unset() {
    let dir = tempfile::tempdir().unwrap();
    // As GitHub Actions' `${{ vars.X }}` yields for a variable nobody set.
    let out = sentinel(dir.path())
        .env("SENTINEL_BACKEND", "")
        .env("SENTINEL_WORKER_ID", " ")
        .env("GITHUB_API_URL", "")
        .args(["claim", "blank-env", "--json"])
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert_eq!(stdout_json(&out)["backend"], "local");
}

#[test]
fn run_takes_the_command_with_or_without_double_dash() {
    let dir = tempfile::tempdir().unwrap();
    let out = local(dir.path(), "a", &["run", "plain", "echo", "hi"])
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hi\n");
    // The command's own options are its own, not sentinel's.
    let out = local(
        dir.path(),
        "a",
        &["run", "plain", "sh", "-c", "echo $0-ok", "x"],
    )
    .output()
    .unwrap();
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "x-ok\n");
    let out = local(
        dir.path(),
        "a",
        &["run", "--ttl", "1m", "dashed", "--", "echo", "--json"],
    )
    .output()
    .unwrap();
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "--json\n");
}
