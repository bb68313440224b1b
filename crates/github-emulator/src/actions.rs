//! GitHub Actions workflow jobs: the two read endpoints sentinel's job liveness asks
//! (`GET /repos/O/R/actions/runs/RUN/attempts/N/jobs` and `GET /repos/O/R/actions/jobs/ID`) and
//! the state behind them, which tests drive through the emulator handle (start a job, complete
//! it, take `actions: read` away from a token's identity).
//!
//! Only what a lock's liveness depends on is modelled: a job's run, attempt, name, runner, status
//! and conclusion. The JSON carries the rest of GitHub's job object with fixed values, because
//! clients such as octocrab refuse a job that lacks a field their model requires.

use std::collections::{BTreeMap, HashSet};

use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use crate::paginate::{self, PageRequest};
use crate::render::{node_id, timestamp};
use crate::routes::{Ctx, Reply, forbidden, not_found};
use crate::state::State;

/// A job's `status`. GitHub also has the states before a runner picks the job up (`queued`,
/// `waiting`, …), which no job that could hold a lock is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobStatus {
    InProgress,
    Completed,
}

impl JobStatus {
    fn as_str(self) -> &'static str {
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

/// `GET /repos/{o}/{r}/actions/...`, the repository already resolved and readable by the caller.
pub fn routes(st: &State, cx: &Ctx, repo: &str, rest: &[&str]) -> Result<Reply, Reply> {
    if cx.method != "GET" {
        return Err(not_found());
    }
    if cx
        .caller
        .as_deref()
        .is_some_and(|c| st.actions.denied.contains(c))
    {
        return Err(forbidden(st, cx));
    }
    match rest {
        ["runs", run_id, "attempts", attempt, "jobs"] => {
            let run_id: u64 = run_id.parse().map_err(|_| not_found())?;
            let attempt: u32 = attempt.parse().map_err(|_| not_found())?;
            list_attempt_jobs(st, cx, repo, run_id, attempt)
        }
        ["jobs", job_id] => {
            let id: u64 = job_id.parse().map_err(|_| not_found())?;
            let job = st
                .actions
                .jobs
                .get(&id)
                .filter(|j| j.repo == repo)
                .ok_or_else(not_found)?;
            Ok(Reply::json(200, render(st, job)))
        }
        _ => Err(not_found()),
    }
}

/// One attempt's jobs, oldest first, paginated like GitHub: `{"total_count", "jobs"}` with the
/// `Link` header of the whole listing. A run (or attempt) nobody started is 404, as on GitHub.
fn list_attempt_jobs(
    st: &State,
    cx: &Ctx,
    repo: &str,
    run_id: u64,
    attempt: u32,
) -> Result<Reply, Reply> {
    let jobs: Vec<&Job> = st
        .actions
        .jobs
        .values()
        .filter(|j| j.repo == repo && j.run_id == run_id && j.run_attempt == attempt)
        .collect();
    if jobs.is_empty() {
        return Err(not_found());
    }
    let page = PageRequest::from_query(&cx.query);
    let body = json!({
        "total_count": jobs.len(),
        "jobs": page.slice(&jobs).iter().map(|j| render(st, j)).collect::<Vec<_>>(),
    });
    let mut reply = Reply::json(200, body);
    let here = format!("{}{}", st.base_url, cx.path);
    if let Some(link) = paginate::link_header(&here, &cx.query, page, jobs.len()) {
        reply = reply.with_header("link", link);
    }
    Ok(reply)
}

/// A job object with every field of GitHub's.
fn render(st: &State, j: &Job) -> Value {
    let full = &st.repo(&j.repo).full_name;
    let api = format!("{}/repos/{full}", st.base_url);
    json!({
        "id": j.id,
        "run_id": j.run_id,
        "run_url": format!("{api}/actions/runs/{}", j.run_id),
        "run_attempt": j.run_attempt,
        "node_id": node_id("CheckRun", j.id),
        "head_sha": format!("{:040x}", j.run_id),
        "url": format!("{api}/actions/jobs/{}", j.id),
        "html_url": format!("https://github.com/{full}/actions/runs/{}/job/{}", j.run_id, j.id),
        "status": j.status.as_str(),
        "conclusion": j.conclusion,
        "created_at": timestamp(j.created_at),
        "started_at": timestamp(j.started_at),
        "completed_at": j.completed_at.map(timestamp),
        "name": j.name,
        "steps": [],
        "check_run_url": format!("{api}/check-runs/{}", j.id),
        "labels": ["ubuntu-latest"],
        "runner_id": j.runner_name.as_ref().map(|_| 1),
        "runner_name": j.runner_name,
        "runner_group_id": j.runner_name.as_ref().map(|_| 1),
        "runner_group_name": j.runner_name.as_ref().map(|_| "GitHub Actions"),
        "workflow_name": "CI",
        "head_branch": "main",
    })
}
