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
    let holds = status.holds();
    let mut human = match (status.kind(), &holds[..]) {
        (_, []) => format!("{what} is free"),
        ("exclusive", [one]) => format!("{what}\n{}", holder_lines(&one.holder, terminal)),
        (kind, _) => {
            let mut s = match status.limit() {
                Some(limit) => format!(
                    "{what}: {kind} of limit {limit}, {} permits held",
                    holds.iter().map(|h| u64::from(h.permits)).sum::<u64>()
                ),
                None => format!("{what}: {kind}, {} holders", holds.len()),
            };
            for h in &holds {
                s.push_str(&format!("\n\n{}", holder_lines(&h.holder, terminal)));
                if status.limit().is_some() {
                    s.push_str(&format!("permits     {}\n", h.permits));
                }
            }
            s
        }
    };
    let (queue, waiting) = status.queue();
    if waiting > 0 {
        let first: Vec<&str> = queue.iter().map(|w| w.worker_id.as_str()).collect();
        human.push_str(&format!(
            "\nwaiting     {waiting}: {}{}",
            first.join(", "),
            if waiting > first.len() { ", …" } else { "" }
        ));
    }
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
            "held": !holds.is_empty(),
            "holder": status.holder().map(holder_json),
            "kind": status.kind(),
            "limit": status.limit(),
            "holders": holds,
            "queue": queue,
            "detail": status,
        }),
        human,
    ))
}
