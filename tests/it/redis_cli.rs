//! The Redis backend against real `redis-server`s: its options, its errors and what it never
//! prints (through the binary), and the Redis pitfalls it guards against: an eviction policy that
//! could drop a lock, a fencing counter lost anyway, a release whose answer was lost, and TLS
//! with certificates the tests make.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use sentinel::backend::LockBackend;
use sentinel::error::ExitCode;
use sentinel::lock::{
    AcquireRequest, Attempt, Claimant, HoldKind, LockId, ReleaseRequest, RenewRequest, Takeover,
};
use sentinel::redis::{DEFAULT_PREFIX, RedisBackend};
use sentinel::tls::ClientTls;

use crate::servers::{Redis, RedisTls};
use crate::support::{closed_port, code, sentinel, stdout_json, text};

fn redis(data: &std::path::Path, url: &str, worker: &str, args: &[&str]) -> std::process::Output {
    sentinel(data)
        .args(["--backend", "redis", "--worker-id", worker])
        .env("SENTINEL_REDIS_URL", url)
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn bad_urls_are_usage_errors_and_passwords_are_never_printed() {
    let data = tempfile::tempdir().unwrap();
    for url in [
        "",
        "localhost:6379",
        "http://localhost",
        "rediss://:hunter2@localhost/#insecure",
    ] {
        let out = redis(data.path(), url, "w", &["claim", "x"]);
        assert_eq!(code(&out), 2, "{url}: {}", text(&out));
        assert!(!text(&out).contains("hunter2"), "{}", text(&out));
    }
    // Nothing listens on this port: exit 8 after the retries, within the deadline.
    let port = closed_port();
    let url = format!("redis://:hunter2@127.0.0.2:{port}");
    let started = Instant::now();
    for json in [false, true] {
        let mut args = vec!["-vv", "claim", "x"];
        if json {
            args.push("--json");
        }
        let out = redis(data.path(), &url, "w", &args);
        assert_eq!(code(&out), 8, "{}", text(&out));
        assert!(!text(&out).contains("hunter2"), "{}", text(&out));
        assert!(
            text(&out).contains(&format!("redis at 127.0.0.2:{port}")),
            "{}",
            text(&out)
        );
    }
    assert!(started.elapsed() < Duration::from_secs(25));
}

#[test]
fn wrong_credentials_are_exit_5_without_the_password() {
    let Some(server) = Redis::start() else { return };
    let data = tempfile::tempdir().unwrap();
    let url = server.url().replace("redis://", "redis://:hunter2@");
    let out = redis(data.path(), &url, "w", &["claim", "x"]);
    assert_eq!(code(&out), 5, "{}", text(&out));
    assert!(!text(&out).contains("hunter2"), "{}", text(&out));
}

#[test]
fn expired_leases_are_gone_so_the_janitor_finds_nothing_stale() {
    let Some(server) = Redis::start() else { return };
    let data = tempfile::tempdir().unwrap();
    let url = server.url();
    let out = redis(data.path(), &url, "a", &["claim", "short", "--ttl", "1s"]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    let out = redis(data.path(), &url, "a", &["claim", "long", "--ttl", "1m"]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    std::thread::sleep(Duration::from_millis(1300));
    let st = stdout_json(&redis(data.path(), &url, "x", &["status", "--json"]));
    let names: Vec<&str> = st["locks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["lock"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["long"]);
    let sweep = stdout_json(&redis(
        data.path(),
        &url,
        "j",
        &["steal-stale", "--all", "--json"],
    ));
    assert_eq!(sweep["ok"], true, "{sweep}");
    let out = redis(data.path(), &url, "b", &["claim", "short", "--json"]);
    assert_eq!(stdout_json(&out)["fencing_token"], 2);
    // Metrics count per backend.
    let m = stdout_json(&redis(data.path(), &url, "x", &["metrics", "--json"]));
    assert_eq!(m["by_backend"]["redis"]["total_acquisitions"], 3, "{m}");
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn acquire(lock: &LockId, worker: &str, takeover: Takeover) -> AcquireRequest {
    AcquireRequest {
        lock: lock.clone(),
        claimant: Claimant {
            worker_id: worker.into(),
            node_id: "node-1".into(),
        },
        ttl: Duration::from_secs(600),
        takeover,
        task_info: Default::default(),
        readopt: false,
        attempt: 0,
        wait: Duration::ZERO,
        kind: HoldKind::Exclusive,
    }
}

/// The fencing token of a claim that must be granted.
fn grant(rt: &tokio::runtime::Runtime, b: &RedisBackend, req: &AcquireRequest) -> u64 {
    match rt.block_on(b.try_acquire(req)).unwrap() {
        Attempt::Granted(g) => g.holder.fencing_token,
        Attempt::Held(h) => panic!("expected a grant, held by {h:?}"),
    }
}

fn release(lock: &LockId, worker: &str, force: bool) -> ReleaseRequest {
    ReleaseRequest {
        lock: lock.clone(),
        worker_id: worker.into(),
        force,
        fencing_token: None,
    }
}

/// A plain connection to the test's server, for what sentinel does not do itself.
fn raw(server: &Redis) -> redis::Connection {
    redis::Client::open(server.url())
        .unwrap()
        .get_connection()
        .unwrap()
}

#[test]
fn a_redis_that_may_evict_locks_is_refused() {
    let data = tempfile::tempdir().unwrap();
    // volatile-* evicts keys with a TTL, which every lease has. The last server hides CONFIG,
    // and INFO still tells.
    for extra in [
        &["--maxmemory-policy", "allkeys-lru"][..],
        &["--maxmemory-policy", "volatile-lru"],
        &[
            "--maxmemory-policy",
            "allkeys-random",
            "--rename-command",
            "CONFIG",
            "",
        ],
    ] {
        let Some(server) = Redis::start_with(extra) else {
            return;
        };
        let out = redis(data.path(), &server.url(), "w", &["claim", "x"]);
        assert_eq!(code(&out), 8, "{extra:?}: {}", text(&out));
        assert!(
            text(&out).contains(&format!("maxmemory-policy {}", extra[1])),
            "{}",
            text(&out)
        );
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg("*")
            .query(&mut raw(&server))
            .unwrap();
        assert!(keys.is_empty(), "a refused server was written to: {keys:?}");
    }
}

#[test]
fn a_full_redis_refuses_claims_with_exit_8() {
    let Some(server) = Redis::start_with(&["--maxmemory", "4mb"]) else {
        return;
    };
    let data = tempfile::tempdir().unwrap();
    let url = server.url();
    let out = redis(data.path(), &url, "a", &["claim", "held", "--ttl", "10m"]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    // noeviction (the default): writes are refused once maxmemory is reached, nothing dropped.
    let mut conn = raw(&server);
    let filler = vec![b'x'; 4096];
    for i in 0.. {
        assert!(i < 10_000, "Redis never refused a write");
        let set: redis::RedisResult<()> = redis::cmd("SET")
            .arg(format!("fill:{i}"))
            .arg(&filler)
            .query(&mut conn);
        if set.is_err() {
            break;
        }
    }
    let out = redis(data.path(), &url, "b", &["claim", "other"]);
    assert_eq!(code(&out), 8, "{}", text(&out));
    assert!(text(&out).contains("out of memory"), "{}", text(&out));
    let st = stdout_json(&redis(
        data.path(),
        &url,
        "x",
        &["status", "held", "--json"],
    ));
    assert_eq!(st["holder"]["worker_id"], "a", "{st}");
}

/// Whether the fencing counter of `name` exists, found with `SCAN`, which (unlike a read of the
/// key) does not count as a use that would keep it from eviction.
fn counter_exists(conn: &mut redis::Connection, name: &str) -> bool {
    let pattern = format!("{DEFAULT_PREFIX}token:{name}");
    let mut cursor = 0u64;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(&pattern)
            .arg("COUNT")
            .arg(1000)
            .query(conn)
            .unwrap();
        if !keys.is_empty() {
            return true;
        }
        if next == 0 {
            return false;
        }
        cursor = next;
    }
}

#[test]
fn an_evicted_fencing_counter_never_issues_a_token_again() {
    // A managed Redis that hides its policy (CONFIG and INFO renamed away) and evicts anything.
    let Some(server) = Redis::start_with(&[
        "--maxmemory",
        "4mb",
        "--maxmemory-policy",
        "allkeys-lru",
        "--rename-command",
        "CONFIG",
        "",
        "--rename-command",
        "INFO",
        "",
    ]) else {
        return;
    };
    let rt = runtime();
    let b = RedisBackend::new(&server.url()).unwrap();
    let job = b.parse_lock("job").unwrap();
    for token in 1..=2 {
        assert_eq!(grant(&rt, &b, &acquire(&job, "a", Takeover::None)), token);
        rt.block_on(b.release(&release(&job, "a", false))).unwrap();
    }
    assert_eq!(grant(&rt, &b, &acquire(&job, "a", Takeover::None)), 3);
    // Fill memory until Redis evicts the counter (and maybe the lease with it), then free it
    // again so that nothing else is evicted.
    let mut conn = raw(&server);
    let filler = vec![b'x'; 4096];
    let mut filled = 0usize;
    while counter_exists(&mut conn, "job") {
        assert!(filled < 200_000, "Redis never evicted the counter");
        for _ in 0..20 {
            let _: () = redis::cmd("SET")
                .arg(format!("fill:{filled}"))
                .arg(&filler)
                .query(&mut conn)
                .unwrap();
            filled += 1;
        }
    }
    for chunk in (0..filled).collect::<Vec<_>>().chunks(500) {
        let keys: Vec<String> = chunk.iter().map(|i| format!("fill:{i}")).collect();
        let _: i64 = redis::cmd("DEL").arg(keys).query(&mut conn).unwrap();
    }
    // The holder's next renewal carries its token, the high-water mark: held (the lease
    // survived) or lost (evicted with the counter), Redis gets the mark back either way.
    let renewed = rt.block_on(b.renew(&RenewRequest {
        lock: job.clone(),
        worker_id: "a".into(),
        fencing_token: Some(3),
        ttl: None,
    }));
    match renewed {
        Ok(h) => assert_eq!(h.fencing_token, 3),
        Err(e) => assert_eq!(e.exit_code(), ExitCode::NotOwner, "{e}"),
    }
    let next = grant(&rt, &b, &acquire(&job, "b", Takeover::Any));
    assert!(next > 3, "token {next} issued again after 3");
    // The binary works there too, and says at debug level why it could not check the policy.
    let data = tempfile::tempdir().unwrap();
    let out = redis(data.path(), &server.url(), "b", &["-vv", "status", "job"]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert!(
        text(&out).contains("maxmemory-policy is unknown"),
        "{}",
        text(&out)
    );
}

/// A TCP proxy in front of Redis that loses one answer: the first command whose bytes contain
/// `marker` is passed on, and once Redis has answered it the connection is cut instead of the
/// answer passed back. So the command ran and the client cannot know. Later connections are
/// passed through untouched.
pub(crate) struct LosingProxy {
    pub(crate) port: u16,
    pub(crate) lost: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    accepting: Option<JoinHandle<()>>,
}

impl LosingProxy {
    pub(crate) fn start(upstream: u16, marker: &'static [u8]) -> LosingProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let (lost, stop) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicBool::new(false)),
        );
        let accepting = {
            let (lost, stop) = (lost.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    match listener.accept() {
                        Ok((client, _)) => {
                            client.set_nonblocking(false).unwrap();
                            let server = TcpStream::connect(("127.0.0.1", upstream)).unwrap();
                            Self::pipe(client, server, marker, lost.clone());
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(10)),
                    }
                }
            })
        };
        LosingProxy {
            port,
            lost,
            stop,
            accepting: Some(accepting),
        }
    }

    /// Two threads per connection, one each way; both end when either side closes.
    fn pipe(client: TcpStream, server: TcpStream, marker: &'static [u8], lost: Arc<AtomicBool>) {
        let pending = Arc::new(AtomicBool::new(false));
        let close = {
            let (c, s) = (client.try_clone().unwrap(), server.try_clone().unwrap());
            Arc::new(move || {
                let _ = c.shutdown(Shutdown::Both);
                let _ = s.shutdown(Shutdown::Both);
            })
        };
        let (mut c_in, mut s_out) = (client.try_clone().unwrap(), server.try_clone().unwrap());
        let (pending_in, close_in, lost_in) = (pending.clone(), close.clone(), lost.clone());
        std::thread::spawn(move || {
            let mut buf = [0u8; 16384];
            while let Ok(n @ 1..) = c_in.read(&mut buf) {
                let chunk = &buf[..n];
                if !lost_in.load(Ordering::SeqCst)
                    && chunk.windows(marker.len()).any(|w| w == marker)
                {
                    pending_in.store(true, Ordering::SeqCst);
                }
                if s_out.write_all(chunk).is_err() {
                    break;
                }
            }
            close_in();
        });
        let (mut s_in, mut c_out) = (server, client);
        std::thread::spawn(move || {
            let mut buf = [0u8; 16384];
            while let Ok(n @ 1..) = s_in.read(&mut buf) {
                let chunk = &buf[..n];
                // A script not loaded yet did not run: the client sends it again.
                if pending.load(Ordering::SeqCst) && !chunk.starts_with(b"-NOSCRIPT") {
                    lost.store(true, Ordering::SeqCst);
                    break;
                }
                pending.store(false, Ordering::SeqCst);
                if c_out.write_all(chunk).is_err() {
                    break;
                }
            }
            close();
        });
    }
}

impl Drop for LosingProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.accepting.take() {
            let _ = t.join();
        }
    }
}

#[test]
fn a_release_whose_answer_was_lost_still_reports_what_it_freed() {
    let Some(server) = Redis::start() else { return };
    let data = tempfile::tempdir().unwrap();
    let worker = "releaser-9f2c";
    let out = redis(data.path(), &server.url(), worker, &["claim", "job"]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    // Only the release goes through the proxy, and only it names the worker.
    let proxy = LosingProxy::start(server.port(), worker.as_bytes());
    let url = format!("redis://127.0.0.1:{}", proxy.port);
    let out = redis(data.path(), &url, worker, &["release", "job", "--json"]);
    assert!(proxy.lost.load(Ordering::SeqCst), "no answer was lost");
    assert_eq!(code(&out), 0, "{}", text(&out));
    let r = stdout_json(&out);
    assert_eq!(r["was_held"], true, "{r}");
    assert_eq!(r["previous"]["worker_id"], worker, "{r}");
    let st = stdout_json(&redis(
        data.path(),
        &server.url(),
        "x",
        &["status", "job", "--json"],
    ));
    assert_eq!(st["held"], false, "{st}");
    // The receipt that made the retry exact goes away by itself.
    let mut conn = raw(&server);
    let receipts: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{DEFAULT_PREFIX}released:*"))
        .query(&mut conn)
        .unwrap();
    assert_eq!(receipts.len(), 1, "{receipts:?}");
    let ttl: i64 = redis::cmd("PTTL")
        .arg(&receipts[0])
        .query(&mut conn)
        .unwrap();
    assert!((1..=60_000).contains(&ttl), "{ttl}");
}

/// Certificates for the TLS tests: an authority, a server certificate for 127.0.0.1 and a client
/// certificate signed by it, and a second authority that signed neither.
struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    fn new() -> Pki {
        use rcgen::{
            BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose,
            IsCa, KeyPair,
        };
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, pem: String| std::fs::write(dir.path().join(name), pem).unwrap();
        // Distinct names: OpenSSL (the server's side) takes a certificate whose issuer is its own
        // subject for a self-signed one.
        let authority = |name: &str| {
            let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
            p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            p.distinguished_name.push(DnType::CommonName, name);
            CertifiedIssuer::self_signed(p, KeyPair::generate().unwrap()).unwrap()
        };
        let ca = authority("sentinel test CA");
        write("ca.pem", ca.pem());
        write("other-ca.pem", authority("another CA").pem());
        for (name, usage) in [
            ("server", ExtendedKeyUsagePurpose::ServerAuth),
            ("client", ExtendedKeyUsagePurpose::ClientAuth),
        ] {
            let key = KeyPair::generate().unwrap();
            let mut p = CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap();
            p.distinguished_name.push(DnType::CommonName, name);
            p.extended_key_usages = vec![usage];
            write(
                &format!("{name}.pem"),
                p.signed_by(&key, &ca).unwrap().pem(),
            );
            write(&format!("{name}-key.pem"), key.serialize_pem());
        }
        Pki { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn server(&self, client_certs: bool) -> Option<Redis> {
        Redis::start_tls(&RedisTls {
            cert: &self.path("server.pem"),
            key: &self.path("server-key.pem"),
            ca: &self.path("ca.pem"),
            client_certs,
        })
    }

    /// Trusting `ca`, presenting the client certificate or not.
    fn tls(&self, ca: &str, client_cert: bool) -> ClientTls {
        ClientTls {
            ca_cert: Some(self.path(ca)),
            client_cert: client_cert.then(|| self.path("client.pem")),
            client_key: client_cert.then(|| self.path("client-key.pem")),
        }
    }
}

/// A claim on `server` with `tls`: its fencing token, or the error's exit code and message.
fn tls_claim(server: &Redis, tls: &ClientTls) -> Result<u64, (ExitCode, String)> {
    let rt = runtime();
    let b = RedisBackend::with_options(&server.url(), DEFAULT_PREFIX, tls).unwrap();
    let job = b.parse_lock("job").unwrap();
    match rt.block_on(b.try_acquire(&acquire(&job, "a", Takeover::Any))) {
        Ok(Attempt::Granted(g)) => Ok(g.holder.fencing_token),
        Ok(Attempt::Held(h)) => panic!("held by {h:?}"),
        Err(e) => Err((e.exit_code(), e.to_string())),
    }
}

#[test]
fn rediss_checks_the_servers_certificate() {
    let pki = Pki::new();
    let Some(server) = pki.server(false) else {
        return;
    };
    assert!(server.url().starts_with("rediss://"));
    assert_eq!(tls_claim(&server, &pki.tls("ca.pem", false)), Ok(1));
    // An authority that did not sign it: refused at once, as an authentication failure.
    let started = Instant::now();
    let (exit, message) = tls_claim(&server, &pki.tls("other-ca.pem", false)).unwrap_err();
    assert_eq!(exit, ExitCode::Auth, "{message}");
    assert!(
        message.contains("TLS") && message.contains("--ca-cert"),
        "{message}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "retried a TLS failure"
    );
    // The binary trusts the system's roots, which did not sign it either.
    let data = tempfile::tempdir().unwrap();
    let out = redis(data.path(), &server.url(), "w", &["claim", "job"]);
    assert_eq!(code(&out), 5, "{}", text(&out));
    assert!(text(&out).contains("TLS handshake"), "{}", text(&out));
    // Given the authority with --ca-cert (or SENTINEL_CA_CERT), the binary trusts it.
    let ca = pki.path("ca.pem");
    let ca = ca.to_str().unwrap();
    let out = redis(
        data.path(),
        &server.url(),
        "w",
        &["claim", "cli", "--ca-cert", ca],
    );
    assert_eq!(code(&out), 0, "{}", text(&out));
    let out = sentinel(data.path())
        .args(["--backend", "redis", "--worker-id", "w", "release", "cli"])
        .env("SENTINEL_REDIS_URL", server.url())
        .env("SENTINEL_CA_CERT", ca)
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{}", text(&out));
}

#[test]
fn rediss_presents_a_client_certificate_where_required() {
    let pki = Pki::new();
    let Some(server) = pki.server(true) else {
        return;
    };
    let (exit, message) = tls_claim(&server, &pki.tls("ca.pem", false)).unwrap_err();
    assert_eq!(exit, ExitCode::Auth, "{message}");
    assert_eq!(tls_claim(&server, &pki.tls("ca.pem", true)), Ok(1));
    // The binary presents the certificate of --client-cert and --client-key.
    let data = tempfile::tempdir().unwrap();
    let path = |name: &str| pki.path(name).to_str().unwrap().to_string();
    let (ca, cert, key) = (path("ca.pem"), path("client.pem"), path("client-key.pem"));
    let out = redis(
        data.path(),
        &server.url(),
        "w",
        &["claim", "cli", "--ca-cert", &ca],
    );
    assert_eq!(code(&out), 5, "{}", text(&out));
    let with_cert = [
        "claim",
        "cli",
        "--ca-cert",
        &ca,
        "--client-cert",
        &cert,
        "--client-key",
        &key,
    ];
    let out = redis(data.path(), &server.url(), "w", &with_cert);
    assert_eq!(code(&out), 0, "{}", text(&out));
}
