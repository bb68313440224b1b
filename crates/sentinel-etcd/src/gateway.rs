//! etcd's v3 JSON gateway, spoken over plain HTTP/1 with hyper-util: the endpoints (checked once,
//! tried in turn), one exchange under a deadline with the answer's size capped, and the few
//! message shapes the backend uses. Keys and values travel in base64 and 64-bit integers as JSON
//! strings, as the gateway (grpc-gateway's protobuf JSON) writes them; fields at their default
//! value are left out of its answers, so every field here has a default.
//!
//! Failover: a request goes to the endpoint that answered last; a refused connection, a deadline
//! or an answer saying etcd cannot serve now (no leader, leader changed, timeout: gRPC codes 4,
//! 8, 14, and HTTP 5xx without such a body) moves it to the next, for [`ROUNDS`] rounds within
//! [`OP_DEADLINE`], then [`Error::Unavailable`] (exit 8). Every request the backend sends is safe
//! to send again: the writes are transactions guarded by revisions, and the backend recognises
//! its own earlier write by the nonce or lease it carries.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};
use tokio::time::Instant;

use sentinel_core::endpoint::{http_url, shown_url};
use sentinel_core::error::{Error, Result};
use sentinel_core::lease;

/// How long one operation may take, failovers included, before etcd counts as unreachable.
pub const OP_DEADLINE: Duration = Duration::from_secs(10);
/// How long one request may wait for its whole answer.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a TCP connection to an endpoint may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Passes over every endpoint before giving up.
pub const ROUNDS: u32 = 3;
/// Most bytes of one answer: a page of [`crate::PAGE`] keys with values at their limit fits.
pub const MAX_ANSWER_BYTES: usize = 16 << 20;
/// Most endpoints one backend takes.
pub const MAX_ENDPOINTS: usize = 16;
/// How long an idle connection is kept for reuse.
const POOL_IDLE: Duration = Duration::from_secs(30);

type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// What the gateway answered instead of a result: a gRPC status.
#[derive(Debug, Clone, Deserialize)]
pub struct Refusal {
    /// The gRPC code (5 not found, 9 failed precondition, 16 unauthenticated, …); a stream's
    /// error calls it `grpc_code`.
    #[serde(default, alias = "grpc_code")]
    pub code: i32,
    /// etcd's message (`etcdserver: requested lease not found`).
    #[serde(default)]
    pub message: String,
    /// The same message, in the field older gateways fill instead.
    #[serde(default)]
    error: String,
}

impl Refusal {
    /// etcd's words, from whichever field carries them.
    pub fn text(&self) -> &str {
        if self.message.is_empty() {
            &self.error
        } else {
            &self.message
        }
    }
}

/// gRPC codes that mean "not now, maybe elsewhere": deadline exceeded, resource exhausted
/// (too many requests), unavailable (no leader, leader changed, request timed out).
fn transient(code: i32) -> bool {
    matches!(code, 4 | 8 | 14)
}

/// The HTTP client and the endpoints it fails over between.
pub struct Gateway {
    client: HttpClient,
    /// Base URLs (`http://HOST:PORT`, or with a path prefix), without a trailing slash.
    endpoints: Vec<String>,
    /// The endpoint that answered last, where the next request starts.
    current: AtomicUsize,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field("endpoints", &self.endpoints)
            .finish()
    }
}

/// Checks `--etcd-endpoints`: comma-separated `http://HOST:PORT` client URLs. TLS and credentials
/// are refused (for now): the backend speaks plain HTTP and sends no user name or password.
pub fn endpoints(raw: &str) -> Result<Vec<String>> {
    let expected = "expected http://HOST:2379[,http://HOST:2379...]";
    let mut out: Vec<String> = Vec::new();
    for part in raw.split(',').map(str::trim) {
        if part.is_empty() {
            return Err(Error::usage(format!(
                "invalid --etcd-endpoints: an endpoint is empty; {expected}"
            )));
        }
        let shown = shown_url(part);
        let bad = |why: &str| Error::usage(format!("invalid etcd endpoint {shown}: {why}"));
        let (url, uri) = http_url(part).map_err(|why| {
            if why.starts_with("credentials") {
                bad(
                    "credentials in the URL are not supported: sentinel's etcd backend does not \
                     log in to etcd (yet); use a cluster without authentication, reachable only \
                     by its clients",
                )
            } else {
                bad(&format!("{why}; {expected}"))
            }
        })?;
        if uri.scheme_str() == Some("https") {
            return Err(bad(
                "TLS (https://) is not supported by sentinel's etcd backend yet; use http://, \
                 through a TLS tunnel if the network needs one",
            ));
        }
        if !out.contains(&url) {
            out.push(url);
        }
    }
    if out.len() > MAX_ENDPOINTS {
        return Err(Error::usage(format!(
            "invalid --etcd-endpoints: {} endpoints, at most {MAX_ENDPOINTS}",
            out.len()
        )));
    }
    Ok(out)
}

/// Why one exchange failed.
enum Failure {
    /// Nothing was sent: no connection could be made.
    Unreachable(String),
    /// Sent, but no complete answer in time: it may have taken effect.
    Lost(String),
}

impl Gateway {
    /// The gateway for endpoints checked by [`endpoints`]. Connects on first use.
    pub fn new(endpoints: Vec<String>) -> Gateway {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(POOL_IDLE)
            .build(connector);
        Gateway {
            client,
            endpoints,
            current: AtomicUsize::new(0),
        }
    }

    /// The endpoints, in the order given.
    pub fn endpoints(&self) -> &[String] {
        &self.endpoints
    }

    /// `etcd at URL[, URL…]`, for messages (the URLs carry no credentials: they are refused).
    pub fn target(&self) -> String {
        format!("etcd at {}", self.endpoints.join(", "))
    }

    /// One request to one endpoint and its whole answer, within [`REQUEST_TIMEOUT`] (or less,
    /// when the operation's deadline comes first).
    async fn exchange(
        &self,
        url: &str,
        body: &Bytes,
        deadline: Instant,
    ) -> std::result::Result<(StatusCode, Bytes), Failure> {
        let request = Request::post(url)
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Full::new(body.clone()))
            .map_err(|e| Failure::Unreachable(format!("cannot build a request to {url}: {e}")))?;
        let work = async {
            let response = self.client.request(request).await.map_err(|e| {
                if e.is_connect() {
                    Failure::Unreachable(format!("cannot connect to {url}: {e}"))
                } else {
                    Failure::Lost(format!("{url} failed: {e}"))
                }
            })?;
            let (parts, body) = response.into_parts();
            let body = http_body_util::Limited::new(body, MAX_ANSWER_BYTES)
                .collect()
                .await
                .map_err(|e| {
                    Failure::Lost(format!(
                        "reading the answer of {url} failed (at most {} MiB are read): {e}",
                        MAX_ANSWER_BYTES >> 20
                    ))
                })?
                .to_bytes();
            Ok((parts.status, body))
        };
        let limit = lease::instant_after(Instant::now(), REQUEST_TIMEOUT).min(deadline);
        tokio::time::timeout_at(limit, work)
            .await
            .unwrap_or_else(|_| {
                Err(Failure::Lost(format!(
                    "{url} did not answer within {}",
                    sentinel_core::duration::display(REQUEST_TIMEOUT)
                )))
            })
    }

    /// Posts `body` to `path` (`/v3/kv/txn`, …), failing over between the endpoints, and returns
    /// the answer's body, or etcd's refusal (a gRPC status that retrying elsewhere does not
    /// change). `what` names the operation in messages.
    pub async fn post(
        &self,
        what: &str,
        path: &str,
        body: &serde_json::Value,
    ) -> Result<std::result::Result<Bytes, Refusal>> {
        let body = Bytes::from(serde_json::to_vec(body).map_err(|e| {
            Error::Unexpected(format!("cannot encode a request to etcd ({what}): {e}"))
        })?);
        let deadline = lease::instant_after(Instant::now(), OP_DEADLINE);
        let n = self.endpoints.len();
        let start = self.current.load(Ordering::Relaxed) % n;
        let mut last = String::new();
        let mut attempts = 0;
        for round in 0..ROUNDS {
            if round > 0 {
                let pause = lease::jitter(Duration::from_millis(100) * 2u32.pow(round), 0.25);
                if Instant::now() + pause >= deadline {
                    break;
                }
                tokio::time::sleep(pause).await;
            }
            for step in 0..n {
                if Instant::now() >= deadline {
                    break;
                }
                let i = (start + step) % n;
                let url = format!("{}{path}", self.endpoints[i]);
                attempts += 1;
                let (status, answer) = match self.exchange(&url, &body, deadline).await {
                    Ok(a) => a,
                    Err(Failure::Unreachable(e) | Failure::Lost(e)) => {
                        tracing::info!(error = %e, "etcd {what} failed; trying the next endpoint");
                        last = e;
                        continue;
                    }
                };
                if status.is_success() {
                    self.current.store(i, Ordering::Relaxed);
                    return Ok(Ok(answer));
                }
                match serde_json::from_slice::<Refusal>(&answer) {
                    Ok(r) if !r.text().is_empty() || r.code != 0 => {
                        if transient(r.code) {
                            tracing::info!(code = r.code, message = %r.text(), "etcd {what} not served now; trying the next endpoint");
                            last = format!("{url}: {} (code {})", r.text(), r.code);
                            continue;
                        }
                        self.current.store(i, Ordering::Relaxed);
                        return Ok(Err(r));
                    }
                    _ if status.is_server_error() => {
                        last = format!("{url} answered HTTP {status}");
                        continue;
                    }
                    _ => {
                        return Err(Error::Unexpected(format!(
                            "{url} answered HTTP {status} to {what}: {}; is it an etcd v3 client \
                             URL (port 2379)?",
                            snippet(&answer)
                        )));
                    }
                }
            }
        }
        Err(Error::Unavailable(format!(
            "{} is unreachable ({what}, {attempts} attempts in {} rounds): {last}",
            self.target(),
            ROUNDS
        )))
    }

    /// [`Gateway::post`], then the answer decoded, a refusal turned into an error by [`fail`].
    pub async fn call<T: DeserializeOwned>(
        &self,
        what: &str,
        path: &str,
        body: &serde_json::Value,
    ) -> Result<T> {
        let answer = self
            .post(what, path, body)
            .await?
            .map_err(|r| self.fail(what, &r))?;
        self.decode(what, &answer)
    }

    /// An answer of etcd decoded, or an error naming the operation.
    pub fn decode<T: DeserializeOwned>(&self, what: &str, answer: &[u8]) -> Result<T> {
        serde_json::from_slice(answer).map_err(|e| {
            Error::Unexpected(format!(
                "{} sent an answer to {what} sentinel cannot read ({e}): {}",
                self.target(),
                snippet(answer)
            ))
        })
    }

    /// etcd's refusal as the error of the operation: authentication and permissions are `Auth`,
    /// "not now" (in a keep-alive stream, which [`Gateway::post`] cannot retry) `Unavailable`,
    /// the rest unexpected.
    pub fn fail(&self, what: &str, r: &Refusal) -> Error {
        // A cluster with authentication refuses an anonymous request as invalid (code 3).
        let anonymous = r.text().contains("user name is empty");
        match r.code {
            _ if anonymous => Error::Auth(format!(
                "{} requires authentication ({what}: {}); sentinel's etcd backend does not log \
                 in (yet): use a cluster without authentication",
                self.target(),
                r.text()
            )),
            c if transient(c) => Error::Unavailable(format!(
                "{} cannot serve {what} now: {} (code {c})",
                self.target(),
                r.text()
            )),
            7 | 16 => Error::Auth(format!(
                "{} refused {what}: {}; sentinel's etcd backend does not log in (yet): use a \
                 cluster without authentication",
                self.target(),
                r.text()
            )),
            _ => Error::Unexpected(format!(
                "{} refused {what}: {} (code {})",
                self.target(),
                r.text(),
                r.code
            )),
        }
    }
}

/// The start of an answer, for messages.
fn snippet(answer: &[u8]) -> String {
    let text = String::from_utf8_lossy(&answer[..answer.len().min(200)]);
    text.chars().filter(|c| !c.is_control()).collect()
}

/// Bytes as the gateway carries them.
pub fn b64(bytes: &[u8]) -> String {
    B64.encode(bytes)
}

/// A signed 64-bit integer as JSON may carry it: a string (the gateway's way) or a number.
pub fn int64<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<i64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Int {
        Text(String),
        Number(i64),
    }
    match Int::deserialize(d)? {
        Int::Number(n) => Ok(n),
        Int::Text(s) => s.parse().map_err(serde::de::Error::custom),
    }
}

/// Base64 as the gateway carries bytes.
pub fn bytes64<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<Vec<u8>, D::Error> {
    let s = String::deserialize(d)?;
    B64.decode(s.as_bytes()).map_err(serde::de::Error::custom)
}

/// One key as etcd stores it.
#[derive(Debug, Clone, Deserialize)]
pub struct KeyValue {
    #[serde(default, deserialize_with = "bytes64")]
    pub key: Vec<u8>,
    #[serde(default, deserialize_with = "int64")]
    pub create_revision: i64,
    #[serde(default, deserialize_with = "int64")]
    pub mod_revision: i64,
    #[serde(default, deserialize_with = "bytes64")]
    pub value: Vec<u8>,
    /// The lease the key is attached to; 0 for none.
    #[serde(default, deserialize_with = "int64")]
    pub lease: i64,
}

/// `/v3/kv/range`'s answer.
#[derive(Debug, Default, Deserialize)]
pub struct RangeResponse {
    #[serde(default)]
    pub kvs: Vec<KeyValue>,
    #[serde(default)]
    pub more: bool,
}

/// One answer of a transaction's branch; only ranges are read.
#[derive(Debug, Default, Deserialize)]
pub struct ResponseOp {
    #[serde(default)]
    pub response_range: Option<RangeResponse>,
}

/// `/v3/kv/txn`'s answer.
#[derive(Debug, Default, Deserialize)]
pub struct TxnResponse {
    #[serde(default)]
    pub succeeded: bool,
    #[serde(default)]
    pub responses: Vec<ResponseOp>,
}

impl TxnResponse {
    /// The first key the branch's ranges found.
    pub fn kv(&self) -> Option<&KeyValue> {
        self.responses
            .iter()
            .filter_map(|r| r.response_range.as_ref())
            .find_map(|r| r.kvs.first())
    }
}

/// `/v3/lease/grant`'s answer.
#[derive(Debug, Deserialize)]
pub struct GrantResponse {
    #[serde(rename = "ID", deserialize_with = "int64")]
    pub id: i64,
    #[serde(rename = "TTL", default, deserialize_with = "int64")]
    pub ttl: i64,
    #[serde(default)]
    pub error: String,
}

/// `/v3/lease/keepalive`'s answer (one message of the stream) and `/v3/lease/timetolive`'s.
#[derive(Debug, Default, Deserialize)]
pub struct LeaseResponse {
    /// The remaining (time-to-live) or renewed (keep-alive) TTL in seconds: -1 or absent when
    /// the lease is gone (a keep-alive) or -1 (time-to-live).
    #[serde(rename = "TTL", default, deserialize_with = "int64")]
    pub ttl: i64,
    #[serde(rename = "grantedTTL", default, deserialize_with = "int64")]
    pub granted_ttl: i64,
}

/// The keep-alive is a stream: the gateway answers with one `{"result": …}` (or `{"error": …}`)
/// line per request sent.
#[derive(Debug, Deserialize)]
pub struct StreamMessage {
    #[serde(default)]
    pub result: Option<LeaseResponse>,
    #[serde(default)]
    pub error: Option<Refusal>,
}

/// The first key after every key that starts with `prefix`: a range's `range_end`.
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // Every byte was 0xff: the range runs to the end of the key space.
    vec![0]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_are_checked_without_echoing_credentials() {
        assert_eq!(
            endpoints("http://127.0.0.1:2379/, http://10.0.0.2:2379,http://127.0.0.1:2379")
                .unwrap(),
            ["http://127.0.0.1:2379", "http://10.0.0.2:2379"]
        );
        for bad in [
            "",
            "127.0.0.1:2379",
            "http://a:2379,,http://b:2379",
            "ftp://h:2379",
            "http://h:0",
            "http://h:2379?x=1",
        ] {
            let e = endpoints(bad).unwrap_err();
            assert_eq!(
                e.exit_code(),
                sentinel_core::error::ExitCode::Usage,
                "{bad}"
            );
        }
        let e = endpoints("https://etcd.example:2379").unwrap_err();
        assert!(e.to_string().contains("TLS"), "{e}");
        let e = endpoints("http://root:hunter2@etcd.example:2379").unwrap_err();
        assert_eq!(e.exit_code(), sentinel_core::error::ExitCode::Usage);
        assert!(!e.to_string().contains("hunter2"), "{e}");
        let many = (0..17)
            .map(|i| format!("http://h{i}:2379"))
            .collect::<Vec<_>>()
            .join(",");
        assert!(endpoints(&many).is_err());
    }

    #[test]
    fn prefix_ends_cover_the_prefix() {
        assert_eq!(prefix_end(b"sentinel/locks/"), b"sentinel/locks0");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b"\xff\xff"), b"\0");
    }

    #[test]
    fn answers_decode_with_defaults_and_string_integers() {
        let t: TxnResponse = serde_json::from_str(
            r#"{"header":{"revision":"2"},"responses":[{"response_range":{"kvs":[{"key":"eA==","create_revision":"2","mod_revision":"3","value":"dg==","lease":"12345"}],"count":"1"}}]}"#,
        )
        .unwrap();
        assert!(!t.succeeded);
        let kv = t.kv().unwrap();
        assert_eq!(
            (
                kv.key.as_slice(),
                kv.create_revision,
                kv.mod_revision,
                kv.lease
            ),
            (&b"x"[..], 2, 3, 12345)
        );
        assert_eq!(kv.value, b"v");
        let r: RangeResponse = serde_json::from_str(r#"{"header":{}}"#).unwrap();
        assert!(r.kvs.is_empty() && !r.more);
        let m: StreamMessage =
            serde_json::from_str(r#"{"result":{"header":{},"ID":"12345"}}"#).unwrap();
        assert_eq!(m.result.unwrap().ttl, 0);
        let g: GrantResponse = serde_json::from_str(r#"{"ID":"7","TTL":"2"}"#).unwrap();
        assert_eq!((g.id, g.ttl), (7, 2));
        let r: Refusal = serde_json::from_str(
            r#"{"error":"etcdserver: lease already exists","message":"etcdserver: lease already exists","code":9}"#,
        )
        .unwrap();
        assert_eq!((r.code, r.text()), (9, "etcdserver: lease already exists"));
        let m: StreamMessage = serde_json::from_str(
            r#"{"error":{"grpc_code":14,"http_code":503,"message":"etcdserver: no leader"}}"#,
        )
        .unwrap();
        assert_eq!(m.error.unwrap().code, 14);
    }
}
