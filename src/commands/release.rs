//! `sentinel release LOCK [--force]`.

use serde_json::json;

use crate::cli::ReleaseArgs;
use crate::config::Context;
use crate::output::{Report, holder_json, summary_table};
use sentinel::backend::LockBackend;
use sentinel::error::{Error, Result};
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
        .await
        .map_err(|e| match e {
            Error::NotOwner(msg) => Error::NotOwner(not_ours(msg)),
            other => other,
        })?;
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

/// A refused release says how to get it done: the holder may be this worker under another id (a
/// default id differs from one shell to the next), or the lock is to be freed whoever holds it.
fn not_ours(msg: String) -> String {
    // The backends' own hint, said again below with the flag's name.
    let msg = msg
        .strip_suffix("; force the release to free it anyway")
        .map_or(msg.clone(), str::to_string);
    let mut hints = Vec::new();
    if !msg.contains("--worker-id") {
        hints.push("pass --worker-id with the holder's id to release it as the holder");
    }
    if !msg.contains("--force") {
        hints.push("--force to free it whoever holds it");
    }
    if hints.is_empty() {
        return msg;
    }
    format!("{msg}; {}", hints.join(", or "))
}
