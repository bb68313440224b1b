//! How nodes talk to each other: HTTP/1.1 with JSON bodies, on the same listener as the client
//! API. openraft's RPCs are `POST /raft/append`, `/raft/vote` and `/raft/snapshot` (snapshots
//! travel in chunks); the answer is openraft's `Result` as JSON, so a remote Raft error arrives as
//! the error openraft produced. The same HTTP client forwards client requests from a follower to
//! the leader.
//!
//! An AppendEntries that would be larger than a peer accepts ([`MAX_RAFT_BODY`]) is not sent:
//! openraft is told to send fewer entries at a time ([`PayloadTooLarge`]), so a follower far
//! behind on large entries catches up in several requests instead of being refused the same one
//! for ever.
//!
//! Every exchange has a deadline (openraft's per-RPC TTL, or the caller's), so a stopped peer
//! delays nothing for longer than that; an unreachable peer is reported as such, and openraft
//! backs off before trying it again.
//!
//! With TLS on (`serve --tls-cert`) every member serves HTTPS, so the same client speaks HTTPS to
//! the member addresses ([`HttpClient::url`]); a TLS failure with a peer (a certificate it does
//! not trust) is reported as unreachable, like a refused token, so that openraft backs off.

use std::collections::HashMap;
use std::io;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{HeaderValue, Request, StatusCode};
use http_body_util::Full;
use openraft::BasicNode;
use openraft::error::{
    InstallSnapshotError, NetworkError, PayloadTooLarge, RPCError, RaftError, RemoteError,
    Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

use sentinel_proto::http::{Failure, HttpClient, exchange};

use super::{NodeId, TypeConfig};

/// The path of openraft's AppendEntries RPC.
pub const APPEND_PATH: &str = "/raft/append";
/// The path of openraft's Vote RPC.
pub const VOTE_PATH: &str = "/raft/vote";
/// The path of openraft's InstallSnapshot RPC.
pub const SNAPSHOT_PATH: &str = "/raft/snapshot";

/// Largest body of a Raft RPC (a batch of entries, a snapshot chunk) a node accepts
/// ([`crate::peer`]); a leader sends fewer entries at a time than would make a larger one.
pub const MAX_RAFT_BODY: usize = 64 << 20;

/// The header that carries the peer token on Raft RPCs.
pub const PEER_TOKEN_HEADER: &str = "x-sentinel-peer-token";
/// The header in which a node names itself on its Raft RPCs, so that a refusal can say which
/// peer has the wrong token (trusted for nothing else).
pub const PEER_ID_HEADER: &str = "x-sentinel-peer-id";
/// How often at most one warning about the same peer is logged.
pub const WARN_EVERY: Duration = Duration::from_secs(30);

/// Lets one warning per key through every [`WARN_EVERY`], so that a misconfigured peer retrying
/// many times a second is reported once and not in a flood (shared by clones).
#[derive(Clone, Default)]
pub struct Throttle(Arc<Mutex<HashMap<u64, Instant>>>);

impl Throttle {
    /// Whether a warning about `key` may be logged now (and if so, the next only after
    /// [`WARN_EVERY`]).
    pub fn allow(&self, key: u64) -> bool {
        let now = Instant::now();
        let mut last = self.0.lock().unwrap_or_else(|e| e.into_inner());
        match last.get(&key) {
            Some(at) if now.duration_since(*at) < WARN_EVERY => false,
            _ => {
                // Keys are node ids; a flood of made-up ones must not grow the map for ever.
                if last.len() >= 64 {
                    last.retain(|_, at| now.duration_since(*at) < WARN_EVERY);
                }
                last.insert(key, now);
                true
            }
        }
    }
}

/// Builds openraft's network clients.
pub struct Peers {
    client: HttpClient,
    /// This node's id, named on every RPC ([`PEER_ID_HEADER`]).
    id: NodeId,
    /// The peer token's header value ([`PEER_TOKEN_HEADER`]), if the node has one.
    token: Option<HeaderValue>,
    refused: Throttle,
}

impl Peers {
    /// Clients over `client`'s pool for node `id`, sending `token` on every RPC.
    pub fn new(client: HttpClient, id: NodeId, token: Option<HeaderValue>) -> Peers {
        Peers {
            client,
            id,
            token,
            refused: Throttle::default(),
        }
    }
}

impl RaftNetworkFactory<TypeConfig> for Peers {
    type Network = Peer;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> Peer {
        Peer {
            target,
            addr: node.addr.clone(),
            client: self.client.clone(),
            id: self.id,
            token: self.token.clone(),
            refused: self.refused.clone(),
        }
    }
}

/// openraft's connection to one peer.
pub struct Peer {
    target: NodeId,
    addr: String,
    client: HttpClient,
    id: NodeId,
    token: Option<HeaderValue>,
    refused: Throttle,
}

type RpcResult<T, E = openraft::error::Infallible> =
    Result<T, RPCError<NodeId, BasicNode, RaftError<NodeId, E>>>;

impl Peer {
    async fn call<Req, Resp, E>(
        &self,
        path: &str,
        req: &Req,
        timeout: Duration,
    ) -> RpcResult<Resp, E>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let body = serde_json::to_vec(req).map_err(|e| network(e.to_string()))?;
        self.send(path, body, timeout).await
    }

    async fn send<Resp, E>(
        &self,
        path: &str,
        body: Vec<u8>,
        timeout: Duration,
    ) -> RpcResult<Resp, E>
    where
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let mut request = Request::post(self.client.url(&self.addr, path))
            .header(CONTENT_TYPE, "application/json")
            .header(PEER_ID_HEADER, self.id.to_string());
        if let Some(token) = &self.token {
            request = request.header(PEER_TOKEN_HEADER, token.clone());
        }
        let request = request
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| network(format!("invalid peer address {:?}: {e}", self.addr)))?;
        let (status, _, body) =
            exchange(&self.client, request, timeout)
                .await
                .map_err(|f| match f {
                    Failure::Unreachable(e) => {
                        RPCError::Unreachable(Unreachable::new(&io::Error::other(e)))
                    }
                    Failure::Tls(e) => {
                        if self.refused.allow(self.target) {
                            tracing::warn!(
                                "peer {} at {}: {e} (said at most once per {WARN_EVERY:?})",
                                self.target,
                                self.addr
                            );
                        }
                        RPCError::Unreachable(Unreachable::new(&io::Error::other(e)))
                    }
                    Failure::Lost(e) => network(e),
                })?;
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            // A misconfiguration, not a network failure: said once in a while, and reported to
            // openraft as unreachable so that it backs off instead of retrying at once.
            let why = serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v.get("message").and_then(|m| m.as_str()).map(String::from))
                .unwrap_or_else(|| {
                    "give every node the same --peer-token and the same member list".into()
                });
            if self.refused.allow(self.target) {
                tracing::warn!(
                    "peer {} at {} refused this node's Raft RPCs ({status}): {why} (said at most \
                     once per {WARN_EVERY:?})",
                    self.target,
                    self.addr
                );
            }
            return Err(RPCError::Unreachable(Unreachable::new(&io::Error::other(
                format!("node {} refused {path} with {status}", self.target),
            ))));
        }
        if status != StatusCode::OK {
            return Err(network(format!(
                "node {} answered {path} with {status}: {}",
                self.target,
                String::from_utf8_lossy(&body)
            )));
        }
        let answer: Result<Resp, RaftError<NodeId, E>> = serde_json::from_slice(&body)
            .map_err(|e| network(format!("bad answer to {path}: {e}")))?;
        answer.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

fn network<E: std::error::Error>(e: String) -> RPCError<NodeId, BasicNode, RaftError<NodeId, E>> {
    RPCError::Network(NetworkError::new(&io::Error::other(e)))
}

/// How many of `entries` entries, making `bytes` bytes together, fit in a Raft RPC: as many as
/// would if every entry were the average size (at least one; a single entry is at most a batch
/// of requests, each far below the limit). Fewer entries than that are tried again when larger
/// ones came first.
fn entries_that_fit(entries: usize, bytes: usize) -> u64 {
    let fit = entries as u128 * MAX_RAFT_BODY as u128 / bytes.max(1) as u128;
    u64::try_from(fit).unwrap_or(u64::MAX).max(1)
}

impl RaftNetwork<TypeConfig> for Peer {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<NodeId>> {
        let body = serde_json::to_vec(&rpc).map_err(|e| network(e.to_string()))?;
        if body.len() > MAX_RAFT_BODY && rpc.entries.len() > 1 {
            let fit = entries_that_fit(rpc.entries.len(), body.len());
            tracing::debug!(
                entries = rpc.entries.len(),
                bytes = body.len(),
                fit,
                "AppendEntries too large for a peer; sending fewer entries at a time"
            );
            return Err(RPCError::PayloadTooLarge(
                PayloadTooLarge::new_entries_hint(fit),
            ));
        }
        self.send(APPEND_PATH, body, option.hard_ttl()).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<NodeId>, InstallSnapshotError> {
        self.call(SNAPSHOT_PATH, &rpc, option.hard_ttl()).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> RpcResult<VoteResponse<NodeId>> {
        self.call(VOTE_PATH, &rpc, option.hard_ttl()).await
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId, Vote};

    use super::*;
    use crate::state::{Acquire, Batch, Command, Proposal};

    /// An entry whose one command carries a name of `bytes` bytes.
    fn entry(index: u64, bytes: usize) -> Entry<TypeConfig> {
        let command = Command::Acquire(Acquire {
            request_id: format!("r{index}"),
            name: "n".repeat(bytes),
            holder: "h".into(),
            node: String::new(),
            ttl_ms: 1_000,
            wait_ms: 0,
            readopt: false,
            task_info: Default::default(),
            session: None,
        });
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(Batch(vec![Proposal { at_ms: 0, command }])),
        }
    }

    fn append(entries: Vec<Entry<TypeConfig>>) -> AppendEntriesRequest<TypeConfig> {
        AppendEntriesRequest {
            vote: Vote::new_committed(1, 1),
            prev_log_id: None,
            entries,
            leader_commit: None,
        }
    }

    #[tokio::test]
    async fn an_append_larger_than_a_peer_accepts_asks_for_fewer_entries_and_sends_nothing() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let client = sentinel_proto::http::http_client();
        let mut peer = Peers::new(client, 1, None)
            .new_client(2, &BasicNode { addr })
            .await;
        let option = RPCOption::new(Duration::from_secs(1));

        // Three entries of 25 MiB: 75 MiB, of which two fit in 64 MiB.
        let big = append((1..=3).map(|i| entry(i, 25 << 20)).collect());
        match peer.append_entries(big, option.clone()).await {
            Err(RPCError::PayloadTooLarge(p)) => assert_eq!(p.entries_hint(), 2),
            other => panic!("expected PayloadTooLarge, got {other:?}"),
        }
        let nothing = tokio::time::timeout(Duration::from_millis(200), listener.accept()).await;
        assert!(nothing.is_err(), "the too-large request was sent");

        // A small one goes out (the listener never answers: a timeout, after the connection).
        let small = append(vec![entry(1, 10)]);
        let sent = tokio::spawn(async move { peer.append_entries(small, option).await });
        let accepted = tokio::time::timeout(Duration::from_secs(5), listener.accept()).await;
        assert!(accepted.is_ok(), "the small request was not sent");
        sent.abort();
    }

    #[test]
    fn entries_that_fit_rounds_down_and_never_reaches_zero() {
        assert_eq!(entries_that_fit(3, 75 << 20), 2);
        assert_eq!(entries_that_fit(300, 640 << 20), 30);
        assert_eq!(entries_that_fit(2, usize::MAX), 1);
    }
}
