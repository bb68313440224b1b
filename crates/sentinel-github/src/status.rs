//! Reading who holds what: one issue in detail, or every issue with a held lock.

use std::collections::BTreeMap;
use std::time::Duration;

use super::resolve::{Record, resolve};
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

    /// Every issue holding a lock, resolved from the repository's lock comments of the window
    /// (live locks are edited at least once per TTL) without reading each issue: what it shows is
    /// a view for people and a list of candidates for the janitor, whose every take-over reads the
    /// issue and decides there.
    pub(super) async fn list_held(&self, window: Duration) -> Result<Vec<(u64, Holder)>> {
        let (_, found) = self.repo_lock_comments(window).await?;
        let now = self.client.last_date().unwrap_or_else(chrono::Utc::now);
        let mut by_issue: BTreeMap<u64, Vec<Record>> = BTreeMap::new();
        for (issue, record) in found {
            by_issue.entry(issue).or_default().push(record);
        }
        Ok(by_issue
            .into_iter()
            .filter_map(|(issue, records)| {
                let holder = resolve(&records)
                    .holder()
                    .map(|h| Self::holder_of(h, now))?;
                Some((issue, holder))
            })
            .collect())
    }
}
