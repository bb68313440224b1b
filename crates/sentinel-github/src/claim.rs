//! Acquiring an issue: post a lock comment, settle, read it back, let the ownership rule decide;
//! then take over the victim (if any), assign, and remember the lock for heartbeat and release.

use std::time::Duration;

use chrono::{DateTime, Utc};
use http::StatusCode;
use octocrab::models::issues::Comment;
use serde_json::json;

use super::cache::OwnLock;
use super::client::Sent;
use super::comment::{self, AfterRelease, LockMeta, LockState, Parsed, Takeover};
use super::jobs::{Judged, Listings};
use super::resolve::{Record, resolve};
use super::{Comments, GithubBackend, VISIBILITY_READS};
use sentinel_core::error::{Error, Result};
use sentinel_core::lock::{AcquireRequest, Attempt, Grant, Holder, Takeover as Mode};

/// What the look before a claim decided.
enum Look {
    /// The claim is answered without posting: readopted, or held.
    Answered(Attempt),
    /// Post the claim, taking over this holder if any.
    Claim(Option<(Takeover, Holder)>),
}

impl GithubBackend {
    /// Posts a lock comment exactly once, even when a response is lost: after an unknown outcome
    /// it re-reads the issue and looks for its nonce before posting again.
    pub(super) async fn post_lock(&self, issue: u64, meta: &LockMeta) -> Result<Comment> {
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
        let comments = self.list_comments(issue).await?;
        Ok(comments.into_iter().find(|c| {
            matches!(comment::parse(c.body.as_deref().unwrap_or_default()), Parsed::Lock(m) if m.nonce == nonce)
        }))
    }

    /// Reads until our just-written comment is listed: only such a read is guaranteed to contain
    /// every comment written before ours (they were written earlier still, and `settle` exceeds
    /// GitHub's list lag).
    pub(super) async fn read_including(&self, issue: u64, id: u64) -> Result<Comments> {
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

    /// One acquisition attempt. It reads before writing: a held lock then costs a read instead of
    /// a comment written and deleted, a take-over needs the holder, and a claim written after
    /// reading the release records it, which wins the tie when the claim lands in the release's
    /// second (see `resolve`) instead of withdrawing and claiming again a second later. Without
    /// a token the first attempt writes at once: a read would answer for a public repository,
    /// and the refused write says what is missing (exit 5) where a held lock would not.
    pub(super) async fn acquire_issue(&self, issue: u64, req: &AcquireRequest) -> Result<Attempt> {
        req.kind.exclusive_only("github")?;
        let look_first = req.attempt > 0 || self.fingerprint.is_some();
        self.claim_once(issue, req, look_first, 3).await
    }

    /// `look_first`: read before writing (see above); the work queue skips it where its listing
    /// already vouches for the issue.
    pub(super) async fn claim_once(
        &self,
        issue: u64,
        req: &AcquireRequest,
        look_first: bool,
        tie_retries: u32,
    ) -> Result<Attempt> {
        self.claim_after(issue, req, look_first, tie_retries, None)
            .await
    }

    /// [`claim_once`](Self::claim_once) knowing `after_release`, a release read before this
    /// call, unless its own read finds a later one.
    async fn claim_after(
        &self,
        issue: u64,
        req: &AcquireRequest,
        look_first: bool,
        tie_retries: u32,
        mut after_release: Option<AfterRelease>,
    ) -> Result<Attempt> {
        let worker = &req.claimant.worker_id;
        let mut takeover = None;
        if look_first || req.takeover != Mode::None {
            match self.look(issue, req, &mut after_release).await? {
                Look::Answered(attempt) => return Ok(attempt),
                Look::Claim(taking_over) => takeover = taking_over,
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
            after_release,
            actions_job: self.actions_job.clone(),
        };
        let mine = self.post_lock(issue, &meta).await?;
        let my_id = mine.id.into_inner();
        let client = self.client.clone();
        let path = self.comment_path(my_id);
        let _undo = sentinel_core::interrupt::on_interrupt(move || async move {
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

    /// The look before posting a claim: the lock read, and either the answer (the holder's own
    /// lease readopted, or held by someone this claim may not take over) or the claim to post,
    /// with the take-over it makes. A free lock's last release goes into `after_release`.
    async fn look(
        &self,
        issue: u64,
        req: &AcquireRequest,
        after_release: &mut Option<AfterRelease>,
    ) -> Result<Look> {
        if req.takeover != Mode::None || req.attempt > 0 {
            // Deciding to take over needs every trusted comment, ours included; a plain first
            // look does not (a holder it misses is found by the read after writing), so it
            // spends no `GET /user` on learning who we are.
            self.ensure_login().await?;
        }
        let state = self.read(issue).await?;
        let res = resolve(&state.records);
        let Some(h) = res.holder() else {
            *after_release = res.current.map(seen_release);
            return Ok(Look::Claim(None));
        };
        if req.readopt && h.meta.worker_id == req.claimant.worker_id && !h.is_stale_at(state.now) {
            return Ok(Look::Answered(self.adopt(issue, h, state.now, None).await?));
        }
        // Only a take-over of stale locks turns on the holder's Actions job (its lease aside):
        // for any other claim the answer would change nothing but rate limit.
        let judged = if req.takeover == Mode::Stale {
            self.judge(h, state.now, &mut Listings::new()).await
        } else {
            Judged::by_lease(h, state.now)
        };
        let allowed = match req.takeover {
            Mode::Any => true,
            Mode::Stale => judged.stale,
            Mode::None => false,
        };
        if !allowed {
            return Ok(Look::Answered(Attempt::Held(judged.holder(h, state.now))));
        }
        if req.takeover == Mode::Any && !judged.stale {
            tracing::warn!(holder = %h.meta.worker_id, "FORCE: taking over a live lock");
        }
        Ok(Look::Claim(Some((
            Takeover {
                comment_id: h.id,
                worker_id: h.meta.worker_id.clone(),
                heartbeat: h.updated_at,
                ttl_seconds: h.meta.ttl_seconds,
                force: !judged.stale,
                completed_job: judged.completed_job.clone(),
            },
            judged.holder(h, state.now),
        ))))
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
            // seconds) we had not read before writing, which counts as still held. This read
            // shows the release: withdraw, and claim again at once recording it.
            self.discard(my_id).await;
            if tie_retries == 0 {
                return Err(Error::Conflict(format!(
                    "#{issue}: claims keep landing in the same second as releases; try again"
                )));
            }
            let seen = res.current.map(seen_release);
            return Box::pin(self.claim_after(issue, req, false, tie_retries - 1, seen)).await;
        };
        if h.id != my_id {
            self.discard(my_id).await;
            if req.readopt && &h.meta.worker_id == worker && !h.is_stale_at(state.now) {
                return self.adopt(issue, h, state.now, None).await;
            }
            return Ok(Attempt::Held(Self::holder_of(h, state.now)));
        }
        // Our own stray comments (e.g. a duplicate after a lost response) must not linger.
        for r in &state.records {
            if r.id != my_id && &r.meta.worker_id == worker && r.meta.state == LockState::Held {
                self.discard(r.id).await;
            }
        }
        // Assigning also tells us the issue is open and not a pull request: check that before
        // taking anything away from a victim.
        let assigned = self.assign(issue, &mine.user.login).await?;
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
            took_over: takeover.map(|(_, h)| Box::new(h)),
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
        let info = self.issue_of(issue, &resp)?;
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
    pub(super) async fn adopt(
        &self,
        issue: u64,
        h: &Record,
        now: DateTime<Utc>,
        new_ttl: Option<Duration>,
    ) -> Result<Attempt> {
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
        let holder = self.heartbeat_cached(issue, own, new_ttl).await?;
        Ok(Attempt::Granted(Grant {
            holder,
            adopted: true,
            took_over: None,
        }))
    }
}

/// What a claim records of the released lock comment it read (see `resolve`).
fn seen_release(r: &Record) -> AfterRelease {
    AfterRelease {
        comment_id: r.id,
        released: r.updated_at,
    }
}
