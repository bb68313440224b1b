//! Leader election among three replicas (tasks of one process here; processes or machines alike
//! with a shared backend). Each campaigns every second; the leader works a few terms' worth, then
//! steps down and another takes over with a larger fencing token.
//!
//! ```sh
//! cargo run --example leader
//! ```

use std::path::Path;
use std::time::Duration;

use sentinel::distributed::{LeaderElection, LockClient};
use sentinel::local::LocalBackend;

#[tokio::main]
async fn main() -> sentinel::Result<()> {
    let scratch = tempfile::tempdir()?;
    let replicas: Vec<_> = (1..=3)
        .map(|n| {
            let dir = scratch.path().to_path_buf();
            tokio::spawn(async move { replica(&dir, n).await })
        })
        .collect();
    for r in replicas {
        r.await
            .map_err(|e| sentinel::Error::Unexpected(e.to_string()))??;
    }
    Ok(())
}

async fn replica(dir: &Path, n: u32) -> sentinel::Result<()> {
    let locks = LockClient::new(LocalBackend::open(dir)?, format!("replica-{n}"))?;
    let election = LeaderElection::new(locks, "leader", Duration::from_secs(3));
    // Campaign until this replica has led once (bounded: a few terms at most).
    for _ in 0..30 {
        if let Some(mut term) = election.try_lead().await? {
            println!("replica-{n} leads (term token {})", term.fencing_token());
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(4)) => {
                    println!("replica-{n} steps down");
                    term.step_down().await?;
                }
                reason = term.lost() => println!("replica-{n} lost leadership: {reason:?}"),
            }
            return Ok(());
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    println!("replica-{n} never led");
    Ok(())
}
