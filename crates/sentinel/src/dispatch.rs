//! One [`LockBackend`] chosen at run time, over the backends this build was compiled with.
//!
//! The trait's `async fn`s are not object-safe, so the choice is an enum that forwards every call.
//! It lives in the facade, not beside the trait, so that the core names no backend and a library
//! user compiles only the backends whose features they enable. A new backend is one variant and
//! one arm of `each!`.

use sentinel_core::backend::{Budget, LockBackend, Status};
use sentinel_core::barrier::{ArriveRequest, Arrived};
use sentinel_core::diagnose::Check;
use sentinel_core::error::Result;
use sentinel_core::lock::Claimed;
use sentinel_core::lock::{
    AcquireRequest, Attempt, Holder, ListRequest, LockId, NextRequest, ReleaseRequest,
    ReleaseStaleRequest, Released, RenewRequest, StaleRelease,
};

/// One [`LockBackend`] chosen at run time, forwarding every call to it.
pub enum Backend {
    /// Locks on this host ([`LocalBackend`](crate::local::LocalBackend)).
    #[cfg(feature = "local")]
    Local(crate::local::LocalBackend),
    /// Locks on GitHub issues ([`GithubBackend`](crate::github::GithubBackend)), boxed to keep
    /// the enum small.
    #[cfg(feature = "github")]
    Github(Box<crate::github::GithubBackend>),
    /// A `sentinel serve` cluster ([`ServerBackend`](crate::server::ServerBackend)).
    #[cfg(feature = "server")]
    Server(crate::server::ServerBackend),
    /// Named locks in Redis ([`RedisBackend`](crate::redis::RedisBackend)).
    #[cfg(feature = "redis")]
    Redis(crate::redis::RedisBackend),
    /// Named locks in PostgreSQL ([`PostgresBackend`](crate::postgres::PostgresBackend)).
    #[cfg(feature = "postgres")]
    Postgres(crate::postgres::PostgresBackend),
    /// Named locks in etcd ([`EtcdBackend`](crate::etcd::EtcdBackend)).
    #[cfg(feature = "etcd")]
    Etcd(crate::etcd::EtcdBackend),
}

/// Evaluates `$e` with `$b` bound to whichever backend `$self` holds.
macro_rules! each {
    ($self:expr, $b:ident => $e:expr) => {
        match $self {
            #[cfg(feature = "local")]
            Backend::Local($b) => $e,
            #[cfg(feature = "github")]
            Backend::Github($b) => $e,
            #[cfg(feature = "server")]
            Backend::Server($b) => $e,
            #[cfg(feature = "redis")]
            Backend::Redis($b) => $e,
            #[cfg(feature = "postgres")]
            Backend::Postgres($b) => $e,
            #[cfg(feature = "etcd")]
            Backend::Etcd($b) => $e,
        }
    };
}

impl LockBackend for Backend {
    fn name(&self) -> &'static str {
        each!(self, b => b.name())
    }

    fn parse_lock(&self, raw: &str) -> Result<LockId> {
        each!(self, b => b.parse_lock(raw))
    }

    fn waits_server_side(&self) -> bool {
        each!(self, b => b.waits_server_side())
    }

    fn holds_groups(&self) -> bool {
        each!(self, b => b.holds_groups())
    }

    fn describe(&self, lock: &LockId) -> String {
        each!(self, b => b.describe(lock))
    }

    async fn try_acquire(&self, req: &AcquireRequest) -> Result<Attempt> {
        each!(self, b => b.try_acquire(req).await)
    }

    async fn release(&self, req: &ReleaseRequest) -> Result<Released> {
        each!(self, b => b.release(req).await)
    }

    async fn renew(&self, req: &RenewRequest) -> Result<Holder> {
        each!(self, b => b.renew(req).await)
    }

    async fn status(&self, lock: &LockId) -> Result<Status> {
        each!(self, b => b.status(lock).await)
    }

    async fn list(&self, req: &ListRequest) -> Result<Vec<(String, Holder)>> {
        each!(self, b => b.list(req).await)
    }

    fn renew_budget(&self) -> Option<Budget> {
        each!(self, b => b.renew_budget())
    }

    async fn release_stale(&self, req: &ReleaseStaleRequest) -> Result<StaleRelease> {
        each!(self, b => b.release_stale(req).await)
    }

    async fn claim_next(&self, req: &NextRequest) -> Result<(LockId, Claimed)> {
        each!(self, b => b.claim_next(req).await)
    }

    async fn arrive(&self, req: &ArriveRequest) -> Result<Arrived> {
        each!(self, b => b.arrive(req).await)
    }
}

impl Backend {
    /// What `sentinel doctor` finds of this backend: each one's own `diagnose`, which looks at
    /// what its operations depend on without taking or changing a lock.
    pub async fn diagnose(&self) -> Vec<Check> {
        each!(self, b => b.diagnose().await)
    }
}
