//! `sentinel doctor` through the real binary: the backend chosen and why, where the GitHub token
//! comes from, and each backend's checks against real servers (the emulator, a `serve` node,
//! Redis, PostgreSQL, etcd, a data directory), with the exit code of the failure that makes a
//! backend unusable.

use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;

use crate::serve::{Node, TOKEN, eventually, free_addr, leader_of};
use crate::servers::{Etcd, Postgres, Redis};
use crate::support::{Gh, REPO, code, sentinel, stdout_json, text};

/// `doctor --json`'s object, checked against the contract: exactly `backend`, `reason`, `checks`
/// (each exactly `name`, `status` ok/warn/fail and `detail`) and `usable`, which is whether no
/// check failed; the exit code is 0 exactly when usable.
fn report(out: &Output) -> Value {
    let v = stdout_json(out);
    let mut keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["backend", "checks", "reason", "usable"], "{v}");
    let checks = v["checks"].as_array().expect("checks");
    assert!(!checks.is_empty(), "{v}");
    for c in checks {
        let mut keys: Vec<&str> = c.as_object().unwrap().keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(keys, ["detail", "name", "status"], "{c}");
        assert!(
            ["ok", "warn", "fail"].contains(&c["status"].as_str().unwrap()),
            "{c}"
        );
    }
    let failed = checks.iter().any(|c| c["status"] == "fail");
    assert_eq!(v["usable"], !failed, "{v}");
    assert_eq!(code(out) == 0, !failed, "exit {}: {v}", code(out));
    v
}

/// The check named `name`.
fn check<'a>(v: &'a Value, name: &str) -> &'a Value {
    v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no check {name}: {v}"))
}

fn doctor(mut cmd: Command) -> Output {
    cmd.args(["doctor", "--json"]).output().unwrap()
}

#[test]
fn the_local_backend_is_chosen_by_default_and_its_directory_checked() {
    let data = tempfile::tempdir().unwrap();
    let out = doctor(sentinel(data.path()));
    let v = report(&out);
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert_eq!(v["backend"], "local");
    assert!(v["reason"].as_str().unwrap().contains("default"), "{v}");
    assert_eq!(check(&v, "data directory")["status"], "ok", "{v}");
    assert_eq!(check(&v, "lock table")["status"], "ok", "{v}");

    // Without --json: the backend and its reason, one line per check, the verdict.
    let out = sentinel(data.path()).arg("doctor").output().unwrap();
    assert_eq!(code(&out), 0, "{}", text(&out));
    let human = String::from_utf8_lossy(&out.stdout).to_string();
    let lines: Vec<&str> = human.lines().collect();
    assert!(
        lines[0].starts_with("backend local: the default"),
        "{human}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("ok    data directory: ")),
        "{human}"
    );
    assert_eq!(lines.last(), Some(&"usable"), "{human}");

    // A lock table that does not parse makes the backend unusable, with the error's own code.
    std::fs::write(data.path().join("local/locks.json"), "{not json").unwrap();
    let out = doctor(sentinel(data.path()));
    let v = report(&out);
    assert_eq!(check(&v, "lock table")["status"], "fail", "{v}");
}

#[test]
fn github_through_the_emulator_names_the_token_source_and_the_rate_limit() {
    let gh = Gh::new();
    let out = doctor(gh.cmd(&gh.alice, "w", &[]));
    let v = report(&out);
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert_eq!(v["backend"], "github");
    assert!(v["reason"].as_str().unwrap().starts_with("--repo"), "{v}");
    let token = check(&v, "token");
    assert_eq!(token["status"], "ok", "{v}");
    assert!(
        token["detail"].as_str().unwrap().contains("SENTINEL_TOKEN"),
        "{v}"
    );
    let rate = check(&v, "rate limit")["detail"].as_str().unwrap();
    assert!(rate.contains("of 5000 requests left"), "{v}");
    assert_eq!(check(&v, "repository")["status"], "ok", "{v}");
    assert!(!text(&out).contains(&gh.alice), "the token was printed");

    // GITHUB_REPOSITORY picks GitHub, and doctor says so; GITHUB_TOKEN is named as the source.
    let out = doctor({
        let mut cmd = sentinel(gh.data.path());
        cmd.args(["--api-url", &gh.emu.url()])
            .env("GITHUB_REPOSITORY", REPO)
            .env("GITHUB_TOKEN", &gh.bob);
        cmd
    });
    let v = report(&out);
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert!(
        v["reason"]
            .as_str()
            .unwrap()
            .starts_with("GITHUB_REPOSITORY"),
        "{v}"
    );
    assert!(
        check(&v, "token")["detail"]
            .as_str()
            .unwrap()
            .contains("GITHUB_TOKEN"),
        "{v}"
    );
    assert!(!text(&out).contains(&gh.bob), "the token was printed");
}

#[test]
fn a_bad_github_token_is_exit_5() {
    let gh = Gh::new();
    let out = doctor(gh.cmd("not-a-token", "w", &[]));
    let v = report(&out);
    assert_eq!(code(&out), 5, "{}", text(&out));
    assert_eq!(v["usable"], false);
    let rate = check(&v, "rate limit");
    assert_eq!(rate["status"], "fail", "{v}");
    assert!(
        rate["detail"].as_str().unwrap().contains("Bad credentials"),
        "{v}"
    );
    assert!(!text(&out).contains("not-a-token"), "the token was printed");
}

#[test]
fn a_serve_node_is_checked_and_a_dead_one_is_exit_8() {
    let data = tempfile::tempdir().unwrap();
    let mut node = Node::start(1, &free_addr(), &[], data.path(), Some(TOKEN));
    // A node that has not elected itself yet is rightly reported as without a leader.
    eventually(30, "node 1 leads", || {
        leader_of(&node.addr).filter(|&l| l == 1)
    });
    let url = format!("http://{}", node.addr);
    let cli = |token: &str| {
        let mut cmd = sentinel(data.path());
        cmd.env("SENTINEL_SERVER", &url)
            .env("SENTINEL_AUTH_TOKEN", token);
        cmd
    };
    let out = doctor(cli(TOKEN));
    let v = report(&out);
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert_eq!(v["backend"], "server");
    assert!(
        v["reason"].as_str().unwrap().starts_with("SENTINEL_SERVER"),
        "{v}"
    );
    let health = check(&v, &format!("health {url}"));
    assert!(
        health["detail"].as_str().unwrap().contains("leader 1"),
        "{v}"
    );
    assert_eq!(check(&v, "authorization")["status"], "ok", "{v}");
    assert!(!text(&out).contains(TOKEN), "the token was printed");

    // The node serves, but not this token.
    let out = doctor(cli("wrong-token"));
    let v = report(&out);
    assert_eq!(code(&out), 5, "{}", text(&out));
    assert_eq!(check(&v, "authorization")["status"], "fail", "{v}");

    node.kill();
    let out = doctor(cli(TOKEN));
    let v = report(&out);
    assert_eq!(code(&out), 8, "{}", text(&out));
    assert_eq!(check(&v, &format!("health {url}"))["status"], "fail", "{v}");
}

fn with_backend(data: &Path, backend: &str, var: &str, url: &str) -> Command {
    let mut cmd = sentinel(data);
    cmd.args(["--backend", backend]).env(var, url);
    cmd
}

#[test]
fn a_redis_that_may_evict_locks_fails_the_check() {
    let data = tempfile::tempdir().unwrap();
    let Some(safe) = Redis::start() else {
        return;
    };
    let out = doctor(with_backend(
        data.path(),
        "redis",
        "SENTINEL_REDIS_URL",
        &safe.url(),
    ));
    let v = report(&out);
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert_eq!(v["reason"], "--backend redis", "{v}");
    assert_eq!(check(&v, "maxmemory-policy")["detail"], "noeviction", "{v}");

    let Some(unsafe_) = Redis::start_with(&["--maxmemory-policy", "allkeys-lru"]) else {
        return;
    };
    let out = doctor(with_backend(
        data.path(),
        "redis",
        "SENTINEL_REDIS_URL",
        &unsafe_.url(),
    ));
    let v = report(&out);
    assert_eq!(code(&out), 8, "{}", text(&out));
    let policy = check(&v, "maxmemory-policy");
    assert_eq!(policy["status"], "fail", "{v}");
    assert!(
        policy["detail"].as_str().unwrap().contains("allkeys-lru"),
        "{v}"
    );
}

#[test]
fn postgres_grants_are_read_without_creating_anything() {
    let Some(server) = Postgres::start() else {
        return;
    };
    let data = tempfile::tempdir().unwrap();
    let pg = |url: &str| {
        doctor(with_backend(
            data.path(),
            "postgres",
            "SENTINEL_DATABASE_URL",
            url,
        ))
    };
    let out = pg(&server.url());
    let v = report(&out);
    assert_eq!(code(&out), 0, "{}", text(&out));
    let table = check(&v, "table \"public\".sentinel_locks");
    assert!(
        table["detail"].as_str().unwrap().contains("creates it"),
        "{v}"
    );
    assert_eq!(
        server.psql("SELECT count(*) FROM pg_class WHERE relname = 'sentinel_locks'"),
        "0",
        "doctor created the table"
    );

    // A role with no grants on the table the first claim made: exit 5, naming what it lacks.
    let out = sentinel(data.path())
        .args(["--backend", "postgres", "claim", "x"])
        .env("SENTINEL_DATABASE_URL", server.url())
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{}", text(&out));
    server.psql("CREATE ROLE worker LOGIN PASSWORD 'pw'");
    let worker = format!("postgres://worker:pw@127.0.0.1:{}/postgres", server.port());
    let out = pg(&worker);
    let v = report(&out);
    assert_eq!(code(&out), 5, "{}", text(&out));
    let table = check(&v, "table \"public\".sentinel_locks");
    assert!(
        table["detail"]
            .as_str()
            .unwrap()
            .contains("lacks SELECT, INSERT"),
        "{v}"
    );

    server.psql(
        "GRANT SELECT, INSERT, UPDATE ON public.sentinel_locks, public.sentinel_holds TO worker;
         GRANT USAGE, UPDATE ON SEQUENCE public.sentinel_fencing_tokens TO worker;",
    );
    let out = pg(&worker);
    let v = report(&out);
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert_eq!(
        check(&v, "table \"public\".sentinel_locks")["detail"],
        "SELECT, INSERT, UPDATE granted",
        "{v}"
    );
    assert_eq!(check(&v, "table layout")["status"], "ok", "{v}");
    assert!(!text(&out).contains("pw@"), "the password was printed");
}

#[test]
fn etcd_endpoints_report_their_version() {
    let Some(etcd) = Etcd::start() else {
        return;
    };
    let data = tempfile::tempdir().unwrap();
    let out = doctor(with_backend(
        data.path(),
        "etcd",
        "SENTINEL_ETCD_ENDPOINTS",
        &etcd.url(),
    ));
    let v = report(&out);
    assert_eq!(code(&out), 0, "{}", text(&out));
    let endpoint = check(&v, &format!("endpoint {}", etcd.url()));
    assert!(
        endpoint["detail"].as_str().unwrap().starts_with("etcd 3."),
        "{v}"
    );
    assert_eq!(check(&v, "keys")["status"], "ok", "{v}");
}

#[test]
fn options_that_cannot_be_used_are_a_failed_check_with_the_usage_code() {
    let data = tempfile::tempdir().unwrap();
    let mut cmd = sentinel(data.path());
    cmd.args(["--backend", "redis"]);
    let out = doctor(cmd);
    let v = report(&out);
    assert_eq!(code(&out), 2, "{}", text(&out));
    assert!(
        check(&v, "options")["detail"]
            .as_str()
            .unwrap()
            .contains("--redis-url"),
        "{v}"
    );
}
