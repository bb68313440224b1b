//! `sentinel barrier NAME --count N [--timeout D]`: wait until N participants have arrived.
//!
//! Each process that runs it is one participant; all of them go on (exit 0) when the N-th
//! arrives, and the name starts a new round. With `--timeout`, a participant that gives up
//! first leaves the barrier (it no longer counts) and exits 3, as a claim that timed out does.
//! The coordinator and the local backend keep barriers ([`sentinel::barrier`], waited for by
//! [`sentinel::strategy::meet`]); the others
//! refuse with exit 2.

use serde_json::json;

use crate::cli::BarrierArgs;
use crate::config::Context;
use crate::output::Report;
use sentinel::backend::LockBackend;
use sentinel::barrier::Arrived;
use sentinel::error::{Error, Result};
use sentinel::strategy;

pub async fn exec(ctx: &Context, args: &BarrierArgs) -> Result<Report> {
    let arrived = strategy::meet(
        &ctx.backend,
        &args.name,
        &ctx.claimant,
        args.count,
        args.timeout,
    )
    .await?;
    match arrived {
        Arrived::Opened { count } => Ok(Report::new(
            json!({
                "ok": true, "command": "barrier", "backend": ctx.backend.name(),
                "barrier": args.name, "opened": true, "count": count,
            }),
            format!("barrier {} opened: {count} participants arrived", args.name),
        )),
        Arrived::NotOpened { arrived, count } => Err(Error::Conflict(format!(
            "barrier {} did not open within --timeout: {} of {count} participants had arrived \
             (this one has left it)",
            args.name,
            arrived + 1
        ))),
    }
}
