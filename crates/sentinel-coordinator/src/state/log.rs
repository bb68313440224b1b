//! What a Raft log entry holds: the commands a leader proposes, stamped with its clock, and the
//! position of each in the log, which is the fencing token a grant by it gets.
//!
//! These types are the log's encoding. Entries already written must keep reading back on every
//! node and after every upgrade, so a change here is a change of a stored format (the golden
//! files in `testdata/` pin it).

use serde::{Deserialize, Serialize};
use serde_json::Value;

use sentinel_core::kv::{Compare, Merge, Op};
use sentinel_core::lock::TaskInfo;

pub use super::sessions::{OpenSession, SessionCall};

/// Most commands in one log entry; a position's place in its entry stays below
/// [`POSITIONS_PER_ENTRY`].
pub const MAX_BATCH: usize = 256;

/// How many positions (fencing tokens) each log index spans.
pub const POSITIONS_PER_ENTRY: u64 = 1_000;

/// The position of the `place`-th command of the entry at log `index`: the fencing token a grant
/// by that command gets.
pub fn position(index: u64, place: usize) -> u64 {
    index
        .saturating_mul(POSITIONS_PER_ENTRY)
        .saturating_add(place as u64)
}

/// The application payload of one Raft log entry: the commands the leader packed into it, in the
/// order they are applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Batch(pub Vec<Proposal>);

/// One command and the leader's time when it was proposed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proposal {
    /// The leader's wall clock when it proposed the command, in Unix milliseconds.
    pub at_ms: u64,
    /// What to do.
    pub command: Command,
}

/// A change to the lock state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Command {
    /// Take a lock, or wait for it.
    Acquire(Acquire),
    /// Give a hold back (a lock, a shared hold, semaphore permits).
    Release(Release),
    /// Extend a lease.
    Renew(Renew),
    /// Take back an acquire, whatever became of it.
    Withdraw(Withdraw),
    /// Take a shared hold on a lock or permits of a semaphore, or wait for them. A command of
    /// its own, so that the entries of exclusive acquires read and hash as they always did.
    Claim(Claim),
    /// Arrive at a barrier and wait for it to open.
    Arrive(Arrive),
    /// Open a session.
    OpenSession(OpenSession),
    /// Renew a session and every hold in it.
    KeepSession(SessionCall),
    /// Close a session, releasing every hold in it.
    CloseSession(SessionCall),
    /// Write a key's value, or merge into it ([`super::kv`]).
    KvPut(KvPut),
    /// Delete a key.
    KvDelete(KvDelete),
    /// Compare keys, then write several, all or none.
    KvTxn(KvTxn),
    /// Only time passes: the leases and waits that ended by the proposal's time end. The leader
    /// proposes one when [`super::LockState::next_event_ms`] comes, so waiters get their locks promptly.
    Tick,
}

impl Command {
    /// The bytes of the values the command carries (a key's value and key), which an entry
    /// bounds ([`MAX_ENTRY_VALUE_BYTES`]); every other command is small (its request body was at
    /// most 64 KiB, a lock's at most a few).
    pub fn value_bytes(&self) -> usize {
        match self {
            Command::KvPut(p) => p.key.len() + super::kv::json_len(&p.value) as usize,
            Command::KvTxn(t) => t
                .ops
                .iter()
                .map(|op| match op {
                    Op::Put { key, value, .. } => key.len() + super::kv::json_len(value) as usize,
                    Op::Delete { key } => key.len(),
                })
                .sum(),
            _ => 0,
        }
    }
}

/// Most bytes of values ([`Command::value_bytes`]) one entry carries: more commands wait for the
/// next entry. With [`MAX_BATCH`] other commands of at most 64 KiB each, an entry stays far
/// below what a peer accepts in one Raft request (64 MiB), so it can always be replicated.
pub const MAX_ENTRY_VALUE_BYTES: usize = 16 << 20;

/// How many of the commands whose [`Command::value_bytes`] are `weights`, from the first, go
/// into one entry: as many as fit in [`MAX_ENTRY_VALUE_BYTES`], and always the first.
pub fn fitting(weights: impl IntoIterator<Item = usize>) -> usize {
    let mut total = 0usize;
    let mut n = 0;
    for w in weights {
        total = total.saturating_add(w);
        if n > 0 && total > MAX_ENTRY_VALUE_BYTES {
            break;
        }
        n += 1;
    }
    n
}

/// Take a lock, or join its queue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Acquire {
    /// The client's id for this request: a retry with the same id gets the first answer.
    pub request_id: String,
    /// The lock's name.
    pub name: String,
    /// Who will hold the lock: the worker id.
    pub holder: String,
    /// Where the holder runs, for people reading the status.
    #[serde(default)]
    pub node: String,
    /// How long the lease lasts from its grant or last renewal, in milliseconds.
    pub ttl_ms: u64,
    /// How long to wait in the queue if the lock is held; 0 answers `Held` at once.
    #[serde(default)]
    pub wait_ms: u64,
    /// The holder may take up its own live lease again (same token, renewed). Without it, a
    /// holder acquiring its own lock is treated like anyone else: a shared default worker id must
    /// not turn into shared ownership.
    #[serde(default)]
    pub readopt: bool,
    /// What the holder works on, shown in the status.
    #[serde(default, skip_serializing_if = "TaskInfo::is_empty")]
    pub task_info: TaskInfo,
    /// The holder's session the hold is taken in: its lease is the session's
    /// ([`super::sessions`]). Absent from the encoding when `None`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<u64>,
}

/// Take a shared hold on a lock, or `permits` of the semaphore `limit`: the fields of an
/// [`Acquire`] and what kind of hold. A [`Claim`] with neither `shared` nor a `limit` is an
/// exclusive acquire.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claim {
    /// Who, which name, how long, how long to wait: as for an exclusive acquire.
    #[serde(flatten)]
    pub acquire: Acquire,
    /// A shared (read) hold: held with other shared holds, never with an exclusive one.
    #[serde(default, skip_serializing_if = "is_false")]
    pub shared: bool,
    /// A semaphore's limit: at most this many permits held at once; `None` is a lock.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
    /// The semaphore's permits this hold takes (1 for a lock).
    #[serde(default = "one")]
    pub permits: u32,
}

fn is_false(b: &bool) -> bool {
    !*b
}

fn one() -> u32 {
    1
}

/// Arrive at a barrier of `count` participants, and wait there up to `wait_ms` for the rest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Arrive {
    /// The client's id for this request (see [`Acquire::request_id`]).
    pub request_id: String,
    /// The barrier's name.
    pub name: String,
    /// Who arrives: the worker id.
    pub holder: String,
    /// Where it runs, for people reading the status.
    #[serde(default)]
    pub node: String,
    /// How many participants open the barrier; every arrival at it names the same count.
    pub count: u32,
    /// How long to wait for the others; 0 only opens a barrier this arrival completes.
    #[serde(default)]
    pub wait_ms: u64,
}

/// Give a hold back; only the lease's holder with the lease's token may.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Release {
    /// The client's id for this request (see [`Acquire::request_id`]).
    pub request_id: String,
    /// The lock's name.
    pub name: String,
    /// The worker id the lease was granted to.
    pub holder: String,
    /// The lease's fencing token: a holder of an older lease of the same lock cannot release a
    /// newer one.
    pub token: u64,
}

/// Extend a lease by its TTL from now; only the lease's holder with the lease's token may.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Renew {
    /// The client's id for this request (see [`Acquire::request_id`]).
    pub request_id: String,
    /// The lock's name.
    pub name: String,
    /// The worker id the lease was granted to.
    pub holder: String,
    /// The lease's fencing token.
    pub token: u64,
    /// A new TTL for the lease, in milliseconds, from this renewal on; `None` keeps its TTL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_ms: Option<u64>,
    /// A new value the holder publishes with its hold (an election leader's proclamation);
    /// `None` keeps it. Absent from the encoding then, so older entries read as they were.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// The holder's session the hold moves into, out of any other: from then on its lease is
    /// the session's ([`super::sessions`]). Absent from the encoding when `None`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<u64>,
}

/// Take back an acquire the client gave up on (an interrupted claim): a waiting acquire leaves
/// the queue, a lease it was granted is released, and one that has not arrived yet is never
/// executed. Only the acquire's holder may.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Withdraw {
    /// The client's id for this request (see [`Acquire::request_id`]).
    pub request_id: String,
    /// The lock's name.
    pub name: String,
    /// The acquire's holder.
    pub holder: String,
    /// The request id of the acquire to take back.
    pub acquire_id: String,
}

/// Write a key's value: compared, merged, and counted against the quota the leader gives.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvPut {
    /// The client's id for this request (see [`Acquire::request_id`]).
    pub request_id: String,
    /// The key.
    pub key: String,
    /// The value written, or merged into the stored one.
    pub value: Value,
    /// Written only if the key's `mod_revision` is this (0: only if it does not exist).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub if_revision: Option<u64>,
    /// How the value combines with the stored one.
    #[serde(default, skip_serializing_if = "is_replace")]
    pub merge: Merge,
    /// Who writes (the worker id its client gave), for the watch stream.
    #[serde(default)]
    pub writer: String,
    /// The leader's size quota of the store when it proposed the write: in the command, so
    /// that every node applies the write alike whatever its own setting.
    pub quota: u64,
}

fn is_replace(m: &Merge) -> bool {
    *m == Merge::Replace
}

/// Delete a key, if its `mod_revision` is `if_revision` when given.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvDelete {
    /// The client's id for this request (see [`Acquire::request_id`]).
    pub request_id: String,
    /// The key.
    pub key: String,
    /// Deleted only if the key's `mod_revision` is this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub if_revision: Option<u64>,
    /// Who deletes.
    #[serde(default)]
    pub writer: String,
}

/// Compare keys, then write several: the writes happen, in order and with consecutive
/// revisions, only if every compare holds and every write can be made (as etcd's Txn).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvTxn {
    /// The client's id for this request (see [`Acquire::request_id`]).
    pub request_id: String,
    /// What must hold first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub compare: Vec<Compare>,
    /// The writes.
    pub ops: Vec<Op>,
    /// Who writes.
    #[serde(default)]
    pub writer: String,
    /// The leader's quota (see [`KvPut::quota`]).
    pub quota: u64,
}
