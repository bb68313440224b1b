//! The HTTP JSON API of a node; the Raft RPC endpoints peers call are [`super::peer`]'s.
//!
//! Client routes:
//!
//! | route | body | answer |
//! |---|---|---|
//! | `POST /locks/{name}/acquire` | `holder`, `ttl_ms`, optional `wait_ms`, `node`, `request_id`, `readopt`, `task_info` | 200 the lease; 409 `lock_held` / `wait_timed_out` |
//! | `POST /locks/{name}/release` | `holder`, `token`, optional `request_id` | 200 the released lease; 409 `not_holder` |
//! | `POST /locks/{name}/withdraw` | `holder`, `acquire_request_id`, optional `request_id` | 200 `withdrawn`, and the lease it `released` if the acquire had been granted |
//! | `POST /locks/{name}/renew` | `holder`, `token`, optional `request_id`, `ttl_ms` (a new TTL) | 200 the renewed lease; 409 `not_holder` |
//! | `GET /locks/{name}/status` | | 200 kind, holder (or none), holders and wait queue |
//! | `POST /semaphores/{name}/acquire` | as a lock's, and `limit`, optional `permits` | 200 the hold; 409 `lock_held`, `wait_timed_out`, `limit_mismatch`, `kind_conflict` |
//! | `POST /semaphores/{name}/release`, `renew`, `withdraw` | as a lock's | as a lock's |
//! | `GET /semaphores/{name}/status` | | as a lock's |
//! | `GET /locks?after=NAME&limit=N` | | 200 a page of held locks, `next` to continue |
//! | `POST /election/{name}/campaign`, `resign`, `proclaim`; `GET …/leader`, `…/observe` | as a lock's, `value` | elections ([`observe`](super::observe)) |
//! | `POST /barriers/{name}/arrive`, `GET /barriers/{name}/status` | `holder`, `count`, optional `wait_ms`, `node`, `request_id` | 200 `opened`; 409 `wait_timed_out`, `count_mismatch` ([`barriers`]) |
//! | `POST /sessions`; `POST /sessions/{id}/keepalive`, `…/close`; `GET /sessions/{id}` | `holder`, `ttl_ms` (open), optional `request_id` | 200 the session; 409 `no_session` ([`sessions`]) |
//! | `PUT /kv/{key}` | `value`, optional `if_revision`, `merge`, `writer`, `request_id` | 200 `revision` (and a counter's new `value`); 409 `compare_failed`, `merge_conflict`; 429 `kv_quota` ([`kv`]) |
//! | `GET /kv/{key}`, optional `stale=true` | | 200 the value and its revisions; 404 `key_not_found` |
//! | `DELETE /kv/{key}` | optional `if_revision`, `writer`, `request_id` | 200 `deleted` and the `revision`; 409 `compare_failed` |
//! | `GET /kv?prefix=P&after=K&limit=N`, optional `stale=true` | | 200 a page of keys, `next` to continue |
//! | `POST /kv/txn` | `compare` (each `key` and `revision`, `value` or `exists`), `ops` (`put` or `delete`), optional `writer`, `request_id` | 200 each write's revision; 409 `compare_failed` (which `compare`), `merge_conflict`; 429 `kv_quota` |
//! | `GET /watch?prefix=P` or `?name=N`, optional `since_revision=R` | | 200 server-sent events of what happens to the locks and keys ([`crate::watch`]) |
//! | `GET /health` | | 200 when the node knows a leader, else 503 |
//! | `GET /cluster/status` | | 200 leader, term, members, indexes, each follower's lag |
//! | `GET /metrics` | | 200 this node's metrics, Prometheus text format |
//!
//! Every error is a JSON object `{"code": ..., "message": ...}` whose `code` is stable: 400
//! `invalid_name`, `invalid_body`, `invalid_query`; 401 `unauthorized` (a node started with
//! `--auth-token` or `--acl` requires `Authorization: Bearer TOKEN` on every client request);
//! 403 `forbidden` (the token may not act on that lock, [`super::acl`]); 404
//! `unknown_route`; 405
//! `method_not_allowed`; 408 `body_timeout` (the body took more than 10 s); 409 `lock_held`,
//! `wait_timed_out`, `not_holder`, `request_id_reused`, `withdrawn` (an acquire whose client took
//! it back), `limit_mismatch` (a semaphore claim with another limit than the semaphore's),
//! `kind_conflict` (a lock claim on a semaphore, or a semaphore claim on a lock);
//! `compare_failed` (a key's compare-and-set met another revision), `merge_conflict` (a merge
//! write met a value it cannot combine with); 404 `key_not_found`;
//! 413 `body_too_large`; 429 `too_many_locks`, `too_many_waiters`, `kv_quota`; 503 `no_leader`,
//! `unavailable`, `busy` (a request that asks to wait, when waiting requests already hold as many
//! connections as the node gives them: three quarters of its cap),
//! `audit_unavailable` (the audit log cannot be written, [`super::audit`]).
//!
//! A lock acquire with `"shared": true` takes a shared hold. Semaphores and locks share one
//! namespace, tokens' prefixes and routes' handling: `/semaphores/` differs from `/locks/` only in
//! what an acquire takes (a `limit` and `permits`) and how a free name's status reads.
//!
//! Any node accepts any request. Lock requests and reads of the lock table are served by the
//! leader: a follower forwards them (once: a forwarded request that meets a node that is not the
//! leader is answered 503, never forwarded again) and relays the answer. A follower whose leader
//! is gone (unreachable, deposed) holds the request until it knows the next one (at most
//! [`LEADER_WAIT`]) and forwards it there, when that cannot execute it twice: nothing reached the
//! old leader, it is a read, or it names its request id. Writes carry a request id (generated when
//! the client gives none, and echoed), so a client that gets a 503 or loses the connection
//! retries with the same id and can never be granted twice.
//!
//! A token acts only on the locks its prefixes allow: the node the client contacted checks, and
//! so does the leader a follower forwards to (see [`request_to_leader`]); a listing shows only
//! the locks the token may act on. The contacted node writes the audit line of each write.

mod barriers;
mod kv;
mod sessions;
mod watch;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Extension;
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, Path, Query, Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use http::header::{AUTHORIZATION, CONNECTION, CONTENT_TYPE, WWW_AUTHENTICATE};
use http::{HeaderMap, HeaderValue, Method, StatusCode};
use http_body_util::Full;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tokio::sync::OwnedSemaphorePermit;

use super::acl::Grantee;
use super::audit::Entry;
use super::network::PEER_TOKEN_HEADER;
use super::node::{Node, PROPOSE_TIMEOUT, ProposeError};
use super::state::{
    Acquire, Answer, Claim, Command, Group, Kind, Limit, LockState, MAX_LIMIT, Release, Renew,
    Slot, Withdraw,
};
use sentinel_core::lease;
use sentinel_core::lock::{
    MAX_TASK_INFO_BYTES, TaskInfo, validate_label, validate_name, validate_value,
};
use sentinel_core::table::{LockRecord, LockTable};
use sentinel_proto::MAX_WAIT_MS;
use sentinel_proto::api::{
    AcquireBody, CampaignBody, KvDeleted, KvTxnDone, KvWritten, ProclaimBody, ReleaseBody,
    RenewBody, WithdrawBody,
};
use sentinel_proto::http::{self as network, Failure};

/// Largest body of a client request.
const MAX_BODY: usize = 64 << 10;
/// How long a request's body may take to arrive.
const BODY_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest request id.
const MAX_REQUEST_ID: usize = 128;
/// Locks per page of `GET /locks`.
const DEFAULT_PAGE: usize = 100;
const MAX_PAGE: usize = 1_000;
/// A page of `GET /locks` ends after the lock that takes it past this many bytes, so that a
/// follower can relay it: a lock shows at most [`MAX_QUEUE_SHOWN`] waiters and 4 KiB of task
/// info, far below the relay's cap less this.
const MAX_PAGE_BYTES: usize = 4 << 20;
const _: () = assert!(MAX_PAGE_BYTES * 2 < sentinel_proto::http::MAX_ANSWER_BYTES);
/// Most waiters a lock's status lists (`waiting` counts them all).
const MAX_QUEUE_SHOWN: usize = 100;
/// The header a follower puts on a request it forwards to the leader.
const FORWARDED: &str = "x-sentinel-forwarded";
/// How long a node without a leader waits for an election before answering 503.
const LEADER_WAIT: Duration = Duration::from_secs(3);
/// How long after a waiter's deadline its answer may take to settle (a leader change).
const SETTLE_GRACE: Duration = Duration::from_secs(5);

/// Every route of a node: the client API behind the client token check, and the Raft RPCs
/// ([`super::peer`], behind the peer token's).
pub fn router(node: Arc<Node>) -> Router {
    Router::new()
        .route("/locks", any(list))
        .route("/locks/{*rest}", any(locks))
        .route("/semaphores/{*rest}", any(semaphores))
        .route("/election/{*rest}", any(elections))
        .route("/barriers/{*rest}", any(barriers))
        .route("/kv", any(kv::list))
        .route("/kv/{*key}", any(kv::key))
        .route("/watch", any(watch::watch))
        .route("/sessions", any(sessions::open))
        .route("/sessions/{*rest}", any(sessions::call))
        .route("/health", any(health))
        .route("/cluster/status", any(cluster_status))
        .route("/metrics", any(metrics))
        .fallback(unknown_route)
        .layer(axum::middleware::from_fn_with_state(
            node.clone(),
            require_token,
        ))
        .merge(super::peer::router(node.clone()))
        .with_state(node)
}

/// Who sent a request, as [`require_token`] found: the token's entry, or `None` on a node that
/// takes any client. Every client route reads it, so a route the check did not run for fails
/// (axum answers 500 for a missing extension) rather than serving anyone.
#[derive(Clone)]
struct Caller(Option<Arc<Grantee>>);

impl Caller {
    fn may(&self, lock: &str) -> bool {
        self.0.as_ref().is_none_or(|g| g.may(lock))
    }
}

/// With client tokens, every client request must carry one of them (peers carry the peer token),
/// but for `/health`: health probes carry no token, so without one they get whether the node
/// serves (`{"ok":…}` and the status) and nothing about the cluster; and `/metrics` with
/// `--public-metrics`.
async fn require_token(
    State(node): State<Arc<Node>>,
    mut req: Request,
    next: axum::middleware::Next,
) -> Response {
    let caller = match &node.acl {
        None => Some(Caller(None)),
        Some(acl) => acl
            .check(req.headers().get(AUTHORIZATION))
            .map(|g| Caller(Some(g))),
    };
    if let Some(caller) = caller {
        req.extensions_mut().insert(caller);
        return next.run(req).await;
    }
    match req.uri().path() {
        "/health" => {
            let status = next.run(req).await.status();
            let serves = json!({"ok": status == StatusCode::OK});
            (status, json_body(&serves)).into_response()
        }
        "/metrics" if node.public_metrics => next.run(req).await,
        _ => {
            let mut response = error(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "this node requires a bearer token: send Authorization: Bearer TOKEN",
            )
            .into_response();
            response
                .headers_mut()
                .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            response
        }
    }
}

fn forbidden(caller: &Caller, lock: &str) -> ApiError {
    let (name, scope) = caller
        .0
        .as_ref()
        .map_or_else(Default::default, |g| (g.name.clone(), g.scope()));
    error(
        StatusCode::FORBIDDEN,
        "forbidden",
        format!("token {name:?} may act on {scope}, not on lock {lock:?}"),
    )
}

/// Whether this node writes the audit line of a write: the node the client contacted does. A
/// follower that forwards a write writes its line itself and marks the forward with the peer
/// token, which only the cluster's nodes hold, so the leader writes none for it. A client that
/// sends the forwarded header itself has no peer token: its write is recorded where it lands.
fn audited_here(node: &Node, headers: &HeaderMap) -> bool {
    let forward_of_a_node = headers.contains_key(FORWARDED)
        && node
            .peer
            .as_ref()
            .is_some_and(|p| p.accepts(headers.get(PEER_TOKEN_HEADER)));
    node.audit.is_some() && !forward_of_a_node
}

/// The audit line of a write under way. Written with the answer's outcome by [`Audited::finish`];
/// dropped before that (the client left while its acquire waited, and it is withdrawn), it is
/// written with the result `client_left`.
struct Audited {
    node: Arc<Node>,
    entry: Option<Entry>,
}

impl Audited {
    /// The audit line of write `op` on `lock` that `req` asks of this node, if this node writes
    /// it ([`audited_here`]).
    fn of(node: &Arc<Node>, caller: &Caller, req: &Request, op: &str, lock: String) -> Audited {
        Audited {
            node: node.clone(),
            entry: audited_here(node, req.headers()).then(|| Entry {
                token: caller.0.as_ref().map(|g| g.name.clone()),
                remote: req
                    .extensions()
                    .get::<ConnectInfo<SocketAddr>>()
                    .map(|c| c.0),
                op: op.to_string(),
                lock,
            }),
        }
    }

    /// Records the outcome of `response` (read from its JSON body) and passes it on.
    async fn finish(mut self, response: Response) -> Response {
        let (Some(entry), Some(log)) = (self.entry.take(), &self.node.audit) else {
            return response;
        };
        let (parts, body) = response.into_parts();
        // Every answer of these routes is a small JSON body held in memory (built here or
        // relayed from the leader, whose answers are capped).
        let bytes = axum::body::to_bytes(body, usize::MAX)
            .await
            .unwrap_or_default();
        let v: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        let (result, fencing) = if parts.status == StatusCode::OK {
            let result = match entry.op.as_str() {
                "acquire" | "campaign" => "granted",
                "release" | "resign" => "released",
                "renew" | "proclaim" | "keep_session" => "renewed",
                "open_session" => "opened",
                "close_session" => "closed",
                "kv_put" | "kv_txn" => "written",
                "kv_delete" => "deleted",
                _ => "withdrawn",
            };
            let lease = if v["released"].is_object() {
                &v["released"]
            } else {
                &v["holder"]
            };
            (result.to_string(), lease["fencing_token"].as_u64())
        } else {
            // A stable code, as the leader gave it (bounded: it is one of this module's).
            let code = v["code"]
                .as_str()
                .filter(|c| c.len() <= 32 && c.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'))
                .map_or_else(|| format!("http_{}", parts.status.as_u16()), String::from);
            (code, None)
        };
        log.record(&entry, &result, v["request_id"].as_str(), fencing);
        Response::from_parts(parts, Body::from(bytes))
    }
}

impl Drop for Audited {
    fn drop(&mut self) {
        if let (Some(entry), Some(log)) = (self.entry.take(), &self.node.audit) {
            log.record(&entry, "client_left", None, None);
        }
    }
}

/// Lets a request on `name` in: the audit line it gets (`audited`'s; none for a `read`), or the
/// answer that turns it away: outside the token's prefixes (403, recorded; checked only with
/// `acl`, for a request whose names are all in its path), or while the audit log cannot be
/// written (503, before anything was done: nothing to record, and the log would not take it).
async fn admit(
    node: &Node,
    caller: &Caller,
    mut audited: Audited,
    name: &str,
    read: bool,
    acl: bool,
) -> Result<Audited, Response> {
    if read {
        audited.entry = None;
    }
    if acl && !caller.may(name) {
        return Err(audited
            .finish(forbidden(caller, name).into_response())
            .await);
    }
    if let (Some(log), Some(_)) = (&node.audit, &audited.entry)
        && let Err(why) = log.ready()
    {
        let mut refused = audited;
        refused.entry = None;
        return Err(
            error(StatusCode::SERVICE_UNAVAILABLE, "audit_unavailable", why).into_response(),
        );
    }
    Ok(audited)
}

/// An error answer: a status and a JSON object with a stable `code`.
struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    extra: Value,
}

fn error(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
    ApiError {
        status,
        code,
        message: message.into(),
        extra: Value::Null,
    }
}

impl ApiError {
    fn with(mut self, extra: Value) -> ApiError {
        self.extra = extra;
        self
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = json!({"code": self.code, "message": self.message});
        if let (Value::Object(b), Value::Object(extra)) = (&mut body, self.extra) {
            b.extend(extra);
        }
        (self.status, json_body(&body)).into_response()
    }
}

fn json_body(v: &Value) -> ([(http::HeaderName, HeaderValue); 1], String) {
    (
        [(CONTENT_TYPE, HeaderValue::from_static("application/json"))],
        v.to_string(),
    )
}

fn ok(v: Value) -> Response {
    (StatusCode::OK, json_body(&v)).into_response()
}

async fn unknown_route(method: Method, uri: http::Uri) -> ApiError {
    error(
        StatusCode::NOT_FOUND,
        "unknown_route",
        format!("no route {method} {}", uri.path()),
    )
}

fn method_not_allowed(method: &Method, path: &str, allowed: &str) -> ApiError {
    error(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("{method} is not allowed on {path}; use {allowed}"),
    )
}

/// Reads a request's body: at most `limit` bytes, within [`BODY_TIMEOUT`].
async fn read_body(body: Body, limit: usize) -> Result<Bytes, ApiError> {
    match tokio::time::timeout(BODY_TIMEOUT, axum::body::to_bytes(body, limit)).await {
        Ok(Ok(bytes)) => Ok(bytes),
        Ok(Err(_)) => Err(error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("the request body is larger than {limit} bytes"),
        )),
        Err(_) => Err(error(
            StatusCode::REQUEST_TIMEOUT,
            "body_timeout",
            format!("the request body did not arrive within {BODY_TIMEOUT:?}"),
        )),
    }
}

/// A request body: one JSON object. serde would also fill a struct from a JSON array of its
/// fields in order, which no client means to send.
fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    if body.trim_ascii_start().first() != Some(&b'{') {
        return Err(error(
            StatusCode::BAD_REQUEST,
            "invalid_body",
            "the body must be a JSON object",
        ));
    }
    serde_json::from_slice(body).map_err(|e| {
        error(
            StatusCode::BAD_REQUEST,
            "invalid_body",
            format!("the body is not a valid JSON request: {e}"),
        )
    })
}

fn invalid(what: &str, why: impl std::fmt::Display) -> ApiError {
    error(
        StatusCode::BAD_REQUEST,
        "invalid_body",
        format!("invalid {what}: {why}"),
    )
}

/// A label (holder, node) a person will read and compare.
fn label(what: &str, s: &str) -> Result<(), ApiError> {
    validate_label(what, s)
        .map_err(|e| error(StatusCode::BAD_REQUEST, "invalid_body", e.to_string()))
}

/// A random request id, for a request whose client gave none.
fn fresh_request_id() -> String {
    format!("{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..))
}

/// The client's request id, or a fresh random one.
fn request_id(given: Option<String>) -> Result<String, ApiError> {
    let Some(id) = given else {
        return Ok(fresh_request_id());
    };
    if id.is_empty() || id.len() > MAX_REQUEST_ID || !id.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(invalid(
            "request_id",
            format!("use 1 to {MAX_REQUEST_ID} printable ASCII characters without spaces"),
        ));
    }
    Ok(id)
}

/// The time leases are judged by: the node's lease clock ([`Node::lease_now`]), not its wall
/// clock.
fn now(node: &Node) -> u64 {
    node.lease_now()
}

fn holder_json(record: &LockRecord, now: u64) -> Value {
    serde_json::to_value(record.to_holder(now)).unwrap_or(Value::Null)
}

/// Serves a client request on the leader, or forwards it there.
async fn on_leader<F, Fut>(node: Arc<Node>, req: Request, serve: F) -> Response
where
    F: FnOnce(Arc<Node>, Bytes) -> Fut,
    Fut: std::future::Future<Output = Result<Response, ApiError>>,
{
    on_leader_within(node, req, MAX_BODY, serve).await
}

/// [`on_leader`] for a route whose bodies may be up to `limit` bytes.
async fn on_leader_within<F, Fut>(node: Arc<Node>, req: Request, limit: usize, serve: F) -> Response
where
    F: FnOnce(Arc<Node>, Bytes) -> Fut,
    Fut: std::future::Future<Output = Result<Response, ApiError>>,
{
    let (parts, body) = req.into_parts();
    let body = match read_body(body, limit).await {
        Ok(b) => b,
        Err(e) => return e.into_response(),
    };
    // Held until the answer is given, here or by the leader.
    // The body is parsed for its wait once here; the handler parses it for itself.
    let wait = wait_ms(&body);
    let _slot = match wait_slot(&node, wait) {
        Ok(slot) => slot,
        Err(busy) => return busy.into_response(),
    };
    // A leader that is gone (killed, cut off) is replaced within a second or so: the request
    // waits here for the next one instead of the client waiting out its retry pauses. Sent again
    // only when that cannot do it twice: nothing reached the old leader, or it is a read, or it
    // names its request id (a retry then gets the first one's answer); the body is parsed for
    // that only then, not on every forward.
    let deadline = tokio::time::Instant::now() + LEADER_WAIT;
    while !node.is_leader() {
        match forward(&node, &parts, body.clone(), wait).await {
            Ok(r) => return r,
            Err(NotForwarded::LeaderGone {
                leader,
                sent,
                error,
            }) if !sent || parts.method == Method::GET || has_request_id(&body) => {
                if !another_leader(&node, leader, deadline).await {
                    return error.into_response();
                }
            }
            Err(NotForwarded::LeaderGone { error, .. } | NotForwarded::Refused(error)) => {
                return error.into_response();
            }
        }
    }
    match serve(node, body).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

/// Whether a request body names its request id.
fn has_request_id(body: &[u8]) -> bool {
    serde_json::from_slice::<Value>(body)
        .ok()
        .is_some_and(|v| v.get("request_id").is_some_and(Value::is_string))
}

/// Waits until this node knows a leader other than `gone`, until `deadline`: whether it does.
async fn another_leader(node: &Node, gone: u64, deadline: tokio::time::Instant) -> bool {
    let left = deadline.saturating_duration_since(tokio::time::Instant::now());
    node.raft
        .wait(Some(left))
        .metrics(
            |m| m.current_leader.is_some_and(|l| l != gone),
            "another leader",
        )
        .await
        .is_ok()
}

/// Why a request forwarded to the leader got no answer from it.
enum NotForwarded {
    /// It could not be forwarded: no leader known in time, or a forward met a node that does not
    /// lead.
    Refused(ApiError),
    /// The leader it went to is gone: unreachable, deposed, or silent; `sent` when the request
    /// may have reached it.
    LeaderGone {
        leader: u64,
        sent: bool,
        error: ApiError,
    },
}

impl From<ApiError> for NotForwarded {
    fn from(e: ApiError) -> Self {
        NotForwarded::Refused(e)
    }
}

/// The server-side wait a request body asks for (`wait_ms`, capped), or 0.
fn wait_ms(body: &[u8]) -> u64 {
    serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v.get("wait_ms").and_then(Value::as_u64))
        .unwrap_or(0)
        .min(MAX_WAIT_MS)
}

/// A permit of [`Node::waits`] for a request that asks to wait, or [`Busy`] when they are all
/// taken: the client tries another node or comes back later, instead of its connection waiting
/// unserved in the kernel's backlog behind the waiters.
fn wait_slot(node: &Node, wait_ms: u64) -> Result<Option<OwnedSemaphorePermit>, Busy> {
    if wait_ms == 0 {
        return Ok(None);
    }
    node.waits
        .clone()
        .try_acquire_owned()
        .map(Some)
        .map_err(|_| Busy)
}

/// 503 `busy`, closing the connection, whose slot would otherwise stay taken while it idles.
struct Busy;

impl IntoResponse for Busy {
    fn into_response(self) -> Response {
        let mut busy = error(
            StatusCode::SERVICE_UNAVAILABLE,
            "busy",
            "this node serves as many waiting requests as it can; retry later or on another node",
        )
        .into_response();
        busy.headers_mut()
            .insert(CONNECTION, HeaderValue::from_static("close"));
        busy
    }
}

/// Relays a request to the leader and its answer back; `wait_ms` is the server-side wait it
/// asks for, which the leader may take before answering.
async fn forward(
    node: &Node,
    parts: &http::request::Parts,
    body: Bytes,
    wait_ms: u64,
) -> Result<Response, NotForwarded> {
    if parts.headers.contains_key(FORWARDED) {
        return Err(not_leader(node.leader().map(|l| l.0)).into());
    }
    let (leader, addr) = leader_to_forward_to(node).await?;
    // A waiting acquire is held by the leader for up to its wait.
    let timeout = PROPOSE_TIMEOUT + SETTLE_GRACE + Duration::from_millis(wait_ms);
    let request = request_to_leader(node, parts, body, &addr)?;
    // A leader that stopped answering (frozen, cut off) is replaced within a second; the client
    // should not wait out the whole timeout for it, so the answer is 503 as soon as this node
    // no longer follows that leader. The request may have taken effect: a retry with the same
    // request id gets its answer.
    let mut metrics = node.raft.metrics();
    let deposed = async move {
        while metrics.borrow_and_update().current_leader == Some(leader) {
            if metrics.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    };
    let answer = tokio::select! {
        answer = network::exchange(&node.client, request, timeout) => answer,
        () = deposed => return Err(NotForwarded::LeaderGone {
            leader,
            sent: true,
            error: not_leader(node.leader().map(|l| l.0)),
        }),
    };
    match answer {
        Ok((status, headers, body)) => {
            let mut response = (status, body).into_response();
            if let Some(ct) = headers.get(CONTENT_TYPE) {
                response.headers_mut().insert(CONTENT_TYPE, ct.clone());
            }
            Ok(response)
        }
        Err(failure) => Err(NotForwarded::LeaderGone {
            leader,
            sent: !matches!(failure, Failure::Unreachable(_)),
            error: unavailable(format!(
                "the leader (node {leader}) did not answer: {failure}"
            )),
        }),
    }
}

/// The leader to forward to, waiting up to [`LEADER_WAIT`] for one to be elected; an error when
/// there is none, or when this node became the leader meanwhile (the client's retry meets it).
async fn leader_to_forward_to(node: &Node) -> Result<(u64, String), ApiError> {
    let leader = match node.leader() {
        Some(l) => Some(l),
        None => {
            let _ = node
                .raft
                .wait(Some(LEADER_WAIT))
                .metrics(|m| m.current_leader.is_some(), "a leader")
                .await;
            node.leader()
        }
    };
    match leader {
        None => Err(error(
            StatusCode::SERVICE_UNAVAILABLE,
            "no_leader",
            format!(
                "the cluster has no leader (no quorum of nodes reachable within {LEADER_WAIT:?}); retry"
            ),
        )),
        Some((leader, _)) if leader == node.id => Err(not_leader(Some(leader))),
        Some(leader) => Ok(leader),
    }
}

/// The client's request as sent on to the leader at `addr`: marked as forwarded (so it is never
/// forwarded again), with the client's own token and this node's peer token.
///
/// The leader checks the client's token and its prefixes again, against the same tokens (every
/// node is given the same `--acl`): what a token may do is decided on the node the client
/// contacted and again on the leader, so neither a follower nor a client sending a made-up
/// forward can widen it. The peer token, which only nodes hold, tells the leader that this node
/// writes the request's audit line.
fn request_to_leader(
    node: &Node,
    parts: &http::request::Parts,
    body: Bytes,
    addr: &str,
) -> Result<http::Request<Full<Bytes>>, ApiError> {
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let mut request = http::Request::builder()
        .method(parts.method.clone())
        .uri(node.client.url(addr, path))
        .header(FORWARDED, node.id.to_string());
    if let Some(ct) = parts.headers.get(CONTENT_TYPE) {
        request = request.header(CONTENT_TYPE, ct);
    }
    if let Some(auth) = parts.headers.get(AUTHORIZATION) {
        let mut auth = auth.clone();
        auth.set_sensitive(true);
        request = request.header(AUTHORIZATION, auth);
    }
    if let Some(peer) = &node.peer {
        request = request.header(PEER_TOKEN_HEADER, peer.header.clone());
    }
    request
        .body(Full::new(body))
        .map_err(|e| unavailable(format!("cannot forward to the leader at {addr:?}: {e}")))
}

fn not_leader(leader: Option<u64>) -> ApiError {
    error(
        StatusCode::SERVICE_UNAVAILABLE,
        "unavailable",
        "the leader changed while the request was under way; retry with the same request_id",
    )
    .with(json!({"leader": leader}))
}

fn unavailable(why: String) -> ApiError {
    error(
        StatusCode::SERVICE_UNAVAILABLE,
        "unavailable",
        format!("{why}; the request may still take effect: retry with the same request_id"),
    )
}

fn propose_error(e: ProposeError) -> ApiError {
    match e {
        ProposeError::NotLeader(leader) => not_leader(leader),
        ProposeError::Unavailable(why) => unavailable(why),
    }
}

/// Makes sure this node still leads (a quorum confirms it), so a read sees every write
/// acknowledged before it.
async fn linearizable(node: &Node) -> Result<(), ApiError> {
    match tokio::time::timeout(PROPOSE_TIMEOUT, node.raft.ensure_linearizable()).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(unavailable(format!("this node cannot serve reads: {e}"))),
        Err(_) => Err(unavailable(format!(
            "no quorum confirmed the leader within {PROPOSE_TIMEOUT:?}"
        ))),
    }
}

/// The routes a request came by: the same names, tokens, audit and waiting, but what an acquire
/// takes and how a free name reads differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    /// `/locks/`: exclusive and shared holds.
    Locks,
    /// `/semaphores/`: permits of a semaphore.
    Semaphores,
    /// `/election/`: an election is a lock whose holder leads and publishes a value; its
    /// actions are the lock's under etcd's names, and its leader can be observed.
    Election,
    /// `/barriers/`: participants that meet; names apart from the locks'.
    Barriers,
}

impl Family {
    /// The method an action of this family takes, or `None` for no such route.
    fn method(self, action: &str) -> Option<Method> {
        match (self, action) {
            (Family::Locks | Family::Semaphores, "acquire" | "release" | "renew" | "withdraw")
            | (Family::Election, "campaign" | "resign" | "proclaim")
            | (Family::Barriers, "arrive") => Some(Method::POST),
            (Family::Locks | Family::Semaphores | Family::Barriers, "status")
            | (Family::Election, "leader" | "observe") => Some(Method::GET),
            _ => None,
        }
    }
}

/// The actions that only read: not audited.
fn reads(action: &str) -> bool {
    matches!(action, "status" | "leader" | "observe")
}

type NamePath = Result<Path<String>, axum::extract::rejection::PathRejection>;

async fn locks(
    State(node): State<Arc<Node>>,
    Extension(caller): Extension<Caller>,
    path: NamePath,
    req: Request,
) -> Response {
    named(Family::Locks, node, caller, path, req).await
}

async fn semaphores(
    State(node): State<Arc<Node>>,
    Extension(caller): Extension<Caller>,
    path: NamePath,
    req: Request,
) -> Response {
    named(Family::Semaphores, node, caller, path, req).await
}

async fn elections(
    State(node): State<Arc<Node>>,
    Extension(caller): Extension<Caller>,
    path: NamePath,
    req: Request,
) -> Response {
    named(Family::Election, node, caller, path, req).await
}

async fn barriers(
    State(node): State<Arc<Node>>,
    Extension(caller): Extension<Caller>,
    path: NamePath,
    req: Request,
) -> Response {
    named(Family::Barriers, node, caller, path, req).await
}

async fn named(
    family: Family,
    node: Arc<Node>,
    caller: Caller,
    path: NamePath,
    req: Request,
) -> Response {
    let method = req.method().clone();
    let route = req.uri().path().to_string();
    let checked = (|| {
        // The only way a catch-all path fails to extract is bytes that are not UTF-8 once
        // percent-decoded; axum's own message names its parameter, not the lock.
        let Path(rest) = path.map_err(|_| {
            error(
                StatusCode::BAD_REQUEST,
                "invalid_name",
                "invalid lock name: it is not UTF-8 once percent-decoded",
            )
        })?;
        let (name, action) = rest.rsplit_once('/').ok_or_else(|| {
            error(
                StatusCode::NOT_FOUND,
                "unknown_route",
                format!("no route {method} {route}"),
            )
        })?;
        let Some(allowed) = family.method(action) else {
            return Err(error(
                StatusCode::NOT_FOUND,
                "unknown_route",
                format!("no route {method} {route}"),
            ));
        };
        if method != allowed {
            return Err(method_not_allowed(&method, &route, allowed.as_str()));
        }
        validate_name(name)
            .map_err(|e| error(StatusCode::BAD_REQUEST, "invalid_name", e.to_string()))?;
        Ok((name.to_string(), action.to_string()))
    })();
    let (name, action) = match checked {
        Ok(c) => c,
        Err(e) => return e.into_response(),
    };
    let audited = Audited::of(&node, &caller, &req, &action, name.clone());
    let audited = match admit(&node, &caller, audited, &name, reads(&action), true).await {
        Ok(audited) => audited,
        Err(refused) => return refused,
    };
    if action == "observe" {
        return observe(node, name);
    }
    let response = on_leader(node, req, move |node, body| async move {
        match action.as_str() {
            "acquire" => acquire(node, family, name, parse(&body)?).await,
            "arrive" => barriers::arrive(node, name, parse(&body)?).await,
            "campaign" => campaign(node, name, parse(&body)?).await,
            "release" | "resign" => release(&node, name, &body).await,
            "renew" => renew(&node, name, &body).await,
            "proclaim" => proclaim(&node, name, &body).await,
            "withdraw" => withdraw(&node, name, &body).await,
            "leader" => leader(&node, &name).await,
            _ if family == Family::Barriers => barriers::status(&node, &name).await,
            _ => status(&node, family, &name).await,
        }
    })
    .await;
    audited.finish(response).await
}

async fn acquire(
    node: Arc<Node>,
    family: Family,
    name: String,
    b: AcquireBody,
) -> Result<Response, ApiError> {
    let started = std::time::Instant::now();
    let (limit, permits) = hold_kind(family, &b)?;
    label("holder", &b.holder)?;
    if let Some(n) = &b.node {
        label("node", n)?;
    }
    checked_ttl(b.ttl_ms)?;
    let task_info_len = b.task_info.json_len();
    if task_info_len > MAX_TASK_INFO_BYTES {
        return Err(error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "task_info_too_large",
            format!("task_info takes {task_info_len} bytes as JSON; at most {MAX_TASK_INFO_BYTES}"),
        ));
    }
    checked_wait(b.wait_ms)?;
    let id = request_id(b.request_id)?;
    let wait_ms = b.wait_ms;
    let acquire = Acquire {
        request_id: id.clone(),
        name: name.clone(),
        holder: b.holder,
        node: b.node.unwrap_or_default(),
        ttl_ms: b.ttl_ms,
        wait_ms,
        readopt: b.readopt,
        task_info: b.task_info,
        session: b.session,
    };
    let abandoned = Abandoned::arm(&node, &name, &acquire.holder, &id);
    // An exclusive acquire is the command it always was; the others are claims.
    let exclusive = !b.shared && limit.is_none();
    let command = if exclusive {
        Command::Acquire(acquire)
    } else {
        Command::Claim(Claim {
            acquire,
            shared: b.shared,
            limit,
            permits,
        })
    };
    let settled = settle(&node, command, &id, wait_ms).await;
    // An answer, even an error, reaches the client, which retries under the same request id:
    // only a client that is gone has its acquire taken back.
    abandoned.answered();
    let (outcome, index) = settled?;
    if let Answer::Withdrawn { .. } = outcome {
        return Err(error(
            StatusCode::CONFLICT,
            "withdrawn",
            format!("acquire request {id} was withdrawn by its client"),
        ));
    }
    // A grant made for this request (by its entry, or later from the queue) carries a token at
    // least the entry's index; a remembered answer to a retry carries an older one.
    if let Answer::Granted {
        lease,
        adopted: false,
    } = &outcome
        && lease.fencing_token >= index
    {
        node.stats.acquired(started.elapsed());
    }
    if exclusive {
        return answer(&node, &name, &id, outcome);
    }
    let now = now(&node);
    let kind = match limit {
        Some(_) => Kind::Semaphore,
        None => Kind::Shared,
    };
    match outcome {
        Answer::Granted { lease, adopted } => Ok(ok(json!({
            "lock": name, "request_id": id, "acquired": true, "adopted": adopted,
            "kind": kind, "limit": limit,
            "holder": hold_json(&lease, permits, b.shared, now),
        }))),
        Answer::LimitMismatch { limit: theirs } => Err(error(
            StatusCode::CONFLICT,
            "limit_mismatch",
            format!(
                "semaphore {name:?} has limit {theirs}, not {}: every claim of a semaphore \
                 must give its limit",
                limit.unwrap_or_default()
            ),
        )
        .with(json!({"lock": name, "request_id": id, "limit": theirs, "requested_limit": limit}))),
        other => answer(&node, &name, &id, other),
    }
}

/// The semaphore limit and permits an acquire asks for by its route: none on `/locks/` (a
/// shared hold at most), a limit and permits of it on `/semaphores/`.
fn hold_kind(family: Family, b: &AcquireBody) -> Result<(Option<u32>, u32), ApiError> {
    match family {
        Family::Locks | Family::Election | Family::Barriers => {
            if b.limit.is_some() || b.permits.is_some() {
                return Err(invalid(
                    "limit",
                    "a lock has no limit or permits; claim a semaphore's with \
                     POST /semaphores/{name}/acquire",
                ));
            }
            Ok((None, 1))
        }
        Family::Semaphores => {
            if b.shared {
                return Err(invalid("shared", "a semaphore has no shared holds"));
            }
            let Some(limit) = b.limit.filter(|l| (1..=MAX_LIMIT).contains(l)) else {
                return Err(invalid(
                    "limit",
                    format!("a semaphore claim gives its limit, 1 to {MAX_LIMIT}"),
                ));
            };
            let permits = b.permits.unwrap_or(1);
            if !(1..=limit).contains(&permits) {
                return Err(invalid("permits", format!("use 1 to the limit, {limit}")));
            }
            Ok((Some(limit), permits))
        }
    }
}

/// Proposes an acquire and, if it joins the lock's queue, waits for its final answer: the answer
/// and the position of the acquire's entry.
async fn settle(
    node: &Node,
    command: Command,
    id: &str,
    wait_ms: u64,
) -> Result<(Answer, u64), ApiError> {
    // Subscribe before proposing, so no settlement can slip between the two.
    let mut applied = node.state.subscribe();
    let (outcome, index) = node.propose(command).await.map_err(propose_error)?;
    if !matches!(outcome, Answer::Queued { .. }) {
        return Ok((outcome, index));
    }
    let deadline = tokio::time::Instant::now() + Duration::from_millis(wait_ms) + SETTLE_GRACE;
    loop {
        match node.state.read(|m| m.state.answer(id).cloned()) {
            Some(Answer::Queued { .. }) => {}
            Some(settled) => return Ok((settled, index)),
            None => {
                return Err(unavailable(format!("the answer to request {id} was lost")));
            }
        }
        match tokio::time::timeout_at(deadline, applied.changed()).await {
            Ok(Ok(())) => {}
            _ => {
                return Err(unavailable(format!(
                    "the wait of request {id} did not settle in time"
                )));
            }
        }
    }
}

/// An acquire (or barrier arrival) whose client may have gone: if its handler is dropped
/// before it answers, it is withdrawn. hyper drops a handler when its client's connection closes; without this,
/// a lock handed to a waiter that is gone would sit with it for a whole TTL, and a queue of gone
/// waiters would hold the lock for many. The withdrawal is a command like any other: applied once,
/// whatever became of the acquire (queued, granted, or not arrived yet).
struct Abandoned {
    node: Arc<Node>,
    withdraw: Option<Withdraw>,
}

impl Abandoned {
    /// Armed for request `id` of `holder` on `name` (an acquire or a barrier arrival), before
    /// it is proposed: a client may leave while it is.
    fn arm(node: &Arc<Node>, name: &str, holder: &str, id: &str) -> Abandoned {
        let withdraw = Withdraw {
            request_id: fresh_request_id(),
            name: name.to_string(),
            holder: holder.to_string(),
            acquire_id: id.to_string(),
        };
        Abandoned {
            node: node.clone(),
            withdraw: Some(withdraw),
        }
    }

    /// The client is given the answer: nothing to take back.
    fn answered(mut self) {
        self.withdraw = None;
    }
}

impl Drop for Abandoned {
    fn drop(&mut self) {
        let (Some(withdraw), Ok(runtime)) =
            (self.withdraw.take(), tokio::runtime::Handle::try_current())
        else {
            return;
        };
        let node = self.node.clone();
        runtime.spawn(async move {
            let (name, id) = (withdraw.name.clone(), withdraw.acquire_id.clone());
            match node.propose(Command::Withdraw(withdraw)).await {
                Ok(_) => tracing::debug!("withdrew acquire {id} of {name:?}: its client left"),
                Err(ProposeError::NotLeader(_)) | Err(ProposeError::Unavailable(_)) => {
                    tracing::warn!(
                        "could not withdraw acquire {id} of {name:?}, whose client left: it may \
                         be granted and held until its lease ends"
                    )
                }
            }
        });
    }
}

async fn release(node: &Node, name: String, body: &[u8]) -> Result<Response, ApiError> {
    by_token(
        node,
        name,
        parse(body)?,
        |request_id, name, holder, token| {
            Command::Release(Release {
                request_id,
                name,
                holder,
                token,
            })
        },
    )
    .await
}

async fn renew(node: &Node, name: String, body: &[u8]) -> Result<Response, ApiError> {
    let b: RenewBody = parse(body)?;
    let ttl_ms = b.ttl_ms.map(checked_ttl).transpose()?;
    let grant = ReleaseBody {
        holder: b.holder,
        token: b.token,
        request_id: b.request_id,
    };
    renewal(node, name, grant, (ttl_ms, None), b.session).await
}

/// A renewal of the grant `grant` names, with a new TTL or a new published value if given, and
/// the hold's move into `session` if one is named.
async fn renewal(
    node: &Node,
    name: String,
    grant: ReleaseBody,
    (ttl_ms, value): (Option<u64>, Option<String>),
    session: Option<u64>,
) -> Result<Response, ApiError> {
    let command = |request_id, name, holder, token| {
        Command::Renew(Renew {
            request_id,
            name,
            holder,
            token,
            ttl_ms,
            value,
            session,
        })
    };
    by_token(node, name, grant, command).await
}

/// A campaign: an exclusive acquire of the election's lock, its value published with the lease.
async fn campaign(node: Arc<Node>, name: String, b: CampaignBody) -> Result<Response, ApiError> {
    if let Some(v) = &b.value {
        checked_value(v)?;
    }
    let body = AcquireBody {
        holder: b.holder,
        ttl_ms: b.ttl_ms,
        wait_ms: b.wait_ms,
        node: b.node,
        request_id: b.request_id,
        readopt: false,
        task_info: TaskInfo {
            value: b.value,
            ..TaskInfo::default()
        },
        shared: false,
        limit: None,
        permits: None,
        session: None,
    };
    acquire(node, Family::Election, name, body).await
}

/// The leader publishes a new value: a renewal of its lease that carries it.
async fn proclaim(node: &Node, name: String, body: &[u8]) -> Result<Response, ApiError> {
    let b: ProclaimBody = parse(body)?;
    checked_value(&b.value)?;
    let grant = ReleaseBody {
        holder: b.holder,
        token: b.token,
        request_id: b.request_id,
    };
    renewal(node, name, grant, (None, Some(b.value)), None).await
}

fn checked_value(value: &str) -> Result<(), ApiError> {
    validate_value(value).map_err(|e| invalid("value", e))
}

/// Takes back an acquire (by its request id) that its client gave up on: out of the queue, its
/// grant released, or never executed if it has not arrived.
async fn withdraw(node: &Node, name: String, body: &[u8]) -> Result<Response, ApiError> {
    let b: WithdrawBody = parse(body)?;
    label("holder", &b.holder)?;
    let acquire_id = request_id(Some(b.acquire_request_id))?;
    let id = request_id(b.request_id)?;
    let command = Command::Withdraw(Withdraw {
        request_id: id.clone(),
        name: name.clone(),
        holder: b.holder,
        acquire_id,
    });
    let (outcome, _) = node.propose(command).await.map_err(propose_error)?;
    answer(node, &name, &id, outcome)
}

/// A lease's TTL in milliseconds, within the bounds every backend keeps.
/// A server-side wait a request may ask for.
fn checked_wait(ms: u64) -> Result<(), ApiError> {
    match ms <= MAX_WAIT_MS {
        true => Ok(()),
        false => Err(invalid(
            "wait_ms",
            format!("use 0 to {MAX_WAIT_MS} milliseconds"),
        )),
    }
}

fn checked_ttl(ms: u64) -> Result<u64, ApiError> {
    let (min, max) = (lease::millis(lease::MIN_TTL), lease::millis(lease::MAX_TTL));
    if (min..=max).contains(&ms) {
        Ok(ms)
    } else {
        Err(invalid(
            "ttl_ms",
            format!("use {min} to {max} milliseconds"),
        ))
    }
}

/// A holder's request about its own grant, named by its fencing token (release, renew).
async fn by_token(
    node: &Node,
    name: String,
    b: ReleaseBody,
    command: impl FnOnce(String, String, String, u64) -> Command,
) -> Result<Response, ApiError> {
    label("holder", &b.holder)?;
    let id = request_id(b.request_id)?;
    let command = command(id.clone(), name.clone(), b.holder, b.token);
    let (outcome, _) = node.propose(command).await.map_err(propose_error)?;
    answer(node, &name, &id, outcome)
}

/// The error answer to a request a limit of the coordinator refused.
fn refusal(limit: Limit) -> ApiError {
    match limit {
        // The API refuses these before proposing; kept for completeness of the state.
        Limit::Permits => invalid(
            "permits",
            format!("a semaphore's limit is 1 to {MAX_LIMIT}, its permits 1 to the limit"),
        ),
        Limit::Count => invalid("count", format!("use 1 to {}", super::state::MAX_COUNT)),
        Limit::Sessions => error(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_sessions",
            format!(
                "{} sessions are open, the most the coordinator keeps",
                super::state::MAX_SESSIONS
            ),
        ),
        Limit::HeldLocks => error(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_locks",
            format!(
                "{} locks are held, the most the coordinator holds",
                super::state::MAX_HELD_LOCKS
            ),
        ),
        Limit::Waiters => error(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_waiters",
            format!(
                "{} acquires are waiting, the most the coordinator queues",
                super::state::MAX_WAITERS
            ),
        ),
        Limit::KvQuota => error(
            StatusCode::TOO_MANY_REQUESTS,
            "kv_quota",
            "the write would take the key-value store past its quota (serve --kv-quota); \
             delete keys or raise the quota",
        ),
    }
}

/// The HTTP answer to a request's outcome.
fn answer(node: &Node, name: &str, id: &str, outcome: Answer) -> Result<Response, ApiError> {
    let now = now(node);
    let conflict = StatusCode::CONFLICT;
    match outcome {
        Answer::Granted { lease, adopted } => Ok(ok(json!({
            "lock": name, "request_id": id, "acquired": true, "adopted": adopted,
            "holder": holder_json(&lease, now),
        }))),
        Answer::Released { lease } => Ok(ok(json!({
            "lock": name, "request_id": id, "released": true, "holder": holder_json(&lease, now),
        }))),
        Answer::Renewed { lease } => Ok(ok(json!({
            "lock": name, "request_id": id, "renewed": true, "holder": holder_json(&lease, now),
        }))),
        Answer::Held { holder } => Err(error(
            conflict,
            "lock_held",
            format!("lock {name:?} is held by {:?}", holder.worker_id),
        )
        .with(json!({"lock": name, "request_id": id, "holder": holder_json(&holder, now)}))),
        Answer::TimedOut { holder } => Err(error(
            conflict,
            "wait_timed_out",
            format!("lock {name:?} was still held by {:?} when the wait ran out", holder.worker_id),
        )
        .with(json!({"lock": name, "request_id": id, "holder": holder_json(&holder, now)}))),
        Answer::NotHolder { holder } => Err(error(
            conflict,
            "not_holder",
            match &holder {
                Some(h) => format!(
                    "lock {name:?} is held by {:?} with fencing token {}, not by this holder and token",
                    h.worker_id, h.fencing_token
                ),
                None => format!("lock {name:?} is not held (released, or its lease ended)"),
            },
        )
        .with(json!({"lock": name, "request_id": id, "holder": holder.map(|h| holder_json(&h, now))}))),
        Answer::RequestIdReused => Err(error(
            conflict,
            "request_id_reused",
            format!("request id {id:?} was already used for another request"),
        )),
        Answer::Refused { limit } => Err(refusal(limit)),
        Answer::OtherKind { kind, limit } => Err(error(
            conflict,
            "kind_conflict",
            match limit {
                Some(l) => format!("{name:?} is held as a semaphore of limit {l}, not as a lock"),
                None => format!("{name:?} is held as a lock ({}), not as a semaphore", kind_name(kind)),
            },
        )
        .with(json!({"lock": name, "request_id": id, "kind": kind, "limit": limit}))),
        Answer::LimitMismatch { limit } => Err(error(
            conflict,
            "limit_mismatch",
            format!("semaphore {name:?} has limit {limit}"),
        )
        .with(json!({"lock": name, "request_id": id, "limit": limit}))),
        Answer::Opened { count } => Ok(ok(json!({
            "barrier": name, "request_id": id, "opened": true, "count": count,
        }))),
        Answer::NotOpened { arrived, count } => Err(error(
            conflict,
            "wait_timed_out",
            format!("barrier {name:?} had {arrived} of {count} participants besides this one when the wait ran out"),
        )
        .with(json!({"barrier": name, "request_id": id, "arrived": arrived, "count": count}))),
        Answer::CountMismatch { count } => Err(error(
            conflict,
            "count_mismatch",
            format!("barrier {name:?} waits for {count} participants: every participant must give the same count"),
        )
        .with(json!({"barrier": name, "request_id": id, "count": count}))),
        Answer::Session {
            session,
            expires_at_ms,
        } => Ok(ok(json!({
            "session": session, "request_id": id,
            "expires_at": lease::rfc3339(lease::from_unix_ms(expires_at_ms)),
        }))),
        Answer::NoSession => Err(error(
            conflict,
            "no_session",
            "the session is not open (it ended, was closed, or is another holder's)",
        )
        .with(json!({"request_id": id}))),
        Answer::SessionClosed { session, released } => Ok(ok(json!({
            "session": session, "request_id": id, "closed": true,
            "released": released.iter().map(|(lock, l)| json!({
                "lock": lock, "holder": holder_json(l, now),
            })).collect::<Vec<_>>(),
        }))),
        Answer::Queued { .. } => Err(unavailable(format!("request {id} is still waiting"))),
        Answer::Withdrawn { lease } => Ok(ok(json!({
            "lock": name, "request_id": id, "withdrawn": true,
            "released": lease.map(|l| holder_json(&l, now)),
        }))),
        Answer::KvWritten { revision, value } => Ok(ok(json!(KvWritten {
            key: name.to_string(),
            revision,
            value,
            request_id: id.to_string(),
        }))),
        Answer::KvDeleted { revision } => Ok(ok(json!(KvDeleted {
            key: name.to_string(),
            deleted: revision.is_some(),
            revision: revision.unwrap_or_else(|| node.state.read(|m| m.state.revision())),
            request_id: id.to_string(),
        }))),
        Answer::CompareFailed { revision } => Err(error(
            conflict,
            "compare_failed",
            match revision {
                0 => format!("key {name:?} does not exist"),
                r => format!("key {name:?} is at revision {r}"),
            },
        )
        .with(json!({"key": name, "request_id": id, "revision": revision}))),
        Answer::TxnDone { revisions } => Ok(ok(json!(KvTxnDone {
            revision: node.state.read(|m| m.state.revision()),
            revisions,
            request_id: id.to_string(),
        }))),
        Answer::TxnFailed { compare, revision } => Err(error(
            conflict,
            "compare_failed",
            format!("compare {compare} of the transaction does not hold"),
        )
        .with(json!({"compare": compare, "request_id": id, "revision": revision}))),
        Answer::MergeConflict { why } => Err(error(
            conflict,
            "merge_conflict",
            format!("key {name:?}: {why}"),
        )
        .with(json!({"key": name, "request_id": id}))),
    }
}

/// A held name as the state has it: a lock, or a semaphore or shared lock.
#[derive(Clone, Copy)]
enum Held<'a> {
    Lock(&'a Slot),
    Group(&'a Group),
}

fn held_of<'a>(state: &'a LockState, name: &str) -> Option<Held<'a>> {
    state
        .get(name)
        .map(Held::Lock)
        .or_else(|| state.group(name).map(Held::Group))
}

/// Whether anything of `held` is live at `now`.
fn is_live(held: Held<'_>, now: u64) -> bool {
    match held {
        Held::Lock(s) => !LockTable::is_stale(&s.lease, now),
        Held::Group(g) => g.holds.iter().any(|h| !LockTable::is_stale(&h.lease, now)),
    }
}

fn kind_name(kind: Kind) -> &'static str {
    match kind {
        Kind::Exclusive => "exclusive",
        Kind::Shared => "shared",
        Kind::Semaphore => "semaphore",
    }
}

/// A hold as `holders` lists it: the lease, and how many permits it takes and whether shared.
fn hold_json(record: &LockRecord, permits: u32, shared: bool, now: u64) -> Value {
    let mut v = holder_json(record, now);
    if let Value::Object(o) = &mut v {
        o.insert("permits".into(), permits.into());
        o.insert("shared".into(), shared.into());
    }
    v
}

/// A name as reads show it, judged at `now`: a lease that has ended is shown gone even before
/// the state has ended it. `holder` is the exclusive holder (the key every lock had before
/// shared holds and semaphores), `holders` every live hold.
fn lock_json(family: Family, name: &str, held: Option<Held<'_>>, now: u64) -> Value {
    let live = held.filter(|h| is_live(*h, now));
    let mut holders: Vec<Value> = Vec::new();
    let mut holder = Value::Null;
    let (mut kind, mut limit) = match family {
        Family::Locks | Family::Election | Family::Barriers => (Kind::Exclusive, None),
        Family::Semaphores => (Kind::Semaphore, None),
    };
    let queue = match live {
        None => None,
        Some(Held::Lock(s)) => {
            kind = Kind::Exclusive;
            holder = holder_json(&s.lease, now);
            holders.push(hold_json(&s.lease, 1, false, now));
            Some(&s.queue)
        }
        Some(Held::Group(g)) => {
            let holds: Vec<_> = g
                .holds
                .iter()
                .filter(|h| !LockTable::is_stale(&h.lease, now))
                .collect();
            kind = match g.limit {
                Some(_) => Kind::Semaphore,
                None if holds.iter().any(|h| h.shared) => Kind::Shared,
                None => Kind::Exclusive,
            };
            limit = g.limit;
            if let [h] = &holds[..]
                && kind == Kind::Exclusive
            {
                holder = holder_json(&h.lease, now);
            }
            holders = holds
                .iter()
                .map(|h| hold_json(&h.lease, h.permits, h.shared, now))
                .collect();
            Some(&g.queue)
        }
    };
    let shown: Vec<Value> = queue
        .into_iter()
        .flatten()
        .take(MAX_QUEUE_SHOWN)
        .map(|w| {
            json!({
                "holder": w.holder, "node": w.node,
                "since": lease::rfc3339(lease::from_unix_ms(w.since_ms)),
                "until": lease::rfc3339(lease::from_unix_ms(w.until_ms)),
                "permits": w.permits, "shared": w.shared,
            })
        })
        .collect();
    let mut v = json!({
        "lock": name,
        "held": live.is_some(),
        "holder": holder,
        "queue": shown,
        "waiting": queue.map_or(0, VecDeque::len),
        "kind": kind,
        "limit": limit,
        "holders": holders,
    });
    if kind == Kind::Semaphore
        && let Value::Object(o) = &mut v
    {
        let held: u64 = holders.iter().filter_map(|h| h["permits"].as_u64()).sum();
        o.insert("permits_held".into(), held.into());
    }
    v
}

/// `{"election", "leader": {worker_id, node_id, value, since, fencing_token, expires_at} |
/// null}`: the live exclusive holder of the election's lock, judged at `now`.
fn leader_json(state: &LockState, name: &str, now: u64) -> Value {
    let holder = &lock_json(Family::Election, name, held_of(state, name), now)["holder"];
    let leader = holder.is_object().then(|| {
        json!({
            "worker_id": holder["worker_id"],
            "node_id": holder["node_id"],
            "value": holder["task_info"]["value"],
            "since": holder["claimed_at"],
            "fencing_token": holder["fencing_token"],
            "expires_at": holder["expires_at"],
        })
    });
    json!({"election": name, "leader": leader})
}

async fn leader(node: &Node, name: &str) -> Result<Response, ApiError> {
    linearizable(node).await?;
    let now = now(node);
    Ok(ok(node.state.read(|m| leader_json(&m.state, name, now))))
}

/// `GET /election/{name}/observe`: the leader now and at every change, as server-sent events
/// from this node's own state ([`super::observe`]).
fn observe(node: Arc<Node>, name: String) -> Response {
    let Ok(permit) = node.waits.clone().try_acquire_owned() else {
        return Busy.into_response();
    };
    super::observe::changes(node, permit, move |node| {
        let now = now(node);
        let mut leader = node.state.read(|m| leader_json(&m.state, &name, now));
        // Each renewal moves the expiry: an event per renewal would bury the changes of leader.
        if let Some(l) = leader["leader"].as_object_mut() {
            l.remove("expires_at");
        }
        leader
    })
}

async fn status(node: &Node, family: Family, name: &str) -> Result<Response, ApiError> {
    linearizable(node).await?;
    let now = now(node);
    Ok(ok(node.state.read(|m| {
        lock_json(family, name, held_of(&m.state, name), now)
    })))
}

/// Every held name after `after`, locks and groups merged in name order.
fn held_after<'a>(
    state: &'a LockState,
    after: Option<&str>,
) -> impl Iterator<Item = (&'a str, Held<'a>)> + 'a {
    let mut locks = state
        .iter_after(after)
        .map(|(n, s)| (n, Held::Lock(s)))
        .peekable();
    let mut groups = state
        .groups_after(after)
        .map(|(n, g)| (n, Held::Group(g)))
        .peekable();
    std::iter::from_fn(move || match (locks.peek(), groups.peek()) {
        (Some(l), Some(g)) if g.0 < l.0 => groups.next(),
        (Some(_), _) => locks.next(),
        (None, _) => groups.next(),
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    after: Option<String>,
    limit: Option<usize>,
}

/// A listing's page size: `limit`, or [`DEFAULT_PAGE`]; 1 to [`MAX_PAGE`].
fn page_limit(limit: Option<usize>) -> Result<usize, ApiError> {
    let limit = limit.unwrap_or(DEFAULT_PAGE);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(error(
            StatusCode::BAD_REQUEST,
            "invalid_query",
            format!("limit must be 1 to {MAX_PAGE}"),
        ));
    }
    Ok(limit)
}

async fn list(
    State(node): State<Arc<Node>>,
    Extension(caller): Extension<Caller>,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
    req: Request,
) -> Response {
    if req.method() != Method::GET {
        return method_not_allowed(req.method(), "/locks", "GET").into_response();
    }
    let checked = query
        .map_err(|e| error(StatusCode::BAD_REQUEST, "invalid_query", e.body_text()))
        .and_then(|Query(q)| Ok((q.after, page_limit(q.limit)?)));
    let (after, limit) = match checked {
        Ok(c) => c,
        Err(e) => return e.into_response(),
    };
    on_leader(node, req, move |node, _| async move {
        linearizable(&node).await?;
        let now = now(&node);
        let (locks, next) = node.state.read(|m| {
            let mut live = held_after(&m.state, after.as_deref())
                .filter(|(name, h)| caller.may(name) && is_live(*h, now));
            let mut page: Vec<Value> = Vec::new();
            let mut bytes = 0;
            for (name, slot) in live.by_ref() {
                let lock = lock_json(Family::Locks, name, Some(slot), now);
                bytes += lock.to_string().len();
                page.push(lock);
                if page.len() == limit || bytes >= MAX_PAGE_BYTES {
                    break;
                }
            }
            let more = live.next().is_some();
            let next = more
                .then(|| {
                    page.last()
                        .and_then(|l| l["lock"].as_str().map(String::from))
                })
                .flatten();
            (page, next)
        });
        Ok(ok(json!({"locks": locks, "next": next})))
    })
    .await
}

async fn health(State(node): State<Arc<Node>>, method: Method) -> Response {
    if method != Method::GET {
        return method_not_allowed(&method, "/health", "GET").into_response();
    }
    let metrics = node.raft.metrics().borrow().clone();
    let body = json!({
        "ok": metrics.current_leader.is_some(),
        "id": node.id,
        "state": format!("{:?}", metrics.state).to_lowercase(),
        "leader": metrics.current_leader,
        "term": metrics.current_term,
    });
    if metrics.current_leader.is_some() {
        ok(body)
    } else {
        error(
            StatusCode::SERVICE_UNAVAILABLE,
            "no_leader",
            "this node knows no leader: the cluster is electing one, or too few nodes are up",
        )
        .with(body)
        .into_response()
    }
}

/// This node's own metrics, in Prometheus text format (never forwarded: each node is scraped).
async fn metrics(State(node): State<Arc<Node>>, method: Method) -> Response {
    if method != Method::GET {
        return method_not_allowed(&method, "/metrics", "GET").into_response();
    }
    match node.stats.render(node.state.read(|m| m.state.held())) {
        Ok(text) => (
            [(
                CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            )],
            text,
        )
            .into_response(),
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "unavailable",
            e.to_string(),
        )
        .into_response(),
    }
}

async fn cluster_status(State(node): State<Arc<Node>>, req: Request) -> Response {
    if req.method() != Method::GET {
        return method_not_allowed(req.method(), "/cluster/status", "GET").into_response();
    }
    // Only the leader knows the followers' progress; without a leader, this node's own view.
    let forwardable = node.leader().is_some_and(|(leader, _)| leader != node.id)
        && !req.headers().contains_key(FORWARDED);
    if forwardable {
        let (parts, body) = req.into_parts();
        let body = match read_body(body, MAX_BODY).await {
            Ok(b) => b,
            Err(e) => return e.into_response(),
        };
        if let Ok(r) = forward(&node, &parts, body, 0).await {
            return r;
        }
    }
    let metrics = node.raft.metrics().borrow().clone();
    let last = metrics.last_log_index;
    let members: Vec<Value> = metrics
        .membership_config
        .membership()
        .nodes()
        .map(|(id, n)| json!({"id": id, "addr": n.addr}))
        .collect();
    let followers: Vec<Value> = metrics
        .replication
        .iter()
        .flatten()
        .filter(|(id, _)| **id != node.id)
        .map(|(id, matched)| {
            let matched = matched.map(|l| l.index);
            let lag = last.unwrap_or(0).saturating_sub(matched.unwrap_or(0));
            json!({"id": id, "matched_index": matched, "lag": lag})
        })
        .collect();
    ok(json!({
        "id": node.id,
        "state": format!("{:?}", metrics.state).to_lowercase(),
        "leader": metrics.current_leader,
        "term": metrics.current_term,
        "members": members,
        "last_log_index": last,
        "commit_index": node.log.committed_index(),
        "applied_index": metrics.last_applied.map(|l| l.index),
        "followers": followers,
    }))
}
