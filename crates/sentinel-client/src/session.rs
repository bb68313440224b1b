//! Sessions from Rust: one coordinator lease that many holds share, renewed by one task.
//!
//! [`ServerBackend::open_session`] opens a session and keeps it alive in the background, every
//! third of its TTL (or at the interval given to [`ServerBackend::open_session_every`]), by the
//! same rules as a lock's keep-alive: a renewal counts from when it was sent, failures are
//! retried while the lease can be counted on. [`Session::acquire`] takes locks in it and
//! [`Session::adopt`] moves a hold taken alone into it; either way its lease is the session's,
//! so it needs no keep-alive of its own. When the session can no longer be vouched for — the
//! coordinator says it ended (closed elsewhere, not renewed in time), or no renewal got through
//! while its lease lasted — [`Session::lost`] fires, and every hold in it is to be taken as gone.
//! [`Session::close`] releases them all; a session dropped without a close stops being renewed
//! and ends, with its holds, within its TTL.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use http::{Method, StatusCode};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use sentinel_core::error::{Error, Result};
use sentinel_core::keepalive::Timing;
use sentinel_core::lease;
use sentinel_core::lock::{Holder, validate_label, validate_name};
use sentinel_proto::api::{
    AcquireBody, LeaseAnswer, RenewBody, SessionBody, SessionCallBody, code,
};

use super::{MAX_WAIT, ServerBackend, encode, json, request_id};

/// An open session and its keep-alive.
pub struct Session {
    id: u64,
    holder: String,
    ttl: Duration,
    client: ServerBackend,
    lost: watch::Receiver<Option<String>>,
    renewals: Arc<AtomicU64>,
    keeper: JoinHandle<()>,
}

#[derive(serde::Deserialize)]
struct Opened {
    session: u64,
}

impl ServerBackend {
    /// Opens a session of `holder` whose lease is `ttl` (at least 3s), renewed in the
    /// background every third of it until the session is closed, dropped or lost.
    pub async fn open_session(&self, holder: &str, ttl: Duration) -> Result<Session> {
        self.open_session_every(holder, ttl, ttl / 3).await
    }

    /// [`Self::open_session`], renewed every `interval` instead (at least 1s, at most a third
    /// of `ttl`, as a lock's keep-alive).
    pub async fn open_session_every(
        &self,
        holder: &str,
        ttl: Duration,
        interval: Duration,
    ) -> Result<Session> {
        validate_label("worker id", holder)?;
        lease::validate_ttl(ttl)?;
        let timing = Timing::for_lease("open_session", interval, ttl)?;
        let body = SessionBody {
            holder: holder.to_string(),
            ttl_ms: lease::millis(ttl),
            request_id: Some(request_id()),
        };
        let sent = Instant::now();
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
        let renewals = Arc::new(AtomicU64::new(0));
        let keeper = tokio::spawn(
            Keeper {
                client: self.detached(),
                id: opened.session,
                holder: holder.to_string(),
                ttl,
                timing,
                renewed: sent,
                renewals: renewals.clone(),
            }
            .run(tell),
        );
        Ok(Session {
            id: opened.session,
            holder: holder.to_string(),
            ttl,
            client: self.detached(),
            lost,
            renewals,
            keeper,
        })
    }
}

/// The background renewal of one session.
struct Keeper {
    client: ServerBackend,
    id: u64,
    holder: String,
    ttl: Duration,
    timing: Timing,
    /// When the request behind the last renewal (or the opening) was sent: the lease counts
    /// from no later than that.
    renewed: Instant,
    renewals: Arc<AtomicU64>,
}

impl Keeper {
    /// Renews the session every interval, retrying a failed renewal every retry pause while the
    /// lease can be counted on; says on `tell` why it stopped.
    async fn run(mut self, tell: watch::Sender<Option<String>>) {
        let id = self.id;
        let mut next = lease::instant_after(self.renewed, self.timing.interval());
        loop {
            tokio::time::sleep_until(next).await;
            let deadline = lease::holder_deadline(self.renewed, self.ttl);
            let sent = Instant::now();
            let call = session_call(&self.client, id, &self.holder, "keepalive");
            let failed = match tokio::time::timeout_at(deadline, call).await {
                Ok(Ok(a)) if a.status == StatusCode::OK => {
                    self.renewed = sent;
                    self.renewals.fetch_add(1, Ordering::Relaxed);
                    next = lease::instant_after(sent, self.timing.interval());
                    continue;
                }
                Ok(Ok(a)) if a.error().code == code::NO_SESSION => {
                    let _ = tell.send(Some(format!("session {id} ended on the coordinator")));
                    return;
                }
                Ok(Ok(a)) => self.client.fail(&a),
                Ok(Err(e)) => e,
                Err(_) => Error::Unavailable("the renewal did not complete".into()),
            };
            if Instant::now() >= deadline {
                let why =
                    format!("session {id} could not be renewed while its lease lasted ({failed})");
                let _ = tell.send(Some(why));
                return;
            }
            tracing::warn!("could not renew session {id}: {failed}; retrying while it lasts");
            next = lease::instant_after(Instant::now(), lease::jitter(self.timing.retry(), 0.25))
                .min(deadline);
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

    /// Moves the hold `name` that the session's holder has with `fencing_token` (taken alone,
    /// or in another session) into this session: from then on its lease is the session's. The
    /// hold as it is now; [`Error::NotOwner`] if it is not held so any more, or the session
    /// ended.
    pub async fn adopt(&self, name: &str, fencing_token: u64) -> Result<Holder> {
        validate_name(name)?;
        let body = RenewBody {
            holder: self.holder.clone(),
            token: fencing_token,
            request_id: Some(request_id()),
            ttl_ms: None,
            session: Some(self.id),
        };
        let answer = self.client.post("renew", name, &body).await?;
        if answer.status == StatusCode::OK {
            return Ok(answer.parse::<LeaseAnswer>("adopt")?.holder);
        }
        match answer.error().code.as_str() {
            code::NO_SESSION => Err(Error::NotOwner(format!(
                "session {} is not open: {}",
                self.id,
                answer.error().message
            ))),
            _ => Err(self
                .client
                .renew_refused(name, &self.holder, fencing_token, &answer)),
        }
    }

    /// The holds the session keeps, `(lock, fencing token)`, as the coordinator says now; one
    /// that ended (released, taken over) drops out at the session's next renewal. A session
    /// that ended is [`Error::NotOwner`].
    pub async fn holds(&self) -> Result<Vec<(String, u64)>> {
        #[derive(serde::Deserialize)]
        struct Hold {
            lock: String,
            fencing_token: u64,
        }
        #[derive(serde::Deserialize)]
        struct Kept {
            holds: Vec<Hold>,
        }
        let path = format!("/sessions/{}", self.id);
        let answer = self
            .client
            .call(Method::GET, &path, None, Duration::ZERO)
            .await?;
        match answer.status {
            StatusCode::OK => Ok(answer
                .parse::<Kept>("session")?
                .holds
                .into_iter()
                .map(|h| (h.lock, h.fencing_token))
                .collect()),
            StatusCode::NOT_FOUND => {
                Err(Error::NotOwner(format!("session {} is not open", self.id)))
            }
            _ => Err(self.client.fail(&answer)),
        }
    }

    /// Renewals of the session so far.
    pub fn renewals(&self) -> u64 {
        self.renewals.load(Ordering::Relaxed)
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
