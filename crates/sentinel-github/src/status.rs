//! Reading who holds what: one issue in detail, or every issue with a held lock.

use std::time::Duration;

use super::comment::LockState;
use super::resolve::resolve;
use super::{GithubBackend, IssueInfo, IssueStatus};
use sentinel_core::error::Result;
use sentinel_core::lock::Holder;

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
        let (_, found) = self.repo_lock_comments(window).await?;
        let mut candidates: Vec<u64> = found
            .iter()
            .filter(|(_, r)| r.meta.state == LockState::Held)
            .map(|(issue, _)| *issue)
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
