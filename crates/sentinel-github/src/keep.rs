//! Keeping and giving up a held issue lock: heartbeat (one PATCH of our own comment), release,
//! force-release of someone else's lock, and the janitor's release of a stale one.

use std::time::Duration;

use http::StatusCode;
use octocrab::models::issues::Comment;
use serde_json::json;

use super::GithubBackend;
use super::cache::OwnLock;
use super::client::Response;
use super::comment::{self, LockMeta, LockState, Takeover};
use super::jobs::Listings;
use super::resolve::{Record, resolve};
use sentinel_core::error::{Error, Result};
use sentinel_core::lease;
use sentinel_core::lock::{
    Attempt, Claimant, Holder, ReleaseStaleRequest, Released, RenewRequest, StaleRelease,
};

impl GithubBackend {
    /// Renews our lock by rewriting our own comment: one request.
    pub(super) async fn heartbeat_cached(
        &self,
        issue: u64,
        mut own: OwnLock,
        new_ttl: Option<Duration>,
    ) -> Result<Holder> {
        let key = self.cache_key(issue, &own.meta.worker_id);
        // The lease this renewal must arrive within is the one being renewed.
        let ttl = Duration::from_secs(own.meta.ttl_seconds);
        own.meta.heartbeat_last = self.now();
        // The lock lives as long as whoever renews it: a renewal from another job (a re-run that
        // re-adopted the lock) or from outside Actions must not leave it tied to a job that ends.
        own.meta.actions_job = self.actions_job.clone();
        if let Some(new_ttl) = new_ttl {
            // Whole seconds on GitHub, rounded up so that a lease is never shorter than asked.
            own.meta.ttl_seconds = new_ttl.as_secs_f64().ceil().max(1.0) as u64;
        }
        let resp = self.write_own(&own).await?;
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
        if updated > lease::expires_at(own.updated_at, ttl) {
            // The lease ran out before this renewal reached GitHub: the holder may not keep it.
            own.meta.state = LockState::Released;
            own.meta.released_at = Some(updated);
            own.meta.released_by = Some(format!("{} (expired)", own.meta.worker_id));
            let _ = self.write_own(&own).await;
            self.cache.set_own_lock(&key, None)?;
            return Err(Error::NotOwner(format!(
                "the lock on #{issue} expired at {} (GitHub time) before this heartbeat; it is released",
                lease::rfc3339(lease::expires_at(own.updated_at, ttl))
            )));
        }
        own.updated_at = updated;
        self.cache.set_own_lock(&key, Some(own.clone()))?;
        Ok(Self::holder_of_own(
            &own,
            self.client.last_date().unwrap_or(updated),
        ))
    }

    /// `heartbeat --once`; with a fencing token, only the grant whose lock comment has that id;
    /// with a TTL, the lease's new length.
    pub(super) async fn renew_issue(&self, issue: u64, req: &RenewRequest) -> Result<Holder> {
        let (worker_id, token) = (req.worker_id.as_str(), req.fencing_token);
        if let Some(own) = self.cache.own_lock(&self.cache_key(issue, worker_id))? {
            not_this_grant(issue, token, own.comment_id)?;
            return self.heartbeat_cached(issue, own, req.ttl).await;
        }
        self.ensure_login().await?;
        let state = self.read(issue).await?;
        let res = resolve(&state.records);
        match res.holder() {
            Some(h) if h.meta.worker_id == worker_id => {
                not_this_grant(issue, token, h.id)?;
                match self.adopt(issue, h, state.now, req.ttl).await? {
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

    pub(super) async fn release_issue(
        &self,
        issue: u64,
        worker_id: &str,
        force: bool,
        token: Option<u64>,
    ) -> Result<Released> {
        let key = self.cache_key(issue, worker_id);
        if let Some(own) = self.cache.own_lock(&key)? {
            not_this_grant(issue, token, own.comment_id)?;
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
        let ours = h.meta.worker_id == worker_id;
        if ours {
            not_this_grant(issue, token, h.id)?;
        }
        if !ours && !force {
            return Err(Error::NotOwner(format!(
                "#{issue} is held by {} (since {}), not by {worker_id}; use --force to release it anyway",
                h.meta.worker_id, h.created_at
            )));
        }
        if !ours {
            tracing::warn!(holder = %h.meta.worker_id, "FORCE: releasing a lock held by another worker");
        }
        // Without our cache entry, another process may still hold this comment's id and would
        // revive the lock by rewriting it on its next heartbeat. So the comment is replaced, not
        // edited: a released take-over notice, then the old comment deleted (its heartbeats get
        // 404).
        let now = self.now();
        let notice = LockMeta {
            worker_id: worker_id.to_string(),
            node_id: h.meta.node_id.clone(),
            claimed_at: h.created_at,
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
                completed_job: None,
            }),
            released_at: Some(now),
            released_by: Some(if ours {
                worker_id.to_string()
            } else {
                format!("{worker_id} (forced)")
            }),
            after_release: None,
            actions_job: None,
        };
        self.post_lock(issue, &notice).await?;
        self.delete_comment(h.id).await?;
        let login = self.login.lock().unwrap().clone().flatten();
        if let Some(login) = login {
            self.unassign(issue, &login).await?;
        }
        Ok(Released {
            was_held: true,
            previous: Some(Self::holder_of(h, state.now)),
        })
    }

    /// The janitor's release: a released take-over notice of the stale holder, verified like a
    /// claim. `resolve` lets the notice win only if the holder was stale at the notice's
    /// `created_at`, so a holder that renewed first keeps its lock and the notice is withdrawn.
    pub(super) async fn release_stale_issue(
        &self,
        issue: u64,
        req: &ReleaseStaleRequest,
    ) -> Result<StaleRelease> {
        self.ensure_login().await?;
        let (victim, liveness) = match self.stale_victim(issue, req).await? {
            Ok(found) => found,
            Err(verdict) => return Ok(verdict),
        };
        let notice = self.stale_notice(&req.janitor, &victim);
        let posted = self.post_lock(issue, &notice).await?;
        let notice_id = posted.id.into_inner();
        let client = self.client.clone();
        let path = self.comment_path(notice_id);
        // Until the verdict is in, an interrupt withdraws the notice; once it has won, every
        // reader already counts the lock as free and the notice must stay.
        let undo = sentinel_core::interrupt::on_interrupt(move || async move {
            let _ = client.delete::<()>(&path, None).await;
        });
        let state = match self.read_notice_back(issue, &posted).await {
            Ok(state) => state,
            Err(e) => {
                self.discard(notice_id).await;
                return Err(e);
            }
        };
        // The notice must have ended the reign of exactly the holder it names: not freed a lock
        // its holder had released meanwhile, nor followed another janitor's notice.
        let without: Vec<Record> = state
            .records
            .iter()
            .filter(|r| r.id != notice_id)
            .cloned()
            .collect();
        let before = resolve(&without);
        let won = resolve(&state.records).current.map(|r| r.id) == Some(notice_id);
        let Some(victim_record) = before.holder().filter(|h| won && h.id == victim.comment_id)
        else {
            // Renewed before the notice, released, or ended by someone else: not ours to free.
            self.discard(notice_id).await;
            return Ok(match before.holder() {
                Some(h) => StaleRelease::Kept(Self::holder_of(h, state.now)),
                None => StaleRelease::Free,
            });
        };
        drop(undo);
        // The notice already decides for every reader; deleting the victim's comment makes its
        // next heartbeat fail at once (404) instead of at its own expiry check.
        if let Err(e) = self.delete_comment(victim.comment_id).await {
            tracing::warn!(comment = victim.comment_id, error = %e, "released, but could not delete the stale lock comment");
        }
        // GitHub drops bot assignees, so only a user can have been assigned by the claim.
        if !victim_record.author.ends_with("[bot]")
            && let Err(e) = self.unassign(issue, &victim_record.author).await
        {
            tracing::warn!(error = %e, "could not remove the stale holder's assignment");
        }
        let mut released = Self::holder_of(victim_record, state.now);
        if liveness.is_some() {
            released.stale = true;
            released.liveness = liveness;
        }
        Ok(StaleRelease::Released(released))
    }

    /// The holder a janitor's notice would end, and why it is stale when its lease is not what
    /// says so: the one the janitor saw, or the issue's current one; `Err` is the verdict when
    /// there is nothing stale to release.
    async fn stale_victim(
        &self,
        issue: u64,
        req: &ReleaseStaleRequest,
    ) -> Result<std::result::Result<(Takeover, Option<String>), StaleRelease>> {
        match &req.seen {
            Some(h) if !h.stale => return Ok(Err(StaleRelease::Kept(h.clone()))),
            // Stale by its lease as listed; one stale by its job is read again, since the notice
            // must name the job the holder's comment records.
            Some(h) if h.liveness.is_none() => {
                return Ok(Ok((
                    Takeover {
                        comment_id: h.fencing_token,
                        worker_id: h.worker_id.clone(),
                        heartbeat: h.heartbeat_last,
                        ttl_seconds: lease::until(h.heartbeat_last, h.expires_at).as_secs(),
                        force: false,
                        completed_job: None,
                    },
                    None,
                )));
            }
            _ => {}
        }
        let state = self.read(issue).await?;
        let res = resolve(&state.records);
        let Some(h) = res.holder() else {
            return Ok(Err(StaleRelease::Free));
        };
        let judged = self.judge(h, state.now, &mut Listings::new()).await;
        if !judged.stale {
            return Ok(Err(StaleRelease::Kept(judged.holder(h, state.now))));
        }
        Ok(Ok((
            Takeover {
                comment_id: h.id,
                worker_id: h.meta.worker_id.clone(),
                heartbeat: h.updated_at,
                ttl_seconds: h.meta.ttl_seconds,
                force: false,
                completed_job: judged.completed_job,
            },
            judged.liveness,
        )))
    }

    /// The released take-over notice that ends `victim`'s lease, signed by the janitor.
    fn stale_notice(&self, janitor: &Claimant, victim: &Takeover) -> LockMeta {
        let now = self.now();
        LockMeta {
            worker_id: janitor.worker_id.clone(),
            node_id: janitor.node_id.clone(),
            claimed_at: now,
            heartbeat_last: now,
            ttl_seconds: victim.ttl_seconds,
            state: LockState::Released,
            nonce: format!("{:016x}", fastrand::u64(..)),
            task_info: Default::default(),
            takeover: Some(victim.clone()),
            released_at: Some(now),
            released_by: Some(janitor.worker_id.clone()),
            after_release: None,
            actions_job: None,
        }
    }

    /// Settles and reads the issue until our just-posted notice is listed.
    async fn read_notice_back(&self, issue: u64, posted: &Comment) -> Result<super::Comments> {
        self.learn_login(&posted.user.login)?;
        tokio::time::sleep(self.settle).await;
        self.read_including(issue, posted.id.into_inner()).await
    }

    async fn release_own(&self, issue: u64, mut own: OwnLock) -> Result<Released> {
        let key = self.cache_key(issue, &own.meta.worker_id);
        let was_held = own.meta.state == LockState::Held;
        let previous = Self::holder_of_own(&own, self.now());
        own.meta.state = LockState::Released;
        own.meta.released_at = Some(self.now());
        own.meta.released_by = Some(own.meta.worker_id.clone());
        let resp = self.write_own(&own).await?;
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
            self.unassign(issue, login).await?;
        }
        Ok(Released {
            was_held,
            previous: Some(previous),
        })
    }

    /// Rewrites our own lock comment from what we know of it (heartbeat, expiry, release).
    async fn write_own(&self, own: &OwnLock) -> Result<Response> {
        let path = self.comment_path(own.comment_id);
        let body = json!({ "body": comment::render(&own.meta) });
        self.client.patch(&path, &body).await
    }

    /// Best effort: the assignment is for humans; a failure here is logged, not fatal.
    async fn unassign(&self, issue: u64, login: &str) -> Result<()> {
        let path = format!("{}/assignees", self.issue_path(issue));
        let resp = self
            .client
            .delete(&path, Some(&json!({ "assignees": [login] })))
            .await?;
        if !resp.status.is_success() {
            tracing::warn!(status = %resp.status, "could not remove the assignment");
        }
        Ok(())
    }
}

/// A caller that names its grant by fencing token (the lock comment's id) holds nothing when the
/// worker's current lock comment is another: that grant ended and a newer one took its place.
fn not_this_grant(issue: u64, token: Option<u64>, current: u64) -> Result<()> {
    match token {
        Some(t) if t != current => Err(Error::NotOwner(format!(
            "the grant of #{issue} with fencing token {t} is over: the lock is held under \
             fencing token {current} now"
        ))),
        _ => Ok(()),
    }
}
