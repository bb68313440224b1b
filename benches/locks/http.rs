//! A small JSON-over-HTTP client for the sentinel and etcd rows, the start-up checks and the
//! failover probe: one keep-alive connection pool per benchmark client, like separate processes.

use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, header::CONTENT_TYPE};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

/// The status and the body: JSON when it parses, else the text as a JSON string (for messages).
pub type Answer = (u16, Value);

pub struct Http {
    client: Client<HttpConnector, Full<Bytes>>,
    timeout: Duration,
}

impl Http {
    /// A client whose requests give up after `timeout`, so a hung server cannot hang the run.
    pub fn new(timeout: Duration) -> Http {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(Duration::from_secs(1)));
        // Small requests on a kept-alive connection: without it, Nagle's algorithm and delayed
        // ACKs add tens of milliseconds to some answers.
        connector.set_nodelay(true);
        Http {
            client: Client::builder(TokioExecutor::new()).build(connector),
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

    async fn send(&self, method: Method, url: &str, body: Bytes) -> Result<Answer, String> {
        let request = Request::builder()
            .method(method)
            .uri(url)
            .header(CONTENT_TYPE, "application/json")
            .body(Full::new(body))
            .map_err(|e| format!("{url}: {e}"))?;
        let exchange = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|e| format!("{url}: {e}"))?;
            let status = response.status().as_u16();
            let bytes = response
                .into_body()
                .collect()
                .await
                .map_err(|e| format!("{url}: reading the answer: {e}"))?
                .to_bytes();
            let body = serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
            Ok((status, body))
        };
        tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| format!("{url}: no answer within {:?}", self.timeout))?
    }
}
