//! The PostgreSQL backend in process, against a real server: what its pipelined transactions
//! promise beyond the conformance suite's rows.

use std::time::{Duration, Instant};

use sentinel::backend::LockBackend;
use sentinel::lock::{AcquireRequest, Attempt, LockId, ReleaseRequest, Takeover};
use sentinel::postgres::PostgresBackend;

use crate::servers::Postgres;

/// An exclusive claim of `lock` by `worker` for ten minutes, without waiting.
fn acquire(lock: &LockId, worker: &str) -> AcquireRequest {
    crate::conformance::acquire(lock, worker, Duration::from_secs(600), Takeover::None)
}

fn force_release(lock: &LockId) -> ReleaseRequest {
    ReleaseRequest {
        lock: lock.clone(),
        worker_id: "janitor".into(),
        force: true,
        fencing_token: None,
    }
}

/// A claim whose future is dropped anywhere in its transaction (after `BEGIN` and the name's
/// advisory lock were sent, before `COMMIT`) leaves its pooled connection outside any
/// transaction: another process's claim of the name is answered at once, instead of waiting on
/// an advisory lock held by an idle transaction until `lock_timeout`.
#[test]
fn claims_cut_short_leave_no_open_transaction_on_postgres() {
    let Some(pg) = Postgres::start() else {
        return;
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let cut = PostgresBackend::new(&pg.url()).unwrap();
        let other = PostgresBackend::new(&pg.url()).unwrap();
        let lock = LockId::Name("cut-short".into());
        // Connections made and statements prepared, so that the cuts below land in the
        // transaction rather than in the connection's set-up.
        for b in [&cut, &other] {
            assert!(matches!(
                b.try_acquire(&acquire(&lock, "warm")).await.unwrap(),
                Attempt::Granted(_)
            ));
            b.release(&force_release(&lock)).await.unwrap();
        }
        for i in 0..60u64 {
            let after = Duration::from_micros(50 * i);
            let _ = tokio::time::timeout(after, cut.try_acquire(&acquire(&lock, "cut"))).await;
            let started = Instant::now();
            let answer = other.try_acquire(&acquire(&lock, "other")).await;
            let took = started.elapsed();
            assert!(
                took < Duration::from_secs(2),
                "cut after {after:?}: the next claim took {took:?} ({answer:?})"
            );
            answer.unwrap();
            cut.release(&force_release(&lock)).await.unwrap();
        }
    });
}
