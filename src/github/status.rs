//! Reading who holds what: one issue in detail, or every issue with a held lock.

use std::time::Duration;

use chrono::DateTime;
use octocrab::models::issues::Comment;

use super::comment::{self, LockState, Parsed};
use super::resolve::resolve;
use super::{GithubBackend, IssueInfo, IssueStatus};
use crate::error::Result;
use crate::lease;
use crate::lock::Holder;

impl GithubBackend {
    async fn issue_info(&self, issue: u64) -> Result<IssueInfo> {
        let resp = self.client.get(&self.issue_path(issue)).await?;
        let i = self.issue_of(issue, &resp)?;
        Ok(IssueInfo {
            number: i.number,
            title: i.title,
            state: match i.state {
                octocrab::models::IssueState::Closed => "closed".into(),
                _ => "open".into(),
            },
            locked: i.locked,
            html_url: i.html_url.to_string(),
            assignees: i.assignees.into_iter().map(|a| a.login).collect(),
        })
    }

    pub(super) async fn issue_status(&self, issue: u64) -> Result<IssueStatus> {
        self.ensure_login().await?;
        let info = self.issue_info(issue).await?;
        let state = self.read(issue).await?;
        let res = resolve(&state.records);
        Ok(IssueStatus {
            issue: info,
            holder: res.holder().map(|h| Self::holder_of(h, state.now)),
            ignored: state.ignored,
        })
    }

    /// Every issue holding a lock: recent lock comments repo-wide (live locks are edited at least
    /// once per TTL), then each candidate issue resolved in full.
    pub(super) async fn list_held(&self, window: Duration) -> Result<Vec<(u64, Holder)>> {
        self.ensure_login().await?;
        // A window reaching before GitHub existed means "all of it".
        let since = lease::rfc3339(lease::before(self.now(), window).max(DateTime::UNIX_EPOCH));
        let first = format!(
            "/repos/{}/{}/issues/comments?sort=updated&direction=desc&per_page=100&since={since}",
            self.repo.owner, self.repo.name
        );
        let (comments, last) = self.client.get_all::<Comment>(&first).await?;
        if !last.status.is_success() {
            return Err(self.repo_error(&last));
        }
        let mut candidates: Vec<u64> = comments
            .iter()
            .filter(|c| self.is_trusted(c))
            .filter(|c| matches!(comment::parse(c.body.as_deref().unwrap_or_default()), Parsed::Lock(m) if m.state == LockState::Held))
            .filter_map(|c| c.issue_url.as_ref()?.path_segments()?.next_back()?.parse().ok())
            .collect();
        candidates.sort_unstable();
        candidates.dedup();
        let mut out = Vec::new();
        for issue in candidates {
            let state = self.read(issue).await?;
            if let Some(h) = resolve(&state.records).holder() {
                out.push((issue, Self::holder_of(h, state.now)));
            }
        }
        Ok(out)
    }
}
