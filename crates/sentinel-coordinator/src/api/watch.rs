//! `GET /watch`: the query of a watch stream checked, the events a token may not see left out,
//! and the node's history ([`crate::watch`]) sent as server-sent events from the revision asked
//! for, waking at each entry applied.

use std::convert::Infallible;
use std::sync::Arc;

use axum::Extension;
use axum::extract::{Query, Request, State};
use axum::response::sse::{Event as Sse, KeepAlive};
use axum::response::{IntoResponse, Response};
use futures_util::{StreamExt, stream};
use http::{Method, StatusCode};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::OwnedSemaphorePermit;

use sentinel_core::lock::validate_name;
use sentinel_core::watch::WatchFilter;

use super::{ApiError, Busy, Caller, error, method_not_allowed};
use crate::node::Node;
use crate::observe::KEEP_ALIVE;
use crate::state::Event;

/// Longest `prefix`: a lock name's.
const MAX_PREFIX: usize = 256;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct WatchQuery {
    /// Events of the locks whose names start with it (every lock when empty or absent).
    prefix: Option<String>,
    /// Events of this one lock.
    name: Option<String>,
    /// Resume after this revision (else the `Last-Event-ID` header; else from now).
    since_revision: Option<u64>,
}

pub(super) async fn watch(
    State(node): State<Arc<Node>>,
    Extension(caller): Extension<Caller>,
    query: Result<Query<WatchQuery>, axum::extract::rejection::QueryRejection>,
    req: Request,
) -> Response {
    if req.method() != Method::GET {
        return method_not_allowed(req.method(), "/watch", "GET").into_response();
    }
    let last_seen = req
        .headers()
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let (filter, since) = match checked(query) {
        Ok((filter, since)) => (filter, since.or(last_seen)),
        Err(e) => return e.into_response(),
    };
    let Ok(permit) = node.waits.clone().try_acquire_owned() else {
        return Busy.into_response();
    };
    stream(node, permit, since, move |e| {
        filter.matches(e.subject()) && caller.may(e.subject())
    })
}

fn checked(
    query: Result<Query<WatchQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<(WatchFilter, Option<u64>), ApiError> {
    let bad = |why: String| error(StatusCode::BAD_REQUEST, "invalid_query", why);
    let Query(q) = query.map_err(|e| bad(e.body_text()))?;
    let filter = match (q.prefix, q.name) {
        (Some(_), Some(_)) => return Err(bad("give prefix or name, not both".into())),
        (None, Some(name)) => {
            validate_name(&name).map_err(|e| bad(e.to_string()))?;
            WatchFilter::Name(name)
        }
        (prefix, None) => {
            let prefix = prefix.unwrap_or_default();
            if prefix.chars().count() > MAX_PREFIX || prefix.chars().any(char::is_control) {
                return Err(bad(format!(
                    "prefix: at most {MAX_PREFIX} characters, no control characters"
                )));
            }
            WatchFilter::Prefix(prefix)
        }
    };
    Ok((filter, q.since_revision))
}

/// Most events sent at once; the rest follow at the next turn.
const BATCH: usize = 256;

/// Streams the events after revision `since` (the node's last, if `None`) that `wanted` keeps,
/// for as long as the client listens. `permit` is held until the stream ends.
fn stream(
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
    axum::response::sse::Sse::new(first.chain(events.flatten()))
        .keep_alive(KeepAlive::new().interval(KEEP_ALIVE))
        .into_response()
}

fn event(e: &Event) -> Sse {
    let data = serde_json::to_string(e).unwrap_or_default();
    Sse::default().id(e.revision.to_string()).data(data)
}
