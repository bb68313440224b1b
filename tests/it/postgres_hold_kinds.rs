//! Semaphores and shared holds on PostgreSQL: what is PostgreSQL's own, through the real binary
//! against a real server: a hold whose lease ran out is stale until taken over or swept, and a
//! worker role needs no right beyond the documented grants. The promises every backend keeps are
//! the conformance suite's rows (`conformance/primitives.rs`).

use std::time::Duration;

use serde_json::Value;

use crate::conformance::{Kind, Subject};
use crate::servers::Postgres;
use crate::support::{code, sentinel, stdout_json, text};

fn pg(s: &Subject, worker: &str, args: &[&str]) -> std::process::Output {
    s.cli(worker, args).output().unwrap()
}

/// The lock table's lease rule holds for every hold: one whose lease ran out is stale, still
/// counts, cannot be renewed, and is taken over by `steal-stale` or released by the janitor.
#[test]
fn stale_holds_stay_until_taken_over_or_swept_on_postgres() {
    let Some(s) = Subject::new(Kind::Postgres) else {
        return;
    };
    let short = [
        "--json",
        "claim",
        "gpus",
        "--limit",
        "2",
        "--permits",
        "2",
        "--ttl",
        "1s",
    ];
    let out = pg(&s, "w1", &short);
    assert_eq!(code(&out), 0, "{}", text(&out));
    let first = stdout_json(&out)["fencing_token"].as_u64().unwrap();
    for (reader, ttl) in [("r1", "1s"), ("r2", "1m")] {
        let out = pg(&s, reader, &["claim", "schema", "--shared", "--ttl", ttl]);
        assert_eq!(code(&out), 0, "{}", text(&out));
    }
    std::thread::sleep(Duration::from_millis(1300));
    let st = stdout_json(&pg(&s, "w9", &["--json", "status", "gpus"]));
    assert_eq!(st["kind"], "semaphore", "{st}");
    assert_eq!(st["holders"][0]["stale"], true, "{st}");
    let out = pg(&s, "w1", &["heartbeat", "--once", "gpus"]);
    assert_eq!(code(&out), 4, "{}", text(&out));
    let out = pg(&s, "w2", &["claim", "gpus", "--limit", "2", "-n"]);
    assert_eq!(code(&out), 3, "{}", text(&out));
    assert!(text(&out).contains("steal-stale"), "{}", text(&out));
    let out = pg(
        &s,
        "w2",
        &[
            "--json",
            "claim",
            "gpus",
            "--limit",
            "2",
            "--strategy",
            "steal-stale",
        ],
    );
    assert_eq!(code(&out), 0, "{}", text(&out));
    let stolen = stdout_json(&out);
    assert_eq!(stolen["took_over"]["worker_id"], "w1", "{stolen}");
    assert!(
        stolen["fencing_token"].as_u64().unwrap() > first,
        "{stolen}"
    );

    let sweep = stdout_json(&pg(&s, "j", &["steal-stale", "--all", "--json"]));
    let actions: Vec<(&str, &str, &str)> = sweep["locks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            (
                l["lock"].as_str().unwrap(),
                l["holder"]["worker_id"].as_str().unwrap(),
                l["action"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        actions,
        [
            ("gpus", "w2", "live"),
            ("schema", "r1", "released"),
            ("schema", "r2", "live")
        ],
        "{sweep}"
    );
    let st = stdout_json(&pg(&s, "w9", &["--json", "status", "schema"]));
    let left: Vec<&Value> = st["holders"].as_array().unwrap().iter().collect();
    assert_eq!(left.len(), 1, "{st}");
    assert_eq!(left[0]["worker_id"], "r2", "{st}");
    let m = stdout_json(&pg(&s, "w9", &["metrics", "--json"]));
    assert_eq!(m["by_backend"]["postgres"]["stale_locks_claimed"], 1, "{m}");
}

/// A worker role with the documented grants (no CREATE, no DELETE) holds every kind, once the
/// owner's first use has created the tables.
#[test]
fn a_worker_role_with_the_documented_grants_holds_every_kind_on_postgres() {
    let Some(server) = Postgres::start() else {
        return;
    };
    let data = tempfile::tempdir().unwrap();
    let run = |url: &str, worker: &str, args: &[&str]| {
        sentinel(data.path())
            .args(["--backend", "postgres", "--worker-id", worker])
            .env("SENTINEL_DATABASE_URL", url)
            .args(args)
            .output()
            .unwrap()
    };
    let out = run(&server.url(), "owner", &["doctor"]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    let out = run(&server.url(), "owner", &["claim", "setup", "-n"]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    server.psql(
        "CREATE ROLE worker LOGIN PASSWORD 'pw';
         GRANT USAGE ON SCHEMA public TO worker;
         GRANT SELECT, INSERT, UPDATE ON public.sentinel_locks, public.sentinel_holds TO worker;
         GRANT USAGE, UPDATE ON SEQUENCE public.sentinel_fencing_tokens TO worker;",
    );
    let url = format!("postgres://worker:pw@127.0.0.1:{}/postgres", server.port());
    let out = run(&url, "w1", &["doctor"]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert!(text(&out).contains("sentinel_holds"), "{}", text(&out));
    for args in [
        &["claim", "gpus", "--limit", "2", "-n"][..],
        &["release", "gpus"],
        &["claim", "schema", "--shared", "-n"],
        &["release", "schema"],
    ] {
        let out = run(&url, "w1", args);
        assert_eq!(code(&out), 0, "{args:?}: {}", text(&out));
    }
}

/// A database of the previous version (no holds table) whose worker role may not create one:
/// its locks keep working and semaphores are refused saying what to do; once the owner's first
/// use has made the table, it carries the lock table's grants and the worker holds every kind.
#[test]
fn an_older_database_keeps_its_locks_until_the_owner_makes_the_holds_table_on_postgres() {
    let Some(server) = Postgres::start() else {
        return;
    };
    let data = tempfile::tempdir().unwrap();
    server.psql(
        "CREATE TABLE public.sentinel_locks (
             name text PRIMARY KEY, worker_id text, node_id text NOT NULL,
             fencing_token bigint NOT NULL, claimed_at timestamptz NOT NULL,
             heartbeat_at timestamptz NOT NULL, ttl_ms bigint NOT NULL CHECK (ttl_ms > 0),
             task_info jsonb NOT NULL DEFAULT '{}', grant_nonce text NOT NULL DEFAULT '');
         CREATE SEQUENCE public.sentinel_fencing_tokens;
         SELECT setval('public.sentinel_fencing_tokens', 40);
         INSERT INTO public.sentinel_locks VALUES
             ('old', 'w0', 'n0', 40, now(), now(), 600000, '{}', '');
         CREATE ROLE worker LOGIN PASSWORD 'pw';
         GRANT USAGE ON SCHEMA public TO worker;
         GRANT SELECT, INSERT, UPDATE ON public.sentinel_locks TO worker;
         GRANT USAGE, UPDATE ON SEQUENCE public.sentinel_fencing_tokens TO worker;",
    );
    let worker = format!("postgres://worker:pw@127.0.0.1:{}/postgres", server.port());
    let run = |url: &str, who: &str, args: &[&str]| {
        sentinel(data.path())
            .args(["--backend", "postgres", "--worker-id", who])
            .env("SENTINEL_DATABASE_URL", url)
            .args(args)
            .output()
            .unwrap()
    };
    let out = run(&worker, "w1", &["claim", "new", "-n"]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    let out = run(&worker, "w0", &["release", "old"]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    let out = run(&worker, "w1", &["claim", "gpus", "--limit", "2", "-n"]);
    assert_eq!(code(&out), 5, "{}", text(&out));
    assert!(text(&out).contains("sentinel_holds"), "{}", text(&out));
    let out = run(&worker, "w1", &["doctor"]);
    assert_eq!(code(&out), 0, "{}", text(&out));

    let out = run(&server.url(), "owner", &["status"]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    let out = run(
        &worker,
        "w1",
        &["--json", "claim", "gpus", "--limit", "2", "-n"],
    );
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert!(stdout_json(&out)["fencing_token"].as_u64().unwrap() > 41);
    let out = run(&worker, "w2", &["claim", "new", "--shared", "-n"]);
    assert_eq!(code(&out), 3, "{}", text(&out));
    let out = run(&worker, "w1", &["doctor"]);
    assert_eq!(code(&out), 0, "{}", text(&out));
}
