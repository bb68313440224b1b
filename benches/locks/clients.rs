//! What one benchmark client does per operation on each system: acquire a lock by name, then
//! release it with the proof of ownership that system uses. Each client has its own connection
//! (or pool), as separate processes would.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use redis::Script;
use redis::aio::MultiplexedConnection;
use sentinel::backend::LockBackend;
use sentinel::distributed::{DistributedLock, LockClient};
use serde_json::{Value, json};

use crate::http::Http;

/// The lease every operation asks for: far longer than an operation, so no lease runs out
/// between an acquire and its release.
pub const TTL: Duration = Duration::from_secs(30);

/// How one operation ended; an error is an `Err`.
pub enum Outcome {
    /// Acquired and released.
    Done,
    /// Someone else held the lock; nothing was acquired.
    Busy,
}

pub trait Client: Send + 'static {
    /// Acquires and releases lock number `n` of the name pool.
    fn op(&mut self, n: u64) -> impl Future<Output = Result<Outcome, String>> + Send;
}

/// sentinel's HTTP API, as any HTTP client would use it: `POST /locks/{name}/acquire`, then
/// `POST /locks/{name}/release` with the fencing token the acquire returned.
pub struct SentinelHttp {
    pub http: Http,
    /// The node this client sends to.
    pub url: String,
    pub holder: String,
}

impl Client for SentinelHttp {
    async fn op(&mut self, n: u64) -> Result<Outcome, String> {
        let lock = format!("{}/locks/bench-{n}", self.url);
        let (status, body) = self
            .http
            .post(
                &format!("{lock}/acquire"),
                &json!({"holder": self.holder, "ttl_ms": TTL.as_millis() as u64}),
            )
            .await?;
        match status {
            200 => {}
            409 if body["code"] == "lock_held" => return Ok(Outcome::Busy),
            _ => return Err(format!("acquire: {status} {body}")),
        }
        let token = body["holder"]["fencing_token"]
            .as_u64()
            .ok_or_else(|| format!("acquire: no fencing token in {body}"))?;
        match self
            .http
            .post(
                &format!("{lock}/release"),
                &json!({"holder": self.holder, "token": token}),
            )
            .await?
        {
            (200, _) => Ok(Outcome::Done),
            (status, body) => Err(format!("release: {status} {body}")),
        }
    }
}

/// etcd's lock service through its v3 JSON gateway: `/v3/lock/lock` with the client's lease
/// (granted once), then `/v3/lock/unlock` with the key the lock returned. etcd's lock waits for
/// a held name instead of refusing, so this row never counts a busy lock.
pub struct Etcd {
    http: Http,
    url: String,
    lease: Value,
}

impl Etcd {
    /// A client with a lease of its own that outlasts the run.
    pub async fn new(http: Http, url: &str, lease_secs: u64) -> Result<Etcd, String> {
        let (status, body) = http
            .post(
                &format!("{url}/v3/lease/grant"),
                &json!({"TTL": lease_secs}),
            )
            .await?;
        // int64 fields come as JSON strings; passed back as they came.
        let lease = body["ID"].clone();
        if status != 200 || lease.is_null() {
            return Err(format!("lease grant: {status} {body}"));
        }
        Ok(Etcd {
            http,
            url: url.to_string(),
            lease,
        })
    }
}

impl Client for Etcd {
    async fn op(&mut self, n: u64) -> Result<Outcome, String> {
        let name = BASE64.encode(format!("bench/{n}"));
        let (status, body) = self
            .http
            .post(
                &format!("{}/v3/lock/lock", self.url),
                &json!({"name": name, "lease": self.lease}),
            )
            .await?;
        let key = match (status, &body["key"]) {
            (200, Value::String(key)) => key.clone(),
            _ => return Err(format!("lock: {status} {body}")),
        };
        match self
            .http
            .post(
                &format!("{}/v3/lock/unlock", self.url),
                &json!({"key": key}),
            )
            .await?
        {
            (200, _) => Ok(Outcome::Done),
            (status, body) => Err(format!("unlock: {status} {body}")),
        }
    }
}

/// The usual single-instance Redis lock: `SET key token NX PX ttl`, released by a Lua script
/// that deletes the key only while it still holds this client's token.
pub struct RedisRaw {
    conn: MultiplexedConnection,
    release: Script,
}

impl RedisRaw {
    pub async fn new(url: &str) -> Result<RedisRaw, String> {
        let client = redis::Client::open(url).map_err(|e| e.to_string())?;
        let conn = client
            .get_multiplexed_async_connection()
            .await
            .map_err(|e| format!("connecting to Redis: {e}"))?;
        Ok(RedisRaw {
            conn,
            release: Script::new(
                "if redis.call('GET', KEYS[1]) == ARGV[1] then \
                     return redis.call('DEL', KEYS[1]) \
                 end \
                 return 0",
            ),
        })
    }
}

impl Client for RedisRaw {
    async fn op(&mut self, n: u64) -> Result<Outcome, String> {
        let key = format!("bench:{n}");
        let token = format!("{:016x}", fastrand::u64(..));
        let set: Option<String> = redis::cmd("SET")
            .arg(&key)
            .arg(&token)
            .arg("NX")
            .arg("PX")
            .arg(TTL.as_millis() as u64)
            .query_async(&mut self.conn)
            .await
            .map_err(|e| format!("SET: {e}"))?;
        if set.is_none() {
            return Ok(Outcome::Busy);
        }
        let deleted: i64 = self
            .release
            .key(&key)
            .arg(&token)
            .invoke_async(&mut self.conn)
            .await
            .map_err(|e| format!("release script: {e}"))?;
        match deleted {
            1 => Ok(Outcome::Done),
            _ => Err(format!("release: {key} no longer held this client's token")),
        }
    }
}

/// sentinel's library API on any backend: `try_acquire`, then `release` of the guard (which
/// names the grant by its fencing token).
pub struct Library<B: LockBackend + 'static> {
    pub locks: LockClient<B>,
}

impl<B: LockBackend + 'static> Client for Library<B> {
    async fn op(&mut self, n: u64) -> Result<Outcome, String> {
        let guard = match self.locks.try_acquire(&format!("bench-{n}"), TTL).await {
            Ok(Some(guard)) => guard,
            Ok(None) => return Ok(Outcome::Busy),
            Err(e) => return Err(format!("try_acquire: {e}")),
        };
        match guard.release().await {
            Ok(true) => Ok(Outcome::Done),
            Ok(false) => Err("release: the lease was gone".into()),
            Err(e) => Err(format!("release: {e}")),
        }
    }
}
