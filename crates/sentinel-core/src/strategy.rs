//! Claim strategies: how long to keep trying and what an attempt may take over.
//!
//! Backend-neutral: the loop gets a closure that makes one attempt, so GitHub, local and server
//! locks back off, give up and report conflicts the same way. [`meet`] is a barrier's wait: a
//! whole timeout in as many arrivals as the backend's longest wait needs. An arrival that is
//! not opened has left the barrier before it is answered, so waiting in several arrivals never
//! counts one participant twice; between two of them it is briefly not counted, which can only
//! delay an opening, never cause one.

use std::future::Future;
use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;

use crate::backend::LockBackend;
use crate::barrier::{ArriveRequest, Arrived};
use crate::error::{Error, Result};
use crate::lease;
use crate::lock::{AcquireRequest, Attempt, Claimant, Claimed, Holder, RenewRequest, Takeover};

/// What a claim does when the lock is held (`--strategy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    /// Wait and retry with exponential backoff while the lock is held (default).
    Retry,
    /// Give up at once when the lock is held (exit 3).
    FailFast,
    /// Take over a lock whose heartbeat is older than its TTL; otherwise retry.
    StealStale,
    /// Take over unconditionally, even a live lock. Loud, for humans fixing a mess.
    Force,
}

impl Strategy {
    /// Which holders an attempt under this strategy may take the lock from.
    pub fn takeover(self) -> Takeover {
        match self {
            Strategy::Retry | Strategy::FailFast => Takeover::None,
            Strategy::StealStale => Takeover::Stale,
            Strategy::Force => Takeover::Any,
        }
    }
}

/// How a claim keeps trying: the strategy and its backoff. The default is `retry` with 5
/// retries, pauses from 1 s doubling to 16 s. Check user-given values with [`Policy::validate`].
#[derive(Debug, Clone)]
pub struct Policy {
    /// What to do when the lock is held.
    pub strategy: Strategy,
    /// Attempts after the first, for `retry` and `steal-stale`; `fail-fast` and `force` make
    /// one attempt whatever this says.
    pub max_retries: u32,
    /// The pause before the first retry; later pauses double (±25% jitter).
    pub initial_backoff: Duration,
    /// The longest pause between attempts (at most [`MAX_BACKOFF`]).
    pub max_backoff: Duration,
    /// `--wait`: the whole time `retry` and `steal-stale` keep trying, instead of
    /// `max_retries`; the last attempt is made at the deadline (zero: one attempt).
    pub wait: Option<Duration>,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            strategy: Strategy::Retry,
            max_retries: 5,
            initial_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(16),
            wait: None,
        }
    }
}

impl Policy {
    fn attempts(&self) -> u32 {
        match self.strategy {
            // Bounded by the deadline instead.
            Strategy::Retry | Strategy::StealStale if self.wait.is_some() => u32::MAX,
            Strategy::Retry | Strategy::StealStale => self.max_retries.saturating_add(1),
            Strategy::FailFast | Strategy::Force => 1,
        }
    }

    /// The time the retry loop would spend pausing between its attempts (without jitter): how
    /// long a server-side wait lasts instead.
    pub fn wait_budget(&self) -> Duration {
        if let Some(wait) = self.wait {
            return wait;
        }
        let mut total = Duration::ZERO;
        let mut pause = self.initial_backoff.min(self.max_backoff);
        for n in 0..self.max_retries {
            if pause.is_zero() {
                // A zero pause doubles to zero: the rest adds nothing.
                return total;
            }
            if pause >= self.max_backoff {
                // Every remaining pause is the cap: no need to count them one by one.
                let left = self.max_retries - n;
                return total.saturating_add(self.max_backoff.saturating_mul(left));
            }
            total = total.saturating_add(pause);
            pause = pause.saturating_mul(2).min(self.max_backoff);
        }
        total
    }

    /// The longest the claim pauses after its attempt `n` (0-based) before the next one: the
    /// backoff's upper end (jitter included), no later than the deadline `left` away if there is
    /// one; zero when `n` is the last attempt. A polling backend may hold a name back that long
    /// for a refused claim ([`AcquireRequest::wait`]).
    pub fn next_attempt_within(&self, n: u32, left: Option<Duration>) -> Duration {
        if n.saturating_add(1) >= self.attempts() {
            return Duration::ZERO;
        }
        let pause = self
            .initial_backoff
            .saturating_mul(2u32.saturating_pow(n))
            .min(self.max_backoff);
        let bound = pause.saturating_add(pause / 4);
        left.map_or(bound, |l| bound.min(l))
    }

    /// Pause before retry number `n` (1-based): doubling from the initial backoff, capped, with
    /// ±25% jitter so workers that collided once do not collide again in lockstep.
    pub fn backoff(&self, n: u32) -> Duration {
        let exp = self
            .initial_backoff
            .saturating_mul(2u32.saturating_pow(n.saturating_sub(1)));
        lease::jitter(exp.min(self.max_backoff), 0.25)
    }
}

impl Policy {
    /// Refuses backoff settings that make no sense, before anything is claimed.
    pub fn validate(self) -> Result<Policy> {
        if self.wait.is_some_and(|w| w > MAX_WAIT) {
            return Err(Error::usage(
                "--wait must be at most 7d: a claim waiting longer looks like a hang",
            ));
        }
        if self.wait.is_some() && matches!(self.strategy, Strategy::FailFast | Strategy::Force) {
            return Err(Error::usage(
                "--wait applies to --strategy retry and steal-stale: fail-fast and force make one attempt",
            ));
        }
        if self.max_backoff > MAX_BACKOFF {
            return Err(Error::usage(
                "--max-backoff must be at most 1h: a longer pause between retries looks like a hang",
            ));
        }
        if self.initial_backoff > self.max_backoff {
            return Err(Error::usage(format!(
                "--initial-backoff ({}) must not exceed --max-backoff ({})",
                crate::duration::display(self.initial_backoff),
                crate::duration::display(self.max_backoff)
            )));
        }
        Ok(self)
    }
}

/// Longest pause between two attempts a user may ask for.
pub const MAX_BACKOFF: Duration = Duration::from_secs(3600);
/// Longest `--wait` a user may ask for.
pub const MAX_WAIT: Duration = Duration::from_secs(7 * 24 * 3600);

/// Claims `req.lock` on `backend` under `policy`: the one claim loop of `claim`, `run` and the
/// work queue. `waiting` is told, before each pause, whom the claim waits for and how long.
///
/// A claim under a default worker id (`!req.readopt`) that finds the lock held by that very id
/// fails at once: the holder is another process of the same shell (or this one's earlier
/// claim), and waiting would only wait for itself.
pub async fn claim<B: LockBackend>(
    backend: &B,
    req: &AcquireRequest,
    policy: &Policy,
    mut waiting: impl FnMut(&Holder, Duration),
) -> Result<Claimed> {
    let what = backend.describe(&req.lock);
    let what = what.as_str();
    let try_once = |n: u32, wait: Duration| {
        let attempt = AcquireRequest {
            attempt: n,
            wait,
            ..req.clone()
        };
        async move {
            match backend.try_acquire(&attempt).await? {
                Attempt::Held(h)
                    if !attempt.readopt && h.worker_id == attempt.claimant.worker_id =>
                {
                    Err(held_by_itself(what, &h))
                }
                other => Ok(other),
            }
        }
    };
    if !backend.waits_server_side() {
        // A polling backend is told when the claim comes back, so that it can keep the name
        // for it meanwhile (the local backend's reservation of a shared lock or semaphore).
        return acquire(policy, what, try_once, waiting).await;
    }
    if policy.strategy != Strategy::Retry {
        return acquire(policy, what, |n, _| try_once(n, Duration::ZERO), waiting).await;
    }
    // A backend that queues waiters (the coordinator) waits out the whole retry budget in one
    // attempt: it grants in arrival order the moment the lock is free, where polling would
    // lose to whoever asks at the right instant. A first attempt that does not wait comes
    // before it: only a refusal names the holder, which the caller is told before the wait (a
    // wait on the server says nothing until it ends), and it finds a lock held by ourselves.
    let wait = policy.wait_budget();
    let single = Policy {
        max_retries: 0,
        wait: None,
        ..policy.clone()
    };
    let started = Instant::now();
    let holder = match try_once(0, Duration::ZERO).await? {
        Attempt::Granted(grant) => {
            return Ok(Claimed {
                grant,
                attempts: 1,
                attempt_started: started,
            });
        }
        Attempt::Held(h) => h,
    };
    if wait.is_zero() {
        return Err(conflict(what, &holder, &single, 1));
    }
    waiting(&holder, wait);
    match acquire(&single, what, |_, _| try_once(1, wait), |_, _| {}).await {
        Ok(claimed) => Ok(lease_started(backend, req, claimed).await),
        Err(Error::Conflict(msg)) => Err(Error::Conflict(format!(
            "{msg}; gave up after waiting {} on the server",
            crate::duration::display(wait)
        ))),
        Err(other) => Err(other),
    }
}

/// A grant that ended a wait on the server, with a lease whose start is known.
///
/// The server made the grant at some moment of the wait, so counting the lease from the start
/// of the attempt (as for an answer that came at once) would take a lease for ended that has
/// hardly begun, after any wait longer than the TTL. A renewal at once starts the lease again
/// after a known moment. Should the renewal fail, the grant stands as it came: its keep-alive
/// then renews at once, or reports the lease lost.
async fn lease_started<B: LockBackend>(
    backend: &B,
    req: &AcquireRequest,
    claimed: Claimed,
) -> Claimed {
    let renew = RenewRequest {
        lock: req.lock.clone(),
        worker_id: req.claimant.worker_id.clone(),
        fencing_token: Some(claimed.grant.holder.fencing_token),
        ttl: None,
    };
    let started = Instant::now();
    let mut claimed = Claimed {
        attempts: 2,
        ..claimed
    };
    match backend.renew(&renew).await {
        Ok(holder) => {
            claimed.grant.holder = holder;
            claimed.attempt_started = started;
        }
        Err(e) => tracing::warn!("could not renew the lease the wait ended with: {e}"),
    }
    claimed
}

/// The worker a holder is, and where it runs when that is known (a lock taken over HTTP may
/// not say): `w1 on build-3`, or `w1`.
pub fn held_by(h: &Holder) -> String {
    if h.node_id.is_empty() {
        h.worker_id.clone()
    } else {
        format!("{} on {}", h.worker_id, h.node_id)
    }
}

/// The conflict of a claim that found the lock held by its own default worker id.
fn held_by_itself(what: &str, h: &Holder) -> Error {
    Error::Conflict(format!(
        "{what} is already held by this shell's default worker id {} (claimed at {}, fencing \
         token {}); pass --worker-id to claim as another worker, or release it first",
        h.worker_id,
        lease::human(h.claimed_at),
        h.fencing_token
    ))
}

/// Runs attempts until granted or the policy gives up. `attempt(n, next)` gets the 0-based attempt
/// number and the longest pause before the next attempt ([`Policy::next_attempt_within`]);
/// `waiting` is told before each pause (for a spinner) with the holder and the pause.
pub async fn acquire<F, Fut>(
    policy: &Policy,
    what: &str,
    mut attempt: F,
    mut waiting: impl FnMut(&Holder, Duration),
) -> Result<Claimed>
where
    F: FnMut(u32, Duration) -> Fut,
    Fut: Future<Output = Result<Attempt>>,
{
    let total = policy.attempts();
    let deadline = policy.wait.map(|w| Instant::now() + w);
    for n in 0..total {
        let started = Instant::now();
        let left = deadline.map(|d| d.saturating_duration_since(started));
        match attempt(n, policy.next_attempt_within(n, left)).await? {
            Attempt::Granted(grant) => {
                return Ok(Claimed {
                    grant,
                    attempts: n + 1,
                    attempt_started: started,
                });
            }
            Attempt::Held(holder) => {
                let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
                if n + 1 == total || left.is_some_and(|l| l.is_zero()) {
                    return Err(conflict(what, &holder, policy, n + 1));
                }
                let pause = match left {
                    Some(left) => policy.backoff(n + 1).min(left),
                    None => policy.backoff(n + 1),
                };
                tracing::info!(holder = %holder.worker_id, pause_ms = pause.as_millis() as u64, "lock held; retrying");
                waiting(&holder, pause);
                tokio::time::sleep(pause).await;
            }
        }
    }
    unreachable!("the loop returns on its last attempt")
}

/// The conflict a claim that gave up reports: who holds the lock, until when, after how many
/// attempts.
pub(crate) fn conflict(what: &str, h: &Holder, policy: &Policy, attempts: u32) -> Error {
    let mut msg = format!(
        "{what} is held by {} (since {}, fencing token {})",
        held_by(h),
        lease::human(h.claimed_at),
        h.fencing_token
    );
    let advise_steal = policy.strategy != Strategy::StealStale;
    match (&h.liveness, h.stale) {
        (Some(why), true) if advise_steal => msg.push_str(&format!(
            "; it is stale ({why}): use --strategy steal-stale to take it over"
        )),
        // Not the lease but the holder's job decided: its expiry may be long past.
        (Some(why), false) => msg.push_str(&format!("; it is live: {why}")),
        (None, true) if advise_steal => msg.push_str(&format!(
            "; its heartbeat is stale since {}: use --strategy steal-stale to take it over",
            lease::human(h.expires_at)
        )),
        (None, false) => msg.push_str(&format!(
            "; it is live until {}",
            lease::human(h.expires_at)
        )),
        (_, true) => {}
    }
    if let Some(wait) = policy.wait.filter(|w| !w.is_zero()) {
        msg.push_str(&format!(
            "; gave up after waiting {} ({attempts} attempts)",
            crate::duration::display(wait)
        ));
    } else if attempts > 1 {
        msg.push_str(&format!("; gave up after {attempts} attempts"));
    } else if policy.strategy == Strategy::FailFast {
        msg.push_str(" (fail-fast)");
    }
    Error::Conflict(msg)
}

/// Arrives at barrier `name` of `count` and waits until it opens or `timeout` (forever for
/// `None`) has passed: [`Arrived::NotOpened`] then, with this participant gone from it.
pub async fn meet<B: LockBackend + ?Sized>(
    backend: &B,
    name: &str,
    claimant: &Claimant,
    count: u32,
    timeout: Option<Duration>,
) -> Result<Arrived> {
    crate::barrier::validate_count(count)?;
    let deadline = timeout.map(|t| Instant::now() + t);
    loop {
        let wait = match deadline {
            Some(d) => d.saturating_duration_since(Instant::now()),
            None => Duration::MAX,
        };
        let req = ArriveRequest {
            barrier: name.to_string(),
            claimant: claimant.clone(),
            count,
            wait,
        };
        let arrived = backend.arrive(&req).await?;
        let over = deadline.is_some_and(|d| Instant::now() >= d);
        if matches!(arrived, Arrived::Opened { .. }) || over {
            return Ok(arrived);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;

    fn holder() -> Holder {
        Holder {
            worker_id: "w".into(),
            node_id: "n".into(),
            fencing_token: 7,
            claimed_at: Utc::now(),
            heartbeat_last: Utc::now(),
            expires_at: Utc::now(),
            stale: false,
            task_info: Default::default(),
            liveness: None,
        }
    }

    #[test]
    fn backoff_doubles_and_caps() {
        let p = Policy::default();
        for (n, base) in [(1, 1.0), (2, 2.0), (3, 4.0), (5, 16.0), (9, 16.0)] {
            let d = p.backoff(n).as_secs_f64();
            assert!(d >= base * 0.75 && d <= base * 1.25, "retry {n}: {d}");
        }
    }

    #[test]
    fn the_wait_budget_is_the_sum_of_the_backoffs() {
        assert_eq!(Policy::default().wait_budget(), Duration::from_secs(31));
        let huge = Policy {
            max_retries: u32::MAX,
            max_backoff: MAX_BACKOFF,
            ..Policy::default()
        };
        assert!(huge.wait_budget() >= MAX_BACKOFF);
        let none = Policy {
            max_retries: 0,
            ..Policy::default()
        };
        assert_eq!(none.wait_budget(), Duration::ZERO);
        let zero = Policy {
            max_retries: u32::MAX,
            initial_backoff: Duration::ZERO,
            ..Policy::default()
        };
        assert_eq!(zero.wait_budget(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn retry_gives_up_with_a_conflict_after_max_retries() {
        let p = Policy {
            max_retries: 3,
            ..Policy::default()
        };
        let mut calls = Vec::new();
        let err = acquire(
            &p,
            "#1",
            |_, next| {
                calls.push((Instant::now(), next));
                async { Ok(Attempt::Held(holder())) }
            },
            |_, _| {},
        )
        .await
        .unwrap_err();
        assert_eq!(calls.len(), 4);
        assert!(matches!(err, Error::Conflict(ref m) if m.contains("gave up after 4 attempts")));
        // Each attempt is told the longest pause before the next one, and the last that none
        // comes: what the local backend keeps a reservation for.
        let told: Vec<u64> = calls
            .iter()
            .map(|(_, next)| next.as_millis() as u64)
            .collect();
        assert_eq!(told, [1_250, 2_500, 5_000, 0]);
        for pair in calls.windows(2) {
            assert!(pair[1].0 - pair[0].0 <= pair[0].1, "{calls:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn wait_retries_until_its_deadline_whatever_max_retries_says() {
        let p = Policy {
            max_retries: 1,
            wait: Some(Duration::from_secs(60)),
            ..Policy::default()
        };
        let start = Instant::now();
        let mut calls = Vec::new();
        let err = acquire(
            &p,
            "#1",
            |_, next| {
                calls.push((Instant::now(), next));
                async { Ok(Attempt::Held(holder())) }
            },
            |_, _| {},
        )
        .await
        .unwrap_err();
        // Pauses of about 1, 2, 4, 8, 16, 16… s, the last one cut short at the deadline, which
        // the attempt before it is told; the attempt at the deadline is told none comes.
        assert!(calls.len() > 5, "{calls:?}");
        for pair in calls.windows(2) {
            assert!(pair[1].0 - pair[0].0 <= pair[0].1, "{calls:?}");
        }
        assert_eq!(calls.last().unwrap().1, Duration::ZERO);
        assert_eq!(start.elapsed(), Duration::from_secs(60));
        assert!(matches!(err, Error::Conflict(ref m) if m.contains("gave up after waiting 1m")));
        let now = Policy {
            wait: Some(Duration::ZERO),
            ..Policy::default()
        };
        let mut calls = 0;
        let r = acquire(
            &now,
            "#1",
            |_, _| {
                calls += 1;
                async { Ok(Attempt::Held(holder())) }
            },
            |_, _| {},
        )
        .await;
        assert!(r.is_err());
        assert_eq!(calls, 1);
    }

    #[test]
    fn a_conflict_says_why_when_the_lease_did_not_decide() {
        let fail_fast = Policy {
            strategy: Strategy::FailFast,
            ..Policy::default()
        };
        let running = Holder {
            liveness: Some("job 'build' of run 1 attempt 1 is in progress".into()),
            ..holder()
        };
        let msg = conflict("#1", &running, &fail_fast, 1).to_string();
        assert!(
            msg.contains("it is live: job 'build' of run 1 attempt 1 is in progress"),
            "{msg}"
        );
        assert!(
            !msg.contains("live until"),
            "its expiry may be long past: {msg}"
        );
        let completed = Holder {
            stale: true,
            liveness: Some("job 'build' of run 1 attempt 1 completed (failure)".into()),
            ..holder()
        };
        let msg = conflict("#1", &completed, &fail_fast, 1).to_string();
        assert!(
            msg.contains("it is stale (job 'build' of run 1 attempt 1 completed (failure)): use --strategy steal-stale"),
            "{msg}"
        );
        assert_eq!(
            completed.state(),
            "stale: job 'build' of run 1 attempt 1 completed (failure)"
        );
        assert_eq!(holder().state(), "held");
    }

    #[tokio::test(start_paused = true)]
    async fn fail_fast_tries_once() {
        let p = Policy {
            strategy: Strategy::FailFast,
            ..Policy::default()
        };
        let mut calls = 0;
        let r = acquire(
            &p,
            "#1",
            |_, _| {
                calls += 1;
                async { Ok(Attempt::Held(holder())) }
            },
            |_, _| {},
        )
        .await;
        assert!(r.is_err());
        assert_eq!(calls, 1);
    }
}
