//! `sentinel metrics`: the lock counters of this host, as a table, JSON or Prometheus text.

use clap::ValueEnum;
use serde_json::json;

use crate::cli::{BackendKind, GlobalArgs, MetricsArgs, MetricsFormat};
use crate::config;
use crate::error::Result;
use crate::metrics::Metrics;
use crate::output::Report;

pub async fn run(g: &GlobalArgs, args: &MetricsArgs) -> Result<Report> {
    let snapshot = Metrics::open(&config::data_dir(g.data_dir.as_ref())?)?.snapshot()?;
    // `auto` picks no backend here: every backend's counters are shown.
    let selected = match g.backend {
        BackendKind::Auto => None,
        kind => kind.to_possible_value().map(|v| v.get_name().to_string()),
    };
    let snapshot = match &selected {
        Some(name) => snapshot.only(name),
        None => snapshot,
    };
    let human = match args.format {
        MetricsFormat::Table => snapshot.table(),
        MetricsFormat::Prometheus => snapshot.prometheus()?,
    };
    let mut v = snapshot.to_json();
    v["ok"] = json!(true);
    v["command"] = json!("metrics");
    v["backend"] = json!(selected.as_deref().unwrap_or("all"));
    Ok(Report::new(v, human))
}
