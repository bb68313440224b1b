//! `GET /watch`: the query of a watch stream ([`crate::watch`]) checked, and the events a token
//! may not see left out of it.

use std::sync::Arc;

use axum::Extension;
use axum::extract::{Query, Request, State};
use axum::response::{IntoResponse, Response};
use http::{Method, StatusCode};
use serde::Deserialize;

use sentinel_core::lock::validate_name;
use sentinel_core::watch::WatchFilter;

use super::{ApiError, Busy, Caller, error, method_not_allowed};
use crate::node::Node;

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
    crate::watch::stream(node, permit, since, move |e| {
        filter.matches(&e.lock) && caller.may(&e.lock)
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
