//! `sentinel watch NAME | --prefix P [--since-revision N]`: one JSON line per event of the
//! locks (and on the coordinator, its keys), until stopped.
//!
//! The events are the coordinator's watch stream (`GET /watch`), which the server backend
//! resumes across failures and leader changes from the last revision printed, or the local
//! table's, read as it changes; either way a script sees each event once, and
//! `--since-revision` resumes a watch a script stopped. SIGINT or SIGTERM, or stdout closing,
//! ends it with exit 0, as `leader --watch`. The other backends keep no events: exit 2.

use std::pin::pin;

use clap::ValueEnum;
use futures_util::{Stream, StreamExt};
use serde_json::Value;

use crate::cli::{BackendKind, GlobalArgs, WatchArgs};
use crate::config;
use crate::output::Report;
use sentinel::error::{Error, Result};
use sentinel::interrupt::Signals;
use sentinel::local::LocalBackend;
use sentinel::watch::{WatchFilter, WatchItem};

pub async fn exec(global: &GlobalArgs, args: &WatchArgs) -> Result<Report> {
    let filter = match (&args.name, &args.prefix) {
        (Some(name), _) => WatchFilter::Name(name.clone()),
        (None, prefix) => WatchFilter::Prefix(prefix.clone().unwrap_or_default()),
    };
    match config::select_backend(global).kind {
        BackendKind::Server => {
            let server = config::server_backend(global)?;
            print(server.watch(&filter, args.since_revision)?).await
        }
        BackendKind::Local => {
            let dir = config::data_dir(global.data_dir.as_ref())?.join("local");
            let local = LocalBackend::open(dir)?;
            print(local.watch(filter, args.since_revision)?).await
        }
        other => {
            let name = other.to_possible_value().map(|v| v.get_name().to_string());
            Err(Error::usage(format!(
                "watch follows the coordinator's (--server) or the local backend's locks; the {} \
                 backend keeps no events",
                name.unwrap_or_default()
            )))
        }
    }
}

/// Prints each item as a JSON line until a signal, the end of the stream or of stdout (also for
/// `kv watch`).
pub(crate) async fn print(events: impl Stream<Item = Result<WatchItem>>) -> Result<Report> {
    let mut signals = Signals::listen()?;
    let mut events = pin!(events);
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
