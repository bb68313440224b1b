//! HTTP transport to the GitHub REST API: octocrab underneath, GitHub's manners on top.
//!
//! octocrab's own retry layer is compiled out (its `retry` feature is off) because it would blindly
//! resend a comment POST whose response was lost, creating a second lock comment. Here idempotent
//! requests (GET, PATCH of a whole body, DELETE) are retried on 5xx and network errors, and a POST
//! is sent exactly once: its caller re-reads before re-posting. Rate limits are honoured (primary
//! limit reset, secondary limit `retry-after`) within a wait budget, GETs are conditional
//! (`If-None-Match`, a 304 costs no rate-limit budget), and every `Date` header feeds an estimate
//! of GitHub's clock, the only clock the lock protocol trusts.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;
use chrono::{DateTime, Utc};
use http::{HeaderMap, Method, StatusCode, header};
use http_body_util::BodyExt;
use octocrab::Octocrab;
use serde::Serialize;
use serde::de::DeserializeOwned;

use sentinel_core::error::{Error, Result};
use sentinel_core::secret::Secret;

/// A GitHub that accepts connections but never answers must not hold a worker for minutes: each
/// request gets a deadline (`SENTINEL_HTTP_TIMEOUT`, this by default; connecting gets at most
/// 10 s of it), and a request that timed out is retried at most once.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(15);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Longest pause between two attempts of one request.
const MAX_RETRY_PAUSE: Duration = Duration::from_secs(60);

/// The pause before retry number `attempt` (from 1): doubling from `base`, saturating and capped
/// at [`MAX_RETRY_PAUSE`], since a library caller may ask for any number of retries.
fn retry_pause(base: Duration, attempt: u32) -> Duration {
    base.saturating_mul(2u32.saturating_pow(attempt.saturating_sub(1)))
        .min(MAX_RETRY_PAUSE)
}

/// How hard to try before calling GitHub unavailable (exit 8) or rate limited (exit 7).
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// The REST API root without a trailing `/` (`https://api.github.com`, or
    /// `https://HOST/api/v3` for GitHub Enterprise Server).
    pub api_url: String,
    /// Sent with every request; `None` makes anonymous requests (reads of public repositories).
    pub token: Option<Secret>,
    /// Extra attempts for idempotent requests after a 5xx or network error.
    pub retries: u32,
    /// The pause before the first such retry; it doubles for each later one (±25% jitter).
    pub retry_backoff: Duration,
    /// Longest total time this process will sleep for rate limits before giving up.
    pub rate_limit_wait: Duration,
    /// Deadline for one response.
    pub timeout: Duration,
}

impl ClientOptions {
    /// Defaults for `api_url`: 3 retries from 500 ms, a 120 s rate-limit wait budget and
    /// [`DEFAULT_TIMEOUT`]. A trailing `/` is dropped; the URL is checked by [`Client::new`].
    pub fn new(api_url: &str, token: Option<Secret>) -> Self {
        ClientOptions {
            api_url: api_url.trim_end_matches('/').to_string(),
            token,
            retries: 3,
            retry_backoff: Duration::from_millis(500),
            rate_limit_wait: Duration::from_secs(120),
            timeout: DEFAULT_TIMEOUT,
        }
    }
}

/// A response of any status; callers decide what 404, 410 or 301 mean for them.
#[derive(Debug, Clone)]
pub struct Response {
    /// The HTTP status; a 304 to a conditional GET comes back as the cached 200.
    pub status: StatusCode,
    /// The response headers.
    pub headers: HeaderMap,
    /// The whole body.
    pub body: Bytes,
}

impl Response {
    /// The body parsed as JSON.
    ///
    /// # Errors
    ///
    /// [`Error::Unexpected`] when the body is not the expected JSON.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T> {
        serde_json::from_slice(&self.body).map_err(|e| {
            Error::Unexpected(format!("GitHub sent a response sentinel cannot read: {e}"))
        })
    }

    /// GitHub's `message` field of an error body.
    pub fn message(&self) -> String {
        serde_json::from_slice::<serde_json::Value>(&self.body)
            .ok()
            .and_then(|v| v.get("message").and_then(|m| m.as_str()).map(String::from))
            .unwrap_or_else(|| {
                self.status
                    .canonical_reason()
                    .unwrap_or("unknown error")
                    .to_string()
            })
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The URL of the next page from a `Link` header.
    pub fn next_page(&self) -> Option<String> {
        let link = self.header("link")?;
        link.split(',').find_map(|part| {
            let (url, rel) = part.split_once(';')?;
            rel.contains("rel=\"next\"").then(|| {
                url.trim()
                    .trim_start_matches('<')
                    .trim_end_matches('>')
                    .to_string()
            })
        })
    }
}

/// Outcome of a request that must not be blindly repeated.
#[derive(Debug)]
pub enum Sent {
    /// GitHub answered (any status but 5xx); the request was applied or refused as it says.
    Done(Response),
    /// The request may or may not have been applied (5xx or a broken connection).
    Unknown(Error),
}

#[derive(Clone)]
struct Cached {
    etag: String,
    body: Bytes,
    link: Option<header::HeaderValue>,
}

struct ClockSample {
    github: DateTime<Utc>,
    local: Instant,
}

/// The primary rate limit as a response reported it.
#[derive(Clone, Copy)]
struct RateSample {
    remaining: u64,
    reset: DateTime<Utc>,
}

/// One process's connection to the GitHub API, with its ETag cache, its estimate of GitHub's
/// clock and its rate-limit state. Share it (it is `Sync`) rather than making several.
pub struct Client {
    octo: Octocrab,
    opts: ClientOptions,
    clock: Mutex<Option<ClockSample>>,
    /// path -> (ETag, body, Link header) of the last 200, to answer a 304 with.
    etags: Mutex<HashMap<String, Cached>>,
    rate_waited: Mutex<Duration>,
    rate: Mutex<Option<RateSample>>,
}

impl Client {
    /// Builds the client; nothing is sent yet.
    ///
    /// # Errors
    ///
    /// [`Error::Usage`] for an API URL octocrab cannot use; [`Error::Unexpected`] if the HTTP
    /// stack cannot be set up.
    pub fn new(opts: ClientOptions) -> Result<Client> {
        let mut builder = Octocrab::builder()
            .base_uri(opts.api_url.as_str())
            .map_err(|e| Error::usage(format!("invalid --api-url {:?}: {e}", opts.api_url)))?
            .set_connect_timeout(Some(CONNECT_TIMEOUT.min(opts.timeout)))
            .set_read_timeout(Some(opts.timeout))
            .set_write_timeout(Some(opts.timeout));
        if let Some(token) = &opts.token {
            builder = builder.personal_token(token.expose().to_string());
        }
        let octo = builder
            .build()
            .map_err(|e| Error::Unexpected(format!("cannot build the GitHub client: {e}")))?;
        Ok(Client {
            octo,
            opts,
            clock: Mutex::new(None),
            etags: Mutex::new(HashMap::new()),
            rate_waited: Mutex::new(Duration::ZERO),
            rate: Mutex::new(None),
        })
    }

    /// The API root requests go to, as in [`ClientOptions::api_url`].
    pub fn api_url(&self) -> &str {
        &self.opts.api_url
    }

    /// Best estimate of GitHub's clock now: the last `Date` header plus the monotonic time since.
    pub fn github_now(&self) -> Option<DateTime<Utc>> {
        let clock = self.clock.lock().unwrap();
        clock
            .as_ref()
            .map(|s| sentinel_core::lease::after(s.github, s.local.elapsed()))
    }

    /// GitHub's clock as of the last response (exact, from its `Date` header).
    pub fn last_date(&self) -> Option<DateTime<Utc>> {
        self.clock.lock().unwrap().as_ref().map(|s| s.github)
    }

    /// The primary rate limit as of the last response that reported it: requests left, and how
    /// long (on GitHub's clock) until the window resets.
    pub fn rate_remaining(&self) -> Option<(u64, Duration)> {
        let sample = (*self.rate.lock().unwrap())?;
        let now = self.github_now().unwrap_or_else(Utc::now);
        Some((
            sample.remaining,
            sentinel_core::lease::until(now, sample.reset),
        ))
    }

    /// GET with retries and a conditional request when this process has seen the URL before.
    pub async fn get(&self, path: &str) -> Result<Response> {
        self.idempotent(Method::GET, path, None::<&()>).await
    }

    /// GET every page of a list, following `Link: rel="next"`.
    pub async fn get_all<T: DeserializeOwned>(&self, first: &str) -> Result<(Vec<T>, Response)> {
        let mut items = Vec::new();
        let mut url = first.to_string();
        loop {
            let resp = self.get(&url).await?;
            if !resp.status.is_success() {
                return Ok((items, resp));
            }
            items.extend(resp.json::<Vec<T>>()?);
            match resp.next_page() {
                Some(next) => url = next,
                None => return Ok((items, resp)),
            }
        }
    }

    /// PATCH with retries: a PATCH that replaces a whole body may safely be sent again.
    pub async fn patch<B: Serialize>(&self, path: &str, body: &B) -> Result<Response> {
        self.idempotent(Method::PATCH, path, Some(body)).await
    }

    /// DELETE with retries, with an optional JSON body (removing assignees takes one).
    pub async fn delete<B: Serialize>(&self, path: &str, body: Option<&B>) -> Result<Response> {
        self.idempotent(Method::DELETE, path, body).await
    }

    /// A POST whose repetition is harmless (adding an assignee or a label): retried like a GET.
    pub async fn post_idempotent<B: Serialize>(&self, path: &str, body: &B) -> Result<Response> {
        self.idempotent(Method::POST, path, Some(body)).await
    }

    /// A POST that is sent once: a 5xx or broken connection is reported as `Sent::Unknown`.
    pub async fn post_once<B: Serialize>(&self, path: &str, body: &B) -> Result<Sent> {
        loop {
            let resp = match self.send(Method::POST, path, Some(body)).await {
                Ok(r) => r,
                Err(e) => return Ok(Sent::Unknown(e)),
            };
            if resp.status.is_server_error() {
                return Ok(Sent::Unknown(Error::Unavailable(format!(
                    "GitHub answered {} to POST {path}",
                    resp.status
                ))));
            }
            // A rate-limited request was not applied, so waiting and resending is safe.
            if self.wait_for_rate_limit(&resp).await? {
                continue;
            }
            self.check_auth(&resp)?;
            return Ok(Sent::Done(resp));
        }
    }

    async fn idempotent<B: Serialize>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<Response> {
        let mut attempt = 0;
        let mut timeouts = 0;
        loop {
            let result = self.send(method.clone(), path, body).await;
            let retryable = match &result {
                Ok(resp) => resp.status.is_server_error(),
                Err(Error::Unavailable(m)) if m.contains(TIMED_OUT) => {
                    timeouts += 1;
                    timeouts < 2
                }
                Err(_) => true,
            };
            if retryable && attempt < self.opts.retries {
                attempt += 1;
                let pause = retry_pause(self.opts.retry_backoff, attempt);
                // One line at the end says what failed; the attempts are details for -v.
                tracing::info!(%method, path, attempt, ?pause, "GitHub request failed; retrying");
                tokio::time::sleep(sentinel_core::lease::jitter(pause, 0.25)).await;
                continue;
            }
            let resp = match result {
                Ok(resp) if resp.status.is_server_error() => {
                    return Err(Error::Unavailable(format!(
                        "GitHub answered {} to {method} {path} after {} attempts: {}",
                        resp.status,
                        attempt + 1,
                        resp.message()
                    )));
                }
                Ok(resp) => resp,
                Err(e) => return Err(e),
            };
            if self.wait_for_rate_limit(&resp).await? {
                continue;
            }
            self.check_auth(&resp)?;
            return Ok(resp);
        }
    }

    /// 401 is never the caller's business: the token is wrong everywhere.
    fn check_auth(&self, resp: &Response) -> Result<()> {
        if resp.status == StatusCode::UNAUTHORIZED {
            let hint = if self.opts.token.is_some() {
                "check --token / SENTINEL_TOKEN / GITHUB_TOKEN / GH_TOKEN"
            } else {
                "no token given: set --token, SENTINEL_TOKEN, GITHUB_TOKEN or GH_TOKEN, or log in with `gh auth login`"
            };
            return Err(Error::Auth(format!("GitHub: {} ({hint})", resp.message())));
        }
        Ok(())
    }

    /// Sleeps through a rate limit when the wait fits the budget. Returns whether to resend.
    async fn wait_for_rate_limit(&self, resp: &Response) -> Result<bool> {
        if resp.status != StatusCode::FORBIDDEN && resp.status != StatusCode::TOO_MANY_REQUESTS {
            return Ok(false);
        }
        let message = resp.message();
        let retry_after = resp
            .header("retry-after")
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let primary = resp.header("x-ratelimit-remaining") == Some("0");
        let secondary =
            retry_after.is_some() || message.to_lowercase().contains("secondary rate limit");
        let wait = if secondary {
            retry_after.unwrap_or(Duration::from_secs(60))
        } else if primary {
            let reset = resp
                .header("x-ratelimit-reset")
                .and_then(|v| v.parse::<i64>().ok())
                .and_then(|s| DateTime::from_timestamp(s, 0));
            let now = self.last_date().unwrap_or_else(Utc::now);
            match reset {
                Some(reset) => (reset - now).to_std().unwrap_or_default() + Duration::from_secs(1),
                None => Duration::from_secs(60),
            }
        } else {
            return Ok(false);
        };
        {
            let mut waited = self.rate_waited.lock().unwrap();
            if *waited + wait > self.opts.rate_limit_wait {
                return Err(Error::RateLimited {
                    message: format!(
                        "GitHub rate limit: {message} (would need to wait {} s more; the wait budget is {} s)",
                        wait.as_secs(),
                        self.opts.rate_limit_wait.as_secs()
                    ),
                    retry_after: Some(wait),
                });
            }
            *waited += wait;
        }
        tracing::warn!(wait_secs = wait.as_secs_f64(), %message, "GitHub rate limit; waiting");
        tokio::time::sleep(wait).await;
        Ok(true)
    }

    async fn send<B: Serialize>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<Response> {
        let started = Instant::now();
        let cached = (method == Method::GET)
            .then(|| self.etags.lock().unwrap().get(path).cloned())
            .flatten();
        let result = match method {
            Method::GET => {
                let mut headers = HeaderMap::new();
                if let Some(v) = cached.as_ref().and_then(|c| c.etag.parse().ok()) {
                    headers.insert(header::IF_NONE_MATCH, v);
                }
                self.octo._get_with_headers(path, Some(headers)).await
            }
            Method::POST => self.octo._post(path, body).await,
            Method::PATCH => self.octo._patch(path, body).await,
            Method::DELETE => self.octo._delete(path, body).await,
            other => return Err(Error::Unexpected(format!("unsupported method {other}"))),
        };
        let raw = result.map_err(|e| {
            if is_timeout(&e) {
                Error::Unavailable(format!(
                    "{TIMED_OUT} after {} s waiting for GitHub at {} ({method} {path}); check the network or --api-url",
                    started.elapsed().as_secs(),
                    self.opts.api_url,
                ))
            } else {
                Error::Unavailable(format!(
                    "cannot reach GitHub at {}: {}",
                    self.opts.api_url,
                    brief(&e)
                ))
            }
        })?;
        let (parts, body) = raw.into_parts();
        let bytes = body
            .collect()
            .await
            .map_err(|e| Error::Unavailable(format!("GitHub response cut short: {}", brief(&e))))?
            .to_bytes();
        let mut resp = Response {
            status: parts.status,
            headers: parts.headers,
            body: bytes,
        };
        self.observe_date(&resp, started);
        self.observe_rate(&resp);
        tracing::debug!(%method, path, status = resp.status.as_u16(), elapsed_ms = started.elapsed().as_millis() as u64, "github");
        if method == Method::GET {
            if resp.status == StatusCode::NOT_MODIFIED {
                if let Some(c) = cached {
                    // A 304 need not repeat the Link header; pagination must not stop there.
                    resp.status = StatusCode::OK;
                    resp.body = c.body;
                    if let Some(link) = c.link {
                        resp.headers.entry(header::LINK).or_insert(link);
                    }
                }
            } else if let Some(etag) = resp.header("etag").filter(|_| resp.status.is_success()) {
                let entry = Cached {
                    etag: etag.to_string(),
                    body: resp.body.clone(),
                    link: resp.headers.get(header::LINK).cloned(),
                };
                self.etags.lock().unwrap().insert(path.to_string(), entry);
            }
        }
        Ok(resp)
    }

    fn observe_rate(&self, resp: &Response) {
        let remaining = resp
            .header("x-ratelimit-remaining")
            .and_then(|v| v.trim().parse::<u64>().ok());
        let reset = resp
            .header("x-ratelimit-reset")
            .and_then(|v| v.trim().parse::<i64>().ok())
            .and_then(|s| DateTime::from_timestamp(s, 0));
        if let (Some(remaining), Some(reset)) = (remaining, reset) {
            *self.rate.lock().unwrap() = Some(RateSample { remaining, reset });
        }
    }

    fn observe_date(&self, resp: &Response, sent: Instant) {
        let Some(date) = resp
            .header("date")
            .and_then(|d| DateTime::parse_from_rfc2822(d).ok())
        else {
            return;
        };
        // The server stamped the response somewhere between send and receive; the midpoint
        // halves the error, and whole-second Date headers dominate it anyway.
        let half_trip = sent.elapsed() / 2;
        *self.clock.lock().unwrap() = Some(ClockSample {
            github: date.with_timezone(&Utc),
            local: Instant::now() - half_trip,
        });
    }
}

const TIMED_OUT: &str = "timed out";

/// Whether a transport error is one of our deadlines running out (at any depth of its sources).
fn is_timeout(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<std::io::Error>()
            && io.kind() == std::io::ErrorKind::TimedOut
        {
            return true;
        }
        let text = err.to_string().to_lowercase();
        if text.contains("timed out") || text.contains("timeout") || text.contains("elapsed") {
            return true;
        }
        cur = err.source();
    }
    false
}

/// octocrab errors carry backtraces in Display; keep messages to one line.
fn brief(e: &dyn std::fmt::Display) -> String {
    e.to_string().lines().next().unwrap_or_default().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_pauses_double_and_never_overflow() {
        let base = Duration::from_millis(500);
        assert_eq!(retry_pause(base, 1), base);
        assert_eq!(retry_pause(base, 3), Duration::from_secs(2));
        for attempt in [40, 64, u32::MAX] {
            assert_eq!(retry_pause(base, attempt), MAX_RETRY_PAUSE);
        }
        assert_eq!(retry_pause(Duration::MAX, 2), MAX_RETRY_PAUSE);
    }
}
