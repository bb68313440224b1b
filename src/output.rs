//! Rendering: one JSON object on stdout with `--json`, otherwise human text and tables; logs and
//! the spinner go to stderr only. Inside GitHub Actions results also land in `$GITHUB_OUTPUT`
//! and errors become `::error::` annotations; an empty work queue, which a workflow expects, is
//! a `::notice::` instead.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressState, ProgressStyle};
use serde_json::{Value, json};
use tabled::settings::Style;
use tabled::{Table, Tabled};

use sentinel::error::Error;
use sentinel::lease;
use sentinel::lock::Holder;

/// What a command produced: both renderings, chosen by `--json` at print time.
pub struct Report {
    /// The `--json` rendering: one object, printed on one line.
    pub json: Value,
    /// The text rendering; trailing whitespace is trimmed, and an empty one prints nothing.
    pub human: String,
    /// `key=value` pairs for `$GITHUB_OUTPUT`.
    pub outputs: Vec<(String, String)>,
    /// Markdown for `$GITHUB_STEP_SUMMARY` (a short table).
    pub summary: Option<String>,
    /// The process's exit code once printed: 0, except for `run`, which passes on its command's,
    /// and for a [`Report::notice`].
    pub exit_code: i32,
    /// A line for stderr that tells of an expected outcome rather than a failure.
    pub notice: Option<String>,
}

impl Report {
    /// A report with exit code 0 and no Actions outputs or summary.
    pub fn new(json: Value, human: impl Into<String>) -> Self {
        Report {
            json,
            human: human.into(),
            outputs: Vec::new(),
            summary: None,
            exit_code: 0,
            notice: None,
        }
    }

    /// A conflict that is an answer, not a failure: an empty work queue. The process exits
    /// `code` and `--json` prints the error object, as for any error, but the line on stderr is
    /// a notice (`::notice::` inside Actions: a workflow that drains a queue sees no error
    /// annotation when it is done) and `acquired=false` goes to `$GITHUB_OUTPUT`, as after a
    /// failed claim.
    pub fn notice(e: &Error, code: i32) -> Self {
        let mut report = Report::new(json_error(e, code), "");
        report.outputs = vec![("acquired".into(), "false".into())];
        report.exit_code = code;
        report.notice = Some(e.to_string());
        report
    }

    /// A report that prints nothing: the command has said all it had to say while it ran
    /// (`serve`, whose one JSON object announces where it listens).
    pub fn silent() -> Self {
        Report::new(Value::Null, "")
    }

    /// Prints the JSON or the text on stdout (nothing for a [`Report::silent`]) and the notice
    /// on stderr, and inside Actions appends the outputs and the summary to `$GITHUB_OUTPUT`
    /// and `$GITHUB_STEP_SUMMARY` ([`Report::write_actions`]). Write errors are ignored (a
    /// closed pipe must not turn a done lock operation into a failure).
    pub fn print(&self, as_json: bool) {
        let mut out = std::io::stdout().lock();
        let _ = if as_json && self.json.is_null() {
            Ok(())
        } else if as_json {
            writeln!(out, "{}", self.json)
        } else if self.human.trim_end().is_empty() {
            // `run` leaves stdout to its command.
            Ok(())
        } else {
            writeln!(out, "{}", self.human.trim_end())
        };
        if let Some(message) = &self.notice {
            print_stderr_line("notice", message);
        }
        self.write_actions();
    }

    /// Appends the outputs and the summary to `$GITHUB_OUTPUT` and `$GITHUB_STEP_SUMMARY` (when
    /// the runner names them). `run` calls it once it holds the lock, since its own report comes
    /// only after its command.
    pub fn write_actions(&self) {
        let outputs: String = self
            .outputs
            .iter()
            .map(|(k, v)| format!("{k}={}\n", v.replace('\n', " ")))
            .collect();
        append_to_env_file("GITHUB_OUTPUT", &outputs);
        if let Some(table) = &self.summary {
            append_to_env_file("GITHUB_STEP_SUMMARY", &format!("{}\n\n", table.trim_end()));
        }
    }
}

/// A one-row markdown table for `$GITHUB_STEP_SUMMARY`; `|` in cells is escaped.
pub fn summary_table(headers: &[&str], cells: &[String]) -> String {
    let row = |items: Vec<String>| format!("| {} |\n", items.join(" | "));
    let mut out = row(headers.iter().map(|h| h.to_string()).collect());
    out.push_str(&row(headers.iter().map(|_| "---".to_string()).collect()));
    out.push_str(&row(cells
        .iter()
        .map(|c| c.replace('|', "\\|").replace('\n', " "))
        .collect()));
    out
}

/// After a failed claim inside Actions, later steps can test `steps.<id>.outputs.acquired`.
pub fn claim_failed_output() {
    append_to_env_file("GITHUB_OUTPUT", "acquired=false\n");
}

/// Appends to the file an Actions runner names in `var` (`$GITHUB_OUTPUT`, `$GITHUB_STEP_SUMMARY`).
fn append_to_env_file(var: &str, text: &str) {
    let Some(path) = std::env::var_os(var) else {
        return;
    };
    if text.is_empty() {
        return;
    }
    let written = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(path)
        .and_then(|mut f| f.write_all(text.as_bytes()));
    if let Err(e) = written {
        tracing::warn!(error = %e, "cannot write ${var}");
    }
}

/// Prints an error: JSON on stdout with `--json`, a line on stderr always.
/// One line on stdout, flushed at once, for a command that reports as things happen (`leader
/// --watch`). An error means nobody reads any more (a closed pipe).
pub fn print_line(line: &str) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}")?;
    out.flush()
}

pub fn print_error(e: &Error, as_json: bool) {
    print_error_exiting(e, as_json, e.exit_code().code());
}

/// [`print_error`] for a process that exits `code` (`--conflict-exit-code`), which the JSON
/// object shows.
pub fn print_error_exiting(e: &Error, as_json: bool, code: i32) {
    if as_json {
        print_json_error(e, code);
    }
    print_error_line(&e.to_string());
}

/// The error line on stderr alone, for a failure the command reports itself (`run`'s command
/// that could not start).
pub fn print_error_line(message: &str) {
    print_stderr_line("error", message);
}

/// One line on stderr at `level` (`error`, `notice`): a workflow command inside Actions,
/// `sentinel: error: …` or `sentinel: …` elsewhere.
fn print_stderr_line(level: &str, message: &str) {
    // The runner reads workflow commands from stderr too, which keeps stdout to one JSON object.
    // Writes are allowed to fail (a closed pipe): the exit code still tells.
    let mut err = std::io::stderr().lock();
    let _ = if std::env::var("GITHUB_ACTIONS").as_deref() == Ok("true") {
        writeln!(
            err,
            "::{level} title=sentinel::{}",
            message.replace('\n', " ")
        )
    } else if level == "error" {
        writeln!(err, "sentinel: error: {message}")
    } else {
        writeln!(err, "sentinel: {message}")
    };
}

/// The `--json` error object on stdout: `{"ok":false,"error":{"kind","message","exit_code"}}`,
/// where the process exits `code`.
pub fn print_json_error(e: &Error, code: i32) {
    let _ = writeln!(std::io::stdout().lock(), "{}", json_error(e, code));
}

/// The `--json` error object of [`print_json_error`].
fn json_error(e: &Error, code: i32) -> Value {
    let mut v = json!({"ok": false, "error": {"kind": e.kind(), "message": e.to_string(), "exit_code": code}});
    if let Error::RateLimited {
        retry_after: Some(wait),
        ..
    } = e
    {
        v["error"]["retry_after_secs"] = json!(wait.as_secs());
    }
    v
}

/// The holder as JSON, the same fields as its serde form (`null` should it fail to serialize).
pub fn holder_json(h: &Holder) -> Value {
    serde_json::to_value(h).unwrap_or(Value::Null)
}

/// One line per fact, for `status LOCK`; with `now` (a person at a terminal) each time also
/// says how long ago or how soon it is. A node nobody named (a lock taken over HTTP) is left out.
pub fn holder_lines(h: &Holder, now: Option<DateTime<Utc>>) -> String {
    let at = |t| match now {
        Some(now) => format!("{}  ({})", lease::human(t), relative(t, now)),
        None => lease::human(t),
    };
    let node = if h.node_id.is_empty() {
        String::new()
    } else {
        format!("node        {}\n", h.node_id)
    };
    // When the holder's job decided, its expiry says nothing about the state: say what did.
    let liveness = match &h.liveness {
        Some(_) => format!("state       {}\n", h.state()),
        None => String::new(),
    };
    let mut s = format!(
        "held by     {}\n{node}since       {}\nheartbeat   {}\nexpires     {}{}\n{liveness}fencing     {}\n",
        h.worker_id,
        at(h.claimed_at),
        at(h.heartbeat_last),
        at(h.expires_at),
        if h.stale && h.liveness.is_none() {
            "  (STALE)"
        } else {
            ""
        },
        h.fencing_token
    );
    let t = &h.task_info;
    if !t.is_empty() {
        let parts: Vec<String> = [
            t.complexity.map(|c| format!("complexity {c}")),
            t.estimated_duration
                .as_ref()
                .map(|d| format!("estimate {d}")),
            t.task_type.as_ref().map(|k| format!("type {k}")),
            t.priority.as_ref().map(|p| format!("priority {p}")),
        ]
        .into_iter()
        .flatten()
        .collect();
        if !parts.is_empty() {
            s.push_str(&format!("task        {}\n", parts.join(", ")));
        }
    }
    if let Some(value) = &t.value {
        s.push_str(&format!("value       {value}\n"));
    }
    s
}

#[derive(Tabled)]
struct Row {
    #[tabled(rename = "LOCK")]
    lock: String,
    #[tabled(rename = "WORKER")]
    worker: String,
    #[tabled(rename = "NODE")]
    node: String,
    #[tabled(rename = "SINCE")]
    since: String,
    #[tabled(rename = "EXPIRES")]
    expires: String,
    #[tabled(rename = "STATE")]
    state: String,
    #[tabled(rename = "TOKEN")]
    token: u64,
}

/// A table of held locks (display name and holder), one row each, for `status` without a lock:
/// for a person at a terminal (`now` given), boxed, with times relative to `now` beside the
/// absolute ones; for a pipe, a header line and one line per lock with tab-separated columns and
/// RFC 3339 times, which `cut -f` and `awk -F'\t'` read (names and ids hold no tabs).
pub fn table(rows: &[(String, Holder)], now: Option<DateTime<Utc>>) -> String {
    let at = |t| match now {
        Some(now) => format!("{} ({})", lease::human(t), relative(t, now)),
        None => lease::rfc3339(t),
    };
    let rows: Vec<Row> = rows
        .iter()
        .map(|(lock, h)| Row {
            lock: lock.clone(),
            worker: h.worker_id.clone(),
            node: h.node_id.clone(),
            since: at(h.claimed_at),
            expires: at(h.expires_at),
            state: h.state(),
            token: h.fencing_token,
        })
        .collect();
    if now.is_some() {
        return Table::new(rows).with(Style::sharp()).to_string();
    }
    std::iter::once(Row::headers())
        .chain(rows.iter().map(Tabled::fields))
        .map(|cells| cells.join("\t"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// How far `t` is from `now`, for people: `40 seconds ago`, `in 2 minutes`, `now`. Whole units,
/// rounded down, in the largest unit that fits.
pub fn relative(t: DateTime<Utc>, now: DateTime<Utc>) -> String {
    let secs = (t - now).num_seconds();
    if secs == 0 {
        return "now".into();
    }
    let n = secs.unsigned_abs();
    let (count, unit) = [(86_400, "day"), (3_600, "hour"), (60, "minute")]
        .into_iter()
        .find(|(size, _)| n >= *size)
        .map_or((n, "second"), |(size, unit)| (n / size, unit));
    let span = format!("{count} {unit}{}", if count == 1 { "" } else { "s" });
    if secs < 0 {
        format!("{span} ago")
    } else {
        format!("in {span}")
    }
}

/// The time left until a deadline, counting down by the second: `1m05s left`, `9s left`.
pub fn time_left(left: Duration) -> String {
    // Rounded up, so that it reads `0s` only once the deadline has come.
    let s = left.as_secs() + u64::from(left.subsec_nanos() > 0);
    match s {
        0..60 => format!("{s}s left"),
        60..3600 => format!("{}m{:02}s left", s / 60, s % 60),
        _ => format!("{}h{:02}m left", s / 3600, s % 3600 / 60),
    }
}

/// A spinner on stderr while waiting, only for humans at a terminal.
pub struct Spinner(Option<ProgressBar>);

impl Spinner {
    /// Starts spinning with `message`, unless `as_json` or stderr is not a terminal (then it is
    /// inert). Cleared from the terminal when dropped.
    pub fn new(as_json: bool, message: &str) -> Spinner {
        if as_json || !std::io::stderr().is_terminal() {
            return Spinner(None);
        }
        let pb = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
        pb.set_style(ProgressStyle::with_template("{spinner} {msg}").expect("valid template"));
        pb.set_message(message.to_string());
        pb.enable_steady_tick(Duration::from_millis(100));
        Spinner(Some(pb))
    }

    /// Replaces the text next to the spinner.
    pub fn set_message(&self, msg: String) {
        if let Some(pb) = &self.0 {
            pb.set_message(msg);
        }
    }

    /// Replaces the text next to the spinner with `msg` followed by the time left until
    /// `deadline`, redrawn with every tick so that it counts down.
    pub fn count_down(&self, msg: String, deadline: Instant) {
        let Some(pb) = &self.0 else {
            return;
        };
        let style = ProgressStyle::with_template("{spinner} {msg} ({left})")
            .expect("valid template")
            .with_key(
                "left",
                move |_: &ProgressState, w: &mut dyn std::fmt::Write| {
                    let _ = w.write_str(&time_left(
                        deadline.saturating_duration_since(Instant::now()),
                    ));
                },
            );
        pb.set_style(style);
        pb.set_message(msg);
    }
}

impl Drop for Spinner {
    fn drop(&mut self) {
        if let Some(pb) = &self.0 {
            pb.finish_and_clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_times_read_as_people_say_them() {
        let now = DateTime::from_timestamp(1_700_000_000, 0).unwrap();
        let at = |s: i64| now + chrono::Duration::seconds(s);
        for (offset, said) in [
            (0, "now"),
            (-1, "1 second ago"),
            (-59, "59 seconds ago"),
            (-120, "2 minutes ago"),
            (-150, "2 minutes ago"),
            (40, "in 40 seconds"),
            (60, "in 1 minute"),
            (3 * 3600 + 59, "in 3 hours"),
            (-86_400, "1 day ago"),
            (-9 * 86_400, "9 days ago"),
        ] {
            assert_eq!(relative(at(offset), now), said, "{offset}");
        }
    }

    #[test]
    fn the_countdown_counts_whole_seconds_down_to_zero() {
        for (left, said) in [
            (Duration::ZERO, "0s left"),
            (Duration::from_millis(1), "1s left"),
            (Duration::from_millis(29_001), "30s left"),
            (Duration::from_secs(65), "1m05s left"),
            (Duration::from_secs(3600 + 120), "1h02m left"),
        ] {
            assert_eq!(time_left(left), said, "{left:?}");
        }
    }

    #[test]
    fn a_table_into_a_pipe_has_machine_times_and_on_a_terminal_relative_ones() {
        let now = DateTime::from_timestamp(1_700_000_000, 0).unwrap();
        let h = Holder {
            worker_id: "w1".into(),
            node_id: String::new(),
            fencing_token: 7,
            claimed_at: now - chrono::Duration::seconds(120),
            heartbeat_last: now,
            expires_at: now + chrono::Duration::seconds(40),
            stale: false,
            task_info: Default::default(),
            liveness: None,
        };
        let rows = [("l".to_string(), h.clone())];
        let piped = table(&rows, None);
        assert!(
            piped.contains("\t2023-11-14T22:11:20Z\t2023-11-14T22:14:00Z\t"),
            "{piped}"
        );
        let boxed = table(&rows, Some(now));
        assert!(boxed.contains("2 minutes ago"), "{boxed}");
        assert!(boxed.contains("in 40 seconds"), "{boxed}");
        let lines = holder_lines(&h, Some(now));
        assert!(lines.contains("(2 minutes ago)"), "{lines}");
        assert!(!lines.contains("node"), "no node named: {lines}");
        assert!(!holder_lines(&h, None).contains("ago"));
    }
}
