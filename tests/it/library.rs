//! The library's promises that only real servers can show (issue 13, "no phantom holders"): an
//! `acquire` dropped at any point leaves no lock behind, a guard dropped as `main` returns (on a
//! current-thread runtime, or after its runtime is gone) is released, the loss signal and the
//! trait object work on a real backend, and configurations that would spin or name CLI flags are
//! refused. Each backend is started by [`Subject`], as in the conformance suite.

use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use sentinel::distributed::{
    DistributedLock, DynDistributedLock, LeaderElection, LockClient, RetryConfig, flush_releases,
};
use sentinel::error::{Error, ExitCode};

use crate::conformance::{Kind, Subject};

const TTL: Duration = Duration::from_secs(60);

fn current_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Where an acquisition is cut short: after this many turns of the runtime, or this much time.
#[derive(Debug, Clone, Copy)]
enum Cut {
    Turns(usize),
    After(Duration),
}

/// Runs `fut` until `cut`, then drops it: its output if it finished first.
async fn cut_short<F: Future>(fut: F, cut: Cut) -> Option<F::Output> {
    match cut {
        Cut::After(d) => tokio::time::timeout(d, fut).await.ok(),
        Cut::Turns(turns) => {
            let mut fut = pin!(fut);
            for _ in 0..=turns {
                let polled = std::future::poll_fn(|cx| Poll::Ready(fut.as_mut().poll(cx))).await;
                if let Poll::Ready(out) = polled {
                    return Some(out);
                }
                tokio::task::yield_now().await;
            }
            None
        }
    }
}

/// Waits, within `limit`, until nobody holds `lock` with a live lease.
async fn until_free<L: DistributedLock>(observer: &L, lock: &str, limit: Duration) -> bool {
    let start = Instant::now();
    loop {
        if !observer.is_locked(lock).await.unwrap() {
            return true;
        }
        if start.elapsed() > limit {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Cancels `acquire` at every await point (turn by turn, then at fractions of a whole
/// acquisition): after each cut the lock is free again within a bound, or the future finished
/// and its guard holds it. At least one cut must come after the backend granted, or the test
/// would show nothing.
fn cancelled_acquisitions_leave_no_lock(kind: Kind) {
    let Some(s) = Subject::new(kind) else {
        return;
    };
    let rt = current_thread();
    // The next acquisition waits (well under the TTL) for the release of a grant that came after
    // its caller stopped waiting: on a slow backend (GitHub) the lock may look free right after
    // the cut and be granted to the abandoned attempt a moment later.
    let patient = RetryConfig {
        max_attempts: 60,
        initial_backoff: Duration::from_millis(50),
        max_backoff: Duration::from_millis(500),
    };
    let locks = LockClient::new(s.backend(&rt), "canceller")
        .unwrap()
        .with_retry(patient)
        .unwrap();
    let observer = LockClient::new(s.backend(&rt), "observer").unwrap();
    let job = s.lock("job");
    rt.block_on(async {
        let start = Instant::now();
        let whole = locks.acquire(&job, TTL).await.unwrap();
        let took = start.elapsed();
        whole.release().await.unwrap();
        let mut cuts: Vec<Cut> = (0..40).map(Cut::Turns).collect();
        cuts.extend((1..10).map(|i| Cut::After(took * i / 10)));
        let (mut cleaned, mut finished) = (0, 0);
        for cut in cuts {
            match cut_short(locks.acquire(&job, TTL), cut).await {
                Some(guard) => {
                    finished += 1;
                    guard.unwrap().release().await.unwrap();
                }
                None => {
                    if observer.is_locked(&job).await.unwrap() {
                        cleaned += 1;
                    }
                    assert!(
                        until_free(&observer, &job, Duration::from_secs(15)).await,
                        "{kind:?}: an acquisition cut short at {cut:?} left the lock held by nobody's guard"
                    );
                }
            }
        }
        // The last abandoned attempt, too, ends released.
        tokio::time::sleep(2 * took).await;
        assert!(flush_releases(Duration::from_secs(20)).await);
        assert!(
            until_free(&observer, &job, Duration::from_secs(15)).await,
            "{kind:?}: the last abandoned attempt left the lock held"
        );
        assert!(cleaned > 0, "{kind:?}: no cut came after a grant ({finished} finished)");
    });
}

#[test]
fn cancelled_acquisitions_leave_no_lock_on_redis() {
    cancelled_acquisitions_leave_no_lock(Kind::Redis);
}

#[test]
fn cancelled_acquisitions_leave_no_lock_on_github() {
    cancelled_acquisitions_leave_no_lock(Kind::Github);
}

#[test]
fn cancelled_acquisitions_leave_no_lock_on_postgres() {
    cancelled_acquisitions_leave_no_lock(Kind::Postgres);
}

#[test]
fn cancelled_acquisitions_leave_no_lock_on_etcd() {
    cancelled_acquisitions_leave_no_lock(Kind::Etcd);
}

#[test]
fn cancelled_acquisitions_leave_no_lock_on_the_coordinator() {
    cancelled_acquisitions_leave_no_lock(Kind::Server);
}

fn multi_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// A guard dropped as `main` returns (on a current-thread and on a multi-thread runtime), and one
/// dropped after its runtime is gone, are released: another client sees the lock free right
/// after the process waits for its releases.
fn dropped_guards_are_released(kind: Kind) {
    let Some(s) = Subject::new(kind) else {
        return;
    };
    for main in [current_thread(), multi_thread(), multi_thread()] {
        drop_as_main_returns(kind, &s, main);
    }
}

fn drop_as_main_returns(kind: Kind, s: &Subject, main: tokio::runtime::Runtime) {
    let kind = format!("{kind:?} on {:?}", main.handle().runtime_flavor());
    let job = s.lock("job");
    let build = s.lock("build");
    let locks = LockClient::new(s.backend(&main), "main").unwrap();
    let kept = main.block_on(async {
        let mut guard = locks.acquire(&job, TTL).await.unwrap();
        guard.keep_alive(Duration::from_secs(5)).unwrap();
        let kept = locks.acquire(&build, TTL).await.unwrap();
        // `guard` is dropped here, as `main` returns.
        kept
    });
    drop(main);
    // Dropped outside any runtime.
    drop(kept);
    let after = current_thread();
    let observer = LockClient::new(s.backend(&after), "observer").unwrap();
    after.block_on(async {
        assert!(flush_releases(Duration::from_secs(20)).await, "{kind}");
        for lock in [&job, &build] {
            assert!(
                !observer.is_locked(lock).await.unwrap(),
                "{kind}: {lock} is still held after its guard was dropped"
            );
        }
    });
}

#[test]
fn dropped_guards_are_released_on_local() {
    dropped_guards_are_released(Kind::Local);
}

#[test]
fn dropped_guards_are_released_on_redis() {
    dropped_guards_are_released(Kind::Redis);
}

#[test]
fn dropped_guards_are_released_on_the_coordinator() {
    dropped_guards_are_released(Kind::Server);
}

/// Issue 13's loss case on a real server: extending a kept-alive guard to a lease too short to
/// keep alive is refused before anything is renewed, so the lease and its keep-alive go on.
#[test]
fn an_extend_the_keep_alive_could_not_follow_is_refused_before_renewing() {
    let Some(s) = Subject::new(Kind::Redis) else {
        return;
    };
    let rt = current_thread();
    let locks = LockClient::new(s.backend(&rt), "keeper").unwrap();
    let job = s.lock("job");
    rt.block_on(async {
        let mut guard = locks.acquire(&job, Duration::from_secs(30)).await.unwrap();
        let lost = guard.keep_alive(Duration::from_secs(10)).unwrap();
        let before = locks.lock_info(&job).await.unwrap().unwrap();
        let e = guard.extend(Duration::from_secs(2)).await.unwrap_err();
        assert_eq!(e.exit_code(), ExitCode::Usage, "{e}");
        assert!(
            e.to_string().contains("at least 3s") && !e.to_string().contains("--"),
            "{e}"
        );
        let after = locks.lock_info(&job).await.unwrap().unwrap();
        assert_eq!(after.expires_at, before.expires_at, "nothing was renewed");
        assert!(!lost.is_lost() && !guard.is_lost());
        assert!(guard.release().await.unwrap());
    });
}

/// `Arc<dyn DynDistributedLock>`: a backend chosen at run time behind one type, with guards,
/// keep-alive, extend, release, and leader election over it.
#[test]
fn locks_work_as_a_trait_object() {
    let (Some(local), Some(redis)) = (Subject::new(Kind::Local), Subject::new(Kind::Redis)) else {
        return;
    };
    let rt = current_thread();
    let choices: Vec<Arc<dyn DynDistributedLock>> = vec![
        Arc::new(LockClient::new(local.backend(&rt), "svc").unwrap()),
        Arc::new(LockClient::new(redis.backend(&rt), "svc").unwrap()),
    ];
    rt.block_on(async {
        for locks in choices {
            let mut guard = locks.acquire("partition-7", TTL).await.unwrap();
            assert!(
                locks
                    .try_acquire("partition-7", TTL)
                    .await
                    .unwrap()
                    .is_none()
            );
            let lost = guard.keep_alive(Duration::from_secs(5)).unwrap();
            locks
                .extend(&mut guard, Duration::from_secs(90))
                .await
                .unwrap();
            assert!(locks.is_locked("partition-7").await.unwrap());
            assert!(!lost.is_lost());
            assert!(locks.release(guard).await.unwrap());
            assert!(!locks.is_locked("partition-7").await.unwrap());
            let election = LeaderElection::new(locks.clone(), "leader", Duration::from_secs(9));
            let leadership = election
                .try_lead()
                .await
                .unwrap()
                .expect("nobody leads yet");
            assert_eq!(election.leader().await.unwrap().unwrap().worker_id, "svc");
            assert!(leadership.step_down().await.unwrap());
        }
    });
}

/// A configuration that would spin against the backend, and a library call given a lease too
/// short to keep, are usage errors in the library's own words (no CLI flag named).
#[test]
fn unbounded_or_unkeepable_settings_are_refused_in_the_librarys_words() {
    let Some(s) = Subject::new(Kind::Local) else {
        return;
    };
    let rt = current_thread();
    let spin = RetryConfig {
        max_attempts: u32::MAX,
        initial_backoff: Duration::ZERO,
        max_backoff: Duration::ZERO,
    };
    let e = LockClient::new(s.backend(&rt), "w")
        .unwrap()
        .with_retry(spin)
        .err()
        .unwrap();
    assert!(matches!(e, Error::Usage(_)), "{e}");
    assert!(e.to_string().starts_with("RetryConfig: "), "{e}");
    let locks = LockClient::new(s.backend(&rt), "w").unwrap();
    rt.block_on(async {
        let election = LeaderElection::new(locks, "leader", Duration::from_secs(2));
        let e = election.try_lead().await.err().unwrap();
        assert_eq!(e.exit_code(), ExitCode::Usage, "{e}");
        let text = e.to_string();
        assert!(
            text.starts_with("LeaderElection: ") && !text.contains("--"),
            "{text}"
        );
    });
}
