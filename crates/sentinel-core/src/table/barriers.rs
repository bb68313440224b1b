//! Barriers in the lock table: the local backend's participants that meet across processes.
//!
//! There is no server to hold a waiting participant, so each arrival is a short lease that the
//! waiting process renews while it polls, and a participant killed while it waits stops counting
//! when its lease runs out. The arrival that completes the count opens the barrier in the same
//! transaction: every waiting arrival moves to the barrier's `opened` set, where its process
//! finds it on its next poll, and the name starts a new round. An opened entry that nobody
//! collects (its process died) is dropped after [`OPENED_KEEP_MS`].

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::LockTable;

/// How long an opened arrival waits to be collected by its process.
pub const OPENED_KEEP_MS: u64 = 10 * 60 * 1000;

/// A barrier some participants wait at or have not yet seen opened.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Barrier {
    /// How many participants open it (0 while nobody waits).
    count: u32,
    /// Waiting arrivals by id: who, and until when it counts without a renewal.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    arrivals: BTreeMap<String, Arrival>,
    /// Arrivals the barrier opened for, by id, kept for their process to collect.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    opened: BTreeMap<String, Opening>,
}

/// An opening not yet collected.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Opening {
    /// The count the barrier opened at.
    count: u32,
    /// Kept until then.
    until_ms: u64,
}

/// One waiting participant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Arrival {
    worker_id: String,
    expires_ms: u64,
}

/// Where an arrival stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Meeting {
    /// The barrier opened for it (and the arrival is collected).
    Opened {
        /// How many participants it waited for.
        count: u32,
    },
    /// It waits, with `arrived` others, for `count`.
    Waiting {
        /// Other participants waiting.
        arrived: u32,
        /// How many open it.
        count: u32,
    },
    /// It is not at the barrier (it left, or its lease ran out); `arrived` others wait.
    Gone {
        /// Other participants waiting.
        arrived: u32,
        /// How many open it (0 if nobody waits).
        count: u32,
    },
    /// The participants waiting gave another count; nothing changed.
    CountMismatch {
        /// Their count.
        count: u32,
    },
}

impl Barrier {
    /// Drops arrivals whose lease ran out and opened entries kept long enough.
    fn prune(&mut self, now: u64) {
        self.arrivals.retain(|_, a| a.expires_ms >= now);
        self.opened.retain(|_, o| o.until_ms >= now);
        if self.arrivals.is_empty() {
            self.count = 0;
        }
    }

    fn waiting(&self) -> u32 {
        self.arrivals.len() as u32
    }
}

impl LockTable {
    /// Arrival `id` of `worker_id` at barrier `name` of `count`, counting for `lease_ms`: opens
    /// the barrier if it completes the count.
    pub fn arrive(
        &mut self,
        (name, id, worker_id): (&str, &str, &str),
        count: u32,
        lease_ms: u64,
        now: u64,
    ) -> Meeting {
        let b = self.barriers.entry(name.to_string()).or_default();
        b.prune(now);
        if b.count != 0 && b.count != count {
            return Meeting::CountMismatch { count: b.count };
        }
        b.count = count;
        let arrival = Arrival {
            worker_id: worker_id.to_string(),
            expires_ms: now.saturating_add(lease_ms),
        };
        b.arrivals.insert(id.to_string(), arrival);
        if b.waiting() < count {
            return Meeting::Waiting {
                arrived: b.waiting() - 1,
                count,
            };
        }
        let until_ms = now.saturating_add(OPENED_KEEP_MS);
        for other in std::mem::take(&mut b.arrivals).into_keys() {
            if other != id {
                b.opened.insert(other, Opening { count, until_ms });
            }
        }
        b.count = 0;
        self.drop_if_empty(name);
        Meeting::Opened { count }
    }

    /// Arrival `id` checks in: collects its opening, or renews its lease for `lease_ms`.
    pub fn check_in(&mut self, name: &str, id: &str, lease_ms: u64, now: u64) -> Meeting {
        let Some(b) = self.barriers.get_mut(name) else {
            return Meeting::Gone {
                arrived: 0,
                count: 0,
            };
        };
        b.prune(now);
        let count = b.count;
        let meeting = if let Some(o) = b.opened.remove(id) {
            Meeting::Opened { count: o.count }
        } else if let Some(a) = b.arrivals.get_mut(id) {
            a.expires_ms = now.saturating_add(lease_ms);
            Meeting::Waiting {
                arrived: b.waiting() - 1,
                count,
            }
        } else {
            Meeting::Gone {
                arrived: b.waiting(),
                count,
            }
        };
        self.drop_if_empty(name);
        meeting
    }

    /// Arrival `id` stops waiting: it leaves, unless the barrier opened for it first.
    pub fn leave(&mut self, name: &str, id: &str, now: u64) -> Meeting {
        let Some(b) = self.barriers.get_mut(name) else {
            return Meeting::Gone {
                arrived: 0,
                count: 0,
            };
        };
        b.prune(now);
        let meeting = if let Some(o) = b.opened.remove(id) {
            Meeting::Opened { count: o.count }
        } else {
            b.arrivals.remove(id);
            let count = b.count;
            if b.arrivals.is_empty() {
                b.count = 0;
            }
            Meeting::Gone {
                arrived: b.waiting(),
                count,
            }
        };
        self.drop_if_empty(name);
        meeting
    }

    /// Whether arrival `id` would find its barrier opened, read without a change.
    pub fn is_opened(&self, name: &str, id: &str) -> bool {
        self.barriers
            .get(name)
            .is_some_and(|b| b.opened.contains_key(id))
    }

    fn drop_if_empty(&mut self, name: &str) {
        if self
            .barriers
            .get(name)
            .is_some_and(|b| b.arrivals.is_empty() && b.opened.is_empty())
        {
            self.barriers.remove(name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LEASE: u64 = 2_000;

    #[test]
    fn the_last_arrival_opens_the_barrier_for_everyone_waiting() {
        let mut t = LockTable::default();
        assert_eq!(
            t.arrive(("b", "1", "w1"), 3, LEASE, 0),
            Meeting::Waiting {
                arrived: 0,
                count: 3
            }
        );
        assert_eq!(
            t.arrive(("b", "2", "w2"), 3, LEASE, 10),
            Meeting::Waiting {
                arrived: 1,
                count: 3
            }
        );
        assert!(!t.is_opened("b", "1"));
        assert_eq!(
            t.arrive(("b", "3", "w3"), 3, LEASE, 20),
            Meeting::Opened { count: 3 }
        );
        assert!(t.is_opened("b", "1") && t.is_opened("b", "2"));
        assert_eq!(
            t.check_in("b", "1", LEASE, 30),
            Meeting::Opened { count: 3 }
        );
        // The next round starts afresh, even with another count.
        assert!(matches!(
            t.arrive(("b", "4", "w1"), 2, LEASE, 40),
            Meeting::Waiting { arrived: 0, .. }
        ));
        assert_eq!(t.leave("b", "2", 50), Meeting::Opened { count: 3 });
    }

    #[test]
    fn a_participant_whose_lease_ran_out_or_that_left_does_not_count() {
        let mut t = LockTable::default();
        t.arrive(("b", "1", "w1"), 2, LEASE, 0);
        // w1 stopped renewing: by 2,001 it is gone, and w2 waits alone.
        assert!(matches!(
            t.arrive(("b", "2", "w2"), 2, LEASE, LEASE + 1),
            Meeting::Waiting { arrived: 0, .. }
        ));
        assert!(matches!(
            t.check_in("b", "1", LEASE, LEASE + 2),
            Meeting::Gone { arrived: 1, .. }
        ));
        assert!(matches!(t.leave("b", "2", LEASE + 3), Meeting::Gone { .. }));
        assert_eq!(t, LockTable::default());
        // A renewed one keeps counting.
        t.arrive(("b", "1", "w1"), 2, LEASE, 0);
        t.check_in("b", "1", LEASE, 1_500);
        assert_eq!(
            t.arrive(("b", "2", "w2"), 2, LEASE, 3_000),
            Meeting::Opened { count: 2 }
        );
    }

    #[test]
    fn another_count_is_refused_while_participants_wait() {
        let mut t = LockTable::default();
        t.arrive(("b", "1", "w1"), 2, LEASE, 0);
        assert_eq!(
            t.arrive(("b", "2", "w2"), 3, LEASE, 5),
            Meeting::CountMismatch { count: 2 }
        );
        assert!(!t.barriers["b"].arrivals.contains_key("2"));
    }

    #[test]
    fn an_opening_nobody_collects_is_dropped_in_time() {
        let mut t = LockTable::default();
        t.arrive(("b", "1", "w1"), 2, LEASE, 0);
        t.arrive(("b", "2", "w2"), 2, LEASE, 1);
        t.arrive(("other", "3", "w3"), 2, LEASE, OPENED_KEEP_MS + 2);
        assert!(matches!(
            t.check_in("b", "1", LEASE, OPENED_KEEP_MS + 2),
            Meeting::Gone { .. }
        ));
        assert!(!t.barriers.contains_key("b"));
    }
}
