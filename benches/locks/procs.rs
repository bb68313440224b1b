//! The servers the benchmark runs against, each a child process on 127.0.0.1: a free port, a
//! temporary directory, a bounded wait until it answers, and stopped when dropped, so that a run
//! that fails or panics leaves no server behind.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::net::TcpListener;
use std::os::unix::fs::chown;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use rustix::process::{Pid, Signal, kill_process};
use serde_json::Value;
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::http::Http;

/// How long a server may take to answer after it was started.
const START_LIMIT: Duration = Duration::from_secs(30);
/// Starts tried on fresh ports: another process may take a free port before the server binds it.
const START_TRIES: usize = 5;
/// How long a clean shutdown may take before SIGKILL.
const STOP_LIMIT: Duration = Duration::from_secs(10);

/// The first executable called `name` on PATH or in `extra`.
pub fn find(name: &str, extra: &[PathBuf]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(extra.iter().cloned())
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// What `BIN --version` says, as a bare version number (`3.4.23`), if it says one.
pub fn version(bin: &Path) -> Option<String> {
    let out = Command::new(bin).arg("--version").output().ok()?;
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(|word| word.trim_start_matches("v="))
        .find(|word| word.starts_with(|c: char| c.is_ascii_digit()) && word.contains('.'))
        .map(str::to_string)
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A child process with its output in a log file.
pub struct Proc {
    what: String,
    child: Option<Child>,
    log: PathBuf,
    /// A quick clean shutdown to ask for before SIGKILL: a SIGKILLed PostgreSQL postmaster
    /// leaves its backends running.
    stop: Option<Signal>,
}

impl Proc {
    fn spawn(what: String, cmd: &mut Command, log: PathBuf, stop: Option<Signal>) -> Result<Proc> {
        let out = File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("cannot start {what}"))?;
        Ok(Proc {
            what,
            child: Some(child),
            log,
            stop,
        })
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGKILL: the crash a failover recovers from.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn exited(&mut self) -> bool {
        match &mut self.child {
            Some(child) => !matches!(child.try_wait(), Ok(None)),
            None => true,
        }
    }

    /// Waits until `ready` holds while the process runs. The error says whether the process
    /// exited, and ends with its log.
    async fn wait_until<F, Fut>(&mut self, mut ready: F) -> Result<(), StartError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = bool>,
    {
        let start = Instant::now();
        loop {
            if self.exited() {
                return Err(StartError {
                    exited: true,
                    message: format!("{} exited while starting; {}", self.what, self.log_tail()),
                });
            }
            if ready().await {
                return Ok(());
            }
            if start.elapsed() > START_LIMIT {
                return Err(StartError {
                    exited: false,
                    message: format!(
                        "{} did not answer within {START_LIMIT:?}; {}",
                        self.what,
                        self.log_tail()
                    ),
                });
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// The end of the log, for error messages: the log itself goes with the temporary directory.
    fn log_tail(&self) -> String {
        let mut text = String::new();
        if let Ok(mut f) = File::open(&self.log) {
            let len = f.metadata().map(|m| m.len()).unwrap_or(0);
            let _ = f.seek(SeekFrom::Start(len.saturating_sub(4096)));
            let mut bytes = Vec::new();
            let _ = f.read_to_end(&mut bytes);
            text = String::from_utf8_lossy(&bytes).into_owned();
        }
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(15)..].join("\n");
        if tail.is_empty() {
            "its log is empty".to_string()
        } else {
            format!("its log ends:\n{tail}")
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Some(signal) = self.stop
            && kill_process(Pid::from_child(&child), signal).is_ok()
        {
            let start = Instant::now();
            while start.elapsed() < STOP_LIMIT {
                if !matches!(child.try_wait(), Ok(None)) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// A failed start; one that exited because its port was taken meanwhile is tried again.
struct StartError {
    exited: bool,
    message: String,
}

impl StartError {
    fn port_taken(&self) -> bool {
        self.exited && self.message.to_lowercase().contains("in use")
    }
}

/// Starts a server with `start(port)` on fresh ports until one start is not foiled by a port
/// taken in between.
async fn on_free_port<T, F, Fut>(mut start: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Result<T, StartError>>>,
{
    let mut last = String::new();
    for _ in 0..START_TRIES {
        match start().await? {
            Ok(server) => return Ok(server),
            Err(e) if e.port_taken() => last = e.message,
            Err(e) => bail!(e.message),
        }
    }
    bail!("no free port after {START_TRIES} tries: {last}")
}

/// A command with none of the caller's settings for sentinel or etcd in its environment.
pub fn clean(bin: &Path) -> Command {
    let mut cmd = Command::new(bin);
    for (key, _) in std::env::vars_os() {
        let k = key.to_string_lossy();
        if k.starts_with("SENTINEL_") || k.starts_with("ETCD_") || k == "RUST_LOG" {
            cmd.env_remove(&key);
        }
    }
    cmd
}

/// One `sentinel serve` node.
pub struct Node {
    pub id: u64,
    pub url: String,
    proc: Proc,
}

impl Node {
    pub fn pid(&self) -> Option<u32> {
        self.proc.pid()
    }

    pub fn kill(&mut self) {
        self.proc.kill();
    }
}

/// `sentinel serve` nodes forming one cluster (of one node, or three).
pub struct Sentinel {
    pub nodes: Vec<Node>,
    // Declared after the nodes, so that they stop before their directories go.
    dir: TempDir,
}

impl Sentinel {
    pub async fn start(bin: &Path, size: u64, http: &Http) -> Result<Sentinel> {
        on_free_port(|| Self::try_start(bin, size, http)).await
    }

    async fn try_start(bin: &Path, size: u64, http: &Http) -> Result<Result<Sentinel, StartError>> {
        let dir = tempfile::Builder::new()
            .prefix("sentinel-bench-")
            .tempdir()?;
        let mut addrs = Vec::new();
        for _ in 0..size {
            addrs.push(format!("127.0.0.1:{}", free_port()?));
        }
        let peers: Vec<String> = if size > 1 {
            (1..)
                .zip(&addrs)
                .map(|(id, a)| format!("{id}={a}"))
                .collect()
        } else {
            Vec::new()
        };
        let mut nodes = Vec::new();
        for (id, addr) in (1..).zip(&addrs) {
            let data = dir.path().join(format!("node-{id}"));
            let mut cmd = clean(bin);
            cmd.arg("--data-dir").arg(&data).args([
                "serve",
                "--id",
                &id.to_string(),
                "--listen",
                addr,
            ]);
            for p in &peers {
                cmd.args(["--peer", p]);
            }
            if size > 1 {
                cmd.env("SENTINEL_PEER_TOKEN", "sentinel-bench-peer-token");
            }
            let log = dir.path().join(format!("node-{id}.log"));
            let proc = Proc::spawn(format!("sentinel serve node {id}"), &mut cmd, log, None)?;
            nodes.push(Node {
                id,
                url: format!("http://{addr}"),
                proc,
            });
        }
        // Ready once every node answers as itself and knows a leader.
        for node in &mut nodes {
            let (id, health) = (node.id, format!("{}/health", node.url));
            let ready = node
                .proc
                .wait_until(|| async {
                    matches!(http.get(&health).await,
                        Ok((200, body)) if body["id"].as_u64() == Some(id))
                })
                .await;
            if let Err(e) = ready {
                return Ok(Err(e));
            }
        }
        Ok(Ok(Sentinel { nodes, dir }))
    }

    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }

    /// The leader's URL.
    pub async fn leader_url(&self, http: &Http) -> Result<String> {
        let leader = self.leader(http).await?;
        self.nodes
            .iter()
            .find(|n| n.id == leader)
            .map(|n| n.url.clone())
            .ok_or_else(|| anyhow!("the leader, node {leader}, is not one of the cluster's nodes"))
    }

    /// The leader's id, as `GET /cluster/status` of any node that answers says.
    pub async fn leader(&self, http: &Http) -> Result<u64> {
        let status = self.status(http).await?;
        status["leader"]
            .as_u64()
            .ok_or_else(|| anyhow!("no leader is known: {status}"))
    }

    /// The Raft term: it grows with every election.
    pub async fn term(&self, http: &Http) -> Result<u64> {
        let status = self.status(http).await?;
        status["term"]
            .as_u64()
            .ok_or_else(|| anyhow!("no term in {status}"))
    }

    /// `GET /cluster/status` of the first node that answers.
    async fn status(&self, http: &Http) -> Result<Value> {
        let mut last = String::from("no node answered");
        for node in &self.nodes {
            match http.get(&format!("{}/cluster/status", node.url)).await {
                Ok((200, body)) => return Ok(body),
                Ok((status, body)) => last = format!("node {}: {status} {body}", node.id),
                Err(e) => last = e,
            }
        }
        Err(anyhow!("GET /cluster/status: {last}"))
    }
}

/// One etcd member.
pub struct Etcd {
    pub url: String,
    _server: Proc,
    _dir: TempDir,
}

impl Etcd {
    pub async fn start(bin: &Path, http: &Http) -> Result<Etcd> {
        on_free_port(|| async {
            let dir = tempfile::Builder::new().prefix("etcd-bench-").tempdir()?;
            let client = format!("http://127.0.0.1:{}", free_port()?);
            let peer = format!("http://127.0.0.1:{}", free_port()?);
            let mut cmd = clean(bin);
            cmd.args(["--name", "bench", "--data-dir"])
                .arg(dir.path().join("data"))
                .args(["--listen-client-urls", &client])
                .args(["--advertise-client-urls", &client])
                .args(["--listen-peer-urls", &peer])
                .args(["--initial-advertise-peer-urls", &peer])
                .args(["--initial-cluster", &format!("bench={peer}")])
                .args(["--logger", "zap", "--log-outputs", "stderr"]);
            let log = dir.path().join("etcd.log");
            let mut proc = Proc::spawn("etcd".into(), &mut cmd, log, None)?;
            let health = format!("{client}/health");
            let ready = proc
                .wait_until(|| async {
                    matches!(http.get(&health).await,
                        Ok((200, body)) if body["health"] == "true")
                })
                .await;
            Ok(ready.map(|()| Etcd {
                url: client,
                _server: proc,
                _dir: dir,
            }))
        })
        .await
    }
}

/// One `redis-server`.
pub struct Redis {
    pub url: String,
    _server: Proc,
    _dir: TempDir,
}

impl Redis {
    /// With `fsync_always`, every write reaches the append-only file and is fsynced before the
    /// answer; without, nothing is persisted.
    pub async fn start(bin: &Path, fsync_always: bool) -> Result<Redis> {
        on_free_port(|| async {
            let dir = tempfile::Builder::new().prefix("redis-bench-").tempdir()?;
            let port = free_port()?;
            let mut cmd = Command::new(bin);
            cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--dir"])
                .arg(dir.path())
                .args(["--save", ""]);
            if fsync_always {
                cmd.args(["--appendonly", "yes", "--appendfsync", "always"]);
            } else {
                cmd.args(["--appendonly", "no"]);
            }
            let log = dir.path().join("redis.log");
            let mut proc = Proc::spawn("redis-server".into(), &mut cmd, log, None)?;
            let ready = proc.wait_until(|| ping(port)).await;
            Ok(ready.map(|()| Redis {
                url: format!("redis://127.0.0.1:{port}"),
                _server: proc,
                _dir: dir,
            }))
        })
        .await
    }
}

/// Whether Redis answers PING on `port`.
async fn ping(port: u16) -> bool {
    let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else {
        return false;
    };
    let mut answer = [0u8; 7];
    let exchange = async {
        s.write_all(b"PING\r\n").await?;
        s.read_exact(&mut answer).await
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(1), exchange).await,
        Ok(Ok(_))
    ) && &answer == b"+PONG\r\n"
}

/// The directory with PostgreSQL's `initdb`, `postgres` and `pg_isready`: on PATH, or Debian's
/// versioned directory (the newest).
pub fn postgres_bin() -> Option<PathBuf> {
    let mut versioned: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|dir| {
            dir.filter_map(|e| e.ok())
                .filter_map(|e| {
                    let v = e.file_name().to_str()?.parse::<u32>().ok()?;
                    Some((v, e.path().join("bin")))
                })
                .collect()
        })
        .unwrap_or_default();
    versioned.sort();
    let extra: Vec<PathBuf> = versioned.into_iter().rev().map(|(_, p)| p).collect();
    // A link on PATH (e.g. /usr/local/bin/initdb) leads to the directory with the others.
    let initdb = std::fs::canonicalize(find("initdb", &extra)?).ok()?;
    let dir = initdb.parent()?.to_path_buf();
    (dir.join("postgres").is_file() && dir.join("pg_isready").is_file()).then_some(dir)
}

/// The uid and gid PostgreSQL runs as when the benchmark runs as root (PostgreSQL refuses root).
pub fn unprivileged_user() -> Result<Option<(u32, u32)>> {
    if !rustix::process::geteuid().is_root() {
        return Ok(None);
    }
    let passwd = std::fs::read_to_string("/etc/passwd").context("reading /etc/passwd")?;
    let fields: Vec<&str> = passwd
        .lines()
        .find(|l| l.starts_with("nobody:"))
        .ok_or_else(|| anyhow!("running as root, and there is no user nobody to run PostgreSQL"))?
        .split(':')
        .collect();
    let id = |i: usize| -> Result<u32> {
        fields
            .get(i)
            .and_then(|f| f.parse().ok())
            .ok_or_else(|| anyhow!("/etc/passwd: cannot read the ids of nobody"))
    };
    Ok(Some((id(2)?, id(3)?)))
}

/// A PostgreSQL cluster of its own, with the default durability (`fsync`, synchronous commit).
pub struct Postgres {
    pub url: String,
    _server: Proc,
    _dir: TempDir,
}

impl Postgres {
    pub async fn start(bin: &Path, max_connections: usize) -> Result<Postgres> {
        let user = unprivileged_user()?;
        let as_user = |cmd: &mut Command| {
            if let Some((uid, gid)) = user {
                cmd.uid(uid).gid(gid);
            }
        };
        let dir = tempfile::Builder::new()
            .prefix("postgres-bench-")
            .tempdir()?;
        if let Some((uid, gid)) = user {
            chown(dir.path(), Some(uid), Some(gid))?;
        }
        let data = dir.path().join("data");
        let mut initdb = Command::new(bin.join("initdb"));
        as_user(&mut initdb);
        // --no-sync only spares initdb's own fsyncs; the server below fsyncs every commit.
        let out = initdb
            .arg("-D")
            .arg(&data)
            .args(["-U", "sentinel", "--auth=trust", "-E", "UTF8", "--no-sync"])
            .stdin(Stdio::null())
            .output()
            .context("cannot run initdb")?;
        if !out.status.success() {
            bail!(
                "initdb failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        let isready = bin.join("pg_isready");
        let mut tries = 0;
        loop {
            tries += 1;
            let port = free_port()?.to_string();
            let mut cmd = Command::new(bin.join("postgres"));
            as_user(&mut cmd);
            cmd.arg("-D")
                .arg(&data)
                .args(["-p", &port])
                .args(["-c", "listen_addresses=127.0.0.1"])
                .args(["-c", "unix_socket_directories="])
                .args(["-c", &format!("max_connections={max_connections}")]);
            let log = dir.path().join("postgres.log");
            let mut proc = Proc::spawn("postgres".into(), &mut cmd, log, Some(Signal::INT))?;
            let ready = proc
                .wait_until(|| async {
                    tokio::process::Command::new(&isready)
                        .args(["-q", "-h", "127.0.0.1", "-p", &port, "-U", "sentinel"])
                        .status()
                        .await
                        .is_ok_and(|s| s.success())
                })
                .await;
            match ready {
                Ok(()) => {
                    return Ok(Postgres {
                        url: format!("postgres://sentinel@127.0.0.1:{port}/postgres"),
                        _server: proc,
                        _dir: dir,
                    });
                }
                Err(e) if e.port_taken() && tries < START_TRIES => {}
                Err(e) => bail!(e.message),
            }
        }
    }
}

/// Bytes of the files under `dir`.
pub fn disk_usage(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .filter_map(|e| e.ok())
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => disk_usage(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

/// `VmRSS` and `VmHWM` (peak) of a process, in bytes.
pub fn rss(pid: u32) -> Result<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    let field = |name: &str| -> Result<u64> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.trim().strip_suffix("kB"))
            .and_then(|kb| kb.trim().parse::<u64>().ok())
            .map(|kb| kb * 1024)
            .ok_or_else(|| anyhow!("/proc/{pid}/status has no {name}"))
    };
    Ok((field("VmRSS:")?, field("VmHWM:")?))
}
