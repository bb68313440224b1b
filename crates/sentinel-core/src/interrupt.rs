//! Undo on interruption: SIGINT/SIGTERM in the middle of an acquisition must not leave a lock
//! behind.
//!
//! [`Interruptible`] is the one place that does it for every command: a decorator around the
//! process's backend, so every command that acquires (claim, `claim --next`, steal-stale, run)
//! gets the undo by construction and no command calls it between its steps. It counts the
//! acquisitions in flight, refuses to start one once the interrupt is flagged, and registers the
//! release of every new grant (by worker id and fencing token, so only that grant is undone) until
//! the command has printed it (`main` calls [`reported`]). So an interrupted claim either holds
//! nothing or has told its caller.
//!
//! What only a backend sees while an attempt is in flight, it registers itself ([`on_interrupt`]):
//! a posted, not yet verified lock comment (GitHub deletes it); an acquire's request id (the
//! server backend asks the coordinator to withdraw it, which also ends a wait in its queue); a
//! nonce or lease (Redis, PostgreSQL, etcd, local).
//!
//! On a signal, [`wind_down`] flags the interrupt, runs what is registered (the backends' undos
//! cancel the attempts in flight), lets those attempts end (at most 45 s), and runs
//! the undos of the grants they returned meanwhile.
//!
//! Only a process that handles the signals (the binary) wraps its backend and so arms the
//! registry; in any other process — a service using the library — nothing is registered, since
//! nobody would run the actions and every grant would leave one behind.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use tokio::sync::watch;

use crate::backend::{Budget, LockBackend, Status};
use crate::barrier::{ArriveRequest, Arrived};
use crate::error::{Error, Result};
use crate::lease;
use crate::lock::{
    AcquireRequest, Attempt, Claimed, Holder, ListRequest, LockId, NextRequest, ReleaseRequest,
    ReleaseStaleRequest, Released, RenewRequest, StaleRelease,
};

type Undo = Box<dyn FnOnce() -> Pin<Box<dyn Future<Output = ()> + Send>> + Send>;

static PENDING: Mutex<BTreeMap<u64, Undo>> = Mutex::new(BTreeMap::new());
static NEXT: AtomicU64 = AtomicU64::new(0);
static ARMED: AtomicBool = AtomicBool::new(false);
/// The exit code of the signal that interrupted the process, once one has.
static STOPPED: LazyLock<watch::Sender<Option<i32>>> = LazyLock::new(|| watch::Sender::new(None));
/// Acquisitions under way through an [`Interruptible`] backend.
static IN_FLIGHT: LazyLock<watch::Sender<usize>> = LazyLock::new(|| watch::Sender::new(0));

/// How long an interrupted process waits for its acquisitions in flight before it undoes what it
/// knows of and exits. Each backend bounds one attempt by its own timeouts (GitHub's 15 s per
/// request, a few requests per claim); past this, a grant made later ends with its lease.
const SETTLE_LIMIT: Duration = Duration::from_secs(45);
/// How long one undo action may take: an unreachable backend must not keep an interrupted process
/// from exiting.
const UNDO_TIMEOUT: Duration = Duration::from_secs(10);

/// Keeps an undo action registered until dropped.
pub struct Registration(Option<u64>);

impl Registration {
    /// Leaves the undo registered after this guard is gone, until [`reported`] runs.
    pub fn keep_until_reported(mut self) {
        self.0 = None;
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        if let Some(id) = self.0 {
            pending().remove(&id);
        }
    }
}

fn pending() -> std::sync::MutexGuard<'static, BTreeMap<u64, Undo>> {
    // An undo that panicked must not disable every later one.
    PENDING.lock().unwrap_or_else(|e| e.into_inner())
}

/// Whether a SIGINT/SIGTERM has arrived; work that is about to commit checks this under its lock.
pub fn is_interrupted() -> bool {
    STOPPED.borrow().is_some()
}

/// The command's result has been printed: nothing registered needs undoing any more.
pub fn reported() {
    pending().clear();
}

/// Registers `undo` to run if the process is interrupted before the returned guard is dropped.
pub fn on_interrupt<F, Fut>(undo: F) -> Registration
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    if !ARMED.load(Ordering::SeqCst) {
        return Registration(None);
    }
    let id = NEXT.fetch_add(1, Ordering::Relaxed);
    pending().insert(id, Box::new(move || Box::pin(undo())));
    Registration(Some(id))
}

/// How many undo actions are registered now.
pub fn registered() -> usize {
    pending().len()
}

/// From now on, undo actions are registered: this process will run them when interrupted.
pub fn arm() {
    ARMED.store(true, Ordering::SeqCst);
}

/// Marks the process as interrupted by the signal whose exit code is `code` (130, 143): from now
/// on, work checking [`is_interrupted`] commits nothing and no acquisition starts.
pub fn flag(code: i32) {
    STOPPED.send_if_modified(|stopped| {
        let first = stopped.is_none();
        if first {
            *stopped = Some(code);
        }
        first
    });
}

/// Resolves once no acquisition is in flight, or after [`SETTLE_LIMIT`].
async fn settled() {
    let mut rx = IN_FLIGHT.subscribe();
    if tokio::time::timeout(SETTLE_LIMIT, rx.wait_for(|n| *n == 0))
        .await
        .is_err()
    {
        tracing::warn!(
            "an interrupted acquisition did not end within {}s; a lock it is granted later stays \
             held until its lease ends",
            SETTLE_LIMIT.as_secs()
        );
    }
}

/// Runs every registered undo action now (called by the process that handles the signals, after
/// [`flag`]; [`wind_down`] does both).
pub async fn undo_all() {
    let pending: Vec<Undo> = std::mem::take(&mut *pending()).into_values().collect();
    for undo in pending {
        undo().await;
    }
}

/// What a process does when a stop signal (exit code `code`) arrives while `work` may be
/// acquiring: flags the interrupt; runs the undo actions registered so far, among them the
/// backends' undos of attempts in flight (withdrawing a queued acquire ends its wait); keeps
/// `work` going until no acquisition is in flight (or it ends); then runs the undo actions the
/// attempts that ended meanwhile registered for their grants. `work` is dropped unfinished if it
/// goes on past that (a pause between attempts, a child process).
pub async fn wind_down(code: i32, work: impl Future) {
    flag(code);
    let mut work = std::pin::pin!(work);
    // A backend's undo of an attempt in flight waits for that attempt to finish, so `work` is
    // kept going while the undos run: left unpolled, it would hold them to their deadline.
    let mut ended = false;
    let mut undo = std::pin::pin!(undo_all());
    loop {
        tokio::select! {
            () = undo.as_mut() => break,
            _ = work.as_mut(), if !ended => ended = true,
        }
    }
    if !ended {
        tokio::select! {
            _ = work => {}
            () = settled() => {}
        }
    }
    undo_all().await;
}

/// One acquisition under way: the process's undo waits for it. Entered before the interrupt
/// check, so that either the check sees the flag or the undo sees the acquisition.
struct InFlight;

impl InFlight {
    fn enter() -> Result<InFlight> {
        IN_FLIGHT.send_modify(|n| *n += 1);
        let flight = InFlight;
        match *STOPPED.borrow() {
            Some(code) => Err(Error::Interrupted(code)),
            None => Ok(flight),
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        IN_FLIGHT.send_modify(|n| *n = n.saturating_sub(1));
    }
}

/// A [`LockBackend`] whose acquisitions an interrupted process takes back (see the module
/// documentation). Everything else is passed through unchanged.
pub struct Interruptible<B> {
    inner: Arc<B>,
}

impl<B: LockBackend + 'static> Interruptible<B> {
    /// Wraps `inner` and arms the undo registry: the process promises to call [`wind_down`] (or
    /// [`flag`] and [`undo_all`]) when SIGINT or SIGTERM arrives.
    pub fn new(inner: B) -> Interruptible<B> {
        arm();
        Interruptible {
            inner: Arc::new(inner),
        }
    }

    /// The wrapped backend.
    pub fn inner(&self) -> &B {
        &self.inner
    }

    /// Keeps `holder`'s new grant of `lock` undoable until the command has reported it.
    fn undo_grant(&self, lock: &LockId, holder: &Holder) {
        let backend = self.inner.clone();
        let req = ReleaseRequest {
            lock: lock.clone(),
            worker_id: holder.worker_id.clone(),
            force: false,
            fencing_token: Some(holder.fencing_token),
        };
        let expires = holder.expires_at;
        on_interrupt(move || async move {
            let what = backend.describe(&req.lock);
            match tokio::time::timeout(UNDO_TIMEOUT, backend.release(&req)).await {
                Ok(Ok(_)) => tracing::info!(lock = %what, "released the interrupted claim's grant"),
                // Already ended, or taken over meanwhile: nothing of ours is left to release.
                Ok(Err(Error::NotOwner(_))) => {}
                Ok(Err(e)) => tracing::warn!(
                    "could not release {what} after the interrupt: {e}; it stays held until its \
                     lease ends at {}",
                    lease::human(expires)
                ),
                Err(_) => tracing::warn!(
                    "releasing {what} after the interrupt took over {}s; it stays held until its \
                     lease ends at {}",
                    UNDO_TIMEOUT.as_secs(),
                    lease::human(expires)
                ),
            }
        })
        .keep_until_reported();
    }
}

impl<B: LockBackend + 'static> LockBackend for Interruptible<B> {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    fn parse_lock(&self, raw: &str) -> Result<LockId> {
        self.inner.parse_lock(raw)
    }

    fn describe(&self, lock: &LockId) -> String {
        self.inner.describe(lock)
    }

    fn waits_server_side(&self) -> bool {
        self.inner.waits_server_side()
    }

    fn holds_groups(&self) -> bool {
        self.inner.holds_groups()
    }

    async fn try_acquire(&self, req: &AcquireRequest) -> Result<Attempt> {
        let _flight = InFlight::enter()?;
        let attempt = self.inner.try_acquire(req).await?;
        // A re-adopted lock was held before this process asked: not the interrupt's to release.
        if let Attempt::Granted(g) = &attempt
            && !g.adopted
        {
            self.undo_grant(&req.lock, &g.holder);
        }
        Ok(attempt)
    }

    async fn release(&self, req: &ReleaseRequest) -> Result<Released> {
        self.inner.release(req).await
    }

    async fn renew(&self, req: &RenewRequest) -> Result<Holder> {
        self.inner.renew(req).await
    }

    async fn status(&self, lock: &LockId) -> Result<Status> {
        self.inner.status(lock).await
    }

    fn renew_budget(&self) -> Option<Budget> {
        self.inner.renew_budget()
    }

    async fn list(&self, req: &ListRequest) -> Result<Vec<(String, Holder)>> {
        self.inner.list(req).await
    }

    async fn release_stale(&self, req: &ReleaseStaleRequest) -> Result<StaleRelease> {
        // A take-over notice half made (GitHub) is the backend's to withdraw: let it finish.
        let _flight = InFlight::enter()?;
        self.inner.release_stale(req).await
    }

    async fn claim_next(&self, req: &NextRequest) -> Result<(LockId, Claimed)> {
        let _flight = InFlight::enter()?;
        let (lock, claimed) = self.inner.claim_next(req).await?;
        if !claimed.grant.adopted {
            self.undo_grant(&lock, &claimed.grant.holder);
        }
        Ok((lock, claimed))
    }

    async fn arrive(&self, req: &ArriveRequest) -> Result<Arrived> {
        // An arrival holds nothing once answered; while it waits, the backend takes it back
        // when its client goes (the coordinator) or its lease runs out (the local backend).
        self.inner.arrive(req).await
    }
}

/// Installs the SIGINT/SIGTERM handlers now — before any work starts, so no signal can kill the
/// process between a commit and its undo registration — and returns a future that resolves with
/// the conventional exit code when one arrives. Must be called inside a tokio runtime.
pub fn signalled() -> impl Future<Output = i32> {
    let signals = Signals::listen();
    async move {
        match signals {
            Ok(mut signals) => signals.recv().await.exit_code(),
            Err(_) => std::future::pending().await,
        }
    }
}

/// A signal that asks the process to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopSignal {
    /// SIGINT (Ctrl-C).
    Interrupt,
    /// SIGTERM (`kill`, a service manager, a CI runner cancelling a job).
    Terminate,
}

impl StopSignal {
    /// The signal number (SIGINT 2, SIGTERM 15).
    pub fn number(self) -> i32 {
        match self {
            StopSignal::Interrupt => 2,
            StopSignal::Terminate => 15,
        }
    }

    /// The conventional exit code of a process it stopped: 128 + the signal number.
    pub fn exit_code(self) -> i32 {
        128 + self.number()
    }

    /// The conventional name, `SIGINT` or `SIGTERM`, for messages.
    pub fn name(self) -> &'static str {
        match self {
            StopSignal::Interrupt => "SIGINT",
            StopSignal::Terminate => "SIGTERM",
        }
    }
}

/// SIGINT and SIGTERM as they arrive, for the commands that handle signals themselves instead of
/// letting `main` undo and exit (`heartbeat` without `--once`; `run`, which calls [`wind_down`]
/// itself while it claims). Listening starts at
/// [`Signals::listen`]: from then on the signals no longer end the process by default.
pub struct Signals {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
}

impl Signals {
    /// Starts listening for SIGINT and SIGTERM. Their default action (ending the process) stays
    /// replaced for the rest of the process's life, even after `Signals` is dropped.
    ///
    /// # Errors
    ///
    /// The OS refused to install a handler. Panics outside a tokio runtime.
    pub fn listen() -> std::io::Result<Signals> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Signals {
            int: signal(SignalKind::interrupt())?,
            term: signal(SignalKind::terminate())?,
        })
    }

    /// The next SIGINT or SIGTERM. Cancel-safe: a signal is never lost between two calls.
    pub async fn recv(&mut self) -> StopSignal {
        tokio::select! {
            _ = self.int.recv() => StopSignal::Interrupt,
            _ = self.term.recv() => StopSignal::Terminate,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn only_live_registrations_run() {
        arm();
        let ran = Arc::new(AtomicBool::new(false));
        let dropped = Arc::new(AtomicBool::new(false));
        let r = ran.clone();
        let _kept = on_interrupt(move || async move { r.store(true, Ordering::SeqCst) });
        let d = dropped.clone();
        drop(on_interrupt(move || async move {
            d.store(true, Ordering::SeqCst)
        }));
        undo_all().await;
        assert!(ran.load(Ordering::SeqCst));
        assert!(!dropped.load(Ordering::SeqCst));
    }
}
