//! The janitor (`steal-stale --all`): releases every stale lock of a backend, for a scheduled job.
//!
//! Backend-neutral: it lists the held locks ([`LockBackend::list`]) and hands each stale one to
//! [`LockBackend::release_stale`], which decides again on the backend's own clock, so a holder
//! that renews between the listing and the release keeps its lock. Live locks are never touched.

use std::time::Duration;

use serde::Serialize;

use crate::backend::LockBackend;
use crate::error::{Error, Result};
use crate::lock::{Claimant, Holder, ListRequest, ReleaseStaleRequest, StaleRelease};

/// What the janitor did with one held lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Stale, and released.
    Released,
    /// Stale; `--dry-run` left it alone.
    WouldRelease,
    /// Live: never touched.
    Live,
    /// Stale when listed, but by the time of the release its holder had renewed or released it,
    /// or another worker had taken it over: left alone.
    Skipped,
}

/// One held lock the janitor found, and what it did with it.
#[derive(Debug, Clone)]
pub struct Swept {
    /// The lock's display name (`#12`, `build-42`).
    pub lock: String,
    /// Released, left alone as live, or skipped because it changed after the listing.
    pub action: Action,
    /// The holder the action is about: the released one, or the one that keeps the lock.
    pub holder: Holder,
}

/// The janitor's run: every held lock found, and the locks it could not deal with.
#[derive(Debug)]
pub struct Sweep {
    /// Every held lock listed, in the backend's listing order, except those in `failures`.
    pub locks: Vec<Swept>,
    /// Stale locks whose release failed: the lock's display name and the error. The sweep went
    /// on with the other locks.
    pub failures: Vec<(String, Error)>,
}

/// Releases every stale lock (`dry_run`: only says which). `since` bounds how far back a backend
/// that must search for locks (GitHub) looks. A lock that fails does not stop the others.
pub async fn sweep<B: LockBackend>(
    backend: &B,
    since: Duration,
    janitor: &Claimant,
    dry_run: bool,
) -> Result<Sweep> {
    let held = backend.list(&ListRequest { since }).await?;
    let mut sweep = Sweep {
        locks: Vec::with_capacity(held.len()),
        failures: Vec::new(),
    };
    for (lock, seen) in held {
        let (action, holder) = if !seen.stale {
            (Action::Live, seen)
        } else if dry_run {
            (Action::WouldRelease, seen)
        } else {
            match release(backend, &lock, janitor, &seen).await {
                Ok(StaleRelease::Released(h)) => (Action::Released, h),
                Ok(StaleRelease::Kept(h)) => (Action::Skipped, h),
                Ok(StaleRelease::Free) => (Action::Skipped, seen),
                Err(e) => {
                    tracing::warn!(%lock, error = %e, "could not release a stale lock");
                    sweep.failures.push((lock, e));
                    continue;
                }
            }
        };
        sweep.locks.push(Swept {
            lock,
            action,
            holder,
        });
    }
    Ok(sweep)
}

async fn release<B: LockBackend>(
    backend: &B,
    name: &str,
    janitor: &Claimant,
    seen: &Holder,
) -> Result<StaleRelease> {
    backend
        .release_stale(&ReleaseStaleRequest {
            lock: backend.parse_lock(name)?,
            janitor: janitor.clone(),
            seen: Some(seen.clone()),
        })
        .await
}
