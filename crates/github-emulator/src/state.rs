//! The emulated GitHub: users and tokens, repositories with their issues, labels and comments,
//! workflow jobs, the (offsettable) clock, rate-limit windows, pending faults and the request log.
//!
//! Everything lives in one `State` behind one std `Mutex` (see `lib.rs`): every change is
//! serialized, so comment ids follow creation order exactly, and no handler ever holds the lock
//! across an await. Methods here know nothing about HTTP; `routes.rs` maps requests onto them.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use chrono::{DateTime, Timelike, Utc};

use crate::Request;
use crate::actions::Actions;
use crate::faults::FaultQueue;

/// What kind of account a login is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UserKind {
    /// A person with a personal access token.
    User,
    /// A GitHub App / Actions identity: `GET /user` is forbidden and it can never be assigned.
    Bot,
}

/// A collaborator's role on a repository; ordered so that `>= Write` means "has push access".
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Permission {
    Read,
    Write,
    Admin,
}

/// Comment ids on github.com passed 2^31 long ago; starting above it catches clients that
/// squeeze ids into an i32/u32.
pub const FIRST_COMMENT_ID: u64 = 2_147_483_648;

/// GitHub rejects comment bodies longer than this many characters.
pub const MAX_COMMENT_CHARS: usize = 65_536;

#[derive(Debug)]
pub struct User {
    pub login: String,
    pub id: u64,
    pub kind: UserKind,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone)]
pub struct Label {
    pub id: u64,
    pub name: String,
    pub color: String,
    pub description: Option<String>,
    pub default: bool,
}

/// Where an issue number now leads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fate {
    Live,
    /// `410 Gone` from now on.
    Deleted,
    /// `301` to the issue's new home (repo key, number).
    Transferred {
        repo: String,
        number: u64,
    },
}

#[derive(Debug)]
pub struct Issue {
    pub id: u64,
    pub number: u64,
    pub title: String,
    pub body: Option<String>,
    /// User key (lower-case login) of the author.
    pub author: String,
    pub is_pull_request: bool,
    pub open: bool,
    pub state_reason: Option<String>,
    pub locked: bool,
    /// User keys, in assignment order.
    pub assignees: Vec<String>,
    /// Label names as the repo spells them, in the order they were added.
    pub labels: Vec<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub closed_at: Option<DateTime<Utc>>,
    pub closed_by: Option<String>,
    /// Ids of every comment ever made on this issue (deleted ones included), ascending.
    pub comment_ids: Vec<u64>,
    pub fate: Fate,
}

#[derive(Debug)]
pub struct Repo {
    pub full_name: String,
    /// User key of the owner (who has Admin and is `OWNER` in author associations).
    pub owner: String,
    pub public: bool,
    pub collaborators: HashMap<String, Permission>,
    pub labels: Vec<Label>,
    pub issues: BTreeMap<u64, Issue>,
    pub next_number: u64,
}

/// One state of a comment. Lists show the newest version whose `visible_at` has passed, which is
/// how read lag (GitHub's missing read-after-write consistency) is modelled.
#[derive(Debug, Clone)]
pub struct Version {
    pub body: String,
    pub updated_at: DateTime<Utc>,
    pub deleted: bool,
    pub visible_at: Instant,
}

#[derive(Debug)]
pub struct Comment {
    pub id: u64,
    /// Repo key and issue number it belongs to (both change when the issue is transferred).
    pub repo: String,
    pub number: u64,
    pub author: String,
    pub created_at: DateTime<Utc>,
    /// Never empty; the last one is the truth.
    pub versions: Vec<Version>,
}

impl Comment {
    pub fn current(&self) -> &Version {
        self.versions
            .last()
            .expect("a comment always has a version")
    }

    pub fn is_deleted(&self) -> bool {
        self.current().deleted
    }

    /// What a list endpoint shows at `now`: the newest version that has become visible, unless
    /// that version is a deletion or nothing is visible yet (a comment that is too fresh).
    pub fn visible(&self, now: Instant) -> Option<&Version> {
        self.versions
            .iter()
            .rev()
            .find(|v| v.visible_at <= now)
            .filter(|v| !v.deleted)
    }

    /// Records a write. Versions older than the newest visible one can never be shown again,
    /// so they are dropped to keep the history small.
    pub fn push_version(&mut self, version: Version, now: Instant) {
        self.versions.push(version);
        if let Some(newest_visible) = self.versions.iter().rposition(|v| v.visible_at <= now) {
            self.versions.drain(..newest_visible);
        }
    }
}

/// Primary rate-limit accounting for one token (or for anonymous callers).
#[derive(Debug, Clone, Copy)]
pub struct RateWindow {
    pub used: u32,
    /// Epoch seconds (emulator clock) when the window resets.
    pub reset: i64,
}

/// Hands out ids. Comment ids grow by a random 1..=50 per comment across the whole emulator,
/// like github.com where other repositories' comments take the numbers in between.
#[derive(Debug)]
pub struct Ids {
    next_user: u64,
    next_issue: u64,
    next_label: u64,
    last_comment: u64,
    next_request: u64,
}

impl Default for Ids {
    fn default() -> Self {
        Ids {
            next_user: 10_000 + fastrand::u64(0..1000),
            next_issue: 2_000_000_000 + fastrand::u64(0..1_000_000),
            next_label: 5_000_000_000 + fastrand::u64(0..1_000_000),
            last_comment: FIRST_COMMENT_ID + fastrand::u64(0..1_000_000),
            next_request: fastrand::u64(0x1000..0xF000),
        }
    }
}

impl Ids {
    fn take(counter: &mut u64) -> u64 {
        *counter += 1;
        *counter
    }
    pub fn user(&mut self) -> u64 {
        Self::take(&mut self.next_user)
    }
    pub fn issue(&mut self) -> u64 {
        Self::take(&mut self.next_issue)
    }
    pub fn label(&mut self) -> u64 {
        Self::take(&mut self.next_label)
    }
    pub fn comment(&mut self) -> u64 {
        self.last_comment += fastrand::u64(1..=50);
        self.last_comment
    }
    /// Something shaped like GitHub's `x-github-request-id` (`CC54:2F8C4B:1A7B1E:1C4C0C:66F2A3B1`).
    pub fn request_id(&mut self) -> String {
        let n = Self::take(&mut self.next_request);
        format!(
            "{:04X}:{:06X}:{:06X}:{:06X}:{:08X}",
            n & 0xFFFF,
            fastrand::u32(0..0xFF_FFFF),
            fastrand::u32(0..0xFF_FFFF),
            fastrand::u32(0..0xFF_FFFF),
            n
        )
    }
}

pub struct State {
    /// `http://127.0.0.1:PORT`, used in every API URL we render.
    pub base_url: String,
    pub clock_offset: chrono::Duration,
    pub latency: Duration,
    /// Each API write on a comment becomes visible to lists after a delay drawn from this range.
    pub read_lag: (Duration, Duration),
    pub rate_limit: u32,
    pub anonymous_rate_limit: u32,
    /// Keyed by lower-case login: GitHub logins are case-insensitive.
    pub users: BTreeMap<String, User>,
    /// Token -> user key.
    pub tokens: HashMap<String, String>,
    /// Keyed by lower-case `owner/name`.
    pub repos: BTreeMap<String, Repo>,
    pub comments: BTreeMap<u64, Comment>,
    /// Keyed by token (or `""` for anonymous callers).
    pub rate: HashMap<String, RateWindow>,
    pub faults: FaultQueue,
    pub log: Vec<Request>,
    pub ids: Ids,
    pub actions: Actions,
}

pub fn key(login_or_repo: &str) -> String {
    login_or_repo.to_ascii_lowercase()
}

impl State {
    pub fn new(base_url: String) -> State {
        State {
            base_url,
            clock_offset: chrono::Duration::zero(),
            latency: Duration::ZERO,
            read_lag: (Duration::ZERO, Duration::ZERO),
            rate_limit: 5000,
            anonymous_rate_limit: 60,
            users: BTreeMap::new(),
            tokens: HashMap::new(),
            repos: BTreeMap::new(),
            comments: BTreeMap::new(),
            rate: HashMap::new(),
            faults: FaultQueue::default(),
            log: Vec::new(),
            ids: Ids::default(),
            actions: Actions::default(),
        }
    }

    /// The emulator's clock, at GitHub's one-second resolution.
    pub fn now(&self) -> DateTime<Utc> {
        let t = Utc::now() + self.clock_offset;
        t.with_nanosecond(0).unwrap_or(t)
    }

    /// When a write made now becomes visible to list endpoints. API writes draw their own lag;
    /// seeding calls (`lagged == false`) are visible at once so test set-up is deterministic.
    pub fn visibility_for_new_write(&self, lagged: bool) -> Instant {
        let (min, max) = (
            self.read_lag.0.as_micros() as u64,
            self.read_lag.1.as_micros() as u64,
        );
        let lag = if !lagged || max == 0 {
            0
        } else {
            fastrand::u64(min.min(max)..=max)
        };
        Instant::now() + Duration::from_micros(lag)
    }

    // ----- users and access -----

    /// Returns the user key, creating the account if needed (a `[bot]` suffix makes a Bot), so
    /// seeding helpers never fail on an unknown login.
    pub fn ensure_user(&mut self, login: &str, kind: Option<UserKind>) -> String {
        let k = key(login);
        if !self.users.contains_key(&k) {
            let kind = kind.unwrap_or(if login.ends_with("[bot]") {
                UserKind::Bot
            } else {
                UserKind::User
            });
            let user = User {
                login: login.to_string(),
                id: self.ids.user(),
                kind,
                created_at: self.now(),
            };
            self.users.insert(k.clone(), user);
        }
        k
    }

    pub fn user(&self, user_key: &str) -> &User {
        &self.users[user_key]
    }

    pub fn repo(&self, repo_key: &str) -> &Repo {
        self.repos
            .get(repo_key)
            .unwrap_or_else(|| panic!("github-emulator: no repository {repo_key:?}"))
    }

    pub fn repo_mut(&mut self, repo_key: &str) -> &mut Repo {
        self.repos
            .get_mut(repo_key)
            .unwrap_or_else(|| panic!("github-emulator: no repository {repo_key:?}"))
    }

    pub fn permission(&self, repo_key: &str, user_key: Option<&str>) -> Option<Permission> {
        let repo = self.repos.get(repo_key)?;
        let user = user_key?;
        if repo.owner == user {
            Some(Permission::Admin)
        } else {
            repo.collaborators.get(user).copied()
        }
    }

    pub fn can_read(&self, repo_key: &str, user_key: Option<&str>) -> bool {
        match self.repos.get(repo_key) {
            Some(repo) => repo.public || self.permission(repo_key, user_key).is_some(),
            None => false,
        }
    }

    pub fn can_push(&self, repo_key: &str, user_key: Option<&str>) -> bool {
        self.permission(repo_key, user_key) >= Some(Permission::Write)
    }

    /// GitHub only lets people with push access be assignees, and never bots.
    pub fn is_assignable(&self, repo_key: &str, user_key: &str) -> bool {
        matches!(self.users.get(user_key), Some(u) if u.kind == UserKind::User)
            && self.can_push(repo_key, Some(user_key))
    }

    pub fn author_association(&self, repo_key: &str, user_key: &str) -> &'static str {
        let repo = self.repo(repo_key);
        // App and Actions identities act through installation permissions, not membership:
        // GitHub reports their comments as NONE even when they can write.
        if self.user(user_key).kind == UserKind::Bot {
            "NONE"
        } else if repo.owner == user_key {
            "OWNER"
        } else if repo.collaborators.contains_key(user_key) {
            "COLLABORATOR"
        } else {
            "NONE"
        }
    }

    // ----- issues -----

    pub fn issue(&self, repo_key: &str, number: u64) -> Option<&Issue> {
        self.repos.get(repo_key)?.issues.get(&number)
    }

    pub fn issue_mut(&mut self, repo_key: &str, number: u64) -> Option<&mut Issue> {
        self.repos.get_mut(repo_key)?.issues.get_mut(&number)
    }

    /// The issue for a seeding call, which must exist (panics name the culprit).
    pub fn seeded_issue_mut(&mut self, repo_key: &str, number: u64) -> &mut Issue {
        self.issue_mut(repo_key, number)
            .unwrap_or_else(|| panic!("github-emulator: no issue {repo_key}#{number}"))
    }

    pub fn create_issue(
        &mut self,
        repo_key: &str,
        title: &str,
        body: Option<String>,
        author: &str,
        is_pull_request: bool,
    ) -> u64 {
        let now = self.now();
        let id = self.ids.issue();
        let repo = self.repo_mut(repo_key);
        let number = repo.next_number;
        repo.next_number += 1;
        repo.issues.insert(
            number,
            Issue {
                id,
                number,
                title: title.to_string(),
                body,
                author: author.to_string(),
                is_pull_request,
                open: true,
                state_reason: None,
                locked: false,
                assignees: Vec::new(),
                labels: Vec::new(),
                created_at: now,
                updated_at: now,
                closed_at: None,
                closed_by: None,
                comment_ids: Vec::new(),
                fate: Fate::Live,
            },
        );
        number
    }

    /// Any write on an issue or its comments moves its `updated_at`, as on GitHub.
    pub fn touch_issue(&mut self, repo_key: &str, number: u64) {
        let now = self.now();
        if let Some(issue) = self.issue_mut(repo_key, number) {
            issue.updated_at = now;
        }
    }

    pub fn close_issue(&mut self, repo_key: &str, number: u64, by: Option<String>, reason: &str) {
        let now = self.now();
        let issue = self.seeded_issue_mut(repo_key, number);
        if issue.open {
            issue.open = false;
            issue.closed_at = Some(now);
            issue.closed_by = by;
        }
        issue.state_reason = Some(reason.to_string());
        issue.updated_at = now;
    }

    pub fn reopen_issue(&mut self, repo_key: &str, number: u64) {
        let now = self.now();
        let issue = self.seeded_issue_mut(repo_key, number);
        if !issue.open {
            issue.open = true;
            issue.closed_at = None;
            issue.closed_by = None;
            issue.state_reason = Some("reopened".to_string());
        }
        issue.updated_at = now;
    }

    /// Moves an issue and its comments to another repository; the old number answers 301.
    pub fn transfer_issue(&mut self, from: &str, number: u64, to: &str) -> u64 {
        let now = self.now();
        assert!(
            self.repos.contains_key(to),
            "github-emulator: no repository {to:?}"
        );
        let old = self.seeded_issue_mut(from, number);
        assert_eq!(
            old.fate,
            Fate::Live,
            "github-emulator: {from}#{number} is not live"
        );
        let title = old.title.clone();
        let body = old.body.clone();
        let author = old.author.clone();
        let is_pr = old.is_pull_request;
        let (open, state_reason, locked) = (old.open, old.state_reason.clone(), old.locked);
        let labels = std::mem::take(&mut old.labels);
        let assignees = std::mem::take(&mut old.assignees);
        let comment_ids = std::mem::take(&mut old.comment_ids);
        let (created_at, closed_at, closed_by) =
            (old.created_at, old.closed_at, old.closed_by.clone());

        let new_number = self.create_issue(to, &title, body, &author, is_pr);
        for name in &labels {
            self.ensure_label(to, name);
        }
        for id in &comment_ids {
            if let Some(c) = self.comments.get_mut(id) {
                c.repo = to.to_string();
                c.number = new_number;
            }
        }
        let new = self.seeded_issue_mut(to, new_number);
        new.open = open;
        new.state_reason = state_reason;
        new.locked = locked;
        new.labels = labels;
        new.assignees = assignees;
        new.comment_ids = comment_ids;
        new.created_at = created_at;
        new.closed_at = closed_at;
        new.closed_by = closed_by;
        new.updated_at = now;
        self.seeded_issue_mut(from, number).fate = Fate::Transferred {
            repo: to.to_string(),
            number: new_number,
        };
        new_number
    }

    /// Live (not deleted) comments on an issue, as they truly are now.
    pub fn live_comments(&self, repo_key: &str, number: u64) -> Vec<&Comment> {
        match self.issue(repo_key, number) {
            Some(issue) => issue
                .comment_ids
                .iter()
                .filter_map(|id| self.comments.get(id))
                .filter(|c| !c.is_deleted())
                .collect(),
            None => Vec::new(),
        }
    }

    // ----- labels -----

    /// Returns the repo's spelling of a label, creating it (grey, like GitHub) if missing.
    pub fn ensure_label(&mut self, repo_key: &str, name: &str) -> String {
        if let Some(l) = self
            .repo(repo_key)
            .labels
            .iter()
            .find(|l| l.name.eq_ignore_ascii_case(name))
        {
            return l.name.clone();
        }
        let id = self.ids.label();
        self.repo_mut(repo_key).labels.push(Label {
            id,
            name: name.to_string(),
            color: "ededed".to_string(),
            description: None,
            default: false,
        });
        name.to_string()
    }

    pub fn label(&self, repo_key: &str, name: &str) -> Option<&Label> {
        self.repo(repo_key)
            .labels
            .iter()
            .find(|l| l.name.eq_ignore_ascii_case(name))
    }

    // ----- comments -----

    pub fn add_comment(
        &mut self,
        repo_key: &str,
        number: u64,
        author: &str,
        body: &str,
        lagged: bool,
    ) -> u64 {
        let now = self.now();
        let visible_at = self.visibility_for_new_write(lagged);
        let id = self.ids.comment();
        self.comments.insert(
            id,
            Comment {
                id,
                repo: repo_key.to_string(),
                number,
                author: author.to_string(),
                created_at: now,
                versions: vec![Version {
                    body: body.to_string(),
                    updated_at: now,
                    deleted: false,
                    visible_at,
                }],
            },
        );
        let issue = self.seeded_issue_mut(repo_key, number);
        issue.comment_ids.push(id);
        issue.updated_at = now;
        id
    }

    /// Edits (`Some(body)`) or deletes (`None`) a comment, keeping the old version around for
    /// lists that have not caught up yet.
    pub fn write_comment(&mut self, id: u64, body: Option<&str>, lagged: bool) {
        let now = self.now();
        let visible_at = self.visibility_for_new_write(lagged);
        let comment = self
            .comments
            .get_mut(&id)
            .unwrap_or_else(|| panic!("github-emulator: no comment {id}"));
        let current = comment.current().clone();
        let version = match body {
            Some(body) => Version {
                body: body.to_string(),
                updated_at: now,
                deleted: false,
                visible_at,
            },
            None => Version {
                deleted: true,
                visible_at,
                ..current
            },
        };
        comment.push_version(version, Instant::now());
        let (repo, number) = (comment.repo.clone(), comment.number);
        self.touch_issue(&repo, number);
    }

    // ----- rate limits -----

    /// The caller's current window, restarted once its reset time has passed on the emulator
    /// clock (so `advance_clock` past the reset refills it).
    pub fn rate_window(&mut self, rate_key: &str) -> RateWindow {
        let now = self.now().timestamp();
        let w = self.rate.entry(rate_key.to_string()).or_insert(RateWindow {
            used: 0,
            reset: now + 3600,
        });
        if now >= w.reset {
            *w = RateWindow {
                used: 0,
                reset: now + 3600,
            };
        }
        *w
    }

    pub fn count_request(&mut self, rate_key: &str) {
        self.rate_window(rate_key);
        if let Some(w) = self.rate.get_mut(rate_key) {
            w.used += 1;
        }
    }

    pub fn limit_for(&self, rate_key: &str) -> u32 {
        if rate_key.is_empty() {
            self.anonymous_rate_limit
        } else {
            self.rate_limit
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn version(body: &str, deleted: bool, visible_at: Instant) -> Version {
        Version {
            body: body.to_string(),
            updated_at: Utc::now(),
            deleted,
            visible_at,
        }
    }

    fn comment(first: Version) -> Comment {
        Comment {
            id: FIRST_COMMENT_ID,
            repo: "o/r".into(),
            number: 1,
            author: "a".into(),
            created_at: Utc::now(),
            versions: vec![first],
        }
    }

    #[test]
    fn fresh_comment_is_hidden_until_visible() {
        let t0 = Instant::now();
        let c = comment(version("hi", false, t0 + Duration::from_millis(300)));
        assert!(c.visible(t0).is_none());
        assert!(c.visible(t0 + Duration::from_millis(299)).is_none());
        assert_eq!(
            c.visible(t0 + Duration::from_millis(300)).unwrap().body,
            "hi"
        );
        assert_eq!(c.current().body, "hi");
    }

    #[test]
    fn edits_and_deletions_show_the_previous_version_until_visible() {
        let t0 = Instant::now();
        let mut c = comment(version("v1", false, t0));
        c.push_version(version("v2", false, t0 + Duration::from_millis(100)), t0);
        assert_eq!(c.visible(t0).unwrap().body, "v1");
        assert_eq!(c.current().body, "v2");
        c.push_version(version("v2", true, t0 + Duration::from_millis(200)), t0);
        assert_eq!(
            c.visible(t0 + Duration::from_millis(150)).unwrap().body,
            "v2"
        );
        assert!(c.visible(t0 + Duration::from_millis(200)).is_none());
        assert!(c.is_deleted());
    }

    #[test]
    fn a_later_write_that_lands_first_supersedes_and_history_is_pruned() {
        let t0 = Instant::now();
        let mut c = comment(version("v1", false, t0));
        c.push_version(version("v2", false, t0 + Duration::from_millis(500)), t0);
        c.push_version(version("v3", false, t0 + Duration::from_millis(10)), t0);
        assert_eq!(
            c.visible(t0 + Duration::from_millis(20)).unwrap().body,
            "v3"
        );
        assert_eq!(
            c.visible(t0 + Duration::from_millis(600)).unwrap().body,
            "v3"
        );
        // Once v3 is visible nothing older can ever be shown again.
        c.push_version(
            version("v4", false, t0 + Duration::from_secs(5)),
            t0 + Duration::from_millis(20),
        );
        let bodies: Vec<_> = c.versions.iter().map(|v| v.body.as_str()).collect();
        assert_eq!(bodies, ["v3", "v4"]);
    }

    #[test]
    fn comment_ids_start_above_i32_and_grow_with_small_random_gaps() {
        let mut ids = Ids::default();
        let mut last = ids.comment();
        assert!(last > FIRST_COMMENT_ID && last > i32::MAX as u64);
        let mut gaps = std::collections::BTreeSet::new();
        for _ in 0..2000 {
            let next = ids.comment();
            let gap = next - last;
            assert!((1..=50).contains(&gap), "gap {gap}");
            gaps.insert(gap);
            last = next;
        }
        assert!(gaps.len() > 10, "gaps should vary, got {gaps:?}");
    }

    #[test]
    fn access_rules() {
        let mut st = State::new("http://127.0.0.1:1".into());
        let owner = st.ensure_user("Owner", None);
        let writer = st.ensure_user("writer", None);
        let reader = st.ensure_user("reader", None);
        let bot = st.ensure_user("github-actions[bot]", None);
        st.repos.insert(
            "owner/repo".into(),
            Repo {
                full_name: "Owner/repo".into(),
                owner: owner.clone(),
                public: false,
                collaborators: HashMap::from([
                    (writer.clone(), Permission::Write),
                    (reader.clone(), Permission::Read),
                    (bot.clone(), Permission::Write),
                ]),
                labels: Vec::new(),
                issues: BTreeMap::new(),
                next_number: 1,
            },
        );
        assert_eq!(owner, "owner");
        assert!(st.is_assignable("owner/repo", "owner"));
        assert!(st.is_assignable("owner/repo", "writer"));
        assert!(!st.is_assignable("owner/repo", "reader"));
        assert!(
            !st.is_assignable("owner/repo", &bot),
            "bots are never assignable"
        );
        assert!(!st.is_assignable("owner/repo", "nobody"));
        assert!(st.can_read("owner/repo", Some("reader")));
        assert!(!st.can_read("owner/repo", None));
        assert_eq!(st.author_association("owner/repo", "owner"), "OWNER");
        assert_eq!(
            st.author_association("owner/repo", "reader"),
            "COLLABORATOR"
        );
        assert_eq!(st.user(&bot).kind, UserKind::Bot);
    }
}
