//! Leader failover: a fresh three-node cluster serves a few writes, its leader is SIGKILLed, and
//! each survivor is sent a write every ~5 ms until one is acknowledged. The time from the kill
//! to that acknowledgement is what a client waits through when the leader dies; the time until a
//! survivor's `/health` names the new leader tells the election apart from what follows it. And
//! what a script sees: a `sentinel claim` started at the kill, given every node (the dead leader
//! first), until it exits 0.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Result, anyhow, bail};
use serde_json::json;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::clients::{Client, Outcome, Primitive, SentinelHttp};
use crate::http::Http;
use crate::procs::{Sentinel, clean};

/// Pause between a survivor's refused write and the next.
const PROBE_PAUSE: Duration = Duration::from_millis(5);
/// Longest a failover may take before the run counts as failed.
const LIMIT: Duration = Duration::from_secs(30);

/// One failover, measured from the kill.
pub struct Failover {
    /// Until a survivor names a new leader.
    pub elected: Duration,
    /// Until a survivor acknowledges a write.
    pub served: Duration,
    /// Until a `sentinel claim` process exits 0.
    pub claimed: Duration,
}

/// One failover, measured.
pub async fn once(bin: &Path) -> Result<Failover> {
    let http = Http::new(Duration::from_secs(5));
    let mut cluster = Sentinel::start(bin, 3, &http).await?;
    // A leader that has committed writes, and followers that have caught up with them.
    let mut warm = SentinelHttp {
        http: Http::new(Duration::from_secs(5)),
        url: cluster.nodes[0].url.clone(),
        holder: "bench-warm-up".into(),
        primitive: Primitive::Lock,
    };
    for n in 0..20 {
        match warm.op(n).await {
            Ok(Outcome::Done) => {}
            Ok(Outcome::Busy) => bail!("warm-up: lock bench-{n} of a fresh cluster was held"),
            Err(e) => bail!("warm-up: {e}"),
        }
    }
    let leader = cluster.leader(&http).await?;
    let killed = Instant::now();
    cluster
        .nodes
        .iter_mut()
        .find(|n| n.id == leader)
        .ok_or_else(|| anyhow!("the leader, node {leader}, is not one of the cluster's nodes"))?
        .kill();
    let (mut writes, mut watches, mut claims) = (JoinSet::new(), JoinSet::new(), JoinSet::new());
    let mut urls: Vec<(bool, &str)> = cluster
        .nodes
        .iter()
        .map(|n| (n.id != leader, n.url.as_str()))
        .collect();
    urls.sort();
    let servers: Vec<&str> = urls.into_iter().map(|(_, url)| url).collect();
    claims.spawn(claim(
        bin.to_path_buf(),
        servers.join(","),
        cluster.data_dir().to_path_buf(),
    ));
    for node in cluster.nodes.iter().filter(|n| n.id != leader) {
        writes.spawn(write(node.url.clone()));
        watches.spawn(watch(node.url.clone(), leader));
    }
    let served = first(&mut writes, "acknowledged a write").await?;
    let elected = first(&mut watches, "named a new leader").await?;
    let claimed = first(&mut claims, "granted a CLI claim").await?;
    Ok(Failover {
        elected: elected.saturating_duration_since(killed),
        served: served.saturating_duration_since(killed),
        claimed: claimed.saturating_duration_since(killed),
    })
}

/// Runs `sentinel --server SERVERS claim` until one exits 0, as a script that retries would;
/// when it did.
async fn claim(bin: PathBuf, servers: String, data: PathBuf) -> Instant {
    loop {
        let mut cmd = tokio::process::Command::from(clean(&bin));
        cmd.env("SENTINEL_DATA_DIR", &data)
            .args(["--server", &servers, "--worker-id", "bench-cli", "--quiet"])
            .args(["claim", "failover-cli", "--ttl", "30s"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true);
        if cmd.status().await.is_ok_and(|s| s.success()) {
            return Instant::now();
        }
        tokio::time::sleep(PROBE_PAUSE).await;
    }
}

/// When the first of the survivors' probes succeeded; the others are stopped.
async fn first(probes: &mut JoinSet<Instant>, what: &str) -> Result<Instant> {
    let first = tokio::time::timeout(LIMIT, probes.join_next()).await;
    probes.abort_all();
    match first {
        Ok(Some(Ok(when))) => Ok(when),
        Ok(Some(Err(e))) => bail!("a probe failed: {e}"),
        Ok(None) => bail!("no survivors to probe"),
        Err(_) => bail!("no survivor {what} within {LIMIT:?} of the kill"),
    }
}

/// Sends a write to one node every [`PROBE_PAUSE`] until one is acknowledged; when it was.
async fn write(url: String) -> Instant {
    let http = Http::new(Duration::from_secs(5));
    let body = json!({"holder": "bench-failover", "ttl_ms": 30_000});
    loop {
        let name = format!("failover-{:016x}", fastrand::u64(..));
        if let Ok((200, _)) = http
            .post(&format!("{url}/locks/{name}/acquire"), &body)
            .await
        {
            return Instant::now();
        }
        tokio::time::sleep(PROBE_PAUSE).await;
    }
}

/// Asks one node every [`PROBE_PAUSE`] whom it follows, until it names a leader other than
/// `old`; when it did.
async fn watch(url: String, old: u64) -> Instant {
    let http = Http::new(Duration::from_secs(5));
    loop {
        if let Ok((200, body)) = http.get(&format!("{url}/health")).await
            && body["leader"].as_u64().is_some_and(|id| id != old)
        {
            return Instant::now();
        }
        tokio::time::sleep(PROBE_PAUSE).await;
    }
}
