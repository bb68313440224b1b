//! Injected faults: what a test can make the next few matching requests suffer (latency, a 5xx
//! before or after the write is applied, a secondary rate limit), and the queue that hands each
//! one out exactly `times` times. The pipeline in `server.rs` decides where each kind bites.

use std::time::Duration;

/// A failure to inflict on matching requests (see [`crate::Emulator::inject`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Extra delay before the request is handled (on top of `set_latency`).
    Latency(Duration),
    /// Respond `status` without applying the request: the write never happened.
    ErrorBeforeWrite { status: u16 },
    /// Apply the request, then respond `status`: the write happened but the client cannot know.
    ErrorAfterWrite { status: u16 },
    /// GitHub's abuse protection: 403 with `retry-after`, request not applied.
    SecondaryRateLimit { retry_after_secs: u64 },
}

#[derive(Debug)]
struct Pending {
    method: String,
    path_contains: String,
    fault: Fault,
    remaining: usize,
}

impl Pending {
    fn matches(&self, method: &str, path: &str) -> bool {
        self.remaining > 0
            && self.method.eq_ignore_ascii_case(method)
            && path.contains(&self.path_contains)
    }
}

/// Faults waiting for their requests, in injection order.
#[derive(Debug, Default)]
pub struct FaultQueue {
    pending: Vec<Pending>,
}

impl FaultQueue {
    pub fn push(&mut self, method: &str, path_contains: &str, fault: Fault, times: usize) {
        if times == 0 {
            return;
        }
        self.pending.push(Pending {
            method: method.to_string(),
            path_contains: path_contains.to_string(),
            fault,
            remaining: times,
        });
    }

    /// Total injected latency for this request; consumes one use of each matching latency fault.
    /// Latency is taken separately because the sleep must happen outside the state lock.
    pub fn take_latency(&mut self, method: &str, path: &str) -> Duration {
        let mut total = Duration::ZERO;
        for p in &mut self.pending {
            match p.fault {
                Fault::Latency(d) if p.matches(method, path) => {
                    p.remaining -= 1;
                    total += d;
                }
                _ => {}
            }
        }
        self.pending.retain(|p| p.remaining > 0);
        total
    }

    /// The first (oldest) matching non-latency fault, consumed. A request suffers at most one.
    pub fn take_error(&mut self, method: &str, path: &str) -> Option<Fault> {
        let idx = self
            .pending
            .iter()
            .position(|p| !matches!(p.fault, Fault::Latency(_)) && p.matches(method, path))?;
        let p = &mut self.pending[idx];
        p.remaining -= 1;
        let fault = p.fault.clone();
        if p.remaining == 0 {
            self.pending.remove(idx);
        }
        Some(fault)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fault_is_used_exactly_times_and_only_on_matching_requests() {
        let mut q = FaultQueue::default();
        q.push(
            "post",
            "/comments",
            Fault::ErrorBeforeWrite { status: 502 },
            2,
        );
        assert_eq!(q.take_error("GET", "/repos/o/r/issues/1/comments"), None);
        assert_eq!(q.take_error("POST", "/repos/o/r/issues/1/labels"), None);
        assert!(
            q.take_error("POST", "/repos/o/r/issues/1/comments")
                .is_some()
        );
        assert!(
            q.take_error("POST", "/repos/o/r/issues/2/comments")
                .is_some()
        );
        assert_eq!(q.take_error("POST", "/repos/o/r/issues/1/comments"), None);
    }

    #[test]
    fn oldest_fault_wins_and_latency_stacks_separately() {
        let mut q = FaultQueue::default();
        q.push("GET", "", Fault::Latency(Duration::from_millis(5)), 1);
        q.push(
            "GET",
            "/issues",
            Fault::SecondaryRateLimit {
                retry_after_secs: 3,
            },
            1,
        );
        q.push("GET", "/issues", Fault::ErrorAfterWrite { status: 500 }, 1);
        assert_eq!(q.take_latency("GET", "/issues/1"), Duration::from_millis(5));
        assert_eq!(q.take_latency("GET", "/issues/1"), Duration::ZERO);
        assert_eq!(
            q.take_error("GET", "/issues/1"),
            Some(Fault::SecondaryRateLimit {
                retry_after_secs: 3
            })
        );
        assert_eq!(
            q.take_error("GET", "/issues/1"),
            Some(Fault::ErrorAfterWrite { status: 500 })
        );
        assert_eq!(q.take_error("GET", "/issues/1"), None);
    }
}
