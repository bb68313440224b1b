//! The etcd backend through the binary, against a real etcd member: claims, races, fencing
//! tokens, lease expiry, refused renewals, failover between endpoints and its errors.

use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::servers::Etcd;
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
