//! The PostgreSQL backend through the binary: its options, its errors, what it never prints, and
//! the lock table's lease semantics (a lease that runs out is stale until taken over).

use std::time::{Duration, Instant};

use crate::servers::Postgres;
use crate::support::{closed_port, code, sentinel, stdout_json, text};

fn pg(data: &std::path::Path, url: &str, worker: &str, args: &[&str]) -> std::process::Output {
    sentinel(data)
        .args(["--backend", "postgres", "--worker-id", worker])
        .env("SENTINEL_DATABASE_URL", url)
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn bad_urls_are_usage_errors_and_passwords_are_never_printed() {
    let data = tempfile::tempdir().unwrap();
    for url in [
        "",
        "localhost:5432",
        "mysql://u:hunter2@localhost/db",
        "postgres://u:hunter2@localhost/db?sslmode=require",
    ] {
        let out = pg(data.path(), url, "w", &["claim", "x"]);
        assert_eq!(code(&out), 2, "{url}: {}", text(&out));
        assert!(!text(&out).contains("hunter2"), "{}", text(&out));
    }
    let port = closed_port();
    let url = format!("postgres://u:hunter2@127.0.0.2:{port}/db");
    let started = Instant::now();
    for args in [["-vv", "claim", "x"], ["--json", "status", "x"]] {
        let out = pg(data.path(), &url, "w", &args);
        assert_eq!(code(&out), 8, "{}", text(&out));
        assert!(!text(&out).contains("hunter2"), "{}", text(&out));
        assert!(
            text(&out).contains(&format!("postgres at 127.0.0.2:{port}/db")),
            "{}",
            text(&out)
        );
    }
    assert!(started.elapsed() < Duration::from_secs(25));
}

#[test]
fn stale_locks_stay_until_taken_over_or_swept() {
    let Some(server) = Postgres::start() else {
        return;
    };
    let data = tempfile::tempdir().unwrap();
    let url = server.url();
    let missing = url.replace("/postgres", "/no_such_db");
    let out = pg(data.path(), &missing, "a", &["claim", "x"]);
    assert_eq!(code(&out), 6, "{}", text(&out));

    for (name, ttl) in [("short", "1s"), ("long", "1m")] {
        let out = pg(data.path(), &url, "a", &["claim", name, "--ttl", ttl]);
        assert_eq!(code(&out), 0, "{}", text(&out));
    }
    std::thread::sleep(Duration::from_millis(1300));
    let st = stdout_json(&pg(data.path(), &url, "x", &["status", "short", "--json"]));
    assert_eq!(st["holder"]["stale"], true, "{st}");
    let out = pg(
        data.path(),
        &url,
        "b",
        &["claim", "short", "--strategy", "fail-fast"],
    );
    assert_eq!(code(&out), 3, "{}", text(&out));
    assert!(text(&out).contains("steal-stale"), "{}", text(&out));
    let sweep = stdout_json(&pg(
        data.path(),
        &url,
        "j",
        &["steal-stale", "--all", "--json"],
    ));
    let actions: Vec<(&str, &str)> = sweep["locks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| (l["lock"].as_str().unwrap(), l["action"].as_str().unwrap()))
        .collect();
    assert_eq!(
        actions,
        [("long", "live"), ("short", "released")],
        "{sweep}"
    );
    let st = stdout_json(&pg(data.path(), &url, "x", &["status", "--json"]));
    assert_eq!(st["locks"].as_array().unwrap().len(), 1, "{st}");
    let m = stdout_json(&pg(data.path(), &url, "x", &["metrics", "--json"]));
    assert_eq!(m["by_backend"]["postgres"]["total_acquisitions"], 2, "{m}");
}
