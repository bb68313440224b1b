//! What one benchmark client does per operation on each system: acquire a lock (or a semaphore
//! permit, or an election's leadership) by name, then give it back with the proof of ownership
//! that system uses. Each client has its own connection (or pool), as separate processes would.

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

/// The limit of every semaphore of the semaphore rows: two holders at once, so a name is busy
/// only when two clients hold it.
pub const SEMAPHORE_LIMIT: u32 = 2;

/// What a sentinel or etcd row takes and gives back per operation.
#[derive(Clone, Copy)]
pub enum Primitive {
    /// A lock: acquire, release.
    Lock,
    /// One permit of a semaphore of limit [`SEMAPHORE_LIMIT`]: acquire, release.
    Semaphore,
    /// An election's leadership: campaign, resign.
    Election,
}

/// sentinel's HTTP API, as any HTTP client would use it: `POST /locks/{name}/acquire`, then
/// `POST /locks/{name}/release` with the fencing token the acquire returned; for a semaphore
/// the same under `/semaphores/` with the limit and one permit, for an election
/// `/election/{name}/campaign` (with a value) and `/resign`.
pub struct SentinelHttp {
    pub http: Http,
    /// The node this client sends to.
    pub url: String,
    pub holder: String,
    pub primitive: Primitive,
}

impl SentinelHttp {
    /// The URLs of the taking and the giving back of name `n`, and the body of the taking.
    fn requests(&self, n: u64) -> (String, String, Value) {
        let ttl_ms = TTL.as_millis() as u64;
        let (url, holder) = (&self.url, &self.holder);
        match self.primitive {
            Primitive::Lock => (
                format!("{url}/locks/bench-{n}/acquire"),
                format!("{url}/locks/bench-{n}/release"),
                json!({"holder": holder, "ttl_ms": ttl_ms}),
            ),
            Primitive::Semaphore => (
                format!("{url}/semaphores/bench-{n}/acquire"),
                format!("{url}/semaphores/bench-{n}/release"),
                json!({"holder": holder, "ttl_ms": ttl_ms, "limit": SEMAPHORE_LIMIT, "permits": 1}),
            ),
            Primitive::Election => (
                format!("{url}/election/bench-{n}/campaign"),
                format!("{url}/election/bench-{n}/resign"),
                json!({"holder": holder, "ttl_ms": ttl_ms, "value": holder}),
            ),
        }
    }
}

impl Client for SentinelHttp {
    async fn op(&mut self, n: u64) -> Result<Outcome, String> {
        let (take, give_back, body) = self.requests(n);
        let (status, body) = self.http.post(&take, &body).await?;
        match status {
            200 => {}
            409 if body["code"] == "lock_held" => return Ok(Outcome::Busy),
            _ => return Err(format!("{take}: {status} {body}")),
        }
        let token = body["holder"]["fencing_token"]
            .as_u64()
            .ok_or_else(|| format!("{take}: no fencing token in {body}"))?;
        match self
            .http
            .post(&give_back, &json!({"holder": self.holder, "token": token}))
            .await?
        {
            (200, _) => Ok(Outcome::Done),
            (status, body) => Err(format!("{give_back}: {status} {body}")),
        }
    }
}

/// etcd's lock and election services through its v3 JSON gateway, with the client's lease
/// (granted once): `/v3/lock/lock`, then `/v3/lock/unlock` with the key the lock returned; or
/// `/v3/election/campaign` (with a value), then `/v3/election/resign` with the leader key the
/// campaign returned. Both wait for a held name instead of refusing, so these rows never count
/// a busy name.
pub struct Etcd {
    http: Http,
    url: String,
    lease: Value,
    election: bool,
}

impl Etcd {
    /// A client with a lease of its own that outlasts the run; `election` picks the election
    /// service over the lock service.
    pub async fn new(
        http: Http,
        url: &str,
        lease_secs: u64,
        election: bool,
    ) -> Result<Etcd, String> {
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
            election,
        })
    }

    /// POSTs `body` to `/v3/{path}` and returns the answer's `field`, which must be there.
    async fn call(&self, path: &str, body: Value, field: &str) -> Result<Value, String> {
        let (status, answer) = self
            .http
            .post(&format!("{}/v3/{path}", self.url), &body)
            .await?;
        match &answer[field] {
            Value::Null => Err(format!("{path}: {status} {answer}")),
            _ if status != 200 => Err(format!("{path}: {status} {answer}")),
            value => Ok(value.clone()),
        }
    }
}

impl Client for Etcd {
    async fn op(&mut self, n: u64) -> Result<Outcome, String> {
        // Keys and values are bytes, base64 in JSON.
        let name = BASE64.encode(format!("bench/{n}"));
        let lease = &self.lease;
        if self.election {
            let value = BASE64.encode(format!("bench-{n}"));
            let body = json!({"name": name, "lease": lease, "value": value});
            let leader = self.call("election/campaign", body, "leader").await?;
            let body = json!({"leader": leader});
            self.call("election/resign", body, "header").await?;
        } else {
            let body = json!({"name": name, "lease": lease});
            let key = self.call("lock/lock", body, "key").await?;
            self.call("lock/unlock", json!({"key": key}), "header")
                .await?;
        }
        Ok(Outcome::Done)
    }
}

/// What a key-value row does per operation.
#[derive(Clone, Copy)]
pub enum KvOp {
    /// One durable write of one key.
    Put,
    /// One durable write of [`KV_BATCH`] keys (a transaction).
    Batch,
    /// One linearizable read of one key.
    Get,
    /// One read of one key from the node's own copy (etcd: serializable).
    StaleGet,
}

/// Keys per operation of the batched write rows.
pub const KV_BATCH: u64 = 100;

/// sentinel's key-value store over its HTTP API: `PUT /kv/bench/{n}`, `POST /kv/txn` with
/// [`KV_BATCH`] puts, `GET /kv/bench/{n}` (a missing key is a read too).
pub struct SentinelKv {
    pub http: Http,
    pub url: String,
    pub op: KvOp,
}

impl Client for SentinelKv {
    async fn op(&mut self, n: u64) -> Result<Outcome, String> {
        let url = &self.url;
        let (target, answer) = match self.op {
            KvOp::Put => {
                let target = format!("{url}/kv/bench/{n}");
                let answer = self.http.put(&target, &json!({"value": {"n": n}})).await?;
                (target, answer)
            }
            KvOp::Batch => {
                let ops: Vec<Value> = (0..KV_BATCH)
                    .map(|i| json!({"op": "put", "key": format!("bench/{n}/{i}"), "value": {"n": i}}))
                    .collect();
                let target = format!("{url}/kv/txn");
                let answer = self.http.post(&target, &json!({"ops": ops})).await?;
                (target, answer)
            }
            KvOp::Get | KvOp::StaleGet => {
                let stale = matches!(self.op, KvOp::StaleGet);
                let target = format!("{url}/kv/bench/{n}?stale={stale}");
                let answer = self.http.get(&target).await?;
                (target, answer)
            }
        };
        match answer {
            (200 | 404, _) => Ok(Outcome::Done),
            (status, body) => Err(format!("{target}: {status} {body}")),
        }
    }
}

/// etcd's key-value store through its v3 JSON gateway: `/v3/kv/put`, `/v3/kv/txn` with
/// [`KV_BATCH`] puts, `/v3/kv/range` (linearizable, or `serializable`).
pub struct EtcdKv {
    pub http: Http,
    pub url: String,
    pub op: KvOp,
}

impl Client for EtcdKv {
    async fn op(&mut self, n: u64) -> Result<Outcome, String> {
        let key = |k: String| BASE64.encode(k);
        let value = |n: u64| BASE64.encode(json!({"n": n}).to_string());
        let (path, body) = match self.op {
            KvOp::Put => (
                "kv/put",
                json!({"key": key(format!("bench/{n}")), "value": value(n)}),
            ),
            KvOp::Batch => {
                let puts: Vec<Value> = (0..KV_BATCH)
                    .map(|i| {
                        json!({"requestPut": {"key": key(format!("bench/{n}/{i}")), "value": value(i)}})
                    })
                    .collect();
                ("kv/txn", json!({"success": puts}))
            }
            KvOp::Get => ("kv/range", json!({"key": key(format!("bench/{n}"))})),
            KvOp::StaleGet => (
                "kv/range",
                json!({"key": key(format!("bench/{n}")), "serializable": true}),
            ),
        };
        let url = format!("{}/v3/{path}", self.url);
        match self.http.post(&url, &body).await? {
            (200, _) => Ok(Outcome::Done),
            (status, body) => Err(format!("{url}: {status} {body}")),
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

/// The usual single-row PostgreSQL lock, two autocommit statements on one connection, both
/// prepared once: an upsert that takes the row only if it is free or its lease has run out on
/// the database's clock, then a delete that removes it only while it still names this client's
/// token.
pub struct PostgresRaw {
    client: tokio_postgres::Client,
    acquire: tokio_postgres::Statement,
    release: tokio_postgres::Statement,
}

impl PostgresRaw {
    /// A client on a connection of its own; the first makes the table (clients are made one
    /// after the other, so concurrent `CREATE`s cannot collide on the catalog).
    pub async fn new(url: &str) -> Result<PostgresRaw, String> {
        let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
            .await
            .map_err(|e| format!("connecting to PostgreSQL: {e}"))?;
        tokio::spawn(connection);
        client
            .batch_execute(
                "CREATE TABLE IF NOT EXISTS raw_locks (
                    name text PRIMARY KEY, holder text NOT NULL, expires timestamptz NOT NULL)",
            )
            .await
            .map_err(|e| format!("creating the table: {e}"))?;
        let prepare = |sql: &'static str| {
            let client = &client;
            async move {
                client
                    .prepare(sql)
                    .await
                    .map_err(|e| format!("preparing {sql:?}: {e}"))
            }
        };
        let acquire = prepare(
            "INSERT INTO raw_locks (name, holder, expires)
             VALUES ($1, $2, clock_timestamp() + $3::bigint * interval '1 millisecond')
             ON CONFLICT (name) DO UPDATE SET holder = EXCLUDED.holder, expires = EXCLUDED.expires
             WHERE raw_locks.expires < clock_timestamp()",
        )
        .await?;
        let release = prepare("DELETE FROM raw_locks WHERE name = $1 AND holder = $2").await?;
        Ok(PostgresRaw {
            client,
            acquire,
            release,
        })
    }
}

impl Client for PostgresRaw {
    async fn op(&mut self, n: u64) -> Result<Outcome, String> {
        let name = format!("bench-{n}");
        let token = format!("{:016x}", fastrand::u64(..));
        let ttl_ms = TTL.as_millis() as i64;
        let taken = self
            .client
            .execute(&self.acquire, &[&name, &token, &ttl_ms])
            .await
            .map_err(|e| format!("upsert: {e}"))?;
        if taken == 0 {
            return Ok(Outcome::Busy);
        }
        match self.client.execute(&self.release, &[&name, &token]).await {
            Ok(1) => Ok(Outcome::Done),
            Ok(_) => Err(format!(
                "release: {name} no longer held this client's token"
            )),
            Err(e) => Err(format!("delete: {e}")),
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
