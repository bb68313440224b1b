//! What the state answers: to each request, and to the waiting requests a command settled.
//!
//! Answers are part of the stored formats too: a remembered answer is in every snapshot, so that a
//! retry after a restart or a change of leader gets the answer its first try got.

use serde::{Deserialize, Serialize};

use sentinel_core::table::LockRecord;

use super::Kind;

/// What a limit refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Limit {
    /// [`super::MAX_HELD_LOCKS`] locks are held.
    HeldLocks,
    /// [`super::MAX_WAITERS`] acquires are waiting.
    Waiters,
    /// A claim's permits are outside 1 to its limit, its limit outside 1 to
    /// [`super::MAX_LIMIT`], or it asks for a shared hold on a semaphore.
    Permits,
    /// A barrier's count is outside 1 to [`super::MAX_COUNT`].
    Count,
    /// [`super::MAX_SESSIONS`] sessions are open.
    Sessions,
    /// The key-value store would grow past its quota ([`super::kv`]).
    KvQuota,
}

/// The answer to one request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Answer {
    /// The requester holds the lock: a new lease, or (`adopted`) its own lease taken up again.
    Granted {
        /// The requester's lease.
        lease: LockRecord,
        /// The requester's own live lease taken up again (same token) rather than a new grant.
        adopted: bool,
    },
    /// Acquire without waiting: someone else holds the lock.
    Held {
        /// The lease that holds it.
        holder: LockRecord,
    },
    /// Acquire with waiting: in the queue at `position` (1 is next). The request is settled later,
    /// as `Granted` or `TimedOut`.
    Queued {
        /// Place in the lock's queue; 1 is next.
        position: usize,
    },
    /// The wait ran out before the lock was handed over; `holder` held it then.
    TimedOut {
        /// The lease that held the lock when the wait ended.
        holder: LockRecord,
    },
    /// The lease was given back; the next waiter, if any, holds the lock now.
    Released {
        /// The lease as it was when released.
        lease: LockRecord,
    },
    /// The lease runs its TTL again from the command's time.
    Renewed {
        /// The renewed lease.
        lease: LockRecord,
    },
    /// Release or renew of a lease the requester does not hold (someone else's, another token,
    /// expired, released); `holder` is the lock's current lease, if any.
    NotHolder {
        /// The lock's current lease, if it is held.
        holder: Option<LockRecord>,
    },
    /// A limit of the coordinator refused the request; nothing changed.
    Refused {
        /// Which limit.
        limit: Limit,
    },
    /// A claim of another kind than the name is held as (an exclusive or shared lock against a
    /// semaphore, either way); nothing changed. Not queued: a name is one kind at a time.
    OtherKind {
        /// What the name is held as.
        kind: Kind,
        /// The semaphore's limit, if it is one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        limit: Option<u32>,
    },
    /// A semaphore claim whose limit is not the semaphore's; nothing changed.
    LimitMismatch {
        /// The semaphore's limit.
        limit: u32,
    },
    /// A barrier arrival whose count is not the one the participants waiting there gave;
    /// nothing changed.
    CountMismatch {
        /// The count of the barrier's waiting participants.
        count: u32,
    },
    /// The barrier opened: `count` participants arrived, this one among them.
    Opened {
        /// How many participants it waited for.
        count: u32,
    },
    /// A barrier arrival that left without the barrier opening (its wait ran out, or it had
    /// none): `arrived` others were waiting then, of `count`.
    NotOpened {
        /// How many other participants were waiting at the barrier.
        arrived: u32,
        /// How many participants open it.
        count: u32,
    },
    /// A session is open (or was renewed) until `expires_at_ms`.
    Session {
        /// Its id.
        session: u64,
        /// Its last live instant, unless renewed.
        expires_at_ms: u64,
    },
    /// The session named is not open (never was, ended, closed) or is another holder's; nothing
    /// changed.
    NoSession,
    /// The session was closed, and these holds of it released.
    SessionClosed {
        /// Its id.
        session: u64,
        /// The holds released, with their locks.
        released: Vec<(String, LockRecord)>,
    },
    /// The request id was first used for another request (another kind, lock or holder).
    RequestIdReused,
    /// A key was written at `revision` (its `mod_revision` now); `value` is the number a
    /// `max`, `min` or `add` merge stored.
    KvWritten {
        /// The write's revision.
        revision: u64,
        /// A counter's new value.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        value: Option<serde_json::Value>,
    },
    /// A key was deleted at `revision`; `None` when it did not exist (nothing changed).
    KvDeleted {
        /// The delete's revision.
        revision: Option<u64>,
    },
    /// A compare-and-set found the key at another revision (0: it does not exist); nothing
    /// changed.
    CompareFailed {
        /// The key's `mod_revision`.
        revision: u64,
    },
    /// A transaction's writes were made; each one's revision, 0 for a delete of a key that
    /// did not exist.
    TxnDone {
        /// Per write, in order.
        revisions: Vec<u64>,
    },
    /// A transaction's compare `compare` (its place) did not hold; nothing changed.
    TxnFailed {
        /// Which compare.
        compare: usize,
        /// Its key's `mod_revision` (0: it does not exist).
        revision: u64,
    },
    /// A merge write met a stored value it cannot combine with, or would make one too large;
    /// nothing changed.
    MergeConflict {
        /// Why, for people.
        why: String,
    },
    /// The answer to a [`super::Command::Withdraw`], and to the acquire it took back: that acquire
    /// holds nothing now; `lease` is the lease it had been granted and that was released.
    Withdrawn {
        /// The released lease, if the acquire had been granted one that was still live.
        lease: Option<LockRecord>,
    },
}

/// A waiting request that got its final answer while another command was applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Settled {
    /// The waiting request's id.
    pub request_id: String,
    /// The lock or barrier it waited for.
    pub name: String,
    /// `Granted` or `TimedOut` (an acquire), `Opened` or `NotOpened` (a barrier arrival), or
    /// `Withdrawn`.
    #[serde(rename = "outcome")]
    pub answer: Answer,
}

/// What applying one command did.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Applied {
    /// The answer to the command's request; `None` for a [`super::Command::Tick`].
    pub answer: Option<Answer>,
    /// Waiting requests settled by this command, in the order they were settled.
    pub settled: Vec<Settled>,
    /// What happened to holds and queues, numbered: the leases that ended before the command,
    /// then its effects.
    pub events: Vec<super::Event>,
}
