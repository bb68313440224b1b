//! The lock comment: what a human reads on the issue and the JSON block every sentinel parses.
//!
//! Rendering and parsing live together so the format cannot drift between writer and reader. The
//! JSON keeps the seed's field names (`lock.worker_id`, `node_id`, `claimed_at`, `heartbeat_last`,
//! `task_info`); the times inside are the writer's estimate of GitHub's clock and are shown to
//! humans only — the protocol judges time by the comment's own `created_at` / `updated_at`.
//!
//! Readers parse what anyone with write access may have typed, so a field that only refines a
//! judgement (`actions_job`, a take-over's `completed_job`) is read leniently: a value that is
//! not what sentinel writes counts as absent, which leaves the lock to its lease — it never
//! frees a lock nor voids one.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Deserializer, Serialize};

use sentinel_core::lease;
use sentinel_core::lock::{MAX_NAME_LEN, TaskInfo};

/// First line of every lock comment; lets readers skip ordinary comments cheaply.
pub const MARKER: &str = "<!-- sentinel:lock -->";
const JSON_OPEN: &str = "```json";
const JSON_CLOSE: &str = "```";

/// Whether a lock comment still claims the lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LockState {
    /// A claim; whether it holds the lock is [`resolve`](super::resolve)'s decision.
    Held,
    /// Given up, at the comment's `updated_at` (its last edit).
    Released,
}

/// The GitHub Actions job a claim was made from (`GITHUB_RUN_ID`, `GITHUB_RUN_ATTEMPT`,
/// `GITHUB_JOB`, `RUNNER_NAME`): readers that may ask GitHub whether it still runs judge the lock
/// by it (see `jobs`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActionsJob {
    /// The workflow run.
    pub run_id: u64,
    /// Its attempt (a re-run is a new attempt with new jobs).
    pub run_attempt: u32,
    /// The job's key in the workflow, which is not always the name GitHub lists it under (a job
    /// with `name:`, a matrix job).
    pub job: String,
    /// The runner: what finds the job among its attempt's jobs. Absent in a comment written by
    /// hand, where the job's key is matched against the listed names instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runner_name: Option<String>,
}

impl ActionsJob {
    /// The job Actions describes in these variables' values; `None` unless every one is
    /// well-formed (a comment must read back as written).
    pub fn new(
        run_id: &str,
        run_attempt: &str,
        job: &str,
        runner_name: &str,
    ) -> Option<ActionsJob> {
        let job = ActionsJob {
            run_id: run_id.trim().parse().ok()?,
            run_attempt: run_attempt.trim().parse().ok()?,
            job: job.trim().to_string(),
            runner_name: Some(runner_name.trim().to_string()),
        };
        job.is_valid().then_some(job)
    }

    /// What sentinel would have written: positive numbers, a job key as GitHub allows them (a
    /// letter or `_`, then letters, digits, `-` and `_`), a runner name without control
    /// characters; both at most [`MAX_NAME_LEN`] characters.
    fn is_valid(&self) -> bool {
        let key_ok = self.job.chars().count() <= MAX_NAME_LEN
            && self
                .job
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && self
                .job
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        let runner_ok = self.runner_name.as_deref().is_none_or(|r| {
            !r.trim().is_empty()
                && r.chars().count() <= MAX_NAME_LEN
                && !r.chars().any(char::is_control)
        });
        self.run_id > 0 && self.run_attempt > 0 && key_ok && runner_ok
    }

    /// `job 'build' of run 123 attempt 1`, for people.
    pub fn describe(&self) -> String {
        format!(
            "job '{}' of run {} attempt {}",
            self.job, self.run_id, self.run_attempt
        )
    }
}

/// Reads an optional [`ActionsJob`], taking one that is not what sentinel writes as absent (see
/// the module doc): it must not make the whole comment malformed, which would free the lock.
fn lenient_job<'de, D: Deserializer<'de>>(d: D) -> Result<Option<ActionsJob>, D::Error> {
    let raw = Option::<serde_json::Value>::deserialize(d)?;
    Ok(raw
        .and_then(|v| serde_json::from_value::<ActionsJob>(v).ok())
        .filter(ActionsJob::is_valid))
}

/// What a stealing claim says about the lock it takes over, so every reader can check the
/// take-over was allowed even after the victim's comment is gone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Takeover {
    /// The victim's lock comment.
    pub comment_id: u64,
    /// The victim's worker id.
    pub worker_id: String,
    /// The victim's `updated_at` as the stealer saw it.
    pub heartbeat: DateTime<Utc>,
    /// The victim's lease, in seconds.
    pub ttl_seconds: u64,
    /// Taken whatever the victim's lease (`--strategy force`, `release --force`); false: allowed
    /// only because the victim was stale.
    pub force: bool,
    /// The victim's job, which GitHub said had completed: stale then whatever its lease, as long
    /// as the victim's comment still names this job (`resolve`).
    #[serde(
        default,
        deserialize_with = "lenient_job",
        skip_serializing_if = "Option::is_none"
    )]
    pub completed_job: Option<ActionsJob>,
}

/// The release a claimer read, before writing its claim, as the issue's last lock comment: proof
/// that the claim came after that release, which GitHub's whole-second timestamps cannot give
/// when both fall in the same second.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AfterRelease {
    /// The released lock comment (a holder's own, or a release notice).
    pub comment_id: u64,
    /// Its `updated_at` as read: the release it saw, not a later edit of the same comment.
    pub released: DateTime<Utc>,
}

/// The JSON `lock` object of a lock comment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockMeta {
    /// The claimant and owner.
    pub worker_id: String,
    /// Where the claimant runs; informational.
    pub node_id: String,
    /// When the claim was written, by the writer's estimate of GitHub's clock; for people only.
    pub claimed_at: DateTime<Utc>,
    /// The last heartbeat by the same estimate; for people only (the comment's `updated_at`
    /// counts).
    pub heartbeat_last: DateTime<Utc>,
    /// The lease, in whole seconds (at least 1).
    pub ttl_seconds: u64,
    /// Held or released.
    pub state: LockState,
    /// Random id of this claim attempt: finds our own comment again after a lost response.
    pub nonce: String,
    /// What the claimant said about its work.
    #[serde(default, skip_serializing_if = "TaskInfo::is_empty")]
    pub task_info: TaskInfo,
    /// Set when this claim (or release notice) took the lock from another holder.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub takeover: Option<Takeover>,
    /// When it was released, by the writer's clock estimate; for people only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub released_at: Option<DateTime<Utc>>,
    /// Who released it: the holder's worker id, `WORKER (forced)`, the janitor's worker id, or
    /// `WORKER (expired)` for a lease that ran out before its heartbeat arrived. Absent while held.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub released_by: Option<String>,
    /// On a claim written after reading the lock free: the release it read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after_release: Option<AfterRelease>,
    /// The Actions job of the claim's last writer (the claim, or a renewal since), when it ran
    /// in one.
    #[serde(
        default,
        deserialize_with = "lenient_job",
        skip_serializing_if = "Option::is_none"
    )]
    pub actions_job: Option<ActionsJob>,
}

#[derive(Serialize, Deserialize)]
struct Envelope {
    sentinel: u32,
    lock: LockMeta,
}

/// How a comment body reads as a lock comment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    /// Not a sentinel comment at all.
    Other,
    /// A well-formed lock comment.
    Lock(Box<LockMeta>),
    /// Carries the marker but the JSON is missing or broken (hand-edited): ignored, reported.
    Malformed(String),
}

fn ts(t: DateTime<Utc>) -> String {
    lease::rfc3339(t)
}

fn describe_task(t: &TaskInfo) -> Option<String> {
    let mut parts = Vec::new();
    if let Some(c) = t.complexity {
        parts.push(format!("complexity {c}"));
    }
    if let Some(d) = &t.estimated_duration {
        parts.push(format!("estimate {d}"));
    }
    if let Some(k) = &t.task_type {
        parts.push(format!("type {k}"));
    }
    if let Some(p) = &t.priority {
        parts.push(format!("priority {p}"));
    }
    (!parts.is_empty()).then(|| parts.join(" · "))
}

/// Renders the whole comment body: readable text first, the JSON block last.
pub fn render(meta: &LockMeta) -> String {
    let mut out = String::new();
    out.push_str(MARKER);
    out.push('\n');
    match meta.state {
        LockState::Held => {
            out.push_str(&format!(
                "🔒 **Locked by `{}`** on `{}` with [sentinel](https://github.com/sentinel-locks/sentinel).\n\n",
                meta.worker_id, meta.node_id
            ));
            out.push_str(&format!(
                "- claimed at {}\n- last heartbeat {} (this comment's edit time is authoritative)\n- expires {} unless renewed (lease {} s)\n",
                ts(meta.claimed_at),
                ts(meta.heartbeat_last),
                ts(lease::expires_at(
                    meta.heartbeat_last,
                    Duration::from_secs(meta.ttl_seconds)
                )),
                meta.ttl_seconds
            ));
            if let Some(job) = &meta.actions_job {
                out.push_str(&format!(
                    "- held by GitHub Actions {}: free as soon as that job completes\n",
                    job.describe()
                ));
            }
        }
        LockState::Released => {
            let at = meta.released_at.map(ts).unwrap_or_else(|| "-".into());
            let by = meta.released_by.as_deref().unwrap_or(&meta.worker_id);
            match &meta.takeover {
                Some(t) if !t.force => out.push_str(&format!(
                    "🔓 `{by}` released stale lock of `{}` (last heartbeat {}) at {at}: {}.\n",
                    t.worker_id,
                    ts(t.heartbeat),
                    match &t.completed_job {
                        Some(job) => format!("its {} had completed", job.describe()),
                        None => format!("its lease of {} s had run out", t.ttl_seconds),
                    }
                )),
                _ => out.push_str(&format!(
                    "🔓 **Released** by `{by}` at {at}. Held by `{}` on `{}` since {}.\n",
                    meta.worker_id,
                    meta.node_id,
                    ts(meta.claimed_at)
                )),
            }
        }
    }
    if let Some(t) = describe_task(&meta.task_info) {
        out.push_str(&format!("- task: {t}\n"));
    }
    if let Some(t) = &meta.takeover {
        let what = match (meta.state, t.force) {
            (LockState::Held, true) => "forcibly took over the lock",
            (LockState::Held, false) => "took over the stale lock",
            (LockState::Released, true) => "force-released the lock",
            (LockState::Released, false) => "released the stale lock",
        };
        let job = t
            .completed_job
            .as_ref()
            .map(|j| format!(", whose {} had completed", j.describe()))
            .unwrap_or_default();
        out.push_str(&format!(
            "- {what} of `{}` (comment {}, last heartbeat {}, lease {} s){job}\n",
            t.worker_id,
            t.comment_id,
            ts(t.heartbeat),
            t.ttl_seconds
        ));
    }
    // A backtick inside a string (a task type, say) would end the fenced block early and make our
    // own comment unreadable; JSON lets us spell it as an escape.
    let json = serde_json::to_string_pretty(&Envelope {
        sentinel: 1,
        lock: meta.clone(),
    })
    .expect("lock metadata always serializes")
    .replace('`', "\\u0060");
    out.push_str(&format!(
        "\n<details><summary>lock metadata</summary>\n\n{JSON_OPEN}\n{json}\n{JSON_CLOSE}\n</details>\n"
    ));
    out
}

/// Reads a comment body. Only the JSON block counts; the text around it is for humans.
pub fn parse(body: &str) -> Parsed {
    if !body.trim_start().starts_with(MARKER) {
        return Parsed::Other;
    }
    let Some(start) = body.find(JSON_OPEN) else {
        return Parsed::Malformed("no ```json block".into());
    };
    let rest = &body[start + JSON_OPEN.len()..];
    let Some(end) = rest.find(JSON_CLOSE) else {
        return Parsed::Malformed("unterminated ```json block".into());
    };
    match serde_json::from_str::<Envelope>(rest[..end].trim()) {
        Ok(env) if env.lock.worker_id.trim().is_empty() => {
            Parsed::Malformed("empty worker_id".into())
        }
        Ok(env) => Parsed::Lock(Box::new(env.lock)),
        Err(e) => Parsed::Malformed(format!("invalid lock JSON: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta() -> LockMeta {
        let t = DateTime::parse_from_rfc3339("2025-10-30T21:30:00Z")
            .unwrap()
            .with_timezone(&Utc);
        LockMeta {
            worker_id: "worker-local-1".into(),
            node_id: "node-abc123".into(),
            claimed_at: t,
            heartbeat_last: t,
            ttl_seconds: 300,
            state: LockState::Held,
            nonce: "n1".into(),
            task_info: TaskInfo {
                complexity: Some(5),
                estimated_duration: Some("45min".into()),
                task_type: Some("bug-fix".into()),
                priority: Some("high".into()),
                value: None,
            },
            takeover: None,
            released_at: None,
            released_by: None,
            after_release: None,
            actions_job: None,
        }
    }

    #[test]
    fn round_trips_and_reads_like_prose() {
        let m = meta();
        let body = render(&m);
        assert!(body.contains("Locked by `worker-local-1`"));
        assert!(body.contains("expires 2025-10-30T21:35:00Z"));
        assert!(body.contains("complexity 5"));
        assert_eq!(parse(&body), Parsed::Lock(Box::new(m)));
    }

    #[test]
    fn keeps_the_seed_field_names() {
        let body = render(&meta());
        for key in [
            "\"lock\"",
            "\"worker_id\"",
            "\"node_id\"",
            "\"claimed_at\"",
            "\"heartbeat_last\"",
            "\"task_info\"",
            "\"estimated_duration\"",
        ] {
            assert!(body.contains(key), "{key} missing");
        }
    }

    #[test]
    fn a_stale_lock_release_reads_as_one() {
        let mut m = meta();
        m.worker_id = "janitor".into();
        m.state = LockState::Released;
        m.released_at = Some(m.claimed_at);
        m.released_by = Some("janitor".into());
        m.takeover = Some(Takeover {
            comment_id: 42,
            worker_id: "w-7".into(),
            heartbeat: lease::before(m.claimed_at, Duration::from_secs(600)),
            ttl_seconds: 300,
            force: false,
            completed_job: None,
        });
        let body = render(&m);
        assert!(
            body.contains(
                "`janitor` released stale lock of `w-7` (last heartbeat 2025-10-30T21:20:00Z)"
            ),
            "{body}"
        );
        assert!(body.contains("- released the stale lock of `w-7` (comment 42"));
        assert_eq!(parse(&body), Parsed::Lock(Box::new(m)));
    }

    #[test]
    fn hand_edits_are_reported_not_trusted() {
        assert_eq!(parse("just a comment"), Parsed::Other);
        assert!(matches!(parse(MARKER), Parsed::Malformed(_)));
        let broken = render(&meta()).replace("\"worker_id\"", "\"wrker\"");
        assert!(matches!(parse(&broken), Parsed::Malformed(_)));
        let cut = format!("{MARKER}\n```json\n{{\"sentinel\":1");
        assert!(matches!(parse(&cut), Parsed::Malformed(_)));
        let empty = render(&meta()).replace("worker-local-1", " ");
        assert!(matches!(parse(&empty), Parsed::Malformed(_)));
    }

    #[test]
    fn a_claim_inside_actions_records_its_job_and_older_comments_read_as_before() {
        let mut m = meta();
        m.actions_job = ActionsJob::new("123", "2", "build", "GitHub Actions 7");
        assert!(m.actions_job.is_some());
        let body = render(&m);
        assert!(body.contains("\"actions_job\""), "{body}");
        assert!(
            body.contains("held by GitHub Actions job 'build' of run 123 attempt 2"),
            "{body}"
        );
        assert_eq!(parse(&body), Parsed::Lock(Box::new(m)));
        // The seed's format, written before jobs were recorded.
        let old = format!(
            "{MARKER}\n```json\n{}\n```",
            r#"{"sentinel":1,"lock":{"worker_id":"w","node_id":"n","claimed_at":"2025-10-30T21:30:00Z","heartbeat_last":"2025-10-30T21:35:00Z","ttl_seconds":300,"state":"held","nonce":"x"}}"#
        );
        match parse(&old) {
            Parsed::Lock(m) => assert_eq!((m.actions_job, m.worker_id.as_str()), (None, "w")),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn only_what_actions_sets_is_recorded() {
        let ok = ActionsJob::new(" 9876543210 ", "3", "deploy-prod_2", "my runner (eu)").unwrap();
        assert_eq!(
            ok.describe(),
            "job 'deploy-prod_2' of run 9876543210 attempt 3"
        );
        for (run, attempt, job, runner) in [
            ("", "1", "build", "r"),
            ("abc", "1", "build", "r"),
            ("0", "1", "build", "r"),
            ("-1", "1", "build", "r"),
            ("18446744073709551616", "1", "build", "r"),
            ("1", "0", "build", "r"),
            ("1", "4294967296", "build", "r"),
            ("1", "1", "", "r"),
            ("1", "1", "9lives", "r"),
            ("1", "1", "build job", "r"),
            ("1", "1", "build`", "r"),
            ("1", "1", "build", ""),
            ("1", "1", "build", "run\nner"),
        ] {
            assert_eq!(
                ActionsJob::new(run, attempt, job, runner),
                None,
                "{run} {attempt} {job:?} {runner:?}"
            );
        }
        let long = "x".repeat(MAX_NAME_LEN + 1);
        assert_eq!(ActionsJob::new("1", "1", &long, "r"), None);
        assert_eq!(ActionsJob::new("1", "1", "build", &long), None);
    }

    /// Anyone with write access can edit a lock comment: a job that is not what sentinel writes
    /// neither frees the lock (the comment still counts) nor judges it (the lease does).
    #[test]
    fn a_forged_or_malformed_job_is_ignored_and_the_lock_still_counts() {
        let with = |field: &str, job: &str| {
            let mut env = serde_json::to_value(Envelope {
                sentinel: 1,
                lock: meta(),
            })
            .unwrap();
            let job: serde_json::Value = serde_json::from_str(job).unwrap();
            if field == "takeover" {
                env["lock"]["takeover"] = serde_json::json!({
                    "comment_id": 1, "worker_id": "v", "heartbeat": "2025-10-30T21:30:00Z",
                    "ttl_seconds": 300, "force": false, "completed_job": job,
                });
            } else {
                env["lock"]["actions_job"] = job;
            }
            format!("{MARKER}\n```json\n{env}\n```")
        };
        let long = "x".repeat(MAX_NAME_LEN + 1);
        let bad = [
            r#""build""#.to_string(),
            "null".into(),
            "[]".into(),
            "{}".into(),
            r#"{"run_id":0,"run_attempt":1,"job":"build","runner_name":"r"}"#.into(),
            r#"{"run_id":-5,"run_attempt":1,"job":"build","runner_name":"r"}"#.into(),
            r#"{"run_id":1e3,"run_attempt":1,"job":"build","runner_name":"r"}"#.into(),
            r#"{"run_id":18446744073709551616,"run_attempt":1,"job":"build"}"#.into(),
            r#"{"run_id":"1","run_attempt":1,"job":"build","runner_name":"r"}"#.into(),
            r#"{"run_id":1,"run_attempt":0,"job":"build","runner_name":"r"}"#.into(),
            r#"{"run_id":1,"run_attempt":1,"job":"","runner_name":"r"}"#.into(),
            r#"{"run_id":1,"run_attempt":1,"job":"bu ild","runner_name":"r"}"#.into(),
            r#"{"run_id":1,"run_attempt":1,"job":"build\n","runner_name":"r"}"#.into(),
            r#"{"run_id":1,"run_attempt":1,"job":"build","runner_name":"r\u0007"}"#.into(),
            r#"{"run_id":1,"run_attempt":1,"job":"build","runner_name":" "}"#.into(),
            r#"{"run_id":1,"run_attempt":1,"job":"build","runner_name":7}"#.into(),
            format!(r#"{{"run_id":1,"run_attempt":1,"job":"{long}"}}"#),
            format!(r#"{{"run_id":1,"run_attempt":1,"job":"build","runner_name":"{long}"}}"#),
        ];
        for job in &bad {
            match parse(&with("actions_job", job)) {
                Parsed::Lock(m) => assert_eq!(m.actions_job, None, "{job}"),
                other => panic!("{job}: the lock must still count: {other:?}"),
            }
            match parse(&with("takeover", job)) {
                Parsed::Lock(m) => {
                    let t = m.takeover.expect("the take-over still counts");
                    assert_eq!(t.completed_job, None, "{job}");
                }
                other => panic!("{job}: the take-over must still count: {other:?}"),
            }
        }
        // Well-formed, with or without a runner.
        let good = r#"{"run_id":1,"run_attempt":2,"job":"build"}"#;
        match parse(&with("actions_job", good)) {
            Parsed::Lock(m) => assert_eq!(
                m.actions_job.unwrap().describe(),
                "job 'build' of run 1 attempt 2"
            ),
            other => panic!("{other:?}"),
        }
    }

    fn text() -> impl proptest::strategy::Strategy<Value = String> {
        proptest::string::string_regex("(.|`|\n){0,40}").unwrap()
    }

    proptest::proptest! {
        #[test]
        fn any_body_parses_without_panic(body in ".*") {
            let _ = parse(&body);
            let _ = parse(&format!("{MARKER}\n```json\n{body}\n```"));
        }

        /// Whatever a worker puts in its ids and task info, its own comment reads back as written.
        #[test]
        fn any_lock_round_trips(
            worker in text(), node in text(), task_type in proptest::option::of(text()),
            priority in proptest::option::of(text()), ttl in proptest::num::u64::ANY,
            secs in 0i64..4_000_000_000,
            job in proptest::option::of((1u64.., 1u32.., "[a-z_][a-z0-9_-]{0,20}", "[^\\p{Cc}]{1,30}")),
        ) {
            proptest::prop_assume!(!worker.trim().is_empty());
            let actions_job = job.and_then(|(run, attempt, key, runner)| {
                ActionsJob::new(&run.to_string(), &attempt.to_string(), &key, &runner)
            });
            let t = DateTime::from_timestamp(secs, 0).unwrap();
            let m = LockMeta {
                worker_id: worker,
                node_id: node,
                claimed_at: t,
                heartbeat_last: t,
                ttl_seconds: ttl,
                state: LockState::Held,
                nonce: "n".into(),
                task_info: TaskInfo { task_type, priority, ..TaskInfo::default() },
                takeover: None,
                released_at: None,
                released_by: None,
                after_release: None,
                actions_job,
            };
            proptest::prop_assert_eq!(parse(&render(&m)), Parsed::Lock(Box::new(m)));
        }
    }
}
