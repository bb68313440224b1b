//! `sentinel doctor`: whether the options and the environment make a usable backend. It says
//! which backend they choose and why ([`config::select_backend`]), where the GitHub token comes
//! from (never the token), and renders the backend's own checks (each backend crate's
//! `diagnose`). A failed check keeps its error, whose exit code the process exits with.

use clap::ValueEnum;
use serde_json::json;

use crate::cli::{BackendKind, GlobalArgs};
use crate::config::{self, Context, DEFAULT_API_URL};
use crate::output::Report;
use sentinel::diagnose::Check;
use sentinel::error::Result;

pub async fn exec(global: &GlobalArgs) -> Result<Report> {
    let selection = config::select_backend(global);
    let mut checks = Vec::new();
    if selection.kind == BackendKind::Github {
        checks.push(token_check(global));
    }
    match Context::from_args(global) {
        Ok(ctx) => checks.extend(ctx.backend.inner().inner().diagnose().await),
        Err(e) => checks.push(Check::fail("options", e)),
    }
    let backend = selection
        .kind
        .to_possible_value()
        .map(|v| v.get_name().to_string())
        .unwrap_or_default();
    let failed = checks.iter().find_map(Check::error);
    let usable = failed.is_none();
    let mut human = format!("backend {backend}: {}\n", selection.reason);
    for c in &checks {
        human += &format!("{:<4}  {}: {}\n", c.status(), c.name, c.detail);
    }
    human += match usable {
        true => "usable",
        false => "not usable",
    };
    let rendered: Vec<_> = checks
        .iter()
        .map(|c| json!({"name": c.name, "status": c.status(), "detail": c.detail}))
        .collect();
    let mut report = Report::new(
        json!({
            "backend": backend,
            "reason": selection.reason,
            "checks": rendered,
            "usable": usable,
        }),
        human,
    );
    report.exit_code = failed.map_or(0, |e| e.status(None));
    Ok(report)
}

/// Where the GitHub token comes from; without one, requests are anonymous.
fn token_check(global: &GlobalArgs) -> Check {
    let api = Some(global.api_url.trim())
        .filter(|u| !u.is_empty())
        .unwrap_or(DEFAULT_API_URL);
    match config::token_source(global.token.as_ref(), api) {
        Some((source, _)) => Check::ok("token", format!("from {source} (never printed)")),
        None => Check::warn(
            "token",
            "none: requests are anonymous (60 an hour, no writes); set --token, SENTINEL_TOKEN, \
             GITHUB_TOKEN or GH_TOKEN, or log in with `gh auth login`",
        ),
    }
}
