//! The library API: distributed locks for Rust services, on any backend.
//!
//! [`DistributedLock`] is what a service holds: acquire a resource for a while, try without
//! waiting, release, extend, look. [`LockClient`] implements it over any [`LockBackend`] (local,
//! GitHub, Redis, PostgreSQL, etcd, the `sentinel serve` coordinator, or the facade's run-time
//! `Backend` dispatcher), with one worker identity and one [`RetryConfig`]; [`DynDistributedLock`]
//! is the same API as a trait object. A grant is a [`LockGuard`]: it carries the fencing token to
//! hand to the resource it protects, and can keep the lease alive by itself, with a [`LostLock`]
//! signal telling the critical section when it can no longer vouch for the lock.
//! [`LeaderElection`] and [`acquire_all`] are built on the trait alone. On a backend that keeps
//! several holds per name (the coordinator, the local backend), [`LockClient::acquire_shared`]
//! takes the read side of a reader-writer lock and [`LockClient::semaphore`] a [`Semaphore`]'s
//! permits, each hold a guard like a lock's; [`LockClient::barrier`] a [`Barrier`] that
//! participants wait at until all have arrived.
//!
//! No phantom holders: a grant always has an owner. Each acquisition attempt runs as a task of
//! its own and hands its grant over as a guard, so an `acquire` future dropped at any point (a
//! timeout, a `select!`) leaves no lock behind: a guard nobody received is dropped, and a dropped
//! guard is released — by its fencing token, so exactly that grant — on the release thread
//! (the `releaser` module; [`flush_releases`] waits for it), wherever it was dropped.
//!
//! The `sentinel` crate's documentation opens with an example over the local backend.
//!
//! Acquisitions take over a lock whose lease ran out (`steal-stale`), so a crashed holder blocks
//! nobody past its TTL on any backend; releases and renewals name the grant by its fencing token,
//! so a guard whose lease ran out can never release or renew the grant that followed it.

mod dynamic;
mod releaser;

pub use dynamic::{DynBackend, DynDistributedLock, DynLockGuard};
pub use releaser::flush_releases;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::backend::LockBackend;
use crate::barrier::Arrived;
use crate::error::{Error, Result};
use crate::keepalive::{self, Keepalive, Timing};
use crate::lease;
use crate::lock::{
    AcquireRequest, Attempt, Claimant, HoldKind, Holder, LockId, ReleaseRequest, RenewRequest,
    Takeover, validate_label,
};
use crate::strategy::{self, Policy, Strategy};

/// Most attempts a [`RetryConfig`] may make: even at the shortest pause, hours of trying.
pub const MAX_ATTEMPTS: u32 = 10_000;
/// The shortest first pause of a [`RetryConfig`] that retries: less would hammer the backend.
pub const MIN_BACKOFF: Duration = Duration::from_millis(10);

/// How [`DistributedLock::acquire`] waits for a held lock: up to `max_attempts` attempts, the
/// pauses between them doubling from `initial_backoff` up to `max_backoff`, each scaled by a
/// random factor in ±25% so that waiters that collided once do not collide again in lockstep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryConfig {
    /// Attempts in all, the first included (1 to [`MAX_ATTEMPTS`]).
    pub max_attempts: u32,
    /// The first pause (at least [`MIN_BACKOFF`] when there is more than one attempt).
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

    /// The claim policy this configuration stands for, refused (in the library's words, not the
    /// CLI's flags) if it makes no sense or would retry without pausing.
    fn policy(&self) -> Result<Policy> {
        let refuse = |why: String| Err(Error::usage(format!("RetryConfig: {why}")));
        if self.max_attempts == 0 || self.max_attempts > MAX_ATTEMPTS {
            return refuse(format!(
                "max_attempts must be 1 to {MAX_ATTEMPTS}, not {}",
                self.max_attempts
            ));
        }
        if self.max_attempts > 1 && self.initial_backoff < MIN_BACKOFF {
            return refuse(format!(
                "initial_backoff must be at least {}ms when retrying: without a pause, attempts \
                 spin against the backend",
                MIN_BACKOFF.as_millis()
            ));
        }
        if self.max_backoff > strategy::MAX_BACKOFF {
            return refuse("max_backoff must be at most 1h".into());
        }
        if self.initial_backoff > self.max_backoff {
            return refuse(format!(
                "initial_backoff ({}) must not exceed max_backoff ({})",
                crate::duration::display(self.initial_backoff),
                crate::duration::display(self.max_backoff)
            ));
        }
        Ok(Policy {
            strategy: Strategy::StealStale,
            max_retries: self.max_attempts - 1,
            initial_backoff: self.initial_backoff,
            max_backoff: self.max_backoff,
            wait: None,
        })
    }
}

/// Distributed locks as a service sees them. Every method is bounded in time: waiting follows the
/// [`RetryConfig`], and each backend gives up on an unreachable server after its deadline
/// ([`Error::Unavailable`]). `acquire` and `try_acquire` are cancel-safe: a future dropped before
/// it resolved holds nothing afterwards (a grant it was too late to hand over is released).
///
/// Not dyn-compatible (its futures are unboxed); [`DynDistributedLock`] is, and every
/// implementation of this trait is one.
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

/// How one attempt ended: the lock is ours (as a guard already), or someone else's.
enum Outcome<B: LockBackend + 'static> {
    Granted(LockGuard<B>),
    Held(Holder),
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

    /// Acquires a hold of `kind` on `resource` for `ttl`, waiting while it cannot be had as the
    /// [`RetryConfig`] allows: [`DistributedLock::acquire`] for any kind of hold. A shared hold
    /// or semaphore permits need a backend that keeps several holds per name (the coordinator,
    /// the local backend, Redis, PostgreSQL); the others refuse them ([`Error::Usage`]).
    pub async fn acquire_hold(
        &self,
        resource: &str,
        ttl: Duration,
        kind: HoldKind,
    ) -> Result<LockGuard<B>> {
        let req = self.request(resource, ttl, kind)?;
        let policy = self.retry.policy()?;
        let attempts = self.retry.max_attempts;
        let polling = !self.backend.waits_server_side();
        let mut n = 0;
        loop {
            let attempt = AcquireRequest {
                attempt: n,
                // When this claim comes back: a polling backend may keep the name for it.
                wait: match polling {
                    true => policy.next_attempt_within(n, None),
                    false => Duration::ZERO,
                },
                ..req.clone()
            };
            let holder = match self.attempt(attempt).await? {
                Outcome::Granted(guard) => return Ok(guard),
                Outcome::Held(holder) => holder,
            };
            n += 1;
            if n == attempts {
                let what = self.backend.describe(&req.lock);
                return Err(strategy::conflict(&what, &holder, &policy, attempts));
            }
            let pause = policy.backoff(n);
            tracing::info!(holder = %holder.worker_id, pause_ms = pause.as_millis() as u64, "lock held; retrying");
            tokio::time::sleep(pause).await;
        }
    }

    /// One attempt at a hold of `kind`: [`DistributedLock::try_acquire`] for any kind of hold.
    pub async fn try_acquire_hold(
        &self,
        resource: &str,
        ttl: Duration,
        kind: HoldKind,
    ) -> Result<Option<LockGuard<B>>> {
        let req = self.request(resource, ttl, kind)?;
        match self.attempt(req).await {
            Ok(Outcome::Granted(guard)) => Ok(Some(guard)),
            Ok(Outcome::Held(_)) => Ok(None),
            // A contended attempt that could not be ordered did not get the lock either.
            Err(Error::Conflict(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// A shared (read) hold of `resource`, beside other shared holds and never with an exclusive
    /// one (an [`acquire`](DistributedLock::acquire)): the read side of a reader-writer lock.
    pub async fn acquire_shared(&self, resource: &str, ttl: Duration) -> Result<LockGuard<B>> {
        self.acquire_hold(resource, ttl, HoldKind::Shared).await
    }

    /// One attempt at a shared hold of `resource`.
    pub async fn try_acquire_shared(
        &self,
        resource: &str,
        ttl: Duration,
    ) -> Result<Option<LockGuard<B>>> {
        self.try_acquire_hold(resource, ttl, HoldKind::Shared).await
    }

    /// The semaphore `resource` that lets `limit` permits be held at once. Every client of it
    /// must give the same limit: another is refused ([`Error::Usage`]).
    pub fn semaphore(&self, resource: impl Into<String>, limit: u32) -> Semaphore<'_, B> {
        Semaphore {
            client: self,
            resource: resource.into(),
            limit,
        }
    }

    /// The barrier `name` that opens when `count` participants have arrived (every one gives
    /// the same count: another is refused, [`Error::Usage`]). On the coordinator and the local
    /// backend; the others refuse with [`Error::Usage`].
    pub fn barrier(&self, name: impl Into<String>, count: u32) -> Barrier<'_, B> {
        Barrier {
            client: self,
            name: name.into(),
            count,
        }
    }

    fn request(&self, resource: &str, ttl: Duration, kind: HoldKind) -> Result<AcquireRequest> {
        if let HoldKind::Semaphore { limit, permits } = kind
            && (limit == 0 || permits == 0 || permits > limit)
        {
            return Err(Error::usage(format!(
                "a semaphore's permits are 1 to its limit, and its limit at least 1: not {permits}                  of {limit}"
            )));
        }
        Ok(AcquireRequest {
            lock: self.backend.parse_lock(resource)?,
            claimant: self.claimant.clone(),
            ttl: lease::validate_ttl(ttl)?,
            takeover: Takeover::Stale,
            task_info: Default::default(),
            readopt: false,
            attempt: 0,
            wait: Duration::ZERO,
            kind,
        })
    }

    /// One attempt, run as a task of its own on the caller's runtime and handing its grant over
    /// as a guard. A caller that stops waiting (a dropped future) therefore never cuts a request
    /// short whose grant it would not learn of: the task finishes it, and a guard nobody is left
    /// to receive — refused by the channel, or left in it — is dropped, which releases exactly
    /// that grant.
    fn attempt(&self, req: AcquireRequest) -> impl Future<Output = Result<Outcome<B>>> + Send {
        let backend = self.backend.clone();
        let spawned = tokio::runtime::Handle::try_current().map(|runtime| {
            let (handover, received) = oneshot::channel();
            runtime.spawn(async move {
                let sent = Instant::now();
                let outcome = match backend.try_acquire(&req).await {
                    Ok(Attempt::Granted(grant)) => Ok(Outcome::Granted(LockGuard::new(
                        backend,
                        req.lock,
                        grant.holder,
                        sent,
                    ))),
                    Ok(Attempt::Held(holder)) => Ok(Outcome::Held(holder)),
                    // A contended attempt that could not be ordered (GitHub: a claim in the same
                    // second as a release) is waited for like a held lock, when there is a
                    // holder to wait for.
                    Err(Error::Conflict(why)) => match backend.status(&req.lock).await {
                        Ok(status) => match status.holder() {
                            Some(holder) => Ok(Outcome::Held(holder.clone())),
                            None => Err(Error::Conflict(why)),
                        },
                        Err(e) => Err(e),
                    },
                    Err(e) => Err(e),
                };
                let _ = handover.send(outcome);
            });
            received
        });
        async move {
            match spawned {
                Ok(received) => received.await.unwrap_or_else(|_| {
                    Err(Error::Unavailable(
                        "the acquisition was cut short: its Tokio runtime is shutting down".into(),
                    ))
                }),
                Err(_) => Err(Error::usage(
                    "DistributedLock::acquire must be called inside a Tokio runtime",
                )),
            }
        }
    }
}

impl<B: LockBackend + 'static> DistributedLock for LockClient<B> {
    type Backend = B;

    async fn acquire(&self, resource: &str, ttl: Duration) -> Result<LockGuard<B>> {
        self.acquire_hold(resource, ttl, HoldKind::Exclusive).await
    }

    async fn try_acquire(&self, resource: &str, ttl: Duration) -> Result<Option<LockGuard<B>>> {
        self.try_acquire_hold(resource, ttl, HoldKind::Exclusive)
            .await
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

/// A semaphore: at most `limit` permits of `resource` held at once, over all clients
/// ([`LockClient::semaphore`]). Each acquisition is a [`LockGuard`] with its own lease and
/// fencing token, kept alive, extended and released as a lock's.
pub struct Semaphore<'a, B> {
    client: &'a LockClient<B>,
    resource: String,
    limit: u32,
}

impl<B: LockBackend + 'static> Semaphore<'_, B> {
    /// Takes `permits` (1 to the limit) for `ttl`, waiting while they are not free as the
    /// client's [`RetryConfig`] allows; [`Error::Conflict`] when they are still not free then.
    pub async fn acquire(&self, permits: u32, ttl: Duration) -> Result<LockGuard<B>> {
        self.client
            .acquire_hold(&self.resource, ttl, self.kind(permits))
            .await
    }

    /// One attempt at `permits`: the guard, or `None` when they are not free.
    pub async fn try_acquire(&self, permits: u32, ttl: Duration) -> Result<Option<LockGuard<B>>> {
        self.client
            .try_acquire_hold(&self.resource, ttl, self.kind(permits))
            .await
    }

    fn kind(&self, permits: u32) -> HoldKind {
        HoldKind::Semaphore {
            limit: self.limit,
            permits,
        }
    }
}

/// A barrier: `count` participants meet at `name`, and none goes on before all have arrived
/// ([`LockClient::barrier`]). The name starts a new round each time it opens.
pub struct Barrier<'a, B> {
    client: &'a LockClient<B>,
    name: String,
    count: u32,
}

impl<B: LockBackend + 'static> Barrier<'_, B> {
    /// Arrives as this client's worker and waits until the barrier opens ([`Arrived::Opened`])
    /// or `timeout` (`None`: no limit) runs out: [`Arrived::NotOpened`], and this participant
    /// has left the barrier. Cancel-safe: a wait dropped before it ends leaves the barrier (the
    /// coordinator when the connection closes, the local backend at once).
    pub async fn wait(&self, timeout: Option<Duration>) -> Result<Arrived> {
        crate::strategy::meet(
            self.client.backend.as_ref(),
            &self.name,
            &self.client.claimant,
            self.count,
            timeout,
        )
        .await
    }
}

/// The background renewal of one guard.
struct Keeper {
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
    interval: Duration,
}

/// The loss signal's state: `Some(why)` once the guard can no longer vouch for its lock.
type Lost = Arc<watch::Sender<Option<String>>>;

/// Fires the loss signal with `why`, unless it already fired (the first reason stays).
fn lose(lost: &Lost, why: String) {
    lost.send_if_modified(|state| {
        if state.is_some() {
            return false;
        }
        *state = Some(why);
        true
    });
}

/// Fires the loss signal if dropped armed: an [`LockGuard::extend`] cut short while a shorter
/// lease was on its way leaves the guard unsure of its lease.
struct UnsureUnlessDone(Option<Lost>);

impl Drop for UnsureUnlessDone {
    fn drop(&mut self) {
        if let Some(lost) = self.0.take() {
            lose(
                &lost,
                "an extend to a shorter lease was cut short: the lease may end sooner than this \
                 guard can tell"
                    .into(),
            );
        }
    }
}

/// A held lock.
///
/// Dropping it releases the lock in the background, on sentinel's release thread (see
/// [`flush_releases`]), wherever it is dropped — inside a runtime or not — and by its fencing
/// token, so never a later grant; a release that fails is logged at `warn` and the lease runs
/// out. Call [`LockGuard::release`] to know the outcome: a process that ends right after
/// dropping a guard may end before the release is sent.
pub struct LockGuard<B: LockBackend + 'static> {
    backend: Arc<B>,
    lock: LockId,
    resource: String,
    holder: Holder,
    /// When the request behind `holder` was sent, on the monotonic clock.
    sent: Instant,
    released: bool,
    keeper: Option<Keeper>,
    /// Set once the guard can no longer vouch for its lock; one channel for the guard's
    /// lifetime, so a [`LostLock`] stays valid when [`LockGuard::extend`] restarts the schedule.
    lost: Lost,
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
    fn new(backend: Arc<B>, lock: LockId, holder: Holder, sent: Instant) -> LockGuard<B> {
        LockGuard {
            resource: backend.describe(&lock),
            backend,
            lock,
            holder,
            sent,
            released: false,
            keeper: None,
            lost: Arc::new(watch::channel(None).0),
        }
    }

    /// The same guard over [`DynBackend`], the guard type of [`DynDistributedLock`]; the
    /// keep-alive, the loss signal and the release duty move with it.
    pub fn erase(mut self) -> DynLockGuard {
        // This shell hands the grant over and must not release it when dropped.
        self.released = true;
        LockGuard {
            backend: Arc::new(DynBackend::from_arc(self.backend.clone())),
            lock: self.lock.clone(),
            resource: std::mem::take(&mut self.resource),
            holder: self.holder.clone(),
            sent: self.sent,
            released: false,
            keeper: self.keeper.take(),
            lost: self.lost.clone(),
        }
    }

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
    /// in flight. Zero once that is over, or once the guard was found lost. Background renewals
    /// are not counted: with [`LockGuard::keep_alive`], watch [`LostLock`] instead.
    pub fn time_remaining(&self) -> Duration {
        if self.is_lost() {
            return Duration::ZERO;
        }
        lease::holder_deadline(self.sent, keepalive::ttl_of(&self.holder))
            .saturating_duration_since(Instant::now())
    }

    /// Whether the guard can no longer vouch for its lock (what [`LostLock`] signals).
    pub fn is_lost(&self) -> bool {
        self.lost.borrow().is_some()
    }

    fn renew_request(&self, ttl: Option<Duration>) -> RenewRequest {
        RenewRequest {
            lock: self.lock.clone(),
            worker_id: self.holder.worker_id.clone(),
            fencing_token: Some(self.holder.fencing_token),
            ttl,
        }
    }

    /// Renews the lease in the background every `interval` (at least 1 s and at most a third of
    /// the TTL) until the guard is released or dropped. The returned [`LostLock`] fires whenever
    /// the guard can no longer vouch for its lock: a renewal found it taken over or gone, no
    /// renewal got through before the lease ran out, the lease had already run out when this was
    /// called, or an [`LockGuard::extend`] found it lost. From then on the critical section must
    /// stop; the signal never clears.
    ///
    /// Must be called inside a Tokio runtime. Calling it again replaces the previous schedule;
    /// every [`LostLock`] of the guard stays valid.
    pub fn keep_alive(&mut self, interval: Duration) -> Result<LostLock> {
        let timing = Timing::for_lease(
            "LockGuard::keep_alive",
            interval,
            keepalive::ttl_of(&self.holder),
        )?;
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
            Error::usage("LockGuard::keep_alive must be called inside a Tokio runtime")
        })?;
        self.start_keeper(&runtime, timing);
        Ok(LostLock(self.lost.subscribe()))
    }

    /// Replaces the keep-alive with one on `timing`, from the grant or renewal the guard holds.
    /// Synchronous, so that no caller can be cancelled between stopping one schedule and
    /// starting the next.
    fn start_keeper(&mut self, runtime: &tokio::runtime::Handle, timing: Timing) {
        if let Some(old) = self.keeper.take() {
            // Stopped without waiting for an in-flight renewal, which is harmless here: the
            // new schedule renews the same grant.
            let _ = old.stop.send(());
        }
        if self.is_lost() {
            return;
        }
        if self.time_remaining().is_zero() {
            lose(
                &self.lost,
                format!(
                    "the lease on {} had run out before it was kept alive",
                    self.resource
                ),
            );
            return;
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
                lose(&lost, e.to_string());
            }
        });
        self.keeper = Some(Keeper {
            stop,
            task,
            interval: timing.interval(),
        });
    }

    /// Renews the lease now with a new length `ttl` (1 s to 365 d), counted from now.
    /// [`Error::NotOwner`] when the lock was lost (and the loss signal fires). A running
    /// [`LockGuard::keep_alive`] goes on with the new length, at its interval or a third of the
    /// new TTL if that is shorter; a TTL too short to keep alive (under 3 s) is refused before
    /// anything is renewed. If a shorter lease may have been applied but the answer did not come
    /// (an error, or this future dropped), the guard counts itself lost.
    pub async fn extend(&mut self, ttl: Duration) -> Result<()> {
        let ttl = lease::validate_ttl(ttl)?;
        if let Some(why) = self.lost.borrow().clone() {
            return Err(Error::NotOwner(format!(
                "the lock on {} was lost: {why}",
                self.resource
            )));
        }
        let resumed = match &self.keeper {
            Some(keeper) => Some(Timing::for_lease(
                "LockGuard::extend while keep_alive runs",
                keeper.interval.min(ttl / 3).max(keepalive::MIN_INTERVAL),
                ttl,
            )?),
            None => None,
        };
        let shorter = ttl < keepalive::ttl_of(&self.holder);
        let mut unsure = UnsureUnlessDone(shorter.then(|| self.lost.clone()));
        let sent = Instant::now();
        let renewed = self.backend.renew(&self.renew_request(Some(ttl))).await;
        let holder = match renewed {
            Ok(holder) => holder,
            Err(e @ Error::NotOwner(_)) => {
                lose(&self.lost, e.to_string());
                unsure.0 = None;
                return Err(e);
            }
            // The renewal may or may not have been applied: only a shorter lease makes that
            // matter, and `unsure` fires then.
            Err(e @ (Error::Unavailable(_) | Error::Unexpected(_))) => return Err(e),
            Err(e) => {
                unsure.0 = None;
                return Err(e);
            }
        };
        unsure.0 = None;
        self.holder = holder;
        self.sent = sent;
        if let Some(timing) = resumed {
            match tokio::runtime::Handle::try_current() {
                Ok(runtime) => self.start_keeper(&runtime, timing),
                Err(_) => lose(
                    &self.lost,
                    "the keep-alive could not be restarted outside a Tokio runtime".into(),
                ),
            }
        }
        if let Some(why) = self.lost.borrow().clone() {
            return Err(Error::NotOwner(format!(
                "the lock on {} was lost: {why}",
                self.resource
            )));
        }
        Ok(())
    }

    /// Releases the lock: `true` if this grant still held it, `false` if its lease had run out and
    /// nobody held it. [`Error::NotOwner`] when another grant holds it now. If this future is
    /// dropped before it resolves, the release goes on in the background as for a dropped guard.
    pub async fn release(mut self) -> Result<bool> {
        if let Some(keeper) = self.keeper.take() {
            // A renewal in flight is finished first, so that the release cannot be overtaken by
            // it.
            let _ = keeper.stop.send(());
            let _ = keeper.task.await;
        }
        let released = self.backend.release(&release_request(&self)).await;
        self.released = true;
        Ok(released?.was_held)
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
        let keeper = self.keeper.take().map(|keeper| {
            // Renewals stop now, even if the release waits its turn.
            let _ = keeper.stop.send(());
            keeper.task
        });
        let (backend, req) = (self.backend.clone(), release_request(self));
        let what = std::mem::take(&mut self.resource);
        let token = req.fencing_token;
        releaser::submit(what.clone(), async move {
            if let Some(task) = keeper {
                // Its last renewal is finished first, so that it cannot overtake the release.
                let _ = task.await;
            }
            match backend.release(&req).await {
                Ok(_) => tracing::debug!(lock = %what, token, "released a dropped guard"),
                Err(e @ Error::NotOwner(_)) => {
                    tracing::info!(lock = %what, error = %e, "a dropped guard's lock was already lost")
                }
                Err(e) => {
                    tracing::warn!(lock = %what, error = %e, "releasing a dropped guard failed; the lock stays until its lease runs out")
                }
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
        Timing::for_lease("LeaderElection", interval, self.ttl)?;
        let Some(mut guard) = self.locks.try_acquire(&self.resource, self.ttl).await? else {
            return Ok(None);
        };
        let lost = guard.keep_alive(interval)?;
        Ok(Some(Leadership { guard, lost }))
    }

    /// Campaigns until elected: [`try_lead`](Self::try_lead) again and again, a short pause
    /// apart (a tenth of the TTL, 50 ms to 1 s), so a leader that steps down or dies is followed
    /// within about a pause (after its lease ran out, for one that died). Cancel-safe: dropping
    /// the future leaves no leadership behind.
    pub async fn campaign(&self) -> Result<Leadership<L::Backend>> {
        let pause = (self.ttl / 10).clamp(Duration::from_millis(50), Duration::from_secs(1));
        loop {
            if let Some(leadership) = self.try_lead().await? {
                return Ok(leadership);
            }
            tokio::time::sleep(lease::jitter(pause, 0.25)).await;
        }
    }

    /// The current leader, if any.
    pub async fn leader(&self) -> Result<Option<Holder>> {
        Ok(self
            .locks
            .lock_info(&self.resource)
            .await?
            .filter(|h| !h.stale))
    }

    /// The leader now, then each change of leader (another holder, a new term, a new published
    /// value), looking every `every`: a stream that ends only when dropped. A failed look is an
    /// `Err` item, and the stream goes on looking.
    pub fn observe(
        &self,
        every: Duration,
    ) -> impl futures_util::Stream<Item = Result<Option<Holder>>> + '_ {
        type Seen = Option<(String, u64, Option<String>)>;
        let start: (Option<Seen>, bool) = (None, true);
        futures_util::stream::unfold(start, move |(mut last, mut first)| async move {
            loop {
                if !std::mem::take(&mut first) {
                    tokio::time::sleep(every).await;
                }
                let now = match self.leader().await {
                    Ok(now) => now,
                    Err(e) => return Some((Err(e), (last, false))),
                };
                let seen = now.as_ref().map(|h| {
                    (
                        h.worker_id.clone(),
                        h.fencing_token,
                        h.task_info.value.clone(),
                    )
                });
                if last.as_ref() != Some(&seen) {
                    last = Some(seen);
                    return Some((Ok(now), (last, false)));
                }
            }
        })
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
    use std::sync::Mutex;

    use proptest::prelude::{Just, ProptestConfig, prop, prop_assert, prop_oneof, proptest};
    use proptest::strategy::Strategy as _;

    use crate::backend::Status;
    use crate::lock::{ListRequest, ReleaseStaleRequest, Released, StaleRelease};
    use crate::table::{self, LockTable, Op};

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
    }

    #[test]
    fn retry_configs_that_spin_or_never_end_are_refused_in_the_librarys_words() {
        let ms = Duration::from_millis;
        let base = RetryConfig::default();
        for (bad, words) in [
            (
                RetryConfig {
                    max_attempts: 0,
                    ..base
                },
                "max_attempts must be 1 to 10000",
            ),
            (
                RetryConfig {
                    max_attempts: u32::MAX,
                    ..base
                },
                "max_attempts must be 1 to 10000",
            ),
            (
                RetryConfig {
                    max_attempts: 5,
                    initial_backoff: Duration::ZERO,
                    max_backoff: Duration::ZERO,
                },
                "initial_backoff must be at least 10ms",
            ),
            (
                RetryConfig {
                    initial_backoff: ms(9),
                    ..base
                },
                "initial_backoff must be at least 10ms",
            ),
            (
                RetryConfig {
                    initial_backoff: Duration::from_secs(10),
                    ..base
                },
                "must not exceed max_backoff",
            ),
            (
                RetryConfig {
                    max_backoff: Duration::from_secs(7200),
                    ..base
                },
                "max_backoff must be at most 1h",
            ),
        ] {
            let e = bad.policy().unwrap_err();
            assert!(matches!(e, Error::Usage(_)), "{bad:?}: {e}");
            let text = e.to_string();
            assert!(
                text.contains(words) && text.starts_with("RetryConfig: "),
                "{text}"
            );
            assert!(!text.contains("--"), "names a CLI flag: {text}");
        }
        // One attempt never pauses, so it needs no backoff; the bounds themselves are allowed.
        let once = RetryConfig {
            max_attempts: 1,
            initial_backoff: Duration::ZERO,
            max_backoff: Duration::ZERO,
        };
        assert!(once.policy().is_ok());
        let most = RetryConfig {
            max_attempts: MAX_ATTEMPTS,
            initial_backoff: MIN_BACKOFF,
            ..base
        };
        assert!(most.policy().is_ok());
    }

    /// The workspace's pure lock table as a backend, on Tokio's clock (paused in these tests) so
    /// that leases, renewals and the guard's deadlines all follow one clock. Every answer comes
    /// `LATENCY` after the table applied the request, so a caller that stops waiting does so after
    /// its request took effect.
    struct TableBackend {
        table: Mutex<LockTable>,
        epoch: Instant,
    }

    const LATENCY: Duration = Duration::from_millis(50);

    impl TableBackend {
        fn new() -> TableBackend {
            TableBackend {
                table: Mutex::default(),
                epoch: Instant::now(),
            }
        }

        fn now_ms(&self) -> u64 {
            1_700_000_000_000 + lease::millis(Instant::now() - self.epoch)
        }

        async fn apply<T>(
            &self,
            op: Op,
            read: impl FnOnce(&Op, table::Response, u64) -> Result<T>,
        ) -> Result<T> {
            let now = self.now_ms();
            let resp = self.table.lock().unwrap().apply(&op, now);
            tokio::time::sleep(LATENCY).await;
            read(&op, resp, now)
        }

        /// The live holder's fencing token, if the lock is held and not stale.
        fn live_token(&self, name: &str) -> Option<u64> {
            let now = self.now_ms();
            let table = self.table.lock().unwrap();
            table
                .get(name)
                .filter(|r| !LockTable::is_stale(r, now))
                .map(|r| r.fencing_token)
        }
    }

    fn name(lock: &LockId) -> &str {
        match lock {
            LockId::Name(n) => n,
            LockId::Issue(_) => unreachable!("the table backend parses names only"),
        }
    }

    impl LockBackend for TableBackend {
        fn name(&self) -> &'static str {
            "table"
        }
        fn parse_lock(&self, raw: &str) -> Result<LockId> {
            Ok(LockId::Name(raw.into()))
        }
        async fn try_acquire(&self, req: &AcquireRequest) -> Result<Attempt> {
            self.apply(Op::acquire(name(&req.lock), req)?, table::attempt)
                .await
        }
        async fn release(&self, req: &ReleaseRequest) -> Result<Released> {
            let op = Op::release(
                name(&req.lock),
                &req.worker_id,
                req.force,
                req.fencing_token,
            )?;
            self.apply(op, table::released).await
        }
        async fn renew(&self, req: &RenewRequest) -> Result<Holder> {
            let op = Op::renew(name(&req.lock), &req.worker_id, req.fencing_token, req.ttl)?;
            self.apply(op, table::renewed).await
        }
        async fn status(&self, lock: &LockId) -> Result<Status> {
            let now = self.now_ms();
            let holder = self
                .table
                .lock()
                .unwrap()
                .get(name(lock))
                .map(|r| r.to_holder(now));
            Ok(Status::Named {
                name: name(lock).into(),
                holder,
            })
        }
        async fn list(&self, _: &ListRequest) -> Result<Vec<(String, Holder)>> {
            Ok(vec![])
        }
        async fn release_stale(&self, _: &ReleaseStaleRequest) -> Result<StaleRelease> {
            Err(Error::Unexpected("the table backend has no janitor".into()))
        }
    }

    #[derive(Debug, Clone)]
    enum Step {
        /// `extend` to this many seconds.
        Extend(u64),
        /// `extend` to this many seconds, dropped after this many ms (its renewal applied).
        CutShortExtend(u64, u64),
        /// `keep_alive` every this many seconds.
        KeepAlive(u64),
        /// Time passes, in ms.
        Wait(u64),
        /// Another worker tries to take the lock over (it can once the lease ran out).
        Steal,
    }

    fn steps() -> impl proptest::strategy::Strategy<Value = Vec<Step>> {
        prop::collection::vec(
            prop_oneof![
                // Short leases half the time: the ones a keep-alive cannot follow.
                prop_oneof![1u64..=4, 1u64..=40].prop_map(Step::Extend),
                (prop_oneof![1u64..=4, 1u64..=40], 0u64..=60)
                    .prop_map(|(t, ms)| Step::CutShortExtend(t, ms)),
                prop_oneof![1u64..=2, 1u64..=8].prop_map(Step::KeepAlive),
                (0u64..=15_000).prop_map(Step::Wait),
                Just(Step::Steal),
            ],
            1..10,
        )
    }

    /// Lets the keep-alive act on whatever the last step changed.
    async fn settle() {
        for _ in 0..8 {
            tokio::task::yield_now().await;
        }
    }

    async fn run_steps(ttl: u64, steps: Vec<Step>) -> std::result::Result<(), String> {
        let backend = Arc::new(TableBackend::new());
        let locks = LockClient {
            backend: backend.clone(),
            claimant: Claimant {
                worker_id: "holder".into(),
                node_id: "n".into(),
            },
            retry: RetryConfig::no_retry(),
        };
        let thief = LockClient {
            backend: backend.clone(),
            claimant: Claimant {
                worker_id: "thief".into(),
                node_id: "n".into(),
            },
            retry: RetryConfig::no_retry(),
        };
        let mut guard = locks
            .try_acquire("job", Duration::from_secs(ttl))
            .await
            .map_err(|e| e.to_string())?
            .ok_or("the first acquisition is granted")?;
        let token = guard.fencing_token();
        let mut signal: Option<LostLock> = None;
        let mut stolen = Vec::new();
        for (i, step) in steps.iter().enumerate() {
            match *step {
                Step::Extend(secs) => {
                    let _ = guard.extend(Duration::from_secs(secs)).await;
                }
                Step::CutShortExtend(secs, ms) => {
                    let _ = tokio::time::timeout(
                        Duration::from_millis(ms),
                        guard.extend(Duration::from_secs(secs)),
                    )
                    .await;
                }
                Step::KeepAlive(secs) => {
                    if let Ok(lost) = guard.keep_alive(Duration::from_secs(secs)) {
                        signal = Some(lost);
                    }
                }
                Step::Wait(ms) => tokio::time::sleep(Duration::from_millis(ms)).await,
                Step::Steal => {
                    if let Ok(Some(g)) = thief.try_acquire("job", Duration::from_secs(60)).await {
                        stolen.push(g);
                    }
                }
            }
            settle().await;
            // The guard vouches for its lock while it is not lost and either a keep-alive was
            // asked for or its own lease lasts: then the lock must be its grant, live.
            let lost = guard.is_lost();
            if let Some(s) = &signal
                && s.is_lost() != lost
            {
                return Err(format!("after step {i}: the signal and the guard disagree"));
            }
            let vouches = !lost && (signal.is_some() || !guard.time_remaining().is_zero());
            if vouches && backend.live_token("job") != Some(token) {
                return Err(format!(
                    "after step {i} ({step:?}): the guard vouches for its lock, but the table's \
                     live holder is {:?}",
                    backend.live_token("job")
                ));
            }
        }
        let _ = guard.release().await;
        for g in stolen {
            let _ = g.release().await;
        }
        Ok(())
    }

    fn paused() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1000))]
        #[test]
        fn a_guard_that_cannot_vouch_for_its_lock_says_so(ttl in 3u64..=30, steps in steps()) {
            let outcome = paused().block_on(run_steps(ttl, steps));
            prop_assert!(outcome.is_ok(), "{}", outcome.unwrap_err());
        }
    }

    #[test]
    fn extending_to_a_lease_too_short_to_keep_alive_is_refused_before_renewing() {
        // Issue 13's case: extend(2s) under keep_alive(10s) used to renew, then fail to restart
        // the keep-alive, and the lease ran out unsignalled.
        paused().block_on(async {
            let steps = vec![
                Step::KeepAlive(10),
                Step::Extend(2),
                Step::Wait(15_000),
                Step::Steal,
            ];
            run_steps(30, steps).await.unwrap();
        });
    }
}
