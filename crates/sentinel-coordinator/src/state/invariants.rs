//! The invariants every state reached by applying a log keeps, checked on every snapshot loaded
//! and after every command in the tests.

use std::collections::BTreeSet;

use sentinel_core::table::LockTable;

use super::requests::Remembered;
use super::{Answer, LockState, MAX_HELD_LOCKS, MAX_WAITERS, RequestKind};

impl LockState {
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
                        answer: Answer::Queued { .. },
                        ..
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
            .filter(|r| matches!(r.answer, Answer::Queued { .. }))
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
                Some(r) if !matches!(r.answer, Answer::Queued { .. }) => {}
                _ => return Err(format!("settled request {id:?} is not remembered")),
            }
        }
        Ok(())
    }
}
