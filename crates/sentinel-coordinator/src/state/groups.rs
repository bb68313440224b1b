//! Names held by many at once: semaphores (at most `limit` permits held, each hold taking some)
//! and shared (read) locks (many shared holds, or one exclusive hold).
//!
//! A name is in [`LockState`]'s `locks` (one exclusive lease, as always) or in its `groups`
//! (one [`Group`]), never both. An exclusive acquire of a free name still makes a plain lock, so
//! the entries, snapshots and answers of exclusive locks are what they were; a lock becomes a
//! group when a shared claim queues behind its lease. Each hold is a lease like a lock's: it ends
//! at its TTL, a new leader starts it afresh, and release, renewal and withdrawal name it by
//! holder and token, through the lock commands.
//!
//! The queue is strictly first come, first served: only its head may be let in, so a waiter
//! needing many permits is not overtaken by later ones needing few, and an exclusive waiter
//! holds back the shared claims behind it (no writer starvation). A claim is granted at once only
//! when nobody waits. Every hold let in by one command gets that command's position as token:
//! tokens never decrease per name and grow from one granting command to the next; an exclusive
//! hold's token is its own, since nothing else is let in with it.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use sentinel_core::table::LockRecord;

use super::{
    Acquire, Answer, Limit, LockState, MAX_HELD_LOCKS, MAX_WAITERS, Release, Renew, Settled, Waiter,
};

/// Largest limit of a semaphore.
pub const MAX_LIMIT: u32 = 10_000;

/// What a name is held as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// One holder.
    Exclusive,
    /// Shared holds.
    Shared,
    /// Permits of a semaphore.
    Semaphore,
}

/// One hold of a [`Group`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hold {
    /// The acquire that was granted it; empty for the lease of a lock that became a group.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub request_id: String,
    /// Its lease.
    pub lease: LockRecord,
    /// The semaphore permits it holds (1 on a lock).
    pub permits: u32,
    /// A shared hold.
    #[serde(default)]
    pub shared: bool,
}

/// A semaphore or a shared lock that is held: its holds in the order they were granted, and
/// the claims waiting, oldest first. A group with waiters always has holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Group {
    /// The semaphore's limit; `None` for a shared lock.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
    /// The live holds, oldest grant first.
    pub holds: Vec<Hold>,
    /// The claims waiting, in arrival order.
    #[serde(default, skip_serializing_if = "VecDeque::is_empty")]
    pub queue: VecDeque<Waiter>,
}

impl Group {
    /// What the name is held as: a shared lock whose one hold is exclusive is exclusive.
    pub fn kind(&self) -> Kind {
        match self.limit {
            Some(_) => Kind::Semaphore,
            None if self.holds.iter().any(|h| h.shared) => Kind::Shared,
            None => Kind::Exclusive,
        }
    }

    /// The permits held.
    pub fn used(&self) -> u64 {
        self.holds.iter().map(|h| u64::from(h.permits)).sum()
    }

    /// Whether a claim of `permits` (or a shared or exclusive hold) fits beside the holds, with
    /// `used` permits held.
    fn fits(&self, used: u64, permits: u32, shared: bool) -> bool {
        match self.limit {
            Some(limit) => used + u64::from(permits) <= u64::from(limit),
            None if shared => self.holds.iter().all(|h| h.shared),
            None => self.holds.is_empty(),
        }
    }
}

/// What kind of hold a claim asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Want {
    pub(super) shared: bool,
    pub(super) limit: Option<u32>,
    pub(super) permits: u32,
}

impl Want {
    pub(super) const EXCLUSIVE: Want = Want {
        shared: false,
        limit: None,
        permits: 1,
    };

    fn valid(&self) -> bool {
        match self.limit {
            Some(limit) => {
                !self.shared
                    && (1..=MAX_LIMIT).contains(&limit)
                    && (1..=limit).contains(&self.permits)
            }
            None => self.permits == 1,
        }
    }
}

/// The key of a hold in the expiry index: (expires at, name, token, request id), unique since
/// holds sharing a token were granted to different waiting requests.
pub(super) type HoldKey = (u64, String, u64, String);

fn key(name: &str, h: &Hold) -> HoldKey {
    (
        h.lease.expires_at_ms(),
        name.to_string(),
        h.lease.fencing_token,
        h.request_id.clone(),
    )
}

impl LockState {
    /// A claim of a shared hold or semaphore permits, or an exclusive acquire of a name held as
    /// a group.
    pub(super) fn claim(&mut self, at: u64, now: u64, a: &Acquire, want: Want) -> Answer {
        if !want.valid() {
            return Answer::Refused {
                limit: Limit::Permits,
            };
        }
        let waiting = self.deadlines.len();
        let held = self.held();
        if let Some(slot) = self.locks.get(&a.name) {
            if want.limit.is_some() {
                return Answer::OtherKind {
                    kind: Kind::Exclusive,
                    limit: None,
                };
            }
            if a.wait_ms == 0 {
                return Answer::Held {
                    holder: slot.lease.clone(),
                };
            }
            if waiting >= MAX_WAITERS {
                return Answer::Refused {
                    limit: Limit::Waiters,
                };
            }
            // A shared claim waits behind the lock's lease: the lock becomes a group.
            self.make_group(&a.name);
        }
        let Some(g) = self.groups.get(&a.name) else {
            return self.new_group(at, now, a, want, held);
        };
        if let Some(refusal) = other_kind(g, want) {
            return refusal;
        }
        if let Some(adopted) = self.readopt_hold(now, a, want) {
            return adopted;
        }
        self.join_group(at, now, a, want, (held, waiting))
    }

    /// The first hold of the free name `a.name`: a new group.
    fn new_group(&mut self, at: u64, now: u64, a: &Acquire, want: Want, held: usize) -> Answer {
        if held >= MAX_HELD_LOCKS {
            return Answer::Refused {
                limit: Limit::HeldLocks,
            };
        }
        let hold = grant(a.request_id.clone(), lease(a, at, now), want);
        self.hold_expiries.insert(key(&a.name, &hold));
        self.holds += 1;
        let lease = hold.lease.clone();
        let group = Group {
            limit: want.limit,
            holds: vec![hold],
            queue: VecDeque::new(),
        };
        self.groups.insert(a.name.clone(), group);
        Answer::Granted {
            lease,
            adopted: false,
        }
    }

    /// The holder's own live hold of the same kind taken up again (same token, renewed), if it
    /// asks to readopt and has one.
    fn readopt_hold(&mut self, now: u64, a: &Acquire, want: Want) -> Option<Answer> {
        let g = self.groups.get_mut(&a.name)?;
        let h = g.holds.iter_mut().find(|h| {
            a.readopt
                && h.lease.worker_id == a.holder
                && h.permits == want.permits
                && h.shared == want.shared
        })?;
        let old = key(&a.name, h);
        h.lease.node_id = a.node.clone();
        h.lease.heartbeat_ms = now;
        h.lease.ttl_ms = a.ttl_ms;
        h.lease.task_info = a.task_info.clone();
        let new = key(&a.name, h);
        let lease = h.lease.clone();
        self.hold_expiries.remove(&old);
        self.hold_expiries.insert(new);
        Some(Answer::Granted {
            lease,
            adopted: true,
        })
    }

    /// A claim of a held group of its kind: granted if nobody waits and it fits, else answered
    /// `Held` without a wait, else queued. `counts` are the holds and waiters before it.
    fn join_group(
        &mut self,
        at: u64,
        now: u64,
        a: &Acquire,
        want: Want,
        (held, waiting): (usize, usize),
    ) -> Answer {
        let Some(g) = self.groups.get_mut(&a.name) else {
            return self.new_group(at, now, a, want, held);
        };
        if g.queue.is_empty() && g.fits(g.used(), want.permits, want.shared) {
            if held >= MAX_HELD_LOCKS {
                return Answer::Refused {
                    limit: Limit::HeldLocks,
                };
            }
            let hold = grant(a.request_id.clone(), lease(a, at, now), want);
            let lease = hold.lease.clone();
            self.hold_expiries.insert(key(&a.name, &hold));
            g.holds.push(hold);
            self.holds += 1;
            return Answer::Granted {
                lease,
                adopted: false,
            };
        }
        if a.wait_ms == 0
            && let Some(first) = g.holds.first()
        {
            return Answer::Held {
                holder: first.lease.clone(),
            };
        }
        if waiting >= MAX_WAITERS {
            return Answer::Refused {
                limit: Limit::Waiters,
            };
        }
        let until = now.saturating_add(a.wait_ms);
        g.queue.push_back(Waiter {
            request_id: a.request_id.clone(),
            holder: a.holder.clone(),
            node: a.node.clone(),
            ttl_ms: a.ttl_ms,
            since_ms: now,
            until_ms: until,
            task_info: a.task_info.clone(),
            permits: want.permits,
            shared: want.shared,
        });
        let position = g.queue.len();
        self.deadlines
            .insert((until, a.name.clone(), a.request_id.clone()));
        Answer::Queued { position }
    }

    /// Turns the lock `name` into a group of its one exclusive hold and its queue.
    fn make_group(&mut self, name: &str) {
        let Some(slot) = self.locks.remove(name) else {
            return;
        };
        self.expiries
            .remove(&(slot.lease.expires_at_ms(), name.to_string()));
        let hold = Hold {
            request_id: String::new(),
            lease: slot.lease,
            permits: 1,
            shared: false,
        };
        self.hold_expiries.insert(key(name, &hold));
        self.holds += 1;
        let group = Group {
            limit: None,
            holds: vec![hold],
            queue: slot.queue,
        };
        self.groups.insert(name.to_string(), group);
    }

    /// Release of a hold of a group, by holder and token (the first such hold, if one holder
    /// was let in twice by one command).
    pub(super) fn release_hold(
        &mut self,
        (at, first): (u64, u64),
        now: u64,
        r: &Release,
        settled: &mut Vec<Settled>,
    ) -> Answer {
        let Some(g) = self.groups.get_mut(&r.name) else {
            return Answer::NotHolder { holder: None };
        };
        // As for a lock: a hold granted by this very entry cannot be named yet.
        let found = g.holds.iter().position(|h| {
            h.lease.worker_id == r.holder && h.lease.fencing_token == r.token && r.token < first
        });
        let Some(i) = found else {
            return Answer::NotHolder {
                holder: g.holds.first().map(|h| h.lease.clone()),
            };
        };
        let hold = g.holds.remove(i);
        self.hold_expiries.remove(&key(&r.name, &hold));
        self.holds -= 1;
        self.fill(&r.name, at, now, settled);
        Answer::Released { lease: hold.lease }
    }

    pub(super) fn renew_hold(&mut self, now: u64, r: &Renew) -> Answer {
        let Some(g) = self.groups.get_mut(&r.name) else {
            return Answer::NotHolder { holder: None };
        };
        let found = g
            .holds
            .iter_mut()
            .find(|h| h.lease.worker_id == r.holder && h.lease.fencing_token == r.token);
        let Some(h) = found else {
            return Answer::NotHolder {
                holder: g.holds.first().map(|h| h.lease.clone()),
            };
        };
        let old = key(&r.name, h);
        h.lease.heartbeat_ms = now;
        if let Some(ttl) = r.ttl_ms {
            h.lease.ttl_ms = ttl;
        }
        if let Some(value) = &r.value {
            h.lease.task_info.value = Some(value.clone());
        }
        let new = key(&r.name, h);
        let lease = h.lease.clone();
        self.hold_expiries.remove(&old);
        self.hold_expiries.insert(new);
        Answer::Renewed { lease }
    }

    /// The withdrawal of an acquire granted `lease` in the group `name`: that hold, if still
    /// live, ends; the lease as it was.
    pub(super) fn take_back_hold(
        &mut self,
        name: &str,
        lease: &LockRecord,
        at: u64,
        now: u64,
        settled: &mut Vec<Settled>,
    ) -> Option<LockRecord> {
        let g = self.groups.get_mut(name)?;
        let i = g.holds.iter().position(|h| {
            h.lease.worker_id == lease.worker_id && h.lease.fencing_token == lease.fencing_token
        })?;
        let hold = g.holds.remove(i);
        self.hold_expiries.remove(&key(name, &hold));
        self.holds -= 1;
        self.fill(name, at, now, settled);
        Some(hold.lease)
    }

    /// A hold's lease ended (its key is already out of the index).
    pub(super) fn end_hold(
        &mut self,
        (_, name, token, id): HoldKey,
        at: u64,
        now: u64,
        settled: &mut Vec<Settled>,
    ) {
        if let Some(g) = self.groups.get_mut(&name)
            && let Some(i) = g
                .holds
                .iter()
                .position(|h| h.lease.fencing_token == token && h.request_id == id)
        {
            g.holds.remove(i);
            self.holds -= 1;
        }
        self.fill(&name, at, now, settled);
    }

    /// Lets in the head of the group's queue while it fits, each with a fresh lease and token
    /// `at`; a group left without holds (and so without waiters) is gone.
    pub(super) fn fill(&mut self, name: &str, at: u64, now: u64, settled: &mut Vec<Settled>) {
        let Some(g) = self.groups.get_mut(name) else {
            return;
        };
        let mut used = g.used();
        let mut granted = Vec::new();
        while let Some(w) = g.queue.front() {
            if !g.fits(used, w.permits, w.shared) {
                break;
            }
            let Some(w) = g.queue.pop_front() else {
                break;
            };
            used += u64::from(w.permits);
            let hold = Hold {
                request_id: w.request_id.clone(),
                lease: LockRecord {
                    worker_id: w.holder,
                    node_id: w.node,
                    fencing_token: at,
                    claimed_at_ms: now,
                    heartbeat_ms: now,
                    ttl_ms: w.ttl_ms,
                    task_info: w.task_info,
                },
                permits: w.permits,
                shared: w.shared,
            };
            granted.push((w.until_ms, key(name, &hold), hold.lease.clone()));
            g.holds.push(hold);
        }
        // Without holds, the head of any queue fits: an empty group has no waiters either.
        if g.holds.is_empty() {
            self.groups.remove(name);
        }
        for (until, key, lease) in granted {
            let id = key.3.clone();
            self.deadlines
                .remove(&(until, name.to_string(), id.clone()));
            self.hold_expiries.insert(key);
            self.holds += 1;
            let answer = Answer::Granted {
                lease,
                adopted: false,
            };
            self.settle(now, name, id, answer, settled);
        }
    }

    /// The semaphore or shared lock `name` with its holds and queue, if it is one. Its holds'
    /// leases may have ended since the last entry (judge them at the reader's time).
    pub fn group(&self, name: &str) -> Option<&Group> {
        self.groups.get(name)
    }

    /// Semaphores and shared locks in name order, starting after `after` (for pagination).
    pub fn groups_after<'a>(
        &'a self,
        after: Option<&str>,
    ) -> impl Iterator<Item = (&'a str, &'a Group)> + 'a {
        super::after(&self.groups, after)
    }

    /// The index of every hold's expiry, rebuilt from the groups.
    pub(super) fn hold_index(&self) -> std::collections::BTreeSet<HoldKey> {
        self.groups
            .iter()
            .flat_map(|(name, g)| g.holds.iter().map(move |h| key(name, h)))
            .collect()
    }
}

/// The refusal of a claim whose kind the held group `g` is not: a semaphore of another limit
/// (`LimitMismatch`), or a semaphore claimed as a lock or a lock as a semaphore (`OtherKind`).
fn other_kind(g: &Group, want: Want) -> Option<Answer> {
    match (g.limit, want.limit) {
        (Some(limit), Some(asked)) if limit != asked => Some(Answer::LimitMismatch { limit }),
        (Some(limit), None) => Some(Answer::OtherKind {
            kind: Kind::Semaphore,
            limit: Some(limit),
        }),
        (None, Some(_)) => Some(Answer::OtherKind {
            kind: g.kind(),
            limit: None,
        }),
        _ => None,
    }
}

fn lease(a: &Acquire, at: u64, now: u64) -> LockRecord {
    LockRecord {
        worker_id: a.holder.clone(),
        node_id: a.node.clone(),
        fencing_token: at,
        claimed_at_ms: now,
        heartbeat_ms: now,
        ttl_ms: a.ttl_ms,
        task_info: a.task_info.clone(),
    }
}

fn grant(request_id: String, lease: LockRecord, want: Want) -> Hold {
    Hold {
        request_id,
        lease,
        permits: want.permits,
        shared: want.shared,
    }
}
