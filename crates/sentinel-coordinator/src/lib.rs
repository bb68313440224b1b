//! The coordinator behind `sentinel serve`: named locks replicated with Raft across one to five
//! nodes.
//!
//! This module owns everything a coordinator node computes and keeps:
//!
//! - [`state`]: the replicated lock state, a pure and deterministic state machine. Every node
//!   applies the same Raft log to it and so holds the same locks, leases, wait queues and answers.
//!   It never reads a clock: the leader stamps each command with its time, and the position in
//!   the log of the command that grants a lock is the lock's fencing token.
//! - [`store`]: a node's durable storage for openraft: the log, vote and committed index in redb,
//!   and the lock state with its snapshots.
//! - [`identity`]: whose a data directory is (`node.json`), and the checks that refuse to start a
//!   node on data that does not add up.
//! - [`network`]: Raft RPCs between nodes over HTTP, and the client that forwards requests to the
//!   leader.
//! - [`node`]: a running node's parts: Raft, the proposal queue that packs commands into entries
//!   (group commit), the leader's ticks.
//! - [`server`]: `sentinel serve`: wires a node up, forms a fresh cluster, serves the API.
//! - [`api`]: the HTTP JSON API clients use.
//! - [`observe`]: server-sent events of a read that changes (an election's leader), served by
//!   any node from its own state.
//! - [`watch`]: the watch stream: the events of the locks, numbered by revision, each node
//!   keeping its last ones for watchers that resume.
//! - [`acl`]: the client tokens a node accepts and the locks each may act on (`--acl`).
//! - [`audit`]: the audit log of the writes clients ask for (`--audit-log`).
//! - [`peer`]: the Raft RPC endpoints peers call, open to the peer token only, and the checks
//!   that keep what openraft would panic on from reaching it.
//! - [`listener`]: accepting connections, with the deadlines and the cap that keep a hostile
//!   client from tying up a node, and the TLS handshake.
//! - [`tls`]: a node's HTTPS (`--tls-cert`, `--tls-key`, `--tls-client-ca`), towards clients and
//!   towards its peers.
//! - [`stats`]: the node's Prometheus metrics.
//!
//! Consensus itself is not home-made: the log, votes and elections belong to openraft, and this
//! module only supplies what openraft asks of an application (the state machine, its storage).
//! Keeping the state machine free of I/O, clocks and randomness is what makes replication sound —
//! two nodes that apply the same entries must reach the same state — and lets property tests check
//! it over arbitrary logs.

pub mod acl;
pub mod api;
pub mod audit;
pub mod identity;
pub mod listener;
pub mod network;
pub mod node;
pub mod observe;
pub mod peer;
pub mod server;
pub mod state;
pub mod stats;
pub mod store;
pub mod tls;
pub mod watch;

/// A node's id in the cluster (`--id`).
pub type NodeId = u64;

openraft::declare_raft_types!(
    /// The coordinator's choices for openraft: entries carry a [`state::Batch`] of commands,
    /// applying one answers with each command's [`state::Answer`] (none for ticks; no answers
    /// for Raft's own entries), and nodes are known by the address of their HTTP listener.
    pub TypeConfig:
        D = state::Batch,
        R = Vec<Option<state::Answer>>,
        NodeId = NodeId,
        Node = openraft::BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = std::io::Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);
