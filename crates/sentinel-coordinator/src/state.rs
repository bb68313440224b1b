//! The replicated lock state: named leases with FIFO wait queues, applied from the Raft log.
//!
//! [`LockState::apply`] is the whole protocol: it takes one log entry (its index and a
//! [`Proposal`]) and returns what happened. No I/O, no clock, no randomness, so every node that
//! applies the same log holds the same state and gives the same answers.
//!
//! Semantics (etcd and Consul leases rather than the local backend's "stale until stolen"):
//!
//! - **Time is the leader's.** Each proposal carries the leader's wall clock when it proposed it.
//!   The state's clock is the largest stamp applied so far, so a new leader whose clock is behind
//!   never moves time backwards.
//! - **An election does not end leases early.** While no leader serves, holders cannot renew. So
//!   the first command of a new leader (a newer Raft term) first extends every lease by the time
//!   since the last command of the old leader, at most [`LEADER_CHANGE_GRACE_MS`]: the time the
//!   election took, counted as if renewed.
//! - **A lease ends at its TTL.** A lease renewed at `t` with TTL `d` is live up to and including
//!   `t + d` (the rule of [`LockTable::is_stale`], shared with the local backend) and is gone
//!   after it: the next waiter gets the lock. Before a command takes effect, every lease and every
//!   wait that ended by the command's time ends, in the order they ended, so the outcome does not
//!   depend on how often the leader proposes [`Command::Tick`].
//! - **Waiters are served in arrival order.** An acquire with `wait_ms > 0` on a held lock joins
//!   the lock's queue; the head of the queue gets the lock when it is released or its lease ends,
//!   unless its own wait ran out first. The wait is held by the state, not by a client polling, so
//!   it survives a change of leader.
//! - **The fencing token of a grant is its position in the log.** The leader packs the commands
//!   that arrive while it writes into one entry (group commit: one fsync and one replication round
//!   for many requests), so a position is the entry's log index times [`POSITIONS_PER_ENTRY`]
//!   plus the command's place in the entry ([`position`]). Log indexes only grow, so tokens
//!   strictly increase per lock across grants, releases and leader changes, even when one entry
//!   grants, releases and grants the same lock again.
//! - **Requests carry client-chosen ids.** A command whose request id the state still remembers is
//!   not executed again: it gets the request's answer (for a waiter, `Queued` until its wait is
//!   settled, then the final answer). A client that retries after a timeout or a leader change is
//!   therefore never granted a lock twice. Answers are remembered for [`REQUEST_WINDOW_MS`] of
//!   leader time, and at most [`REQUEST_MEMORY`] of them.
//!
//! Every lock is one [`Slot`]: a lease and its queue. Commands are an internally tagged enum, so
//! semaphores, read-write locks and elections can arrive as new commands and new slot kinds
//! without changing the encoding of the entries already in a log.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use serde::{Deserialize, Serialize};

use sentinel_core::lock::TaskInfo;
use sentinel_core::table::{LockRecord, LockTable};

/// Most locks held at once; an acquire of a free lock beyond it is refused.
pub const MAX_HELD_LOCKS: usize = 100_000;
/// Most acquires waiting at once, across all locks.
pub const MAX_WAITERS: usize = 100_000;
/// How long (leader time) a settled answer is remembered for retries of its request.
pub const REQUEST_WINDOW_MS: u64 = 60_000;
/// Most settled answers remembered; the oldest are forgotten first.
pub const REQUEST_MEMORY: usize = 100_000;
/// Most a change of leader extends the leases by. An election takes well under a second; the
/// time since the old leader's last command may also include quiet time, hence a bound.
pub const LEADER_CHANGE_GRACE_MS: u64 = 2_000;

/// Most commands in one log entry; a position's place in its entry stays below
/// [`POSITIONS_PER_ENTRY`].
pub const MAX_BATCH: usize = 256;
/// How many positions (fencing tokens) each log index spans.
pub const POSITIONS_PER_ENTRY: u64 = 1_000;

/// The position of the `place`-th command of the entry at log `index`: the fencing token a grant
/// by that command gets.
pub fn position(index: u64, place: usize) -> u64 {
    index
        .saturating_mul(POSITIONS_PER_ENTRY)
        .saturating_add(place as u64)
}

/// The application payload of one Raft log entry: the commands the leader packed into it, in the
/// order they are applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Batch(pub Vec<Proposal>);

/// One command and the leader's time when it was proposed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proposal {
    /// The leader's wall clock when it proposed the command, in Unix milliseconds.
    pub at_ms: u64,
    /// What to do.
    pub command: Command,
}

/// A change to the lock state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Command {
    /// Take a lock, or wait for it.
    Acquire(Acquire),
    /// Give a lock back.
    Release(Release),
    /// Extend a lease.
    Renew(Renew),
    /// Take back an acquire, whatever became of it.
    Withdraw(Withdraw),
    /// Only time passes: the leases and waits that ended by the proposal's time end. The leader
    /// proposes one when [`LockState::next_event_ms`] comes, so waiters get their locks promptly.
    Tick,
}

/// Take a lock, or join its queue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Acquire {
    /// The client's id for this request: a retry with the same id gets the first answer.
    pub request_id: String,
    /// The lock's name.
    pub name: String,
    /// Who will hold the lock: the worker id.
    pub holder: String,
    /// Where the holder runs, for people reading the status.
    #[serde(default)]
    pub node: String,
    /// How long the lease lasts from its grant or last renewal, in milliseconds.
    pub ttl_ms: u64,
    /// How long to wait in the queue if the lock is held; 0 answers `Held` at once.
    #[serde(default)]
    pub wait_ms: u64,
    /// The holder may take up its own live lease again (same token, renewed). Without it, a
    /// holder acquiring its own lock is treated like anyone else: a shared default worker id must
    /// not turn into shared ownership.
    #[serde(default)]
    pub readopt: bool,
    /// What the holder works on, shown in the status.
    #[serde(default, skip_serializing_if = "TaskInfo::is_empty")]
    pub task_info: TaskInfo,
}

/// Give a lock back; only the lease's holder with the lease's token may.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Release {
    /// The client's id for this request (see [`Acquire::request_id`]).
    pub request_id: String,
    /// The lock's name.
    pub name: String,
    /// The worker id the lease was granted to.
    pub holder: String,
    /// The lease's fencing token: a holder of an older lease of the same lock cannot release a
    /// newer one.
    pub token: u64,
}

/// Extend a lease by its TTL from now; only the lease's holder with the lease's token may.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Renew {
    /// The client's id for this request (see [`Acquire::request_id`]).
    pub request_id: String,
    /// The lock's name.
    pub name: String,
    /// The worker id the lease was granted to.
    pub holder: String,
    /// The lease's fencing token.
    pub token: u64,
    /// A new TTL for the lease, in milliseconds, from this renewal on; `None` keeps its TTL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_ms: Option<u64>,
}

/// Take back an acquire the client gave up on (an interrupted claim): a waiting acquire leaves
/// the queue, a lease it was granted is released, and one that has not arrived yet is never
/// executed. Only the acquire's holder may.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Withdraw {
    /// The client's id for this request (see [`Acquire::request_id`]).
    pub request_id: String,
    /// The lock's name.
    pub name: String,
    /// The acquire's holder.
    pub holder: String,
    /// The request id of the acquire to take back.
    pub acquire_id: String,
}

/// Which kind of request a request id was first used for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RequestKind {
    /// [`Command::Acquire`].
    Acquire,
    /// [`Command::Release`].
    Release,
    /// [`Command::Renew`].
    Renew,
    /// [`Command::Withdraw`].
    Withdraw,
}

/// What a limit refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Limit {
    /// [`MAX_HELD_LOCKS`] locks are held.
    HeldLocks,
    /// [`MAX_WAITERS`] acquires are waiting.
    Waiters,
}

/// The answer to one request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Outcome {
    /// The requester holds the lock: a new lease, or (`adopted`) its own lease taken up again.
    Granted {
        /// The requester's lease.
        lease: LockRecord,
        /// The requester's own live lease taken up again (same token) rather than a new grant.
        adopted: bool,
    },
    /// Acquire without waiting: someone else holds the lock.
    Held {
        /// The lease that holds it.
        holder: LockRecord,
    },
    /// Acquire with waiting: in the queue at `position` (1 is next). The request is settled later,
    /// as `Granted` or `TimedOut`.
    Queued {
        /// Place in the lock's queue; 1 is next.
        position: usize,
    },
    /// The wait ran out before the lock was handed over; `holder` held it then.
    TimedOut {
        /// The lease that held the lock when the wait ended.
        holder: LockRecord,
    },
    /// The lease was given back; the next waiter, if any, holds the lock now.
    Released {
        /// The lease as it was when released.
        lease: LockRecord,
    },
    /// The lease runs its TTL again from the command's time.
    Renewed {
        /// The renewed lease.
        lease: LockRecord,
    },
    /// Release or renew of a lease the requester does not hold (someone else's, another token,
    /// expired, released); `holder` is the lock's current lease, if any.
    NotHolder {
        /// The lock's current lease, if it is held.
        holder: Option<LockRecord>,
    },
    /// A limit of the coordinator refused the request; nothing changed.
    Refused {
        /// Which limit.
        limit: Limit,
    },
    /// The request id was first used for another request (another kind, lock or holder).
    RequestIdReused,
    /// The answer to a [`Command::Withdraw`], and to the acquire it took back: that acquire
    /// holds nothing now; `lease` is the lease it had been granted and that was released.
    Withdrawn {
        /// The released lease, if the acquire had been granted one that was still live.
        lease: Option<LockRecord>,
    },
}

/// A waiting request that got its final answer while another command was applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Settled {
    /// The waiting request's id.
    pub request_id: String,
    /// The lock it waited for.
    pub name: String,
    /// `Granted` or `TimedOut`.
    pub outcome: Outcome,
}

/// What applying one command did.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Applied {
    /// The answer to the command's request; `None` for a [`Command::Tick`].
    pub outcome: Option<Outcome>,
    /// Waiting requests settled by this command, in the order they were settled.
    pub settled: Vec<Settled>,
}

/// An acquire waiting for a held lock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Waiter {
    /// The waiting request's id.
    pub request_id: String,
    /// The worker id that will hold the lock.
    pub holder: String,
    /// Where the holder runs.
    pub node: String,
    /// The TTL of the lease it will be granted, in milliseconds.
    pub ttl_ms: u64,
    /// When it joined the queue (leader time).
    pub since_ms: u64,
    /// The last instant it still waits: `since_ms + wait_ms`.
    pub until_ms: u64,
    /// What the holder will work on.
    #[serde(default, skip_serializing_if = "TaskInfo::is_empty")]
    pub task_info: TaskInfo,
}

/// One held lock: its lease and the acquires waiting for it, oldest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Slot {
    /// The live lease.
    pub lease: LockRecord,
    /// The acquires waiting for the lock, in arrival order.
    #[serde(default, skip_serializing_if = "VecDeque::is_empty")]
    pub queue: VecDeque<Waiter>,
}

/// A request whose answer is remembered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Remembered {
    kind: RequestKind,
    name: String,
    holder: String,
    outcome: Outcome,
}

/// The lock state as a snapshot stores it: the indexes are derived on loading.
#[derive(Serialize, Deserialize)]
struct Stored {
    clock_ms: u64,
    #[serde(default)]
    term: u64,
    locks: BTreeMap<String, Slot>,
    requests: BTreeMap<String, Remembered>,
    /// Settled request ids in the order they were settled, with the time.
    settled: VecDeque<(u64, String)>,
}

/// Every lock of the coordinator. See the module documentation for the semantics.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LockState {
    /// The largest leader stamp applied.
    clock_ms: u64,
    /// The Raft term of the last command applied: a newer one is a new leader.
    term: u64,
    /// Held locks only: a lock with waiters always has a holder, since a lock that falls free
    /// goes to the head of its queue at once.
    locks: BTreeMap<String, Slot>,
    /// `(expires_at_ms, name)` of every lease, to end them in order without a scan.
    expiries: BTreeSet<(u64, String)>,
    /// `(until_ms, name, request_id)` of every waiter.
    deadlines: BTreeSet<(u64, String, String)>,
    requests: BTreeMap<String, Remembered>,
    /// Settled requests, oldest first: `(settled at, request id)`.
    settled: VecDeque<(u64, String)>,
}

impl LockState {
    /// Applies the entry at log `index`, written by the leader of `term`: what each of its commands
    /// did, in order. Deterministic and total: any batch in any state gives an answer to each of
    /// its first [`POSITIONS_PER_ENTRY`] commands (a leader packs at most [`MAX_BATCH`]; the rest
    /// of a longer one is ignored), and the same entries applied in the same order give the same
    /// state.
    pub fn apply(&mut self, index: u64, term: u64, batch: &Batch) -> Vec<Applied> {
        let first = position(index, 0);
        batch
            .0
            .iter()
            .take(POSITIONS_PER_ENTRY as usize)
            .enumerate()
            .map(|(place, proposal)| self.apply_one(position(index, place), first, term, proposal))
            .collect()
    }

    /// Applies the command at log position `at`, in the entry whose first position is `first`.
    fn apply_one(&mut self, at: u64, first: u64, term: u64, proposal: &Proposal) -> Applied {
        if term > self.term {
            if self.term != 0 {
                let gap = proposal.at_ms.saturating_sub(self.clock_ms);
                self.extend_leases(gap.min(LEADER_CHANGE_GRACE_MS));
            }
            self.term = term;
        }
        let now = self.clock_ms.max(proposal.at_ms);
        self.clock_ms = now;
        let mut settled = Vec::new();
        self.advance(at, now, &mut settled);
        let outcome = match &proposal.command {
            Command::Tick => None,
            Command::Acquire(a) => Some(self.request(
                &a.request_id,
                (RequestKind::Acquire, &a.name, &a.holder),
                now,
                |s| s.acquire(at, now, a),
            )),
            Command::Release(r) => Some(self.request(
                &r.request_id,
                (RequestKind::Release, &r.name, &r.holder),
                now,
                |s| s.release((at, first), now, r, &mut settled),
            )),
            Command::Renew(r) => Some(self.request(
                &r.request_id,
                (RequestKind::Renew, &r.name, &r.holder),
                now,
                |s| s.renew(now, r),
            )),
            Command::Withdraw(w) => Some(self.request(
                &w.request_id,
                (RequestKind::Withdraw, &w.name, &w.holder),
                now,
                |s| s.withdraw(at, now, w, &mut settled),
            )),
        };
        self.forget(now);
        Applied { outcome, settled }
    }

    /// Runs a request once: a request id the state remembers gets its answer, anything else is
    /// executed and its answer remembered. A remembered id used by another kind of request, on
    /// another lock or by another holder is refused: it cannot be a retry.
    fn request(
        &mut self,
        id: &str,
        (kind, name, holder): (RequestKind, &str, &str),
        now: u64,
        run: impl FnOnce(&mut Self) -> Outcome,
    ) -> Outcome {
        if let Some(r) = self.requests.get(id) {
            return if r.kind == kind && r.name == name && r.holder == holder {
                r.outcome.clone()
            } else {
                Outcome::RequestIdReused
            };
        }
        let outcome = run(self);
        self.remember(id, (kind, name, holder), now, outcome.clone());
        outcome
    }

    /// Remembers the answer to request `id`; a settled one joins the answers forgotten in turn.
    fn remember(
        &mut self,
        id: &str,
        (kind, name, holder): (RequestKind, &str, &str),
        now: u64,
        outcome: Outcome,
    ) {
        if !matches!(outcome, Outcome::Queued { .. }) {
            self.settled.push_back((now, id.to_string()));
        }
        let remembered = Remembered {
            kind,
            name: name.to_string(),
            holder: holder.to_string(),
            outcome,
        };
        self.requests.insert(id.to_string(), remembered);
    }

    fn acquire(&mut self, at: u64, now: u64, a: &Acquire) -> Outcome {
        let waiting = self.deadlines.len();
        let held = self.locks.len();
        match self.locks.get_mut(&a.name) {
            None => {
                if held >= MAX_HELD_LOCKS {
                    return Outcome::Refused {
                        limit: Limit::HeldLocks,
                    };
                }
                let lease = LockRecord {
                    worker_id: a.holder.clone(),
                    node_id: a.node.clone(),
                    fencing_token: at,
                    claimed_at_ms: now,
                    heartbeat_ms: now,
                    ttl_ms: a.ttl_ms,
                    task_info: a.task_info.clone(),
                };
                self.expiries
                    .insert((lease.expires_at_ms(), a.name.clone()));
                self.locks.insert(
                    a.name.clone(),
                    Slot {
                        lease: lease.clone(),
                        queue: VecDeque::new(),
                    },
                );
                Outcome::Granted {
                    lease,
                    adopted: false,
                }
            }
            // Live: leases that ended were ended by `advance` before the command.
            Some(slot) if a.readopt && slot.lease.worker_id == a.holder => {
                let old = slot.lease.expires_at_ms();
                slot.lease.node_id = a.node.clone();
                slot.lease.heartbeat_ms = now;
                slot.lease.ttl_ms = a.ttl_ms;
                slot.lease.task_info = a.task_info.clone();
                let lease = slot.lease.clone();
                self.expiries.remove(&(old, a.name.clone()));
                self.expiries
                    .insert((lease.expires_at_ms(), a.name.clone()));
                Outcome::Granted {
                    lease,
                    adopted: true,
                }
            }
            Some(slot) if a.wait_ms == 0 => Outcome::Held {
                holder: slot.lease.clone(),
            },
            Some(_) if waiting >= MAX_WAITERS => Outcome::Refused {
                limit: Limit::Waiters,
            },
            Some(slot) => {
                let until = now.saturating_add(a.wait_ms);
                slot.queue.push_back(Waiter {
                    request_id: a.request_id.clone(),
                    holder: a.holder.clone(),
                    node: a.node.clone(),
                    ttl_ms: a.ttl_ms,
                    since_ms: now,
                    until_ms: until,
                    task_info: a.task_info.clone(),
                });
                let position = slot.queue.len();
                self.deadlines
                    .insert((until, a.name.clone(), a.request_id.clone()));
                Outcome::Queued { position }
            }
        }
    }

    fn release(
        &mut self,
        (at, first): (u64, u64),
        now: u64,
        r: &Release,
        settled: &mut Vec<Settled>,
    ) -> Outcome {
        match self.locks.get(&r.name) {
            // A lease granted by this very entry (token >= its first position) cannot be named by
            // a command proposed before it; refusing it also keeps the next grant's token above
            // it.
            Some(slot)
                if slot.lease.worker_id == r.holder
                    && slot.lease.fencing_token == r.token
                    && r.token < first =>
            {
                let lease = slot.lease.clone();
                self.end_held(&lease, &r.name, at, now, settled);
                Outcome::Released { lease }
            }
            other => Outcome::NotHolder {
                holder: other.map(|s| s.lease.clone()),
            },
        }
    }

    fn renew(&mut self, now: u64, r: &Renew) -> Outcome {
        match self.locks.get_mut(&r.name) {
            Some(slot)
                if slot.lease.worker_id == r.holder && slot.lease.fencing_token == r.token =>
            {
                let old = slot.lease.expires_at_ms();
                slot.lease.heartbeat_ms = now;
                if let Some(ttl) = r.ttl_ms {
                    slot.lease.ttl_ms = ttl;
                }
                let lease = slot.lease.clone();
                self.expiries.remove(&(old, r.name.clone()));
                self.expiries
                    .insert((lease.expires_at_ms(), r.name.clone()));
                Outcome::Renewed { lease }
            }
            other => Outcome::NotHolder {
                holder: other.map(|s| s.lease.clone()),
            },
        }
    }

    fn withdraw(&mut self, at: u64, now: u64, w: &Withdraw, settled: &mut Vec<Settled>) -> Outcome {
        let withdrawn = |lease| Outcome::Withdrawn { lease };
        let Some(acquire) = self.requests.get(&w.acquire_id) else {
            // Not arrived (or long forgotten): remembered as withdrawn, so that the acquire, if
            // it still comes, is answered so and never executed.
            let acquire = (RequestKind::Acquire, w.name.as_str(), w.holder.as_str());
            self.remember(&w.acquire_id, acquire, now, withdrawn(None));
            return withdrawn(None);
        };
        if acquire.kind != RequestKind::Acquire
            || acquire.name != w.name
            || acquire.holder != w.holder
        {
            return Outcome::RequestIdReused;
        }
        match acquire.outcome.clone() {
            Outcome::Queued { .. } => {
                if let Some(slot) = self.locks.get_mut(&w.name)
                    && let Some(i) = slot.queue.iter().position(|q| q.request_id == w.acquire_id)
                    && let Some(waiter) = slot.queue.remove(i)
                {
                    self.deadlines
                        .remove(&(waiter.until_ms, w.name.clone(), w.acquire_id.clone()));
                }
                self.settle(now, &w.name, w.acquire_id.clone(), withdrawn(None), settled);
                withdrawn(None)
            }
            // A re-adoption took up a lease the holder had before: not the acquire's to give back.
            Outcome::Granted {
                lease,
                adopted: false,
            } if self.locks.get(&w.name).is_some_and(|slot| {
                slot.lease.worker_id == lease.worker_id
                    && slot.lease.fencing_token == lease.fencing_token
            }) =>
            {
                let live = self.locks[&w.name].lease.clone();
                self.end_held(&live, &w.name, at, now, settled);
                // A late retry of the acquire must not believe it holds the lock.
                if let Some(r) = self.requests.get_mut(&w.acquire_id) {
                    r.outcome = withdrawn(Some(live.clone()));
                }
                withdrawn(Some(live))
            }
            _ => withdrawn(None),
        }
    }

    /// Ends the live lease `lease` of `name` before its time (given back): the next waiter gets
    /// the lock at position `at`.
    fn end_held(
        &mut self,
        lease: &LockRecord,
        name: &str,
        at: u64,
        now: u64,
        settled: &mut Vec<Settled>,
    ) {
        self.expiries
            .remove(&(lease.expires_at_ms(), name.to_string()));
        self.hand_over(name, at, now, settled);
    }

    /// Moves every lease's last renewal `by` later (a new leader's grace).
    fn extend_leases(&mut self, by: u64) {
        if by == 0 {
            return;
        }
        for slot in self.locks.values_mut() {
            slot.lease.heartbeat_ms = slot.lease.heartbeat_ms.saturating_add(by);
        }
        self.expiries = self
            .locks
            .iter()
            .map(|(name, slot)| (slot.lease.expires_at_ms(), name.clone()))
            .collect();
    }

    /// Ends every lease and wait that ended before `now`, in the order they ended. A wait that
    /// ends at the same instant as the lease it waits for ends first: the waiter had given up.
    fn advance(&mut self, index: u64, now: u64, settled: &mut Vec<Settled>) {
        // Each round removes one due lease or wait and adds none that is due (a lease handed over
        // lasts at least until `now`), so the loop ends.
        loop {
            let lease = self.expiries.first().filter(|(at, _)| *at < now).cloned();
            let wait = self.deadlines.first().filter(|(at, ..)| *at < now).cloned();
            match (lease, wait) {
                (None, None) => return,
                (Some(lease), None) => self.end_lease(lease, index, now, settled),
                (Some(lease), Some(wait)) if lease.0 < wait.0 => {
                    self.end_lease(lease, index, now, settled)
                }
                (_, Some(wait)) => self.end_wait(wait, now, settled),
            }
        }
    }

    fn end_lease(
        &mut self,
        expiry: (u64, String),
        index: u64,
        now: u64,
        settled: &mut Vec<Settled>,
    ) {
        self.expiries.remove(&expiry);
        self.hand_over(&expiry.1, index, now, settled);
    }

    fn end_wait(&mut self, deadline: (u64, String, String), now: u64, settled: &mut Vec<Settled>) {
        self.deadlines.remove(&deadline);
        let (_, name, id) = deadline;
        // Every waiter waits for a held lock (see `locks`).
        if let Some(slot) = self.locks.get_mut(&name) {
            slot.queue.retain(|w| w.request_id != id);
            let outcome = Outcome::TimedOut {
                holder: slot.lease.clone(),
            };
            self.settle(now, &name, id, outcome, settled);
        }
    }

    /// The lease of `name` has ended (released or expired; its expiry is already unindexed): the
    /// head of the queue gets a new lease with the command's position as token, or the lock is
    /// free.
    fn hand_over(&mut self, name: &str, index: u64, now: u64, settled: &mut Vec<Settled>) {
        let Some(slot) = self.locks.get_mut(name) else {
            return;
        };
        let Some(next) = slot.queue.pop_front() else {
            self.locks.remove(name);
            return;
        };
        self.deadlines
            .remove(&(next.until_ms, name.to_string(), next.request_id.clone()));
        slot.lease = LockRecord {
            worker_id: next.holder,
            node_id: next.node,
            fencing_token: index,
            claimed_at_ms: now,
            heartbeat_ms: now,
            ttl_ms: next.ttl_ms,
            task_info: next.task_info,
        };
        let lease = slot.lease.clone();
        self.expiries
            .insert((lease.expires_at_ms(), name.to_string()));
        let outcome = Outcome::Granted {
            lease,
            adopted: false,
        };
        self.settle(now, name, next.request_id, outcome, settled);
    }

    /// Gives a waiting request its final answer.
    fn settle(
        &mut self,
        now: u64,
        name: &str,
        id: String,
        outcome: Outcome,
        settled: &mut Vec<Settled>,
    ) {
        if let Some(r) = self.requests.get_mut(&id) {
            r.outcome = outcome.clone();
        }
        self.settled.push_back((now, id.clone()));
        settled.push(Settled {
            request_id: id,
            name: name.to_string(),
            outcome,
        });
    }

    /// Forgets the answers older than the window, and the oldest beyond the memory's size.
    fn forget(&mut self, now: u64) {
        while let Some((at, _)) = self.settled.front() {
            if self.settled.len() <= REQUEST_MEMORY && at.saturating_add(REQUEST_WINDOW_MS) >= now {
                break;
            }
            if let Some((_, id)) = self.settled.pop_front() {
                self.requests.remove(&id);
            }
        }
    }

    /// The state's time: the largest leader stamp applied.
    pub fn clock_ms(&self) -> u64 {
        self.clock_ms
    }

    /// The lock `name` with its queue, if held. Its lease may have ended since the last entry
    /// (judge it with [`LockTable::is_stale`] at the reader's time); it ends in the state with
    /// the next entry.
    pub fn get(&self, name: &str) -> Option<&Slot> {
        self.locks.get(name)
    }

    /// Held locks in name order, starting after `after` (for pagination).
    pub fn iter_after<'a>(
        &'a self,
        after: Option<&str>,
    ) -> impl Iterator<Item = (&'a str, &'a Slot)> + 'a {
        use std::ops::Bound;
        let start = match after {
            Some(a) => Bound::Excluded(a.to_string()),
            None => Bound::Unbounded,
        };
        self.locks
            .range((start, Bound::Unbounded))
            .map(|(k, v)| (k.as_str(), v))
    }

    /// How many locks are held.
    pub fn held(&self) -> usize {
        self.locks.len()
    }

    /// How many acquires are waiting.
    pub fn waiting(&self) -> usize {
        self.deadlines.len()
    }

    /// The answer remembered for a request id: `Queued` while it waits, then its final answer.
    pub fn answer(&self, request_id: &str) -> Option<&Outcome> {
        self.requests.get(request_id).map(|r| &r.outcome)
    }

    /// The earliest leader time at which a lease or a wait will have ended, so that a
    /// [`Command::Tick`] then hands locks over; `None` when nothing is held.
    pub fn next_event_ms(&self) -> Option<u64> {
        let lease = self.expiries.first().map(|(at, _)| *at);
        let wait = self.deadlines.first().map(|(at, ..)| *at);
        lease
            .into_iter()
            .chain(wait)
            .min()
            .map(|at| at.saturating_add(1))
    }

    /// The state as JSON, for a snapshot.
    pub fn to_json(&self) -> serde_json::Result<Vec<u8>> {
        serde_json::to_vec(&StoredRef {
            clock_ms: self.clock_ms,
            term: self.term,
            locks: &self.locks,
            requests: &self.requests,
            settled: &self.settled,
        })
    }

    /// Reads a snapshot written by [`Self::to_json`], rebuilding the indexes and refusing a state
    /// that breaks an invariant (a snapshot is data from disk or from another node).
    pub fn from_json(bytes: &[u8]) -> Result<LockState, String> {
        let stored: Stored = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        let mut state = LockState {
            clock_ms: stored.clock_ms,
            term: stored.term,
            locks: stored.locks,
            expiries: BTreeSet::new(),
            deadlines: BTreeSet::new(),
            requests: stored.requests,
            settled: stored.settled,
        };
        for (name, slot) in &state.locks {
            state
                .expiries
                .insert((slot.lease.expires_at_ms(), name.clone()));
            for w in &slot.queue {
                state
                    .deadlines
                    .insert((w.until_ms, name.clone(), w.request_id.clone()));
            }
        }
        state.check()?;
        Ok(state)
    }

    /// Checks the invariants every state reached by [`Self::apply`] keeps.
    pub fn check(&self) -> Result<(), String> {
        if self.locks.len() > MAX_HELD_LOCKS {
            return Err(format!("{} locks are held", self.locks.len()));
        }
        let mut waiting = 0;
        let mut expiries = BTreeSet::new();
        let mut deadlines = BTreeSet::new();
        for (name, slot) in &self.locks {
            if LockTable::is_stale(&slot.lease, self.clock_ms) {
                return Err(format!("the lease of {name:?} ended but is still held"));
            }
            expiries.insert((slot.lease.expires_at_ms(), name.clone()));
            for w in &slot.queue {
                waiting += 1;
                if w.until_ms < self.clock_ms {
                    return Err(format!("a wait for {name:?} ended but is still queued"));
                }
                if !deadlines.insert((w.until_ms, name.clone(), w.request_id.clone())) {
                    return Err(format!("request {:?} waits twice", w.request_id));
                }
                match self.requests.get(&w.request_id) {
                    Some(Remembered {
                        kind: RequestKind::Acquire,
                        name: n,
                        holder,
                        outcome: Outcome::Queued { .. },
                    }) if n == name && *holder == w.holder => {}
                    _ => {
                        return Err(format!(
                            "waiting request {:?} is not remembered as queued for {name:?}",
                            w.request_id
                        ));
                    }
                }
            }
        }
        if waiting > MAX_WAITERS {
            return Err(format!("{waiting} acquires are waiting"));
        }
        if expiries != self.expiries || deadlines != self.deadlines {
            return Err("the expiry indexes do not match the locks".into());
        }
        let queued = self
            .requests
            .values()
            .filter(|r| matches!(r.outcome, Outcome::Queued { .. }))
            .count();
        if queued != waiting || self.requests.len() != waiting + self.settled.len() {
            return Err("remembered requests do not match the waiters and settled answers".into());
        }
        let mut last = 0;
        let mut ids = BTreeSet::new();
        for (at, id) in &self.settled {
            if !ids.insert(id) {
                return Err(format!("request {id:?} is settled twice"));
            }
            if *at < last || *at > self.clock_ms {
                return Err("settled answers are out of order".into());
            }
            last = *at;
            match self.requests.get(id) {
                Some(r) if !matches!(r.outcome, Outcome::Queued { .. }) => {}
                _ => return Err(format!("settled request {id:?} is not remembered")),
            }
        }
        Ok(())
    }
}

/// [`Stored`] by reference, so writing a snapshot does not copy the state.
#[derive(Serialize)]
struct StoredRef<'a> {
    clock_ms: u64,
    term: u64,
    locks: &'a BTreeMap<String, Slot>,
    requests: &'a BTreeMap<String, Remembered>,
    settled: &'a VecDeque<(u64, String)>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    const TTL: u64 = 1_000;

    fn acquire(id: &str, name: &str, holder: &str, ttl_ms: u64, wait_ms: u64) -> Command {
        Command::Acquire(Acquire {
            request_id: id.into(),
            name: name.into(),
            holder: holder.into(),
            node: format!("node-of-{holder}"),
            ttl_ms,
            wait_ms,
            readopt: false,
            task_info: TaskInfo::default(),
        })
    }

    fn release(id: &str, name: &str, holder: &str, token: u64) -> Command {
        Command::Release(Release {
            request_id: id.into(),
            name: name.into(),
            holder: holder.into(),
            token,
        })
    }

    fn renew(id: &str, name: &str, holder: &str, token: u64) -> Command {
        Command::Renew(Renew {
            request_id: id.into(),
            name: name.into(),
            holder: holder.into(),
            token,
            ttl_ms: None,
        })
    }

    /// The token a grant by the first command of the entry at `index` gets.
    fn t(index: u64) -> u64 {
        position(index, 0)
    }

    /// Applies an entry of the one proposal `p` at log `index`.
    fn one(s: &mut LockState, index: u64, term: u64, p: &Proposal) -> Applied {
        let mut applied = s.apply(index, term, &Batch(vec![p.clone()]));
        assert_eq!(applied.len(), 1);
        applied.remove(0)
    }

    /// Applies `command` at log `index` and leader time `at_ms`, checking the invariants.
    fn step(s: &mut LockState, index: u64, at_ms: u64, command: Command) -> Applied {
        let applied = one(s, index, 1, &Proposal { at_ms, command });
        assert_eq!(s.check(), Ok(()), "after entry {index}");
        applied
    }

    fn outcome(a: Applied) -> Outcome {
        a.outcome.expect("an answer")
    }

    fn granted(o: Outcome) -> LockRecord {
        match o {
            Outcome::Granted { lease, .. } => lease,
            other => panic!("expected a grant, got {other:?}"),
        }
    }

    #[test]
    fn a_free_lock_is_granted_with_the_commands_position_as_token() {
        let mut s = LockState::default();
        let lease = granted(outcome(step(
            &mut s,
            7,
            1_000,
            acquire("r1", "a", "w1", TTL, 0),
        )));
        assert_eq!(lease.fencing_token, t(7));
        assert_eq!((lease.claimed_at_ms, lease.heartbeat_ms), (1_000, 1_000));
        assert_eq!(lease.expires_at_ms(), 2_000);
        assert_eq!(
            (lease.worker_id.as_str(), lease.node_id.as_str()),
            ("w1", "node-of-w1")
        );
        assert_eq!(s.held(), 1);
        assert_eq!(s.get("a").map(|s| &s.lease), Some(&lease));
        // Someone else is told who holds it; the holder itself too, without re-adoption.
        for (id, who) in [("r2", "w2"), ("r3", "w1")] {
            assert_eq!(
                outcome(step(&mut s, 8, 1_100, acquire(id, "a", who, TTL, 0))),
                Outcome::Held {
                    holder: lease.clone()
                }
            );
        }
    }

    #[test]
    fn one_entry_of_many_commands_gives_each_grant_its_own_token() {
        let mut s = LockState::default();
        step(&mut s, 1, 0, acquire("r1", "a", "w1", TTL, 0));
        let p = |command| Proposal { at_ms: 10, command };
        // Release of w1, a grant to w2 and a waiter w3, then w2 (who cannot know its token yet)
        // and w3 again: all in entry 2.
        let applied = s.apply(
            2,
            1,
            &Batch(vec![
                p(release("r2", "a", "w1", t(1))),
                p(acquire("r3", "a", "w2", TTL, 0)),
                p(acquire("r4", "a", "w3", TTL, 5_000)),
                p(release("r5", "a", "w2", position(2, 1))),
                p(acquire("r6", "b", "w3", TTL, 0)),
            ]),
        );
        assert_eq!(s.check(), Ok(()));
        let outcomes: Vec<Outcome> = applied.into_iter().map(outcome).collect();
        assert!(matches!(outcomes[0], Outcome::Released { .. }));
        assert_eq!(granted(outcomes[1].clone()).fencing_token, position(2, 1));
        assert_eq!(outcomes[2], Outcome::Queued { position: 1 });
        assert!(matches!(outcomes[3], Outcome::NotHolder { .. }));
        assert_eq!(granted(outcomes[4].clone()).fencing_token, position(2, 4));
        // The waiter is handed the lock by entry 3 with a larger token than w2's.
        let a = step(&mut s, 3, 20, release("r7", "a", "w2", position(2, 1)));
        assert_eq!(granted(a.settled[0].outcome.clone()).fencing_token, t(3));
        // An entry longer than the positions an index spans answers only the first ones.
        let long = Batch(vec![p(Command::Tick); POSITIONS_PER_ENTRY as usize + 5]);
        assert_eq!(s.apply(4, 1, &long).len(), POSITIONS_PER_ENTRY as usize);
        assert!(MAX_BATCH < POSITIONS_PER_ENTRY as usize);
    }

    fn withdraw(id: &str, name: &str, holder: &str, acquire_id: &str) -> Command {
        Command::Withdraw(Withdraw {
            request_id: id.into(),
            name: name.into(),
            holder: holder.into(),
            acquire_id: acquire_id.into(),
        })
    }

    #[test]
    fn a_withdrawn_acquire_leaves_the_queue_gives_back_its_grant_or_never_runs() {
        let mut s = LockState::default();
        let first = granted(outcome(step(
            &mut s,
            1,
            0,
            acquire("r1", "a", "w1", TTL, 0),
        )));
        step(&mut s, 2, 0, acquire("r2", "a", "w2", TTL, 5_000));
        step(&mut s, 3, 0, acquire("r3", "a", "w3", TTL, 5_000));
        // A waiter gives up: out of the queue, its request answered as withdrawn.
        let a = step(&mut s, 4, 10, withdraw("w1x", "a", "w2", "r2"));
        assert_eq!(a.outcome, Some(Outcome::Withdrawn { lease: None }));
        assert_eq!(a.settled[0].request_id, "r2");
        assert_eq!(s.answer("r2"), Some(&Outcome::Withdrawn { lease: None }));
        assert_eq!(s.waiting(), 1);
        // Only the acquire's own holder may take it back.
        let a = step(&mut s, 5, 10, withdraw("w2x", "a", "w3", "r1"));
        assert_eq!(a.outcome, Some(Outcome::RequestIdReused));
        // The holder gives up after its grant: released, and the next waiter gets the lock.
        let a = step(&mut s, 6, 20, withdraw("w3x", "a", "w1", "r1"));
        assert_eq!(
            a.outcome,
            Some(Outcome::Withdrawn {
                lease: Some(first.clone())
            })
        );
        let next = granted(a.settled[0].outcome.clone());
        assert_eq!((next.worker_id.as_str(), next.fencing_token), ("w3", t(6)));
        // A retry of the taken-back acquire does not believe it holds the lock.
        assert!(matches!(
            outcome(step(&mut s, 7, 30, acquire("r1", "a", "w1", TTL, 0))),
            Outcome::Withdrawn { lease: Some(_) }
        ));
        // Taken back before it arrived: the acquire is never executed.
        step(&mut s, 8, 40, withdraw("w4x", "b", "w1", "r9"));
        assert_eq!(
            outcome(step(&mut s, 9, 50, acquire("r9", "b", "w1", TTL, 0))),
            Outcome::Withdrawn { lease: None }
        );
        assert!(s.get("b").is_none());
    }

    #[test]
    fn waiters_get_the_lock_in_arrival_order_with_new_tokens() {
        let mut s = LockState::default();
        let first = granted(outcome(step(
            &mut s,
            1,
            0,
            acquire("r1", "a", "w1", TTL, 0),
        )));
        assert_eq!(
            outcome(step(&mut s, 2, 10, acquire("r2", "a", "w2", TTL, 5_000))),
            Outcome::Queued { position: 1 }
        );
        assert_eq!(
            outcome(step(&mut s, 3, 20, acquire("r3", "a", "w3", TTL, 5_000))),
            Outcome::Queued { position: 2 }
        );
        assert_eq!(s.waiting(), 2);
        let a = step(&mut s, 4, 30, release("r4", "a", "w1", first.fencing_token));
        assert_eq!(a.outcome, Some(Outcome::Released { lease: first }));
        assert_eq!(a.settled.len(), 1);
        assert_eq!(a.settled[0].request_id, "r2");
        let second = granted(a.settled[0].outcome.clone());
        assert_eq!(
            (second.worker_id.as_str(), second.fencing_token),
            ("w2", t(4))
        );
        assert_eq!(second.heartbeat_ms, 30);
        // The waiter's request now answers with its grant.
        assert_eq!(s.answer("r2"), Some(&a.settled[0].outcome));
        let a = step(&mut s, 5, 40, release("r5", "a", "w2", t(4)));
        assert_eq!(granted(a.settled[0].outcome.clone()).fencing_token, t(5));
        assert_eq!(s.get("a").unwrap().lease.worker_id, "w3");
        assert_eq!(s.waiting(), 0);
        step(&mut s, 6, 50, release("r6", "a", "w3", t(5)));
        assert_eq!(s.held(), 0);
        assert_eq!(s.next_event_ms(), None);
    }

    #[test]
    fn a_lease_ends_exactly_at_its_ttl_and_the_next_waiter_gets_it() {
        let mut s = LockState::default();
        granted(outcome(step(
            &mut s,
            1,
            1_000,
            acquire("r1", "a", "w1", 500, 0),
        )));
        step(&mut s, 2, 1_000, acquire("r2", "a", "w2", TTL, 60_000));
        assert_eq!(s.next_event_ms(), Some(1_501));
        // At 1_500 the lease is still live: a renewal works and nobody is handed the lock...
        let mut live = s.clone();
        assert!(matches!(
            outcome(step(&mut live, 3, 1_500, renew("r3", "a", "w1", t(1)))),
            Outcome::Renewed { .. }
        ));
        let a = step(&mut s, 3, 1_500, Command::Tick);
        assert_eq!(a, Applied::default());
        assert_eq!(s.get("a").unwrap().lease.worker_id, "w1");
        // ...one millisecond later it has ended and the waiter holds a fresh lease.
        let a = step(&mut s, 4, 1_501, Command::Tick);
        assert_eq!(a.outcome, None);
        let lease = granted(a.settled[0].outcome.clone());
        assert_eq!(
            (lease.worker_id.as_str(), lease.fencing_token),
            ("w2", t(4))
        );
        assert_eq!(lease.heartbeat_ms, 1_501);
        // The former holder can neither renew nor release it.
        assert!(matches!(
            outcome(step(&mut s, 5, 1_502, renew("r5", "a", "w1", t(1)))),
            Outcome::NotHolder { holder: Some(h) } if h.worker_id == "w2"
        ));
        assert!(matches!(
            outcome(step(&mut s, 6, 1_502, release("r6", "a", "w1", t(1)))),
            Outcome::NotHolder { .. }
        ));
    }

    #[test]
    fn a_late_entry_ends_leases_and_waits_in_the_order_they_ended() {
        // Lease ends after 1_100; the first waiter gives up after 1_050, the second after 5_000.
        let mut s = LockState::default();
        step(&mut s, 1, 1_000, acquire("r1", "a", "w1", 100, 0));
        step(&mut s, 2, 1_000, acquire("r2", "a", "w2", TTL, 50));
        step(&mut s, 3, 1_000, acquire("r3", "a", "w3", TTL, 4_000));
        // No entry until much later: the first waiter had given up before the lease ended, the
        // second was still waiting, so it holds the lock from the entry's time.
        let a = step(&mut s, 4, 3_000, Command::Tick);
        assert_eq!(a.settled.len(), 2);
        assert_eq!(a.settled[0].request_id, "r2");
        assert!(matches!(a.settled[0].outcome, Outcome::TimedOut { .. }));
        assert_eq!(a.settled[1].request_id, "r3");
        let lease = granted(a.settled[1].outcome.clone());
        assert_eq!((lease.heartbeat_ms, lease.fencing_token), (3_000, t(4)));
    }

    #[test]
    fn a_wait_ends_at_its_deadline_and_loses_a_tie_with_the_lease() {
        let mut s = LockState::default();
        step(&mut s, 1, 0, acquire("r1", "a", "w1", 1_000, 0));
        step(&mut s, 2, 0, acquire("r2", "a", "w2", TTL, 1_000));
        step(&mut s, 3, 500, acquire("r3", "a", "w3", TTL, 10));
        assert_eq!(s.next_event_ms(), Some(511));
        assert!(step(&mut s, 4, 510, Command::Tick).settled.is_empty());
        let a = step(&mut s, 5, 511, Command::Tick);
        assert_eq!(a.settled[0].request_id, "r3");
        assert_eq!(
            a.settled[0].outcome,
            Outcome::TimedOut {
                holder: s.get("a").unwrap().lease.clone()
            }
        );
        assert_eq!(s.answer("r3"), Some(&a.settled[0].outcome));
        // w2 waits up to and including 1_000, the lease is live up to and including 1_000: at
        // 1_001 both have ended, and the waiter had given up.
        let a = step(&mut s, 6, 1_001, Command::Tick);
        assert_eq!(a.settled.len(), 1);
        assert!(matches!(a.settled[0].outcome, Outcome::TimedOut { .. }));
        assert_eq!(s.held(), 0);
    }

    #[test]
    fn a_retried_request_gets_its_first_answer_and_never_a_second_grant() {
        let mut s = LockState::default();
        let first = outcome(step(&mut s, 1, 0, acquire("r1", "a", "w1", TTL, 0)));
        let before = s.clone();
        assert_eq!(
            outcome(step(&mut s, 2, 10, acquire("r1", "a", "w1", TTL, 0))),
            first
        );
        let mut expected = before;
        one(
            &mut expected,
            2,
            1,
            &Proposal {
                at_ms: 10,
                command: Command::Tick,
            },
        );
        assert_eq!(s, expected, "a retry changes nothing");
        // A waiter's retry says it is queued, and after the hand-over it says granted.
        step(&mut s, 3, 20, acquire("r2", "a", "w2", TTL, 5_000));
        assert_eq!(
            outcome(step(&mut s, 4, 30, acquire("r2", "a", "w2", TTL, 5_000))),
            Outcome::Queued { position: 1 }
        );
        assert_eq!(s.waiting(), 1);
        let grant = step(&mut s, 5, 40, release("r3", "a", "w1", t(1))).settled[0]
            .outcome
            .clone();
        assert_eq!(
            outcome(step(&mut s, 6, 50, acquire("r2", "a", "w2", TTL, 5_000))),
            grant
        );
        // A release retried after the lock changed hands still says released.
        assert!(matches!(
            outcome(step(&mut s, 7, 60, release("r3", "a", "w1", t(1)))),
            Outcome::Released { .. }
        ));
        // The same id for another request is refused and not remembered for it.
        assert_eq!(
            outcome(step(&mut s, 8, 70, acquire("r3", "a", "w1", TTL, 0))),
            Outcome::RequestIdReused
        );
        assert_eq!(
            outcome(step(&mut s, 9, 70, acquire("r1", "b", "w1", TTL, 0))),
            Outcome::RequestIdReused
        );
        assert_eq!(
            outcome(step(&mut s, 9, 70, acquire("r1", "a", "w2", TTL, 0))),
            Outcome::RequestIdReused
        );
        assert!(s.get("b").is_none());
    }

    #[test]
    fn answers_are_forgotten_after_the_window() {
        let mut s = LockState::default();
        step(&mut s, 1, 0, acquire("r1", "a", "w1", TTL, 0));
        step(&mut s, 2, REQUEST_WINDOW_MS, Command::Tick);
        assert!(s.answer("r1").is_some());
        step(&mut s, 3, REQUEST_WINDOW_MS + 1, Command::Tick);
        assert_eq!(s.answer("r1"), None);
        // Now the id is new again.
        assert!(matches!(
            outcome(step(
                &mut s,
                4,
                REQUEST_WINDOW_MS + 2,
                acquire("r1", "a", "w1", TTL, 0)
            )),
            Outcome::Granted { .. }
        ));
    }

    #[test]
    fn release_and_renew_need_the_holder_and_its_token() {
        let mut s = LockState::default();
        step(&mut s, 3, 0, acquire("r1", "a", "w1", TTL, 0));
        for (id, holder, token) in [("r2", "w2", t(3)), ("r3", "w1", t(2)), ("r4", "w1", t(4))] {
            assert!(matches!(
                outcome(step(&mut s, 4, 10, release(id, "a", holder, token))),
                Outcome::NotHolder { holder: Some(_) }
            ));
            assert!(matches!(
                outcome(step(
                    &mut s,
                    4,
                    10,
                    renew(&format!("{id}x"), "a", holder, token)
                )),
                Outcome::NotHolder { holder: Some(_) }
            ));
        }
        assert_eq!(
            outcome(step(&mut s, 5, 10, release("r5", "b", "w1", t(3)))),
            Outcome::NotHolder { holder: None }
        );
        let renewed = outcome(step(&mut s, 6, 600, renew("r6", "a", "w1", t(3))));
        assert!(
            matches!(renewed, Outcome::Renewed { lease } if lease.heartbeat_ms == 600 && lease.expires_at_ms() == 1_600)
        );
        assert!(matches!(
            outcome(step(&mut s, 7, 1_600, release("r7", "a", "w1", t(3)))),
            Outcome::Released { .. }
        ));
        assert_eq!(s.held(), 0);
    }

    #[test]
    fn a_grant_cannot_be_released_by_the_entry_that_made_it() {
        // The waiter w2 is granted by entry 9 (the lease of w1 ended). A release in that same
        // entry naming that grant's token was proposed before the grant existed: refused, so the
        // next waiter can never be granted the same token as well.
        let mut s = LockState::default();
        step(&mut s, 1, 0, acquire("r1", "a", "w1", 10, 0));
        step(&mut s, 2, 0, acquire("r2", "a", "w2", TTL, 5_000));
        step(&mut s, 3, 0, acquire("r3", "a", "w3", TTL, 5_000));
        let a = step(&mut s, 9, 100, release("r4", "a", "w2", t(9)));
        assert!(matches!(a.outcome, Some(Outcome::NotHolder { .. })));
        assert_eq!(granted(a.settled[0].outcome.clone()).fencing_token, t(9));
        assert_eq!(s.get("a").unwrap().lease.worker_id, "w2");
    }

    #[test]
    fn re_adoption_renews_the_own_lease_with_the_same_token() {
        let mut s = LockState::default();
        step(&mut s, 1, 0, acquire("r1", "a", "w1", TTL, 0));
        let mut again = Acquire {
            request_id: "r2".into(),
            name: "a".into(),
            holder: "w1".into(),
            node: "elsewhere".into(),
            ttl_ms: 5_000,
            wait_ms: 0,
            readopt: true,
            task_info: TaskInfo {
                priority: Some("high".into()),
                ..TaskInfo::default()
            },
        };
        match outcome(step(&mut s, 2, 500, Command::Acquire(again.clone()))) {
            Outcome::Granted { lease, adopted } => {
                assert!(adopted);
                assert_eq!(lease.fencing_token, t(1));
                assert_eq!(
                    (lease.claimed_at_ms, lease.heartbeat_ms, lease.ttl_ms),
                    (0, 500, 5_000)
                );
                assert_eq!(lease.node_id, "elsewhere");
                assert_eq!(lease.task_info.priority.as_deref(), Some("high"));
            }
            other => panic!("{other:?}"),
        }
        // Someone else's readopt is a plain acquire.
        again.request_id = "r3".into();
        again.holder = "w2".into();
        assert!(matches!(
            outcome(step(&mut s, 3, 600, Command::Acquire(again))),
            Outcome::Held { .. }
        ));
    }

    #[test]
    fn a_new_leader_extends_leases_by_the_election_within_the_grace() {
        let mut s = LockState::default();
        one(
            &mut s,
            1,
            1,
            &Proposal {
                at_ms: 1_000,
                command: acquire("r1", "a", "w1", 500, 0),
            },
        );
        one(
            &mut s,
            2,
            1,
            &Proposal {
                at_ms: 1_000,
                command: acquire("r2", "b", "w1", 60_000, 0),
            },
        );
        // The leader dies; a new one's first command comes 800 ms after the last: without the
        // grace, lock "a" (live up to 1_500) would end at once.
        let a = one(
            &mut s,
            3,
            2,
            &Proposal {
                at_ms: 1_800,
                command: Command::Tick,
            },
        );
        assert!(a.settled.is_empty());
        assert_eq!(s.get("a").unwrap().lease.expires_at_ms(), 2_300);
        assert_eq!(s.get("b").unwrap().lease.expires_at_ms(), 61_800);
        assert_eq!(s.check(), Ok(()));
        // The same term again extends nothing; a long quiet time extends by the grace only.
        one(
            &mut s,
            4,
            2,
            &Proposal {
                at_ms: 2_000,
                command: Command::Tick,
            },
        );
        assert_eq!(s.get("b").unwrap().lease.expires_at_ms(), 61_800);
        one(
            &mut s,
            5,
            3,
            &Proposal {
                at_ms: 30_000,
                command: Command::Tick,
            },
        );
        assert!(s.get("a").is_none());
        assert_eq!(
            s.get("b").unwrap().lease.expires_at_ms(),
            61_800 + LEADER_CHANGE_GRACE_MS
        );
        // A new leader whose clock is behind extends nothing.
        one(
            &mut s,
            6,
            4,
            &Proposal {
                at_ms: 10,
                command: Command::Tick,
            },
        );
        assert_eq!(
            s.get("b").unwrap().lease.expires_at_ms(),
            61_800 + LEADER_CHANGE_GRACE_MS
        );
        assert_eq!(LockState::from_json(&s.to_json().unwrap()).unwrap(), s);
    }

    #[test]
    fn time_never_goes_backwards() {
        let mut s = LockState::default();
        step(&mut s, 1, 5_000, acquire("r1", "a", "w1", TTL, 0));
        // A new leader whose clock is behind: its stamps count as the state's time.
        let lease = match outcome(step(&mut s, 2, 10, renew("r2", "a", "w1", t(1)))) {
            Outcome::Renewed { lease } => lease,
            other => panic!("{other:?}"),
        };
        assert_eq!(lease.heartbeat_ms, 5_000);
        assert_eq!(s.clock_ms(), 5_000);
    }

    #[test]
    fn limits_refuse_without_changing_anything() {
        let mut s = LockState::default();
        for i in 0..MAX_HELD_LOCKS {
            one(
                &mut s,
                1 + i as u64,
                1,
                &Proposal {
                    at_ms: 0,
                    command: acquire(&format!("r{i}"), &format!("lock-{i}"), "w", TTL, 0),
                },
            );
        }
        assert_eq!(s.held(), MAX_HELD_LOCKS);
        let before = s.clone();
        let refused = one(
            &mut s,
            u64::MAX,
            1,
            &Proposal {
                at_ms: 0,
                command: acquire("over", "one-more", "w", TTL, 0),
            },
        );
        assert_eq!(
            refused.outcome,
            Some(Outcome::Refused {
                limit: Limit::HeldLocks
            })
        );
        assert_eq!(s.held(), before.held());
        assert!(s.get("one-more").is_none());
        // Held locks can still be waited for.
        assert!(matches!(
            one(
                &mut s,
                u64::MAX,
                1,
                &Proposal {
                    at_ms: 0,
                    command: acquire("w", "lock-0", "w2", TTL, 10)
                }
            )
            .outcome,
            Some(Outcome::Queued { .. })
        ));
    }

    #[test]
    fn snapshots_round_trip_and_bad_ones_are_refused() {
        let mut s = LockState::default();
        step(&mut s, 1, 0, acquire("r1", "a", "w1", TTL, 0));
        step(&mut s, 2, 0, acquire("r2", "a", "w2", TTL, 500));
        step(&mut s, 3, 0, acquire("r3", "b", "w1", TTL, 0));
        let json = s.to_json().unwrap();
        assert_eq!(LockState::from_json(&json).unwrap(), s);

        let mut v: serde_json::Value = serde_json::from_slice(&json).unwrap();
        v["clock_ms"] = 5_000.into();
        let stale = serde_json::to_vec(&v).unwrap();
        assert!(LockState::from_json(&stale).unwrap_err().contains("ended"));

        let mut v: serde_json::Value = serde_json::from_slice(&json).unwrap();
        v["requests"].as_object_mut().unwrap().remove("r2");
        let orphan = serde_json::to_vec(&v).unwrap();
        assert!(LockState::from_json(&orphan).unwrap_err().contains("r2"));

        assert!(LockState::from_json(b"{\"clock_ms\": -1}").is_err());
        assert!(LockState::from_json(b"").is_err());
    }

    #[test]
    fn the_log_encoding_is_stable() {
        // Entries already in a log must keep reading back: pin the encoding.
        let p = Proposal {
            at_ms: 1_761_859_800_000,
            command: acquire("r1", "build-42", "w1", 30_000, 5_000),
        };
        let json = serde_json::to_string(&p).unwrap();
        assert_eq!(
            json,
            r#"{"at_ms":1761859800000,"command":{"op":"acquire","request_id":"r1","name":"build-42","holder":"w1","node":"node-of-w1","ttl_ms":30000,"wait_ms":5000,"readopt":false}}"#
        );
        assert_eq!(serde_json::from_str::<Proposal>(&json).unwrap(), p);
        // An entry is the list of its proposals.
        let batch = serde_json::to_string(&Batch(vec![p.clone(), p.clone()])).unwrap();
        assert_eq!(batch, format!("[{json},{json}]"));
        let tick = r#"{"at_ms":5,"command":{"op":"tick"}}"#;
        assert_eq!(
            serde_json::from_str::<Proposal>(tick).unwrap().command,
            Command::Tick
        );
    }

    /// Compares `actual` with the file `testdata/NAME` beside this crate, or writes it when
    /// `SENTINEL_BLESS` is set.
    fn golden(name: &str, actual: &str) {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("testdata")
            .join(name);
        if std::env::var_os("SENTINEL_BLESS").is_some() {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, actual).unwrap();
        }
        let expected = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{}: {e} (SENTINEL_BLESS=1 writes it)", path.display()));
        assert_eq!(
            actual,
            expected,
            "{} changed: entries in logs, snapshots on disk and answers to clients must keep reading back",
            path.display()
        );
    }

    #[test]
    fn entries_snapshots_and_answers_keep_their_encoding() {
        // Every command, every answer and every stored field, through one history. The files are
        // what logs and snapshots already on disk hold: a change to them breaks a running cluster.
        let info = TaskInfo {
            complexity: Some(3),
            estimated_duration: Some("45min".into()),
            task_type: Some("bug-fix".into()),
            priority: Some("high".into()),
        };
        let mut with_info = acquire("r1", "a", "w1", TTL, 0);
        if let Command::Acquire(a) = &mut with_info {
            a.task_info = info.clone();
        }
        let mut waiting = acquire("r2", "a", "w2", TTL, 5_000);
        if let Command::Acquire(a) = &mut waiting {
            a.task_info = info;
            a.readopt = true;
        }
        let mut renew_ttl = renew("r5", "a", "w1", t(1));
        if let Command::Renew(r) = &mut renew_ttl {
            r.ttl_ms = Some(2 * TTL);
        }
        let entries: Vec<(u64, Vec<Command>)> = vec![
            (1_000, vec![with_info]),
            (
                1_100,
                vec![
                    waiting,
                    acquire("r3", "a", "w3", TTL, 100),
                    acquire("r4", "a", "w4", TTL, 0),
                    renew_ttl,
                    release("r6", "a", "w9", t(1)),
                    release("r1", "a", "w1", t(1)),
                    acquire("r7", "b", "w1", TTL, 0),
                ],
            ),
            (1_300, vec![Command::Tick]),
            (1_400, vec![withdraw("r8", "b", "w1", "r7")]),
            (1_500, vec![withdraw("r9", "c", "w5", "r10")]),
            (1_600, vec![acquire("r10", "c", "w5", TTL, 0)]),
            (1_700, vec![release("r11", "a", "w1", t(1))]),
        ];
        let mut s = LockState::default();
        let mut log = String::new();
        let mut answers = String::new();
        for (i, (at_ms, commands)) in entries.into_iter().enumerate() {
            let index = i as u64 + 1;
            let batch = Batch(
                commands
                    .into_iter()
                    .map(|command| Proposal { at_ms, command })
                    .collect(),
            );
            log += &serde_json::to_string(&batch).unwrap();
            log.push('\n');
            let applied = s.apply(index, 1, &batch);
            assert_eq!(s.check(), Ok(()));
            let outcomes: Vec<Option<Outcome>> =
                applied.iter().map(|a| a.outcome.clone()).collect();
            answers += &serde_json::to_string(&outcomes).unwrap();
            answers.push('\n');
            for settled in applied.iter().flat_map(|a| &a.settled) {
                answers += &serde_json::to_string(settled).unwrap();
                answers.push('\n');
            }
            if index == 2 {
                let snapshot = String::from_utf8(s.to_json().unwrap()).unwrap();
                assert_eq!(LockState::from_json(snapshot.as_bytes()).unwrap(), s);
                golden("snapshot.json", &(snapshot + "\n"));
            }
        }
        for o in [
            Outcome::Refused {
                limit: Limit::HeldLocks,
            },
            Outcome::Refused {
                limit: Limit::Waiters,
            },
        ] {
            answers += &serde_json::to_string(&o).unwrap();
            answers.push('\n');
        }
        golden("log.jsonl", &log);
        golden("answers.jsonl", &answers);
        for line in log.lines() {
            let batch: Batch = serde_json::from_str(line).unwrap();
            assert_eq!(serde_json::to_string(&batch).unwrap(), line);
        }
    }

    /// One generated step: (kind, name, holder, time step, raw number, wait, readopt, token
    /// choice, whether it joins the previous step's entry).
    type Step = (u8, usize, usize, u8, u64, u8, bool, u8, bool);

    fn steps() -> impl Strategy<Value = Vec<Step>> {
        prop::collection::vec(
            (
                0u8..13,
                0usize..3,
                0usize..4,
                0u8..30,
                any::<u64>(),
                0u8..4,
                any::<bool>(),
                0u8..8,
                any::<bool>(),
            ),
            1..200,
        )
    }

    /// What the clients have been told, checked against the state after every entry.
    #[derive(Default)]
    struct Model {
        /// (holder, name) -> (token, last live instant) of the lease the holder was told it has.
        beliefs: HashMap<(String, String), (u64, u64)>,
        /// Last token granted per name.
        tokens: HashMap<String, u64>,
        /// Request ids waiting per name, in arrival order.
        queues: HashMap<String, VecDeque<String>>,
    }

    impl Model {
        fn grant(&mut self, at: u64, name: &str, lease: &LockRecord, adopted: bool, ctx: &str) {
            if !adopted {
                assert_eq!(
                    lease.fencing_token, at,
                    "token is the command's position: {ctx}"
                );
                let last = self.tokens.insert(name.to_string(), at).unwrap_or(0);
                assert!(at > last, "tokens strictly increase per lock: {ctx}");
            }
            self.believe(name, lease);
        }

        fn believe(&mut self, name: &str, lease: &LockRecord) {
            self.beliefs.insert(
                (lease.worker_id.clone(), name.to_string()),
                (lease.fencing_token, lease.expires_at_ms()),
            );
        }

        fn forget(&mut self, name: &str, lease: &LockRecord) {
            let key = (lease.worker_id.clone(), name.to_string());
            if self.beliefs.get(&key).map(|b| b.0) == Some(lease.fencing_token) {
                self.beliefs.remove(&key);
            }
        }

        /// The waiting request `id` was settled.
        fn settle(&mut self, index: u64, s: &Settled, ctx: &str) {
            let queue = self.queues.entry(s.name.clone()).or_default();
            match &s.outcome {
                Outcome::Granted { lease, adopted } => {
                    assert_eq!(
                        queue.pop_front().as_ref(),
                        Some(&s.request_id),
                        "FIFO: {ctx}"
                    );
                    self.grant(index, &s.name, lease, *adopted, ctx);
                }
                Outcome::TimedOut { .. } | Outcome::Withdrawn { lease: None } => {
                    let before = queue.len();
                    queue.retain(|id| id != &s.request_id);
                    assert_eq!(queue.len() + 1, before, "{ctx}");
                }
                other => panic!("settled as {other:?}: {ctx}"),
            }
        }

        /// The answer to a request that was executed (not a remembered retry).
        fn answer(&mut self, index: u64, cmd: &Command, o: &Outcome, ctx: &str) {
            match (cmd, o) {
                (Command::Acquire(a), Outcome::Granted { lease, adopted }) => {
                    assert_eq!(lease.worker_id, a.holder, "{ctx}");
                    if !adopted {
                        let queue = self.queues.entry(a.name.clone()).or_default();
                        assert!(queue.is_empty(), "granted past waiters: {ctx}");
                    }
                    self.grant(index, &a.name, lease, *adopted, ctx);
                }
                (Command::Acquire(a), Outcome::Queued { position }) => {
                    let queue = self.queues.entry(a.name.clone()).or_default();
                    queue.push_back(a.request_id.clone());
                    assert_eq!(*position, queue.len(), "{ctx}");
                }
                (Command::Acquire(a), Outcome::Held { holder }) => {
                    assert!(a.wait_ms == 0, "{ctx}");
                    assert!(!(a.readopt && holder.worker_id == a.holder), "{ctx}");
                }
                (Command::Release(r), Outcome::Released { lease }) => {
                    assert_eq!(
                        (&lease.worker_id, lease.fencing_token),
                        (&r.holder, r.token),
                        "{ctx}"
                    );
                    self.forget(&r.name, lease);
                }
                (Command::Renew(r), Outcome::Renewed { lease }) => {
                    assert_eq!(
                        (&lease.worker_id, lease.fencing_token),
                        (&r.holder, r.token),
                        "{ctx}"
                    );
                    if let Some(ttl) = r.ttl_ms {
                        assert_eq!(lease.ttl_ms, ttl, "{ctx}");
                    }
                    self.believe(&r.name, lease);
                }
                (Command::Release(_) | Command::Renew(_), Outcome::NotHolder { .. }) => {}
                (Command::Withdraw(w), Outcome::Withdrawn { lease }) => {
                    if let Some(lease) = lease {
                        assert_eq!(lease.worker_id, w.holder, "{ctx}");
                        self.forget(&w.name, lease);
                    }
                }
                // An acquire taken back before it arrived.
                (Command::Acquire(_), Outcome::Withdrawn { lease: None }) => {}
                (Command::Withdraw(_), Outcome::RequestIdReused) => {}
                (_, Outcome::Refused { .. }) => {}
                _ => panic!("answer does not fit the command: {ctx}"),
            }
        }

        /// Every lease a client was told it holds, and is still live at `now`, is exactly the
        /// lease the state holds, and the other way round: no lease ends before its TTL or
        /// outlives it, and no two clients ever hold one lock.
        fn check(&mut self, s: &LockState, ctx: &str) {
            let now = s.clock_ms();
            self.beliefs.retain(|_, (_, until)| *until >= now);
            for ((holder, name), (token, until)) in &self.beliefs {
                let lease = &s
                    .get(name)
                    .unwrap_or_else(|| panic!("{name} ended early: {ctx}"))
                    .lease;
                assert_eq!(
                    (&lease.worker_id, lease.fencing_token, lease.expires_at_ms()),
                    (holder, *token, *until),
                    "{ctx}"
                );
            }
            for (name, slot) in s.iter_after(None) {
                let key = (slot.lease.worker_id.clone(), name.to_string());
                assert!(
                    self.beliefs.contains_key(&key),
                    "a lease nobody was told of: {ctx}"
                );
                assert!(!LockTable::is_stale(&slot.lease, now), "{ctx}");
                let ids: Vec<&String> = slot.queue.iter().map(|w| &w.request_id).collect();
                let model: Vec<&String> = self
                    .queues
                    .get(name)
                    .map(|q| q.iter().collect())
                    .unwrap_or_default();
                assert_eq!(ids, model, "queue order: {ctx}");
            }
        }
    }

    /// Entries as applied: (index, term, batch).
    type Log = Vec<(u64, u64, Batch)>;

    /// Runs generated steps as clients would, packing runs of steps into entries as a leader
    /// does: the tokens a client names come from the answers it got before the entry. Returns the
    /// log that was applied and every entry's results, checking the model after each entry.
    fn run(steps: &[Step]) -> (LockState, Log, Vec<Vec<Applied>>) {
        const NAMES: [&str; 3] = ["alpha", "beta", "gamma"];
        const HOLDERS: [&str; 4] = ["w1", "w2", "w3", "w4"];
        const MOST_PER_ENTRY: usize = 6;
        let mut s = LockState::default();
        let mut model = Model::default();
        let mut at: u64 = 1_000_000;
        let (mut term, mut applied_term) = (1, 0);
        let mut log = Vec::new();
        let mut results = Vec::new();
        let mut sent: Vec<Command> = Vec::new();
        let mut rest = steps;
        let mut index = 0;
        while !rest.is_empty() {
            index += 1;
            // A step that changes the term starts an entry: one entry, one leader.
            let len = 1 + rest[1..]
                .iter()
                .take(MOST_PER_ENTRY - 1)
                .take_while(|step| step.8 && step.3 != 0 && step.3 != 3)
                .count();
            let (entry, after) = rest.split_at(len);
            rest = after;
            let mut batch = Vec::new();
            let mut retries = Vec::new();
            for (place, &(kind, name, holder, jump, n, wait, readopt, token, _)) in
                entry.iter().enumerate()
            {
                let first = position(index, 0);
                at = match jump {
                    // A new leader whose clock is behind.
                    0 => at.saturating_sub(n % (2 * TTL)),
                    // A new leader after an election, short or long.
                    3 => at + n % (3 * LEADER_CHANGE_GRACE_MS),
                    1 => at + TTL + n % (2 * TTL),
                    // Long enough for answers to be forgotten: a late retry runs again.
                    2 => at + REQUEST_WINDOW_MS / 3 + n % TTL,
                    _ => at + n % (TTL / 4),
                };
                if jump == 0 || jump == 3 {
                    term += 1;
                }
                let (name, holder) = (NAMES[name], HOLDERS[holder]);
                let id = format!("r{index}-{place}");
                let token = match token {
                    0..=4 => model
                        .beliefs
                        .get(&(holder.to_string(), name.to_string()))
                        .map_or(n % first, |b| b.0),
                    // A token of this very entry, which no client can know yet.
                    5 => first + n % (place as u64 + 1),
                    _ => n % (first + 1),
                };
                let command = match kind {
                    0..=3 => Command::Acquire(Acquire {
                        request_id: id,
                        name: name.into(),
                        holder: holder.into(),
                        node: format!("n-{holder}"),
                        ttl_ms: TTL / 2 + n % TTL,
                        wait_ms: [0, 0, TTL / 2, 3 * TTL][wait as usize],
                        readopt,
                        task_info: TaskInfo::default(),
                    }),
                    4 => renew(&id, name, holder, token),
                    5 => Command::Renew(Renew {
                        ttl_ms: Some(TTL / 2 + n % TTL),
                        ..match renew(&id, name, holder, token) {
                            Command::Renew(r) => r,
                            _ => unreachable!(),
                        }
                    }),
                    6 | 7 => release(&id, name, holder, token),
                    8 => Command::Tick,
                    // Take back an earlier acquire (its holder's, mostly), or one still to come.
                    12 => {
                        let acquires: Vec<&Acquire> = sent
                            .iter()
                            .filter_map(|c| match c {
                                Command::Acquire(a) => Some(a),
                                _ => None,
                            })
                            .collect();
                        let (acquire_id, holder) = match acquires.len() as u64 {
                            0 => (format!("r{}-0", index + 1), holder.to_string()),
                            k => {
                                let a = acquires[(n % k) as usize];
                                let holder = if wait == 0 { holder } else { &a.holder };
                                (a.request_id.clone(), holder.to_string())
                            }
                        };
                        Command::Withdraw(Withdraw {
                            request_id: id,
                            name: name.into(),
                            holder,
                            acquire_id,
                        })
                    }
                    _ if sent.is_empty() => Command::Tick,
                    _ => sent[(n % sent.len() as u64) as usize].clone(),
                };
                retries.push(kind >= 9 && !sent.is_empty());
                batch.push(Proposal { at_ms: at, command });
            }
            // Whether the state remembers each command's request id when it comes to it (after
            // the commands before it in the entry).
            let remembered: Vec<bool> = (0..batch.len())
                .map(|place| {
                    let id = match &batch[place].command {
                        Command::Acquire(Acquire { request_id, .. })
                        | Command::Release(Release { request_id, .. })
                        | Command::Renew(Renew { request_id, .. })
                        | Command::Withdraw(Withdraw { request_id, .. }) => request_id,
                        Command::Tick => return false,
                    };
                    let mut before = s.clone();
                    before.apply(index, term, &Batch(batch[..place].to_vec()));
                    // A retry, or an acquire taken back before it came.
                    before.answer(id).is_some()
                })
                .collect();
            // A lone retry of a remembered request is not executed again: nothing but time
            // moves.
            let twin = match &batch[..] {
                [p] if remembered[0] => {
                    let mut t = s.clone();
                    let tick = Proposal {
                        at_ms: p.at_ms,
                        command: Command::Tick,
                    };
                    one(&mut t, index, term, &tick);
                    Some(t)
                }
                _ => None,
            };
            // A new leader extends every lease by the time since the old leader's last command,
            // within the grace: so do the leases the clients hold.
            if term > applied_term && applied_term != 0 {
                let by = batch[0]
                    .at_ms
                    .saturating_sub(s.clock_ms())
                    .min(LEADER_CHANGE_GRACE_MS);
                for belief in model.beliefs.values_mut() {
                    belief.1 += by;
                }
            }
            applied_term = term;
            let batch = Batch(batch);
            let applied = s.apply(index, term, &batch);
            let ctx = format!("entry {index}: {batch:?} -> {applied:?}");
            assert_eq!(s.check(), Ok(()), "{ctx}");
            assert_eq!(applied.len(), batch.0.len(), "{ctx}");
            for (place, (proposal, a)) in batch.0.iter().zip(&applied).enumerate() {
                let at = position(index, place);
                for settled in &a.settled {
                    model.settle(at, settled, &ctx);
                }
                if !remembered[place]
                    && let Some(o) = &a.outcome
                {
                    model.answer(at, &proposal.command, o, &ctx);
                }
            }
            if let Some(twin) = twin {
                assert_eq!(s, twin, "{ctx}");
            }
            model.check(&s, &ctx);
            for (proposal, retry) in batch.0.iter().zip(&retries) {
                if !retry && !matches!(proposal.command, Command::Tick) {
                    sent.push(proposal.command.clone());
                }
            }
            log.push((index, term, batch));
            results.push(applied);
        }
        (s, log, results)
    }

    proptest! {
        /// Any run of clients keeps the promises: never two holders of a lock, tokens strictly
        /// increasing per lock, waiters served in arrival order, leases ending exactly at their
        /// TTL, retries answered without a second grant. And the log it produced, replayed (as
        /// JSON, as a follower reads it) or resumed from a snapshot taken anywhere, gives the
        /// same state and the same answers.
        #[test]
        fn clients_get_what_was_promised_and_the_log_replays_identically(
            steps in steps(),
            cut in any::<prop::sample::Index>(),
        ) {
            let (state, log, results) = run(&steps);
            let json = serde_json::to_vec(&log).unwrap();
            let log: Log = serde_json::from_slice(&json).unwrap();
            let mut replay = LockState::default();
            let replayed: Vec<Vec<Applied>> =
                log.iter().map(|(i, t, b)| replay.apply(*i, *t, b)).collect();
            prop_assert_eq!(&replay, &state);
            prop_assert_eq!(&replayed, &results);

            let cut = cut.index(log.len() + 1);
            let mut head = LockState::default();
            for (i, t, b) in &log[..cut] {
                head.apply(*i, *t, b);
            }
            let mut resumed = LockState::from_json(&head.to_json().unwrap()).unwrap();
            prop_assert_eq!(&resumed, &head);
            let tail: Vec<Vec<Applied>> =
                log[cut..].iter().map(|(i, t, b)| resumed.apply(*i, *t, b)).collect();
            prop_assert_eq!(&resumed, &state);
            prop_assert_eq!(&tail[..], &results[cut..]);
        }
    }
}
