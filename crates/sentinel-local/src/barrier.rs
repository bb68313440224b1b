//! Barrier arrivals on this host: the table's barriers ([`sentinel_core::table::Meeting`]),
//! waited for by polling.
//!
//! An arrival counts for [`LEASE`] past its last check-in, and the waiting process checks in
//! well within it, so a participant killed while it waits stops counting after at most
//! [`LEASE`]. Polls read the table without writing; only a check-in that renews the lease, the
//! collecting of an opening and the leaving write. An arrival dropped before it is answered (a
//! cancelled future) leaves the barrier at once.

use std::time::Duration;

use tokio::time::Instant;

use sentinel_core::barrier::{ArriveRequest, Arrived, count_mismatch, validate_count};
use sentinel_core::error::Result;
use sentinel_core::lease;
use sentinel_core::lock::validate_name;
use sentinel_core::table::Meeting;

use super::LocalBackend;

/// How long an arrival counts without a check-in.
pub const LEASE: Duration = Duration::from_secs(2);
/// First and longest pause between two polls.
const FIRST_POLL: Duration = Duration::from_millis(10);
const LONGEST_POLL: Duration = Duration::from_millis(100);

/// An arrival not yet answered: leaves the barrier if dropped.
struct Waiting {
    backend: LocalBackend,
    name: String,
    id: String,
    answered: bool,
}

impl Drop for Waiting {
    fn drop(&mut self) {
        if self.answered {
            return;
        }
        let (backend, name, id) = (self.backend.clone(), self.name.clone(), self.id.clone());
        let leave = move || {
            let _ = backend.transact(|t, now| t.leave(&name, &id, now));
        };
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => drop(rt.spawn_blocking(leave)),
            Err(_) => leave(),
        }
    }
}

impl LocalBackend {
    pub(super) async fn arrive_at(&self, req: &ArriveRequest) -> Result<Arrived> {
        validate_name(&req.barrier)?;
        validate_count(req.count)?;
        let deadline = Instant::now().checked_add(req.wait);
        let mut waiting = Waiting {
            backend: self.clone(),
            name: req.barrier.clone(),
            id: format!("{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..)),
            answered: false,
        };
        let (name, id, count) = (req.barrier.clone(), waiting.id.clone(), req.count);
        let worker = req.claimant.worker_id.clone();
        let lease_ms = lease::millis(LEASE);
        let first = self
            .blocking(move |b| {
                b.transact(|t, now| t.arrive((&name, &id, &worker), count, lease_ms, now))
            })
            .await?;
        let mut renewed = Instant::now();
        let mut pause = FIRST_POLL;
        let mut meeting = first;
        loop {
            match meeting {
                Meeting::Opened { count } => {
                    waiting.answered = true;
                    return Ok(Arrived::Opened { count });
                }
                Meeting::CountMismatch { count: theirs } => {
                    waiting.answered = true;
                    return Err(count_mismatch(&req.barrier, theirs, req.count));
                }
                Meeting::Gone { arrived, .. } => {
                    waiting.answered = true;
                    return Ok(Arrived::NotOpened {
                        arrived,
                        count: req.count,
                    });
                }
                Meeting::Waiting { .. } => {}
            }
            let now = Instant::now();
            if deadline.is_some_and(|d| now >= d) {
                // Gone, or opened for it just before: either ends the loop above.
                meeting = self.step(&waiting, Step::Leave).await?;
                continue;
            }
            let sleep = deadline.map_or(pause, |d| pause.min(d - now));
            tokio::time::sleep(sleep).await;
            pause = (pause * 2).min(LONGEST_POLL);
            let (name, id) = (waiting.name.clone(), waiting.id.clone());
            let opened = self
                .blocking(move |b| Ok(b.store.read()?.is_opened(&name, &id)))
                .await?;
            if opened || renewed.elapsed() >= LEASE / 4 {
                meeting = self.step(&waiting, Step::CheckIn).await?;
                renewed = Instant::now();
            }
        }
    }

    /// One write for arrival `w`: a check-in (collect its opening or renew its lease) or
    /// leaving.
    async fn step(&self, w: &Waiting, step: Step) -> Result<Meeting> {
        let (name, id) = (w.name.clone(), w.id.clone());
        let lease_ms = lease::millis(LEASE);
        self.blocking(move |b| {
            b.transact(|t, now| match step {
                Step::CheckIn => t.check_in(&name, &id, lease_ms, now),
                Step::Leave => t.leave(&name, &id, now),
            })
        })
        .await
    }
}

#[derive(Clone, Copy)]
enum Step {
    CheckIn,
    Leave,
}
