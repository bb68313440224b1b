//! `sentinel claim LOCK`: acquire with a strategy, print the fencing token.

use serde_json::json;

use crate::backend::LockBackend;
use crate::cli::{ClaimArgs, ClaimOptions};
use crate::config::{Context, task_info};
use crate::error::Result;
use crate::lease;
use crate::lock::{AcquireRequest, LockId};
use crate::metrics;
use crate::output::{Report, Spinner, holder_json, summary_table};
use crate::strategy::{self, Outcome, Policy, Strategy};

pub async fn run(ctx: &Context, args: &ClaimArgs) -> Result<Report> {
    let (req, policy) = request(ctx, &args.lock, &args.claim)?;
    let what = ctx.backend.describe(&req.lock);
    let outcome = acquire(ctx, &req, &policy).await?;

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
    report.summary = Some(summary_table(
        &["sentinel", "lock", "worker", "fencing token", "expires"],
        &[
            if g.adopted {
                "🔒 re-adopted"
            } else {
                "🔒 claimed"
            }
            .to_string(),
            what.clone(),
            format!("`{}`", h.worker_id),
            h.fencing_token.to_string(),
            lease::human(h.expires_at),
        ],
    ));
    report.outputs = vec![
        ("acquired".into(), "true".into()),
        ("lock".into(), req.lock.bare()),
        ("holder".into(), h.worker_id.clone()),
        ("worker_id".into(), h.worker_id.clone()),
        ("fencing_token".into(), h.fencing_token.to_string()),
    ];
    if let LockId::Issue(n) = req.lock {
        report.outputs.push(("issue".into(), n.to_string()));
    }
    Ok(report)
}

/// The validated request and policy `claim` options describe, refused (exit 2) before anything is
/// claimed.
pub(crate) fn request(
    ctx: &Context,
    lock: &str,
    opts: &ClaimOptions,
) -> Result<(AcquireRequest, Policy)> {
    let ttl = lease::validate_ttl(opts.ttl)?;
    let policy = Policy {
        strategy: opts.strategy,
        max_retries: opts.max_retries,
        initial_backoff: opts.initial_backoff,
        max_backoff: opts.max_backoff,
    }
    .validate()?;
    let req = AcquireRequest {
        lock: ctx.backend.parse_lock(lock)?,
        claimant: ctx.claimant.clone(),
        ttl,
        takeover: opts.strategy.takeover(),
        task_info: task_info(&opts.task)?,
        readopt: ctx.explicit_worker,
        attempt: 0,
    };
    Ok((req, policy))
}

/// Runs the claim loop, with a spinner while it waits.
pub(crate) async fn acquire(
    ctx: &Context,
    req: &AcquireRequest,
    policy: &Policy,
) -> Result<Outcome> {
    if policy.strategy == Strategy::Force {
        tracing::warn!("--strategy force takes the lock even from a live holder");
    }
    let what = ctx.backend.describe(&req.lock);
    let spinner = Spinner::new(ctx.json, &format!("claiming {what}"));
    let recorder = metrics::ClaimRecorder::start(&ctx.data_dir, ctx.backend.name());
    let outcome = strategy::claim(&ctx.backend, req, policy, |h, pause| {
        recorder.retrying();
        spinner.set_message(format!(
            "{what} is held by {}; retrying in {:.1}s",
            h.worker_id,
            pause.as_secs_f64()
        ))
    })
    .await;
    recorder.finish(&outcome);
    outcome
}
