//! Lease time in one place: the clocks, TTL and expiry arithmetic, timestamps and jitter.
//!
//! Every backend judges a lease as "last heartbeat + TTL", on its own authoritative clock (GitHub's
//! `Date` and comment timestamps, the host clock for local locks, the leader's stamp on the
//! coordinator). The arithmetic saturates everywhere: a TTL of a billion years or a clock that
//! jumps backwards yields a far-away or early expiry, never an overflow panic. User input is
//! bounded earlier ([`MAX_TTL`]), so saturation is only the last line of defence.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chrono::{DateTime, SecondsFormat, Utc};
use tokio::time::Instant;

use crate::error::{Error, Result};

/// Default lease: a lock whose last heartbeat is older than this is stale.
pub const DEFAULT_TTL: Duration = Duration::from_secs(300);
/// Shortest lease a user may ask for: a lease that ends at once protects nothing.
pub const MIN_TTL: Duration = Duration::from_secs(1);
/// Longest lease a user may ask for (a year): beyond it a crashed holder blocks work for good.
pub const MAX_TTL: Duration = Duration::from_secs(365 * 86_400);

/// Checks a user-given TTL against [`MIN_TTL`] and [`MAX_TTL`].
pub fn validate_ttl(ttl: Duration) -> Result<Duration> {
    if ttl < MIN_TTL {
        return Err(Error::usage(
            "--ttl must be at least 1s: a lease that ends at once protects nothing",
        ));
    }
    if ttl > MAX_TTL {
        return Err(Error::usage(
            "--ttl must be at most 365d: a longer lease would block the work for good if its holder died",
        ));
    }
    Ok(ttl)
}

/// A `std` duration as a chrono duration, saturating at chrono's limit.
pub fn signed(d: Duration) -> chrono::TimeDelta {
    chrono::TimeDelta::from_std(d).unwrap_or(chrono::TimeDelta::MAX)
}

/// `t + d`, saturating at the end of chrono's time range.
pub fn after(t: DateTime<Utc>, d: Duration) -> DateTime<Utc> {
    t.checked_add_signed(signed(d))
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// `t - d`, saturating at the start of chrono's time range.
pub fn before(t: DateTime<Utc>, d: Duration) -> DateTime<Utc> {
    t.checked_sub_signed(signed(d))
        .unwrap_or(DateTime::<Utc>::MIN_UTC)
}

/// When a lease renewed at `heartbeat` ends.
pub fn expires_at(heartbeat: DateTime<Utc>, ttl: Duration) -> DateTime<Utc> {
    after(heartbeat, ttl)
}

/// How long from `now` until `t` (zero if `t` has passed).
pub fn until(now: DateTime<Utc>, t: DateTime<Utc>) -> Duration {
    (t - now).to_std().unwrap_or(Duration::ZERO)
}

/// How long before a lease's nominal end its holder stops counting on it. The backend may have
/// stamped a renewal up to a second before the request was sent (GitHub's timestamps are whole
/// seconds); a tenth of the TTL more covers requests in flight and clocks that run at slightly
/// different rates.
pub fn safety_margin(ttl: Duration) -> Duration {
    (ttl / 10).max(Duration::from_secs(1))
}

/// The last instant the holder of a lease renewed (or granted) by a request sent at `sent` may
/// count on it. Measured on the monotonic clock from our own send time, so neither a wrong wall
/// clock nor a slow answer can stretch it.
pub fn holder_deadline(sent: Instant, ttl: Duration) -> Instant {
    instant_after(sent, ttl.min(MAX_TTL).saturating_sub(safety_margin(ttl)))
}

/// `t + d` on the monotonic clock; `t` itself if that would overflow. Sooner is the safe side for
/// every use: a renewal comes early, a lease counts as over early.
pub fn instant_after(t: Instant, d: Duration) -> Instant {
    t.checked_add(d).unwrap_or(t)
}

/// Whole milliseconds, saturating.
pub fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Unix milliseconds to a chrono time, clamped to chrono's range instead of failing.
pub fn from_unix_ms(ms: u64) -> DateTime<Utc> {
    i64::try_from(ms)
        .ok()
        .and_then(DateTime::from_timestamp_millis)
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// A timestamp as protocols and JSON carry it: RFC 3339, UTC, whole seconds (`2025-10-30T21:30:00Z`).
pub fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// A timestamp for people: `2025-10-30 21:30:00Z`.
pub fn human(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%SZ").to_string()
}

/// `d` scaled by a random factor in `[1 - spread, 1 + spread]`, so workers that collided once do
/// not collide again in lockstep. `spread` is clamped to `[0, 1]`.
pub fn jitter(d: Duration, spread: f64) -> Duration {
    let spread = if spread.is_finite() {
        spread.clamp(0.0, 1.0)
    } else {
        0.0
    };
    let factor = 1.0 - spread + fastrand::f64() * 2.0 * spread;
    // `mul_f64` panics on overflow; durations here are bounded by the backoff caps, but a user
    // may give any cap, so go through seconds as a float and clamp.
    Duration::try_from_secs_f64(d.as_secs_f64() * factor).unwrap_or(Duration::MAX)
}

/// A source of Unix-millisecond time. The local backend reads one so tests can move time instead
/// of sleeping; the lock table itself never reads a clock, it is handed the time.
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// Now, in milliseconds since the Unix epoch. May go backwards between calls (NTP steps);
    /// users of the time must not assume otherwise.
    fn now_ms(&self) -> u64;
}

/// The host's wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(millis)
            .unwrap_or(0)
    }
}

/// A clock that only moves when told to (tests, simulations).
#[derive(Debug, Clone, Default)]
pub struct ManualClock(Arc<AtomicU64>);

impl ManualClock {
    /// A clock standing at `ms` (Unix milliseconds). Clones share the time: moving one moves all.
    pub fn at(ms: u64) -> ManualClock {
        ManualClock(Arc::new(AtomicU64::new(ms)))
    }

    /// Moves the time forward by `d` (whole milliseconds), saturating at `u64::MAX`.
    pub fn advance(&self, d: Duration) {
        let ms = millis(d);
        let _ = self
            .0
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |t| {
                Some(t.saturating_add(ms))
            });
    }

    /// Sets the time to `ms` (Unix milliseconds), backwards too, to simulate a clock step.
    pub fn set(&self, ms: u64) {
        self.0.store(ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn bounds_are_enforced() {
        assert!(validate_ttl(Duration::from_millis(999)).is_err());
        assert!(validate_ttl(Duration::from_secs(1)).is_ok());
        assert!(validate_ttl(MAX_TTL).is_ok());
        assert!(validate_ttl(MAX_TTL + Duration::from_secs(1)).is_err());
    }

    #[test]
    fn formats() {
        let t = from_unix_ms(1_761_859_800_000);
        assert_eq!(rfc3339(t), "2025-10-30T21:30:00Z");
        assert_eq!(human(t), "2025-10-30 21:30:00Z");
    }

    #[test]
    fn a_holder_stops_counting_on_a_lease_before_it_ends() {
        let t = Instant::now();
        assert_eq!(
            holder_deadline(t, Duration::from_secs(3)),
            t + Duration::from_secs(2)
        );
        assert_eq!(
            holder_deadline(t, Duration::from_secs(300)),
            t + Duration::from_secs(270)
        );
        assert_eq!(holder_deadline(t, Duration::from_millis(500)), t);
        assert!(holder_deadline(t, Duration::MAX) <= t + MAX_TTL);
        assert_eq!(instant_after(t, Duration::MAX), t);
    }

    #[test]
    fn manual_clock_moves_only_when_told() {
        let c = ManualClock::at(5);
        c.advance(Duration::from_millis(10));
        assert_eq!(c.now_ms(), 15);
        c.advance(Duration::MAX);
        assert_eq!(c.now_ms(), u64::MAX);
    }

    proptest! {
        #[test]
        fn arithmetic_never_panics(ms in any::<u64>(), secs in any::<u64>(), nanos in 0u32..1_000_000_000, spread in any::<f64>()) {
            let t = from_unix_ms(ms);
            let d = Duration::new(secs, nanos);
            let e = expires_at(t, d);
            prop_assert!(e >= t);
            prop_assert!(before(t, d) <= t);
            let _ = until(t, e);
            let _ = rfc3339(e);
            let _ = human(e);
            let j = jitter(d, spread);
            if spread.is_finite() && (0.0..=1.0).contains(&spread) && secs < 1 << 40 {
                let lo = d.as_secs_f64() * (1.0 - spread);
                let hi = d.as_secs_f64() * (1.0 + spread);
                prop_assert!(j.as_secs_f64() >= lo * 0.999_999 - 1e-9 && j.as_secs_f64() <= hi * 1.000_001 + 1e-9);
            }
        }
    }
}
