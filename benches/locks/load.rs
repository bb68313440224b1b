//! The measurement: every client loops acquire+release on random names of the pool, first for
//! the warm-up (connections made, servers' caches warm, nothing counted), then for the measured
//! seconds.

use std::time::Duration;

use tokio::time::Instant;

use crate::clients::{Client, Outcome};

/// How long a client pauses after an error, so that a dead server is not hammered in a loop.
const ERROR_PAUSE: Duration = Duration::from_millis(10);

#[derive(Clone, Copy)]
pub struct Load {
    pub warmup: Duration,
    pub measure: Duration,
    /// Names in the pool: `bench-0` … `bench-{names-1}`.
    pub names: u64,
}

/// The measured part of a row.
pub struct Measured {
    /// Latency of each completed operation, in microseconds, sorted.
    latencies: Vec<u32>,
    /// From the start of the measurement until the last client's last operation ended.
    elapsed: Duration,
    pub busy: u64,
    pub errors: u64,
    /// Operations completed, warm-up included: what a server's own counters, read before and
    /// after the row, are divided by.
    pub all_ops: u64,
    /// The first error seen, warm-up included: what to look at when a row goes wrong.
    pub first_error: Option<String>,
}

impl Measured {
    pub fn ops_per_sec(&self) -> f64 {
        self.latencies.len() as f64 / self.elapsed.as_secs_f64()
    }

    /// The `q` quantile of the latencies in milliseconds (nearest rank); `None` without
    /// operations.
    pub fn quantile_ms(&self, q: f64) -> Option<f64> {
        let n = self.latencies.len();
        let rank = ((q * n as f64).ceil() as usize).clamp(1, n.max(1));
        self.latencies
            .get(rank - 1)
            .map(|&us| f64::from(us) / 1000.0)
    }
}

struct PerClient {
    latencies: Vec<u32>,
    all_ops: u64,
    busy: u64,
    errors: u64,
    first_error: Option<String>,
    finished: Instant,
}

/// Runs every client concurrently for the warm-up and the measurement.
pub async fn run<C: Client>(clients: Vec<C>, load: Load) -> Measured {
    let begin = Instant::now();
    let measured_from = begin + load.warmup;
    let end = measured_from + load.measure;
    let tasks: Vec<_> = clients
        .into_iter()
        .map(|mut client| {
            tokio::spawn(async move {
                let mut rng = fastrand::Rng::new();
                let mut mine = PerClient {
                    latencies: Vec::new(),
                    all_ops: 0,
                    busy: 0,
                    errors: 0,
                    first_error: None,
                    finished: begin,
                };
                loop {
                    let started = Instant::now();
                    if started >= end {
                        break;
                    }
                    let outcome = client.op(rng.u64(..load.names)).await;
                    let counted = started >= measured_from;
                    mine.all_ops += u64::from(matches!(outcome, Ok(Outcome::Done)));
                    match outcome {
                        Ok(Outcome::Done) if counted => {
                            let us = started.elapsed().as_micros();
                            mine.latencies.push(u32::try_from(us).unwrap_or(u32::MAX));
                        }
                        Ok(Outcome::Busy) if counted => mine.busy += 1,
                        Ok(_) => {}
                        Err(e) => {
                            mine.errors += u64::from(counted);
                            mine.first_error.get_or_insert(e);
                            tokio::time::sleep(ERROR_PAUSE).await;
                        }
                    }
                }
                mine.finished = Instant::now();
                mine
            })
        })
        .collect();
    let mut all = Measured {
        latencies: Vec::new(),
        elapsed: load.measure,
        busy: 0,
        errors: 0,
        all_ops: 0,
        first_error: None,
    };
    let mut last = measured_from;
    for task in tasks {
        match task.await {
            Ok(mine) => {
                all.latencies.extend(mine.latencies);
                all.busy += mine.busy;
                all.all_ops += mine.all_ops;
                all.errors += mine.errors;
                if all.first_error.is_none() {
                    all.first_error = mine.first_error;
                }
                last = last.max(mine.finished);
            }
            Err(e) => {
                all.errors += 1;
                all.first_error
                    .get_or_insert_with(|| format!("a client task failed: {e}"));
            }
        }
    }
    all.elapsed = last
        .saturating_duration_since(measured_from)
        .max(load.measure);
    all.latencies.sort_unstable();
    all
}
