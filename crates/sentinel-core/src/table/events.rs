//! The lock table's events, for the local backend's watch: what each transaction did to the
//! holds, numbered, the last [`HISTORY`] of them kept in the table itself.
//!
//! Events are found by comparing the holds before and after a transaction, so every way a hold
//! comes or goes (a claim, a release, a take-over, the janitor, an interrupted claim taken back,
//! a hold of a group) is told without a hook in each. A hold that is gone was `expired` if its
//! lease had run out by the transaction's time, else `released`; a take-over tells the old
//! hold's end before the new one's start. The local backend has no queue: no `queued` events.
//!
//! Keeping events costs every transaction a bigger file to write, so they are kept only while
//! someone watches: a watch marks the table watched for a few seconds at a time
//! ([`LockTable::watched_until`]), and meanwhile every event is kept. Unwatched, only the
//! revision counts on, and a watch that resumes across such a time is told the events are gone.

use std::collections::BTreeMap;

use super::{LockRecord, LockTable};
use crate::watch::{EventKind, WatchEvent};

/// Events the table keeps for watchers that resume.
pub const HISTORY: usize = 1_000;

/// `(lock, worker, token)`, and the record: one hold, as before/after are compared.
type Holds = BTreeMap<(String, String, u64), LockRecord>;

impl LockTable {
    /// Every hold now, to compare with after a change ([`LockTable::note_changes`]).
    pub fn hold_records(&self) -> Vec<(String, LockRecord)> {
        self.holds()
            .into_iter()
            .map(|(name, r)| (name.to_string(), r.clone()))
            .collect()
    }

    /// Numbers and keeps the events between `before` (from [`LockTable::hold_records`]) and
    /// the holds now, judged at `now_ms`.
    pub fn note_changes(&mut self, before: Vec<(String, LockRecord)>, now_ms: u64) {
        let index = |holds: Vec<(String, LockRecord)>| -> Holds {
            holds
                .into_iter()
                .map(|(n, r)| ((n, r.worker_id.clone(), r.fencing_token), r))
                .collect()
        };
        let before = index(before);
        let after = index(self.hold_records());
        let gone = before
            .iter()
            .filter(|(k, _)| !after.contains_key(*k))
            .map(|(k, r)| {
                let kind = match LockTable::is_stale(r, now_ms) {
                    true => EventKind::Expired,
                    false => EventKind::Released,
                };
                (kind, k)
            });
        let new = after
            .keys()
            .filter(|k| !before.contains_key(*k))
            .map(|k| (EventKind::Acquired, k));
        let changes: Vec<_> = gone.chain(new).collect();
        let kept = now_ms <= self.watched_until_ms;
        for (event, (lock, worker_id, token)) in changes {
            self.revision += 1;
            if !kept {
                continue;
            }
            self.events.push_back(WatchEvent {
                event,
                lock: lock.clone(),
                key: None,
                worker_id: worker_id.clone(),
                fencing_token: Some(*token),
                revision: self.revision,
            });
        }
        if !kept {
            self.events.clear();
        }
        while self.events.len() > HISTORY {
            self.events.pop_front();
        }
    }

    /// Someone watches until `until_ms`: the events until then are kept.
    pub fn watched_until(&mut self, until_ms: u64) {
        self.watched_until_ms = self.watched_until_ms.max(until_ms);
    }

    /// The revision of the last event (0 before any).
    pub fn revision(&self) -> u64 {
        self.revision
    }

    /// The events after revision `since` that `wanted` keeps; `Err(r)` when the events after
    /// `since` up to `r` are no longer kept.
    pub fn events_since(
        &self,
        since: u64,
        wanted: impl Fn(&WatchEvent) -> bool,
    ) -> Result<Vec<WatchEvent>, u64> {
        let oldest = self
            .events
            .front()
            .map_or(self.revision + 1, |e| e.revision);
        if since.saturating_add(1) < oldest {
            return Err(oldest - 1);
        }
        Ok(self
            .events
            .iter()
            .filter(|e| e.revision > since && wanted(e))
            .cloned()
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lock::{HoldKind, Takeover, TaskInfo};
    use crate::table::Op;

    fn claim(t: &mut LockTable, name: &str, worker: &str, takeover: Takeover, now: u64) {
        t.watched_until(u64::MAX);
        let before = t.hold_records();
        let op = Op::Acquire {
            name: name.into(),
            worker_id: worker.into(),
            node_id: "n".into(),
            ttl_ms: 1_000,
            takeover,
            task_info: TaskInfo::default(),
            readopt: false,
            kind: HoldKind::Exclusive,
            wait_ms: 0,
        };
        t.apply(&op, now);
        t.note_changes(before, now);
    }

    #[test]
    fn each_change_of_a_hold_is_one_numbered_event() {
        let mut t = LockTable::default();
        claim(&mut t, "a", "w1", Takeover::None, 0);
        // A stale hold taken over: its end first, then the new hold.
        claim(&mut t, "a", "w2", Takeover::Stale, 5_000);
        let before = t.hold_records();
        t.apply(
            &Op::Release {
                name: "a".into(),
                worker_id: "w2".into(),
                force: false,
                fencing_token: None,
            },
            5_100,
        );
        t.note_changes(before, 5_100);
        let events = t.events_since(0, |_| true).unwrap();
        let seen: Vec<_> = events
            .iter()
            .map(|e| (e.event, e.worker_id.as_str(), e.revision))
            .collect();
        assert_eq!(
            seen,
            [
                (EventKind::Acquired, "w1", 1),
                (EventKind::Expired, "w1", 2),
                (EventKind::Acquired, "w2", 3),
                (EventKind::Released, "w2", 4),
            ]
        );
        assert_eq!(t.events_since(3, |_| true).unwrap().len(), 1);
        assert!(t.events_since(0, |e| e.lock == "b").unwrap().is_empty());
        // A table that read back keeps them.
        let back: LockTable = serde_json::from_str(&serde_json::to_string(&t).unwrap()).unwrap();
        assert_eq!(back.revision(), 4);
    }

    #[test]
    fn unwatched_changes_count_but_are_not_kept() {
        let mut t = LockTable::default();
        claim(&mut t, "a", "w1", Takeover::None, 0);
        // Nobody watches after 5: a change at 10 counts, and what was kept is dropped.
        t.watched_until_ms = 5;
        let before = t.hold_records();
        let release = Op::Release {
            name: "a".into(),
            worker_id: "w1".into(),
            force: false,
            fencing_token: None,
        };
        t.apply(&release, 10);
        t.note_changes(before, 10);
        assert_eq!(t.revision(), 2);
        assert_eq!(t.events_since(2, |_| true), Ok(vec![]));
        assert_eq!(t.events_since(0, |_| true), Err(2));
    }

    #[test]
    fn only_the_last_events_are_kept_and_older_ones_are_said_gone() {
        let mut t = LockTable::default();
        for i in 0..HISTORY as u64 + 5 {
            claim(&mut t, &format!("l{i}"), "w", Takeover::None, i);
        }
        assert_eq!(t.events_since(0, |_| true), Err(5));
        assert_eq!(t.events_since(5, |_| true).unwrap().len(), HISTORY);
    }
}
