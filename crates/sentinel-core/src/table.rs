//! The lock table: a pure, deterministic state machine of named leases.
//!
//! No I/O, no clocks, no randomness: the caller passes the time in (`now_ms`, Unix milliseconds) and
//! every change goes through [`LockTable::apply`]. The same command log applied to an empty table
//! always yields the same table and the same responses. The local backend persists it as JSON.
//! The coordinator's replicated state keeps its leases as
//! [`LockRecord`]s judged by [`LockTable::is_stale`], so both agree on when a lease has ended.
//!
//! Time may go backwards between calls (different callers' clocks, NTP steps): all arithmetic
//! saturates and nothing panics.
//!
//! Names held by several at once (shared holds, semaphores) and the reservation that keeps a
//! waiting claim from being overtaken live in [`groups`]; a name only ever claimed exclusively
//! never reaches them. Barriers, whose participants meet rather than hold, are [`barriers`]'; the numbered events of
//! the holds, for watchers, [`events`]'.

mod barriers;
mod events;
mod groups;

pub use barriers::{Barrier, Meeting, OPENED_KEEP_MS};
pub use events::HISTORY;
pub use groups::{
    Group, GroupHold, Intent, MAX_LIMIT, MAX_RESERVATION_MS, RESERVATION_GRACE_MS, reservation_ms,
};

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::lease::{self, from_unix_ms};
use crate::lock::{
    AcquireRequest, Attempt, Grant, HoldKind, Holder, Released, StaleRelease, Takeover, TaskInfo,
    validate_label, validate_name,
};
use crate::watch::WatchEvent;

/// One held lock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockRecord {
    /// The holder; releases and renewals must name it.
    pub worker_id: String,
    /// Where the holder runs; informational.
    pub node_id: String,
    /// Table-wide increasing counter: strictly increases per name across grants and take-overs.
    pub fencing_token: u64,
    /// When this grant was made (Unix ms); kept by renewals and re-adoption.
    pub claimed_at_ms: u64,
    /// The last renewal or the grant (Unix ms); the lease counts from here.
    pub heartbeat_ms: u64,
    /// The lease length in ms (at least 1): stale once `now > heartbeat_ms + ttl_ms`.
    pub ttl_ms: u64,
    /// What the holder said about its work.
    #[serde(default, skip_serializing_if = "TaskInfo::is_empty")]
    pub task_info: TaskInfo,
}

impl LockRecord {
    /// The time after which the lock is stale (saturating).
    pub fn expires_at_ms(&self) -> u64 {
        self.heartbeat_ms.saturating_add(self.ttl_ms)
    }

    /// The backend-neutral view of this record, judged at `now_ms`.
    pub fn to_holder(&self, now_ms: u64) -> Holder {
        Holder {
            worker_id: self.worker_id.clone(),
            node_id: self.node_id.clone(),
            fencing_token: self.fencing_token,
            claimed_at: from_unix_ms(self.claimed_at_ms),
            heartbeat_last: from_unix_ms(self.heartbeat_ms),
            expires_at: from_unix_ms(self.expires_at_ms()),
            stale: LockTable::is_stale(self, now_ms),
            task_info: self.task_info.clone(),
            liveness: None,
        }
    }
}

/// A change to the table. Serializable so it can be a Raft log entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    /// One acquisition attempt (build it with [`Op::acquire`], which validates). Answers
    /// `Granted` or `Held`.
    Acquire {
        /// The lock.
        name: String,
        /// The claimant, holder if granted.
        worker_id: String,
        /// Where the claimant runs.
        node_id: String,
        /// The lease, in ms (at least 1).
        ttl_ms: u64,
        /// Which holder the attempt may replace.
        takeover: Takeover,
        /// Stored with the grant.
        #[serde(default, skip_serializing_if = "TaskInfo::is_empty")]
        task_info: TaskInfo,
        /// The worker may take up its own live lock again; without it, its own lock is `Held`.
        #[serde(default)]
        readopt: bool,
        /// A whole lock (the default), a shared hold or semaphore permits.
        #[serde(default, skip_serializing_if = "HoldKind::is_exclusive")]
        kind: HoldKind,
        /// The longest the claimant pauses before its next attempt if refused (0: none comes):
        /// how long its reservation of a name held as a group lasts (see [`groups`]).
        #[serde(default, skip_serializing_if = "is_zero")]
        wait_ms: u64,
    },
    /// Gives up a lock ([`Op::release`]). Answers `Released` or `NotOwner`.
    Release {
        /// The lock.
        name: String,
        /// Who releases: must be the holder unless `force`.
        worker_id: String,
        /// Release whoever holds it.
        #[serde(default)]
        force: bool,
        /// Only the grant with this fencing token (unless `force`): a worker whose lease ran out
        /// and who was granted the lock again must not have its new grant released by the old.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        fencing_token: Option<u64>,
    },
    /// Renews a lease at the command's time ([`Op::renew`]). Answers `Renewed`,
    /// `NotOwner`, `Expired` or `NotHeld`.
    Renew {
        /// The lock.
        name: String,
        /// Who renews: must be the holder.
        worker_id: String,
        /// Only the grant with this fencing token.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        fencing_token: Option<u64>,
        /// The lease's new length from now on; `None` keeps it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ttl_ms: Option<u64>,
    },
    /// The janitor's release: frees the lock only if it is stale at the command's time, so a
    /// holder that renewed since the janitor looked keeps it (the check and the release are one
    /// step). Answers `Released` (`None` when free) or, for a live lock, `Held`.
    ReleaseStale {
        /// The lock.
        name: String,
    },
}

impl Op {
    /// The lock name the command is about.
    pub fn name(&self) -> &str {
        match self {
            Op::Acquire { name, .. }
            | Op::Release { name, .. }
            | Op::Renew { name, .. }
            | Op::ReleaseStale { name } => name,
        }
    }
}

/// The outcome of one [`Op`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Response {
    /// Acquire succeeded.
    Granted {
        /// The lock as the claimant now holds it.
        record: LockRecord,
        /// The worker already held it and took it up again (same token).
        adopted: bool,
        /// The record a stale or forced take-over replaced.
        took_over: Option<LockRecord>,
    },
    /// Acquire (or stale release) refused: someone holds it.
    Held {
        /// The current holder, unchanged.
        record: LockRecord,
        /// Its heartbeat is older than its TTL.
        stale: bool,
    },
    /// Release done (idempotent release).
    Released {
        /// The record removed; `None` when the name was already free.
        record: Option<LockRecord>,
    },
    /// Release or renew by a worker that is not the holder; the table is unchanged.
    NotOwner {
        /// The actual holder.
        record: LockRecord,
    },
    /// Renew done: the heartbeat is now.
    Renewed {
        /// The lock with its new heartbeat (and TTL, if one was given).
        record: LockRecord,
    },
    /// Renew of an own lock whose TTL ran out: the holder may not keep it (record left as it is).
    Expired {
        /// The lapsed record.
        record: LockRecord,
    },
    /// Renew of a free name.
    NotHeld,
    /// Acquire of another kind than the name is held as (a semaphore claim on a lock or on
    /// shared holds, a lock or shared claim on a semaphore); the table is unchanged.
    OtherKind {
        /// The name is held shared.
        shared: bool,
        /// The name is a semaphore of this limit.
        limit: Option<u32>,
    },
    /// Semaphore acquire with another limit than the semaphore's.
    LimitMismatch {
        /// The semaphore's limit.
        limit: u32,
        /// The acquire's.
        asked: u32,
    },
    /// Acquire refused because another worker's waiting claim has reserved the name.
    Reserved {
        /// The reservation.
        intent: Intent,
        /// A hold of the name, if it has one (another worker's, if any).
        record: Option<LockRecord>,
    },
    /// Acquire of a hold that cannot exist (permits beyond the limit).
    Invalid {
        /// Why.
        reason: String,
    },
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// All held locks and the fencing-token counter. The groups and reservations are left out of
/// the JSON while there are none, and a table without them (an older version's) reads as empty.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockTable {
    next_token: u64,
    locks: BTreeMap<String, LockRecord>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    groups: BTreeMap<String, Group>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    intents: BTreeMap<String, Intent>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    barriers: BTreeMap<String, Barrier>,
    /// The revision of the last event ([`events`]).
    #[serde(default, skip_serializing_if = "is_zero")]
    revision: u64,
    /// The last events, oldest first, kept while someone watches.
    #[serde(default, skip_serializing_if = "VecDeque::is_empty")]
    events: VecDeque<WatchEvent>,
    /// Someone watches the events until then.
    #[serde(default, skip_serializing_if = "is_zero")]
    watched_until_ms: u64,
}

impl Default for LockTable {
    fn default() -> Self {
        LockTable {
            next_token: 1,
            locks: BTreeMap::new(),
            groups: BTreeMap::new(),
            intents: BTreeMap::new(),
            barriers: BTreeMap::new(),
            revision: 0,
            events: VecDeque::new(),
            watched_until_ms: 0,
        }
    }
}

impl LockTable {
    /// Applies one command at time `now_ms` and says what happened. Deterministic and total.
    pub fn apply(&mut self, cmd: &Op, now_ms: u64) -> Response {
        match cmd {
            Op::Acquire {
                name,
                worker_id,
                node_id,
                ttl_ms,
                takeover,
                task_info,
                readopt,
                kind,
                wait_ms,
            } => {
                // The token is only drawn if the lock is granted afresh.
                let fresh = LockRecord {
                    worker_id: worker_id.clone(),
                    node_id: node_id.clone(),
                    fencing_token: 0,
                    claimed_at_ms: now_ms,
                    heartbeat_ms: now_ms,
                    ttl_ms: *ttl_ms,
                    task_info: task_info.clone(),
                };
                if kind.is_exclusive()
                    && !self.groups.contains_key(name)
                    && !self.intents.contains_key(name)
                {
                    return self.acquire(name, fresh, *takeover, *readopt, now_ms);
                }
                let claim = groups::Claim {
                    kind: *kind,
                    takeover: *takeover,
                    readopt: *readopt,
                    wait_ms: *wait_ms,
                };
                self.claim(name, fresh, claim, now_ms)
            }
            Op::Release {
                name,
                worker_id,
                force,
                fencing_token,
            } => {
                self.drop_intent(name, worker_id);
                if self.groups.contains_key(name) {
                    return self.release_holds(name, worker_id, *force, *fencing_token);
                }
                self.release(name, worker_id, *force, *fencing_token)
            }
            Op::Renew {
                name,
                worker_id,
                fencing_token,
                ttl_ms,
            } if self.groups.contains_key(name) => {
                self.renew_holds(name, worker_id, *fencing_token, *ttl_ms, now_ms)
            }
            Op::Renew {
                name,
                worker_id,
                fencing_token,
                ttl_ms,
            } => self.renew(name, worker_id, *fencing_token, *ttl_ms, now_ms),
            Op::ReleaseStale { name } if self.groups.contains_key(name) => {
                self.release_stale_hold(name, now_ms)
            }
            Op::ReleaseStale { name } => match self.locks.get(name.as_str()) {
                None => Response::Released { record: None },
                Some(current) if Self::is_stale(current, now_ms) => Response::Released {
                    record: self.locks.remove(name.as_str()),
                },
                Some(current) => Response::Held {
                    record: current.clone(),
                    stale: false,
                },
            },
        }
    }

    /// The release of an exclusive lock: by its holder (and grant, if the token is given), or
    /// by anyone with `force`.
    fn release(
        &mut self,
        name: &str,
        worker_id: &str,
        force: bool,
        fencing_token: Option<u64>,
    ) -> Response {
        match self.locks.get(name) {
            None => Response::Released { record: None },
            Some(current) if force || Self::is_grant(current, worker_id, fencing_token) => {
                Response::Released {
                    record: self.locks.remove(name),
                }
            }
            Some(current) => Response::NotOwner {
                record: current.clone(),
            },
        }
    }

    /// An acquire: a free name is granted `fresh` with a new token; a held one is re-adopted,
    /// taken over or refused.
    fn acquire(
        &mut self,
        name: &str,
        mut fresh: LockRecord,
        takeover: Takeover,
        readopt: bool,
        now_ms: u64,
    ) -> Response {
        let took_over = match self.locks.get_mut(name) {
            None => None,
            Some(current)
                if readopt
                    && current.worker_id == fresh.worker_id
                    && !Self::is_stale(current, now_ms) =>
            {
                // Re-adopt our own live lock: same token, same claimed_at. An own lock whose
                // lease ran out is treated like anyone's stale lock below: the worker lost it
                // and must take it over (new token) to have it again.
                return Self::take_up(current, fresh, now_ms);
            }
            Some(current) => {
                let stale = Self::is_stale(current, now_ms);
                let take = match takeover {
                    Takeover::None => false,
                    Takeover::Stale => stale,
                    Takeover::Any => true,
                };
                if !take {
                    return Response::Held {
                        record: current.clone(),
                        stale,
                    };
                }
                Some(current.clone())
            }
        };
        fresh.fencing_token = self.issue_token();
        self.locks.insert(name.to_string(), fresh.clone());
        Response::Granted {
            record: fresh,
            adopted: false,
            took_over,
        }
    }

    /// Re-adoption: the claimant's own live hold `current`, taken up again with the fresh
    /// claim's node, lease and task info, keeping its token and claim time.
    fn take_up(current: &mut LockRecord, fresh: LockRecord, now_ms: u64) -> Response {
        current.node_id = fresh.node_id;
        current.heartbeat_ms = now_ms;
        current.ttl_ms = fresh.ttl_ms;
        current.task_info = fresh.task_info;
        Response::Granted {
            record: current.clone(),
            adopted: true,
            took_over: None,
        }
    }

    /// A renewal by the holder of grant `token`: a new heartbeat (and TTL, if given), unless the
    /// lease already ran out.
    fn renew(
        &mut self,
        name: &str,
        worker_id: &str,
        token: Option<u64>,
        ttl_ms: Option<u64>,
        now_ms: u64,
    ) -> Response {
        match self.locks.get_mut(name) {
            None => Response::NotHeld,
            Some(current) if !Self::is_grant(current, worker_id, token) => Response::NotOwner {
                record: current.clone(),
            },
            Some(current) if Self::is_stale(current, now_ms) => Response::Expired {
                record: current.clone(),
            },
            Some(current) => {
                current.heartbeat_ms = now_ms;
                if let Some(ttl) = ttl_ms {
                    current.ttl_ms = ttl;
                }
                Response::Renewed {
                    record: current.clone(),
                }
            }
        }
    }

    /// Removes the lock `name` if it still carries `token`: undoes a grant whose claimer was
    /// interrupted before it could report it. True when something was removed.
    pub fn withdraw(&mut self, name: &str, token: u64) -> bool {
        if self.locks.get(name).map(|r| r.fencing_token) == Some(token) {
            self.locks.remove(name);
            return true;
        }
        self.withdraw_hold(name, token)
    }

    /// Whether `record` is the grant a worker names: its worker id, and its fencing token if the
    /// worker gave one.
    fn is_grant(record: &LockRecord, worker_id: &str, fencing_token: Option<u64>) -> bool {
        record.worker_id == worker_id && fencing_token.is_none_or(|t| t == record.fencing_token)
    }

    fn issue_token(&mut self) -> u64 {
        let token = self.next_token;
        self.next_token = self.next_token.saturating_add(1);
        token
    }

    /// A table holding at most the one lock `name`, whose next grant gets `next_token`: how a
    /// store that keeps each lock in its own row (PostgreSQL) runs one command on that row.
    pub fn one(next_token: u64, name: &str, record: Option<LockRecord>) -> LockTable {
        LockTable {
            next_token,
            locks: record.map(|r| (name.to_string(), r)).into_iter().collect(),
            ..LockTable::default()
        }
    }

    /// The lock `name`, stale or not; `None` when free.
    pub fn get(&self, name: &str) -> Option<&LockRecord> {
        self.locks.get(name)
    }

    /// Every held lock, in name order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &LockRecord)> {
        self.locks.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// Holds in the table (locks, shared holds, semaphore holds), stale ones included.
    pub fn len(&self) -> usize {
        self.locks.len() + self.groups.values().map(|g| g.holds.len()).sum::<usize>()
    }

    /// No hold in the table, not even a stale one.
    pub fn is_empty(&self) -> bool {
        self.locks.is_empty() && self.groups.is_empty()
    }

    /// The fencing token the next grant will get (1 for an empty table).
    pub fn next_token(&self) -> u64 {
        self.next_token
    }

    /// True when the heartbeat is older than the TTL at `now_ms` (`now_ms > heartbeat_ms + ttl_ms`).
    pub fn is_stale(record: &LockRecord, now_ms: u64) -> bool {
        now_ms > record.expires_at_ms()
    }

    /// Checks the invariants a table read from outside (a hand-edited file, a snapshot) must hold
    /// for the fencing tokens to stay safe: every token was issued before `next_token`, and no two
    /// locks share a token.
    pub fn check(&self) -> std::result::Result<(), String> {
        if self.next_token == 0 {
            return Err("next_token must be at least 1".into());
        }
        let mut seen = std::collections::BTreeSet::new();
        let leases = self.locks.iter().map(|(n, r)| (n.as_str(), r));
        for (name, record) in leases.chain(self.group_leases()) {
            if record.fencing_token >= self.next_token {
                return Err(format!(
                    "lock {name:?} has fencing token {} but next_token is {}",
                    record.fencing_token, self.next_token
                ));
            }
            if !seen.insert(record.fencing_token) {
                return Err(format!(
                    "fencing token {} is used by more than one lock",
                    record.fencing_token
                ));
            }
        }
        self.check_groups()
    }
}

// Requests in, answers out: the backend-neutral side of the table, shared by every store that
// keeps it (the local file, PostgreSQL rows), so that they validate the same way and answer with
// the same errors.

impl Op {
    /// The table command for one acquisition attempt on the lock `name`.
    pub fn acquire(name: &str, req: &AcquireRequest) -> Result<Op> {
        validate_name(name)?;
        validate_label("worker id", &req.claimant.worker_id)?;
        validate_label("node id", &req.claimant.node_id)?;
        let ttl_ms = lease::millis(req.ttl);
        if ttl_ms == 0 {
            return Err(Error::usage("the lock timeout must be at least 1 ms"));
        }
        if let Some(reason) = groups::invalid(req.kind) {
            return Err(Error::usage(reason));
        }
        Ok(Op::Acquire {
            name: name.to_string(),
            worker_id: req.claimant.worker_id.clone(),
            node_id: req.claimant.node_id.clone(),
            ttl_ms,
            takeover: req.takeover,
            task_info: req.task_info.clone(),
            readopt: req.readopt,
            kind: req.kind,
            wait_ms: lease::millis(req.wait),
        })
    }

    /// The table command for a release, with the name and worker id validated.
    pub fn release(
        name: &str,
        worker_id: &str,
        force: bool,
        fencing_token: Option<u64>,
    ) -> Result<Op> {
        validate_name(name)?;
        validate_label("worker id", worker_id)?;
        Ok(Op::Release {
            name: name.to_string(),
            worker_id: worker_id.to_string(),
            force,
            fencing_token,
        })
    }

    /// The table command for a renewal, with the name and worker id validated; `ttl`, if given,
    /// must be at least 1 ms.
    pub fn renew(
        name: &str,
        worker_id: &str,
        fencing_token: Option<u64>,
        ttl: Option<std::time::Duration>,
    ) -> Result<Op> {
        validate_name(name)?;
        validate_label("worker id", worker_id)?;
        let ttl_ms = ttl.map(lease::millis);
        if ttl_ms == Some(0) {
            return Err(Error::usage("the lock timeout must be at least 1 ms"));
        }
        Ok(Op::Renew {
            name: name.to_string(),
            worker_id: worker_id.to_string(),
            fencing_token,
            ttl_ms,
        })
    }
}

/// What an `Acquire` answer means: a grant or the holder.
pub fn attempt(cmd: &Op, resp: Response, now: u64) -> Result<Attempt> {
    match resp {
        Response::Granted {
            record,
            adopted,
            took_over,
        } => Ok(Attempt::Granted(Grant {
            holder: record.to_holder(now),
            adopted,
            took_over: took_over.map(|r| Box::new(r.to_holder(now))),
        })),
        Response::Held { record, .. } => Ok(Attempt::Held(record.to_holder(now))),
        Response::Reserved { intent, record } => {
            Ok(Attempt::Held(intent.to_holder(record.as_ref(), now)))
        }
        Response::OtherKind { shared, limit } => Err(Error::Conflict(format!(
            "{:?} is held as {}, not as {}: every claim of a name asks for the kind of hold it \
             has (wait until it is free to claim it as another)",
            cmd.name(),
            match (limit, shared) {
                (Some(l), _) => format!("a semaphore of limit {l}"),
                (None, true) => "a shared lock".to_string(),
                (None, false) => "an exclusive lock".to_string(),
            },
            match asked_kind(cmd) {
                HoldKind::Semaphore { limit, .. } => format!("a semaphore of limit {limit}"),
                HoldKind::Shared => "a shared lock".to_string(),
                HoldKind::Exclusive => "an exclusive lock".to_string(),
            }
        ))),
        Response::LimitMismatch { limit, asked } => Err(Error::usage(format!(
            "semaphore {:?} has limit {limit}, not {asked}: every claim of a semaphore must give \
             the same limit",
            cmd.name()
        ))),
        Response::Invalid { reason } => Err(Error::usage(reason)),
        other => Err(unexpected(cmd, &other)),
    }
}

/// The kind of hold an acquire asks for.
fn asked_kind(cmd: &Op) -> HoldKind {
    match cmd {
        Op::Acquire { kind, .. } => *kind,
        _ => HoldKind::Exclusive,
    }
}

/// What a `Release` answer means; someone else's lock is a `NotOwner` error naming its holder.
pub fn released(cmd: &Op, resp: Response, now: u64) -> Result<Released> {
    match resp {
        Response::Released { record } => Ok(Released {
            was_held: record.is_some(),
            previous: record.map(|r| r.to_holder(now)),
        }),
        Response::NotOwner { record } => Err(Error::NotOwner(format!(
            "lock {:?} is held by {}, not by {}; force the release to free it anyway",
            cmd.name(),
            describe(&record, now),
            claimer(cmd)
        ))),
        other => Err(unexpected(cmd, &other)),
    }
}

/// What a `Renew` answer means: every way of not holding the lock is a `NotOwner` error.
pub fn renewed(cmd: &Op, resp: Response, now: u64) -> Result<Holder> {
    let name = cmd.name();
    match resp {
        Response::Renewed { record } => Ok(record.to_holder(now)),
        Response::NotOwner { record } => Err(Error::NotOwner(format!(
            "lock {name:?} was lost: it is now held by {}",
            describe(&record, now)
        ))),
        Response::Expired { record } => Err(Error::NotOwner(format!(
            "lock {name:?} expired: its last heartbeat ({}) is older than its timeout of {}, \
             so another worker may take it over and it cannot be renewed; \
             claim it again with --strategy steal-stale",
            lease::rfc3339(from_unix_ms(record.heartbeat_ms)),
            crate::duration::display(std::time::Duration::from_millis(record.ttl_ms)),
        ))),
        Response::NotHeld => Err(Error::NotOwner(format!(
            "lock {name:?} is not held by anyone (released, or never claimed)"
        ))),
        other => Err(unexpected(cmd, &other)),
    }
}

/// What a `ReleaseStale` answer means.
pub fn stale_release(cmd: &Op, resp: Response, now: u64) -> Result<StaleRelease> {
    match resp {
        Response::Released { record: Some(r) } => Ok(StaleRelease::Released(r.to_holder(now))),
        Response::Released { record: None } => Ok(StaleRelease::Free),
        Response::Held { record, .. } => Ok(StaleRelease::Kept(record.to_holder(now))),
        other => Err(unexpected(cmd, &other)),
    }
}

/// Who a release or renewal speaks for, in messages.
fn claimer(cmd: &Op) -> String {
    match cmd {
        Op::Release {
            worker_id,
            fencing_token: Some(t),
            ..
        }
        | Op::Renew {
            worker_id,
            fencing_token: Some(t),
            ..
        } => format!("worker {worker_id:?} with fencing token {t}"),
        Op::Release { worker_id, .. } | Op::Renew { worker_id, .. } => {
            format!("worker {worker_id:?}")
        }
        Op::Acquire { worker_id, .. } => format!("worker {worker_id:?}"),
        Op::ReleaseStale { .. } => "the janitor".to_string(),
    }
}

fn describe(record: &LockRecord, now: u64) -> String {
    format!(
        "worker {:?} on node {:?} (fencing token {}, last heartbeat {}{})",
        record.worker_id,
        record.node_id,
        record.fencing_token,
        lease::rfc3339(from_unix_ms(record.heartbeat_ms)),
        if LockTable::is_stale(record, now) {
            ", stale"
        } else {
            ""
        }
    )
}

fn unexpected(cmd: &Op, resp: &Response) -> Error {
    Error::Unexpected(format!(
        "internal error: the lock table answered {resp:?} to {cmd:?}"
    ))
}

/// A table kept in a [`StateFile`](crate::statefile::StateFile) (the local backend's
/// `locks.json`) is checked on every read; resetting a damaged one costs what this says.
impl crate::statefile::Persisted for LockTable {
    fn check(&self) -> std::result::Result<(), String> {
        LockTable::check(self)
    }
    const RESET_COST: &'static str =
        "the locks it recorded are then forgotten and fencing tokens restart at 1";
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{DateTime, Utc};
    use proptest::prelude::*;
    use std::collections::{BTreeMap, HashMap};

    const TTL: u64 = 1_000;

    fn acquire(name: &str, worker: &str, takeover: Takeover) -> Op {
        Op::Acquire {
            name: name.into(),
            worker_id: worker.into(),
            node_id: format!("node-of-{worker}"),
            ttl_ms: TTL,
            takeover,
            task_info: TaskInfo::default(),
            readopt: true,
            kind: HoldKind::Exclusive,
            wait_ms: 0,
        }
    }

    fn release(name: &str, worker: &str, force: bool) -> Op {
        Op::Release {
            name: name.into(),
            worker_id: worker.into(),
            force,
            fencing_token: None,
        }
    }

    fn renew(name: &str, worker: &str) -> Op {
        Op::Renew {
            name: name.into(),
            worker_id: worker.into(),
            fencing_token: None,
            ttl_ms: None,
        }
    }

    fn release_stale(name: &str) -> Op {
        Op::ReleaseStale { name: name.into() }
    }

    fn granted(resp: Response) -> (LockRecord, bool, Option<LockRecord>) {
        match resp {
            Response::Granted {
                record,
                adopted,
                took_over,
            } => (record, adopted, took_over),
            other => panic!("expected Granted, got {other:?}"),
        }
    }

    #[test]
    fn empty_table_starts_at_token_one() {
        let t = LockTable::default();
        assert_eq!(t.next_token(), 1);
        assert!(t.is_empty());
        assert_eq!(t.get("x"), None);
    }

    #[test]
    fn acquire_free_grants_new_token() {
        let mut t = LockTable::default();
        let (r, adopted, took) = granted(t.apply(&acquire("a", "w1", Takeover::None), 100));
        assert_eq!(r.fencing_token, 1);
        assert_eq!((r.claimed_at_ms, r.heartbeat_ms, r.ttl_ms), (100, 100, TTL));
        assert_eq!(r.worker_id, "w1");
        assert_eq!(r.node_id, "node-of-w1");
        assert!(!adopted);
        assert_eq!(took, None);
        assert_eq!(t.get("a"), Some(&r));
        let (r2, _, _) = granted(t.apply(&acquire("b", "w1", Takeover::None), 100));
        assert_eq!(r2.fencing_token, 2);
    }

    #[test]
    fn a_stale_grant_cannot_release_or_renew_the_next_one_of_the_same_worker() {
        let mut t = LockTable::default();
        let (old, _, _) = granted(t.apply(&acquire("a", "w1", Takeover::None), 100));
        // The lease runs out and the same worker takes the lock over: a new grant, token 2.
        let (new, _, took) = granted(t.apply(&acquire("a", "w1", Takeover::Stale), 100 + 2 * TTL));
        assert_eq!((old.fencing_token, new.fencing_token), (1, 2));
        assert!(took.is_some());
        let by_token = |token, renewing: bool| {
            if renewing {
                Op::Renew {
                    name: "a".into(),
                    worker_id: "w1".into(),
                    fencing_token: Some(token),
                    ttl_ms: None,
                }
            } else {
                Op::Release {
                    name: "a".into(),
                    worker_id: "w1".into(),
                    force: false,
                    fencing_token: Some(token),
                }
            }
        };
        let now = 100 + 2 * TTL + 1;
        for renewing in [true, false] {
            assert!(matches!(
                t.apply(&by_token(1, renewing), now),
                Response::NotOwner { record } if record.fencing_token == 2
            ));
        }
        assert!(matches!(
            t.apply(&by_token(2, true), now),
            Response::Renewed { .. }
        ));
        assert!(matches!(
            t.apply(&by_token(2, false), now),
            Response::Released { record: Some(r) } if r.fencing_token == 2
        ));
    }

    #[test]
    fn a_renewal_can_change_the_lease_length() {
        let mut t = LockTable::default();
        granted(t.apply(&acquire("a", "w1", Takeover::None), 100));
        let longer = Op::Renew {
            name: "a".into(),
            worker_id: "w1".into(),
            fencing_token: Some(1),
            ttl_ms: Some(5 * TTL),
        };
        match t.apply(&longer, 600) {
            Response::Renewed { record } => {
                assert_eq!((record.heartbeat_ms, record.ttl_ms), (600, 5 * TTL));
            }
            other => panic!("{other:?}"),
        }
        // Still live long after the old TTL would have run out.
        assert!(!LockTable::is_stale(t.get("a").unwrap(), 600 + 4 * TTL));
    }

    #[test]
    fn one_lock_tables_issue_the_given_token() {
        let mut t = LockTable::one(41, "a", None);
        let (r, _, _) = granted(t.apply(&acquire("a", "w1", Takeover::None), 100));
        assert_eq!(r.fencing_token, 41);
        let mut t = LockTable::one(42, "a", Some(r.clone()));
        assert!(matches!(
            t.apply(&acquire("a", "w2", Takeover::None), 100),
            Response::Held { .. }
        ));
        assert_eq!(t.get("a"), Some(&r));
    }

    #[test]
    fn same_worker_re_adopts_live_but_not_stale() {
        let mut t = LockTable::default();
        let (r, _, _) = granted(t.apply(&acquire("a", "w1", Takeover::None), 100));
        // Live: same token, fresh heartbeat, claimed_at kept, ttl and task info updated.
        let cmd = Op::Acquire {
            name: "a".into(),
            worker_id: "w1".into(),
            node_id: "other-node".into(),
            ttl_ms: 5_000,
            takeover: Takeover::None,
            task_info: TaskInfo {
                priority: Some("high".into()),
                ..TaskInfo::default()
            },
            readopt: true,
            kind: HoldKind::Exclusive,
            wait_ms: 0,
        };
        let (r2, adopted, took) = granted(t.apply(&cmd, 500));
        assert!(adopted);
        assert_eq!(took, None);
        assert_eq!(r2.fencing_token, r.fencing_token);
        assert_eq!(r2.claimed_at_ms, 100);
        assert_eq!(r2.heartbeat_ms, 500);
        assert_eq!(r2.ttl_ms, 5_000);
        assert_eq!(r2.node_id, "other-node");
        assert_eq!(r2.task_info.priority.as_deref(), Some("high"));
        assert_eq!(t.next_token(), 2);
        // Stale: no longer ours to re-adopt; a plain acquire is refused, a take-over is a new grant.
        assert!(matches!(
            t.apply(&acquire("a", "w1", Takeover::None), 1_000_000),
            Response::Held { stale: true, .. }
        ));
        let (r3, adopted, took) = granted(t.apply(&acquire("a", "w1", Takeover::Stale), 1_000_000));
        assert!(!adopted);
        assert!(r3.fencing_token > r.fencing_token);
        assert_eq!(took.unwrap().fencing_token, r.fencing_token);
    }

    #[test]
    fn held_by_other_blocks_plain_acquire_live_and_stale() {
        let mut t = LockTable::default();
        let (r, _, _) = granted(t.apply(&acquire("a", "w1", Takeover::None), 100));
        assert_eq!(
            t.apply(&acquire("a", "w2", Takeover::None), 200),
            Response::Held {
                record: r.clone(),
                stale: false
            }
        );
        // Stale still blocks a plain acquire, and says so.
        assert_eq!(
            t.apply(&acquire("a", "w2", Takeover::None), 100 + TTL + 1),
            Response::Held {
                record: r.clone(),
                stale: true
            }
        );
        assert_eq!(t.get("a"), Some(&r));
        assert_eq!(t.next_token(), 2);
    }

    #[test]
    fn steal_stale_takes_only_stale_locks() {
        let mut t = LockTable::default();
        let (r, _, _) = granted(t.apply(&acquire("a", "w1", Takeover::None), 100));
        // Exactly at heartbeat + ttl the lock is still live.
        assert_eq!(
            t.apply(&acquire("a", "w2", Takeover::Stale), 100 + TTL),
            Response::Held {
                record: r.clone(),
                stale: false
            }
        );
        let (r2, adopted, took) =
            granted(t.apply(&acquire("a", "w2", Takeover::Stale), 100 + TTL + 1));
        assert!(!adopted);
        assert_eq!(took, Some(r.clone()));
        assert_eq!(r2.worker_id, "w2");
        assert_eq!(r2.fencing_token, 2);
        assert_eq!(r2.claimed_at_ms, 100 + TTL + 1);
        assert_eq!(t.get("a"), Some(&r2));
    }

    #[test]
    fn force_takes_any_lock() {
        let mut t = LockTable::default();
        let (r, _, _) = granted(t.apply(&acquire("a", "w1", Takeover::None), 100));
        let (r2, adopted, took) = granted(t.apply(&acquire("a", "w2", Takeover::Any), 101));
        assert!(!adopted);
        assert_eq!(took, Some(r));
        assert_eq!(r2.fencing_token, 2);
        // The former holder has lost it.
        assert_eq!(
            t.apply(&renew("a", "w1"), 102),
            Response::NotOwner { record: r2.clone() }
        );
        // Force on our own lock is a re-adoption, not a take-over.
        let (r3, adopted, took) = granted(t.apply(&acquire("a", "w2", Takeover::Any), 103));
        assert!(adopted);
        assert_eq!(took, None);
        assert_eq!(r3.fencing_token, 2);
    }

    #[test]
    fn tokens_keep_increasing_after_release() {
        let mut t = LockTable::default();
        let mut last = 0;
        for i in 0..5 {
            let (r, _, _) = granted(t.apply(&acquire("a", "w1", Takeover::None), i));
            assert!(r.fencing_token > last);
            last = r.fencing_token;
            assert!(matches!(
                t.apply(&release("a", "w1", false), i),
                Response::Released { record: Some(_) }
            ));
        }
        assert_eq!(last, 5);
        assert_eq!(t.next_token(), 6);
    }

    #[test]
    fn release_rules() {
        let mut t = LockTable::default();
        // Free: idempotent.
        assert_eq!(
            t.apply(&release("a", "w1", false), 1),
            Response::Released { record: None }
        );
        let (r, _, _) = granted(t.apply(&acquire("a", "w1", Takeover::None), 1));
        // Another worker: refused, table unchanged.
        assert_eq!(
            t.apply(&release("a", "w2", false), 2),
            Response::NotOwner { record: r.clone() }
        );
        assert_eq!(t.get("a"), Some(&r));
        // Holder: released.
        assert_eq!(
            t.apply(&release("a", "w1", false), 3),
            Response::Released {
                record: Some(r.clone())
            }
        );
        assert_eq!(t.get("a"), None);
        // Again: idempotent.
        assert_eq!(
            t.apply(&release("a", "w1", false), 4),
            Response::Released { record: None }
        );
        // Forced release by another worker.
        let (r2, _, _) = granted(t.apply(&acquire("a", "w1", Takeover::None), 5));
        assert_eq!(
            t.apply(&release("a", "w2", true), 6),
            Response::Released { record: Some(r2) }
        );
        assert!(t.is_empty());
        // A stale own lock can still be released by its holder.
        let (r3, _, _) = granted(t.apply(&acquire("a", "w1", Takeover::None), 7));
        assert_eq!(
            t.apply(&release("a", "w1", false), 7 + TTL * 10),
            Response::Released { record: Some(r3) }
        );
    }

    #[test]
    fn release_stale_frees_only_stale_locks() {
        let mut t = LockTable::default();
        assert_eq!(
            t.apply(&release_stale("a"), 1),
            Response::Released { record: None }
        );
        let (r, _, _) = granted(t.apply(&acquire("a", "w1", Takeover::None), 100));
        // Live up to and including heartbeat + ttl: untouched.
        assert_eq!(
            t.apply(&release_stale("a"), 100 + TTL),
            Response::Held {
                record: r.clone(),
                stale: false
            }
        );
        assert_eq!(t.get("a"), Some(&r));
        // A renewal between the janitor's look and its release keeps the lock.
        let Response::Renewed { record } = t.apply(&renew("a", "w1"), 100 + TTL) else {
            panic!("renewal refused")
        };
        assert_eq!(
            t.apply(&release_stale("a"), 100 + TTL + 1),
            Response::Held {
                record: record.clone(),
                stale: false
            }
        );
        // Stale: released, and its holder has lost it.
        assert_eq!(
            t.apply(&release_stale("a"), 100 + 2 * TTL + 1),
            Response::Released {
                record: Some(record)
            }
        );
        assert!(t.is_empty());
        assert_eq!(
            t.apply(&renew("a", "w1"), 100 + 2 * TTL + 2),
            Response::NotHeld
        );
        // The next grant still gets a larger token.
        let (r2, _, _) = granted(t.apply(&acquire("a", "w2", Takeover::None), 100 + 2 * TTL + 3));
        assert_eq!(r2.fencing_token, 2);
    }

    #[test]
    fn renew_rules() {
        let mut t = LockTable::default();
        assert_eq!(t.apply(&renew("a", "w1"), 1), Response::NotHeld);
        let (r, _, _) = granted(t.apply(&acquire("a", "w1", Takeover::None), 1));
        let resp = t.apply(&renew("a", "w1"), 1 + TTL);
        let Response::Renewed { record } = resp else {
            panic!("expected Renewed, got {resp:?}")
        };
        assert_eq!(record.heartbeat_ms, 1 + TTL);
        assert_eq!(record.fencing_token, r.fencing_token);
        assert_eq!(record.claimed_at_ms, 1);
        assert_eq!(t.get("a"), Some(&record));
        assert_eq!(
            t.apply(&renew("a", "w2"), 2 + TTL),
            Response::NotOwner {
                record: record.clone()
            }
        );
        // Expired: the holder may not keep it and the record stays as it is.
        let late = 1 + TTL + TTL + 1;
        assert_eq!(
            t.apply(&renew("a", "w1"), late),
            Response::Expired {
                record: record.clone()
            }
        );
        assert_eq!(t.get("a"), Some(&record));
        // A stale lock of another worker: NotOwner, not Expired.
        assert_eq!(
            t.apply(&renew("a", "w2"), late),
            Response::NotOwner {
                record: record.clone()
            }
        );
    }

    #[test]
    fn time_going_backwards_or_extreme_never_panics() {
        let mut t = LockTable::default();
        let huge = Op::Acquire {
            name: "a".into(),
            worker_id: "w1".into(),
            node_id: "n".into(),
            ttl_ms: u64::MAX,
            takeover: Takeover::None,
            task_info: TaskInfo::default(),
            readopt: true,
            kind: HoldKind::Exclusive,
            wait_ms: 0,
        };
        granted(t.apply(&huge, u64::MAX));
        let r = t.get("a").unwrap().clone();
        assert!(!LockTable::is_stale(&r, u64::MAX));
        assert!(matches!(
            t.apply(&renew("a", "w1"), 0),
            Response::Renewed { .. }
        ));
        assert!(matches!(
            t.apply(&acquire("a", "w2", Takeover::Stale), 0),
            Response::Held { stale: false, .. }
        ));
        granted(t.apply(&acquire("b", "w1", Takeover::None), 10_000));
        // The clock steps back: the lock is simply younger, never an underflow.
        assert!(matches!(
            t.apply(&renew("b", "w1"), 5),
            Response::Renewed { .. }
        ));
        assert!(matches!(
            t.apply(&acquire("b", "w2", Takeover::Stale), 0),
            Response::Held { stale: false, .. }
        ));
        let h = t.get("b").unwrap().to_holder(0);
        assert_eq!(h.heartbeat_last.timestamp_millis(), 5);
        // Times beyond chrono's range clamp instead of panicking.
        let h = t.get("a").unwrap().to_holder(u64::MAX);
        assert_eq!(h.expires_at, DateTime::<Utc>::MAX_UTC);
    }

    #[test]
    fn holder_view() {
        let mut t = LockTable::default();
        let cmd = Op::Acquire {
            name: "a".into(),
            worker_id: "w1".into(),
            node_id: "n1".into(),
            ttl_ms: 300_000,
            takeover: Takeover::None,
            task_info: TaskInfo {
                complexity: Some(5),
                ..TaskInfo::default()
            },
            readopt: true,
            kind: HoldKind::Exclusive,
            wait_ms: 0,
        };
        let now = 1_761_859_800_000; // 2025-10-30T21:30:00Z
        let (r, _, _) = granted(t.apply(&cmd, now));
        let h = r.to_holder(now);
        assert_eq!(h.worker_id, "w1");
        assert_eq!(h.node_id, "n1");
        assert_eq!(h.fencing_token, 1);
        assert_eq!(h.claimed_at.to_rfc3339(), "2025-10-30T21:30:00+00:00");
        assert_eq!(h.heartbeat_last, h.claimed_at);
        assert_eq!(h.expires_at.to_rfc3339(), "2025-10-30T21:35:00+00:00");
        assert!(!h.stale);
        assert_eq!(h.task_info.complexity, Some(5));
        assert!(r.to_holder(now + 300_001).stale);
    }

    #[test]
    fn check_rejects_inconsistent_tables() {
        let mut t = LockTable::default();
        granted(t.apply(&acquire("a", "w1", Takeover::None), 1));
        granted(t.apply(&acquire("b", "w1", Takeover::None), 1));
        assert_eq!(t.check(), Ok(()));
        let mut bad = t.clone();
        bad.next_token = 2;
        assert!(bad.check().is_err());
        let mut bad = t.clone();
        bad.locks.get_mut("b").unwrap().fencing_token = 1;
        assert!(bad.check().is_err());
        let mut bad = t;
        bad.next_token = 0;
        bad.locks.clear();
        assert!(bad.check().is_err());
    }

    #[test]
    fn commands_and_responses_round_trip_through_json() {
        let mut t = LockTable::default();
        let cmds = [
            acquire("a", "w1", Takeover::None),
            acquire("a", "w2", Takeover::Any),
            release("a", "w2", true),
            renew("a", "w1"),
            release_stale("a"),
        ];
        for cmd in &cmds {
            let json = serde_json::to_string(cmd).unwrap();
            assert_eq!(&serde_json::from_str::<Op>(&json).unwrap(), cmd);
            let resp = t.apply(cmd, 10);
            let json = serde_json::to_string(&resp).unwrap();
            assert_eq!(serde_json::from_str::<Response>(&json).unwrap(), resp);
        }
        let json = serde_json::to_string(&acquire("a", "w", Takeover::Stale)).unwrap();
        assert_eq!(
            json,
            r#"{"acquire":{"name":"a","worker_id":"w","node_id":"node-of-w","ttl_ms":1000,"takeover":"stale","readopt":true}}"#
        );
    }

    /// One step of a generated log: (kind, name, worker, time step, raw number, takeover,
    /// readopt, force).
    type Step = (u8, usize, usize, u8, u64, u8, bool, bool);

    fn steps() -> impl Strategy<Value = Vec<Step>> {
        prop::collection::vec(
            (
                0u8..12,
                0usize..3,
                0usize..4,
                0u8..20,
                any::<u64>(),
                0u8..6,
                any::<bool>(),
                any::<bool>(),
            ),
            1..400,
        )
    }

    /// Turns generated steps into a command log with times: mostly forward, sometimes a jump past
    /// the TTL, sometimes backwards (another caller's clock, an NTP step).
    fn log_of(steps: &[Step], allow_force: bool) -> Vec<(Op, u64)> {
        const NAMES: [&str; 3] = ["alpha", "beta", "gamma"];
        const WORKERS: [&str; 4] = ["w1", "w2", "w3", "w4"];
        let mut now: u64 = 1_000_000;
        let mut log = Vec::with_capacity(steps.len());
        for &(kind, name, worker, jump, n, takeover, readopt, force) in steps {
            now = match jump {
                0 => now.saturating_sub(n % (2 * TTL)),
                1 => now + TTL + n % TTL,
                _ => now + n % (TTL / 4),
            };
            let (name, worker) = (NAMES[name], WORKERS[worker]);
            let cmd = match kind {
                0..=3 => Op::Acquire {
                    name: name.into(),
                    worker_id: worker.into(),
                    node_id: format!("n-{worker}"),
                    ttl_ms: TTL / 2 + n % TTL,
                    takeover: match takeover {
                        0..=2 => Takeover::None,
                        3 | 4 => Takeover::Stale,
                        _ if allow_force => Takeover::Any,
                        _ => Takeover::Stale,
                    },
                    task_info: TaskInfo::default(),
                    readopt,
                    kind: HoldKind::Exclusive,
                    wait_ms: 0,
                },
                4..=6 => renew(name, worker),
                10 | 11 => release_stale(name),
                _ => Op::Release {
                    name: name.into(),
                    worker_id: worker.into(),
                    force: allow_force && force,
                    fencing_token: None,
                },
            };
            log.push((cmd, now));
        }
        log
    }

    /// Applies a log and checks the table's invariants after every step.
    fn run_checked(log: &[(Op, u64)], check_leases: bool) -> (LockTable, Vec<Response>) {
        let mut t = LockTable::default();
        let mut responses = Vec::with_capacity(log.len());
        let mut last_grant_token: HashMap<String, u64> = HashMap::new();
        // worker -> (name -> lease end the worker believes it holds, from its own grants/renews).
        let mut beliefs: HashMap<(String, String), u64> = HashMap::new();
        for (i, (cmd, now)) in log.iter().enumerate() {
            let before = t.clone();
            let resp = t.apply(cmd, *now);
            let name = cmd.name().to_string();
            let ctx = || format!("step {i}: {cmd:?} at {now} -> {resp:?}");
            match (&resp, cmd) {
                (
                    Response::Granted {
                        record,
                        adopted,
                        took_over,
                    },
                    Op::Acquire { worker_id, .. },
                ) => {
                    assert_eq!(t.get(&name), Some(record), "{}", ctx());
                    assert_eq!(&record.worker_id, worker_id, "{}", ctx());
                    assert_eq!(record.heartbeat_ms, *now, "{}", ctx());
                    let prev = last_grant_token.get(&name).copied().unwrap_or(0);
                    if *adopted {
                        assert_eq!(record.fencing_token, prev, "{}", ctx());
                        assert_eq!(before.get(&name).map(|r| &r.worker_id), Some(worker_id));
                        assert_eq!(t.next_token(), before.next_token(), "{}", ctx());
                    } else {
                        assert!(record.fencing_token > prev, "{}", ctx());
                        assert_eq!(record.fencing_token, before.next_token(), "{}", ctx());
                        assert_eq!(t.next_token(), before.next_token() + 1, "{}", ctx());
                        assert_eq!(took_over.as_ref(), before.get(&name), "{}", ctx());
                    }
                    last_grant_token.insert(name.clone(), record.fencing_token);
                    if let Some(old) = took_over {
                        // The former holder's lease had ended (steal-stale) or it is forced out.
                        let gone = beliefs.remove(&(old.worker_id.clone(), name.clone()));
                        if check_leases {
                            assert!(gone.is_none_or(|until| until < *now), "{}", ctx());
                        }
                    }
                    beliefs.insert((worker_id.clone(), name.clone()), record.expires_at_ms());
                }
                (
                    Response::Held { record, stale },
                    Op::Acquire {
                        worker_id, readopt, ..
                    },
                ) => {
                    assert_eq!(t, before, "{}", ctx());
                    // Our own lock only refuses a re-adopting claim once its lease ran out.
                    assert!(
                        !readopt || &record.worker_id != worker_id || *stale,
                        "{}",
                        ctx()
                    );
                    assert_eq!(*stale, LockTable::is_stale(record, *now), "{}", ctx());
                }
                (Response::Released { record }, Op::Release { .. }) => {
                    assert_eq!(record.as_ref(), before.get(&name), "{}", ctx());
                    assert_eq!(t.get(&name), None, "{}", ctx());
                    if let Some(r) = record {
                        beliefs.remove(&(r.worker_id.clone(), name.clone()));
                    }
                }
                (Response::Released { record }, Op::ReleaseStale { .. }) => {
                    assert_eq!(record.as_ref(), before.get(&name), "{}", ctx());
                    assert_eq!(t.get(&name), None, "{}", ctx());
                    if let Some(r) = record {
                        // The janitor only frees a lock whose lease has run out.
                        assert!(LockTable::is_stale(r, *now), "{}", ctx());
                        let gone = beliefs.remove(&(r.worker_id.clone(), name.clone()));
                        assert!(gone.is_none_or(|until| until < *now), "{}", ctx());
                    }
                }
                (Response::Held { record, stale }, Op::ReleaseStale { .. }) => {
                    assert_eq!(t, before, "{}", ctx());
                    assert_eq!(Some(record), before.get(&name), "{}", ctx());
                    assert!(!*stale && !LockTable::is_stale(record, *now), "{}", ctx());
                }
                (Response::NotOwner { record }, _) => {
                    assert_eq!(t, before, "{}", ctx());
                    assert_eq!(Some(record), before.get(&name), "{}", ctx());
                }
                (Response::Renewed { record }, Op::Renew { worker_id, .. }) => {
                    assert_eq!(t.get(&name), Some(record), "{}", ctx());
                    assert_eq!(record.heartbeat_ms, *now, "{}", ctx());
                    assert_eq!(&record.worker_id, worker_id, "{}", ctx());
                    let old = before.get(&name).expect("renewed a free lock");
                    assert!(
                        !LockTable::is_stale(old, *now),
                        "renewed an expired lock: {}",
                        ctx()
                    );
                    assert_eq!(old.fencing_token, record.fencing_token, "{}", ctx());
                    beliefs.insert((worker_id.clone(), name.clone()), record.expires_at_ms());
                }
                (Response::Expired { record }, Op::Renew { worker_id, .. }) => {
                    assert_eq!(t, before, "{}", ctx());
                    assert!(LockTable::is_stale(record, *now), "{}", ctx());
                    beliefs.remove(&(worker_id.clone(), name.clone()));
                }
                (Response::NotHeld, Op::Renew { .. }) => {
                    assert_eq!(t, before, "{}", ctx());
                    assert_eq!(before.get(&name), None, "{}", ctx());
                }
                _ => panic!("response does not fit the command: {}", ctx()),
            }
            // Structural invariants: tokens below the counter and unique across the table.
            assert_eq!(t.check(), Ok(()), "{}", ctx());
            // Without forced take-overs, no two workers believe at the same time that they hold
            // a live lease on one name (judged on the shared clock `now`).
            // A holder measures its lease on a monotonic clock: once over, it never revives even
            // if the shared clock steps back.
            beliefs.retain(|_, until| *until >= *now);
            if check_leases {
                let mut live: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
                for (w, n) in beliefs.keys() {
                    live.entry(n.as_str()).or_default().push(w.as_str());
                }
                for (n, ws) in live {
                    assert!(
                        ws.len() <= 1,
                        "{n}: {ws:?} all hold a live lease; {}",
                        ctx()
                    );
                    assert_eq!(
                        t.get(n).map(|r| r.worker_id.as_str()),
                        Some(ws[0]),
                        "{}",
                        ctx()
                    );
                }
            }
            responses.push(resp);
        }
        (t, responses)
    }

    proptest! {
        /// Any command log keeps the table's invariants (fencing tokens strictly increase per
        /// name, without force never two live holders), and replaying it — round-tripped through
        /// JSON, as a replicated log would be — gives the same table and the same responses.
        #[test]
        fn any_command_log_keeps_invariants_and_replays_identically(
            steps in steps(),
            allow_force in any::<bool>(),
        ) {
            let log = log_of(&steps, allow_force);
            let (table, responses) = run_checked(&log, !allow_force);
            let json = serde_json::to_string(&table).unwrap();
            let back: LockTable = serde_json::from_str(&json).unwrap();
            prop_assert_eq!(&back, &table);
            prop_assert_eq!(serde_json::to_string(&back).unwrap(), json);
            let log_json = serde_json::to_string(&log).unwrap();
            let replay_log: Vec<(Op, u64)> = serde_json::from_str(&log_json).unwrap();
            let mut replay = LockTable::default();
            let replay_responses: Vec<Response> = replay_log
                .iter()
                .map(|(c, now)| replay.apply(c, *now))
                .collect();
            prop_assert_eq!(replay, table);
            prop_assert_eq!(replay_responses, responses);
        }
    }

    #[test]
    fn only_an_explicit_worker_re_adopts() {
        let mut t = LockTable::default();
        granted(t.apply(&acquire("a", "w1", Takeover::None), 100));
        let mut again = acquire("a", "w1", Takeover::None);
        if let Op::Acquire { readopt, .. } = &mut again {
            *readopt = false;
        }
        assert!(matches!(
            t.apply(&again, 200),
            Response::Held { stale: false, .. }
        ));
        let (_, adopted, _) = granted(t.apply(&acquire("a", "w1", Takeover::None), 300));
        assert!(adopted);
    }

    #[test]
    fn withdraw_removes_only_the_named_grant() {
        let mut t = LockTable::default();
        let (r, _, _) = granted(t.apply(&acquire("a", "w1", Takeover::None), 100));
        assert!(!t.withdraw("a", r.fencing_token + 1));
        assert!(t.get("a").is_some());
        assert!(t.withdraw("a", r.fencing_token));
        assert!(t.get("a").is_none());
        assert!(!t.withdraw("a", r.fencing_token));
    }
}
