//! `sentinel heartbeat LOCK --once`: renew once; exit 4 if the lock was lost.

use serde_json::json;

use crate::backend::LockBackend;
use crate::cli::HeartbeatArgs;
use crate::config::Context;
use crate::error::{Error, Result};
use crate::lease;
use crate::lock::RenewRequest;
use crate::output::{Report, holder_json};

pub async fn run(ctx: &Context, args: &HeartbeatArgs) -> Result<Report> {
    if !args.once {
        return Err(Error::usage(
            "the long-running heartbeat sidecar is not available yet; use `heartbeat --once` (e.g. from a loop)",
        ));
    }
    let lock = ctx.backend.parse_lock(&args.lock)?;
    let what = ctx.backend.describe(&lock);
    let h = ctx
        .backend
        .renew(&RenewRequest {
            lock,
            worker_id: ctx.claimant.worker_id.clone(),
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
