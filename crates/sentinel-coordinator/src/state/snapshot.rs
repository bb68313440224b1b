//! Snapshots: the lock state as JSON, written by a node and read back from disk or from another
//! node.
//!
//! Only the state itself is stored; the indexes (lease expiries, wait deadlines) are rebuilt on
//! loading, and a loaded state must pass the invariants before it is used: a snapshot is data
//! from outside, which may be corrupt.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::requests::Remembered;
use super::{Barrier, Group, KvValue, LockState, Session, Slot};

/// The lock state as a snapshot stores it: the indexes are derived on loading.
#[derive(Serialize, Deserialize)]
struct Stored {
    clock_ms: u64,
    #[serde(default)]
    term: u64,
    locks: BTreeMap<String, Slot>,
    /// Absent from snapshots written before semaphores and shared holds, and while none is held.
    #[serde(default)]
    groups: BTreeMap<String, Group>,
    /// Absent from snapshots written before barriers, and while nobody waits at one.
    #[serde(default)]
    barriers: BTreeMap<String, Barrier>,
    requests: BTreeMap<Arc<str>, Remembered>,
    /// Settled request ids in the order they were settled, with the time.
    settled: VecDeque<(u64, Arc<str>)>,
    /// Absent from snapshots written before events were numbered: they start from 0.
    #[serde(default)]
    revision: u64,
    /// Absent from snapshots written before sessions, and while none is open.
    #[serde(default)]
    sessions: BTreeMap<u64, Session>,
    #[serde(default)]
    session_waiters: BTreeMap<String, u64>,
    /// Absent from snapshots written before the key-value store, and while it is empty.
    #[serde(default)]
    kv: BTreeMap<String, KvValue>,
}

/// [`Stored`] by reference, so writing a snapshot does not copy the state.
#[derive(Serialize)]
struct StoredRef<'a> {
    clock_ms: u64,
    term: u64,
    locks: &'a BTreeMap<String, Slot>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    groups: &'a BTreeMap<String, Group>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    barriers: &'a BTreeMap<String, Barrier>,
    requests: &'a BTreeMap<Arc<str>, Remembered>,
    settled: &'a VecDeque<(u64, Arc<str>)>,
    revision: u64,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    sessions: &'a BTreeMap<u64, Session>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    session_waiters: &'a BTreeMap<String, u64>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    kv: &'a BTreeMap<String, KvValue>,
}

impl LockState {
    /// The state as JSON, for a snapshot.
    pub fn to_json(&self) -> serde_json::Result<Vec<u8>> {
        serde_json::to_vec(&StoredRef {
            clock_ms: self.clock_ms,
            term: self.term,
            locks: &self.locks,
            groups: &self.groups,
            barriers: &self.barriers,
            requests: &self.requests,
            settled: &self.settled,
            revision: self.revision,
            sessions: &self.sessions,
            session_waiters: &self.session_waiters,
            kv: &self.kv,
        })
    }

    /// Reads a snapshot written by [`Self::to_json`], rebuilding the indexes and refusing a state
    /// that breaks an invariant (a snapshot is data from disk or from another node).
    pub fn from_json(bytes: &[u8]) -> Result<LockState, String> {
        let mut stored: Stored = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        // A settled id read from the snapshot shares the map's copy of it, as when it was made.
        for (_, id) in &mut stored.settled {
            if let Some((shared, _)) = stored.requests.get_key_value(&**id) {
                *id = shared.clone();
            }
        }
        let mut state = LockState {
            clock_ms: stored.clock_ms,
            term: stored.term,
            locks: stored.locks,
            expiries: BTreeSet::new(),
            groups: stored.groups,
            hold_expiries: BTreeSet::new(),
            holds: 0,
            deadlines: BTreeSet::new(),
            barriers: stored.barriers,
            arrival_deadlines: BTreeSet::new(),
            requests: stored.requests,
            settled: stored.settled,
            revision: stored.revision,
            sessions: stored.sessions,
            session_expiries: BTreeSet::new(),
            session_waiters: stored.session_waiters,
            session_holds: BTreeMap::new(),
            kv: stored.kv,
            kv_bytes: 0,
        };
        state.expiries = state
            .locks
            .iter()
            .map(|(name, slot)| (slot.lease.expires_at_ms(), name.clone()))
            .collect();
        state.hold_expiries = state.hold_index();
        state.holds = state.groups.values().map(|g| g.holds.len()).sum();
        state.deadlines = state.deadline_index();
        state.arrival_deadlines = state.arrival_index();
        state.session_expiries = state.session_index();
        state.kv_bytes = state.kv_cost();
        state.session_holds = state
            .session_hold_index()
            .ok_or("a hold is in two sessions")?;
        state.check()?;
        Ok(state)
    }
}
