//! `sentinel run LOCK [claim options] -- CMD ARGS…`: hold a lock exactly as long as a command runs.
//!
//! Claim, start the command with the lock in its environment, renew while it runs, release when it
//! ends, exit with its exit code. Stdout belongs to the command: sentinel's own lines go to
//! stderr, and with `--json` one JSON object follows the command's output.
//!
//! `run --next` is the work queue's worker: a command that fails leaves its issue labelled
//! (`--fail-label`) before the release, so that the queue does not hand the same failing issue
//! out again and again.

use std::pin::pin;

use serde_json::json;
use tokio::sync::oneshot;

use super::claim;
use crate::child;
use crate::cli::RunArgs;
use crate::config::Context;
use crate::output::{self, Report};
use sentinel::backend::{Backend, LockBackend};
use sentinel::error::{Error, Result};
use sentinel::interrupt::{self, Signals};
use sentinel::keepalive::{self, Keepalive, Timing};
use sentinel::lease;
use sentinel::lock::Claimed;
use sentinel::lock::{Holder, LockId, ReleaseRequest, RenewRequest};

pub async fn exec(ctx: &Context, args: &RunArgs) -> Result<Report> {
    hold_while_running(ctx, args, "run", false).await
}

/// The whole of `run`, and of `elect` (named `command` in the report): with `campaign`, a claim
/// that finds the lock held and has no `--wait` tries again until it is granted, as a candidate
/// campaigns until elected.
pub(crate) async fn hold_while_running(
    ctx: &Context,
    args: &RunArgs,
    command: &'static str,
    campaign: bool,
) -> Result<Report> {
    let mut signals = Signals::listen()?;
    // Settings that cannot keep the lock alive are refused before anything is claimed.
    Timing::for_ttl(args.interval, lease::validate_ttl(args.claim.ttl)?)?;
    let fail_label = match args.target.next {
        true => claim::fail_label(&args.target)?,
        false => None,
    };
    let (claimed, lock) = match claim_unless_interrupted(ctx, args, campaign, &mut signals).await {
        Ok(claimed) => claimed,
        Err(e) => {
            if let Some(report) = claim::empty_queue(&args.target, &args.claim, &e) {
                return Ok(report);
            }
            output::claim_failed_output();
            return Err(e);
        }
    };
    // From here on `run` releases the lock itself on every path: nothing is left to undo.
    interrupt::reported();
    let holder = claimed.grant.holder.clone();
    let what = ctx.backend.describe(&lock);
    // Inside Actions, the claim's outputs and summary row, as `claim` writes them; `run`'s own
    // report comes only after the command.
    let mut granted = claim::granted(ctx, command, &what, &lock, &claimed);
    claim::describe_hold(&mut granted, &args.claim);
    granted.write_actions();
    let worker = ctx.claimant.worker_id.clone();
    let release_req = ReleaseRequest {
        lock: lock.clone(),
        worker_id: worker.clone(),
        force: false,
        fencing_token: Some(holder.fencing_token),
    };
    // The TTL the backend keeps can differ from --ttl (a re-adopted GitHub lock keeps its own).
    let timing = match Timing::for_ttl(args.interval, keepalive::ttl_of(&holder)) {
        Ok(t) => t,
        Err(e) => {
            release(ctx, &release_req, &holder).await?;
            return Err(e);
        }
    };
    let env = [
        ("SENTINEL_LOCK_HELD", "1".to_string()),
        ("SENTINEL_FENCING_TOKEN", holder.fencing_token.to_string()),
        ("SENTINEL_LOCK", lock.bare()),
        ("SENTINEL_WORKER_ID", worker.clone()),
    ];
    let mut json = json!({
        "ok": true,
        "command": command,
        "backend": ctx.backend.name(),
        "lock": what,
        "worker_id": worker,
        "fencing_token": holder.fencing_token,
    });
    if let Some(issue) = granted.json.get("issue") {
        json["issue"] = issue.clone();
    }
    if let Some(value) = &holder.task_info.value {
        json["value"] = json!(value);
    }
    let cmd = match child::spawn(&args.command, &env) {
        Ok(c) => c,
        Err(not_started) => {
            output::print_error_line(&not_started.message);
            let released = release(ctx, &release_req, &holder).await?;
            json["ok"] = json!(false);
            json["released"] = json!(released);
            json["error"] = json!({
                "kind": "not_started",
                "message": not_started.message,
                "exit_code": not_started.code,
            });
            let mut report = Report::new(json, "");
            report.exit_code = not_started.code;
            return Ok(report);
        }
    };
    tracing::info!(lock = %what, fencing_token = holder.fencing_token, "claimed; the command runs");
    let renew = RenewRequest {
        lock,
        worker_id: worker,
        fencing_token: Some(holder.fencing_token),
        ttl: None,
    };
    let keep = Keepalive::new(renew, holder, claimed.attempt_started, timing);
    let (exit, summary, signalled) = supervise(ctx, args, &what, cmd, keep, &mut signals).await?;
    // A command stopped by a signal passed on to it (a cancelled job) did not fail on its own.
    let labelled = match (&fail_label, &release_req.lock) {
        (Some(label), LockId::Issue(issue)) if exit.code != 0 && !signalled => {
            label_failed(ctx, *issue, label, exit.code).await
        }
        _ => None,
    };
    let released = release(ctx, &release_req, &summary.holder).await?;
    tracing::info!(code = exit.code, released, lock = %what, "the command exited");
    if args.target.next {
        json["labelled"] = json!(labelled);
    }
    json["exit_code"] = json!(exit.code);
    json["signal"] = json!(exit.signal);
    json["renewals"] = json!(summary.renewals);
    json["released"] = json!(released);
    let mut report = Report::new(json, "");
    report.exit_code = exit.code;
    Ok(report)
}

/// Claims the lock; a signal during the claim ends `run` like an interrupted `claim` (exit
/// 130/143): the backend's interrupt decorator takes back what the claim was granted.
async fn claim_unless_interrupted(
    ctx: &Context,
    args: &RunArgs,
    campaign: bool,
    signals: &mut Signals,
) -> Result<(Claimed, LockId)> {
    let mut claimed = pin!(claim_lock(ctx, args, campaign));
    let signal = tokio::select! {
        claimed = claimed.as_mut() => return claimed,
        signal = signals.recv() => signal,
    };
    let code = signal.exit_code();
    interrupt::wind_down(code, claimed).await;
    Err(Error::Interrupted(code))
}

/// Runs the command while `keep` renews the lock, forwarding signals to it, until it exits: its
/// exit, what the renewals ended with, and whether a signal was passed on to it. A lease lost
/// meanwhile stops the command (after `--kill-grace`) and is the error: nothing is left to
/// release.
async fn supervise(
    ctx: &Context,
    args: &RunArgs,
    what: &str,
    mut cmd: child::Child,
    keep: Keepalive,
    signals: &mut Signals,
) -> Result<(child::Exit, keepalive::Summary, bool)> {
    let mut signalled = false;
    let (stop, stopped) = oneshot::channel::<()>();
    let mut keep = pin!(keep.run(&ctx.backend, async {
        let _ = stopped.await;
    }));
    let exit = loop {
        tokio::select! {
            exit = cmd.wait() => break exit,
            ended = keep.as_mut() => {
                let lost = match ended {
                    Err(e) => e,
                    Ok(_) => Error::Unexpected("renewing stopped on its own".into()),
                };
                tracing::warn!(lock = %what, "{lost}; stopping the command");
                let exit = cmd.terminate(args.kill_grace).await?;
                tracing::info!(code = exit.code, "the command stopped");
                return Err(lost);
            }
            signal = signals.recv() => {
                signalled = true;
                cmd.forward(signal);
            }
        }
    };
    let _ = stop.send(());
    // A renewal still in flight finishes first; if it found the lock gone, it is not ours to
    // release.
    let summary = keep.await?;
    Ok((exit?, summary, signalled))
}

/// Puts `label` on the issue whose command failed, while the lock is still ours, so that no
/// worker takes the issue before the label is on: the label it was given, or `None` when GitHub
/// refused it (a warning: the command's exit code stands, and the issue goes back to the queue
/// as it would have without a label).
async fn label_failed(ctx: &Context, issue: u64, label: &str, code: i32) -> Option<String> {
    // `--next` takes issues from GitHub only.
    let Backend::Github(gh) = ctx.backend.inner().inner() else {
        return None;
    };
    match gh.label_issue(issue, label).await {
        Ok(()) => {
            tracing::warn!(
                "the command exited {code}: labelled #{issue} {label}, which --next skips \
                 (--retry-failed takes it again)"
            );
            Some(label.to_string())
        }
        Err(e) => {
            tracing::warn!(
                "the command exited {code}, but #{issue} could not be labelled {label}: {e}; \
                 it goes back to the queue"
            );
            None
        }
    }
}

/// The claim step: one call that yields the grant and the lock it is for, so that `run --next`
/// can put the work-queue claim in its place. A campaign without `--wait` retries without end
/// (`elect`'s options), and follows a round that still ended in a conflict with the next.
async fn claim_lock(ctx: &Context, args: &RunArgs, campaign: bool) -> Result<(Claimed, LockId)> {
    loop {
        match claim::claim_target(ctx, &args.target, &args.claim).await {
            Ok((lock, outcome)) => return Ok((outcome, lock)),
            Err(Error::Conflict(why)) if campaign && args.claim.wait.is_none() => {
                tracing::info!("{why}; campaigning on");
            }
            Err(e) => return Err(e),
        }
    }
}

/// Releases the lock once the command has ended. Finding it gone is losing it (exit 4); a
/// backend that cannot be reached only leaves it to expire, so the command's exit code still
/// stands.
async fn release(ctx: &Context, req: &ReleaseRequest, last: &Holder) -> Result<bool> {
    match ctx.backend.release(req).await {
        Ok(r) => Ok(r.was_held),
        Err(e @ Error::NotOwner(_)) => Err(e),
        Err(e) => {
            tracing::warn!(
                "could not release {}: {e}; it stays held until its lease runs out at {}",
                ctx.backend.describe(&req.lock),
                lease::human(last.expires_at)
            );
            Ok(false)
        }
    }
}
