//! etcd backend: named locks in an etcd v3 cluster, for teams that already run etcd (often for
//! Kubernetes or their own services) and would rather lock there than run another service.
//!
//! It speaks etcd's JSON gateway over plain HTTP (its `gateway` module) rather than gRPC: the
//! gateway is part of every etcd v3 server, and the backend stays as light as the others
//! (hyper-util, which the workspace already has, instead of a gRPC stack). This module owns the
//! key layout, the lease per grant and the transactions that make every change one guarded step
//! on etcd:
//!
//! - `sentinel/locks/NAME` (the prefix is [`DEFAULT_PREFIX`] unless `with_prefix` sets another)
//!   holds the grant as JSON: worker and node id, TTL, when it was claimed (the claimer's clock,
//!   shown to people only), task info and the claim attempt's nonce.
//! - **A lease per grant.** A claim grants an etcd lease with the TTL (whole seconds, rounded
//!   up) and attaches the key to it. Renewals keep the lease alive; when they stop, etcd revokes
//!   the lease and deletes the key with it: an expired lock is free, never stale, as on Redis. So
//!   `steal-stale` is a plain claim, the janitor finds nothing, and `status` shows no stale
//!   holder. etcd's leases are the clock that decides; ours only stamps `claimed_at`.
//! - **A claim is one transaction**: if the key's create revision is 0 (absent), put it with the
//!   lease; else read it. One claimer wins; the others are told the holder and revoke their lease.
//! - **The fencing token is the key's create revision**, etcd's global revision at the put that
//!   created it: every later grant of the name creates the key again, at a larger revision.
//!   Re-adoption and renewals keep the key, so they keep the token.
//! - **Release, take-over and renewal with a new TTL are guarded** by the key's create and mod
//!   revisions as read: a lock granted again in between is refused ([`Error::NotOwner`]), never
//!   released or moved. A renewal keeps the grant's lease alive, then reads the key again to be
//!   sure it is still attached to that lease: a lock released and claimed again in between is
//!   lost, even under the same worker id.
//!
//! Every request fails over between the endpoints within a deadline, then reports etcd
//! unreachable (exit 8). Requests are safe to repeat: a claim whose answer was lost finds its own
//! nonce in the key and takes the grant it made, instead of reporting a holder or granting twice;
//! an operation that fails after a claim's lease was granted revokes that lease, which deletes the
//! key if the claim's put did land. The same revocation is the undo of an interrupted claim.
//!
//! Limits: a value is at most [`MAX_VALUE_BYTES`], an answer at most
//! [`MAX_ANSWER_BYTES`]; a listing reads [`PAGE`] keys per request, at most
//! [`MAX_PAGES`] pages.

#![warn(missing_docs)]

mod diagnose;
mod gateway;

pub use gateway::{MAX_ANSWER_BYTES, MAX_ENDPOINTS, OP_DEADLINE, REQUEST_TIMEOUT, ROUNDS};

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::json;

use sentinel_core::backend::{LockBackend, Status, foreign};
use sentinel_core::error::{Error, Result};
use sentinel_core::interrupt;
use sentinel_core::lease::{self, Clock, SystemClock};
use sentinel_core::lock::{
    AcquireRequest, Attempt, Grant, Holder, ListRequest, LockId, ReleaseRequest,
    ReleaseStaleRequest, Released, RenewRequest, StaleRelease, Takeover, TaskInfo, validate_label,
    validate_name,
};

use gateway::{
    Gateway, GrantResponse, KeyValue, LeaseResponse, RangeResponse, StreamMessage, TxnResponse,
    b64, prefix_end,
};

/// The key prefix the CLI uses.
pub const DEFAULT_PREFIX: &str = "sentinel/locks/";
/// Largest value sentinel writes to a key (etcd's own limit is 1.5 MiB per request).
pub const MAX_VALUE_BYTES: usize = 64 << 10;
/// Keys per page of a listing.
pub const PAGE: usize = 200;
/// Pages of a listing before it gives up: 100,000 locks.
pub const MAX_PAGES: usize = 500;
/// Rounds of read-and-write when the key changes between the two (a contended lock).
const MAX_ROUNDS: usize = 5;
/// How long a best-effort clean-up (revoking a lease that holds nothing) may take.
const CLEANUP_TIMEOUT: Duration = Duration::from_secs(2);

/// A grant as the key stores it.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Record {
    worker_id: String,
    node_id: String,
    /// The lease's TTL as etcd granted it, in milliseconds (whole seconds).
    ttl_ms: u64,
    /// When the grant was made, on the claimer's clock: shown to people, never decides anything.
    claimed_ms: u64,
    #[serde(default)]
    task_info: TaskInfo,
    /// The claim attempt that wrote it: a retry of that attempt recognises its own grant.
    nonce: String,
}

impl Record {
    /// The record of a claim of `name` by `req` on a lease of `secs`, checked: names and labels
    /// valid, and small enough to write.
    fn for_claim(req: &AcquireRequest, name: &str, secs: i64) -> Result<Record> {
        validate_name(name)?;
        req.kind.exclusive_only("etcd")?;
        validate_label("worker id", &req.claimant.worker_id)?;
        validate_label("node id", &req.claimant.node_id)?;
        if req.ttl.is_zero() {
            return Err(Error::usage("the lock timeout must be at least 1 ms"));
        }
        let record = Record {
            worker_id: req.claimant.worker_id.clone(),
            node_id: req.claimant.node_id.clone(),
            ttl_ms: u64::try_from(secs).unwrap_or(0) * 1000,
            claimed_ms: now_ms(),
            task_info: req.task_info.clone(),
            nonce: format!("{:016x}", fastrand::u64(..)),
        };
        let size = serde_json::to_vec(&record).map(|v| v.len()).unwrap_or(0);
        if size > MAX_VALUE_BYTES {
            return Err(Error::usage(format!(
                "the lock's record would take {size} bytes, more than the {} KiB sentinel writes \
                 to etcd: shorten the task info",
                MAX_VALUE_BYTES >> 10
            )));
        }
        Ok(record)
    }
}

/// The etcd backend. Cheap to clone: clones share the HTTP connections.
#[derive(Clone)]
pub struct EtcdBackend {
    inner: Arc<Inner>,
}

struct Inner {
    gateway: Gateway,
    prefix: String,
}

impl std::fmt::Debug for EtcdBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdBackend")
            .field("endpoints", &self.inner.gateway)
            .field("prefix", &self.inner.prefix)
            .finish()
    }
}

/// etcd's longest lease, in seconds.
const MAX_LEASE_SECS: i64 = 9_000_000_000;

/// The lease TTL etcd is asked for: whole seconds, rounded up, at least one, at most etcd's
/// longest.
fn lease_secs(ttl: Duration) -> i64 {
    let ms = lease::millis(ttl);
    i64::try_from(ms.div_ceil(1000))
        .unwrap_or(MAX_LEASE_SECS)
        .clamp(1, MAX_LEASE_SECS)
}

fn now_ms() -> u64 {
    SystemClock.now_ms()
}

fn name_of(lock: &LockId) -> Result<&str> {
    match lock {
        LockId::Name(n) => Ok(n),
        other => Err(foreign(other, "etcd")),
    }
}

/// Who a release speaks for, in messages.
fn claimer(worker_id: &str, token: Option<u64>) -> String {
    match token {
        Some(t) => format!("worker {worker_id:?} with fencing token {t}"),
        None => format!("worker {worker_id:?}"),
    }
}

/// A renewal of `name` found no key: nobody holds the lock.
fn gone(name: &str) -> Error {
    Error::NotOwner(format!(
        "lock {name:?} is not held by anyone: its lease ran out (etcd deleted the key with it) or \
         it was released; claim it again"
    ))
}

/// A renewal of `name` found another grant, `kv` with record `r`.
fn lost(name: &str, r: &Record, kv: &KeyValue) -> Error {
    Error::NotOwner(format!(
        "lock {name:?} was lost: it is now held by worker {:?} on node {:?} (fencing token {})",
        r.worker_id,
        r.node_id,
        token_of(kv)
    ))
}

/// The key's grant names this worker (and this token, if given).
fn is_grant(kv: &KeyValue, r: &Record, worker: &str, token: Option<u64>) -> bool {
    r.worker_id == worker && token.is_none_or(|t| t == token_of(kv))
}

fn token_of(kv: &KeyValue) -> u64 {
    u64::try_from(kv.create_revision).unwrap_or(0)
}

/// A comparison of a transaction on `key`.
fn compare(key: &str, target: &str, value: i64) -> serde_json::Value {
    let field = match target {
        "CREATE" => "create_revision",
        "MOD" => "mod_revision",
        _ => unreachable!("only revisions are compared"),
    };
    json!({"key": key, "result": "EQUAL", "target": target, field: value.to_string()})
}

/// Compares that hold while the key is exactly as read.
fn unchanged(key: &str, kv: &KeyValue) -> serde_json::Value {
    json!([
        compare(key, "CREATE", kv.create_revision),
        compare(key, "MOD", kv.mod_revision)
    ])
}

impl EtcdBackend {
    /// The backend for `--etcd-endpoints` (comma-separated `http://HOST:PORT` client URLs) with
    /// the keys under [`DEFAULT_PREFIX`]. Checks the URLs; connects on first use.
    pub fn new(endpoints: &str) -> Result<EtcdBackend> {
        Self::with_prefix(endpoints, DEFAULT_PREFIX)
    }

    /// The backend with every key under `prefix` (tests, or several independent lock spaces in
    /// one cluster): 1 to 64 visible characters.
    pub fn with_prefix(endpoints: &str, prefix: &str) -> Result<EtcdBackend> {
        if prefix.is_empty()
            || prefix.chars().count() > 64
            || prefix.chars().any(|c| c.is_control() || c.is_whitespace())
        {
            return Err(Error::usage(format!(
                "invalid etcd key prefix {prefix:?}: use 1 to 64 visible characters"
            )));
        }
        let endpoints = gateway::endpoints(endpoints)?;
        Ok(EtcdBackend {
            inner: Arc::new(Inner {
                gateway: Gateway::new(endpoints),
                prefix: prefix.to_string(),
            }),
        })
    }

    fn gw(&self) -> &Gateway {
        &self.inner.gateway
    }

    /// The lock's key, in base64 as the gateway takes it.
    fn key(&self, name: &str) -> String {
        b64(format!("{}{name}", self.inner.prefix).as_bytes())
    }

    fn record(&self, kv: &KeyValue) -> Result<Record> {
        serde_json::from_slice(&kv.value).map_err(|e| {
            Error::Unexpected(format!(
                "{} holds a lock value sentinel did not write ({e}); is another program using \
                 keys under {:?}?",
                self.gw().target(),
                self.inner.prefix
            ))
        })
    }

    /// The holder a key names, with lease times counted from `renewed_ms` (a renewal or grant
    /// just made) and the lease's TTL.
    fn holder(kv: &KeyValue, r: &Record, renewed_ms: u64, ttl_ms: u64) -> Holder {
        Holder {
            worker_id: r.worker_id.clone(),
            node_id: r.node_id.clone(),
            fencing_token: token_of(kv),
            claimed_at: lease::from_unix_ms(r.claimed_ms),
            heartbeat_last: lease::from_unix_ms(renewed_ms),
            expires_at: lease::from_unix_ms(renewed_ms.saturating_add(ttl_ms)),
            // etcd deletes the key with its lease: whatever it still has is live.
            stale: false,
            task_info: r.task_info.clone(),
            liveness: None,
        }
    }

    /// The holder a key names, with the lease times its record knows (as granted: renewals do
    /// not rewrite the key), for the holder a release or take-over ended.
    fn recorded(kv: &KeyValue, r: &Record) -> Holder {
        Self::holder(kv, r, r.claimed_ms, r.ttl_ms)
    }

    /// The holder a key names, its lease times as etcd sees them now (`timetolive`: the TTL
    /// left, in whole seconds); `None` when the lease has just ended (the key is gone with it).
    async fn live_holder(&self, kv: &KeyValue) -> Result<Option<Holder>> {
        let r = self.record(kv)?;
        if kv.lease == 0 {
            return Err(Error::Unexpected(format!(
                "{} holds a lock key without a lease, which sentinel never writes; is another \
                 program using keys under {:?}?",
                self.gw().target(),
                self.inner.prefix
            )));
        }
        let now = now_ms();
        let t: LeaseResponse = self
            .gw()
            .call(
                "a lease lookup",
                "/v3/lease/timetolive",
                &json!({"ID": kv.lease.to_string()}),
            )
            .await?;
        if t.ttl < 0 {
            return Ok(None);
        }
        let granted = u64::try_from(t.granted_ttl).unwrap_or(0) * 1000;
        let left = u64::try_from(t.ttl).unwrap_or(0) * 1000;
        // etcd truncates the time left to whole seconds, so this is up to a second early; a
        // lease cannot have been renewed before its claim, though (with clocks in step both are
        // lower bounds, so the expiry shown is never later than etcd's).
        let renewed = now
            .saturating_sub(granted.saturating_sub(left))
            .max(r.claimed_ms);
        Ok(Some(Self::holder(kv, &r, renewed, granted)))
    }

    /// The lock's key, if it exists.
    async fn read(&self, key: &str) -> Result<Option<KeyValue>> {
        let r: RangeResponse = self
            .gw()
            .call("a read", "/v3/kv/range", &json!({"key": key}))
            .await?;
        Ok(r.kvs.into_iter().next())
    }

    async fn txn(&self, what: &str, body: serde_json::Value) -> Result<TxnResponse> {
        self.gw().call(what, "/v3/kv/txn", &body).await
    }

    /// A new lease of `secs` seconds: its id and the TTL etcd granted (it may raise a TTL below
    /// its minimum).
    async fn grant(&self, secs: i64) -> Result<(i64, i64)> {
        let g: GrantResponse = self
            .gw()
            .call(
                "a lease grant",
                "/v3/lease/grant",
                &json!({"TTL": secs.to_string()}),
            )
            .await?;
        if !g.error.is_empty() || g.id == 0 {
            return Err(Error::Unexpected(format!(
                "{} did not grant a lease: {}",
                self.gw().target(),
                g.error
            )));
        }
        Ok((g.id, g.ttl.max(secs)))
    }

    /// Revokes a lease (deleting the keys attached to it); one that is gone already is fine.
    async fn revoke(&self, id: i64) -> Result<()> {
        match self
            .gw()
            .post(
                "a lease revocation",
                "/v3/lease/revoke",
                &json!({"ID": id.to_string()}),
            )
            .await?
        {
            Ok(_) => Ok(()),
            // Not found: expired or revoked already.
            Err(r) if r.code == 5 => Ok(()),
            Err(r) => Err(self.gw().fail("a lease revocation", &r)),
        }
    }

    /// [`EtcdBackend::revoke`] for clean-up: briefly, failures only logged (the lease then
    /// expires by itself).
    async fn revoke_quietly(&self, id: i64) {
        match tokio::time::timeout(CLEANUP_TIMEOUT, self.revoke(id)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "could not revoke an unused etcd lease; it expires with its TTL")
            }
            Err(_) => tracing::warn!(
                "revoking an unused etcd lease took too long; it expires with its TTL"
            ),
        }
    }

    /// Keeps a lease alive: its TTL, or `None` when it is gone.
    async fn keep_alive(&self, id: i64) -> Result<Option<i64>> {
        let answer = self
            .gw()
            .post(
                "a renewal",
                "/v3/lease/keepalive",
                &json!({"ID": id.to_string()}),
            )
            .await?
            .map_err(|r| self.gw().fail("a renewal", &r))?;
        // A stream: one JSON message per line.
        let line = answer
            .split(|b| *b == b'\n')
            .find(|l| l.iter().any(|b| !b.is_ascii_whitespace()))
            .unwrap_or_default();
        let m: StreamMessage = self.gw().decode("a renewal", line)?;
        if let Some(r) = m.error {
            return Err(self.gw().fail("a renewal", &r));
        }
        Ok(m.result.map(|r| r.ttl).filter(|ttl| *ttl > 0))
    }

    /// One claim attempt after the lease `lease` (of `ttl_secs`) was granted: the transactions
    /// of [`LockBackend::try_acquire`]. The lease is the caller's to revoke unless the grant is
    /// returned with `true` (the lease holds the key now).
    async fn claim(
        &self,
        req: &AcquireRequest,
        key: &str,
        record: &Record,
        lease_id: i64,
        ttl_secs: i64,
    ) -> Result<(Attempt, bool)> {
        let ttl_ms = u64::try_from(ttl_secs).unwrap_or(0) * 1000;
        let value = b64(&serde_json::to_vec(record).expect("a record encodes"));
        let put =
            json!({"request_put": {"key": key, "value": value, "lease": lease_id.to_string()}});
        let range = json!({"request_range": {"key": key}});
        let mut took_over: Option<Holder> = None;
        for _ in 0..MAX_ROUNDS {
            if interrupt::is_interrupted() {
                return Err(Error::Unexpected("interrupted".into()));
            }
            let sent = now_ms();
            let t = self
                .txn(
                    "a claim",
                    json!({
                        "compare": [compare(key, "CREATE", 0)],
                        "success": [put, range],
                        "failure": [range],
                    }),
                )
                .await?;
            let Some(kv) = t.kv().cloned() else {
                if t.succeeded {
                    return Err(Error::Unexpected(format!(
                        "{} created the lock's key but did not show it",
                        self.gw().target()
                    )));
                }
                // Deleted between the compare and the read cannot happen in one transaction;
                // try again.
                continue;
            };
            let current = self.record(&kv)?;
            // Granted now, or by an earlier sending of this attempt whose answer was lost.
            if t.succeeded || (current.nonce == record.nonce && kv.lease == lease_id) {
                return Ok((
                    Attempt::Granted(Grant {
                        holder: Self::holder(&kv, &current, sent, ttl_ms),
                        adopted: false,
                        took_over: took_over.map(Box::new),
                    }),
                    true,
                ));
            }
            if req.readopt && current.worker_id == req.claimant.worker_id {
                // Our own live lock: take it up again on the new lease, same key, same token.
                let Some(now) = self.readopt(key, &kv, &current, record, lease_id).await? else {
                    continue;
                };
                let holder = Self::holder(&now, &self.record(&now)?, sent, ttl_ms);
                let grant = Grant {
                    holder,
                    adopted: true,
                    took_over: None,
                };
                return Ok((Attempt::Granted(grant), true));
            }
            if req.takeover == Takeover::Any {
                // Delete the holder's key exactly as read, then claim like anyone else.
                if self.take_over(key, &kv).await? {
                    took_over = Some(Self::recorded(&kv, &current));
                }
                continue;
            }
            let holder = match self.live_holder(&kv).await? {
                Some(h) => h,
                // Its lease ended just now: the lock is free, try again.
                None => continue,
            };
            return Ok((Attempt::Held(holder), false));
        }
        self.contended(key).await
    }

    /// A claim contended past every round: the latest holder seen, or a conflict if the lock is
    /// free again.
    async fn contended(&self, key: &str) -> Result<(Attempt, bool)> {
        let last = match self.read(key).await? {
            Some(kv) => self.live_holder(&kv).await?,
            None => None,
        };
        match last {
            Some(h) => Ok((Attempt::Held(h), false)),
            None => Err(Error::Conflict(format!(
                "the lock changed hands {MAX_ROUNDS} times during one claim; try again"
            ))),
        }
    }

    /// What an interrupted claim does: once the claim's request in flight (`in_flight`) is
    /// answered, it revokes the lease `granted` names, which withdraws the key put on it.
    fn undo_on_interrupt(
        &self,
        in_flight: Arc<tokio::sync::Mutex<()>>,
        granted: Arc<std::sync::Mutex<Option<i64>>>,
    ) -> interrupt::Registration {
        let this = self.clone();
        interrupt::on_interrupt(move || async move {
            let withdraw = async {
                let _sent = in_flight.lock().await;
                let id = *granted.lock().unwrap_or_else(|e| e.into_inner());
                if let Some(id) = id {
                    this.revoke_quietly(id).await;
                }
            };
            if tokio::time::timeout(gateway::OP_DEADLINE, withdraw)
                .await
                .is_err()
            {
                tracing::warn!(
                    "an interrupted claim did not finish; its grant, if any, expires with its lease"
                );
            }
        })
    }

    /// Moves our own live grant `kv` (its record `current`) onto the claim's new lease, keeping
    /// its key and so its token: the key as it is now, or `None` if it changed meanwhile.
    async fn readopt(
        &self,
        key: &str,
        kv: &KeyValue,
        current: &Record,
        record: &Record,
        lease_id: i64,
    ) -> Result<Option<KeyValue>> {
        let adopted = Record {
            claimed_ms: current.claimed_ms,
            ..record.clone()
        };
        let value = b64(&serde_json::to_vec(&adopted).expect("a record encodes"));
        let t = self
            .txn(
                "a re-adoption",
                json!({
                    "compare": unchanged(key, kv),
                    "success": [
                        {"request_put": {"key": key, "value": value, "lease": lease_id.to_string()}},
                        {"request_range": {"key": key}},
                    ],
                    "failure": [],
                }),
            )
            .await?;
        let mine = match t.kv() {
            Some(now) if t.succeeded => Some(now.clone()),
            // A lost answer: the put landed if the key is on our lease now.
            _ => self.read(key).await?.filter(|now| now.lease == lease_id),
        };
        if mine.is_some() && kv.lease != lease_id {
            self.revoke_quietly(kv.lease).await;
        }
        Ok(mine)
    }

    /// Deletes the holder's key `kv` exactly as read and revokes its lease: whether it was
    /// deleted (not changed meanwhile).
    async fn take_over(&self, key: &str, kv: &KeyValue) -> Result<bool> {
        let t = self
            .txn(
                "a take-over",
                json!({
                    "compare": unchanged(key, kv),
                    "success": [{"request_delete_range": {"key": key}}],
                    "failure": [],
                }),
            )
            .await?;
        if t.succeeded {
            self.revoke_quietly(kv.lease).await;
        }
        Ok(t.succeeded)
    }

    /// Renews the grant `kv` of `name` on its own lease: keeps the lease alive, then checks the
    /// key is still on it (released and claimed again in between, it is another grant's).
    async fn keep_grant_alive(&self, name: &str, key: &str, kv: &KeyValue) -> Result<Holder> {
        let sent = now_ms();
        let Some(ttl) = self.keep_alive(kv.lease).await? else {
            return Err(gone(name));
        };
        match self.read(key).await? {
            Some(now) if now.create_revision == kv.create_revision && now.lease == kv.lease => {
                let r = self.record(&now)?;
                let ttl_ms = u64::try_from(ttl).unwrap_or(0) * 1000;
                Ok(Self::holder(&now, &r, sent, ttl_ms))
            }
            Some(now) => Err(lost(name, &self.record(&now)?, &now)),
            None => Err(gone(name)),
        }
    }

    /// Renews the grant `kv` of `name` (its record `r`) with a new TTL: a new lease, the key
    /// moved to it as read, the old lease revoked.
    async fn move_to_new_lease(
        &self,
        req: &RenewRequest,
        name: &str,
        key: &str,
        kv: &KeyValue,
        r: Record,
        ttl: Duration,
    ) -> Result<Holder> {
        let (lease_id, secs) = self.grant(lease_secs(ttl)).await?;
        let moved = Record {
            ttl_ms: u64::try_from(secs).unwrap_or(0) * 1000,
            ..r
        };
        let value = b64(&serde_json::to_vec(&moved).expect("a record encodes"));
        let sent = now_ms();
        let outcome = self
            .txn(
                "a renewal",
                json!({
                    "compare": unchanged(key, kv),
                    "success": [
                        {"request_put": {"key": key, "value": value, "lease": lease_id.to_string()}},
                        {"request_range": {"key": key}},
                    ],
                    "failure": [{"request_range": {"key": key}}],
                }),
            )
            .await;
        let t = match outcome {
            Ok(t) => t,
            Err(e) => {
                self.revoke_quietly(lease_id).await;
                return Err(e);
            }
        };
        match t.kv() {
            // Moved now, or by an earlier sending whose answer was lost.
            Some(now) if t.succeeded || now.lease == lease_id => {
                self.revoke_quietly(kv.lease).await;
                Ok(Self::holder(now, &moved, sent, moved.ttl_ms))
            }
            Some(now) => {
                self.revoke_quietly(lease_id).await;
                let r = self.record(now)?;
                if is_grant(now, &r, &req.worker_id, Some(token_of(kv))) {
                    Err(Error::Unavailable(format!(
                        "lock {name:?} changed while its lease was being replaced; try again"
                    )))
                } else {
                    Err(lost(name, &r, now))
                }
            }
            None => {
                self.revoke_quietly(lease_id).await;
                Err(gone(name))
            }
        }
    }
}

impl LockBackend for EtcdBackend {
    fn name(&self) -> &'static str {
        "etcd"
    }

    fn parse_lock(&self, raw: &str) -> Result<LockId> {
        validate_name(raw)?;
        Ok(LockId::Name(raw.to_string()))
    }

    /// One attempt: a lease for the grant, then the claim transaction (create the key if absent,
    /// else read it); re-adoption moves our own key to the new lease, a forced take-over deletes
    /// the holder's key as read and claims again. A lease that ends up holding nothing is
    /// revoked.
    ///
    /// An interrupted claim must hold nothing or report its grant: the attempt registers an undo
    /// that revokes its lease (deleting the key if the claim's put landed), and sends nothing once
    /// the interrupt is flagged. The undo waits for the attempt in flight to finish (the process
    /// keeps running its command while `main` undoes), so that the revocation comes after the
    /// put. A re-adoption is not undone: the lock was the worker's before the command.
    async fn try_acquire(&self, req: &AcquireRequest) -> Result<Attempt> {
        let name = name_of(&req.lock)?;
        let key = self.key(name);
        let secs = lease_secs(req.ttl);
        let mut record = Record::for_claim(req, name, secs)?;
        // Later attempts of a waiting claim read first: a held lock costs no lease.
        if req.attempt > 0
            && req.takeover != Takeover::Any
            && let Some(kv) = self.read(&key).await?
        {
            let r = self.record(&kv)?;
            if !(req.readopt && r.worker_id == req.claimant.worker_id)
                && let Some(h) = self.live_holder(&kv).await?
            {
                return Ok(Attempt::Held(h));
            }
        }

        let in_flight = Arc::new(tokio::sync::Mutex::new(()));
        let granted: Arc<std::sync::Mutex<Option<i64>>> = Arc::default();
        let sending = in_flight.clone().lock_owned().await;
        let undo = self.undo_on_interrupt(in_flight, granted.clone());
        if interrupt::is_interrupted() {
            return Err(Error::Unexpected("interrupted".into()));
        }
        let (lease_id, ttl_secs) = self.grant(secs).await?;
        *granted.lock().unwrap_or_else(|e| e.into_inner()) = Some(lease_id);
        record.ttl_ms = u64::try_from(ttl_secs).unwrap_or(0) * 1000;
        let outcome = self.claim(req, &key, &record, lease_id, ttl_secs).await;
        match outcome {
            Ok((attempt, true)) => {
                drop(sending);
                match &attempt {
                    Attempt::Granted(g) if g.adopted => {
                        // Not undone: see above.
                        *granted.lock().unwrap_or_else(|e| e.into_inner()) = None;
                    }
                    // A grant stays undoable until the command has reported it.
                    _ => undo.keep_until_reported(),
                }
                Ok(attempt)
            }
            Ok((attempt, false)) => {
                self.revoke_quietly(lease_id).await;
                drop(sending);
                Ok(attempt)
            }
            Err(e) => {
                // The claim's put may have landed before the failure: revoking withdraws it.
                self.revoke_quietly(lease_id).await;
                drop(sending);
                Err(e)
            }
        }
    }

    async fn release(&self, req: &ReleaseRequest) -> Result<Released> {
        let name = name_of(&req.lock)?;
        validate_name(name)?;
        validate_label("worker id", &req.worker_id)?;
        let key = self.key(name);
        // The grant a delete was sent for, should its answer be lost.
        let mut deleting: Option<Holder> = None;
        for _ in 0..MAX_ROUNDS {
            let Some(kv) = self.read(&key).await? else {
                let was_held = deleting.is_some();
                return Ok(Released {
                    was_held,
                    previous: deleting,
                });
            };
            if deleting
                .as_ref()
                .is_some_and(|d| d.fencing_token != token_of(&kv))
            {
                // The grant a delete was sent for is gone, the key is another grant's.
                return Ok(Released {
                    was_held: true,
                    previous: deleting,
                });
            }
            let r = self.record(&kv)?;
            if !req.force && !is_grant(&kv, &r, &req.worker_id, req.fencing_token) {
                return Err(Error::NotOwner(format!(
                    "lock {name:?} is held by worker {:?} on node {:?} (fencing token {}), not by \
                     {}; force the release to free it anyway",
                    r.worker_id,
                    r.node_id,
                    token_of(&kv),
                    claimer(&req.worker_id, req.fencing_token)
                )));
            }
            let previous = Self::recorded(&kv, &r);
            deleting = Some(previous.clone());
            let t = self
                .txn(
                    "a release",
                    json!({
                        "compare": unchanged(&key, &kv),
                        "success": [{"request_delete_range": {"key": key}}],
                        "failure": [],
                    }),
                )
                .await?;
            if t.succeeded {
                self.revoke_quietly(kv.lease).await;
                return Ok(Released {
                    was_held: true,
                    previous: Some(previous),
                });
            }
        }
        Err(Error::Unavailable(format!(
            "lock {name:?} changed {MAX_ROUNDS} times while it was being released; try again"
        )))
    }

    /// Keeps the grant's lease alive, then reads the key again: still ours (same create revision,
    /// same lease) or lost. A new TTL moves the key to a new lease in one guarded put and
    /// revokes the old one.
    async fn renew(&self, req: &RenewRequest) -> Result<Holder> {
        let name = name_of(&req.lock)?;
        validate_name(name)?;
        validate_label("worker id", &req.worker_id)?;
        if req.ttl.is_some_and(|t| t.is_zero()) {
            return Err(Error::usage("the lock timeout must be at least 1 ms"));
        }
        let key = self.key(name);
        let Some(kv) = self.read(&key).await? else {
            return Err(gone(name));
        };
        let r = self.record(&kv)?;
        if !is_grant(&kv, &r, &req.worker_id, req.fencing_token) {
            return Err(lost(name, &r, &kv));
        }
        match req.ttl {
            None => self.keep_grant_alive(name, &key, &kv).await,
            Some(ttl) => self.move_to_new_lease(req, name, &key, &kv, r, ttl).await,
        }
    }

    async fn status(&self, lock: &LockId) -> Result<Status> {
        let name = name_of(lock)?;
        validate_name(name)?;
        let holder = match self.read(&self.key(name)).await? {
            Some(kv) => self.live_holder(&kv).await?,
            None => None,
        };
        Ok(Status::Named {
            name: name.to_string(),
            holder,
        })
    }

    /// Every held lock: the keys under the prefix, [`PAGE`] per request in key order, and each
    /// one's lease. Sorted by name (etcd's key order is byte order).
    async fn list(&self, _req: &ListRequest) -> Result<Vec<(String, Holder)>> {
        let prefix = self.inner.prefix.as_bytes();
        let end = b64(&prefix_end(prefix));
        let mut from = prefix.to_vec();
        let mut held = Vec::new();
        for page in 0.. {
            if page == MAX_PAGES {
                return Err(Error::Unexpected(format!(
                    "{} holds more than {} locks under {:?}; sentinel lists at most that many",
                    self.gw().target(),
                    MAX_PAGES * PAGE,
                    self.inner.prefix
                )));
            }
            let r: RangeResponse = self
                .gw()
                .call(
                    "a listing",
                    "/v3/kv/range",
                    &json!({"key": b64(&from), "range_end": end, "limit": PAGE.to_string()}),
                )
                .await?;
            for kv in &r.kvs {
                let name =
                    String::from_utf8_lossy(&kv.key[prefix.len().min(kv.key.len())..]).into_owned();
                // Gone since the read: released or expired meanwhile.
                if let Some(h) = self.live_holder(kv).await? {
                    held.push((name, h));
                }
            }
            match r.kvs.last() {
                Some(last) if r.more => {
                    from = last.key.clone();
                    from.push(0);
                }
                _ => break,
            }
        }
        Ok(held)
    }

    /// etcd deletes a key when its lease runs out, so no lock is ever stale here: a lock still
    /// there is live and kept, a missing one is free. Nothing is ever released by the janitor.
    async fn release_stale(&self, req: &ReleaseStaleRequest) -> Result<StaleRelease> {
        match self.status(&req.lock).await?.holder() {
            Some(h) => Ok(StaleRelease::Kept(h.clone())),
            None => Ok(StaleRelease::Free),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttls_round_up_to_whole_seconds() {
        assert_eq!(lease_secs(Duration::from_millis(1)), 1);
        assert_eq!(lease_secs(Duration::from_secs(1)), 1);
        assert_eq!(lease_secs(Duration::from_millis(1500)), 2);
        assert_eq!(lease_secs(Duration::from_secs(300)), 300);
        assert_eq!(lease_secs(Duration::MAX), MAX_LEASE_SECS);
    }

    #[test]
    fn prefixes_and_keys() {
        for bad in ["", "a b", "x\n"] {
            assert!(
                EtcdBackend::with_prefix("http://h:2379", bad).is_err(),
                "{bad:?}"
            );
        }
        let b = EtcdBackend::with_prefix("http://h:2379", "t/").unwrap();
        assert_eq!(b.key("job 1"), b64(b"t/job 1"));
        assert!(format!("{b:?}").contains("http://h:2379"));
    }

    #[test]
    fn records_round_trip_and_foreign_values_are_refused() {
        let b = EtcdBackend::new("http://h:2379").unwrap();
        let r = Record {
            worker_id: "w".into(),
            node_id: "n".into(),
            ttl_ms: 2000,
            claimed_ms: 1_700_000_000_000,
            task_info: TaskInfo::default(),
            nonce: "00ff".into(),
        };
        let kv = KeyValue {
            key: b"sentinel/locks/x".to_vec(),
            create_revision: 7,
            mod_revision: 9,
            value: serde_json::to_vec(&r).unwrap(),
            lease: 3,
        };
        let back = b.record(&kv).unwrap();
        assert_eq!(
            (back.worker_id.as_str(), back.nonce.as_str()),
            ("w", "00ff")
        );
        let h = EtcdBackend::holder(&kv, &back, 1_700_000_001_000, 2000);
        assert_eq!(h.fencing_token, 7);
        assert_eq!((h.expires_at - h.heartbeat_last).num_milliseconds(), 2000);
        assert!(is_grant(&kv, &back, "w", Some(7)));
        assert!(is_grant(&kv, &back, "w", None));
        assert!(!is_grant(&kv, &back, "w", Some(6)));
        assert!(!is_grant(&kv, &back, "v", None));
        let foreign = KeyValue {
            value: b"hello".to_vec(),
            ..kv
        };
        let e = b.record(&foreign).unwrap_err();
        assert!(e.to_string().contains("did not write"), "{e}");
    }
}
