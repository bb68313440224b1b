//! The HTTP client both sides of the coordinator use: a node to its peers (Raft RPCs, requests
//! forwarded to the leader) and the server backend to the nodes. One exchange is one request and
//! its whole answer, under a deadline, with the answer's size capped, and a failure says whether
//! the request may have taken effect ([`Failure::Lost`]) or certainly did not
//! ([`Failure::Unreachable`]): retrying a write is only safe in the second case, or by request id.
//! A TLS failure ([`Failure::Tls`]: a certificate one side does not trust, or TLS spoken to plain
//! HTTP) is told apart from both: the request was not served, and retrying does not help.
//!
//! The client speaks HTTPS to `https://` URLs when it is built with a TLS configuration
//! ([`https_client`], from `sentinel_core::tls`), and a node's client also to its peers, whose
//! addresses carry no scheme ([`HttpClient::url`]).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rustls::ClientConfig;

/// How long to wait for a TCP connection to a peer.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Most bytes of an answer read from a peer: a snapshot chunk's answer is small, a forwarded
/// client answer at most a page of locks.
pub const MAX_ANSWER_BYTES: usize = 16 << 20;

/// The HTTP client of a node or of the server backend: pooled keep-alive connections, HTTPS
/// where the URL says so when built with a TLS configuration ([`https_client`]).
#[derive(Clone)]
pub struct HttpClient(Inner);

#[derive(Clone)]
enum Inner {
    Plain(Client<HttpConnector, Full<Bytes>>),
    Tls(Client<HttpsConnector<HttpConnector>, Full<Bytes>>),
}

impl HttpClient {
    /// The URL of `path` on the peer at `addr` (`HOST:PORT`): https when this client was built
    /// with a TLS configuration, since then the cluster's nodes all serve HTTPS.
    pub fn url(&self, addr: &str, path: &str) -> String {
        let scheme = match self.0 {
            Inner::Plain(_) => "http",
            Inner::Tls(_) => "https",
        };
        format!("{scheme}://{addr}{path}")
    }
}

/// How long an idle connection is kept for reuse: less than a node keeps it open
/// (the coordinator's header timeout), so a reused connection is not one the node is closing.
const POOL_IDLE: Duration = Duration::from_secs(5);

/// A pooled HTTP/1 client with a connect deadline and `TCP_NODELAY`, for `http://` URLs only;
/// each exchange sets its own deadline for the answer.
pub fn http_client() -> HttpClient {
    let client = Client::builder(TokioExecutor::new())
        .pool_idle_timeout(POOL_IDLE)
        .build(connector());
    HttpClient(Inner::Plain(client))
}

/// [`http_client`] that also speaks HTTPS with `tls`: to `https://` URLs, and to peers.
pub fn https_client(tls: &Arc<ClientConfig>) -> HttpClient {
    let mut tcp = connector();
    tcp.enforce_http(false);
    let connector = HttpsConnectorBuilder::new()
        .with_tls_config(ClientConfig::clone(tls))
        .https_or_http()
        .enable_http1()
        .wrap_connector(tcp);
    let client = Client::builder(TokioExecutor::new())
        .pool_idle_timeout(POOL_IDLE)
        .build(connector);
    HttpClient(Inner::Tls(client))
}

fn connector() -> HttpConnector {
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
    connector.set_nodelay(true);
    connector
}

/// Why an exchange with a peer failed.
#[derive(Debug)]
pub enum Failure {
    /// No connection could be made: the peer is down or unreachable.
    Unreachable(String),
    /// The request was sent but no complete answer came in time: it may have taken effect.
    Lost(String),
    /// TLS failed: a certificate was not trusted (the server's by this client, or this client's
    /// by the server), or one side does not speak TLS. The request was not served; retrying does
    /// not help until the configuration changes.
    Tls(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Unreachable(e) | Failure::Lost(e) | Failure::Tls(e) => f.write_str(e),
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
        let response = match &client.0 {
            Inner::Plain(c) => c.request(request).await,
            Inner::Tls(c) => c.request(request).await,
        };
        let response = response.map_err(|e| failure(&target, &e))?;
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

/// Sends one request and returns the status and the answer's body as it arrives, once its head
/// has come within `timeout`: for streams (server-sent events), which the reader bounds itself.
pub async fn open(
    client: &HttpClient,
    request: Request<Full<Bytes>>,
    timeout: Duration,
) -> Result<(StatusCode, hyper::body::Incoming), Failure> {
    let target = request.uri().to_string();
    let response = match &client.0 {
        Inner::Plain(c) => tokio::time::timeout(timeout, c.request(request)).await,
        Inner::Tls(c) => tokio::time::timeout(timeout, c.request(request)).await,
    };
    let response = response
        .map_err(|_| Failure::Lost(format!("{target} did not answer within {timeout:?}")))?
        .map_err(|e| failure(&target, &e))?;
    Ok((response.status(), response.into_body()))
}

/// What a request to `target` that failed before its answer means for the caller.
fn failure(target: &str, e: &hyper_util::client::legacy::Error) -> Failure {
    if let Some(tls) = tls_error(e) {
        Failure::Tls(format!("TLS with {target} failed: {tls}"))
    } else if e.is_connect() {
        Failure::Unreachable(format!("cannot connect to {target}: {}", chain(e)))
    } else {
        Failure::Lost(format!("request to {target} failed: {}", chain(e)))
    }
}

/// The rustls error under `e`, with what it means for the one who reads it. rustls errors reach
/// here wrapped in `io::Error`s, whose `source()` skips the error they wrap, so each link is
/// unwrapped by hand.
fn tls_error(e: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut next = Some(e);
    while let Some(e) = next {
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return Some(explain(tls));
        }
        next = match e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            Some(inner) => Some(inner as &(dyn std::error::Error + 'static)),
            None => e.source(),
        };
    }
    None
}

fn explain(e: &rustls::Error) -> String {
    use rustls::AlertDescription as Alert;
    match e {
        rustls::Error::InvalidCertificate(_) => format!(
            "{e}: this client does not trust the server's certificate; give the certificate \
             authority that signed it with --ca-cert FILE (or SENTINEL_CA_CERT)"
        ),
        rustls::Error::AlertReceived(
            Alert::CertificateRequired
            | Alert::BadCertificate
            | Alert::UnknownCA
            | Alert::CertificateUnknown
            | Alert::UnsupportedCertificate
            | Alert::CertificateExpired
            | Alert::CertificateRevoked
            | Alert::AccessDenied
            | Alert::DecryptError,
        ) => format!(
            "{e}: the server refused this client's certificate (or its lack of one); give one \
             signed by the server's client CA with --client-cert FILE --client-key FILE"
        ),
        rustls::Error::InvalidMessage(_) => {
            format!("{e}: the server does not speak TLS; use http:// for a node without --tls-cert")
        }
        e => e.to_string(),
    }
}

/// `e` with its sources: hyper's own message ("client error (Connect)") says too little.
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut next = e.source();
    while let Some(e) = next {
        let text = e.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        next = e.source();
    }
    out
}
