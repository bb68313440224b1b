//! A small JSON-over-HTTP client for the sentinel and etcd rows, the start-up checks and the
//! failover probe: one keep-alive connection pool per benchmark client, like separate processes.
//! It is the coordinator's own pooled client and exchange (connect deadline, `TCP_NODELAY`, a
//! deadline for the whole answer), with JSON on top.

use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, header::CONTENT_TYPE};
use http_body_util::Full;
use sentinel::proto::http::{self as network, HttpClient};
use serde_json::Value;

/// The status and the body: JSON when it parses, else the text as a JSON string (for messages).
pub type Answer = (u16, Value);

pub struct Http {
    client: HttpClient,
    timeout: Duration,
}

impl Http {
    /// A client whose requests give up after `timeout`, so a hung server cannot hang the run.
    pub fn new(timeout: Duration) -> Http {
        Http {
            client: network::http_client(),
            timeout,
        }
    }

    pub async fn get(&self, url: &str) -> Result<Answer, String> {
        self.send(Method::GET, url, Bytes::new()).await
    }

    pub async fn post(&self, url: &str, body: &Value) -> Result<Answer, String> {
        self.send(Method::POST, url, Bytes::from(body.to_string()))
            .await
    }

    pub async fn put(&self, url: &str, body: &Value) -> Result<Answer, String> {
        self.send(Method::PUT, url, Bytes::from(body.to_string()))
            .await
    }

    async fn send(&self, method: Method, url: &str, body: Bytes) -> Result<Answer, String> {
        let request = Request::builder()
            .method(method)
            .uri(url)
            .header(CONTENT_TYPE, "application/json")
            .body(Full::new(body))
            .map_err(|e| format!("{url}: {e}"))?;
        let (status, _, bytes) = network::exchange(&self.client, request, self.timeout)
            .await
            .map_err(|e| e.to_string())?;
        let body = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
        Ok((status.as_u16(), body))
    }
}
