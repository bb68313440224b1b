//! Local backend: named locks on this host, safe across processes, with no set-up.
//!
//! This module owns the host-local side of locking:
//!
//! - [`store`]: the [`LockTable`](sentinel_core::table::LockTable) persisted in a data directory, every
//!   change an atomic, durable read-modify-write under an OS file lock shared by all processes.
//! - [`LocalBackend`]: the [`LockBackend`] over that store. Each call validates its input, reads
//!   its [`Clock`] once inside the file lock, and applies exactly one [`Op`] in one store
//!   transaction, translating the table's answer into the backend-neutral types of
//!   [`sentinel_core::lock`] and the CLI's errors. Shared holds and semaphores are the table's
//!   too (its groups, with a reservation instead of a queue), so they hold across processes as
//!   locks do.
//!
//! Barriers are the table's too ([`barrier`]): each arrival a short lease renewed while its
//! process polls. Every transaction keeps the events of what it did to the holds in the table,
//! which [`LocalBackend::watch`] reads ([`watch`]).
//!
//! The store calls block (the file lock waits for the current writer, which takes milliseconds,
//! and gives up after a deadline), so the async trait methods run them under `spawn_blocking`.
//! The clock is injectable so that tests move time instead of sleeping.

mod barrier;
pub mod store;
mod watch;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use sentinel_core::backend::{LockBackend, Status, foreign};
use sentinel_core::barrier::{ArriveRequest, Arrived};
use sentinel_core::diagnose::Check;
use sentinel_core::error::{Error, Result};
use sentinel_core::interrupt;
use sentinel_core::lease::{Clock, SystemClock};
use sentinel_core::lock::{
    AcquireRequest, Attempt, Holder, ListRequest, LockId, ReleaseRequest, ReleaseStaleRequest,
    Released, RenewRequest, StaleRelease, validate_name,
};
use sentinel_core::table::{self, LockTable, Op, Response};

pub use store::LocalStore;

/// The local backend over a store directory.
#[derive(Debug, Clone)]
pub struct LocalBackend {
    store: LocalStore,
    clock: Arc<dyn Clock>,
}

impl LocalBackend {
    /// Opens the backend on `dir`, creating the directory if needed; time is the host clock.
    pub fn open(dir: impl Into<PathBuf>) -> Result<LocalBackend> {
        Self::with_clock(dir, Arc::new(SystemClock))
    }

    /// Opens the backend with a clock of the caller's choosing.
    pub fn with_clock(dir: impl Into<PathBuf>, clock: Arc<dyn Clock>) -> Result<LocalBackend> {
        Ok(LocalBackend {
            store: LocalStore::open(dir)?,
            clock,
        })
    }

    /// The store underneath, for reading the table directly (tests, diagnostics). Changes made
    /// through it bypass the backend's validation.
    pub fn store(&self) -> &LocalStore {
        &self.store
    }

    /// One acquisition attempt: a grant (new, re-adopted or taken over), or the current holder.
    ///
    /// A process interrupted by SIGINT/SIGTERM must end up holding nothing or reporting its grant.
    /// So the attempt registers, before it starts, an undo that takes the same file lock and
    /// withdraws a new grant by its fencing token; and the transaction itself refuses to grant
    /// once the interrupt is flagged. Whichever of the two gets the file lock first, no grant
    /// outlives the interrupted process unreported.
    pub fn acquire_blocking(&self, req: &AcquireRequest) -> Result<Attempt> {
        let name = name_of(&req.lock)?;
        let cmd = Op::acquire(name, req)?;
        let granted: Arc<Mutex<Option<u64>>> = Arc::default();
        let undo = {
            let this = self.clone();
            let granted = granted.clone();
            let name = name.to_string();
            interrupt::on_interrupt(move || async move {
                let token = *granted.lock().unwrap_or_else(|e| e.into_inner());
                if let Some(token) = token {
                    let _ = tokio::task::spawn_blocking(move || {
                        this.transact(|t, _| t.withdraw(&name, token))
                    })
                    .await;
                }
            })
        };
        let (now, resp) = self.transact(|table, now| {
            if interrupt::is_interrupted() {
                return Err(Error::Unexpected("interrupted".into()));
            }
            let resp = table.apply(&cmd, now);
            if let Response::Granted {
                record,
                adopted: false,
                ..
            } = &resp
            {
                *granted.lock().unwrap_or_else(|e| e.into_inner()) = Some(record.fencing_token);
            }
            Ok((now, resp))
        })??;
        // A grant stays undoable until the command has reported it.
        undo.keep_until_reported();
        table::attempt(&cmd, resp, now)
    }

    /// Releases `name`. Releasing a free lock succeeds (`was_held: false`); a lock held by another
    /// worker (or under another fencing token than a given one) is a `NotOwner` error naming the
    /// holder, unless `force`.
    pub fn release_blocking(
        &self,
        name: &str,
        worker_id: &str,
        force: bool,
        fencing_token: Option<u64>,
    ) -> Result<Released> {
        let cmd = Op::release(name, worker_id, force, fencing_token)?;
        let (now, resp) = self.apply(&cmd)?;
        table::released(&cmd, resp, now)
    }

    /// Renews the lease of a lock `worker_id` holds. Every way of not holding it (held by another
    /// worker, expired, released, granted again under a new token) is a `NotOwner` error: the
    /// caller has lost the lock.
    pub fn renew_blocking(
        &self,
        name: &str,
        worker_id: &str,
        fencing_token: Option<u64>,
        ttl: Option<std::time::Duration>,
    ) -> Result<Holder> {
        let cmd = Op::renew(name, worker_id, fencing_token, ttl)?;
        let (now, resp) = self.apply(&cmd)?;
        table::renewed(&cmd, resp, now)
    }

    /// Releases `name` if, at the time read inside the file lock, its lease has run out.
    pub fn release_stale_blocking(&self, name: &str) -> Result<StaleRelease> {
        validate_name(name)?;
        let cmd = Op::ReleaseStale {
            name: name.to_string(),
        };
        let (now, resp) = self.apply(&cmd)?;
        table::stale_release(&cmd, resp, now)
    }

    /// The exclusive holder of `name`, if any (stale locks included, flagged `stale`).
    pub fn status_blocking(&self, name: &str) -> Result<Option<Holder>> {
        Ok(self.status_of(name)?.holder().cloned())
    }

    /// What `status` reads of `name`: a lock's holder as it always was, or, for a name held
    /// shared or as a semaphore or reserved by a waiting claim, every hold and the reservation.
    fn status_of(&self, name: &str) -> Result<Status> {
        validate_name(name)?;
        let table = self.store.read()?;
        let now = self.clock.now_ms();
        Ok(match table.holds_of(name, now) {
            Some(holds) => Status::Holds(holds),
            None => Status::Named {
                name: name.to_string(),
                holder: table.get(name).map(|r| r.to_holder(now)),
            },
        })
    }

    /// Every hold (stale ones included), sorted by name: one row per hold of a shared lock or
    /// semaphore.
    pub fn list_blocking(&self) -> Result<Vec<(String, Holder)>> {
        let table = self.store.read()?;
        let now = self.clock.now_ms();
        Ok(table
            .holds()
            .into_iter()
            .map(|(name, r)| (name.to_string(), r.to_holder(now)))
            .collect())
    }

    /// Applies one command in one transaction; the time is read once, inside the lock, so
    /// successive transactions on this host see non-decreasing times (barring clock steps).
    fn apply(&self, cmd: &Op) -> Result<(u64, Response)> {
        self.transact(|table, now| (now, table.apply(cmd, now)))
    }

    /// One store transaction at the time read inside the file lock, with the events of what it
    /// did to the holds kept for watchers.
    fn transact<R>(&self, f: impl FnOnce(&mut LockTable, u64) -> R) -> Result<R> {
        self.store.transact(|table| {
            let now = self.clock.now_ms();
            let before = table.hold_records();
            let result = f(table, now);
            table.note_changes(before, now);
            result
        })
    }

    /// Runs a store call off the async runtime's worker threads.
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(LocalBackend) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || f(this))
            .await
            .map_err(|e| Error::Unexpected(format!("the local store task failed: {e}")))?
    }
}

impl LocalBackend {
    /// `sentinel doctor`'s checks: the store's directory takes a new file (every change is a
    /// new file renamed over the table) and the table reads. Takes no lock and changes none.
    pub async fn diagnose(&self) -> Vec<Check> {
        let checks = self
            .blocking(|this| {
                let table = this.store.table_path();
                let dir = table.parent().unwrap_or(std::path::Path::new("."));
                let file = dir.join(format!(".doctor.{}", std::process::id()));
                let written = std::fs::File::create(&file).and_then(|f| f.sync_all());
                let _ = std::fs::remove_file(&file);
                let dir_check = match written {
                    Ok(()) => Check::ok("data directory", format!("{} is writable", dir.display())),
                    Err(e) => Check::fail(
                        "data directory",
                        Error::Unexpected(format!("cannot write in {}: {e}", dir.display())),
                    ),
                };
                let table_check = Check::of(
                    "lock table",
                    this.store
                        .read()
                        .map(|t| format!("{}: {} hold(s) recorded", table.display(), t.len())),
                );
                Ok(vec![dir_check, table_check])
            })
            .await;
        checks.unwrap_or_else(|e| vec![Check::fail("data directory", e)])
    }
}

impl LockBackend for LocalBackend {
    fn name(&self) -> &'static str {
        "local"
    }

    fn parse_lock(&self, raw: &str) -> Result<LockId> {
        validate_name(raw)?;
        Ok(LockId::Name(raw.to_string()))
    }

    fn holds_groups(&self) -> bool {
        true
    }

    async fn arrive(&self, req: &ArriveRequest) -> Result<Arrived> {
        self.arrive_at(req).await
    }

    async fn try_acquire(&self, req: &AcquireRequest) -> Result<Attempt> {
        let req = req.clone();
        self.blocking(move |b| b.acquire_blocking(&req)).await
    }

    async fn release(&self, req: &ReleaseRequest) -> Result<Released> {
        let name = name_of(&req.lock)?.to_string();
        let (worker, force, token) = (req.worker_id.clone(), req.force, req.fencing_token);
        self.blocking(move |b| b.release_blocking(&name, &worker, force, token))
            .await
    }

    async fn renew(&self, req: &RenewRequest) -> Result<Holder> {
        let name = name_of(&req.lock)?.to_string();
        let (worker, token, ttl) = (req.worker_id.clone(), req.fencing_token, req.ttl);
        self.blocking(move |b| b.renew_blocking(&name, &worker, token, ttl))
            .await
    }

    async fn status(&self, lock: &LockId) -> Result<Status> {
        let name = name_of(lock)?.to_string();
        self.blocking(move |b| b.status_of(&name)).await
    }

    async fn list(&self, _req: &ListRequest) -> Result<Vec<(String, Holder)>> {
        self.blocking(|b| b.list_blocking()).await
    }

    async fn release_stale(&self, req: &ReleaseStaleRequest) -> Result<StaleRelease> {
        // The table decides on its own clock inside the file lock; what the caller saw is moot.
        let name = name_of(&req.lock)?.to_string();
        self.blocking(move |b| b.release_stale_blocking(&name))
            .await
    }
}

fn name_of(lock: &LockId) -> Result<&str> {
    match lock {
        LockId::Name(n) => Ok(n),
        other => Err(foreign(other, "local")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sentinel_core::error::ExitCode;
    use sentinel_core::lease;
    use sentinel_core::lock::{Claimant, Grant, HoldKind, Takeover, TaskInfo};
    use std::collections::{BTreeMap, BTreeSet};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Barrier, Mutex};
    use std::time::Duration;

    fn claimant(w: &str) -> Claimant {
        Claimant {
            worker_id: w.into(),
            node_id: "host-1".into(),
        }
    }

    const MIN: Duration = Duration::from_secs(60);

    fn acq(
        b: &LocalBackend,
        name: &str,
        claimant: &Claimant,
        ttl: Duration,
        takeover: Takeover,
        task_info: &TaskInfo,
    ) -> Result<Attempt> {
        b.acquire_blocking(&AcquireRequest {
            lock: LockId::Name(name.into()),
            claimant: claimant.clone(),
            ttl,
            takeover,
            task_info: task_info.clone(),
            readopt: true,
            attempt: 0,
            wait: Duration::ZERO,
            kind: HoldKind::Exclusive,
        })
    }

    fn grant(a: Attempt) -> Grant {
        match a {
            Attempt::Granted(g) => g,
            Attempt::Held(h) => panic!("expected a grant, held by {h:?}"),
        }
    }

    #[test]
    fn acquire_status_renew_release_cycle() {
        let tmp = tempfile::tempdir().unwrap();
        let b = LocalBackend::open(tmp.path()).unwrap();
        assert_eq!(b.status_blocking("job").unwrap(), None);
        let info = TaskInfo {
            task_type: Some("bug-fix".into()),
            ..TaskInfo::default()
        };
        let g = grant(acq(&b, "job", &claimant("w1"), MIN, Takeover::None, &info).unwrap());
        assert!(!g.adopted && g.took_over.is_none());
        assert_eq!(g.holder.worker_id, "w1");
        assert_eq!(g.holder.node_id, "host-1");
        assert_eq!(g.holder.fencing_token, 1);
        assert_eq!(g.holder.task_info, info);
        assert_eq!(
            g.holder.expires_at - g.holder.heartbeat_last,
            chrono::Duration::seconds(60)
        );
        assert!(!g.holder.stale);
        assert_eq!(b.status_blocking("job").unwrap().unwrap().fencing_token, 1);

        // Re-running the claim re-adopts.
        let g2 = grant(acq(&b, "job", &claimant("w1"), MIN, Takeover::None, &info).unwrap());
        assert!(g2.adopted);
        assert_eq!(g2.holder.fencing_token, 1);

        // Another worker is told who holds it.
        match acq(
            &b,
            "job",
            &claimant("w2"),
            MIN,
            Takeover::Stale,
            &TaskInfo::default(),
        )
        .unwrap()
        {
            Attempt::Held(h) => assert_eq!((h.worker_id.as_str(), h.stale), ("w1", false)),
            other => panic!("{other:?}"),
        }

        let h = b.renew_blocking("job", "w1", None, None).unwrap();
        assert_eq!(h.fencing_token, 1);
        assert!(h.heartbeat_last >= g.holder.heartbeat_last);

        let err = b.release_blocking("job", "w2", false, None).unwrap_err();
        assert_eq!(err.exit_code(), ExitCode::NotOwner);
        assert!(err.to_string().contains("\"w1\""), "{err}");

        let r = b.release_blocking("job", "w1", false, None).unwrap();
        assert!(r.was_held);
        assert_eq!(r.previous.unwrap().worker_id, "w1");
        let r = b.release_blocking("job", "w1", false, None).unwrap();
        assert_eq!(
            r,
            Released {
                was_held: false,
                previous: None
            }
        );
        assert_eq!(b.status_blocking("job").unwrap(), None);

        // The next grant gets a larger token.
        let g3 = grant(
            acq(
                &b,
                "job",
                &claimant("w2"),
                MIN,
                Takeover::None,
                &TaskInfo::default(),
            )
            .unwrap(),
        );
        assert_eq!(g3.holder.fencing_token, 2);
    }

    #[test]
    fn renew_errors_are_not_owner() {
        let tmp = tempfile::tempdir().unwrap();
        let clock = lease::ManualClock::at(1_000_000);
        let b = LocalBackend::with_clock(tmp.path(), Arc::new(clock.clone())).unwrap();
        let err = b.renew_blocking("job", "w1", None, None).unwrap_err();
        assert_eq!(err.exit_code(), ExitCode::NotOwner);
        assert!(err.to_string().contains("not held"), "{err}");

        grant(
            acq(
                &b,
                "job",
                &claimant("w1"),
                MIN,
                Takeover::None,
                &TaskInfo::default(),
            )
            .unwrap(),
        );
        let err = b.renew_blocking("job", "w2", None, None).unwrap_err();
        assert_eq!(err.exit_code(), ExitCode::NotOwner);
        assert!(err.to_string().contains("\"w1\""), "{err}");

        clock.advance(Duration::from_secs(120));
        assert!(b.status_blocking("job").unwrap().unwrap().stale);
        let err = b.renew_blocking("job", "w1", None, None).unwrap_err();
        assert_eq!(err.exit_code(), ExitCode::NotOwner);
        assert!(err.to_string().contains("expired"), "{err}");
        // Still blocks a plain claim, flagged stale; steal-stale takes it with a new token.
        match acq(
            &b,
            "job",
            &claimant("w2"),
            MIN,
            Takeover::None,
            &TaskInfo::default(),
        )
        .unwrap()
        {
            Attempt::Held(h) => assert!(h.stale),
            other => panic!("{other:?}"),
        }
        let g = grant(
            acq(
                &b,
                "job",
                &claimant("w2"),
                MIN,
                Takeover::Stale,
                &TaskInfo::default(),
            )
            .unwrap(),
        );
        assert_eq!(g.holder.fencing_token, 2);
        let old = g.took_over.unwrap();
        assert_eq!((old.worker_id.as_str(), old.stale), ("w1", true));
        let err = b.renew_blocking("job", "w1", None, None).unwrap_err();
        assert!(err.to_string().contains("lost"), "{err}");
        // Forced take-over and forced release.
        let g = grant(
            acq(
                &b,
                "job",
                &claimant("w3"),
                MIN,
                Takeover::Any,
                &TaskInfo::default(),
            )
            .unwrap(),
        );
        assert_eq!(g.holder.fencing_token, 3);
        assert_eq!(g.took_over.unwrap().worker_id, "w2");
        assert!(
            b.release_blocking("job", "w1", true, None)
                .unwrap()
                .was_held
        );
    }

    #[test]
    fn release_stale_spares_live_locks() {
        let tmp = tempfile::tempdir().unwrap();
        let clock = lease::ManualClock::at(1_000_000);
        let b = LocalBackend::with_clock(tmp.path(), Arc::new(clock.clone())).unwrap();
        assert_eq!(b.release_stale_blocking("job").unwrap(), StaleRelease::Free);
        let none = TaskInfo::default();
        grant(acq(&b, "job", &claimant("w1"), MIN, Takeover::None, &none).unwrap());
        clock.advance(MIN);
        match b.release_stale_blocking("job").unwrap() {
            StaleRelease::Kept(h) => assert_eq!((h.worker_id.as_str(), h.stale), ("w1", false)),
            other => panic!("{other:?}"),
        }
        clock.advance(Duration::from_millis(1));
        match b.release_stale_blocking("job").unwrap() {
            StaleRelease::Released(h) => assert!(h.stale && h.worker_id == "w1"),
            other => panic!("{other:?}"),
        }
        assert_eq!(b.status_blocking("job").unwrap(), None);
        assert!(b.renew_blocking("job", "w1", None, None).is_err());
    }

    #[test]
    fn bad_input_is_a_usage_error() {
        let tmp = tempfile::tempdir().unwrap();
        let b = LocalBackend::open(tmp.path()).unwrap();
        let none = TaskInfo::default();
        for name in ["", "a\nb"] {
            let e = acq(&b, name, &claimant("w"), MIN, Takeover::None, &none).unwrap_err();
            assert_eq!(e.exit_code(), ExitCode::Usage);
            assert_eq!(
                b.release_blocking(name, "w", false, None)
                    .unwrap_err()
                    .exit_code(),
                ExitCode::Usage
            );
            assert_eq!(
                b.renew_blocking(name, "w", None, None)
                    .unwrap_err()
                    .exit_code(),
                ExitCode::Usage
            );
            assert_eq!(
                b.status_blocking(name).unwrap_err().exit_code(),
                ExitCode::Usage
            );
        }
        let long = "x".repeat(257);
        assert_eq!(
            b.status_blocking(&long).unwrap_err().exit_code(),
            ExitCode::Usage
        );
        let e = acq(&b, "a", &claimant(""), MIN, Takeover::None, &none).unwrap_err();
        assert_eq!(e.exit_code(), ExitCode::Usage);
        let e = acq(
            &b,
            "a",
            &claimant("w"),
            Duration::ZERO,
            Takeover::None,
            &none,
        )
        .unwrap_err();
        assert_eq!(e.exit_code(), ExitCode::Usage);
        // Huge timeouts saturate instead of failing.
        grant(
            acq(
                &b,
                "a",
                &claimant("w"),
                Duration::MAX,
                Takeover::None,
                &none,
            )
            .unwrap(),
        );
        assert!(!b.status_blocking("a").unwrap().unwrap().stale);
        // Names are free text up to 256 printable characters.
        grant(
            acq(
                &b,
                "résumé build ✓/../x",
                &claimant("w"),
                MIN,
                Takeover::None,
                &none,
            )
            .unwrap(),
        );
    }

    #[test]
    fn list_is_sorted_by_name() {
        let tmp = tempfile::tempdir().unwrap();
        let b = LocalBackend::open(tmp.path()).unwrap();
        assert!(b.list_blocking().unwrap().is_empty());
        for (name, w) in [("charlie", "w1"), ("alpha", "w2"), ("bravo", "w3")] {
            grant(
                acq(
                    &b,
                    name,
                    &claimant(w),
                    MIN,
                    Takeover::None,
                    &TaskInfo::default(),
                )
                .unwrap(),
            );
        }
        let list = b.list_blocking().unwrap();
        let names: Vec<_> = list.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["alpha", "bravo", "charlie"]);
        assert_eq!(list[0].1.worker_id, "w2");
        assert_eq!(list[0].1.fencing_token, 2);
    }

    #[test]
    fn sixteen_concurrent_claimers_exactly_one_wins() {
        let tmp = tempfile::tempdir().unwrap();
        let barrier = Arc::new(Barrier::new(16));
        let handles: Vec<_> = (0..16)
            .map(|i| {
                let dir = tmp.path().to_path_buf();
                let barrier = barrier.clone();
                std::thread::spawn(move || {
                    // Each thread has its own store, as separate processes would.
                    let b = LocalBackend::open(dir).unwrap();
                    barrier.wait();
                    acq(
                        &b,
                        "the-one",
                        &claimant(&format!("worker-{i}")),
                        MIN,
                        Takeover::None,
                        &TaskInfo::default(),
                    )
                    .unwrap()
                })
            })
            .collect();
        let attempts: Vec<Attempt> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        let winners: Vec<&Grant> = attempts
            .iter()
            .filter_map(|a| match a {
                Attempt::Granted(g) => Some(g),
                Attempt::Held(_) => None,
            })
            .collect();
        assert_eq!(winners.len(), 1, "{attempts:?}");
        let winner = &winners[0].holder;
        assert_eq!(winner.fencing_token, 1);
        // Every loser was told the same holder, and every reader agrees.
        for a in &attempts {
            if let Attempt::Held(h) = a {
                assert_eq!((&h.worker_id, h.fencing_token), (&winner.worker_id, 1));
            }
        }
        let b = LocalBackend::open(tmp.path()).unwrap();
        assert_eq!(
            b.status_blocking("the-one").unwrap().unwrap().worker_id,
            winner.worker_id
        );
        assert_eq!(b.store().read().unwrap().next_token(), 2);
    }

    #[test]
    fn sixteen_threads_cycling_on_four_names_lose_no_update() {
        const THREADS: usize = 16;
        const CYCLES: usize = 50;
        const NAMES: [&str; 4] = ["n0", "n1", "n2", "n3"];
        let tmp = tempfile::tempdir().unwrap();
        let inside: Arc<Vec<AtomicUsize>> =
            Arc::new(NAMES.iter().map(|_| AtomicUsize::new(0)).collect());
        let tokens: Arc<Mutex<Vec<(usize, u64)>>> = Arc::default();
        let barrier = Arc::new(Barrier::new(THREADS));
        let handles: Vec<_> = (0..THREADS)
            .map(|i| {
                let dir = tmp.path().to_path_buf();
                let (inside, tokens, barrier) = (inside.clone(), tokens.clone(), barrier.clone());
                std::thread::spawn(move || {
                    let b = LocalBackend::open(dir).unwrap();
                    let me = format!("worker-{i}");
                    barrier.wait();
                    for c in 0..CYCLES {
                        let n = (i + c) % NAMES.len();
                        let attempt = acq(
                            &b,
                            NAMES[n],
                            &claimant(&me),
                            MIN,
                            Takeover::None,
                            &TaskInfo::default(),
                        )
                        .unwrap();
                        if let Attempt::Granted(g) = attempt {
                            assert!(!g.adopted);
                            // Mutual exclusion: nobody else is inside this name.
                            assert_eq!(inside[n].fetch_add(1, Ordering::SeqCst), 0);
                            tokens.lock().unwrap().push((n, g.holder.fencing_token));
                            std::thread::yield_now();
                            assert_eq!(inside[n].fetch_sub(1, Ordering::SeqCst), 1);
                            let r = b.release_blocking(NAMES[n], &me, false, None).unwrap();
                            assert!(r.was_held, "our lock vanished");
                            assert_eq!(r.previous.unwrap().fencing_token, g.holder.fencing_token);
                        }
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        let tokens = tokens.lock().unwrap();
        let table = LocalStore::open(tmp.path()).unwrap().read().unwrap();
        assert!(table.is_empty(), "every lock was released");
        // Every grant got a distinct token and the counter advanced once per grant: no lost update.
        let distinct: BTreeSet<u64> = tokens.iter().map(|(_, t)| *t).collect();
        assert_eq!(distinct.len(), tokens.len());
        assert_eq!(table.next_token() - 1, tokens.len() as u64);
        assert_eq!(distinct, (1..table.next_token()).collect());
        assert!(!tokens.is_empty());
        // Per name, grants happened in token order (tokens pushed while holding the lock).
        let mut per_name: BTreeMap<usize, Vec<u64>> = BTreeMap::new();
        for (n, t) in tokens.iter() {
            per_name.entry(*n).or_default().push(*t);
        }
        for ts in per_name.values() {
            assert!(ts.windows(2).all(|w| w[0] < w[1]), "{ts:?}");
        }
    }
}
