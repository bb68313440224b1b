//! The seam between what a command wants and where locks live.
//!
//! [`LockBackend`] is the one trait every backend implements: it parses and validates its own lock
//! ids and takes the same request types ([`crate::lock`]) for every operation, so the strategy
//! loop, the heartbeat sidecar, `run` and the commands are written once. Each backend is a crate
//! of its own that depends on this one; the CLI picks one at run time through its own dispatcher
//! (the trait's `async fn`s are not object-safe), so nothing here names a backend.

use std::future::Future;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::barrier::{ArriveRequest, Arrived};
use crate::error::{Error, Result};
use crate::lock::Claimed;
use crate::lock::{
    AcquireRequest, Attempt, Holder, ListRequest, LockId, NextRequest, ReleaseRequest,
    ReleaseStaleRequest, Released, RenewRequest, StaleRelease,
};

/// A comment that looks like a lock but does not count.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Ignored {
    /// The comment's id.
    pub comment_id: u64,
    /// The comment author's login.
    pub author: String,
    /// Why it does not count (an untrusted author, a malformed lock), for people.
    pub reason: String,
}

/// The issue as `status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct IssueInfo {
    /// The issue number (`#12`).
    pub number: u64,
    /// The issue title.
    pub title: String,
    /// `open` or `closed`; a closed issue cannot be claimed.
    pub state: String,
    /// GitHub's conversation lock: only collaborators may comment, so others cannot claim.
    pub locked: bool,
    /// The issue's web page.
    pub html_url: String,
    /// Logins assigned. Cosmetic: the lock comment, not the assignment, says who holds it.
    pub assignees: Vec<String>,
}

/// What `status` reports for one issue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct IssueStatus {
    /// The issue itself.
    pub issue: IssueInfo,
    /// The holder by [`resolve`]'s rule, stale ones included; `None` when free.
    pub holder: Option<Holder>,
    /// Comments that look like locks but do not count.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ignored: Vec<Ignored>,
}

/// One hold of a name that may have several: a shared lock's readers, a semaphore's permits.
/// The coordinator's API lists holds in this shape too.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hold {
    /// The hold's lease and fencing token, as a lock's holder.
    #[serde(flatten)]
    pub holder: Holder,
    /// The semaphore permits it takes (1 for a lock).
    #[serde(default = "one")]
    pub permits: u32,
    /// A shared (read) hold.
    #[serde(default)]
    pub shared: bool,
}

impl Hold {
    /// A lock's holder as a hold: one permit, not shared.
    pub fn exclusive(holder: Holder) -> Hold {
        Hold {
            holder,
            permits: 1,
            shared: false,
        }
    }
}

fn one() -> u32 {
    1
}

/// A claim waiting in a backend's queue (the coordinator's), first come first served. Read from
/// the coordinator's API, whose waiters name their worker `holder` and its machine `node`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Waiter {
    /// Who waits.
    #[serde(alias = "holder")]
    pub worker_id: String,
    /// Where it runs.
    #[serde(default, alias = "node")]
    pub node_id: String,
    /// Since when, on the backend's clock.
    pub since: DateTime<Utc>,
    /// The permits it asks for (1 for a lock).
    #[serde(default = "one")]
    pub permits: u32,
    /// It asks for a shared hold.
    #[serde(default)]
    pub shared: bool,
}

/// Every hold of a name and who waits for it, from a backend that keeps several holds per name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Holds {
    /// The name as given.
    pub name: String,
    /// `exclusive`, `shared` or `semaphore`: what the name is held as now (a free name reads as
    /// what was asked about).
    pub kind: &'static str,
    /// The semaphore's limit; `None` for a lock.
    pub limit: Option<u32>,
    /// Every live hold, oldest first.
    pub holders: Vec<Hold>,
    /// The first waiters, in their order.
    pub queue: Vec<Waiter>,
    /// How many wait in all (the queue shows only the first ones).
    pub waiting: usize,
}

/// What `status LOCK` reports.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum Status {
    /// A GitHub issue: the issue (title, state, assignees) as well as the lock, and the lock-like
    /// comments that do not count. The shape lives here, not in the GitHub backend, so that
    /// callers can render it without depending on that backend.
    Issue(IssueStatus),
    /// A named lock (local, server, Redis, PostgreSQL).
    Named {
        /// The lock's name as given.
        name: String,
        /// The holder, `None` when the lock is free. A stale holder is reported (marked stale)
        /// by the backends that keep expired leases; in Redis an expired lease is gone.
        holder: Option<Holder>,
    },
    /// A name of a backend that keeps several holds per name (the coordinator, local, Redis,
    /// PostgreSQL): its kind, every hold and the queue (on the polling backends: the reservation).
    Holds(Holds),
}

impl Status {
    /// The exclusive holder whichever backend answered; `None` when the lock is free or held
    /// shared or as a semaphore.
    pub fn holder(&self) -> Option<&Holder> {
        match self {
            Status::Issue(s) => s.holder.as_ref(),
            Status::Named { holder, .. } => holder.as_ref(),
            Status::Holds(h) => match (h.kind, &h.holders[..]) {
                ("exclusive", [one]) => Some(&one.holder),
                _ => None,
            },
        }
    }

    /// `exclusive`, `shared` or `semaphore`: what the name is held as (a lock, for the backends
    /// that hold nothing else).
    pub fn kind(&self) -> &'static str {
        match self {
            Status::Holds(h) => h.kind,
            _ => "exclusive",
        }
    }

    /// A semaphore's limit.
    pub fn limit(&self) -> Option<u32> {
        match self {
            Status::Holds(h) => h.limit,
            _ => None,
        }
    }

    /// The first waiters and how many wait in all, for a backend that queues them.
    pub fn queue(&self) -> (&[Waiter], usize) {
        match self {
            Status::Holds(h) => (&h.queue, h.waiting),
            _ => (&[], 0),
        }
    }

    /// Every hold: the holder of a lock (1 permit, not shared), or a group's holds.
    pub fn holds(&self) -> Vec<Hold> {
        match self {
            Status::Holds(h) => h.holders.clone(),
            _ => self
                .holder()
                .map(|h| Hold::exclusive(h.clone()))
                .into_iter()
                .collect(),
        }
    }
}

/// What renewing costs a backend that limits requests (GitHub), as its last answer told it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// Requests left in the current window; everything using the same identity spends them.
    pub remaining: u64,
    /// How long until the window starts afresh.
    pub resets_in: Duration,
    /// Renewals one identity may make in an hour whatever `remaining` says (GitHub's secondary
    /// limit on content-generating requests), if the backend has such a cap.
    pub writes_per_hour: Option<u64>,
}

/// A place where locks live. Every operation is one attempt: waiting and retrying belong to
/// [`crate::strategy`], renewing on a schedule to [`crate::keepalive`].
pub trait LockBackend: Send + Sync {
    /// `local`, `github`, …: the `backend` field of JSON output and the metrics label.
    fn name(&self) -> &'static str;

    /// Parses a lock argument as this backend names locks, refusing what it cannot lock.
    fn parse_lock(&self, raw: &str) -> Result<LockId>;

    /// Where the lock lives, for messages: `owner/repo#12`, or the lock name.
    fn describe(&self, lock: &LockId) -> String {
        lock.to_string()
    }

    /// Whether the backend queues waiters itself ([`AcquireRequest::wait`]): the strategy loop
    /// then turns `--strategy retry` into one attempt that waits on the backend, first come
    /// first served, instead of polling.
    fn waits_server_side(&self) -> bool {
        false
    }

    /// Whether the backend keeps several holds per name: shared holds and semaphores
    /// ([`HoldKind`](crate::lock::HoldKind)). The others refuse every claim but an exclusive one.
    fn holds_groups(&self) -> bool {
        false
    }

    /// One acquisition attempt: a grant (new, re-adopted or taken over), or the current holder.
    fn try_acquire(&self, req: &AcquireRequest) -> impl Future<Output = Result<Attempt>> + Send;

    /// Releases a lock; releasing a free lock succeeds with `was_held: false`.
    fn release(&self, req: &ReleaseRequest) -> impl Future<Output = Result<Released>> + Send;

    /// Renews our lease. Every way of not holding the lock any more is [`Error::NotOwner`].
    fn renew(&self, req: &RenewRequest) -> impl Future<Output = Result<Holder>> + Send;

    /// Who holds one lock.
    fn status(&self, lock: &LockId) -> impl Future<Output = Result<Status>> + Send;

    /// The request budget renewals draw on, for backends that have one; the keepalive spaces its
    /// renewals out when it runs low.
    fn renew_budget(&self) -> Option<Budget> {
        None
    }

    /// Every held lock (stale ones included), by display name.
    fn list(&self, req: &ListRequest)
    -> impl Future<Output = Result<Vec<(String, Holder)>>> + Send;

    /// Releases the lock only if its holder is stale on the backend's clock, as one decision: a
    /// holder that renews while the janitor looks keeps its lock.
    fn release_stale(
        &self,
        req: &ReleaseStaleRequest,
    ) -> impl Future<Output = Result<StaleRelease>> + Send;

    /// One arrival at a barrier ([`crate::barrier`]): waits up to `req.wait` (or less, the
    /// backend's longest wait) for the barrier to open. A backend without barriers refuses with
    /// a usage error naming those that have them.
    fn arrive(&self, _req: &ArriveRequest) -> impl Future<Output = Result<Arrived>> + Send {
        let backend = self.name();
        async move {
            Err(Error::usage(format!(
                "barriers need the coordinator (--server) or the local backend; the {backend} \
                 backend has none"
            )))
        }
    }

    /// The work queue: claims the oldest free lock of the backend's backlog (GitHub: the oldest
    /// open issue with the labels and no lock) and says which. [`Error::Conflict`] when none is
    /// free; a backend without a backlog refuses with a usage error.
    fn claim_next(
        &self,
        _req: &NextRequest,
    ) -> impl Future<Output = Result<(LockId, Claimed)>> + Send {
        let backend = self.name();
        async move {
            Err(Error::usage(format!(
                "claim --next takes the next open issue of a GitHub repository; the {backend} \
                 backend has no queue of work: name the lock (`sentinel claim NAME`)"
            )))
        }
    }
}

/// The error for a lock id another backend parsed: a programming error, never user input.
pub fn foreign(lock: &LockId, backend: &str) -> Error {
    Error::Unexpected(format!(
        "internal error: lock {lock} was not parsed by the {backend} backend"
    ))
}
