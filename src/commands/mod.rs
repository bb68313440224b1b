//! One module per subcommand. Each takes its parsed arguments, calls the library and returns a
//! [`Report`](crate::output::Report); none parses input or speaks a protocol itself. Each entry
//! point is `exec`, as in cargo; [`execute`] picks one.

pub mod barrier;
pub mod claim;
pub mod cluster_status;
pub mod completions;
pub mod doctor;
pub mod elect;
pub mod heartbeat;
pub mod kv;
pub mod leader;
pub mod metrics;
pub mod release;
pub mod run;
pub mod serve;
pub mod status;
pub mod steal_stale;
pub mod watch;

use crate::cli::{Cli, ClusterCommand, Command};
use crate::config::Context;
use crate::output::Report;
use sentinel::error::Result;

/// Runs the parsed command line: each subcommand's `exec`, with the context it needs.
pub async fn execute(cli: &Cli) -> Result<Report> {
    if let Command::Completions(args) = &cli.command {
        return completions::exec(args);
    }
    // This host's counters need no backend, token or network; only --repo-wide builds a backend.
    if let Command::Metrics(args) = &cli.command {
        return metrics::exec(&cli.global, args).await;
    }
    // A coordinator node is no client: it needs no backend or worker identity.
    if let Command::Serve(args) = &cli.command {
        return serve::exec(&cli.global, args).await;
    }
    // Cluster inspection needs the servers, not a worker identity.
    if let Command::Cluster(ClusterCommand::Status) = &cli.command {
        return cluster_status::exec(&cli.global).await;
    }
    // A watch reads the coordinator's events: no worker identity.
    if let Command::Watch(args) = &cli.command {
        return watch::exec(&cli.global, args).await;
    }
    // The key-value store is the coordinator's alone: no other backend is built.
    if let Command::Kv(command) = &cli.command {
        return kv::exec(&cli.global, command).await;
    }
    // A diagnosis reports the options it cannot use instead of failing on them.
    if let Command::Doctor = &cli.command {
        return doctor::exec(&cli.global).await;
    }
    let ctx = Context::from_args(&cli.global)?;
    match &cli.command {
        Command::Claim(a) => claim::exec(&ctx, a).await,
        Command::Release(a) => release::exec(&ctx, a).await,
        Command::Status(a) => status::exec(&ctx, a).await,
        Command::Heartbeat(a) => heartbeat::exec(&ctx, a).await,
        Command::Run(a) => run::exec(&ctx, a).await,
        Command::StealStale(a) => steal_stale::exec(&ctx, a).await,
        Command::Leader(a) => leader::exec(ctx, a).await,
        Command::Elect(a) => elect::exec(ctx, a).await,
        Command::Barrier(a) => barrier::exec(&ctx, a).await,
        Command::Completions(_)
        | Command::Metrics(_)
        | Command::Serve(_)
        | Command::Cluster(_)
        | Command::Watch(_)
        | Command::Kv(_)
        | Command::Doctor => unreachable!("handled above"),
    }
}
