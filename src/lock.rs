//! Backend-neutral vocabulary of the lock protocol: who claims, what a grant is, how a holder looks.
//!
//! The GitHub, local and (later) server backends all speak these types, so the strategy loop and the
//! commands never care which backend answered.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::time::Duration;

use crate::error::{Error, Result};

/// Default lease: a lock whose last heartbeat is older than this is stale (SPEC §2, 5 min).
pub const DEFAULT_TTL: Duration = Duration::from_secs(300);
/// Longest lock name accepted by the local and server backends.
pub const MAX_NAME_LEN: usize = 256;

/// Optional description of the work, carried in the lock metadata for humans and schedulers.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskInfo {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub complexity: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub estimated_duration: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<String>,
}

impl TaskInfo {
    pub fn is_empty(&self) -> bool {
        self == &TaskInfo::default()
    }
}

/// The identity that holds a lock. Ownership is the worker id, never a GitHub login (SPEC §3.2).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claimant {
    pub worker_id: String,
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

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcquireRequest {
    pub claimant: Claimant,
    pub ttl: Duration,
    pub takeover: Takeover,
    pub task_info: TaskInfo,
}

/// A lock as every reader sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    pub worker_id: String,
    pub node_id: String,
    pub fencing_token: u64,
    pub claimed_at: DateTime<Utc>,
    pub heartbeat_last: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    /// Heartbeat older than the TTL, judged on the backend's clock.
    pub stale: bool,
    #[serde(default, skip_serializing_if = "TaskInfo::is_empty")]
    pub task_info: TaskInfo,
}

/// A successful acquisition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    pub holder: Holder,
    /// The claimant already held this lock and took it up again (same fencing token).
    pub adopted: bool,
    /// The holder that was taken over by `steal-stale` or `force`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub took_over: Option<Holder>,
}

/// Result of a single acquisition attempt; the strategy loop decides what to do with `Held`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attempt {
    Granted(Grant),
    Held(Holder),
}

/// Result of a release.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Released {
    /// False when the lock was already free (release is idempotent).
    pub was_held: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<Holder>,
}

/// Validates a lock name for the local and server backends.
pub fn validate_name(name: &str) -> Result<()> {
    if name.is_empty() {
        return Err(Error::usage("lock name must not be empty"));
    }
    if name.chars().count() > MAX_NAME_LEN {
        return Err(Error::usage(format!(
            "lock name is longer than {MAX_NAME_LEN} characters"
        )));
    }
    if let Some(c) = name.chars().find(|c| c.is_control()) {
        return Err(Error::usage(format!(
            "lock name contains a non-printable character ({:?})",
            c
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        assert!(validate_name("build-42").is_ok());
        assert!(validate_name("résumé build ✓").is_ok());
        assert!(validate_name("").is_err());
        assert!(validate_name("a\nb").is_err());
        assert!(validate_name(&"x".repeat(256)).is_ok());
        assert!(validate_name(&"x".repeat(257)).is_err());
    }
}
