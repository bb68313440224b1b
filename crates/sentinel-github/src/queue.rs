//! The work queue: `claim --next` claims the oldest open issue that has the wanted labels and no
//! lock, so many workers can drain one backlog without a list of their own.
//!
//! Cost: one page of open issues (oldest first, labels filtered by GitHub), one repository-wide
//! listing of the lock comments on those issues instead of a read per issue (skipped when no
//! candidate has a comment at all), then an ordinary claim — three requests when it wins. Issues
//! the listing shows locked, live or stale, are skipped without a write: a stale lock is not free.
//! Lists lag writes by up to a second, so the listing is only a hint; every claim is verified.
//!
//! Workers arriving together would all race for the same oldest issue, and all but one would pay
//! a comment written and deleted. So a worker that sees other workers' claims from the last few
//! seconds picks at random among the first few free issues, about twice as many as there are
//! claimers about; a worker that loses a race lists the lock comments again and spreads twice as
//! wide. A worker alone takes the oldest free issue.
//!
//! An issue whose work failed would otherwise come back to the next worker, and fail again, for
//! ever: `run --next` puts a label on it while it still holds the lock ([`GithubBackend::label_issue`],
//! one write, only on failure), and the CLI excludes that label from the queue.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use chrono::{DateTime, Utc};
use octocrab::models::IssueState;
use octocrab::models::issues::Issue;
use serde_json::json;

use super::GithubBackend;
use super::resolve::{Record, resolve};
use sentinel_core::error::{Error, Result};
use sentinel_core::lease;
use sentinel_core::lock::Claimed;
use sentinel_core::lock::{AcquireRequest, Attempt, HoldKind, LockId, NextRequest, Takeover};

/// Lock comments are looked up at most this far back in one listing; locks on older issues whose
/// comments were not edited since are found by reading the issue before claiming it.
const LISTING_WINDOW: Duration = Duration::from_secs(86_400);
/// Claims by other workers younger than this mean they are claiming right now.
const RECENT: Duration = Duration::from_secs(10);
/// The most free issues a worker spreads over.
const MAX_SPREAD: usize = 16;
/// GitHub refuses longer label names.
const MAX_LABEL_LEN: usize = 50;

/// An open issue that matches the labels.
struct Candidate {
    number: u64,
    created_at: DateTime<Utc>,
    comments: u32,
}

/// The open issues (not pull requests) of one page that have every wanted label and no unwanted
/// one, in the listing's order. `kept_out[k]` counts the issues the `k`th unwanted label kept out
/// (an issue with several under the first), so that an empty queue can say why it is empty.
fn matching(
    issues: Vec<Issue>,
    wanted: &[String],
    unwanted: &[String],
    kept_out: &mut [usize],
) -> Vec<Candidate> {
    issues
        .into_iter()
        .filter(|i| i.pull_request.is_none() && !matches!(i.state, IssueState::Closed))
        .filter(|i| {
            let has = |l: &String| i.labels.iter().any(|x| x.name.eq_ignore_ascii_case(l));
            if !wanted.iter().all(has) {
                return false;
            }
            match unwanted.iter().position(has) {
                Some(k) => {
                    kept_out[k] += 1;
                    false
                }
                None => true,
            }
        })
        .map(|i| Candidate {
            number: i.number,
            created_at: i.created_at,
            comments: i.comments,
        })
        .collect()
}

/// The trusted lock comments updated since `since`, by issue.
struct LockView {
    since: DateTime<Utc>,
    by_issue: HashMap<u64, Vec<Record>>,
    /// Other workers whose claims are younger than [`RECENT`].
    claiming: usize,
}

impl LockView {
    /// Every comment of an issue created at or after `since` is in the view.
    fn covers(&self, c: &Candidate) -> bool {
        c.created_at >= self.since
    }

    /// Held, live or stale, as far as the view shows.
    fn looks_held(&self, issue: u64) -> bool {
        self.by_issue
            .get(&issue)
            .is_some_and(|records| resolve(records).holder().is_some())
    }
}

/// Where one `claim --next` stands while it walks the listing: what it has seen of the others'
/// locks, what it has tried, and the counts its final message and its spreading need.
struct Walk<'a> {
    req: &'a NextRequest,
    view: Option<LockView>,
    tried: HashSet<u64>,
    /// Issues that matched the labels, over every page.
    matching: usize,
    /// Issues with the wanted labels that an unwanted one kept out, per unwanted label.
    kept_out: Vec<usize>,
    /// Issues closed, deleted or transferred since they were listed.
    gone: usize,
    attempts: u32,
    /// Races lost to other workers: each doubles the spread.
    lost: u32,
}

impl GithubBackend {
    /// Claims the oldest free open issue matching `req`, walking the issues page by page.
    pub(super) async fn claim_next_issue(&self, req: &NextRequest) -> Result<(LockId, Claimed)> {
        let wanted = labels(&req.labels, "--label")?;
        let unwanted = labels(&req.exclude_labels, "--exclude-label")?;
        self.ensure_login().await?;
        let mut url = self.queue_url(&wanted);
        let mut walk = Walk {
            req,
            view: None,
            tried: HashSet::new(),
            matching: 0,
            kept_out: vec![0; unwanted.len()],
            gone: 0,
            attempts: 0,
            lost: 0,
        };
        loop {
            let resp = self.client.get(&url).await?;
            if !resp.status.is_success() {
                return Err(self.repo_error(&resp));
            }
            let candidates = matching(
                resp.json::<Vec<Issue>>()?,
                &wanted,
                &unwanted,
                &mut walk.kept_out,
            );
            walk.matching += candidates.len();
            // Issues are oldest first: the first one with comments bounds the whole listing.
            if walk.view.is_none()
                && let Some(first) = candidates.iter().find(|c| c.comments > 0)
            {
                walk.view = Some(
                    self.lock_view(first.created_at, &req.claimant.worker_id)
                        .await?,
                );
            }
            if let Some(claimed) = self.claim_from_page(&mut walk, &candidates).await? {
                return Ok(claimed);
            }
            match resp.next_page() {
                Some(next) => url = next,
                None => break,
            }
        }
        Err(self.queue_empty(&walk, &wanted, &unwanted))
    }

    /// The first page of open issues, oldest first, filtered by GitHub on the wanted labels.
    fn queue_url(&self, wanted: &[String]) -> String {
        // Labels with a comma cannot be named in GitHub's comma-separated filter; every label
        // is checked again on each issue anyway.
        let filter: Vec<String> = wanted
            .iter()
            .filter(|l| !l.contains(','))
            .map(|l| encode(l))
            .collect();
        let mut url = format!(
            "/repos/{}/{}/issues?state=open&sort=created&direction=asc&per_page=100",
            self.repo.owner, self.repo.name
        );
        if !filter.is_empty() {
            url.push_str(&format!("&labels={}", filter.join(",")));
        }
        url
    }

    /// Tries the free issues of one page until one is claimed (`Some`) or none is left untried.
    async fn claim_from_page(
        &self,
        walk: &mut Walk<'_>,
        candidates: &[Candidate],
    ) -> Result<Option<(LockId, Claimed)>> {
        loop {
            let free: Vec<&Candidate> = candidates
                .iter()
                .filter(|c| !walk.tried.contains(&c.number))
                .filter(|c| !walk.view.as_ref().is_some_and(|v| v.looks_held(c.number)))
                .collect();
            if free.is_empty() {
                return Ok(None);
            }
            let claiming = walk.view.as_ref().map_or(0, |v| v.claiming);
            let spread = (1 + 2 * claiming)
                .saturating_mul(1 << walk.lost.min(4))
                .min(MAX_SPREAD);
            let c = free[fastrand::usize(..spread.min(free.len()))];
            walk.tried.insert(c.number);
            // Read first where the listing cannot vouch for the issue (old issues): a held issue
            // then costs a read, not a comment written and deleted.
            let look_first = c.comments > 0 && !walk.view.as_ref().is_some_and(|v| v.covers(c));
            walk.attempts += 1;
            // The lease is stamped after this instant: a holder counting from it never
            // overestimates its lease.
            let attempt_started = tokio::time::Instant::now();
            let attempt = AcquireRequest {
                lock: LockId::Issue(c.number),
                claimant: walk.req.claimant.clone(),
                ttl: walk.req.ttl,
                takeover: Takeover::None,
                task_info: walk.req.task_info.clone(),
                readopt: false,
                attempt: 0,
                wait: Duration::ZERO,
                kind: HoldKind::Exclusive,
            };
            match self.claim_once(c.number, &attempt, look_first, 3).await {
                Ok(Attempt::Granted(grant)) => {
                    let outcome = Claimed {
                        grant,
                        attempts: walk.attempts,
                        attempt_started,
                    };
                    return Ok(Some((LockId::Issue(c.number), outcome)));
                }
                Ok(Attempt::Held(h)) => {
                    // Others are claiming right now: look again at what they hold, and spread
                    // wider, instead of racing them for the next issue in line.
                    tracing::info!(issue = c.number, holder = %h.worker_id, "issue taken; trying another");
                    walk.lost += 1;
                    let oldest = match &walk.view {
                        Some(v) => v.since,
                        None => candidates.first().map_or(c.created_at, |f| f.created_at),
                    };
                    walk.view = Some(self.lock_view(oldest, &walk.req.claimant.worker_id).await?);
                }
                // Claims kept tying with releases: busy, as when taken. The only conflict
                // `claim --next` returns is then the empty queue's.
                Err(e @ Error::Conflict(_)) => {
                    tracing::info!(issue = c.number, error = %e, "issue contested; trying another");
                }
                // Closed, deleted or transferred since it was listed: not part of the queue.
                Err(e @ (Error::Usage(_) | Error::NotFound(_))) => {
                    tracing::info!(issue = c.number, error = %e, "issue left the queue; trying another");
                    walk.gone += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// The conflict (exit 3) of a walk that found no free issue, saying why: no open issue has
    /// the wanted labels at all (a misspelt label looks like this), or how many are locked and
    /// how many each unwanted label kept out.
    fn queue_empty(&self, walk: &Walk<'_>, wanted: &[String], unwanted: &[String]) -> Error {
        let which = match wanted {
            [] => String::new(),
            labels => format!(" labelled {}", labels.join(", ")),
        };
        let mut why = Vec::new();
        let locked = walk.matching.saturating_sub(walk.gone);
        if locked > 0 {
            why.push(format!("{locked} locked (live or stale)"));
        }
        for (label, n) in unwanted.iter().zip(&walk.kept_out) {
            if *n > 0 {
                why.push(format!("{n} labelled {label}"));
            }
        }
        if why.is_empty() {
            return Error::Conflict(format!("no open issue{which} in {}", self.repo));
        }
        Error::Conflict(format!(
            "no free open issue{which} in {}: {}",
            self.repo,
            why.join(", ")
        ))
    }

    /// The repository's trusted lock comments updated since `oldest` (at most
    /// [`LISTING_WINDOW`] back), grouped by issue.
    async fn lock_view(&self, oldest: DateTime<Utc>, worker_id: &str) -> Result<LockView> {
        let since = oldest.max(lease::before(self.now(), LISTING_WINDOW));
        let found = self.repo_lock_comments_since(since).await?;
        let now = self.client.last_date().unwrap_or_else(Utc::now);
        let recent = lease::before(now, RECENT);
        let mut by_issue: HashMap<u64, Vec<Record>> = HashMap::new();
        let mut claimers = HashSet::new();
        for (issue, record) in found {
            if record.created_at >= recent && record.meta.worker_id != worker_id {
                claimers.insert(record.meta.worker_id.clone());
            }
            by_issue.entry(issue).or_default().push(record);
        }
        Ok(LockView {
            since,
            by_issue,
            claiming: claimers.len(),
        })
    }
}

/// Trims and checks label arguments.
fn labels(raw: &[String], option: &str) -> Result<Vec<String>> {
    raw.iter()
        .map(|l| GithubBackend::check_label(l, option))
        .collect()
}

impl GithubBackend {
    /// A label name as GitHub takes it, trimmed: visible text of at most [`MAX_LABEL_LEN`]
    /// characters. `option` names the argument in the error.
    pub fn check_label(raw: &str, option: &str) -> Result<String> {
        let l = raw.trim();
        if l.is_empty() || l.chars().any(char::is_control) || l.chars().count() > MAX_LABEL_LEN {
            return Err(Error::usage(format!(
                "invalid {option} {l:?}: a label name is visible text of at most {MAX_LABEL_LEN} characters"
            )));
        }
        Ok(l.to_string())
    }

    /// Puts `label` on an issue whose work failed, so that the work queue skips it (`--exclude-label`);
    /// GitHub creates a label the repository does not have yet. One write, made while the caller
    /// still holds the lock, then the settle pause: GitHub's lists lag writes, and the release
    /// that follows must not show the issue free to other workers before they can see the label.
    pub async fn label_issue(&self, issue: u64, label: &str) -> Result<()> {
        let label = Self::check_label(label, "label")?;
        let path = format!("{}/labels", self.issue_path(issue));
        let resp = self
            .client
            .post_idempotent(&path, &json!({ "labels": [label] }))
            .await?;
        if !resp.status.is_success() {
            return Err(self.issue_error(issue, &resp));
        }
        tokio::time::sleep(self.settle).await;
        Ok(())
    }
}

/// Percent-encodes a query value (everything but RFC 3986's unreserved characters).
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_encoded_for_the_query() {
        assert_eq!(encode("good first issue"), "good%20first%20issue");
        assert_eq!(encode("area/ui"), "area%2Fui");
        assert_eq!(encode("prio:high✓"), "prio%3Ahigh%E2%9C%93");
    }

    #[test]
    fn label_arguments_are_checked() {
        let ok = labels(&[" bug ".into(), "a,b".into()], "--label").unwrap();
        assert_eq!(ok, ["bug", "a,b"]);
        let longest = "x".repeat(MAX_LABEL_LEN);
        assert_eq!(
            labels(std::slice::from_ref(&longest), "--label").unwrap(),
            [longest]
        );
        for bad in ["", "  ", "a\nb", &"x".repeat(MAX_LABEL_LEN + 1)] {
            assert!(labels(&[bad.into()], "--label").is_err(), "{bad:?}");
        }
    }
}
