//! The replicated lock state: named leases with FIFO wait queues, applied from the Raft log.
//!
//! [`LockState::apply`] is the whole protocol: it takes one log entry (its index and a
//! [`Proposal`]) and returns what happened. No I/O, no clock, no randomness, so every node that
//! applies the same log holds the same state and gives the same answers.
//!
//! Semantics (etcd and Consul leases rather than the local backend's "stale until stolen"):
//!
//! - **Time is the leader's lease clock, never its wall clock.** Each proposal carries the time of
//!   the leader's lease clock when it wrote it: the state's time when the leader's term began
//!   plus the time its monotonic clock measured since (for the very first leader of an empty
//!   state, its wall clock). The state's clock is the largest stamp applied, so it never runs
//!   backwards, and it moves only by time a leader measured: not while no leader serves, and
//!   never by a jump of a leader's wall clock. It starts from a wall clock and then runs behind
//!   real time by the time the cluster spent without a leader.
//! - **A change of leader never ends a lease early.** While no leader serves, holders cannot
//!   renew. So the first command of a new leader (a newer Raft term) starts every lease's
//!   countdown afresh, as etcd does: the lease's last renewal becomes that command's time. Every
//!   wait is moved on by as much as the lease it waits for.
//! - **A lease ends at its TTL.** A lease renewed at `t` with TTL `d` is live up to and including
//!   `t + d` (the rule of [`sentinel_core::table::LockTable::is_stale`], shared with the local backend) and is gone
//!   after it: the next waiter gets the lock. Before a command takes effect, every lease and every
//!   wait that ended by the command's time ends, in the order they ended, so the answer does not
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
//! - **Semaphores and shared holds.** A name may instead be held by many: a semaphore (at most
//!   its limit of permits held, each hold taking some) or a shared lock (shared holds, or one
//!   exclusive hold). Each hold is a lease with a token, as a lock is; waiters are let in
//!   strictly in arrival order, so an exclusive waiter holds back later shared claims. A claim of
//!   another kind than the name is held as, or with another limit, is refused at once.
//!
//! - **Barriers.** `count` participants arrive at a name and wait; the last to arrive opens it
//!   for all of them at once, and the name starts afresh. An arrival that stopped waiting (its
//!   wait ran out, or its client left) does not count.
//!
//! - **Sessions.** A hold taken in a session has the session's lease: it ends when the
//!   session does, and one renewal of the session renews every hold in it.
//!
//! - **Keys.** Beside the locks, a key-value store whose writes are numbered by the same
//!   revision as the events ([`kv`]).
//!
//! Every lock is one [`Slot`]: a lease and its queue; every semaphore or shared lock one
//! [`Group`]. Commands are an internally tagged enum, so semaphores and shared holds arrived as a
//! new command ([`Command::Claim`]) and a new kind of slot without changing the encoding of the
//! entries already in a log.
//!
//! The code follows the concerns: [`log`] (what an entry holds, positions), [`answer`] (what
//! the state answers), [`locks`] (leases and queues), [`groups`] (semaphores and shared
//! holds), [`time`] (the clock and what ends with it),
//! [`barriers`] (participants that meet), [`events`] (what happened, numbered for watchers),
//! [`sessions`] (one lease for many holds), [`kv`] (keys and values), [`requests`] (each
//! request executed once),
//! [`snapshot`] and [`invariants`].

mod answer;
mod barriers;
mod events;
mod groups;
mod invariants;
mod kv;
mod locks;
mod log;
mod requests;
mod sessions;
mod snapshot;
mod time;

#[cfg(test)]
mod barrier_tests;
#[cfg(test)]
mod kv_tests;
#[cfg(test)]
mod proptests;
#[cfg(test)]
mod session_tests;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

pub use answer::{Answer, Applied, Limit, Settled};
pub use barriers::{Arrival, Barrier, MAX_COUNT};
pub use events::{Event, EventKind};
pub use groups::{Group, Hold, Kind, MAX_LIMIT};
pub use kv::{ENTRY_OVERHEAD, KvValue, json_len};
pub use locks::{MAX_HELD_LOCKS, MAX_WAITERS, Slot, Waiter};
pub use log::{
    Acquire, Arrive, Batch, Claim, Command, KvDelete, KvPut, KvTxn, MAX_BATCH,
    MAX_ENTRY_VALUE_BYTES, POSITIONS_PER_ENTRY, Proposal, Release, Renew, Withdraw, fitting,
    position,
};
pub use requests::{REQUEST_MEMORY, REQUEST_WINDOW_MS, RequestKind};
pub use sessions::{MAX_SESSIONS, OpenSession, Session, SessionCall};

use groups::{HoldKey, Want};
use requests::Remembered;

/// Every lock of the coordinator. See the module documentation for the semantics.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LockState {
    /// The largest leader stamp applied: the leader's lease clock, in ms since the Unix epoch.
    clock_ms: u64,
    /// The Raft term of the last command applied: a newer one is a new leader.
    term: u64,
    /// Held locks only: a lock with waiters always has a holder, since a lock that falls free
    /// goes to the head of its queue at once.
    locks: BTreeMap<String, Slot>,
    /// `(expires_at_ms, name)` of every lease, to end them in order without a scan.
    expiries: BTreeSet<(u64, String)>,
    /// Semaphores and shared locks that are held, by name; never a name of `locks`.
    groups: BTreeMap<String, Group>,
    /// The expiry of every hold of the groups.
    hold_expiries: BTreeSet<HoldKey>,
    /// How many holds the groups have.
    holds: usize,
    /// `(until_ms, name, request_id)` of every waiter, of locks and groups.
    deadlines: BTreeSet<(u64, String, String)>,
    /// Barriers some participants wait at, by name (names apart from the locks').
    barriers: BTreeMap<String, Barrier>,
    /// `(until_ms, barrier, request_id)` of every arrival waiting at a barrier.
    arrival_deadlines: BTreeSet<barriers::ArrivalKey>,
    requests: BTreeMap<Arc<str>, Remembered>,
    /// Settled requests, oldest first: `(settled at, request id)`.
    settled: VecDeque<(u64, Arc<str>)>,
    /// The revision of the last event ([`events`]): how many there have been.
    revision: u64,
    /// Open sessions by id ([`sessions`]).
    sessions: BTreeMap<u64, Session>,
    /// `(expires_at_ms, id)` of every session.
    session_expiries: BTreeSet<(u64, u64)>,
    /// Waiting acquires taken in a session: request id → session.
    session_waiters: BTreeMap<String, u64>,
    /// The session that keeps each hold in one, `(lock, fencing token)` → id: a hold is in one
    /// session at most.
    session_holds: BTreeMap<(String, u64), u64>,
    /// The key-value store's keys ([`kv`]).
    kv: BTreeMap<String, KvValue>,
    /// What they count in its quota.
    kv_bytes: u64,
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
        let now = self.observe(term, proposal.at_ms);
        let mut settled = Vec::new();
        if let Command::Withdraw(w) = &proposal.command {
            // A waiter taken back leaves its queue before the leases that ended are handed on.
            // Were the lock handed to it first, taking that grant back would hand the lock on at
            // this same position: two grants with one fencing token.
            self.leave_queue(at, now, w, &mut settled);
            self.leave_barrier_withdrawn(now, w, &mut settled);
        }
        let expired = self.ending_before(now);
        self.advance(at, now, &mut settled);
        let by_time = settled.len();
        // Numbered before the command runs, so that a key's write takes the revision after
        // them: its event's.
        let mut events = self.events_of_time(expired, &settled);
        // A retry is answered from memory: what it did was told as events the first time.
        let fresh = proposal
            .command
            .request_id()
            .is_some_and(|id| !self.requests.contains_key(id));
        let answer = match &proposal.command {
            Command::Tick => None,
            Command::Acquire(a) => Some(self.request(
                &a.request_id,
                (RequestKind::Acquire, &a.name, &a.holder),
                &proposal.command,
                now,
                |s| s.in_session(a, |s, a| s.acquire(at, now, a)),
            )),
            Command::Claim(c) => Some(self.request(
                &c.acquire.request_id,
                (RequestKind::Acquire, &c.acquire.name, &c.acquire.holder),
                &proposal.command,
                now,
                |s| {
                    let want = Want {
                        shared: c.shared,
                        limit: c.limit,
                        permits: c.permits,
                    };
                    s.in_session(&c.acquire, |s, a| match want == Want::EXCLUSIVE {
                        true => s.acquire(at, now, a),
                        false => s.claim(at, now, a, want),
                    })
                },
            )),
            Command::OpenSession(o) => Some(self.request(
                &o.request_id,
                (RequestKind::Session, "", &o.holder),
                &proposal.command,
                now,
                |s| s.open_session(at, now, o),
            )),
            Command::KeepSession(c) => Some(self.request(
                &c.request_id,
                (RequestKind::Session, "", &c.holder),
                &proposal.command,
                now,
                |s| s.keep_session(now, c),
            )),
            Command::CloseSession(c) => Some(self.request(
                &c.request_id,
                (RequestKind::Session, "", &c.holder),
                &proposal.command,
                now,
                |s| s.close_session((at, first), now, c, &mut settled),
            )),
            Command::Release(r) => Some(self.request(
                &r.request_id,
                (RequestKind::Release, &r.name, &r.holder),
                &proposal.command,
                now,
                |s| s.release((at, first), now, r, &mut settled),
            )),
            Command::Renew(r) => Some(self.request(
                &r.request_id,
                (RequestKind::Renew, &r.name, &r.holder),
                &proposal.command,
                now,
                |s| s.renew_in_session(now, r),
            )),
            Command::Arrive(a) => Some(self.request(
                &a.request_id,
                (RequestKind::Arrive, &a.name, &a.holder),
                &proposal.command,
                now,
                |s| s.arrive(now, a, &mut settled),
            )),
            Command::Withdraw(w) => Some(self.request(
                &w.request_id,
                (RequestKind::Withdraw, &w.name, &w.holder),
                &proposal.command,
                now,
                |s| s.withdraw(at, now, w, &mut settled),
            )),
            Command::KvPut(p) => Some(self.request(
                &p.request_id,
                (RequestKind::Kv, &p.key, &p.writer),
                &proposal.command,
                now,
                |s| s.kv_put(p),
            )),
            Command::KvDelete(d) => Some(self.request(
                &d.request_id,
                (RequestKind::Kv, &d.key, &d.writer),
                &proposal.command,
                now,
                |s| s.kv_delete(d),
            )),
            Command::KvTxn(t) => Some(self.request(
                &t.request_id,
                (RequestKind::Kv, "", &t.writer),
                &proposal.command,
                now,
                |s| s.kv_txn(t),
            )),
        };
        self.bind_settled(&settled);
        self.forget(now);
        events.extend(self.events_of_command(
            &proposal.command,
            answer.as_ref().filter(|_| fresh),
            &settled[by_time..],
        ));
        Applied {
            answer,
            settled,
            events,
        }
    }
}

impl LockState {
    /// Runs acquire `a` (through `run`) in its session, if it names one: refused unless the
    /// session is the holder's and open; a grant's lease becomes the session's, and a waiting
    /// acquire is remembered to be bound when it is granted.
    fn in_session(
        &mut self,
        a: &Acquire,
        run: impl FnOnce(&mut Self, &Acquire) -> Answer,
    ) -> Answer {
        let Some(id) = a.session else {
            return run(self, a);
        };
        let Some(s) = self.live_session(id, &a.holder) else {
            return Answer::NoSession;
        };
        // The hold's lease is the session's from the start.
        let in_session = Acquire {
            ttl_ms: s.ttl_ms,
            ..a.clone()
        };
        match run(self, &in_session) {
            Answer::Granted {
                lease,
                adopted: false,
            } => Answer::Granted {
                lease: self.bind(id, &a.name, &a.request_id, lease),
                adopted: false,
            },
            queued @ Answer::Queued { .. } => {
                self.session_waiters.insert(a.request_id.clone(), id);
                queued
            }
            other => other,
        }
    }

    /// Binds to their sessions the waiting acquires in one that were granted; forgets those
    /// settled otherwise.
    fn bind_settled(&mut self, settled: &[Settled]) {
        for s in settled {
            let Some(id) = self.session_waiters.remove(&s.request_id) else {
                continue;
            };
            if let Answer::Granted { lease, .. } = &s.answer {
                self.bind(id, &s.name, &s.request_id, lease.clone());
            }
        }
    }
}

/// The entries of `map` in name order after `after` (all of them for `None`): a page of a
/// listing.
fn after<'a, V>(
    map: &'a BTreeMap<String, V>,
    after: Option<&str>,
) -> impl Iterator<Item = (&'a str, &'a V)> + 'a {
    use std::ops::Bound;
    let start = match after {
        Some(a) => Bound::Excluded(a.to_string()),
        None => Bound::Unbounded,
    };
    map.range((start, Bound::Unbounded))
        .map(|(k, v)| (k.as_str(), v))
}
