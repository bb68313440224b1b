//! The library API: distributed locks for Rust services, on any backend.
//!
//! [`DistributedLock`] is what a service holds: acquire a resource for a while, try without
//! waiting, release, extend, look. [`LockClient`] implements it over any [`LockBackend`] (local,
//! GitHub, Redis, PostgreSQL, etcd, the `sentinel serve` coordinator, or the facade's run-time
//! `Backend` dispatcher), with
//! one worker identity and one [`RetryConfig`]. A grant is a [`LockGuard`]: it carries the fencing
//! token to hand to the resource it protects, releases the lock when dropped (in the background,
//! never blocking the runtime), and can keep the lease alive by itself, with a [`LostLock`] signal
//! telling the critical section when the lock was lost. [`LeaderElection`] and [`acquire_all`] are
//! built on the trait alone.
//!
//! The `sentinel` crate's documentation opens with an example over the local backend.
//!
//! Acquisitions take over a lock whose lease ran out (`steal-stale`), so a crashed holder blocks
//! nobody past its TTL on any backend; releases and renewals name the grant by its fencing token,
//! so a guard whose lease ran out can never release or renew the grant that followed it.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::backend::LockBackend;
use crate::error::{Error, Result};
use crate::keepalive::{self, Keepalive, Timing};
use crate::lease;
use crate::lock::{
    AcquireRequest, Attempt, Claimant, Holder, LockId, ReleaseRequest, RenewRequest, Takeover,
    validate_label,
};
use crate::strategy::{self, Policy, Strategy};

/// How [`DistributedLock::acquire`] waits for a held lock: up to `max_attempts` attempts, the
/// pauses between them doubling from `initial_backoff` up to `max_backoff`, each scaled by a
/// random factor in ±25% so that waiters that collided once do not collide again in lockstep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryConfig {
    /// Attempts in all, the first included (at least 1).
    pub max_attempts: u32,
    /// The first pause.
    pub initial_backoff: Duration,
    /// The longest pause (at most an hour).
    pub max_backoff: Duration,
}

impl Default for RetryConfig {
    /// 10 attempts, pauses from 100 ms doubling up to 5 s (about 20 s of waiting in all).
    fn default() -> Self {
        RetryConfig {
            max_attempts: 10,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
        }
    }
}

impl RetryConfig {
    /// One attempt: `acquire` behaves like `try_acquire`, but a held lock is an error.
    pub fn no_retry() -> Self {
        RetryConfig {
            max_attempts: 1,
            ..RetryConfig::default()
        }
    }

    /// 50 attempts, pauses from 50 ms doubling up to 2 s (about 90 s of waiting in all).
    pub fn aggressive() -> Self {
        RetryConfig {
            max_attempts: 50,
            initial_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(2),
        }
    }

    /// The claim policy this configuration stands for, refused if it makes no sense.
    fn policy(&self) -> Result<Policy> {
        if self.max_attempts == 0 {
            return Err(Error::usage("RetryConfig::max_attempts must be at least 1"));
        }
        Policy {
            strategy: Strategy::StealStale,
            max_retries: self.max_attempts - 1,
            initial_backoff: self.initial_backoff,
            max_backoff: self.max_backoff,
        }
        .validate()
    }
}

/// Distributed locks as a service sees them. Every method is bounded in time: waiting follows the
/// [`RetryConfig`], and each backend gives up on an unreachable server after its deadline
/// ([`Error::Unavailable`]).
pub trait DistributedLock: Send + Sync {
    /// The backend the guards release on.
    type Backend: LockBackend + 'static;

    /// Acquires `resource` for `ttl` (1 s to 365 d), waiting while it is held as the
    /// [`RetryConfig`] allows; [`Error::Conflict`] when it is still held then.
    fn acquire(
        &self,
        resource: &str,
        ttl: Duration,
    ) -> impl Future<Output = Result<LockGuard<Self::Backend>>> + Send;

    /// One attempt: the guard, or `None` when someone else holds `resource`.
    fn try_acquire(
        &self,
        resource: &str,
        ttl: Duration,
    ) -> impl Future<Output = Result<Option<LockGuard<Self::Backend>>>> + Send;

    /// Releases the lock `guard` holds; `false` when it was not held any more (its lease ran out
    /// and nobody took it). [`Error::NotOwner`] when another grant holds it now.
    fn release(&self, guard: LockGuard<Self::Backend>)
    -> impl Future<Output = Result<bool>> + Send;

    /// Whether someone holds `resource` with a live lease.
    fn is_locked(&self, resource: &str) -> impl Future<Output = Result<bool>> + Send;

    /// Renews the lease of `guard` with a new length `ttl`, counted from now.
    fn extend(
        &self,
        guard: &mut LockGuard<Self::Backend>,
        ttl: Duration,
    ) -> impl Future<Output = Result<()>> + Send;

    /// Who holds `resource`, if anyone (a stale holder included, flagged `stale`).
    fn lock_info(&self, resource: &str) -> impl Future<Output = Result<Option<Holder>>> + Send;
}

/// [`DistributedLock`] over a [`LockBackend`], as one worker.
pub struct LockClient<B> {
    backend: Arc<B>,
    claimant: Claimant,
    retry: RetryConfig,
}

impl<B: LockBackend + 'static> LockClient<B> {
    /// Locks on `backend` as `worker_id` (1 to 256 visible characters), on this host (the node
    /// id is the host name), with [`RetryConfig::default`].
    pub fn new(backend: B, worker_id: impl Into<String>) -> Result<LockClient<B>> {
        let claimant = Claimant {
            worker_id: worker_id.into(),
            node_id: crate::lock::hostname(),
        };
        validate_label("worker id", &claimant.worker_id)?;
        validate_label("node id", &claimant.node_id)?;
        Ok(LockClient {
            backend: Arc::new(backend),
            claimant,
            retry: RetryConfig::default(),
        })
    }

    /// The same client waiting as `retry` says.
    pub fn with_retry(mut self, retry: RetryConfig) -> Result<LockClient<B>> {
        retry.policy()?;
        self.retry = retry;
        Ok(self)
    }

    /// The same client naming its machine `node_id`.
    pub fn with_node_id(mut self, node_id: impl Into<String>) -> Result<LockClient<B>> {
        let node_id = node_id.into();
        validate_label("node id", &node_id)?;
        self.claimant.node_id = node_id;
        Ok(self)
    }

    /// The backend, for what the trait does not cover (a forced take-over, a listing).
    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// The worker id this client holds locks as.
    pub fn worker_id(&self) -> &str {
        &self.claimant.worker_id
    }

    fn request(&self, resource: &str, ttl: Duration) -> Result<AcquireRequest> {
        Ok(AcquireRequest {
            lock: self.backend.parse_lock(resource)?,
            claimant: self.claimant.clone(),
            ttl: lease::validate_ttl(ttl)?,
            takeover: Takeover::Stale,
            task_info: Default::default(),
            readopt: false,
            attempt: 0,
            wait: Duration::ZERO,
        })
    }

    fn guard(&self, lock: LockId, holder: Holder, sent: Instant) -> LockGuard<B> {
        LockGuard {
            backend: self.backend.clone(),
            resource: self.backend.describe(&lock),
            lock,
            holder,
            sent,
            released: false,
            keeper: None,
            lost: Arc::new(watch::channel(None).0),
        }
    }
}

impl<B: LockBackend + 'static> DistributedLock for LockClient<B> {
    type Backend = B;

    async fn acquire(&self, resource: &str, ttl: Duration) -> Result<LockGuard<B>> {
        let req = self.request(resource, ttl)?;
        let policy = self.retry.policy()?;
        let backend = &*self.backend;
        let what = backend.describe(&req.lock);
        let attempt = |n: u32| {
            let attempt = AcquireRequest {
                attempt: n,
                ..req.clone()
            };
            async move {
                match backend.try_acquire(&attempt).await {
                    // A contended attempt that could not be ordered (GitHub: a claim in the same
                    // second as a release) is waited for like a held lock, when there is a holder
                    // to wait for.
                    Err(Error::Conflict(why)) => {
                        match backend.status(&attempt.lock).await?.holder() {
                            Some(holder) => Ok(Attempt::Held(holder.clone())),
                            None => Err(Error::Conflict(why)),
                        }
                    }
                    other => other,
                }
            }
        };
        let outcome = strategy::acquire(&policy, &what, attempt, |_, _| {}).await?;
        Ok(self.guard(req.lock, outcome.grant.holder, outcome.attempt_started))
    }

    async fn try_acquire(&self, resource: &str, ttl: Duration) -> Result<Option<LockGuard<B>>> {
        let req = self.request(resource, ttl)?;
        let sent = Instant::now();
        match self.backend.try_acquire(&req).await {
            Ok(Attempt::Granted(g)) => Ok(Some(self.guard(req.lock, g.holder, sent))),
            Ok(Attempt::Held(_)) => Ok(None),
            // A contended attempt that could not be ordered (GitHub: a claim in the same second
            // as a release) did not get the lock either.
            Err(Error::Conflict(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn release(&self, guard: LockGuard<B>) -> Result<bool> {
        guard.release().await
    }

    async fn is_locked(&self, resource: &str) -> Result<bool> {
        Ok(self
            .lock_info(resource)
            .await?
            .is_some_and(|holder| !holder.stale))
    }

    async fn extend(&self, guard: &mut LockGuard<B>, ttl: Duration) -> Result<()> {
        guard.extend(ttl).await
    }

    async fn lock_info(&self, resource: &str) -> Result<Option<Holder>> {
        let lock = self.backend.parse_lock(resource)?;
        Ok(self.backend.status(&lock).await?.holder().cloned())
    }
}

/// The background renewal of one guard.
struct Keeper {
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
    interval: Duration,
}

impl Keeper {
    /// Stops renewing; a renewal in flight is finished first, so that a release sent afterwards
    /// cannot be overtaken by it.
    async fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.task.await;
    }
}

/// A held lock. Dropping it releases the lock in the background (best effort: on the runtime the
/// guard is dropped in, never blocking it; outside a runtime the lease simply runs out); call
/// [`LockGuard::release`] to know the outcome.
pub struct LockGuard<B: LockBackend + 'static> {
    backend: Arc<B>,
    lock: LockId,
    resource: String,
    holder: Holder,
    /// When the request behind `holder` was sent, on the monotonic clock.
    sent: Instant,
    released: bool,
    keeper: Option<Keeper>,
    /// Set once the keep-alive finds the lock lost; one channel for the guard's lifetime, so a
    /// [`LostLock`] stays valid when [`LockGuard::extend`] restarts the schedule.
    lost: Arc<watch::Sender<Option<String>>>,
}

impl<B: LockBackend + 'static> std::fmt::Debug for LockGuard<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LockGuard")
            .field("resource", &self.resource)
            .field("holder", &self.holder)
            .field("keep_alive", &self.keeper.is_some())
            .finish()
    }
}

impl<B: LockBackend + 'static> LockGuard<B> {
    /// The fencing token of this grant: pass it to the resource the lock protects, which should
    /// refuse writes carrying a smaller token than it has seen.
    pub fn fencing_token(&self) -> u64 {
        self.holder.fencing_token
    }

    /// The lock as the backend names it (`build-42`, `owner/repo#12`).
    pub fn resource(&self) -> &str {
        &self.resource
    }

    /// The grant as the backend last reported it (at acquisition or [`LockGuard::extend`]).
    pub fn holder(&self) -> &Holder {
        &self.holder
    }

    /// When the lease ends on the backend's clock, as of the acquisition or the last extend.
    /// While [`LockGuard::keep_alive`] runs, the lease is renewed past it in the background.
    pub fn expires_at(&self) -> DateTime<Utc> {
        self.holder.expires_at
    }

    /// How much longer this process may count on the lease, measured on the monotonic clock from
    /// the request that granted or extended it, less a safety margin for clock rates and requests
    /// in flight. Zero once that is over. Background renewals are not counted: with
    /// [`LockGuard::keep_alive`], watch [`LostLock`] instead.
    pub fn time_remaining(&self) -> Duration {
        lease::holder_deadline(self.sent, keepalive::ttl_of(&self.holder))
            .saturating_duration_since(Instant::now())
    }

    fn renew_request(&self, ttl: Option<Duration>) -> RenewRequest {
        RenewRequest {
            lock: self.lock.clone(),
            worker_id: self.holder.worker_id.clone(),
            fencing_token: Some(self.holder.fencing_token),
            ttl,
        }
    }

    /// Renews the lease in the background every `interval` (at most a third of the TTL, at least
    /// 1 s) until the guard is released or dropped. The returned [`LostLock`] fires when a renewal
    /// finds the lock taken over or gone, or when no renewal got through before the lease ran
    /// out: from then on the critical section must stop.
    ///
    /// Must be called inside a Tokio runtime. Calling it again replaces the previous schedule;
    /// every [`LostLock`] of the guard stays valid.
    pub fn keep_alive(&mut self, interval: Duration) -> Result<LostLock> {
        let timing = Timing::for_ttl(Some(interval), keepalive::ttl_of(&self.holder))?;
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
            Error::usage("LockGuard::keep_alive must be called inside a Tokio runtime")
        })?;
        if let Some(old) = self.keeper.take() {
            // Stopped without waiting for an in-flight renewal, which is harmless here: the
            // new schedule renews the same grant.
            let _ = old.stop.send(());
        }
        let (stop, stopped) = oneshot::channel::<()>();
        let lost = self.lost.clone();
        let keep = Keepalive::new(
            self.renew_request(None),
            self.holder.clone(),
            self.sent,
            timing,
        );
        let backend = self.backend.clone();
        let task = runtime.spawn(async move {
            let stop = async {
                let _ = stopped.await;
            };
            if let Err(e) = keep.run(&*backend, stop).await {
                lost.send_replace(Some(e.to_string()));
            }
        });
        self.keeper = Some(Keeper {
            stop,
            task,
            interval,
        });
        Ok(LostLock(self.lost.subscribe()))
    }

    /// Renews the lease now with a new length `ttl` (1 s to 365 d), counted from now.
    /// [`Error::NotOwner`] when the lock was lost. A running [`LockGuard::keep_alive`] goes on
    /// with the new length.
    pub async fn extend(&mut self, ttl: Duration) -> Result<()> {
        let ttl = lease::validate_ttl(ttl)?;
        let sent = Instant::now();
        let holder = self.backend.renew(&self.renew_request(Some(ttl))).await?;
        self.holder = holder;
        self.sent = sent;
        if let Some(keeper) = self.keeper.take() {
            let interval = keeper.interval;
            keeper.stop().await;
            // The same interval may not fit a shorter lease: then a third of it. Its signal is
            // the one the caller already holds.
            let fitting = interval.min(ttl / 3).max(keepalive::MIN_INTERVAL);
            self.keep_alive(fitting)?;
        }
        Ok(())
    }

    /// Releases the lock: `true` if this grant still held it, `false` if its lease had run out and
    /// nobody held it. [`Error::NotOwner`] when another grant holds it now.
    pub async fn release(mut self) -> Result<bool> {
        if let Some(keeper) = self.keeper.take() {
            keeper.stop().await;
        }
        self.released = true;
        let r = self.backend.release(&release_request(&self)).await?;
        Ok(r.was_held)
    }
}

fn release_request<B: LockBackend + 'static>(guard: &LockGuard<B>) -> ReleaseRequest {
    ReleaseRequest {
        lock: guard.lock.clone(),
        worker_id: guard.holder.worker_id.clone(),
        force: false,
        fencing_token: Some(guard.holder.fencing_token),
    }
}

impl<B: LockBackend + 'static> Drop for LockGuard<B> {
    fn drop(&mut self) {
        if self.released {
            return;
        }
        let keeper = self.keeper.take();
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::debug!(
                lock = %self.resource,
                "guard dropped outside a runtime: the lock stays until its lease runs out"
            );
            return;
        };
        let (backend, req) = (self.backend.clone(), release_request(self));
        let resource = std::mem::take(&mut self.resource);
        runtime.spawn(async move {
            if let Some(keeper) = keeper {
                keeper.stop().await;
            }
            if let Err(e) = backend.release(&req).await {
                tracing::warn!(lock = %resource, error = %e, "releasing a dropped guard failed; the lock stays until its lease runs out");
            }
        });
    }
}

/// Tells a critical section that its lock is gone.
#[derive(Debug, Clone)]
pub struct LostLock(watch::Receiver<Option<String>>);

impl LostLock {
    /// Whether the lock was lost.
    pub fn is_lost(&self) -> bool {
        self.0.borrow().is_some()
    }

    /// Resolves when the lock is lost, with why (`Some`), or when the guard is gone (released or
    /// dropped) without having lost it (`None`).
    pub async fn wait(&mut self) -> Option<String> {
        let lost = match self.0.wait_for(|lost| lost.is_some()).await {
            Ok(reason) => reason.clone(),
            Err(_) => None,
        };
        lost.or_else(|| self.0.borrow().clone())
    }
}

/// Takes several locks, always in the same global order (sorted by name, duplicates once), so
/// that two callers needing overlapping sets cannot deadlock; if one cannot be had, the ones
/// already taken are released and the error returned. Each lock waits as `locks`'s
/// [`RetryConfig`] says.
pub async fn acquire_all<L: DistributedLock>(
    locks: &L,
    resources: &[&str],
    ttl: Duration,
) -> Result<Vec<LockGuard<L::Backend>>> {
    let mut order: Vec<&str> = resources.to_vec();
    order.sort_unstable();
    order.dedup();
    let mut held = Vec::with_capacity(order.len());
    for resource in order {
        match locks.acquire(resource, ttl).await {
            Ok(guard) => held.push(guard),
            Err(e) => {
                for guard in held.into_iter().rev() {
                    if let Err(undo) = locks.release(guard).await {
                        tracing::warn!(error = %undo, "could not release a lock taken by acquire_all");
                    }
                }
                return Err(e);
            }
        }
    }
    Ok(held)
}

/// Leader election among replicas on one lock, built on [`DistributedLock`]: the leader is the
/// holder of `resource`, and keeps its lease alive in the background.
pub struct LeaderElection<L: DistributedLock> {
    locks: L,
    resource: String,
    ttl: Duration,
}

impl<L: DistributedLock> LeaderElection<L> {
    /// An election on `resource`; a leader's lease lasts `ttl` (at least 3 s, so that it can be
    /// renewed three times per lease) and is renewed every third of it.
    pub fn new(locks: L, resource: impl Into<String>, ttl: Duration) -> LeaderElection<L> {
        LeaderElection {
            locks,
            resource: resource.into(),
            ttl,
        }
    }

    /// Becomes the leader if nobody leads (or the leader's lease ran out); `None` otherwise.
    pub async fn try_lead(&self) -> Result<Option<Leadership<L::Backend>>> {
        let interval = self.ttl / 3;
        keepalive::check_interval(interval)?;
        let Some(mut guard) = self.locks.try_acquire(&self.resource, self.ttl).await? else {
            return Ok(None);
        };
        let lost = guard.keep_alive(interval)?;
        Ok(Some(Leadership { guard, lost }))
    }

    /// The current leader, if any.
    pub async fn leader(&self) -> Result<Option<Holder>> {
        Ok(self
            .locks
            .lock_info(&self.resource)
            .await?
            .filter(|h| !h.stale))
    }
}

/// Being the leader: kept alive in the background until [`Leadership::step_down`] or loss.
#[derive(Debug)]
pub struct Leadership<B: LockBackend + 'static> {
    guard: LockGuard<B>,
    lost: LostLock,
}

impl<B: LockBackend + 'static> Leadership<B> {
    /// The fencing token of this term: larger than every earlier leader's.
    pub fn fencing_token(&self) -> u64 {
        self.guard.fencing_token()
    }

    /// Whether leadership was lost (the lock taken over, or not renewed in time).
    pub fn is_lost(&self) -> bool {
        self.lost.is_lost()
    }

    /// Resolves when leadership is lost, with why.
    pub async fn lost(&mut self) -> Option<String> {
        self.lost.wait().await
    }

    /// Gives up leadership: stops renewing and releases the lock so another replica can lead.
    pub async fn step_down(self) -> Result<bool> {
        self.guard.release().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_presets() {
        assert_eq!(RetryConfig::default().max_attempts, 10);
        assert_eq!(RetryConfig::no_retry().max_attempts, 1);
        assert_eq!(RetryConfig::aggressive().max_attempts, 50);
        for r in [
            RetryConfig::default(),
            RetryConfig::no_retry(),
            RetryConfig::aggressive(),
        ] {
            let p = r.policy().unwrap();
            assert_eq!(p.max_retries + 1, r.max_attempts);
        }
        let zero = RetryConfig {
            max_attempts: 0,
            ..RetryConfig::default()
        };
        assert!(zero.policy().is_err());
        let backwards = RetryConfig {
            initial_backoff: Duration::from_secs(10),
            ..RetryConfig::default()
        };
        assert!(backwards.policy().is_err());
    }
}
