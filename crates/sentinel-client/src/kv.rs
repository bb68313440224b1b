//! The coordinator's key-value store: `PUT`, `GET` and `DELETE /kv/{key}`, and `GET /kv` a page
//! of keys at a time.
//!
//! Writes go through the same failover as the locks' requests, under one request id per
//! operation that every retry reuses: a write the coordinator applied but whose answer was lost
//! is answered again from the coordinator's memory instead of being applied twice, so an `add`
//! retried after a failover counts once.
//!
//! The key, the value's size and the merge's kind of value ([`sentinel_core::kv`]) are checked
//! here before anything is sent: a value too large for any coordinator is refused at once (exit
//! 2), not after a round trip per node. A compare that met another revision, and a merge the
//! stored value cannot take, are [`Error::Conflict`] (exit 3) that say what the key holds, as a
//! held lock is; the store's quota is the locks' limit's error (429, exit 8).

use std::time::Duration;

use bytes::Bytes;
use http::{Method, StatusCode};
use serde_json::Value;

use sentinel_core::error::{Error, Result};
use sentinel_core::kv::{Merge, validate_key, value_bytes};
use sentinel_proto::api::{
    KvDeleteBody, KvDeleted, KvEntry, KvPage, KvPutBody, KvRead, KvWritten, code,
};

use super::{Answer, ServerBackend, encode, json, request_id};

impl ServerBackend {
    /// The key and its value as the leader has it; `None` when the key does not exist.
    ///
    /// # Errors
    ///
    /// [`Error::Usage`] for an invalid key; the coordinator's errors as for the locks.
    pub async fn kv_get(&self, key: &str) -> Result<Option<KvRead>> {
        validate_key(key)?;
        let answer = self.kv_call(Method::GET, key, None).await?;
        match answer.status {
            StatusCode::OK => answer.parse("get").map(Some),
            StatusCode::NOT_FOUND if answer.error().code == code::KEY_NOT_FOUND => Ok(None),
            _ => Err(self.fail(&answer)),
        }
    }

    /// Writes `value` to `key`, combined with the stored value as `merge` says; with
    /// `if_revision`, only if the key's `mod_revision` is that one (0: only if it does not
    /// exist). With `ttl`, the key ends that long after the write unless written again.
    /// `writer` is who writes, as the key's watch events show it.
    ///
    /// # Errors
    ///
    /// [`Error::Usage`] for an invalid key, a value too large or of a kind `merge` does not
    /// take; [`Error::Conflict`] when the compare failed or the stored value cannot take the
    /// merge; [`Error::Unavailable`] when the store is full (its quota).
    pub async fn kv_put(
        &self,
        key: &str,
        value: Value,
        merge: Merge,
        if_revision: Option<u64>,
        ttl: Option<Duration>,
        writer: Option<&str>,
    ) -> Result<KvWritten> {
        validate_key(key)?;
        value_bytes(&value)?;
        if let Some(why) = merge.refuses(&value) {
            return Err(Error::usage(why));
        }
        let body = KvPutBody {
            value,
            if_revision,
            merge,
            writer: writer.map(str::to_string),
            ttl_ms: ttl.map(|t| u64::try_from(t.as_millis()).unwrap_or(u64::MAX)),
            request_id: Some(request_id()),
        };
        let answer = self.kv_call(Method::PUT, key, Some(json(&body)?)).await?;
        match answer.status {
            StatusCode::OK => answer.parse("put"),
            _ => Err(self.kv_refused(key, if_revision, &answer)),
        }
    }

    /// Deletes `key`; with `if_revision`, only if its `mod_revision` is that one. Deleting a key
    /// that does not exist succeeds with `deleted: false`.
    ///
    /// # Errors
    ///
    /// [`Error::Usage`] for an invalid key; [`Error::Conflict`] when the compare failed.
    pub async fn kv_delete(
        &self,
        key: &str,
        if_revision: Option<u64>,
        writer: Option<&str>,
    ) -> Result<KvDeleted> {
        validate_key(key)?;
        let body = KvDeleteBody {
            if_revision,
            writer: writer.map(str::to_string),
            request_id: Some(request_id()),
        };
        let answer = self
            .kv_call(Method::DELETE, key, Some(json(&body)?))
            .await?;
        match answer.status {
            StatusCode::OK => answer.parse("delete"),
            _ => Err(self.kv_refused(key, if_revision, &answer)),
        }
    }

    /// One page of the keys that start with `prefix` ("" for all), in key order, after the key
    /// `after`; `limit` keys at most (none: the coordinator's page).
    ///
    /// # Errors
    ///
    /// The coordinator's errors as for the locks.
    pub async fn kv_page(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: Option<usize>,
    ) -> Result<KvPage> {
        let mut path = format!("/kv?prefix={}", encode(prefix));
        if let Some(after) = after {
            path.push_str(&format!("&after={}", encode(after)));
        }
        if let Some(limit) = limit {
            path.push_str(&format!("&limit={limit}"));
        }
        let answer = self.call(Method::GET, &path, None, Duration::ZERO).await?;
        match answer.status {
            StatusCode::OK => answer.parse("list"),
            _ => Err(self.fail(&answer)),
        }
    }

    /// Every key that starts with `prefix`, in key order, read a page at a time. Pages are read
    /// at different revisions: a key written meanwhile may show its old or its new value.
    ///
    /// # Errors
    ///
    /// As [`ServerBackend::kv_page`]; [`Error::Unexpected`] if a page's `next` does not move
    /// past the last one's (a listing that would never end).
    pub async fn kv_list(&self, prefix: &str) -> Result<Vec<KvEntry>> {
        let mut all = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let page = self.kv_page(prefix, after.as_deref(), None).await?;
            all.extend(page.keys);
            match page.next {
                None => return Ok(all),
                Some(next) if after.as_ref().is_some_and(|a| next <= *a) => {
                    return Err(Error::Unexpected(format!(
                        "the sentinel server's listing of {prefix:?} went back to {next:?} after \
                         {after:?}"
                    )));
                }
                next => after = next,
            }
        }
    }

    /// `METHOD /kv/{key}`, the key one percent-encoded path segment whatever it holds.
    async fn kv_call(&self, method: Method, key: &str, body: Option<Bytes>) -> Result<Answer> {
        let path = format!("/kv/{}", encode(key));
        self.call(method, &path, body, Duration::ZERO).await
    }

    /// Why a write of `key` under the compare `if_revision` was refused.
    fn kv_refused(&self, key: &str, if_revision: Option<u64>, answer: &Answer) -> Error {
        let e = answer.error();
        match (answer.status, e.code.as_str(), if_revision) {
            (StatusCode::CONFLICT, code::COMPARE_FAILED, Some(wanted)) => {
                compare_failed(key, wanted, e.revision.unwrap_or(0))
            }
            // The message names the key and why its value cannot take the merge.
            (StatusCode::CONFLICT, code::MERGE_CONFLICT, _) => {
                Error::Conflict(format!("sentinel server: {}", e.message))
            }
            _ => self.fail(answer),
        }
    }
}

/// A compare of `key` against `wanted` that found it at revision `at` (0: it does not exist).
fn compare_failed(key: &str, wanted: u64, at: u64) -> Error {
    Error::Conflict(match (wanted, at) {
        (0, _) => {
            format!("key {key:?} exists (at revision {at}); revision 0 writes only a new key")
        }
        (wanted, 0) => format!("key {key:?} does not exist (not at revision {wanted})"),
        (wanted, at) => format!("key {key:?} is at revision {at}, not {wanted}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_compare_names_both_revisions() {
        let says = |wanted, at| compare_failed("jobs/a b", wanted, at).to_string();
        assert_eq!(says(5, 7), r#"key "jobs/a b" is at revision 7, not 5"#);
        assert!(says(5, 0).contains("does not exist"), "{}", says(5, 0));
        assert!(
            says(0, 3).contains("exists (at revision 3)"),
            "{}",
            says(0, 3)
        );
        assert_eq!(compare_failed("k", 1, 2).exit_code().code(), 3);
    }
}
