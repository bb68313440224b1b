//! The watch stream: `GET /watch?prefix=P&since_revision=N`, server-sent events of what happened
//! to the locks ([`crate::state::Event`]), in revision order.
//!
//! Each node keeps the last [`HISTORY`] events it applied, in memory. Revisions are part of the
//! replicated state, so every node numbers the same events alike, and a client that reconnects —
//! to the same node after a restart, or to another after a leader change — asks for the events
//! after the last revision it saw and gets each one exactly once. A node only has the events it
//! applied itself since it started (from its snapshot on) and the last [`HISTORY`] of them: a
//! client that asks for older ones is told, with a `compacted` event naming the last revision
//! it cannot have, and then gets the oldest the node keeps onwards, as etcd tells a watcher of
//! a compacted revision. Each event's SSE `id` is its revision, so an `EventSource` resumes by
//! itself (`Last-Event-ID`); the stream opens with an id alone, the revision it starts after.
//!
//! Like the election's observe stream, a watch is served by the node the client contacted, from
//! its own copy of the state, and takes one of the node's waiting-request permits. This module
//! keeps the history (the store fills it); `api/watch.rs` serves it.

use std::collections::VecDeque;

use crate::state::Event;

/// Events each node keeps for watchers that reconnect.
pub const HISTORY: usize = 10_000;

/// The last events this node applied.
#[derive(Debug)]
pub struct History {
    events: VecDeque<Event>,
    /// The revision of the last event applied (0 before any).
    last: u64,
}

impl History {
    /// An empty history that goes on from `revision`: what a node that starts from a snapshot
    /// (or installs one) can offer.
    pub fn after(revision: u64) -> History {
        History {
            events: VecDeque::new(),
            last: revision,
        }
    }

    /// Keeps an applied event, forgetting the oldest beyond [`HISTORY`].
    pub fn push(&mut self, event: Event) {
        self.last = event.revision;
        self.events.push_back(event);
        if self.events.len() > HISTORY {
            self.events.pop_front();
        }
    }

    /// The revision of the last event applied.
    pub fn last(&self) -> u64 {
        self.last
    }

    /// The events after revision `since` that `wanted` keeps (at most `most`); `Err(r)` when
    /// the events after `since` up to `r` are no longer kept.
    pub fn since(
        &self,
        since: u64,
        wanted: &dyn Fn(&Event) -> bool,
        most: usize,
    ) -> Result<Vec<Event>, u64> {
        let oldest = self.events.front().map_or(self.last + 1, |e| e.revision);
        if since + 1 < oldest {
            return Err(oldest - 1);
        }
        let skip = (since + 1 - oldest) as usize;
        Ok(self
            .events
            .iter()
            .skip(skip)
            .filter(|e| wanted(e))
            .take(most)
            .cloned()
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::EventKind;

    fn event(revision: u64, lock: &str) -> Event {
        Event {
            event: EventKind::Acquired,
            lock: lock.into(),
            key: None,
            worker_id: "w".into(),
            fencing_token: Some(revision),
            revision,
        }
    }

    #[test]
    fn a_history_gives_what_follows_a_revision_and_says_what_it_no_longer_has() {
        let all = |_: &Event| true;
        let mut h = History::after(5);
        assert_eq!(h.since(5, &all, 10), Ok(vec![]));
        assert_eq!(
            h.since(3, &all, 10),
            Err(5),
            "a node started from a snapshot at 5"
        );
        for r in 6..6 + HISTORY as u64 + 2 {
            h.push(event(r, if r % 2 == 0 { "a" } else { "b" }));
        }
        // 6 and 7 were forgotten: after 7 is complete, after 6 is not.
        assert_eq!(h.since(6, &all, 10), Err(7));
        let after = h.since(7, &|e: &Event| e.lock == "a", 2).unwrap();
        assert_eq!(
            after.iter().map(|e| e.revision).collect::<Vec<_>>(),
            [8, 10]
        );
        assert_eq!(h.since(h.last(), &all, 10), Ok(vec![]));
    }
}
