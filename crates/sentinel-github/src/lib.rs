//! GitHub backend: an issue is the unit of work and its lock.
//!
//! A claim writes a lock comment, waits for GitHub's lists to settle, re-reads the issue's comments
//! and lets [`resolve`] decide who holds the lock. The assignment is cosmetic — bots cannot be
//! assigned — so ownership is the worker id in the comment, never the login. Request budget:
//! uncontended claim = GET comments + POST comment + GET comments + POST assignees (which also
//! returns the issue to check it is open); heartbeat = one PATCH of our comment; release = PATCH + DELETE assignee;
//! status of one issue = GET issue + GET comments.
//!
//! Layout: [`comment`] (the comment format), [`resolve`] (the ownership rule), [`client`] (HTTP,
//! retries, rate limits, GitHub's clock), `cache` (what this host remembers between processes),
//! `index` (this host's index of the repository's lock comments, a hint that keeps the
//! repository-wide views cheap in a busy repository), `jobs` (whether the Actions job holding a
//! lock still runs), `claim`, `keep` (heartbeat and release),
//! `queue` (`claim --next`), `history` and `status` (the operations). This file holds the backend's shared reads:
//! trust, identity, and turning GitHub's answers into errors.

mod cache;
mod claim;
pub mod client;
pub mod comment;
mod diagnose;
mod history;
mod index;
mod jobs;
mod keep;
mod queue;
pub mod resolve;
mod status;

use std::path::PathBuf;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use http::StatusCode;
use octocrab::models::AuthorAssociation;
use octocrab::models::issues::{Comment, Issue};

use cache::{Cache, OwnLock};
use client::{Client, ClientOptions, Response};
pub use comment::ActionsJob;
use comment::Parsed;
pub use history::RepoHistory;
use index::LockIndex;
use resolve::Record;
use sentinel_core::backend::{Budget, LockBackend, Status, foreign};
pub use sentinel_core::backend::{Ignored, IssueInfo, IssueStatus};
use sentinel_core::error::{Error, Result};
use sentinel_core::lease;
use sentinel_core::lock::Claimed;
use sentinel_core::lock::{
    AcquireRequest, Attempt, Holder, ListRequest, LockId, NextRequest, ReleaseRequest,
    ReleaseStaleRequest, Released, RenewRequest, StaleRelease,
};

/// `owner/repo`, validated the way GitHub names repositories.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepoName {
    /// The user or organization: ASCII letters, digits and `-`, at most 39 characters.
    pub owner: String,
    /// The repository: ASCII letters, digits, `-`, `_` and `.`, at most 100 characters, never
    /// `.` or `..`.
    pub name: String,
}

impl FromStr for RepoName {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let bad = || Error::usage(format!("invalid repository {s:?}: expected OWNER/REPO"));
        let (owner, name) = s.split_once('/').ok_or_else(bad)?;
        // Owners (users, organizations) are letters, digits and hyphens; repositories may also
        // have `_` and `.`, but are never `.` or `..` (they would walk the API path).
        let owner_ok = !owner.is_empty()
            && owner.len() <= 39
            && owner.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
        let name_ok = !name.is_empty()
            && name.len() <= 100
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            && name != "."
            && name != "..";
        if !owner_ok || !name_ok {
            return Err(bad());
        }
        Ok(RepoName {
            owner: owner.to_string(),
            name: name.to_string(),
        })
    }
}

impl std::fmt::Display for RepoName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.owner, self.name)
    }
}

/// What [`GithubBackend::new`] needs.
pub struct GithubOptions {
    /// The repository whose issues are the locks.
    pub repo: RepoName,
    /// The API endpoint, token, timeouts and retry budget.
    pub client: ClientOptions,
    /// Where this host's cache of its own lock comments lives (see the module doc); never holds
    /// a token.
    pub data_dir: PathBuf,
    /// Logins whose lock comments count besides OWNER/MEMBER/COLLABORATOR and ourselves.
    pub trusted: Vec<String>,
    /// Pause between writing a lock comment and reading it back (GitHub's lists lag writes).
    pub settle: Duration,
    /// Running inside GitHub Actions: `github-actions[bot]` is the workflow's own identity.
    pub in_actions: bool,
    /// The Actions job this process runs in, recorded with every lock comment it writes so that
    /// readers can free the lock as soon as the job completes (see `jobs`).
    pub actions_job: Option<ActionsJob>,
}

pub(crate) struct Comments {
    records: Vec<Record>,
    ignored: Vec<Ignored>,
    /// GitHub's clock when the list was read.
    now: DateTime<Utc>,
}

/// The [`LockBackend`] on a repository's issues: lock ids are issue numbers.
pub struct GithubBackend {
    client: Arc<Client>,
    repo: RepoName,
    cache: Cache,
    index: LockIndex,
    fingerprint: Option<String>,
    /// `Some(None)`: GitHub will not say who we are (app and Actions tokens).
    login: Mutex<Option<Option<String>>>,
    trusted: Vec<String>,
    settle: Duration,
    in_actions: bool,
    actions_job: Option<ActionsJob>,
    job_refusals: Mutex<jobs::Refusals>,
}

const ACTIONS_BOT: &str = "github-actions[bot]";
/// GitHub's secondary limit on content-generating requests (a comment edit is one) per identity
/// and hour, whatever the primary budget says.
pub const CONTENT_WRITES_PER_HOUR: u64 = 500;
/// How many times a claimer re-reads when its own fresh comment is not listed yet.
pub(crate) const VISIBILITY_READS: u32 = 6;

impl GithubBackend {
    /// Sets the backend up without contacting GitHub.
    ///
    /// # Errors
    ///
    /// The HTTP client cannot be built (an invalid API URL), or the cache in `data_dir` cannot be
    /// created.
    pub fn new(opts: GithubOptions) -> Result<GithubBackend> {
        let fingerprint = opts
            .client
            .token
            .as_ref()
            .map(|t| cache::fingerprint(&opts.client.api_url, t.expose()));
        Ok(GithubBackend {
            client: Arc::new(Client::new(opts.client)?),
            repo: opts.repo,
            cache: Cache::open(&opts.data_dir)?,
            index: LockIndex::open(&opts.data_dir)?,
            fingerprint,
            login: Mutex::new(None),
            trusted: opts.trusted,
            settle: opts.settle,
            in_actions: opts.in_actions,
            actions_job: opts.actions_job,
            job_refusals: Mutex::new(jobs::Refusals::default()),
        })
    }

    /// The repository whose issues are the locks.
    pub fn repo(&self) -> &RepoName {
        &self.repo
    }

    fn issue_path(&self, issue: u64) -> String {
        format!(
            "/repos/{}/{}/issues/{issue}",
            self.repo.owner, self.repo.name
        )
    }

    fn comment_path(&self, id: u64) -> String {
        format!(
            "/repos/{}/{}/issues/comments/{id}",
            self.repo.owner, self.repo.name
        )
    }

    fn cache_key(&self, issue: u64, worker_id: &str) -> String {
        cache::lock_key(
            self.client.api_url(),
            &self.repo.to_string(),
            issue,
            worker_id,
        )
    }

    fn now(&self) -> DateTime<Utc> {
        self.client.github_now().unwrap_or_else(Utc::now)
    }

    /// Turns an unsuccessful answer about issue `issue` into the documented error.
    fn issue_error(&self, issue: u64, resp: &Response) -> Error {
        let msg = resp.message();
        match resp.status {
            StatusCode::NOT_FOUND => Error::NotFound(format!(
                "issue #{issue} not found in {} (or the token cannot see the repository)",
                self.repo
            )),
            StatusCode::GONE => {
                Error::NotFound(format!("issue #{issue} in {} was deleted", self.repo))
            }
            StatusCode::MOVED_PERMANENTLY | StatusCode::FOUND | StatusCode::TEMPORARY_REDIRECT => {
                let to = resp
                    .headers
                    .get("location")
                    .and_then(|v| v.to_str().ok())
                    .map(web_url)
                    .unwrap_or_else(|| "another repository".into());
                Error::NotFound(format!(
                    "issue #{issue} was transferred out of {} (now at {to}); claim it there",
                    self.repo
                ))
            }
            StatusCode::FORBIDDEN if msg.contains("locked") => Error::Auth(format!(
                "issue #{issue} is locked and this identity may not comment on it: {msg}"
            )),
            StatusCode::FORBIDDEN => {
                Error::Auth(format!("GitHub refused access to #{issue}: {msg}"))
            }
            StatusCode::UNPROCESSABLE_ENTITY => {
                Error::Usage(format!("GitHub rejected the request for #{issue}: {msg}"))
            }
            s => Error::Unexpected(format!("GitHub answered {s} for #{issue}: {msg}")),
        }
    }

    /// Turns an unsuccessful answer to a repository-wide listing into the documented error.
    fn repo_error(&self, resp: &Response) -> Error {
        match resp.status {
            StatusCode::NOT_FOUND => Error::NotFound(format!(
                "repository {} not found (or not visible to this token)",
                self.repo
            )),
            StatusCode::GONE => Error::Usage(format!(
                "issues are disabled in {}: {}",
                self.repo,
                resp.message()
            )),
            s => Error::Unexpected(format!("GitHub answered {s}: {}", resp.message())),
        }
    }

    /// The issue in an answer about `issue`, refusing pull requests (they share the numbers).
    fn issue_of(&self, issue: u64, resp: &Response) -> Result<Issue> {
        if !resp.status.is_success() {
            return Err(self.issue_error(issue, resp));
        }
        let info: Issue = resp.json()?;
        if info.pull_request.is_some() {
            return Err(Error::usage(format!(
                "#{issue} is a pull request, not an issue; sentinel locks issues"
            )));
        }
        Ok(info)
    }

    /// Who we are on GitHub, asked once per token and remembered in the data directory.
    async fn ensure_login(&self) -> Result<Option<String>> {
        if let Some(known) = self.login.lock().unwrap().clone() {
            return Ok(known);
        }
        let Some(fp) = &self.fingerprint else {
            *self.login.lock().unwrap() = Some(None);
            return Ok(None);
        };
        let login = match self.cache.login(fp)? {
            Some(l) => Some(l).filter(|l| !l.is_empty()),
            None => {
                let resp = self.client.get("/user").await?;
                let login = if resp.status.is_success() {
                    resp.json::<serde_json::Value>()?
                        .get("login")
                        .and_then(|l| l.as_str())
                        .map(String::from)
                } else {
                    // App and Actions tokens: "Resource not accessible by integration".
                    tracing::debug!(status = %resp.status, "GET /user refused; identity unknown");
                    None
                };
                self.cache.set_login(fp, login.as_deref().unwrap_or(""))?;
                login
            }
        };
        *self.login.lock().unwrap() = Some(login.clone());
        Ok(login)
    }

    fn learn_login(&self, login: &str) -> Result<()> {
        let known = self.login.lock().unwrap().replace(Some(login.to_string()));
        if known.flatten().as_deref() == Some(login) {
            // Already ours in this process, hence already in the cache: no file I/O per claim.
            return Ok(());
        }
        if let Some(fp) = &self.fingerprint
            && self.cache.login(fp)?.as_deref() != Some(login)
        {
            self.cache.set_login(fp, login)?;
        }
        Ok(())
    }

    fn is_trusted(&self, c: &Comment) -> bool {
        self.is_trusted_author(&c.user.login, by_role(c))
    }

    /// Trust by login, `by_role` being whether the author is the owner, a member or a
    /// collaborator.
    fn is_trusted_author(&self, login: &str, by_role: bool) -> bool {
        let is_me = self.login.lock().unwrap().clone().flatten().as_deref() == Some(login);
        by_role
            || is_me
            || self.trusted.iter().any(|t| t.eq_ignore_ascii_case(login))
            || (self.in_actions && login == ACTIONS_BOT)
    }

    /// Every comment of the issue, all pages.
    async fn list_comments(&self, issue: u64) -> Result<Vec<Comment>> {
        let first = format!("{}/comments?per_page=100", self.issue_path(issue));
        let (comments, last) = self.client.get_all::<Comment>(&first).await?;
        if !last.status.is_success() {
            return Err(self.issue_error(issue, &last));
        }
        Ok(comments)
    }

    /// Reads every comment of the issue and keeps the trusted, well-formed lock comments.
    async fn read(&self, issue: u64) -> Result<Comments> {
        let comments = self.list_comments(issue).await?;
        let now = self.client.last_date().unwrap_or_else(Utc::now);
        let mut out = Comments {
            records: Vec::new(),
            ignored: Vec::new(),
            now,
        };
        for c in comments {
            let body = c.body.as_deref().unwrap_or_default();
            let parsed = comment::parse(body);
            if parsed == Parsed::Other {
                continue;
            }
            let id = c.id.into_inner();
            let author = c.user.login.clone();
            if !self.is_trusted(&c) {
                out.ignored.push(Ignored {
                    comment_id: id,
                    author,
                    reason: "author is not trusted (not the owner, a member, a collaborator, this identity or --trust)".into(),
                });
                continue;
            }
            match parsed {
                Parsed::Lock(meta) => out.records.push(Record {
                    id,
                    author,
                    created_at: c.created_at,
                    updated_at: c.updated_at.unwrap_or(c.created_at),
                    meta: *meta,
                }),
                Parsed::Malformed(reason) => {
                    tracing::warn!(comment = id, %reason, "ignoring a malformed lock comment");
                    out.ignored.push(Ignored {
                        comment_id: id,
                        author,
                        reason: format!("malformed lock comment: {reason}"),
                    })
                }
                Parsed::Other => {}
            }
        }
        Ok(out)
    }

    fn holder_of(record: &Record, now: DateTime<Utc>) -> Holder {
        Holder {
            worker_id: record.meta.worker_id.clone(),
            node_id: record.meta.node_id.clone(),
            fencing_token: record.id,
            claimed_at: record.created_at,
            heartbeat_last: record.updated_at,
            expires_at: record.expires_at(),
            stale: record.is_stale_at(now),
            task_info: record.meta.task_info.clone(),
            liveness: None,
        }
    }

    fn holder_of_own(own: &OwnLock, now: DateTime<Utc>) -> Holder {
        let expires = lease::expires_at(own.updated_at, Duration::from_secs(own.meta.ttl_seconds));
        Holder {
            worker_id: own.meta.worker_id.clone(),
            node_id: own.meta.node_id.clone(),
            fencing_token: own.comment_id,
            claimed_at: own.created_at,
            heartbeat_last: own.updated_at,
            expires_at: expires,
            stale: expires < now,
            task_info: own.meta.task_info.clone(),
            liveness: None,
        }
    }

    async fn delete_comment(&self, id: u64) -> Result<()> {
        let resp = self
            .client
            .delete::<()>(&self.comment_path(id), None)
            .await?;
        if resp.status.is_success() || resp.status == StatusCode::NOT_FOUND {
            Ok(())
        } else {
            Err(Error::Unexpected(format!(
                "cannot delete comment {id}: {} {}",
                resp.status,
                resp.message()
            )))
        }
    }

    /// Best-effort cleanup of a comment that lost; a leftover loser can never win later.
    async fn discard(&self, id: u64) {
        if let Err(e) = self.delete_comment(id).await {
            tracing::warn!(comment = id, error = %e, "could not delete a losing lock comment");
        }
    }
}

impl LockBackend for GithubBackend {
    fn name(&self) -> &'static str {
        "github"
    }

    /// `123` or `#123`: GitHub issue numbers are positive 32-bit integers.
    fn parse_lock(&self, raw: &str) -> Result<LockId> {
        parse_issue(raw).map(LockId::Issue)
    }

    fn describe(&self, lock: &LockId) -> String {
        match lock {
            LockId::Issue(n) => format!("{}#{n}", self.repo),
            other => other.to_string(),
        }
    }

    async fn try_acquire(&self, req: &AcquireRequest) -> Result<Attempt> {
        self.acquire_issue(issue_of(&req.lock)?, req).await
    }

    async fn release(&self, req: &ReleaseRequest) -> Result<Released> {
        let token = if req.force { None } else { req.fencing_token };
        self.release_issue(issue_of(&req.lock)?, &req.worker_id, req.force, token)
            .await
    }

    async fn renew(&self, req: &RenewRequest) -> Result<Holder> {
        self.renew_issue(issue_of(&req.lock)?, req).await
    }

    async fn status(&self, lock: &LockId) -> Result<Status> {
        Ok(Status::Issue(self.issue_status(issue_of(lock)?).await?))
    }

    fn renew_budget(&self) -> Option<Budget> {
        let (remaining, resets_in) = self.client.rate_remaining()?;
        Some(Budget {
            remaining,
            resets_in,
            writes_per_hour: Some(CONTENT_WRITES_PER_HOUR),
        })
    }

    async fn list(&self, req: &ListRequest) -> Result<Vec<(String, Holder)>> {
        Ok(self
            .list_held(req.since)
            .await?
            .into_iter()
            .map(|(n, h)| (format!("#{n}"), h))
            .collect())
    }

    async fn release_stale(&self, req: &ReleaseStaleRequest) -> Result<StaleRelease> {
        self.release_stale_issue(issue_of(&req.lock)?, req).await
    }

    async fn claim_next(&self, req: &NextRequest) -> Result<(LockId, Claimed)> {
        self.claim_next_issue(req).await
    }
}

/// The author is the repository's owner, one of its organization's members or a collaborator.
fn by_role(c: &Comment) -> bool {
    matches!(
        c.author_association,
        Some(
            AuthorAssociation::Owner | AuthorAssociation::Member | AuthorAssociation::Collaborator
        )
    )
}

/// Parses an issue number as users write it: `123` or `#123`.
pub fn parse_issue(raw: &str) -> Result<u64> {
    let digits = raw.trim().strip_prefix('#').unwrap_or(raw.trim());
    match digits.parse::<u64>() {
        Ok(n)
            if n > 0 && n <= u64::from(u32::MAX) && digits.bytes().all(|b| b.is_ascii_digit()) =>
        {
            Ok(n)
        }
        _ => Err(Error::usage(format!(
            "invalid issue number {raw:?}: the github backend locks issues by number, e.g. 123"
        ))),
    }
}

fn issue_of(lock: &LockId) -> Result<u64> {
    match lock {
        LockId::Issue(n) => Ok(*n),
        other => Err(foreign(other, "github")),
    }
}

/// `https://api.github.com/repos/o/r/issues/7` -> `o/r#7` for messages.
fn web_url(api: &str) -> String {
    match api.split_once("/repos/") {
        Some((_, rest)) => rest.replacen("/issues/", "#", 1),
        None => api.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repo_names() {
        assert!("octo/hello-world".parse::<RepoName>().is_ok());
        assert!("octo/hello.world_2".parse::<RepoName>().is_ok());
        for bad in [
            "octo", "/x", "x/", "a/b/c", "a b/c", "o/..", "../x", "./x", "a.b/c", "",
        ] {
            assert!(bad.parse::<RepoName>().is_err(), "{bad}");
        }
    }

    #[test]
    fn issue_numbers() {
        assert_eq!(parse_issue("123").unwrap(), 123);
        assert_eq!(parse_issue("#7").unwrap(), 7);
        assert_eq!(parse_issue(" 42 ").unwrap(), 42);
        for bad in [
            "",
            "#",
            "0",
            "-1",
            "+5",
            "##5",
            "1.5",
            "4294967296",
            "12a",
            "９",
        ] {
            assert!(parse_issue(bad).is_err(), "{bad}");
        }
    }

    proptest::proptest! {
        #[test]
        fn any_issue_argument_parses_or_is_refused(s in ".*") {
            if let Ok(n) = parse_issue(&s) {
                proptest::prop_assert!(n > 0 && n <= u64::from(u32::MAX));
            }
        }

        #[test]
        fn any_repo_argument_parses_or_is_refused(s in ".*") {
            if let Ok(r) = s.parse::<RepoName>() {
                proptest::prop_assert_eq!(r.to_string(), s);
            }
        }
    }

    #[test]
    fn transferred_locations_read_well() {
        assert_eq!(
            web_url("http://127.0.0.1:1/repos/o/other/issues/7"),
            "o/other#7"
        );
    }
}
