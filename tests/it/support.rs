//! Shared test scaffolding: a seeded GitHub emulator and a builder for real `sentinel` processes.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use github_emulator::{Emulator, Permission, UserKind};
use serde_json::Value;

pub const REPO: &str = "acme/widgets";

/// Environment variables a developer's or CI's shell might carry that would change sentinel's
/// behaviour; every spawned process starts without them.
const SCRUB: &[&str] = &[
    "GITHUB_REPOSITORY",
    "GITHUB_TOKEN",
    "GH_TOKEN",
    // What `gh auth token` prints for Enterprise hosts, such as the emulator's.
    "GH_ENTERPRISE_TOKEN",
    "GITHUB_ENTERPRISE_TOKEN",
    "GITHUB_API_URL",
    "GITHUB_ACTIONS",
    "GITHUB_OUTPUT",
    "GITHUB_STEP_SUMMARY",
    "SENTINEL_TOKEN",
    "SENTINEL_SERVER",
    "SENTINEL_AUTH_TOKEN",
    "SENTINEL_AUTH_TOKEN_FILE",
    "SENTINEL_CA_CERT",
    "SENTINEL_CLIENT_CERT",
    "SENTINEL_CLIENT_KEY",
    "SENTINEL_ETCD_ENDPOINTS",
    "SENTINEL_PEER_TOKEN",
    "SENTINEL_BACKEND",
    "SENTINEL_WORKER_ID",
    "SENTINEL_NODE_ID",
    "SENTINEL_DATA_DIR",
    "SENTINEL_TRUSTED_AUTHORS",
    "SENTINEL_SETTLE",
    "SENTINEL_HTTP_TIMEOUT",
    "RUST_LOG",
    "NO_COLOR",
];

/// A port on 127.0.0.2 that nothing listens on: the tests' servers bind 127.0.0.1, so it stays
/// closed even if another test's server picks the same number meanwhile.
pub fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.2:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_sentinel"))
}

/// A bare `sentinel` command with a scrubbed environment and its own data directory.
///
/// It starts with SIGINT and SIGQUIT at their default action, as from a shell prompt. A test run
/// started in the background (`cargo test &` in a script) has them ignored, which every child
/// would inherit: a SIGINT a test sends before sentinel installs its handler would then be lost
/// instead of ending the process.
pub fn sentinel(data_dir: &Path) -> Command {
    let mut cmd = Command::new(bin());
    // SAFETY: signal(2) is async-signal-safe, and the closure touches nothing else.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
            libc::signal(libc::SIGINT, libc::SIG_DFL);
            libc::signal(libc::SIGQUIT, libc::SIG_DFL);
            Ok(())
        });
    }
    for k in SCRUB {
        cmd.env_remove(k);
    }
    cmd.env("SENTINEL_DATA_DIR", data_dir);
    cmd.stdin(Stdio::null());
    cmd
}

/// `sentinel --worker-id WORKER ARGS...` on the local backend in `data_dir`.
pub fn local(data_dir: &Path, worker: &str, args: &[&str]) -> Command {
    let mut cmd = sentinel(data_dir);
    cmd.args(["--worker-id", worker]).args(args);
    cmd
}

/// `status NAME --json` on the local backend.
pub fn local_status(data_dir: &Path, name: &str) -> Value {
    stdout_json(
        &local(data_dir, "observer", &["status", name, "--json"])
            .output()
            .unwrap(),
    )
}

/// An emulator with one repository (owned by acme-admin), two collaborators, an outsider and a bot.
pub struct Gh {
    pub emu: Emulator,
    pub alice: String,
    pub bob: String,
    pub outsider: String,
    pub bot: String,
    pub data: tempfile::TempDir,
}

impl Gh {
    pub fn new() -> Gh {
        let emu = Emulator::start();
        emu.add_user("acme-admin", UserKind::User);
        let alice = emu.add_user("alice", UserKind::User);
        let bob = emu.add_user("bob", UserKind::User);
        let outsider = emu.add_user("mallory", UserKind::User);
        let bot = emu.add_user("github-actions[bot]", UserKind::Bot);
        emu.create_repo(REPO, "acme-admin", true);
        emu.add_collaborator(REPO, "alice", Permission::Write);
        emu.add_collaborator(REPO, "bob", Permission::Write);
        // A workflow token with `permissions: issues: write`.
        emu.add_collaborator(REPO, "github-actions[bot]", Permission::Write);
        emu.create_repo("acme/other", "acme-admin", true);
        Gh {
            emu,
            alice,
            bob,
            outsider,
            bot,
            data: tempfile::tempdir().unwrap(),
        }
    }

    /// `sentinel --repo acme/widgets --api-url EMU --token TOKEN --worker-id WORKER ARGS...`
    pub fn cmd(&self, token: &str, worker: &str, args: &[&str]) -> Command {
        self.cmd_in(self.data.path(), token, worker, args)
    }

    pub fn cmd_in(&self, data: &Path, token: &str, worker: &str, args: &[&str]) -> Command {
        let mut cmd = sentinel(data);
        cmd.args([
            "--repo",
            REPO,
            "--api-url",
            &self.emu.url(),
            "--worker-id",
            worker,
        ])
        .env("SENTINEL_TOKEN", token)
        // Fast but safe: the settle pause must exceed the emulator's read lag.
        .env("SENTINEL_SETTLE", "400ms")
        .args(args);
        cmd
    }

    pub fn run(&self, token: &str, worker: &str, args: &[&str]) -> Output {
        self.cmd(token, worker, args).output().unwrap()
    }

    pub fn spawn(&self, token: &str, worker: &str, args: &[&str]) -> Child {
        self.cmd(token, worker, args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }

    /// Requests logged since the last `clear_requests`.
    pub fn count_requests(&self) -> usize {
        self.emu.requests().len()
    }

    /// Requests with this HTTP method since the last `clear_requests`.
    pub fn count_method(&self, method: &str) -> usize {
        self.emu
            .requests()
            .iter()
            .filter(|r| r.method == method)
            .count()
    }

    /// Lock comments currently on the issue that are in the `held` state.
    pub fn held_lock_comments(&self, issue: u64) -> Vec<(u64, String)> {
        self.emu
            .comments(REPO, issue)
            .into_iter()
            .filter(|c| {
                c.body.starts_with("<!-- sentinel:lock -->")
                    && c.body.contains("\"state\": \"held\"")
            })
            .map(|c| {
                let worker = json_block(&c.body)["lock"]["worker_id"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string();
                (c.id, worker)
            })
            .collect()
    }
}

/// The JSON block of a lock comment body.
pub fn json_block(body: &str) -> Value {
    let start = body.find("```json").expect("json block") + 7;
    let end = start + body[start..].find("```").expect("closing fence");
    serde_json::from_str(body[start..end].trim()).expect("valid JSON")
}

pub fn code(out: &Output) -> i32 {
    out.status.code().expect("exited normally")
}

pub fn stdout_json(out: &Output) -> Value {
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(
        lines.len(),
        1,
        "exactly one JSON line on stdout, got: {text}"
    );
    serde_json::from_str(lines[0]).unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {text}"))
}

pub fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Waits for every child and collects its output, in order.
pub fn wait_all(children: Vec<std::process::Child>) -> Vec<Output> {
    children
        .into_iter()
        .map(|c| c.wait_with_output().unwrap())
        .collect()
}

/// Asserts that exactly one of a race's processes exited 0 and all others 3; returns the winner.
pub fn sole_winner(outs: &[Output]) -> usize {
    let codes: Vec<i32> = outs.iter().map(code).collect();
    let winners: Vec<usize> = (0..outs.len()).filter(|&i| codes[i] == 0).collect();
    let stderr = || {
        outs.iter()
            .map(|o| String::from_utf8_lossy(&o.stderr).to_string())
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert_eq!(winners.len(), 1, "exit codes {codes:?}\n{}", stderr());
    let conflicts = codes.iter().filter(|&&c| c == 3).count();
    assert_eq!(
        conflicts,
        outs.len() - 1,
        "exit codes {codes:?}\n{}",
        stderr()
    );
    winners[0]
}

/// Moves a local lock's last heartbeat `by_ms` into the past, as if time had passed: the local
/// backend's tests age locks instead of sleeping through their TTL.
pub fn age_local_lock(data_dir: &Path, name: &str, by_ms: u64) {
    let path = data_dir.join("local").join("locks.json");
    let mut table: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let hb = &mut table["locks"][name]["heartbeat_ms"];
    *hb = (hb.as_u64().expect("the lock is held") - by_ms).into();
    std::fs::write(&path, serde_json::to_vec_pretty(&table).unwrap()).unwrap();
}

/// Polls `cond` every 20 ms until it holds; fails the test after `limit`.
pub fn wait_for(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A long-running process under test (a heartbeat sidecar, `run`), killed if the test ends
/// before it exited so that a failing test leaves nothing behind.
pub struct Running(Option<Child>);

impl Running {
    pub fn spawn(cmd: &mut Command) -> Running {
        let child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        Running(Some(child))
    }

    /// As [`Running::spawn`], with stdout left where `cmd` sends it (a file the test reads as
    /// it grows).
    pub fn spawn_with_stdout(cmd: &mut Command) -> Running {
        Running(Some(cmd.stderr(Stdio::piped()).spawn().unwrap()))
    }

    fn child(&mut self) -> &mut Child {
        self.0.as_mut().expect("still owned")
    }

    pub fn is_running(&mut self) -> bool {
        self.child().try_wait().unwrap().is_none()
    }

    /// Sends a signal by name (`TERM`, `INT`, …) with kill(1).
    pub fn signal(&mut self, name: &str) {
        let pid = self.child().id().to_string();
        let sent = Command::new("kill")
            .args([&format!("-{name}"), &pid])
            .status()
            .unwrap();
        assert!(sent.success(), "kill -{name} {pid}");
    }

    /// Waits for the process to exit; fails the test (after killing it) past `limit`.
    pub fn exit_within(mut self, limit: Duration) -> Output {
        let start = Instant::now();
        while self.is_running() {
            if start.elapsed() > limit {
                let mut child = self.0.take().expect("still owned");
                let _ = child.kill();
                let out = child.wait_with_output().unwrap();
                panic!("still running after {limit:?}:\n{}", text(&out));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.0
            .take()
            .expect("still owned")
            .wait_with_output()
            .unwrap()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(child) = &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
