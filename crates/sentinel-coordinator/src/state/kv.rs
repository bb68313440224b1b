//! The key-value store: JSON values under keys, each write numbered by the state's revision.
//!
//! Keys live beside the locks in the one replicated state, so a write is ordered with every
//! lock command by the log, and numbered by the same revision as the watch stream's events: a
//! write's revision is its key's `mod_revision` and the revision of its `put` event, so a
//! watcher that saw revision R has seen every write up to R. Compare-and-set compares that
//! revision (0: the key must not exist). Merge writes ([`sentinel_core::kv::merge`]) combine
//! with the stored value here, where the writes are ordered, so that concurrent counters and
//! sets lose nothing.
//!
//! What a write may cost is decided here too, deterministically: every command carries the
//! leader's quota (`serve --kv-quota`), so nodes configured differently still apply the same
//! writes alike. The quota counts each key's bytes, its value's JSON and [`ENTRY_OVERHEAD`], so
//! that a flood of tiny keys is bounded like a few large ones.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use sentinel_core::kv::json_len;
use sentinel_core::kv::{MAX_VALUE_BYTES, Merge, Op, merge};

use super::{Answer, KvDelete, KvPut, KvTxn, Limit, LockState};

/// What a key costs in the quota beyond its key's and value's bytes: about what the map, the
/// strings and the value's nodes take in memory.
pub const ENTRY_OVERHEAD: u64 = 128;

/// A key's value and its revisions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvValue {
    /// The value.
    pub value: Value,
    /// The revision that created the key (since it last did not exist).
    pub create_revision: u64,
    /// The revision of its last write.
    pub mod_revision: u64,
    /// Writes since it was created: 1 after the first.
    pub version: u64,
    /// A key written with a TTL ends with it; `None`: it stays until deleted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<KeyLease>,
}

/// A key's TTL: it lives up to and including `renewed_ms + ttl_ms` of the state's time (as a
/// lock's lease does) and is gone after. Its last write renews it, and so does a new leader's
/// first command, as it does every lease: no key ends because no leader served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyLease {
    /// When its countdown last started, in ms of the state's time.
    pub renewed_ms: u64,
    /// Its length.
    pub ttl_ms: u64,
}

impl KeyLease {
    /// Its last live instant.
    pub fn expires_at_ms(&self) -> u64 {
        self.renewed_ms.saturating_add(self.ttl_ms)
    }
}

/// What `key` with `value` counts in the quota.
pub(super) fn cost(key: &str, value: &Value) -> u64 {
    key.len() as u64 + json_len(value) + ENTRY_OVERHEAD
}

impl LockState {
    /// The key's value, if it has one.
    pub fn kv_get(&self, key: &str) -> Option<&KvValue> {
        self.kv.get(key)
    }

    /// The keys starting with `prefix`, in order, after `after` (from the first for `None`).
    pub fn kv_range<'a>(
        &'a self,
        prefix: &'a str,
        after: Option<&str>,
    ) -> impl Iterator<Item = (&'a str, &'a KvValue)> + 'a {
        use std::ops::Bound;
        let start = match after {
            Some(a) if a >= prefix => Bound::Excluded(a.to_string()),
            _ => Bound::Included(prefix.to_string()),
        };
        self.kv
            .range((start, Bound::Unbounded))
            .take_while(move |(k, _)| k.starts_with(prefix))
            .map(|(k, v)| (k.as_str(), v))
    }

    /// What the store's keys take in the quota now.
    pub fn kv_bytes(&self) -> u64 {
        self.kv_bytes
    }

    /// A write: compared, merged, counted against the quota, then stored with the next
    /// revision (the revision its `put` event gets: the events of time passing are numbered
    /// before a command runs).
    pub(super) fn kv_put(&mut self, now: u64, p: &KvPut) -> Answer {
        let stored = self.kv.get(&p.key);
        if let Some(expected) = p.if_revision {
            let found = stored.map_or(0, |s| s.mod_revision);
            if found != expected {
                return Answer::CompareFailed { revision: found };
            }
        }
        let (value, after) = match self.merged(&p.key, stored, &p.value, p.merge) {
            Ok(merged) => merged,
            Err(why) => return Answer::MergeConflict { why },
        };
        let before = stored.map_or(0, |s| cost(&p.key, &s.value));
        let total = self.kv_bytes.saturating_sub(before).saturating_add(after);
        if after > before && total > p.quota {
            return Answer::Refused {
                limit: Limit::KvQuota,
            };
        }
        let revision = self.revision + 1;
        let (create_revision, version) = match stored {
            Some(s) => (s.create_revision, s.version + 1),
            None => (revision, 1),
        };
        // A counter's new count is answered; other values are not, so that the remembered
        // answer of a write (kept for its retries) stays small.
        let answered = match p.merge {
            Merge::Max | Merge::Min | Merge::Add => Some(value.clone()),
            _ => None,
        };
        self.kv_bytes = total;
        let lease = p.ttl_ms.map(|ttl_ms| KeyLease {
            renewed_ms: now,
            ttl_ms,
        });
        self.store_key(
            p.key.clone(),
            KvValue {
                value,
                create_revision,
                mod_revision: revision,
                version,
                lease,
            },
        );
        Answer::KvWritten {
            revision,
            value: answered,
        }
    }

    /// A delete, compared like a write; deleting a key that does not exist changes nothing.
    pub(super) fn kv_delete(&mut self, d: &KvDelete) -> Answer {
        let found = self.kv.get(&d.key).map_or(0, |s| s.mod_revision);
        if d.if_revision.is_some_and(|r| r != found) {
            return Answer::CompareFailed { revision: found };
        }
        match self.remove_key(&d.key) {
            Some(old) => {
                self.kv_bytes = self.kv_bytes.saturating_sub(cost(&d.key, &old.value));
                Answer::KvDeleted {
                    revision: Some(self.revision + 1),
                }
            }
            None => Answer::KvDeleted { revision: None },
        }
    }

    /// A transaction: its compares on the keys as they are, then its writes decided in order on
    /// an overlay of the keys they touch, taking consecutive revisions; only if every one can
    /// be made does the overlay replace the keys.
    pub(super) fn kv_txn(&mut self, t: &KvTxn) -> Answer {
        for (i, c) in t.compare.iter().enumerate() {
            let found = self.kv.get(&c.key).map(|v| (&v.value, v.mod_revision));
            if !c.holds(found) {
                return Answer::TxnFailed {
                    compare: i,
                    revision: found.map_or(0, |(_, r)| r),
                };
            }
        }
        let mut overlay: BTreeMap<&str, Option<KvValue>> = BTreeMap::new();
        let (mut bytes, mut revision) = (self.kv_bytes, self.revision);
        let mut revisions = Vec::with_capacity(t.ops.len());
        for op in &t.ops {
            let key = op.key();
            let stored = match overlay.get(key) {
                Some(written) => written.clone(),
                None => self.kv.get(key).cloned(),
            };
            let before = stored.as_ref().map_or(0, |s| cost(key, &s.value));
            match op {
                Op::Put {
                    value, merge: how, ..
                } => {
                    let (value, after) = match self.merged(key, stored.as_ref(), value, *how) {
                        Ok(merged) => merged,
                        Err(why) => return Answer::MergeConflict { why },
                    };
                    let total = bytes.saturating_sub(before).saturating_add(after);
                    if after > before && total > t.quota {
                        return Answer::Refused {
                            limit: Limit::KvQuota,
                        };
                    }
                    bytes = total;
                    revision += 1;
                    let (create_revision, version) = stored
                        .as_ref()
                        .map_or((revision, 1), |s| (s.create_revision, s.version + 1));
                    let v = KvValue {
                        value,
                        create_revision,
                        mod_revision: revision,
                        version,
                        lease: None,
                    };
                    overlay.insert(key, Some(v));
                    revisions.push(revision);
                }
                Op::Delete { .. } if stored.is_some() => {
                    bytes = bytes.saturating_sub(before);
                    revision += 1;
                    overlay.insert(key, None);
                    revisions.push(revision);
                }
                Op::Delete { .. } => revisions.push(0),
            }
        }
        for (key, v) in overlay {
            match v {
                Some(v) => self.store_key(key.to_string(), v),
                None => {
                    self.remove_key(key);
                }
            }
        }
        self.kv_bytes = bytes;
        Answer::TxnDone { revisions }
    }

    /// `value` merged into `stored` by `how`, and what the key then counts in the quota; why
    /// not (a merge conflict) when the stored value cannot take the merge or the result is too
    /// large.
    fn merged(
        &self,
        key: &str,
        stored: Option<&KvValue>,
        value: &Value,
        how: Merge,
    ) -> Result<(Value, u64), String> {
        let value = merge(stored.map(|s| &s.value), value.clone(), how)?;
        let bytes = json_len(&value);
        if bytes > MAX_VALUE_BYTES as u64 {
            return Err(format!(
                "the merged value would be {bytes} bytes of JSON; values are at most \
                 {MAX_VALUE_BYTES}"
            ));
        }
        Ok((value, key.len() as u64 + bytes + ENTRY_OVERHEAD))
    }

    /// Stores a key, keeping the expiry index: its old TTL's entry out, its new one's in.
    fn store_key(&mut self, key: String, v: KvValue) {
        if let Some(old) = self.kv.get(&key).and_then(|o| o.lease) {
            self.kv_expiries.remove(&(old.expires_at_ms(), key.clone()));
        }
        if let Some(lease) = v.lease {
            self.kv_expiries
                .insert((lease.expires_at_ms(), key.clone()));
        }
        self.kv.insert(key, v);
    }

    /// Removes a key and its expiry.
    fn remove_key(&mut self, key: &str) -> Option<KvValue> {
        let old = self.kv.remove(key)?;
        if let Some(lease) = old.lease {
            self.kv_expiries
                .remove(&(lease.expires_at_ms(), key.to_string()));
        }
        Some(old)
    }

    /// Ends the keys whose TTL ran out before `now`, in the order they ended, for their
    /// `expired` events.
    pub(super) fn end_keys(&mut self, now: u64) -> Vec<String> {
        let mut ended = Vec::new();
        while let Some((at, _)) = self.kv_expiries.first()
            && *at < now
        {
            let Some((_, key)) = self.kv_expiries.pop_first() else {
                break;
            };
            if let Some(old) = self.kv.remove(&key) {
                self.kv_bytes = self.kv_bytes.saturating_sub(cost(&key, &old.value));
            }
            ended.push(key);
        }
        ended
    }

    /// A new leader restarts every key's TTL from `now`, as every lease's.
    pub(super) fn renew_keys(&mut self, now: u64) {
        for v in self.kv.values_mut() {
            if let Some(lease) = &mut v.lease {
                lease.renewed_ms = lease.renewed_ms.max(now);
            }
        }
        self.kv_expiries = self.kv_index();
    }

    /// The expiry index the keys make.
    pub(super) fn kv_index(&self) -> BTreeSet<(u64, String)> {
        self.kv
            .iter()
            .filter_map(|(k, v)| Some((v.lease?.expires_at_ms(), k.clone())))
            .collect()
    }

    /// The quota's count of every key, for loading a snapshot and checking the invariants.
    pub(super) fn kv_cost(&self) -> u64 {
        self.kv.iter().map(|(k, v)| cost(k, &v.value)).sum()
    }
}
