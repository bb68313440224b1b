//! The repository's lock history, read back from its lock comments (`metrics --repo-wide`).
//!
//! Each grant, release and take-over is its own comment, so the comment thread is the history of
//! every worker on every machine. What the comments no longer show cannot be counted: losing
//! claims are deleted by their writers (rightly: they were never grants), and a take-over deletes
//! its victim's comment, whose grant is then counted from the take-over's record of it. A victim
//! that was itself a take-over takes its own victim's record with it, so chains of take-overs
//! undercount.

use std::collections::HashSet;
use std::time::Duration;

use chrono::{DateTime, Utc};
use octocrab::models::issues::Comment;
use serde::Serialize;

use super::GithubBackend;
use super::comment::{self, LockMeta, LockState, Parsed};
use super::index::Listed;
use super::resolve::Record;
use sentinel_core::error::Result;
use sentinel_core::lease;

/// Lock activity of a repository within a window.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RepoHistory {
    /// The window's start, on GitHub's clock; it ends now.
    pub since: DateTime<Utc>,
    /// Grants whose lock comment was written or renewed in the window.
    pub acquisitions: u64,
    /// Lock comments in the window marked released (by the holder, a force or the janitor).
    pub releases: u64,
    /// Take-overs of a lock whose lease had run out or whose Actions job had completed
    /// (`steal-stale`).
    pub stale_takeovers: u64,
    /// Take-overs of a live lock (`force`).
    pub forced_takeovers: u64,
    /// Issues with lock activity in the window.
    pub issues: u64,
}

/// The comment as the index keeps it, if it is a well-formed lock comment on an issue.
fn listed_lock(c: Comment) -> Option<Listed> {
    let Parsed::Lock(meta) = comment::parse(c.body.as_deref().unwrap_or_default()) else {
        return None;
    };
    let issue = c
        .issue_url
        .as_ref()?
        .path_segments()?
        .next_back()?
        .parse()
        .ok()?;
    Some(Listed {
        issue,
        id: c.id.into_inner(),
        by_role: super::by_role(&c),
        author: c.user.login,
        created_at: c.created_at,
        updated_at: c.updated_at.unwrap_or(c.created_at),
        meta: *meta,
    })
}

/// A release of a lock whose comment the releasing machine does not know replaces that comment
/// with a notice written released in one go (its heartbeat and release are the same instant). It
/// stands for the replaced grant, not for a grant or take-over of its own.
fn is_release_notice(meta: &LockMeta) -> bool {
    meta.state == LockState::Released
        && meta.takeover.is_some()
        && meta.released_at == Some(meta.heartbeat_last)
}

impl GithubBackend {
    /// The trusted lock comments of the whole repository updated within `window` (GitHub's
    /// `since` filters on the last update), with their issue numbers and the window's start.
    pub(super) async fn repo_lock_comments(
        &self,
        window: Duration,
    ) -> Result<(DateTime<Utc>, Vec<(u64, Record)>)> {
        self.ensure_login().await?;
        // A window reaching before GitHub existed means "all of it".
        let since = lease::before(self.now(), window).max(DateTime::UNIX_EPOCH);
        Ok((since, self.repo_lock_comments_since(since).await?))
    }

    /// The trusted lock comments of the whole repository updated at or after `since`, each with
    /// its issue number: the one repository-wide listing behind `status`, the janitor, the work
    /// queue and `metrics --repo-wide`. Only what changed since this host's last listing is
    /// listed; the rest comes from its index (see `index`).
    pub(super) async fn repo_lock_comments_since(
        &self,
        since: DateTime<Utc>,
    ) -> Result<Vec<(u64, Record)>> {
        let key = format!("{}|{}", self.client.api_url(), self.repo);
        let plan = self.index.plan(&key, since, self.now())?;
        let (listed, listed_at) = self.list_lock_comments(plan.from()).await?;
        let all = self.index.merge(&key, plan, listed, listed_at)?;
        Ok(all
            .into_iter()
            .filter(|l| l.updated_at >= since && self.is_trusted_author(&l.author, l.by_role))
            .map(|l| {
                let record = Record {
                    id: l.id,
                    author: l.author,
                    created_at: l.created_at,
                    updated_at: l.updated_at,
                    meta: l.meta,
                };
                (l.issue, record)
            })
            .collect())
    }

    /// Every well-formed lock comment of the repository updated at or after `from`, trusted or
    /// not, and GitHub's clock when the listing started.
    async fn list_lock_comments(
        &self,
        from: DateTime<Utc>,
    ) -> Result<(Vec<Listed>, DateTime<Utc>)> {
        let mut url = format!(
            "/repos/{}/{}/issues/comments?sort=updated&direction=desc&per_page=100&since={}",
            self.repo.owner,
            self.repo.name,
            lease::rfc3339(from)
        );
        let mut listed = Vec::new();
        let mut started = None;
        loop {
            let resp = self.client.get(&url).await?;
            if !resp.status.is_success() {
                return Err(self.repo_error(&resp));
            }
            // Whatever is updated after the first page was served is in the next listing.
            started.get_or_insert_with(|| self.client.last_date().unwrap_or_else(Utc::now));
            listed.extend(
                resp.json::<Vec<Comment>>()?
                    .into_iter()
                    .filter_map(listed_lock),
            );
            match resp.next_page() {
                Some(next) => url = next,
                None => break,
            }
        }
        Ok((listed, started.unwrap_or_else(Utc::now)))
    }

    /// Grants, releases and take-overs of the whole repository within `window`.
    pub async fn history(&self, window: Duration) -> Result<RepoHistory> {
        let (since, found) = self.repo_lock_comments(window).await?;
        let listed: HashSet<u64> = found.iter().map(|(_, r)| r.id).collect();
        let mut h = RepoHistory {
            since,
            acquisitions: 0,
            releases: 0,
            stale_takeovers: 0,
            forced_takeovers: 0,
            issues: found
                .iter()
                .map(|(issue, _)| *issue)
                .collect::<HashSet<_>>()
                .len() as u64,
        };
        for (_, r) in &found {
            let notice = is_release_notice(&r.meta);
            if !notice {
                h.acquisitions += 1;
            }
            if r.meta.state == LockState::Released {
                h.releases += 1;
            }
            let Some(t) = &r.meta.takeover else {
                continue;
            };
            // The victim's comment is gone, deleted by this take-over; had it survived, its last
            // heartbeat in the window would have listed it.
            if !listed.contains(&t.comment_id) && t.heartbeat >= since {
                h.acquisitions += 1;
            }
            match (notice, t.force) {
                (true, _) => {}
                (false, true) => h.forced_takeovers += 1,
                (false, false) => h.stale_takeovers += 1,
            }
        }
        Ok(h)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::comment::Takeover;

    fn meta(state: LockState, takeover: bool) -> LockMeta {
        let t = Utc::now();
        LockMeta {
            worker_id: "w".into(),
            node_id: "n".into(),
            claimed_at: t,
            heartbeat_last: t,
            ttl_seconds: 60,
            state,
            nonce: "1".into(),
            task_info: Default::default(),
            takeover: takeover.then(|| Takeover {
                comment_id: 1,
                worker_id: "v".into(),
                heartbeat: t,
                ttl_seconds: 60,
                force: true,
                completed_job: None,
            }),
            released_at: None,
            released_by: None,
            after_release: None,
            actions_job: None,
        }
    }

    #[test]
    fn only_a_take_over_written_released_is_a_release_notice() {
        let mut notice = meta(LockState::Released, true);
        notice.released_at = Some(notice.heartbeat_last);
        assert!(is_release_notice(&notice));
        // A forced take-over released later by its holder.
        let mut released = meta(LockState::Released, true);
        released.released_at = Some(released.heartbeat_last + chrono::Duration::milliseconds(1));
        assert!(!is_release_notice(&released));
        let mut plain = meta(LockState::Released, false);
        plain.released_at = Some(plain.heartbeat_last);
        assert!(!is_release_notice(&plain));
        assert!(!is_release_notice(&meta(LockState::Held, true)));
    }
}
