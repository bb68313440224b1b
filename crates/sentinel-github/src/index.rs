//! This host's index of the repository's lock comments, so that the repository-wide views
//! (`status` of every lock, the janitor, `claim --next`, `metrics --repo-wide`) list only what
//! changed since the last call instead of every comment of their window.
//!
//! GitHub has no way to list only lock comments: the one repository-wide listing returns every
//! comment updated since a time, so its cost grows with people's comments (one request per 100).
//! The alternatives were weighed and cost more: ETags do not help a listing whose first page
//! changes with every comment anywhere in the repository (and a 304 is still a request); issues'
//! `updated_at` does not move when a comment is edited (a heartbeat) and costs one request per 100
//! busy issues; the search API lags by minutes, has its own limit of 30 requests a minute and
//! returns issues, not comments; a label or an index issue would cost a write more per claim and
//! per release. So the listing stays the source, and this file remembers what it returned: each
//! call lists only the comments updated since the last listing (less [`LAG_MARGIN`], for
//! GitHub's lists lagging its writes), merges them by comment id (an edit replaces the earlier
//! version) and answers from the merged set. The cost of a call is then one request per 100
//! comments updated since the previous call, whatever the repository's traffic over the window.
//!
//! It is a hint, never a decision: what the index shows decides which issues `claim --next`
//! skips and which ones `status` and the janitor show, but every grant, take-over and release is
//! still decided by reading the issue itself. Trust is applied when the index is read, not when it
//! is written, so a forged comment counts exactly as it would in a fresh listing. A comment
//! deleted by hand cannot be seen in a listing: the index keeps it until the next full listing,
//! at most [`FULL_EVERY`] later (comments deleted by sentinel itself — losers, victims of a
//! take-over — do not matter: the ownership rule already discounts them). A missing file costs
//! one full listing; a damaged one is reported with the way out, like every state file.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::comment::LockMeta;
use sentinel_core::error::Result;
use sentinel_core::lease;
use sentinel_core::statefile::{Persisted, StateFile};

/// How far back each incremental listing reaches before the previous one: longer than GitHub's
/// lists lag behind its writes (seconds), so a comment written just before a listing but not yet
/// listed by it is listed by the next one.
pub const LAG_MARGIN: Duration = Duration::from_secs(300);
/// How often the index is rebuilt from a full listing, to forget comments deleted by hand and to
/// catch up with trust that changed (a collaborator removed).
pub const FULL_EVERY: Duration = Duration::from_secs(86_400);
/// How far before the index's floor a window may start and still be answered from it. A window is
/// measured back from this host's clock when no answer from GitHub has told GitHub's clock yet, so
/// a clock a few minutes slow must not cost a full listing on every call; what is missed is lock
/// comments last touched in that hour at the far end of the window (30 days ago by default).
const CLOCK_SLACK: Duration = Duration::from_secs(3600);
/// The window a full listing covers at least when it rebuilds an index: the default `--since` of
/// `status` and `steal-stale --all`, so that a `claim --next` rebuilding it does not leave them
/// a window too short to answer from.
const DEFAULT_WINDOW: Duration = Duration::from_secs(30 * 86_400);

/// A lock comment as the repository-wide listing showed it, before trust is applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Listed {
    pub issue: u64,
    pub id: u64,
    pub author: String,
    /// The author was the owner, a member or a collaborator when the comment was listed.
    pub by_role: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub meta: LockMeta,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct RepoIndex {
    /// Every lock comment updated at or after this is in `comments` (or was deleted since).
    floor: DateTime<Utc>,
    /// GitHub's clock when the last listing started.
    listed_at: DateTime<Utc>,
    /// GitHub's clock when the last full listing started.
    full_at: DateTime<Utc>,
    /// Comment id -> the comment as last listed.
    comments: BTreeMap<u64, Listed>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct IndexData {
    /// "api|owner/repo" -> its index.
    #[serde(default)]
    repos: BTreeMap<String, RepoIndex>,
}

impl Persisted for IndexData {
    const RESET_COST: &'static str =
        "sentinel then lists the repository's comments in full once to rebuild it";
}

/// What the next listing must cover.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    /// Comments updated since `from` are merged into the index.
    Delta { from: DateTime<Utc> },
    /// Comments updated since `from` replace the index.
    Full { from: DateTime<Utc> },
}

impl Plan {
    pub fn from(self) -> DateTime<Utc> {
        match self {
            Plan::Delta { from } | Plan::Full { from } => from,
        }
    }
}

pub struct LockIndex {
    file: StateFile,
}

impl LockIndex {
    pub fn open(data_dir: &Path) -> Result<LockIndex> {
        Ok(LockIndex {
            file: StateFile::new(data_dir, "github-index")?,
        })
    }

    /// What to list to answer for comments updated since `since`, GitHub's clock being `now`.
    pub fn plan(&self, key: &str, since: DateTime<Utc>, now: DateTime<Utc>) -> Result<Plan> {
        let data: IndexData = self.file.read()?;
        Ok(plan(data.repos.get(key), since, now))
    }

    /// Folds a listing made by `plan` and started at `listed_at` into the index and returns every
    /// lock comment the index holds.
    pub fn merge(
        &self,
        key: &str,
        plan: Plan,
        listed: Vec<Listed>,
        listed_at: DateTime<Utc>,
    ) -> Result<Vec<Listed>> {
        self.file
            .update(|d: &mut IndexData| merge(&mut d.repos, key, plan, listed, listed_at))
    }
}

/// `now` is this host's clock when GitHub's is not known yet; `listed_at`, GitHub's clock at the
/// last listing, makes a slow host rebuild the index one call late rather than never.
fn plan(index: Option<&RepoIndex>, since: DateTime<Utc>, now: DateTime<Utc>) -> Plan {
    match index {
        Some(r)
            if r.floor <= lease::after(since, CLOCK_SLACK)
                && now.max(r.listed_at) < lease::after(r.full_at, FULL_EVERY) =>
        {
            Plan::Delta {
                from: lease::before(r.listed_at, LAG_MARGIN),
            }
        }
        Some(r) => Plan::Full {
            from: since.min(r.floor.max(lease::before(now, DEFAULT_WINDOW))),
        },
        None => Plan::Full { from: since },
    }
}

fn merge(
    repos: &mut BTreeMap<String, RepoIndex>,
    key: &str,
    plan: Plan,
    listed: Vec<Listed>,
    listed_at: DateTime<Utc>,
) -> Vec<Listed> {
    let fresh = || RepoIndex {
        floor: plan.from(),
        listed_at,
        full_at: listed_at,
        comments: BTreeMap::new(),
    };
    let index = repos.entry(key.to_string()).or_insert_with(fresh);
    match plan {
        Plan::Full { .. } => *index = fresh(),
        // Another process may have rebuilt or advanced the index meanwhile: its listing and this
        // one both reach back to a `listed_at` it had, so together they leave no gap.
        Plan::Delta { from } => {
            if from < index.floor {
                index.floor = from;
            }
            index.listed_at = index.listed_at.max(listed_at);
        }
    }
    for l in listed {
        match index.comments.get(&l.id) {
            Some(known) if known.updated_at > l.updated_at => {}
            _ => {
                index.comments.insert(l.id, l);
            }
        }
    }
    let floor = index.floor;
    index.comments.retain(|_, l| l.updated_at >= floor);
    index.comments.values().cloned().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::comment::LockState;

    fn at(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000 + s, 0).unwrap()
    }

    fn listed(id: u64, updated: i64) -> Listed {
        Listed {
            issue: 1,
            id,
            author: "a".into(),
            by_role: true,
            created_at: at(0),
            updated_at: at(updated),
            meta: LockMeta {
                worker_id: "w".into(),
                node_id: "n".into(),
                claimed_at: at(0),
                heartbeat_last: at(updated),
                ttl_seconds: 60,
                state: LockState::Held,
                nonce: "1".into(),
                task_info: Default::default(),
                takeover: None,
                released_at: None,
                released_by: None,
                after_release: None,
                actions_job: None,
            },
        }
    }

    #[test]
    fn a_fresh_index_lists_only_what_changed_since_its_last_listing() {
        let mut repos = BTreeMap::new();
        assert_eq!(plan(None, at(0), at(1000)), Plan::Full { from: at(0) });
        let all = merge(
            &mut repos,
            "k",
            Plan::Full { from: at(0) },
            vec![listed(1, 10), listed(2, 20)],
            at(1000),
        );
        assert_eq!(all.len(), 2);
        let p = plan(repos.get("k"), at(5), at(2000));
        assert_eq!(
            p,
            Plan::Delta {
                from: at(1000 - 300)
            }
        );
        // Comment 1 renewed: its new version replaces the old one; an older copy never does.
        let all = merge(&mut repos, "k", p, vec![listed(1, 1500)], at(2000));
        assert_eq!(all.iter().find(|l| l.id == 1).unwrap().updated_at, at(1500));
        let all = merge(&mut repos, "k", p, vec![listed(1, 900)], at(1900));
        assert_eq!(all.iter().find(|l| l.id == 1).unwrap().updated_at, at(1500));
        assert_eq!(repos["k"].listed_at, at(2000));
    }

    #[test]
    fn a_wider_window_or_an_old_index_rebuild_it() {
        let mut repos = BTreeMap::new();
        merge(
            &mut repos,
            "k",
            Plan::Full { from: at(100) },
            vec![],
            at(1000),
        );
        let r = repos.get("k");
        assert!(matches!(
            plan(r, at(100 - 3601), at(2000)),
            Plan::Full { .. }
        ));
        assert!(matches!(
            plan(r, at(100 - 3600), at(2000)),
            Plan::Delta { .. }
        ));
        let day = FULL_EVERY.as_secs() as i64;
        assert!(matches!(
            plan(r, at(100), at(1000 + day)),
            Plan::Full { .. }
        ));
        assert!(matches!(
            plan(r, at(100), at(999 + day)),
            Plan::Delta { .. }
        ));
        // A host whose clock is a day slow: the last listing, on GitHub's clock, was a day on.
        merge(
            &mut repos,
            "k",
            Plan::Delta { from: at(700) },
            vec![],
            at(1000 + day),
        );
        assert!(matches!(
            plan(repos.get("k"), at(100), at(2000)),
            Plan::Full { .. }
        ));
    }

    #[test]
    fn a_full_listing_forgets_deleted_comments_and_old_ones_age_out() {
        let mut repos = BTreeMap::new();
        merge(
            &mut repos,
            "k",
            Plan::Full { from: at(0) },
            vec![listed(1, 10), listed(2, 20)],
            at(1000),
        );
        let all = merge(
            &mut repos,
            "k",
            Plan::Full { from: at(15) },
            vec![listed(2, 20)],
            at(2000),
        );
        assert_eq!(all.iter().map(|l| l.id).collect::<Vec<_>>(), [2]);
    }
}
