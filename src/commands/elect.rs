//! `sentinel elect NAME [--value V] -- CMD`: campaign in an election and run a command while
//! leader.
//!
//! An election is a lock: its holder is the leader, and the value it publishes rides with its
//! hold (`TaskInfo::value`), so every backend that keeps locks keeps elections, with the same
//! lease, fencing token and queue. Campaigning is claiming until granted; leading is `run`'s
//! holding: the command runs while the lease is renewed, gets SIGTERM when leadership is lost
//! (exit 4), and its exit code passes through otherwise. Resigning is the release when it ends.

use std::time::Duration;

use crate::cli::{ClaimOptions, ClaimTarget, ElectArgs, RunArgs, StrategyArg, TaskArgs};
use crate::config::Context;
use crate::output::Report;
use sentinel::backend::LockBackend;
use sentinel::error::{Error, Result};

/// Pauses between a polling backend's attempts while another candidate leads: short, since a
/// leader that resigns should be followed at once (the coordinator queues candidates instead).
const FIRST_PAUSE: Duration = Duration::from_millis(250);
const LONGEST_PAUSE: Duration = Duration::from_secs(1);

pub async fn exec(mut ctx: Context, args: &ElectArgs) -> Result<Report> {
    if ctx.backend.name() == "github" {
        return Err(not_on_github("elect"));
    }
    // A default worker id is shared by every process of a shell: two candidates started from
    // one shell would be one candidate, the second waiting for itself. Each process campaigns
    // as itself unless the user named the worker.
    if !ctx.explicit_worker {
        ctx.claimant.worker_id = format!("{}.{}", ctx.claimant.worker_id, std::process::id());
    }
    let run = RunArgs {
        target: ClaimTarget {
            lock: Some(args.name.clone()),
            next: false,
            labels: Vec::new(),
            exclude_labels: Vec::new(),
            fail_label: None,
            retry_failed: false,
        },
        claim: ClaimOptions {
            // The coordinator ends a lease at its TTL and queues candidates; the others keep a
            // dead leader's lock until it is taken over, which a candidate does once it is stale.
            strategy: match ctx.backend.waits_server_side() {
                true => StrategyArg::Retry,
                false => StrategyArg::StealStale,
            },
            wait: args.wait,
            nonblock: false,
            // Without --wait, a campaign goes on until elected.
            max_retries: u32::MAX,
            conflict_exit_code: 3,
            initial_backoff: FIRST_PAUSE,
            max_backoff: LONGEST_PAUSE,
            ttl: args.ttl,
            limit: None,
            permits: None,
            shared: false,
            task: TaskArgs {
                task_info: None,
                complexity: None,
                estimate: None,
                task_type: None,
                priority: None,
                value: args.value.clone(),
            },
        },
        interval: args.interval,
        kill_grace: args.kill_grace,
        also: Vec::new(),
        command: args.command.clone(),
    };
    super::run::hold_while_running(&ctx, &run, "elect", true).await
}

/// `elect` and `leader` on GitHub: an issue per election, and a request per renewal against the
/// hourly budget, would be a poor election.
pub(crate) fn not_on_github(command: &str) -> Error {
    Error::usage(format!(
        "`sentinel {command}` needs a backend that keeps named locks: the coordinator (--server), \
         local, Redis, PostgreSQL or etcd; the github backend locks issues"
    ))
}
