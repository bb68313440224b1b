//! Reading who holds what: one issue in detail, or every issue with a held lock. A holder that
//! recorded its Actions job is shown as GitHub says that job is doing (`jobs`).

use std::collections::BTreeMap;
use std::time::Duration;

use super::jobs::Listings;
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
        let holder = match resolve(&state.records).holder() {
            Some(h) => {
                let judged = self.judge(h, state.now, &mut Listings::new()).await;
                Some(judged.holder(h, state.now))
            }
            None => None,
        };
        Ok(IssueStatus {
            issue: info,
            holder,
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
        // Locks held by jobs of one run attempt (a matrix) share one listing of its jobs.
        let mut listings = Listings::new();
        let mut held = Vec::new();
        for (issue, records) in by_issue {
            if let Some(h) = resolve(&records).holder() {
                let judged = self.judge(h, now, &mut listings).await;
                held.push((issue, judged.holder(h, now)));
            }
        }
        Ok(held)
    }
}
