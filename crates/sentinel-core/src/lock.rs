//! Backend-neutral vocabulary of the lock protocol: who claims, what a grant is, how a holder looks,
//! and the request types every [`LockBackend`](crate::backend::LockBackend) operation takes.
//!
//! Every backend (GitHub, local, server, Redis, PostgreSQL) speaks these types, so the strategy
//! loop and the commands never care which backend answered.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::time::Duration;

use crate::error::{Error, Result};

/// Longest lock name, worker id or node id, in characters.
pub const MAX_NAME_LEN: usize = 256;

/// A lock as a backend names it, parsed and validated by that backend
/// ([`LockBackend::parse_lock`](crate::backend::LockBackend::parse_lock)).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(untagged)]
pub enum LockId {
    /// A GitHub issue number.
    Issue(u64),
    /// A named lock (local host, coordinator).
    Name(String),
}

impl std::fmt::Display for LockId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LockId::Issue(n) => write!(f, "#{n}"),
            LockId::Name(n) => f.write_str(n),
        }
    }
}

impl LockId {
    /// What `$SENTINEL_LOCK` and JSON `lock` fields carry: the bare number or the name.
    pub fn bare(&self) -> String {
        match self {
            LockId::Issue(n) => n.to_string(),
            LockId::Name(n) => n.clone(),
        }
    }
}

/// Optional description of the work, carried in the lock metadata for humans and schedulers.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
/// Sentinel stores and shows these fields but never interprets them.
pub struct TaskInfo {
    /// A size estimate on the team's own scale (`5`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub complexity: Option<u32>,
    /// Expected time, free text (`45min`); not a lease, the TTL is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub estimated_duration: Option<String>,
    /// Kind of work, free text (`bug-fix`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_type: Option<String>,
    /// Free text (`high`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<String>,
    /// What the holder publishes with its hold for others to read: an election leader's value
    /// (`elect --value`), such as the address it serves on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
}

/// Most bytes a task info may take as JSON. It travels with every lock and every status answer
/// (a page of 1,000 locks, a snapshot of 100,000), so one client must not make it large.
pub const MAX_TASK_INFO_BYTES: usize = 4096;

/// Most characters of a [`TaskInfo::value`].
pub const MAX_VALUE_CHARS: usize = 1024;

/// Refuses a published value (`elect --value`, a proclamation) that people could not read on
/// one line: longer than [`MAX_VALUE_CHARS`], or with control characters.
pub fn validate_value(value: &str) -> Result<()> {
    if value.chars().count() > MAX_VALUE_CHARS || value.chars().any(char::is_control) {
        return Err(Error::usage(format!(
            "invalid value: at most {MAX_VALUE_CHARS} characters, no control characters"
        )));
    }
    Ok(())
}

impl TaskInfo {
    /// No field set: nothing to store or show.
    pub fn is_empty(&self) -> bool {
        self == &TaskInfo::default()
    }

    /// Its size as JSON, in bytes: what [`MAX_TASK_INFO_BYTES`] bounds.
    pub fn json_len(&self) -> usize {
        usize::try_from(crate::kv::json_len(self)).unwrap_or(usize::MAX)
    }
}

/// The identity that holds a lock. Ownership is the worker id, never a GitHub login: bots and
/// shared tokens run many workers under one login (see ARCHITECTURE.md, "Invariants").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claimant {
    /// Owns the lock: releases and renewals must name the same id. Distinct per concurrent
    /// worker ([`validate_label`] rules).
    pub worker_id: String,
    /// The machine the worker runs on (the host name by default). Informational: shown to
    /// people, never compared for ownership.
    pub node_id: String,
}

/// What one acquisition attempt may take over when the lock is already held.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Takeover {
    /// Only a free lock (or our own, which is re-adopted).
    None,
    /// Also a lock whose heartbeat is older than its TTL.
    Stale,
    /// Any lock, live or not.
    Any,
}

/// One acquisition attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcquireRequest {
    /// The lock, as the backend parsed it.
    pub lock: LockId,
    /// Who will hold it.
    pub claimant: Claimant,
    /// The lease: the lock goes stale this long after the last heartbeat. Check user input with
    /// [`lease::validate_ttl`](crate::lease::validate_ttl).
    pub ttl: Duration,
    /// Which current holder the attempt may take the lock from.
    pub takeover: Takeover,
    /// Stored with the grant for people and schedulers.
    pub task_info: TaskInfo,
    /// The claimant may take up its own live lock again (same fencing token). Only a worker id the
    /// user chose says "this is the same worker"; a default id is shared by every process a shell
    /// fans out, and re-adoption would turn into shared ownership.
    pub readopt: bool,
    /// 0 for the first attempt of a claim; later attempts may read before writing.
    pub attempt: u32,
    /// How long this claim goes on waiting if the attempt is refused. A backend that queues
    /// waiters itself (the coordinator) holds the attempt up to this long until the lock is free.
    /// For a polling backend, whose waiting is the strategy loop's, it is the longest pause
    /// before the claim's next attempt (zero on its last): the local, Redis and PostgreSQL
    /// backends keep a refused claim's reservation of a shared lock or semaphore that long
    /// ([`reservation_ms`](crate::table::reservation_ms)). Zero: no more attempts.
    pub wait: Duration,
    /// An exclusive lock, a shared hold, or permits of a semaphore. A backend that holds one
    /// holder per name refuses the others ([`LockBackend::holds_groups`]).
    ///
    /// [`LockBackend::holds_groups`]: crate::backend::LockBackend::holds_groups
    pub kind: HoldKind,
}

/// What a claim takes of a name: the whole of it, a share of it beside other readers, or some
/// permits of a semaphore. Every hold, whatever its kind, has its own lease and fencing token.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HoldKind {
    /// One holder, alone (`claim NAME`).
    #[default]
    Exclusive,
    /// A read hold, with other shared holds and never with an exclusive one (`claim --shared`).
    Shared,
    /// `permits` of a semaphore that lets `limit` permits be held at once (`claim --limit`).
    Semaphore {
        /// Most permits held at once; every claim of the semaphore must give the same.
        limit: u32,
        /// What this hold takes, 1 to `limit`.
        permits: u32,
    },
}

impl HoldKind {
    /// `exclusive`, `shared` or `semaphore`, as JSON and messages name the kinds.
    pub fn name(&self) -> &'static str {
        match self {
            HoldKind::Exclusive => "exclusive",
            HoldKind::Shared => "shared",
            HoldKind::Semaphore { .. } => "semaphore",
        }
    }

    /// A whole lock, the default: how a command that names no kind is stored.
    pub fn is_exclusive(&self) -> bool {
        *self == HoldKind::Exclusive
    }

    /// Refuses (exit 2) a shared hold or semaphore on `backend`, which holds one holder per
    /// name: taking it as an exclusive lock instead would give readers or permit holders a
    /// lock they do not expect.
    pub fn exclusive_only(&self, backend: &str) -> Result<()> {
        match self {
            HoldKind::Exclusive => Ok(()),
            _ => Err(Error::usage(format!(
                "shared holds (--shared) and semaphores (--limit) need the coordinator \
                 (--server), local, Redis or PostgreSQL backend; the {backend} backend has one \
                 holder per lock"
            ))),
        }
    }
}

/// Give up a lock: ours, or anyone's with `force`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReleaseRequest {
    /// The lock, as the backend parsed it.
    pub lock: LockId,
    /// Who releases: must be the holder, or the release fails with
    /// [`Error::NotOwner`] (unless `force`).
    pub worker_id: String,
    /// Release whoever holds the lock.
    pub force: bool,
    /// The grant being given up, when the caller knows it: the release then applies only while
    /// the lock still carries this fencing token, so a holder whose lease ran out cannot release
    /// the grant that followed it, even one made under the same worker id. Ignored with `force`.
    pub fencing_token: Option<u64>,
}

/// Renew our lease (a heartbeat).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenewRequest {
    /// The lock, as the backend parsed it.
    pub lock: LockId,
    /// Who renews: must be the holder.
    pub worker_id: String,
    /// The grant being kept, when the caller knows it: a lock granted again since (a new fencing
    /// token) is lost to this caller even under the same worker id.
    pub fencing_token: Option<u64>,
    /// A new lease length, counted from this renewal (extending or shortening the lock); `None`
    /// keeps the lock's TTL.
    pub ttl: Option<Duration>,
}

/// Release a lock only if its holder's lease has run out: the janitor's release.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReleaseStaleRequest {
    /// The lock, as the backend parsed it.
    pub lock: LockId,
    /// Who releases, for the record the backend leaves (the GitHub release notice).
    pub janitor: Claimant,
    /// The stale holder the caller saw (from `list`), which spares a backend that must read
    /// first one read; its own verification still decides.
    pub seen: Option<Holder>,
}

/// What a stale-lock release did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StaleRelease {
    /// The holder's lease had run out and the lock is free now; the former holder.
    Released(Holder),
    /// Someone holds the lock and it was not released: the holder is live (it renewed, or a
    /// new worker took the lock over in the meantime), or it lost a race to another release.
    Kept(Holder),
    /// Nobody held the lock.
    Free,
}

/// Claim the next free issue of the work queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NextRequest {
    /// The issue must have every one of these labels.
    pub labels: Vec<String>,
    /// The issue must have none of these labels.
    pub exclude_labels: Vec<String>,
    /// Never re-adopts: a worker that keeps its locks and asks again gets a new issue.
    pub claimant: Claimant,
    /// The lease of the grant, as in [`AcquireRequest::ttl`].
    pub ttl: Duration,
    /// Stored with the grant.
    pub task_info: TaskInfo,
}

/// List every held lock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListRequest {
    /// How far back a backend that must search for locks (GitHub) looks for lock activity.
    pub since: Duration,
}

/// A lock as every reader sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    /// The owner ([`Claimant::worker_id`]).
    pub worker_id: String,
    /// Where the owner runs ([`Claimant::node_id`]).
    pub node_id: String,
    /// Names this grant: every later grant of the same lock (a new claim, a take-over) gets a
    /// larger one; a re-adoption and renewals keep it. Hand it to the resource the lock protects
    /// so it can refuse writes from an older grant.
    pub fencing_token: u64,
    /// When this grant was made, on the backend's clock; kept across renewals and re-adoption.
    pub claimed_at: DateTime<Utc>,
    /// The last renewal (or the grant), on the backend's clock.
    pub heartbeat_last: DateTime<Utc>,
    /// `heartbeat_last` + TTL: from then on the lock is stale. A holder should count on less
    /// (see [`lease`](crate::lease)): the backend's clock and the network add skew.
    pub expires_at: DateTime<Utc>,
    /// Heartbeat older than the TTL, judged on the backend's clock; or, when `liveness` says so,
    /// judged by what the holder's own process is doing instead.
    pub stale: bool,
    /// What the holder said about its work when it claimed.
    #[serde(default, skip_serializing_if = "TaskInfo::is_empty")]
    pub task_info: TaskInfo,
    /// Why the lock is live or stale when the lease did not decide: the GitHub backend asks
    /// Actions about the job that holds it (`job 'build' of run 123 attempt 1 completed
    /// (failure)`). `None` when the lease alone decided, which is every other backend.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub liveness: Option<String>,
}

impl Holder {
    /// `held` or `stale`, followed by why when the lease did not decide (`stale: job 'build' of
    /// run 123 attempt 1 completed (failure)`): how `status` shows the holder's state.
    pub fn state(&self) -> String {
        let word = if self.stale { "stale" } else { "held" };
        match &self.liveness {
            Some(why) => format!("{word}: {why}"),
            None => word.to_string(),
        }
    }
}

/// A successful acquisition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    /// The claimant as the lock's holder now, with the grant's fencing token and lease.
    pub holder: Holder,
    /// The claimant already held this lock and took it up again (same fencing token).
    pub adopted: bool,
    /// The holder that was taken over by `steal-stale` or `force`. Boxed: a take-over is rare,
    /// and every [`Attempt`] would otherwise carry room for a second holder.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub took_over: Option<Box<Holder>>,
}

/// Result of a single acquisition attempt; the strategy loop decides what to do with `Held`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attempt {
    /// The claimant holds the lock now.
    Granted(Grant),
    /// Someone else holds it and this attempt could not take it over.
    Held(Holder),
}

/// Result of a release.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Released {
    /// False when the lock was already free (release is idempotent).
    pub was_held: bool,
    /// The holder the release ended (`None` when the lock was free).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<Holder>,
}

/// Characters that print as nothing (or as nothing visible) but make two names differ: format
/// controls, zero-width and bidirectional marks, fillers, variation selectors and tag characters.
/// Two lock names that look identical in `status` must be the same lock.
fn is_invisible(c: char) -> bool {
    matches!(c,
        '\u{00AD}' | '\u{034F}' | '\u{061C}' | '\u{115F}' | '\u{1160}' | '\u{17B4}' | '\u{17B5}'
        | '\u{180B}'..='\u{180F}'
        | '\u{200B}'..='\u{200F}'
        | '\u{202A}'..='\u{202E}'
        | '\u{2060}'..='\u{206F}'
        | '\u{3164}' | '\u{FEFF}' | '\u{FFA0}'
        | '\u{FE00}'..='\u{FE0F}'
        | '\u{FFF0}'..='\u{FFFB}'
        | '\u{1D173}'..='\u{1D17A}'
        | '\u{E0000}'..='\u{E0FFF}')
}

/// Validates a name people will read and compare: a lock name, a worker id, a node id.
///
/// 1 to [`MAX_NAME_LEN`] characters (characters, not bytes, so every script gets the same room),
/// no control or invisible characters, no whitespace other than inner plain spaces: two names
/// that look the same are the same.
pub fn validate_label(what: &str, s: &str) -> Result<()> {
    let bad = |why: String| {
        Err(Error::usage(format!(
            "invalid {what} {s:?}: {why}; use 1 to {MAX_NAME_LEN} visible characters"
        )))
    };
    if s.is_empty() {
        return bad("it is empty".into());
    }
    if s.chars().count() > MAX_NAME_LEN {
        return bad(format!("it is longer than {MAX_NAME_LEN} characters"));
    }
    if let Some(c) = s.chars().find(|c| c.is_control()) {
        return bad(format!("it contains the control character {:?}", c));
    }
    if let Some(c) = s.chars().find(|&c| is_invisible(c)) {
        return bad(format!(
            "it contains the invisible character U+{:04X}",
            c as u32
        ));
    }
    if let Some(c) = s.chars().find(|&c| c.is_whitespace() && c != ' ') {
        return bad(format!(
            "it contains the whitespace character U+{:04X} (only plain spaces are allowed)",
            c as u32
        ));
    }
    if s.starts_with(' ') || s.ends_with(' ') {
        return bad("it starts or ends with a space".into());
    }
    Ok(())
}

/// Validates a lock name for the local and server backends.
pub fn validate_name(name: &str) -> Result<()> {
    validate_label("lock name", name)
}

/// What a claim got: the grant, and how (the strategy loop's attempts, or the work queue's),
/// for output and metrics.
#[derive(Debug, Clone)]
pub struct Claimed {
    /// The lease granted.
    pub grant: Grant,
    /// Attempts made, the successful one included (1 when the first was granted).
    pub attempts: u32,
    /// When the winning attempt began, on the monotonic clock. The backend stamped the lease
    /// after this, so a holder that counts the lease from here never overestimates it.
    pub attempt_started: tokio::time::Instant,
}

/// This host's name with control characters removed (lossy if it is not UTF-8): the default
/// node id.
pub fn hostname() -> String {
    gethostname::gethostname()
        .to_string_lossy()
        .into_owned()
        .chars()
        .filter(|c| !c.is_control())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn names_are_checked() {
        assert!(validate_name("build-42").is_ok());
        assert!(validate_name("résumé build ✓").is_ok());
        assert!(validate_name("").is_err());
        assert!(validate_name("a\nb").is_err());
        assert!(validate_name(&"x".repeat(256)).is_ok());
        assert!(validate_name(&"x".repeat(257)).is_err());
        // Characters, not bytes: 256 three-byte characters fit.
        assert!(validate_name(&"✓".repeat(256)).is_ok());
    }

    #[test]
    fn look_alikes_are_refused() {
        for bad in [
            " ",
            "   ",
            " job",
            "job ",
            "jo\u{200B}b",
            "job\u{FEFF}",
            "\u{00A0}job",
            "a\u{2003}b",
            "a\u{202E}b",
            "\u{E0041}",
        ] {
            let e = validate_name(bad).unwrap_err();
            assert!(e.to_string().contains("invalid lock name"), "{bad:?}: {e}");
        }
        assert!(validate_name("build 42").is_ok());
    }

    proptest! {
        #[test]
        fn any_string_is_accepted_or_refused_without_panic(s in any::<String>()) {
            if validate_name(&s).is_ok() {
                prop_assert!(!s.trim().is_empty());
                prop_assert!(s.chars().count() <= MAX_NAME_LEN);
                prop_assert!(!s.chars().any(|c| c.is_control() || is_invisible(c)));
            }
        }
    }
}
