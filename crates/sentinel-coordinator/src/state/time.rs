//! Time in the state: the leader's clock, the grace a change of leader gives the leases, and the
//! leases and waits that end, in the order they ended, before a command takes effect.
//!
//! The state never reads a clock. Its time is the largest leader stamp applied, so it never runs
//! backwards when a new leader's clock is behind, and what ends is decided by that time alone, not
//! by how often the leader happens to propose a tick.

use super::{Answer, LockState, Settled};

/// Most a change of leader extends the leases by. An election takes well under a second; the
/// time since the old leader's last command may also include quiet time, hence a bound.
pub const LEADER_CHANGE_GRACE_MS: u64 = 2_000;

impl LockState {
    /// Takes in the leader's term and stamp of the next command and returns the state's time for
    /// it: the largest stamp so far. The first command of a newer term extends every lease by the
    /// time since the old leader's last command, within [`LEADER_CHANGE_GRACE_MS`].
    pub(super) fn observe(&mut self, term: u64, at_ms: u64) -> u64 {
        if term > self.term {
            if self.term != 0 {
                let gap = at_ms.saturating_sub(self.clock_ms);
                self.extend_leases(gap.min(LEADER_CHANGE_GRACE_MS));
            }
            self.term = term;
        }
        self.clock_ms = self.clock_ms.max(at_ms);
        self.clock_ms
    }

    /// The state's time: the largest leader stamp applied.
    pub fn clock_ms(&self) -> u64 {
        self.clock_ms
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
    pub(super) fn advance(&mut self, index: u64, now: u64, settled: &mut Vec<Settled>) {
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
            let answer = Answer::TimedOut {
                holder: slot.lease.clone(),
            };
            self.settle(now, &name, id, answer, settled);
        }
    }

    /// The earliest leader time at which a lease or a wait will have ended, so that a
    /// [`super::Command::Tick`] then hands locks over; `None` when nothing is held.
    pub fn next_event_ms(&self) -> Option<u64> {
        let lease = self.expiries.first().map(|(at, _)| *at);
        let wait = self.deadlines.first().map(|(at, ..)| *at);
        lease
            .into_iter()
            .chain(wait)
            .min()
            .map(|at| at.saturating_add(1))
    }
}
