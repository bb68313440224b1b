//! Locks: each held lock is a lease and the queue of acquires waiting for it, and the commands
//! that take, give back, extend and take back leases.
//!
//! A lock with waiters always has a holder: a lease that ends hands the lock to the head of the
//! queue at once, with the ending command's position as the new fencing token.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use sentinel_core::lock::TaskInfo;
use sentinel_core::table::LockRecord;

use super::groups::Want;
use super::{Acquire, Answer, Limit, LockState, Release, Renew, RequestKind, Settled, Withdraw};

/// Most holds at once (locks, shared holds, semaphore holds); an acquire that would take a new
/// one beyond it is refused. A waiter let into a semaphore or a shared lock is never refused: it
/// counted against [`MAX_WAITERS`].
pub const MAX_HELD_LOCKS: usize = 100_000;

/// Most acquires waiting at once, across all locks and semaphores.
pub const MAX_WAITERS: usize = 100_000;

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
    /// The last instant it still waits: `since_ms + wait_ms`, moved on by as much as the lease
    /// it waits for when a new leader starts that lease afresh.
    pub until_ms: u64,
    /// What the holder will work on.
    #[serde(default, skip_serializing_if = "TaskInfo::is_empty")]
    pub task_info: TaskInfo,
    /// The semaphore permits it waits for (1 for a lock; absent from the encoding then).
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub permits: u32,
    /// It waits for a shared hold.
    #[serde(default, skip_serializing_if = "is_false")]
    pub shared: bool,
}

fn one() -> u32 {
    1
}

fn is_one(n: &u32) -> bool {
    *n == 1
}

fn is_false(b: &bool) -> bool {
    !*b
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

impl LockState {
    pub(super) fn acquire(&mut self, at: u64, now: u64, a: &Acquire) -> Answer {
        if self.groups.contains_key(&a.name) {
            // Held shared (or exclusively by a hold that waited behind shared ones) or as a
            // semaphore: the group decides.
            return self.claim(at, now, a, Want::EXCLUSIVE);
        }
        let waiting = self.deadlines.len();
        let held = self.held();
        match self.locks.get_mut(&a.name) {
            None => {
                if held >= MAX_HELD_LOCKS {
                    return Answer::Refused {
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
                Answer::Granted {
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
                Answer::Granted {
                    lease,
                    adopted: true,
                }
            }
            Some(slot) if a.wait_ms == 0 => Answer::Held {
                holder: slot.lease.clone(),
            },
            Some(_) if waiting >= MAX_WAITERS => Answer::Refused {
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
                    permits: 1,
                    shared: false,
                });
                let position = slot.queue.len();
                self.deadlines
                    .insert((until, a.name.clone(), a.request_id.clone()));
                Answer::Queued { position }
            }
        }
    }

    pub(super) fn release(
        &mut self,
        (at, first): (u64, u64),
        now: u64,
        r: &Release,
        settled: &mut Vec<Settled>,
    ) -> Answer {
        if self.groups.contains_key(&r.name) {
            return self.release_hold((at, first), now, r, settled);
        }
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
                Answer::Released { lease }
            }
            other => Answer::NotHolder {
                holder: other.map(|s| s.lease.clone()),
            },
        }
    }

    pub(super) fn renew(&mut self, now: u64, r: &Renew) -> Answer {
        if self.groups.contains_key(&r.name) {
            return self.renew_hold(now, r);
        }
        match self.locks.get_mut(&r.name) {
            Some(slot)
                if slot.lease.worker_id == r.holder && slot.lease.fencing_token == r.token =>
            {
                let old = slot.lease.expires_at_ms();
                slot.lease.heartbeat_ms = now;
                if let Some(ttl) = r.ttl_ms {
                    slot.lease.ttl_ms = ttl;
                }
                if let Some(value) = &r.value {
                    slot.lease.task_info.value = Some(value.clone());
                }
                let lease = slot.lease.clone();
                self.expiries.remove(&(old, r.name.clone()));
                self.expiries
                    .insert((lease.expires_at_ms(), r.name.clone()));
                Answer::Renewed { lease }
            }
            other => Answer::NotHolder {
                holder: other.map(|s| s.lease.clone()),
            },
        }
    }

    /// Takes the acquire that the new withdrawal `w` names out of its lock's queue, if it waits
    /// there, and settles it as withdrawn. A retried withdrawal, or one that names no waiting
    /// acquire of its lock and holder, changes nothing here. Leaving a semaphore's or shared
    /// lock's queue may let the waiters behind in, at position `at`.
    pub(super) fn leave_queue(
        &mut self,
        at: u64,
        now: u64,
        w: &Withdraw,
        settled: &mut Vec<Settled>,
    ) {
        if !self.withdraws_a_waiting(w, RequestKind::Acquire) {
            return;
        }
        if let Some(slot) = self.locks.get_mut(&w.name)
            && let Some(i) = slot.queue.iter().position(|q| q.request_id == w.acquire_id)
            && let Some(waiter) = slot.queue.remove(i)
        {
            self.deadlines
                .remove(&(waiter.until_ms, w.name.clone(), w.acquire_id.clone()));
        }
        let mut group = false;
        if let Some(g) = self.groups.get_mut(&w.name)
            && let Some(i) = g.queue.iter().position(|q| q.request_id == w.acquire_id)
            && let Some(waiter) = g.queue.remove(i)
        {
            self.deadlines
                .remove(&(waiter.until_ms, w.name.clone(), w.acquire_id.clone()));
            group = true;
        }
        let withdrawn = Answer::Withdrawn { lease: None };
        self.settle(now, &w.name, w.acquire_id.clone(), withdrawn, settled);
        if group {
            self.fill(&w.name, at, now, settled);
        }
    }

    pub(super) fn withdraw(
        &mut self,
        at: u64,
        now: u64,
        w: &Withdraw,
        settled: &mut Vec<Settled>,
    ) -> Answer {
        let withdrawn = |lease| Answer::Withdrawn { lease };
        let Some(acquire) = self.requests.get(w.acquire_id.as_str()) else {
            // Not arrived (or long forgotten): remembered as withdrawn, so that the acquire, if
            // it still comes, is answered so and never executed.
            let acquire = (RequestKind::Acquire, w.name.as_str(), w.holder.as_str());
            self.remember(&w.acquire_id, acquire, None, now, withdrawn(None));
            return withdrawn(None);
        };
        if !matches!(acquire.kind, RequestKind::Acquire | RequestKind::Arrive)
            || acquire.name != w.name
            || acquire.holder != w.holder
        {
            return Answer::RequestIdReused;
        }
        // A waiting acquire or arrival has already left its queue or barrier (`leave_queue`,
        // `leave_barrier_withdrawn`) and is answered as withdrawn; an arrival that opened its
        // barrier has nothing to give back.
        match acquire.answer.clone() {
            // A re-adoption took up a lease the holder had before: not the acquire's to give back.
            Answer::Granted {
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
                if let Some(r) = self.requests.get_mut(w.acquire_id.as_str()) {
                    r.answer = withdrawn(Some(live.clone()));
                }
                withdrawn(Some(live))
            }
            Answer::Granted {
                lease,
                adopted: false,
            } => match self.take_back_hold(&w.name, &lease, at, now, settled) {
                Some(live) => {
                    if let Some(r) = self.requests.get_mut(w.acquire_id.as_str()) {
                        r.answer = withdrawn(Some(live.clone()));
                    }
                    withdrawn(Some(live))
                }
                None => withdrawn(None),
            },
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

    /// The lease of `name` has ended (released or expired; its expiry is already unindexed): the
    /// head of the queue gets a new lease with the command's position as token, or the lock is
    /// free.
    pub(super) fn hand_over(
        &mut self,
        name: &str,
        index: u64,
        now: u64,
        settled: &mut Vec<Settled>,
    ) {
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
        let answer = Answer::Granted {
            lease,
            adopted: false,
        };
        self.settle(now, name, next.request_id, answer, settled);
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
        super::after(&self.locks, after)
    }

    /// How many holds there are: exclusive locks, shared holds and semaphore holds.
    pub fn held(&self) -> usize {
        self.locks.len() + self.holds
    }

    /// How many acquires and barrier arrivals are waiting.
    pub fn waiting(&self) -> usize {
        self.deadlines.len() + self.arrival_deadlines.len()
    }
}
