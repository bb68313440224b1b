//! One conformance suite, run against every backend: the same promises, checked the same way, in
//! process (the library's `LockBackend`) and through the real binary.
//!
//! What differs between backends is said once, in [`Subject`]: how to reach it, what a lock is
//! called (GitHub locks are issues), and what becomes of a lease that runs out (stale until taken
//! over on GitHub and the lock table; gone on Redis, etcd and the coordinator, which ends a lease
//! at its TTL and hands the lock to the next waiter).
//!
//! The coordination primitives have their rows in [`primitives`] (semaphores, shared holds,
//! elections) and [`barriers`] (barriers, and the watch stream's refusal): every backend runs
//! each one, or asserts its refusal.
//!
//! The coordinator is real `sentinel serve` processes with the cluster token: one node per test
//! for every scenario (and its restart after `kill -9`), and a three-node cluster for mutual
//! exclusion and for a leader killed under a held lock.

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use sentinel::backend::{Backend, LockBackend};
use sentinel::distributed::{
    DistributedLock, LeaderElection, LockClient, RetryConfig, acquire_all,
};
use sentinel::error::ExitCode;
use sentinel::etcd::EtcdBackend;
use sentinel::github::client::ClientOptions;
use sentinel::github::{GithubBackend, GithubOptions};
use sentinel::local::LocalBackend;
use sentinel::lock::{
    AcquireRequest, Attempt, Claimant, Grant, HoldKind, Holder, LockId, ReleaseRequest,
    RenewRequest, Takeover,
};
use sentinel::postgres::PostgresBackend;
use sentinel::redis::RedisBackend;
use sentinel::secret::Secret;
use sentinel::server::{ServerBackend, server_urls};

use crate::serve::{Node, TOKEN, eventually, free_addr, leader_of, peers_of};
use crate::servers::{Etcd, Postgres, Redis};
use crate::support::{Gh, REPO, Running, code, sentinel, sole_winner, stdout_json, text, wait_all};

mod barriers;
mod primitives;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Local,
    Github,
    Redis,
    Postgres,
    /// One etcd member.
    Etcd,
    /// One `sentinel serve` node.
    Server,
    /// Three `sentinel serve` nodes, every client given all three.
    Cluster,
}

/// `sentinel serve` processes on loopback, with the cluster token.
pub struct Coordinator {
    nodes: Vec<Node>,
    addrs: Vec<String>,
    _dirs: Vec<tempfile::TempDir>,
    /// Held while more than one node runs.
    _one_cluster: Option<std::sync::MutexGuard<'static, ()>>,
}

impl Coordinator {
    fn start(n: usize) -> Coordinator {
        let one_cluster = (n > 1).then(crate::serve::one_cluster_at_a_time);
        let dirs: Vec<_> = (0..n).map(|_| tempfile::tempdir().unwrap()).collect();
        let addrs: Vec<String> = (0..n).map(|_| free_addr()).collect();
        let peers: Vec<String> = match n {
            1 => Vec::new(),
            _ => peers_of(&addrs),
        };
        let nodes = (0..n)
            .map(|i| Node::start(i as u64 + 1, &addrs[i], &peers, dirs[i].path(), Some(TOKEN)))
            .collect();
        let c = Coordinator {
            nodes,
            addrs,
            _dirs: dirs,
            _one_cluster: one_cluster,
        };
        c.leader();
        c
    }

    /// `--server`: every node.
    fn urls(&self) -> String {
        let urls: Vec<String> = self.addrs.iter().map(|a| format!("http://{a}")).collect();
        urls.join(",")
    }

    /// The index of the leader, once every running node knows the same running one.
    fn leader(&self) -> usize {
        let id = eventually(30, "one leader known to every node", || {
            let seen: Vec<Option<u64>> = self
                .nodes
                .iter()
                .zip(&self.addrs)
                .filter(|(n, _)| n.is_running())
                .map(|(_, a)| leader_of(a))
                .collect();
            let first = seen.first().copied().flatten()?;
            let running = self
                .nodes
                .get((first as usize).checked_sub(1)?)?
                .is_running();
            (running && seen.iter().all(|l| *l == Some(first))).then_some(first)
        });
        (id - 1) as usize
    }

    /// `kill -9` of node `i`.
    fn kill(&mut self, i: usize) {
        self.nodes[i].kill();
    }

    /// Node `i` started again on its data directory; returns once a leader serves.
    fn start_again(&mut self, i: usize) {
        self.nodes[i].restart();
        self.leader();
    }
}

/// The locks the scenarios use; on GitHub each is an issue.
const LOCKS: [&str; 5] = ["the-one", "cycle-a", "cycle-b", "job", "build"];

/// A backend under test, with whatever server it needs.
pub struct Subject {
    kind: Kind,
    data: tempfile::TempDir,
    redis: Option<Redis>,
    postgres: Option<Postgres>,
    etcd: Option<Etcd>,
    github: Option<Gh>,
    coordinator: Option<Coordinator>,
    /// GitHub: the issue standing for each lock of [`LOCKS`].
    issues: BTreeMap<&'static str, u64>,
}

impl Subject {
    /// The backend, started; `None` (the test is skipped, with a printed line) when its server is
    /// not installed.
    pub fn new(kind: Kind) -> Option<Subject> {
        Self::build(kind, false)
    }

    /// The same, with a server that keeps its data across a restart.
    pub fn persistent(kind: Kind) -> Option<Subject> {
        Self::build(kind, true)
    }

    fn build(kind: Kind, persistent: bool) -> Option<Subject> {
        let redis = match kind {
            Kind::Redis if persistent => Some(Redis::start_persistent()?),
            Kind::Redis => Some(Redis::start()?),
            _ => None,
        };
        let postgres = match kind {
            Kind::Postgres => Some(Postgres::start()?),
            _ => None,
        };
        // etcd keeps its data on disk whether or not the test restarts it.
        let etcd = match kind {
            Kind::Etcd => Some(Etcd::start()?),
            _ => None,
        };
        let github = (kind == Kind::Github).then(Gh::new);
        // The coordinator keeps its data on disk whether or not the test restarts it.
        let coordinator = match kind {
            Kind::Server => Some(Coordinator::start(1)),
            Kind::Cluster => Some(Coordinator::start(3)),
            _ => None,
        };
        let issues = match &github {
            Some(gh) => LOCKS
                .iter()
                .map(|name| (*name, gh.emu.create_issue(REPO, name)))
                .collect(),
            None => BTreeMap::new(),
        };
        Some(Subject {
            kind,
            data: tempfile::tempdir().unwrap(),
            redis,
            postgres,
            etcd,
            github,
            coordinator,
            issues,
        })
    }

    /// What the binary calls the lock `name`.
    pub fn lock(&self, name: &str) -> String {
        match self.issues.get(name) {
            Some(n) => n.to_string(),
            None => name.to_string(),
        }
    }

    /// The lock name a guard's `resource()` stands for (GitHub describes issues as
    /// `owner/repo#N`), in the binary's spelling.
    fn lock_of(&self, resource: &str) -> String {
        match resource.rsplit_once('#') {
            Some((_, n)) if self.kind == Kind::Github => n.to_string(),
            _ => resource.to_string(),
        }
    }

    /// What the library calls the lock `name`.
    fn id(&self, name: &str) -> LockId {
        match self.issues.get(name) {
            Some(n) => LockId::Issue(*n),
            None => LockId::Name(name.to_string()),
        }
    }

    /// The global options that select this backend.
    fn args(&self) -> Vec<String> {
        let mut args = vec!["--backend".to_string(), self.name().to_string()];
        match self.kind {
            Kind::Local => {}
            Kind::Github => {
                let url = self.github.as_ref().unwrap().emu.url();
                args.extend(["--repo".into(), REPO.into(), "--api-url".into(), url]);
            }
            Kind::Redis => {
                args.extend(["--redis-url".into(), self.redis.as_ref().unwrap().url()]);
            }
            Kind::Postgres => {
                args.extend([
                    "--database-url".into(),
                    self.postgres.as_ref().unwrap().url(),
                ]);
            }
            Kind::Etcd => {
                args.extend(["--etcd-endpoints".into(), self.etcd.as_ref().unwrap().url()]);
            }
            Kind::Server | Kind::Cluster => {
                args.extend(["--server".into(), self.coordinator().urls()]);
            }
        }
        args
    }

    fn name(&self) -> &'static str {
        match self.kind {
            Kind::Local => "local",
            Kind::Github => "github",
            Kind::Redis => "redis",
            Kind::Postgres => "postgres",
            Kind::Etcd => "etcd",
            Kind::Server | Kind::Cluster => "server",
        }
    }

    fn coordinator(&self) -> &Coordinator {
        self.coordinator.as_ref().unwrap()
    }

    /// `sentinel --backend … --worker-id WORKER ARGS…`
    pub fn cli(&self, worker: &str, args: &[&str]) -> Command {
        let mut cmd = sentinel(self.data.path());
        cmd.args(self.args())
            .args(["--worker-id", worker])
            .args(args);
        if let Some(gh) = &self.github {
            // Fast but safe: the settle pause must exceed the emulator's read lag.
            cmd.env("SENTINEL_TOKEN", &gh.alice)
                .env("SENTINEL_SETTLE", "400ms");
        }
        if self.coordinator.is_some() {
            cmd.env("SENTINEL_AUTH_TOKEN", TOKEN);
        }
        cmd
    }

    /// The backend in this process, as a library user holds it (inside a runtime: the GitHub
    /// client needs one to be built).
    pub fn backend(&self, rt: &tokio::runtime::Runtime) -> Backend {
        let _inside = rt.enter();
        match self.kind {
            Kind::Local => {
                Backend::Local(LocalBackend::open(self.data.path().join("local")).unwrap())
            }
            Kind::Github => {
                let gh = self.github.as_ref().unwrap();
                let backend = GithubBackend::new(GithubOptions {
                    repo: REPO.parse().unwrap(),
                    client: ClientOptions::new(&gh.emu.url(), Some(Secret::new(gh.alice.clone()))),
                    data_dir: self.data.path().to_path_buf(),
                    trusted: Vec::new(),
                    settle: Duration::from_millis(400),
                    in_actions: false,
                    actions_job: None,
                });
                Backend::Github(Box::new(backend.unwrap()))
            }
            Kind::Redis => {
                Backend::Redis(RedisBackend::new(&self.redis.as_ref().unwrap().url()).unwrap())
            }
            Kind::Postgres => Backend::Postgres(
                PostgresBackend::new(&self.postgres.as_ref().unwrap().url()).unwrap(),
            ),
            Kind::Etcd => {
                Backend::Etcd(EtcdBackend::new(&self.etcd.as_ref().unwrap().url()).unwrap())
            }
            Kind::Server | Kind::Cluster => Backend::Server(
                ServerBackend::new(
                    server_urls(&self.coordinator().urls()).unwrap(),
                    Some(&Secret::new(TOKEN.to_string())),
                )
                .unwrap(),
            ),
        }
    }

    /// How coarse the backend's clock is: GitHub's timestamps are whole seconds, so a lease is
    /// only seen to have run out up to a second after it did; etcd's lease TTLs are whole seconds
    /// and its leader looks for expired leases every half second.
    fn resolution(&self) -> Duration {
        match self.kind {
            Kind::Github | Kind::Etcd => Duration::from_secs(1),
            _ => Duration::ZERO,
        }
    }

    /// Whether a lease that ran out is simply gone (Redis, etcd, the coordinator), rather than
    /// stale until taken over.
    fn expired_is_free(&self) -> bool {
        matches!(
            self.kind,
            Kind::Redis | Kind::Etcd | Kind::Server | Kind::Cluster
        )
    }

    /// `kill -9` of the server (the coordinator's leader) and a start on the same data.
    fn restart(&mut self) {
        match self.kind {
            Kind::Redis => self.redis.as_mut().unwrap().restart(),
            Kind::Postgres => self.postgres.as_mut().unwrap().restart(),
            Kind::Etcd => self.etcd.as_mut().unwrap().restart(),
            Kind::Server | Kind::Cluster => {
                let c = self.coordinator.as_mut().unwrap();
                let leader = c.leader();
                c.kill(leader);
                c.start_again(leader);
            }
            Kind::Local | Kind::Github => unreachable!("no server of the test's own to restart"),
        }
    }
}

/// Held by the scenarios that start many processes or tasks at once, so that the backends'
/// bursts come one after another instead of together: on two cores they would otherwise starve
/// the other tests' timing-sensitive races.
static BURST: std::sync::Mutex<()> = std::sync::Mutex::new(());

pub(crate) fn burst() -> std::sync::MutexGuard<'static, ()> {
    BURST.lock().unwrap_or_else(|e| e.into_inner())
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .unwrap()
}

pub(crate) fn acquire(
    lock: &LockId,
    worker: &str,
    ttl: Duration,
    takeover: Takeover,
) -> AcquireRequest {
    AcquireRequest {
        lock: lock.clone(),
        claimant: Claimant {
            worker_id: worker.into(),
            node_id: "node-1".into(),
        },
        ttl,
        takeover,
        task_info: Default::default(),
        readopt: false,
        attempt: 0,
        wait: Duration::ZERO,
        kind: HoldKind::Exclusive,
    }
}

fn release(lock: &LockId, worker: &str, token: Option<u64>) -> ReleaseRequest {
    ReleaseRequest {
        lock: lock.clone(),
        worker_id: worker.into(),
        force: false,
        fencing_token: token,
    }
}

fn renew(lock: &LockId, worker: &str, token: Option<u64>) -> RenewRequest {
    RenewRequest {
        lock: lock.clone(),
        worker_id: worker.into(),
        fencing_token: token,
        ttl: None,
    }
}

/// The grant of an attempt made under contention, if it won. Losing is being told the holder,
/// or on GitHub a conflict (a claim that landed in the same second as a release cannot be
/// ordered after it); anything else fails the test.
fn won(a: sentinel::Result<Attempt>) -> Option<Grant> {
    match a {
        Ok(Attempt::Granted(g)) => Some(g),
        Ok(Attempt::Held(_)) => None,
        Err(e) if e.exit_code() == ExitCode::Conflict => None,
        Err(e) => panic!("{e}"),
    }
}

fn granted(a: Attempt) -> Grant {
    match a {
        Attempt::Granted(g) => g,
        Attempt::Held(h) => panic!("expected a grant, held by {h:?}"),
    }
}

fn holder_of(b: &Backend, lock: &LockId, rt: &tokio::runtime::Runtime) -> Option<Holder> {
    rt.block_on(b.status(lock)).unwrap().holder().cloned()
}

/// 16 tasks at once on one name: exactly one grant, and every loser names the winner. Then 16
/// tasks cycling claim and release on two names: never two inside one name, and per name the
/// fencing tokens strictly increase in the order of the grants.
pub fn sixteen_tasks(s: &Subject) {
    let _burst = burst();
    let rt = runtime();
    let b = Arc::new(s.backend(&rt));
    let ttl = Duration::from_secs(30);
    let the_one = s.id("the-one");
    let attempts: Vec<Attempt> = rt.block_on(async {
        let barrier = Arc::new(tokio::sync::Barrier::new(16));
        let tasks: Vec<_> = (0..16)
            .map(|i| {
                let (b, barrier, lock) = (b.clone(), barrier.clone(), the_one.clone());
                tokio::spawn(async move {
                    barrier.wait().await;
                    let req = acquire(&lock, &format!("task-{i}"), ttl, Takeover::None);
                    b.try_acquire(&req).await.unwrap()
                })
            })
            .collect();
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.unwrap());
        }
        out
    });
    let winners: Vec<&Grant> = attempts
        .iter()
        .filter_map(|a| match a {
            Attempt::Granted(g) => Some(g),
            Attempt::Held(_) => None,
        })
        .collect();
    assert_eq!(winners.len(), 1, "{:?}: {attempts:?}", s.kind);
    let winner = &winners[0].holder;
    for a in &attempts {
        if let Attempt::Held(h) = a {
            assert_eq!(
                (&h.worker_id, h.fencing_token),
                (&winner.worker_id, winner.fencing_token)
            );
        }
    }

    let names: Arc<[LockId; 2]> = Arc::new([s.id("cycle-a"), s.id("cycle-b")]);
    let inside: Arc<Vec<AtomicUsize>> =
        Arc::new(names.iter().map(|_| AtomicUsize::new(0)).collect());
    let grants: Vec<(usize, u64)> = rt.block_on(async {
        let tasks: Vec<_> = (0..16)
            .map(|i| {
                let (b, inside, names) = (b.clone(), inside.clone(), names.clone());
                tokio::spawn(async move {
                    let me = format!("cycler-{i}");
                    let mut mine = Vec::new();
                    for c in 0..8 {
                        let n = (i + c) % names.len();
                        let req = acquire(&names[n], &me, ttl, Takeover::None);
                        if let Some(g) = won(b.try_acquire(&req).await) {
                            assert_eq!(
                                inside[n].fetch_add(1, Ordering::SeqCst),
                                0,
                                "two holders of {}",
                                names[n]
                            );
                            mine.push((n, g.holder.fencing_token, std::time::Instant::now()));
                            tokio::task::yield_now().await;
                            assert_eq!(inside[n].fetch_sub(1, Ordering::SeqCst), 1);
                            let token = Some(g.holder.fencing_token);
                            let r = b.release(&release(&names[n], &me, token)).await.unwrap();
                            assert!(r.was_held, "our lock vanished");
                        }
                    }
                    mine
                })
            })
            .collect();
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.unwrap());
        }
        all.sort_by_key(|(_, _, at)| *at);
        all.into_iter().map(|(n, t, _)| (n, t)).collect()
    });
    assert!(grants.len() >= names.len(), "{grants:?}");
    let mut per_name: BTreeMap<usize, Vec<u64>> = BTreeMap::new();
    for (n, t) in grants {
        per_name.entry(n).or_default().push(t);
    }
    for tokens in per_name.values() {
        assert!(
            tokens.windows(2).all(|w| w[0] < w[1]),
            "{:?}: {tokens:?}",
            s.kind
        );
    }
}

/// 16 processes of the real binary claim one name at once: exactly one exits 0, the others 3.
pub fn sixteen_processes(s: &Subject) {
    let _burst = burst();
    let build = s.lock("build");
    let children: Vec<_> = (0..16)
        .map(|i| {
            s.cli(
                &format!("w{i}"),
                &["claim", &build, "--strategy", "fail-fast", "--json"],
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
        })
        .collect();
    let winner = sole_winner(&wait_all(children));
    let st = stdout_json(
        &s.cli("observer", &["status", &build, "--json"])
            .output()
            .unwrap(),
    );
    assert_eq!(st["holder"]["worker_id"], format!("w{winner}"));
    assert_eq!(st["backend"], s.name());
}

/// Renewals keep a lease past its TTL; a lease left alone runs out; a grant that ended cannot
/// renew or release the grant after it, even under the same worker id; tokens keep growing.
pub fn leases(s: &Subject) {
    let rt = runtime();
    let b = s.backend(&rt);
    let job = s.id("job");
    // GitHub's claims take longer than the others' (a settle pause, several requests): its leases
    // get room for a slow claim on a loaded machine. 2 s were too few for everyone: a renewal
    // stalled 1.2 s behind its 0.8 s pause found the local lease expired in a full cargo test.
    let ttl = Duration::from_secs(3) + 2 * s.resolution();
    let first = granted(
        rt.block_on(b.try_acquire(&acquire(&job, "w1", ttl, Takeover::None)))
            .unwrap(),
    );
    let t1 = first.holder.fencing_token;
    // Four renewals 0.8 s apart carry the lease past its first end (but GitHub's longer one).
    for _ in 0..4 {
        std::thread::sleep(Duration::from_millis(800));
        let h = rt.block_on(b.renew(&renew(&job, "w1", Some(t1)))).unwrap();
        assert_eq!(h.fencing_token, t1);
        assert_eq!(
            h.expires_at - h.heartbeat_last,
            chrono::Duration::from_std(ttl).unwrap()
        );
    }
    let held = holder_of(&b, &job, &rt).expect("still held after 3.2 s");
    assert_eq!((held.worker_id.as_str(), held.stale), ("w1", false));
    assert!(held.expires_at > first.holder.expires_at);

    // Left alone, the lease runs out.
    std::thread::sleep(ttl + s.resolution() + Duration::from_millis(300));
    match holder_of(&b, &job, &rt) {
        None => assert!(
            s.expired_is_free(),
            "{:?}: the expired lock vanished",
            s.kind
        ),
        Some(h) => assert!(!s.expired_is_free() && h.stale, "{:?}: {h:?}", s.kind),
    }
    // A plain claim by another worker: free on Redis and the coordinator, stale (held) elsewhere.
    let plain = rt
        .block_on(b.try_acquire(&acquire(&job, "w2", ttl * 5, Takeover::None)))
        .unwrap();
    let second = match plain {
        Attempt::Granted(g) => {
            assert!(s.expired_is_free());
            // Hand it back so that the same worker as before can be granted it again below.
            rt.block_on(b.release(&release(&job, "w2", Some(g.holder.fencing_token))))
                .unwrap();
            g.holder.fencing_token
        }
        Attempt::Held(h) => {
            assert!(h.stale && !s.expired_is_free());
            t1
        }
    };
    // The holder whose lease ran out cannot renew it (on GitHub its late renewal even releases
    // it).
    let e = rt
        .block_on(b.renew(&renew(&job, "w1", Some(t1))))
        .unwrap_err();
    assert_eq!(e.exit_code(), ExitCode::NotOwner, "{e}");
    // The same worker is granted the lock again: a new grant, a larger token.
    let again = granted(
        rt.block_on(b.try_acquire(&acquire(&job, "w1", ttl * 5, Takeover::Stale)))
            .unwrap(),
    );
    let t2 = again.holder.fencing_token;
    assert!(t2 > second && second >= t1, "{t1} {second} {t2}");
    // The grant that ended can neither renew nor release the new one.
    let e = rt
        .block_on(b.renew(&renew(&job, "w1", Some(t1))))
        .unwrap_err();
    assert_eq!(e.exit_code(), ExitCode::NotOwner, "{e}");
    let e = rt
        .block_on(b.release(&release(&job, "w1", Some(t1))))
        .unwrap_err();
    assert_eq!(e.exit_code(), ExitCode::NotOwner, "{e}");
    // Nor can another worker.
    let e = rt
        .block_on(b.release(&release(&job, "w2", None)))
        .unwrap_err();
    assert_eq!(e.exit_code(), ExitCode::NotOwner, "{e}");
    assert_eq!(holder_of(&b, &job, &rt).unwrap().fencing_token, t2);
    rt.block_on(b.renew(&renew(&job, "w1", Some(t2)))).unwrap();
    let r = rt
        .block_on(b.release(&release(&job, "w1", Some(t2))))
        .unwrap();
    assert!(r.was_held);
    assert_eq!(holder_of(&b, &job, &rt), None);
    let third = granted(
        rt.block_on(b.try_acquire(&acquire(&job, "w3", ttl, Takeover::None)))
            .unwrap(),
    );
    assert!(third.holder.fencing_token > t2);
}

/// A holder killed outright (SIGKILL: no release) keeps its lock until its lease runs out, and
/// not longer: then another worker takes it with a larger token.
pub fn killed_holder(s: &Subject) {
    let job = s.lock("job");
    // Room for GitHub's slower claim before the sidecar's first renewal.
    let ttl = Duration::from_secs(3) + 2 * s.resolution();
    let ttl_arg = format!("{}s", ttl.as_secs());
    let claim = stdout_json(
        &s.cli("doomed", &["claim", &job, "--ttl", &ttl_arg, "--json"])
            .output()
            .unwrap(),
    );
    let t1 = claim["fencing_token"].as_u64().unwrap();
    let mut sidecar =
        Running::spawn(&mut s.cli("doomed", &["heartbeat", &job, "--interval", "1s"]));
    std::thread::sleep(Duration::from_millis(1500));
    assert!(sidecar.is_running());
    let killed = Instant::now();
    sidecar.signal("KILL");
    let _ = sidecar.exit_within(Duration::from_secs(5));
    let out = s
        .cli("next", &["claim", &job, "--strategy", "fail-fast"])
        .output()
        .unwrap();
    assert_eq!(
        code(&out),
        3,
        "still held right after the kill: {}",
        text(&out)
    );
    let taken = loop {
        let out = s
            .cli(
                "next",
                &[
                    "claim",
                    &job,
                    "--strategy",
                    "steal-stale",
                    "--ttl",
                    "30s",
                    "--json",
                ],
            )
            .output()
            .unwrap();
        if code(&out) == 0 {
            break stdout_json(&out);
        }
        assert_eq!(code(&out), 3, "{}", text(&out));
        assert!(
            killed.elapsed() < ttl + Duration::from_secs(5),
            "the lock never expired"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(taken["fencing_token"].as_u64().unwrap() > t1);
    let out = s
        .cli("doomed", &["heartbeat", &job, "--once"])
        .output()
        .unwrap();
    assert_eq!(code(&out), 4, "{}", text(&out));
}

/// The server restarts under a held lock: the lock, its token and the fencing counter survive,
/// and a client that was connected before carries on after reconnecting.
pub fn server_restart(s: &mut Subject) {
    let job_arg = s.lock("job");
    let rt = runtime();
    let b = s.backend(&rt);
    let job = s.id("job");
    let g = granted(
        rt.block_on(b.try_acquire(&acquire(
            &job,
            "w1",
            Duration::from_secs(60),
            Takeover::None,
        )))
        .unwrap(),
    );
    let t1 = g.holder.fencing_token;
    s.restart();
    let st = stdout_json(
        &s.cli("observer", &["status", &job_arg, "--json"])
            .output()
            .unwrap(),
    );
    assert_eq!(st["holder"]["worker_id"], "w1");
    assert_eq!(st["holder"]["fencing_token"], t1);
    // The connection from before the restart is gone; the client reconnects by itself.
    let h = rt.block_on(b.renew(&renew(&job, "w1", Some(t1)))).unwrap();
    assert_eq!(h.fencing_token, t1);
    let out = s
        .cli("w2", &["claim", &job_arg, "--strategy", "fail-fast"])
        .output()
        .unwrap();
    assert_eq!(code(&out), 3, "{}", text(&out));
    assert!(
        rt.block_on(b.release(&release(&job, "w1", Some(t1))))
            .unwrap()
            .was_held
    );
    let next = stdout_json(
        &s.cli("w2", &["claim", &job_arg, "--json"])
            .output()
            .unwrap(),
    );
    assert!(next["fencing_token"].as_u64().unwrap() > t1, "{next}");
}

/// The leader of a cluster is killed (`kill -9`) under a lock a guard keeps alive: the new leader
/// has the same holder with the same token, the guard's renewals get through it while nobody else
/// gets the lock, the old leader comes back on its data, and the next grant has a larger token.
pub fn leader_killed(s: &mut Subject) {
    let rt = runtime();
    let client = |worker: &str| {
        LockClient::new(s.backend(&rt), worker)
            .unwrap()
            .with_retry(RetryConfig::no_retry())
            .unwrap()
    };
    let (a, b) = (client("a"), client("b"));
    let job = s.lock("job");
    // Room for an election and the client's failover between nodes on a loaded machine.
    let ttl = Duration::from_secs(8);
    let (guard, lost) = rt.block_on(async {
        let mut guard = a.acquire(&job, ttl).await.unwrap();
        let lost = guard.keep_alive(Duration::from_secs(1)).unwrap();
        (guard, lost)
    });
    let t1 = guard.fencing_token();
    let c = s.coordinator.as_mut().unwrap();
    let old = c.leader();
    c.kill(old);
    assert_ne!(c.leader(), old, "a new leader");
    let st = stdout_json(
        &s.cli("observer", &["status", &job, "--json"])
            .output()
            .unwrap(),
    );
    assert_eq!(st["holder"]["worker_id"], "a", "{st}");
    assert_eq!(st["holder"]["fencing_token"], t1, "{st}");
    // A new leader starts every lease afresh at its first command (the last renewal moves on
    // once); a second move of the last renewal was the guard's, through the new leader.
    let first = st["holder"]["heartbeat_last"].as_str().unwrap();
    let mut seen = vec![chrono::DateTime::parse_from_rfc3339(first).unwrap()];
    let renewed = eventually(
        2 * ttl.as_secs(),
        "a renewal through the new leader",
        || {
            let h = rt.block_on(a.lock_info(&job)).ok()??;
            let last = h.heartbeat_last.fixed_offset();
            if !seen.contains(&last) {
                seen.push(last);
            }
            (seen.len() >= 3).then_some(h)
        },
    );
    assert_eq!(
        (renewed.worker_id.as_str(), renewed.fencing_token),
        ("a", t1)
    );
    assert!(!lost.is_lost(), "the guard lost its lock in the failover");
    assert!(rt.block_on(b.try_acquire(&job, ttl)).unwrap().is_none());
    let c = s.coordinator.as_mut().unwrap();
    c.start_again(old);
    rt.block_on(async {
        assert!(guard.release().await.unwrap());
        let next = b.try_acquire(&job, ttl).await.unwrap().expect("free");
        assert!(
            next.fencing_token() > t1,
            "{} after {t1}",
            next.fencing_token()
        );
        assert!(next.release().await.unwrap());
    });
}

/// The library API on the backend: a guard kept alive past its TTL, extended, told when it is
/// lost, released on drop (but never a newer holder's lock); `acquire_all` taking locks in order
/// and giving them back when one fails; one leader at a time.
pub fn guards(s: &Subject) {
    let rt = runtime();
    let client = |worker: &str| {
        LockClient::new(s.backend(&rt), worker)
            .unwrap()
            .with_retry(RetryConfig::no_retry())
            .unwrap()
    };
    let (a, b) = (client("a"), client("b"));
    let (job, build) = (s.lock("job"), s.lock("build"));
    // On GitHub a claim takes a settle pause and several requests, and renewals are judged in
    // whole seconds: on a loaded machine (a CI build next door) a lease of 6 s ran out between a
    // leader's claim and its first renewal. 10 s leaves room without slowing the other backends.
    let ttl = Duration::from_secs(3) + 7 * s.resolution();
    rt.block_on(async {
        let mut guard = a.acquire(&job, ttl).await.unwrap();
        let t1 = guard.fencing_token();
        let mut lost = guard.keep_alive(Duration::from_secs(1)).unwrap();
        tokio::time::sleep(ttl + Duration::from_millis(800)).await;
        assert!(!lost.is_lost());
        assert!(
            b.try_acquire(&job, ttl).await.unwrap().is_none(),
            "kept alive past its TTL"
        );
        assert!(b.is_locked(&job).await.unwrap());
        assert_eq!(b.lock_info(&job).await.unwrap().unwrap().worker_id, "a");
        a.extend(&mut guard, Duration::from_secs(6)).await.unwrap();
        let h = guard.holder();
        assert_eq!(
            h.expires_at - h.heartbeat_last,
            chrono::Duration::seconds(6)
        );
        assert!(guard.time_remaining() > Duration::from_secs(4));

        // Another worker forces the lock away: the keep-alive notices within a renewal.
        let stolen = granted(
            b.backend()
                .try_acquire(&acquire(&s.id("job"), "b", ttl * 10, Takeover::Any))
                .await
                .unwrap(),
        );
        assert!(stolen.holder.fencing_token > t1);
        let why = tokio::time::timeout(Duration::from_secs(10), lost.wait())
            .await
            .expect("the loss is noticed")
            .expect("lost, not released");
        assert!(lost.is_lost(), "{why}");
        // Dropping the lost guard releases nothing: its token is not the lock's any more.
        drop(guard);
        tokio::time::sleep(Duration::from_millis(500)).await;
        let holder = b.lock_info(&job).await.unwrap().unwrap();
        assert_eq!(
            (holder.worker_id.as_str(), holder.fencing_token),
            ("b", stolen.holder.fencing_token)
        );

        // Four clients acquire one lock at once, waiting as the default RetryConfig says: each
        // gets it in turn, never two at a time.
        let inside = Arc::new(AtomicUsize::new(0));
        let contenders: Vec<_> = (0..4)
            .map(|i| {
                let locks = LockClient::new(s.backend(&rt), format!("waiter-{i}")).unwrap();
                let (inside, build) = (inside.clone(), build.clone());
                tokio::spawn(async move {
                    let guard = locks.acquire(&build, ttl).await.unwrap();
                    assert_eq!(inside.fetch_add(1, Ordering::SeqCst), 0, "two holders");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    inside.fetch_sub(1, Ordering::SeqCst);
                    let token = guard.fencing_token();
                    assert!(guard.release().await.unwrap());
                    token
                })
            })
            .collect();
        let mut tokens = Vec::new();
        for c in contenders {
            tokens.push(c.await.unwrap());
        }
        tokens.sort_unstable();
        tokens.dedup();
        assert_eq!(tokens.len(), 4, "one grant each: {tokens:?}");

        // A dropped guard releases its lock in the background.
        drop(a.acquire(&build, ttl).await.unwrap());
        let started = Instant::now();
        while b.is_locked(&build).await.unwrap() {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "the drop never released"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }

        // acquire_all: in a global order, and all or nothing. "job" is held by b: a gets
        // nothing, and gives back what it took before reaching it.
        let (one, two) = (s.lock("cycle-a"), s.lock("cycle-b"));
        let e = acquire_all(&a, &[&two, &job, &one, &two], ttl)
            .await
            .unwrap_err();
        assert_eq!(e.exit_code(), ExitCode::Conflict, "{e}");
        for r in [&one, &two] {
            assert!(!b.is_locked(r).await.unwrap(), "{r} was given back");
        }
        let all = acquire_all(&a, &[&two, &one, &two], ttl).await.unwrap();
        let mut names: Vec<&str> = vec![&one, &two];
        names.sort_unstable();
        let taken: Vec<String> = all.iter().map(|g| s.lock_of(g.resource())).collect();
        assert_eq!(taken, names);
        for g in all {
            assert!(g.release().await.unwrap());
        }

        // One leader at a time; stepping down hands over with a larger token.
        let the_one = s.lock("the-one");
        let ea = LeaderElection::new(client("a"), the_one.clone(), ttl);
        let eb = LeaderElection::new(client("b"), the_one.clone(), ttl);
        let leader = ea.try_lead().await.unwrap().expect("nobody led");
        assert!(eb.try_lead().await.unwrap().is_none());
        assert_eq!(eb.leader().await.unwrap().unwrap().worker_id, "a");
        let term = leader.fencing_token();
        assert!(leader.step_down().await.unwrap());
        let next = eb
            .try_lead()
            .await
            .unwrap()
            .expect("free after stepping down");
        assert!(
            next.fencing_token() > term,
            "{} after {term}",
            next.fencing_token()
        );
        assert!(!next.is_lost());
        assert!(next.step_down().await.unwrap());
    });
    // A service has no signal handler to run undo actions: its grants leave none behind (this
    // process never arms them; the binary does).
    assert_eq!(sentinel::interrupt::registered(), 0);
}

/// SIGINT or SIGTERM at any moment of a claim: afterwards the lock is free, or the claimer
/// reported its grant (exit 0). The claim withdraws a grant it could not report.
pub fn interrupted_claims(s: &Subject) {
    let _burst = burst();
    let job = s.lock("job");
    let mut interrupted = 0;
    for round in 0..40u64 {
        let child = s
            .cli("w", &["claim", &job])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // A claim on a loopback server takes a few milliseconds: signals land all over it.
        std::thread::sleep(Duration::from_micros((round % 20) * 300));
        let signal = if round % 2 == 0 { "-INT" } else { "-TERM" };
        let _ = Command::new("kill")
            .args([signal, &child.id().to_string()])
            .status();
        let out = child.wait_with_output().unwrap();
        let st = stdout_json(
            &s.cli("observer", &["status", &job, "--json"])
                .output()
                .unwrap(),
        );
        match out.status.code().unwrap_or(128) {
            0 => {
                assert!(text(&out).contains("Claimed"), "{}", text(&out));
                let out = s.cli("w", &["release", &job]).output().unwrap();
                assert_eq!(code(&out), 0, "{}", text(&out));
            }
            // Killed before the handlers were installed (128), or interrupted.
            128 | 130 | 143 => {
                interrupted += 1;
                assert_eq!(st["held"], false, "round {round}: {}\n{st}", text(&out));
            }
            other => panic!("round {round}: exit {other}: {}", text(&out)),
        }
    }
    assert!(
        interrupted > 0,
        "no claim was interrupted: the test proves nothing"
    );
}

/// `run` holds the lock exactly as long as its command, renewing it past its TTL, and exits with
/// the command's code; the counters of this host name the backend.
pub fn run_command(s: &Subject) {
    let job = s.lock("job");
    // A renewal has the lease less the safety margin (1 s) and the interval (1 s) to get
    // through: with 3 s, one renewal stalled a second on a loaded machine lost the lock (local,
    // Redis and the coordinator at once). The command outlasts the lease.
    let ttl = format!("{}s", 4 + 2 * s.resolution().as_secs());
    let script = "echo token=$SENTINEL_FENCING_TOKEN; sleep 5; exit 7";
    let out = s
        .cli(
            "runner",
            &[
                "run",
                &job,
                "--ttl",
                &ttl,
                "--interval",
                "1s",
                "--",
                "sh",
                "-c",
                script,
            ],
        )
        .output()
        .unwrap();
    assert_eq!(code(&out), 7, "{}", text(&out));
    assert!(text(&out).contains("token="), "{}", text(&out));
    let st = stdout_json(
        &s.cli("observer", &["status", &job, "--json"])
            .output()
            .unwrap(),
    );
    assert_eq!(st["held"], false, "released when the command ended: {st}");
    let m = stdout_json(&s.cli("observer", &["metrics", "--json"]).output().unwrap());
    assert_eq!(m["by_backend"][s.name()]["total_acquisitions"], 1, "{m}");
    assert_eq!(m["by_backend"][s.name()]["total_releases"], 1, "{m}");
}

macro_rules! conformance {
    ($module:ident, $kind:expr) => {
        mod $module {
            use super::*;

            #[test]
            fn sixteen_tasks_exclude_each_other() {
                if let Some(s) = Subject::new($kind) {
                    sixteen_tasks(&s);
                }
            }

            #[test]
            fn sixteen_processes_exclude_each_other() {
                if let Some(s) = Subject::new($kind) {
                    sixteen_processes(&s);
                }
            }

            #[test]
            fn leases_renew_expire_and_fence() {
                if let Some(s) = Subject::new($kind) {
                    leases(&s);
                }
            }

            #[test]
            fn guards_keep_alive_extend_release_and_elect() {
                if let Some(s) = Subject::new($kind) {
                    guards(&s);
                }
            }

            #[test]
            fn run_holds_the_lock_while_its_command_runs() {
                if let Some(s) = Subject::new($kind) {
                    run_command(&s);
                }
            }

            #[test]
            fn a_killed_holders_lock_expires() {
                if let Some(s) = Subject::new($kind) {
                    killed_holder(&s);
                }
            }

            #[test]
            fn semaphores_hold_at_most_their_limit_or_are_refused() {
                if let Some(s) = Subject::new($kind) {
                    primitives::semaphores(&s);
                }
            }

            #[test]
            fn shared_holds_keep_a_writer_out_without_starving_it_or_are_refused() {
                if let Some(s) = Subject::new($kind) {
                    primitives::shared_holds(&s);
                }
            }

            #[test]
            fn elections_follow_one_leader_or_are_refused() {
                if let Some(s) = Subject::new($kind) {
                    primitives::elections(&s);
                }
            }

            #[test]
            fn barriers_open_at_their_count_or_are_refused() {
                if let Some(s) = Subject::new($kind) {
                    barriers::barriers(&s);
                }
            }

            #[test]
            fn watch_follows_the_coordinator_and_the_local_backend_only() {
                if let Some(s) = Subject::new($kind) {
                    barriers::watch_follows_or_is_refused(&s);
                }
            }
        }
    };
}

conformance!(local, Kind::Local);
conformance!(github, Kind::Github);
conformance!(redis, Kind::Redis);
conformance!(postgres, Kind::Postgres);
conformance!(etcd, Kind::Etcd);
conformance!(server, Kind::Server);

#[test]
fn redis_restarts_under_a_held_lock() {
    if let Some(mut s) = Subject::persistent(Kind::Redis) {
        server_restart(&mut s);
    }
}

#[test]
fn postgres_restarts_under_a_held_lock() {
    if let Some(mut s) = Subject::persistent(Kind::Postgres) {
        server_restart(&mut s);
    }
}

#[test]
fn etcd_restarts_under_a_held_lock() {
    if let Some(mut s) = Subject::persistent(Kind::Etcd) {
        server_restart(&mut s);
    }
}

#[test]
fn redis_interrupted_claims_hold_nothing_or_report_it() {
    if let Some(s) = Subject::new(Kind::Redis) {
        interrupted_claims(&s);
    }
}

#[test]
fn postgres_interrupted_claims_hold_nothing_or_report_it() {
    if let Some(s) = Subject::new(Kind::Postgres) {
        interrupted_claims(&s);
    }
}

#[test]
fn etcd_interrupted_claims_hold_nothing_or_report_it() {
    if let Some(s) = Subject::new(Kind::Etcd) {
        interrupted_claims(&s);
    }
}

/// A three-node cluster, every client given all three nodes: mutual exclusion, and a leader
/// killed under a held lock.
mod cluster {
    use super::*;

    #[test]
    fn sixteen_tasks_exclude_each_other() {
        if let Some(s) = Subject::new(Kind::Cluster) {
            sixteen_tasks(&s);
        }
    }

    #[test]
    fn sixteen_processes_exclude_each_other() {
        if let Some(s) = Subject::new(Kind::Cluster) {
            sixteen_processes(&s);
        }
    }

    #[test]
    fn a_killed_leaders_lock_stays_held_and_renewed() {
        if let Some(mut s) = Subject::new(Kind::Cluster) {
            leader_killed(&mut s);
        }
    }
}

#[test]
fn server_restarts_under_a_held_lock() {
    if let Some(mut s) = Subject::new(Kind::Server) {
        server_restart(&mut s);
    }
}

#[test]
fn server_interrupted_claims_hold_nothing_or_report_it() {
    if let Some(s) = Subject::new(Kind::Server) {
        interrupted_claims(&s);
    }
}

/// The reservation rule of the backends whose waiting claims poll: one rule for the three.
mod reservations {
    use super::*;

    #[test]
    fn local() {
        if let Some(s) = Subject::new(Kind::Local) {
            primitives::reservations(&s);
        }
    }

    #[test]
    fn redis() {
        if let Some(s) = Subject::new(Kind::Redis) {
            primitives::reservations(&s);
        }
    }

    #[test]
    fn postgres() {
        if let Some(s) = Subject::new(Kind::Postgres) {
            primitives::reservations(&s);
        }
    }
}

#[test]
fn redis_interrupted_claims_of_holds_hold_nothing_or_report_it() {
    if let Some(s) = Subject::new(Kind::Redis) {
        primitives::interrupted_hold_claims(&s);
    }
}

#[test]
fn postgres_interrupted_claims_of_holds_hold_nothing_or_report_it() {
    if let Some(s) = Subject::new(Kind::Postgres) {
        primitives::interrupted_hold_claims(&s);
    }
}
