//! The Redis backend through the binary: its options, its errors and what it never prints.

use std::time::{Duration, Instant};

use crate::servers::Redis;
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
        "rediss://:hunter2@localhost",
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
