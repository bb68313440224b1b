//! `sentinel claim LOCK`: acquire with a strategy, print the fencing token; `claim --next`: the
//! work queue's next free issue.

use chrono::Utc;
use serde_json::json;

use crate::cli::{ClaimArgs, ClaimOptions, ClaimTarget};
use crate::config::{Context, task_info};
use crate::output::{Report, Spinner, holder_json, summary_table};
use sentinel::backend::LockBackend;
use sentinel::error::{Error, Result};
use sentinel::github::GithubBackend;
use sentinel::lease;
use sentinel::lock::Claimed;
use sentinel::lock::{AcquireRequest, HoldKind, LockId, NextRequest};
use sentinel::strategy::{self, Policy, Strategy};

pub async fn exec(ctx: &Context, args: &ClaimArgs) -> Result<Report> {
    let (lock, outcome) = match claim_target(ctx, &args.target, &args.claim).await {
        Ok(claimed) => claimed,
        Err(e) => return empty_queue(&args.target, &args.claim, &e).ok_or(e),
    };
    let what = ctx.backend.describe(&lock);
    let mut report = granted(ctx, "claim", &what, &lock, &outcome);
    describe_hold(&mut report, &args.claim);
    if args.target.next {
        // Only the number, so that scripts can capture it: `issue=$(sentinel claim --next)`.
        report.human = lock.bare();
    }
    Ok(report)
}

/// Claims what `target` names — a lock, or the work queue's next free issue — and says which.
/// The one claim step of `claim` and `run`.
pub(crate) async fn claim_target(
    ctx: &Context,
    target: &ClaimTarget,
    opts: &ClaimOptions,
) -> Result<(LockId, Claimed)> {
    if target.next {
        let mut exclude_labels = target.exclude_labels.clone();
        // Asking for them by name (`--label sentinel:failed`) takes failed issues too.
        let asked = |l: &String| {
            target
                .labels
                .iter()
                .any(|w| w.trim().eq_ignore_ascii_case(l))
        };
        if let Some(failed) = fail_label(target)?
            && !target.retry_failed
            && !asked(&failed)
        {
            exclude_labels.push(failed);
        }
        if opts.shared || opts.limit.is_some() {
            return Err(Error::usage(
                "--next claims an issue as a lock: --shared and --limit name a lock of their own",
            ));
        }
        let req = NextRequest {
            labels: target.labels.clone(),
            exclude_labels,
            claimant: ctx.claimant.clone(),
            ttl: lease::validate_ttl(opts.ttl)?,
            task_info: task_info(&opts.task)?,
        };
        let _spinner = Spinner::new(ctx.json, "looking for a free issue");
        return ctx.backend.claim_next(&req).await;
    }
    if target.fail_label.is_some() || target.retry_failed {
        return Err(Error::usage(
            "--fail-label and --retry-failed are for the work queue: they need --next",
        ));
    }
    let raw = target
        .lock
        .as_deref()
        .ok_or_else(|| Error::usage("claim needs a LOCK, or --next"))?;
    let (req, policy) = request(ctx, raw, opts)?;
    let outcome = acquire(ctx, &req, &policy).await?;
    Ok((req.lock, outcome))
}

/// The label of failed issues when `--fail-label` is not given.
const FAIL_LABEL: &str = "sentinel:failed";

/// The `--fail-label` in force, checked before anything is claimed: `None` for `--fail-label ''`.
pub(crate) fn fail_label(target: &ClaimTarget) -> Result<Option<String>> {
    match target.fail_label.as_deref().unwrap_or(FAIL_LABEL) {
        "" => Ok(None),
        label => GithubBackend::check_label(label, "--fail-label").map(Some),
    }
}

/// `claim --next` or `run --next` that found no free issue: a worker draining a queue expects
/// this, so it is reported as a notice, exiting with the conflict exit code all the same. `None`
/// for every other error.
pub(crate) fn empty_queue(target: &ClaimTarget, opts: &ClaimOptions, e: &Error) -> Option<Report> {
    (target.next && matches!(e, Error::Conflict(_)))
        .then(|| Report::notice(e, e.status(Some(opts.conflict_exit_code))))
}

/// The validated request and policy `claim` options describe, refused (exit 2) before anything is
/// claimed.
pub(crate) fn request(
    ctx: &Context,
    lock: &str,
    opts: &ClaimOptions,
) -> Result<(AcquireRequest, Policy)> {
    let ttl = lease::validate_ttl(opts.ttl)?;
    let strategy = match opts.nonblock {
        true => Strategy::FailFast,
        false => opts.strategy.into(),
    };
    let policy = Policy {
        strategy,
        max_retries: opts.max_retries,
        initial_backoff: opts.initial_backoff,
        max_backoff: opts.max_backoff,
        wait: opts.wait,
    }
    .validate()?;
    if let Some(wait) = opts.wait
        && strategy == Strategy::Retry
        && ctx.backend.waits_server_side()
        && wait > sentinel::server::MAX_WAIT
    {
        // The server waits in one request, and no longer than this: a longer --wait would end
        // early without saying so.
        return Err(Error::usage(format!(
            "--wait on the coordinator is at most {} (its longest server-side wait)",
            sentinel::duration::display(sentinel::server::MAX_WAIT)
        )));
    }
    let kind = hold_kind(opts)?;
    if !ctx.backend.holds_groups() {
        kind.exclusive_only(ctx.backend.name())?;
    }
    let req = AcquireRequest {
        lock: ctx.backend.parse_lock(lock)?,
        claimant: ctx.claimant.clone(),
        ttl,
        takeover: strategy.takeover(),
        task_info: task_info(&opts.task)?,
        readopt: ctx.explicit_worker,
        attempt: 0,
        wait: std::time::Duration::ZERO,
        kind,
    };
    Ok((req, policy))
}

/// The hold `--shared`, `--limit` and `--permits` ask for.
fn hold_kind(opts: &ClaimOptions) -> Result<HoldKind> {
    Ok(match (opts.shared, opts.limit) {
        (true, _) => HoldKind::Shared,
        (false, None) => HoldKind::Exclusive,
        (false, Some(limit)) => {
            let permits = opts.permits.unwrap_or(1);
            if permits > limit {
                return Err(Error::usage(format!(
                    "--permits {permits} is more than the semaphore's --limit {limit}"
                )));
            }
            HoldKind::Semaphore { limit, permits }
        }
    })
}

/// Says in a claim's report what it holds when that is not the whole lock (`, shared` or `, 2 of
/// 5 permits` after its first line), and `kind`, `limit` and `permits` in its JSON.
pub(crate) fn describe_hold(report: &mut Report, opts: &ClaimOptions) {
    // `request` refused options that make no hold before anything was claimed.
    let Ok(kind) = hold_kind(opts) else { return };
    let what = match kind {
        HoldKind::Exclusive => return,
        HoldKind::Shared => "shared".to_string(),
        HoldKind::Semaphore { limit, permits } => {
            report.json["limit"] = json!(limit);
            report.json["permits"] = json!(permits);
            format!("{permits} of {limit} permits")
        }
    };
    report.json["kind"] = json!(kind.name());
    if let Some(first) = report.human.lines().next() {
        let line = format!("{first}, {what}");
        report.human = std::iter::once(line.as_str())
            .chain(report.human.lines().skip(1))
            .collect::<Vec<_>>()
            .join("\n");
    }
}

/// A wait this long is a claim that retries without end.
const ENDLESS: std::time::Duration = std::time::Duration::from_secs(100 * 365 * 24 * 3600);

/// Runs the claim loop, with a spinner while it waits and one line on stderr (a warning, so shown
/// unless `--quiet`) when it starts to: a claim that blocks silently looks like a hang.
pub(crate) async fn acquire(
    ctx: &Context,
    req: &AcquireRequest,
    policy: &Policy,
) -> Result<Claimed> {
    if policy.strategy == Strategy::Force {
        tracing::warn!("--strategy force takes the lock even from a live holder");
    }
    let what = ctx.backend.describe(&req.lock);
    let spinner = Spinner::new(ctx.json, &format!("claiming {what}"));
    // Without --wait, the retries' pauses end about then (each has ±25% jitter). A claim that
    // retries without end (an election's campaign) has no deadline to tell.
    let budget = Some(policy.wait_budget()).filter(|b| *b < ENDLESS);
    let until = budget.and_then(|b| std::time::Instant::now().checked_add(b));
    let deadline = match budget {
        None => "it is free".to_string(),
        Some(b) => chrono::Duration::from_std(b)
            .ok()
            .and_then(|d| Utc::now().checked_add_signed(d))
            .map_or_else(|| "its last retry".to_string(), lease::human),
    };
    let mut told = false;
    strategy::claim(&ctx.backend, req, policy, |h, _| {
        let holder = strategy::held_by(h);
        if !std::mem::replace(&mut told, true) {
            tracing::warn!("{what} is held by {holder}; waiting for it until {deadline}");
        }
        let msg = format!("{what} is held by {holder}; waiting");
        match until {
            Some(until) => spinner.count_down(msg, until),
            None => spinner.set_message(msg),
        }
    })
    .await
}

/// What every command that ends in a grant prints: `claim`, `claim --next`, `steal-stale`, and
/// `run` with `--json`.
pub fn granted(
    ctx: &Context,
    command: &str,
    what: &str,
    lock: &LockId,
    outcome: &Claimed,
) -> Report {
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
            match (&prev.liveness, prev.stale) {
                (Some(why), true) => format!("stale: {why}"),
                (None, true) => format!("stale since {}", lease::human(prev.expires_at)),
                (_, false) => "live: forced".to_string(),
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
            "took_over": g.took_over.as_deref().map(holder_json),
        }),
        human,
    );
    let action = match (&g.took_over, g.adopted) {
        (Some(_), _) => "🔒 took over",
        (None, true) => "🔒 re-adopted",
        (None, false) => "🔒 claimed",
    };
    report.summary = Some(summary_table(
        &["sentinel", "lock", "worker", "fencing token", "expires"],
        &[
            action.to_string(),
            what.to_string(),
            format!("`{}`", h.worker_id),
            h.fencing_token.to_string(),
            lease::human(h.expires_at),
        ],
    ));
    report.outputs = vec![
        ("acquired".into(), "true".into()),
        ("lock".into(), lock.bare()),
        ("holder".into(), h.worker_id.clone()),
        ("worker_id".into(), h.worker_id.clone()),
        ("fencing_token".into(), h.fencing_token.to_string()),
    ];
    if let LockId::Issue(n) = lock {
        report.json["issue"] = json!(n);
        report.outputs.push(("issue".into(), n.to_string()));
    }
    report
}
