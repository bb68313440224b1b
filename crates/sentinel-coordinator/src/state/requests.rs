//! Request ids: a request the state has answered is answered again, never executed twice.
//!
//! Clients retry after timeouts and changes of leader without knowing whether their first try
//! was applied. Remembering each answer by the client's request id (for a window of leader time,
//! and up to a count) turns every retry into a read of the first answer; a waiting acquire's
//! answer is `Queued` until the wait is settled.

use serde::{Deserialize, Serialize};

use super::{Answer, LockState, Settled};

/// How long (leader time) a settled answer is remembered for retries of its request.
pub const REQUEST_WINDOW_MS: u64 = 60_000;

/// Most settled answers remembered; the oldest are forgotten first.
pub const REQUEST_MEMORY: usize = 100_000;

/// Which kind of request a request id was first used for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RequestKind {
    /// [`super::Command::Acquire`].
    Acquire,
    /// [`super::Command::Release`].
    Release,
    /// [`super::Command::Renew`].
    Renew,
    /// [`super::Command::Withdraw`].
    Withdraw,
}

/// A request whose answer is remembered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Remembered {
    pub(super) kind: RequestKind,
    pub(super) name: String,
    pub(super) holder: String,
    #[serde(rename = "outcome")]
    pub(super) answer: Answer,
}

impl LockState {
    /// Runs a request once: a request id the state remembers gets its answer, anything else is
    /// executed and its answer remembered. A remembered id used by another kind of request, on
    /// another lock or by another holder is refused: it cannot be a retry.
    pub(super) fn request(
        &mut self,
        id: &str,
        (kind, name, holder): (RequestKind, &str, &str),
        now: u64,
        run: impl FnOnce(&mut Self) -> Answer,
    ) -> Answer {
        if let Some(r) = self.requests.get(id) {
            return if r.kind == kind && r.name == name && r.holder == holder {
                r.answer.clone()
            } else {
                Answer::RequestIdReused
            };
        }
        let answer = run(self);
        self.remember(id, (kind, name, holder), now, answer.clone());
        answer
    }

    /// Remembers the answer to request `id`; a settled one joins the answers forgotten in turn.
    pub(super) fn remember(
        &mut self,
        id: &str,
        (kind, name, holder): (RequestKind, &str, &str),
        now: u64,
        answer: Answer,
    ) {
        if !matches!(answer, Answer::Queued { .. }) {
            self.settled.push_back((now, id.to_string()));
        }
        let remembered = Remembered {
            kind,
            name: name.to_string(),
            holder: holder.to_string(),
            answer,
        };
        self.requests.insert(id.to_string(), remembered);
    }

    /// Gives a waiting request its final answer.
    pub(super) fn settle(
        &mut self,
        now: u64,
        name: &str,
        id: String,
        answer: Answer,
        settled: &mut Vec<Settled>,
    ) {
        if let Some(r) = self.requests.get_mut(&id) {
            r.answer = answer.clone();
        }
        self.settled.push_back((now, id.clone()));
        settled.push(Settled {
            request_id: id,
            name: name.to_string(),
            answer,
        });
    }

    /// Forgets the answers older than the window, and the oldest beyond the memory's size.
    pub(super) fn forget(&mut self, now: u64) {
        while let Some((at, _)) = self.settled.front() {
            if self.settled.len() <= REQUEST_MEMORY && at.saturating_add(REQUEST_WINDOW_MS) >= now {
                break;
            }
            if let Some((_, id)) = self.settled.pop_front() {
                self.requests.remove(&id);
            }
        }
    }

    /// The answer remembered for a request id: `Queued` while it waits, then its final answer.
    pub fn answer(&self, request_id: &str) -> Option<&Answer> {
        self.requests.get(request_id).map(|r| &r.answer)
    }
}
