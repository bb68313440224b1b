//! The coordinator's requests and answers, one type each, used by the coordinator to parse and
//! answer and by the server backend to ask and understand: a field renamed on one side and not
//! the other fails to compile instead of failing in production. docs/http-api.md describes the
//! same shapes for people.
//!
//! Requests refuse unknown fields, so a typo in a client is an `invalid_body` error and not a
//! silently ignored option. Answers accept unknown fields, so a newer coordinator can add some.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use sentinel_core::backend::{Hold, Waiter};
use sentinel_core::kv::{Compare, Merge, Op};
use sentinel_core::lock::{Holder, TaskInfo};

/// Every acquire: `POST /locks/{name}/acquire` (an exclusive or, with `shared`, a shared hold)
/// and `POST /semaphores/{name}/acquire` (`permits` of the semaphore `limit`). The fields a lock
/// does not use are left out of the JSON, so an exclusive claim reads as it always has.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AcquireBody {
    /// The worker that wants the hold.
    pub holder: String,
    /// The lease's length.
    pub ttl_ms: u64,
    /// How long to wait in the queue if the hold cannot be had now (0: answer at once).
    #[serde(default)]
    pub wait_ms: u64,
    /// Where the worker runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// The client's id for this request: a retry under the same id is never executed twice.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// The holder takes its own live lease up again (same token) instead of being refused.
    #[serde(default)]
    pub readopt: bool,
    /// What the holder says about its work.
    #[serde(default, skip_serializing_if = "TaskInfo::is_empty")]
    pub task_info: TaskInfo,
    /// A shared (read) hold of the lock: held with other shared holds, never with an exclusive
    /// one. Locks only.
    #[serde(default, skip_serializing_if = "is_false")]
    pub shared: bool,
    /// The semaphore's limit: at most this many permits held at once. Semaphores only, and
    /// required there; a claim with another limit than the semaphore's is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
    /// The permits this hold takes, 1 to `limit` (default 1). Semaphores only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub permits: Option<u32>,
    /// The holder's session to take the hold in (`POST /sessions`): its lease is the session's,
    /// and `ttl_ms` is ignored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<u64>,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// `POST /locks/{name}/release`: the grant named by its holder and token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReleaseBody {
    /// The holder of the grant.
    pub holder: String,
    /// The grant's fencing token.
    pub token: u64,
    /// The client's id for this request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

/// `POST /sessions`: open a session, one lease that holds taken in it share.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionBody {
    /// Whose it is: holds in it must be this holder's.
    pub holder: String,
    /// Its lease: it ends, with its holds, this long after its last renewal.
    pub ttl_ms: u64,
    /// The client's id for this request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

/// `POST /sessions/{id}/keepalive` and `/close`: the session named by its holder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionCallBody {
    /// The session's holder.
    pub holder: String,
    /// The client's id for this request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

/// `POST /locks/{name}/renew`: the grant named by its holder and token, optionally with a new
/// lease length.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RenewBody {
    /// The holder of the grant.
    pub holder: String,
    /// The grant's fencing token.
    pub token: u64,
    /// The client's id for this request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// The lease's new length from now on; none keeps it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_ms: Option<u64>,
    /// The holder's session to move the hold into: from then on its lease is the session's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<u64>,
}

/// `POST /election/{name}/campaign`: an exclusive acquire of the election's lock that
/// publishes `value` while it leads.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CampaignBody {
    /// The candidate.
    pub holder: String,
    /// The leader's lease.
    pub ttl_ms: u64,
    /// How long to wait behind the leader and the candidates before it (0: answer at once).
    #[serde(default)]
    pub wait_ms: u64,
    /// Where the candidate runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// The client's id for this request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// What the candidate publishes once it leads (its address, say).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
}

/// `POST /barriers/{name}/arrive`: a participant arrives and waits until `count` have.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArriveBody {
    /// The participant.
    pub holder: String,
    /// How many participants open the barrier; every participant gives the same.
    pub count: u32,
    /// How long to wait for the others (0: open it only if this arrival completes it).
    #[serde(default)]
    pub wait_ms: u64,
    /// Where the participant runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// The client's id for this request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

/// The answer to a barrier arrival that opened it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct OpenedAnswer {
    /// How many participants it waited for.
    pub count: u32,
}

/// `POST /election/{name}/proclaim`: the leader, named by its holder and token, publishes a new
/// value without an election.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProclaimBody {
    /// The leader.
    pub holder: String,
    /// Its term's fencing token.
    pub token: u64,
    /// The new value.
    pub value: String,
    /// The client's id for this request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

/// `POST /locks/{name}/withdraw`: takes back an acquire its client gave up on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WithdrawBody {
    /// The worker that sent the acquire.
    pub holder: String,
    /// The request id of the acquire to take back.
    pub acquire_request_id: String,
    /// The client's id for this request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

/// The answer to an acquire, release or renewal that succeeded (200): the lease as it is now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseAnswer {
    /// The lock's name.
    pub lock: String,
    /// The request's id (the client's, or one the coordinator chose).
    pub request_id: String,
    /// The lease granted, released or renewed.
    pub holder: Holder,
    /// An acquire re-adopted the holder's own live lease (same token).
    #[serde(default)]
    pub adopted: bool,
}

/// Every error answer: a stable `code` (the constants of [`code`]), a message for people, and
/// what the code's meaning adds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// Stable: clients match on it.
    #[serde(default)]
    pub code: String,
    /// For people.
    #[serde(default)]
    pub message: String,
    /// The holder that made the request fail (`lock_held`, `wait_timed_out`, `not_holder`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub holder: Option<Holder>,
    /// How many other participants waited at the barrier (`wait_timed_out` of an arrival).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arrived: Option<u32>,
    /// How many participants the barrier waits for (`wait_timed_out` of an arrival,
    /// `count_mismatch`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u32>,
    /// The key's `mod_revision` a compare met (`compare_failed`; 0: the key does not exist).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<u64>,
    /// Which compare of a transaction failed (`compare_failed`), by its place.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compare: Option<usize>,
}

/// `GET /locks/{name}/status`: what the name is held as, by whom, and who waits.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct LockStatus {
    /// The exclusive holder's live lease; `None` when the lock is free, or held shared or as a
    /// semaphore.
    pub holder: Option<Holder>,
    /// `exclusive`, `shared` or `semaphore`.
    #[serde(default)]
    pub kind: Option<String>,
    /// The semaphore's limit.
    #[serde(default)]
    pub limit: Option<u32>,
    /// Every live hold (read it with [`LockStatus::holds`]).
    #[serde(default)]
    holders: Vec<Hold>,
    /// The first waiters.
    #[serde(default)]
    pub queue: Vec<Waiter>,
    /// How many wait in all.
    #[serde(default)]
    pub waiting: usize,
}

impl LockStatus {
    /// Every live hold: `holders`, or `holder` as the one hold where a coordinator from before
    /// shared holds lists none.
    pub fn holds(&self) -> Vec<Hold> {
        holds_or(&self.holders, &self.holder)
    }
}

/// One name of `GET /locks`: the same fields as its status.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct LockEntry {
    /// The lock's name.
    pub lock: String,
    /// The exclusive holder's live lease.
    pub holder: Option<Holder>,
    /// Every live hold, the exclusive holder's included (read it with [`LockEntry::holds`]).
    #[serde(default)]
    holders: Vec<Hold>,
}

impl LockEntry {
    /// Every live hold, as [`LockStatus::holds`].
    pub fn holds(&self) -> Vec<Hold> {
        holds_or(&self.holders, &self.holder)
    }
}

fn holds_or(holders: &[Hold], holder: &Option<Holder>) -> Vec<Hold> {
    match (holders, holder) {
        ([], Some(h)) => vec![Hold::exclusive(h.clone())],
        _ => holders.to_vec(),
    }
}

/// A page of `GET /locks?limit=N&after=NAME`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct LockPage {
    /// The locks of this page, by name.
    pub locks: Vec<LockEntry>,
    /// The `after` of the next page; `None` on the last.
    pub next: Option<String>,
}

/// `PUT /kv/{key}`: a write of the key's value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KvPutBody {
    /// The value written (any JSON), or merged into the stored one.
    pub value: Value,
    /// Compare-and-set: written only if the key's `mod_revision` is this one; 0 writes only a
    /// key that does not exist.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub if_revision: Option<u64>,
    /// How the value combines with the stored one (default `replace`).
    #[serde(default, skip_serializing_if = "is_replace")]
    pub merge: Merge,
    /// Who writes, shown in the key's watch events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub writer: Option<String>,
    /// The client's id for this request: a retry under the same id is never applied twice.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

fn is_replace(m: &Merge) -> bool {
    *m == Merge::Replace
}

/// `DELETE /kv/{key}`, its body optional.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KvDeleteBody {
    /// Deleted only if the key's `mod_revision` is this one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub if_revision: Option<u64>,
    /// Who deletes, shown in the key's watch event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub writer: Option<String>,
    /// The client's id for this request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

/// `POST /kv/txn`: compares, then writes, all or none.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KvTxnBody {
    /// What must hold of the keys first (all of it).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub compare: Vec<Compare>,
    /// The writes, in order: `{"op":"put","key","value","merge"?}` or `{"op":"delete","key"}`.
    pub ops: Vec<Op>,
    /// Who writes, shown in the keys' watch events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub writer: Option<String>,
    /// The client's id for this request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

/// The answer to a transaction whose writes were made (200).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvTxnDone {
    /// Each write's revision, in order; 0 for a delete of a key that did not exist.
    pub revisions: Vec<u64>,
    /// The store's revision after it.
    pub revision: u64,
    /// The request's id.
    pub request_id: String,
}

/// The answer to a write (200): the revision it made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvWritten {
    /// The key.
    pub key: String,
    /// The store's revision of this write: the key's `mod_revision` now.
    pub revision: u64,
    /// The number stored after a `max`, `min` or `add` merge (a counter's new count); other
    /// writes leave it out, so that a retry's remembered answer never holds a large value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<Value>,
    /// The request's id.
    pub request_id: String,
}

/// The answer to a delete (200).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvDeleted {
    /// The key.
    pub key: String,
    /// Whether the key existed (and is gone now).
    pub deleted: bool,
    /// The store's revision of the delete; the store's revision then if nothing was deleted.
    pub revision: u64,
    /// The request's id.
    pub request_id: String,
}

/// A key and its value: `GET /kv/{key}`, and each key of a listing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvEntry {
    /// The key.
    pub key: String,
    /// Its value.
    pub value: Value,
    /// The revision that created the key (since it last did not exist).
    pub create_revision: u64,
    /// The revision of its last write.
    pub mod_revision: u64,
    /// How many writes since it was created (1 after the first).
    pub version: u64,
}

/// `GET /kv/{key}` (200): the key, and the store's revision the read saw.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvRead {
    /// The key and its value.
    #[serde(flatten)]
    pub entry: KvEntry,
    /// The store's revision when it was read.
    pub revision: u64,
}

/// A page of `GET /kv?prefix=P&after=K&limit=N`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvPage {
    /// The keys of this page, in key order.
    pub keys: Vec<KvEntry>,
    /// The `after` of the next page; `None` on the last.
    pub next: Option<String>,
    /// The store's revision when it was read.
    pub revision: u64,
}

/// One item of `GET /watch` (its `data`): the same on every backend that keeps events.
pub use sentinel_core::watch::{Compacted, WatchEvent, WatchItem};

/// The stable error codes clients act on.
pub mod code {
    /// The lock is held by someone else (409).
    pub const LOCK_HELD: &str = "lock_held";
    /// The acquire waited in the queue, or the arrival at its barrier, until its `wait_ms` ran
    /// out (409).
    pub const WAIT_TIMED_OUT: &str = "wait_timed_out";
    /// The release or renewal names a grant that is not the current one (409).
    pub const NOT_HOLDER: &str = "not_holder";
    /// The acquire was withdrawn by its client (409).
    pub const WITHDRAWN: &str = "withdrawn";
    /// The name is held as another kind: a lock (exclusive or shared) against a semaphore, or
    /// the other way round (409).
    pub const KIND_CONFLICT: &str = "kind_conflict";
    /// The semaphore has another limit than the claim's; both are in the answer (409).
    pub const LIMIT_MISMATCH: &str = "limit_mismatch";
    /// A barrier arrival names another count than the participants waiting there (409).
    pub const COUNT_MISMATCH: &str = "count_mismatch";
    /// The session is not open, or is another holder's (409).
    pub const NO_SESSION: &str = "no_session";
    /// No leader is known: the cluster is electing one or has lost its majority (503).
    pub const NO_LEADER: &str = "no_leader";
    /// A key's compare-and-set found another revision; the answer's `revision` is the key's
    /// (0: it does not exist) (409).
    pub const COMPARE_FAILED: &str = "compare_failed";
    /// A merge write met a stored value it cannot combine with (a counter holding a string)
    /// (409).
    pub const MERGE_CONFLICT: &str = "merge_conflict";
    /// The key does not exist (404).
    pub const KEY_NOT_FOUND: &str = "key_not_found";
    /// The write would take the store past its size quota (`serve --kv-quota`) (429).
    pub const KV_QUOTA: &str = "kv_quota";
}
