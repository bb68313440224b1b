//! The seam between what a command wants and where locks live.
//!
//! [`LockBackend`] is the one trait every backend implements: it parses and validates its own lock
//! ids and takes the same request types ([`crate::lock`]) for every operation, so the strategy
//! loop, the heartbeat sidecar, `run` and the commands are written once. Each backend is a crate
//! of its own that depends on this one; the CLI picks one at run time through its own dispatcher
//! (the trait's `async fn`s are not object-safe), so nothing here names a backend.

use std::future::Future;
use std::time::Duration;

use serde::Serialize;

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
}

impl Status {
    /// The holder whichever backend answered; `None` when the lock is free.
    pub fn holder(&self) -> Option<&Holder> {
        match self {
            Status::Issue(s) => s.holder.as_ref(),
            Status::Named { holder, .. } => holder.as_ref(),
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
