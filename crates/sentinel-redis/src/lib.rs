//! Redis backend: named locks, shared holds and semaphores in one Redis server (a single
//! primary), for teams that already run Redis and would rather lock there than run another
//! service.
//!
//! This module owns everything sentinel does with Redis: the URL (checked once, never echoed, its
//! password never printed), the connection (one `redis` connection manager, connected on first
//! use, reconnecting after a restart), the key layout, and the reads; [`scripts`] holds the four
//! Lua scripts that make every change one atomic step on the server:
//!
//! - `sentinel:lock:NAME` holds an exclusive lock's lease as JSON, written with `SET … NX PX
//!   ttl`: Redis expires it by itself when the lease runs out.
//! - `sentinel:holds:NAME` is a hash of the shared holds or semaphore permits of a name held by
//!   several (each a lease of its own, dropped by the scripts once it has run out) and a
//!   semaphore's limit; `sentinel:intent:NAME` the reservation of a waiting claim that keeps it
//!   from being starved ([`scripts`] says how). A name is held in one shape or the other, never
//!   both.
//! - `sentinel:token:NAME` is the fencing counter of every kind of hold, `INCR`ed by the same
//!   script that grants, so tokens strictly increase per name. It never expires (a counter that
//!   expired would restart).
//! - `sentinel:released:NONCE` is a release's receipt, kept for [`RECEIPT_TTL`]: a release
//!   retried after its answer was lost finds it and reports what it freed.
//!
//! A Redis that evicts keys under memory pressure could drop a live lease or a counter and grant
//! a lock twice, so the first command of a backend reads `maxmemory-policy` (`CONFIG GET`, else
//! `INFO memory`) and refuses anything but `noeviction`. Where both are refused (managed Redis),
//! the counter's high-water mark guards the tokens instead: a grant never issues a token at or
//! below the lease it replaces or a live hold's, and renewals and releases lift a counter that
//! fell below the token they carry back up.
//!
//! `rediss://` URLs speak TLS through rustls with sentinel's crypto provider (ring), trusting the
//! system's roots or the `--ca-cert` file, and presenting a client certificate if given one.
//!
//! Lease semantics are Redis's, not the lock table's: a lease that runs out is *gone*, not stale.
//! So a plain claim takes an expired lock, `steal-stale` acts like a plain claim, the janitor finds
//! nothing stale to release, and `status` never shows a stale holder. Time is Redis's own clock
//! (`TIME` inside the scripts), never the client's.
//!
//! Each operation is retried through connection errors within a deadline, then reported as
//! unavailable (exit 8). A grant whose answer was lost is not granted twice: every attempt carries
//! a nonce stored in the lease or hold, and a retried attempt that finds its own nonce takes the
//! grant it already made. A release whose answer was lost is reported exactly the same way: its
//! retry carries the same nonce and finds the receipt the first run left.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{ErrorKind, RedisError};
use serde::Deserialize;
use tokio::sync::OnceCell;
use tokio::time::Instant;

use sentinel_core::backend::{Hold, Holds, LockBackend, Status, Waiter, foreign};
use sentinel_core::diagnose::Check;
use sentinel_core::error::{Error, Result};
use sentinel_core::interrupt;
use sentinel_core::lease;
use sentinel_core::lock::{
    AcquireRequest, Attempt, Grant, HoldKind, Holder, ListRequest, LockId, ReleaseRequest,
    ReleaseStaleRequest, Released, RenewRequest, StaleRelease, Takeover, TaskInfo, validate_label,
    validate_name,
};
use sentinel_core::table;
use sentinel_core::tls::ClientTls;

mod scripts;

use scripts::{ACQUIRE, RELEASE, RENEW, WITHDRAW};

/// How long one operation may take, retries included, before the server counts as unreachable.
const OP_DEADLINE: Duration = Duration::from_secs(10);
/// How long one connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long one command may wait for its answer.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(5);
/// Attempts of one operation through transient failures.
const ATTEMPTS: u32 = 4;
/// Keys per `SCAN` step.
const SCAN_COUNT: usize = 200;
/// The key prefix the CLI uses.
pub const DEFAULT_PREFIX: &str = "sentinel:";
/// How long a release's receipt stays: well past [`OP_DEADLINE`], within which its retries run,
/// and short enough that receipts never pile up.
const RECEIPT_TTL: Duration = Duration::from_secs(60);
/// The only `maxmemory-policy` that never evicts a lease or a fencing counter: the `volatile-*`
/// policies evict keys with a TTL, which every lease has.
const SAFE_POLICY: &str = "noeviction";

/// A server's `maxmemory-policy` if it reports one, or its refusals of `CONFIG GET` and `INFO`.
type Policy = std::result::Result<Option<String>, (RedisError, RedisError)>;

/// A lease as the scripts store it: an exclusive lock's, or one hold of a name held by several.
#[derive(Debug, Deserialize)]
struct Lease {
    worker_id: String,
    node_id: String,
    fencing_token: u64,
    claimed_ms: u64,
    heartbeat_ms: u64,
    ttl_ms: u64,
    #[serde(default)]
    task_info: TaskInfo,
    /// The semaphore permits of a hold (1 for a lock).
    #[serde(default = "one")]
    permits: u32,
    /// A shared hold.
    #[serde(default)]
    shared: bool,
    /// Set on the record of a reservation a claim was refused for: the kind its waiting claim
    /// asks for.
    #[serde(default)]
    reserved: Option<String>,
}

fn one() -> u32 {
    1
}

impl Lease {
    fn holder(&self) -> Holder {
        Holder {
            worker_id: self.worker_id.clone(),
            node_id: self.node_id.clone(),
            fencing_token: self.fencing_token,
            claimed_at: lease::from_unix_ms(self.claimed_ms),
            heartbeat_last: lease::from_unix_ms(self.heartbeat_ms),
            expires_at: lease::from_unix_ms(self.heartbeat_ms.saturating_add(self.ttl_ms)),
            // Redis deletes a lease the moment it runs out: whatever it still has is live.
            stale: false,
            task_info: self.task_info.clone(),
            liveness: self
                .reserved
                .as_deref()
                .map(|kind| reservation(kind, self.permits)),
        }
    }

    fn hold(&self) -> Hold {
        Hold {
            holder: self.holder(),
            permits: self.permits,
            shared: self.shared,
        }
    }

    /// Whether the lease lasts past `now_ms` (the scripts drop holds that do not).
    fn live(&self, now_ms: u64) -> bool {
        self.heartbeat_ms.saturating_add(self.ttl_ms) > now_ms
    }
}

/// Why a claim that would fit was refused: a waiting claim of `kind` has reserved the name.
fn reservation(kind: &str, permits: u32) -> String {
    let what = match kind {
        "semaphore" => format!("a claim of {permits} permits"),
        "shared" => "a shared claim".to_string(),
        _ => "an exclusive claim".to_string(),
    };
    format!("reserved for {what} that waits for it; later claims wait behind it")
}

/// A waiting claim's reservation, as the scripts store it.
#[derive(Debug, Deserialize)]
struct Intent {
    worker_id: String,
    node_id: String,
    kind: String,
    permits: u32,
    since_ms: u64,
}

impl Intent {
    fn waiter(&self) -> Waiter {
        Waiter {
            worker_id: self.worker_id.clone(),
            node_id: self.node_id.clone(),
            since: lease::from_unix_ms(self.since_ms),
            permits: self.permits,
            shared: self.kind == "shared",
        }
    }
}

/// Checks a Redis URL and builds the client, without connecting: TLS for `rediss://`, with the
/// certificates `tls` names (read and checked here, so that a bad file is a usage error now rather
/// than a failed handshake later). A URL with credentials is never repeated in the message.
fn client(raw: &str, tls: &ClientTls) -> Result<redis::Client> {
    let raw = raw.trim();
    let bad = |why: &str| {
        let shown = if raw.contains('@') {
            "(not shown: it contains credentials)".to_string()
        } else {
            format!("{raw:?}")
        };
        Error::usage(format!(
            "invalid --redis-url {shown}: {why}; expected redis://[:PASSWORD@]HOST[:PORT][/DB], \
             rediss://… for TLS, or unix:///PATH/TO/SOCKET"
        ))
    };
    let scheme = raw.split_once("://").map(|(s, _)| s.to_ascii_lowercase());
    let secure = match scheme.as_deref() {
        Some("redis" | "valkey" | "unix" | "redis+unix" | "valkey+unix") => false,
        Some("rediss" | "valkeys") => true,
        _ => return Err(bad("the scheme must be redis://, rediss:// or unix://")),
    };
    if !secure {
        if *tls != ClientTls::default() {
            // Certificates given for a plain connection mean TLS was expected: sending the
            // password in the clear instead would be the worst way to find out.
            return Err(bad(
                "--ca-cert, --client-cert and --client-key need TLS: use rediss://",
            ));
        }
        return redis::Client::open(raw).map_err(|_| bad("not a valid Redis URL"));
    }
    // `#insecure` is the client library's switch for skipping certificate checks.
    if raw.contains('#') {
        return Err(bad(
            "a URL fragment (such as #insecure) is not accepted: certificates are always checked",
        ));
    }
    // Checks every file (and that the system has roots when no CA is given).
    tls.config()?;
    let read = |path: &std::path::Path| {
        std::fs::read(path)
            .map_err(|e| Error::usage(format!("cannot read {}: {e}", path.display())))
    };
    let client_tls = match (&tls.client_cert, &tls.client_key) {
        (Some(cert), Some(key)) => Some(redis::ClientTlsConfig {
            client_cert: read(cert)?,
            client_key: read(key)?,
        }),
        _ => None,
    };
    let certificates = redis::TlsCertificates {
        client_tls,
        root_cert: tls.ca_cert.as_deref().map(read).transpose()?,
    };
    // The client library builds its TLS configuration with the process's default provider:
    // make that ours (ring) unless the process already chose one.
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        let _ = rustls::crypto::CryptoProvider::install_default(
            sentinel_core::tls::provider().as_ref().clone(),
        );
    }
    redis::Client::build_with_tls(raw, certificates).map_err(|_| bad("not a valid Redis URL"))
}

/// The Redis backend. Cheap to clone: clones share the connection.
#[derive(Clone)]
pub struct RedisBackend {
    inner: Arc<Inner>,
}

struct Inner {
    client: redis::Client,
    conn: OnceCell<ConnectionManager>,
    /// Set once the server's eviction policy was found safe (or could not be read): checked once
    /// per backend, not per command.
    evictions_checked: OnceCell<()>,
    prefix: String,
    /// `redis at HOST:PORT`, for messages: never the URL, which may carry a password.
    target: String,
    /// Redacted from every message that passes on the client's own words.
    password: Option<String>,
}

impl std::fmt::Debug for RedisBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBackend")
            .field("target", &self.inner.target)
            .field("prefix", &self.inner.prefix)
            .finish()
    }
}

impl RedisBackend {
    /// The backend for `url` with the keys under [`DEFAULT_PREFIX`]. Connects on first use.
    pub fn new(url: &str) -> Result<RedisBackend> {
        Self::with_prefix(url, DEFAULT_PREFIX)
    }

    /// The backend for `url` with every key under `prefix` (tests, or several independent lock
    /// spaces in one server). The prefix is 1 to 64 characters without glob characters, which
    /// would make the listing's `SCAN MATCH` pattern match other keys.
    pub fn with_prefix(url: &str, prefix: &str) -> Result<RedisBackend> {
        Self::with_options(url, prefix, &ClientTls::default())
    }

    /// The backend for `url` with every key under `prefix`, and for a `rediss://` URL the
    /// certificate authorities to trust (the system's without one) and the client certificate to
    /// present. Certificates with a plain `redis://` URL are a usage error.
    pub fn with_options(url: &str, prefix: &str, tls: &ClientTls) -> Result<RedisBackend> {
        if prefix.is_empty()
            || prefix.chars().count() > 64
            || prefix
                .chars()
                .any(|c| c.is_control() || c.is_whitespace() || "*?[]\\".contains(c))
        {
            return Err(Error::usage(format!(
                "invalid Redis key prefix {prefix:?}: use 1 to 64 visible characters other than * ? [ ] \\"
            )));
        }
        let client = client(url, tls)?;
        let info = client.get_connection_info();
        let target = format!("redis at {}", info.addr());
        let password = info
            .redis_settings()
            .password()
            .filter(|p| !p.is_empty())
            .map(str::to_string);
        Ok(RedisBackend {
            inner: Arc::new(Inner {
                client,
                conn: OnceCell::new(),
                evictions_checked: OnceCell::new(),
                prefix: prefix.to_string(),
                target,
                password,
            }),
        })
    }

    fn lock_key(&self, name: &str) -> String {
        format!("{}lock:{name}", self.inner.prefix)
    }

    fn token_key(&self, name: &str) -> String {
        format!("{}token:{name}", self.inner.prefix)
    }

    fn holds_key(&self, name: &str) -> String {
        format!("{}holds:{name}", self.inner.prefix)
    }

    fn intent_key(&self, name: &str) -> String {
        format!("{}intent:{name}", self.inner.prefix)
    }

    fn receipt_key(&self, nonce: &str) -> String {
        format!("{}released:{nonce}", self.inner.prefix)
    }

    async fn connection(&self) -> std::result::Result<ConnectionManager, RedisError> {
        let conn = self
            .inner
            .conn
            .get_or_try_init(|| {
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(CONNECT_TIMEOUT))
                    .set_response_timeout(Some(RESPONSE_TIMEOUT))
                    .set_number_of_retries(1)
                    .set_min_delay(Duration::from_millis(50))
                    .set_max_delay(Duration::from_millis(500));
                ConnectionManager::new_with_config(self.inner.client.clone(), config)
            })
            .await?;
        Ok(conn.clone())
    }

    /// Runs `op` on a server whose eviction policy was checked ([`RedisBackend::check_evictions`]).
    async fn call<T, F, Fut>(&self, what: &str, op: F) -> Result<T>
    where
        F: Fn(ConnectionManager) -> Fut,
        Fut: Future<Output = std::result::Result<T, RedisError>>,
    {
        self.inner
            .evictions_checked
            .get_or_try_init(|| self.check_evictions())
            .await?;
        self.call_unchecked(what, op).await
    }

    /// Refuses a server that may evict sentinel's keys: only `noeviction` keeps every lease and
    /// counter. The policy comes from [`RedisBackend::eviction_policy`]; where it cannot be known,
    /// the counters' high-water marks are the remaining guard.
    async fn check_evictions(&self) -> Result<()> {
        match self.eviction_policy().await? {
            Ok(Some(p)) if p.eq_ignore_ascii_case(SAFE_POLICY) => Ok(()),
            Ok(Some(p)) => Err(self.unsafe_policy(&p)),
            Ok(None) => {
                tracing::debug!(
                    "{} did not report its maxmemory-policy; relying on the fencing counters' \
                     high-water marks",
                    self.inner.target
                );
                Ok(())
            }
            Err((config, info)) => {
                tracing::debug!(
                    config = %self.redact(&config.to_string()),
                    info = %self.redact(&info.to_string()),
                    "{} refused CONFIG GET and INFO, so its maxmemory-policy is unknown; relying \
                     on the fencing counters' high-water marks",
                    self.inner.target
                );
                Ok(())
            }
        }
    }

    /// The server's `maxmemory-policy`, from `CONFIG GET`, or `INFO memory` where `CONFIG` is
    /// renamed or not permitted (managed Redis): `Ok(None)` when neither reports one, `Err` with
    /// both refusals when both are refused.
    async fn eviction_policy(&self) -> Result<Policy> {
        self.call_unchecked("a check of maxmemory-policy", |mut conn| async move {
            let config: std::result::Result<Vec<String>, RedisError> = redis::cmd("CONFIG")
                .arg("GET")
                .arg("maxmemory-policy")
                .query_async(&mut conn)
                .await;
            let config_refused = match config {
                Ok(pair) => return Ok(Ok(pair.get(1).cloned())),
                Err(e) if transient(&e) => return Err(e),
                Err(e) => e,
            };
            match redis::cmd("INFO")
                .arg("memory")
                .query_async::<String>(&mut conn)
                .await
            {
                Ok(info) => Ok(Ok(info.lines().find_map(|l| {
                    l.strip_prefix("maxmemory_policy:")
                        .map(|p| p.trim().to_string())
                }))),
                Err(e) if transient(&e) => Err(e),
                Err(info_refused) => Ok(Err((config_refused, info_refused))),
            }
        })
        .await
    }

    /// The refusal of a server whose `maxmemory-policy` `policy` may evict sentinel's keys.
    fn unsafe_policy(&self, policy: &str) -> Error {
        Error::Unavailable(format!(
            "{} may evict keys under memory pressure (maxmemory-policy {policy}): it could drop a \
             held lock or its fencing counter and grant the lock twice; set \
             maxmemory-policy {SAFE_POLICY} (see docs/redis.md)",
            self.inner.target
        ))
    }

    /// `sentinel doctor`'s checks: the server answers (with the URL's credentials) and its
    /// eviction policy is the one the backend accepts. Writes nothing.
    pub async fn diagnose(&self) -> Vec<Check> {
        let policy = match self.eviction_policy().await {
            Ok(policy) => policy,
            Err(e) => return vec![Check::fail("connection", e)],
        };
        let target = &self.inner.target;
        let connection = Check::ok("connection", format!("{target} answers"));
        let unknown = "relying on the fencing counters' high-water marks (see docs/redis.md)";
        let policy = match policy {
            Ok(Some(p)) if p.eq_ignore_ascii_case(SAFE_POLICY) => Check::ok("maxmemory-policy", p),
            Ok(Some(p)) => Check::fail("maxmemory-policy", self.unsafe_policy(&p)),
            Ok(None) => Check::warn(
                "maxmemory-policy",
                format!("{target} did not report its maxmemory-policy; {unknown}"),
            ),
            Err(_) => Check::warn(
                "maxmemory-policy",
                format!("{target} refused CONFIG GET and INFO, so it is unknown; {unknown}"),
            ),
        };
        vec![connection, policy]
    }

    /// Runs `op` on the connection, retrying transient failures (a dropped connection, a server
    /// restarting or loading its data) with short jittered pauses within [`OP_DEADLINE`].
    async fn call_unchecked<T, F, Fut>(&self, what: &str, op: F) -> Result<T>
    where
        F: Fn(ConnectionManager) -> Fut,
        Fut: Future<Output = std::result::Result<T, RedisError>>,
    {
        let deadline = lease::instant_after(Instant::now(), OP_DEADLINE);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let outcome = tokio::time::timeout_at(deadline, async {
                let conn = self.connection().await?;
                op(conn).await
            })
            .await;
            let err = match outcome {
                Ok(Ok(v)) => return Ok(v),
                Ok(Err(e)) => e,
                Err(_) => {
                    return Err(Error::Unavailable(format!(
                        "{} did not answer {what} within {}",
                        self.inner.target,
                        sentinel_core::duration::display(OP_DEADLINE)
                    )));
                }
            };
            if !transient(&err) {
                return Err(self.error(what, &err));
            }
            let pause = lease::jitter(Duration::from_millis(100) * 2u32.pow(attempt), 0.25);
            if attempt >= ATTEMPTS || Instant::now() + pause >= deadline {
                return Err(Error::Unavailable(format!(
                    "{} is unavailable ({what}, {attempt} attempts): {}",
                    self.inner.target,
                    self.redact(&err.to_string())
                )));
            }
            tracing::info!(error = %self.redact(&err.to_string()), "redis {what} failed; retrying");
            tokio::time::sleep(pause).await;
        }
    }

    fn error(&self, what: &str, e: &RedisError) -> Error {
        let text = self.redact(&e.to_string());
        if let Some(tls) = tls_failure(e) {
            return Error::Auth(format!(
                "{} failed the TLS handshake ({what}): {tls}; check that --ca-cert (or \
                 SENTINEL_CA_CERT) holds the authority that signed the server's certificate, and \
                 the client certificate if the server requires one",
                self.inner.target
            ));
        }
        if e.kind() == ErrorKind::AuthenticationFailed
            || matches!(e.code(), Some("WRONGPASS" | "NOAUTH" | "NOPERM"))
        {
            return Error::Auth(format!(
                "{} refused the credentials or permissions ({what}): {text}; check the password \
                 and user in --redis-url",
                self.inner.target
            ));
        }
        if e.code() == Some("OOM") {
            // `noeviction` at `maxmemory`: Redis refuses writes rather than drop keys.
            return Error::Unavailable(format!(
                "{} is out of memory and refuses writes ({what}): {text}; raise its maxmemory or \
                 free memory (nothing held was lost)",
                self.inner.target
            ));
        }
        Error::Unexpected(format!("{} failed {what}: {text}", self.inner.target))
    }

    /// The client's own message with the password blanked out, should it ever quote it.
    fn redact(&self, text: &str) -> String {
        match &self.inner.password {
            Some(p) => text.replace(p.as_str(), "***"),
            None => text.to_string(),
        }
    }

    fn lease(&self, raw: &str) -> Result<Lease> {
        serde_json::from_str(raw).map_err(|e| self.foreign_value(&e))
    }

    fn foreign_value(&self, e: &serde_json::Error) -> Error {
        Error::Unexpected(format!(
            "{} holds a lock value sentinel did not write ({e}); is another program using keys \
             under {:?}?",
            self.inner.target, self.inner.prefix
        ))
    }

    /// A renewal refused because `raw`, another grant, holds the lock now.
    fn lost(&self, name: &str, raw: &str, ours: Option<u64>) -> Result<Error> {
        let h = self.lease(raw)?.holder();
        // A later holder with a token not above ours: Redis lost the counter (and our lease) to
        // eviction or a restart without persistence. The script raised the counter back above
        // our token, so later grants fence us off again.
        let regressed = match ours {
            Some(ours) if h.fencing_token <= ours => format!(
                "; Redis lost this lock's fencing counter (eviction, or a restart without \
                 persistence), so it issued token {} again after {ours}: the counter is raised \
                 back",
                h.fencing_token
            ),
            _ => String::new(),
        };
        Ok(Error::NotOwner(format!(
            "lock {name:?} was lost: it is now held by worker {:?} on node {:?} (fencing token \
             {}){regressed}",
            h.worker_id, h.node_id, h.fencing_token
        )))
    }

    /// Ends the lease or hold the attempt with `nonce` granted on `name`, if it still stands: one
    /// try, briefly, since it runs while the process is being stopped.
    async fn withdraw(&self, name: &str, nonce: &str) {
        let mut inv = WITHDRAW.prepare_invoke();
        inv.key(self.lock_key(name))
            .key(self.holds_key(name))
            .arg(nonce);
        let attempt = async {
            let mut conn = self.connection().await?;
            inv.invoke_async::<i64>(&mut conn).await
        };
        if let Ok(Err(e)) = tokio::time::timeout(CONNECT_TIMEOUT, attempt).await {
            tracing::warn!(error = %self.redact(&e.to_string()), "could not withdraw an interrupted grant; it expires with its lease");
        }
    }
}

/// The TLS error behind a failed connection, if that is what it was: the server's certificate
/// is not trusted, or it refused ours. Another attempt would fail the same way.
fn tls_failure(e: &RedisError) -> Option<String> {
    type Shared = Arc<dyn std::error::Error + Send + Sync>;
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(mut err) = source {
        // The client library passes its I/O errors on inside an `Arc`.
        if let Some(shared) = err.downcast_ref::<Shared>() {
            err = shared.as_ref();
        }
        if let Some(t) = err.downcast_ref::<rustls::Error>() {
            return Some(t.to_string());
        }
        // An I/O error's own `source` skips the error it wraps.
        if let Some(t) = err
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        {
            return Some(t.to_string());
        }
        source = err.source();
    }
    None
}

/// Failures worth another attempt: the connection, not the request.
fn transient(e: &RedisError) -> bool {
    tls_failure(e).is_none()
        && (e.is_io_error()
            || e.is_timeout()
            || e.is_connection_dropped()
            || e.is_connection_refusal()
            || matches!(
                e.kind(),
                ErrorKind::Server(
                    redis::ServerErrorKind::BusyLoading
                        | redis::ServerErrorKind::TryAgain
                        | redis::ServerErrorKind::MasterDown
                        | redis::ServerErrorKind::ReadOnly
                )
            ))
}

fn name_of(lock: &LockId) -> Result<&str> {
    match lock {
        LockId::Name(n) => Ok(n),
        other => Err(foreign(other, "redis")),
    }
}

/// A fencing token as a script argument: '' for "whatever grant the worker holds".
fn token_arg(token: Option<u64>) -> String {
    token.map(|t| t.to_string()).unwrap_or_default()
}

/// Largest limit of a semaphore, as on the coordinator: every claim reads all of a name's holds.
const MAX_LIMIT: u32 = 10_000;

/// A claim's kind, limit ('' for a lock) and permits as script arguments, checked as the CLI
/// checks them (a library caller has no CLI in front of it).
fn hold_args(kind: HoldKind) -> Result<(&'static str, String, u32)> {
    match kind {
        HoldKind::Exclusive | HoldKind::Shared => Ok((kind.name(), String::new(), 1)),
        HoldKind::Semaphore { limit, permits } => {
            if !(1..=MAX_LIMIT).contains(&limit) || !(1..=limit).contains(&permits) {
                return Err(Error::usage(format!(
                    "a semaphore's limit is 1 to {MAX_LIMIT} and its permits 1 to its limit: \
                     not {permits} of {limit}"
                )));
            }
            Ok((kind.name(), limit.to_string(), permits))
        }
    }
}

/// A claim refused because the name is held as another kind (`held`, and `limit` for a
/// semaphore): a conflict, as a held lock is, but one that waiting does not end.
fn other_kind(name: &str, held: &str, limit: &str) -> Error {
    Error::Conflict(match held {
        "semaphore" => format!("{name:?} is held as a semaphore of limit {limit}, not as a lock"),
        kind => format!("{name:?} is held as a lock ({kind}), not as a semaphore"),
    })
}

impl RedisBackend {
    /// Runs the acquire script for `req` under `nonce`: {answer, lease, now, previous}.
    async fn acquire_script(
        &self,
        req: &AcquireRequest,
        name: &str,
        nonce: &str,
    ) -> Result<(String, String, i64, String)> {
        let (kind, limit, permits) = hold_args(req.kind)?;
        let ttl_ms = lease::millis(req.ttl);
        if ttl_ms == 0 {
            return Err(Error::usage("the lock timeout must be at least 1 ms"));
        }
        let task_info = serde_json::to_string(&req.task_info)
            .map_err(|e| Error::Unexpected(format!("cannot encode the task info: {e}")))?;
        let takeover = match req.takeover {
            Takeover::None => "none",
            Takeover::Stale => "stale",
            Takeover::Any => "any",
        };
        let mut inv = ACQUIRE.prepare_invoke();
        inv.key(self.lock_key(name))
            .key(self.token_key(name))
            .key(self.holds_key(name))
            .key(self.intent_key(name))
            .arg(&req.claimant.worker_id)
            .arg(&req.claimant.node_id)
            .arg(ttl_ms)
            .arg(takeover)
            .arg(if req.readopt { "1" } else { "0" })
            .arg(&task_info)
            .arg(nonce)
            .arg(kind)
            .arg(limit)
            .arg(permits)
            // A claim that comes back keeps the name meanwhile; its last attempt keeps nothing.
            .arg(table::reservation_ms(lease::millis(req.wait)).unwrap_or(0));
        self.call("a claim", |mut conn| {
            let inv = &inv;
            async move { inv.invoke_async(&mut conn).await }
        })
        .await
    }

    /// The status of a name from one round trip: its lock, holds, reservation and the clock.
    async fn read_status(&self, name: &str) -> Result<Status> {
        let mut pipe = redis::pipe();
        pipe.cmd("GET")
            .arg(self.lock_key(name))
            .cmd("HGETALL")
            .arg(self.holds_key(name))
            .cmd("GET")
            .arg(self.intent_key(name))
            .cmd("TIME");
        type Read = (
            Option<String>,
            BTreeMap<String, String>,
            Option<String>,
            (u64, u64),
        );
        let (lock, fields, intent, (secs, micros)): Read = self
            .call("a status read", |mut conn| {
                let pipe = &pipe;
                async move { pipe.query_async(&mut conn).await }
            })
            .await?;
        let now = secs.saturating_mul(1000).saturating_add(micros / 1000);
        let queue: Vec<Waiter> = match intent {
            Some(raw) => vec![self.intent(&raw)?.waiter()],
            None => Vec::new(),
        };
        let (kind, limit, holders) = match lock {
            Some(raw) if queue.is_empty() => {
                return Ok(Status::Named {
                    name: name.to_string(),
                    holder: Some(self.lease(&raw)?.holder()),
                });
            }
            Some(raw) => (
                "exclusive",
                None,
                vec![Hold::exclusive(self.lease(&raw)?.holder())],
            ),
            None => self.group(&fields, now)?,
        };
        if holders.is_empty() && queue.is_empty() {
            return Ok(Status::Named {
                name: name.to_string(),
                holder: None,
            });
        }
        Ok(Status::Holds(Holds {
            name: name.to_string(),
            kind,
            limit,
            holders,
            waiting: queue.len(),
            queue,
        }))
    }

    /// A name's hash of holds as read at `now_ms`: its kind, its limit, and its live holds,
    /// oldest grant first (the scripts drop the others when they next write).
    fn group(
        &self,
        fields: &BTreeMap<String, String>,
        now_ms: u64,
    ) -> Result<(&'static str, Option<u32>, Vec<Hold>)> {
        let mut limit = None;
        let mut holds = Vec::new();
        for (field, value) in fields {
            if field == "limit" {
                limit = value.parse().ok();
                continue;
            }
            let lease = self.lease(value)?;
            if lease.live(now_ms) {
                holds.push(lease.hold());
            }
        }
        holds.sort_by_key(|h| h.holder.fencing_token);
        Ok(match (holds.is_empty(), limit) {
            (true, _) => ("exclusive", None, holds),
            (false, Some(limit)) => ("semaphore", Some(limit), holds),
            (false, None) => ("shared", None, holds),
        })
    }

    fn intent(&self, raw: &str) -> Result<Intent> {
        serde_json::from_str(raw).map_err(|e| self.foreign_value(&e))
    }

    /// Every key matching `pattern`, by `SCAN` (never `KEYS`, which blocks the server), sorted.
    async fn scan(&self, pattern: &str) -> Result<Vec<String>> {
        let mut keys: Vec<String> = Vec::new();
        let mut cursor: u64 = 0;
        loop {
            let (next, batch): (u64, Vec<String>) = self
                .call("a listing", |mut conn| async move {
                    redis::cmd("SCAN")
                        .arg(cursor)
                        .arg("MATCH")
                        .arg(pattern)
                        .arg("COUNT")
                        .arg(SCAN_COUNT)
                        .query_async(&mut conn)
                        .await
                })
                .await?;
            keys.extend(batch);
            if next == 0 {
                break;
            }
            cursor = next;
        }
        // SCAN may return a key more than once.
        keys.sort();
        keys.dedup();
        Ok(keys)
    }

    /// Every live hold of the names held by several, one row per hold.
    async fn list_holds(&self) -> Result<Vec<(String, Holder)>> {
        let prefix = self.holds_key("");
        let keys = self.scan(&format!("{prefix}*")).await?;
        let mut held = Vec::new();
        for chunk in keys.chunks(SCAN_COUNT) {
            let mut pipe = redis::pipe();
            for key in chunk {
                pipe.cmd("HGETALL").arg(key);
            }
            pipe.cmd("TIME");
            let (groups, (secs, micros)): (Vec<BTreeMap<String, String>>, (u64, u64)) = self
                .call("a listing", |mut conn| {
                    let pipe = &pipe;
                    async move {
                        let mut values: Vec<redis::Value> = pipe.query_async(&mut conn).await?;
                        let time = values.pop().unwrap_or(redis::Value::Nil);
                        Ok((
                            redis::from_redis_value(redis::Value::Array(values))?,
                            redis::from_redis_value(time)?,
                        ))
                    }
                })
                .await?;
            let now = secs.saturating_mul(1000).saturating_add(micros / 1000);
            for (key, fields) in chunk.iter().zip(groups) {
                let name = key.strip_prefix(&prefix).unwrap_or(key);
                let (_, _, holds) = self.group(&fields, now)?;
                held.extend(holds.into_iter().map(|h| (name.to_string(), h.holder)));
            }
        }
        Ok(held)
    }
}

impl LockBackend for RedisBackend {
    fn name(&self) -> &'static str {
        "redis"
    }

    fn parse_lock(&self, raw: &str) -> Result<LockId> {
        validate_name(raw)?;
        Ok(LockId::Name(raw.to_string()))
    }

    fn holds_groups(&self) -> bool {
        true
    }

    /// One attempt, as one script: grant (`SET NX PX` and `INCR` of the counter, or a hold in the
    /// name's hash), re-adopt, force a take-over, or report the holder.
    ///
    /// An interrupted claim must hold nothing or report its grant: the attempt registers an undo
    /// that ends the lease or hold if it carries this attempt's nonce, and sends nothing once the
    /// interrupt is flagged. The undo waits for an attempt in flight to finish (the process keeps
    /// running its command while `main` undoes), so that the withdrawal comes after the grant.
    async fn try_acquire(&self, req: &AcquireRequest) -> Result<Attempt> {
        let name = name_of(&req.lock)?;
        validate_name(name)?;
        validate_label("worker id", &req.claimant.worker_id)?;
        validate_label("node id", &req.claimant.node_id)?;
        hold_args(req.kind)?;
        let nonce = format!("{:016x}", fastrand::u64(..));
        let in_flight = Arc::new(tokio::sync::Mutex::new(()));
        let sending = in_flight.clone().lock_owned().await;
        let undo = {
            let (this, name, nonce) = (self.clone(), name.to_string(), nonce.clone());
            interrupt::on_interrupt(move || async move {
                let withdraw = async {
                    let _sent = in_flight.lock().await;
                    this.withdraw(&name, &nonce).await;
                };
                if tokio::time::timeout(OP_DEADLINE, withdraw).await.is_err() {
                    tracing::warn!(
                        "an interrupted claim did not finish; its grant, if any, expires with its lease"
                    );
                }
            })
        };
        if interrupt::is_interrupted() {
            return Err(Error::Unexpected("interrupted".into()));
        }
        let (answer, raw, _now, previous) = self.acquire_script(req, name, &nonce).await?;
        drop(sending);
        match answer.as_str() {
            "granted" => {
                // A grant stays undoable until the command has reported it.
                undo.keep_until_reported();
                let took_over = if previous.is_empty() {
                    None
                } else {
                    Some(Box::new(self.lease(&previous)?.holder()))
                };
                Ok(Attempt::Granted(Grant {
                    holder: self.lease(&raw)?.holder(),
                    adopted: false,
                    took_over,
                }))
            }
            "adopted" => Ok(Attempt::Granted(Grant {
                holder: self.lease(&raw)?.holder(),
                adopted: true,
                took_over: None,
            })),
            "other" => Err(other_kind(name, &raw, &previous)),
            "limit" => Err(Error::usage(format!(
                "semaphore {name:?} has limit {raw}, not {}: every claim of a semaphore must \
                 give the same limit",
                hold_args(req.kind)?.1
            ))),
            _ => Ok(Attempt::Held(self.lease(&raw)?.holder())),
        }
    }

    /// Releases the grant the request names, or every hold of the worker (with `force`, every
    /// hold of the name), and the worker's reservation.
    async fn release(&self, req: &ReleaseRequest) -> Result<Released> {
        let name = name_of(&req.lock)?;
        validate_name(name)?;
        validate_label("worker id", &req.worker_id)?;
        // One nonce for every attempt of this release, so that a retry finds the receipt.
        let receipt = self.receipt_key(&format!("{:016x}", fastrand::u64(..)));
        let mut inv = RELEASE.prepare_invoke();
        inv.key(self.lock_key(name))
            .key(self.token_key(name))
            .key(&receipt)
            .key(self.holds_key(name))
            .key(self.intent_key(name))
            .arg(&req.worker_id)
            .arg(token_arg(req.fencing_token))
            .arg(if req.force { "1" } else { "0" })
            .arg(lease::millis(RECEIPT_TTL));
        let (kind, raw, _now): (String, String, i64) = self
            .call("a release", |mut conn| {
                let inv = &inv;
                async move { inv.invoke_async(&mut conn).await }
            })
            .await?;
        match kind.as_str() {
            "free" => Ok(Released {
                was_held: false,
                previous: None,
            }),
            "released" => Ok(Released {
                was_held: true,
                previous: Some(self.lease(&raw)?.holder()),
            }),
            _ => {
                let h = self.lease(&raw)?.holder();
                Err(Error::NotOwner(format!(
                    "lock {name:?} is held by worker {:?} on node {:?} (fencing token {}), not by \
                     {}; force the release to free it anyway",
                    h.worker_id,
                    h.node_id,
                    h.fencing_token,
                    claimer(&req.worker_id, req.fencing_token)
                )))
            }
        }
    }

    /// Renews the grant the request names, or every hold of the worker.
    async fn renew(&self, req: &RenewRequest) -> Result<Holder> {
        let name = name_of(&req.lock)?;
        validate_name(name)?;
        validate_label("worker id", &req.worker_id)?;
        let ttl = match req.ttl.map(lease::millis) {
            Some(0) => return Err(Error::usage("the lock timeout must be at least 1 ms")),
            Some(ms) => ms.to_string(),
            None => String::new(),
        };
        let mut inv = RENEW.prepare_invoke();
        inv.key(self.lock_key(name))
            .key(self.token_key(name))
            .key(self.holds_key(name))
            .arg(&req.worker_id)
            .arg(token_arg(req.fencing_token))
            .arg(ttl);
        let (kind, raw, _now): (String, String, i64) = self
            .call("a renewal", |mut conn| {
                let inv = &inv;
                async move { inv.invoke_async(&mut conn).await }
            })
            .await?;
        match kind.as_str() {
            "renewed" => Ok(self.lease(&raw)?.holder()),
            "gone" => Err(Error::NotOwner(format!(
                "lock {name:?} is not held by anyone: its lease ran out (Redis deleted it) or it \
                 was released; claim it again"
            ))),
            "lost" => {
                let h = self.lease(&raw)?.holder();
                Err(Error::NotOwner(format!(
                    "{name:?} has no hold of {} any more: its lease ran out or it was released \
                     (held now by worker {:?} on node {:?}, fencing token {}, among others); \
                     claim it again",
                    claimer(&req.worker_id, req.fencing_token),
                    h.worker_id,
                    h.node_id,
                    h.fencing_token
                )))
            }
            _ => Err(self.lost(name, &raw, req.fencing_token)?),
        }
    }

    async fn status(&self, lock: &LockId) -> Result<Status> {
        let name = name_of(lock)?;
        validate_name(name)?;
        self.read_status(name).await
    }

    /// Every held lock and every hold of a name held by several: `SCAN` over the keys, then the
    /// leases still there when read. Sorted by name, a name's holds oldest first.
    async fn list(&self, _req: &ListRequest) -> Result<Vec<(String, Holder)>> {
        let lock_prefix = self.lock_key("");
        let keys = self.scan(&format!("{lock_prefix}*")).await?;
        let mut held = Vec::with_capacity(keys.len());
        for chunk in keys.chunks(SCAN_COUNT) {
            let values: Vec<Option<String>> = self
                .call("a listing", |mut conn| async move {
                    redis::cmd("MGET").arg(chunk).query_async(&mut conn).await
                })
                .await?;
            for (key, value) in chunk.iter().zip(values) {
                // Gone since the scan: released or expired meanwhile.
                let Some(value) = value else { continue };
                let name = key.strip_prefix(&lock_prefix).unwrap_or(key);
                held.push((name.to_string(), self.lease(&value)?.holder()));
            }
        }
        held.extend(self.list_holds().await?);
        // Stable: a name's holds keep their order.
        held.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(held)
    }

    /// Redis deletes a lease when it runs out (and the scripts drop a hold whose lease has), so
    /// no lock is ever stale here: a lock still listed is live and kept, a missing one is free.
    /// Nothing is ever released by the janitor.
    async fn release_stale(&self, req: &ReleaseStaleRequest) -> Result<StaleRelease> {
        match self.status(&req.lock).await?.holds().into_iter().next() {
            Some(h) => Ok(StaleRelease::Kept(h.holder)),
            None => Ok(StaleRelease::Free),
        }
    }
}

/// Who a release speaks for, in messages.
fn claimer(worker_id: &str, token: Option<u64>) -> String {
    match token {
        Some(t) => format!("worker {worker_id:?} with fencing token {t}"),
        None => format!("worker {worker_id:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_checked_without_echoing_credentials() {
        for ok in [
            "redis://127.0.0.1:6379",
            "redis://:secret@localhost/2",
            "unix:///run/redis.sock",
        ] {
            assert!(RedisBackend::new(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "127.0.0.1:6379",
            "http://localhost",
            "rediss://:hunter2@localhost/#insecure",
            "redis://:hunter2@",
        ] {
            let e = RedisBackend::new(bad).unwrap_err();
            assert_eq!(
                e.exit_code(),
                sentinel_core::error::ExitCode::Usage,
                "{bad}"
            );
            assert!(!e.to_string().contains("hunter2"), "{e}");
        }
        // Certificates for a plain connection: TLS was expected.
        let tls = ClientTls {
            ca_cert: Some("/nonexistent/ca.pem".into()),
            ..ClientTls::default()
        };
        let e = RedisBackend::with_options("redis://:hunter2@h", DEFAULT_PREFIX, &tls).unwrap_err();
        assert!(e.to_string().contains("rediss://"), "{e}");
        assert!(!e.to_string().contains("hunter2"), "{e}");
        // A missing CA file is a usage error naming it, before any connection.
        let e = RedisBackend::with_options("rediss://h", DEFAULT_PREFIX, &tls).unwrap_err();
        assert_eq!(e.exit_code(), sentinel_core::error::ExitCode::Usage);
        assert!(e.to_string().contains("/nonexistent/ca.pem"), "{e}");
        let b = RedisBackend::new("redis://user:hunter2@db.example:6380/1").unwrap();
        assert_eq!(b.inner.target, "redis at db.example:6380");
        assert!(!format!("{b:?}").contains("hunter2"));
        assert_eq!(b.redact("auth hunter2 failed"), "auth *** failed");
    }

    #[test]
    fn prefixes_cannot_widen_the_listing() {
        for bad in ["", "a*", "x?", "[ab]", "a b", "a\\"] {
            assert!(
                RedisBackend::with_prefix("redis://h", bad).is_err(),
                "{bad}"
            );
        }
        let b = RedisBackend::with_prefix("redis://h", "test-1:").unwrap();
        assert_eq!(b.lock_key("job 1"), "test-1:lock:job 1");
        assert_eq!(b.token_key("job 1"), "test-1:token:job 1");
    }
}
