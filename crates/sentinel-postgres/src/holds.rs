//! The decisions on one name's rows: its lock (a row of `sentinel_locks`), its shared holds or
//! semaphore permits (rows of `sentinel_holds`, one per hold) and its reservation (the row of
//! `sentinel_holds` in slot [`INTENT_SLOT`]), read in the name's transaction; what to answer and
//! which rows to write. Pure, so the rules read in one place and every operation applies them
//! alike.
//!
//! A name is held as a lock or by holds, never both. A lock is decided by the lock table
//! ([`LockTable`]), exactly as before holds existed; holds follow the table's lease rules (a hold
//! whose TTL ran out is stale: it still counts until a `steal-stale` claim takes it over or the
//! janitor releases it) and the coordinator's rules of kinds (a semaphore's limit is the same for
//! every claim; a lock claim on a semaphore, or a semaphore claim on a lock, is a conflict).
//!
//! PostgreSQL keeps no queue: claims that wait poll. So that polling is fair, a claim refused
//! because its kind conflicts or its permits do not fit reserves the name by the lock table's
//! rule ([`table::reservation_ms`]), unless another worker's reservation is live: an attempt
//! that says when its claim comes back (its `wait`) records the reservation row (its worker, kind
//! and permits), which lives for that pause and a second from this refusal; the claim's last
//! attempt (or a fail-fast claim), which will not come back, ends it. While another worker's
//! reservation is live, claims that would fit are refused too (forced ones excepted). It ends when
//! its owner is granted or releases, or when it runs out. A lock claim refused by a lock reserves
//! nothing (it only keeps or ends one it already has), so names used only as locks behave as
//! before. The row's lifetime is its `ttl_ms`, as
//! in the version that reserved for the claim's TTL, so a row either version wrote is read alike.

use sentinel_core::backend::{Hold, Holds, Status, Waiter};
use sentinel_core::error::{Error, Result};
use sentinel_core::lease;
use sentinel_core::lock::{AcquireRequest, Attempt, Grant, HoldKind, Holder, Released, Takeover};
use sentinel_core::lock::{ReleaseRequest, StaleRelease};
use sentinel_core::table::{self, LockRecord, LockTable, Op, Response};

/// The slot of a name's reservation; holds take the slots from 0 up.
pub(crate) const INTENT_SLOT: i32 = -1;
/// Largest limit of a semaphore, as on the coordinator: every operation reads all of a name's
/// holds.
pub(crate) const MAX_LIMIT: u32 = 10_000;

/// A row of `sentinel_holds`: a hold, or (in [`INTENT_SLOT`]) a reservation, whose `record`
/// has token 0, the first refusal as `claimed_at` and the last as `heartbeat`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HoldRow {
    pub slot: i32,
    pub record: LockRecord,
    pub nonce: String,
    pub permits: u32,
    pub shared: bool,
    pub limit: Option<u32>,
}

impl HoldRow {
    fn kind(&self) -> &'static str {
        match (self.limit, self.shared) {
            (Some(_), _) => "semaphore",
            (None, true) => "shared",
            (None, false) => "exclusive",
        }
    }

    fn hold(&self, now: u64) -> Hold {
        Hold {
            holder: self.record.to_holder(now),
            permits: self.permits,
            shared: self.shared,
        }
    }

    /// A reservation as the holder a claim it refuses is told of.
    fn reservation(&self, now: u64) -> Holder {
        let what = match self.kind() {
            "semaphore" => format!("a claim of {} permits", self.permits),
            "shared" => "a shared claim".to_string(),
            _ => "an exclusive claim".to_string(),
        };
        Holder {
            liveness: Some(format!(
                "reserved for {what} that waits for it; later claims wait behind it"
            )),
            ..self.record.to_holder(now)
        }
    }

    fn live(&self, now: u64) -> bool {
        !LockTable::is_stale(&self.record, now)
    }
}

/// A name's rows as its transaction read them (held rows only: a free row is kept for its
/// token and means nothing else).
#[derive(Debug, Default)]
pub(crate) struct Name {
    /// The lock's row and the nonce of the attempt that granted it.
    pub lock: Option<(LockRecord, String)>,
    /// The holds, oldest grant first.
    pub holds: Vec<HoldRow>,
    pub intent: Option<HoldRow>,
}

impl Name {
    /// The reservation of a worker other than `worker`, while it is live.
    fn reserved_by_another(&self, worker: &str, now: u64) -> Option<&HoldRow> {
        self.intent
            .as_ref()
            .filter(|i| i.record.worker_id != worker && i.live(now))
    }

    fn reserved_by(&self, worker: &str) -> bool {
        self.intent
            .as_ref()
            .is_some_and(|i| i.record.worker_id == worker)
    }

    /// What `status` shows: the lock as before, or the holds and the reservation.
    pub fn status(&self, name: &str, now: u64) -> Status {
        let queue: Vec<Waiter> = self
            .intent
            .iter()
            .filter(|i| i.live(now))
            .map(|i| Waiter {
                worker_id: i.record.worker_id.clone(),
                node_id: i.record.node_id.clone(),
                since: lease::from_unix_ms(i.record.claimed_at_ms),
                permits: i.permits,
                shared: i.shared,
            })
            .collect();
        let (kind, limit, holders) = match (&self.lock, self.holds.first()) {
            (Some((lock, _)), _) if queue.is_empty() => {
                return Status::Named {
                    name: name.to_string(),
                    holder: Some(lock.to_holder(now)),
                };
            }
            (Some((lock, _)), _) => (
                "exclusive",
                None,
                vec![Hold::exclusive(lock.to_holder(now))],
            ),
            (None, Some(first)) => (
                first.kind(),
                first.limit,
                self.holds.iter().map(|h| h.hold(now)).collect(),
            ),
            (None, None) if queue.is_empty() => {
                return Status::Named {
                    name: name.to_string(),
                    holder: None,
                };
            }
            (None, None) => ("exclusive", None, Vec::new()),
        };
        Status::Holds(Holds {
            name: name.to_string(),
            kind,
            limit,
            holders,
            waiting: queue.len(),
            queue,
        })
    }
}

/// A row to write in the name's transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Write {
    /// The lock's row as the table left it (`None`: freed), with the nonce to record.
    Lock(Option<LockRecord>, String),
    /// A hold or the reservation, granted or changed.
    Hold(HoldRow),
    /// The hold or reservation in this slot ends (the row is kept for its token).
    Free(i32),
}

/// An answer and the rows that make it true.
pub(crate) struct Decided<T> {
    pub answer: Result<T>,
    pub writes: Vec<Write>,
}

/// One acquisition attempt, checked: what it asks for and what the transaction drew for it.
pub(crate) struct Claim<'a> {
    pub req: &'a AcquireRequest,
    pub cmd: &'a Op,
    pub nonce: &'a str,
    pub now: u64,
    pub token: u64,
}

impl Claim<'_> {
    fn name(&self) -> &str {
        self.cmd.name()
    }

    fn worker(&self) -> &str {
        &self.req.claimant.worker_id
    }

    /// Permits, shared, limit.
    fn wants(&self) -> (u32, bool, Option<u32>) {
        match self.req.kind {
            HoldKind::Exclusive => (1, false, None),
            HoldKind::Shared => (1, true, None),
            HoldKind::Semaphore { limit, permits } => (permits, false, Some(limit)),
        }
    }

    /// A new row for this claim in `slot` with `token` (a hold), or token 0 (a reservation).
    fn row(&self, slot: i32, token: u64, claimed_at_ms: u64) -> HoldRow {
        let (permits, shared, limit) = self.wants();
        HoldRow {
            slot,
            record: LockRecord {
                worker_id: self.worker().to_string(),
                node_id: self.req.claimant.node_id.clone(),
                fencing_token: token,
                claimed_at_ms,
                heartbeat_ms: self.now,
                ttl_ms: lease::millis(self.req.ttl).max(1),
                task_info: self.req.task_info.clone(),
            },
            nonce: self.nonce.to_string(),
            permits,
            shared,
            limit,
        }
    }
}

/// Refuses (exit 2) a semaphore of a limit or permits no backend would keep.
pub(crate) fn check_kind(kind: HoldKind) -> Result<()> {
    match kind {
        HoldKind::Semaphore { limit, permits }
            if !(1..=MAX_LIMIT).contains(&limit) || !(1..=limit).contains(&permits) =>
        {
            Err(Error::usage(format!(
                "a semaphore's limit is 1 to {MAX_LIMIT} and its permits 1 to its limit: not \
                 {permits} of {limit}"
            )))
        }
        _ => Ok(()),
    }
}

/// A claim refused because the name is held as another kind: a conflict that waiting does not
/// end.
fn other_kind(name: &str, held: &HoldRow) -> Error {
    Error::Conflict(match held.limit {
        Some(l) => format!("{name:?} is held as a semaphore of limit {l}, not as a lock"),
        None => format!(
            "{name:?} is held as a lock ({}), not as a semaphore",
            held.kind()
        ),
    })
}

fn granted(holder: Holder, adopted: bool, took_over: Option<Holder>) -> Attempt {
    Attempt::Granted(Grant {
        holder,
        adopted,
        took_over: took_over.map(Box::new),
    })
}

/// One acquisition attempt on the name's rows.
pub(crate) fn acquire(name: &Name, c: &Claim) -> Decided<Attempt> {
    let mut d = Deciding {
        holds: name.holds.clone(),
        writes: Vec::new(),
        previous: None,
    };
    let answer = d.acquire(name, c);
    Decided {
        answer,
        writes: d.writes,
    }
}

/// An acquisition being decided: the holds left, the rows to write, and the first holder a
/// take-over removed.
struct Deciding {
    holds: Vec<HoldRow>,
    writes: Vec<Write>,
    previous: Option<Holder>,
}

impl Deciding {
    fn acquire(&mut self, name: &Name, c: &Claim) -> Result<Attempt> {
        // A retry of this very attempt whose commit was not confirmed: the grant is ours.
        if let Some((lock, nonce)) = &name.lock
            && nonce == c.nonce
        {
            return Ok(granted(lock.to_holder(c.now), false, None));
        }
        if let Some(h) = name.holds.iter().find(|h| h.nonce == c.nonce) {
            return Ok(granted(h.record.to_holder(c.now), false, None));
        }
        let reserved = match c.req.takeover {
            Takeover::Any => None,
            _ => name.reserved_by_another(c.worker(), c.now),
        };
        match c.req.kind {
            HoldKind::Exclusive => self.exclusive(name, c, reserved),
            _ => self.group(name, c, reserved),
        }
    }

    /// Refused for its kind or permits: a claim that comes back reserves the name until then
    /// unless another worker's reservation is live; one that does not ends its own.
    fn refused(&mut self, name: &Name, c: &Claim, reserved: bool, holder: Holder) -> Attempt {
        if reserved {
            return Attempt::Held(holder);
        }
        match table::reservation_ms(lease::millis(c.req.wait)) {
            Some(ms) => {
                let (permits, shared, limit) = c.wants();
                let since = match &name.intent {
                    Some(i)
                        if i.record.worker_id == c.worker()
                            && i.live(c.now)
                            && (i.permits, i.shared, i.limit) == (permits, shared, limit) =>
                    {
                        i.record.claimed_at_ms
                    }
                    _ => c.now,
                };
                let mut row = c.row(INTENT_SLOT, 0, since);
                row.nonce.clear();
                row.record.ttl_ms = ms;
                self.writes.push(Write::Hold(row));
            }
            None if name.reserved_by(c.worker()) => self.writes.push(Write::Free(INTENT_SLOT)),
            None => {}
        }
        Attempt::Held(holder)
    }

    /// Granted: the claimant's reservation has served.
    fn served(&mut self, name: &Name, c: &Claim) {
        if name.reserved_by(c.worker()) {
            self.writes.push(Write::Free(INTENT_SLOT));
        }
    }

    fn drop_hold(&mut self, h: HoldRow, now: u64) {
        self.writes.push(Write::Free(h.slot));
        self.previous.get_or_insert_with(|| h.record.to_holder(now));
    }

    /// Takes the holds a claim may take over out of the way: stale ones (`steal-stale`), or
    /// with `all` (a forced lock claim) every one.
    fn take_over_holds(&mut self, c: &Claim, all: bool) {
        let stale = c.req.takeover == Takeover::Stale;
        let (gone, kept) = std::mem::take(&mut self.holds)
            .into_iter()
            .partition(|h| all || (stale && !h.live(c.now)));
        self.holds = kept;
        for h in gone {
            self.drop_hold(h, c.now);
        }
    }

    /// A lock claim: refused by holds (or a conflict on a semaphore), otherwise the lock table's
    /// decision, as before holds existed, unless another worker's reservation stands.
    fn exclusive(&mut self, name: &Name, c: &Claim, reserved: Option<&HoldRow>) -> Result<Attempt> {
        if let Some(first) = self.holds.first() {
            if first.limit.is_some() {
                return Err(other_kind(c.name(), first));
            }
            self.take_over_holds(c, c.req.takeover == Takeover::Any);
            if let Some(first) = self.holds.first() {
                let holder = first.record.to_holder(c.now);
                return Ok(self.refused(name, c, reserved.is_some(), holder));
            }
        }
        let old = name.lock.as_ref().map(|(r, _)| r.clone());
        let mut table = LockTable::one(c.token, c.name(), old.clone());
        let resp = table.apply(c.cmd, c.now);
        let fresh = matches!(resp, Response::Granted { adopted: false, .. });
        if let (true, Some(i)) = (fresh, reserved) {
            return Ok(Attempt::Held(i.reservation(c.now)));
        }
        let after = table.get(c.name());
        if after != old.as_ref() {
            let nonce = match (fresh, &name.lock) {
                (true, _) | (false, None) => c.nonce,
                (false, Some((_, n))) => n.as_str(),
            };
            self.writes
                .push(Write::Lock(after.cloned(), nonce.to_string()));
        }
        if matches!(resp, Response::Granted { .. }) {
            self.served(name, c);
        }
        let mut attempt = table::attempt(c.cmd, resp, c.now)?;
        if let (Attempt::Granted(g), Some(p)) = (&mut attempt, self.previous.take()) {
            g.took_over.get_or_insert(Box::new(p));
        }
        // A claim that already waits keeps (or, on its last attempt, ends) its reservation.
        let waits = name
            .intent
            .as_ref()
            .is_some_and(|i| i.record.worker_id == c.worker() && i.live(c.now));
        if let (Attempt::Held(h), true) = (&attempt, waits) {
            return Ok(self.refused(name, c, false, h.clone()));
        }
        Ok(attempt)
    }

    /// A shared or semaphore claim.
    fn group(&mut self, name: &Name, c: &Claim, reserved: Option<&HoldRow>) -> Result<Attempt> {
        let (permits, shared, limit) = c.wants();
        if let Some((lock, _)) = &name.lock {
            let takes = match c.req.takeover {
                Takeover::Any => true,
                Takeover::Stale => LockTable::is_stale(lock, c.now),
                Takeover::None => false,
            };
            if !takes && !shared {
                return Err(Error::Conflict(format!(
                    "{:?} is held as a lock (exclusive), not as a semaphore",
                    c.name()
                )));
            }
            if !takes {
                let holder = lock.to_holder(c.now);
                return Ok(self.refused(name, c, reserved.is_some(), holder));
            }
            self.writes.push(Write::Lock(None, String::new()));
            self.previous = Some(lock.to_holder(c.now));
        }
        self.take_over_holds(c, false);
        if let Some(first) = self.holds.first() {
            match (first.limit, limit) {
                (Some(theirs), Some(asked)) if theirs != asked => {
                    return Err(Error::usage(format!(
                        "semaphore {:?} has limit {theirs}, not {asked}: every claim of a \
                         semaphore must give the same limit",
                        c.name()
                    )));
                }
                (Some(_), None) | (None, Some(_)) => return Err(other_kind(c.name(), first)),
                _ => {}
            }
        }
        if let Some(h) = self.holds.iter().find(|h| {
            c.req.readopt
                && h.record.worker_id == c.worker()
                && h.permits == permits
                && h.shared == shared
        }) {
            let mut h = h.clone();
            h.record.node_id.clone_from(&c.req.claimant.node_id);
            h.record.heartbeat_ms = c.now;
            h.record.ttl_ms = lease::millis(c.req.ttl).max(1);
            h.record.task_info = c.req.task_info.clone();
            self.writes.push(Write::Hold(h.clone()));
            self.served(name, c);
            return Ok(granted(h.record.to_holder(c.now), true, None));
        }
        if let Some(refusal) = self.make_room(name, c, reserved) {
            return Ok(refusal);
        }
        if let Some(i) = reserved {
            return Ok(Attempt::Held(i.reservation(c.now)));
        }
        let slot = (0..).find(|s| self.holds.iter().all(|h| h.slot != *s));
        let row = c.row(slot.unwrap_or(0), c.token, c.now);
        self.writes.push(Write::Hold(row.clone()));
        self.served(name, c);
        Ok(granted(
            row.record.to_holder(c.now),
            false,
            self.previous.take(),
        ))
    }

    /// The refusal of a semaphore claim whose permits do not fit, if they do not: a forced
    /// claim frees the oldest holds until they do.
    fn make_room(&mut self, name: &Name, c: &Claim, reserved: Option<&HoldRow>) -> Option<Attempt> {
        let (permits, _, Some(limit)) = c.wants() else {
            return None;
        };
        let mut used: u64 = self.holds.iter().map(|h| u64::from(h.permits)).sum();
        let fits = |used: u64| used + u64::from(permits) <= u64::from(limit);
        if fits(used) {
            return None;
        }
        if c.req.takeover != Takeover::Any {
            let holder = self.holds[0].record.to_holder(c.now);
            return Some(self.refused(name, c, reserved.is_some(), holder));
        }
        while !fits(used) && !self.holds.is_empty() {
            let h = self.holds.remove(0);
            used -= u64::from(h.permits);
            self.drop_hold(h, c.now);
        }
        None
    }
}

/// A release: the lock by the table's rule, or the holds the request names (every hold of the
/// worker without a token; every hold with `force`). The worker's reservation ends too, and a
/// worker that had only a reservation is not refused.
pub(crate) fn release(name: &Name, cmd: &Op, req: &ReleaseRequest, now: u64) -> Decided<Released> {
    let mut writes = Vec::new();
    let reserved = name.reserved_by(&req.worker_id);
    if reserved {
        writes.push(Write::Free(INTENT_SLOT));
    }
    let answer = match (&name.lock, name.holds.first()) {
        (Some((lock, nonce)), _) => {
            let mut table = LockTable::one(0, cmd.name(), Some(lock.clone()));
            let resp = table.apply(cmd, now);
            if table.get(cmd.name()) != Some(lock) {
                writes.push(Write::Lock(table.get(cmd.name()).cloned(), nonce.clone()));
            }
            table::released(cmd, resp, now)
        }
        (None, Some(first)) => {
            let mine = name.holds.iter().filter(|h| {
                req.force
                    || (h.record.worker_id == req.worker_id
                        && req
                            .fencing_token
                            .is_none_or(|t| t == h.record.fencing_token))
            });
            let mut previous = None;
            for h in mine {
                writes.push(Write::Free(h.slot));
                previous.get_or_insert_with(|| h.record.to_holder(now));
            }
            match previous {
                Some(p) => Ok(Released {
                    was_held: true,
                    previous: Some(p),
                }),
                None => table::released(
                    cmd,
                    Response::NotOwner {
                        record: first.record.clone(),
                    },
                    now,
                ),
            }
        }
        (None, None) => table::released(cmd, Response::Released { record: None }, now),
    };
    let answer = match answer {
        Err(Error::NotOwner(_)) if reserved => Ok(Released {
            was_held: false,
            previous: None,
        }),
        other => other,
    };
    Decided { answer, writes }
}

/// A renewal: the lock by the table's rule, or the holds the request names (every live hold of
/// the worker without a token). A hold whose lease ran out is not renewed, as a lock's is not.
pub(crate) fn renew(name: &Name, cmd: &Op, now: u64) -> Decided<Holder> {
    let Op::Renew {
        worker_id,
        fencing_token,
        ttl_ms,
        ..
    } = cmd
    else {
        return Decided {
            answer: table::renewed(cmd, Response::NotHeld, now),
            writes: Vec::new(),
        };
    };
    let Some(first) = name.holds.first().filter(|_| name.lock.is_none()) else {
        let old = name.lock.as_ref().map(|(r, _)| r.clone());
        let mut table = LockTable::one(0, cmd.name(), old.clone());
        let resp = table.apply(cmd, now);
        let writes = match (table.get(cmd.name()), &name.lock) {
            (Some(after), Some((before, nonce))) if after != before => {
                vec![Write::Lock(Some(after.clone()), nonce.clone())]
            }
            _ => Vec::new(),
        };
        return Decided {
            answer: table::renewed(cmd, resp, now),
            writes,
        };
    };
    let mine: Vec<&HoldRow> = name
        .holds
        .iter()
        .filter(|h| {
            h.record.worker_id == *worker_id
                && fencing_token.is_none_or(|t| t == h.record.fencing_token)
        })
        .collect();
    let mut writes = Vec::new();
    for h in mine.iter().filter(|h| h.live(now)) {
        let mut h = (*h).clone();
        h.record.heartbeat_ms = now;
        if let Some(ttl) = ttl_ms {
            h.record.ttl_ms = (*ttl).max(1);
        }
        writes.push(Write::Hold(h));
    }
    let resp = match (writes.first(), mine.first()) {
        (Some(Write::Hold(h)), _) => Response::Renewed {
            record: h.record.clone(),
        },
        (_, Some(expired)) => Response::Expired {
            record: expired.record.clone(),
        },
        _ => Response::NotOwner {
            record: first.record.clone(),
        },
    };
    Decided {
        answer: table::renewed(cmd, resp, now),
        writes,
    }
}

/// The janitor's release: the lock by the table's rule, or the stale holds (only the one with
/// the token the janitor saw, when it says).
pub(crate) fn release_stale(
    name: &Name,
    cmd: &Op,
    seen: Option<&Holder>,
    now: u64,
) -> Decided<StaleRelease> {
    if let Some((lock, nonce)) = &name.lock {
        let mut table = LockTable::one(0, cmd.name(), Some(lock.clone()));
        let resp = table.apply(cmd, now);
        let writes = match table.get(cmd.name()) {
            None => vec![Write::Lock(None, nonce.clone())],
            Some(_) => Vec::new(),
        };
        return Decided {
            answer: table::stale_release(cmd, resp, now),
            writes,
        };
    }
    let named = |h: &&HoldRow| seen.is_none_or(|s| s.fencing_token == h.record.fencing_token);
    let stale: Vec<&HoldRow> = name
        .holds
        .iter()
        .filter(named)
        .filter(|h| !h.live(now))
        .collect();
    let writes = stale.iter().map(|h| Write::Free(h.slot)).collect();
    let kept = name.holds.iter().find(named).or(name.holds.first());
    let answer = match (stale.first(), kept) {
        (Some(h), _) => StaleRelease::Released(h.record.to_holder(now)),
        (None, Some(h)) => StaleRelease::Kept(h.record.to_holder(now)),
        (None, None) => StaleRelease::Free,
    };
    Decided {
        answer: Ok(answer),
        writes,
    }
}

#[cfg(test)]
mod tests {
    //! The reservation rule on the rows, decided purely: the lock table's rule (see the module's
    //! comment), which `tests/it`'s conformance suite also checks on a real server.

    use std::time::Duration;

    use sentinel_core::lock::{Claimant, LockId};

    use super::*;

    const NOW: u64 = 1_000_000;

    fn request(worker: &str, kind: HoldKind, wait: Duration) -> AcquireRequest {
        AcquireRequest {
            lock: LockId::Name("schema".into()),
            claimant: Claimant {
                worker_id: worker.into(),
                node_id: "n".into(),
            },
            ttl: Duration::from_secs(60),
            takeover: Takeover::None,
            task_info: Default::default(),
            readopt: false,
            attempt: 0,
            wait,
            kind,
        }
    }

    /// `name` held by one reader (slot 0, token 7).
    fn read_by_r1() -> Name {
        let req = request("r1", HoldKind::Shared, Duration::ZERO);
        let cmd = Op::acquire("schema", &req).unwrap();
        let c = Claim {
            req: &req,
            cmd: &cmd,
            nonce: "r1",
            now: NOW,
            token: 7,
        };
        Name {
            holds: vec![c.row(0, 7, NOW)],
            ..Name::default()
        }
    }

    /// The attempt of `req` at `now` on `name`: its answer and the reservation it writes
    /// (`Some(None)`: it frees the slot).
    fn attempt(name: &Name, req: &AcquireRequest, now: u64) -> (Attempt, Option<Option<HoldRow>>) {
        let cmd = Op::acquire("schema", req).unwrap();
        let c = Claim {
            req,
            cmd: &cmd,
            nonce: "x",
            now,
            token: 9,
        };
        let d = acquire(name, &c);
        let intent = d.writes.into_iter().find_map(|w| match w {
            Write::Hold(h) if h.slot == INTENT_SLOT => Some(Some(h)),
            Write::Free(INTENT_SLOT) => Some(None),
            _ => None,
        });
        (d.answer.unwrap(), intent)
    }

    #[test]
    fn the_first_refused_attempt_that_comes_back_reserves_until_its_next_and_a_second() {
        let mut name = read_by_r1();
        // The claim's first attempt (attempt 0) reserves: the pause it announced and a second,
        // not the claim's TTL.
        let writer = request("w", HoldKind::Exclusive, Duration::from_millis(500));
        let (answer, intent) = attempt(&name, &writer, NOW);
        assert!(matches!(answer, Attempt::Held(_)), "{answer:?}");
        let intent = intent.flatten().expect("the first refusal reserves");
        assert_eq!(
            (intent.record.worker_id.as_str(), intent.record.ttl_ms),
            ("w", 1_500)
        );
        assert_eq!(intent.record.heartbeat_ms, NOW);
        name.intent = Some(intent);
        // Meanwhile a reader that would fit is refused, and reserves nothing.
        let reader = request("r2", HoldKind::Shared, Duration::from_millis(500));
        let (answer, intent) = attempt(&name, &reader, NOW + 1_500);
        assert!(matches!(answer, Attempt::Held(h) if h.worker_id == "w"));
        assert_eq!(intent, None);
        // Not back within the pause and its second: it holds nobody back.
        let (answer, _) = attempt(&name, &reader, NOW + 1_501);
        assert!(matches!(answer, Attempt::Granted(_)), "{answer:?}");
        // A pause longer than the longest backoff reserves for at most 75 min and a second.
        let (_, intent) = attempt(
            &read_by_r1(),
            &request("w", HoldKind::Exclusive, Duration::from_secs(24 * 3600)),
            NOW,
        );
        assert_eq!(intent.flatten().unwrap().record.ttl_ms, 75 * 60_000 + 1_000);
    }

    #[test]
    fn a_claim_that_does_not_come_back_keeps_no_reservation() {
        let mut name = read_by_r1();
        // Fail-fast, or any claim's last attempt: nothing reserved, even from attempt 1 on.
        let mut last = request("w", HoldKind::Exclusive, Duration::ZERO);
        last.attempt = 3;
        assert_eq!(attempt(&name, &last, NOW).1, None);
        // Its last attempt ends the reservation its earlier ones made, from the same renewal on.
        let mut earlier = last.clone();
        earlier.wait = Duration::from_secs(2);
        let (_, intent) = attempt(&name, &earlier, NOW);
        let intent = intent.flatten().unwrap();
        assert_eq!(intent.record.claimed_at_ms, NOW);
        name.intent = Some(intent);
        let (_, renewed) = attempt(&name, &earlier, NOW + 2_000);
        let renewed = renewed.flatten().unwrap();
        assert_eq!(
            (renewed.record.claimed_at_ms, renewed.record.heartbeat_ms),
            (NOW, NOW + 2_000),
            "a renewal keeps when the claim began waiting"
        );
        assert_eq!(attempt(&name, &last, NOW + 2_500).1, Some(None));
        // Another worker's last attempt leaves it alone.
        let mut other = last.clone();
        other.claimant.worker_id = "v".into();
        assert_eq!(attempt(&name, &other, NOW + 2_500).1, None);

        // The name became another worker's lock (a forced claim): the waiting claim's attempts,
        // refused by the lock, keep its reservation, and its last one ends it.
        let lock = read_by_r1().holds.remove(0).record;
        name.holds.clear();
        name.lock = Some((lock, "r1".into()));
        let (answer, renewed) = attempt(&name, &earlier, NOW + 2_500);
        assert!(matches!(answer, Attempt::Held(h) if h.worker_id == "r1"));
        assert_eq!(renewed.flatten().unwrap().record.heartbeat_ms, NOW + 2_500);
        assert_eq!(attempt(&name, &last, NOW + 2_500).1, Some(None));
        // Without a reservation of its own, a lock claim refused by a lock records none.
        name.intent = None;
        assert_eq!(attempt(&name, &earlier, NOW + 2_500).1, None);
    }
}
