//! Keeping held locks alive together, for the `heartbeat` sidecar and `run`.
//!
//! One lock is renewed by its own keep-alive. Several are kept as one: on the coordinator they
//! move into one session, so one renewal per interval keeps them all (and the session is read
//! once per interval, to notice a lock taken from it); elsewhere each has its keep-alive, at the
//! same interval. Either way they stand or fall together: the loss of one is the loss (exit 4),
//! and the others are then left to their leases. A coordinator that cannot open the session only
//! costs the saving: each lock is then renewed on its own.

use std::future::Future;
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::config::Context;
use sentinel::backend::{Backend, LockBackend};
use sentinel::error::{Error, Result};
use sentinel::keepalive::{self, Keepalive, Timing};
use sentinel::lease;
use sentinel::lock::{Holder, ReleaseRequest, RenewRequest};
use sentinel::server::Session;

/// A lock held by this worker and what its last grant or renewal said.
pub(crate) struct Held {
    pub req: RenewRequest,
    pub holder: Holder,
    /// When the request behind `holder` was sent.
    pub sent: Instant,
}

/// Locks kept alive together.
pub(crate) struct Together<'a> {
    ctx: &'a Context,
    held: Vec<Held>,
    /// The schedule that fits their lease (the shortest of theirs), once started.
    timing: Option<Timing>,
    /// On the coordinator, with several locks: the session that keeps them, and what it keeps.
    session: Option<(Session, Vec<(String, u64)>)>,
}

impl<'a> Together<'a> {
    /// `held`, not yet kept: [`Self::start`] starts, [`Self::release`] gives them back.
    pub fn new(ctx: &'a Context, held: Vec<Held>) -> Self {
        Together {
            ctx,
            held,
            timing: None,
            session: None,
        }
    }

    /// Fits the schedule to their lease, the shortest of theirs (`interval` that does not fit is
    /// refused, exit 2), and moves several locks on the coordinator into one session. A lock
    /// that has ended meanwhile is the error ([`Error::NotOwner`]). On an error the caller still
    /// releases them. Their lease and the schedule.
    pub async fn start(&mut self, interval: Option<Duration>) -> Result<(Duration, Timing)> {
        let ttl = self
            .held
            .iter()
            .map(|h| keepalive::ttl_of(&h.holder))
            .min()
            .unwrap_or(lease::MIN_TTL);
        let timing = Timing::for_ttl(interval, ttl)?;
        self.timing = Some(timing);
        self.open_session(ttl, timing).await?;
        Ok((ttl, timing))
    }

    /// Several locks on the coordinator move into one session.
    async fn open_session(&mut self, ttl: Duration, timing: Timing) -> Result<()> {
        let Backend::Server(server) = self.ctx.backend.inner().inner() else {
            return Ok(());
        };
        if self.held.len() < 2 {
            return Ok(());
        }
        let worker = &self.ctx.claimant.worker_id;
        let session = match server
            .open_session_every(worker, ttl, timing.interval())
            .await
        {
            Ok(session) => session,
            Err(e) => {
                tracing::warn!("could not open a session ({e}): renewing each lock on its own");
                return Ok(());
            }
        };
        let mut kept = Vec::with_capacity(self.held.len());
        for h in &mut self.held {
            let name = h.req.lock.bare();
            let sent = Instant::now();
            h.holder = session.adopt(&name, h.holder.fencing_token).await?;
            h.sent = sent;
            tracing::info!(lock = %name, session = session.id(), "kept in the session");
            kept.push((name, h.holder.fencing_token));
        }
        self.session = Some((session, kept));
        Ok(())
    }

    /// The coordinator's session that keeps them, if one does.
    pub fn session(&self) -> Option<u64> {
        self.session.as_ref().map(|(s, _)| s.id())
    }

    /// The locks and what their last renewal said.
    pub fn held(&self) -> &[Held] {
        &self.held
    }

    /// Renews until `stop` resolves (the renewal rounds made) or a lock is lost (the error, once
    /// every keep-alive has stopped). Dropping the future stops renewing at once.
    pub async fn keep(&mut self, stop: impl Future<Output = ()>) -> Result<u64> {
        let Some(timing) = self.timing else {
            return Err(Error::Unexpected(
                "keeping locks that were not started".into(),
            ));
        };
        match &self.session {
            Some((session, kept)) => in_session(session, kept, timing, stop).await,
            None => self.each_alone(timing, stop).await,
        }
    }

    /// Each lock by its own keep-alive.
    async fn each_alone(&mut self, timing: Timing, stop: impl Future<Output = ()>) -> Result<u64> {
        let (tell, stopped) = watch::channel(false);
        let ctx = self.ctx;
        let backend = &ctx.backend;
        let mut keeps: FuturesUnordered<_> = self
            .held
            .iter()
            .enumerate()
            .map(|(i, h)| {
                let mut stopped = stopped.clone();
                let keep = Keepalive::new(h.req.clone(), h.holder.clone(), h.sent, timing);
                async move {
                    let stop = async move {
                        let _ = stopped.wait_for(|stop| *stop).await;
                    };
                    (i, keep.run(backend, stop).await)
                }
            })
            .collect();
        let mut stop = std::pin::pin!(stop);
        let (mut rounds, mut lost, mut stopping) = (u64::MAX, None, false);
        while !keeps.is_empty() {
            tokio::select! {
                Some((i, ended)) = keeps.next() => match ended {
                    Ok(summary) => {
                        rounds = rounds.min(summary.renewals);
                        self.held[i].holder = summary.holder;
                    }
                    Err(e) => {
                        let _ = tell.send(true);
                        lost.get_or_insert(e);
                    }
                },
                () = stop.as_mut(), if !stopping => {
                    stopping = true;
                    let _ = tell.send(true);
                }
            }
        }
        match lost {
            Some(e) => Err(e),
            None => Ok(if rounds == u64::MAX { 0 } else { rounds }),
        }
    }

    /// Releases every lock still held: the names released. One found gone (taken over,
    /// expired) is the error, once the others are released; a backend that cannot be reached
    /// only leaves them to their leases.
    pub async fn release(self) -> Result<Vec<String>> {
        if let Some((session, _)) = self.session {
            return match session.close().await {
                Ok(released) => Ok(released),
                Err(e @ Error::NotOwner(_)) => Err(e),
                Err(e) => {
                    tracing::warn!("could not close the session: {e}; its locks end with it");
                    Ok(Vec::new())
                }
            };
        }
        let (mut released, mut lost) = (Vec::new(), None);
        for h in self.held {
            let what = self.ctx.backend.describe(&h.req.lock);
            let req = ReleaseRequest {
                lock: h.req.lock.clone(),
                worker_id: h.req.worker_id.clone(),
                force: false,
                fencing_token: Some(h.holder.fencing_token),
            };
            match self.ctx.backend.release(&req).await {
                Ok(r) if r.was_held => released.push(h.req.lock.bare()),
                Ok(_) => {}
                Err(e @ Error::NotOwner(_)) => {
                    lost.get_or_insert(e);
                }
                Err(e) => tracing::warn!(
                    "could not release {what}: {e}; it stays held until its lease runs out at {}",
                    lease::human(h.holder.expires_at)
                ),
            }
        }
        match lost {
            Some(e) => Err(e),
            None => Ok(released),
        }
    }
}

/// Keeps `session` (which keeps `kept`) until `stop` resolves: the session's renewals. The
/// session lost, or a lock taken from it, is the error.
async fn in_session(
    session: &Session,
    kept: &[(String, u64)],
    timing: Timing,
    stop: impl Future<Output = ()>,
) -> Result<u64> {
    let mut lost = session.lost();
    // The holds were just moved into the session: the first look is one interval on.
    let every = timing.interval();
    let mut check = tokio::time::interval_at(Instant::now() + every, every);
    let mut stop = std::pin::pin!(stop);
    loop {
        tokio::select! {
            () = stop.as_mut() => return Ok(session.renewals()),
            why = async { lost.wait_for(Option::is_some).await.ok().and_then(|w| w.clone()) } => {
                let why = why.unwrap_or_else(|| "the session's keep-alive stopped".into());
                return Err(Error::NotOwner(format!("{why}: the locks in it are lost")));
            }
            // The session renews what it still has: a lock released or taken over behind its
            // back drops out of it, and that is the loss.
            _ = check.tick() => still_kept(session, kept).await?,
        }
    }
}

/// Fails when a hold of `kept` is no longer in `session`; a coordinator that cannot be asked is
/// left to the session's own keep-alive to judge.
async fn still_kept(session: &Session, kept: &[(String, u64)]) -> Result<()> {
    let holds = match session.holds().await {
        Ok(holds) => holds,
        Err(e @ Error::NotOwner(_)) => return Err(e),
        Err(e) => {
            tracing::warn!("could not read session {}: {e}", session.id());
            return Ok(());
        }
    };
    match kept.iter().find(|hold| !holds.contains(hold)) {
        Some((name, token)) => Err(Error::NotOwner(format!(
            "{name} (fencing token {token}) is no longer held by this worker: released or taken \
             over behind its back"
        ))),
        None => Ok(()),
    }
}
