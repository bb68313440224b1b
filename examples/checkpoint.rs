//! A stream processor's checkpoint: one writer at a time, fenced.
//!
//! Takes the lock `checkpoint`, keeps it alive while it "writes" the checkpoint, stops at once if
//! the lock is lost, and releases it. The backend comes from the environment like the CLI's:
//! `SENTINEL_REDIS_URL` (Redis), `SENTINEL_DATABASE_URL` (PostgreSQL), otherwise local locks in a
//! temporary directory.
//!
//! ```sh
//! cargo run --example checkpoint
//! SENTINEL_REDIS_URL=redis://127.0.0.1:6379 cargo run --example checkpoint
//! ```

use std::time::Duration;

use sentinel::backend::Backend;
use sentinel::distributed::{DistributedLock, LockClient, acquire_all};
use sentinel::local::LocalBackend;
use sentinel::postgres::PostgresBackend;
use sentinel::redis::RedisBackend;

#[tokio::main]
async fn main() -> sentinel::Result<()> {
    let scratch = tempfile::tempdir()?;
    let backend = if let Ok(url) = std::env::var("SENTINEL_REDIS_URL") {
        Backend::Redis(RedisBackend::new(&url)?)
    } else if let Ok(url) = std::env::var("SENTINEL_DATABASE_URL") {
        Backend::Postgres(PostgresBackend::new(&url)?)
    } else {
        Backend::Local(LocalBackend::open(scratch.path())?)
    };
    let locks = LockClient::new(backend, format!("checkpointer-{}", std::process::id()))?;

    let mut guard = locks.acquire("checkpoint", Duration::from_secs(6)).await?;
    println!(
        "holding {} with fencing token {} until {}",
        guard.resource(),
        guard.fencing_token(),
        guard.expires_at()
    );
    let mut lost = guard.keep_alive(Duration::from_secs(2))?;
    tokio::select! {
        // Longer than the lease: only the keep-alive makes it.
        _ = write_checkpoint(guard.fencing_token()) => println!("checkpoint written"),
        reason = lost.wait() => println!("lock lost, checkpoint abandoned: {reason:?}"),
    }
    println!("released: {}", guard.release().await?);

    // Several partitions at once, in a global order, all or nothing.
    let parts = acquire_all(
        &locks,
        &["partition-2", "partition-1"],
        Duration::from_secs(30),
    )
    .await?;
    for g in &parts {
        println!("compacting {} (token {})", g.resource(), g.fencing_token());
    }
    for g in parts {
        g.release().await?;
    }
    Ok(())
}

/// Stands for the protected work; a real writer hands `token` to the store, which refuses writes
/// with a smaller token than it has seen.
async fn write_checkpoint(token: u64) {
    for step in 1..=4 {
        tokio::time::sleep(Duration::from_secs(2)).await;
        println!("  step {step}/4 written with token {token}");
    }
}
