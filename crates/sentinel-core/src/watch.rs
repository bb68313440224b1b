//! Watching locks: the events a watch stream gives, the same on every backend that keeps them
//! (the coordinator's `GET /watch`, the local backend's table).
//!
//! Each event has a `revision`, one more than the event before it on that backend, so a watcher
//! resumes after the last revision it saw and gets every later event once. A backend keeps only
//! its last events; a watcher that asks for older ones gets [`WatchItem::Compacted`] first.

use serde::{Deserialize, Serialize};

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// A hold was granted.
    Acquired,
    /// A hold was given back, or taken back with its claim.
    Released,
    /// A hold's lease ran out (on the local backend: a stale hold taken over or cleared).
    Expired,
    /// An acquire joined a queue (the coordinator's).
    Queued,
    /// A key was written (the coordinator's key-value store).
    Put,
    /// A key was deleted.
    Deleted,
}

/// One event: `{"event","lock","worker_id","fencing_token","revision"}` for a lock, and
/// `{"event","key","worker_id","fencing_token":null,"revision"}` for a key (read its value with
/// a get: events carry no values, so a watcher's history stays small whatever the values).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatchEvent {
    /// What happened.
    pub event: EventKind,
    /// The lock (or semaphore) it happened to; empty for a key's event.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub lock: String,
    /// The key it happened to; `None` for a lock's event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// Whose hold, or who queued.
    pub worker_id: String,
    /// The hold's fencing token; `None` for a queued acquire.
    #[serde(default)]
    pub fencing_token: Option<u64>,
    /// Its place among all the backend's events: 1, 2, …
    pub revision: u64,
}

impl WatchEvent {
    /// The lock or key it happened to, which a watch's filter matches.
    pub fn subject(&self) -> &str {
        self.key.as_deref().unwrap_or(&self.lock)
    }
}

/// `{"event":"compacted","revision":R}`: the events after the revision a watch asked for, up to
/// `R`, are no longer kept; the watch goes on from the oldest kept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Compacted {
    /// Always `compacted`.
    pub event: String,
    /// The last revision that cannot be had.
    pub revision: u64,
}

impl Compacted {
    /// The events up to `revision` are gone.
    pub fn up_to(revision: u64) -> Compacted {
        Compacted {
            event: "compacted".into(),
            revision,
        }
    }
}

/// One item of a watch stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum WatchItem {
    /// An event.
    Event(WatchEvent),
    /// Events were lost to compaction.
    Compacted(Compacted),
}

impl WatchItem {
    /// The revision it brings the watch to.
    pub fn revision(&self) -> u64 {
        match self {
            WatchItem::Event(e) => e.revision,
            WatchItem::Compacted(c) => c.revision,
        }
    }
}

/// Which locks (and keys) a watch follows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchFilter {
    /// Every lock and key whose name starts with it (all of them for "").
    Prefix(String),
    /// One lock.
    Name(String),
}

impl WatchFilter {
    /// Whether events of `lock` (or key) are followed.
    pub fn matches(&self, lock: &str) -> bool {
        match self {
            WatchFilter::Prefix(p) => lock.starts_with(p.as_str()),
            WatchFilter::Name(n) => lock == n,
        }
    }
}
