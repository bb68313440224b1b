//! The HTTP client both sides of the coordinator use: a node to its peers (Raft RPCs, requests
//! forwarded to the leader) and the server backend to the nodes. One exchange is one request and
//! its whole answer, under a deadline, with the answer's size capped, and a failure says whether
//! the request may have taken effect ([`Failure::Lost`]) or certainly did not
//! ([`Failure::Unreachable`]): retrying a write is only safe in the second case, or by request id.

use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// How long to wait for a TCP connection to a peer.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Most bytes of an answer read from a peer: a snapshot chunk's answer is small, a forwarded
/// client answer at most a page of locks.
pub const MAX_ANSWER_BYTES: usize = 16 << 20;

/// The HTTP client of a node: pooled keep-alive connections to its peers.
pub type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// How long an idle connection is kept for reuse: less than a node keeps it open
/// (the coordinator's header timeout), so a reused connection is not one the node is closing.
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
