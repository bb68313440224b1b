//! How nodes talk to each other: HTTP/1.1 with JSON bodies, on the same listener as the client
//! API. openraft's RPCs are `POST /raft/append`, `/raft/vote` and `/raft/snapshot` (snapshots
//! travel in chunks); the answer is openraft's `Result` as JSON, so a remote Raft error arrives as
//! the error openraft produced. The same HTTP client forwards client requests from a follower to
//! the leader.
//!
//! Every exchange has a deadline (openraft's per-RPC TTL, or the caller's), so a stopped peer
//! delays nothing for longer than that; an unreachable peer is reported as such, and openraft
//! backs off before trying it again.

use std::io;
use std::time::Duration;

use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_TYPE};
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

/// Builds openraft's network clients.
pub struct Peers {
    client: HttpClient,
    /// The `Authorization` header peers require, if the cluster has a token.
    auth: Option<HeaderValue>,
}

impl Peers {
    /// Clients over `client`'s pool, sending `auth` on every RPC.
    pub fn new(client: HttpClient, auth: Option<HeaderValue>) -> Peers {
        Peers { client, auth }
    }
}

impl RaftNetworkFactory<TypeConfig> for Peers {
    type Network = Peer;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> Peer {
        Peer {
            target,
            addr: node.addr.clone(),
            client: self.client.clone(),
            auth: self.auth.clone(),
        }
    }
}

/// openraft's connection to one peer.
pub struct Peer {
    target: NodeId,
    addr: String,
    client: HttpClient,
    auth: Option<HeaderValue>,
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
        let mut request = Request::post(format!("http://{}{path}", self.addr))
            .header(CONTENT_TYPE, "application/json");
        if let Some(auth) = &self.auth {
            request = request.header(AUTHORIZATION, auth.clone());
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
                    Failure::Lost(e) => network(e),
                })?;
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
