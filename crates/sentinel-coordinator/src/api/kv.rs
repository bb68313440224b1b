//! `/kv`: the key-value store's routes ([`crate::state`]'s `kv` keeps the keys).
//!
//! `PUT /kv/{key}` writes (compare-and-set with `if_revision`, merge writes with `merge`),
//! `DELETE /kv/{key}` deletes, `POST /kv/txn` compares keys and then writes several, all or
//! none (a key named `txn` is still read, written and deleted by the other methods),
//! `GET /kv/{key}` reads one key and `GET /kv?prefix=P&after=K&limit=N` a page of keys. Writes go through the log like lock commands (request ids make retries
//! safe); reads are linearizable, served by the leader after a quorum confirms it leads, unless
//! `stale=true` asks this node's own copy. A key is the rest of the path, percent-decoded, so
//! keys may hold `/`. Tokens act on the keys their prefixes allow, as on locks, and writes are
//! audited as lock writes are.

use std::sync::Arc;

use axum::Extension;
use axum::extract::{Path, Query, Request, State};
use axum::response::{IntoResponse, Response};
use http::{Method, StatusCode};
use serde::Deserialize;
use serde_json::json;

use sentinel_core::kv::{MAX_TXN_OPS, MAX_VALUE_BYTES, Op, validate_key};
use sentinel_core::lease;
use sentinel_proto::api::{KvDeleteBody, KvEntry, KvPage, KvPutBody, KvRead, KvTxnBody};

use super::{
    ApiError, Audited, Caller, MAX_PAGE_BYTES, NamePath, admit, answer, checked_ttl, error,
    forbidden, invalid, label, linearizable, method_not_allowed, ok, on_leader, on_leader_within,
    page_limit, parse, propose_error, request_id,
};
use crate::node::Node;
use crate::state::{
    Answer, Command, KvDelete, KvPut, KvTxn, KvValue, LockState, MAX_ENTRY_VALUE_BYTES, json_len,
};

/// Largest body of a write: the largest value, and room for the other fields and for JSON a
/// client wrote with more whitespace or escapes than the value's own.
const MAX_KV_BODY: usize = MAX_VALUE_BYTES * 2;

/// Largest body of a transaction: half of what one log entry carries of values, so that a
/// transaction always fits in one.
const MAX_TXN_BODY: usize = MAX_ENTRY_VALUE_BYTES / 2;

/// `?stale=true`: read this node's own copy instead of the leader's.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ReadQuery {
    #[serde(default)]
    stale: bool,
}

/// `GET /kv/{key}`, `PUT /kv/{key}`, `DELETE /kv/{key}`.
pub(super) async fn key(
    State(node): State<Arc<Node>>,
    Extension(caller): Extension<Caller>,
    path: NamePath,
    query: Result<Query<ReadQuery>, axum::extract::rejection::QueryRejection>,
    req: Request,
) -> Response {
    let method = req.method().clone();
    let checked = (|| {
        let Path(key) = path.map_err(|_| {
            error(
                StatusCode::BAD_REQUEST,
                "invalid_name",
                "invalid key: it is not UTF-8 once percent-decoded",
            )
        })?;
        validate_key(&key)
            .map_err(|e| error(StatusCode::BAD_REQUEST, "invalid_name", e.to_string()))?;
        let txn = method == Method::POST && key == "txn";
        if !txn && ![Method::GET, Method::PUT, Method::DELETE].contains(&method) {
            return Err(method_not_allowed(
                &method,
                req.uri().path(),
                "GET, PUT, DELETE",
            ));
        }
        let Query(q) =
            query.map_err(|e| error(StatusCode::BAD_REQUEST, "invalid_query", e.body_text()))?;
        Ok((key, q.stale))
    })();
    let (key, stale) = match checked {
        Ok(c) => c,
        Err(e) => return e.into_response(),
    };
    let op = match method {
        Method::PUT => "kv_put",
        Method::DELETE => "kv_delete",
        Method::POST => "kv_txn",
        _ => "kv_get",
    };
    // A transaction's keys are in its body: checked where it is served.
    let audited = Audited::of(&node, &caller, &req, op, key.clone());
    let (reading, acl) = (method == Method::GET, method != Method::POST);
    let audited = match admit(&node, &caller, audited, &key, reading, acl).await {
        Ok(audited) => audited,
        Err(refused) => return refused,
    };
    if method == Method::GET && stale {
        return read(&node, &key).into_response();
    }
    let limit = match method {
        Method::POST => MAX_TXN_BODY,
        _ => MAX_KV_BODY,
    };
    let response = on_leader_within(node, req, limit, move |node, body| async move {
        match method {
            Method::POST => txn(&node, &caller, parse(&body)?).await,
            Method::PUT => put(&node, key, parse(&body)?).await,
            Method::DELETE => {
                let b = match body.trim_ascii().is_empty() {
                    true => KvDeleteBody::default(),
                    false => parse(&body)?,
                };
                delete(&node, key, b).await
            }
            _ => {
                linearizable(&node).await?;
                read(&node, &key)
            }
        }
    })
    .await;
    audited.finish(response).await
}

fn entry(key: &str, v: &KvValue) -> KvEntry {
    KvEntry {
        key: key.to_string(),
        value: v.value.clone(),
        create_revision: v.create_revision,
        mod_revision: v.mod_revision,
        version: v.version,
        ttl_ms: v.lease.map(|l| l.ttl_ms),
        expires_at: v
            .lease
            .map(|l| lease::rfc3339(lease::from_unix_ms(l.expires_at_ms()))),
    }
}

/// The key as this node's state has it.
fn read(node: &Node, key: &str) -> Result<Response, ApiError> {
    let found = node.state.read(|m| {
        let state: &LockState = &m.state;
        state.kv_get(key).map(|v| KvRead {
            entry: entry(key, v),
            revision: state.revision(),
        })
    });
    match found {
        Some(read) => Ok(ok(json!(read))),
        None => Err(error(
            StatusCode::NOT_FOUND,
            "key_not_found",
            format!("no key {key:?}"),
        )
        .with(json!({"key": key}))),
    }
}

async fn put(node: &Node, key: String, b: KvPutBody) -> Result<Response, ApiError> {
    if let Some(why) = b.merge.refuses(&b.value) {
        return Err(invalid("value", why));
    }
    sentinel_core::kv::value_bytes(&b.value).map_err(|e| invalid("value", e))?;
    if let Some(w) = &b.writer {
        label("writer", w)?;
    }
    let ttl_ms = b.ttl_ms.map(checked_ttl).transpose()?;
    let id = request_id(b.request_id)?;
    let command = Command::KvPut(KvPut {
        request_id: id.clone(),
        key: key.clone(),
        value: b.value,
        if_revision: b.if_revision,
        merge: b.merge,
        writer: b.writer.unwrap_or_default(),
        ttl_ms,
        quota: node.kv_quota,
    });
    let (outcome, _) = node.propose(command).await.map_err(propose_error)?;
    answer(node, &key, &id, outcome)
}

async fn delete(node: &Node, key: String, b: KvDeleteBody) -> Result<Response, ApiError> {
    if let Some(w) = &b.writer {
        label("writer", w)?;
    }
    let id = request_id(b.request_id)?;
    let command = Command::KvDelete(KvDelete {
        request_id: id.clone(),
        key: key.clone(),
        if_revision: b.if_revision,
        writer: b.writer.unwrap_or_default(),
    });
    let (outcome, _) = node.propose(command).await.map_err(propose_error)?;
    answer(node, &key, &id, outcome)
}

/// `POST /kv/txn`: every key checked (and allowed to the caller's token) before it is proposed.
async fn txn(node: &Node, caller: &Caller, b: KvTxnBody) -> Result<Response, ApiError> {
    if b.compare.len() + b.ops.len() > MAX_TXN_OPS {
        return Err(invalid(
            "transaction",
            format!("at most {MAX_TXN_OPS} compares and writes together"),
        ));
    }
    let keys = b.compare.iter().map(|c| c.key.as_str());
    for key in keys.chain(b.ops.iter().map(Op::key)) {
        validate_key(key)
            .map_err(|e| error(StatusCode::BAD_REQUEST, "invalid_name", e.to_string()))?;
        if !caller.may(key) {
            return Err(forbidden(caller, key));
        }
    }
    for op in &b.ops {
        if let Op::Put { value, merge, .. } = op {
            if let Some(why) = merge.refuses(value) {
                return Err(invalid("value", why));
            }
            sentinel_core::kv::value_bytes(value).map_err(|e| invalid("value", e))?;
        }
    }
    if let Some(w) = &b.writer {
        label("writer", w)?;
    }
    let id = request_id(b.request_id)?;
    let command = Command::KvTxn(KvTxn {
        request_id: id.clone(),
        compare: b.compare.clone(),
        ops: b.ops,
        writer: b.writer.unwrap_or_default(),
        quota: node.kv_quota,
    });
    let (outcome, _) = node.propose(command).await.map_err(propose_error)?;
    if let Answer::TxnFailed { compare, revision } = outcome {
        let key = b.compare.get(compare).map_or("", |c| c.key.as_str());
        return Err(error(
            StatusCode::CONFLICT,
            "compare_failed",
            format!("compare {compare} (key {key:?}, at revision {revision}) does not hold"),
        )
        .with(json!({"compare": compare, "key": key, "revision": revision, "request_id": id})));
    }
    answer(node, "", &id, outcome)
}

/// `GET /kv?prefix=P&after=K&limit=N`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ListQuery {
    #[serde(default)]
    prefix: String,
    after: Option<String>,
    limit: Option<usize>,
    #[serde(default)]
    stale: bool,
}

/// A page of the keys under a prefix that the caller's token may read, in key order; a page
/// ends at `limit` keys or after the key that takes it past [`MAX_PAGE_BYTES`], so that a
/// follower can relay it.
pub(super) async fn list(
    State(node): State<Arc<Node>>,
    Extension(caller): Extension<Caller>,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
    req: Request,
) -> Response {
    if req.method() != Method::GET {
        return method_not_allowed(req.method(), "/kv", "GET").into_response();
    }
    let q = match query {
        Ok(Query(q)) => q,
        Err(e) => {
            return error(StatusCode::BAD_REQUEST, "invalid_query", e.body_text()).into_response();
        }
    };
    let limit = match page_limit(q.limit) {
        Ok(limit) => limit,
        Err(e) => return e.into_response(),
    };
    let page = move |node: &Node| page(node, &caller, &q.prefix, q.after.as_deref(), limit);
    if q.stale {
        return ok(json!(page(&node)));
    }
    on_leader(node, req, move |node, _| async move {
        linearizable(&node).await?;
        Ok(ok(json!(page(&node))))
    })
    .await
}

fn page(node: &Node, caller: &Caller, prefix: &str, after: Option<&str>, limit: usize) -> KvPage {
    node.state.read(|m| {
        let state: &LockState = &m.state;
        let mut keys = Vec::new();
        let mut bytes = 0;
        let mut next = None;
        for (key, v) in state.kv_range(prefix, after) {
            if !caller.may(key) {
                continue;
            }
            if keys.len() == limit || bytes > MAX_PAGE_BYTES {
                next = keys.last().map(|e: &KvEntry| e.key.clone());
                break;
            }
            bytes += key.len() + json_len(&v.value) as usize;
            keys.push(entry(key, v));
        }
        KvPage {
            keys,
            next,
            revision: state.revision(),
        }
    })
}
