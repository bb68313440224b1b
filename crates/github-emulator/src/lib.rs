//! A GitHub REST API emulator for sentinel's tests: a real HTTP server on 127.0.0.1 that answers
//! the issue, comment, label, assignee, user and Actions job endpoints the way api.github.com
//! does, including the unpleasant parts (silently dropped assignees, lists that lag behind
//! writes, rate limits, 301/410 for transferred/deleted issues, injected 5xx before or after a
//! write, a token without `actions: read`).
//!
//! This file owns the handle: [`Emulator::start`] spawns a dedicated thread with its own tokio
//! runtime, so it works from plain `#[test]`s (which then run the real binary against
//! [`Emulator::url`]) and from inside `#[tokio::test]`s alike; dropping the handle stops the
//! server. The control methods below seed and inspect the state directly, bypassing HTTP, auth
//! and rate limits, and are not logged.
//!
//! ```no_run
//! use github_emulator::{Emulator, Permission, UserKind};
//! let emu = Emulator::start();
//! let token = emu.add_user("alice", UserKind::User);
//! emu.create_repo("acme/widgets", "acme", true);
//! emu.add_collaborator("acme/widgets", "alice", Permission::Write);
//! let issue = emu.create_issue("acme/widgets", "Fix the flux capacitor");
//! // ... run `sentinel --api-url <emu.url()> --token <token> claim <issue>` ...
//! assert_eq!(emu.issue_view("acme/widgets", issue).assignees, ["alice"]);
//! ```

mod actions;
mod faults;
mod paginate;
mod render;
mod routes;
mod server;
mod state;

use std::collections::{BTreeMap, HashMap};
use std::net::TcpListener;
use std::thread::JoinHandle;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::oneshot;

pub use faults::Fault;
pub use state::{Permission, UserKind};

use server::{Shared, lock};
use state::{Fate, Repo, State, key};

/// One API request as the emulator saw it (seeding calls are not logged).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub query: Option<String>,
    /// The status the client finally got (304s and injected faults included).
    pub status: u16,
    /// The caller's login; `None` for anonymous requests and unknown tokens.
    pub login: Option<String>,
}

/// A comment as it truly is now (no read lag), for assertions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommentView {
    pub id: u64,
    pub login: String,
    pub body: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// `OWNER`, `COLLABORATOR` or `NONE`.
    pub author_association: String,
}

/// An issue as it truly is now, for assertions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssueView {
    /// `open` or `closed`.
    pub state: String,
    pub locked: bool,
    /// Logins as registered, in assignment order.
    pub assignees: Vec<String>,
    pub labels: Vec<String>,
    pub title: String,
    /// Number of live comments.
    pub comments: usize,
    pub updated_at: DateTime<Utc>,
}

/// A running emulator. Dropping it stops the server and joins its thread.
pub struct Emulator {
    url: String,
    state: Shared,
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Emulator {
    /// Starts a server on an ephemeral port of 127.0.0.1.
    pub fn start() -> Emulator {
        Emulator::start_on(0)
    }

    /// Starts a server on a chosen port of 127.0.0.1 (0 picks a free one).
    pub fn start_on(port: u16) -> Emulator {
        let listener = TcpListener::bind(("127.0.0.1", port))
            .unwrap_or_else(|e| panic!("github-emulator: cannot bind 127.0.0.1:{port}: {e}"));
        listener
            .set_nonblocking(true)
            .expect("github-emulator: set_nonblocking");
        let port = listener.local_addr().expect("local_addr").port();
        let url = format!("http://127.0.0.1:{port}");
        let state: Shared = std::sync::Arc::new(std::sync::Mutex::new(State::new(url.clone())));
        let app = server::router(state.clone());
        let (shutdown, stop) = oneshot::channel::<()>();

        // A runtime of our own on a thread of our own: never `block_on` the caller's thread,
        // which may itself be a tokio worker.
        let thread = std::thread::Builder::new()
            .name("github-emulator".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .thread_name("github-emulator-worker")
                    .enable_all()
                    .build()
                    .expect("github-emulator: tokio runtime");
                rt.block_on(async move {
                    let listener = tokio::net::TcpListener::from_std(listener)
                        .expect("github-emulator: listener");
                    let serve = std::future::IntoFuture::into_future(axum::serve(listener, app));
                    tokio::select! {
                        result = serve => {
                            if let Err(e) = result {
                                eprintln!("github-emulator: server stopped: {e}");
                            }
                        }
                        _ = stop => {}
                    }
                });
                // Connections still open (keep-alive, a request sleeping in injected latency)
                // are cut rather than waited for.
                rt.shutdown_timeout(Duration::from_secs(1));
            })
            .expect("github-emulator: spawn server thread");

        Emulator {
            url,
            state,
            shutdown: Some(shutdown),
            thread: Some(thread),
        }
    }

    /// Base URL of the API, e.g. `http://127.0.0.1:41234` (no trailing slash).
    pub fn url(&self) -> String {
        self.url.clone()
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        lock(&self.state)
    }

    // ----- accounts and repositories -----

    /// Registers `login` (if new) and returns a fresh token for it; a login may hold several.
    /// `ghp_` tokens for users, `ghs_` (installation-style) for bots.
    pub fn add_user(&self, login: &str, kind: UserKind) -> String {
        let mut st = self.state();
        let user = st.ensure_user(login, Some(kind));
        let prefix = match kind {
            UserKind::User => "ghp_",
            UserKind::Bot => "ghs_",
        };
        let token: String = std::iter::repeat_with(fastrand::alphanumeric)
            .take(36)
            .collect();
        let token = format!("{prefix}{token}");
        st.tokens.insert(token.clone(), user);
        token
    }

    /// Creates `owner/name`; the owner gets Admin and appears as `OWNER`.
    pub fn create_repo(&self, full_name: &str, owner_login: &str, public: bool) {
        let mut st = self.state();
        assert!(
            full_name.split('/').count() == 2,
            "github-emulator: repository names look like owner/name, got {full_name:?}"
        );
        assert!(
            !st.repos.contains_key(&key(full_name)),
            "github-emulator: repository {full_name} already exists"
        );
        let owner = st.ensure_user(owner_login, None);
        st.repos.insert(
            key(full_name),
            Repo {
                full_name: full_name.to_string(),
                owner,
                public,
                collaborators: HashMap::new(),
                labels: Vec::new(),
                issues: BTreeMap::new(),
                next_number: 1,
            },
        );
    }

    /// Grants `login` (created if needed) a role on the repository; `COLLABORATOR` association.
    pub fn add_collaborator(&self, full_name: &str, login: &str, permission: Permission) {
        let mut st = self.state();
        let user = st.ensure_user(login, None);
        st.repo_mut(&key(full_name))
            .collaborators
            .insert(user, permission);
    }

    // ----- issues -----

    /// Opens an issue authored by the repo owner; returns its number.
    pub fn create_issue(&self, repo: &str, title: &str) -> u64 {
        let mut st = self.state();
        let repo = key(repo);
        let owner = st.repo(&repo).owner.clone();
        st.create_issue(&repo, title, None, &owner, false)
    }

    /// Opens a pull request (an issue whose JSON carries `pull_request`); shares the numbering.
    pub fn create_pull_request(&self, repo: &str, title: &str) -> u64 {
        let mut st = self.state();
        let repo = key(repo);
        let owner = st.repo(&repo).owner.clone();
        st.create_issue(&repo, title, None, &owner, true)
    }

    pub fn close_issue(&self, repo: &str, number: u64) {
        let mut st = self.state();
        let repo = key(repo);
        let owner = st.repo(&repo).owner.clone();
        st.close_issue(&repo, number, Some(owner), "completed");
    }

    pub fn reopen_issue(&self, repo: &str, number: u64) {
        self.state().reopen_issue(&key(repo), number);
    }

    pub fn lock_issue(&self, repo: &str, number: u64) {
        self.state().seeded_issue_mut(&key(repo), number).locked = true;
    }

    pub fn unlock_issue(&self, repo: &str, number: u64) {
        self.state().seeded_issue_mut(&key(repo), number).locked = false;
    }

    /// From now on every request about the issue answers `410 Gone`.
    pub fn delete_issue(&self, repo: &str, number: u64) {
        self.state().seeded_issue_mut(&key(repo), number).fate = Fate::Deleted;
    }

    /// Moves the issue (with its comments) to `to_repo` and returns its new number; the old URL
    /// answers `301 Moved Permanently` with a `Location` header.
    pub fn transfer_issue(&self, repo: &str, number: u64, to_repo: &str) -> u64 {
        self.state()
            .transfer_issue(&key(repo), number, &key(to_repo))
    }

    /// Puts labels on an issue (creating them on the repo), as a human would in the UI.
    pub fn add_labels(&self, repo: &str, number: u64, labels: &[&str]) {
        let mut st = self.state();
        let repo = key(repo);
        for name in labels {
            let name = st.ensure_label(&repo, name);
            let issue = st.seeded_issue_mut(&repo, number);
            if !issue.labels.contains(&name) {
                issue.labels.push(name);
            }
        }
    }

    /// The issue as it truly is now.
    pub fn issue_view(&self, repo: &str, number: u64) -> IssueView {
        let st = self.state();
        let repo = key(repo);
        let issue = st
            .issue(&repo, number)
            .unwrap_or_else(|| panic!("github-emulator: no issue {repo}#{number}"));
        IssueView {
            state: if issue.open { "open" } else { "closed" }.to_string(),
            locked: issue.locked,
            assignees: issue
                .assignees
                .iter()
                .map(|a| st.user(a).login.clone())
                .collect(),
            labels: issue.labels.clone(),
            title: issue.title.clone(),
            comments: st.live_comments(&repo, number).len(),
            updated_at: issue.updated_at,
        }
    }

    // ----- comments -----

    /// Seeds a comment (no auth checks, no rate limit, no read lag, not logged); returns its id.
    pub fn add_comment(&self, repo: &str, number: u64, login: &str, body: &str) -> u64 {
        let mut st = self.state();
        let author = st.ensure_user(login, None);
        st.add_comment(&key(repo), number, &author, body, false)
    }

    /// Edits a comment by hand (bumps `updated_at`; no read lag).
    pub fn edit_comment(&self, repo: &str, comment_id: u64, body: &str) {
        let mut st = self.state();
        Self::assert_comment_in(&st, repo, comment_id);
        st.write_comment(comment_id, Some(body), false);
    }

    /// Deletes a comment by hand (no read lag).
    pub fn delete_comment(&self, repo: &str, comment_id: u64) {
        let mut st = self.state();
        Self::assert_comment_in(&st, repo, comment_id);
        st.write_comment(comment_id, None, false);
    }

    fn assert_comment_in(st: &State, repo: &str, comment_id: u64) {
        let found = st.comments.get(&comment_id);
        assert!(
            found.is_some_and(|c| c.repo == key(repo) && !c.is_deleted()),
            "github-emulator: no live comment {comment_id} in {repo}"
        );
    }

    /// The live comments of an issue as they truly are now, ascending id.
    pub fn comments(&self, repo: &str, number: u64) -> Vec<CommentView> {
        let st = self.state();
        let repo = key(repo);
        st.live_comments(&repo, number)
            .into_iter()
            .map(|c| {
                let v = c.current();
                CommentView {
                    id: c.id,
                    login: st.user(&c.author).login.clone(),
                    body: v.body.clone(),
                    created_at: c.created_at,
                    updated_at: v.updated_at,
                    author_association: st.author_association(&repo, &c.author).to_string(),
                }
            })
            .collect()
    }

    // ----- Actions -----

    /// Starts a job of workflow run `run_id`, attempt `run_attempt`, named `name` (what GitHub
    /// shows: the YAML key unless the workflow names the job) on `runner_name`: `in_progress`
    /// from now. Returns the job's id.
    pub fn start_job(
        &self,
        repo: &str,
        run_id: u64,
        run_attempt: u32,
        name: &str,
        runner_name: &str,
    ) -> u64 {
        let mut st = self.state();
        let repo = key(repo);
        st.repo(&repo);
        let now = st.now();
        st.actions
            .start(&repo, run_id, run_attempt, name, Some(runner_name), now)
    }

    /// Ends a job: `completed`, with `conclusion` (`success`, `failure`, `cancelled`, …).
    pub fn complete_job(&self, job_id: u64, conclusion: &str) {
        let mut st = self.state();
        let now = st.now();
        st.actions.complete(job_id, conclusion, now);
    }

    /// From now on every Actions endpoint answers `login` 403, as GitHub answers a token without
    /// `actions: read` ("Resource not accessible by integration" for an app or workflow token).
    pub fn deny_actions_read(&self, login: &str) {
        let mut st = self.state();
        let user = st.ensure_user(login, None);
        st.actions.denied.insert(user);
    }

    // ----- time -----

    /// Emulator clock = system clock + `offset`; drives `Date`, `created_at`, `updated_at`.
    pub fn set_clock_offset(&self, offset: chrono::Duration) {
        self.state().clock_offset = offset;
    }

    pub fn advance_clock(&self, by: chrono::Duration) {
        let mut st = self.state();
        st.clock_offset += by;
    }

    /// The emulator's current time (whole seconds, like GitHub's timestamps).
    pub fn now(&self) -> DateTime<Utc> {
        self.state().now()
    }

    // ----- imperfections -----

    /// Every request sleeps `d` before it is handled.
    pub fn set_latency(&self, d: Duration) {
        self.state().latency = d;
    }

    /// Each API write on a comment (create, edit, delete) becomes visible to the two comment
    /// list endpoints only after its own delay, drawn uniformly from `0..=max`; until then
    /// lists show the previous version. Single-comment GETs and write responses are current.
    pub fn set_read_lag(&self, max: Duration) {
        self.set_read_lag_range(Duration::ZERO, max);
    }

    /// Like [`Emulator::set_read_lag`] with the delay drawn from `min..=max`; `min == max` makes
    /// the lag exact, for tests that must not depend on the draw.
    pub fn set_read_lag_range(&self, min: Duration, max: Duration) {
        self.state().read_lag = (min, max);
    }

    /// The next `times` requests whose method equals `method` (any case) and whose path
    /// contains `path_contains` suffer `fault`.
    pub fn inject(&self, method: &str, path_contains: &str, fault: Fault, times: usize) {
        self.state()
            .faults
            .push(method, path_contains, fault, times);
    }

    /// Primary rate limit per token per hour (default 5000).
    pub fn set_rate_limit(&self, limit: u32) {
        self.state().rate_limit = limit;
    }

    /// Primary rate limit for unauthenticated callers (default 60, like GitHub per IP).
    pub fn set_anonymous_rate_limit(&self, limit: u32) {
        self.state().anonymous_rate_limit = limit;
    }

    /// What `x-ratelimit-remaining` would say for this token right now.
    pub fn rate_limit_remaining(&self, token: &str) -> u32 {
        let mut st = self.state();
        let rate_key = if st.tokens.contains_key(token) {
            token
        } else {
            ""
        };
        let used = st.rate_window(rate_key).used;
        st.limit_for(rate_key).saturating_sub(used)
    }

    // ----- request log -----

    /// Every API request so far, in arrival order.
    pub fn requests(&self) -> Vec<Request> {
        self.state().log.clone()
    }

    pub fn clear_requests(&self) {
        self.state().log.clear();
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        if let Some(stop) = self.shutdown.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
