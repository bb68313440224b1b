//! Real Redis, PostgreSQL and etcd servers for the tests: each started on a free loopback port in a
//! temporary directory, waited for within a bound, stopped when dropped. A test whose server
//! binaries are missing is skipped with a printed line (`.ci/run` installs them, so CI never
//! skips).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::{PermissionsExt, chown};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a server may take to accept connections.
const START_LIMIT: Duration = Duration::from_secs(30);

/// The first executable called `name` on PATH or in one of `extra` directories.
fn find(name: &str, extra: &[PathBuf]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(extra.iter().cloned())
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// Says why a test does not run; CI installs the servers, so there it never does. Written to
/// stderr directly, past the test harness's capture of `println!`, so that it shows.
pub fn skip(what: &str) {
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED: {what} is not installed (apt-get install redis-server postgresql etcd-server)"
    );
}

/// A port nobody listens on right now. Another process may take it before the server does; the
/// start loops then try another.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits for `ready` while `child` runs; false if the child exited or the limit passed.
fn wait_ready(child: &mut Child, mut ready: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < START_LIMIT {
        if child.try_wait().unwrap().is_some() {
            return false;
        }
        if ready() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    false
}

/// Stops a server process: `signal` (its clean shutdown), then SIGKILL after a bound.
fn stop(child: &mut Child, signal: &str) {
    if child.try_wait().ok().flatten().is_some() {
        return;
    }
    let _ = Command::new("kill")
        .args([&format!("-{signal}"), &child.id().to_string()])
        .status();
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(10) {
        if child.try_wait().ok().flatten().is_some() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// A `redis-server` of its own.
pub struct Redis {
    bin: PathBuf,
    dir: tempfile::TempDir,
    port: u16,
    persistent: bool,
    /// More configuration, as `redis-server` command-line options.
    extra: Vec<String>,
    /// Whether the port speaks TLS only (`--tls-port`, the plain port off).
    tls: bool,
    child: Option<Child>,
}

/// The files of a TLS Redis: its certificate and key, and the authority its clients' certificates
/// must come from.
pub struct RedisTls<'a> {
    pub cert: &'a std::path::Path,
    pub key: &'a std::path::Path,
    pub ca: &'a std::path::Path,
    /// `--tls-auth-clients yes`: a client must present a certificate signed by `ca`.
    pub client_certs: bool,
}

impl Redis {
    /// A server without persistence (`--save '' --appendonly no`); `None` if Redis is missing.
    pub fn start() -> Option<Redis> {
        Self::launch(false, &[], false)
    }

    /// A server that writes every change to its append-only file before answering, so locks
    /// and fencing counters survive [`Redis::restart`].
    pub fn start_persistent() -> Option<Redis> {
        Self::launch(true, &[], false)
    }

    /// A server without persistence and with more configuration, such as `["--maxmemory",
    /// "4mb"]` or `["--rename-command", "CONFIG", ""]`.
    pub fn start_with(extra: &[&str]) -> Option<Redis> {
        Self::launch(false, extra, false)
    }

    /// A server that speaks TLS only; [`Redis::url`] is then `rediss://`.
    pub fn start_tls(tls: &RedisTls) -> Option<Redis> {
        let path = |p: &std::path::Path| p.to_str().unwrap().to_string();
        let extra = [
            "--tls-cert-file".to_string(),
            path(tls.cert),
            "--tls-key-file".to_string(),
            path(tls.key),
            "--tls-ca-cert-file".to_string(),
            path(tls.ca),
            "--tls-auth-clients".to_string(),
            if tls.client_certs { "yes" } else { "no" }.to_string(),
        ];
        let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
        Self::launch(false, &extra, true)
    }

    fn launch(persistent: bool, extra: &[&str], tls: bool) -> Option<Redis> {
        let Some(bin) = find("redis-server", &[]) else {
            skip("redis-server");
            return None;
        };
        let mut r = Redis {
            bin,
            dir: tempfile::tempdir().unwrap(),
            port: 0,
            persistent,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            tls,
            child: None,
        };
        for _ in 0..5 {
            r.port = free_port();
            if r.spawn() {
                return Some(r);
            }
        }
        panic!("redis-server did not start; log:\n{}", r.log());
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("redis.log")).unwrap_or_default()
    }

    fn spawn(&mut self) -> bool {
        let port = self.port.to_string();
        let dir = self.dir.path().to_str().unwrap().to_string();
        let mut cmd = Command::new(&self.bin);
        if self.tls {
            cmd.args(["--port", "0", "--tls-port", &port]);
        } else {
            cmd.args(["--port", &port]);
        }
        cmd.args(["--bind", "127.0.0.1", "--dir", &dir])
            .args(["--save", "", "--logfile", "redis.log"])
            .args(&self.extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if self.persistent {
            cmd.args(["--appendonly", "yes", "--appendfsync", "always"]);
        } else {
            cmd.args(["--appendonly", "no"]);
        }
        let mut child = cmd.spawn().unwrap();
        let addr = format!("127.0.0.1:{port}");
        // A TLS port is ready once it accepts connections: a plain PING cannot tell more.
        let tls = self.tls;
        let up = wait_ready(&mut child, || {
            if tls {
                TcpStream::connect(&addr).is_ok()
            } else {
                ping(&addr)
            }
        });
        if !up {
            let _ = child.kill();
            let _ = child.wait();
            return false;
        }
        self.child = Some(child);
        true
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn url(&self) -> String {
        let scheme = if self.tls { "rediss" } else { "redis" };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// Stops the server (SIGTERM: Redis flushes its append-only file) and starts it again on the
    /// same port and directory.
    pub fn restart(&mut self) {
        if let Some(mut child) = self.child.take() {
            stop(&mut child, "TERM");
        }
        assert!(
            self.spawn(),
            "redis-server did not restart:\n{}",
            self.log()
        );
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            stop(child, "TERM");
        }
    }
}

/// Whether a Redis server answers PING at `addr`.
fn ping(addr: &str) -> bool {
    let Ok(mut s) = TcpStream::connect(addr) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
    if s.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 7];
    s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
}

/// A PostgreSQL cluster of its own: `initdb` into a temporary directory, `postgres` on a loopback
/// port with no Unix socket. PostgreSQL refuses to run as root, so under root both run as
/// `nobody`, which owns the directory. The superuser is `sentinel`, trusted without a password;
/// other roles the tests make log in with a password.
pub struct Postgres {
    bin: PathBuf,
    dir: tempfile::TempDir,
    port: u16,
    child: Option<Child>,
    /// TLS on (the certificate and key are in the data directory), and only TLS connections
    /// accepted.
    tls: bool,
}

/// The directory with `initdb`, `postgres` and `pg_isready`: on PATH, or Debian's versioned
/// directory (the newest).
fn postgres_bin() -> Option<PathBuf> {
    let mut versioned: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|dir| {
            dir.filter_map(|e| e.ok())
                .map(|e| e.path().join("bin"))
                .collect()
        })
        .unwrap_or_default();
    versioned.sort_by_key(|p| {
        p.parent()
            .and_then(|v| v.file_name())
            .and_then(|v| v.to_str())
            .and_then(|v| v.parse::<u32>().ok())
            .unwrap_or(0)
    });
    versioned.reverse();
    // A link on PATH (e.g. /usr/local/bin/initdb) leads to the directory with the others.
    let initdb = std::fs::canonicalize(find("initdb", &versioned)?).ok()?;
    let dir = initdb.parent()?.to_path_buf();
    (dir.join("postgres").is_file() && dir.join("pg_isready").is_file()).then_some(dir)
}

/// The uid and gid of `nobody`, from /etc/passwd.
fn nobody() -> (u32, u32) {
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap();
    let line = passwd
        .lines()
        .find(|l| l.starts_with("nobody:"))
        .expect("a nobody user");
    let fields: Vec<&str> = line.split(':').collect();
    (fields[2].parse().unwrap(), fields[3].parse().unwrap())
}

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// `cmd` as the unprivileged user when we are root.
fn unprivileged(mut cmd: Command) -> Command {
    if is_root() {
        let (uid, gid) = nobody();
        cmd.uid(uid).gid(gid);
    }
    cmd
}

impl Postgres {
    /// A fresh cluster, started; `None` if PostgreSQL is missing.
    pub fn start() -> Option<Postgres> {
        Postgres::start_with(None)
    }

    /// A fresh cluster serving TLS with this PEM certificate (chain) and key, and refusing
    /// connections without TLS (`hostssl` only).
    pub fn start_tls(cert_pem: &str, key_pem: &str) -> Option<Postgres> {
        Postgres::start_with(Some((cert_pem, key_pem)))
    }

    fn start_with(tls: Option<(&str, &str)>) -> Option<Postgres> {
        let Some(bin) = postgres_bin() else {
            skip("PostgreSQL (initdb, postgres)");
            return None;
        };
        let dir = tempfile::tempdir().unwrap();
        if is_root() {
            let (uid, gid) = nobody();
            chown(dir.path(), Some(uid), Some(gid)).unwrap();
        }
        let out = unprivileged(Command::new(bin.join("initdb")))
            .arg("-D")
            .arg(dir.path().join("data"))
            .args(["-U", "sentinel", "--auth=trust", "-E", "UTF8", "--no-sync"])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let data = dir.path().join("data");
        // Passwords for the roles the tests make; the superuser stays trusted.
        let mut hba = String::from("local all all trust\n");
        let host = if tls.is_some() { "hostssl" } else { "host" };
        hba += &format!("{host} all sentinel 127.0.0.1/32 trust\n");
        hba += &format!("{host} all all 127.0.0.1/32 scram-sha-256\n");
        std::fs::write(data.join("pg_hba.conf"), hba).unwrap();
        if let Some((cert, key)) = tls {
            // PostgreSQL refuses a key others may read, and must own it.
            for (name, pem) in [("server.crt", cert), ("server.key", key)] {
                let path = data.join(name);
                std::fs::write(&path, pem).unwrap();
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
                if is_root() {
                    let (uid, gid) = nobody();
                    chown(&path, Some(uid), Some(gid)).unwrap();
                }
            }
        }
        let mut pg = Postgres {
            bin,
            dir,
            port: 0,
            child: None,
            tls: tls.is_some(),
        };
        for _ in 0..5 {
            pg.port = free_port();
            if pg.spawn() {
                return Some(pg);
            }
        }
        panic!("postgres did not start; log:\n{}", pg.log());
    }

    /// The server's log; it logs each connection with its application_name.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("postgres.log")).unwrap_or_default()
    }

    fn spawn(&mut self) -> bool {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("postgres.log"))
            .unwrap();
        if is_root() {
            let (uid, gid) = nobody();
            chown(self.dir.path().join("postgres.log"), Some(uid), Some(gid)).unwrap();
        }
        let mut child = unprivileged(Command::new(self.bin.join("postgres")))
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .args(["-p", &self.port.to_string()])
            .args(["-c", "listen_addresses=127.0.0.1"])
            .args(["-c", "unix_socket_directories="])
            .args(["-c", "fsync=off", "-c", "max_connections=60"])
            .args(["-c", if self.tls { "ssl=on" } else { "ssl=off" }])
            .args(["-c", "log_connections=on"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let isready = self.bin.join("pg_isready");
        let port = self.port.to_string();
        let up = wait_ready(&mut child, || {
            Command::new(&isready)
                .args(["-q", "-h", "127.0.0.1", "-p", &port, "-U", "sentinel"])
                .status()
                .is_ok_and(|s| s.success())
        });
        if !up {
            stop(&mut child, "INT");
            return false;
        }
        self.child = Some(child);
        true
    }

    pub fn url(&self) -> String {
        format!("postgres://sentinel@127.0.0.1:{}/postgres", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Runs SQL as the superuser with `psql` (stopping at the first error); its output, one row a
    /// line, columns separated by `|`.
    pub fn psql(&self, sql: &str) -> String {
        let out = Command::new(self.bin.join("psql"))
            .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"])
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(["-U", "sentinel", "-d", "postgres", "-c", sql])
            .env("PGSSLMODE", if self.tls { "require" } else { "disable" })
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "psql {sql:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// A fast shutdown (SIGINT: connections are closed, committed data kept), then a start on the
    /// same port and data directory.
    pub fn restart(&mut self) {
        if let Some(mut child) = self.child.take() {
            stop(&mut child, "INT");
        }
        assert!(self.spawn(), "postgres did not restart:\n{}", self.log());
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            stop(child, "INT");
        }
    }
}

/// A one-member etcd cluster of its own (Debian's `etcd-server`): client and peer URLs on free
/// loopback ports, data in a temporary directory. A short heartbeat and election timeout make
/// etcd's shortest lease one second, so a 1 s lease really ends after about a second.
pub struct Etcd {
    bin: PathBuf,
    dir: tempfile::TempDir,
    client: u16,
    peer: u16,
    child: Option<Child>,
}

impl Etcd {
    /// A fresh member, started; `None` if etcd is missing.
    pub fn start() -> Option<Etcd> {
        let Some(bin) = find("etcd", &[]) else {
            skip("etcd (etcd-server)");
            return None;
        };
        let mut e = Etcd {
            bin,
            dir: tempfile::tempdir().unwrap(),
            client: 0,
            peer: 0,
            child: None,
        };
        for _ in 0..5 {
            e.client = free_port();
            e.peer = free_port();
            if e.client != e.peer && e.spawn() {
                return Some(e);
            }
            // A failed start may have left a member directory for other ports.
            let _ = std::fs::remove_dir_all(e.dir.path().join("data"));
        }
        panic!("etcd did not start; log:\n{}", e.log());
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("etcd.log")).unwrap_or_default()
    }

    fn spawn(&mut self) -> bool {
        let client = self.url();
        let peer = format!("http://127.0.0.1:{}", self.peer);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("etcd.log"))
            .unwrap();
        let mut cmd = Command::new(&self.bin);
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("ETCD_") {
                cmd.env_remove(k);
            }
        }
        let mut child = cmd
            .args(["--name", "test", "--data-dir"])
            .arg(self.dir.path().join("data"))
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("test={peer}")])
            .args(["--heartbeat-interval", "50", "--election-timeout", "500"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let addr = format!("127.0.0.1:{}", self.client);
        let up = wait_ready(&mut child, || healthy(&addr));
        if !up {
            stop(&mut child, "KILL");
            return false;
        }
        self.child = Some(child);
        true
    }

    /// The client URL, for `--etcd-endpoints`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.client)
    }

    /// `kill -9`, then a start on the same ports and data directory.
    pub fn restart(&mut self) {
        if let Some(mut child) = self.child.take() {
            stop(&mut child, "KILL");
        }
        assert!(self.spawn(), "etcd did not restart:\n{}", self.log());
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            stop(child, "TERM");
        }
    }
}

/// Whether etcd at `addr` says it is healthy (it has a leader and serves requests).
fn healthy(addr: &str) -> bool {
    let Ok(mut s) = TcpStream::connect(addr) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
    let request = format!("GET /health HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    if s.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    answer.starts_with("HTTP/1.1 200") && answer.contains(r#""health":"true""#)
}

/// An etcd cluster of `n` members of its own on loopback, each with its own ports and data
/// directory, formed with `--initial-cluster`; members can be killed (`kill -9`).
pub struct EtcdCluster {
    bin: PathBuf,
    dir: tempfile::TempDir,
    /// (client port, peer port) per member.
    ports: Vec<(u16, u16)>,
    children: Vec<Option<Child>>,
}

impl EtcdCluster {
    /// `n` members, started, with a leader; `None` if etcd is missing.
    pub fn start(n: usize) -> Option<EtcdCluster> {
        let Some(bin) = find("etcd", &[]) else {
            skip("etcd (etcd-server)");
            return None;
        };
        for _ in 0..5 {
            let mut ports: Vec<(u16, u16)> = (0..n).map(|_| (free_port(), free_port())).collect();
            let mut all: Vec<u16> = ports.iter().flat_map(|(c, p)| [*c, *p]).collect();
            all.sort_unstable();
            all.dedup();
            if all.len() != 2 * n {
                continue;
            }
            let mut c = EtcdCluster {
                bin: bin.clone(),
                dir: tempfile::tempdir().unwrap(),
                ports: std::mem::take(&mut ports),
                children: Vec::new(),
            };
            if c.spawn_all() {
                return Some(c);
            }
        }
        panic!("an etcd cluster of {n} did not start");
    }

    fn spawn_all(&mut self) -> bool {
        let members: Vec<String> = self
            .ports
            .iter()
            .enumerate()
            .map(|(i, (_, p))| format!("m{i}=http://127.0.0.1:{p}"))
            .collect();
        let initial = members.join(",");
        for (i, (client, peer)) in self.ports.clone().into_iter().enumerate() {
            let client = format!("http://127.0.0.1:{client}");
            let peer = format!("http://127.0.0.1:{peer}");
            let log = std::fs::File::create(self.dir.path().join(format!("m{i}.log"))).unwrap();
            let child = Command::new(&self.bin)
                .args(["--name", &format!("m{i}"), "--data-dir"])
                .arg(self.dir.path().join(format!("m{i}")))
                .args(["--listen-client-urls", &client])
                .args(["--advertise-client-urls", &client])
                .args(["--listen-peer-urls", &peer])
                .args(["--initial-advertise-peer-urls", &peer])
                .args(["--initial-cluster", &initial])
                .args(["--initial-cluster-state", "new"])
                .args(["--heartbeat-interval", "50", "--election-timeout", "500"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .unwrap();
            self.children.push(Some(child));
        }
        let start = Instant::now();
        while start.elapsed() < START_LIMIT {
            if self
                .children
                .iter_mut()
                .any(|c| c.as_mut().unwrap().try_wait().unwrap().is_some())
            {
                break;
            }
            if self.leader().is_some() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        for child in self.children.iter_mut().flatten() {
            stop(child, "KILL");
        }
        self.children.clear();
        false
    }

    /// Every member's client URL, comma-separated, for `--etcd-endpoints`, member `first`'s
    /// first (clients start with the first endpoint).
    pub fn urls(&self, first: usize) -> String {
        let mut order: Vec<usize> = (0..self.ports.len()).collect();
        order.retain(|&i| i != first);
        order.insert(0, first);
        let urls: Vec<String> = order
            .iter()
            .map(|&i| format!("http://127.0.0.1:{}", self.ports[i].0))
            .collect();
        urls.join(",")
    }

    /// The index of the member every running member names as leader, once all agree.
    pub fn leader(&self) -> Option<usize> {
        let running: Vec<usize> = (0..self.ports.len())
            .filter(|&i| self.children.get(i).is_some_and(Option::is_some))
            .collect();
        let seen: Vec<(u64, u64)> = running
            .iter()
            .map(|&i| status(&format!("127.0.0.1:{}", self.ports[i].0)))
            .collect::<Option<_>>()?;
        let leader = seen.first()?.1;
        if seen.iter().any(|(_, l)| *l != leader) {
            return None;
        }
        running
            .iter()
            .zip(&seen)
            .find(|(_, (member, _))| *member == leader)
            .map(|(i, _)| *i)
    }

    /// `kill -9` of member `i`.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.children[i].take() {
            stop(&mut child, "KILL");
        }
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for child in self.children.iter_mut().flatten() {
            stop(child, "TERM");
        }
    }
}

/// A member's id and the leader it knows, from `POST /v3/maintenance/status`.
fn status(addr: &str) -> Option<(u64, u64)> {
    let mut s = TcpStream::connect(addr).ok()?;
    let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
    let request = format!(
        "POST /v3/maintenance/status HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 2\r\n\
         Connection: close\r\n\r\n{{}}"
    );
    s.write_all(request.as_bytes()).ok()?;
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    let body = answer.split_once("\r\n\r\n")?.1;
    let v: serde_json::Value = serde_json::from_str(body.trim()).ok()?;
    let id = |v: &serde_json::Value| v.as_str()?.parse::<u64>().ok();
    let member = id(&v["header"]["member_id"])?;
    let leader = id(&v["leader"]).filter(|l| *l != 0)?;
    Some((member, leader))
}
