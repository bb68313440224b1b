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
//! its own copy of the state, and takes one of the node's waiting-request permits.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;

use axum::response::sse::{Event as Sse, KeepAlive};
use axum::response::{IntoResponse, Response};
use futures_util::stream;
use serde_json::json;
use tokio::sync::OwnedSemaphorePermit;

use crate::node::Node;
use crate::observe::KEEP_ALIVE;
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
    fn since(
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

/// Most events sent at once; the rest follow at the next turn.
const BATCH: usize = 256;

/// Streams the events after revision `since` (the node's last, if `None`) that `wanted` keeps,
/// for as long as the client listens. `permit` is held until the stream ends.
pub fn stream(
    node: Arc<Node>,
    permit: OwnedSemaphorePermit,
    since: Option<u64>,
    wanted: impl Fn(&Event) -> bool + Send + Sync + 'static,
) -> Response {
    let applied = node.state.subscribe();
    let since = since.unwrap_or_else(|| node.state.history(|h| h.last()));
    // First an event with only an id: where the stream starts, so a client that loses it
    // before any event resumes from there (an `EventSource` dispatches nothing for it).
    let first = stream::iter([Ok::<_, Infallible>(Sse::default().id(since.to_string()))]);
    let start = (node, applied, since, wanted, permit);
    let events = stream::unfold(
        start,
        |(node, mut applied, since, wanted, permit)| async move {
            loop {
                let found = node.state.history(|h| h.since(since, &wanted, BATCH));
                let (sse, next) = match found {
                    Ok(events) if events.is_empty() => {
                        // The node stopped: the stream ends, and the client resumes elsewhere.
                        applied.changed().await.ok()?;
                        continue;
                    }
                    Ok(events) => {
                        let next = events.last().map_or(since, |e| e.revision);
                        let sse: Vec<_> = events.iter().map(event).collect();
                        (sse, next)
                    }
                    Err(gone) => {
                        let data = json!({"event": "compacted", "revision": gone});
                        let sse = Sse::default().id(gone.to_string()).data(data.to_string());
                        (vec![sse], gone)
                    }
                };
                let batch = stream::iter(sse.into_iter().map(Ok::<_, Infallible>));
                return Some((batch, (node, applied, next, wanted, permit)));
            }
        },
    );
    use futures_util::StreamExt;
    axum::response::sse::Sse::new(first.chain(events.flatten()))
        .keep_alive(KeepAlive::new().interval(KEEP_ALIVE))
        .into_response()
}

fn event(e: &Event) -> Sse {
    let data = serde_json::to_string(e).unwrap_or_default();
    Sse::default().id(e.revision.to_string()).data(data)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::EventKind;

    fn event(revision: u64, lock: &str) -> Event {
        Event {
            event: EventKind::Acquired,
            lock: lock.into(),
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
