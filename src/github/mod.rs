//! GitHub backend: an issue is the unit of work and its lock (SPEC §3).
//!
//! A claim writes a lock comment, waits for GitHub's lists to settle, re-reads the issue's comments
//! and lets [`resolve`] decide who holds the lock. The assignment is cosmetic — bots cannot be
//! assigned — so ownership is the worker id in the comment, never the login. Request budget:
//! uncontended claim = POST comment + GET comments + POST assignees (which also returns the issue
//! to check it is open); heartbeat = one PATCH of our comment; release = PATCH + DELETE assignee;
//! status of one issue = GET issue + GET comments.

mod cache;
pub mod client;
pub mod comment;
pub mod resolve;

use std::path::PathBuf;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use http::StatusCode;
use octocrab::models::AuthorAssociation;
use octocrab::models::issues::{Comment, Issue};
use serde::Serialize;
use serde_json::json;

use crate::error::{Error, Result};
use crate::lock::{AcquireRequest, Attempt, Grant, Holder, Released, Takeover as Mode};
use cache::{Cache, OwnLock};
use client::{Client, ClientOptions, Response, Sent};
use comment::{LockMeta, LockState, Parsed, Takeover};
use resolve::{Record, resolve};

/// `owner/repo`, validated the way GitHub names repositories.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepoName {
    pub owner: String,
    pub name: String,
}

impl FromStr for RepoName {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let bad = || Error::usage(format!("invalid repository {s:?}: expected OWNER/REPO"));
        let (owner, name) = s.split_once('/').ok_or_else(bad)?;
        let ok = |p: &str| {
            !p.is_empty()
                && p.len() <= 100
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        };
        if !ok(owner) || !ok(name) || name == "." || name == ".." {
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

pub struct GithubOptions {
    pub repo: RepoName,
    pub client: ClientOptions,
    pub data_dir: PathBuf,
    /// Logins whose lock comments count besides OWNER/MEMBER/COLLABORATOR and ourselves.
    pub trusted: Vec<String>,
    /// Pause between writing a lock comment and reading it back (GitHub's lists lag writes).
    pub settle: Duration,
    /// Running inside GitHub Actions: `github-actions[bot]` is the workflow's own identity.
    pub in_actions: bool,
}

/// A comment that looks like a lock but does not count.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Ignored {
    pub comment_id: u64,
    pub author: String,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct IssueInfo {
    pub number: u64,
    pub title: String,
    pub state: String,
    pub locked: bool,
    pub html_url: String,
    pub assignees: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct IssueStatus {
    pub issue: IssueInfo,
    pub holder: Option<Holder>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ignored: Vec<Ignored>,
}

struct Comments {
    records: Vec<Record>,
    ignored: Vec<Ignored>,
    /// GitHub's clock when the list was read.
    now: DateTime<Utc>,
}

pub struct GithubBackend {
    client: Arc<Client>,
    repo: RepoName,
    cache: Cache,
    fingerprint: Option<String>,
    /// `Some(None)`: GitHub will not say who we are (app and Actions tokens).
    login: Mutex<Option<Option<String>>>,
    trusted: Vec<String>,
    settle: Duration,
    in_actions: bool,
}

const ACTIONS_BOT: &str = "github-actions[bot]";
/// How many times a claimer re-reads when its own fresh comment is not listed yet.
const VISIBILITY_READS: u32 = 6;

impl GithubBackend {
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
            fingerprint,
            login: Mutex::new(None),
            trusted: opts.trusted,
            settle: opts.settle,
            in_actions: opts.in_actions,
        })
    }

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
        *self.login.lock().unwrap() = Some(Some(login.to_string()));
        if let Some(fp) = &self.fingerprint
            && self.cache.login(fp)?.as_deref() != Some(login)
        {
            self.cache.set_login(fp, login)?;
        }
        Ok(())
    }

    fn is_trusted(&self, c: &Comment) -> bool {
        let login = c.user.login.as_str();
        let by_role = matches!(
            c.author_association,
            Some(
                AuthorAssociation::Owner
                    | AuthorAssociation::Member
                    | AuthorAssociation::Collaborator
            )
        );
        let is_me = self.login.lock().unwrap().clone().flatten().as_deref() == Some(login);
        by_role
            || is_me
            || self.trusted.iter().any(|t| t.eq_ignore_ascii_case(login))
            || (self.in_actions && login == ACTIONS_BOT)
    }

    /// Reads every comment of the issue and keeps the trusted, well-formed lock comments.
    async fn read(&self, issue: u64) -> Result<Comments> {
        let first = format!("{}/comments?per_page=100", self.issue_path(issue));
        let (comments, last) = self.client.get_all::<Comment>(&first).await?;
        if !last.status.is_success() {
            return Err(self.issue_error(issue, &last));
        }
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
        }
    }

    fn holder_of_own(own: &OwnLock, now: DateTime<Utc>) -> Holder {
        let expires = own.updated_at + chrono::Duration::seconds(own.meta.ttl_seconds as i64);
        Holder {
            worker_id: own.meta.worker_id.clone(),
            node_id: own.meta.node_id.clone(),
            fencing_token: own.comment_id,
            claimed_at: own.created_at,
            heartbeat_last: own.updated_at,
            expires_at: expires,
            stale: expires < now,
            task_info: own.meta.task_info.clone(),
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

    /// Posts a lock comment exactly once, even when a response is lost: after an unknown outcome
    /// it re-reads the issue and looks for its nonce before posting again.
    async fn post_lock(&self, issue: u64, meta: &LockMeta) -> Result<Comment> {
        let path = format!("{}/comments", self.issue_path(issue));
        let body = json!({ "body": comment::render(meta) });
        let mut last_err = None;
        for attempt in 0..4u32 {
            if attempt > 0 {
                tokio::time::sleep(self.settle.max(Duration::from_millis(200)) * attempt).await;
                if let Some(found) = self.find_nonce(issue, &meta.nonce).await? {
                    tracing::info!(
                        comment = found.id.into_inner(),
                        "the lost POST had landed; using it"
                    );
                    return Ok(found);
                }
            }
            match self.client.post_once(&path, &body).await? {
                Sent::Done(resp)
                    if resp.status == StatusCode::CREATED || resp.status == StatusCode::OK =>
                {
                    return resp.json::<Comment>();
                }
                Sent::Done(resp) => return Err(self.issue_error(issue, &resp)),
                Sent::Unknown(e) => {
                    tracing::warn!(error = %e, "lock comment POST outcome unknown; checking before retrying");
                    last_err = Some(e);
                }
            }
        }
        Err(last_err.unwrap_or_else(|| Error::Unavailable("GitHub unavailable".into())))
    }

    async fn find_nonce(&self, issue: u64, nonce: &str) -> Result<Option<Comment>> {
        let first = format!("{}/comments?per_page=100", self.issue_path(issue));
        let (comments, last) = self.client.get_all::<Comment>(&first).await?;
        if !last.status.is_success() {
            return Err(self.issue_error(issue, &last));
        }
        Ok(comments.into_iter().find(|c| {
            matches!(comment::parse(c.body.as_deref().unwrap_or_default()), Parsed::Lock(m) if m.nonce == nonce)
        }))
    }

    /// Reads until our just-written comment is listed: only such a read is guaranteed to contain
    /// every comment written before ours (they were written earlier still, and `settle` exceeds
    /// GitHub's list lag).
    async fn read_including(&self, issue: u64, id: u64) -> Result<Comments> {
        for attempt in 0..VISIBILITY_READS {
            let state = self.read(issue).await?;
            if state.records.iter().any(|r| r.id == id) {
                return Ok(state);
            }
            tracing::debug!(attempt, "own lock comment not listed yet; reading again");
            tokio::time::sleep(self.settle.max(Duration::from_millis(100))).await;
        }
        Err(Error::Unavailable(format!(
            "GitHub does not list the lock comment {id} just written on #{issue}; try again later"
        )))
    }

    /// One acquisition attempt. `look_first` reads before writing (needed to take over, and on
    /// retries so a held lock costs a read instead of a comment written and deleted).
    pub async fn try_acquire(
        &self,
        issue: u64,
        req: &AcquireRequest,
        look_first: bool,
    ) -> Result<Attempt> {
        self.claim_once(issue, req, look_first, 3).await
    }

    async fn claim_once(
        &self,
        issue: u64,
        req: &AcquireRequest,
        look_first: bool,
        tie_retries: u32,
    ) -> Result<Attempt> {
        let worker = &req.claimant.worker_id;
        let mut takeover = None;
        if look_first || req.takeover != Mode::None {
            self.ensure_login().await?;
            let state = self.read(issue).await?;
            let res = resolve(&state.records);
            if let Some(h) = res.holder() {
                let stale = h.is_stale_at(state.now);
                if &h.meta.worker_id == worker && !stale {
                    return self.adopt(issue, h, state.now).await;
                }
                let allowed = match req.takeover {
                    Mode::Any => true,
                    Mode::Stale => stale,
                    Mode::None => false,
                };
                if !allowed {
                    return Ok(Attempt::Held(Self::holder_of(h, state.now)));
                }
                if req.takeover == Mode::Any && !stale {
                    tracing::warn!(holder = %h.meta.worker_id, "FORCE: taking over a live lock");
                }
                takeover = Some((
                    Takeover {
                        comment_id: h.id,
                        worker_id: h.meta.worker_id.clone(),
                        heartbeat: h.updated_at,
                        ttl_seconds: h.meta.ttl_seconds,
                        force: !stale,
                    },
                    Self::holder_of(h, state.now),
                ));
            }
        }

        let now = self.now();
        let meta = LockMeta {
            worker_id: worker.clone(),
            node_id: req.claimant.node_id.clone(),
            claimed_at: now,
            heartbeat_last: now,
            ttl_seconds: req.ttl.as_secs().max(1),
            state: LockState::Held,
            nonce: format!("{:016x}", fastrand::u64(..)),
            task_info: req.task_info.clone(),
            takeover: takeover.as_ref().map(|(t, _)| t.clone()),
            released_at: None,
            released_by: None,
        };
        let mine = self.post_lock(issue, &meta).await?;
        let my_id = mine.id.into_inner();
        let client = self.client.clone();
        let path = self.comment_path(my_id);
        let _undo = crate::interrupt::on_interrupt(move || async move {
            let _ = client.delete::<()>(&path, None).await;
        });
        let result = self
            .verify_claim(issue, req, mine, takeover, tie_retries)
            .await;
        if result.is_err() {
            // Whatever went wrong after our comment landed, it must not stay behind as a lock.
            self.discard(my_id).await;
        }
        result
    }

    /// Reads our claim back and settles who won; everything here runs with our comment posted.
    async fn verify_claim(
        &self,
        issue: u64,
        req: &AcquireRequest,
        mine: Comment,
        takeover: Option<(Takeover, Holder)>,
        tie_retries: u32,
    ) -> Result<Attempt> {
        let worker = &req.claimant.worker_id;
        let my_id = mine.id.into_inner();
        self.learn_login(&mine.user.login)?;
        if mine.html_url.path().contains("/pull/") {
            return Err(Error::usage(format!(
                "#{issue} is a pull request, not an issue; sentinel locks issues"
            )));
        }

        tokio::time::sleep(self.settle).await;
        let state = self.read_including(issue, my_id).await?;
        let res = resolve(&state.records);
        let Some(h) = res.holder() else {
            // Our claim fell in the same second as a release (GitHub's timestamps are whole
            // seconds), which counts as still held. Withdraw and claim again in the next second.
            self.discard(my_id).await;
            if tie_retries == 0 {
                return Err(Error::Conflict(format!(
                    "#{issue}: claims keep landing in the same second as releases; try again"
                )));
            }
            tokio::time::sleep(Duration::from_millis(1100)).await;
            return Box::pin(self.claim_once(issue, req, true, tie_retries - 1)).await;
        };
        if h.id != my_id {
            self.discard(my_id).await;
            if &h.meta.worker_id == worker && !h.is_stale_at(state.now) {
                return self.adopt(issue, h, state.now).await;
            }
            return Ok(Attempt::Held(Self::holder_of(h, state.now)));
        }
        // Our own stray comments (e.g. a duplicate after a lost response) must not linger.
        for r in &state.records {
            if r.id != my_id && &r.meta.worker_id == worker && r.meta.state == LockState::Held {
                self.discard(r.id).await;
            }
        }
        if let Some((t, _)) = &takeover {
            // The victim learns it lost on its next heartbeat (404). If its comment cannot be
            // deleted it would go on believing it holds the lock: withdraw instead.
            self.delete_comment(t.comment_id).await?;
        }
        let record = state
            .records
            .iter()
            .find(|r| r.id == my_id)
            .expect("listed above");
        let assigned = self.assign(issue, &mine.user.login).await?;
        self.cache.set_own_lock(
            &self.cache_key(issue, worker),
            Some(OwnLock {
                comment_id: my_id,
                meta: record.meta.clone(),
                updated_at: record.updated_at,
                created_at: record.created_at,
                assigned,
            }),
        )?;
        Ok(Attempt::Granted(Grant {
            holder: Self::holder_of(record, state.now),
            adopted: false,
            took_over: takeover.map(|(_, h)| h),
        }))
    }

    /// Assigns the login (GitHub silently drops bots and non-collaborators) and checks, from the
    /// issue it returns, that the issue can be claimed at all.
    async fn assign(&self, issue: u64, login: &str) -> Result<Option<String>> {
        let path = format!("{}/assignees", self.issue_path(issue));
        let resp = self
            .client
            .post_idempotent(&path, &json!({ "assignees": [login] }))
            .await?;
        if !resp.status.is_success() {
            return Err(self.issue_error(issue, &resp));
        }
        let info: Issue = resp.json()?;
        if info.pull_request.is_some() {
            return Err(Error::usage(format!(
                "#{issue} is a pull request, not an issue"
            )));
        }
        if matches!(info.state, octocrab::models::IssueState::Closed) {
            return Err(Error::usage(format!(
                "issue #{issue} is closed; reopen it to claim it"
            )));
        }
        let kept = info.assignees.iter().any(|a| a.login == login);
        if !kept {
            tracing::info!(
                login,
                "GitHub did not keep the assignment (bot or no push access); the lock does not need it"
            );
        }
        Ok(kept.then(|| login.to_string()))
    }

    /// Takes up our own existing lock again, renewing it.
    async fn adopt(&self, issue: u64, h: &Record, now: DateTime<Utc>) -> Result<Attempt> {
        if h.is_stale_at(now) {
            return Err(Error::NotOwner(format!(
                "our lock on #{issue} (comment {}) expired at {}; claim again with --strategy steal-stale",
                h.id,
                h.expires_at()
            )));
        }
        let own = OwnLock {
            comment_id: h.id,
            meta: h.meta.clone(),
            updated_at: h.updated_at,
            created_at: h.created_at,
            assigned: self
                .cache
                .own_lock(&self.cache_key(issue, &h.meta.worker_id))?
                .and_then(|o| o.assigned),
        };
        let holder = self.heartbeat_cached(issue, own).await?;
        Ok(Attempt::Granted(Grant {
            holder,
            adopted: true,
            took_over: None,
        }))
    }

    /// Renews our lock by rewriting our own comment: one request.
    async fn heartbeat_cached(&self, issue: u64, mut own: OwnLock) -> Result<Holder> {
        let key = self.cache_key(issue, &own.meta.worker_id);
        own.meta.heartbeat_last = self.now();
        let resp = self
            .client
            .patch(
                &self.comment_path(own.comment_id),
                &json!({ "body": comment::render(&own.meta) }),
            )
            .await?;
        if resp.status == StatusCode::NOT_FOUND {
            self.cache.set_own_lock(&key, None)?;
            return Err(Error::NotOwner(format!(
                "lost the lock on #{issue}: its comment {} is gone (taken over or force-released)",
                own.comment_id
            )));
        }
        if !resp.status.is_success() {
            return Err(self.issue_error(issue, &resp));
        }
        let c: Comment = resp.json()?;
        let updated = c.updated_at.unwrap_or(c.created_at);
        let ttl = chrono::Duration::seconds(own.meta.ttl_seconds as i64);
        if updated - own.updated_at > ttl {
            // The lease ran out before this renewal reached GitHub: the holder may not keep it.
            own.meta.state = LockState::Released;
            own.meta.released_at = Some(updated);
            own.meta.released_by = Some(format!("{} (expired)", own.meta.worker_id));
            let _ = self
                .client
                .patch(
                    &self.comment_path(own.comment_id),
                    &json!({ "body": comment::render(&own.meta) }),
                )
                .await;
            self.cache.set_own_lock(&key, None)?;
            return Err(Error::NotOwner(format!(
                "the lock on #{issue} expired at {} (GitHub time) before this heartbeat; it is released",
                own.updated_at + ttl
            )));
        }
        own.updated_at = updated;
        self.cache.set_own_lock(&key, Some(own.clone()))?;
        Ok(Self::holder_of_own(
            &own,
            self.client.last_date().unwrap_or(updated),
        ))
    }

    /// `heartbeat --once`.
    pub async fn renew(&self, issue: u64, worker_id: &str) -> Result<Holder> {
        if let Some(own) = self.cache.own_lock(&self.cache_key(issue, worker_id))? {
            return self.heartbeat_cached(issue, own).await;
        }
        self.ensure_login().await?;
        let state = self.read(issue).await?;
        let res = resolve(&state.records);
        match res.holder() {
            Some(h) if h.meta.worker_id == worker_id => {
                match self.adopt(issue, h, state.now).await? {
                    Attempt::Granted(g) => Ok(g.holder),
                    Attempt::Held(h) => Ok(h),
                }
            }
            Some(h) => Err(Error::NotOwner(format!(
                "#{issue} is held by {}, not by {worker_id}",
                h.meta.worker_id
            ))),
            None => Err(Error::NotOwner(format!(
                "{worker_id} holds no lock on #{issue}"
            ))),
        }
    }

    pub async fn release(&self, issue: u64, worker_id: &str, force: bool) -> Result<Released> {
        let key = self.cache_key(issue, worker_id);
        if let Some(own) = self.cache.own_lock(&key)? {
            return self.release_own(issue, own).await;
        }
        self.ensure_login().await?;
        let state = self.read(issue).await?;
        let res = resolve(&state.records);
        let Some(h) = res.holder() else {
            return Ok(Released {
                was_held: false,
                previous: None,
            });
        };
        if h.meta.worker_id == worker_id {
            let own = OwnLock {
                comment_id: h.id,
                meta: h.meta.clone(),
                updated_at: h.updated_at,
                created_at: h.created_at,
                assigned: self.login.lock().unwrap().clone().flatten(),
            };
            return self.release_own(issue, own).await;
        }
        if !force {
            return Err(Error::NotOwner(format!(
                "#{issue} is held by {} (since {}), not by {worker_id}; use --force to release it anyway",
                h.meta.worker_id, h.created_at
            )));
        }
        tracing::warn!(holder = %h.meta.worker_id, "FORCE: releasing a lock held by another worker");
        let now = self.now();
        let notice = LockMeta {
            worker_id: worker_id.to_string(),
            node_id: h.meta.node_id.clone(),
            claimed_at: now,
            heartbeat_last: now,
            ttl_seconds: h.meta.ttl_seconds,
            state: LockState::Released,
            nonce: format!("{:016x}", fastrand::u64(..)),
            task_info: Default::default(),
            takeover: Some(Takeover {
                comment_id: h.id,
                worker_id: h.meta.worker_id.clone(),
                heartbeat: h.updated_at,
                ttl_seconds: h.meta.ttl_seconds,
                force: true,
            }),
            released_at: Some(now),
            released_by: Some(format!("{worker_id} (forced)")),
        };
        self.post_lock(issue, &notice).await?;
        self.delete_comment(h.id).await?;
        Ok(Released {
            was_held: true,
            previous: Some(Self::holder_of(h, state.now)),
        })
    }

    async fn release_own(&self, issue: u64, mut own: OwnLock) -> Result<Released> {
        let key = self.cache_key(issue, &own.meta.worker_id);
        let was_held = own.meta.state == LockState::Held;
        let previous = Self::holder_of_own(&own, self.now());
        own.meta.state = LockState::Released;
        own.meta.released_at = Some(self.now());
        own.meta.released_by = Some(own.meta.worker_id.clone());
        let resp = self
            .client
            .patch(
                &self.comment_path(own.comment_id),
                &json!({ "body": comment::render(&own.meta) }),
            )
            .await?;
        self.cache.set_own_lock(&key, None)?;
        if resp.status == StatusCode::NOT_FOUND {
            return Err(Error::NotOwner(format!(
                "lost the lock on #{issue} before releasing it: comment {} is gone (taken over or force-released)",
                own.comment_id
            )));
        }
        if !resp.status.is_success() {
            return Err(self.issue_error(issue, &resp));
        }
        if let Some(login) = &own.assigned {
            let path = format!("{}/assignees", self.issue_path(issue));
            let resp = self
                .client
                .delete(&path, Some(&json!({ "assignees": [login] })))
                .await?;
            if !resp.status.is_success() {
                tracing::warn!(status = %resp.status, "could not remove the assignment");
            }
        }
        Ok(Released {
            was_held,
            previous: Some(previous),
        })
    }

    async fn issue_info(&self, issue: u64) -> Result<IssueInfo> {
        let resp = self.client.get(&self.issue_path(issue)).await?;
        if !resp.status.is_success() {
            return Err(self.issue_error(issue, &resp));
        }
        let i: Issue = resp.json()?;
        if i.pull_request.is_some() {
            return Err(Error::usage(format!(
                "#{issue} is a pull request, not an issue"
            )));
        }
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

    pub async fn status(&self, issue: u64) -> Result<IssueStatus> {
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
    pub async fn list(&self, window: Duration) -> Result<Vec<(u64, Holder)>> {
        self.ensure_login().await?;
        let since = (Utc::now() - chrono::Duration::from_std(window).unwrap_or_default())
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        let first = format!(
            "/repos/{}/{}/issues/comments?sort=updated&direction=desc&per_page=100&since={since}",
            self.repo.owner, self.repo.name
        );
        let (comments, last) = self.client.get_all::<Comment>(&first).await?;
        if !last.status.is_success() {
            return Err(match last.status {
                StatusCode::NOT_FOUND => Error::NotFound(format!(
                    "repository {} not found (or not visible to this token)",
                    self.repo
                )),
                _ => Error::Unexpected(format!(
                    "GitHub answered {}: {}",
                    last.status,
                    last.message()
                )),
            });
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
        for bad in ["octo", "/x", "x/", "a/b/c", "a b/c", "o/..", ""] {
            assert!(bad.parse::<RepoName>().is_err(), "{bad}");
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
