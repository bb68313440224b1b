//! What happened to the locks and keys, as a numbered sequence of events: the watch stream's
//! source.
//!
//! Every command's effects on holds are told as events — a hold `acquired` (granted at once or
//! after a wait), `released` (given back or taken back), `expired` (its lease ran out), and an
//! acquire `queued` — each with the next `revision` of the state. The revision is part of the
//! replicated state, so every node numbers the same events the same way, and a watcher that
//! reconnects to another node resumes from its last revision without losing or repeating one.
//! Events are derived from the answers a command gives (which the state computes anyway) and
//! from the leases that end before it, so the rules of locks and groups need no hook for them.

use sentinel_core::table::LockRecord;
pub use sentinel_core::watch::{EventKind, WatchEvent as Event};

use super::{Answer, Command, LockState, Settled};

impl LockState {
    /// The leases (of locks and of groups' holds) that end before `now`, in the order they end:
    /// read before [`Self::advance`] ends them.
    pub(super) fn ending_before(&self, now: u64) -> Vec<(String, LockRecord)> {
        let locks = self
            .expiries
            .iter()
            .take_while(|(at, _)| *at < now)
            .filter_map(|(at, name)| {
                Some((*at, name.clone(), self.locks.get(name)?.lease.clone()))
            });
        let holds = self
            .hold_expiries
            .iter()
            .take_while(|(at, ..)| *at < now)
            .filter_map(|(at, name, token, id)| {
                let hold = self
                    .groups
                    .get(name)?
                    .holds
                    .iter()
                    .find(|h| h.lease.fencing_token == *token && h.request_id == *id)?;
                Some((*at, name.clone(), hold.lease.clone()))
            });
        let mut ending: Vec<_> = locks.chain(holds).collect();
        ending.sort_by_key(|(at, ..)| *at);
        ending.into_iter().map(|(_, n, l)| (n, l)).collect()
    }

    /// Numbers the events of time passing before a command: the leases that ran out (in the
    /// order they ended), then the waiting requests that were settled meanwhile.
    pub(super) fn events_of_time(
        &mut self,
        expired: Vec<(String, LockRecord)>,
        settled_first: &[Settled],
    ) -> Vec<Event> {
        let mut out = Vec::new();
        for (name, lease) in expired {
            out.push((
                EventKind::Expired,
                name,
                lease.worker_id,
                Some(lease.fencing_token),
            ));
        }
        settled_events(settled_first, &mut out);
        self.number(out)
    }

    /// Numbers the events of a command: its own (if it was executed, not a retry answered from
    /// memory), then the waiting requests it settled.
    pub(super) fn events_of_command(
        &mut self,
        command: &Command,
        answer: Option<&Answer>,
        settled_then: &[Settled],
    ) -> Vec<Event> {
        let mut out = Vec::new();
        match answer {
            Some(Answer::TxnDone { revisions }) => {
                if let Command::KvTxn(t) = command {
                    txn_events(t, revisions, &mut out);
                }
            }
            Some(Answer::SessionClosed { released, .. }) => {
                for (name, lease) in released {
                    let token = Some(lease.fencing_token);
                    let worker = lease.worker_id.clone();
                    out.push((EventKind::Released, name.clone(), worker, token));
                }
            }
            Some(answer) => {
                if let Some((name, holder)) = command.target() {
                    answer_event(name, holder, answer, &mut out);
                }
            }
            None => {}
        }
        settled_events(settled_then, &mut out);
        self.number(out)
    }

    /// Gives events the next revisions. A key's event names it as its `key`.
    fn number(&mut self, raw: Vec<Raw>) -> Vec<Event> {
        raw.into_iter()
            .map(|(event, name, worker_id, fencing_token)| {
                self.revision += 1;
                let (lock, key) = match event {
                    EventKind::Put | EventKind::Deleted => (String::new(), Some(name)),
                    _ => (name, None),
                };
                Event {
                    event,
                    lock,
                    key,
                    worker_id,
                    fencing_token,
                    revision: self.revision,
                }
            })
            .collect()
    }

    /// The revision of the last event: 0 before any.
    pub fn revision(&self) -> u64 {
        self.revision
    }
}

type Raw = (EventKind, String, String, Option<u64>);

/// A transaction's writes that changed a key, in order: the revisions the state gave them.
fn txn_events(t: &super::KvTxn, revisions: &[u64], out: &mut Vec<Raw>) {
    for (op, revision) in t.ops.iter().zip(revisions) {
        if *revision == 0 {
            continue;
        }
        let kind = match op {
            sentinel_core::kv::Op::Put { .. } => EventKind::Put,
            sentinel_core::kv::Op::Delete { .. } => EventKind::Deleted,
        };
        out.push((kind, op.key().to_string(), t.writer.clone(), None));
    }
}

fn settled_events(settled: &[Settled], out: &mut Vec<Raw>) {
    for s in settled {
        if let Answer::Granted { lease, .. } = &s.answer {
            out.push(granted(&s.name, lease));
        }
    }
}

fn granted(name: &str, lease: &LockRecord) -> Raw {
    let token = Some(lease.fencing_token);
    (
        EventKind::Acquired,
        name.to_string(),
        lease.worker_id.clone(),
        token,
    )
}

/// The event of a lock command's own answer, if it changed a hold or a queue.
fn answer_event(name: &str, holder: &str, answer: &Answer, out: &mut Vec<Raw>) {
    let released = |lease: &LockRecord| {
        let token = Some(lease.fencing_token);
        (
            EventKind::Released,
            name.to_string(),
            lease.worker_id.clone(),
            token,
        )
    };
    match answer {
        Answer::Granted {
            lease,
            adopted: false,
        } => out.push(granted(name, lease)),
        Answer::Queued { .. } => out.push((
            EventKind::Queued,
            name.to_string(),
            holder.to_string(),
            None,
        )),
        Answer::Released { lease } | Answer::Withdrawn { lease: Some(lease) } => {
            out.push(released(lease))
        }
        // The revision the state gave the write is the one this event gets (the first of the
        // command's events, numbered right after the command ran).
        Answer::KvWritten { .. } => {
            out.push((EventKind::Put, name.to_string(), holder.to_string(), None))
        }
        Answer::KvDeleted {
            revision: Some(_), ..
        } => out.push((
            EventKind::Deleted,
            name.to_string(),
            holder.to_string(),
            None,
        )),
        _ => {}
    }
}

impl Command {
    /// The lock and the holder a lock command acts on; `None` for a tick and for barrier
    /// arrivals (which hold nothing).
    fn target(&self) -> Option<(&str, &str)> {
        match self {
            Command::Acquire(a) | Command::Claim(super::Claim { acquire: a, .. }) => {
                Some((&a.name, &a.holder))
            }
            Command::Release(r) => Some((&r.name, &r.holder)),
            Command::Renew(r) => Some((&r.name, &r.holder)),
            Command::Withdraw(w) => Some((&w.name, &w.holder)),
            Command::KvPut(p) => Some((&p.key, &p.writer)),
            Command::KvDelete(d) => Some((&d.key, &d.writer)),
            Command::KvTxn(_)
            | Command::Arrive(_)
            | Command::OpenSession(_)
            | Command::KeepSession(_)
            | Command::CloseSession(_)
            | Command::Tick => None,
        }
    }

    /// The request id a command carries; `None` for a tick.
    pub(super) fn request_id(&self) -> Option<&str> {
        match self {
            Command::Acquire(a) | Command::Claim(super::Claim { acquire: a, .. }) => {
                Some(&a.request_id)
            }
            Command::Release(r) => Some(&r.request_id),
            Command::Renew(r) => Some(&r.request_id),
            Command::Withdraw(w) => Some(&w.request_id),
            Command::Arrive(a) => Some(&a.request_id),
            Command::OpenSession(o) => Some(&o.request_id),
            Command::KeepSession(c) | Command::CloseSession(c) => Some(&c.request_id),
            Command::KvPut(p) => Some(&p.request_id),
            Command::KvDelete(d) => Some(&d.request_id),
            Command::KvTxn(t) => Some(&t.request_id),
            Command::Tick => None,
        }
    }
}
