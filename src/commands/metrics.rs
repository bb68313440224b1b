//! `sentinel metrics`: the lock counters of this host, or with `--repo-wide` the repository's
//! lock history; as a table, JSON or Prometheus text.

use clap::ValueEnum;
use serde_json::json;

use crate::cli::{BackendKind, GlobalArgs, MetricsArgs, MetricsFormat};
use crate::config::{self, Context};
use crate::metrics::{Metrics, RepoMetrics};
use crate::output::Report;
use sentinel::backend::Backend;
use sentinel::error::{Error, Result};

pub async fn exec(g: &GlobalArgs, args: &MetricsArgs) -> Result<Report> {
    if args.repo_wide {
        return repo_wide(g, args).await;
    }
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

async fn repo_wide(g: &GlobalArgs, args: &MetricsArgs) -> Result<Report> {
    let ctx = Context::from_args(g)?;
    let Backend::Github(gh) = ctx.backend.inner().inner() else {
        return Err(Error::usage(
            "--repo-wide reads a GitHub repository's lock comments: it needs the github backend (--repo OWNER/REPO)",
        ));
    };
    let history = gh.history(args.since).await?;
    let m = RepoMetrics {
        repo: gh.repo().to_string(),
        window: args.since,
        history: &history,
    };
    let human = match args.format {
        MetricsFormat::Table => m.table(),
        MetricsFormat::Prometheus => m.prometheus()?,
    };
    let mut v = m.to_json();
    v["ok"] = json!(true);
    v["command"] = json!("metrics");
    v["backend"] = json!("github");
    v["scope"] = json!("repository");
    Ok(Report::new(v, human))
}
