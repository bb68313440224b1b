//! How nodes talk to each other: HTTP/1.1 with JSON bodies, on the same listener as the client
//! API. openraft's RPCs are `POST /raft/append`, `/raft/vote` and `/raft/snapshot` (snapshots
//! travel in chunks); the answer is openraft's `Result` as JSON, so a remote Raft error arrives as
//! the error openraft produced. The same HTTP client forwards client requests from a follower to
//! the leader.
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
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
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
        let network = |e: String| RPCError::Network(NetworkError::new(&io::Error::other(e)));
        let body = serde_json::to_vec(req).map_err(|e| network(e.to_string()))?;
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

impl RaftNetwork<TypeConfig> for Peer {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<NodeId>> {
        self.call(APPEND_PATH, &rpc, option.hard_ttl()).await
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
