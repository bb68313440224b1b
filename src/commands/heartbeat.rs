//! `sentinel heartbeat LOCK`: renew once (`--once`), or keep renewing as a sidecar until stopped.

use std::pin::pin;

use serde_json::json;
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::cli::HeartbeatArgs;
use crate::config::Context;
use crate::output::{Report, holder_json};
use sentinel::backend::LockBackend;
use sentinel::error::Result;
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
    let lock = ctx.backend.parse_lock(&args.lock)?;
    let what = ctx.backend.describe(&lock);
    let req = RenewRequest {
        lock,
        worker_id: ctx.claimant.worker_id.clone(),
        fencing_token: None,
        ttl: None,
    };
    // The first renewal proves the lock is ours and tells its TTL, which the interval must fit.
    let sent = Instant::now();
    let holder = ctx.backend.renew(&req).await?;
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

/// `--once`: one renewal, its result.
async fn once(ctx: &Context, args: &HeartbeatArgs) -> Result<Report> {
    let lock = ctx.backend.parse_lock(&args.lock)?;
    let what = ctx.backend.describe(&lock);
    let h = ctx
        .backend
        .renew(&RenewRequest {
            lock,
            worker_id: ctx.claimant.worker_id.clone(),
            fencing_token: None,
            ttl: None,
        })
        .await?;
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
