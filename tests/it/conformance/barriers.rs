//! Barriers and the watch stream on every backend: barriers meet on the backends that keep them
//! (the coordinator, local) through the binary and the library, and the others refuse them
//! (exit 2 naming where they are kept, the library's usage error); `sentinel watch` needs the
//! coordinator and says so everywhere else.
//!
//! What is one backend's own stays in tests/it/barriers.rs: a participant killed while it waits,
//! the coordinator's barrier status, a cancelled library wait.

use std::process::Output;

use serde_json::Value;

use sentinel::barrier::Arrived;
use sentinel::error::Error;

use super::*;
use crate::barriers::{coordinator_status, local_waiting};
use crate::support::wait_for;

impl Subject {
    /// Whether barriers are kept here.
    fn keeps_barriers(&self) -> bool {
        matches!(self.kind, Kind::Local | Kind::Server | Kind::Cluster)
    }

    /// How many participants wait at barrier `name`, as the backend itself keeps it.
    fn waiting(&self, name: &str) -> usize {
        match self.kind {
            Kind::Local => local_waiting(&self.data.path().join("local").join("locks.json"), name),
            _ => {
                let url = self.coordinator().urls();
                let first = url.split(',').next().unwrap();
                coordinator_status(first, name)["arrived"].as_u64().unwrap() as usize
            }
        }
    }
}

fn barrier(s: &Subject, worker: &str, args: &[&str]) -> Output {
    let mut all = vec!["--json", "barrier"];
    all.extend_from_slice(args);
    s.cli(worker, &all).output().unwrap()
}

fn participant(s: &Subject, worker: &str, args: &[&str]) -> Running {
    let mut all = vec!["--json", "barrier"];
    all.extend_from_slice(args);
    Running::spawn(&mut s.cli(worker, &all))
}

/// `sentinel barrier` opens for all of its count at once and not before; a participant that
/// gives up exits 3 and no longer counts; another count is a usage error naming both; the
/// library's barriers meet across clients. Elsewhere, the refusal.
pub fn barriers(s: &Subject) {
    if !s.keeps_barriers() {
        return refused(s);
    }
    opens_at_its_count(s);
    a_timeout_leaves(s);
    counts_must_agree(s);
    library_clients_meet(s);
}

/// Three participants: the first two wait (seen waiting by the backend, still running) until the
/// third arrives, then all three exit 0, and the name starts a new round.
fn opens_at_its_count(s: &Subject) {
    let mut first = participant(s, "a", &["stage", "--count", "3"]);
    let mut second = participant(s, "b", &["stage", "--count", "3"]);
    wait_for(Duration::from_secs(20), "two participants waiting", || {
        s.waiting("stage") == 2
    });
    // Not opened by two: both still wait a while later.
    std::thread::sleep(Duration::from_millis(300));
    assert!(first.is_running() && second.is_running(), "{:?}", s.kind);
    let out = barrier(s, "c", &["stage", "--count", "3"]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    let opened = stdout_json(&out);
    assert_eq!(
        (&opened["opened"], &opened["count"], &opened["barrier"]),
        (&Value::from(true), &Value::from(3), &Value::from("stage")),
        "{opened}"
    );
    for p in [first, second] {
        let out = p.exit_within(Duration::from_secs(10));
        assert_eq!(code(&out), 0, "{}", text(&out));
        assert_eq!(stdout_json(&out)["opened"], true);
    }
    assert_eq!(s.waiting("stage"), 0, "the name starts a new round");
}

/// Alone at a barrier of two: the timeout ends it (exit 3, saying how many had come), and it no
/// longer counts, so the next participant waits alone too.
fn a_timeout_leaves(s: &Subject) {
    let out = barrier(s, "a", &["pair", "--count", "2", "--timeout", "300ms"]);
    assert_eq!(code(&out), 3, "{}", text(&out));
    assert!(text(&out).contains("1 of 2"), "{}", text(&out));
    assert_eq!(s.waiting("pair"), 0);
    let out = barrier(s, "b", &["pair", "--count", "2", "--timeout", "300ms"]);
    assert_eq!(code(&out), 3, "the one that left opened it: {}", text(&out));
}

/// Every participant gives the same count; another is a usage error naming both, and the
/// barrier still opens at the first count.
fn counts_must_agree(s: &Subject) {
    let first = participant(s, "a", &["agree", "--count", "2", "--timeout", "30s"]);
    wait_for(Duration::from_secs(20), "one participant waiting", || {
        s.waiting("agree") == 1
    });
    let out = barrier(s, "b", &["agree", "--count", "3"]);
    assert_eq!(code(&out), 2, "{}", text(&out));
    assert!(
        text(&out).contains("waits for 2 participants, not 3"),
        "{}",
        text(&out)
    );
    let out = barrier(s, "b", &["agree", "--count", "2"]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert_eq!(code(&first.exit_within(Duration::from_secs(10))), 0);
}

/// `LockClient::barrier(..).wait(..)`: two clients, each with a backend of its own, meet; one
/// alone does not pass.
fn library_clients_meet(s: &Subject) {
    let rt = runtime();
    let a = LockClient::new(s.backend(&rt), "a").unwrap();
    let b = LockClient::new(s.backend(&rt), "b").unwrap();
    rt.block_on(async {
        let alone = a.barrier("lib", 2);
        assert_eq!(
            alone.wait(Some(Duration::from_millis(300))).await.unwrap(),
            Arrived::NotOpened {
                arrived: 0,
                count: 2
            },
            "{:?}",
            s.kind
        );
        let (at_a, at_b) = (a.barrier("lib", 2), b.barrier("lib", 2));
        let (x, y) = tokio::join!(at_a.wait(None), at_b.wait(Some(Duration::from_secs(20))));
        assert_eq!(x.unwrap(), Arrived::Opened { count: 2 }, "{:?}", s.kind);
        assert_eq!(y.unwrap(), Arrived::Opened { count: 2 }, "{:?}", s.kind);
    });
}

/// A backend without barriers refuses them: exit 2 naming the backends that keep them, and the
/// library's usage error, before anything waits.
fn refused(s: &Subject) {
    let started = Instant::now();
    let out = barrier(s, "w1", &["b", "--count", "2", "--timeout", "30s"]);
    assert_eq!(code(&out), 2, "{:?}: {}", s.kind, text(&out));
    for keeper in ["--server", "local"] {
        assert!(text(&out).contains(keeper), "{keeper}: {}", text(&out));
    }
    let rt = runtime();
    let client = LockClient::new(s.backend(&rt), "a").unwrap();
    let waited = rt.block_on(client.barrier("b", 2).wait(Some(Duration::from_secs(30))));
    assert!(matches!(waited, Err(Error::Usage(_))), "{waited:?}");
    assert!(started.elapsed() < Duration::from_secs(20), "it waited");
}

/// `sentinel watch` reads the events of the coordinator and of the local backend: with any other
/// backend it is a usage error naming `--server`; on those two the same command line follows
/// the stream until stopped (what it prints is tests/it/watch.rs's). The backend is chosen as a
/// script's environment would choose it.
pub fn watch_follows_or_is_refused(s: &Subject) {
    if matches!(s.kind, Kind::Local | Kind::Server | Kind::Cluster) {
        let mut watch = Running::spawn(&mut watch(s, &["x"]));
        std::thread::sleep(Duration::from_millis(500));
        assert!(watch.is_running(), "the {:?} watch ended", s.kind);
        watch.signal("TERM");
        let out = watch.exit_within(Duration::from_secs(10));
        assert_eq!(code(&out), 0, "{}", text(&out));
        return;
    }
    for args in [&["x"][..], &["--prefix", "job/"]] {
        let out = Running::spawn(&mut watch(s, args)).exit_within(Duration::from_secs(20));
        assert_eq!(code(&out), 2, "{:?} {args:?}: {}", s.kind, text(&out));
        assert!(text(&out).contains("--server"), "{}", text(&out));
    }
}

/// `sentinel watch ARGS…` with this backend chosen by `SENTINEL_*` variables.
fn watch(s: &Subject, args: &[&str]) -> Command {
    let mut cmd = crate::support::sentinel(s.data.path());
    cmd.env("SENTINEL_BACKEND", s.name());
    match s.kind {
        Kind::Local => {}
        Kind::Github => {
            cmd.env("SENTINEL_REPO", REPO)
                .env("SENTINEL_TOKEN", "not-used");
        }
        Kind::Redis => {
            cmd.env("SENTINEL_REDIS_URL", s.redis.as_ref().unwrap().url());
        }
        Kind::Postgres => {
            cmd.env("SENTINEL_DATABASE_URL", s.postgres.as_ref().unwrap().url());
        }
        Kind::Etcd => {
            cmd.env("SENTINEL_ETCD_ENDPOINTS", s.etcd.as_ref().unwrap().url());
        }
        Kind::Server | Kind::Cluster => {
            cmd.env("SENTINEL_SERVER", s.coordinator().urls())
                .env("SENTINEL_AUTH_TOKEN", TOKEN);
        }
    }
    cmd.arg("watch").args(args);
    cmd
}

/// A backend chosen explicitly is kept by `watch` too: a script on Redis that also has
/// `SENTINEL_SERVER` in its environment must not silently follow that coordinator's locks.
#[test]
fn watch_keeps_the_backend_chosen() {
    let Some(s) = Subject::new(Kind::Redis) else {
        return;
    };
    let out = Running::spawn(watch(&s, &["x"]).env("SENTINEL_SERVER", "http://127.0.0.1:9"))
        .exit_within(Duration::from_secs(20));
    assert_eq!(code(&out), 2, "{}", text(&out));
    assert!(text(&out).contains("--server"), "{}", text(&out));
}
