//! The library API over the local backend: what a guard does when it is dropped.

use std::time::Duration;

use sentinel_core::distributed::{DistributedLock, LockClient, RetryConfig};
use sentinel_local::LocalBackend;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_guard_releases_in_the_background() {
    let dir = tempfile::tempdir().unwrap();
    let a = LockClient::new(LocalBackend::open(dir.path()).unwrap(), "a").unwrap();
    let b = LockClient::new(LocalBackend::open(dir.path()).unwrap(), "b")
        .unwrap()
        .with_retry(RetryConfig::no_retry())
        .unwrap();
    let ttl = Duration::from_secs(30);
    let guard = a.acquire("job", ttl).await.unwrap();
    assert!(guard.time_remaining() > Duration::from_secs(25));
    assert!(b.try_acquire("job", ttl).await.unwrap().is_none());
    let e = b.acquire("job", ttl).await.unwrap_err();
    assert_eq!(e.exit_code(), sentinel_core::error::ExitCode::Conflict);
    drop(guard);
    let mut waited = Duration::ZERO;
    while a.is_locked("job").await.unwrap() {
        assert!(waited < Duration::from_secs(5), "the drop never released");
        tokio::time::sleep(Duration::from_millis(10)).await;
        waited += Duration::from_millis(10);
    }
    let g = b
        .try_acquire("job", ttl)
        .await
        .unwrap()
        .expect("free again");
    assert_eq!(g.fencing_token(), 2);
    assert!(g.release().await.unwrap());
}
