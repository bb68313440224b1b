//! The etcd backend through the binary, against a real etcd member: claims, races, fencing
//! tokens, lease expiry, refused renewals, failover between endpoints and its errors; and through
//! the library, a claim whose answer is lost on the way back and a listing of many pages.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use sentinel::LockBackend;
use sentinel::distributed::{DistributedLock, LockClient, RetryConfig};
use sentinel::etcd::EtcdBackend;
use sentinel::lock::{AcquireRequest, Attempt, Claimant, HoldKind, ListRequest, LockId, Takeover};

use crate::servers::{Etcd, EtcdCluster};
use crate::support::{closed_port, code, sentinel, sole_winner, stdout_json, text, wait_all};

fn etcd_cmd(
    data: &std::path::Path,
    endpoints: &str,
    worker: &str,
    args: &[&str],
) -> std::process::Command {
    let mut cmd = sentinel(data);
    cmd.args(["--backend", "etcd", "--worker-id", worker])
        .env("SENTINEL_ETCD_ENDPOINTS", endpoints)
        .args(args);
    cmd
}

fn etcd(
    data: &std::path::Path,
    endpoints: &str,
    worker: &str,
    args: &[&str],
) -> std::process::Output {
    etcd_cmd(data, endpoints, worker, args).output().unwrap()
}

fn token(out: &std::process::Output) -> u64 {
    assert_eq!(code(out), 0, "{}", text(out));
    stdout_json(out)["fencing_token"].as_u64().unwrap()
}

#[test]
fn claim_status_release_and_one_winner_of_a_race() {
    let Some(server) = Etcd::start() else { return };
    let data = tempfile::tempdir().unwrap();
    let url = server.url();
    let out = etcd(
        data.path(),
        &url,
        "a",
        &["claim", "job", "--ttl", "1m", "--json"],
    );
    let t1 = token(&out);
    let st = stdout_json(&etcd(data.path(), &url, "x", &["status", "job", "--json"]));
    assert_eq!(st["backend"], "etcd", "{st}");
    assert_eq!(st["holder"]["worker_id"], "a", "{st}");
    assert_eq!(st["holder"]["fencing_token"], t1, "{st}");
    // Held: another worker is refused with the holder named.
    let out = etcd(
        data.path(),
        &url,
        "b",
        &["claim", "job", "--strategy", "fail-fast"],
    );
    assert_eq!(code(&out), 3, "{}", text(&out));
    assert!(text(&out).contains("held by a"), "{}", text(&out));
    // Nor may it release the lock.
    let out = etcd(data.path(), &url, "b", &["release", "job"]);
    assert_eq!(code(&out), 4, "{}", text(&out));
    let out = etcd(data.path(), &url, "a", &["release", "job"]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    let st = stdout_json(&etcd(data.path(), &url, "x", &["status", "job", "--json"]));
    assert_eq!(st["held"], false, "{st}");

    // Two workers race for one lock, eight times: exactly one holder each time.
    for round in 0..8 {
        let name = format!("race-{round}");
        let children: Vec<_> = ["w1", "w2"]
            .iter()
            .map(|w| {
                etcd_cmd(
                    data.path(),
                    &url,
                    w,
                    &["claim", &name, "--strategy", "fail-fast", "--json"],
                )
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
            })
            .collect();
        let outs = wait_all(children);
        let winner = sole_winner(&outs);
        let st = stdout_json(&etcd(data.path(), &url, "x", &["status", &name, "--json"]));
        assert_eq!(
            st["holder"]["worker_id"],
            format!("w{}", winner + 1),
            "{st}"
        );
    }
    // The listing shows every held lock, by name.
    let st = stdout_json(&etcd(data.path(), &url, "x", &["status", "--json"]));
    let names: Vec<&str> = st["locks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["lock"].as_str().unwrap())
        .collect();
    assert_eq!(names.len(), 8, "{st}");
    assert!(names.windows(2).all(|w| w[0] < w[1]), "{names:?}");
}

#[test]
fn fencing_tokens_increase_across_grants_and_take_overs() {
    let Some(server) = Etcd::start() else { return };
    let data = tempfile::tempdir().unwrap();
    let url = server.url();
    let mut tokens = Vec::new();
    for worker in ["a", "b", "a"] {
        tokens.push(token(&etcd(
            data.path(),
            &url,
            worker,
            &["claim", "job", "--json"],
        )));
        let out = etcd(data.path(), &url, worker, &["release", "job"]);
        assert_eq!(code(&out), 0, "{}", text(&out));
    }
    tokens.push(token(&etcd(
        data.path(),
        &url,
        "c",
        &["claim", "job", "--json"],
    )));
    // A forced take-over is a new grant, with a larger token; the victim has lost it.
    let out = etcd(
        data.path(),
        &url,
        "d",
        &["claim", "job", "--strategy", "force", "--json"],
    );
    tokens.push(token(&out));
    assert!(tokens.windows(2).all(|w| w[0] < w[1]), "{tokens:?}");
    let out = etcd(data.path(), &url, "c", &["heartbeat", "job", "--once"]);
    assert_eq!(code(&out), 4, "{}", text(&out));
    // Re-adoption by the holder's own explicit id keeps the grant and its token.
    let again = token(&etcd(data.path(), &url, "d", &["claim", "job", "--json"]));
    assert_eq!(again, *tokens.last().unwrap());
}

#[test]
fn an_expired_lease_frees_the_lock_and_the_janitor_finds_nothing_stale() {
    let Some(server) = Etcd::start() else { return };
    let data = tempfile::tempdir().unwrap();
    let url = server.url();
    let t1 = token(&etcd(
        data.path(),
        &url,
        "a",
        &["claim", "short", "--ttl", "1s", "--json"],
    ));
    token(&etcd(
        data.path(),
        &url,
        "a",
        &["claim", "long", "--ttl", "1m", "--json"],
    ));
    let claimed = Instant::now();
    // A plain claim (no steal-stale) gets the lock once etcd has ended the lease.
    let taken = loop {
        let out = etcd(
            data.path(),
            &url,
            "b",
            &["claim", "short", "--strategy", "fail-fast", "--json"],
        );
        if code(&out) == 0 {
            break stdout_json(&out);
        }
        assert_eq!(code(&out), 3, "{}", text(&out));
        assert!(
            claimed.elapsed() < Duration::from_secs(5),
            "a 1 s lease still held after 5 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let freed = claimed.elapsed();
    assert!(freed >= Duration::from_millis(900), "freed after {freed:?}");
    eprintln!("a 1 s etcd lease freed its lock after {freed:?}");
    assert!(taken["fencing_token"].as_u64().unwrap() > t1, "{taken}");
    let out = etcd(data.path(), &url, "a", &["heartbeat", "short", "--once"]);
    assert_eq!(code(&out), 4, "{}", text(&out));
    let sweep = stdout_json(&etcd(
        data.path(),
        &url,
        "j",
        &["steal-stale", "--all", "--json"],
    ));
    assert_eq!(sweep["ok"], true, "{sweep}");
    let st = stdout_json(&etcd(data.path(), &url, "x", &["status", "long", "--json"]));
    assert_eq!(st["holder"]["worker_id"], "a", "{st}");
    let m = stdout_json(&etcd(data.path(), &url, "x", &["metrics", "--json"]));
    assert_eq!(m["by_backend"]["etcd"]["total_acquisitions"], 3, "{m}");
}

#[test]
fn renewals_by_anyone_but_the_holder_are_refused() {
    let Some(server) = Etcd::start() else { return };
    let data = tempfile::tempdir().unwrap();
    let url = server.url();
    token(&etcd(
        data.path(),
        &url,
        "a",
        &["claim", "job", "--ttl", "5s", "--json"],
    ));
    let out = etcd(data.path(), &url, "b", &["heartbeat", "job", "--once"]);
    assert_eq!(code(&out), 4, "{}", text(&out));
    assert!(text(&out).contains("\"a\""), "{}", text(&out));
    let out = etcd(data.path(), &url, "b", &["heartbeat", "free", "--once"]);
    assert_eq!(code(&out), 4, "{}", text(&out));
    // The holder's renewal keeps the lease alive past its TTL.
    for _ in 0..4 {
        std::thread::sleep(Duration::from_millis(1500));
        let out = etcd(data.path(), &url, "a", &["heartbeat", "job", "--once"]);
        assert_eq!(code(&out), 0, "{}", text(&out));
    }
    let st = stdout_json(&etcd(data.path(), &url, "x", &["status", "job", "--json"]));
    assert_eq!(
        st["holder"]["worker_id"], "a",
        "held 6 s into a 5 s lease: {st}"
    );
}

#[test]
fn requests_fail_over_to_the_next_endpoint() {
    let Some(server) = Etcd::start() else { return };
    let data = tempfile::tempdir().unwrap();
    let dead = format!("http://127.0.0.2:{}", closed_port());
    let both = format!("{dead},{}", server.url());
    let started = Instant::now();
    let t = token(&etcd(data.path(), &both, "a", &["claim", "job", "--json"]));
    let st = stdout_json(&etcd(data.path(), &both, "x", &["status", "job", "--json"]));
    assert_eq!(st["holder"]["fencing_token"], t, "{st}");
    let out = etcd(data.path(), &both, "a", &["release", "job"]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[test]
fn an_unreachable_cluster_is_exit_8_and_bad_endpoints_are_usage_errors() {
    let data = tempfile::tempdir().unwrap();
    let dead = format!(
        "http://127.0.0.2:{},http://127.0.0.2:{}",
        closed_port(),
        closed_port()
    );
    let started = Instant::now();
    for json in [false, true] {
        let mut args = vec!["claim", "x"];
        if json {
            args.push("--json");
        }
        let out = etcd(data.path(), &dead, "w", &args);
        assert_eq!(code(&out), 8, "{}", text(&out));
        assert!(
            text(&out).contains("etcd at http://127.0.0.2:"),
            "{}",
            text(&out)
        );
        if json {
            assert_eq!(
                stdout_json(&out)["error"]["kind"],
                "unavailable",
                "{}",
                text(&out)
            );
        }
    }
    let took = started.elapsed();
    eprintln!("two claims against dead endpoints gave up after {took:?}");
    assert!(took < Duration::from_secs(25), "{took:?}");

    for (endpoints, says) in [
        ("https://127.0.0.1:2379", "TLS"),
        ("http://root:hunter2@127.0.0.1:2379", "credentials"),
        ("127.0.0.1:2379", "invalid etcd endpoint"),
        ("http://127.0.0.1:2379,,http://h:2379", "empty"),
        ("", "needs --etcd-endpoints"),
    ] {
        let out = etcd(data.path(), endpoints, "w", &["claim", "x"]);
        assert_eq!(code(&out), 2, "{endpoints}: {}", text(&out));
        assert!(text(&out).contains(says), "{endpoints}: {}", text(&out));
        assert!(!text(&out).contains("hunter2"), "{}", text(&out));
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn claim_req(name: &str, worker: &str) -> AcquireRequest {
    AcquireRequest {
        lock: LockId::Name(name.into()),
        claimant: Claimant {
            worker_id: worker.into(),
            node_id: "node".into(),
        },
        ttl: Duration::from_secs(60),
        takeover: Takeover::None,
        task_info: Default::default(),
        readopt: false,
        attempt: 0,
        wait: Duration::ZERO,
        kind: HoldKind::Exclusive,
    }
}

/// An HTTP proxy in front of etcd that passes every exchange through (one connection each), but
/// swallows the answers to the first `drop` transactions (etcd applies them, the client hears
/// nothing and must retry) and holds every transaction's answer back for `delay`.
struct LossyProxy {
    addr: String,
    /// Transactions answered by etcd, the swallowed ones included.
    txns: Arc<AtomicUsize>,
}

impl LossyProxy {
    fn start(upstream: String, drop: usize, delay: Duration) -> LossyProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let txns = Arc::new(AtomicUsize::new(0));
        let count = txns.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { return };
                let (upstream, count) = (upstream.clone(), count.clone());
                std::thread::spawn(move || {
                    let _ = Self::serve(client, &upstream, &count, drop, delay);
                });
            }
        });
        LossyProxy { addr, txns }
    }

    /// One request: its head and body read, sent on with `Connection: close`, the whole answer
    /// read and passed back with `Connection: close` (or swallowed).
    fn serve(
        mut client: TcpStream,
        upstream: &str,
        count: &AtomicUsize,
        drop: usize,
        delay: Duration,
    ) -> std::io::Result<()> {
        client.set_read_timeout(Some(Duration::from_secs(10)))?;
        let mut request = Vec::new();
        let mut buf = [0u8; 4096];
        let head_end = loop {
            if let Some(i) = request.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let n = client.read(&mut buf)?;
            if n == 0 {
                return Ok(());
            }
            request.extend_from_slice(&buf[..n]);
        };
        let head = String::from_utf8_lossy(&request[..head_end]).to_ascii_lowercase();
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .map_or(0, |v| v.trim().parse().unwrap());
        while request.len() < head_end + length {
            let n = client.read(&mut buf)?;
            if n == 0 {
                return Ok(());
            }
            request.extend_from_slice(&buf[..n]);
        }
        let is_txn = head.starts_with("post /v3/kv/txn ");
        let mut forwarded = request[..head_end - 2].to_vec();
        forwarded.extend_from_slice(b"Connection: close\r\n\r\n");
        forwarded.extend_from_slice(&request[head_end..]);
        let mut etcd = TcpStream::connect(upstream)?;
        etcd.write_all(&forwarded)?;
        let mut answer = Vec::new();
        etcd.read_to_end(&mut answer)?;
        if is_txn && count.fetch_add(1, Ordering::SeqCst) < drop {
            // Applied by etcd, never heard of by the client.
            return Ok(());
        }
        if is_txn {
            std::thread::sleep(delay);
        }
        let line_end = answer.windows(2).position(|w| w == b"\r\n").unwrap() + 2;
        client.write_all(&answer[..line_end])?;
        client.write_all(b"Connection: close\r\n")?;
        client.write_all(&answer[line_end..])
    }
}

#[test]
fn a_claim_whose_answer_was_lost_is_granted_once() {
    let Some(server) = Etcd::start() else { return };
    let upstream = server.url().trim_start_matches("http://").to_string();
    let proxy = LossyProxy::start(upstream, 1, Duration::ZERO);
    let rt = runtime();
    let lossy = EtcdBackend::new(&format!("http://{}", proxy.addr)).unwrap();
    let direct = EtcdBackend::new(&server.url()).unwrap();
    let started = Instant::now();
    let attempt = rt
        .block_on(lossy.try_acquire(&claim_req("job", "a")))
        .unwrap();
    eprintln!(
        "a claim whose first answer was lost took {:?}",
        started.elapsed()
    );
    assert!(
        proxy.txns.load(Ordering::SeqCst) >= 2,
        "the answer was not lost"
    );
    let Attempt::Granted(grant) = attempt else {
        panic!("the retried claim did not recognise its own grant: {attempt:?}")
    };
    assert!(!grant.adopted);
    let status = rt
        .block_on(direct.status(&LockId::Name("job".into())))
        .unwrap();
    let holder = status.holder().expect("held");
    assert_eq!(
        (holder.worker_id.as_str(), holder.fencing_token),
        ("a", grant.holder.fencing_token)
    );
    // Granted once: anyone else is told a holds it.
    match rt
        .block_on(direct.try_acquire(&claim_req("job", "b")))
        .unwrap()
    {
        Attempt::Held(h) => assert_eq!(h.fencing_token, grant.holder.fencing_token),
        other => panic!("{other:?}"),
    }
}

/// A claim interrupted (SIGINT, SIGTERM) after etcd applied its transaction but before the answer
/// came back: the interrupted process withdraws the grant (revokes its lease) before it exits.
#[test]
fn a_claim_interrupted_with_its_grant_in_flight_holds_nothing() {
    let Some(server) = Etcd::start() else { return };
    let upstream = server.url().trim_start_matches("http://").to_string();
    let proxy = LossyProxy::start(upstream, 0, Duration::from_millis(700));
    let data = tempfile::tempdir().unwrap();
    let via_proxy = format!("http://{}", proxy.addr);
    for (round, signal) in ["-INT", "-TERM"].into_iter().enumerate() {
        let child = etcd_cmd(data.path(), &via_proxy, "w", &["claim", "job"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // etcd has applied the claim; its answer is held back by the proxy.
        let started = Instant::now();
        while proxy.txns.load(Ordering::SeqCst) <= round {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "no claim reached etcd"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        let held = stdout_json(&etcd(
            data.path(),
            &server.url(),
            "x",
            &["status", "job", "--json"],
        ));
        assert_eq!(held["holder"]["worker_id"], "w", "{held}");
        let _ = std::process::Command::new("kill")
            .args([signal, &child.id().to_string()])
            .status();
        let out = child.wait_with_output().unwrap();
        assert!(matches!(code(&out), 130 | 143), "{}", text(&out));
        let st = stdout_json(&etcd(
            data.path(),
            &server.url(),
            "x",
            &["status", "job", "--json"],
        ));
        assert_eq!(
            st["held"], false,
            "an interrupted claim left its grant: {st}"
        );
    }
}

#[test]
fn listings_page_through_every_lock_in_order() {
    let Some(server) = Etcd::start() else { return };
    let rt = runtime();
    let b = EtcdBackend::new(&server.url()).unwrap();
    // More than two pages of 200.
    let names: Vec<String> = (0..450).map(|i| format!("lock-{i:04}")).collect();
    rt.block_on(async {
        for chunk in names.chunks(50) {
            let claims: Vec<_> = chunk
                .iter()
                .map(|n| {
                    let (b, req) = (b.clone(), claim_req(n, "lister"));
                    tokio::spawn(async move { b.try_acquire(&req).await })
                })
                .collect();
            for c in claims {
                assert!(matches!(c.await.unwrap().unwrap(), Attempt::Granted(_)));
            }
        }
    });
    let started = Instant::now();
    let listed = rt
        .block_on(b.list(&ListRequest {
            since: Duration::from_secs(3600),
        }))
        .unwrap();
    eprintln!("listing 450 etcd locks took {:?}", started.elapsed());
    let listed: Vec<&str> = listed.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(listed, names);
    // A value sentinel did not write is reported, not taken for a lock.
    let key = base64_key(b"sentinel/locks/foreign");
    let body = format!(r#"{{"key":"{key}","value":"aGVsbG8="}}"#);
    let data = tempfile::tempdir().unwrap();
    assert!(post_raw(&server.url(), "/v3/kv/put", &body));
    let out = etcd(data.path(), &server.url(), "x", &["status", "foreign"]);
    assert_eq!(code(&out), 1, "{}", text(&out));
    assert!(text(&out).contains("did not write"), "{}", text(&out));
}

fn base64_key(raw: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(raw)
}

/// `POST PATH` with `body` to etcd, past sentinel; whether it answered 200.
fn post_raw(url: &str, path: &str, body: &str) -> bool {
    let addr = url.trim_start_matches("http://");
    let mut s = TcpStream::connect(addr).unwrap();
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(request.as_bytes()).unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    answer.starts_with("HTTP/1.1 200")
}

#[test]
fn a_cluster_that_requires_authentication_is_exit_5() {
    let Some(server) = Etcd::start() else { return };
    let url = server.url();
    for (path, body) in [
        (
            "/v3/auth/user/add",
            r#"{"name":"root","password":"hunter2"}"#,
        ),
        ("/v3/auth/user/grant", r#"{"user":"root","role":"root"}"#),
        ("/v3/auth/enable", "{}"),
    ] {
        assert!(post_raw(&url, path, body), "{path}");
    }
    let data = tempfile::tempdir().unwrap();
    let out = etcd(data.path(), &url, "w", &["claim", "job"]);
    assert_eq!(code(&out), 5, "{}", text(&out));
    assert!(
        text(&out).contains("requires authentication"),
        "{}",
        text(&out)
    );
}

/// A three-member cluster, every client given all three, the leader first: the leader is killed
/// (`kill -9`) under a lock a guard keeps alive. The lock stays held with the same token past its TTL (the guard's
/// renewals get through the new leader), nobody else gets it, and the next grant has a larger
/// token.
#[test]
fn a_killed_leader_keeps_the_lock_held_and_renewed() {
    let _one_cluster = crate::serve::one_cluster_at_a_time();
    let Some(mut cluster) = EtcdCluster::start(3) else {
        return;
    };
    let old = cluster.leader().expect("a leader");
    // The clients talk to the leader first: its death is a failover for them too.
    let urls = cluster.urls(old);
    let rt = runtime();
    let client = |worker: &str| {
        LockClient::new(EtcdBackend::new(&urls).unwrap(), worker)
            .unwrap()
            .with_retry(RetryConfig::no_retry())
            .unwrap()
    };
    let (a, b) = (client("a"), client("b"));
    let ttl = Duration::from_secs(4);
    let (guard, lost) = rt.block_on(async {
        let mut guard = a.acquire("job", ttl).await.unwrap();
        let lost = guard.keep_alive(Duration::from_secs(1)).unwrap();
        (guard, lost)
    });
    let t1 = guard.fencing_token();
    cluster.kill(old);
    let killed = Instant::now();
    let new = loop {
        if let Some(l) = cluster.leader() {
            break l;
        }
        assert!(killed.elapsed() < Duration::from_secs(20), "no new leader");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_ne!(new, old);
    eprintln!(
        "etcd elected a new leader {:?} after the kill",
        killed.elapsed()
    );
    // Past the lease's TTL: only renewals through the new leader can have kept it.
    std::thread::sleep(ttl + Duration::from_secs(1));
    let data = tempfile::tempdir().unwrap();
    let st = stdout_json(&etcd(data.path(), &urls, "x", &["status", "job", "--json"]));
    assert_eq!(st["holder"]["worker_id"], "a", "{st}");
    assert_eq!(st["holder"]["fencing_token"], t1, "{st}");
    assert!(!lost.is_lost(), "the guard lost its lock in the failover");
    rt.block_on(async {
        assert!(b.try_acquire("job", ttl).await.unwrap().is_none());
        assert!(guard.release().await.unwrap());
        let next = b.try_acquire("job", ttl).await.unwrap().expect("free");
        assert!(
            next.fencing_token() > t1,
            "{} after {t1}",
            next.fencing_token()
        );
        assert!(next.release().await.unwrap());
    });
}
