//! Names held by several at once in the lock table: shared (read) holds, a semaphore's permits,
//! and the one-slot reservation that keeps a waiting claim from being overtaken.
//!
//! A name is in the table's `locks` (one exclusive lease, as it always was) or in its `groups`
//! (shared holds, or a semaphore's holds), never both. An exclusive grant always goes to `locks`,
//! so a table whose names were only ever claimed exclusively is what it was, and the commands on
//! such a name take the table's old path. Every hold is a [`LockRecord`] of its own, with its
//! lease and a fencing token from the table's one counter, so tokens grow per name across every
//! kind of hold.
//!
//! The table keeps no queue: its users poll (the strategy loop). Fairness comes from one
//! reservation per name, an [`Intent`]. The first claim refused because its kind conflicts with
//! the holds or its permits do not fit records itself; while it lives, every other worker's claim
//! that would get a new hold is refused too (unless forced), so a writer is not starved by a
//! stream of readers, nor a claim of many permits by claims of few. It lives as long as its
//! claimant says it will come back (the acquire's `wait_ms`: the longest pause before its next
//! attempt, at most [`MAX_RESERVATION_MS`], and [`RESERVATION_GRACE_MS`] for that attempt to
//! arrive; renewed by every refused attempt), so a claimant that
//! gave up or died holds nobody back for long; its last attempt (`wait_ms` 0) leaves none, and it
//! ends when its owner is granted or releases the name.

use serde::{Deserialize, Serialize};

use super::{LockRecord, LockTable, Response};
use crate::backend::{Hold, Holds, Waiter};
use crate::lease::{self, from_unix_ms};
use crate::lock::{HoldKind, Holder, Takeover};

/// Largest limit of a semaphore (as the coordinator's).
pub const MAX_LIMIT: u32 = 10_000;

/// Longest a reservation lasts without its claimant coming back: the longest pause the strategy
/// loop takes between two attempts (its largest backoff, 1 h, plus its jitter of 25%).
pub const MAX_RESERVATION_MS: u64 = 75 * 60 * 1000;

/// What a reservation lasts beyond the pause its claimant announced: the time its next attempt
/// takes to reach the table after the pause (a process's scheduling, the store's file lock).
pub const RESERVATION_GRACE_MS: u64 = 1_000;

/// How long a claim refused now keeps its reservation (ms), given the pause before its next
/// attempt that it announced (`wait_ms`): that pause, at most [`MAX_RESERVATION_MS`], and
/// [`RESERVATION_GRACE_MS`]; `None` for a claim that will not come back (its last attempt, a
/// fail-fast claim), which keeps none. Every polling store of holds (this table, Redis,
/// PostgreSQL) reserves by this rule.
pub fn reservation_ms(wait_ms: u64) -> Option<u64> {
    (wait_ms > 0).then(|| wait_ms.min(MAX_RESERVATION_MS) + RESERVATION_GRACE_MS)
}

/// One hold of a [`Group`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupHold {
    /// Its lease and fencing token.
    pub lease: LockRecord,
    /// The semaphore permits it takes (1 for a shared hold).
    pub permits: u32,
    /// A shared (read) hold; false for a semaphore's.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub shared: bool,
}

/// A name held shared or as a semaphore: its holds, oldest grant first, never none.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Group {
    /// The semaphore's limit; `None` for shared holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
    /// The holds, stale ones included until someone ends them.
    pub holds: Vec<GroupHold>,
}

impl Group {
    /// `shared` or `semaphore`.
    pub fn kind(&self) -> &'static str {
        match self.limit {
            Some(_) => "semaphore",
            None => "shared",
        }
    }

    /// The permits its holds take, stale ones included.
    pub fn used(&self) -> u64 {
        self.holds.iter().map(|h| u64::from(h.permits)).sum()
    }
}

/// A refused claim's reservation of a name (see the module's comment).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Intent {
    /// Who waits.
    pub worker_id: String,
    /// Where it runs.
    pub node_id: String,
    /// What it waits for.
    pub kind: HoldKind,
    /// Its first refused attempt (Unix ms).
    pub since_ms: u64,
    /// It ends after this (Unix ms) unless its claimant comes back.
    pub until_ms: u64,
}

impl Intent {
    /// Whether it still holds others back at `now_ms`.
    pub fn is_live(&self, now_ms: u64) -> bool {
        now_ms <= self.until_ms
    }

    /// Whom a claim it refused waits for: the hold `record` if the name has one (another
    /// worker's, if any), else the reservation's claimant, with no fencing token (0, which no
    /// grant has) and the reservation's end as the expiry; either way saying why.
    pub fn to_holder(&self, record: Option<&LockRecord>, now_ms: u64) -> Holder {
        let why = format!(
            "reserved for the waiting {} claim of {:?} until {} (a claim that waits keeps the \
             name from later claims)",
            self.kind.name(),
            self.worker_id,
            lease::rfc3339(from_unix_ms(self.until_ms))
        );
        if let Some(r) = record {
            return Holder {
                liveness: Some(why),
                ..r.to_holder(now_ms)
            };
        }
        Holder {
            worker_id: self.worker_id.clone(),
            node_id: self.node_id.clone(),
            fencing_token: 0,
            claimed_at: from_unix_ms(self.since_ms),
            heartbeat_last: from_unix_ms(self.since_ms),
            expires_at: from_unix_ms(self.until_ms),
            stale: false,
            task_info: Default::default(),
            liveness: Some(format!("nobody holds it, but it is {why}")),
        }
    }

    /// As `status` lists a waiting claim.
    pub fn to_waiter(&self) -> Waiter {
        let (permits, shared) = shape(self.kind);
        Waiter {
            worker_id: self.worker_id.clone(),
            node_id: self.node_id.clone(),
            since: from_unix_ms(self.since_ms),
            permits,
            shared,
        }
    }
}

/// How an acquire claims: its kind, what it may take over, whether it takes up its own hold,
/// and how soon it comes back if refused.
#[derive(Debug, Clone, Copy)]
pub(super) struct Claim {
    pub(super) kind: HoldKind,
    pub(super) takeover: Takeover,
    pub(super) readopt: bool,
    pub(super) wait_ms: u64,
}

/// The permits and shared flag of a hold of `kind`.
fn shape(kind: HoldKind) -> (u32, bool) {
    match kind {
        HoldKind::Semaphore { permits, .. } => (permits, false),
        HoldKind::Shared => (1, true),
        HoldKind::Exclusive => (1, false),
    }
}

fn limit_of(kind: HoldKind) -> Option<u32> {
    match kind {
        HoldKind::Semaphore { limit, .. } => Some(limit),
        _ => None,
    }
}

/// Why a hold of `kind` cannot exist, if it cannot.
pub(super) fn invalid(kind: HoldKind) -> Option<String> {
    match kind {
        HoldKind::Semaphore { limit, permits }
            if !(1..=MAX_LIMIT).contains(&limit) || !(1..=limit).contains(&permits) =>
        {
            Some(format!(
                "a semaphore's limit is 1 to {MAX_LIMIT} and its permits 1 to the limit, not \
                 {permits} of {limit}"
            ))
        }
        _ => None,
    }
}

impl LockTable {
    /// An acquire of a shared hold or semaphore permits, or an exclusive acquire of a name held
    /// as a group or reserved: see the module's comment for the rules.
    pub(super) fn claim(&mut self, name: &str, fresh: LockRecord, c: Claim, now: u64) -> Response {
        if let Some(reason) = invalid(c.kind) {
            return Response::Invalid { reason };
        }
        if self.intents.get(name).is_some_and(|i| !i.is_live(now)) {
            self.intents.remove(name);
        }
        if c.readopt
            && let Some(adopted) = self.readopt(name, &fresh, c.kind, now)
        {
            self.drop_intent(name, &fresh.worker_id);
            return adopted;
        }
        // A claim that may take over stale holds ends them all first, as the janitor would, so
        // a reservation waiting behind them is not stuck behind ended leases.
        let mut ended = match c.takeover {
            Takeover::Stale => self.end_stale(name, now),
            _ => Vec::new(),
        };
        if let Some(refusal) = self.kind_refusal(name, c.kind) {
            return refusal;
        }
        let reserved = self
            .intents
            .get(name)
            .filter(|i| i.worker_id != fresh.worker_id && c.takeover != Takeover::Any)
            .cloned();
        if !self.fits(name, c.kind) {
            if c.takeover != Takeover::Any {
                return self.refuse(name, &fresh, c, reserved.is_none(), now);
            }
            ended.extend(self.make_room(name, c.kind));
        }
        if let Some(intent) = reserved {
            let record = self.blocker(name, &fresh.worker_id);
            return Response::Reserved { intent, record };
        }
        self.grant(name, fresh, c.kind, ended.into_iter().next())
    }

    /// Takes up the claimant's own live hold of the same kind again (same token), if it has one.
    fn readopt(
        &mut self,
        name: &str,
        fresh: &LockRecord,
        kind: HoldKind,
        now: u64,
    ) -> Option<Response> {
        let own = |r: &LockRecord| r.worker_id == fresh.worker_id && !Self::is_stale(r, now);
        let current = match kind {
            HoldKind::Exclusive => self.locks.get_mut(name).filter(|r| own(r))?,
            _ => {
                let g = self.groups.get_mut(name)?;
                if g.limit != limit_of(kind) {
                    return None;
                }
                let (permits, shared) = shape(kind);
                &mut g
                    .holds
                    .iter_mut()
                    .find(|h| h.permits == permits && h.shared == shared && own(&h.lease))?
                    .lease
            }
        };
        Some(Self::take_up(current, fresh.clone(), now))
    }

    /// Ends every stale hold of `name` and says which.
    fn end_stale(&mut self, name: &str, now: u64) -> Vec<LockRecord> {
        let mut ended = Vec::new();
        if self.locks.get(name).is_some_and(|r| Self::is_stale(r, now)) {
            ended.extend(self.locks.remove(name));
        }
        if let Some(g) = self.groups.get_mut(name) {
            g.holds.retain(|h| {
                let stale = Self::is_stale(&h.lease, now);
                if stale {
                    ended.push(h.lease.clone());
                }
                !stale
            });
            if g.holds.is_empty() {
                self.groups.remove(name);
            }
        }
        ended
    }

    /// A claim of another kind than the name is held as: a semaphore claim on a lock or shared
    /// holds, a lock or shared claim on a semaphore, another limit than the semaphore's.
    fn kind_refusal(&self, name: &str, kind: HoldKind) -> Option<Response> {
        let group = self.groups.get(name);
        let other = |shared, limit| Some(Response::OtherKind { shared, limit });
        match (kind, group.map(|g| g.limit)) {
            (HoldKind::Semaphore { .. }, _) if self.locks.contains_key(name) => other(false, None),
            (HoldKind::Semaphore { .. }, Some(None)) => other(true, None),
            (HoldKind::Semaphore { limit: asked, .. }, Some(Some(limit))) if asked != limit => {
                Some(Response::LimitMismatch { limit, asked })
            }
            (HoldKind::Exclusive | HoldKind::Shared, Some(Some(limit))) => {
                other(false, Some(limit))
            }
            _ => None,
        }
    }

    /// Whether a hold of `kind` fits beside the holds of `name` (of a kind it may join).
    fn fits(&self, name: &str, kind: HoldKind) -> bool {
        let group = self.groups.get(name);
        match kind {
            HoldKind::Exclusive => !self.locks.contains_key(name) && group.is_none(),
            HoldKind::Shared => !self.locks.contains_key(name),
            HoldKind::Semaphore { limit, permits } => {
                group.map_or(0, Group::used) + u64::from(permits) <= u64::from(limit)
            }
        }
    }

    /// A refused claim: the hold it waits for ([`Self::blocker`]), and its reservation
    /// recorded, renewed or, on its last attempt, ended.
    fn refuse(
        &mut self,
        name: &str,
        fresh: &LockRecord,
        c: Claim,
        may_reserve: bool,
        now: u64,
    ) -> Response {
        let Some(record) = self.blocker(name, &fresh.worker_id) else {
            return Response::Invalid {
                reason: format!("internal error: a claim of {name:?} was refused with no holder"),
            };
        };
        match reservation_ms(c.wait_ms) {
            _ if !may_reserve => {}
            None => self.drop_intent(name, &fresh.worker_id),
            Some(ms) => {
                let since_ms = match self.intents.get(name) {
                    Some(own) if own.kind == c.kind => own.since_ms,
                    _ => now,
                };
                let intent = Intent {
                    worker_id: fresh.worker_id.clone(),
                    node_id: fresh.node_id.clone(),
                    kind: c.kind,
                    since_ms,
                    until_ms: now.saturating_add(ms),
                };
                self.intents.insert(name.to_string(), intent);
            }
        }
        Response::Held {
            stale: Self::is_stale(&record, now),
            record,
        }
    }

    /// The hold of `name` a refused claim of `worker` is told of: another worker's if there is
    /// one, so that a claim is told it waits for itself only when it does.
    fn blocker(&self, name: &str, worker: &str) -> Option<LockRecord> {
        let holds: Vec<&LockRecord> = match (self.locks.get(name), self.groups.get(name)) {
            (Some(r), _) => vec![r],
            (None, Some(g)) => g.holds.iter().map(|h| &h.lease).collect(),
            (None, None) => Vec::new(),
        };
        holds
            .iter()
            .find(|r| r.worker_id != worker)
            .or(holds.first())
            .map(|r| (*r).clone())
    }

    /// A forced claim ends the holds in its way: a lock, every hold for an exclusive claim, the
    /// oldest permits until a semaphore claim fits.
    fn make_room(&mut self, name: &str, kind: HoldKind) -> Vec<LockRecord> {
        let mut ended: Vec<LockRecord> = self.locks.remove(name).into_iter().collect();
        match kind {
            HoldKind::Exclusive => {
                if let Some(g) = self.groups.remove(name) {
                    ended.extend(g.holds.into_iter().map(|h| h.lease));
                }
            }
            HoldKind::Semaphore { limit, permits } => {
                if let Some(g) = self.groups.get_mut(name) {
                    while !g.holds.is_empty() && g.used() + u64::from(permits) > u64::from(limit) {
                        ended.push(g.holds.remove(0).lease);
                    }
                    if g.holds.is_empty() {
                        self.groups.remove(name);
                    }
                }
            }
            HoldKind::Shared => {}
        }
        ended
    }

    /// A new hold of `kind` for `fresh`'s claimant, with a new token; its reservation ends.
    fn grant(
        &mut self,
        name: &str,
        mut fresh: LockRecord,
        kind: HoldKind,
        took_over: Option<LockRecord>,
    ) -> Response {
        fresh.fencing_token = self.issue_token();
        self.drop_intent(name, &fresh.worker_id);
        if kind.is_exclusive() {
            self.locks.insert(name.to_string(), fresh.clone());
        } else {
            let (permits, shared) = shape(kind);
            let group = self.groups.entry(name.to_string()).or_insert(Group {
                limit: limit_of(kind),
                holds: Vec::new(),
            });
            group.holds.push(GroupHold {
                lease: fresh.clone(),
                permits,
                shared,
            });
        }
        Response::Granted {
            record: fresh,
            adopted: false,
            took_over,
        }
    }

    /// Ends `worker`'s reservation of `name`, if it has one.
    pub(super) fn drop_intent(&mut self, name: &str, worker: &str) {
        if self
            .intents
            .get(name)
            .is_some_and(|i| i.worker_id == worker)
        {
            self.intents.remove(name);
        }
    }

    /// The release of the group `name`'s holds of `worker` (every one, or the one with `token`),
    /// or of all of them with `force`. The answer names the first hold it ended.
    pub(super) fn release_holds(
        &mut self,
        name: &str,
        worker: &str,
        force: bool,
        token: Option<u64>,
    ) -> Response {
        let Some(g) = self.groups.get_mut(name) else {
            return Response::Released { record: None };
        };
        let (gone, kept): (Vec<GroupHold>, Vec<GroupHold>) = std::mem::take(&mut g.holds)
            .into_iter()
            .partition(|h| force || Self::is_grant(&h.lease, worker, token));
        g.holds = kept;
        if gone.is_empty() {
            return match g.holds.first() {
                Some(h) => Response::NotOwner {
                    record: h.lease.clone(),
                },
                None => Response::Released { record: None },
            };
        }
        if g.holds.is_empty() {
            self.groups.remove(name);
        }
        Response::Released {
            record: gone.into_iter().next().map(|h| h.lease),
        }
    }

    /// The renewal of the group `name`'s live holds of `worker` (every one, or the one with
    /// `token`); the answer names the first renewed, else the first that ran out.
    pub(super) fn renew_holds(
        &mut self,
        name: &str,
        worker: &str,
        token: Option<u64>,
        ttl_ms: Option<u64>,
        now: u64,
    ) -> Response {
        let Some(g) = self.groups.get_mut(name) else {
            return Response::NotHeld;
        };
        let (mut renewed, mut expired) = (None, None);
        for h in g
            .holds
            .iter_mut()
            .filter(|h| Self::is_grant(&h.lease, worker, token))
        {
            if Self::is_stale(&h.lease, now) {
                expired.get_or_insert_with(|| h.lease.clone());
                continue;
            }
            h.lease.heartbeat_ms = now;
            if let Some(ttl) = ttl_ms {
                h.lease.ttl_ms = ttl;
            }
            renewed.get_or_insert_with(|| h.lease.clone());
        }
        match (renewed, expired, g.holds.first()) {
            (Some(record), _, _) => Response::Renewed { record },
            (None, Some(record), _) => Response::Expired { record },
            (None, None, Some(h)) => Response::NotOwner {
                record: h.lease.clone(),
            },
            (None, None, None) => Response::NotHeld,
        }
    }

    /// The janitor's release in the group `name`: its first stale hold, if it has one.
    pub(super) fn release_stale_hold(&mut self, name: &str, now: u64) -> Response {
        let Some(g) = self.groups.get_mut(name) else {
            return Response::Released { record: None };
        };
        let Some(i) = g.holds.iter().position(|h| Self::is_stale(&h.lease, now)) else {
            return match g.holds.first() {
                Some(h) => Response::Held {
                    record: h.lease.clone(),
                    stale: false,
                },
                None => Response::Released { record: None },
            };
        };
        let hold = g.holds.remove(i);
        if g.holds.is_empty() {
            self.groups.remove(name);
        }
        Response::Released {
            record: Some(hold.lease),
        }
    }

    /// Removes the hold of the group `name` with `token`; true when there was one.
    pub(super) fn withdraw_hold(&mut self, name: &str, token: u64) -> bool {
        let Some(g) = self.groups.get_mut(name) else {
            return false;
        };
        let before = g.holds.len();
        g.holds.retain(|h| h.lease.fencing_token != token);
        let removed = g.holds.len() < before;
        if g.holds.is_empty() {
            self.groups.remove(name);
        }
        removed
    }

    /// The shared holds or semaphore `name`, if it is one.
    pub fn group(&self, name: &str) -> Option<&Group> {
        self.groups.get(name)
    }

    /// The reservation of `name`, if one is live at `now_ms`.
    pub fn intent(&self, name: &str, now_ms: u64) -> Option<&Intent> {
        self.intents.get(name).filter(|i| i.is_live(now_ms))
    }

    /// Every hold in name order (a group's in the order they were granted), stale ones
    /// included: one row per hold, as `status` lists them.
    pub fn holds(&self) -> Vec<(&str, &LockRecord)> {
        let mut all: Vec<(&str, &LockRecord)> = self.iter().collect();
        for (name, g) in &self.groups {
            all.extend(g.holds.iter().map(|h| (name.as_str(), &h.lease)));
        }
        all.sort_by(|a, b| a.0.cmp(b.0));
        all
    }

    /// `status` of a name held as a group or reserved, judged at `now_ms`; `None` for a name
    /// that is neither (a lock, or free), which reads as it always did.
    pub fn holds_of(&self, name: &str, now_ms: u64) -> Option<Holds> {
        let intent = self.intent(name, now_ms);
        let group = self.groups.get(name);
        if intent.is_none() && group.is_none() {
            return None;
        }
        let holders = match (group, self.locks.get(name)) {
            (Some(g), _) => g
                .holds
                .iter()
                .map(|h| Hold {
                    holder: h.lease.to_holder(now_ms),
                    permits: h.permits,
                    shared: h.shared,
                })
                .collect(),
            (None, lock) => lock
                .map(|r| Hold::exclusive(r.to_holder(now_ms)))
                .into_iter()
                .collect(),
        };
        let queue: Vec<Waiter> = intent.map(Intent::to_waiter).into_iter().collect();
        Some(Holds {
            name: name.to_string(),
            kind: group.map_or("exclusive", Group::kind),
            limit: group.and_then(|g| g.limit),
            holders,
            waiting: queue.len(),
            queue,
        })
    }

    /// The invariants of the groups a table read from outside must hold, besides the tokens'
    /// (checked with the locks'): no name both a lock and a group, no group without holds, a
    /// semaphore's holds within its limit, a shared group's holds all shared.
    pub(super) fn check_groups(&self) -> std::result::Result<(), String> {
        for (name, g) in &self.groups {
            if self.locks.contains_key(name) {
                return Err(format!("{name:?} is both a lock and a group of holds"));
            }
            if g.holds.is_empty() {
                return Err(format!("the group {name:?} has no holds"));
            }
            let kind_ok = |h: &GroupHold| match g.limit {
                Some(_) => !h.shared && h.permits >= 1,
                None => h.shared && h.permits == 1,
            };
            if !g.holds.iter().all(kind_ok) {
                return Err(format!("the group {name:?} mixes kinds of holds"));
            }
            if let Some(limit) = g.limit
                && (invalid(HoldKind::Semaphore { limit, permits: 1 }).is_some()
                    || g.used() > u64::from(limit))
            {
                return Err(format!(
                    "the semaphore {name:?} holds {} permits of a limit of {limit}",
                    g.used()
                ));
            }
        }
        Ok(())
    }

    /// Every group hold's lease, for the token check.
    pub(super) fn group_leases(&self) -> impl Iterator<Item = (&str, &LockRecord)> {
        self.groups
            .iter()
            .flat_map(|(name, g)| g.holds.iter().map(move |h| (name.as_str(), &h.lease)))
    }
}

#[cfg(test)]
mod tests;
