//! Server-sent events of what one read of the state shows, sent again each time it changes:
//! `GET /election/{name}/observe`, the leader of an election.
//!
//! The node that the client contacted serves the stream from its own copy of the state, as etcd
//! serves watches from any member: followers share the load, and every node applies the same
//! log in the same order, so each sees the same changes in the same order, a follower a little
//! later. The read is redone after every entry this node applies and sent only when its JSON
//! differs from the last one sent: a lease that runs out is ended by an entry too (the tick the
//! leader writes when it ends), so no change falls between two entries unseen. A comment line every [`KEEP_ALIVE`] lets proxies and clients tell a quiet
//! stream from a dead connection.
//!
//! A stream holds a connection for as long as its client listens, so it takes one of the
//! permits of waiting requests ([`Node::waits`]): streams and waits together cannot take the
//! connections that short requests, peers and health probes need.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::stream;
use serde_json::Value;
use tokio::sync::OwnedSemaphorePermit;

use super::node::Node;

/// How often a quiet stream says it is alive.
pub const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// Streams `read`'s answer now and after each change, for as long as the client listens and the
/// node runs. `permit` is held until the stream ends.
pub fn changes(
    node: Arc<Node>,
    permit: OwnedSemaphorePermit,
    read: impl Fn(&Node) -> Value + Send + 'static,
) -> Response {
    let applied = node.state.subscribe();
    let start = (node, applied, read, None::<String>, permit);
    let events = stream::unfold(
        start,
        |(node, mut applied, read, last, permit)| async move {
            loop {
                let now = read(&node).to_string();
                if last.as_ref() != Some(&now) {
                    let event = Event::default().data(&now);
                    return Some((
                        Ok::<_, Infallible>(event),
                        (node, applied, read, Some(now), permit),
                    ));
                }
                // The node stopped (its state is gone): the stream ends, and the client reconnects
                // to another node.
                applied.changed().await.ok()?;
            }
        },
    );
    Sse::new(events)
        .keep_alive(KeepAlive::new().interval(KEEP_ALIVE))
        .into_response()
}
