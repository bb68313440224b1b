//! The command-line contract scripts rely on (issue 14), through the real binary on the local
//! backend: blank environment variables, `run` without `--`, waiting, the conflict exit code,
//! output into pipes and addresses; and the messages a newcomer needs, on a terminal too (a pty
//! from util-linux's `script`).

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::serve::{TOKEN, exchange_within, free_addr};
use crate::support::{Gh, REPO, Running, bin, code, local, sentinel, stdout_json, text, wait_for};

/// `sentinel ARGS...` with `data_dir` run on a terminal: a pty made by `script`, whose output is
/// what the terminal showed (stdout and stderr together). A clean environment but for the
/// data directory.
fn on_terminal(data_dir: &Path, args: &[&str]) -> Output {
    let quoted: Vec<String> = std::iter::once(bin().display().to_string())
        .chain(args.iter().map(|a| a.to_string()))
        .map(|a| format!("'{}'", a.replace('\'', r"'\''")))
        .collect();
    Command::new("script")
        .args(["-qec", &quoted.join(" "), "/dev/null"])
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("TERM", "xterm")
        .env("SENTINEL_DATA_DIR", data_dir)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

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

#[test]
fn wait_and_nonblock_bound_the_claim_like_flock() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let run = |worker: &str, args: &[&str]| local(d, worker, args).output().unwrap();
    assert_eq!(code(&run("a", &["claim", "w"])), 0);

    let started = Instant::now();
    let out = run(
        "b",
        &["claim", "w", "--wait", "2s", "--initial-backoff", "200ms"],
    );
    let took = started.elapsed();
    assert_eq!(code(&out), 3, "{}", text(&out));
    assert!(took >= Duration::from_secs(2), "{took:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    // Said once, at default verbosity, when the wait starts: who holds it and until when.
    assert_eq!(err.matches("waiting for it until").count(), 1, "{err}");
    assert!(err.contains("held by a on"), "{err}");
    assert!(err.contains("gave up after waiting 2s"), "{err}");

    for fail_fast in [
        vec!["claim", "w", "-n"],
        vec!["claim", "w", "--nonblock"],
        vec!["claim", "w", "--wait", "0"],
        vec!["run", "-n", "w", "echo", "ran"],
    ] {
        let started = Instant::now();
        let out = run("b", &fail_fast);
        assert_eq!(code(&out), 3, "{fail_fast:?}: {}", text(&out));
        assert!(started.elapsed() < Duration::from_secs(2), "{fail_fast:?}");
        assert!(!text(&out).contains("waiting for it"), "{}", text(&out));
        assert!(!String::from_utf8_lossy(&out.stdout).contains("ran"));
    }

    for (usage, words) in [
        (
            vec!["claim", "w", "--wait", "5s", "--max-retries", "2"],
            "--max-retries",
        ),
        (vec!["claim", "w", "-n", "--wait", "5s"], "--wait"),
        (
            vec!["claim", "w", "-n", "--strategy", "retry"],
            "--strategy",
        ),
        (
            vec!["claim", "w", "--wait", "5s", "--strategy", "force"],
            "--wait applies",
        ),
        (vec!["claim", "w", "--wait", "8d"], "at most 7d"),
    ] {
        let out = run("b", &usage);
        assert_eq!(code(&out), 2, "{usage:?}: {}", text(&out));
        assert!(text(&out).contains(words), "{usage:?}: {}", text(&out));
    }

    // A lock freed while waiting is taken before the deadline.
    let waiter = local(
        d,
        "b",
        &[
            "run",
            "w",
            "--wait",
            "30s",
            "--initial-backoff",
            "200ms",
            "echo",
            "got it",
        ],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(code(&run("a", &["release", "w"])), 0);
    let out = waiter.wait_with_output().unwrap();
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "got it\n");
}

#[test]
fn conflict_exit_code_tells_a_held_lock_from_the_commands_failure() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let run = |worker: &str, args: &[&str]| local(d, worker, args).output().unwrap();
    assert_eq!(code(&run("a", &["claim", "c"])), 0);

    let out = run(
        "b",
        &["claim", "c", "-n", "--conflict-exit-code", "75", "--json"],
    );
    assert_eq!(code(&out), 75, "{}", text(&out));
    assert_eq!(stdout_json(&out)["error"]["exit_code"], 75);
    assert_eq!(code(&run("b", &["claim", "c", "-n"])), 3, "the default");
    let out = run(
        "b",
        &[
            "run",
            "c",
            "-n",
            "--conflict-exit-code",
            "75",
            "sh",
            "-c",
            "echo ran; exit 3",
        ],
    );
    assert_eq!(code(&out), 75, "{}", text(&out));
    assert!(!String::from_utf8_lossy(&out.stdout).contains("ran"));
    // The command's own exit code is its own.
    let out = run(
        "b",
        &[
            "run",
            "free",
            "--conflict-exit-code",
            "75",
            "sh",
            "-c",
            "exit 3",
        ],
    );
    assert_eq!(code(&out), 3, "{}", text(&out));
    // Other failures keep their codes; 0 would make a held lock look acquired.
    assert_eq!(code(&run("b", &["release", "c"])), 4);
    let out = run("b", &["claim", "c", "--conflict-exit-code", "0"]);
    assert_eq!(code(&out), 2, "{}", text(&out));
}

#[test]
fn conflict_exit_code_covers_an_empty_queue() {
    let gh = Gh::new();
    let out = gh.run(
        &gh.bob,
        "q",
        &["claim", "--next", "--conflict-exit-code", "75"],
    );
    assert_eq!(code(&out), 75, "{}", text(&out));
    assert!(text(&out).contains("no open issue in"), "{}", text(&out));
}

#[test]
fn status_into_a_pipe_is_tab_separated_lines_under_a_header() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let run = |worker: &str, args: &[&str]| local(d, worker, args).output().unwrap();
    let empty = run("obs", &["status"]);
    assert_eq!(code(&empty), 0, "{}", text(&empty));
    let header = "LOCK\tWORKER\tNODE\tSINCE\tEXPIRES\tSTATE\tTOKEN";
    assert_eq!(String::from_utf8_lossy(&empty.stdout).trim_end(), header);
    assert_eq!(code(&run("a", &["claim", "first"])), 0);
    assert_eq!(code(&run("b", &["claim", "second lock"])), 0);

    let out = run("obs", &["status"]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        !stdout
            .chars()
            .any(|c| ('\u{2500}'..='\u{257f}').contains(&c)),
        "box drawing into a pipe: {stdout}"
    );
    let lines: Vec<Vec<&str>> = stdout.lines().map(|l| l.split('\t').collect()).collect();
    assert_eq!(lines.len(), 3, "{stdout}");
    assert_eq!(lines[0].join("\t"), header);
    let mut held: Vec<(&str, &str, &str)> = lines[1..]
        .iter()
        .map(|cells| {
            assert_eq!(cells.len(), 7, "{cells:?}");
            (cells[0], cells[1], cells[5])
        })
        .collect();
    held.sort();
    assert_eq!(held, [("first", "a", "held"), ("second lock", "b", "held")]);
    // --json is unchanged.
    let json = stdout_json(&run("obs", &["status", "--json"]));
    assert_eq!(json["locks"].as_array().map(Vec::len), Some(2));
}

#[test]
fn serve_listens_on_a_host_name_and_clients_assume_http() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_addr().rsplit_once(':').unwrap().1.to_string();
    let mut node = Running::spawn(
        sentinel(&dir.path().join("node"))
            .env("SENTINEL_AUTH_TOKEN", TOKEN)
            .args(["serve", "--json", "--quiet", "--listen"])
            .arg(format!("localhost:{port}")),
    );
    let server = format!("127.0.0.1:{port}");
    let client = |args: &[&str]| {
        local(&dir.path().join("client"), "a", &["--server", &server])
            .env("SENTINEL_AUTH_TOKEN", TOKEN)
            .args(args)
            .output()
            .unwrap()
    };
    wait_for(Duration::from_secs(30), "the node to serve", || {
        assert!(node.is_running(), "serve exited");
        code(&client(&["status"])) == 0
    });
    let out = client(&["claim", "by-name", "--json"]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert_eq!(stdout_json(&out)["backend"], "server");
    node.signal("TERM");
    let out = node.exit_within(Duration::from_secs(30));
    assert_eq!(
        stdout_json(&out)["listening"],
        format!("http://127.0.0.1:{port}"),
        "localhost is 127.0.0.1"
    );
}

#[test]
fn wait_longer_than_the_coordinator_waits_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    // Refused before any request: no server needs to listen there.
    let out = local(
        dir.path(),
        "a",
        &["--server", "127.0.0.1:1", "claim", "x", "--wait", "11m"],
    )
    .output()
    .unwrap();
    assert_eq!(code(&out), 2, "{}", text(&out));
    assert!(text(&out).contains("at most 10m"), "{}", text(&out));
}

#[test]
fn a_claim_right_after_a_release_records_it_and_wins_the_same_second() {
    let gh = Gh::new();
    let issue = gh.emu.create_issue(REPO, "the queue's common case");
    let n = issue.to_string();
    let b_dir = tempfile::tempdir().unwrap();
    let mut ties = 0;
    for round in 0..5 {
        let a = gh.run(&gh.alice, "a", &["claim", &n, "--json"]);
        assert_eq!(code(&a), 0, "round {round}: {}", text(&a));
        let a_comment = stdout_json(&a)["fencing_token"].as_u64().unwrap();
        let rel = gh.run(&gh.alice, "a", &["release", &n]);
        assert_eq!(code(&rel), 0, "round {round}: {}", text(&rel));
        gh.emu.clear_requests();
        // Another machine (no shared cache), at once, and without waiting: one attempt.
        let b = gh
            .cmd_in(b_dir.path(), &gh.bob, "b", &["claim", &n, "-n", "--json"])
            .output()
            .unwrap();
        assert_eq!(code(&b), 0, "round {round}: {}", text(&b));
        let b_comment = stdout_json(&b)["fencing_token"].as_u64().unwrap();
        // One lock comment written, none withdrawn: no second claim a second later.
        let writes: Vec<String> = gh
            .emu
            .requests()
            .iter()
            .filter(|r| r.method != "GET" && r.path.contains("comments"))
            .map(|r| format!("{} {}", r.method, r.path))
            .collect();
        assert_eq!(writes.len(), 1, "round {round}: {writes:?}");
        let comments = gh.emu.comments(REPO, issue);
        let released = comments.iter().find(|c| c.id == a_comment).unwrap();
        let claimed = comments.iter().find(|c| c.id == b_comment).unwrap();
        if claimed.created_at == released.updated_at {
            ties += 1;
        }
        let rel = gh
            .cmd_in(b_dir.path(), &gh.bob, "b", &["release", &n])
            .output()
            .unwrap();
        assert_eq!(code(&rel), 0, "round {round}: {}", text(&rel));
    }
    assert!(ties > 0, "no round put the claim in the release's second");
}

#[test]
fn a_claim_under_the_default_worker_id_finds_its_own_lock_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // No --worker-id: both claims get this test process's default id (user@host:ppid).
    let claim = |name: &str| {
        sentinel(d)
            .args(["claim", name, "--initial-backoff", "200ms"])
            .output()
            .unwrap()
    };
    assert_eq!(code(&claim("R3")), 0);
    let again = claim("R3");
    assert_eq!(code(&again), 3, "{}", text(&again));
    let err = String::from_utf8_lossy(&again.stderr);
    assert!(
        err.contains("is already held by this shell's default worker id"),
        "{err}"
    );
    assert!(err.contains("pass --worker-id"), "{err}");
    assert!(
        !err.contains("waiting for it"),
        "it waited for itself: {err}"
    );
    // Another script (another parent process, so another default id) cannot release it, and is
    // told how it could.
    let other = Command::new("sh")
        .args(["-c", "\"$0\" release R3; exit $?"])
        .arg(bin())
        .env("SENTINEL_DATA_DIR", d)
        .env_remove("SENTINEL_WORKER_ID")
        .env_remove("SENTINEL_BACKEND")
        .env_remove("GITHUB_REPOSITORY")
        .env_remove("SENTINEL_SERVER")
        .output()
        .unwrap();
    assert_eq!(code(&other), 4, "{}", text(&other));
    let err = String::from_utf8_lossy(&other.stderr);
    assert!(err.contains("--force"), "{err}");
    assert!(err.contains("--worker-id"), "{err}");
}

#[test]
fn github_picked_by_github_repository_says_so_for_a_lock_name() {
    let dir = tempfile::tempdir().unwrap();
    // Refused before any request: nothing needs to listen there.
    let api = format!("http://127.0.0.2:{}", crate::support::closed_port());
    let out = sentinel(dir.path())
        .env("GITHUB_REPOSITORY", REPO)
        .args(["--api-url", &api, "claim", "build-42"])
        .output()
        .unwrap();
    assert_eq!(code(&out), 2, "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("invalid issue number"), "{err}");
    assert!(
        err.contains("picked because GITHUB_REPOSITORY is set"),
        "{err}"
    );
    assert!(err.contains("--backend local"), "{err}");
    // Asked for by name, GitHub needs no excuse.
    let out = sentinel(dir.path())
        .args(["--repo", REPO, "--api-url", &api, "claim", "build-42"])
        .output()
        .unwrap();
    assert_eq!(code(&out), 2, "{}", text(&out));
    assert!(!text(&out).contains("GITHUB_REPOSITORY"), "{}", text(&out));
}

#[test]
fn a_json_usage_error_names_what_is_missing() {
    let dir = tempfile::tempdir().unwrap();
    let out = local(dir.path(), "a", &["release", "--json"])
        .output()
        .unwrap();
    assert_eq!(code(&out), 2, "{}", text(&out));
    let msg = stdout_json(&out)["error"]["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(msg.contains("not provided: <LOCK>"), "{msg}");
}

#[test]
fn a_sidecar_stopped_after_one_renewal_says_one_renewal() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    assert_eq!(
        code(&local(d, "w1", &["claim", "beat"]).output().unwrap()),
        0
    );
    let before = crate::support::local_status(d, "beat")["holder"]["heartbeat_last"].clone();
    let mut sidecar = Running::spawn(&mut local(d, "w1", &["heartbeat", "beat"]));
    wait_for(Duration::from_secs(10), "the first renewal", || {
        crate::support::local_status(d, "beat")["holder"]["heartbeat_last"] != before
    });
    sidecar.signal("TERM");
    let out = sidecar.exit_within(Duration::from_secs(10));
    assert_eq!(code(&out), 0, "{}", text(&out));
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("after 1 renewal "), "{said}");
}

#[test]
fn status_on_a_terminal_says_how_long_ago_and_a_pipe_gets_rfc3339() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    assert_eq!(
        code(
            &local(d, "a", &["claim", "timed", "--ttl", "10m"])
                .output()
                .unwrap()
        ),
        0
    );
    let shown = on_terminal(d, &["--worker-id", "obs", "status"]);
    assert_eq!(code(&shown), 0, "{}", text(&shown));
    let screen = String::from_utf8_lossy(&shown.stdout);
    assert!(
        screen.contains("(in 9 minutes)") || screen.contains("(in 10 minutes)"),
        "{screen}"
    );
    let shown = on_terminal(d, &["--worker-id", "obs", "status", "timed"]);
    let screen = String::from_utf8_lossy(&shown.stdout);
    assert!(screen.contains("minutes)"), "{screen}");
    // Into a pipe: absolute times a machine reads.
    let piped = local(d, "obs", &["status"]).output().unwrap();
    let stdout = String::from_utf8_lossy(&piped.stdout);
    let row: Vec<&str> = stdout.lines().nth(1).unwrap().split('\t').collect();
    for at in [row[3], row[4]] {
        assert!(
            chrono::DateTime::parse_from_rfc3339(at).is_ok() && at.contains('T'),
            "{at}: {stdout}"
        );
    }
    assert!(
        !stdout.contains("ago") && !stdout.contains("minutes"),
        "{stdout}"
    );
}

#[test]
fn a_wait_on_a_terminal_counts_down_and_a_pipe_gets_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    assert_eq!(
        code(&local(d, "a", &["claim", "busy"]).output().unwrap()),
        0
    );
    let args = [
        "--worker-id",
        "b",
        "claim",
        "busy",
        "--wait",
        "3s",
        "--initial-backoff",
        "500ms",
    ];
    let shown = on_terminal(d, &args);
    assert_eq!(code(&shown), 3, "{}", text(&shown));
    let screen = String::from_utf8_lossy(&shown.stdout);
    assert!(screen.contains("waiting for it until"), "{screen}");
    // The spinner counts down to the deadline.
    assert!(screen.contains("s left)"), "{screen}");
    let piped = sentinel(d).args(args).output().unwrap();
    assert_eq!(code(&piped), 3, "{}", text(&piped));
    let err = String::from_utf8_lossy(&piped.stderr);
    assert_eq!(err.matches("waiting for it until").count(), 1, "{err}");
    assert!(!err.contains("left)"), "no countdown into a pipe: {err}");
}

#[test]
fn a_claim_waiting_on_the_coordinator_says_for_whom_and_until_when() {
    let dir = tempfile::tempdir().unwrap();
    let addr = free_addr();
    let mut node = Running::spawn(
        sentinel(&dir.path().join("node"))
            .env("SENTINEL_AUTH_TOKEN", TOKEN)
            .args(["serve", "--json", "--quiet", "--listen", &addr]),
    );
    let client = |worker: Option<&str>, args: &[&str]| {
        let mut cmd = sentinel(&dir.path().join("client"));
        if let Some(w) = worker {
            cmd.args(["--worker-id", w]);
        }
        cmd.args(["--server", &addr])
            .env("SENTINEL_AUTH_TOKEN", TOKEN)
            .args(args)
            .output()
            .unwrap()
    };
    wait_for(Duration::from_secs(30), "the node to serve", || {
        assert!(node.is_running(), "serve exited");
        code(&client(Some("obs"), &["status"])) == 0
    });
    // Taken over HTTP by a client that names no node.
    let auth = format!("Bearer {TOKEN}");
    let (status, body) = exchange_within(
        &addr,
        "POST",
        "/locks/shared/acquire",
        Some(&serde_json::json!({"holder": "w1", "ttl_ms": 60_000})),
        &[("Authorization", auth.as_str())],
        Duration::from_secs(20),
    )
    .unwrap();
    assert_eq!(status, 200, "{body}");

    let out = client(Some("b"), &["claim", "shared", "--wait", "2s"]);
    assert_eq!(code(&out), 3, "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.matches("waiting for it until").count(), 1, "{err}");
    assert!(err.contains("held by w1; waiting"), "{err}");
    assert!(err.contains("held by w1 (since"), "no empty node: {err}");
    let shown = client(Some("obs"), &["status", "shared"]);
    assert!(
        !String::from_utf8_lossy(&shown.stdout).contains("node"),
        "{}",
        text(&shown)
    );

    // The default worker id twice: the second claim does not queue behind the first.
    assert_eq!(code(&client(None, &["claim", "mine"])), 0);
    let again = client(None, &["claim", "mine"]);
    assert_eq!(code(&again), 3, "{}", text(&again));
    let err = String::from_utf8_lossy(&again.stderr);
    assert!(
        err.contains("already held by this shell's default worker id"),
        "{err}"
    );
    assert!(!err.contains("waiting for it"), "{err}");
    node.signal("TERM");
    node.exit_within(Duration::from_secs(30));
}
