//! `sentinel run LOCK [claim options] -- CMD ARGS…`: hold a lock exactly as long as a command runs.
//!
//! Claim, start the command with the lock in its environment, renew while it runs, release when it
//! ends, exit with its exit code. Stdout belongs to the command: sentinel's own lines go to
//! stderr, and with `--json` one JSON object follows the command's output.
//!
//! `run --next` is the work queue's worker: a command that fails leaves its issue labelled
//! (`--fail-label`) before the release, so that the queue does not hand the same failing issue
//! out again and again.
//!
//! `run LOCK --also OTHER` holds several locks: claimed in name order (as `acquire_all`), so two
//! runs that share locks never wait for each other in a circle, and kept together
//! ([`crate::keeping`]: on the coordinator by one session).

use std::pin::pin;

use serde_json::json;
use tokio::sync::oneshot;

use super::claim;
use crate::child;
use crate::cli::RunArgs;
use crate::config::Context;
use crate::keeping::{Held, Together};
use crate::output::{self, Report};
use sentinel::backend::{Backend, LockBackend};
use sentinel::error::{Error, Result};
use sentinel::interrupt::{self, Signals};
use sentinel::keepalive::Timing;
use sentinel::lease;
use sentinel::lock::Claimed;
use sentinel::lock::{LockId, ReleaseRequest, RenewRequest};

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
    let claims = match claim_unless_interrupted(ctx, args, campaign, &mut signals).await {
        Ok(claims) => claims,
        Err(e) => {
            if let Some(report) = claim::empty_queue(&args.target, &args.claim, &e) {
                return Ok(report);
            }
            output::claim_failed_output();
            return Err(e);
        }
    };
    // From here on `run` releases the locks itself on every path: nothing is left to undo.
    interrupt::reported();
    run_holding(ctx, args, (command, fail_label), claims, signals).await
}

/// The rest of `run` once its locks are claimed: start the command, keep the locks while it
/// runs, label a failed work-queue issue, release, report.
async fn run_holding(
    ctx: &Context,
    args: &RunArgs,
    (command, fail_label): (&'static str, Option<String>),
    claims: Vec<(LockId, Claimed)>,
    mut signals: Signals,
) -> Result<Report> {
    // The lock LOCK names (the first, the only one without --also) is the one reported.
    let primary = claims
        .iter()
        .position(|(lock, _)| Some(lock.bare()) == args.target.lock)
        .unwrap_or(0);
    let (lock, claimed) = claims[primary].clone();
    let holder = claimed.grant.holder.clone();
    let what = ctx.backend.describe(&lock);
    // Inside Actions, the claim's outputs and summary row, as `claim` writes them; `run`'s own
    // report comes only after the command.
    let mut granted = claim::granted(ctx, command, &what, &lock, &claimed);
    claim::describe_hold(&mut granted, &args.claim);
    granted.write_actions();
    let tokens: Vec<(String, u64)> = claims
        .iter()
        .map(|(lock, c)| (lock.bare(), c.grant.holder.fencing_token))
        .collect();
    // The TTL the backend keeps can differ from --ttl (a re-adopted GitHub lock keeps its own).
    let mut kept = Together::new(ctx, held(ctx, claims));
    if let Err(e) = kept.start(args.interval).await {
        kept.release().await?;
        return Err(e);
    }
    let mut json = json!({
        "ok": true,
        "command": command,
        "backend": ctx.backend.name(),
        "lock": what,
        "worker_id": ctx.claimant.worker_id,
        "fencing_token": holder.fencing_token,
    });
    if let Some(issue) = granted.json.get("issue") {
        json["issue"] = issue.clone();
    }
    if let Some(value) = &holder.task_info.value {
        json["value"] = json!(value);
    }
    if tokens.len() > 1 {
        json["holds"] = tokens
            .iter()
            .map(|(lock, token)| json!({"lock": lock, "fencing_token": token}))
            .collect();
        json["session"] = json!(kept.session());
    }
    let env = environment(ctx, &lock, holder.fencing_token, &tokens);
    let cmd = match child::spawn(&args.command, &env) {
        Ok(c) => c,
        Err(not_started) => {
            output::print_error_line(&not_started.message);
            json["released"] = json!(release(kept).await?);
            return Ok(not_started_report(json, not_started));
        }
    };
    tracing::info!(lock = %what, fencing_token = holder.fencing_token, "claimed; the command runs");
    let (exit, renewals, signalled) = supervise(args, &what, cmd, &mut kept, &mut signals).await?;
    // A command stopped by a signal passed on to it (a cancelled job) did not fail on its own.
    let labelled = match (&fail_label, &lock) {
        (Some(label), LockId::Issue(issue)) if exit.code != 0 && !signalled => {
            label_failed(ctx, *issue, label, exit.code).await
        }
        _ => None,
    };
    let released = release(kept).await?;
    tracing::info!(code = exit.code, released, lock = %what, "the command exited");
    if args.target.next {
        json["labelled"] = json!(labelled);
    }
    json["exit_code"] = json!(exit.code);
    json["signal"] = json!(exit.signal);
    json["renewals"] = json!(renewals);
    json["released"] = json!(released);
    let mut report = Report::new(json, "");
    report.exit_code = exit.code;
    Ok(report)
}

/// `run`'s report when its command could not be started: the exit code says why (127 not
/// found, 126 not executable).
fn not_started_report(mut json: serde_json::Value, not_started: child::NotStarted) -> Report {
    json["ok"] = json!(false);
    json["error"] = json!({
        "kind": "not_started",
        "message": not_started.message,
        "exit_code": not_started.code,
    });
    let mut report = Report::new(json, "");
    report.exit_code = not_started.code;
    report
}

/// The locks claimed, to be kept.
fn held(ctx: &Context, claims: Vec<(LockId, Claimed)>) -> Vec<Held> {
    claims
        .into_iter()
        .map(|(lock, c)| Held {
            req: RenewRequest {
                lock,
                worker_id: ctx.claimant.worker_id.clone(),
                fencing_token: Some(c.grant.holder.fencing_token),
                ttl: None,
            },
            holder: c.grant.holder,
            sent: c.attempt_started,
        })
        .collect()
}

/// What the command finds in its environment: the lock LOCK names and its token, and with
/// several, `SENTINEL_FENCING_TOKENS`: one line per lock, `TOKEN NAME` (a name has no control
/// characters).
fn environment(
    ctx: &Context,
    lock: &LockId,
    token: u64,
    tokens: &[(String, u64)],
) -> Vec<(&'static str, String)> {
    let mut env = vec![
        ("SENTINEL_LOCK_HELD", "1".to_string()),
        ("SENTINEL_FENCING_TOKEN", token.to_string()),
        ("SENTINEL_LOCK", lock.bare()),
        ("SENTINEL_WORKER_ID", ctx.claimant.worker_id.clone()),
    ];
    if tokens.len() > 1 {
        let lines: Vec<String> = tokens.iter().map(|(n, t)| format!("{t} {n}")).collect();
        env.push(("SENTINEL_FENCING_TOKENS", lines.join("\n")));
    }
    env
}

/// Claims the locks; a signal during the claim ends `run` like an interrupted `claim` (exit
/// 130/143): the backend's interrupt decorator takes back what the claims were granted.
async fn claim_unless_interrupted(
    ctx: &Context,
    args: &RunArgs,
    campaign: bool,
    signals: &mut Signals,
) -> Result<Vec<(LockId, Claimed)>> {
    let mut claimed = pin!(async {
        match args.also.is_empty() {
            true => Ok(vec![claim_lock(ctx, args, campaign).await?]),
            false => claim_all(ctx, args).await,
        }
    });
    let signal = tokio::select! {
        claimed = claimed.as_mut() => return claimed,
        signal = signals.recv() => signal,
    };
    let code = signal.exit_code();
    interrupt::wind_down(code, claimed).await;
    Err(Error::Interrupted(code))
}

/// Runs the command while `kept` renews the locks, forwarding signals to it, until it exits:
/// its exit, the renewal rounds, and whether a signal was passed on to it. A lock lost meanwhile
/// stops the command (after `--kill-grace`) and is the error: nothing is left to release.
async fn supervise(
    args: &RunArgs,
    what: &str,
    mut cmd: child::Child,
    kept: &mut Together<'_>,
    signals: &mut Signals,
) -> Result<(child::Exit, u64, bool)> {
    let mut signalled = false;
    let (stop, stopped) = oneshot::channel::<()>();
    let mut keep = pin!(kept.keep(async {
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
    let renewals = keep.await?;
    Ok((exit?, renewals, signalled))
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
async fn claim_lock(ctx: &Context, args: &RunArgs, campaign: bool) -> Result<(LockId, Claimed)> {
    loop {
        match claim::claim_target(ctx, &args.target, &args.claim).await {
            Ok(claimed) => return Ok(claimed),
            Err(Error::Conflict(why)) if campaign && args.claim.wait.is_none() => {
                tracing::info!("{why}; campaigning on");
            }
            Err(e) => return Err(e),
        }
    }
}

/// With `--also`: every lock, claimed one by one in name order (each name once) with the claim
/// options. One that cannot be claimed is the error, after those already claimed are released.
async fn claim_all(ctx: &Context, args: &RunArgs) -> Result<Vec<(LockId, Claimed)>> {
    let mut names: Vec<&String> = args.target.lock.iter().chain(&args.also).collect();
    names.sort();
    names.dedup();
    let mut requests = Vec::with_capacity(names.len());
    for name in names {
        // Every name is checked before the first is claimed.
        requests.push(claim::request(ctx, name, &args.claim)?);
    }
    let mut claims: Vec<(LockId, Claimed)> = Vec::with_capacity(requests.len());
    for (req, policy) in requests {
        match claim::acquire(ctx, &req, &policy).await {
            Ok(claimed) => claims.push((req.lock, claimed)),
            Err(e) => {
                for (lock, claimed) in claims {
                    let release = ReleaseRequest {
                        lock,
                        worker_id: claimed.grant.holder.worker_id,
                        force: false,
                        fencing_token: Some(claimed.grant.holder.fencing_token),
                    };
                    if let Err(undo) = ctx.backend.release(&release).await {
                        tracing::warn!("could not give back a lock taken with --also: {undo}");
                    }
                }
                return Err(e);
            }
        }
    }
    Ok(claims)
}

/// Releases the locks once the command has ended: whether every one was still held. Finding
/// one gone is losing it (exit 4); a backend that cannot be reached only leaves them to expire,
/// so the command's exit code still stands.
async fn release(kept: Together<'_>) -> Result<bool> {
    let count = kept.held().len();
    Ok(kept.release().await?.len() == count)
}
