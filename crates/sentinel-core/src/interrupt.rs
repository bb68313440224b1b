//! Undo on interruption: SIGINT/SIGTERM in the middle of a claim must not leave a lock behind.
//!
//! Code that has made a change it would withdraw on failure (a posted, not yet verified lock
//! comment, a fresh grant) registers an undo action for as long as the change is at risk; `main`
//! flags the interrupt, runs whatever is registered, then exits 130 (SIGINT) or 143 (SIGTERM).
//! A grant stays at risk until the command has printed it: its registration is kept past the
//! grant ([`Registration::keep_until_reported`]) and dropped by `main` after printing
//! ([`reported`]). So an interrupted claim either holds nothing or has told its caller.
//!
//! Only a process that handles the signals (the binary, through [`signalled`]) runs the undo
//! actions; in any other process — a service using the library — nothing is registered, since
//! nobody would run the actions and every grant would leave one behind.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

type Undo = Box<dyn FnOnce() -> Pin<Box<dyn Future<Output = ()> + Send>> + Send>;

static PENDING: Mutex<BTreeMap<u64, Undo>> = Mutex::new(BTreeMap::new());
static NEXT: AtomicU64 = AtomicU64::new(0);
static INTERRUPTED: AtomicBool = AtomicBool::new(false);
static ARMED: AtomicBool = AtomicBool::new(false);

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
    INTERRUPTED.load(Ordering::SeqCst)
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

/// Marks the process as interrupted: from now on, work checking [`is_interrupted`] commits nothing.
pub fn flag() {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Runs every registered undo action (called once, by `main`, after [`flag`]).
pub async fn undo_all() {
    let pending: Vec<Undo> = std::mem::take(&mut *pending()).into_values().collect();
    for undo in pending {
        undo().await;
    }
}

/// Installs the SIGINT/SIGTERM handlers now — before any work starts, so no signal can kill the
/// process between a commit and its undo registration — and returns a future that resolves with
/// the conventional exit code when one arrives. Must be called inside a tokio runtime.
pub fn signalled() -> impl Future<Output = i32> {
    arm();
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
/// letting `main` undo and exit (`heartbeat` without `--once`, `run`). Listening starts at
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
    use std::sync::Arc;

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
