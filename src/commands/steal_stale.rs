//! `sentinel steal-stale LOCK`: take over a stale lock in one attempt; `steal-stale --all`: the
//! janitor that releases every stale lock.

use serde_json::json;

use crate::cli::StealStaleArgs;
use crate::commands::claim::{acquire, granted};
use crate::config::{Context, task_info};
use crate::output::{Report, holder_json};
use sentinel::backend::LockBackend;
use sentinel::error::{Error, Result};
use sentinel::janitor::{self, Action};
use sentinel::lease;
use sentinel::lock::{AcquireRequest, HoldKind, Takeover};
use sentinel::strategy::{Policy, Strategy};

pub async fn exec(ctx: &Context, args: &StealStaleArgs) -> Result<Report> {
    let task = task_info(&args.task)?;
    if args.all {
        if !task.is_empty() {
            return Err(Error::usage(
                "task info describes the work of one lock taken over; --all only releases",
            ));
        }
        return all(ctx, args).await;
    }
    let raw = args
        .lock
        .as_deref()
        .ok_or_else(|| Error::usage("steal-stale needs a LOCK, or --all"))?;
    let lock = ctx.backend.parse_lock(raw)?;
    let what = ctx.backend.describe(&lock);
    let req = AcquireRequest {
        lock,
        claimant: ctx.claimant.clone(),
        ttl: lease::validate_ttl(args.ttl)?,
        takeover: Takeover::Stale,
        task_info: task,
        readopt: ctx.explicit_worker,
        attempt: 0,
        wait: std::time::Duration::ZERO,
        kind: HoldKind::Exclusive,
    };
    // One attempt: a live holder is an answer (exit 3), not something to wait for.
    let policy = Policy {
        strategy: Strategy::StealStale,
        max_retries: 0,
        ..Policy::default()
    };
    let outcome = acquire(ctx, &req, &policy).await?;
    Ok(granted(ctx, "steal-stale", &what, &req.lock, &outcome))
}

async fn all(ctx: &Context, args: &StealStaleArgs) -> Result<Report> {
    let sweep = janitor::sweep(&ctx.backend, args.since, &ctx.claimant, args.dry_run).await?;
    let count = |a: Action| sweep.locks.iter().filter(|s| s.action == a).count();
    let (released, live) = (count(Action::Released), count(Action::Live));
    let mut lines = Vec::new();
    for s in &sweep.locks {
        let h = &s.holder;
        let line = match s.action {
            Action::Live => continue,
            Action::Released | Action::WouldRelease => format!(
                "{} stale lock {} of {} (last heartbeat {}, {})",
                if s.action == Action::Released {
                    "Released"
                } else {
                    "Would release"
                },
                s.lock,
                h.worker_id,
                lease::human(h.heartbeat_last),
                match &h.liveness {
                    Some(why) => why.clone(),
                    None => format!("lease ran out {}", lease::human(h.expires_at)),
                }
            ),
            Action::Skipped => format!(
                "Left {} alone: it changed while the janitor worked (last seen held by {}, last heartbeat {})",
                s.lock,
                h.worker_id,
                lease::human(h.heartbeat_last)
            ),
        };
        lines.push(line);
    }
    if lines.is_empty() {
        lines.push("No stale locks.".into());
    }
    if live > 0 {
        lines.push(format!(
            "{live} live lock{} left alone.",
            if live == 1 { "" } else { "s" }
        ));
    }
    let failed: Vec<String> = sweep
        .failures
        .iter()
        .map(|(lock, e)| format!("{lock}: {e}"))
        .collect();
    // A scheduled janitor must fail visibly, with the exit code of what went wrong first.
    if let Some((_, e)) = sweep.failures.into_iter().next() {
        return Err(e.with_message(format!(
            "released {released} stale lock(s), but could not release {}",
            failed.join("; ")
        )));
    }
    let locks: Vec<_> = sweep
        .locks
        .iter()
        .map(|s| json!({"lock": s.lock, "action": s.action, "holder": holder_json(&s.holder)}))
        .collect();
    let mut report = Report::new(
        json!({
            "ok": true,
            "command": "steal-stale",
            "backend": ctx.backend.name(),
            "all": true,
            "dry_run": args.dry_run,
            "released": released,
            "locks": locks,
        }),
        lines.join("\n"),
    );
    if released > 0 {
        report.summary = Some(format!(
            "🧹 sentinel: released {released} stale lock{}",
            if released == 1 { "" } else { "s" }
        ));
    }
    Ok(report)
}
