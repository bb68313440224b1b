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
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
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

use super::{NodeId, TypeConfig};

/// The path of openraft's AppendEntries RPC.
pub const APPEND_PATH: &str = "/raft/append";
/// The path of openraft's Vote RPC.
pub const VOTE_PATH: &str = "/raft/vote";
/// The path of openraft's InstallSnapshot RPC.
pub const SNAPSHOT_PATH: &str = "/raft/snapshot";

/// How long to wait for a TCP connection to a peer.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Most bytes of an answer read from a peer: a snapshot chunk's answer is small, a forwarded
/// client answer at most a page of locks.
const MAX_ANSWER_BYTES: usize = 16 << 20;

/// The HTTP client of a node: pooled keep-alive connections to its peers.
pub type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// How long an idle connection is kept for reuse: less than a node keeps it open
/// ([`super::listener::HEADER_TIMEOUT`]), so a reused connection is not one the node is closing.
const POOL_IDLE: Duration = Duration::from_secs(5);

/// A pooled HTTP/1 client with a connect deadline and `TCP_NODELAY`; each exchange sets its own
/// deadline for the answer.
pub fn http_client() -> HttpClient {
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
    connector.set_nodelay(true);
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(POOL_IDLE)
        .build(connector)
}

/// Why an exchange with a peer failed.
#[derive(Debug)]
pub enum Failure {
    /// No connection could be made: the peer is down or unreachable.
    Unreachable(String),
    /// The request was sent but no complete answer came in time: it may have taken effect.
    Lost(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Unreachable(e) | Failure::Lost(e) => f.write_str(e),
        }
    }
}

/// Sends one request and reads the whole answer, within `timeout`.
pub async fn exchange(
    client: &HttpClient,
    request: Request<Full<Bytes>>,
    timeout: Duration,
) -> Result<(StatusCode, http::HeaderMap, Bytes), Failure> {
    let target = request.uri().to_string();
    let work = async {
        let response = client.request(request).await.map_err(|e| {
            if e.is_connect() {
                Failure::Unreachable(format!("cannot connect to {target}: {e}"))
            } else {
                Failure::Lost(format!("request to {target} failed: {e}"))
            }
        })?;
        let (parts, body) = response.into_parts();
        let body = http_body_util::Limited::new(body, MAX_ANSWER_BYTES)
            .collect()
            .await
            .map_err(|e| Failure::Lost(format!("reading the answer of {target} failed: {e}")))?
            .to_bytes();
        Ok((parts.status, parts.headers, body))
    };
    tokio::time::timeout(timeout, work)
        .await
        .unwrap_or_else(|_| {
            Err(Failure::Lost(format!(
                "{target} did not answer within {timeout:?}"
            )))
        })
}

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
