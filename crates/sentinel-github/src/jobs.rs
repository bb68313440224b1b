//! Actions-aware liveness: whether the GitHub Actions job that holds a lock still runs.
//!
//! A claim made inside a workflow job records the job (`comment::ActionsJob`), and GitHub knows
//! when that job has completed — a cancelled run, a crashed or lost runner included. So a reader
//! allowed to ask (a token with `actions: read`) need not wait for the lease to run out: a lock
//! whose job has completed is stale at once, and one whose job still runs is live even past its
//! lease. That is what lets a job hold its lock on a lease as long as the job itself and renew it
//! (almost) never, which GitHub's limit of 500 comment edits an hour per token would otherwise cap
//! (docs/github.md, "Locks held by Actions jobs").
//!
//! The lease stays the rule every reader can apply, so nothing here can make two holders: the
//! ownership rule (`resolve`) accepts a take-over of a lease that has not run out only when the
//! take-over names the very job the holder's comment records, and a reader that cannot ask judges
//! by the lease as before. Asking costs rate limit, so it is done only where the answer changes
//! what sentinel does or shows — a `steal-stale` claim that finds a job's lock held, `status`, the
//! janitor — with one listing per run attempt however many of its jobs hold locks; polls of an
//! unchanged listing are conditional requests, which GitHub does not bill. A refusal (403: the
//! token lacks `actions: read`; 404: the run is gone) is remembered for the process instead of
//! asked again on every poll; any other failure leaves that one judgement to the lease.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use http::StatusCode;
use serde::Deserialize;

use super::GithubBackend;
use super::comment::ActionsJob;
use super::resolve::Record;
use sentinel_core::lock::Holder;

/// One job of GitHub's listing, with only what liveness needs; lenient, so that a field GitHub
/// adds or a status it invents never makes the answer unreadable.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct ListedJob {
    #[serde(default)]
    name: String,
    #[serde(default)]
    status: String,
    #[serde(default)]
    conclusion: Option<String>,
    #[serde(default)]
    runner_name: Option<String>,
}

#[derive(Deserialize)]
struct JobsPage {
    #[serde(default)]
    jobs: Vec<ListedJob>,
}

/// Each run attempt's jobs as one call listed them (`None`: GitHub would not say), so that a call
/// judging many locks lists each attempt once.
pub(crate) type Listings = HashMap<(u64, u32), Option<Vec<ListedJob>>>;

/// What this process learnt GitHub will not answer, so polls do not ask again.
#[derive(Debug, Default)]
pub(crate) struct Refusals {
    /// 403: the token may not read Actions at all.
    denied: bool,
    /// 404: run attempts GitHub does not know (deleted, or never there).
    gone: HashSet<(u64, u32)>,
}

/// What GitHub says of a holder's job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum JobState {
    /// Not completed; GitHub's `status` in words (`in progress`, `queued`).
    Running(String),
    /// Completed, with GitHub's `conclusion` (`success`, `failure`, `cancelled`) if it gave one.
    Completed(Option<String>),
    /// Not found, ambiguous, or GitHub would not say: the lease decides.
    Unknown,
}

/// A holder judged: by its job when GitHub said, else by its lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Judged {
    pub stale: bool,
    /// Why, when the job decided (`Holder::liveness`).
    pub liveness: Option<String>,
    /// The holder's job when it has completed: what a take-over records (`Takeover::completed_job`).
    pub completed_job: Option<ActionsJob>,
}

impl Judged {
    /// The lease's verdict, for callers for which the job would change nothing.
    pub fn by_lease(record: &Record, now: DateTime<Utc>) -> Judged {
        Judged {
            stale: record.is_stale_at(now),
            liveness: None,
            completed_job: None,
        }
    }

    fn by_job(record: &Record, now: DateTime<Utc>, state: JobState) -> Judged {
        let Some(job) = &record.meta.actions_job else {
            return Judged::by_lease(record, now);
        };
        match state {
            JobState::Completed(conclusion) => Judged {
                stale: true,
                liveness: Some(match conclusion {
                    Some(c) => format!("{} completed ({c})", job.describe()),
                    None => format!("{} completed", job.describe()),
                }),
                completed_job: Some(job.clone()),
            },
            JobState::Running(status) => Judged {
                stale: false,
                liveness: Some(format!("{} is {status}", job.describe())),
                completed_job: None,
            },
            JobState::Unknown => Judged::by_lease(record, now),
        }
    }

    /// The holder as every reader shows it, with this verdict.
    pub fn holder(&self, record: &Record, now: DateTime<Utc>) -> Holder {
        Holder {
            stale: self.stale,
            liveness: self.liveness.clone(),
            ..GithubBackend::holder_of(record, now)
        }
    }
}

/// GitHub's word for a state, if it is one (lower-case letters and `_`, as all of GitHub's are):
/// it is shown to people, and the listing is not ours.
fn word(s: &str) -> Option<String> {
    (!s.is_empty() && s.len() <= 32 && s.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'))
        .then(|| s.replace('_', " "))
}

/// Finds `job` among its attempt's `jobs`. The job's key is not the name GitHub lists it under
/// (a `name:`, a matrix), but its runner is the one it ran on: the runner's jobs are the
/// candidates (by name only when no runner was recorded). A runner runs one job at a time but may
/// run several of an attempt one after another, so several candidates decide only if they all
/// completed; otherwise the holder's could be any of them, and the lease decides.
pub(crate) fn state_of(jobs: &[ListedJob], job: &ActionsJob) -> JobState {
    let candidates: Vec<&ListedJob> = match &job.runner_name {
        Some(runner) => jobs
            .iter()
            .filter(|j| j.runner_name.as_deref() == Some(runner.as_str()))
            .collect(),
        None => jobs.iter().filter(|j| j.name == job.job).collect(),
    };
    let completed = |j: &&ListedJob| j.status == "completed";
    match candidates.as_slice() {
        [] => JobState::Unknown,
        [one] if completed(one) => JobState::Completed(one.conclusion.as_deref().and_then(word)),
        [one] => JobState::Running(word(&one.status).unwrap_or_else(|| "not completed".into())),
        many if many.iter().all(completed) => {
            let first = many[0].conclusion.as_deref();
            let same = many.iter().all(|j| j.conclusion.as_deref() == first);
            JobState::Completed(first.filter(|_| same).and_then(word))
        }
        _ => JobState::Unknown,
    }
}

impl GithubBackend {
    /// `record`'s holder judged by its Actions job when it recorded one and GitHub says what
    /// became of it, else by its lease. `listings` carries the attempts already listed by this
    /// call.
    pub(super) async fn judge(
        &self,
        record: &Record,
        now: DateTime<Utc>,
        listings: &mut Listings,
    ) -> Judged {
        let Some(job) = &record.meta.actions_job else {
            return Judged::by_lease(record, now);
        };
        let listed = match listings.entry((job.run_id, job.run_attempt)) {
            Entry::Occupied(known) => known.into_mut(),
            Entry::Vacant(slot) => {
                slot.insert(self.attempt_jobs(job.run_id, job.run_attempt).await)
            }
        };
        let state = match listed {
            Some(jobs) => state_of(jobs, job),
            None => JobState::Unknown,
        };
        Judged::by_job(record, now, state)
    }

    /// Every job of a run attempt, 100 a page; `None` when GitHub will not say.
    async fn attempt_jobs(&self, run_id: u64, attempt: u32) -> Option<Vec<ListedJob>> {
        {
            let refused = self.job_refusals.lock().unwrap();
            if refused.denied || refused.gone.contains(&(run_id, attempt)) {
                return None;
            }
        }
        let mut url = format!(
            "/repos/{}/{}/actions/runs/{run_id}/attempts/{attempt}/jobs?per_page=100",
            self.repo.owner, self.repo.name
        );
        let mut jobs = Vec::new();
        loop {
            let resp = match self.client.get(&url).await {
                Ok(resp) => resp,
                Err(e) => {
                    tracing::warn!(run_id, attempt, error = %e, "cannot ask GitHub about the Actions job holding the lock; judging it by its lease");
                    return None;
                }
            };
            match resp.status {
                s if s.is_success() => {}
                StatusCode::FORBIDDEN => {
                    tracing::warn!(
                        "this token may not read Actions jobs (GitHub: {}), so locks held by \
                         jobs are judged by their lease alone; give the workflow \
                         `permissions: actions: read`",
                        resp.message()
                    );
                    self.job_refusals.lock().unwrap().denied = true;
                    return None;
                }
                StatusCode::NOT_FOUND => {
                    tracing::info!(
                        run_id,
                        attempt,
                        "GitHub does not know this run attempt; the lock held by its job is judged by its lease"
                    );
                    self.job_refusals
                        .lock()
                        .unwrap()
                        .gone
                        .insert((run_id, attempt));
                    return None;
                }
                s => {
                    tracing::warn!(run_id, attempt, status = %s, reason = %resp.message(), "GitHub would not list the run attempt's jobs; judging the lock by its lease");
                    return None;
                }
            }
            match resp.json::<JobsPage>() {
                Ok(page) => jobs.extend(page.jobs),
                Err(e) => {
                    tracing::warn!(run_id, attempt, error = %e, "unreadable list of Actions jobs; judging the lock by its lease");
                    return None;
                }
            }
            match resp.next_page() {
                Some(next) => url = next,
                None => return Some(jobs),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listed(name: &str, runner: &str, status: &str, conclusion: Option<&str>) -> ListedJob {
        ListedJob {
            name: name.into(),
            status: status.into(),
            conclusion: conclusion.map(String::from),
            runner_name: Some(runner.into()),
        }
    }

    fn build_on(runner: Option<&str>) -> ActionsJob {
        ActionsJob {
            run_id: 1,
            run_attempt: 1,
            job: "build".into(),
            runner_name: runner.map(String::from),
        }
    }

    #[test]
    fn the_job_is_found_by_its_runner_not_its_name() {
        let jobs = [
            listed("Build (linux)", "runner-1", "completed", Some("failure")),
            listed("build", "runner-2", "in_progress", None),
        ];
        assert_eq!(
            state_of(&jobs, &build_on(Some("runner-1"))),
            JobState::Completed(Some("failure".into()))
        );
        assert_eq!(
            state_of(&jobs, &build_on(Some("runner-2"))),
            JobState::Running("in progress".into())
        );
        assert_eq!(
            state_of(&jobs, &build_on(Some("runner-3"))),
            JobState::Unknown
        );
        // Without a runner, by the job's key as its name.
        assert_eq!(
            state_of(&jobs, &build_on(None)),
            JobState::Running("in progress".into())
        );
        assert_eq!(state_of(&[], &build_on(None)), JobState::Unknown);
    }

    #[test]
    fn a_runner_with_several_jobs_decides_only_when_all_completed() {
        let done = [
            listed("lint", "self-hosted", "completed", Some("success")),
            listed("build", "self-hosted", "completed", Some("success")),
        ];
        assert_eq!(
            state_of(&done, &build_on(Some("self-hosted"))),
            JobState::Completed(Some("success".into()))
        );
        let mixed = [
            listed("lint", "self-hosted", "completed", Some("success")),
            listed("build", "self-hosted", "completed", Some("cancelled")),
        ];
        assert_eq!(
            state_of(&mixed, &build_on(Some("self-hosted"))),
            JobState::Completed(None)
        );
        let one_running = [
            listed("lint", "self-hosted", "completed", Some("success")),
            listed("build", "self-hosted", "in_progress", None),
        ];
        assert_eq!(
            state_of(&one_running, &build_on(Some("self-hosted"))),
            JobState::Unknown
        );
    }

    #[test]
    fn githubs_words_are_shown_only_when_they_are_words() {
        let odd = [listed("build", "r", "waiting\u{1b}[2J", None)];
        assert_eq!(
            state_of(&odd, &build_on(Some("r"))),
            JobState::Running("not completed".into())
        );
        let queued = [listed("build", "r", "queued", None)];
        assert_eq!(
            state_of(&queued, &build_on(Some("r"))),
            JobState::Running("queued".into())
        );
        let done = [listed("build", "r", "completed", Some("timed_out"))];
        assert_eq!(
            state_of(&done, &build_on(Some("r"))),
            JobState::Completed(Some("timed out".into()))
        );
        let forged = [listed(
            "build",
            "r",
            "completed",
            Some("success\n::error::x"),
        )];
        assert_eq!(
            state_of(&forged, &build_on(Some("r"))),
            JobState::Completed(None)
        );
    }
}
