//! Lock-operation counters of this host, kept in `DATA_DIR/metrics.json` per backend name.
//!
//! Every `sentinel` run is a short-lived process, so counters cannot live in memory: each claim
//! and release adds to a [`StateFile`], whose OS file lock serializes the read-modify-write of
//! concurrent processes (no lost update) and whose atomic replace survives a kill at any point;
//! it is not fsynced, so a crash of the machine may lose the last counts.
//! Counting is a side effect that must never change the outcome of a lock operation, so the
//! recording calls log a failure with a warning and carry on. They are made in one place,
//! [`Metered`], the decorator the CLI wraps its backend in: commands never record anything.
//!
//! Definitions: an acquisition is a granted claim (re-adoptions included); a conflict is a claim
//! that ended with the lock held by someone else (exit 3); retries are the extra attempts
//! (attempts - 1) of every claim; a failed acquisition is a claim that ended in any error once it
//! reached the backend (conflicts included); the average acquisition time is the total time of
//! granted claims divided by the acquisitions; a stale lock claimed is a grant that took over a
//! stale lock; releases count only releases that freed a held lock.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use prometheus::proto::{
    Counter, Gauge, LabelPair, Metric, MetricFamily, MetricType, Summary as PromSummary,
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tabled::builder::Builder;
use tabled::settings::Style;

use sentinel::backend::{Budget, LockBackend, Status};
use sentinel::barrier::{ArriveRequest, Arrived};
use sentinel::error::{Error, Result};
use sentinel::github::RepoHistory;
use sentinel::interrupt;
use sentinel::lease;
use sentinel::lock::{
    AcquireRequest, Attempt, Claimed, Grant, Holder, ListRequest, LockId, NextRequest,
    ReleaseRequest, ReleaseStaleRequest, Released, RenewRequest, StaleRelease,
};
use sentinel::statefile::{Persisted, StateFile};

/// The counters of one backend. Fields missing from an older file read as zero.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Counters {
    /// Granted claims, re-adoptions included.
    pub acquisitions: u64,
    /// Releases that freed a held lock (forced ones included); releasing a free lock is not one.
    pub releases: u64,
    /// Claims that ended with the lock held by someone else (exit 3).
    pub conflicts: u64,
    /// Extra attempts of every claim, granted or not (attempts − 1 per claim).
    pub retries: u64,
    /// Claims that ended in an error, conflicts included.
    pub failed_acquisitions: u64,
    /// Grants that took over a stale lock.
    pub stale_locks_claimed: u64,
    /// Total time of the granted claims, in microseconds: local claims take well under a
    /// millisecond, which whole milliseconds would round to nothing.
    pub acquisition_time_us: u64,
}

impl Counters {
    fn add(&mut self, o: &Counters) {
        self.acquisitions = self.acquisitions.saturating_add(o.acquisitions);
        self.releases = self.releases.saturating_add(o.releases);
        self.conflicts = self.conflicts.saturating_add(o.conflicts);
        self.retries = self.retries.saturating_add(o.retries);
        self.failed_acquisitions = self
            .failed_acquisitions
            .saturating_add(o.failed_acquisitions);
        self.stale_locks_claimed = self
            .stale_locks_claimed
            .saturating_add(o.stale_locks_claimed);
        self.acquisition_time_us = self
            .acquisition_time_us
            .saturating_add(o.acquisition_time_us);
    }

    /// Mean time of a granted claim, in milliseconds (retries and their pauses included); 0 when
    /// there was none.
    pub fn average_acquisition_ms(&self) -> f64 {
        if self.acquisitions == 0 {
            return 0.0;
        }
        self.acquisition_time_us as f64 / self.acquisitions as f64 / 1000.0
    }

    /// The documented JSON keys of `sentinel metrics --json`.
    pub fn to_json(&self) -> Value {
        json!({
            "total_acquisitions": self.acquisitions,
            "total_releases": self.releases,
            "total_conflicts": self.conflicts,
            "total_retries": self.retries,
            "average_acquisition_time_ms": self.average_acquisition_ms(),
            "failed_acquisitions": self.failed_acquisitions,
            "stale_locks_claimed": self.stale_locks_claimed,
        })
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct MetricsData {
    #[serde(default)]
    backends: BTreeMap<String, Counters>,
}

impl Persisted for MetricsData {
    const RESET_COST: &'static str = "the counters start again from zero";
}

/// Counters per backend name, as read at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Keyed by [`LockBackend::name`](sentinel::backend::LockBackend::name); only backends that
    /// recorded something appear.
    pub backends: BTreeMap<String, Counters>,
}

impl Snapshot {
    /// Only `backend`'s counters (zero if it never recorded anything).
    pub fn only(&self, backend: &str) -> Snapshot {
        Snapshot {
            backends: BTreeMap::from([(
                backend.to_string(),
                self.backends.get(backend).copied().unwrap_or_default(),
            )]),
        }
    }

    /// The sum over every backend (saturating).
    pub fn total(&self) -> Counters {
        let mut t = Counters::default();
        for c in self.backends.values() {
            t.add(c);
        }
        t
    }

    /// The totals at the top level and each backend under `by_backend`.
    pub fn to_json(&self) -> Value {
        let mut v = self.total().to_json();
        v["by_backend"] = self
            .backends
            .iter()
            .map(|(name, c)| (name.clone(), c.to_json()))
            .collect::<serde_json::Map<_, _>>()
            .into();
        v
    }

    /// One row per counter, one column per backend plus the total.
    pub fn table(&self) -> String {
        let mut columns: Vec<(&str, Counters)> = self
            .backends
            .iter()
            .map(|(n, c)| (n.as_str(), *c))
            .collect();
        if columns.len() != 1 {
            columns.push(("all", self.total()));
        }
        let mut b = Builder::new();
        b.push_record(std::iter::once("METRIC").chain(columns.iter().map(|(n, _)| *n)));
        let labels = [
            "acquisitions",
            "releases",
            "conflicts",
            "retries",
            "failed acquisitions",
            "stale locks claimed",
            "average acquisition time",
        ];
        let cells: Vec<[String; 7]> = columns
            .iter()
            .map(|(_, c)| {
                [
                    c.acquisitions.to_string(),
                    c.releases.to_string(),
                    c.conflicts.to_string(),
                    c.retries.to_string(),
                    c.failed_acquisitions.to_string(),
                    c.stale_locks_claimed.to_string(),
                    format!("{:.1} ms", c.average_acquisition_ms()),
                ]
            })
            .collect();
        for (i, label) in labels.into_iter().enumerate() {
            b.push_record(
                std::iter::once(label.to_string()).chain(cells.iter().map(|c| c[i].clone())),
            );
        }
        b.build().with(Style::sharp()).to_string()
    }

    /// Prometheus text exposition format (0.0.4), as node_exporter's textfile collector reads it:
    /// every counter labelled with its backend.
    pub fn prometheus(&self) -> Result<String> {
        let samples = |set: &dyn Fn(&mut Metric, &Counters)| -> Vec<Metric> {
            self.backends
                .iter()
                .map(|(b, c)| {
                    let mut m = Metric::from_label(vec![label("backend", b)]);
                    set(&mut m, c);
                    m
                })
                .collect()
        };
        let counter = |name: &str, help: &str, value: fn(&Counters) -> u64| {
            let metrics = samples(&|m, c| {
                let mut v = Counter::default();
                v.set_value(value(c) as f64);
                m.set_counter(v);
            });
            family(name, help, MetricType::COUNTER, metrics)
        };
        let durations = samples(&|m, c| {
            let mut s = PromSummary::default();
            s.set_sample_count(c.acquisitions);
            s.set_sample_sum(c.acquisition_time_us as f64 / 1e6);
            m.set_summary(s);
        });
        encode(&[
            counter(
                "sentinel_acquisitions_total",
                "Lock claims granted (re-adoptions included).",
                |c| c.acquisitions,
            ),
            counter(
                "sentinel_releases_total",
                "Releases that freed a held lock (forced ones included).",
                |c| c.releases,
            ),
            counter(
                "sentinel_conflicts_total",
                "Claims that ended with the lock held by another worker (exit 3).",
                |c| c.conflicts,
            ),
            counter(
                "sentinel_retries_total",
                "Extra attempts of claims (attempts - 1 per claim).",
                |c| c.retries,
            ),
            counter(
                "sentinel_failed_acquisitions_total",
                "Claims that ended in an error, conflicts included.",
                |c| c.failed_acquisitions,
            ),
            counter(
                "sentinel_stale_locks_claimed_total",
                "Grants that took over a stale lock.",
                |c| c.stale_locks_claimed,
            ),
            family(
                "sentinel_acquisition_duration_seconds",
                "Time from the start of a granted claim to its grant, retries included.",
                MetricType::SUMMARY,
                durations,
            ),
        ])
    }
}

fn label(name: &str, value: &str) -> LabelPair {
    let mut l = LabelPair::default();
    l.set_name(name.to_string());
    l.set_value(value.to_string());
    l
}

fn family(name: &str, help: &str, kind: MetricType, metrics: Vec<Metric>) -> MetricFamily {
    let mut f = MetricFamily::default();
    f.set_name(name.to_string());
    f.set_help(help.to_string());
    f.set_field_type(kind);
    f.set_metric(metrics);
    f
}

/// Families without samples are left out: the format has no way to write them.
fn encode(families: &[MetricFamily]) -> Result<String> {
    let families: Vec<MetricFamily> = families
        .iter()
        .filter(|f| !f.get_metric().is_empty())
        .cloned()
        .collect();
    prometheus::TextEncoder::new()
        .encode_to_string(&families)
        .map_err(|e| Error::Unexpected(format!("cannot write the Prometheus text: {e}")))
}

/// `metrics --repo-wide`: counts over a window that moves, hence Prometheus gauges, not counters.
pub struct RepoMetrics<'a> {
    /// `owner/repo`, the `repo` label of every gauge.
    pub repo: String,
    /// How far back the history was read (`--since`).
    pub window: Duration,
    /// The lock activity found in the repository's comments over the window.
    pub history: &'a RepoHistory,
}

impl RepoMetrics<'_> {
    /// (JSON key, table label, Prometheus name, help, value)
    fn rows(&self) -> [(&'static str, &'static str, &'static str, &'static str, u64); 5] {
        let h = self.history;
        [
            (
                "total_acquisitions",
                "acquisitions",
                "sentinel_repo_acquisitions",
                "Grants whose lock comment was written or renewed in the window.",
                h.acquisitions,
            ),
            (
                "total_releases",
                "releases",
                "sentinel_repo_releases",
                "Releases in the window.",
                h.releases,
            ),
            (
                "stale_locks_claimed",
                "stale locks claimed",
                "sentinel_repo_stale_locks_claimed",
                "Take-overs of a lock whose lease had run out, in the window.",
                h.stale_takeovers,
            ),
            (
                "forced_takeovers",
                "forced take-overs",
                "sentinel_repo_forced_takeovers",
                "Take-overs of a live lock (--strategy force), in the window.",
                h.forced_takeovers,
            ),
            (
                "issues",
                "issues with lock activity",
                "sentinel_repo_issues",
                "Issues with lock activity in the window.",
                h.issues,
            ),
        ]
    }

    /// The counts, the repository, the window's start (`since`) and length (`window_seconds`).
    pub fn to_json(&self) -> Value {
        let mut v = json!({
            "repo": self.repo,
            "since": self.history.since,
            "window_seconds": self.window.as_secs(),
        });
        for (key, _, _, _, value) in self.rows() {
            v[key] = json!(value);
        }
        v
    }

    /// Two columns: the repository and window start, then one row per count.
    pub fn table(&self) -> String {
        let mut b = Builder::new();
        b.push_record([
            self.repo.clone(),
            format!("since {}", lease::human(self.history.since)),
        ]);
        for (_, label, _, _, value) in self.rows() {
            b.push_record([label.to_string(), value.to_string()]);
        }
        b.build().with(Style::sharp()).to_string()
    }

    /// Prometheus text format: every count a gauge labelled `repo`, plus the window's length.
    ///
    /// # Errors
    ///
    /// [`Error::Unexpected`] if the encoder fails (it should not).
    pub fn prometheus(&self) -> Result<String> {
        let gauge = |name: &str, help: &str, value: f64| {
            let mut g = Gauge::default();
            g.set_value(value);
            let mut m = Metric::from_label(vec![label("repo", &self.repo)]);
            m.set_gauge(g);
            family(name, help, MetricType::GAUGE, vec![m])
        };
        let mut families: Vec<MetricFamily> = self
            .rows()
            .into_iter()
            .map(|(_, _, name, help, value)| gauge(name, help, value as f64))
            .collect();
        families.push(gauge(
            "sentinel_repo_window_seconds",
            "Length of the window the sentinel_repo_* gauges count.",
            self.window.as_secs_f64(),
        ));
        encode(&families)
    }
}

/// The counters of a data directory.
pub struct Metrics {
    file: StateFile,
}

impl Metrics {
    /// The counters in `data_dir/metrics.json`; creates `data_dir`, not the file.
    ///
    /// # Errors
    ///
    /// The directory cannot be created.
    pub fn open(data_dir: &Path) -> Result<Metrics> {
        Ok(Metrics {
            // Counters: a crash of the machine may lose the last counts, a killed process none.
            file: StateFile::new(data_dir, "metrics")?.not_durable(),
        })
    }

    /// Every backend's counters, read under the file's shared lock; all zero if nothing was
    /// recorded yet.
    ///
    /// # Errors
    ///
    /// The file cannot be locked or read, or does not parse (reported, never reset).
    pub fn snapshot(&self) -> Result<Snapshot> {
        let data: MetricsData = self.file.read()?;
        Ok(Snapshot {
            backends: data.backends,
        })
    }

    fn record(&self, backend: &str, f: impl FnOnce(&mut Counters)) {
        let updated = self
            .file
            .update(|d: &mut MetricsData| f(d.backends.entry(backend.to_string()).or_default()));
        if let Err(e) = updated {
            tracing::warn!(error = %e, "could not update the metrics; the lock operation is unaffected");
        }
    }

    /// A granted claim: one acquisition taking `elapsed`, `attempts − 1` retries, and a stale
    /// lock claimed if it took one over. Failures to record are logged, never returned.
    pub fn record_acquired(
        &self,
        backend: &str,
        elapsed: Duration,
        attempts: u32,
        stole_stale: bool,
    ) {
        self.record(backend, |c| {
            c.add(&Counters {
                acquisitions: 1,
                retries: u64::from(attempts.saturating_sub(1)),
                stale_locks_claimed: u64::from(stole_stale),
                acquisition_time_us: u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX),
                ..Counters::default()
            })
        })
    }

    /// A claim that gave up because the lock is held: a conflict and a failed acquisition.
    pub fn record_conflict(&self, backend: &str, attempts: u32) {
        self.record(backend, |c| {
            c.add(&Counters {
                conflicts: 1,
                failed_acquisitions: 1,
                retries: u64::from(attempts.saturating_sub(1)),
                ..Counters::default()
            })
        })
    }

    /// A claim that ended in an error other than a conflict: a failed acquisition.
    pub fn record_failed(&self, backend: &str, attempts: u32) {
        self.record(backend, |c| {
            c.add(&Counters {
                failed_acquisitions: 1,
                retries: u64::from(attempts.saturating_sub(1)),
                ..Counters::default()
            })
        })
    }

    /// A release that freed a held lock.
    pub fn record_released(&self, backend: &str) {
        self.record(backend, |c| {
            c.add(&Counters {
                releases: 1,
                ..Counters::default()
            })
        })
    }
}

/// Runs `f` on the data directory's metrics; a directory that cannot be opened is only logged.
fn with_metrics(data_dir: &Path, f: impl FnOnce(&Metrics)) {
    match Metrics::open(data_dir) {
        Ok(m) => f(&m),
        Err(e) => {
            tracing::warn!(error = %e, "cannot open the metrics; the lock operation is unaffected")
        }
    }
}

/// A [`LockBackend`] that counts what passes through it in this host's metrics: every command's
/// claims and releases are counted here, once, and no command records anything itself.
///
/// A claim is the strategy loop's attempts on one lock (the attempt number starts again at 0 for
/// the next claim) or one `claim --next`. It is counted when it ends: at once when granted or
/// failed; when its last attempt found the lock held, at the next claim or when the backend is
/// dropped at the end of the command, since only then is it known that no attempt follows. A
/// claim a signal cut short is not counted. The janitor's releases of stale locks are not
/// releases of this host's locks and are not counted.
pub struct Metered<B> {
    inner: B,
    /// The inner backend's name, the counters' key (kept for `Drop`, which cannot ask `inner`).
    backend: &'static str,
    data_dir: PathBuf,
    claim: Mutex<Option<Claim>>,
}

/// The claim under way: when its first attempt started, how many attempts it made, and whether
/// the last one found the lock held.
struct Claim {
    started: Instant,
    attempts: u32,
    held: bool,
}

impl<B: LockBackend> Metered<B> {
    /// Counts `inner`'s operations in `data_dir`'s metrics.
    pub fn new(inner: B, data_dir: &Path) -> Metered<B> {
        Metered {
            backend: inner.name(),
            inner,
            data_dir: data_dir.to_path_buf(),
            claim: Mutex::new(None),
        }
    }

    /// The wrapped backend.
    pub fn inner(&self) -> &B {
        &self.inner
    }

    fn claim(&self) -> std::sync::MutexGuard<'_, Option<Claim>> {
        self.claim.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The attempt `attempt` of a claim starts: a new claim at 0, which ends the previous one.
    fn attempt_starts(&self, attempt: u32) {
        let mut claim = self.claim();
        match claim.as_mut() {
            Some(c) if attempt > 0 => {
                c.attempts = attempt + 1;
                c.held = false;
            }
            _ => {
                let ended = claim.replace(Claim {
                    started: Instant::now(),
                    attempts: attempt + 1,
                    held: false,
                });
                drop(claim);
                self.count_conflict(ended);
            }
        }
    }

    /// The claim under way ended with `outcome`: a grant, or an error. An attempt that found the
    /// lock held leaves the claim open.
    fn attempt_ends(&self, outcome: std::result::Result<Option<&Grant>, &Error>) {
        let mut claim = self.claim();
        if matches!(outcome, Ok(None)) {
            if let Some(c) = claim.as_mut() {
                c.held = true;
            }
            return;
        }
        let Some(c) = claim.take() else { return };
        drop(claim);
        // Cut short by a signal: the attempt's own outcome (often an error) says nothing about
        // the lock.
        if interrupt::is_interrupted() {
            return;
        }
        let backend = self.backend;
        with_metrics(&self.data_dir, |m| match outcome {
            Ok(Some(g)) => m.record_acquired(
                backend,
                c.started.elapsed(),
                c.attempts,
                g.took_over.as_ref().is_some_and(|h| h.stale),
            ),
            Err(Error::Interrupted(_)) | Ok(None) => {}
            Err(Error::Conflict(_)) => m.record_conflict(backend, c.attempts),
            Err(_) => m.record_failed(backend, c.attempts),
        })
    }

    /// Counts `ended` as a conflict if its last attempt found the lock held.
    fn count_conflict(&self, ended: Option<Claim>) {
        if let Some(c) = ended.filter(|c| c.held) {
            with_metrics(&self.data_dir, |m| {
                m.record_conflict(self.backend, c.attempts)
            })
        }
    }
}

impl<B> Drop for Metered<B> {
    fn drop(&mut self) {
        // A claim whose last attempt found the lock held has ended: nothing more will be tried.
        let ended = self
            .claim
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(c) = ended.filter(|c| c.held) {
            with_metrics(&self.data_dir, |m| {
                m.record_conflict(self.backend, c.attempts)
            })
        }
    }
}

impl<B: LockBackend> LockBackend for Metered<B> {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    fn parse_lock(&self, raw: &str) -> Result<LockId> {
        self.inner.parse_lock(raw)
    }

    fn describe(&self, lock: &LockId) -> String {
        self.inner.describe(lock)
    }

    fn waits_server_side(&self) -> bool {
        self.inner.waits_server_side()
    }

    fn holds_groups(&self) -> bool {
        self.inner.holds_groups()
    }

    async fn try_acquire(&self, req: &AcquireRequest) -> Result<Attempt> {
        self.attempt_starts(req.attempt);
        let attempt = self.inner.try_acquire(req).await;
        self.attempt_ends(match &attempt {
            Ok(Attempt::Granted(g)) => Ok(Some(g)),
            Ok(Attempt::Held(_)) => Ok(None),
            Err(e) => Err(e),
        });
        attempt
    }

    async fn release(&self, req: &ReleaseRequest) -> Result<Released> {
        let released = self.inner.release(req).await?;
        if released.was_held {
            with_metrics(&self.data_dir, |m| m.record_released(self.backend))
        }
        Ok(released)
    }

    async fn renew(&self, req: &RenewRequest) -> Result<Holder> {
        self.inner.renew(req).await
    }

    async fn status(&self, lock: &LockId) -> Result<Status> {
        self.inner.status(lock).await
    }

    fn renew_budget(&self) -> Option<Budget> {
        self.inner.renew_budget()
    }

    async fn list(&self, req: &ListRequest) -> Result<Vec<(String, Holder)>> {
        self.inner.list(req).await
    }

    async fn release_stale(&self, req: &ReleaseStaleRequest) -> Result<StaleRelease> {
        self.inner.release_stale(req).await
    }

    async fn claim_next(&self, req: &NextRequest) -> Result<(LockId, Claimed)> {
        self.attempt_starts(0);
        let claimed = self.inner.claim_next(req).await;
        if let Ok((_, c)) = &claimed
            && let Some(claim) = self.claim().as_mut()
        {
            // The work queue's own attempts (GitHub: the issues it tried before one was free).
            claim.attempts = c.attempts;
        }
        self.attempt_ends(claimed.as_ref().map(|(_, c)| Some(&c.grant)));
        claimed
    }

    async fn arrive(&self, req: &ArriveRequest) -> Result<Arrived> {
        self.inner.arrive(req).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sentinel::local::LocalBackend;
    use sentinel::lock::{Claimant, HoldKind, Takeover};

    #[tokio::test]
    async fn the_decorator_counts_each_claim_once_when_it_ends() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let locks = Metered::new(LocalBackend::open(d.join("local")).unwrap(), d);
        let job = LockId::Name("job".into());
        let req = |worker: &str, attempt: u32, takeover: Takeover| AcquireRequest {
            lock: job.clone(),
            claimant: Claimant {
                worker_id: worker.into(),
                node_id: "n".into(),
            },
            ttl: Duration::from_secs(60),
            takeover,
            task_info: Default::default(),
            readopt: false,
            attempt,
            wait: Duration::ZERO,
            kind: HoldKind::Exclusive,
        };
        let granted = |a: Result<Attempt>| matches!(a, Ok(Attempt::Granted(_)));
        assert!(granted(
            locks.try_acquire(&req("a", 0, Takeover::None)).await
        ));
        // Three attempts that found it held: one conflict with two retries, known to have ended
        // only when the next claim starts.
        for n in 0..3 {
            let a = locks.try_acquire(&req("b", n, Takeover::None)).await;
            assert!(matches!(a, Ok(Attempt::Held(_))));
        }
        let so_far = Metrics::open(d).unwrap().snapshot().unwrap().backends["local"];
        assert_eq!((so_far.acquisitions, so_far.conflicts), (1, 0));
        assert!(granted(
            locks.try_acquire(&req("b", 0, Takeover::Any)).await
        ));
        // A lock the backend cannot take: a failed acquisition.
        let foreign = AcquireRequest {
            lock: LockId::Issue(1),
            ..req("c", 0, Takeover::None)
        };
        assert!(locks.try_acquire(&foreign).await.is_err());
        let release = ReleaseRequest {
            lock: job.clone(),
            worker_id: "b".into(),
            force: false,
            fencing_token: None,
        };
        assert!(locks.release(&release).await.unwrap().was_held);
        // Releasing a free lock is no release.
        assert!(!locks.release(&release).await.unwrap().was_held);
        assert!(granted(
            locks.try_acquire(&req("a", 0, Takeover::None)).await
        ));
        // A claim still held when the command ends (the backend is dropped) is a conflict.
        let a = locks.try_acquire(&req("b", 0, Takeover::None)).await;
        assert!(matches!(a, Ok(Attempt::Held(_))));
        drop(locks);

        let local = Metrics::open(d).unwrap().snapshot().unwrap().backends["local"];
        assert_eq!(local.acquisitions, 3);
        assert_eq!(local.releases, 1);
        assert_eq!(local.conflicts, 2);
        assert_eq!(local.retries, 2);
        assert_eq!(local.failed_acquisitions, 3);
        assert_eq!(local.stale_locks_claimed, 0);
    }

    #[test]
    fn counters_saturate_instead_of_overflowing() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("metrics.json"),
            format!(
                "{{\"backends\": {{\"local\": {{\"releases\": {}}}}}}}",
                u64::MAX
            ),
        )
        .unwrap();
        let m = Metrics::open(dir.path()).unwrap();
        m.record_released("local");
        assert_eq!(m.snapshot().unwrap().backends["local"].releases, u64::MAX);
    }

    #[test]
    fn the_average_is_the_granted_time_per_acquisition() {
        let c = Counters {
            acquisitions: 4,
            acquisition_time_us: 10_000,
            failed_acquisitions: 9,
            ..Counters::default()
        };
        assert_eq!(c.average_acquisition_ms(), 2.5);
        assert_eq!(c.to_json()["average_acquisition_time_ms"], 2.5);
        assert_eq!(Counters::default().average_acquisition_ms(), 0.0);
    }

    #[test]
    fn concurrent_recorders_lose_no_update() {
        let dir = tempfile::tempdir().unwrap();
        std::thread::scope(|s| {
            for _ in 0..8 {
                s.spawn(|| {
                    let m = Metrics::open(dir.path()).unwrap();
                    for _ in 0..10 {
                        m.record_released("local");
                    }
                });
            }
        });
        let s = Metrics::open(dir.path()).unwrap().snapshot().unwrap();
        assert_eq!(s.backends["local"].releases, 80);
    }

    #[test]
    fn a_corrupt_file_never_fails_the_recording_call() {
        let dir = tempfile::tempdir().unwrap();
        let m = Metrics::open(dir.path()).unwrap();
        let path = dir.path().join("metrics.json");
        std::fs::write(&path, b"{not json").unwrap();
        m.record_released("local");
        let err = m.snapshot().unwrap_err();
        assert!(err.to_string().contains("corrupt"), "{err}");
        assert_eq!(std::fs::read(&path).unwrap(), b"{not json");
    }

    #[test]
    fn prometheus_text_has_help_type_and_labelled_samples() {
        let mut s = Snapshot::default();
        s.backends.insert(
            "local".into(),
            Counters {
                acquisitions: 2,
                acquisition_time_us: 1_500_000,
                ..Counters::default()
            },
        );
        s.backends.insert("we\"ird\\".into(), Counters::default());
        let text = s.prometheus().unwrap();
        assert!(text.contains("# TYPE sentinel_acquisitions_total counter\n"));
        assert!(text.contains("# HELP sentinel_acquisitions_total "));
        assert!(text.contains("sentinel_acquisitions_total{backend=\"local\"} 2\n"));
        assert!(
            text.contains("sentinel_acquisition_duration_seconds_sum{backend=\"local\"} 1.5\n")
        );
        assert!(
            text.contains("sentinel_acquisition_duration_seconds_count{backend=\"local\"} 2\n")
        );
        assert!(text.contains("{backend=\"we\\\"ird\\\\\"}"), "{text}");
        assert_eq!(Snapshot::default().prometheus().unwrap(), "");
    }

    #[test]
    fn the_table_has_a_column_per_backend_and_the_total() {
        let mut s = Snapshot::default();
        s.backends.insert("local".into(), Counters::default());
        s.backends.insert("github".into(), Counters::default());
        let t = s.table();
        assert!(
            t.contains("github") && t.contains("local") && t.contains("all"),
            "{t}"
        );
        assert!(!s.only("local").table().contains("all"));
    }
}
