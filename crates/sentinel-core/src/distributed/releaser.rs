//! The release thread: where the releases that no caller waits for run — a dropped guard's, and
//! that of a grant whose acquisition was cancelled before it reached its caller.
//!
//! `Drop` is synchronous and may run anywhere: on a current-thread runtime whose `main` is
//! returning (a task spawned there never runs), on a runtime shutting down, or outside any
//! runtime. So those releases go to one thread of their own, started on first use, with a small
//! runtime of its own, as sqlx does for work its guards cannot finish in `drop`. It is bounded
//! everywhere: [`QUEUE`] releases wait at most (past that the lease is left to run out, logged
//! at `warn`), [`CONCURRENT`] run at once, each for at most [`JOB_TIME`].
//!
//! The thread does not keep the process alive: a release queued just before `main` returns is
//! lost with the process unless it waits for it ([`flush_releases`]), which is why
//! `LockGuard::release().await` is the way to know.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::sync::{Semaphore, mpsc, watch};

/// Releases waiting for the thread, at most.
const QUEUE: usize = 1024;
/// Releases running at once, at most.
const CONCURRENT: usize = 64;
/// The longest one release may take, its keep-alive's last renewal included; every backend's
/// own deadlines are shorter.
const JOB_TIME: Duration = Duration::from_secs(60);

type Job = Pin<Box<dyn Future<Output = ()> + Send>>;

struct Releaser {
    jobs: mpsc::Sender<(String, Job)>,
    /// Releases queued or running: what [`flush_releases`] waits to see at zero.
    pending: Arc<watch::Sender<usize>>,
}

static RELEASER: OnceLock<Option<Releaser>> = OnceLock::new();

fn releaser() -> Option<&'static Releaser> {
    RELEASER
        .get_or_init(|| match start() {
            Ok(r) => Some(r),
            Err(e) => {
                tracing::warn!(error = %e, "could not start sentinel's release thread: dropped guards are not released, their leases run out");
                None
            }
        })
        .as_ref()
}

fn start() -> std::io::Result<Releaser> {
    let (jobs, mut queue) = mpsc::channel::<(String, Job)>(QUEUE);
    let pending = Arc::new(watch::channel(0usize).0);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let done = pending.clone();
    std::thread::Builder::new()
        .name("sentinel-release".into())
        .spawn(move || {
            runtime.block_on(async move {
                let slots = Arc::new(Semaphore::new(CONCURRENT));
                while let Some((what, job)) = queue.recv().await {
                    let Ok(slot) = slots.clone().acquire_owned().await else {
                        break;
                    };
                    let done = done.clone();
                    tokio::spawn(async move {
                        if tokio::time::timeout(JOB_TIME, job).await.is_err() {
                            tracing::warn!(lock = %what, "releasing took longer than {}s and was given up: the lock stays until its lease runs out", JOB_TIME.as_secs());
                        }
                        drop(slot);
                        done.send_modify(|n| *n = n.saturating_sub(1));
                    });
                }
            })
        })?;
    Ok(Releaser { jobs, pending })
}

/// Runs `job` (the release of the lock `what`) on the release thread; never blocks.
pub(crate) fn submit(what: String, job: impl Future<Output = ()> + Send + 'static) {
    let Some(r) = releaser() else {
        return;
    };
    r.pending.send_modify(|n| *n += 1);
    if let Err(e) = r.jobs.try_send((what, Box::pin(job))) {
        r.pending.send_modify(|n| *n = n.saturating_sub(1));
        let (what, _) = e.into_inner();
        tracing::warn!(lock = %what, "{QUEUE} releases are already waiting: this one is dropped and the lock stays until its lease runs out");
    }
}

/// Waits until every release of a dropped guard (or of a cancelled acquisition's grant) queued
/// so far has finished, for at most `timeout`; `false` if some were still running then.
///
/// Those releases run on a background thread that ends with the process, so a service that drops
/// guards just before `main` returns calls this last — or, better, releases its guards with
/// `LockGuard::release().await`, which says how each release went.
pub async fn flush_releases(timeout: Duration) -> bool {
    let Some(r) = RELEASER.get().and_then(Option::as_ref) else {
        return true;
    };
    let mut pending = r.pending.subscribe();
    tokio::time::timeout(timeout, pending.wait_for(|n| *n == 0))
        .await
        .is_ok()
}
