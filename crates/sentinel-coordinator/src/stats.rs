//! What a node counts for `GET /metrics` (Prometheus text format). Every node reports its own
//! view; since followers forward lock requests, the leader's counters are the cluster's traffic.
//!
//! - `lock_acquisitions_total`: new grants answered by this node (a lock taken, or handed over to
//!   a waiter); answers to retries and re-adoptions are not new grants.
//! - `lock_acquisition_duration_seconds`: from the acquire request's arrival to its grant, the
//!   server-side wait included.
//! - `active_locks_gauge`: locks held in this node's state.
//! - `leader_elections_total`: elections this node saw end with a leader (a new term with a
//!   leader, this node or another).
//! - `consensus_commit_latency_seconds`: from proposing a log entry to its answer (replicated to
//!   a quorum, fsynced, applied).
//! - `consensus_commands_per_entry`: how many commands each entry carried (group commit: the
//!   commands that arrived while the previous entry was written share the next one).

use std::time::Duration;

use prometheus::{Encoder, Histogram, HistogramOpts, IntCounter, IntGauge, Registry, TextEncoder};

use sentinel_core::error::{Error, Result};

/// A node's metrics, in its own Prometheus registry.
pub struct Stats {
    registry: Registry,
    acquisitions: IntCounter,
    acquisition_seconds: Histogram,
    active_locks: IntGauge,
    elections: IntCounter,
    commit_seconds: Histogram,
    batch_sizes: Histogram,
}

impl Stats {
    /// The metrics, registered and at zero.
    pub fn new() -> Result<Stats> {
        let fail = |e: prometheus::Error| Error::Unexpected(format!("cannot set up metrics: {e}"));
        // 0.5 ms to about 8 s for commits; 1 ms to about 4.4 min for acquisitions, which may wait.
        let commit_buckets = prometheus::exponential_buckets(0.000_5, 2.0, 15).map_err(fail)?;
        let acquire_buckets = prometheus::exponential_buckets(0.001, 4.0, 10).map_err(fail)?;
        let batch_buckets = prometheus::exponential_buckets(1.0, 2.0, 9).map_err(fail)?;
        let stats = Stats {
            registry: Registry::new(),
            acquisitions: IntCounter::new(
                "lock_acquisitions_total",
                "New lock grants answered by this node",
            )
            .map_err(fail)?,
            acquisition_seconds: Histogram::with_opts(
                HistogramOpts::new(
                    "lock_acquisition_duration_seconds",
                    "Time from an acquire request to its grant, waiting included",
                )
                .buckets(acquire_buckets),
            )
            .map_err(fail)?,
            active_locks: IntGauge::new("active_locks_gauge", "Locks held").map_err(fail)?,
            elections: IntCounter::new(
                "leader_elections_total",
                "Elections this node saw end with a leader",
            )
            .map_err(fail)?,
            commit_seconds: Histogram::with_opts(
                HistogramOpts::new(
                    "consensus_commit_latency_seconds",
                    "Time from proposing a log entry to its answer: replicated, fsynced, applied",
                )
                .buckets(commit_buckets),
            )
            .map_err(fail)?,
            batch_sizes: Histogram::with_opts(
                HistogramOpts::new(
                    "consensus_commands_per_entry",
                    "Commands packed into one log entry",
                )
                .buckets(batch_buckets),
            )
            .map_err(fail)?,
        };
        let r = &stats.registry;
        r.register(Box::new(stats.acquisitions.clone()))
            .map_err(fail)?;
        r.register(Box::new(stats.acquisition_seconds.clone()))
            .map_err(fail)?;
        r.register(Box::new(stats.active_locks.clone()))
            .map_err(fail)?;
        r.register(Box::new(stats.elections.clone()))
            .map_err(fail)?;
        r.register(Box::new(stats.commit_seconds.clone()))
            .map_err(fail)?;
        r.register(Box::new(stats.batch_sizes.clone()))
            .map_err(fail)?;
        Ok(stats)
    }

    /// A new grant was answered, `took` after its acquire arrived.
    pub fn acquired(&self, took: Duration) {
        self.acquisitions.inc();
        self.acquisition_seconds.observe(took.as_secs_f64());
    }

    /// An entry of `commands` commands was committed and applied, `took` after it was proposed.
    pub fn committed(&self, took: Duration, commands: usize) {
        self.commit_seconds.observe(took.as_secs_f64());
        self.batch_sizes.observe(commands as f64);
    }

    /// An election ended with a leader.
    pub fn elected(&self) {
        self.elections.inc();
    }

    /// The text exposition, with the number of held locks as of now.
    pub fn render(&self, held: usize) -> Result<String> {
        self.active_locks
            .set(i64::try_from(held).unwrap_or(i64::MAX));
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .map_err(|e| Error::Unexpected(format!("cannot write the metrics: {e}")))?;
        String::from_utf8(out)
            .map_err(|e| Error::Unexpected(format!("cannot write the metrics: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_is_exposed() {
        let s = Stats::new().unwrap();
        s.acquired(Duration::from_millis(3));
        s.committed(Duration::from_millis(1), 3);
        s.elected();
        let text = s.render(42).unwrap();
        for line in [
            "# TYPE lock_acquisitions_total counter",
            "lock_acquisitions_total 1",
            "# TYPE lock_acquisition_duration_seconds histogram",
            "lock_acquisition_duration_seconds_count 1",
            "active_locks_gauge 42",
            "leader_elections_total 1",
            "consensus_commit_latency_seconds_count 1",
            "consensus_commands_per_entry_sum 3",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line:?} missing in:\n{text}"
            );
        }
    }
}
