//! Sessions (Consul's sessions, etcd's leases): one lease that many holds share, kept alive by
//! one renewal for all of them.
//!
//! A client opens a session with a TTL and takes holds "in" it. Each such hold's lease is the
//! session's: when it is granted (at once or from a queue) its lease is set to end exactly when
//! the session does, and each renewal of the session renews every hold in it to the same end.
//! So a session that is not renewed in time ends with all its holds at one instant, through the
//! ordinary ending of leases (their waiters get them, watchers see `expired`); closing a session
//! releases its holds. A session is its opener's: renewals and the close name its holder.
//!
//! The session's id is the position of the command that opened it, like a fencing token: unique
//! and never reused.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use sentinel_core::table::LockRecord;

use super::{Answer, Limit, LockState, Release, Renew, Settled};

/// Most sessions open at once.
pub const MAX_SESSIONS: usize = 100_000;

/// An open session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    /// Whose it is.
    pub holder: String,
    /// Its lease: it ends this long after its last renewal.
    pub ttl_ms: u64,
    /// Its last renewal (leader time).
    pub heartbeat_ms: u64,
    /// The holds taken in it, `(lock, fencing token)`; one that ended is dropped at the next
    /// renewal or close.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub holds: BTreeSet<(String, u64)>,
}

impl Session {
    /// Its last live instant.
    pub fn expires_at_ms(&self) -> u64 {
        self.heartbeat_ms.saturating_add(self.ttl_ms)
    }
}

/// Open a session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpenSession {
    /// The client's id for this request.
    pub request_id: String,
    /// Whose it is.
    pub holder: String,
    /// Its lease.
    pub ttl_ms: u64,
}

/// Renew or close a session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionCall {
    /// The client's id for this request.
    pub request_id: String,
    /// The session's holder.
    pub holder: String,
    /// The session's id.
    pub session: u64,
}

impl LockState {
    pub(super) fn open_session(&mut self, at: u64, now: u64, o: &OpenSession) -> Answer {
        if self.sessions.len() >= MAX_SESSIONS {
            return Answer::Refused {
                limit: Limit::Sessions,
            };
        }
        let session = Session {
            holder: o.holder.clone(),
            ttl_ms: o.ttl_ms,
            heartbeat_ms: now,
            holds: BTreeSet::new(),
        };
        self.session_expiries.insert((session.expires_at_ms(), at));
        let expires_at_ms = session.expires_at_ms();
        self.sessions.insert(at, session);
        Answer::Session {
            session: at,
            expires_at_ms,
        }
    }

    /// The live session `id` of `holder`, if there is one.
    pub(super) fn live_session(&self, id: u64, holder: &str) -> Option<&Session> {
        self.sessions.get(&id).filter(|s| s.holder == holder)
    }

    /// Renews session `c` and every hold in it.
    pub(super) fn keep_session(&mut self, now: u64, c: &SessionCall) -> Answer {
        let Some(s) = self.live_session(c.session, &c.holder) else {
            return Answer::NoSession;
        };
        let (old, ttl, holds) = (s.expires_at_ms(), s.ttl_ms, s.holds.clone());
        let kept = holds
            .into_iter()
            .filter(|(name, token)| {
                let renew = Renew {
                    request_id: String::new(),
                    name: name.clone(),
                    holder: c.holder.clone(),
                    token: *token,
                    ttl_ms: Some(ttl),
                    value: None,
                    session: None,
                };
                matches!(self.renew(now, &renew), Answer::Renewed { .. })
            })
            .collect();
        let Some(s) = self.sessions.get_mut(&c.session) else {
            return Answer::NoSession;
        };
        s.heartbeat_ms = now;
        let ended: Vec<_> = s.holds.difference(&kept).cloned().collect();
        s.holds = kept;
        let expires_at_ms = s.expires_at_ms();
        self.unbind(c.session, ended);
        self.session_expiries.remove(&(old, c.session));
        self.session_expiries.insert((expires_at_ms, c.session));
        Answer::Session {
            session: c.session,
            expires_at_ms,
        }
    }

    /// Closes session `c`, releasing every hold in it (but one granted by this very entry,
    /// which no command of it can name: it ends with its lease).
    pub(super) fn close_session(
        &mut self,
        (at, first): (u64, u64),
        now: u64,
        c: &SessionCall,
        settled: &mut Vec<Settled>,
    ) -> Answer {
        if self.live_session(c.session, &c.holder).is_none() {
            return Answer::NoSession;
        }
        let Some(s) = self.sessions.remove(&c.session) else {
            return Answer::NoSession;
        };
        self.session_expiries
            .remove(&(s.expires_at_ms(), c.session));
        self.unbind(c.session, s.holds.iter().cloned());
        let mut released = Vec::new();
        for (name, token) in s.holds {
            let release = Release {
                request_id: String::new(),
                name: name.clone(),
                holder: c.holder.clone(),
                token,
            };
            if let Answer::Released { lease } = self.release((at, first), now, &release, settled) {
                released.push((name, lease));
            }
        }
        Answer::SessionClosed {
            session: c.session,
            released,
        }
    }

    /// A hold granted in session `id` (to request `request_id`): its lease becomes the
    /// session's, and the session keeps it. Returns the lease as it is now.
    pub(super) fn bind(
        &mut self,
        id: u64,
        name: &str,
        request_id: &str,
        lease: LockRecord,
    ) -> LockRecord {
        let Some(s) = self.sessions.get(&id) else {
            return lease;
        };
        let (heartbeat, ttl) = (s.heartbeat_ms, s.ttl_ms);
        let renew = Renew {
            request_id: String::new(),
            name: name.to_string(),
            holder: lease.worker_id.clone(),
            token: lease.fencing_token,
            ttl_ms: Some(ttl),
            value: None,
            session: None,
        };
        let Answer::Renewed { lease: bound } = self.renew(heartbeat, &renew) else {
            return lease;
        };
        let hold = (name.to_string(), bound.fencing_token);
        if let Some(s) = self.sessions.get_mut(&id) {
            s.holds.insert(hold.clone());
        }
        // Moved out of the session that kept it before, so closing that one leaves it alone.
        if let Some(before) = self.session_holds.insert(hold.clone(), id)
            && before != id
            && let Some(s) = self.sessions.get_mut(&before)
        {
            s.holds.remove(&hold);
        }
        if let Some(r) = self.requests.get_mut(request_id)
            && let Answer::Granted { lease, .. } = &mut r.answer
        {
            *lease = bound.clone();
        }
        bound
    }

    /// A session that was not renewed in time ends (its key is already out of the index); its
    /// holds end with their own leases, at the same instant.
    pub(super) fn end_session(&mut self, id: u64) {
        if let Some(s) = self.sessions.remove(&id) {
            self.unbind(id, s.holds);
        }
    }

    /// Renewal `r`, and with a session named, the hold's move into it: refused unless the
    /// session is the holder's and open; from then on the hold's lease is the session's. This
    /// is how holds taken one by one (`sentinel claim`) come to share one keep-alive.
    pub(super) fn renew_in_session(&mut self, now: u64, r: &Renew) -> Answer {
        let Some(id) = r.session else {
            return self.renew(now, r);
        };
        if self.live_session(id, &r.holder).is_none() {
            return Answer::NoSession;
        }
        match self.renew(now, r) {
            Answer::Renewed { lease } => Answer::Renewed {
                lease: self.bind(id, &r.name, &r.request_id, lease),
            },
            other => other,
        }
    }

    /// Forgets that session `id` keeps `holds` (they ended, or it did).
    fn unbind(&mut self, id: u64, holds: impl IntoIterator<Item = (String, u64)>) {
        for hold in holds {
            if self.session_holds.get(&hold) == Some(&id) {
                self.session_holds.remove(&hold);
            }
        }
    }

    /// An open session.
    pub fn session(&self, id: u64) -> Option<&Session> {
        self.sessions.get(&id)
    }

    /// Which session keeps each hold in one, rebuilt from the sessions; `None` if a hold is in
    /// two.
    pub(super) fn session_hold_index(&self) -> Option<BTreeMap<(String, u64), u64>> {
        let mut index = BTreeMap::new();
        for (id, s) in &self.sessions {
            for hold in &s.holds {
                if index.insert(hold.clone(), *id).is_some() {
                    return None;
                }
            }
        }
        Some(index)
    }

    /// The index of every session's expiry, rebuilt from the sessions.
    pub(super) fn session_index(&self) -> BTreeSet<(u64, u64)> {
        self.sessions
            .iter()
            .map(|(id, s)| (s.expires_at_ms(), *id))
            .collect()
    }
}
