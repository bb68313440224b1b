//! `POST /barriers/{name}/arrive` and `GET /barriers/{name}/status`: participants that meet.
//!
//! An arrival is proposed and then waited for like a queued acquire: it is answered when the
//! barrier opens (200), or when its wait runs out (409 `wait_timed_out`, with how many others
//! were there). A client that leaves while its arrival waits has it withdrawn, so a participant
//! that is gone does not open the barrier for the others.

use std::sync::Arc;

use axum::response::Response;
use serde_json::{Value, json};

use sentinel_core::lease;
use sentinel_proto::api::ArriveBody;

use super::{
    Abandoned, ApiError, MAX_QUEUE_SHOWN, answer, checked_wait, error, invalid, label,
    linearizable, ok, request_id, settle,
};
use crate::node::Node;
use crate::state::{Answer, Arrive, Barrier, Command, MAX_COUNT};

pub(super) async fn arrive(
    node: Arc<Node>,
    name: String,
    b: ArriveBody,
) -> Result<Response, ApiError> {
    label("holder", &b.holder)?;
    if let Some(n) = &b.node {
        label("node", n)?;
    }
    if !(1..=MAX_COUNT).contains(&b.count) {
        return Err(invalid("count", format!("use 1 to {MAX_COUNT}")));
    }
    checked_wait(b.wait_ms)?;
    let id = request_id(b.request_id)?;
    let abandoned = Abandoned::arm(&node, &name, &b.holder, &id);
    let command = Command::Arrive(Arrive {
        request_id: id.clone(),
        name: name.clone(),
        holder: b.holder,
        node: b.node.unwrap_or_default(),
        count: b.count,
        wait_ms: b.wait_ms,
    });
    let settled = settle(&node, command, &id, b.wait_ms).await;
    abandoned.answered();
    match settled?.0 {
        Answer::Withdrawn { .. } => Err(error(
            http::StatusCode::CONFLICT,
            "withdrawn",
            format!("arrival {id} was withdrawn by its client"),
        )),
        outcome => answer(&node, &name, &id, outcome),
    }
}

pub(super) async fn status(node: &Node, name: &str) -> Result<Response, ApiError> {
    linearizable(node).await?;
    Ok(ok(node
        .state
        .read(|m| barrier_json(name, m.state.barrier(name)))))
}

/// `{"barrier", "count": N | null, "arrived": K, "waiting": [{holder, node, since, until}]}`:
/// who waits at a barrier now (a barrier nobody waits at has no count).
fn barrier_json(name: &str, barrier: Option<&Barrier>) -> Value {
    let arrivals = barrier.map_or(&[][..], |b| &b.arrivals[..]);
    let shown: Vec<Value> = arrivals
        .iter()
        .take(MAX_QUEUE_SHOWN)
        .map(|a| {
            json!({
                "holder": a.holder, "node": a.node,
                "since": lease::rfc3339(lease::from_unix_ms(a.since_ms)),
                "until": lease::rfc3339(lease::from_unix_ms(a.until_ms)),
            })
        })
        .collect();
    json!({
        "barrier": name,
        "count": barrier.map(|b| b.count),
        "arrived": arrivals.len(),
        "waiting": shown,
    })
}
