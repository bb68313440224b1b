//! `sentinel claim LOCK`: acquire with a strategy, print the fencing token.

use std::time::Duration;

use serde_json::json;

use crate::cli::ClaimArgs;
use crate::config::{Context, task_info};
use crate::error::{Error, Result};
use crate::lock::AcquireRequest;
use crate::metrics;
use crate::output::{Report, Spinner, holder_json};
use crate::strategy::{self, Policy, Strategy};

pub async fn run(ctx: &Context, args: &ClaimArgs) -> Result<Report> {
    if args.ttl < Duration::from_secs(1) {
        return Err(Error::usage(
            "--ttl must be at least 1s: a lease that ends at once protects nothing",
        ));
    }
    let target = ctx.backend.target(&args.lock)?;
    let what = ctx.backend.describe(&target);
    let req = AcquireRequest {
        claimant: ctx.claimant.clone(),
        ttl: args.ttl,
        takeover: args.strategy.takeover(),
        task_info: task_info(&args.task)?,
    };
    let policy = Policy {
        strategy: args.strategy,
        max_retries: args.max_retries,
        initial_backoff: args.initial_backoff,
        max_backoff: args.max_backoff,
    };
    if args.strategy == Strategy::Force {
        tracing::warn!("--strategy force takes the lock even from a live holder");
    }
    let spinner = Spinner::new(ctx.json, &format!("claiming {what}"));
    let recorder = metrics::ClaimRecorder::start(&ctx.data_dir, ctx.backend.name());
    let outcome = strategy::acquire(
        &policy,
        &what,
        |n| {
            recorder.attempt(n);
            ctx.backend.try_acquire(&target, &req, n)
        },
        |h, pause| {
            spinner.set_message(format!(
                "{what} is held by {}; retrying in {:.1}s",
                h.worker_id,
                pause.as_secs_f64()
            ))
        },
    )
    .await;
    recorder.finish(&outcome);
    let outcome = outcome?;
    drop(spinner);

    let g = &outcome.grant;
    let h = &g.holder;
    let mut human = format!(
        "{} {what} as {} (fencing token {})",
        if g.adopted { "Re-adopted" } else { "Claimed" },
        h.worker_id,
        h.fencing_token
    );
    if let Some(prev) = &g.took_over {
        human.push_str(&format!(
            "\nTook over from {} (fencing token {}, {})",
            prev.worker_id,
            prev.fencing_token,
            if prev.stale { "stale" } else { "live: forced" }
        ));
    }
    let mut report = Report::new(
        json!({
            "ok": true,
            "command": "claim",
            "backend": ctx.backend.name(),
            "lock": what,
            "worker_id": h.worker_id,
            "node_id": h.node_id,
            "fencing_token": h.fencing_token,
            "adopted": g.adopted,
            "attempts": outcome.attempts,
            "expires_at": h.expires_at,
            "holder": holder_json(h),
            "took_over": g.took_over.as_ref().map(holder_json),
        }),
        human,
    );
    report.summary = Some(format!(
        "🔒 sentinel: {} {what} as `{}` (fencing token {})",
        if g.adopted { "re-adopted" } else { "claimed" },
        h.worker_id,
        h.fencing_token
    ));
    report.outputs = vec![
        ("fencing_token".into(), h.fencing_token.to_string()),
        ("worker_id".into(), h.worker_id.clone()),
    ];
    Ok(report)
}
