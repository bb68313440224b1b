//! `sentinel run` through the real binary with real child processes and real signals: the lock
//! reaches the command's environment, the command's exit code comes back, signals are passed on,
//! a lost lock stops the command, and the lock is released whenever the command ends — and a
//! `run` interrupted while it claims (SIGINT/SIGTERM) leaves no holder behind on any backend.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use github_emulator::Fault;

use crate::serve::{Node, TOKEN, eventually, free_addr, leader_of, peers_of};
use crate::servers::Redis;
use crate::support::{
    Gh, REPO, Running, code, local, local_status, sentinel, stdout_json, text, wait_for,
};

const SECOND: Duration = Duration::from_secs(1);

/// Waits until at most ten seconds, so that a command orphaned by a failed test ends anyway.
const IDLE: &str = "i=0; while [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done; exit 99";

/// The last line of stdout, which `run --json` prints after everything its command printed.
fn last_json(out: &std::process::Output) -> serde_json::Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(last).unwrap_or_else(|e| panic!("{e}: {}", text(out)))
}

fn env_of(file: &Path) -> Vec<String> {
    std::fs::read_to_string(file)
        .unwrap()
        .lines()
        .filter(|l| l.starts_with("SENTINEL_"))
        .map(String::from)
        .collect()
}

#[test]
fn local_run_gives_the_command_the_lock_and_passes_its_exit_code_back() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let env_file = d.join("env");
    let script = r#"echo hello; env > "$OUT"; sleep 4; exit 7"#;
    let run = Running::spawn(
        local(
            d,
            "w1",
            &[
                "--json",
                "run",
                "job",
                "--ttl",
                "3s",
                "--interval",
                "1s",
                "--",
                "sh",
                "-c",
                script,
            ],
        )
        .env("OUT", &env_file),
    );
    // Past the TTL while the command runs: the lock is being renewed, so it is not stale.
    std::thread::sleep(Duration::from_millis(3500));
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
    assert_eq!(code(&steal), 3, "{}", text(&steal));

    let out = run.exit_within(10 * SECOND);
    assert_eq!(code(&out), 7, "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.starts_with("hello\n"), "{stdout}");
    let v = last_json(&out);
    assert_eq!(v["exit_code"], 7);
    assert_eq!(v["released"], true);
    assert!(v["renewals"].as_u64().unwrap() >= 3, "{v}");
    let token = v["fencing_token"].as_u64().unwrap();
    let env = env_of(&env_file);
    for var in [
        format!("SENTINEL_FENCING_TOKEN={token}"),
        "SENTINEL_LOCK=job".into(),
        "SENTINEL_LOCK_HELD=1".into(),
        "SENTINEL_WORKER_ID=w1".into(),
    ] {
        assert!(env.contains(&var), "{var} missing: {env:?}");
    }
    assert_eq!(local_status(d, "job")["held"], false, "released");
}

#[test]
fn a_command_killed_by_a_signal_exits_128_plus_its_number() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let out = local(d, "w1", &["run", "job", "--", "sh", "-c", "kill -KILL $$"])
        .output()
        .unwrap();
    assert_eq!(code(&out), 128 + 9, "{}", text(&out));
    assert!(out.stdout.is_empty(), "stdout belongs to the command");
    assert_eq!(local_status(d, "job")["held"], false, "released");
}

#[test]
fn sigint_and_sigterm_reach_the_command_and_the_lock_is_released_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for (signal, want) in [("TERM", 42), ("INT", 43)] {
        let name = format!("sig-{signal}");
        let (record, ready) = (d.join(format!("{name}.log")), d.join(&name));
        let script = format!(
            r#"trap 'echo TERM >> "$OUT"; exit 42' TERM; trap 'echo INT >> "$OUT"; exit 43' INT; touch "$READY"; {IDLE}"#
        );
        let mut run = Running::spawn(
            local(d, "w1", &["run", &name, "--", "sh", "-c", &script])
                .env("OUT", &record)
                .env("READY", &ready),
        );
        wait_for(10 * SECOND, "the command to start", || ready.exists());
        run.signal(signal);
        let out = run.exit_within(5 * SECOND);
        assert_eq!(code(&out), want, "{signal}: {}", text(&out));
        assert_eq!(
            std::fs::read_to_string(&record).unwrap(),
            format!("{signal}\n")
        );
        assert_eq!(local_status(d, &name)["held"], false, "{signal}: released");
    }
}

#[test]
fn a_held_lock_is_exit_3_and_the_command_never_runs() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let out = local(d, "w1", &["claim", "job"]).output().unwrap();
    assert_eq!(code(&out), 0, "{}", text(&out));
    let marker = d.join("ran");
    let out = local(
        d,
        "w2",
        &["run", "job", "--strategy", "fail-fast", "--", "touch"],
    )
    .arg(&marker)
    .output()
    .unwrap();
    assert_eq!(code(&out), 3, "{}", text(&out));
    assert!(!marker.exists(), "the command ran without the lock");
    assert_eq!(local_status(d, "job")["holder"]["worker_id"], "w1");
}

/// `run LOCK --also OTHER` holds every lock while the command runs (their tokens in
/// `SENTINEL_FENCING_TOKENS`), gives them all back after it, gives back what it took when a later
/// lock is held, and claims in name order: two runs naming the same locks in opposite orders both
/// get them, where claiming in the order given would leave each holding one and waiting for the
/// other.
#[test]
fn run_also_holds_several_locks_claimed_in_name_order() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let seen = d.join("seen");
    let script = format!(
        "printf '%s\\n' \"$SENTINEL_LOCK\" \"$SENTINEL_FENCING_TOKENS\" > '{}'",
        seen.display()
    );
    let out = local(
        d,
        "w1",
        &[
            "--json", "run", "b", "--also", "a", "--also", "b", "--", "sh", "-c", &script,
        ],
    )
    .output()
    .unwrap();
    assert_eq!(code(&out), 0, "{}", text(&out));
    let v = last_json(&out);
    let tokens: Vec<u64> = ["a", "b"]
        .iter()
        .map(|name| {
            let hold = v["holds"]
                .as_array()
                .unwrap()
                .iter()
                .find(|h| h["lock"] == *name);
            hold.and_then(|h| h["fencing_token"].as_u64()).expect(name)
        })
        .collect();
    assert_eq!(v["lock"], "b", "LOCK is the one reported: {v}");
    assert_eq!(v["released"], true, "{v}");
    assert!(tokens[0] < tokens[1], "a was claimed first: {v}");
    let said = std::fs::read_to_string(&seen).unwrap();
    assert_eq!(said, format!("b\n{} a\n{} b\n", tokens[0], tokens[1]));
    for name in ["a", "b"] {
        assert_eq!(local_status(d, name)["held"], false, "{name}");
    }

    // The later lock held: exit 3, the command never runs, and the earlier is given back.
    let out = local(d, "w2", &["claim", "z"]).output().unwrap();
    assert_eq!(code(&out), 0, "{}", text(&out));
    let out = local(
        d,
        "w1",
        &["run", "a", "--also", "z", "--nonblock", "--", "false"],
    )
    .output()
    .unwrap();
    assert_eq!(code(&out), 3, "{}", text(&out));
    assert_eq!(local_status(d, "a")["held"], false);

    // Opposite orders: both runs get both locks, one after the other.
    let hold = "sleep 1";
    let runs: Vec<Running> = [("w1", "a", "b"), ("w2", "b", "a")]
        .iter()
        .map(|(worker, first, second)| {
            Running::spawn(&mut local(
                d,
                worker,
                &[
                    "run", first, "--also", second, "--wait", "8s", "--", "sh", "-c", hold,
                ],
            ))
        })
        .collect();
    for run in runs {
        let out = run.exit_within(30 * SECOND);
        assert_eq!(code(&out), 0, "{}", text(&out));
    }
}

#[test]
fn a_lost_lock_stops_the_command_with_sigterm_then_sigkill_after_the_grace() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let polite_log = d.join("polite.log");
    let (polite_ready, stubborn_ready) = (d.join("polite"), d.join("stubborn"));
    let polite = Running::spawn(
        local(
            d,
            "w1",
            &[
                "run",
                "polite",
                "--ttl",
                "30s",
                "--interval",
                "1s",
                "--",
                "sh",
                "-c",
                &format!(r#"trap 'echo TERM > "$OUT"; exit 0' TERM; touch "$READY"; {IDLE}"#),
            ],
        )
        .env("OUT", &polite_log)
        .env("READY", &polite_ready),
    );
    // Ignores SIGTERM (and so does every `sleep` it starts): only SIGKILL ends it.
    let stubborn = Running::spawn(
        local(
            d,
            "w1",
            &[
                "run",
                "stubborn",
                "--ttl",
                "30s",
                "--interval",
                "1s",
                "--kill-grace",
                "1s",
                "--",
                "sh",
                "-c",
                &format!(
                    r#"trap '' TERM; echo $$ > "$READY.tmp"; mv "$READY.tmp" "$READY"; {IDLE}"#
                ),
            ],
        )
        .env("READY", &stubborn_ready),
    );
    wait_for(10 * SECOND, "both commands to start", || {
        polite_ready.exists() && stubborn_ready.exists()
    });
    let taken = Instant::now();
    for name in ["polite", "stubborn"] {
        let out = local(d, "w2", &["claim", name, "--strategy", "force"])
            .output()
            .unwrap();
        assert_eq!(code(&out), 0, "{}", text(&out));
    }
    let out = polite.exit_within(5 * SECOND);
    assert_eq!(code(&out), 4, "{}", text(&out));
    assert_eq!(std::fs::read_to_string(&polite_log).unwrap(), "TERM\n");

    let out = stubborn.exit_within(8 * SECOND);
    let took = taken.elapsed();
    assert_eq!(code(&out), 4, "{}", text(&out));
    assert!(text(&out).contains("SIGKILL"), "{}", text(&out));
    assert!(took >= SECOND && took < 6 * SECOND, "{took:?}");
    let pid = std::fs::read_to_string(&stubborn_ready).unwrap();
    let alive = std::process::Command::new("kill")
        .args(["-0", pid.trim()])
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(!alive.success(), "the stubborn command {pid} survived");
    // Not ours any more: nothing was released.
    for name in ["polite", "stubborn"] {
        assert_eq!(local_status(d, name)["holder"]["worker_id"], "w2");
    }
}

#[test]
fn a_command_that_cannot_start_is_127_or_126_and_the_lock_is_released() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let script = d.join("not-executable");
    std::fs::write(&script, "#!/bin/sh\nexit 0\n").unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o644)).unwrap();
    for (cmd, want, words) in [
        (d.join("missing").display().to_string(), 127, "not found"),
        (script.display().to_string(), 126, "permission denied"),
    ] {
        let out = local(d, "w1", &["run", "job", "--", &cmd])
            .output()
            .unwrap();
        assert_eq!(code(&out), want, "{cmd}: {}", text(&out));
        assert!(text(&out).contains(words), "{}", text(&out));
        assert_eq!(local_status(d, "job")["held"], false, "released");
    }
}

#[test]
fn settings_that_cannot_keep_the_lock_are_refused_before_claiming() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let marker = d.join("ran");
    let m = marker.display().to_string();
    let m = m.as_str();
    for (args, words) in [
        (
            vec![
                "run",
                "job",
                "--ttl",
                "3s",
                "--interval",
                "2s",
                "--",
                "touch",
                m,
            ],
            "at most 1s",
        ),
        (
            vec!["run", "job", "--ttl", "2s", "--", "touch", m],
            "too short",
        ),
        (
            vec!["run", "job", "--kill-grace", "soon", "--", "touch", m],
            "invalid duration",
        ),
        (vec!["run", "job"], "run needs a command"),
    ] {
        let out = local(d, "w1", &args).output().unwrap();
        assert_eq!(code(&out), 2, "{args:?}: {}", text(&out));
        assert!(text(&out).contains(words), "{args:?}: {}", text(&out));
    }
    assert!(!marker.exists());
    assert_eq!(local_status(d, "job")["held"], false, "nothing was claimed");
}

#[test]
fn github_run_holds_the_issue_while_the_command_runs_at_one_request_per_beat() {
    let gh = Gh::new();
    let issue = gh.emu.create_issue(REPO, "run it");
    let n = issue.to_string();
    let dir = tempfile::tempdir().unwrap();
    let env_file = dir.path().join("env");
    let script = r#"env > "$OUT"; sleep 4; exit 7"#;
    gh.emu.clear_requests();
    let run = Running::spawn(
        gh.cmd(
            &gh.alice,
            "w1",
            &[
                "--json",
                "run",
                &n,
                "--ttl",
                "3s",
                "--interval",
                "1s",
                "--",
                "sh",
                "-c",
                script,
            ],
        )
        .env("OUT", &env_file),
    );
    wait_for(10 * SECOND, "the claim", || env_file.exists());
    std::thread::sleep(Duration::from_millis(3500));
    let out = gh.run(
        &gh.bob,
        "thief",
        &[
            "claim",
            &n,
            "--strategy",
            "steal-stale",
            "--max-retries",
            "0",
        ],
    );
    assert_eq!(code(&out), 3, "a kept lock is live: {}", text(&out));

    let out = run.exit_within(10 * SECOND);
    assert_eq!(code(&out), 7, "{}", text(&out));
    let v = stdout_json(&out);
    let token = v["fencing_token"].as_u64().unwrap();
    let env = env_of(&env_file);
    assert!(env.contains(&format!("SENTINEL_LOCK={issue}")), "{env:?}");
    assert!(
        env.contains(&format!("SENTINEL_FENCING_TOKEN={token}")),
        "{env:?}"
    );
    assert!(
        env.contains(&"SENTINEL_WORKER_ID=w1".to_string()),
        "{env:?}"
    );

    let alice: Vec<_> = gh
        .emu
        .requests()
        .into_iter()
        .filter(|r| r.login.as_deref() == Some("alice"))
        .collect();
    let count = |method: &str, path: &str| {
        alice
            .iter()
            .filter(|r| r.method == method && r.path.ends_with(path))
            .count()
    };
    assert_eq!(
        count("POST", &format!("/issues/{issue}/comments")),
        1,
        "{alice:#?}"
    );
    let edits = count("PATCH", &format!("/issues/comments/{token}"));
    // Each renewal one edit of the lock comment, plus the release's.
    assert_eq!(v["renewals"].as_u64(), Some(edits as u64 - 1), "{alice:#?}");
    assert!(edits >= 4, "{alice:#?}");
    assert_eq!(gh.emu.comments(REPO, issue).len(), 1, "never a new comment");
    assert!(gh.held_lock_comments(issue).is_empty(), "released");
}

#[test]
fn github_run_stops_the_command_when_the_issue_is_taken_over() {
    let gh = Gh::new();
    let issue = gh.emu.create_issue(REPO, "contested");
    let n = issue.to_string();
    let dir = tempfile::tempdir().unwrap();
    let (log, ready) = (dir.path().join("log"), dir.path().join("ready"));
    let script = format!(r#"trap 'echo TERM > "$OUT"; exit 0' TERM; touch "$READY"; {IDLE}"#);
    let run = Running::spawn(
        gh.cmd(
            &gh.alice,
            "w1",
            &[
                "run",
                &n,
                "--ttl",
                "30s",
                "--interval",
                "1s",
                "--",
                "sh",
                "-c",
                &script,
            ],
        )
        .env("OUT", &log)
        .env("READY", &ready),
    );
    wait_for(10 * SECOND, "the command to start", || ready.exists());
    let out = gh.run(&gh.bob, "w2", &["claim", &n, "--strategy", "force"]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    let out = run.exit_within(5 * SECOND);
    assert_eq!(code(&out), 4, "{}", text(&out));
    assert_eq!(std::fs::read_to_string(&log).unwrap(), "TERM\n");
    let held = gh.held_lock_comments(issue);
    assert_eq!(held.len(), 1);
    assert_eq!(held[0].1, "w2");
}

/// `run` interrupted at any moment of its claim: afterwards nobody holds the lock, whether the
/// signal stopped the claim (exit 130/143, its grant taken back) or reached the command it had
/// started (which then dies of it, and `run` releases). `cli(worker, args)` is the backend's
/// command line.
fn interrupted_runs_leave_the_lock_free(cli: impl Fn(&str, &[&str]) -> Command, rounds: u64) {
    let mut stopped_claiming = 0;
    for round in 0..rounds {
        let mut run = Running::spawn(&mut cli("w", &["-v", "run", "job", "--", "sleep", "5"]));
        std::thread::sleep(Duration::from_millis(round % 17));
        run.signal(if round % 2 == 0 { "INT" } else { "TERM" });
        // Well inside the backends' 10 s deadline for an undo: an interrupted run ends promptly.
        let out = run.exit_within(5 * SECOND);
        let st = stdout_json(
            &cli("observer", &["--json", "status", "job"])
                .output()
                .unwrap(),
        );
        assert_eq!(st["held"], false, "round {round}: {}\n{st}", text(&out));
        match out.status.code().unwrap_or(128) {
            // Killed before the handlers were installed (128), or stopped while claiming.
            128 | 130 | 143 if !text(&out).contains("the command runs") => stopped_claiming += 1,
            130 | 143 => {}
            other => panic!("round {round}: exit {other}: {}", text(&out)),
        }
    }
    assert!(
        stopped_claiming > 0,
        "no run was interrupted while claiming: the test proves nothing"
    );
}

#[test]
fn an_interrupted_local_run_leaves_the_lock_free() {
    let dir = tempfile::tempdir().unwrap();
    interrupted_runs_leave_the_lock_free(|w, args| local(dir.path(), w, args), 120);
}

#[test]
fn an_interrupted_redis_run_leaves_the_lock_free() {
    let Some(redis) = Redis::start() else { return };
    let dir = tempfile::tempdir().unwrap();
    let url = redis.url();
    interrupted_runs_leave_the_lock_free(
        |w, args| {
            let mut cmd = sentinel(dir.path());
            cmd.args(["--backend", "redis", "--worker-id", w])
                .env("SENTINEL_REDIS_URL", &url)
                .args(args);
            cmd
        },
        120,
    );
}

/// Issue 13: `run` interrupted between posting its lock comment and reading it back kept the
/// lock, held by a worker that no longer renewed it. Slow reads hold the claim in that window;
/// the signal lands at several moments of it.
#[test]
fn run_interrupted_while_claiming_on_github_leaves_no_lock_comment() {
    let gh = Gh::new();
    let issue = gh.emu.create_issue(REPO, "ctrl-c during run");
    let n = issue.to_string();
    for (round, delay_ms) in [0u64, 250, 700, 1300].into_iter().enumerate() {
        // The second read is the verification (the first, the look before writing).
        gh.emu
            .inject("GET", "/comments", Fault::Latency(2 * SECOND), 2);
        let mut run =
            Running::spawn(&mut gh.cmd(&gh.alice, "w1", &["-v", "run", &n, "--", "sleep", "30"]));
        wait_for(20 * SECOND, "the lock comment", || {
            !gh.held_lock_comments(issue).is_empty()
        });
        std::thread::sleep(Duration::from_millis(delay_ms));
        let (signal, want) = if round % 2 == 0 {
            ("INT", 130)
        } else {
            ("TERM", 143)
        };
        run.signal(signal);
        let out = run.exit_within(30 * SECOND);
        assert_eq!(code(&out), want, "round {round}: {}", text(&out));
        assert!(
            !text(&out).contains("the command runs"),
            "round {round}: the signal came after the claim: {}",
            text(&out)
        );
        assert_eq!(
            gh.held_lock_comments(issue),
            vec![],
            "round {round}: {}",
            text(&out)
        );
        let st = stdout_json(&gh.run(&gh.bob, "observer", &["--json", "status", &n]));
        assert!(st["holder"].is_null(), "round {round}: {st}");
    }
}

/// Issue 13: a `run` queued on the server behind a holder and killed with SIGTERM stayed queued,
/// and was handed the lock when the holder released it. Its wait must be withdrawn: the next
/// worker gets the lock at once. The waiter asks a follower, which forwards to the leader.
#[test]
fn a_run_killed_while_queued_on_the_server_is_never_handed_the_lock() {
    let _one_cluster = crate::serve::one_cluster_at_a_time();
    let tmp = tempfile::tempdir().unwrap();
    let addrs: Vec<String> = (0..3).map(|_| free_addr()).collect();
    let peers = peers_of(&addrs);
    let _nodes: Vec<Node> = (0..3)
        .map(|i| {
            let dir = tmp.path().join(format!("n{}", i + 1));
            std::fs::create_dir_all(&dir).unwrap();
            Node::start(i as u64 + 1, &addrs[i], &peers, &dir, Some(TOKEN))
        })
        .collect();
    let leader = eventually(30, "a leader", || leader_of(&addrs[0]));
    let follower = &addrs[if leader == 1 { 1 } else { 0 }];
    let url = format!("http://{follower}");
    let client = tmp.path().join("client");
    let cli = |worker: &str, args: &[&str]| {
        let mut cmd = sentinel(&client);
        cmd.env("SENTINEL_SERVER", &url)
            .env("SENTINEL_AUTH_TOKEN", TOKEN)
            .args(["--worker-id", worker])
            .args(args);
        cmd
    };
    let out = eventually(30, "a claim through the follower", || {
        let out = cli("w1", &["claim", "held"]).output().unwrap();
        (code(&out) == 0).then_some(out)
    });
    assert_eq!(code(&out), 0, "{}", text(&out));
    let marker = tmp.path().join("ran");
    let mut waiter = Running::spawn(
        cli(
            "w2",
            &[
                "-v",
                "run",
                "held",
                "--max-retries",
                "1",
                "--initial-backoff",
                "15s",
                "--",
                "touch",
            ],
        )
        .arg(&marker),
    );
    // Long enough to be queued on the server.
    std::thread::sleep(Duration::from_millis(800));
    waiter.signal("TERM");
    let signalled = Instant::now();
    let out = waiter.exit_within(20 * SECOND);
    assert_eq!(code(&out), 143, "{}", text(&out));
    assert!(
        signalled.elapsed() < 5 * SECOND,
        "{:?}: {}",
        signalled.elapsed(),
        text(&out)
    );
    let out = cli("w1", &["release", "held"]).output().unwrap();
    assert_eq!(code(&out), 0, "{}", text(&out));
    let out = cli(
        "w3",
        &["--json", "claim", "held", "--strategy", "fail-fast"],
    )
    .output()
    .unwrap();
    assert_eq!(
        code(&out),
        0,
        "the dead waiter got the lock: {}",
        text(&out)
    );
    assert_eq!(stdout_json(&out)["worker_id"], "w3");
    assert!(!marker.exists(), "the command ran");
}
