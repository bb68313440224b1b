//! `POST /sessions`, `POST /sessions/{id}/keepalive`, `POST /sessions/{id}/close` and
//! `GET /sessions/{id}`: sessions ([`crate::state`]'s), one lease that the holds taken in them
//! (`"session": id` in an acquire) share.
//!
//! Every write is served by the leader (a follower forwards it), carries a request id, and is
//! audited like a lock's, under the name `session ID`. Any token may open a session; what a hold
//! in it may lock is checked at its acquire.

use std::sync::Arc;

use axum::Extension;
use axum::extract::{Path, Request, State};
use axum::response::{IntoResponse, Response};
use http::{Method, StatusCode};
use serde_json::json;

use sentinel_core::lease;
use sentinel_proto::api::{SessionBody, SessionCallBody};

use super::{
    ApiError, Audited, Caller, answer, checked_ttl, error, label, linearizable, method_not_allowed,
    ok, on_leader, parse, request_id,
};
use crate::node::Node;
use crate::state::{Command, OpenSession, SessionCall};

/// `POST /sessions`.
pub(super) async fn open(
    State(node): State<Arc<Node>>,
    Extension(caller): Extension<Caller>,
    req: Request,
) -> Response {
    if req.method() != Method::POST {
        return method_not_allowed(req.method(), "/sessions", "POST").into_response();
    }
    let audited = Audited::of(&node, &caller, &req, "open_session", "session".into());
    let response = on_leader(node, req, |node, body| async move {
        let b: SessionBody = parse(&body)?;
        label("holder", &b.holder)?;
        checked_ttl(b.ttl_ms)?;
        let id = request_id(b.request_id)?;
        let command = Command::OpenSession(OpenSession {
            request_id: id.clone(),
            holder: b.holder,
            ttl_ms: b.ttl_ms,
        });
        let (outcome, _) = node.propose(command).await.map_err(super::propose_error)?;
        answer(&node, "", &id, outcome)
    })
    .await;
    audited.finish(response).await
}

/// `POST /sessions/{id}/keepalive`, `POST /sessions/{id}/close`, `GET /sessions/{id}`.
pub(super) async fn call(
    State(node): State<Arc<Node>>,
    Extension(caller): Extension<Caller>,
    path: Result<Path<String>, axum::extract::rejection::PathRejection>,
    req: Request,
) -> Response {
    let route = req.uri().path().to_string();
    let parsed = path.ok().and_then(|Path(rest)| {
        let (id, action) = rest.split_once('/').unwrap_or((rest.as_str(), ""));
        Some((id.parse::<u64>().ok()?, action.to_string()))
    });
    let Some((id, action)) = parsed else {
        return error(
            StatusCode::NOT_FOUND,
            "unknown_route",
            format!("no route {route}"),
        )
        .into_response();
    };
    let method = match action.as_str() {
        "" => Method::GET,
        "keepalive" | "close" => Method::POST,
        _ => {
            return error(
                StatusCode::NOT_FOUND,
                "unknown_route",
                format!("no route {route}"),
            )
            .into_response();
        }
    };
    if req.method() != method {
        return method_not_allowed(req.method(), &route, method.as_str()).into_response();
    }
    if action.is_empty() {
        return on_leader(
            node,
            req,
            move |node, _| async move { status(&node, id).await },
        )
        .await;
    }
    let op = match action.as_str() {
        "close" => "close_session",
        _ => "keep_session",
    };
    let audited = Audited::of(&node, &caller, &req, op, format!("session {id}"));
    let response = on_leader(node, req, move |node, body| async move {
        let b: SessionCallBody = parse(&body)?;
        label("holder", &b.holder)?;
        let request_id = request_id(b.request_id)?;
        let session = SessionCall {
            request_id: request_id.clone(),
            holder: b.holder,
            session: id,
        };
        let command = match action.as_str() {
            "close" => Command::CloseSession(session),
            _ => Command::KeepSession(session),
        };
        let (outcome, _) = node.propose(command).await.map_err(super::propose_error)?;
        answer(&node, "", &request_id, outcome)
    })
    .await;
    audited.finish(response).await
}

/// `{"session", "holder", "ttl_ms", "expires_at", "holds": [{"lock", "fencing_token"}]}`.
async fn status(node: &Node, id: u64) -> Result<Response, ApiError> {
    linearizable(node).await?;
    let found = node.state.read(|m| {
        m.state.session(id).map(|s| {
            let holds: Vec<_> = s
                .holds
                .iter()
                .map(|(lock, token)| json!({"lock": lock, "fencing_token": token}))
                .collect();
            json!({
                "session": id, "holder": s.holder, "ttl_ms": s.ttl_ms,
                "expires_at": lease::rfc3339(lease::from_unix_ms(s.expires_at_ms())),
                "holds": holds,
            })
        })
    });
    found.map(ok).ok_or_else(|| {
        error(
            StatusCode::NOT_FOUND,
            "no_session",
            format!("session {id} is not open"),
        )
    })
}
