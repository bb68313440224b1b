//! `sentinel leader NAME [--json] [--watch]`: who leads an election, and what it published.
//!
//! The leader is the live holder of the election's lock ([`super::elect`]), as the library's
//! [`LeaderElection`] reads it; a holder whose lease ran out leads nobody, even where the backend
//! keeps its record until it is taken over. With `--watch`, the library's stream of changes, one
//! JSON line each (the current leader first), until SIGINT or SIGTERM ends it cleanly (exit 0):
//! what `etcdctl elect -l` and Consul's watches give a script.

use std::pin::pin;

use futures_util::StreamExt;
use serde_json::{Value, json};

use crate::cli::LeaderArgs;
use crate::config::{CliBackend, Context};
use crate::output::Report;
use sentinel::backend::LockBackend;
use sentinel::distributed::{LeaderElection, LockClient};
use sentinel::error::Result;
use sentinel::interrupt::Signals;
use sentinel::lease;
use sentinel::lock::Holder;

pub async fn exec(ctx: Context, args: &LeaderArgs) -> Result<Report> {
    if ctx.backend.name() == "github" {
        return Err(super::elect::not_on_github("leader"));
    }
    // A name the backend refuses is a usage error now, not a failed look on every --watch round.
    ctx.backend.parse_lock(&args.name)?;
    let backend = ctx.backend.name();
    let locks = LockClient::new(ctx.backend, ctx.claimant.worker_id)?;
    // An observer never campaigns: the lease it would ask for is never used.
    let election = LeaderElection::new(locks, args.name.as_str(), lease::MIN_TTL);
    if args.watch {
        return watch(&election, args).await;
    }
    let leader = election.leader().await?;
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
    json["backend"] = json!(backend);
    json["election"] = json!(args.name);
    Ok(Report::new(json, human))
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
async fn watch(
    election: &LeaderElection<LockClient<CliBackend>>,
    args: &LeaderArgs,
) -> Result<Report> {
    let mut signals = Signals::listen()?;
    let mut changes = pin!(election.observe(args.every));
    loop {
        let change = tokio::select! {
            change = changes.next() => change,
            _ = signals.recv() => return Ok(Report::new(Value::Null, "")),
        };
        match change {
            Some(Ok(now)) => {
                let mut line = answer(now.as_ref());
                line["election"] = json!(args.name);
                line["at"] = json!(chrono::Utc::now());
                if crate::output::print_line(&line.to_string()).is_err() {
                    // Nobody reads the changes any more.
                    return Ok(Report::new(Value::Null, ""));
                }
            }
            Some(Err(e)) => {
                tracing::warn!("cannot read the leader of {}: {e}; trying again", args.name)
            }
            None => return Ok(Report::new(Value::Null, "")),
        }
    }
}
