//! `sentinel watch NAME | --prefix P [--since-revision N]`: one JSON line per event of the
//! coordinator's locks, until stopped.
//!
//! The events are the coordinator's watch stream (`GET /watch`), which the server backend
//! resumes across failures and leader changes from the last revision printed, so a script
//! sees each event once; `--since-revision` resumes a watch a script stopped. SIGINT or
//! SIGTERM, or stdout closing, ends it with exit 0, as `leader --watch`.

use std::pin::pin;

use futures_util::StreamExt;
use serde_json::Value;

use crate::cli::{GlobalArgs, WatchArgs};
use crate::config;
use crate::output::Report;
use sentinel::error::Result;
use sentinel::interrupt::Signals;
use sentinel::server::WatchFilter;

pub async fn exec(global: &GlobalArgs, args: &WatchArgs) -> Result<Report> {
    let server = config::server_backend(global)?;
    let filter = match (&args.name, &args.prefix) {
        (Some(name), _) => WatchFilter::Name(name.clone()),
        (None, prefix) => WatchFilter::Prefix(prefix.clone().unwrap_or_default()),
    };
    let mut signals = Signals::listen()?;
    let mut events = pin!(server.watch(&filter, args.since_revision)?);
    loop {
        let item = tokio::select! {
            item = events.next() => item,
            _ = signals.recv() => return Ok(Report::new(Value::Null, "")),
        };
        let Some(item) = item else {
            return Ok(Report::new(Value::Null, ""));
        };
        let line = serde_json::to_string(&item?).unwrap_or_default();
        if crate::output::print_line(&line).is_err() {
            // Nobody reads the events any more.
            return Ok(Report::new(Value::Null, ""));
        }
    }
}
