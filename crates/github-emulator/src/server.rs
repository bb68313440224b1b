//! The HTTP pipeline around the endpoints: latency, injected faults, authentication, the
//! primary rate limit, conditional requests (ETag / If-None-Match), the headers GitHub puts on
//! every response, and the request log. One axum fallback handler takes every request so that
//! this order is explicit in one place instead of spread over middleware layers.

use std::hash::{DefaultHasher, Hasher};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Request as HttpRequest, State as AxumState};
use axum::http::{HeaderMap, Response};
use serde_json::Value;

use crate::Request;
use crate::faults::Fault;
use crate::paginate;
use crate::render;
use crate::routes::{self, Ctx, Reply};
use crate::state::State;

pub type Shared = Arc<Mutex<State>>;

/// A handler that panicked must not take the whole emulator down with a poisoned mutex.
pub fn lock(shared: &Shared) -> MutexGuard<'_, State> {
    shared.lock().unwrap_or_else(PoisonError::into_inner)
}

pub fn router(shared: Shared) -> Router {
    Router::new().fallback(handle).with_state(shared)
}

struct Incoming {
    method: String,
    path: String,
    query: Option<String>,
    headers: HeaderMap,
    body: Bytes,
}

async fn handle(AxumState(shared): AxumState<Shared>, req: HttpRequest) -> Response<Body> {
    let (parts, body) = req.into_parts();
    let body = axum::body::to_bytes(body, 16 * 1024 * 1024)
        .await
        .unwrap_or_default();
    let req = Incoming {
        method: parts.method.as_str().to_ascii_uppercase(),
        path: parts.uri.path().to_string(),
        query: parts.uri.query().map(str::to_string),
        headers: parts.headers,
        body,
    };
    // Sleep outside the lock, so slow requests overlap like they do against the real API.
    let delay = {
        let mut st = lock(&shared);
        st.latency + st.faults.take_latency(&req.method, &req.path)
    };
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    process(&mut lock(&shared), &req)
}

/// Everything after the latency, under the state lock: one request is one atomic step.
fn process(st: &mut State, req: &Incoming) -> Response<Body> {
    let request_id = st.ids.request_id();
    let fault = st.faults.take_error(&req.method, &req.path);
    let token = bearer_token(&req.headers);
    let caller = token.and_then(|t| st.tokens.get(t).cloned());
    // Unknown tokens are billed like anonymous callers in the headers we send back.
    let rate_key = match (token, &caller) {
        (Some(t), Some(_)) => t.to_string(),
        _ => String::new(),
    };

    let reply = match fault {
        Some(Fault::ErrorBeforeWrite { status }) => server_error(status),
        Some(Fault::SecondaryRateLimit { retry_after_secs }) => Reply::error(
            403,
            &format!(
                "You have exceeded a secondary rate limit. Please wait a few minutes before you try \
                 again. If you reach out to GitHub Support for help, please include the request ID \
                 {request_id}."
            ),
            "https://docs.github.com/free-pro-team@latest/rest/overview/rate-limits-for-the-rest-api#about-secondary-rate-limits",
        )
        .with_header("retry-after", retry_after_secs.to_string()),
        _ if token.is_some() && caller.is_none() => {
            Reply::error(401, "Bad credentials", "https://docs.github.com/rest")
        }
        // GitHub answers its rate limit status even to a caller past the limit, and does not
        // bill it.
        _ if req.method == "GET" && req.path == "/rate_limit" => rate_limit_status(st, &rate_key),
        _ if st.rate_window(&rate_key).used >= st.limit_for(&rate_key) => {
            rate_limited(st, caller.as_deref(), &request_id)
        }
        _ => {
            let cx = Ctx {
                method: &req.method,
                path: &req.path,
                raw_query: req.query.as_deref(),
                query: paginate::parse_query(req.query.as_deref()),
                body: &req.body,
                caller: caller.clone(),
            };
            let reply = conditional(routes::dispatch(st, &cx), &req.method, &req.headers);
            // GitHub does not bill a 304 against the primary rate limit.
            if reply.status != 304 {
                st.count_request(&rate_key);
            }
            match fault {
                Some(Fault::ErrorAfterWrite { status }) => server_error(status),
                _ => reply,
            }
        }
    };

    st.log.push(Request {
        method: req.method.clone(),
        path: req.path.clone(),
        query: req.query.clone(),
        status: reply.status,
        login: caller.as_deref().map(|k| st.user(k).login.clone()),
    });
    respond(st, reply, &rate_key, &request_id)
}

/// `Authorization: Bearer T` or `token T` (GitHub accepts both schemes).
fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get("authorization")?.to_str().ok()?.trim();
    let (scheme, token) = value.split_once(' ')?;
    if scheme.eq_ignore_ascii_case("bearer") || scheme.eq_ignore_ascii_case("token") {
        Some(token.trim())
    } else {
        // Any other scheme is credentials we do not recognise.
        Some("")
    }
}

fn server_error(status: u16) -> Reply {
    let message = match status {
        500 | 502 => "Server Error",
        503 => "Service Unavailable",
        504 => {
            "We couldn't respond to your request in time. Sorry about that. Please try resubmitting your request and contact us if the problem persists."
        }
        _ => axum::http::StatusCode::from_u16(status)
            .ok()
            .and_then(|s| s.canonical_reason())
            .unwrap_or("Server Error"),
    };
    Reply::error(status, message, "https://docs.github.com/rest")
}

fn rate_limited(st: &State, caller: Option<&str>, request_id: &str) -> Reply {
    let who = match caller {
        Some(k) => format!("user ID {}.", st.user(k).id),
        None => "127.0.0.1. (But here's the good news: Authenticated requests get a higher rate \
                 limit. Check out the documentation for more details.)"
            .to_string(),
    };
    Reply::error(
        403,
        &format!(
            "API rate limit exceeded for {who} If you reach out to GitHub Support for help, please \
             include the request ID {request_id}."
        ),
        "https://docs.github.com/rest/overview/rate-limits-for-the-rest-api",
    )
}

/// `GET /rate_limit`: the caller's primary (`core`) window, under `resources` and as `rate`.
fn rate_limit_status(st: &mut State, rate_key: &str) -> Reply {
    let window = st.rate_window(rate_key);
    let limit = st.limit_for(rate_key);
    let core = serde_json::json!({
        "limit": limit,
        "used": window.used,
        "remaining": limit.saturating_sub(window.used),
        "reset": window.reset,
        "resource": "core",
    });
    Reply::json(
        200,
        serde_json::json!({"resources": {"core": core}, "rate": core}),
    )
}

/// Tags successful GETs with an ETag and answers 304 when the client already has that body.
fn conditional(reply: Reply, method: &str, headers: &HeaderMap) -> Reply {
    if method != "GET" || reply.status != 200 {
        return reply;
    }
    let Some(body) = &reply.body else {
        return reply;
    };
    let etag = etag(body);
    let matches = headers
        .get_all("if-none-match")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().trim_start_matches("W/"))
        .any(|t| t == "*" || t == etag.trim_start_matches("W/"));
    if matches {
        let mut not_modified = Reply::empty(304).with_header("etag", etag);
        // Keep pagination links: a client walking pages with ETags still needs them.
        not_modified.headers.extend(
            reply
                .headers
                .into_iter()
                .filter(|(name, _)| *name == "link"),
        );
        not_modified
    } else {
        reply.with_header("etag", etag)
    }
}

fn etag(body: &Value) -> String {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    // Two differently-primed hashes give a 128-bit tag, plenty to never collide in a test.
    let mut a = DefaultHasher::new();
    a.write(&bytes);
    let mut b = DefaultHasher::new();
    b.write_u8(0x5a);
    b.write(&bytes);
    format!("W/\"{:016x}{:016x}\"", a.finish(), b.finish())
}

fn respond(st: &mut State, reply: Reply, rate_key: &str, request_id: &str) -> Response<Body> {
    let window = st.rate_window(rate_key);
    let limit = st.limit_for(rate_key);
    let mut builder = Response::builder()
        .status(reply.status)
        .header("date", render::http_date(st.now()))
        .header("server", "github-emulator")
        .header("x-github-api-version-selected", "2022-11-28")
        .header("x-ratelimit-limit", limit.to_string())
        .header(
            "x-ratelimit-remaining",
            limit.saturating_sub(window.used).to_string(),
        )
        .header("x-ratelimit-reset", window.reset.to_string())
        .header("x-ratelimit-used", window.used.to_string())
        .header("x-ratelimit-resource", "core")
        .header("x-github-request-id", request_id);
    for (name, value) in reply.headers {
        builder = builder.header(name, value);
    }
    let body = match reply.body {
        Some(v) => {
            builder = builder.header("content-type", "application/json; charset=utf-8");
            Body::from(serde_json::to_vec(&v).unwrap_or_default())
        }
        None => Body::empty(),
    };
    builder.body(body).unwrap_or_else(|_| {
        let mut fallback = Response::new(Body::empty());
        *fallback.status_mut() = axum::http::StatusCode::INTERNAL_SERVER_ERROR;
        fallback
    })
}
