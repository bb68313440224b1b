//! Memory: a fresh single node's resident set idle, then holding `locks` locks with a lease far
//! longer than the measurement, acquired by concurrent clients, each lock with `task_info` bytes
//! of task info (as JSON), so that the cost of the largest a client may send is measured too.

use std::path::Path;
use std::time::Duration;

use anyhow::{Result, anyhow, bail};
use serde_json::json;
use tokio::time::Instant;

use crate::http::Http;
use crate::procs::{Sentinel, disk_usage, rss};

/// Time for the node to finish what a burst of writes leaves behind (a snapshot being written)
/// before its memory is read.
const SETTLE: Duration = Duration::from_secs(2);

pub struct Memory {
    pub locks: u64,
    pub idle_rss: u64,
    pub held_rss: u64,
    pub peak_rss: u64,
    /// The node's data directory: the Raft log and the last snapshot.
    pub disk: u64,
    pub acquire_time: Duration,
}

pub async fn run(bin: &Path, clients: u64, locks: u64, task_info: u64) -> Result<Memory> {
    let http = Http::new(Duration::from_secs(10));
    let node = Sentinel::start(bin, 1, &http).await?;
    let pid = node.nodes[0]
        .pid()
        .ok_or_else(|| anyhow!("the node is not running"))?;
    tokio::time::sleep(SETTLE).await;
    let (idle_rss, _) = rss(pid)?;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for client in 0..clients.min(locks) {
        let url = node.nodes[0].url.clone();
        tasks.push(tokio::spawn(async move {
            let http = Http::new(Duration::from_secs(10));
            let mut body = json!({"holder": format!("bench-{client}"), "ttl_ms": 3_600_000});
            if task_info > 0 {
                body["task_info"] = task_info_of(task_info);
            }
            for n in (client..locks).step_by(clients as usize) {
                match http
                    .post(&format!("{url}/locks/held-{n}/acquire"), &body)
                    .await
                {
                    Ok((200, _)) => {}
                    Ok((status, answer)) => return Err(format!("lock {n}: {status} {answer}")),
                    Err(e) => return Err(format!("lock {n}: {e}")),
                }
            }
            Ok(())
        }));
    }
    for task in tasks {
        match task.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => bail!("acquiring the locks: {e}"),
            Err(e) => bail!("a client task failed: {e}"),
        }
    }
    let acquire_time = started.elapsed();
    tokio::time::sleep(SETTLE).await;
    let held = held_locks(&http, &node.nodes[0].url).await?;
    if held != locks {
        bail!("{locks} locks were granted, but the node reports {held} held");
    }
    let (held_rss, peak_rss) = rss(pid)?;
    Ok(Memory {
        locks,
        idle_rss,
        held_rss,
        peak_rss,
        disk: disk_usage(node.data_dir()),
        acquire_time,
    })
}

/// A task info that takes `bytes` bytes as JSON: `{"task_type":"xx…"}` (at least the 16 bytes
/// of an empty one).
fn task_info_of(bytes: u64) -> serde_json::Value {
    let text = usize::try_from(bytes.saturating_sub(16)).unwrap_or(0);
    json!({"task_type": "x".repeat(text)})
}

/// The node's own count of held locks, from its metrics.
async fn held_locks(http: &Http, url: &str) -> Result<u64> {
    let (status, text) = http
        .get(&format!("{url}/metrics"))
        .await
        .map_err(anyhow::Error::msg)?;
    text.as_str()
        .filter(|_| status == 200)
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("active_locks_gauge "))
                .and_then(|v| v.trim().parse().ok())
        })
        .ok_or_else(|| anyhow!("GET /metrics: {status}, no active_locks_gauge in {text}"))
}
