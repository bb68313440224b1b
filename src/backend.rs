//! One face for every backend: the commands name a lock and an operation, this picks the
//! backend's way of doing it and translates lock names (issue numbers for GitHub).

use std::time::Duration;

use serde::Serialize;

use crate::error::{Error, Result};
use crate::github::{GithubBackend, IssueStatus};
use crate::local::LocalBackend;
use crate::lock::{AcquireRequest, Attempt, Holder, Released, validate_name};

pub enum Backend {
    Local(LocalBackend),
    Github(Box<GithubBackend>),
}

/// A lock as the backend names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Issue(u64),
    Name(String),
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Issue(n) => write!(f, "#{n}"),
            Target::Name(n) => f.write_str(n),
        }
    }
}

/// What `status LOCK` reports.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum Status {
    Issue(IssueStatus),
    Named {
        name: String,
        holder: Option<Holder>,
    },
}

impl Status {
    pub fn holder(&self) -> Option<&Holder> {
        match self {
            Status::Issue(s) => s.holder.as_ref(),
            Status::Named { holder, .. } => holder.as_ref(),
        }
    }
}

impl Backend {
    pub fn name(&self) -> &'static str {
        match self {
            Backend::Local(_) => "local",
            Backend::Github(_) => "github",
        }
    }

    /// Where the lock lives, for messages: `owner/repo#12` or the data directory's backend.
    pub fn describe(&self, t: &Target) -> String {
        match (self, t) {
            (Backend::Github(g), Target::Issue(n)) => format!("{}#{n}", g.repo()),
            (_, t) => t.to_string(),
        }
    }

    /// Parses a lock argument: an issue number for GitHub, a name otherwise.
    pub fn target(&self, raw: &str) -> Result<Target> {
        match self {
            Backend::Github(_) => {
                let digits = raw.trim().trim_start_matches('#');
                match digits.parse::<u64>() {
                    Ok(n) if n > 0 && n <= u32::MAX as u64 => Ok(Target::Issue(n)),
                    _ => Err(Error::usage(format!(
                        "invalid issue number {raw:?}: the github backend locks issues by number, e.g. 123"
                    ))),
                }
            }
            Backend::Local(_) => {
                validate_name(raw)?;
                Ok(Target::Name(raw.to_string()))
            }
        }
    }

    pub async fn try_acquire(
        &self,
        t: &Target,
        req: &AcquireRequest,
        attempt: u32,
    ) -> Result<Attempt> {
        match (self, t) {
            (Backend::Github(g), Target::Issue(n)) => g.try_acquire(*n, req, attempt > 0).await,
            (Backend::Local(l), Target::Name(name)) => {
                l.try_acquire(name, &req.claimant, req.ttl, req.takeover, &req.task_info)
            }
            _ => Err(mismatch()),
        }
    }

    pub async fn release(&self, t: &Target, worker_id: &str, force: bool) -> Result<Released> {
        match (self, t) {
            (Backend::Github(g), Target::Issue(n)) => g.release(*n, worker_id, force).await,
            (Backend::Local(l), Target::Name(name)) => l.release(name, worker_id, force),
            _ => Err(mismatch()),
        }
    }

    pub async fn renew(&self, t: &Target, worker_id: &str) -> Result<Holder> {
        match (self, t) {
            (Backend::Github(g), Target::Issue(n)) => g.renew(*n, worker_id).await,
            (Backend::Local(l), Target::Name(name)) => l.renew(name, worker_id),
            _ => Err(mismatch()),
        }
    }

    pub async fn status(&self, t: &Target) -> Result<Status> {
        match (self, t) {
            (Backend::Github(g), Target::Issue(n)) => Ok(Status::Issue(g.status(*n).await?)),
            (Backend::Local(l), Target::Name(name)) => Ok(Status::Named {
                name: name.clone(),
                holder: l.status(name)?,
            }),
            _ => Err(mismatch()),
        }
    }

    /// Every held lock, by display name.
    pub async fn list(&self, window: Duration) -> Result<Vec<(String, Holder)>> {
        match self {
            Backend::Github(g) => Ok(g
                .list(window)
                .await?
                .into_iter()
                .map(|(n, h)| (format!("#{n}"), h))
                .collect()),
            Backend::Local(l) => l.list(),
        }
    }
}

fn mismatch() -> Error {
    Error::Unexpected("lock name does not fit the backend".into())
}
