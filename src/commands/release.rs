//! `sentinel release LOCK [--force]`.

use serde_json::json;

use crate::cli::ReleaseArgs;
use crate::config::Context;
use crate::output::{Report, holder_json, summary_table};
use sentinel::backend::LockBackend;
use sentinel::error::Result;
use sentinel::lock::ReleaseRequest;

pub async fn exec(ctx: &Context, args: &ReleaseArgs) -> Result<Report> {
    let lock = ctx.backend.parse_lock(&args.lock)?;
    let what = ctx.backend.describe(&lock);
    let worker = &ctx.claimant.worker_id;
    let r = ctx
        .backend
        .release(&ReleaseRequest {
            lock,
            worker_id: worker.clone(),
            force: args.force,
            fencing_token: None,
        })
        .await?;
    let human = match (&r.previous, r.was_held) {
        (Some(p), true) if &p.worker_id != worker => {
            format!("Force-released {what} (was held by {})", p.worker_id)
        }
        (_, true) => format!("Released {what}"),
        (_, false) => format!("{what} was not held; nothing to release"),
    };
    let mut report = Report::new(
        json!({
            "ok": true,
            "command": "release",
            "backend": ctx.backend.name(),
            "lock": what,
            "worker_id": worker,
            "was_held": r.was_held,
            "previous": r.previous.as_ref().map(holder_json),
        }),
        human.clone(),
    );
    report.summary = Some(summary_table(
        &["sentinel", "lock", "worker", "was held"],
        &[
            "🔓 released".to_string(),
            what.clone(),
            format!("`{worker}`"),
            r.was_held.to_string(),
        ],
    ));
    Ok(report)
}
