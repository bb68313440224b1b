//! The seam between what a command wants and where locks live.
//!
//! [`LockBackend`] is the one trait every backend implements: it parses and validates its own lock
//! ids and takes the same request types ([`crate::lock`]) for every operation, so the strategy
//! loop, the heartbeat sidecar, `run` and the commands are written once. [`Backend`] is only the
//! thin dispatcher the CLI holds (the trait's `async fn`s are not object-safe); a new backend is
//! one module plus one arm per method here.

use std::future::Future;
use std::time::Duration;

use serde::Serialize;

use crate::error::{Error, Result};
use crate::github::{GithubBackend, IssueStatus};
use crate::local::LocalBackend;
use crate::lock::{
    AcquireRequest, Attempt, Holder, ListRequest, LockId, NextRequest, ReleaseRequest,
    ReleaseStaleRequest, Released, RenewRequest, StaleRelease,
};
use crate::postgres_backend::PostgresBackend;
use crate::redis_backend::RedisBackend;
use crate::server_backend::ServerBackend;
use crate::strategy::Outcome;

/// What `status LOCK` reports.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum Status {
    /// A GitHub issue: the issue (title, state, assignees) as well as the lock, and the lock-like
    /// comments that do not count.
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
    ) -> impl Future<Output = Result<(LockId, Outcome)>> + Send {
        let backend = self.name();
        async move {
            Err(Error::usage(format!(
                "claim --next takes the next open issue of a GitHub repository; the {backend} \
                 backend has no queue of work: name the lock (`sentinel claim NAME`)"
            )))
        }
    }
}

/// The backend the CLI was configured with: one [`LockBackend`] chosen at run time, forwarding
/// every call to it.
pub enum Backend {
    /// Locks on this host ([`LocalBackend`]).
    Local(LocalBackend),
    /// Locks on GitHub issues ([`GithubBackend`]), boxed to keep the enum small.
    Github(Box<GithubBackend>),
    /// A `sentinel serve` cluster ([`ServerBackend`]).
    Server(ServerBackend),
    /// Named locks in Redis ([`RedisBackend`]).
    Redis(RedisBackend),
    /// Named locks in PostgreSQL ([`PostgresBackend`]).
    Postgres(PostgresBackend),
}

impl LockBackend for Backend {
    fn name(&self) -> &'static str {
        match self {
            Backend::Local(b) => b.name(),
            Backend::Github(b) => b.name(),
            Backend::Server(b) => b.name(),
            Backend::Redis(b) => b.name(),
            Backend::Postgres(b) => b.name(),
        }
    }

    fn parse_lock(&self, raw: &str) -> Result<LockId> {
        match self {
            Backend::Local(b) => b.parse_lock(raw),
            Backend::Github(b) => b.parse_lock(raw),
            Backend::Server(b) => b.parse_lock(raw),
            Backend::Redis(b) => b.parse_lock(raw),
            Backend::Postgres(b) => b.parse_lock(raw),
        }
    }

    fn waits_server_side(&self) -> bool {
        match self {
            Backend::Local(b) => b.waits_server_side(),
            Backend::Github(b) => b.waits_server_side(),
            Backend::Server(b) => b.waits_server_side(),
            Backend::Redis(b) => b.waits_server_side(),
            Backend::Postgres(b) => b.waits_server_side(),
        }
    }

    fn describe(&self, lock: &LockId) -> String {
        match self {
            Backend::Local(b) => b.describe(lock),
            Backend::Github(b) => b.describe(lock),
            Backend::Server(b) => b.describe(lock),
            Backend::Redis(b) => b.describe(lock),
            Backend::Postgres(b) => b.describe(lock),
        }
    }

    async fn try_acquire(&self, req: &AcquireRequest) -> Result<Attempt> {
        match self {
            Backend::Local(b) => b.try_acquire(req).await,
            Backend::Github(b) => b.try_acquire(req).await,
            Backend::Server(b) => b.try_acquire(req).await,
            Backend::Redis(b) => b.try_acquire(req).await,
            Backend::Postgres(b) => b.try_acquire(req).await,
        }
    }

    async fn release(&self, req: &ReleaseRequest) -> Result<Released> {
        match self {
            Backend::Local(b) => b.release(req).await,
            Backend::Github(b) => b.release(req).await,
            Backend::Server(b) => b.release(req).await,
            Backend::Redis(b) => b.release(req).await,
            Backend::Postgres(b) => b.release(req).await,
        }
    }

    async fn renew(&self, req: &RenewRequest) -> Result<Holder> {
        match self {
            Backend::Local(b) => b.renew(req).await,
            Backend::Github(b) => b.renew(req).await,
            Backend::Server(b) => b.renew(req).await,
            Backend::Redis(b) => b.renew(req).await,
            Backend::Postgres(b) => b.renew(req).await,
        }
    }

    async fn status(&self, lock: &LockId) -> Result<Status> {
        match self {
            Backend::Local(b) => b.status(lock).await,
            Backend::Github(b) => b.status(lock).await,
            Backend::Server(b) => b.status(lock).await,
            Backend::Redis(b) => b.status(lock).await,
            Backend::Postgres(b) => b.status(lock).await,
        }
    }

    async fn list(&self, req: &ListRequest) -> Result<Vec<(String, Holder)>> {
        match self {
            Backend::Local(b) => b.list(req).await,
            Backend::Github(b) => b.list(req).await,
            Backend::Server(b) => b.list(req).await,
            Backend::Redis(b) => b.list(req).await,
            Backend::Postgres(b) => b.list(req).await,
        }
    }

    fn renew_budget(&self) -> Option<Budget> {
        match self {
            Backend::Local(b) => b.renew_budget(),
            Backend::Github(b) => b.renew_budget(),
            Backend::Server(b) => b.renew_budget(),
            Backend::Redis(b) => b.renew_budget(),
            Backend::Postgres(b) => b.renew_budget(),
        }
    }

    async fn release_stale(&self, req: &ReleaseStaleRequest) -> Result<StaleRelease> {
        match self {
            Backend::Local(b) => b.release_stale(req).await,
            Backend::Github(b) => b.release_stale(req).await,
            Backend::Server(b) => b.release_stale(req).await,
            Backend::Redis(b) => b.release_stale(req).await,
            Backend::Postgres(b) => b.release_stale(req).await,
        }
    }

    async fn claim_next(&self, req: &NextRequest) -> Result<(LockId, Outcome)> {
        match self {
            Backend::Local(b) => b.claim_next(req).await,
            Backend::Github(b) => b.claim_next(req).await,
            Backend::Server(b) => b.claim_next(req).await,
            Backend::Redis(b) => b.claim_next(req).await,
            Backend::Postgres(b) => b.claim_next(req).await,
        }
    }
}

/// The error for a lock id another backend parsed: a programming error, never user input.
pub(crate) fn foreign(lock: &LockId, backend: &str) -> Error {
    Error::Unexpected(format!(
        "internal error: lock {lock} was not parsed by the {backend} backend"
    ))
}
