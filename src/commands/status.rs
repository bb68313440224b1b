//! `sentinel status [LOCK]`: one lock in detail, or a table of every held lock (tab-separated
//! into a pipe).

use std::io::IsTerminal;

use chrono::Utc;
use serde_json::json;

use crate::cli::StatusArgs;
use crate::config::Context;
use crate::output::{Report, holder_json, holder_lines, table};
use sentinel::backend::{LockBackend, Status};
use sentinel::error::Result;
use sentinel::lock::ListRequest;

pub async fn exec(ctx: &Context, args: &StatusArgs) -> Result<Report> {
    // A person at a terminal reads times relative to now as well; a pipe gets them as they are.
    let terminal = std::io::stdout().is_terminal().then(Utc::now);
    let Some(raw) = &args.lock else {
        let rows = ctx.backend.list(&ListRequest { since: args.since }).await?;
        let human = if rows.is_empty() && terminal.is_some() {
            "No locks are held.".to_string()
        } else {
            table(&rows, terminal)
        };
        let locks: Vec<_> = rows
            .iter()
            .map(|(name, h)| json!({"lock": name, "holder": holder_json(h)}))
            .collect();
        return Ok(Report::new(
            json!({"ok": true, "command": "status", "backend": ctx.backend.name(), "locks": locks}),
            human,
        ));
    };
    let lock = ctx.backend.parse_lock(raw)?;
    let what = ctx.backend.describe(&lock);
    let status = ctx.backend.status(&lock).await?;
    let mut human = match status.holder() {
        Some(h) => format!("{what}\n{}", holder_lines(h, terminal)),
        None => format!("{what} is free"),
    };
    if let Status::Issue(s) = &status {
        human.push_str(&format!(
            "\nissue       {} ({})",
            s.issue.title, s.issue.state
        ));
        for i in &s.ignored {
            human.push_str(&format!(
                "\nignored     comment {} by {}: {}",
                i.comment_id, i.author, i.reason
            ));
        }
    }
    Ok(Report::new(
        json!({
            "ok": true,
            "command": "status",
            "backend": ctx.backend.name(),
            "lock": what,
            "held": status.holder().is_some(),
            "holder": status.holder().map(holder_json),
            "detail": status,
        }),
        human,
    ))
}
