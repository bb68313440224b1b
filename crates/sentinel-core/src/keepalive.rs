//! Keeping a held lock alive: the renewal loop behind the `heartbeat` sidecar and `run`, and the
//! building block for anything else that holds a lock while it works.
//!
//! Three judgements must be the same wherever a lock is kept, so they live here once instead of
//! in each command or backend:
//!
//! - **When to renew.** Every interval; stretched, never past TTL/3, when the backend's request
//!   budget would not last until it resets at that pace ([`stretched`]).
//! - **How long the lease can be counted on.** Until a deadline on the monotonic clock: the send
//!   time of the last successful renewal plus the TTL, less a safety margin
//!   ([`lease::holder_deadline`]). Never a wall clock or a timestamp in an answer, which may be
//!   skewed or late.
//! - **When the lock is lost.** At once when the backend says another worker has it, or nobody
//!   ([`Error::NotOwner`]). Transient failures (unreachable backend, 5xx, rate limits) are retried
//!   with short jittered pauses, and a rate limit's own wait is honoured, but only while the
//!   deadline has not passed; after that the lock counts as lost too.
//!
//! [`Keepalive::run`] is a future that resolves with an error when the lock is lost and with a
//! [`Summary`] when the caller's `stop` future fires. It only calls [`LockBackend::renew`], once
//! per beat, so it works unchanged on every backend.
//!
//! The settings must leave room for failure, like client-go's leader election (lease > renew
//! deadline > retry period), and [`Timing::for_ttl`] refuses those that do not.

use std::future::Future;
use std::pin::{Pin, pin};
use std::time::Duration;

use tokio::time::Instant;

use crate::backend::{Budget, LockBackend};
use crate::duration;
use crate::error::{Error, Result};
use crate::lease;
use crate::lock::{Holder, RenewRequest};

/// Pause between renewals unless a third of the TTL is shorter.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(30);
/// Shortest pause between renewals: renewing more often only spends the backend's budget.
pub const MIN_INTERVAL: Duration = Duration::from_secs(1);
/// Longest pause before retrying a renewal that failed.
const MAX_RETRY: Duration = Duration::from_secs(5);
/// Requests kept back from a nearly spent budget, so the lock can still be released (a GitHub
/// release costs 2).
const RESERVE: u64 = 2;

/// How often a keepalive renews and how soon it retries a renewal that failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    interval: Duration,
    retry: Duration,
}

/// Why a schedule does not fit a lease, in numbers; each caller words it for its own audience
/// (the CLI names its flags, the library its methods).
enum Unfit {
    LeaseTooShort,
    IntervalTooShort(Duration),
    IntervalTooLong(Duration),
}

impl Timing {
    /// The rule: renewals at least [`MIN_INTERVAL`] apart and at least three per lease
    /// (interval ≤ TTL/3). The holder counts on a lease for TTL less a safety margin of
    /// max(1s, TTL/10), which is at least 2 × interval under this rule, so a renewal that fails
    /// leaves a whole interval to retry in. Retries come every interval/4 (at most 5s, ±25%
    /// jitter), always well inside an interval.
    fn fit(interval: Option<Duration>, ttl: Duration) -> std::result::Result<Timing, Unfit> {
        let longest = ttl / 3;
        if longest < MIN_INTERVAL {
            return Err(Unfit::LeaseTooShort);
        }
        let interval = interval.unwrap_or(DEFAULT_INTERVAL.min(longest));
        if interval < MIN_INTERVAL {
            return Err(Unfit::IntervalTooShort(interval));
        }
        if interval > longest {
            return Err(Unfit::IntervalTooLong(interval));
        }
        Ok(Timing {
            interval,
            retry: (interval / 4).min(MAX_RETRY),
        })
    }

    /// The schedule for a lease of `ttl`: `interval` if given, else [`DEFAULT_INTERVAL`] or a
    /// third of the TTL if that is shorter; refused in the words of the CLI's flags.
    pub fn for_ttl(interval: Option<Duration>, ttl: Duration) -> Result<Timing> {
        Self::fit(interval, ttl).map_err(|unfit| match unfit {
            Unfit::LeaseTooShort => Error::usage(format!(
                "a lease of {} is too short to keep alive: renewals at least {} apart and three \
                 per lease need a TTL of at least 3s; claim with a longer --ttl",
                duration::display(ttl),
                duration::display(MIN_INTERVAL)
            )),
            Unfit::IntervalTooShort(_) => interval_too_short(),
            Unfit::IntervalTooLong(interval) => Error::usage(format!(
                "--interval {} is too long for a lease of {}: renew at least three times per \
                 lease (--interval at most {}) so that a failed renewal can be retried before \
                 the lease runs out; lower --interval or claim with a longer --ttl",
                duration::display(interval),
                duration::display(ttl),
                duration::display(ttl / 3)
            )),
        })
    }

    /// The same rule for a library caller (`what` names the call, `LockGuard::keep_alive`),
    /// refused in the library's words: a service's user never typed a flag.
    pub fn for_lease(what: &str, interval: Duration, ttl: Duration) -> Result<Timing> {
        Self::fit(Some(interval), ttl).map_err(|unfit| {
            Error::usage(match unfit {
                Unfit::LeaseTooShort => format!(
                    "{what}: a lease of {} is too short to keep alive: renewals at least {} \
                     apart and three per lease need a TTL of at least 3s",
                    duration::display(ttl),
                    duration::display(MIN_INTERVAL)
                ),
                Unfit::IntervalTooShort(interval) => format!(
                    "{what}: the interval {} is too short: renewals at least {} apart",
                    duration::display(interval),
                    duration::display(MIN_INTERVAL)
                ),
                Unfit::IntervalTooLong(interval) => format!(
                    "{what}: the interval {} is too long for a lease of {}: at most {}, three \
                     renewals per lease, so that a failed one can be retried in time",
                    duration::display(interval),
                    duration::display(ttl),
                    duration::display(ttl / 3)
                ),
            })
        })
    }

    /// The pause between two renewals (before any stretching for a request budget).
    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// The pause before retrying a renewal that failed.
    pub fn retry(&self) -> Duration {
        self.retry
    }
}

fn interval_too_short() -> Error {
    Error::usage(format!(
        "--interval must be at least {}: renewing more often only spends the backend's \
         request budget",
        duration::display(MIN_INTERVAL)
    ))
}

/// The part of the rule that needs no lease, so a bad `--interval` is refused before anything is
/// claimed or renewed.
pub fn check_interval(interval: Duration) -> Result<Duration> {
    if interval < MIN_INTERVAL {
        return Err(interval_too_short());
    }
    Ok(interval)
}

/// The lease a holder's TTL as the backend keeps it (which a re-adopted GitHub lock takes from
/// its original claim, whatever `--ttl` said).
pub fn ttl_of(holder: &Holder) -> Duration {
    lease::until(holder.heartbeat_last, holder.expires_at)
}

/// Renewals an hour at `interval`: what keeping one lock alive costs.
pub fn renewals_per_hour(interval: Duration) -> u64 {
    3_600_000 / lease::millis(interval).max(1)
}

/// The pause before the next renewal: `interval`, or longer when the budget's remaining requests
/// would not last until it resets at that pace, but never past TTL/3.
pub fn stretched(interval: Duration, ttl: Duration, budget: Option<Budget>) -> Duration {
    let Some(budget) = budget else {
        return interval;
    };
    let longest = (ttl / 3).max(interval);
    let usable = budget.remaining.saturating_sub(RESERVE);
    let paced = match u32::try_from(usable) {
        Ok(0) => longest,
        Ok(n) => budget.resets_in / n,
        Err(_) => interval,
    };
    paced.clamp(interval, longest)
}

/// What a keepalive did before it was stopped.
#[derive(Debug, Clone)]
pub struct Summary {
    /// Successful renewals.
    pub renewals: u64,
    /// The lock as the last renewal (or the grant) left it.
    pub holder: Holder,
}

/// The renewal loop for one held lock.
pub struct Keepalive {
    req: RenewRequest,
    timing: Timing,
    holder: Holder,
    /// When the request behind `holder` was sent.
    renewed: Instant,
    renewals: u64,
}

/// How one beat ended when the lock was not lost.
enum Beat {
    Renewed,
    Stopped,
}

impl Keepalive {
    /// Keeps the lock `req` names, held as `holder` says since a request sent at `sent`: the
    /// renewal that returned it, or the winning claim attempt
    /// ([`Claimed::attempt_started`](crate::lock::Claimed::attempt_started)).
    pub fn new(req: RenewRequest, holder: Holder, sent: Instant, timing: Timing) -> Keepalive {
        Keepalive {
            req,
            timing,
            holder,
            renewed: sent,
            renewals: 0,
        }
    }

    fn summary(self) -> Summary {
        Summary {
            renewals: self.renewals,
            holder: self.holder,
        }
    }

    /// Renews until `stop` resolves (the summary) or the lock is lost (the error: `NotOwner`, or
    /// one renewing cannot get past such as `Auth`). Dropping the future stops renewing at once.
    pub async fn run<B: LockBackend>(
        mut self,
        backend: &B,
        stop: impl Future<Output = ()>,
    ) -> Result<Summary> {
        let what = backend.describe(&self.req.lock);
        let mut stop = pin!(stop);
        self.announce(backend, &what);
        let mut current = self.timing.interval;
        loop {
            let budget = backend.renew_budget();
            let interval = stretched(self.timing.interval, ttl_of(&self.holder), budget);
            if interval != current {
                self.explain_stretch(budget, interval);
                current = interval;
            }
            tokio::select! {
                _ = tokio::time::sleep_until(lease::instant_after(self.renewed, interval)) => {}
                _ = stop.as_mut() => return Ok(self.summary()),
            }
            match self.beat(backend, &what, stop.as_mut()).await? {
                Beat::Renewed => self.renewals += 1,
                Beat::Stopped => return Ok(self.summary()),
            }
        }
    }

    /// One renewal, retried through transient failures while the lease can be counted on.
    async fn beat<B: LockBackend>(
        &mut self,
        backend: &B,
        what: &str,
        mut stop: Pin<&mut impl Future<Output = ()>>,
    ) -> Result<Beat> {
        let deadline = lease::holder_deadline(self.renewed, ttl_of(&self.holder));
        let mut failures = 0u32;
        loop {
            let sent = Instant::now();
            // A renewal in flight is finished, not abandoned, even when asked to stop: a release
            // sent while it is still on its way could be overtaken by it and the lock revived.
            // The deadline bounds the wait.
            let failed = match tokio::time::timeout_at(deadline, backend.renew(&self.req)).await {
                Ok(Ok(holder)) => {
                    tracing::info!(lock = what, until = %lease::rfc3339(holder.expires_at), "renewed");
                    self.holder = holder;
                    self.renewed = sent;
                    return Ok(Beat::Renewed);
                }
                Ok(Err(e @ (Error::Unavailable(_) | Error::RateLimited { .. }))) => e,
                Ok(Err(e)) => return Err(e),
                Err(_) => {
                    return Err(self.lost(what, "the last renewal did not complete"));
                }
            };
            failures += 1;
            let pause = match &failed {
                Error::RateLimited {
                    retry_after: Some(wait),
                    ..
                } => *wait,
                _ => lease::jitter(self.timing.retry, 0.25),
            };
            let resume = lease::instant_after(Instant::now(), pause);
            let left = deadline.saturating_duration_since(Instant::now());
            if failures == 1 {
                tracing::warn!(lock = what, error = %failed, retry_in = %duration::display(pause), lease_left = %duration::display(left), "renewal failed; retrying while the lease lasts");
            } else {
                tracing::info!(lock = what, error = %failed, retry_in = %duration::display(pause), "renewal failed again");
            }
            if resume >= deadline {
                // No renewal can get through before the lease runs out; it stays ours until then.
                tokio::select! {
                    _ = tokio::time::sleep_until(deadline) => {
                        return Err(self.lost(what, &failed.to_string()));
                    }
                    _ = stop.as_mut() => return Ok(Beat::Stopped),
                }
            }
            tokio::select! {
                _ = tokio::time::sleep_until(resume) => {}
                _ = stop.as_mut() => return Ok(Beat::Stopped),
            }
        }
    }

    fn lost(&self, what: &str, why: &str) -> Error {
        Error::NotOwner(format!(
            "gave up the lock on {what}: no renewal got through within its lease of {} (last \
             renewed {}; {why}), so another worker may take it over now",
            duration::display(ttl_of(&self.holder)),
            lease::rfc3339(self.holder.heartbeat_last),
        ))
    }

    /// Says what keeping this lock costs, and warns when one lock alone exceeds a backend's cap.
    fn announce<B: LockBackend>(&self, backend: &B, what: &str) {
        let per_hour = renewals_per_hour(self.timing.interval);
        tracing::info!(
            lock = what,
            every = %duration::display(self.timing.interval),
            lease = %duration::display(ttl_of(&self.holder)),
            per_hour,
            "keeping the lock alive"
        );
        if let Some(cap) = backend.renew_budget().and_then(|b| b.writes_per_hour)
            && per_hour > cap
        {
            tracing::warn!(
                "renewing {what} every {} makes {per_hour} writes an hour, more than the {cap} \
                 the backend allows one identity: expect rate limits; renew less often \
                 (--interval up to a third of the TTL) or claim with a longer --ttl",
                duration::display(self.timing.interval)
            );
        }
    }

    fn explain_stretch(&self, budget: Option<Budget>, interval: Duration) {
        match budget {
            Some(b) if interval > self.timing.interval => tracing::warn!(
                "only {} requests left until the rate limit resets in {}: renewing every {} \
                 instead of {}",
                b.remaining,
                duration::display(b.resets_in),
                duration::display(interval),
                duration::display(self.timing.interval)
            ),
            _ => tracing::info!(
                "renewing every {} again",
                duration::display(self.timing.interval)
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;
    use std::sync::Mutex;

    use chrono::Utc;

    use crate::backend::Status;
    use crate::lock::{
        AcquireRequest, Attempt, ListRequest, LockId, ReleaseRequest, ReleaseStaleRequest,
        Released, StaleRelease,
    };

    const TTL: Duration = Duration::from_secs(9);

    fn holder() -> Holder {
        let now = Utc::now();
        Holder {
            worker_id: "w".into(),
            node_id: "n".into(),
            fencing_token: 1,
            claimed_at: now,
            heartbeat_last: now,
            expires_at: lease::expires_at(now, TTL),
            stale: false,
            task_info: Default::default(),
            liveness: None,
        }
    }

    /// A backend whose renewals answer from a script (then succeed), each after `latency`.
    struct Scripted {
        answers: Mutex<VecDeque<Result<Holder>>>,
        calls: Mutex<Vec<Instant>>,
        latency: Duration,
    }

    impl Scripted {
        fn new(answers: Vec<Result<Holder>>) -> Scripted {
            Scripted {
                answers: Mutex::new(answers.into()),
                calls: Mutex::default(),
                latency: Duration::from_millis(10),
            }
        }

        fn calls(&self) -> Vec<Duration> {
            let calls = self.calls.lock().unwrap();
            let first = calls.first().copied().unwrap_or_else(Instant::now);
            calls.iter().map(|c| *c - first).collect()
        }
    }

    impl LockBackend for Scripted {
        fn name(&self) -> &'static str {
            "scripted"
        }
        fn parse_lock(&self, raw: &str) -> Result<LockId> {
            Ok(LockId::Name(raw.into()))
        }
        async fn try_acquire(&self, _: &AcquireRequest) -> Result<Attempt> {
            Err(Error::Unexpected("not scripted".into()))
        }
        async fn release(&self, _: &ReleaseRequest) -> Result<Released> {
            Err(Error::Unexpected("not scripted".into()))
        }
        async fn renew(&self, _: &RenewRequest) -> Result<Holder> {
            self.calls.lock().unwrap().push(Instant::now());
            tokio::time::sleep(self.latency).await;
            let next = self.answers.lock().unwrap().pop_front();
            next.unwrap_or_else(|| Ok(holder()))
        }
        async fn status(&self, _: &LockId) -> Result<Status> {
            Err(Error::Unexpected("not scripted".into()))
        }
        async fn list(&self, _: &ListRequest) -> Result<Vec<(String, Holder)>> {
            Ok(Vec::new())
        }
        async fn release_stale(&self, _: &ReleaseStaleRequest) -> Result<StaleRelease> {
            Err(Error::Unexpected("not scripted".into()))
        }
    }

    fn keepalive(interval: u64) -> Keepalive {
        let req = RenewRequest {
            lock: LockId::Name("job".into()),
            worker_id: "w".into(),
            fencing_token: None,
            ttl: None,
        };
        let timing = Timing::for_ttl(Some(Duration::from_secs(interval)), TTL).unwrap();
        Keepalive::new(req, holder(), Instant::now(), timing)
    }

    fn unavailable() -> Result<Holder> {
        Err(Error::Unavailable("503".into()))
    }

    #[tokio::test(start_paused = true)]
    async fn renews_every_interval_until_stopped() {
        let b = Scripted::new(vec![]);
        let stop = tokio::time::sleep(Duration::from_millis(10_500));
        let summary = keepalive(3).run(&b, stop).await.unwrap();
        assert_eq!(summary.renewals, 3);
        let calls = b.calls();
        assert_eq!(calls.len(), 3);
        for pair in calls.windows(2) {
            let gap = pair[1] - pair[0];
            assert!(gap.as_millis().abs_diff(3000) < 50, "{calls:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn transient_failures_are_retried_while_the_lease_lasts() {
        let b = Scripted::new(vec![
            unavailable(),
            Err(Error::RateLimited {
                message: "secondary".into(),
                retry_after: Some(Duration::from_secs(2)),
            }),
            unavailable(),
        ]);
        let stop = tokio::time::sleep(Duration::from_secs(8));
        let summary = keepalive(3).run(&b, stop).await.unwrap();
        let calls = b.calls();
        // The rate limit's own wait is honoured: two seconds between the second and third try.
        assert!((calls[2] - calls[1]) >= Duration::from_secs(2), "{calls:?}");
        assert!(summary.renewals >= 1, "{calls:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn an_outage_longer_than_the_lease_loses_the_lock_at_the_deadline() {
        let start = Instant::now();
        let b = Scripted::new((0..1000).map(|_| unavailable()).collect());
        let err = keepalive(3)
            .run(&b, std::future::pending())
            .await
            .unwrap_err();
        assert!(
            matches!(err, Error::NotOwner(ref m) if m.contains("gave up")),
            "{err}"
        );
        // TTL 9s less the 1s margin: not a moment earlier, and not much later.
        let took = Instant::now() - start;
        assert!(
            took >= Duration::from_secs(8) && took < Duration::from_millis(8_100),
            "{took:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_rate_limit_outlasting_the_lease_is_not_waited_past_it() {
        let start = Instant::now();
        let b = Scripted::new(vec![Err(Error::RateLimited {
            message: "secondary".into(),
            retry_after: Some(Duration::from_secs(60)),
        })]);
        let err = keepalive(3)
            .run(&b, std::future::pending())
            .await
            .unwrap_err();
        assert!(matches!(err, Error::NotOwner(_)), "{err}");
        assert!(Instant::now() - start < Duration::from_millis(8_100));
        assert_eq!(
            b.calls().len(),
            1,
            "no request inside the retry-after window"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn losing_the_lock_ends_at_once_and_other_errors_are_not_retried() {
        for (answer, lost) in [
            (Error::NotOwner("stolen".into()), true),
            (Error::Auth("revoked".into()), false),
        ] {
            let b = Scripted::new(vec![Err(answer)]);
            let start = Instant::now();
            let err = keepalive(3)
                .run(&b, std::future::pending())
                .await
                .unwrap_err();
            assert_eq!(matches!(err, Error::NotOwner(_)), lost, "{err}");
            assert!(Instant::now() - start < Duration::from_millis(3_100));
            assert_eq!(b.calls().len(), 1);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_renewal_in_flight_is_finished_before_stopping() {
        let mut b = Scripted::new(vec![]);
        b.latency = Duration::from_secs(1);
        // Stop while the first renewal (sent at 3s) is on its way.
        let stop = tokio::time::sleep(Duration::from_millis(3_500));
        let summary = keepalive(3).run(&b, stop).await.unwrap();
        assert_eq!(summary.renewals, 1);
    }

    #[test]
    fn timing_leaves_room_for_failure() {
        let s = Duration::from_secs;
        let ok = Timing::for_ttl(None, s(300)).unwrap();
        assert_eq!(ok.interval(), s(30));
        assert_eq!(Timing::for_ttl(None, s(9)).unwrap().interval(), s(3));
        assert_eq!(
            Timing::for_ttl(Some(s(100)), s(300)).unwrap().interval(),
            s(100)
        );
        for (interval, ttl, words) in [
            (Some(Duration::from_millis(500)), s(300), "at least 1s"),
            (Some(s(101)), s(300), "at most 100s"),
            (Some(s(2)), s(3), "at most 1s"),
            (None, s(2), "too short"),
        ] {
            let e = Timing::for_ttl(interval, ttl).unwrap_err();
            assert!(matches!(e, Error::Usage(_)), "{e}");
            assert!(e.to_string().contains(words), "{e}");
        }
        for ttl in [3, 4, 10, 60, 300, 86_400] {
            let t = Timing::for_ttl(None, s(ttl)).unwrap();
            let window = s(ttl) - lease::safety_margin(s(ttl));
            assert!(t.retry < t.interval && t.retry > Duration::ZERO);
            assert!(window >= 2 * t.interval, "ttl {ttl}: {t:?}");
        }
    }

    #[test]
    fn the_interval_stretches_when_the_budget_runs_low_but_never_past_a_third_of_the_ttl() {
        let s = Duration::from_secs;
        let budget = |remaining, resets_in| {
            Some(Budget {
                remaining,
                resets_in: s(resets_in),
                writes_per_hour: None,
            })
        };
        assert_eq!(stretched(s(30), s(300), None), s(30));
        assert_eq!(stretched(s(30), s(300), budget(4000, 3600)), s(30));
        assert_eq!(stretched(s(30), s(300), budget(62, 3600)), s(60));
        assert_eq!(stretched(s(30), s(300), budget(10, 3600)), s(100));
        assert_eq!(stretched(s(30), s(300), budget(0, 3600)), s(100));
        assert_eq!(stretched(s(30), s(300), budget(u64::MAX, 3600)), s(30));
        assert_eq!(stretched(s(30), s(60), budget(0, 3600)), s(30));
        assert_eq!(renewals_per_hour(s(30)), 120);
    }
}
