//! Undo on interruption: SIGINT/SIGTERM in the middle of a claim must not leave a lock behind.
//!
//! Code that has made a change it would withdraw on failure (a posted, not yet verified lock
//! comment) registers an undo action for as long as the change is at risk; `main` runs whatever is
//! registered when a signal arrives, then exits 130 (SIGINT) or 143 (SIGTERM).

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

type Undo = Box<dyn FnOnce() -> Pin<Box<dyn Future<Output = ()> + Send>> + Send>;

static PENDING: Mutex<BTreeMap<u64, Undo>> = Mutex::new(BTreeMap::new());
static NEXT: AtomicU64 = AtomicU64::new(0);

/// Keeps an undo action registered until dropped.
pub struct Registration(u64);

impl Drop for Registration {
    fn drop(&mut self) {
        PENDING.lock().unwrap().remove(&self.0);
    }
}

/// Registers `undo` to run if the process is interrupted before the returned guard is dropped.
pub fn on_interrupt<F, Fut>(undo: F) -> Registration
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let id = NEXT.fetch_add(1, Ordering::Relaxed);
    PENDING
        .lock()
        .unwrap()
        .insert(id, Box::new(move || Box::pin(undo())));
    Registration(id)
}

/// Runs every registered undo action (called once, by `main`, after a signal).
pub async fn undo_all() {
    let pending: Vec<Undo> = std::mem::take(&mut *PENDING.lock().unwrap())
        .into_values()
        .collect();
    for undo in pending {
        undo().await;
    }
}

/// Resolves with the conventional exit code when SIGINT or SIGTERM arrives.
pub async fn signalled() -> i32 {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = int.recv() => 130,
        _ = term.recv() => 143,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::AtomicBool;

    #[tokio::test]
    async fn only_live_registrations_run() {
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
