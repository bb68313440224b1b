//! A three-node `sentinel serve` cluster as real processes on loopback, under faults while
//! clients hammer a few names: a follower frozen with SIGSTOP and let go, then the leader frozen
//! and let go (it must step down and catch up), then the leader killed with `kill -9` and
//! restarted (it must catch up). The time until a new leader serves a write is measured.
//!
//! Afterwards a checker proves, from what the clients saw, that no two clients ever held one name
//! at once (the interval from the instant a grant's answer came back to the instant its release
//! was sent never overlaps another grant's of the same name), that the fencing tokens of a name
//! increase in grant order, and that no acknowledged grant was lost (every release found the
//! grant still there). Tokens are opaque: only their order per name is checked.
//!
//! The cluster, the clients and the checker are shared with `chaos_faults`, which runs the same
//! load through network, clock, peer-RPC and disk faults.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rustix::process::Signal;
use serde_json::{Value, json};

use crate::proxy::{Proxy, sentinel_sender};
use crate::serve::{NO_ANSWER, Node, TOKEN, eventually, exchange_within, free_addr};

/// The names the clients fight over.
const NAMES: [&str; 3] = ["chaos-a", "chaos-b", "chaos-c"];
const CLIENTS: usize = 6;
/// So long that no lease can end during the test: a lock is free again only by its release.
pub(crate) const TTL_MS: u64 = 600_000;
/// The server-side wait of the odd-numbered clients (the others fail fast on a held lock).
const WAIT_MS: u64 = 1_000;
/// How long a client waits for one answer beyond the server-side wait; then it asks another
/// node (a stopped node accepts connections and never answers).
const CALL_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a client goes on retrying one request before it reports it as unresolved.
const REQUEST_BUDGET: Duration = Duration::from_secs(45);
/// Fewest grants each phase must see, so that a cluster that stalled fails the test.
const MIN_GRANTS_PER_PHASE: usize = 5;
/// How long each fault phase goes on after the cluster healed: clients whose requests met the
/// fault are back (their deadlines have passed), so a phase without grants means a stall.
pub(crate) const RECOVERY: Duration = Duration::from_secs(1);
/// The header a node puts on a request it forwards; on `GET /cluster/status` it makes a follower
/// answer with its own view instead of the leader's.
const FORWARDED: &str = "x-sentinel-forwarded";

/// How the release of a grant was answered.
#[derive(Debug, Clone, PartialEq)]
enum Released {
    /// 200 `released`: the grant was still there.
    Yes,
    /// 409 `not_holder`: the grant was gone (the answer's body).
    NotHolder(String),
    /// Any other answer (status and body).
    Other(String),
    /// No node answered within the client's budget.
    Unanswered,
}

/// One acknowledged grant as its client saw it; instants are since the test's start.
#[derive(Debug, Clone)]
struct Grant {
    name: String,
    client: usize,
    request_id: String,
    token: u64,
    /// When the grant's answer had come back.
    granted: Duration,
    /// Just before the release was first sent.
    release_sent: Duration,
    released: Released,
}

/// Every violation in a history of grants: two grants of one name held at once, tokens of a
/// name not increasing in grant order, a grant whose release did not find it.
fn check_history(grants: &[Grant]) -> Vec<String> {
    let mut violations = Vec::new();
    for g in grants {
        if g.released != Released::Yes {
            violations.push(format!(
                "lost grant: {:?} token {} ({} of client {}), its release got {:?}",
                g.name, g.token, g.request_id, g.client, g.released
            ));
        }
        if g.release_sent < g.granted {
            violations.push(format!(
                "{} of client {} was released before it was granted",
                g.request_id, g.client
            ));
        }
    }
    let mut names: Vec<&str> = grants.iter().map(|g| g.name.as_str()).collect();
    names.sort_unstable();
    names.dedup();
    for name in names {
        let mut mine: Vec<&Grant> = grants.iter().filter(|g| g.name == name).collect();
        mine.sort_by_key(|g| g.granted);
        for pair in mine.windows(2) {
            if pair[1].token <= pair[0].token {
                violations.push(format!(
                    "{name:?}: token {} ({}, granted at {:?}) follows token {} ({}, granted at {:?})",
                    pair[1].token,
                    pair[1].request_id,
                    pair[1].granted,
                    pair[0].token,
                    pair[0].request_id,
                    pair[0].granted
                ));
            }
        }
        // Sweep in grant order, keeping the grant released last so far.
        let mut latest: Option<&Grant> = None;
        for g in mine {
            if let Some(l) = latest
                && g.granted < l.release_sent
            {
                violations.push(format!(
                    "{name:?} held twice: {} of client {} (token {}) granted at {:?}, while {} of \
                     client {} (token {}) held it from {:?} until its release at {:?}",
                    g.request_id,
                    g.client,
                    g.token,
                    g.granted,
                    l.request_id,
                    l.client,
                    l.token,
                    l.granted,
                    l.release_sent
                ));
            }
            if latest.is_none_or(|l| g.release_sent > l.release_sent) {
                latest = Some(g);
            }
        }
    }
    violations
}

/// Something a client met on the way, other than an answer it wanted.
#[derive(Debug, Clone)]
struct Note {
    at: Duration,
    client: usize,
    node: usize,
    kind: NoteKind,
}

#[derive(Debug, Clone, PartialEq)]
enum NoteKind {
    /// No answer within the client's deadline.
    Timeout(String),
    /// No connection.
    Refused,
    /// 503 with this code: retried elsewhere.
    Unavailable(String),
    /// An answer the protocol does not allow here (status and body): a bug.
    Unexpected(String),
    /// A request no node settled within the budget.
    Unresolved(String),
}

/// What the clients share with the test.
struct Shared {
    addrs: Vec<String>,
    start: Instant,
    /// Start no new acquire.
    stop: AtomicBool,
    /// Give up at once, even in the middle of a request (the test failed).
    abort: AtomicBool,
    grants: Mutex<Vec<Grant>>,
    notes: Mutex<Vec<Note>>,
}

impl Shared {
    fn note(&self, client: usize, node: usize, kind: NoteKind) {
        self.notes.lock().unwrap().push(Note {
            at: self.start.elapsed(),
            client,
            node,
            kind,
        });
    }
}

/// Stops the clients when the test ends, also by a panic.
struct AbortOnDrop(Arc<Shared>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.stop.store(true, Ordering::SeqCst);
        self.0.abort.store(true, Ordering::SeqCst);
    }
}

fn bearer() -> String {
    format!("Bearer {TOKEN}")
}

/// One exchange with a node within `timeout`: the status and the JSON answer.
pub(crate) fn call(
    addr: &str,
    method: &str,
    path: &str,
    body: Option<&Value>,
    timeout: Duration,
) -> Result<(u16, Value), String> {
    let auth = bearer();
    let (status, text) = exchange_within(
        addr,
        method,
        path,
        body,
        &[("Authorization", &auth)],
        timeout,
    )?;
    let v = serde_json::from_str(&text).map_err(|e| format!("{e}: {text:?}"))?;
    Ok((status, v))
}

/// Sends one write (the same body, so the same request id) to the nodes in turn, starting at
/// `*node`, until one answers with anything but a 503. None if the budget ran out or the test
/// was aborted.
fn settle(
    shared: &Shared,
    client: usize,
    node: &mut usize,
    path: &str,
    body: &Value,
    timeout: Duration,
) -> Option<(u16, Value)> {
    let began = Instant::now();
    let n = shared.addrs.len();
    loop {
        if shared.abort.load(Ordering::SeqCst) {
            return None;
        }
        if began.elapsed() > REQUEST_BUDGET {
            shared.note(
                client,
                *node % n,
                NoteKind::Unresolved(format!("POST {path} {body}")),
            );
            return None;
        }
        let i = *node % n;
        let kind = match call(&shared.addrs[i], "POST", path, Some(body), timeout) {
            Ok((503, v)) => NoteKind::Unavailable(v["code"].as_str().unwrap_or("?").to_string()),
            Ok(answer) => return Some(answer),
            Err(e) if e.starts_with(NO_ANSWER) => NoteKind::Timeout(format!("POST {path}")),
            Err(_) => NoteKind::Refused,
        };
        shared.note(client, i, kind);
        *node += 1;
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A client: acquires a random name, holds it briefly, releases it; again until told to stop.
/// Every attempt has its own request id, reused by each retry of it.
fn client(shared: Arc<Shared>, c: usize) {
    let mut rng = fastrand::Rng::with_seed(0x5e71_1e1a + c as u64);
    let holder = format!("client-{c}");
    let wait_ms = if c % 2 == 1 { WAIT_MS } else { 0 };
    let mut node = rng.usize(..shared.addrs.len());
    for attempt in 0.. {
        if shared.stop.load(Ordering::SeqCst) {
            return;
        }
        let name = NAMES[rng.usize(..NAMES.len())];
        let request_id = format!("c{c}-{attempt}");
        let body = json!({
            "holder": holder, "ttl_ms": TTL_MS, "wait_ms": wait_ms, "request_id": request_id,
        });
        let timeout = CALL_TIMEOUT + Duration::from_millis(wait_ms);
        let path = format!("/locks/{name}/acquire");
        let Some((status, v)) = settle(&shared, c, &mut node, &path, &body, timeout) else {
            // Unresolved: the name may stay held by this request, and this client stops.
            return;
        };
        let granted = shared.start.elapsed();
        match (status, v["code"].as_str()) {
            (200, _) if v["acquired"] == true && v["adopted"] == false => {
                let Some(token) = v["holder"]["fencing_token"].as_u64() else {
                    let i = node % shared.addrs.len();
                    shared.note(c, i, NoteKind::Unexpected(format!("grant: {v}")));
                    continue;
                };
                std::thread::sleep(Duration::from_millis(rng.u64(5..25)));
                let release_sent = shared.start.elapsed();
                let body = json!({
                    "holder": holder, "token": token, "request_id": format!("{request_id}-release"),
                });
                let path = format!("/locks/{name}/release");
                let released = match settle(&shared, c, &mut node, &path, &body, CALL_TIMEOUT) {
                    Some((200, v)) if v["released"] == true => Released::Yes,
                    Some((409, v)) if v["code"] == "not_holder" => {
                        Released::NotHolder(v.to_string())
                    }
                    Some((s, v)) => Released::Other(format!("{s} {v}")),
                    None => Released::Unanswered,
                };
                let unanswered = released == Released::Unanswered;
                shared.grants.lock().unwrap().push(Grant {
                    name: name.to_string(),
                    client: c,
                    request_id,
                    token,
                    granted,
                    release_sent,
                    released,
                });
                if unanswered {
                    return;
                }
            }
            (409, Some("lock_held" | "wait_timed_out")) => {
                std::thread::sleep(Duration::from_millis(rng.u64(5..30)));
            }
            // A node withdraws an acquire whose connection closed before its answer (a timed-out
            // try of this very request): it holds nothing, and the next attempt has a new id.
            (409, Some("withdrawn")) => {}
            _ => {
                shared.note(
                    c,
                    node % shared.addrs.len(),
                    NoteKind::Unexpected(format!("{request_id}: {status} {v}")),
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

/// How a [`Cluster`] is started.
#[derive(Default)]
pub(crate) struct Setup {
    /// Where its node logs are kept, under [`kept_logs`].
    pub(crate) name: &'static str,
    /// Whether the nodes reach each other through a [`Proxy`] per node (see [`Cluster::proxies`]).
    pub(crate) proxies: bool,
    /// More environment for node `i + 1`'s process (libfaketime's, say).
    pub(crate) env: Vec<Vec<(String, String)>>,
}

/// Three `sentinel serve` processes on loopback, all killed when dropped.
pub(crate) struct Cluster {
    pub(crate) nodes: Vec<Node>,
    /// Where clients reach the nodes: their listeners, never through a proxy.
    pub(crate) addrs: Vec<String>,
    /// With [`Setup::proxies`], the way to node `i + 1` for its peers: every node's `--peer`
    /// list names these addresses, so they are the members' addresses in the log and every
    /// Raft RPC and forwarded request to node `i + 1` passes here, sorted into lanes by the
    /// sending node's id ([`sentinel_sender`]).
    pub(crate) proxies: Vec<Proxy>,
    /// Every node's `--peer` list.
    pub(crate) peers: Vec<String>,
    name: &'static str,
    // After `nodes` and `proxies`, so that the processes are gone before their directories.
    dirs: Vec<tempfile::TempDir>,
}

impl Cluster {
    pub(crate) fn start() -> Cluster {
        Cluster::start_with(Setup {
            name: "cluster-chaos",
            ..Setup::default()
        })
    }

    pub(crate) fn start_with(setup: Setup) -> Cluster {
        let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
        let addrs: Vec<String> = (0..3).map(|_| free_addr()).collect();
        let proxies: Vec<Proxy> = if setup.proxies {
            addrs
                .iter()
                .map(|a| Proxy::start_sorted(a, sentinel_sender))
                .collect()
        } else {
            Vec::new()
        };
        let peers: Vec<String> = (0..3)
            .map(|i| {
                let a = proxies.get(i).map_or(addrs[i].as_str(), |p| p.addr());
                format!("{}={a}", i + 1)
            })
            .collect();
        let nodes = (0..3)
            .map(|i| {
                let mut env = vec![("RUST_LOG".into(), "sentinel=info,openraft=info".into())];
                env.extend(setup.env.get(i).cloned().unwrap_or_default());
                let id = i as u64 + 1;
                Node::start_env(id, &addrs[i], &peers, dirs[i].path(), Some(TOKEN), env)
            })
            .collect();
        Cluster {
            nodes,
            addrs,
            proxies,
            peers,
            name: setup.name,
            dirs,
        }
    }

    /// Node `i`'s `--data-dir`.
    pub(crate) fn data(&self, i: usize) -> &Path {
        self.dirs[i].path()
    }

    /// A node's own view (`GET /cluster/status` without forwarding to the leader), if it answers
    /// within 2 s.
    pub(crate) fn own_view(&self, i: usize) -> Option<Value> {
        let auth = bearer();
        let (status, text) = exchange_within(
            &self.addrs[i],
            "GET",
            "/cluster/status",
            None,
            &[("Authorization", &auth), (FORWARDED, "test")],
            Duration::from_secs(2),
        )
        .ok()?;
        let v: Value = serde_json::from_str(&text).ok()?;
        // The node's own view, not the leader's relayed: else a catch-up check would pass as
        // soon as the leader had applied.
        assert_eq!(v["id"], i + 1, "GET /cluster/status was forwarded: {v}");
        (status == 200).then_some(v)
    }

    /// The index of the leader every node of `among` names, once they agree on one.
    pub(crate) fn agreed_leader(&self, among: &[usize], secs: u64) -> usize {
        eventually(secs, "the nodes agreeing on a leader", || {
            let seen: Vec<Option<u64>> = among
                .iter()
                .map(|&i| self.own_view(i).and_then(|v| v["leader"].as_u64()))
                .collect();
            let first = seen[0]?;
            seen.iter()
                .all(|l| *l == Some(first))
                .then_some(first as usize - 1)
        })
    }

    /// Waits until node `i` follows the leader the others name and has applied everything the
    /// leader had applied when the wait began; the leader's index.
    pub(crate) fn caught_up(&self, i: usize, secs: u64) -> usize {
        let leader = self.agreed_leader(&[0, 1, 2], secs);
        let target = eventually(secs, "the leader's applied index", || {
            self.own_view(leader)?["applied_index"].as_u64()
        });
        eventually(secs, &format!("node {} catching up", i + 1), || {
            let applied = self.own_view(i)?["applied_index"].as_u64()?;
            (applied >= target).then_some(())
        });
        leader
    }

    /// Waits until a node of `among` says it leads, and has it serve a write (an acquire of a
    /// lock of its own) without forwarding; the time from `since` to that write's answer, and
    /// the node's index.
    pub(crate) fn probe_write(
        &self,
        among: &[usize],
        name: &str,
        since: Instant,
    ) -> (Duration, usize) {
        let body = json!({"holder": "probe", "ttl_ms": TTL_MS, "request_id": name});
        let path = format!("/locks/{name}/acquire");
        let deadline = since + Duration::from_secs(30);
        while Instant::now() < deadline {
            let leader = among
                .iter()
                .copied()
                .find(|&i| self.own_view(i).is_some_and(|v| v["state"] == "leader"));
            if let Some(i) = leader {
                // A retry (after a 503) carries the same request id: one grant at most.
                let timeout = Duration::from_secs(5);
                if let Ok((200, _)) = call(&self.addrs[i], "POST", &path, Some(&body), timeout) {
                    return (since.elapsed(), i);
                }
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!(
            "no write ({name}) was served within 30 s by a leader among nodes {among:?}\n{}",
            self.logs()
        );
    }

    /// The last lines of every node's log (openraft's elections and votes included), to explain
    /// a failure; the whole logs are kept in [`kept_logs`].
    pub(crate) fn logs(&self) -> String {
        self.nodes
            .iter()
            .map(|n| {
                let log = n.log();
                let lines: Vec<&str> = log.lines().collect();
                let tail = lines[lines.len().saturating_sub(30)..].join("\n");
                format!("--- node {} (last 30 lines) ---\n{tail}\n", n.id)
            })
            .collect::<String>()
            + &format!("whole logs: {}", kept_logs(self.name).display())
    }
}

/// Where the node logs of the last run of test `name` are kept (the data directories are
/// removed).
fn kept_logs(name: &str) -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join(name)
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            node.kill();
        }
        let dir = kept_logs(self.name);
        let _ = std::fs::create_dir_all(&dir);
        for node in &self.nodes {
            let _ = std::fs::write(dir.join(format!("node-{}.log", node.id)), node.log());
        }
    }
}

/// The phases of the test: a label and when it began, since the test's start.
pub(crate) struct Phases {
    start: Instant,
    list: Vec<(String, Duration)>,
    /// Phases whose fault is expected to stop every write: not counted as a stall.
    unavailable: Vec<String>,
}

impl Phases {
    pub(crate) fn begin(&mut self, label: impl Into<String>) {
        let label = label.into();
        // The wall clock too, to find the moment in the nodes' logs.
        eprintln!(
            "[{:>6.2?}] {} phase: {label}",
            self.start.elapsed(),
            chrono::Utc::now().format("%H:%M:%S%.3fZ")
        );
        self.list.push((label, self.start.elapsed()));
    }

    /// [`Phases::begin`] of a phase whose fault is expected to stop every write (the history
    /// must still be safe).
    pub(crate) fn begin_unavailable(&mut self, label: impl Into<String>) {
        let label = label.into();
        self.unavailable.push(label.clone());
        self.begin(label);
    }

    /// The phases with their ends (the next one's beginning, or `end`).
    fn spans(&self, end: Duration) -> Vec<(&str, Duration, Duration)> {
        self.list
            .iter()
            .enumerate()
            .map(|(k, (label, from))| {
                let to = self.list.get(k + 1).map_or(end, |next| next.1);
                (label.as_str(), *from, to)
            })
            .collect()
    }
}

/// The clients hammering the names, and what the test records of its phases.
pub(crate) struct Load {
    shared: Arc<Shared>,
    clients: Vec<JoinHandle<()>>,
    pub(crate) phases: Phases,
    /// Lines for the summary: what each fault did, how long recovery took.
    pub(crate) report: Vec<String>,
    _abort: AbortOnDrop,
}

impl Load {
    /// Starts the clients against the nodes of `cluster`; instants count from `started`.
    pub(crate) fn start(cluster: &Cluster, started: Instant) -> Load {
        let shared = Arc::new(Shared {
            addrs: cluster.addrs.clone(),
            start: started,
            stop: AtomicBool::new(false),
            abort: AtomicBool::new(false),
            grants: Mutex::new(Vec::new()),
            notes: Mutex::new(Vec::new()),
        });
        let clients = (0..CLIENTS)
            .map(|c| {
                let shared = shared.clone();
                std::thread::spawn(move || client(shared, c))
            })
            .collect();
        Load {
            _abort: AbortOnDrop(shared.clone()),
            shared,
            clients,
            phases: Phases {
                start: started,
                list: Vec::new(),
                unavailable: Vec::new(),
            },
            report: Vec::new(),
        }
    }

    /// A last phase without faults, then stops the clients and fails the test if the history
    /// breaks a guarantee (two holders, tokens out of order, a lost grant), if a client met an
    /// answer the protocol does not allow or a request no node settled, or if a phase had too
    /// few grants (a stall); prints what each phase saw.
    pub(crate) fn finish(mut self, cluster: &Cluster) {
        let started = self.shared.start;
        let all = [0, 1, 2];
        let shared = self.shared.clone();
        let phases = &mut self.phases;
        let report = &mut self.report;
        let clients = std::mem::take(&mut self.clients);
        phases.begin("healed");
        std::thread::sleep(Duration::from_secs(2));
        shared.stop.store(true, Ordering::SeqCst);
        for c in clients {
            c.join().expect("a client panicked");
        }
        let end = started.elapsed();

        // Every node applied everything; every name is free again.
        let leader = cluster.agreed_leader(&all, 20);
        for i in all {
            cluster.caught_up(i, 20);
        }
        for name in NAMES {
            let (s, v) = call(
                &cluster.addrs[leader],
                "GET",
                &format!("/locks/{name}/status"),
                None,
                Duration::from_secs(10),
            )
            .unwrap();
            assert_eq!((s, &v["held"]), (200, &json!(false)), "{name}: {v}");
        }

        let grants = shared.grants.lock().unwrap().clone();
        let notes = shared.notes.lock().unwrap().clone();
        eprintln!(
            "cluster chaos: {} grants of {} names to {CLIENTS} clients in {end:.1?}",
            grants.len(),
            NAMES.len()
        );
        let mut starved = Vec::new();
        for (label, from, to) in phases.spans(end) {
            let mut times: Vec<Duration> = grants
                .iter()
                .map(|g| g.granted)
                .filter(|t| (from..to).contains(t))
                .collect();
            times.sort();
            let gap = std::iter::once(from)
                .chain(times.iter().copied())
                .chain(std::iter::once(to))
                .collect::<Vec<_>>()
                .windows(2)
                .map(|w| w[1] - w[0])
                .max()
                .unwrap_or_default();
            let in_phase: Vec<&Note> = notes
                .iter()
                .filter(|n| (from..to).contains(&n.at))
                .collect();
            let count = |node: usize, f: fn(&NoteKind) -> bool| {
                in_phase
                    .iter()
                    .filter(|n| n.node == node && f(&n.kind))
                    .count()
            };
            let per_node: Vec<String> = all
                .iter()
                .map(|&i| {
                    format!(
                        "node {}: {} timeouts, {} refused, {} 503",
                        i + 1,
                        count(i, |k| matches!(k, NoteKind::Timeout(_))),
                        count(i, |k| *k == NoteKind::Refused),
                        count(i, |k| matches!(k, NoteKind::Unavailable(_))),
                    )
                })
                .collect();
            eprintln!(
                "  {label} [{from:.1?}..{to:.1?}]: {} grants, longest without a grant {gap:.1?}; {}",
                times.len(),
                per_node.join("; ")
            );
            for n in in_phase
                .iter()
                .filter(|n| matches!(n.kind, NoteKind::Timeout(_)))
                .take(8)
            {
                eprintln!(
                    "    [{:.2?}] client {} got no answer from node {}: {:?}",
                    n.at,
                    n.client,
                    n.node + 1,
                    n.kind
                );
            }
            if times.len() < MIN_GRANTS_PER_PHASE && !phases.unavailable.iter().any(|u| u == label)
            {
                starved.push(format!("{label}: {} grants", times.len()));
            }
        }
        let term = cluster.own_view(leader).map(|v| v["term"].clone());
        report.push(format!(
            "final term {} (node {} leads); node logs kept in {}",
            term.unwrap_or_default(),
            leader + 1,
            kept_logs(cluster.name).display()
        ));
        for line in report.iter() {
            eprintln!("  {line}");
        }

        let violations = check_history(&grants);
        assert!(
            violations.is_empty(),
            "{} violations:\n{}\n{}",
            violations.len(),
            violations.join("\n"),
            cluster.logs()
        );
        let bugs: Vec<&Note> = notes
            .iter()
            .filter(|n| matches!(n.kind, NoteKind::Unexpected(_) | NoteKind::Unresolved(_)))
            .collect();
        assert!(bugs.is_empty(), "{bugs:#?}\n{}", cluster.logs());
        assert!(
            starved.is_empty(),
            "too few grants (at least {MIN_GRANTS_PER_PHASE} per phase): {starved:?}\n{}",
            cluster.logs()
        );
    }
}

#[test]
fn three_nodes_keep_locks_exclusive_under_load_through_sigstop_and_kill_9() {
    let _one_cluster = crate::serve::one_cluster_at_a_time();
    let started = Instant::now();
    let mut cluster = Cluster::start();
    let all = [0, 1, 2];
    cluster.agreed_leader(&all, 30);
    let mut load = Load::start(&cluster, started);
    let (phases, report) = (&mut load.phases, &mut load.report);
    let others = |i: usize| -> Vec<usize> { all.iter().copied().filter(|&j| j != i).collect() };

    phases.begin("steady");
    std::thread::sleep(Duration::from_secs(2));

    // A follower frozen for 2 s: the leader and the other follower go on.
    let leader = cluster.agreed_leader(&all, 20);
    let f = (leader + 1) % 3;
    phases.begin(format!("follower (node {}) stopped", f + 1));
    cluster.nodes[f].signal(Signal::STOP);
    std::thread::sleep(Duration::from_secs(2));
    cluster.nodes[f].signal(Signal::CONT);
    let resumed = Instant::now();
    cluster.caught_up(f, 30);
    report.push(format!(
        "follower node {} caught up {:?} after SIGCONT",
        f + 1,
        resumed.elapsed()
    ));
    std::thread::sleep(RECOVERY);

    // The leader frozen for 2.5 s: the others elect a new one; back, it steps down and catches up.
    let l = cluster.agreed_leader(&all, 20);
    let term = cluster.own_view(l).and_then(|v| v["term"].as_u64());
    let term = term.expect("the leader's term");
    phases.begin(format!("leader (node {}) stopped", l + 1));
    cluster.nodes[l].signal(Signal::STOP);
    let stopped = Instant::now();
    let (took, by) = cluster.probe_write(&others(l), "failover-sigstop", stopped);
    report.push(format!(
        "leader node {} stopped: a write was answered (by node {}) {took:?} later",
        l + 1,
        by + 1
    ));
    std::thread::sleep(Duration::from_millis(2_500).saturating_sub(stopped.elapsed()));
    cluster.nodes[l].signal(Signal::CONT);
    let resumed = Instant::now();
    let new = cluster.caught_up(l, 30);
    let view = cluster.own_view(l).expect("the old leader answers");
    let new_term = view["term"].as_u64().unwrap_or(0);
    assert!(
        new_term > term,
        "node {} kept term {term} after its stop: {view}\n{}",
        l + 1,
        cluster.logs()
    );
    report.push(format!(
        "old leader node {} stepped down (term {term} -> {new_term}, leader node {}) and caught up \
         {:?} after SIGCONT",
        l + 1,
        new + 1,
        resumed.elapsed()
    ));
    std::thread::sleep(RECOVERY);

    // The leader killed: the others elect a new one; restarted, it catches up.
    let l = cluster.agreed_leader(&all, 20);
    phases.begin(format!("leader (node {}) killed", l + 1));
    cluster.nodes[l].kill();
    let killed = Instant::now();
    let (took, by) = cluster.probe_write(&others(l), "failover-kill", killed);
    report.push(format!(
        "leader node {} killed: a write was answered (by node {}) {took:?} later",
        l + 1,
        by + 1
    ));
    std::thread::sleep(Duration::from_millis(1_000).saturating_sub(killed.elapsed()));
    cluster.nodes[l].restart();
    let restarted = Instant::now();
    let new = cluster.caught_up(l, 30);
    report.push(format!(
        "killed node {} restarted, follows node {} and caught up {:?} after its restart",
        l + 1,
        new + 1,
        restarted.elapsed()
    ));
    std::thread::sleep(RECOVERY);

    load.finish(&cluster);
}

#[cfg(test)]
mod checker {
    use super::*;

    fn grant(name: &str, token: u64, granted_ms: u64, release_ms: u64) -> Grant {
        Grant {
            name: name.to_string(),
            client: token as usize,
            request_id: format!("r{token}"),
            token,
            granted: Duration::from_millis(granted_ms),
            release_sent: Duration::from_millis(release_ms),
            released: Released::Yes,
        }
    }

    #[test]
    fn a_history_of_turns_passes() {
        let history = [
            grant("a", 3, 0, 10),
            grant("b", 4, 5, 50),
            // Recorded out of order; granted right after the release was sent is a turn.
            grant("a", 9, 30, 40),
            grant("a", 7, 10, 20),
            grant("b", 12, 51, 60),
        ];
        assert_eq!(check_history(&history), Vec::<String>::new());
        assert!(check_history(&[]).is_empty());
    }

    #[test]
    fn two_holders_at_once_are_caught() {
        // The second grant came back before the first one's release was sent.
        let v = check_history(&[grant("a", 3, 0, 10), grant("a", 7, 9, 20)]);
        assert_eq!(v.len(), 1, "{v:?}");
        assert!(v[0].contains("held twice"), "{v:?}");
        // Inside a long grant, behind a short one that ended: still caught.
        let v = check_history(&[
            grant("a", 3, 0, 100),
            grant("a", 5, 10, 20),
            grant("a", 7, 50, 60),
        ]);
        assert_eq!(v.len(), 2, "{v:?}");
        // Another name is no conflict.
        assert!(check_history(&[grant("a", 3, 0, 10), grant("b", 4, 5, 15)]).is_empty());
    }

    #[test]
    fn a_lost_grant_and_tokens_out_of_order_are_caught() {
        let mut lost = grant("a", 7, 20, 30);
        lost.released = Released::NotHolder("{}".into());
        let v = check_history(&[grant("a", 3, 0, 10), lost.clone()]);
        assert_eq!(v.len(), 1, "{v:?}");
        assert!(v[0].starts_with("lost grant"), "{v:?}");
        lost.released = Released::Unanswered;
        assert_eq!(check_history(&[lost]).len(), 1);

        let v = check_history(&[grant("a", 7, 0, 10), grant("a", 3, 20, 30)]);
        assert_eq!(v.len(), 1, "{v:?}");
        assert!(v[0].contains("follows token 7"), "{v:?}");
        // The same token granted twice.
        assert_eq!(
            check_history(&[grant("a", 7, 0, 10), grant("a", 7, 20, 30)]).len(),
            1
        );
    }
}
