//! Request ids: a request the state has answered is answered again, never executed twice.
//!
//! Clients retry after timeouts and changes of leader without knowing whether their first try
//! was applied. Remembering each answer by the client's request id (for a window of leader time,
//! and up to a count) turns every retry into a read of the first answer; a waiting acquire's
//! answer is `Queued` until the wait is settled.

use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest as _, Sha256};

use super::{Answer, Command, LockState, Settled, Withdraw};

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
    /// [`super::Command::Arrive`].
    Arrive,
    /// [`super::Command::OpenSession`], [`super::Command::KeepSession`],
    /// [`super::Command::CloseSession`].
    Session,
    /// [`super::Command::KvPut`], [`super::Command::KvDelete`].
    Kv,
}

/// A request whose answer is remembered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Remembered {
    pub(super) kind: RequestKind,
    pub(super) name: String,
    pub(super) holder: String,
    /// What the request asked, hashed ([`digest`]); a retry must ask the same. `None` for an
    /// acquire taken back before it arrived (any body of it is answered as withdrawn), and in
    /// snapshots written before digests were kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) digest: Option<Digest>,
    #[serde(rename = "outcome")]
    pub(super) answer: Answer,
}

/// What a request asked, without its request id: the first 16 bytes of the SHA-256 of the
/// command as JSON. A request id used again for a different body is not a retry.
fn digest(command: &Command) -> Digest {
    let mut fields = serde_json::to_value(command).unwrap_or_default();
    if let Some(fields) = fields.as_object_mut() {
        fields.remove("request_id");
    }
    let hash = Sha256::digest(fields.to_string().as_bytes());
    let mut first = [0; 16];
    first.copy_from_slice(&hash[..16]);
    Digest(first)
}

/// A request's [`digest`]: kept as its 16 bytes (one is remembered for each of up to
/// [`REQUEST_MEMORY`] requests), written in snapshots as 32 hex digits, as it always was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Digest([u8; 16]);

impl Serialize for Digest {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(self.0))
    }
}

impl<'de> Deserialize<'de> for Digest {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Digest, D::Error> {
        let text = String::deserialize(d)?;
        let mut bytes = [0; 16];
        hex::decode_to_slice(&text, &mut bytes)
            .map_err(|e| serde::de::Error::custom(format!("a request digest {text:?}: {e}")))?;
        Ok(Digest(bytes))
    }
}

impl LockState {
    /// Runs request `command` once: a request id the state remembers gets its answer, anything
    /// else is executed and its answer remembered. A remembered id used by another kind of
    /// request, on another lock, by another holder or with other values is refused: it cannot be
    /// a retry.
    pub(super) fn request(
        &mut self,
        id: &str,
        (kind, name, holder): (RequestKind, &str, &str),
        command: &Command,
        now: u64,
        run: impl FnOnce(&mut Self) -> Answer,
    ) -> Answer {
        let digest = digest(command);
        if let Some(r) = self.requests.get(id) {
            // An acquire or arrival withdrawn before it came is remembered as an acquire: the
            // withdrawal cannot tell which it takes back.
            let withdrawn_first = r.digest.is_none() && r.kind == RequestKind::Acquire;
            let same = (r.kind == kind || withdrawn_first && kind == RequestKind::Arrive)
                && r.name == name
                && r.holder == holder
                && r.digest.as_ref().is_none_or(|d| *d == digest);
            return if same {
                r.answer.clone()
            } else {
                Answer::RequestIdReused
            };
        }
        let answer = run(self);
        self.remember(id, (kind, name, holder), Some(digest), now, answer.clone());
        answer
    }

    /// Remembers the answer to request `id`; a settled one joins the answers forgotten in turn.
    pub(super) fn remember(
        &mut self,
        id: &str,
        (kind, name, holder): (RequestKind, &str, &str),
        digest: Option<Digest>,
        now: u64,
        answer: Answer,
    ) {
        // One copy of the id, shared by the map and the order of forgetting.
        let id: Arc<str> = Arc::from(id);
        if !matches!(answer, Answer::Queued { .. }) {
            self.settled.push_back((now, id.clone()));
        }
        let remembered = Remembered {
            kind,
            name: name.to_string(),
            holder: holder.to_string(),
            digest,
            answer,
        };
        self.requests.insert(id, remembered);
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
        if let Some(r) = self.requests.get_mut(id.as_str()) {
            r.answer = answer.clone();
        }
        let shared = self
            .requests
            .get_key_value(id.as_str())
            .map(|(k, _)| k.clone());
        self.settled
            .push_back((now, shared.unwrap_or_else(|| Arc::from(id.as_str()))));
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
                self.requests.remove(&*id);
            }
        }
    }

    /// Whether `w` is a new withdrawal of a request of `kind` that still waits (in a queue, at
    /// a barrier), by its holder on its name.
    pub(super) fn withdraws_a_waiting(&self, w: &Withdraw, kind: RequestKind) -> bool {
        !self.requests.contains_key(w.request_id.as_str())
            && self.requests.get(w.acquire_id.as_str()).is_some_and(|r| {
                r.kind == kind
                    && r.name == w.name
                    && r.holder == w.holder
                    && matches!(r.answer, Answer::Queued { .. })
            })
    }

    /// The answer remembered for a request id: `Queued` while it waits, then its final answer.
    pub fn answer(&self, request_id: &str) -> Option<&Answer> {
        self.requests.get(request_id).map(|r| &r.answer)
    }
}

#[cfg(test)]
mod tests {
    use super::Digest;

    /// Snapshots keep the digest as the 32 hex digits they always had; anything else is refused.
    #[test]
    fn a_digest_is_written_and_read_as_32_hex_digits() {
        let digest = Digest(*b"\x00\x01\x02\x03\x04\x05\x06\x07\x08\x09\x0a\x0b\x0c\x0d\xfe\xff");
        let text = serde_json::to_string(&digest).unwrap();
        assert_eq!(text, "\"000102030405060708090a0b0c0dfeff\"");
        assert_eq!(serde_json::from_str::<Digest>(&text).unwrap(), digest);
        for bad in ["\"00\"", "\"zz0102030405060708090a0b0c0dfeff\"", "16"] {
            assert!(serde_json::from_str::<Digest>(bad).is_err(), "{bad}");
        }
    }
}
