//! `sentinel heartbeat LOCK…`: renew once (`--once`), or keep renewing as a sidecar until stopped.
//!
//! One sidecar keeps several locks as well as one ([`crate::keeping`]: on the coordinator in one
//! session that one renewal keeps alive); the loss of any is exit 4.

use std::pin::pin;

use serde_json::json;
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::cli::HeartbeatArgs;
use crate::config::Context;
use crate::keeping::{Held, Together};
use crate::output::{Report, holder_json};
use sentinel::backend::LockBackend;
use sentinel::error::{Error, Result};
use sentinel::interrupt::Signals;
use sentinel::keepalive::{self, Keepalive, Timing};
use sentinel::lease;
use sentinel::lock::{ReleaseRequest, RenewRequest};

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
        held.push(Held { req, holder, sent });
    }
    if held.len() > 1 {
        return several(ctx, args, held, signals).await;
    }
    let Some(Held { req, holder, sent }) = held.pop() else {
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

/// A sidecar for several locks, each just renewed ([`keeping`]: in one session on the
/// coordinator, each on its own elsewhere).
async fn several(
    ctx: &Context,
    args: &HeartbeatArgs,
    held: Vec<Held>,
    mut signals: Signals,
) -> Result<Report> {
    let mut kept = Together::new(ctx, held);
    let (ttl, timing) = kept.start(args.interval).await?;
    let (rounds, signal) = {
        let (stop, stopped) = oneshot::channel::<()>();
        let mut keep = pin!(kept.keep(async {
            let _ = stopped.await;
        }));
        tokio::select! {
            ended = keep.as_mut() => {
                ended?;
                return Err(Error::Unexpected("renewing stopped on its own".into()));
            }
            signal = signals.recv() => {
                let _ = stop.send(());
                (keep.await?, signal)
            }
        }
    };
    // Each lock was renewed once before the keeping started.
    let renewals = rounds + 1;
    let locks: Vec<String> = kept
        .held()
        .iter()
        .map(|h| ctx.backend.describe(&h.req.lock))
        .collect();
    let session = kept.session();
    let released = match args.release_on_exit {
        true => Some(kept.release().await?),
        false => None,
    };
    let after = match &released {
        Some(released) => format!("released {} of them", released.len()),
        None => format!(
            "they stay held for at most {} unless renewed",
            sentinel::duration::display(ttl)
        ),
    };
    let stopped_by = signal.name();
    Ok(Report::new(
        json!({
            "ok": true,
            "command": "heartbeat",
            "backend": ctx.backend.name(),
            "locks": locks,
            "worker_id": ctx.claimant.worker_id,
            "session": session,
            "interval_secs": timing.interval().as_secs_f64(),
            "renewals": renewals,
            "stopped_by": stopped_by,
            "released": released,
        }),
        format!(
            "Stopped renewing {} after {renewals} renewal{} ({stopped_by}); {after}",
            locks.join(", "),
            if renewals == 1 { "" } else { "s" },
        ),
    ))
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
