//! `sentinel claim LOCK`: acquire with a strategy, print the fencing token; `claim --next`: the
//! work queue's next free issue.

use serde_json::json;

use crate::backend::LockBackend;
use crate::cli::ClaimArgs;
use crate::config::{Context, task_info};
use crate::error::{Error, Result};
use crate::lease;
use crate::lock::{AcquireRequest, LockId, NextRequest};
use crate::output::{Report, Spinner, holder_json};
use crate::strategy::{self, Outcome, Policy, Strategy};

pub async fn run(ctx: &Context, args: &ClaimArgs) -> Result<Report> {
    let ttl = lease::validate_ttl(args.ttl)?;
    if args.next {
        return next(ctx, args, ttl).await;
    }
    let policy = Policy {
        strategy: args.strategy,
        max_retries: args.max_retries,
        initial_backoff: args.initial_backoff,
        max_backoff: args.max_backoff,
    }
    .validate()?;
    let raw = args
        .lock
        .as_deref()
        .ok_or_else(|| Error::usage("claim needs a LOCK, or --next"))?;
    let lock = ctx.backend.parse_lock(raw)?;
    let what = ctx.backend.describe(&lock);
    let req = AcquireRequest {
        lock,
        claimant: ctx.claimant.clone(),
        ttl,
        takeover: args.strategy.takeover(),
        task_info: task_info(&args.task)?,
        readopt: ctx.explicit_worker,
        attempt: 0,
    };
    if args.strategy == Strategy::Force {
        tracing::warn!("--strategy force takes the lock even from a live holder");
    }
    let spinner = Spinner::new(ctx.json, &format!("claiming {what}"));
    let outcome = strategy::claim(&ctx.backend, &req, &policy, |h, pause| {
        spinner.set_message(format!(
            "{what} is held by {}; retrying in {:.1}s",
            h.worker_id,
            pause.as_secs_f64()
        ))
    })
    .await?;
    drop(spinner);
    Ok(granted(ctx, "claim", &what, &outcome))
}

/// `claim --next`: prints only the issue number for humans, so scripts can capture it.
async fn next(ctx: &Context, args: &ClaimArgs, ttl: std::time::Duration) -> Result<Report> {
    let req = NextRequest {
        labels: args.labels.clone(),
        exclude_labels: args.exclude_labels.clone(),
        claimant: ctx.claimant.clone(),
        ttl,
        task_info: task_info(&args.task)?,
    };
    let spinner = Spinner::new(ctx.json, "looking for a free issue");
    let (lock, outcome) = ctx.backend.claim_next(&req).await?;
    drop(spinner);
    let what = ctx.backend.describe(&lock);
    let mut report = granted(ctx, "claim", &what, &outcome);
    if let LockId::Issue(n) = lock {
        report.json["issue"] = json!(n);
    }
    report.human = lock.bare();
    report.outputs.push(("issue".into(), lock.bare()));
    Ok(report)
}

/// What every command that ends in a grant prints: `claim`, `claim --next`, `steal-stale`.
pub fn granted(ctx: &Context, command: &str, what: &str, outcome: &Outcome) -> Report {
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
            if prev.stale {
                format!("stale since {}", lease::human(prev.expires_at))
            } else {
                "live: forced".to_string()
            }
        ));
    }
    let mut report = Report::new(
        json!({
            "ok": true,
            "command": command,
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
        "🔒 sentinel: {} {what} as `{}` (fencing token {}){}",
        if g.adopted { "re-adopted" } else { "claimed" },
        h.worker_id,
        h.fencing_token,
        g.took_over
            .as_ref()
            .map(|p| format!(", taking it over from `{}`", p.worker_id))
            .unwrap_or_default()
    ));
    report.outputs = vec![
        ("fencing_token".into(), h.fencing_token.to_string()),
        ("worker_id".into(), h.worker_id.clone()),
    ];
    report
}
