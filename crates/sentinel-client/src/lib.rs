//! The server backend: the CLI as an HTTP JSON client of `sentinel serve` (docs/cluster.md), so `claim`, `release`, `heartbeat`, `run` and the janitor work on a replicated
//! coordinator exactly as they do on this host or on GitHub. The coordinator's key-value store,
//! which no other backend has, is reached through its own methods (`kv_get`, `kv_put`,
//! `kv_delete`, `kv_list`), over the same failover and retries.
//!
//! It owns three things the coordinator's API leaves to its clients:
//!
//! - **Failover.** `--server` may list every node of a cluster. A request goes to the node that
//!   answered last; a node that cannot be reached, does not answer within the request's deadline,
//!   or answers 503 (no leader, leader changed) is skipped for the next one, for a bounded number
//!   of rounds with a short pause between rounds, within one deadline per operation. When every
//!   round fails the error is [`Error::Unavailable`] (exit 8).
//! - **Safe retries.** Every write carries a request id generated once per operation and reused
//!   by every retry of it, on any node: the coordinator remembers the answer to an id, so an
//!   acquire retried after a failover is never granted twice.
//! - **Fencing tokens.** The coordinator checks a release or renewal against the holder and its
//!   fencing token. A caller that names its grant by its token (a library guard, `run`) sends
//!   that token, so a grant that ended can never release or renew a later one, even one of the
//!   same worker id. The CLI's `release` and `heartbeat` know only the worker id, so they read the
//!   token from `GET /locks/{name}/status` first. A lock re-granted between that read and the
//!   write has a new token, and the write is refused (`not_holder`): never a stale release.
//!
//! `https://` servers are reached with the TLS of [`ClientTls`] (`--ca-cert`, `--client-cert`,
//! `--client-key`). A TLS failure (a server certificate this client does not trust, its own
//! certificate refused, TLS spoken to a plain node) is a configuration problem: when every
//! server of a round fails so, no further round is tried and the error is [`Error::Auth`]
//! (exit 5), naming the URL and what to give.

mod barrier;
mod diagnose;
mod kv;
mod session;
mod watch;

pub use session::Session;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_TYPE};
use http::{HeaderValue, Method, StatusCode};
use http_body_util::Full;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use serde::Serialize;
use serde_json::Value;

use sentinel_core::backend::{Holds, LockBackend, Status, foreign};
use sentinel_core::barrier::{ArriveRequest, Arrived};
use sentinel_core::error::{Error, Result};
use sentinel_core::interrupt;
use sentinel_core::lease;
use sentinel_core::lock::{
    AcquireRequest, Attempt, Grant, HoldKind, Holder, ListRequest, LockId, ReleaseRequest,
    ReleaseStaleRequest, Released, RenewRequest, StaleRelease, Takeover, validate_name,
};
use sentinel_core::secret::Secret;
use sentinel_core::tls::ClientTls;
use sentinel_proto::api::{
    AcquireBody, ErrorBody, LeaseAnswer, LockPage, LockStatus, ReleaseBody, RenewBody,
    WithdrawBody, code,
};
use sentinel_proto::http::{self as network, Failure, HttpClient};

/// Rounds over every given server before giving up.
const ROUNDS: u32 = 4;
/// Pause after a round in which no server answered; doubles each round.
const ROUND_PAUSE: Duration = Duration::from_millis(250);
/// How long one request may take, beyond the server-side wait it asks for. A node without a
/// leader answers 503 within a few seconds, so this only bounds a node that hangs.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one operation may take over all its retries, beyond its server-side wait: a request
/// that timed out after a long wait is not waited out again on every node.
const OPERATION_TIMEOUT: Duration = Duration::from_secs(30);
/// How long withdrawing an interrupted claim may take before the process exits anyway.
const UNDO_TIMEOUT: Duration = Duration::from_secs(5);
/// Locks per page of `GET /locks` (the coordinator's largest page).
const PAGE: usize = 1_000;
/// Most pages one listing reads: the coordinator holds at most 100,000 locks.
const MAX_PAGES: usize = 200;
/// Longest server-side wait the coordinator accepts, as `wait_ms`.
pub const MAX_WAIT: Duration = Duration::from_millis(sentinel_proto::MAX_WAIT_MS);

/// Checks `--server` / `SENTINEL_SERVER`: one or more comma-separated `http://HOST:PORT` or
/// `https://HOST:PORT` URLs (https for nodes started with `--tls-cert`), where a bare `HOST:PORT`
/// means `http://`; a URL with credentials is never repeated in the message.
pub fn server_urls(raw: &str) -> Result<Vec<String>> {
    let mut urls = Vec::new();
    for part in raw.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        // HOST:PORT alone means plain HTTP, as etcdctl's --endpoints; TLS is asked for by name.
        let with_scheme;
        let part = match part.contains("://") {
            true => part,
            false => {
                with_scheme = format!("http://{part}");
                with_scheme.as_str()
            }
        };
        let bad = |why: &str| {
            Error::usage(format!(
                "invalid --server {}: {why}; expected e.g. http://127.0.0.1:7464 (several: comma-separated)",
                sentinel_core::endpoint::shown_url(part)
            ))
        };
        let (url, uri) = sentinel_core::endpoint::http_url(part).map_err(|why| {
            if why.starts_with("credentials") {
                bad("credentials do not belong in the URL; pass the token with --auth-token or SENTINEL_AUTH_TOKEN")
            } else {
                bad(why)
            }
        })?;
        if uri.path() != "/" && !uri.path().is_empty() {
            return Err(bad("no path is allowed"));
        }
        if uri.port_u16().is_none() {
            return Err(bad("give the port"));
        }
        if !urls.contains(&url) {
            urls.push(url);
        }
    }
    if urls.is_empty() {
        return Err(Error::usage(
            "invalid --server: no URL given; expected e.g. http://127.0.0.1:7464",
        ));
    }
    if urls.len() > 16 {
        return Err(Error::usage("invalid --server: at most 16 URLs"));
    }
    Ok(urls)
}

fn is_https(url: &str) -> bool {
    url.get(..6)
        .is_some_and(|s| s.eq_ignore_ascii_case("https:"))
}

/// Everything but RFC 3986's unreserved characters: a name encoded with it is one path segment
/// or query value, whatever it holds (`/`, `?`, `&`, spaces).
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// Percent-encodes a lock name or key as one path segment (or query value).
fn encode(name: &str) -> String {
    utf8_percent_encode(name, SEGMENT).to_string()
}

/// How many times a claim sends a new acquire after the server withdrew the last one because
/// its connection was lost.
const WITHDRAWN_RETRIES: usize = 3;

/// A request's JSON body.
fn json(body: &impl Serialize) -> Result<Bytes> {
    serde_json::to_vec(body)
        .map(Bytes::from)
        .map_err(|e| Error::Unexpected(format!("cannot encode a request: {e}")))
}

fn request_id() -> String {
    format!("{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..))
}

/// An answer of the coordinator: the status and the JSON body.
struct Answer {
    status: StatusCode,
    body: Value,
}

impl Answer {
    fn error(&self) -> ErrorBody {
        serde_json::from_value(self.body.clone()).unwrap_or_default()
    }

    fn parse<T: serde::de::DeserializeOwned>(&self, what: &str) -> Result<T> {
        serde_json::from_value(self.body.clone()).map_err(|e| {
            Error::Unexpected(format!(
                "the sentinel server's answer to {what} is not understood: {e}"
            ))
        })
    }
}

/// A client of one coordinator cluster.
pub struct ServerBackend {
    servers: Vec<String>,
    auth: Option<HeaderValue>,
    client: HttpClient,
    /// The server that answered last: the leader, or a node that reaches it.
    preferred: AtomicUsize,
}

impl ServerBackend {
    /// `servers` as [`server_urls`] returned them, `https://` ones trusting the system's roots.
    ///
    /// # Errors
    ///
    /// As [`ServerBackend::with_tls`].
    pub fn new(servers: Vec<String>, token: Option<&Secret>) -> Result<ServerBackend> {
        ServerBackend::with_tls(servers, token, &ClientTls::default())
    }

    /// `servers` as [`server_urls`] returned them, `https://` ones reached with `tls`. Its files
    /// are read and checked here whenever one is given or a server is `https://`.
    ///
    /// # Errors
    ///
    /// [`Error::Usage`] for an invalid token or TLS file (naming the file).
    pub fn with_tls(
        servers: Vec<String>,
        token: Option<&Secret>,
        tls: &ClientTls,
    ) -> Result<ServerBackend> {
        let auth = match token.map(|t| t.expose().trim()).filter(|t| !t.is_empty()) {
            Some(t) => {
                let mut v = HeaderValue::from_str(&format!("Bearer {t}")).map_err(|_| {
                    Error::usage("invalid --auth-token: use printable ASCII characters")
                })?;
                v.set_sensitive(true);
                Some(v)
            }
            None => None,
        };
        let client = if *tls != ClientTls::default() || servers.iter().any(|s| is_https(s)) {
            network::https_client(&tls.config()?)
        } else {
            network::http_client()
        };
        Ok(ServerBackend {
            servers,
            auth,
            client,
            preferred: AtomicUsize::new(0),
        })
    }

    /// One request, failing over between the servers. `wait` is the server-side wait the
    /// request asks for, added to its deadline.
    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Bytes>,
        wait: Duration,
    ) -> Result<Answer> {
        let n = self.servers.len();
        let deadline = tokio::time::Instant::now() + OPERATION_TIMEOUT + wait;
        let body = body.unwrap_or_default();
        let mut last = String::new();
        for round in 0..ROUNDS {
            let mut tls_failures = 0;
            if round > 0 {
                let pause = ROUND_PAUSE * 2u32.pow(round - 1);
                if tokio::time::Instant::now() + pause >= deadline {
                    break;
                }
                tokio::time::sleep(pause).await;
            }
            let start = self.preferred.load(Ordering::Relaxed);
            for i in 0..n {
                let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                if left.is_zero() {
                    break;
                }
                let timeout = (REQUEST_TIMEOUT + wait).min(left);
                let idx = (start + i) % n;
                let server = &self.servers[idx];
                let mut request = http::Request::builder()
                    .method(method.clone())
                    .uri(format!("{server}{path}"))
                    .header(CONTENT_TYPE, "application/json");
                if let Some(auth) = &self.auth {
                    request = request.header(AUTHORIZATION, auth.clone());
                }
                let request = request
                    .body(Full::new(body.clone()))
                    .map_err(|e| Error::Unexpected(format!("cannot build a request: {e}")))?;
                match network::exchange(&self.client, request, timeout).await {
                    Ok((status, _, bytes)) => {
                        let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
                        if status == StatusCode::SERVICE_UNAVAILABLE {
                            let e: ErrorBody = serde_json::from_value(body).unwrap_or_default();
                            tracing::info!(server = %server, code = %e.code, "server unavailable; trying the next");
                            last = format!("{server}: {} ({})", e.message, e.code);
                            continue;
                        }
                        self.preferred.store(idx, Ordering::Relaxed);
                        return Ok(Answer { status, body });
                    }
                    Err(f @ (Failure::Unreachable(_) | Failure::Lost(_))) => {
                        tracing::info!(server = %server, "{f}; trying the next");
                        last = f.to_string();
                    }
                    Err(Failure::Tls(e)) => {
                        tracing::info!(server = %server, "{e}; trying the next");
                        tls_failures += 1;
                        last = e;
                    }
                }
            }
            if tls_failures == n {
                return Err(Error::Auth(format!(
                    "a configuration problem, not an outage: {last}"
                )));
            }
        }
        Err(Error::Unavailable(format!(
            "no sentinel server answered ({} given: {}; up to {ROUNDS} rounds): last error: {last}",
            n,
            self.servers.join(", ")
        )))
    }

    /// The CLI's error for a coordinator error that is not part of the operation's answer.
    fn fail(&self, answer: &Answer) -> Error {
        let e = answer.error();
        let msg = format!("sentinel server: {} ({})", e.message, e.code);
        match answer.status {
            StatusCode::UNAUTHORIZED => Error::Auth(format!(
                "{msg}; pass the cluster's token with --auth-token-file FILE, --auth-token or \
                 SENTINEL_AUTH_TOKEN"
            )),
            // The token was accepted but may not act here: another token would not help the
            // same way, and the node's message says which locks it may act on.
            StatusCode::FORBIDDEN => Error::Auth(msg),
            StatusCode::BAD_REQUEST
            | StatusCode::NOT_FOUND
            | StatusCode::METHOD_NOT_ALLOWED
            | StatusCode::PAYLOAD_TOO_LARGE => Error::Usage(msg),
            StatusCode::CONFLICT if e.code == code::NOT_HOLDER => Error::NotOwner(msg),
            StatusCode::TOO_MANY_REQUESTS => Error::Unavailable(msg),
            _ => Error::Unexpected(format!("{msg} (HTTP {})", answer.status.as_u16())),
        }
    }

    /// What `name` is held as and by whom, as the leader sees it (an ended lease is free).
    async fn lock_status(&self, name: &str) -> Result<LockStatus> {
        let answer = self
            .call(
                Method::GET,
                &format!("/locks/{}/status", encode(name)),
                None,
                Duration::ZERO,
            )
            .await?;
        if answer.status != StatusCode::OK {
            return Err(self.fail(&answer));
        }
        answer.parse::<LockStatus>("status")
    }

    /// Every live hold of `name`: a lock's holder, or a shared lock's or semaphore's holds.
    async fn holds(&self, name: &str) -> Result<Vec<Holder>> {
        let holds = self.lock_status(name).await?.holds();
        Ok(holds.into_iter().map(|h| h.holder).collect())
    }

    /// Releases `holder`'s lease on `name`, checked against its token.
    async fn release_lease(&self, name: &str, holder: &Holder) -> Result<Answer> {
        self.by_token("release", name, &holder.worker_id, holder.fencing_token)
            .await
    }

    /// `POST /locks/{name}/{action}` for the grant of `worker` with `token` (release, renew).
    async fn by_token(&self, action: &str, name: &str, worker: &str, token: u64) -> Result<Answer> {
        let body = ReleaseBody {
            holder: worker.to_string(),
            token,
            request_id: Some(request_id()),
        };
        self.post(action, name, &body).await
    }

    /// `POST /locks/{name}/{action}` with `body`.
    async fn post(&self, action: &str, name: &str, body: &impl Serialize) -> Result<Answer> {
        self.call(
            Method::POST,
            &format!("/locks/{}/{action}", encode(name)),
            Some(json(body)?),
            Duration::ZERO,
        )
        .await
    }

    /// `GET /cluster/status` of the cluster: the leader's view when a leader is known.
    pub async fn cluster_status(&self) -> Result<Value> {
        let answer = self
            .call(Method::GET, "/cluster/status", None, Duration::ZERO)
            .await?;
        if answer.status != StatusCode::OK {
            return Err(self.fail(&answer));
        }
        Ok(answer.body)
    }

    /// One acquire that an interrupted process withdraws: it must end up holding nothing or
    /// reporting its grant. Before anything is sent, an undo is registered that asks the
    /// coordinator to withdraw the acquire by its request id: a waiting acquire leaves the queue,
    /// a grant is released, and an acquire that has not arrived yet will never be executed.
    /// Nothing is sent once the interrupt is flagged.
    ///
    /// A node withdraws an acquire whose connection closed before its answer (a client that
    /// left). When that happens to a connection this client lost and then retried, the answer is
    /// `withdrawn`: the first acquire holds nothing, and a new one (a new request id) is sent.
    async fn claim(&self, req: &AcquireRequest, name: &str) -> Result<Attempt> {
        for _ in 0..WITHDRAWN_RETRIES {
            if let Some(attempt) = self.claim_once(req, name).await? {
                return Ok(attempt);
            }
            tracing::info!(
                "the server withdrew an acquire whose connection was lost; acquiring anew"
            );
        }
        Err(Error::Unavailable(format!(
            "{WITHDRAWN_RETRIES} acquires of {name} were withdrawn by the server after their \
             connections were lost; try again"
        )))
    }

    /// [`Self::claim`] under one request id; `None` if the server withdrew it.
    async fn claim_once(&self, req: &AcquireRequest, name: &str) -> Result<Option<Attempt>> {
        let id = request_id();
        let undo = {
            let (this, name, id) = (self.detached(), name.to_string(), id.clone());
            let holder = req.claimant.worker_id.clone();
            interrupt::on_interrupt(move || async move {
                let body = WithdrawBody {
                    holder,
                    acquire_request_id: id,
                    request_id: Some(request_id()),
                };
                let withdraw = this.post("withdraw", &name, &body);
                match tokio::time::timeout(UNDO_TIMEOUT, withdraw).await {
                    Ok(Ok(answer)) if answer.status == StatusCode::OK => {}
                    _ => tracing::warn!(
                        "an interrupted claim could not be withdrawn; its grant, if any, ends with its lease"
                    ),
                }
            })
        };
        if interrupt::is_interrupted() {
            return Err(Error::Unexpected("interrupted".into()));
        }
        let attempt = self.acquire_once(req, name, &id).await?;
        if matches!(&attempt, Some(Attempt::Granted(g)) if !g.adopted) {
            // A grant stays undoable until the command has reported it.
            undo.keep_until_reported();
        }
        Ok(attempt)
    }

    /// A client of the same servers, for an undo that outlives the borrow.
    fn detached(&self) -> ServerBackend {
        ServerBackend {
            servers: self.servers.clone(),
            auth: self.auth.clone(),
            client: self.client.clone(),
            preferred: AtomicUsize::new(self.preferred.load(Ordering::Relaxed)),
        }
    }

    /// One acquire under the request id `id`; `None` if the server withdrew it.
    async fn acquire_once(
        &self,
        req: &AcquireRequest,
        name: &str,
        id: &str,
    ) -> Result<Option<Attempt>> {
        let wait = req.wait.min(MAX_WAIT);
        let (family, limit, permits) = match req.kind {
            HoldKind::Semaphore { limit, permits } => ("semaphores", Some(limit), Some(permits)),
            HoldKind::Exclusive | HoldKind::Shared => ("locks", None, None),
        };
        let body = AcquireBody {
            holder: req.claimant.worker_id.clone(),
            node: Some(req.claimant.node_id.clone()),
            ttl_ms: lease::millis(req.ttl),
            wait_ms: lease::millis(wait),
            request_id: Some(id.to_string()),
            readopt: req.readopt,
            task_info: req.task_info.clone(),
            shared: req.kind == HoldKind::Shared,
            limit,
            permits,
            session: None,
        };
        let answer = self
            .call(
                Method::POST,
                &format!("/{family}/{}/acquire", encode(name)),
                Some(json(&body)?),
                wait,
            )
            .await?;
        match answer.status {
            StatusCode::OK => {
                let g: LeaseAnswer = answer.parse("acquire")?;
                Ok(Some(Attempt::Granted(Grant {
                    holder: g.holder,
                    adopted: g.adopted,
                    took_over: None,
                })))
            }
            StatusCode::CONFLICT => {
                let e = answer.error();
                match (e.code.as_str(), e.holder) {
                    (code::LOCK_HELD | code::WAIT_TIMED_OUT, Some(h)) => Ok(Some(Attempt::Held(h))),
                    (code::WITHDRAWN, _) => Ok(None),
                    // Held as another kind: a conflict, as a held lock is (exit 3).
                    (code::KIND_CONFLICT, _) => {
                        Err(Error::Conflict(format!("sentinel server: {}", e.message)))
                    }
                    // Every claim of a semaphore must give its limit: a usage error (exit 2).
                    (code::LIMIT_MISMATCH, _) => Err(Error::usage(format!(
                        "sentinel server: {}; give --limit as the semaphore's other claims do",
                        e.message
                    ))),
                    _ => Err(self.fail(&answer)),
                }
            }
            _ => Err(self.fail(&answer)),
        }
    }
}

impl ServerBackend {
    /// Why the renewal of `worker`'s grant `token` of `name` was refused.
    fn renew_refused(&self, name: &str, worker: &str, token: u64, answer: &Answer) -> Error {
        if answer.status == StatusCode::CONFLICT && answer.error().code == code::NOT_HOLDER {
            return match answer.error().holder {
                None => not_held(name),
                Some(h) => not_ours(name, &h, worker, token),
            };
        }
        self.fail(answer)
    }
}

fn not_held(name: &str) -> Error {
    Error::NotOwner(format!(
        "{name} is not held (released, or its lease ended on the server)"
    ))
}

/// A release or renewal of the grant `worker` held with `token`, refused: `h` holds the lock now
/// (another worker, or a later grant of the same worker).
fn not_ours(name: &str, h: &Holder, worker: &str, token: u64) -> Error {
    Error::NotOwner(format!(
        "{name} is held by {} on {} with fencing token {}, not by {worker} with fencing token \
         {token}: that grant ended",
        h.worker_id, h.node_id, h.fencing_token
    ))
}

fn name_of(lock: &LockId) -> Result<&str> {
    match lock {
        LockId::Name(n) => Ok(n),
        other => Err(foreign(other, "server")),
    }
}

impl LockBackend for ServerBackend {
    fn name(&self) -> &'static str {
        "server"
    }

    fn parse_lock(&self, raw: &str) -> Result<LockId> {
        validate_name(raw)?;
        Ok(LockId::Name(raw.to_string()))
    }

    fn waits_server_side(&self) -> bool {
        true
    }

    async fn arrive(&self, req: &ArriveRequest) -> Result<Arrived> {
        self.arrive_at(req).await
    }

    fn holds_groups(&self) -> bool {
        true
    }

    /// One acquire, retried on other servers under one request id. Leases end on the server at
    /// their TTL, so a stale lock is already free and `steal-stale` asks for nothing more;
    /// `--strategy force` releases the live holder (with its token, as `release --force` does)
    /// and acquires once more.
    async fn try_acquire(&self, req: &AcquireRequest) -> Result<Attempt> {
        let name = name_of(&req.lock)?;
        match self.claim(req, name).await? {
            Attempt::Held(h) if req.takeover == Takeover::Any => {
                let answer = self.release_lease(name, &h).await?;
                if answer.status != StatusCode::OK && answer.error().code != code::NOT_HOLDER {
                    return Err(self.fail(&answer));
                }
                Ok(match self.claim(req, name).await? {
                    Attempt::Granted(g) => Attempt::Granted(Grant {
                        took_over: Some(Box::new(h)),
                        ..g
                    }),
                    held => held,
                })
            }
            other => Ok(other),
        }
    }

    /// Releases the grant the request names by its token; without one (the CLI's `release`),
    /// reads the holder's token first, then releases with it. `--force` releases whoever holds
    /// the lock with that holder's own name and token: the coordinator has no override, and a
    /// holder that renewed or re-acquired meanwhile has a new token and keeps its lock.
    async fn release(&self, req: &ReleaseRequest) -> Result<Released> {
        let name = name_of(&req.lock)?;
        if let (Some(token), false) = (req.fencing_token, req.force) {
            let answer = self
                .by_token("release", name, &req.worker_id, token)
                .await?;
            return match answer.status {
                StatusCode::OK => Ok(Released {
                    was_held: true,
                    previous: Some(answer.parse::<LeaseAnswer>("release")?.holder),
                }),
                StatusCode::CONFLICT if answer.error().code == code::NOT_HOLDER => {
                    match answer.error().holder {
                        None => Ok(Released {
                            was_held: false,
                            previous: None,
                        }),
                        Some(h) => Err(not_ours(name, &h, &req.worker_id, token)),
                    }
                }
                _ => Err(self.fail(&answer)),
            };
        }
        let holds = self.holds(name).await?;
        let (mine, others): (Vec<_>, Vec<_>) = holds
            .into_iter()
            .partition(|h| h.worker_id == req.worker_id);
        // A worker gives back all its own holds (a semaphore's permits may be several); --force
        // gives back everyone's.
        let targets = match (req.force, mine.is_empty(), others.first()) {
            (true, _, _) => mine.into_iter().chain(others).collect(),
            (false, false, _) => mine,
            (false, true, None) => Vec::new(),
            (false, true, Some(h)) => {
                return Err(Error::NotOwner(format!(
                    "{name} is held by {} on {}, not by {}; use --force to release it anyway",
                    h.worker_id, h.node_id, req.worker_id
                )));
            }
        };
        let mut released = Released {
            was_held: false,
            previous: None,
        };
        for holder in targets {
            let answer = self.release_lease(name, &holder).await?;
            match answer.status {
                StatusCode::OK => {
                    let previous = answer.parse::<LeaseAnswer>("release")?.holder;
                    released.was_held = true;
                    released.previous.get_or_insert(previous);
                }
                StatusCode::CONFLICT if answer.error().code == code::NOT_HOLDER => {
                    match answer.error().holder {
                        // The lease ended between the read and the release.
                        None => {}
                        Some(h) if h.fencing_token != holder.fencing_token => {
                            return Err(Error::NotOwner(format!(
                                "{name} was taken over by {} (fencing token {}) while releasing",
                                h.worker_id, h.fencing_token
                            )));
                        }
                        // Another hold of the group answers: this one ended meanwhile.
                        Some(_) => {}
                    }
                }
                _ => return Err(self.fail(&answer)),
            }
        }
        Ok(released)
    }

    /// Renews the grant the request names by its token; without one (the CLI's `heartbeat`),
    /// the grant the worker holds now, read from the status first.
    ///
    /// A renewal keeps the lease's length: the coordinator's renew has none to give. A new
    /// length ([`RenewRequest::ttl`], `LockGuard::extend`) is set after the renewal by the
    /// holder re-adopting its own live lease with it, which keeps the token, and is checked to
    /// have re-adopted that very grant.
    async fn renew(&self, req: &RenewRequest) -> Result<Holder> {
        let name = name_of(&req.lock)?;
        let token = match req.fencing_token {
            Some(token) => token,
            None => {
                let holds = self.holds(name).await?;
                match holds.iter().find(|h| h.worker_id == req.worker_id) {
                    Some(h) => h.fencing_token,
                    None => match holds.first() {
                        Some(h) => {
                            return Err(Error::NotOwner(format!(
                                "{name} is held by {} on {}, not by {}",
                                h.worker_id, h.node_id, req.worker_id
                            )));
                        }
                        None => return Err(not_held(name)),
                    },
                }
            }
        };
        let body = RenewBody {
            holder: req.worker_id.clone(),
            token,
            request_id: Some(request_id()),
            ttl_ms: req.ttl.map(lease::millis),
            session: None,
        };
        let answer = self.post("renew", name, &body).await?;
        match answer.status {
            StatusCode::OK => Ok(answer.parse::<LeaseAnswer>("renew")?.holder),
            _ => Err(self.renew_refused(name, &req.worker_id, token, &answer)),
        }
    }

    async fn status(&self, lock: &LockId) -> Result<Status> {
        let name = name_of(lock)?;
        let s = self.lock_status(name).await?;
        Ok(Status::Holds(Holds {
            name: name.to_string(),
            kind: match s.kind.as_deref() {
                Some("shared") => "shared",
                Some("semaphore") => "semaphore",
                _ => "exclusive",
            },
            limit: s.limit,
            holders: s.holds(),
            queue: s.queue,
            waiting: s.waiting,
        }))
    }

    async fn list(&self, _req: &ListRequest) -> Result<Vec<(String, Holder)>> {
        let mut all = Vec::new();
        let mut after: Option<String> = None;
        for _ in 0..MAX_PAGES {
            let path = match &after {
                Some(a) => format!("/locks?limit={PAGE}&after={}", encode(a)),
                None => format!("/locks?limit={PAGE}"),
            };
            let answer = self.call(Method::GET, &path, None, Duration::ZERO).await?;
            if answer.status != StatusCode::OK {
                return Err(self.fail(&answer));
            }
            let page: LockPage = answer.parse("list")?;
            // One row per hold: a semaphore's or shared lock's holds each have their lease.
            for e in page.locks {
                all.extend(e.holds().into_iter().map(|h| (e.lock.clone(), h.holder)));
            }
            match page.next {
                Some(n) if Some(&n) != after.as_ref() => after = Some(n),
                _ => return Ok(all),
            }
        }
        Err(Error::Unexpected(format!(
            "the sentinel server's lock list did not end after {MAX_PAGES} pages"
        )))
    }

    /// The coordinator ends a lease itself when its TTL runs out and gives the lock to the next
    /// waiter, so no held lock is ever stale: the janitor finds each lock live (kept) or free.
    async fn release_stale(&self, req: &ReleaseStaleRequest) -> Result<StaleRelease> {
        let name = name_of(&req.lock)?;
        Ok(match self.holds(name).await?.into_iter().next() {
            Some(h) => StaleRelease::Kept(h),
            None => StaleRelease::Free,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn server_urls_are_checked() {
        assert_eq!(
            server_urls("http://127.0.0.1:7464/, http://10.0.0.2:7420").unwrap(),
            vec!["http://127.0.0.1:7464", "http://10.0.0.2:7420"]
        );
        assert_eq!(
            server_urls("https://127.0.0.1:7464,https://node2.example:7464/").unwrap(),
            vec!["https://127.0.0.1:7464", "https://node2.example:7464"]
        );
        assert_eq!(
            server_urls("127.0.0.1:7464,localhost:7420").unwrap(),
            vec!["http://127.0.0.1:7464", "http://localhost:7420"]
        );
        for bad in [
            "",
            ",",
            "127.0.0.1",
            "http://h",
            "http://h:0",
            "http://h:1/x",
            "ftp://h:1",
        ] {
            assert!(server_urls(bad).is_err(), "{bad}");
        }
        let e = server_urls("http://u:hunter2@h:1").unwrap_err().to_string();
        assert!(!e.contains("hunter2"), "{e}");
    }

    #[test]
    fn names_are_one_path_segment() {
        assert_eq!(encode("build-42"), "build-42");
        assert_eq!(encode("a/b c?✓"), "a%2Fb%20c%3F%E2%9C%93");
    }

    proptest! {
        #[test]
        fn server_urls_never_panic(s in ".*") {
            let _ = server_urls(&s);
        }
    }
}
