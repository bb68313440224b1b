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
        "postgres://u:hunter2@localhost/db?sslmode=allow",
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

/// `postgres://ROLE:pw@127.0.0.1:PORT/postgres`, and `query` after a `?` if any.
fn url_as(server: &Postgres, role: &str, query: &str) -> String {
    let q = if query.is_empty() {
        String::new()
    } else {
        format!("?{query}")
    };
    format!(
        "postgres://{role}:pw@127.0.0.1:{}/postgres{q}",
        server.port()
    )
}

/// Makes `role`, a login with the password `pw` and no rights beyond PostgreSQL 15's defaults
/// (no CREATE on `public`).
fn role(server: &Postgres, role: &str) {
    server.psql(&format!("CREATE ROLE {role} LOGIN PASSWORD 'pw'"));
}

/// What docs/postgres.md says a worker role needs on the tables and sequence: no DELETE, since a
/// release keeps the row. The holds table only where it exists (an older layout has none).
fn grant_worker(server: &Postgres, role: &str, schema: &str) {
    let holds = format!("{schema}.sentinel_holds");
    let tables = if server.psql(&format!("SELECT to_regclass('{holds}') IS NOT NULL")) == "t" {
        format!("{schema}.sentinel_locks, {holds}")
    } else {
        format!("{schema}.sentinel_locks")
    };
    server.psql(&format!(
        "GRANT USAGE ON SCHEMA {schema} TO {role};
         GRANT SELECT, INSERT, UPDATE ON {tables} TO {role};
         GRANT USAGE, UPDATE ON SEQUENCE {schema}.sentinel_fencing_tokens TO {role};"
    ));
}

fn token(out: &std::process::Output) -> u64 {
    assert_eq!(code(out), 0, "{}", text(out));
    stdout_json(out)["fencing_token"].as_u64().unwrap()
}

/// Issue 13, items 7 and 9: roles that own a schema named after themselves (first on PostgreSQL's
/// default `search_path`) once each found a table of their own and held one lock at once; and a
/// role with only the documented grants (no CREATE; since item 8 no DELETE either) was refused.
#[test]
fn the_table_is_named_with_its_schema_and_workers_need_no_create_or_delete_right() {
    let Some(server) = Postgres::start() else {
        return;
    };
    let data = tempfile::tempdir().unwrap();
    let out = pg(data.path(), &server.url(), "admin", &["claim", "shared"]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    for r in ["alice", "bob", "worker"] {
        role(&server, r);
        grant_worker(&server, r, "public");
    }
    for r in ["alice", "bob"] {
        server.psql(&format!("CREATE SCHEMA {r} AUTHORIZATION {r}"));
    }
    for r in ["alice", "bob", "worker"] {
        let out = pg(
            data.path(),
            &url_as(&server, r, ""),
            r,
            &["claim", "shared", "--strategy", "fail-fast"],
        );
        assert_eq!(code(&out), 3, "{r}: {}", text(&out));
        assert!(text(&out).contains("admin"), "{r}: {}", text(&out));
    }
    let worker = url_as(&server, "worker", "");
    for args in [
        &["claim", "mine"][..],
        &["heartbeat", "mine", "--once"],
        &["status", "mine"],
        &["status"],
        &["release", "mine"],
        &["claim", "swept", "--ttl", "1s"],
    ] {
        let out = pg(data.path(), &worker, "worker", args);
        assert_eq!(code(&out), 0, "{args:?}: {}", text(&out));
    }
    let out = pg(data.path(), &worker, "other", &["claim", "theirs"]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    let out = pg(
        data.path(),
        &worker,
        "worker",
        &["release", "theirs", "--force"],
    );
    assert_eq!(code(&out), 0, "{}", text(&out));
    std::thread::sleep(Duration::from_millis(1300));
    let sweep = stdout_json(&pg(
        data.path(),
        &worker,
        "worker",
        &["steal-stale", "--all", "--json"],
    ));
    let swept = sweep["locks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["lock"] == "swept");
    assert_eq!(swept.unwrap()["action"], "released", "{sweep}");
    assert_eq!(
        server.psql("SELECT count(*) FROM pg_class WHERE relname = 'sentinel_locks'"),
        "1"
    );
    // A schema of one's own, chosen explicitly, is a separate set of locks.
    let own = url_as(&server, "alice", "sentinel_schema=alice");
    let out = pg(data.path(), &own, "alice", &["claim", "shared"]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert_eq!(
        server.psql("SELECT worker_id FROM alice.sentinel_locks"),
        "alice"
    );
    assert_eq!(
        server.psql("SELECT worker_id FROM public.sentinel_locks WHERE worker_id IS NOT NULL"),
        "admin"
    );
}

/// Issue 13, item 8: a sequence that restarts (a restore, a promoted logical replica, `ALTER
/// SEQUENCE … RESTART`) once handed a take-over a smaller token than the lock it took over.
#[test]
fn fencing_tokens_never_go_backwards_when_the_sequence_restarts() {
    let Some(server) = Postgres::start() else {
        return;
    };
    let data = tempfile::tempdir().unwrap();
    let url = server.url();
    for name in ["a", "b", "c"] {
        token(&pg(data.path(), &url, "w", &["claim", name, "--json"]));
    }
    let first = token(&pg(
        data.path(),
        &url,
        "w",
        &["claim", "job", "--ttl", "1s", "--json"],
    ));
    server.psql("ALTER SEQUENCE sentinel_fencing_tokens RESTART");
    std::thread::sleep(Duration::from_millis(1300));
    let taken = token(&pg(
        data.path(),
        &url,
        "x",
        &["steal-stale", "job", "--json"],
    ));
    assert!(taken > first, "{taken} after {first}");
    // The sequence itself was moved past the table, so other names go on from there too.
    let next = token(&pg(data.path(), &url, "y", &["claim", "other", "--json"]));
    assert!(next > taken, "{next} after {taken}");
}

/// Issue 13, item 8, once every lock was released: a release deleted the row, so a sequence that
/// restarted handed a name a token it had already issued.
#[test]
fn a_released_lock_keeps_its_token_when_the_sequence_restarts() {
    let Some(server) = Postgres::start() else {
        return;
    };
    let data = tempfile::tempdir().unwrap();
    let url = server.url();
    let release = |worker: &str| {
        stdout_json(&pg(
            data.path(),
            &url,
            worker,
            &["release", "job", "--json"],
        ))
    };
    let mut first = 0;
    for _ in 0..3 {
        first = token(&pg(data.path(), &url, "w", &["claim", "job", "--json"]));
        assert_eq!(release("w")["was_held"], true);
    }
    server.psql("ALTER SEQUENCE public.sentinel_fencing_tokens RESTART");
    let second = token(&pg(data.path(), &url, "w", &["claim", "job", "--json"]));
    assert!(second > first, "{second} after {first}");

    // The row a release keeps is free to every reader, and to a second release.
    assert_eq!(release("w")["was_held"], true);
    assert_eq!(
        server.psql("SELECT worker_id IS NULL, fencing_token FROM public.sentinel_locks"),
        format!("t|{second}")
    );
    let st = stdout_json(&pg(data.path(), &url, "x", &["status", "job", "--json"]));
    assert_eq!(st["held"], false, "{st}");
    let st = stdout_json(&pg(data.path(), &url, "x", &["status", "--json"]));
    assert_eq!(st["locks"], serde_json::json!([]), "{st}");
    let again = release("w");
    assert_eq!(again["was_held"], false, "{again}");
    let out = pg(data.path(), &url, "w", &["heartbeat", "job", "--once"]);
    assert_eq!(code(&out), 4, "{}", text(&out));
    assert!(text(&out).contains("not held by anyone"), "{}", text(&out));
    let sweep = stdout_json(&pg(
        data.path(),
        &url,
        "j",
        &["steal-stale", "--all", "--json"],
    ));
    assert_eq!(sweep["locks"], serde_json::json!([]), "{sweep}");
    let out = pg(
        data.path(),
        &url,
        "x",
        &["claim", "job", "--strategy", "fail-fast"],
    );
    assert_eq!(code(&out), 0, "{}", text(&out));
}

/// Issue 13, item 8: the table the previous version made has `worker_id NOT NULL`, which a
/// release that keeps the row cannot write. Its owner's first command drops that; a worker is
/// told the statement.
#[test]
fn a_table_of_the_previous_layout_lets_worker_id_be_null() {
    let Some(server) = Postgres::start() else {
        return;
    };
    let data = tempfile::tempdir().unwrap();
    server.psql(
        "CREATE TABLE public.sentinel_locks (
             name text PRIMARY KEY, worker_id text NOT NULL, node_id text NOT NULL,
             fencing_token bigint NOT NULL, claimed_at timestamptz NOT NULL,
             heartbeat_at timestamptz NOT NULL, ttl_ms bigint NOT NULL CHECK (ttl_ms > 0),
             task_info jsonb NOT NULL DEFAULT '{}', grant_nonce text NOT NULL DEFAULT '');
         CREATE INDEX sentinel_locks_fencing_token ON public.sentinel_locks (fencing_token);
         CREATE SEQUENCE public.sentinel_fencing_tokens;
         SELECT setval('public.sentinel_fencing_tokens', 54);
         INSERT INTO public.sentinel_locks VALUES
             ('old', 'w0', 'n0', 54, now(), now(), 600000, '{}', '');",
    );
    role(&server, "worker");
    grant_worker(&server, "worker", "public");
    let worker = url_as(&server, "worker", "");
    let out = pg(data.path(), &worker, "w0", &["release", "old"]);
    assert_eq!(code(&out), 1, "{}", text(&out));
    for part in [
        "older layout (worker_id is NOT NULL)",
        "ALTER TABLE \"public\".sentinel_locks ALTER COLUMN worker_id DROP NOT NULL;",
        "42501",
    ] {
        assert!(text(&out).contains(part), "{part}: {}", text(&out));
    }
    let st = stdout_json(&pg(
        data.path(),
        &server.url(),
        "x",
        &["status", "old", "--json"],
    ));
    assert_eq!(st["holder"]["fencing_token"], 54, "{st}");
    assert_eq!(
        server.psql(
            "SELECT attnotnull FROM pg_attribute
             WHERE attrelid = 'public.sentinel_locks'::regclass AND attname = 'worker_id'"
        ),
        "f"
    );
    let out = pg(data.path(), &worker, "w0", &["release", "old"]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    server.psql("ALTER SEQUENCE public.sentinel_fencing_tokens RESTART");
    let next = token(&pg(data.path(), &worker, "w1", &["claim", "old", "--json"]));
    assert!(next > 54, "{next} after 54");
}

/// Issue 13, item 10: errors said "db error" (no SQLSTATE, no message); a table of an older
/// layout was "unavailable" (exit 8) after retries; the URL's application_name was replaced.
#[test]
fn errors_carry_the_servers_words_and_an_older_table_is_migrated_or_explained() {
    let Some(server) = Postgres::start() else {
        return;
    };
    let data = tempfile::tempdir().unwrap();
    server.psql(
        "CREATE TABLE sentinel_locks (
             name text PRIMARY KEY, worker_id text NOT NULL, node_id text NOT NULL,
             fencing_token integer NOT NULL, claimed_at timestamptz NOT NULL,
             heartbeat_at timestamptz NOT NULL, ttl_ms integer NOT NULL, task_info text NOT NULL);
         CREATE SEQUENCE sentinel_fencing_tokens;
         INSERT INTO sentinel_locks VALUES ('old', 'w0', 'n0', 7, now(), now(), 600000, '{}');",
    );
    role(&server, "worker");
    grant_worker(&server, "worker", "public");
    let out = pg(
        data.path(),
        &url_as(&server, "worker", ""),
        "worker",
        &["claim", "x"],
    );
    assert_eq!(code(&out), 1, "{}", text(&out));
    for part in [
        "older layout",
        "fencing_token is integer",
        "no column grant_nonce",
        "ALTER TABLE \"public\".sentinel_locks",
        "42501",
    ] {
        assert!(text(&out).contains(part), "{part}: {}", text(&out));
    }
    // Its owner's first command changes it; the old row is still there and readable.
    let st = stdout_json(&pg(
        data.path(),
        &server.url(),
        "w0",
        &["status", "old", "--json"],
    ));
    assert_eq!(st["holder"]["fencing_token"], 7, "{st}");
    let out = pg(
        data.path(),
        &url_as(&server, "worker", ""),
        "worker",
        &["claim", "x"],
    );
    assert_eq!(code(&out), 0, "{}", text(&out));

    role(&server, "stranger");
    let out = pg(
        data.path(),
        &url_as(&server, "stranger", ""),
        "s",
        &["claim", "y"],
    );
    assert_eq!(code(&out), 5, "{}", text(&out));
    for part in [
        "permission denied for",
        "SQLSTATE 42501",
        "docs/postgres.md",
    ] {
        assert!(text(&out).contains(part), "{part}: {}", text(&out));
    }
    assert!(!text(&out).contains("pw@"), "{}", text(&out));
    // A login refused without an SQLSTATE is not retried as if the network were down.
    let started = Instant::now();
    let no_password = format!("postgres://stranger@127.0.0.1:{}/postgres", server.port());
    let out = pg(data.path(), &no_password, "s", &["claim", "y"]);
    assert_eq!(code(&out), 5, "{}", text(&out));
    assert!(text(&out).contains("password missing"), "{}", text(&out));
    assert!(started.elapsed() < Duration::from_secs(5));

    let named = format!("{}?application_name=nightly-compaction", server.url());
    let out = pg(data.path(), &named, "w", &["claim", "z"]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert!(
        server.log().contains("application_name=nightly-compaction"),
        "{}",
        server.log()
    );
}

/// A CA and a server certificate it signs for 127.0.0.1 only, as PEM: (CA, certificate, key).
fn certificates(dir: &std::path::Path, ca_name: &str) -> (std::path::PathBuf, String, String) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(DnType::CommonName, ca_name);
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate().unwrap();
    let mut leaf = CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap();
    leaf.distinguished_name.push(DnType::CommonName, "postgres");
    let cert = leaf.signed_by(&key, &issuer).unwrap();
    let ca_file = dir.join(format!("{ca_name}.pem"));
    std::fs::write(&ca_file, ca_cert.pem()).unwrap();
    (ca_file, cert.pem(), key.serialize_pem())
}

/// Issue 13, item 14: libpq's sslmode against a server that accepts TLS connections only, with a
/// certificate for 127.0.0.1 from a CA the test makes. `require` was refused (exit 2) and
/// `verify-full` was "not a valid connection URL".
#[test]
fn sslmodes_mean_what_they_mean_to_libpq() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = certificates(dir.path(), "test-ca");
    let (other_ca, _, _) = certificates(dir.path(), "other-ca");
    let Some(server) = Postgres::start_tls(&cert, &key) else {
        return;
    };
    let data = tempfile::tempdir().unwrap();
    let port = server.port();
    let at =
        |host: &str, query: &str| format!("postgres://sentinel@{host}:{port}/postgres?{query}");
    let (ca_file, other_ca_file) = (ca.clone(), other_ca.clone());
    let (ca, other_ca) = (ca.display().to_string(), other_ca.display().to_string());
    let ok = [
        at(
            "127.0.0.1",
            &format!("sslmode=verify-full&sslrootcert={ca}"),
        ),
        // The chain only: the certificate does not name "localhost".
        at("localhost", &format!("sslmode=verify-ca&sslrootcert={ca}")),
        at("localhost", "sslmode=require"),
        at("127.0.0.1", &format!("sslmode=require&sslrootcert={ca}")),
        at("127.0.0.1", ""),
    ];
    for (i, url) in ok.iter().enumerate() {
        let out = pg(data.path(), url, "w", &["claim", &format!("ok-{i}")]);
        assert_eq!(code(&out), 0, "{url}: {}", text(&out));
    }
    // The global --ca-cert stands for sslrootcert; without either, the system's roots refuse.
    let full = at("127.0.0.1", "sslmode=verify-full");
    let out = pg(data.path(), &full, "w", &["claim", "global-ca"]);
    assert_eq!(code(&out), 5, "{}", text(&out));
    let out = pg(
        data.path(),
        &full,
        "w",
        &["claim", "global-ca", "--ca-cert", &ca],
    );
    assert_eq!(code(&out), 0, "{}", text(&out));
    let refused = [
        (
            at(
                "localhost",
                &format!("sslmode=verify-full&sslrootcert={ca}"),
            ),
            "not valid for name",
        ),
        (
            at(
                "127.0.0.1",
                &format!("sslmode=verify-full&sslrootcert={other_ca}"),
            ),
            "UnknownIssuer",
        ),
        // With a CA, require checks the chain, as libpq does.
        (
            at(
                "127.0.0.1",
                &format!("sslmode=require&sslrootcert={other_ca}"),
            ),
            "UnknownIssuer",
        ),
        (at("127.0.0.1", "sslmode=disable"), "no encryption"),
    ];
    for (url, why) in &refused {
        let started = Instant::now();
        let out = pg(data.path(), url, "w", &["claim", "refused"]);
        assert_eq!(code(&out), 5, "{url}: {}", text(&out));
        assert!(text(&out).contains(why), "{url}: {}", text(&out));
        // Refused at once, not retried as if the network were down.
        assert!(started.elapsed() < Duration::from_secs(5), "{url}");
    }
    let out = pg(
        data.path(),
        &at("127.0.0.1", "sslmode=verify-full&sslrootcert=/no/such.pem"),
        "w",
        &["claim", "x"],
    );
    assert_eq!(code(&out), 2, "{}", text(&out));
    assert!(text(&out).contains("/no/such.pem"), "{}", text(&out));
    let out = pg(
        data.path(),
        &at("127.0.0.1", "sslmode=allow"),
        "w",
        &["claim", "x"],
    );
    assert_eq!(code(&out), 2, "{}", text(&out));

    // The library's global CA (what --ca-cert builds) where the URL names none.
    use sentinel::LockBackend;
    use sentinel::postgres::PostgresBackend;
    use sentinel::tls::ClientTls;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let lock = sentinel::lock::LockId::Name("ok-0".into());
    let trusting = |ca: &std::path::Path| ClientTls {
        ca_cert: Some(ca.to_path_buf()),
        ..ClientTls::default()
    };
    let full = at("127.0.0.1", "sslmode=verify-full");
    let b = PostgresBackend::with_tls(&full, &trusting(&ca_file)).unwrap();
    let status = rt.block_on(b.status(&lock)).unwrap();
    assert_eq!(status.holder().unwrap().worker_id, "w");
    let b = PostgresBackend::with_tls(&full, &trusting(&other_ca_file)).unwrap();
    let e = rt.block_on(b.status(&lock)).unwrap_err();
    assert!(matches!(e, sentinel::Error::Auth(_)), "{e}");
}
