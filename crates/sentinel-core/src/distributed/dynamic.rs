//! The dyn-compatible form of the library API, for a service that chooses its locks at run time
//! behind one type: `Arc<dyn DynDistributedLock>`.
//!
//! [`DistributedLock`] returns unboxed futures and its guards name their backend, which makes
//! `dyn DistributedLock` impossible. [`DynDistributedLock`] is the same API with boxed futures and
//! one guard type, [`DynLockGuard`] (a [`LockGuard`] over [`DynBackend`], which erases the
//! backend the same way). Every `DistributedLock` is a `DynDistributedLock`, and
//! `Arc<dyn DynDistributedLock>` is a `DistributedLock` again, so [`LeaderElection`] and
//! [`acquire_all`] take it as they take any other.
//!
//! [`LeaderElection`]: super::LeaderElection
//! [`acquire_all`]: super::acquire_all

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use super::{DistributedLock, LockGuard};
use crate::backend::{Budget, LockBackend, Status};
use crate::barrier::{ArriveRequest, Arrived};
use crate::error::Result;
use crate::lock::{
    AcquireRequest, Attempt, Claimed, Holder, ListRequest, LockId, NextRequest, ReleaseRequest,
    ReleaseStaleRequest, Released, RenewRequest, StaleRelease,
};

type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A guard whatever its backend: what [`DynDistributedLock`] hands out.
pub type DynLockGuard = LockGuard<DynBackend>;

/// [`DistributedLock`] as a trait object: the same methods, with boxed futures and
/// [`DynLockGuard`]s, under names of their own (`acquire_boxed`, …) so that a type implementing
/// both traits has no ambiguous method. Implemented by every [`DistributedLock`]; hold it as
/// `Arc<dyn DynDistributedLock>`, which is a `DistributedLock` again, and call the usual names.
pub trait DynDistributedLock: Send + Sync {
    /// [`DistributedLock::acquire`].
    fn acquire_boxed<'a>(
        &'a self,
        resource: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<DynLockGuard>>;

    /// [`DistributedLock::try_acquire`].
    fn try_acquire_boxed<'a>(
        &'a self,
        resource: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<Option<DynLockGuard>>>;

    /// [`DistributedLock::release`].
    fn release_boxed(&self, guard: DynLockGuard) -> BoxFuture<'_, Result<bool>>;

    /// [`DistributedLock::is_locked`].
    fn is_locked_boxed<'a>(&'a self, resource: &'a str) -> BoxFuture<'a, Result<bool>>;

    /// [`DistributedLock::extend`].
    fn extend_boxed<'a>(
        &'a self,
        guard: &'a mut DynLockGuard,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<()>>;

    /// [`DistributedLock::lock_info`].
    fn lock_info_boxed<'a>(&'a self, resource: &'a str) -> BoxFuture<'a, Result<Option<Holder>>>;
}

impl<L: DistributedLock> DynDistributedLock for L {
    fn acquire_boxed<'a>(
        &'a self,
        resource: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<DynLockGuard>> {
        Box::pin(async move { Ok(DistributedLock::acquire(self, resource, ttl).await?.erase()) })
    }

    fn try_acquire_boxed<'a>(
        &'a self,
        resource: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<Option<DynLockGuard>>> {
        Box::pin(async move {
            Ok(DistributedLock::try_acquire(self, resource, ttl)
                .await?
                .map(LockGuard::erase))
        })
    }

    fn release_boxed(&self, guard: DynLockGuard) -> BoxFuture<'_, Result<bool>> {
        Box::pin(guard.release())
    }

    fn is_locked_boxed<'a>(&'a self, resource: &'a str) -> BoxFuture<'a, Result<bool>> {
        Box::pin(DistributedLock::is_locked(self, resource))
    }

    fn extend_boxed<'a>(
        &'a self,
        guard: &'a mut DynLockGuard,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(guard.extend(ttl))
    }

    fn lock_info_boxed<'a>(&'a self, resource: &'a str) -> BoxFuture<'a, Result<Option<Holder>>> {
        Box::pin(DistributedLock::lock_info(self, resource))
    }
}

impl DistributedLock for Arc<dyn DynDistributedLock> {
    type Backend = DynBackend;

    async fn acquire(&self, resource: &str, ttl: Duration) -> Result<DynLockGuard> {
        self.as_ref().acquire_boxed(resource, ttl).await
    }

    async fn try_acquire(&self, resource: &str, ttl: Duration) -> Result<Option<DynLockGuard>> {
        self.as_ref().try_acquire_boxed(resource, ttl).await
    }

    async fn release(&self, guard: DynLockGuard) -> Result<bool> {
        self.as_ref().release_boxed(guard).await
    }

    async fn is_locked(&self, resource: &str) -> Result<bool> {
        self.as_ref().is_locked_boxed(resource).await
    }

    async fn extend(&self, guard: &mut DynLockGuard, ttl: Duration) -> Result<()> {
        self.as_ref().extend_boxed(guard, ttl).await
    }

    async fn lock_info(&self, resource: &str) -> Result<Option<Holder>> {
        self.as_ref().lock_info_boxed(resource).await
    }
}

/// [`LockBackend`] with boxed futures, so that backends can hide behind one pointer.
trait ObjectBackend: Send + Sync {
    fn name(&self) -> &'static str;
    fn parse_lock(&self, raw: &str) -> Result<LockId>;
    fn describe(&self, lock: &LockId) -> String;
    fn waits_server_side(&self) -> bool;
    fn holds_groups(&self) -> bool;
    fn try_acquire<'a>(&'a self, req: &'a AcquireRequest) -> BoxFuture<'a, Result<Attempt>>;
    fn release<'a>(&'a self, req: &'a ReleaseRequest) -> BoxFuture<'a, Result<Released>>;
    fn renew<'a>(&'a self, req: &'a RenewRequest) -> BoxFuture<'a, Result<Holder>>;
    fn status<'a>(&'a self, lock: &'a LockId) -> BoxFuture<'a, Result<Status>>;
    fn renew_budget(&self) -> Option<Budget>;
    fn list<'a>(&'a self, req: &'a ListRequest) -> BoxFuture<'a, Result<Vec<(String, Holder)>>>;
    fn release_stale<'a>(
        &'a self,
        req: &'a ReleaseStaleRequest,
    ) -> BoxFuture<'a, Result<StaleRelease>>;
    fn claim_next<'a>(&'a self, req: &'a NextRequest) -> BoxFuture<'a, Result<(LockId, Claimed)>>;
    fn arrive<'a>(&'a self, req: &'a ArriveRequest) -> BoxFuture<'a, Result<Arrived>>;
}

impl<B: LockBackend> ObjectBackend for B {
    fn name(&self) -> &'static str {
        LockBackend::name(self)
    }
    fn parse_lock(&self, raw: &str) -> Result<LockId> {
        LockBackend::parse_lock(self, raw)
    }
    fn describe(&self, lock: &LockId) -> String {
        LockBackend::describe(self, lock)
    }
    fn waits_server_side(&self) -> bool {
        LockBackend::waits_server_side(self)
    }
    fn holds_groups(&self) -> bool {
        LockBackend::holds_groups(self)
    }
    fn try_acquire<'a>(&'a self, req: &'a AcquireRequest) -> BoxFuture<'a, Result<Attempt>> {
        Box::pin(LockBackend::try_acquire(self, req))
    }
    fn release<'a>(&'a self, req: &'a ReleaseRequest) -> BoxFuture<'a, Result<Released>> {
        Box::pin(LockBackend::release(self, req))
    }
    fn renew<'a>(&'a self, req: &'a RenewRequest) -> BoxFuture<'a, Result<Holder>> {
        Box::pin(LockBackend::renew(self, req))
    }
    fn status<'a>(&'a self, lock: &'a LockId) -> BoxFuture<'a, Result<Status>> {
        Box::pin(LockBackend::status(self, lock))
    }
    fn renew_budget(&self) -> Option<Budget> {
        LockBackend::renew_budget(self)
    }
    fn list<'a>(&'a self, req: &'a ListRequest) -> BoxFuture<'a, Result<Vec<(String, Holder)>>> {
        Box::pin(LockBackend::list(self, req))
    }
    fn release_stale<'a>(
        &'a self,
        req: &'a ReleaseStaleRequest,
    ) -> BoxFuture<'a, Result<StaleRelease>> {
        Box::pin(LockBackend::release_stale(self, req))
    }
    fn claim_next<'a>(&'a self, req: &'a NextRequest) -> BoxFuture<'a, Result<(LockId, Claimed)>> {
        Box::pin(LockBackend::claim_next(self, req))
    }
    fn arrive<'a>(&'a self, req: &'a ArriveRequest) -> BoxFuture<'a, Result<Arrived>> {
        Box::pin(LockBackend::arrive(self, req))
    }
}

/// Any [`LockBackend`], behind one pointer: the backend of a [`DynLockGuard`].
#[derive(Clone)]
pub struct DynBackend(Arc<dyn ObjectBackend>);

impl DynBackend {
    /// Erases `backend`.
    pub fn new<B: LockBackend + 'static>(backend: B) -> DynBackend {
        DynBackend(Arc::new(backend))
    }

    pub(super) fn from_arc<B: LockBackend + 'static>(backend: Arc<B>) -> DynBackend {
        DynBackend(backend)
    }
}

impl LockBackend for DynBackend {
    fn name(&self) -> &'static str {
        self.0.name()
    }

    fn parse_lock(&self, raw: &str) -> Result<LockId> {
        self.0.parse_lock(raw)
    }

    fn describe(&self, lock: &LockId) -> String {
        self.0.describe(lock)
    }

    fn waits_server_side(&self) -> bool {
        self.0.waits_server_side()
    }

    fn holds_groups(&self) -> bool {
        self.0.holds_groups()
    }

    async fn try_acquire(&self, req: &AcquireRequest) -> Result<Attempt> {
        self.0.try_acquire(req).await
    }

    async fn release(&self, req: &ReleaseRequest) -> Result<Released> {
        self.0.release(req).await
    }

    async fn renew(&self, req: &RenewRequest) -> Result<Holder> {
        self.0.renew(req).await
    }

    async fn status(&self, lock: &LockId) -> Result<Status> {
        self.0.status(lock).await
    }

    fn renew_budget(&self) -> Option<Budget> {
        self.0.renew_budget()
    }

    async fn list(&self, req: &ListRequest) -> Result<Vec<(String, Holder)>> {
        self.0.list(req).await
    }

    async fn release_stale(&self, req: &ReleaseStaleRequest) -> Result<StaleRelease> {
        self.0.release_stale(req).await
    }

    async fn claim_next(&self, req: &NextRequest) -> Result<(LockId, Claimed)> {
        self.0.claim_next(req).await
    }

    async fn arrive(&self, req: &ArriveRequest) -> Result<Arrived> {
        self.0.arrive(req).await
    }
}
