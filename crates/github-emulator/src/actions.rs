//! GitHub Actions workflow jobs: the state behind the two read endpoints sentinel's job liveness
//! asks (`routes.rs` answers them, `render.rs` shapes a job), which tests drive through the
//! emulator handle (start a job, complete it, take `actions: read` away from a token's identity).
//!
//! Only what a lock's liveness depends on is modelled: a job's run, attempt, name, runner, status
//! and conclusion. The JSON carries the rest of GitHub's job object with fixed values, because
//! clients such as octocrab refuse a job that lacks a field their model requires.

use std::collections::{BTreeMap, HashSet};

use chrono::{DateTime, Utc};

/// A job's `status`. GitHub also has the states before a runner picks the job up (`queued`,
/// `waiting`, …), which no job that could hold a lock is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobStatus {
    InProgress,
    Completed,
}

impl JobStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::InProgress => "in_progress",
            JobStatus::Completed => "completed",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Job {
    pub id: u64,
    /// Repo key of the repository whose workflow runs it.
    pub repo: String,
    pub run_id: u64,
    pub run_attempt: u32,
    /// The display name (the YAML key unless the workflow gives the job a `name:`).
    pub name: String,
    pub runner_name: Option<String>,
    pub status: JobStatus,
    /// `success`, `failure`, `cancelled`, …; set when the job completes.
    pub conclusion: Option<String>,
    pub created_at: DateTime<Utc>,
    pub started_at: DateTime<Utc>,
    pub completed_at: Option<DateTime<Utc>>,
}

/// Every workflow job of every repository, and who may not read them.
#[derive(Debug)]
pub struct Actions {
    /// Job id -> job; ids only grow, so this is also creation order.
    pub jobs: BTreeMap<u64, Job>,
    /// User keys whose token lacks `actions: read`: every Actions endpoint answers them 403.
    pub denied: HashSet<String>,
    last_job: u64,
}

impl Default for Actions {
    fn default() -> Self {
        Actions {
            jobs: BTreeMap::new(),
            denied: HashSet::new(),
            // Job ids on github.com are in the tens of billions.
            last_job: 20_000_000_000 + fastrand::u64(0..1_000_000),
        }
    }
}

impl Actions {
    /// Records a job that runs from `now`; returns its id.
    pub fn start(
        &mut self,
        repo: &str,
        run_id: u64,
        run_attempt: u32,
        name: &str,
        runner_name: Option<&str>,
        now: DateTime<Utc>,
    ) -> u64 {
        self.last_job += fastrand::u64(1..=20);
        let id = self.last_job;
        self.jobs.insert(
            id,
            Job {
                id,
                repo: repo.to_string(),
                run_id,
                run_attempt,
                name: name.to_string(),
                runner_name: runner_name.map(str::to_string),
                status: JobStatus::InProgress,
                conclusion: None,
                created_at: now,
                started_at: now,
                completed_at: None,
            },
        );
        id
    }

    /// Ends a job with `conclusion`.
    pub fn complete(&mut self, job_id: u64, conclusion: &str, now: DateTime<Utc>) {
        let job = self
            .jobs
            .get_mut(&job_id)
            .unwrap_or_else(|| panic!("github-emulator: no job {job_id}"));
        job.status = JobStatus::Completed;
        job.conclusion = Some(conclusion.to_string());
        job.completed_at = Some(now);
    }
}
