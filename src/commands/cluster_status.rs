//! `sentinel cluster status`: the coordinator cluster as its leader sees it (leader, term,
//! members, commit and applied index, each follower's replication lag), from
//! `GET /cluster/status` of the first `--server` that answers.

use serde_json::{Value, json};
use tabled::builder::Builder;
use tabled::settings::Style;

use crate::cli::GlobalArgs;
use crate::config;
use crate::output::Report;
use sentinel::error::{Error, Result};

pub async fn exec(global: &GlobalArgs) -> Result<Report> {
    let server = config::server_backend(global)?;
    let status = server.cluster_status().await?;
    if !status.is_object() {
        return Err(Error::Unexpected(
            "the sentinel server's cluster status is not a JSON object".into(),
        ));
    }
    let human = render(&status);
    Ok(Report::new(
        json!({"ok": true, "command": "cluster status", "backend": "server", "cluster": status}),
        human,
    ))
}

/// A number or `-` for a field the node does not know (no leader, nothing applied yet).
fn field(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn render(s: &Value) -> String {
    let leader = s["leader"].as_u64();
    let mut out = format!(
        "leader {}   term {}   commit index {}   applied index {}   (answered by node {}, {})\n",
        field(&s["leader"]),
        field(&s["term"]),
        field(&s["commit_index"]),
        field(&s["applied_index"]),
        field(&s["id"]),
        field(&s["state"]),
    );
    let followers = s["followers"].as_array().cloned().unwrap_or_default();
    let mut table = Builder::default();
    table.push_record(["NODE", "ADDRESS", "ROLE", "MATCHED INDEX", "LAG"]);
    for m in s["members"].as_array().into_iter().flatten() {
        let id = m["id"].as_u64();
        let follower = followers.iter().find(|f| f["id"].as_u64() == id);
        let role = if id.is_some() && id == leader {
            "leader"
        } else {
            "follower"
        };
        let (matched, lag) = match follower {
            Some(f) => (field(&f["matched_index"]), field(&f["lag"])),
            None if role == "leader" => (field(&s["last_log_index"]), "0".into()),
            None => ("-".into(), "-".into()),
        };
        table.push_record([
            field(&m["id"]),
            field(&m["addr"]),
            role.into(),
            matched,
            lag,
        ]);
    }
    out.push_str(&table.build().with(Style::sharp()).to_string());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_leader_and_lag() {
        let s = json!({
            "id": 2, "state": "follower", "leader": 1, "term": 3,
            "members": [{"id": 1, "addr": "127.0.0.1:1"}, {"id": 2, "addr": "127.0.0.1:2"}],
            "last_log_index": 9, "commit_index": 9, "applied_index": 8,
            "followers": [{"id": 2, "matched_index": 7, "lag": 2}],
        });
        let text = render(&s);
        assert!(
            text.contains("leader 1   term 3   commit index 9   applied index 8"),
            "{text}"
        );
        assert!(text.contains("127.0.0.1:2"), "{text}");
        let row = text.lines().find(|l| l.contains("127.0.0.1:2")).unwrap();
        assert!(
            row.contains("follower") && row.contains(" 7 ") && row.contains(" 2 "),
            "{row}"
        );
    }

    #[test]
    fn unknown_fields_print_as_dashes() {
        let text = render(&json!({"members": [{"id": 1, "addr": "a:1"}]}));
        assert!(text.contains("leader -"), "{text}");
    }
}
