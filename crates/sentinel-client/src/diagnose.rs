//! `sentinel doctor`'s look at a coordinator cluster: every `--server` node's `GET /health` on
//! its own, then one read of the lock table through the failover, which a node refuses without
//! the cluster's token (`/health` answers without one). Takes no lock.

use std::time::Duration;

use bytes::Bytes;
use http::header::AUTHORIZATION;
use http::{Method, StatusCode};
use http_body_util::Full;
use serde_json::Value;

use sentinel_core::diagnose::{self, Check};
use sentinel_core::error::{Error, Result};
use sentinel_proto::api::ErrorBody;
use sentinel_proto::http::{self as network, Failure};

use crate::{REQUEST_TIMEOUT, ServerBackend};

impl ServerBackend {
    /// `sentinel doctor`'s checks: each node's health (the client fails over, so one node that
    /// serves is enough), then whether the cluster accepts this client's token.
    pub async fn diagnose(&self) -> Vec<Check> {
        let mut nodes = Vec::new();
        for server in &self.servers {
            nodes.push((format!("health {server}"), self.health(server).await));
        }
        let serving = nodes.iter().any(|(_, r)| r.is_ok());
        let mut checks = diagnose::endpoints(nodes);
        if serving {
            let read = self
                .call(Method::GET, "/locks?limit=1", None, Duration::ZERO)
                .await
                .and_then(|answer| match answer.status {
                    StatusCode::OK if self.auth.is_some() => {
                        Ok("the cluster accepts the client token".to_string())
                    }
                    StatusCode::OK => Ok("the cluster requires no client token".to_string()),
                    _ => Err(self.fail(&answer)),
                });
            checks.push(Check::of("authorization", read));
        }
        checks
    }

    /// One node's `GET /health`: what it says of itself and its leader, or why it does not serve.
    async fn health(&self, server: &str) -> Result<String> {
        let mut request = http::Request::builder()
            .method(Method::GET)
            .uri(format!("{server}/health"));
        if let Some(auth) = &self.auth {
            request = request.header(AUTHORIZATION, auth.clone());
        }
        let request = request
            .body(Full::new(Bytes::new()))
            .map_err(|e| Error::Unexpected(format!("cannot build a request: {e}")))?;
        let (status, _, bytes) = network::exchange(&self.client, request, REQUEST_TIMEOUT)
            .await
            .map_err(|f| match f {
                Failure::Tls(e) => Error::Auth(format!(
                    "a configuration problem, not an outage: {e}; check --ca-cert, \
                     --client-cert and --client-key"
                )),
                f @ (Failure::Unreachable(_) | Failure::Lost(_)) => {
                    Error::Unavailable(f.to_string())
                }
            })?;
        let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        match status {
            // Without the cluster's token a node says only whether it serves.
            StatusCode::OK if body.get("id").is_none() => Ok("serves".into()),
            StatusCode::OK => Ok(format!(
                "node {} ({}), leader {}, term {}",
                body["id"],
                field(&body["state"]),
                body["leader"],
                body["term"]
            )),
            StatusCode::SERVICE_UNAVAILABLE => {
                let e: ErrorBody = serde_json::from_value(body).unwrap_or_default();
                Err(Error::Unavailable(format!(
                    "{server}: {} ({})",
                    e.message, e.code
                )))
            }
            s => Err(Error::Unexpected(format!(
                "{server} answered HTTP {} to GET /health: is it a sentinel serve node?",
                s.as_u16()
            ))),
        }
    }
}

/// A JSON string without its quotes.
fn field(v: &Value) -> String {
    v.as_str().map_or_else(|| v.to_string(), str::to_string)
}
