//! `sentinel kv get|put|del|list|watch`: the coordinator's key-value store from a shell.
//!
//! Values are JSON and a shell gives text, so `put` stores VALUE as JSON when it parses as JSON
//! and as a JSON string otherwise: numbers, objects and plain words need no extra quoting. `get`
//! prints a string value as it is, as etcdctl prints bytes, so `$(sentinel kv get k)` is the
//! text that was put; any other value prints as one line of JSON. Only the coordinator keeps a
//! store: every other backend is refused here, before anything is read or sent (exit 2).

use std::io::Read;

use clap::ValueEnum;
use futures_util::StreamExt;
use futures_util::future::ready;
use serde_json::Value;

use crate::cli::{BackendKind, GlobalArgs, KvCommand, KvDelArgs, KvPutArgs};
use crate::config;
use crate::output::{self, Report};
use sentinel::error::{Error, Result};
use sentinel::server::ServerBackend;
use sentinel::watch::{WatchFilter, WatchItem};

pub async fn exec(global: &GlobalArgs, command: &KvCommand) -> Result<Report> {
    let kind = config::select_backend(global).kind;
    if kind != BackendKind::Server {
        let name = kind.to_possible_value().map(|v| v.get_name().to_string());
        return Err(Error::usage(format!(
            "the key-value store needs the coordinator: start one with `sentinel serve` and give \
             its address with --server URL (or SENTINEL_SERVER); the {} backend has none",
            name.unwrap_or_default()
        )));
    }
    let server = config::server_backend(global)?;
    let json = global.json;
    match command {
        KvCommand::Get(a) => get(&server, &a.key, json).await,
        KvCommand::Put(a) => put(&server, a, &config::worker_id(global)?).await,
        KvCommand::Del(a) => del(&server, a, &config::worker_id(global)?).await,
        KvCommand::List(a) => list(&server, &a.prefix, json).await,
        KvCommand::Watch(a) => {
            // The coordinator's one stream of events, its keys' only (locks may share the prefix).
            let filter = WatchFilter::Prefix(a.prefix.clone());
            let keys = server
                .watch(&filter, a.since_revision)?
                .filter(|item| ready(!matches!(item, Ok(WatchItem::Event(e)) if e.key.is_none())));
            super::watch::print(keys).await
        }
    }
}

async fn get(server: &ServerBackend, key: &str, json: bool) -> Result<Report> {
    let read = server
        .kv_get(key)
        .await?
        .ok_or_else(|| Error::NotFound(format!("key {key:?} does not exist")))?;
    Ok(exact(json, to_json(&read)?, Some(shown(&read.entry.value))))
}

async fn put(server: &ServerBackend, a: &KvPutArgs, writer: &str) -> Result<Report> {
    let value = value(&a.value)?;
    let written = server
        .kv_put(
            &a.key,
            value,
            a.merge.into(),
            a.if_revision,
            a.ttl,
            Some(writer),
        )
        .await?;
    Ok(Report::new(
        to_json(&written)?,
        written.revision.to_string(),
    ))
}

async fn del(server: &ServerBackend, a: &KvDelArgs, writer: &str) -> Result<Report> {
    let deleted = server
        .kv_delete(&a.key, a.if_revision, Some(writer))
        .await?;
    let human = match deleted.deleted {
        true => format!(
            "key {:?} deleted at revision {}",
            deleted.key, deleted.revision
        ),
        false => format!("key {:?} did not exist", deleted.key),
    };
    Ok(Report::new(to_json(&deleted)?, human))
}

async fn list(server: &ServerBackend, prefix: &str, json: bool) -> Result<Report> {
    let entries = server.kv_list(prefix).await?;
    let lines: Vec<String> = entries
        .iter()
        .map(|e| format!("{}\t{}", e.key, one_line(&shown(&e.value))))
        .collect();
    let text = (!lines.is_empty()).then(|| lines.join("\n"));
    Ok(exact(json, to_json(&entries)?, text))
}

/// VALUE, `@FILE` or `-` (stdin) as the value to store: JSON when the text parses as JSON, else
/// the text as a JSON string. A file's or stdin's one trailing newline is not part of a string
/// (as `$(…)` drops it), so `kv get k > f` then `kv put k @f` stores what was read.
fn value(raw: &str) -> Result<Value> {
    let read = match (raw, raw.strip_prefix('@')) {
        ("-", _) => {
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .map_err(|e| Error::usage(format!("cannot read the value from stdin: {e}")))?;
            text
        }
        (_, Some(path)) => std::fs::read_to_string(path)
            .map_err(|e| Error::usage(format!("cannot read the value from {path:?}: {e}")))?,
        (_, None) => return Ok(parsed(raw.to_string())),
    };
    let text = read
        .strip_suffix('\n')
        .map(|t| t.strip_suffix('\r').unwrap_or(t))
        .unwrap_or(&read);
    Ok(parsed(text.to_string()))
}

/// `text` as JSON if it is JSON, else as a JSON string.
fn parsed(text: String) -> Value {
    serde_json::from_str(&text).unwrap_or(Value::String(text))
}

/// A value as `get` prints it: a string as it is, anything else as compact JSON.
fn shown(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// `text` with its control characters escaped (`\n`, `\t`, `\u{1b}`), so that a listed key
/// stays one line and its tab the only one.
fn one_line(text: &str) -> String {
    text.chars()
        .map(|c| match c.is_control() {
            true => c.escape_default().to_string(),
            false => c.to_string(),
        })
        .collect()
}

fn to_json(answer: &impl serde::Serialize) -> Result<Value> {
    serde_json::to_value(answer)
        .map_err(|e| Error::Unexpected(format!("cannot render the answer as JSON: {e}")))
}

/// With `--json`, `object`; otherwise `text` printed as it is, with one newline after it (none
/// for no text: an empty list). [`Report`] trims its text's trailing whitespace, which may be
/// part of a value.
fn exact(json: bool, object: Value, text: Option<String>) -> Report {
    if json {
        return Report::new(object, "");
    }
    if let Some(text) = text {
        // A closed stdout is the reader's choice, as for every report.
        let _ = output::print_line(&text);
    }
    Report::silent()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_value_is_json_when_it_parses_and_text_otherwise() {
        assert_eq!(value("5").unwrap(), json!(5));
        assert_eq!(value("hello").unwrap(), json!("hello"));
        assert_eq!(value(r#""5""#).unwrap(), json!("5"));
        assert_eq!(value(r#"{"a":[1]}"#).unwrap(), json!({"a": [1]}));
        assert_eq!(value("{not json").unwrap(), json!("{not json"));
        let tmp = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(tmp.path(), "two lines\nhere\n").unwrap();
        let file = format!("@{}", tmp.path().display());
        assert_eq!(value(&file).unwrap(), json!("two lines\nhere"));
        assert!(value("@/nonexistent/value").is_err());
    }

    #[test]
    fn a_listed_value_is_one_line() {
        assert_eq!(one_line("a\tb\nc\u{1b}"), "a\\tb\\nc\\u{1b}");
        assert_eq!(one_line("ünï code"), "ünï code");
    }
}
