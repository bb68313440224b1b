//! Watching the coordinator: `GET /watch` read as server-sent events, resumed across failures.
//!
//! The stream follows the last revision it has seen (from each event's SSE `id`, and the id the
//! server sends first, before any event), so when its connection ends — the node stopped, a
//! network cut, [`IDLE`] without even a keep-alive — it reconnects, to the next node if that one
//! fails, asking for the events after that revision: none is lost or repeated within what the
//! nodes keep, and what they no longer keep comes as [`WatchItem::Compacted`]. It keeps trying
//! for as long as it is polled, with a pause that grows to [`LONGEST_PAUSE`]; a refusal no retry
//! can help (a bad token, a name not allowed, a malformed query) ends it with that error.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::BytesMut;
use futures_util::Stream;
use futures_util::stream;
use http::header::{ACCEPT, AUTHORIZATION};
use http::{Method, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;

use sentinel_core::error::{Error, Result};
use sentinel_core::lock::validate_name;
use sentinel_core::watch::{WatchFilter, WatchItem};
use sentinel_proto::api::ErrorBody;
use sentinel_proto::http::{self as network, Failure};

use super::{REQUEST_TIMEOUT, ServerBackend, encode};

/// Longest silence on a stream before it counts as dead: the server comments every 15 s.
pub const IDLE: Duration = Duration::from_secs(45);
/// Pauses between failed connections.
const FIRST_PAUSE: Duration = Duration::from_millis(100);
const LONGEST_PAUSE: Duration = Duration::from_secs(2);
/// Most bytes of one unfinished event kept while it arrives.
const MAX_PENDING: usize = 1 << 20;

/// A stream's state between two items.
struct Watching<'a> {
    backend: &'a ServerBackend,
    query: String,
    /// The last revision seen; `None` until the server tells one.
    last: Option<u64>,
    body: Option<(Incoming, BytesMut)>,
    ready: VecDeque<WatchItem>,
    pause: Duration,
    done: bool,
}

impl ServerBackend {
    /// The events of the locks `filter` names, after revision `since` (from now for `None`), for
    /// as long as the stream is polled; see the module documentation.
    pub fn watch(
        &self,
        filter: &WatchFilter,
        since: Option<u64>,
    ) -> Result<impl Stream<Item = Result<WatchItem>> + '_> {
        let query = match filter {
            WatchFilter::Prefix(p) => format!("prefix={}", encode(p)),
            WatchFilter::Name(n) => {
                validate_name(n)?;
                format!("name={}", encode(n))
            }
        };
        let start = Watching {
            backend: self,
            query,
            last: since,
            body: None,
            ready: VecDeque::new(),
            pause: FIRST_PAUSE,
            done: false,
        };
        Ok(stream::unfold(start, |mut w| async move {
            if w.done {
                return None;
            }
            match w.next().await {
                Ok(item) => Some((Ok(item), w)),
                Err(e) => {
                    w.done = true;
                    Some((Err(e), w))
                }
            }
        }))
    }
}

impl Watching<'_> {
    async fn next(&mut self) -> Result<WatchItem> {
        loop {
            if let Some(item) = self.ready.pop_front() {
                self.last = Some(item.revision());
                return Ok(item);
            }
            let Some((body, pending)) = &mut self.body else {
                self.connect().await?;
                continue;
            };
            match tokio::time::timeout(IDLE, body.frame()).await {
                Ok(Some(Ok(frame))) => {
                    if let Ok(data) = frame.into_data() {
                        pending.extend_from_slice(&data);
                        self.parse()?;
                    }
                }
                Ok(Some(Err(e))) => {
                    tracing::info!("the watch stream broke: {e}; resuming");
                    self.body = None;
                }
                Ok(None) | Err(_) => {
                    tracing::info!("the watch stream ended or went quiet; resuming");
                    self.body = None;
                }
            }
        }
    }

    /// Opens the stream on the next node that serves it, pausing between failures.
    async fn connect(&mut self) -> Result<()> {
        let b = self.backend;
        let n = b.servers.len();
        let start = b.preferred.load(Ordering::Relaxed);
        for i in 0..n {
            let idx = (start + i) % n;
            let mut path = format!("{}/watch?{}", b.servers[idx], self.query);
            if let Some(last) = self.last {
                path.push_str(&format!("&since_revision={last}"));
            }
            let mut request = http::Request::builder()
                .method(Method::GET)
                .uri(&path)
                .header(ACCEPT, "text/event-stream");
            if let Some(auth) = &b.auth {
                request = request.header(AUTHORIZATION, auth.clone());
            }
            let request = request
                .body(Full::default())
                .map_err(|e| Error::Unexpected(format!("cannot build a request: {e}")))?;
            match network::open(&b.client, request, REQUEST_TIMEOUT).await {
                Ok((StatusCode::OK, body)) => {
                    b.preferred.store(idx, Ordering::Relaxed);
                    self.body = Some((body, BytesMut::new()));
                    self.pause = FIRST_PAUSE;
                    return Ok(());
                }
                Ok((status, body)) if status.is_client_error() => {
                    let bytes = body
                        .collect()
                        .await
                        .map(|c| c.to_bytes())
                        .unwrap_or_default();
                    let e: ErrorBody = serde_json::from_slice(&bytes).unwrap_or_default();
                    let why = format!("sentinel server: {} ({})", e.message, e.code);
                    return Err(match status {
                        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => Error::Auth(why),
                        _ => Error::usage(why),
                    });
                }
                Ok((status, _)) => {
                    tracing::info!(server = %b.servers[idx], %status, "cannot watch; trying the next")
                }
                Err(Failure::Unreachable(e) | Failure::Lost(e) | Failure::Tls(e)) => {
                    tracing::info!(server = %b.servers[idx], "{e}; trying the next");
                }
            }
        }
        tracing::warn!(
            "no sentinel server serves the watch ({}); trying again in {:?}",
            b.servers.join(", "),
            self.pause
        );
        tokio::time::sleep(self.pause).await;
        self.pause = (self.pause * 2).min(LONGEST_PAUSE);
        Ok(())
    }

    /// Takes every complete event out of what has arrived: its `id` is the revision to resume
    /// after, its `data` an item.
    fn parse(&mut self) -> Result<()> {
        let Some((_, pending)) = &mut self.body else {
            return Ok(());
        };
        while let Some(end) = find(pending, b"\n\n") {
            let message = pending.split_to(end + 2);
            let text = String::from_utf8_lossy(&message);
            let mut data = String::new();
            for line in text.lines() {
                if let Some(id) = line.strip_prefix("id:") {
                    if let Ok(id) = id.trim().parse() {
                        self.last = Some(id);
                    }
                } else if let Some(d) = line.strip_prefix("data:") {
                    data.push_str(d.trim_start());
                }
            }
            if !data.is_empty() {
                let item = serde_json::from_str(&data).map_err(|e| {
                    Error::Unexpected(format!("the watch sent an event not understood: {e}"))
                })?;
                self.ready.push_back(item);
            }
        }
        if pending.len() > MAX_PENDING {
            pending.clear();
            return Err(Error::Unexpected(format!(
                "the watch sent an event of more than {MAX_PENDING} bytes"
            )));
        }
        Ok(())
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}
