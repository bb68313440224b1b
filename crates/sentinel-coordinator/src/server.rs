//! A running coordinator node: its Raft instance, its storage, how a fresh cluster forms, and the
//! leader's clock ticks.
//!
//! Cluster formation follows etcd's `--initial-cluster`: every node is started with the same list
//! of members, and the node with the lowest id initializes the cluster with that list if its own
//! storage is fresh. The others wait to be contacted by it. A node that already has a log ignores
//! the list: the membership in its log wins.
//!
//! Wiring only: the node's parts and what they do once running are [`super::node`]'s, the HTTP
//! API is [`super::api`]'s.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use openraft::{BasicNode, Config, Raft, SnapshotPolicy};

use super::acl::Acl;
use super::audit::AuditLog;
use super::network::Peers;
use super::node::{Node, PeerAuth, Started};
use super::stats::Stats;
use super::store;
use super::tls::NodeTls;
use super::{NodeId, TypeConfig, api, listener};
use sentinel_core::error::{Error, Result};
use sentinel_core::secret::Secret;
use sentinel_proto::http::{http_client, https_client};

/// Where `sentinel serve` listens without `--listen`.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7464";
/// Most members of a cluster.
pub const MAX_MEMBERS: usize = 5;

/// Raft timing. A leader sends heartbeats every 50 ms. openraft 0.9 lets a follower stand for
/// election once it has heard nothing for the leader's lease (the largest election timeout) plus
/// its own election timeout, checked every 75 ms: 200 + 120–200 ms here, so a dead leader is
/// replaced in about 0.35–0.5 s. Four heartbeats fit in the lease, so a busy machine does not
/// depose a live leader at once.
const HEARTBEAT_MS: u64 = 50;
const ELECTION_MIN_MS: u64 = 120;
const ELECTION_MAX_MS: u64 = 200;
/// A snapshot every this many entries by default (`--snapshot-every`); entries it covers beyond
/// the last [`LOG_KEPT`] are purged. Two costs pull apart: the log is kept in memory (under load
/// an entry carries dozens of commands), and a snapshot of a full state (100,000 locks and as
/// many remembered answers) is tens of MB to encode and fsync, which stalls the log's own fsync.
/// Every 1,000 entries made the benchmark's p99 50 ms (15 ms without snapshots); every 5,000
/// makes it 18 ms, with at most about 130,000 commands in memory.
pub const DEFAULT_SNAPSHOT_EVERY: u64 = 5_000;
/// Entries kept after a snapshot (at most as many as between snapshots), so that a follower a
/// little behind catches up from the log rather than by a snapshot.
const LOG_KEPT: u64 = 500;
/// A snapshot travels to a follower in chunks of this size, each within [`SNAPSHOT_CHUNK_MS`].
/// openraft's defaults (3 MiB within 200 ms) do not fit this transport: a chunk is a JSON array
/// of numbers (about 3.5 bytes a byte) that the follower parses and checks, and the last one is
/// also installed (decoding the whole state) before it is answered. A debug build on a busy
/// machine missed the deadline every time, so a follower behind the purged log never caught up.
const SNAPSHOT_CHUNK: u64 = 512 << 10;
const SNAPSHOT_CHUNK_MS: u64 = 10_000;

/// What `sentinel serve` was asked to run.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// This node's id (`--id`).
    pub id: NodeId,
    /// Where to listen for clients and peers (`--listen`).
    pub listen: SocketAddr,
    /// Every member of the cluster with the address peers reach it at; includes this node.
    pub members: BTreeMap<NodeId, String>,
    /// Where the log, vote and snapshots live (`--data-dir`).
    pub data_dir: PathBuf,
    /// The client tokens and the locks each may act on (`--auth-token`, `--acl`); without any,
    /// the node takes any client.
    pub acl: Option<Acl>,
    /// Where to record the writes clients ask of this node (`--audit-log`).
    pub audit_log: Option<PathBuf>,
    /// Whether `/metrics` answers without a client token (`--public-metrics`).
    pub public_metrics: bool,
    /// The token peers' Raft RPCs carry (`--peer-token`); without it the node serves no Raft
    /// RPCs, so it must have one whenever the cluster has other members.
    pub peer_token: Option<Secret>,
    /// Log entries between snapshots (`--snapshot-every`).
    pub snapshot_every: u64,
    /// The key-value store's size quota, in bytes (`--kv-quota`).
    pub kv_quota: u64,
    /// HTTPS for clients and peers (`--tls-cert`, `--tls-key`, `--tls-client-ca`); then the
    /// member addresses are reached with https too.
    pub tls: Option<NodeTls>,
}

/// Runs a node until `stop` completes (then `Ok`, after Raft has shut down), its listener fails
/// or Raft stops; `ready` is called with the bound address once it serves.
pub async fn serve(
    opts: ServeOptions,
    ready: impl FnOnce(SocketAddr),
    stop: impl Future<Output = ()>,
) -> Result<()> {
    let config = raft_config(opts.snapshot_every)?;
    let audit = opts.audit_log.as_deref().map(AuditLog::open).transpose()?;
    let (log, state) = store::open(&opts.data_dir, opts.id)?;
    let listener = tokio::net::TcpListener::bind(opts.listen)
        .await
        .map_err(|e| Error::Unavailable(format!("cannot listen on {}: {e}", opts.listen)))?;
    let client = match &opts.tls {
        Some(tls) => https_client(&tls.peers),
        None => http_client(),
    };
    let peer = opts.peer_token.as_ref().map(PeerAuth::new).transpose()?;
    let stats = Stats::new()?;
    let raft = Raft::new(
        opts.id,
        Arc::new(config),
        Peers::new(
            client.clone(),
            opts.id,
            peer.as_ref().map(|p| p.header.clone()),
        ),
        log.clone(),
        state.clone(),
    )
    .await
    .map_err(|e| Error::Unexpected(format!("cannot start Raft: {e}")))?;
    form_cluster(&raft, opts.id, &opts.members).await?;
    if peer.is_none() {
        alone_in_its_log(&raft, opts.id).await?;
    }
    let (node, _background) = Node::start(Started {
        id: opts.id,
        raft,
        log,
        state,
        client,
        acl: opts.acl,
        audit,
        public_metrics: opts.public_metrics,
        peer,
        initial_members: opts.members.keys().copied().collect(),
        stats,
        kv_quota: opts.kv_quota,
    });
    let addr = listener.local_addr()?;
    ready(addr);
    let mut metrics = node.raft.metrics();
    let stopped = async move {
        // Raft stops for good on a storage failure: then the node must not go on answering.
        loop {
            if let Err(e) = &metrics.borrow().running_state {
                return e.to_string();
            }
            if metrics.changed().await.is_err() {
                return "Raft stopped".to_string();
            }
        }
    };
    let result = tokio::select! {
        e = listener::serve_connections(
            listener,
            api::router(node.clone()),
            opts.tls.map(|t| t.server),
        ) => {
            Err(Error::Unavailable(format!("the listener on {addr} failed: {e}")))
        }
        why = stopped => Err(Error::Unexpected(format!("the node stopped: {why}"))),
        () = stop => Ok(()),
    };
    let _ = node.raft.shutdown().await;
    result
}

/// openraft's settings for this coordinator (the constants above).
fn raft_config(snapshot_every: u64) -> Result<Config> {
    Config {
        cluster_name: "sentinel".into(),
        heartbeat_interval: HEARTBEAT_MS,
        election_timeout_min: ELECTION_MIN_MS,
        election_timeout_max: ELECTION_MAX_MS,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(snapshot_every),
        max_in_snapshot_log_to_keep: LOG_KEPT.min(snapshot_every),
        snapshot_max_chunk_size: SNAPSHOT_CHUNK,
        install_snapshot_timeout: SNAPSHOT_CHUNK_MS,
        ..Config::default()
    }
    .validate()
    .map_err(|e| Error::Unexpected(format!("invalid Raft configuration: {e}")))
}

/// A node started without a peer token must be a cluster of one: the log's membership wins over
/// `--peer`, so a node of a cluster restarted without its peers listed still needs the token to
/// talk to them. Otherwise Raft is stopped and the refusal says what to give.
async fn alone_in_its_log(raft: &Raft<TypeConfig>, id: NodeId) -> Result<()> {
    let others: Vec<NodeId> = raft
        .metrics()
        .borrow()
        .membership_config
        .membership()
        .nodes()
        .map(|(node, _)| *node)
        .filter(|node| *node != id)
        .collect();
    if others.is_empty() {
        return Ok(());
    }
    let _ = raft.shutdown().await;
    Err(Error::usage(format!(
        "this node's log has other members ({others:?}): give it the cluster's \
         --peer-token (or SENTINEL_PEER_TOKEN, --peer-token-file)"
    )))
}

/// Initializes a fresh cluster from the member list, on the member with the lowest id only.
async fn form_cluster(
    raft: &Raft<TypeConfig>,
    id: NodeId,
    members: &BTreeMap<NodeId, String>,
) -> Result<()> {
    if members.keys().next() != Some(&id) {
        return Ok(());
    }
    let initialized = raft
        .is_initialized()
        .await
        .map_err(|e| Error::Unexpected(format!("Raft stopped: {e}")))?;
    if initialized {
        return Ok(());
    }
    let nodes: BTreeMap<NodeId, BasicNode> = members
        .iter()
        .map(|(id, addr)| (*id, BasicNode::new(addr)))
        .collect();
    tracing::info!(
        "forming a cluster of {:?}",
        nodes.keys().collect::<BTreeSet<_>>()
    );
    raft.initialize(nodes)
        .await
        .map_err(|e| Error::Unexpected(format!("cannot form the cluster: {e}")))
}
