//! Time in the state: the leader's lease clock, the fresh start a change of leader gives every
//! lease, and the leases and waits that end, in the order they ended, before a command takes
//! effect.
//!
//! The state never reads a clock. Its time is the largest leader stamp applied, so it never runs
//! backwards, and what ends is decided by that time alone, not by how often the leader happens to
//! propose a tick. A leader stamps commands with its lease clock: the state's time when its term
//! began plus the time its monotonic clock measured since (see `node.rs`), so time only runs while
//! a leader serves, and no node's wall clock moves it.

use super::{Answer, LockState, Settled};

impl LockState {
    /// Takes in the leader's term and stamp of the next command and returns the state's time for
    /// it: the largest stamp so far. The first command of a newer term starts every lease's
    /// countdown afresh ([`Self::new_leader`]).
    pub(super) fn observe(&mut self, term: u64, at_ms: u64) -> u64 {
        let now = self.clock_ms.max(at_ms);
        if term > self.term {
            if self.term != 0 {
                self.new_leader(now);
            }
            self.term = term;
        }
        self.clock_ms = now;
        now
    }

    /// The state's time: the largest leader stamp applied.
    pub fn clock_ms(&self) -> u64 {
        self.clock_ms
    }

    /// The first command of a new leader, at `now`: as etcd does, every lease counts its TTL
    /// afresh from it (its last renewal is `now`: holders could not renew while no leader served,
    /// nor before they found the new one), and every wait is moved on by as much as the lease it
    /// waits for, so that a waiter that would have got the lock before its wait ran out still
    /// does. Nothing ends earlier than it would have: every lease is live at the state's time
    /// (ended ones were ended by the command before), so none gets shorter.
    fn new_leader(&mut self, now: u64) {
        for slot in self.locks.values_mut() {
            let before = slot.lease.expires_at_ms();
            slot.lease.heartbeat_ms = slot.lease.heartbeat_ms.max(now);
            let later = slot.lease.expires_at_ms().saturating_sub(before);
            for w in &mut slot.queue {
                w.until_ms = w.until_ms.saturating_add(later);
            }
        }
        for g in self.groups.values_mut() {
            // A group's waiters wait for its holds: moved on by the most any hold moved.
            let mut later = 0;
            for h in &mut g.holds {
                let before = h.lease.expires_at_ms();
                h.lease.heartbeat_ms = h.lease.heartbeat_ms.max(now);
                later = later.max(h.lease.expires_at_ms().saturating_sub(before));
            }
            for w in &mut g.queue {
                w.until_ms = w.until_ms.saturating_add(later);
            }
        }
        self.expiries = self
            .locks
            .iter()
            .map(|(name, slot)| (slot.lease.expires_at_ms(), name.clone()))
            .collect();
        for s in self.sessions.values_mut() {
            s.heartbeat_ms = s.heartbeat_ms.max(now);
        }
        self.hold_expiries = self.hold_index();
        self.deadlines = self.deadline_index();
        self.session_expiries = self.session_index();
        self.renew_keys(now);
    }

    /// Ends every lease and wait that ended before `now`, in the order they ended. A wait that
    /// ends at the same instant as the lease it waits for ends first: the waiter had given up.
    pub(super) fn advance(&mut self, index: u64, now: u64, settled: &mut Vec<Settled>) {
        // Each round removes one due lease or wait and adds none that is due (a lease handed over
        // lasts at least until `now`), so the loop ends.
        loop {
            let wait = self.deadlines.first().filter(|(at, ..)| *at < now);
            let lease = self.expiries.first().filter(|(at, _)| *at < now);
            let hold = self.hold_expiries.first().filter(|(at, ..)| *at < now);
            let arrival = self.arrival_deadlines.first().filter(|(at, ..)| *at < now);
            let session = self.session_expiries.first().filter(|(at, _)| *at < now);
            // The earliest; at one instant a wait first, then a lock's lease, then a hold, then
            // a barrier arrival's wait (which no lease affects).
            let first = [
                wait.map(|w| (w.0, 0)),
                lease.map(|l| (l.0, 1)),
                hold.map(|h| (h.0, 2)),
                arrival.map(|a| (a.0, 3)),
                session.map(|s| (s.0, 4)),
            ]
            .into_iter()
            .flatten()
            .min();
            match first {
                None => return,
                Some((_, 0)) => {
                    if let Some(wait) = self.deadlines.pop_first() {
                        self.end_wait(wait, index, now, settled);
                    }
                }
                Some((_, 1)) => {
                    if let Some(lease) = self.expiries.pop_first() {
                        self.hand_over(&lease.1, index, now, settled);
                    }
                }
                Some((_, 2)) => {
                    if let Some(hold) = self.hold_expiries.pop_first() {
                        self.end_hold(hold, index, now, settled);
                    }
                }
                Some((_, 3)) => {
                    if let Some(arrival) = self.arrival_deadlines.pop_first() {
                        self.end_arrival(arrival, now, settled);
                    }
                }
                Some(_) => {
                    if let Some((_, id)) = self.session_expiries.pop_first() {
                        self.end_session(id);
                    }
                }
            }
        }
    }

    /// A wait ended (its deadline is already out of the index). In a group, the waiters behind
    /// it may fit now.
    fn end_wait(
        &mut self,
        (_, name, id): (u64, String, String),
        index: u64,
        now: u64,
        settled: &mut Vec<Settled>,
    ) {
        // Every waiter waits for a held lock or group (see `locks`, `groups`).
        if let Some(slot) = self.locks.get_mut(&name) {
            slot.queue.retain(|w| w.request_id != id);
            let answer = Answer::TimedOut {
                holder: slot.lease.clone(),
            };
            self.settle(now, &name, id, answer, settled);
        } else if let Some(g) = self.groups.get_mut(&name)
            && let Some(first) = g.holds.first()
        {
            let answer = Answer::TimedOut {
                holder: first.lease.clone(),
            };
            g.queue.retain(|w| w.request_id != id);
            self.settle(now, &name, id, answer, settled);
            self.fill(&name, index, now, settled);
        }
    }

    /// The index of every waiter's deadline, rebuilt from the locks and groups.
    pub(super) fn deadline_index(&self) -> std::collections::BTreeSet<(u64, String, String)> {
        let locks = self.locks.iter().map(|(name, s)| (name, &s.queue));
        let groups = self.groups.iter().map(|(name, g)| (name, &g.queue));
        locks
            .chain(groups)
            .flat_map(|(name, queue)| {
                queue
                    .iter()
                    .map(move |w| (w.until_ms, name.clone(), w.request_id.clone()))
            })
            .collect()
    }

    /// The earliest leader time at which a lease, a key's TTL or a wait (of an acquire or at a
    /// barrier) will have ended, so that a
    /// [`super::Command::Tick`] then hands locks over; `None` when nothing is held.
    pub fn next_event_ms(&self) -> Option<u64> {
        let lease = self.expiries.first().map(|(at, _)| *at);
        let hold = self.hold_expiries.first().map(|(at, ..)| *at);
        let wait = self.deadlines.first().map(|(at, ..)| *at);
        let arrival = self.arrival_deadlines.first().map(|(at, ..)| *at);
        let session = self.session_expiries.first().map(|(at, _)| *at);
        let key = self.kv_expiries.first().map(|(at, _)| *at);
        lease
            .into_iter()
            .chain(hold)
            .chain(wait)
            .chain(arrival)
            .chain(session)
            .chain(key)
            .min()
            .map(|at| at.saturating_add(1))
    }
}
