//! `sentinel heartbeat LOCK…`: renew once (`--once`), or keep renewing as a sidecar until stopped.
//!
//! One sidecar keeps several locks as well as one. On the coordinator it moves them into one
//! session, so one renewal keeps them all (one request per interval, not one per lock); on the
//! other backends each lock is renewed on its own. Either way the sidecar stands or falls with
//! all of them: the loss of one is exit 4, and the others are left to their leases.

use std::pin::pin;

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use serde_json::json;
use tokio::sync::{oneshot, watch};
use tokio::time::Instant;

use crate::cli::HeartbeatArgs;
use crate::config::Context;
use crate::output::{Report, holder_json};
use sentinel::backend::{Backend, LockBackend};
use sentinel::error::{Error, Result};
use sentinel::interrupt::{Signals, StopSignal};
use sentinel::keepalive::{self, Keepalive, Timing};
use sentinel::lease;
use sentinel::lock::{Holder, ReleaseRequest, RenewRequest};
use sentinel::server::{ServerBackend, Session};

pub async fn exec(ctx: &Context, args: &HeartbeatArgs) -> Result<Report> {
    if args.once {
        return once(ctx, args).await;
    }
    // From the start, SIGINT/SIGTERM mean "stop cleanly", not the default death.
    let mut signals = Signals::listen()?;
    if let Some(interval) = args.interval {
        keepalive::check_interval(interval)?;
    }
    // The first renewal proves each lock is ours and tells its TTL, which the interval must fit.
    let mut held = Vec::with_capacity(args.locks.len());
    for name in &args.locks {
        let req = renew_request(ctx, name)?;
        let sent = Instant::now();
        let holder = ctx.backend.renew(&req).await?;
        held.push((req, holder, sent));
    }
    if held.len() > 1 {
        return several(ctx, args, held, signals).await;
    }
    let Some((req, holder, sent)) = held.pop() else {
        return Err(Error::usage("name at least one lock"));
    };
    let what = ctx.backend.describe(&req.lock);
    let timing = Timing::for_ttl(args.interval, keepalive::ttl_of(&holder))?;
    let (stop, stopped) = oneshot::channel::<()>();
    let mut keep = pin!(Keepalive::new(req.clone(), holder, sent, timing).run(
        &ctx.backend,
        async {
            let _ = stopped.await;
        }
    ));
    let (summary, signal) = tokio::select! {
        ended = keep.as_mut() => (ended?, None),
        signal = signals.recv() => {
            let _ = stop.send(());
            (keep.await?, Some(signal))
        }
    };
    let released = if args.release_on_exit {
        Some(release(ctx, req, summary.holder.fencing_token).await?)
    } else {
        None
    };
    let h = &summary.holder;
    let renewals = summary.renewals + 1;
    let stopped_by = signal.map(|s| s.name());
    let after = match released {
        Some(true) => "released it".to_string(),
        Some(false) => "it was free already".to_string(),
        None => format!(
            "it stays held until {} unless renewed",
            lease::human(h.expires_at)
        ),
    };
    Ok(Report::new(
        json!({
            "ok": true,
            "command": "heartbeat",
            "backend": ctx.backend.name(),
            "lock": what,
            "worker_id": h.worker_id,
            "fencing_token": h.fencing_token,
            "interval_secs": timing.interval().as_secs_f64(),
            "renewals": renewals,
            "stopped_by": stopped_by,
            "released": released == Some(true),
            "holder": holder_json(h),
        }),
        format!(
            "Stopped renewing {what} after {renewals} renewal{}{}; {after}",
            if renewals == 1 { "" } else { "s" },
            stopped_by.map(|s| format!(" ({s})")).unwrap_or_default()
        ),
    ))
}

/// The renewal of `name` by this worker, whatever its token.
fn renew_request(ctx: &Context, name: &str) -> Result<RenewRequest> {
    Ok(RenewRequest {
        lock: ctx.backend.parse_lock(name)?,
        worker_id: ctx.claimant.worker_id.clone(),
        fencing_token: None,
        ttl: None,
    })
}

/// A sidecar for several locks, each just renewed (`held`: the request, the hold, when it was
/// sent): in one session on the coordinator, each on its own elsewhere. Their lease is the
/// shortest of theirs, which the interval must fit.
async fn several(
    ctx: &Context,
    args: &HeartbeatArgs,
    held: Vec<(RenewRequest, Holder, Instant)>,
    mut signals: Signals,
) -> Result<Report> {
    let ttl = held
        .iter()
        .map(|(_, h, _)| keepalive::ttl_of(h))
        .min()
        .unwrap_or(lease::MIN_TTL);
    let timing = Timing::for_ttl(args.interval, ttl)?;
    let locks: Vec<String> = held
        .iter()
        .map(|(req, _, _)| ctx.backend.describe(&req.lock))
        .collect();
    let kept = match ctx.backend.inner().inner() {
        Backend::Server(server) => {
            in_session(ctx, args, server, held, (ttl, timing), &mut signals).await?
        }
        _ => each_alone(ctx, args, held, timing, &mut signals).await?,
    };
    let stopped_by = kept.signal.name();
    let after = match &kept.released {
        Some(released) => format!("released {} of them", released.len()),
        None => format!(
            "they stay held for at most {} unless renewed",
            sentinel::duration::display(ttl)
        ),
    };
    Ok(Report::new(
        json!({
            "ok": true,
            "command": "heartbeat",
            "backend": ctx.backend.name(),
            "locks": locks,
            "worker_id": ctx.claimant.worker_id,
            "session": kept.session,
            "interval_secs": timing.interval().as_secs_f64(),
            "renewals": kept.renewals,
            "stopped_by": stopped_by,
            "released": kept.released,
        }),
        format!(
            "Stopped renewing {} after {} renewal{} ({stopped_by}); {after}",
            locks.join(", "),
            kept.renewals,
            if kept.renewals == 1 { "" } else { "s" },
        ),
    ))
}

/// How a sidecar of several locks ended when none was lost.
struct Kept {
    /// The coordinator's session that kept them, if one did.
    session: Option<u64>,
    /// Rounds in which every lock was renewed, the first one included.
    renewals: u64,
    signal: StopSignal,
    /// With `--release-on-exit`: the locks that were still held and are now released.
    released: Option<Vec<String>>,
}

/// Keeps `held` in one coordinator session until a signal: the session's lease is `ttl`, renewed
/// every `timing` interval. A session lost, or a lock that cannot be moved into it, is the error
/// (exit 4), and the locks in it end with it.
async fn in_session(
    ctx: &Context,
    args: &HeartbeatArgs,
    server: &ServerBackend,
    held: Vec<(RenewRequest, Holder, Instant)>,
    (ttl, timing): (std::time::Duration, Timing),
    signals: &mut Signals,
) -> Result<Kept> {
    let worker = &ctx.claimant.worker_id;
    let session = server
        .open_session_every(worker, ttl, timing.interval())
        .await?;
    let mut kept = Vec::with_capacity(held.len());
    for (req, holder, _) in &held {
        let name = req.lock.bare();
        session.adopt(&name, holder.fencing_token).await?;
        tracing::info!(lock = %name, session = session.id(), "kept in the session");
        kept.push((name, holder.fencing_token));
    }
    let mut lost = session.lost();
    let mut check = tokio::time::interval(timing.interval());
    let signal = loop {
        tokio::select! {
            signal = signals.recv() => break signal,
            why = async { lost.wait_for(Option::is_some).await.ok().and_then(|w| w.clone()) } => {
                let why = why.unwrap_or_else(|| "the session's keep-alive stopped".into());
                return Err(Error::NotOwner(format!("{why}: the locks in it are lost")));
            }
            // The session renews what it still has: a lock released or taken over behind its
            // back drops out of it, and that is this sidecar's loss.
            _ = check.tick() => still_kept(&session, &kept).await?,
        }
    };
    let (id, renewals) = (session.id(), session.renewals() + 1);
    let released = match args.release_on_exit {
        true => Some(session.close().await?),
        false => None,
    };
    Ok(Kept {
        session: Some(id),
        renewals,
        signal,
        released,
    })
}

/// Fails (exit 4) when a hold of `kept` is no longer in `session`; a coordinator that cannot be
/// asked is left to the session's own keep-alive to judge.
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
             over behind the sidecar's back"
        ))),
        None => Ok(()),
    }
}

/// Keeps each of `held` alive on its own until a signal, or until one is lost (the error, once
/// the others have stopped renewing).
async fn each_alone(
    ctx: &Context,
    args: &HeartbeatArgs,
    held: Vec<(RenewRequest, Holder, Instant)>,
    timing: Timing,
    signals: &mut Signals,
) -> Result<Kept> {
    let (stop, stopped) = watch::channel(false);
    let mut keeps: FuturesUnordered<_> = held
        .into_iter()
        .map(|(req, holder, sent)| {
            let mut stopped = stopped.clone();
            let lock = req.clone();
            let keep = Keepalive::new(req, holder, sent, timing);
            async move {
                let ended = keep
                    .run(&ctx.backend, async move {
                        let _ = stopped.wait_for(|stop| *stop).await;
                    })
                    .await;
                (lock, ended)
            }
        })
        .collect();
    let mut summaries = Vec::new();
    let mut signal = None;
    let mut lost = None;
    while !keeps.is_empty() {
        tokio::select! {
            Some((req, ended)) = keeps.next() => match ended {
                Ok(summary) => summaries.push((req, summary)),
                Err(e) => {
                    let _ = stop.send(true);
                    lost.get_or_insert(e);
                }
            },
            s = signals.recv(), if signal.is_none() && lost.is_none() => {
                let _ = stop.send(true);
                signal = Some(s);
            }
        }
    }
    if let Some(e) = lost {
        return Err(e);
    }
    let Some(signal) = signal else {
        return Err(Error::Unexpected("renewing stopped on its own".into()));
    };
    let renewals = 1 + summaries.iter().map(|(_, s)| s.renewals).min().unwrap_or(0);
    let mut released = None;
    if args.release_on_exit {
        let mut names = Vec::new();
        for (req, summary) in summaries {
            let lock = req.lock.clone();
            if release(ctx, req, summary.holder.fencing_token).await? {
                names.push(lock.bare());
            }
        }
        released = Some(names);
    }
    Ok(Kept {
        session: None,
        renewals,
        signal,
        released,
    })
}

/// Releases the lock the sidecar kept (`--release-on-exit`): whether it was still held.
async fn release(ctx: &Context, req: RenewRequest, fencing_token: u64) -> Result<bool> {
    let r = ctx
        .backend
        .release(&ReleaseRequest {
            lock: req.lock,
            worker_id: req.worker_id,
            force: false,
            fencing_token: Some(fencing_token),
        })
        .await?;
    Ok(r.was_held)
}

/// `--once`: one renewal of each lock, its result; with several, the first that could not be
/// renewed is the error, once all were tried.
async fn once(ctx: &Context, args: &HeartbeatArgs) -> Result<Report> {
    let mut reports = Vec::with_capacity(args.locks.len());
    let mut failed = None;
    for name in &args.locks {
        match once_one(ctx, name).await {
            Ok(report) => reports.push(report),
            Err(e) => {
                tracing::warn!(lock = %name, "{e}");
                failed.get_or_insert(e);
            }
        }
    }
    if let Some(e) = failed {
        return Err(e);
    }
    match reports.len() {
        1 => Ok(reports.remove(0)),
        _ => Ok(Report::new(
            json!({
                "ok": true,
                "command": "heartbeat",
                "backend": ctx.backend.name(),
                "renewed": reports.iter().map(|r| r.json.clone()).collect::<Vec<_>>(),
            }),
            reports
                .iter()
                .map(|r| r.human.as_str())
                .collect::<Vec<_>>()
                .join("\n"),
        )),
    }
}

/// One renewal of `name`.
async fn once_one(ctx: &Context, name: &str) -> Result<Report> {
    let req = renew_request(ctx, name)?;
    let what = ctx.backend.describe(&req.lock);
    let h = ctx.backend.renew(&req).await?;
    Ok(Report::new(
        json!({
            "ok": true,
            "command": "heartbeat",
            "backend": ctx.backend.name(),
            "lock": what,
            "worker_id": h.worker_id,
            "fencing_token": h.fencing_token,
            "expires_at": h.expires_at,
            "holder": holder_json(&h),
        }),
        format!("Renewed {what} until {}", lease::human(h.expires_at)),
    ))
}
