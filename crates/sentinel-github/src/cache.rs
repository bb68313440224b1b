//! What this host remembers between short-lived sentinel processes about its GitHub locks.
//!
//! Knowing our own lock comment's id and body lets `heartbeat` renew in one request and `release`
//! finish in two (ARCHITECTURE.md, "Request budgets") without listing the issue's comments first.
//! The cache is only a hint:
//! every write it drives is checked against GitHub's answer (404 = the lock is gone), and a missing
//! entry just costs one read. It never holds a token — tokens are keyed by a SHA-256 fingerprint.

use std::collections::BTreeMap;
use std::path::Path;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::comment::LockMeta;
use sentinel_core::error::Result;
use sentinel_core::statefile::{Persisted, StateFile};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OwnLock {
    pub comment_id: u64,
    pub meta: LockMeta,
    /// GitHub's `updated_at` after our last successful write: the last heartbeat.
    pub updated_at: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
    /// The login we assigned, if GitHub kept the assignment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assigned: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct CacheData {
    /// token fingerprint -> login (or "" when GitHub will not tell, e.g. Actions tokens).
    #[serde(default)]
    logins: BTreeMap<String, String>,
    /// "api|owner/repo#issue|worker" -> our lock there.
    #[serde(default)]
    locks: BTreeMap<String, OwnLock>,
}

impl Persisted for CacheData {
    const RESET_COST: &'static str =
        "sentinel then re-learns its GitHub login and lock comment ids with one extra read each";
}

pub struct Cache {
    file: StateFile,
}

pub fn fingerprint(api_url: &str, token: &str) -> String {
    let digest = Sha256::digest(format!("{api_url}\n{token}").as_bytes());
    digest.iter().take(12).map(|b| format!("{b:02x}")).collect()
}

pub fn lock_key(api_url: &str, repo: &str, issue: u64, worker_id: &str) -> String {
    format!("{api_url}|{repo}#{issue}|{worker_id}")
}

impl Cache {
    pub fn open(data_dir: &Path) -> Result<Cache> {
        Ok(Cache {
            file: StateFile::new(data_dir, "github-cache")?,
        })
    }

    pub fn login(&self, fingerprint: &str) -> Result<Option<String>> {
        let data: CacheData = self.file.read()?;
        Ok(data.logins.get(fingerprint).cloned())
    }

    pub fn set_login(&self, fingerprint: &str, login: &str) -> Result<()> {
        self.file.update(|d: &mut CacheData| {
            d.logins.insert(fingerprint.to_string(), login.to_string());
        })
    }

    pub fn own_lock(&self, key: &str) -> Result<Option<OwnLock>> {
        let data: CacheData = self.file.read()?;
        Ok(data.locks.get(key).cloned())
    }

    pub fn set_own_lock(&self, key: &str, lock: Option<OwnLock>) -> Result<()> {
        self.file.update(|d: &mut CacheData| match lock {
            Some(l) => {
                d.locks.insert(key.to_string(), l);
            }
            None => {
                d.locks.remove(key);
            }
        })
    }
}
