//! Sessions from Rust: one coordinator lease that many holds share, renewed by one task.
//!
//! [`ServerBackend::open_session`] opens a session and keeps it alive in the background, every
//! third of its TTL; [`Session::acquire`] takes locks in it, whose leases are the session's, so
//! they need no keep-alive of their own. When the session can no longer be vouched for — the
//! coordinator says it ended (closed elsewhere, not renewed in time), or no renewal got through
//! within its TTL — [`Session::lost`] fires, and every hold in it is to be taken as gone.
//! [`Session::close`] releases them all; a session dropped without a close stops being renewed
//! and ends, with its holds, within its TTL.

use std::time::Duration;

use http::{Method, StatusCode};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use sentinel_core::error::{Error, Result};
use sentinel_core::lease;
use sentinel_core::lock::{Holder, validate_label, validate_name};
use sentinel_proto::api::{AcquireBody, LeaseAnswer, SessionBody, SessionCallBody, code};

use super::{MAX_WAIT, ServerBackend, encode, json, request_id};

/// An open session and its keep-alive.
pub struct Session {
    id: u64,
    holder: String,
    ttl: Duration,
    client: ServerBackend,
    lost: watch::Receiver<Option<String>>,
    keeper: JoinHandle<()>,
}

#[derive(serde::Deserialize)]
struct Opened {
    session: u64,
}

impl ServerBackend {
    /// Opens a session of `holder` whose lease is `ttl` (at least [`lease::MIN_TTL`]), renewed
    /// in the background every third of it until the session is closed, dropped or lost.
    pub async fn open_session(&self, holder: &str, ttl: Duration) -> Result<Session> {
        validate_label("worker id", holder)?;
        lease::validate_ttl(ttl)?;
        let body = SessionBody {
            holder: holder.to_string(),
            ttl_ms: lease::millis(ttl),
            request_id: Some(request_id()),
        };
        let answer = self
            .call(
                Method::POST,
                "/sessions",
                Some(json(&body)?),
                Duration::ZERO,
            )
            .await?;
        if answer.status != StatusCode::OK {
            return Err(self.fail(&answer));
        }
        let opened: Opened = answer.parse("open session")?;
        let (tell, lost) = watch::channel(None);
        let keeper = tokio::spawn(keep(
            self.detached(),
            (opened.session, holder.to_string()),
            ttl,
            tell,
        ));
        Ok(Session {
            id: opened.session,
            holder: holder.to_string(),
            ttl,
            client: self.detached(),
            lost,
            keeper,
        })
    }
}

/// Renews session `id` every third of `ttl` until it is gone; says why on `tell`.
async fn keep(
    client: ServerBackend,
    (id, holder): (u64, String),
    ttl: Duration,
    tell: watch::Sender<Option<String>>,
) {
    let mut renewed = Instant::now();
    loop {
        tokio::time::sleep(ttl / 3).await;
        match session_call(&client, id, &holder, "keepalive").await {
            Ok(a) if a.status == StatusCode::OK => renewed = Instant::now(),
            Ok(a) if a.error().code == code::NO_SESSION => {
                let _ = tell.send(Some(format!("session {id} ended on the coordinator")));
                return;
            }
            Ok(a) => tracing::warn!("could not renew session {id}: {}", client.fail(&a)),
            Err(e) => tracing::warn!("could not renew session {id}: {e}"),
        }
        if renewed.elapsed() >= ttl {
            let why = format!("session {id} was not renewed within its TTL ({ttl:?})");
            let _ = tell.send(Some(why));
            return;
        }
    }
}

impl Session {
    /// Its id on the coordinator (`"session"` in an acquire body).
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Takes the lock `name` in the session, waiting up to `wait` in its queue on the server:
    /// the hold (its lease the session's), or `None` if it is still held by someone else. A
    /// session that ended is [`Error::NotOwner`].
    pub async fn acquire(&self, name: &str, wait: Duration) -> Result<Option<Holder>> {
        validate_name(name)?;
        let wait = wait.min(MAX_WAIT);
        let body = AcquireBody {
            holder: self.holder.clone(),
            node: Some(sentinel_core::lock::hostname()),
            ttl_ms: lease::millis(self.ttl),
            wait_ms: lease::millis(wait),
            request_id: Some(request_id()),
            readopt: false,
            task_info: Default::default(),
            shared: false,
            limit: None,
            permits: None,
            session: Some(self.id),
        };
        let path = format!("/locks/{}/acquire", encode(name));
        let answer = self
            .client
            .call(Method::POST, &path, Some(json(&body)?), wait)
            .await?;
        if answer.status == StatusCode::OK {
            let granted: LeaseAnswer = answer.parse("acquire")?;
            return Ok(Some(granted.holder));
        }
        let e = answer.error();
        match e.code.as_str() {
            code::LOCK_HELD | code::WAIT_TIMED_OUT => Ok(None),
            code::NO_SESSION => Err(Error::NotOwner(format!(
                "session {} is not open: {}",
                self.id, e.message
            ))),
            _ => Err(self.client.fail(&answer)),
        }
    }

    /// Fires (with why) once the session can no longer be vouched for: every hold in it is to
    /// be taken as gone.
    pub fn lost(&self) -> watch::Receiver<Option<String>> {
        self.lost.clone()
    }

    /// Closes the session: every hold in it is released. Returns the locks released.
    pub async fn close(self) -> Result<Vec<String>> {
        self.keeper.abort();
        let answer = session_call(&self.client, self.id, &self.holder, "close").await?;
        if answer.status != StatusCode::OK {
            return Err(self.client.fail(&answer));
        }
        let released = answer.body["released"]
            .as_array()
            .map(|r| {
                r.iter()
                    .filter_map(|h| h["lock"].as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default();
        Ok(released)
    }
}

/// `POST /sessions/{id}/ACTION` as `holder`.
async fn session_call(
    client: &ServerBackend,
    id: u64,
    holder: &str,
    action: &str,
) -> Result<super::Answer> {
    let body = SessionCallBody {
        holder: holder.to_string(),
        request_id: Some(request_id()),
    };
    let path = format!("/sessions/{id}/{action}");
    client
        .call(Method::POST, &path, Some(json(&body)?), Duration::ZERO)
        .await
}

impl Drop for Session {
    fn drop(&mut self) {
        // Not renewed any more: the session ends, with its holds, within its TTL.
        self.keeper.abort();
    }
}
