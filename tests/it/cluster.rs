//! A three-node `sentinel serve` cluster as real processes on loopback, under faults while
//! clients hammer a few names: a follower frozen with SIGSTOP and let go, then the leader frozen
//! and let go (it must step down and catch up), then the leader killed with `kill -9` and
//! restarted (it must catch up). The time until a new leader serves a write is measured.
//!
//! The clients take every kind of hold the coordinator keeps ([`ROLES`]): locks, permits of a
//! semaphore, shared and exclusive holds of one name, and the leadership of an election (a
//! leader proclaims a value and reads the leader). Afterwards the checker of
//! [`crate::chaos_checker`] proves, from what the clients saw, that no name was ever held in a
//! way its kind forbids (two holders of a lock, two leaders, a writer beside anyone, more permits
//! than the limit), that fencing tokens come in the order the coordinator promises, that no
//! acknowledged grant was lost (every release found the grant still there), and that each leader
//! read itself. Tokens are opaque: only their order per name is checked.
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

use crate::chaos_checker::{Grant, Hold, Released, Seen, check_history, most_at_once};
use crate::proxy::{Proxy, sentinel_sender};
use crate::serve::{NO_ANSWER, Node, TOKEN, eventually, exchange_within, free_addr};

/// The locks the lock clients fight over.
const NAMES: [&str; 3] = ["chaos-a", "chaos-b", "chaos-c"];
/// The semaphore the permit clients share, and its limit.
const SEMAPHORE: &str = "chaos-sem";
const LIMIT: u32 = 3;
/// The name readers and writers share.
const SHARED: &str = "chaos-rw";
/// The election the candidates campaign in.
const ELECTION: &str = "chaos-election";
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
/// Fewest grants of each kind ([`KINDS`]) over a test, so that every role is shown to have run.
const MIN_GRANTS_PER_KIND: usize = 5;
/// How long each fault phase goes on after the cluster healed: clients whose requests met the
/// fault are back (their deadlines have passed), so a phase without grants means a stall.
pub(crate) const RECOVERY: Duration = Duration::from_secs(1);
/// The header a node puts on a request it forwards; on `GET /cluster/status` it makes a follower
/// answer with its own view instead of the leader's.
const FORWARDED: &str = "x-sentinel-forwarded";

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

/// Sends one request (a write with the same body, so the same request id, or a read) to the
/// nodes in turn, starting at `*node`, until one answers with anything but a 503. None if the
/// budget ran out or the test was aborted.
fn settle(
    shared: &Shared,
    client: usize,
    node: &mut usize,
    (method, path): (&str, &str),
    body: Option<&Value>,
    timeout: Duration,
) -> Option<(u16, Value)> {
    let began = Instant::now();
    let n = shared.addrs.len();
    loop {
        if shared.abort.load(Ordering::SeqCst) {
            return None;
        }
        if began.elapsed() > REQUEST_BUDGET {
            let body = body.map(Value::to_string).unwrap_or_default();
            shared.note(
                client,
                *node % n,
                NoteKind::Unresolved(format!("{method} {path} {body}")),
            );
            return None;
        }
        let i = *node % n;
        let kind = match call(&shared.addrs[i], method, path, body, timeout) {
            Ok((503, v)) => NoteKind::Unavailable(v["code"].as_str().unwrap_or("?").to_string()),
            Ok(answer) => return Some(answer),
            Err(e) if e.starts_with(NO_ANSWER) => NoteKind::Timeout(format!("{method} {path}")),
            Err(_) => NoteKind::Refused,
        };
        shared.note(client, i, kind);
        *node += 1;
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// What a client claims, one hold at a time.
#[derive(Debug, Clone, Copy)]
enum Role {
    /// Locks of [`NAMES`].
    Locks,
    /// 1 or 2 permits of [`SEMAPHORE`].
    Permits,
    /// Mostly shared holds of [`SHARED`], one claim in four exclusive (a writer).
    ReadWrite,
    /// Campaigns in [`ELECTION`]; as leader, proclaims a value and reads the leader.
    Candidate,
}

/// The clients, by number. Odd-numbered ones wait server-side ([`WAIT_MS`]), so every role has
/// clients that queue and clients that fail fast.
const ROLES: [Role; 14] = [
    Role::Locks,
    Role::Locks,
    Role::Locks,
    Role::Locks,
    Role::Locks,
    Role::Locks,
    Role::Permits,
    Role::Permits,
    Role::Permits,
    Role::ReadWrite,
    Role::ReadWrite,
    Role::ReadWrite,
    Role::Candidate,
    Role::Candidate,
];

/// One claim: its name and hold, its route family (`/locks/`, `/semaphores/`, `/election/`),
/// its acquire and release actions, and the acquire's keys of its kind.
struct Claim {
    name: &'static str,
    hold: Hold,
    family: &'static str,
    actions: (&'static str, &'static str),
    keys: Value,
}

impl Claim {
    fn pick(role: Role, rng: &mut fastrand::Rng, request_id: &str) -> Claim {
        let lock = |name, hold, keys| Claim {
            name,
            hold,
            family: "locks",
            actions: ("acquire", "release"),
            keys,
        };
        match role {
            Role::Locks => lock(NAMES[rng.usize(..NAMES.len())], Hold::Exclusive, json!({})),
            Role::ReadWrite if rng.u8(..4) == 0 => lock(SHARED, Hold::Exclusive, json!({})),
            Role::ReadWrite => lock(SHARED, Hold::Shared, json!({"shared": true})),
            Role::Permits => {
                let permits = rng.u32(1..=2);
                Claim {
                    name: SEMAPHORE,
                    hold: Hold::Permits {
                        limit: LIMIT,
                        permits,
                    },
                    family: "semaphores",
                    actions: ("acquire", "release"),
                    keys: json!({"limit": LIMIT, "permits": permits}),
                }
            }
            Role::Candidate => Claim {
                name: ELECTION,
                hold: Hold::Leader,
                family: "election",
                actions: ("campaign", "resign"),
                keys: json!({"value": request_id}),
            },
        }
    }

    fn path(&self, action: &str) -> String {
        format!("/{}/{}/{action}", self.family, self.name)
    }
}

/// A client: claims a hold of its role, holds it briefly, releases it; again until told to
/// stop. Every attempt has its own request id, reused by each retry of it.
fn client(shared: Arc<Shared>, c: usize) {
    let mut rng = fastrand::Rng::with_seed(0x5e71_1e1a + c as u64);
    let holder = format!("client-{c}");
    let wait_ms = if c % 2 == 1 { WAIT_MS } else { 0 };
    let mut node = rng.usize(..shared.addrs.len());
    for attempt in 0.. {
        if shared.stop.load(Ordering::SeqCst) {
            return;
        }
        let request_id = format!("c{c}-{attempt}");
        let claim = Claim::pick(ROLES[c], &mut rng, &request_id);
        let mut body = json!({
            "holder": holder, "ttl_ms": TTL_MS, "wait_ms": wait_ms, "request_id": request_id,
        });
        if let (Some(b), Some(keys)) = (body.as_object_mut(), claim.keys.as_object()) {
            b.extend(keys.clone());
        }
        let timeout = CALL_TIMEOUT + Duration::from_millis(wait_ms);
        let path = claim.path(claim.actions.0);
        let sent = shared.start.elapsed();
        let route = ("POST", path.as_str());
        let Some((status, v)) = settle(&shared, c, &mut node, route, Some(&body), timeout) else {
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
                let mut grant = Grant {
                    name: claim.name.to_string(),
                    client: c,
                    request_id,
                    hold: claim.hold,
                    token,
                    sent,
                    granted,
                    release_sent: granted,
                    released: Released::Unanswered,
                    proclaimed: None,
                    seen: None,
                };
                if claim.hold == Hold::Leader {
                    lead(&shared, c, &mut node, &claim, &mut grant);
                }
                std::thread::sleep(Duration::from_millis(rng.u64(5..25)));
                let unanswered = !release(&shared, c, &mut node, &claim, &mut grant);
                shared.grants.lock().unwrap().push(grant);
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

/// Releases `grant` (resigns a leadership) and records when and how; false if no node answered.
fn release(shared: &Shared, c: usize, node: &mut usize, claim: &Claim, grant: &mut Grant) -> bool {
    grant.release_sent = shared.start.elapsed();
    let body = json!({
        "holder": format!("client-{c}"), "token": grant.token,
        "request_id": format!("{}-release", grant.request_id),
    });
    let path = claim.path(claim.actions.1);
    let answer = settle(shared, c, node, ("POST", &path), Some(&body), CALL_TIMEOUT);
    grant.released = match answer {
        Some((200, v)) if v["released"] == true => Released::Yes,
        Some((409, v)) if v["code"] == "not_holder" => Released::NotHolder(v.to_string()),
        Some((s, v)) => Released::Other(format!("{s} {v}")),
        None => Released::Unanswered,
    };
    grant.released != Released::Unanswered
}

/// As leader: publishes a new value (a proclamation), then reads the election's leader, which
/// the checker requires to be this grant with that value.
fn lead(shared: &Shared, c: usize, node: &mut usize, claim: &Claim, grant: &mut Grant) {
    let value = format!("{}-proclaimed", grant.request_id);
    let body = json!({
        "holder": format!("client-{c}"), "token": grant.token, "value": value,
        "request_id": format!("{}-proclaim", grant.request_id),
    });
    let path = claim.path("proclaim");
    match settle(shared, c, node, ("POST", &path), Some(&body), CALL_TIMEOUT) {
        Some((200, v)) if v["renewed"] == true => grant.proclaimed = Some(value),
        Some((s, v)) => {
            let what = format!("{}-proclaim: {s} {v}", grant.request_id);
            shared.note(c, *node % shared.addrs.len(), NoteKind::Unexpected(what));
        }
        None => return,
    }
    let at = shared.start.elapsed();
    let path = claim.path("leader");
    match settle(shared, c, node, ("GET", &path), None, CALL_TIMEOUT) {
        Some((200, v)) => {
            let leader = &v["leader"];
            grant.seen = Some(Seen {
                at,
                token: leader["fencing_token"].as_u64(),
                value: leader["value"].as_str().map(String::from),
            });
        }
        Some((s, v)) => {
            let what = format!("{} leader read: {s} {v}", grant.request_id);
            shared.note(c, *node % shared.addrs.len(), NoteKind::Unexpected(what));
        }
        None => {}
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

/// The kinds of grant the test counts: locks of [`NAMES`], readers and writers of [`SHARED`],
/// holds of [`SEMAPHORE`] and leaders of [`ELECTION`].
const KINDS: [&str; 5] = ["lock", "reader", "writer", "semaphore", "leader"];

fn kind(g: &Grant) -> &'static str {
    match g.hold {
        Hold::Exclusive if g.name == SHARED => "writer",
        Hold::Exclusive => "lock",
        Hold::Shared => "reader",
        Hold::Permits { .. } => "semaphore",
        Hold::Leader => "leader",
    }
}

/// Fails the test unless every name the clients claimed is free again, read on `leader`: every
/// hold was released.
fn all_free(cluster: &Cluster, leader: usize) {
    let mut reads: Vec<(String, &str)> = NAMES
        .iter()
        .chain([&SHARED])
        .map(|name| (format!("/locks/{name}/status"), "held"))
        .collect();
    reads.push((format!("/semaphores/{SEMAPHORE}/status"), "held"));
    reads.push((format!("/election/{ELECTION}/leader"), "leader"));
    for (path, key) in reads {
        let timeout = Duration::from_secs(10);
        let (s, v) = call(&cluster.addrs[leader], "GET", &path, None, timeout).unwrap();
        let free = if key == "held" {
            json!(false)
        } else {
            Value::Null
        };
        assert_eq!((s, &v[key]), (200, &free), "{path}: {v}");
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
        let clients = (0..ROLES.len())
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
        all_free(cluster, leader);

        let grants = shared.grants.lock().unwrap().clone();
        let notes = shared.notes.lock().unwrap().clone();
        let kinds = KINDS.map(|k| (k, grants.iter().filter(|g| kind(g) == k).count()));
        let few: Vec<_> = kinds
            .iter()
            .filter(|(_, n)| *n < MIN_GRANTS_PER_KIND)
            .collect();
        // Holds that may overlap did, so the checker had something to check.
        let (permits, readers) = (
            most_at_once(&grants, SEMAPHORE),
            most_at_once(&grants, SHARED),
        );
        eprintln!(
            "cluster chaos: {} grants ({}) to {} clients in {end:.1?}; at most {permits} of \
             {LIMIT} permits and {readers} holds of {SHARED:?} at once",
            grants.len(),
            kinds.map(|(k, n)| format!("{n} {k}")).join(", "),
            ROLES.len()
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
            permits >= u64::from(LIMIT) && readers >= 2,
            "the semaphore never had its {LIMIT} permits held, or the shared holds never \
             overlapped: {permits} permits, {readers} holds at most"
        );
        assert!(
            few.is_empty(),
            "too few grants of a kind (at least {MIN_GRANTS_PER_KIND}): {few:?}\n{}",
            cluster.logs()
        );
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
