//! The invariants every state reached by applying a log keeps, checked on every snapshot loaded
//! and after every command in the tests.

use std::collections::BTreeSet;

use sentinel_core::table::LockTable;

use super::requests::Remembered;
use super::{
    Answer, Group, LockState, MAX_COUNT, MAX_HELD_LOCKS, MAX_LIMIT, MAX_SESSIONS, MAX_WAITERS,
    RequestKind,
};

impl LockState {
    /// Checks the invariants every state reached by [`Self::apply`] keeps.
    pub fn check(&self) -> Result<(), String> {
        // Waiters let into groups count against the waiters' limit, not the holds'.
        if self.held() > MAX_HELD_LOCKS + MAX_WAITERS || self.locks.len() > MAX_HELD_LOCKS {
            return Err(format!("{} locks are held", self.held()));
        }
        let mut expiries = BTreeSet::new();
        for (name, slot) in &self.locks {
            if LockTable::is_stale(&slot.lease, self.clock_ms) {
                return Err(format!("the lease of {name:?} ended but is still held"));
            }
            if self.groups.contains_key(name) {
                return Err(format!("{name:?} is both a lock and a group"));
            }
            if slot.queue.iter().any(|w| w.shared || w.permits != 1) {
                return Err(format!("a lock {name:?} has a shared or semaphore waiter"));
            }
            expiries.insert((slot.lease.expires_at_ms(), name.clone()));
        }
        let mut holds = 0;
        for (name, g) in &self.groups {
            self.check_group(name, g)?;
            holds += g.holds.len();
        }
        if holds != self.holds || self.hold_index() != self.hold_expiries {
            return Err("the holds' count or expiry index does not match the groups".into());
        }
        let deadlines = self.check_queues()?;
        let waiting = deadlines.len() + self.check_barriers()?;
        self.check_sessions()?;
        if waiting > MAX_WAITERS {
            return Err(format!("{waiting} acquires are waiting"));
        }
        if expiries != self.expiries || deadlines != self.deadlines {
            return Err("the expiry indexes do not match the locks".into());
        }
        self.check_kv()?;
        self.check_requests(waiting)
    }

    /// Every key is valid, its revisions are in order and not ahead of the state's, its value
    /// within the limit, and the quota's count is theirs.
    fn check_kv(&self) -> Result<(), String> {
        for (key, v) in &self.kv {
            sentinel_core::kv::validate_key(key).map_err(|e| e.to_string())?;
            if v.create_revision == 0
                || v.create_revision > v.mod_revision
                || v.mod_revision > self.revision
                || v.version == 0
            {
                return Err(format!("the revisions of key {key:?} are out of order"));
            }
            if super::kv::json_len(&v.value) > sentinel_core::kv::MAX_VALUE_BYTES as u64 {
                return Err(format!("the value of key {key:?} is too large"));
            }
        }
        if self.kv_cost() != self.kv_bytes {
            return Err("the key-value store's size does not match its keys".into());
        }
        Ok(())
    }

    /// Every waiter of a lock or group is still within its wait, waits once and is remembered
    /// as queued for that name by its holder: the deadline index the queues make.
    fn check_queues(&self) -> Result<BTreeSet<(u64, String, String)>, String> {
        let mut deadlines = BTreeSet::new();
        let locks = self.locks.iter().map(|(name, s)| (name, &s.queue));
        let groups = self.groups.iter().map(|(name, g)| (name, &g.queue));
        for (name, queue) in locks.chain(groups) {
            for w in queue {
                if w.until_ms < self.clock_ms {
                    return Err(format!("a wait for {name:?} ended but is still queued"));
                }
                if !deadlines.insert((w.until_ms, name.clone(), w.request_id.clone())) {
                    return Err(format!("request {:?} waits twice", w.request_id));
                }
                match self.requests.get(w.request_id.as_str()) {
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
        Ok(deadlines)
    }

    /// The remembered requests are the `waiting` ones (queued) and the settled ones, each
    /// settled once, in the order of time, none after the state's clock.
    fn check_requests(&self, waiting: usize) -> Result<(), String> {
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

    /// Every barrier waits for 1 to [`MAX_COUNT`] participants and has fewer (the last opens
    /// it), each still waiting and remembered so, and the deadline index matches: how many wait.
    fn check_barriers(&self) -> Result<usize, String> {
        let mut waiting = 0;
        for (name, b) in &self.barriers {
            if !(1..=MAX_COUNT).contains(&b.count)
                || b.arrivals.is_empty()
                || b.arrivals.len() >= b.count as usize
            {
                return Err(format!(
                    "barrier {name:?} of count {} has {} arrivals",
                    b.count,
                    b.arrivals.len()
                ));
            }
            for a in &b.arrivals {
                waiting += 1;
                if a.until_ms < self.clock_ms {
                    return Err(format!(
                        "a wait at barrier {name:?} ended but is still there"
                    ));
                }
                match self.requests.get(a.request_id.as_str()) {
                    Some(Remembered {
                        kind: RequestKind::Arrive,
                        name: n,
                        holder,
                        answer: Answer::Queued { .. },
                        ..
                    }) if n == name && *holder == a.holder => {}
                    _ => {
                        return Err(format!(
                            "arrival {:?} is not remembered as waiting at {name:?}",
                            a.request_id
                        ));
                    }
                }
            }
        }
        if self.arrival_index() != self.arrival_deadlines || waiting != self.arrival_deadlines.len()
        {
            return Err("the arrival deadline index does not match the barriers".into());
        }
        Ok(waiting)
    }

    /// Every session is live and indexed, and a waiting acquire remembered for a session is
    /// still waiting.
    fn check_sessions(&self) -> Result<(), String> {
        if self.sessions.len() > MAX_SESSIONS || self.session_index() != self.session_expiries {
            return Err("the sessions' count or expiry index does not match".into());
        }
        if self.session_hold_index().as_ref() != Some(&self.session_holds) {
            return Err("a hold is in two sessions, or the index of their holds is off".into());
        }
        if let Some((id, _)) = self
            .sessions
            .iter()
            .find(|(_, s)| s.expires_at_ms() < self.clock_ms)
        {
            return Err(format!("session {id} ended but is still open"));
        }
        for id in self.session_waiters.keys() {
            if !matches!(self.answer(id), Some(Answer::Queued { .. })) {
                return Err(format!(
                    "request {id:?} waits in a session but is not queued"
                ));
            }
        }
        Ok(())
    }

    /// A group's holds are live and compatible (never more permits than its limit; shared
    /// holds, or one exclusive hold), and the head of its queue does not fit beside them (else
    /// it would have been let in).
    fn check_group(&self, name: &str, g: &Group) -> Result<(), String> {
        let Some(first) = g.holds.first() else {
            return Err(format!("group {name:?} has no holds"));
        };
        for h in &g.holds {
            if LockTable::is_stale(&h.lease, self.clock_ms) {
                return Err(format!("a hold of {name:?} ended but is still held"));
            }
        }
        match g.limit {
            Some(limit) => {
                if !(1..=MAX_LIMIT).contains(&limit) {
                    return Err(format!("semaphore {name:?} has limit {limit}"));
                }
                if g.holds.iter().any(|h| h.shared || h.permits == 0) {
                    return Err(format!("semaphore {name:?} has a shared or empty hold"));
                }
                if g.used() > u64::from(limit) {
                    return Err(format!(
                        "semaphore {name:?} of limit {limit} has {} permits held",
                        g.used()
                    ));
                }
            }
            None => {
                if g.holds.iter().any(|h| h.permits != 1) {
                    return Err(format!("lock {name:?} has a hold of many permits"));
                }
                let exclusive = g.holds.iter().filter(|h| !h.shared).count();
                if exclusive > 0 && g.holds.len() > 1 {
                    return Err(format!("lock {name:?} has an exclusive hold and another"));
                }
            }
        }
        let tokens_grow = g
            .holds
            .windows(2)
            .all(|w| w[0].lease.fencing_token <= w[1].lease.fencing_token);
        if !tokens_grow {
            return Err(format!("the holds of {name:?} are not in grant order"));
        }
        if let Some(head) = g.queue.front() {
            let fits = match g.limit {
                Some(limit) => g.used() + u64::from(head.permits) <= u64::from(limit),
                None if head.shared => g.holds.iter().all(|h| h.shared),
                None => false,
            };
            let valid = match g.limit {
                Some(limit) => !head.shared && (1..=limit).contains(&head.permits),
                None => head.permits == 1,
            };
            if fits || !valid || g.queue.iter().any(|w| w.permits == 0) {
                return Err(format!(
                    "the head of {name:?}'s queue fits but waits, or cannot fit ({:?})",
                    first.lease.worker_id
                ));
            }
        }
        Ok(())
    }
}
