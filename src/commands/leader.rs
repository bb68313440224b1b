//! `sentinel leader NAME [--json] [--watch]`: who leads an election, and what it published.
//!
//! The leader is the live holder of the election's lock ([`super::elect`]); a holder whose lease
//! ran out leads nobody, even where the backend keeps its record until it is taken over. With
//! `--watch`, one JSON line per change of leader (the current one first), until SIGINT or SIGTERM
//! ends it cleanly (exit 0): what `etcdctl elect -l` and Consul's watches give a script.

use serde_json::{Value, json};

use crate::cli::LeaderArgs;
use crate::config::Context;
use crate::output::Report;
use sentinel::backend::LockBackend;
use sentinel::error::Result;
use sentinel::interrupt::Signals;
use sentinel::lease;
use sentinel::lock::{Holder, LockId};

pub async fn exec(ctx: &Context, args: &LeaderArgs) -> Result<Report> {
    if ctx.backend.name() == "github" {
        return Err(super::elect::not_on_github("leader"));
    }
    let lock = ctx.backend.parse_lock(&args.name)?;
    if args.watch {
        return watch(ctx, args, &lock).await;
    }
    let leader = leader(ctx, &lock).await?;
    let human = match &leader {
        None => format!("{} has no leader", args.name),
        Some(h) => {
            let mut s = format!(
                "{} is led by {} since {} (fencing token {})",
                args.name,
                h.worker_id,
                lease::human(h.claimed_at),
                h.fencing_token
            );
            if let Some(v) = &h.task_info.value {
                s.push_str(&format!("\nvalue {v}"));
            }
            s
        }
    };
    let mut json = answer(leader.as_ref());
    json["ok"] = json!(true);
    json["command"] = json!("leader");
    json["backend"] = json!(ctx.backend.name());
    json["election"] = json!(args.name);
    Ok(Report::new(json, human))
}

/// The live holder of the election's lock, if any.
async fn leader(ctx: &Context, lock: &LockId) -> Result<Option<Holder>> {
    let status = ctx.backend.status(lock).await?;
    Ok(status.holder().filter(|h| !h.stale).cloned())
}

/// `{"leader": {worker_id, node_id, value, since, fencing_token, expires_at} | null}`.
fn answer(leader: Option<&Holder>) -> Value {
    json!({
        "leader": leader.map(|h| json!({
            "worker_id": h.worker_id,
            "node_id": h.node_id,
            "value": h.task_info.value,
            "since": h.claimed_at,
            "fencing_token": h.fencing_token,
            "expires_at": h.expires_at,
        })),
    })
}

/// Prints the leader, then each change of it, one JSON line each, looking every `--every`. A
/// backend that cannot be reached is said on stderr and looked at again: a watcher outlives a
/// restart of what it watches.
async fn watch(ctx: &Context, args: &LeaderArgs, lock: &LockId) -> Result<Report> {
    let mut signals = Signals::listen()?;
    let mut last: Option<Option<(String, u64, Option<String>)>> = None;
    loop {
        match leader(ctx, lock).await {
            Ok(now) => {
                let key = now.as_ref().map(|h| {
                    (
                        h.worker_id.clone(),
                        h.fencing_token,
                        h.task_info.value.clone(),
                    )
                });
                if last.as_ref() != Some(&key) {
                    let mut line = answer(now.as_ref());
                    line["election"] = json!(args.name);
                    line["at"] = json!(chrono::Utc::now());
                    if crate::output::print_line(&line.to_string()).is_err() {
                        // Nobody reads the changes any more.
                        return Ok(Report::new(Value::Null, ""));
                    }
                    last = Some(key);
                }
            }
            Err(e) => tracing::warn!("cannot read the leader of {}: {e}; trying again", args.name),
        }
        tokio::select! {
            _ = tokio::time::sleep(args.every) => {}
            _ = signals.recv() => return Ok(Report::new(Value::Null, "")),
        }
    }
}
