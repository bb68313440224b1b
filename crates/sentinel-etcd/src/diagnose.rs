//! `sentinel doctor`'s look at an etcd cluster: each endpoint's status (its version, whether it
//! knows a leader) and a read under the key prefix, which a cluster with authentication refuses.
//! Writes nothing.

use serde::Deserialize;
use serde_json::json;

use sentinel_core::diagnose::{self, Check};
use sentinel_core::error::Error;

use crate::EtcdBackend;
use crate::gateway::{self, Gateway, b64, prefix_end};

/// `/v3/maintenance/status`'s answer, the fields shown.
#[derive(Deserialize)]
struct EndpointStatus {
    #[serde(default)]
    version: String,
    /// The leader's member id, a uint64 as a JSON string; absent or `"0"` without a leader.
    #[serde(default)]
    leader: serde_json::Value,
}

/// `/v3/kv/range`'s answer to a count.
#[derive(Deserialize)]
struct Counted {
    #[serde(default, deserialize_with = "gateway::int64")]
    count: i64,
}

impl EtcdBackend {
    /// `sentinel doctor`'s checks: every endpoint asked on its own (the backend fails over, so
    /// one that answers is enough), then a count of the keys under the prefix through the
    /// failover.
    pub async fn diagnose(&self) -> Vec<Check> {
        let mut endpoints = Vec::new();
        for url in self.gw().endpoints() {
            let one = Gateway::new(vec![url.clone()]);
            let status = one
                .call::<EndpointStatus>("a status check", "/v3/maintenance/status", &json!({}))
                .await
                .and_then(|s| match &s.leader {
                    serde_json::Value::String(l) if l != "0" => Ok(format!("etcd {}", s.version)),
                    serde_json::Value::Number(l) if l.as_u64() != Some(0) => {
                        Ok(format!("etcd {}", s.version))
                    }
                    _ => Err(Error::Unavailable(format!(
                        "etcd {} at {url} knows no leader: the cluster is electing one, or too \
                         few members are up",
                        s.version
                    ))),
                });
            endpoints.push((format!("endpoint {url}"), status));
        }
        let mut checks = diagnose::endpoints(endpoints);
        let prefix = self.inner.prefix.as_bytes();
        let read = self
            .gw()
            .call::<Counted>(
                "a read",
                "/v3/kv/range",
                &json!({"key": b64(prefix), "range_end": b64(&prefix_end(prefix)), "count_only": true}),
            )
            .await
            .map(|c| {
                format!(
                    "{} key(s) under {:?} (held locks)",
                    c.count, self.inner.prefix
                )
            });
        checks.push(Check::of("keys", read));
        checks
    }
}
