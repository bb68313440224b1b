//! A running node: its Raft instance and storage, the queue that packs proposed commands into log
//! entries (group commit), and the leader's clock ticks. The HTTP API serves from it.
//!
//! The leader stamps every entry with its lease clock ([`LeaseClock`]) and proposes a `Tick` when
//! the next lease or wait of the state ends, so waiters get their locks without a client asking.
//! The lease clock is the state's time when the leader's term began plus the time the leader's
//! monotonic clock measured since: no node's wall clock, ahead or behind, moves the leases.
//!
//! This module knows neither the HTTP API nor how a node is wired up: the layers run one way,
//! state ← store ← node ← api ← server.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::HeaderValue;
use openraft::error::{ClientWriteError, RaftError};
use openraft::{Raft, ServerState};
use sha2::{Digest, Sha256};
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::task::JoinHandle;

use super::acl::{Acl, same};
use super::audit::AuditLog;
use super::listener;
use super::state::{Answer, Batch, Command, MAX_BATCH, Proposal, fitting, position};
use super::stats::Stats;
use super::store::{LogStore, StateMachineStore};
use super::{NodeId, TypeConfig};
use sentinel_core::error::{Error, Result};
use sentinel_core::lease::{Clock, SystemClock};
use sentinel_core::secret::Secret;
use sentinel_proto::http::HttpClient;

/// Commands that may wait for the writer before proposers wait to queue more (back-pressure).
const QUEUED_PROPOSALS: usize = 4 * MAX_BATCH;
/// How long a proposal may wait for a quorum before the client is told to retry.
pub const PROPOSE_TIMEOUT: Duration = Duration::from_secs(10);
/// Ticks come at most this often, and without any lease ending, at least this rarely (to notice
/// leadership changes).
const TICK_GAP: Duration = Duration::from_millis(10);
const IDLE_TICK: Duration = Duration::from_secs(1);

/// A running node, shared by the HTTP handlers and the ticker.
pub struct Node {
    /// This node's id.
    pub id: NodeId,
    /// The node's Raft instance.
    pub raft: Raft<TypeConfig>,
    /// The node's log (read for `/cluster/status`).
    pub log: LogStore,
    /// The lock state as applied on this node.
    pub state: StateMachineStore,
    /// Pooled connections to the peers, for forwarding.
    pub client: HttpClient,
    /// The client tokens and the locks each may act on; `None`: any client, on any lock.
    pub acl: Option<Acl>,
    /// Where this node records the writes its clients ask for (`--audit-log`).
    pub audit: Option<AuditLog>,
    /// Whether `/metrics` answers without a client token (`--public-metrics`).
    pub public_metrics: bool,
    /// The token peers authenticate with; without it the node serves no Raft RPCs.
    pub peer: Option<PeerAuth>,
    /// The members this node was started with (`--peer`), trusted until its log has a membership.
    pub initial_members: Vec<NodeId>,
    /// What `/metrics` shows.
    pub stats: Stats,
    /// The key-value store's size quota this node gives the writes it proposes
    /// (`--kv-quota`).
    pub kv_quota: u64,
    /// Permits for client requests that wait (an acquire with `wait_ms`): each holds a
    /// connection for up to ten minutes, so they may take only part of the connections a node
    /// serves, and `/health`, peers' RPCs and short requests always find one.
    pub waits: Arc<Semaphore>,
    /// The queue of commands waiting to be packed into the next log entry.
    proposals: mpsc::Sender<Pending>,
    /// The lease clock of this node's term as leader.
    lease_clock: LeaseClock,
}

/// A leader's clock for the leases: the state's time when its term began (`base_ms`, as applied
/// once the term's first entry is, so every entry of older terms is in it) plus the time its
/// monotonic clock measured since (`started`). It never jumps with the wall clock, and it starts
/// where the last leader's stamps left off, so a leader whose wall clock is wrong cannot move the
/// state's time by it. Only the very first leader of an empty state starts from its wall clock.
#[derive(Default)]
struct LeaseClock(Mutex<Option<TermClock>>);

#[derive(Clone, Copy)]
struct TermClock {
    term: u64,
    base_ms: u64,
    started: Instant,
}

impl LeaseClock {
    /// The lease clock now, if this node leads `term` and the term's first entry is applied
    /// (`applied_term` is the term of the last entry applied, `clock_ms` the state's time).
    fn now(&self, term: u64, applied_term: Option<u64>, clock_ms: u64) -> Option<u64> {
        let mut current = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let clock = match *current {
            Some(c) if c.term == term => c,
            _ if applied_term == Some(term) => {
                let c = TermClock {
                    term,
                    base_ms: if clock_ms == 0 {
                        SystemClock.now_ms()
                    } else {
                        clock_ms
                    },
                    started: Instant::now(),
                };
                *current = Some(c);
                c
            }
            _ => return None,
        };
        let elapsed = u64::try_from(clock.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        Some(clock_ms.max(clock.base_ms.saturating_add(elapsed)))
    }
}

/// A command waiting for its entry, and who waits for its answer.
struct Pending {
    proposal: Proposal,
    reply: oneshot::Sender<std::result::Result<(Answer, u64), ProposeError>>,
}

/// The token the nodes of a cluster authenticate each other's Raft RPCs with, kept as its digest
/// (compared as [`Acl::check`] compares client tokens) and a sensitive header value.
pub struct PeerAuth {
    digest: [u8; 32],
    /// The token as the value of the peer token header (`network::PEER_TOKEN_HEADER`), marked
    /// sensitive.
    pub header: HeaderValue,
}

impl PeerAuth {
    /// Keeps `token`'s digest and its header; a usage error if it cannot be a header value.
    pub fn new(token: &Secret) -> Result<PeerAuth> {
        let mut header = HeaderValue::from_str(token.expose()).map_err(|_| {
            Error::usage("invalid --peer-token: it cannot be sent in an HTTP header")
        })?;
        header.set_sensitive(true);
        Ok(PeerAuth {
            digest: Sha256::digest(token.expose().as_bytes()).into(),
            header,
        })
    }

    /// Whether a peer token header's value is the peer token.
    pub fn accepts(&self, given: Option<&HeaderValue>) -> bool {
        given
            .and_then(|h| h.to_str().ok())
            .is_some_and(|given| same(&Sha256::digest(given.as_bytes()).into(), &self.digest))
    }
}

/// Why a proposal did not get an answer.
#[derive(Clone)]
pub enum ProposeError {
    /// This node is not the leader (any more); the leader, if known.
    NotLeader(Option<NodeId>),
    /// No answer in time, or Raft stopped: the command may still take effect.
    Unavailable(String),
}

impl Node {
    /// Replicates `command` (the writer stamps its entry with the lease clock); the state's
    /// answer once it is committed and applied here, and the command's position in the log (the
    /// fencing token a grant by it carries).
    pub async fn propose(
        &self,
        command: Command,
    ) -> std::result::Result<(Answer, u64), ProposeError> {
        let proposal = Proposal { at_ms: 0, command };
        let (reply, answer) = tokio::sync::oneshot::channel();
        let stopping = || ProposeError::Unavailable("the node is stopping".into());
        self.proposals
            .send(Pending { proposal, reply })
            .await
            .map_err(|_| stopping())?;
        answer.await.map_err(|_| stopping())?
    }

    /// The leader this node knows of, and its address.
    pub fn leader(&self) -> Option<(NodeId, String)> {
        let metrics = self.raft.metrics().borrow().clone();
        let leader = metrics.current_leader?;
        let addr = metrics
            .membership_config
            .membership()
            .get_node(&leader)?
            .addr
            .clone();
        Some((leader, addr))
    }

    /// Whether this node leads now (as far as it knows).
    pub fn is_leader(&self) -> bool {
        self.raft.metrics().borrow().state == ServerState::Leader
    }

    /// The time by which leases are judged here, in ms: on the leader, its lease clock
    /// ([`LeaseClock`]); elsewhere, and on a leader whose term's first entry is not applied yet,
    /// the state's time as applied on this node. Never behind the state's time.
    pub fn lease_now(&self) -> u64 {
        self.leading_now()
            .unwrap_or_else(|| self.state.read(|m| m.state.clock_ms()))
    }

    /// The lease clock now, if this node leads and its term's clock has started.
    fn leading_now(&self) -> Option<u64> {
        let (leading, term) = {
            let m = self.raft.metrics();
            let m = m.borrow();
            (m.state == ServerState::Leader, m.current_term)
        };
        if !leading {
            return None;
        }
        let (applied_term, clock_ms) = self
            .state
            .read(|m| (m.last_applied.map(|l| l.leader_id.term), m.state.clock_ms()));
        self.lease_clock.now(term, applied_term, clock_ms)
    }

    /// The stamp of the next entry: the lease clock. A new leader waits (at most
    /// [`PROPOSE_TIMEOUT`]) for its term's first entry to be applied, which starts its clock; a
    /// node that does not lead stamps the state's time (Raft refuses its write anyway), and so
    /// does a leader whose first entry did not apply in time: no stamp is ever a jump.
    async fn stamp(&self) -> u64 {
        let deadline = Instant::now() + PROPOSE_TIMEOUT;
        loop {
            if let Some(now) = self.leading_now() {
                return now;
            }
            if !self.is_leader() || Instant::now() >= deadline {
                return self.state.read(|m| m.state.clock_ms());
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// What a node is made of, opened and connected by [`super::server`].
pub struct Started {
    /// This node's id.
    pub id: NodeId,
    /// The node's Raft instance.
    pub raft: Raft<TypeConfig>,
    /// The node's log.
    pub log: LogStore,
    /// The lock state as applied on this node.
    pub state: StateMachineStore,
    /// Pooled connections to the peers.
    pub client: HttpClient,
    /// The client tokens and the locks each may act on; `None`: any client, on any lock.
    pub acl: Option<Acl>,
    /// Where this node records the writes its clients ask for (`--audit-log`).
    pub audit: Option<AuditLog>,
    /// Whether `/metrics` answers without a client token (`--public-metrics`).
    pub public_metrics: bool,
    /// The peer token, if the node has one.
    pub peer: Option<PeerAuth>,
    /// The members this node was started with.
    pub initial_members: Vec<NodeId>,
    /// What `/metrics` shows.
    pub stats: Stats,
    /// The key-value store's size quota (`--kv-quota`).
    pub kv_quota: u64,
}

/// The node's background tasks (the writer, the ticker, the election counter); dropping it stops
/// them.
pub struct Background(Vec<JoinHandle<()>>);

impl Drop for Background {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

impl Node {
    /// Starts a node from its parts, opened and connected by [`super::server`]: its proposal
    /// queue and background tasks run until the returned [`Background`] is dropped.
    pub fn start(parts: Started) -> (Arc<Node>, Background) {
        let (proposals, pending) = mpsc::channel(QUEUED_PROPOSALS);
        let Started {
            id,
            raft,
            log,
            state,
            client,
            acl,
            audit,
            public_metrics,
            peer,
            initial_members,
            stats,
            kv_quota,
        } = parts;
        let node = Arc::new(Node {
            id,
            raft,
            log,
            state,
            client,
            acl,
            audit,
            public_metrics,
            peer,
            initial_members,
            stats,
            kv_quota,
            waits: Arc::new(Semaphore::new(listener::connection_cap() * 3 / 4)),
            proposals,
            lease_clock: LeaseClock::default(),
        });
        let background = Background(vec![
            tokio::spawn(write_batches(node.clone(), pending)),
            tokio::spawn(tick(node.clone())),
            tokio::spawn(count_elections(node.clone())),
        ]);
        (node, background)
    }
}

/// Group commit: packs the commands proposed while the previous entry was being written into one
/// entry, and answers each of them when it is applied.
///
/// openraft 0.9 appends and flushes one client write at a time, so one entry per command would
/// cost every command its own fsync and its own replication round. With one entry in flight, the
/// commands that arrive during its write wait for the next one and share its fsync: under load the
/// batches grow by themselves, and a lone command is written at once. Keys' values bound an
/// entry too ([`fitting`]): the commands beyond go into the next one.
async fn write_batches(node: Arc<Node>, mut pending: mpsc::Receiver<Pending>) {
    let mut queued = Vec::with_capacity(MAX_BATCH);
    while pending.recv_many(&mut queued, MAX_BATCH).await > 0 {
        while !queued.is_empty() {
            let n = fitting(queued.iter().map(|p| p.proposal.command.value_bytes()));
            let entry: Vec<Pending> = queued.drain(..n).collect();
            write_entry(&node, entry).await;
        }
    }
}

/// Writes one entry of `batch` and answers each of its commands.
async fn write_entry(node: &Node, batch: Vec<Pending>) {
    let (mut proposals, replies): (Vec<Proposal>, Vec<_>) =
        batch.into_iter().map(|p| (p.proposal, p.reply)).unzip();
    let at_ms = node.stamp().await;
    for p in &mut proposals {
        p.at_ms = at_ms;
    }
    let started = Instant::now();
    let written =
        tokio::time::timeout(PROPOSE_TIMEOUT, node.raft.client_write(Batch(proposals))).await;
    let answers = match written {
        Ok(Ok(written)) => {
            node.stats.committed(started.elapsed(), replies.len());
            let index = written.log_id.index;
            let mut outcomes = written.data.into_iter();
            replies
                .into_iter()
                .enumerate()
                .map(|(place, reply)| {
                    let answer = outcomes
                        .next()
                        .flatten()
                        .map(|o| (o, position(index, place)));
                    let answer = answer.ok_or_else(|| {
                        ProposeError::Unavailable("the state machine gave no answer".into())
                    });
                    (reply, answer)
                })
                .collect::<Vec<_>>()
        }
        Ok(Err(e)) => {
            let e = match e {
                RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => {
                    ProposeError::NotLeader(f.leader_id)
                }
                e => ProposeError::Unavailable(e.to_string()),
            };
            replies.into_iter().map(|r| (r, Err(e.clone()))).collect()
        }
        Err(_) => {
            let e = ProposeError::Unavailable(format!(
                "no quorum confirmed the request within {PROPOSE_TIMEOUT:?}"
            ));
            replies.into_iter().map(|r| (r, Err(e.clone()))).collect()
        }
    };
    for (reply, answer) in answers {
        // A client that went away no longer waits for its answer; the command stands.
        let _ = reply.send(answer);
    }
}

/// Counts the elections this node sees end with a leader: each new term that has one.
async fn count_elections(node: Arc<Node>) {
    let mut metrics = node.raft.metrics();
    let mut counted_term = None;
    loop {
        let (term, leader) = {
            let m = metrics.borrow_and_update();
            (m.current_term, m.current_leader)
        };
        if leader.is_some() && counted_term != Some(term) {
            counted_term = Some(term);
            node.stats.elected();
        }
        if metrics.changed().await.is_err() {
            return;
        }
    }
}

/// On the leader, proposes a `Tick` whenever a lease or a wait of the state has ended, so that
/// waiters are handed their locks and answers settle without a client command.
async fn tick(node: Arc<Node>) {
    let mut applied = node.state.subscribe();
    loop {
        let next = node.state.read(|m| m.state.next_event_ms());
        let now = node.lease_now();
        let pause = match next {
            Some(at) if at <= now && node.is_leader() => {
                if let Err(ProposeError::Unavailable(e)) = node.propose(Command::Tick).await {
                    tracing::debug!("tick not applied: {e}");
                }
                TICK_GAP
            }
            Some(at) if at > now => Duration::from_millis(at - now).clamp(TICK_GAP, IDLE_TICK),
            _ => IDLE_TICK,
        };
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            changed = applied.changed() => if changed.is_err() { return },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lease_clock_starts_from_the_state_once_the_terms_first_entry_is_applied() {
        let clock = LeaseClock::default();
        // Leading term 3 before its first entry is applied: no clock yet.
        assert_eq!(clock.now(3, Some(2), 50_000), None);
        // Applied: the base is the state's time, whatever the wall clock says.
        let start = clock.now(3, Some(3), 50_000).unwrap();
        assert!((50_000..50_050).contains(&start), "{start}");
        std::thread::sleep(Duration::from_millis(30));
        let later = clock.now(3, Some(3), 50_000).unwrap();
        assert!(
            later >= start + 30 && later < start + 1_000,
            "{start} {later}"
        );
        // Never behind the state's time.
        assert_eq!(clock.now(3, Some(3), 90_000), Some(90_000));
        // A later term starts again from the state's time then.
        let next = clock.now(5, Some(5), 60_000).unwrap();
        assert!((60_000..60_050).contains(&next), "{next}");
        // An empty state (time 0) starts from the wall clock.
        let fresh = LeaseClock::default().now(1, Some(1), 0).unwrap();
        assert!(fresh.abs_diff(SystemClock.now_ms()) < 1_000, "{fresh}");
    }

    #[test]
    fn only_the_exact_peer_token_is_accepted() {
        let peer = PeerAuth::new(&Secret::new("p33r")).unwrap();
        let h = |s: &str| HeaderValue::from_str(s).unwrap();
        assert!(peer.accepts(Some(&h("p33r"))));
        for wrong in ["Bearer p33r", "p33", "p33r2", " p33r", ""] {
            assert!(!peer.accepts(Some(&h(wrong))), "{wrong}");
        }
        assert!(!peer.accepts(None));
        assert!(peer.header.is_sensitive());
        assert!(!format!("{:?}", peer.header).contains("p33r"));
    }
}
