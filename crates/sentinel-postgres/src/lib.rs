//! PostgreSQL backend: named locks, shared holds and semaphores as rows of tables in a database
//! you already run.
//!
//! This crate owns everything sentinel does with PostgreSQL: the URL ([`settings`]: checked before
//! anything connects, never echoed when it carries a password), TLS with libpq's `sslmode`
//! ([`tls`]), a small connection pool, the tables and sequence ([`layout`]: named with their
//! schema, created only if missing), and the one transaction every change is ([`transaction`]:
//! prepared statements in two pipelined round trips).
//!
//! A lock's semantics are the lock table's ([`sentinel_core::table`]), not re-implemented: each
//! operation reads the lock's row into a one-lock `LockTable`, applies the same `Op` the local
//! backend applies, and writes the row back, all in one transaction that first takes a
//! transaction-scoped advisory lock on the name. So a stale lock stays until taken over or
//! released by the janitor, re-adoption and take-overs behave as locally, and the messages are
//! the same. Shared holds and semaphore permits are rows of `sentinel_holds`, one per hold, read
//! in the same transaction under the same advisory lock, so a lock and a hold of one name are never
//! granted side by side; [`holds`] decides on them. Two things come from the database instead of
//! the host:
//!
//! - **Time**: `clock_timestamp()`, read after the advisory lock is held (`now()` would be the
//!   transaction's start, before the wait), so every process judges leases by one clock.
//! - **Fencing tokens**: the sequence `sentinel_fencing_tokens`, drawn under the name's lock for
//!   every kind of hold, but never below the greatest token in the tables + 1: a sequence that
//!   restarted (a restore, a promoted logical replica, `ALTER SEQUENCE … RESTART`) is moved past
//!   them instead of handing out a token the name already carried. So tokens strictly increase per
//!   name (with gaps: an attempt that is refused uses one up too).
//!
//! Nothing deletes a row: a release (forced, stale, or the undo of an interrupted claim) sets its
//! `worker_id` to NULL and keeps its token, the name's high-water mark, because a deleted row
//! took its token out of that floor and a restarted sequence then handed the name a token it had
//! issued. A row whose `worker_id` is NULL is free to every reader. So the lock table grows by one
//! row per distinct lock name ever used, the holds table by the most holds a name had at once, and
//! workers need no DELETE right.
//!
//! Why a table and not session advisory locks (`pg_try_advisory_lock`): a session lock has no
//! TTL (a hung holder keeps it as long as its connection lives, a pooled connection keeps it
//! after its user is gone), no fencing token, and no holder anyone else can read; ARCHITECTURE.md
//! says more.
//!
//! Each operation is retried through connection failures within a deadline, then reported as
//! unavailable (exit 8); every other error passes on the server's message and SQLSTATE. A grant
//! whose commit was not confirmed is not granted twice: the row records the nonce of the attempt
//! that granted it, and a retried attempt that finds its own nonce takes the grant it already
//! made.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, PoolError, RecyclingMethod, Runtime};
use tokio::sync::OnceCell;
use tokio::time::Instant;
use tokio_postgres::config::Host;
use tokio_postgres::error::SqlState;
use tokio_postgres::{NoTls, Row, Statement};

use sentinel_core::backend::{LockBackend, Status, foreign};
use sentinel_core::error::{Error, Result};
use sentinel_core::interrupt;
use sentinel_core::lease;
use sentinel_core::lock::{
    AcquireRequest, Attempt, HoldKind, Holder, ListRequest, LockId, ReleaseRequest,
    ReleaseStaleRequest, Released, RenewRequest, StaleRelease, validate_name,
};
use sentinel_core::table::{LockRecord, Op};
use sentinel_core::tls::ClientTls;

mod diagnose;
mod holds;
mod layout;
mod settings;
mod tls;
mod transaction;

use holds::{Decided, HoldRow, INTENT_SLOT, Write};
use layout::Names;
use settings::CONNECT_TIMEOUT;
use transaction::{Open, Sql};

/// How long one operation may take, retries included, before the database counts as unreachable.
const OP_DEADLINE: Duration = Duration::from_secs(10);
/// Attempts of one operation through transient failures.
const ATTEMPTS: u32 = 4;
/// Connections per process: one command needs one; the library's concurrent tasks a few.
const POOL_SIZE: usize = 4;
/// The advisory-lock class of sentinel's per-name locks ("SENT"), so that they do not collide
/// with an application's own single-key advisory locks. Key 0 of the class serializes what is
/// not one name's: creating and changing the table, moving the sequence past the table.
const LOCK_CLASS: i32 = 0x5345_4e54;

/// The columns of a lock row, times as Unix milliseconds.
pub(crate) const COLUMNS: &str = "worker_id, node_id, fencing_token,
    (extract(epoch FROM claimed_at) * 1000)::bigint AS claimed_ms,
    (extract(epoch FROM heartbeat_at) * 1000)::bigint AS heartbeat_ms,
    ttl_ms, task_info::text AS task_info, grant_nonce";

/// The database's clock in Unix milliseconds.
pub(crate) const NOW_MS: &str = "(extract(epoch FROM clock_timestamp()) * 1000)::bigint";

/// A stored value as a table value: never negative, so the conversion cannot fail.
fn unsigned(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

/// A table value as a stored value, saturating (a TTL of `Duration::MAX` becomes `i64::MAX` ms).
fn signed(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// A lock row, from `offset` on, as the table's record and the nonce of the attempt that granted
/// it.
fn record(row: &Row, offset: usize) -> Result<(LockRecord, String)> {
    let get_i64 = |i: usize| -> Result<i64> { row.try_get(offset + i).map_err(unreadable) };
    let get_str = |i: usize| -> Result<String> { row.try_get(offset + i).map_err(unreadable) };
    let task_info = serde_json::from_str(&get_str(6)?).unwrap_or_default();
    Ok((
        LockRecord {
            worker_id: get_str(0)?,
            node_id: get_str(1)?,
            fencing_token: unsigned(get_i64(2)?),
            claimed_at_ms: unsigned(get_i64(3)?),
            heartbeat_ms: unsigned(get_i64(4)?),
            ttl_ms: unsigned(get_i64(5)?),
            task_info,
        },
        get_str(7)?,
    ))
}

/// A name's held rows (as [`Sql::rows`] selects them, from `offset` on, in any order) as its
/// lock, holds (oldest grant first) and reservation.
fn read_name(rows: &[Row], offset: usize) -> Result<holds::Name> {
    let mut name = holds::Name::default();
    for row in rows {
        // A status read of a name without rows has one row of NULLs.
        let worker: Option<String> = row.try_get(offset + 1).map_err(unreadable)?;
        if worker.is_none() {
            continue;
        }
        let slot: Option<i32> = row.try_get(offset).map_err(unreadable)?;
        let (record, nonce) = record(row, offset + 1)?;
        let Some(slot) = slot else {
            name.lock = Some((record, nonce));
            continue;
        };
        let permits: i32 = row.try_get(offset + 9).map_err(unreadable)?;
        let limit: Option<i32> = row.try_get(offset + 11).map_err(unreadable)?;
        let hold = HoldRow {
            slot,
            record,
            nonce,
            permits: u32::try_from(permits).unwrap_or(1),
            shared: row.try_get(offset + 10).map_err(unreadable)?,
            limit: limit.map(|l| u32::try_from(l).unwrap_or(u32::MAX)),
        };
        match slot {
            INTENT_SLOT => name.intent = Some(hold),
            _ => name.holds.push(hold),
        }
    }
    name.holds.sort_by_key(|h| h.record.fencing_token);
    Ok(name)
}

fn unreadable(e: tokio_postgres::Error) -> Error {
    Error::Unexpected(format!(
        "the table sentinel_locks does not look like sentinel's ({}); was it changed by hand?",
        describe(&e)
    ))
}

/// The driver's error with its cause: the server's message and SQLSTATE, or the chain of causes
/// (the driver's own text is a bare "db error" or "error connecting to server").
pub(crate) fn describe(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        let mut text = format!(
            "{}: {} (SQLSTATE {})",
            db.severity(),
            db.message(),
            db.code().code()
        );
        if let Some(hint) = db.hint() {
            text += &format!("; hint: {hint}");
        }
        return text;
    }
    let mut text = e.to_string();
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        text += &format!(": {c}");
        cause = c.source();
    }
    text
}

/// Whether the error is about TLS itself (a certificate refused, a server without TLS under
/// `sslmode=require`), as opposed to a connection lost during the handshake.
fn tls_refused(e: &tokio_postgres::Error) -> bool {
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        let inner = c
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .map_or(c, |i| i as &(dyn std::error::Error + 'static));
        if inner.is::<rustls::Error>() || inner.to_string() == "server does not support TLS" {
            return true;
        }
        cause = c.source();
    }
    false
}

/// The PostgreSQL backend. Cheap to clone: clones share the pool.
#[derive(Clone)]
pub struct PostgresBackend {
    inner: Arc<Inner>,
}

struct Inner {
    pool: Pool,
    names: Names,
    sql: Sql,
    /// Set once the table and sequence are known to exist in this layout.
    schema: OnceCell<()>,
    /// Whether the holds table is known to exist: a role that may not create it uses locks
    /// alone until its owner has made it.
    holds_table: AtomicBool,
    /// `postgres at HOST:PORT/DB`, for messages: never the URL, which may carry a password.
    target: String,
    /// Redacted from every message that passes on the driver's own words.
    password: Option<String>,
}

impl std::fmt::Debug for PostgresBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresBackend")
            .field("target", &self.inner.target)
            .finish()
    }
}

/// How one attempt of an operation failed.
enum Failure {
    /// Worth another attempt: the connection, a server restarting, a lock wait given up.
    Transient(String),
    /// The answer, to pass on.
    Final(Error),
}

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        Failure::Final(e)
    }
}

impl PostgresBackend {
    /// The backend for `url`, with the URL's own TLS settings. Connects on first use; creates the
    /// table and sequence then if they do not exist.
    ///
    /// # Errors
    ///
    /// [`Error::Usage`] for a URL that cannot be used, or a TLS file named in it that cannot be
    /// read.
    pub fn new(url: &str) -> Result<PostgresBackend> {
        PostgresBackend::with_tls(url, &ClientTls::default())
    }

    /// The backend for `url`, with `tls` (`--ca-cert`, `--client-cert`, `--client-key`) where the
    /// URL has no `sslrootcert`, `sslcert` or `sslkey`; the URL's `sslmode` says whether TLS is
    /// used and what of the server's certificate is checked.
    ///
    /// # Errors
    ///
    /// As [`PostgresBackend::new`].
    pub fn with_tls(url: &str, tls: &ClientTls) -> Result<PostgresBackend> {
        let settings::Settings {
            config,
            schema,
            tls,
        } = settings::parse(url, tls)?;
        let host = match config.get_hosts().first() {
            Some(Host::Tcp(h)) => h.clone(),
            Some(Host::Unix(p)) => p.display().to_string(),
            None => String::new(),
        };
        let port = config.get_ports().first().copied().unwrap_or(5432);
        let target = format!(
            "postgres at {host}:{port}/{}",
            config
                .get_dbname()
                .or(config.get_user())
                .unwrap_or("postgres")
        );
        let password = config
            .get_password()
            .map(|p| String::from_utf8_lossy(p).into_owned())
            .filter(|p| !p.is_empty());
        let manager_config = ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        };
        let manager = match tls::connector(&tls)? {
            Some(tls) => Manager::from_config(config, tls, manager_config),
            None => Manager::from_config(config, NoTls, manager_config),
        };
        let pool = Pool::builder(manager)
            .max_size(POOL_SIZE)
            .wait_timeout(Some(OP_DEADLINE))
            .create_timeout(Some(CONNECT_TIMEOUT))
            .recycle_timeout(Some(CONNECT_TIMEOUT))
            .runtime(Runtime::Tokio1)
            .build()
            .map_err(|e| Error::Unexpected(format!("cannot set up the connection pool: {e}")))?;
        Ok(PostgresBackend {
            inner: Arc::new(Inner {
                pool,
                sql: Sql::new(&Names::new(&schema)),
                names: Names::new(&schema),
                schema: OnceCell::new(),
                holds_table: AtomicBool::new(false),
                target,
                password,
            }),
        })
    }

    /// Whether the holds table exists, as far as this process has seen.
    fn holds_table(&self) -> bool {
        self.inner.holds_table.load(Ordering::Relaxed)
    }

    /// The driver's own message with the password blanked out, should it ever quote it.
    fn redact(&self, text: &str) -> String {
        match &self.inner.password {
            Some(p) => text.replace(p.as_str(), "***"),
            None => text.to_string(),
        }
    }

    fn failure(&self, what: &str, e: &tokio_postgres::Error) -> Failure {
        let text = self.redact(&describe(e));
        let Some(code) = e.code() else {
            return self.failure_without_state(what, e, text);
        };
        if [
            SqlState::INVALID_PASSWORD,
            SqlState::INVALID_AUTHORIZATION_SPECIFICATION,
            SqlState::INSUFFICIENT_PRIVILEGE,
        ]
        .contains(code)
        {
            return Failure::Final(Error::Auth(format!(
                "{} refused the credentials or permissions ({what}): {text}; check the user and \
                 password in --database-url and the user's grants on {}, {} and {} \
                 (docs/postgres.md lists them)",
                self.inner.target,
                self.inner.names.table,
                self.inner.names.holds,
                self.inner.names.sequence
            )));
        }
        if *code == SqlState::INVALID_CATALOG_NAME {
            return Failure::Final(Error::NotFound(format!(
                "{}: {text}; create the database or name another in --database-url",
                self.inner.target
            )));
        }
        if [
            SqlState::CANNOT_CONNECT_NOW,
            SqlState::ADMIN_SHUTDOWN,
            SqlState::CRASH_SHUTDOWN,
            SqlState::TOO_MANY_CONNECTIONS,
            SqlState::LOCK_NOT_AVAILABLE,
            SqlState::T_R_SERIALIZATION_FAILURE,
            SqlState::T_R_DEADLOCK_DETECTED,
            SqlState::IDLE_IN_TRANSACTION_SESSION_TIMEOUT,
        ]
        .contains(code)
            || code.code().starts_with("08")
        {
            return Failure::Transient(text);
        }
        Failure::Final(Error::Unexpected(format!(
            "{} failed {what}: {text}",
            self.inner.target
        )))
    }

    /// An error the server did not give an SQLSTATE to: the connection (refused, closed, timed out:
    /// worth another attempt), or TLS, the login, or a value sentinel could not read (not).
    fn failure_without_state(
        &self,
        what: &str,
        e: &tokio_postgres::Error,
        text: String,
    ) -> Failure {
        let target = &self.inner.target;
        if tls_refused(e) {
            return Failure::Final(Error::Auth(format!(
                "{target}: TLS failed ({what}): {text}; check sslmode and sslrootcert in \
                 --database-url (or --ca-cert) and that the certificate names the host"
            )));
        }
        // The driver's own kinds have no public name; their text is fixed.
        let kind = e.to_string();
        // "invalid configuration" at connect time is a login the URL cannot make (no password
        // for a server that asks for one, channel binding the server does not offer).
        if kind == "authentication error" || kind == "invalid configuration" {
            return Failure::Final(Error::Auth(format!(
                "{target} refused the login ({what}): {text}; check the user and password in \
                 --database-url"
            )));
        }
        if [
            "error connecting to server",
            "error communicating with the server",
            "error performing TLS handshake",
            "connection closed",
            "timeout waiting for server",
        ]
        .contains(&kind.as_str())
        {
            return Failure::Transient(text);
        }
        Failure::Final(Error::Unexpected(format!("{target} failed {what}: {text}")))
    }

    /// Runs `op` with a pooled connection, once the table and sequence are known to be there,
    /// retrying transient failures with short jittered pauses within [`OP_DEADLINE`].
    async fn call<T, F, Fut>(&self, what: &str, op: F) -> Result<T>
    where
        F: Fn(deadpool_postgres::Object) -> Fut,
        Fut: Future<Output = std::result::Result<T, Failure>>,
    {
        self.call_with(what, true, op).await
    }

    /// [`PostgresBackend::call`], making sure of the table and sequence first only if `schema`
    /// (`doctor` looks without creating anything).
    async fn call_with<T, F, Fut>(&self, what: &str, schema: bool, op: F) -> Result<T>
    where
        F: Fn(deadpool_postgres::Object) -> Fut,
        Fut: Future<Output = std::result::Result<T, Failure>>,
    {
        let deadline = lease::instant_after(Instant::now(), OP_DEADLINE);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let outcome = tokio::time::timeout_at(deadline, async {
                let mut client = self.inner.pool.get().await.map_err(|e| match e {
                    PoolError::Backend(e) => self.failure(what, &e),
                    PoolError::Timeout(_) => Failure::Transient("no connection in time".into()),
                    other => Failure::Final(Error::Unexpected(format!(
                        "{}: the connection pool failed: {other}",
                        self.inner.target
                    ))),
                })?;
                if schema {
                    self.ensure_schema(&mut client).await?;
                }
                op(client).await
            })
            .await;
            let why = match outcome {
                Ok(Ok(v)) => return Ok(v),
                Ok(Err(Failure::Final(e))) => return Err(e),
                Ok(Err(Failure::Transient(why))) => why,
                Err(_) => {
                    return Err(Error::Unavailable(format!(
                        "{} did not answer {what} within {}",
                        self.inner.target,
                        sentinel_core::duration::display(OP_DEADLINE)
                    )));
                }
            };
            let pause = lease::jitter(Duration::from_millis(100) * 2u32.pow(attempt), 0.25);
            if attempt >= ATTEMPTS || Instant::now() + pause >= deadline {
                return Err(Error::Unavailable(format!(
                    "{} is unavailable ({what}, {attempt} attempts): {why}",
                    self.inner.target
                )));
            }
            tracing::info!(error = %why, "postgres {what} failed; retrying");
            tokio::time::sleep(pause).await;
        }
    }

    /// Makes sure, once per process, that the table and sequence exist in this layout: creates
    /// only what is missing (so a role that may only use them works), changes an older table when
    /// the role may, and otherwise says what to run.
    async fn ensure_schema(
        &self,
        client: &mut deadpool_postgres::Object,
    ) -> std::result::Result<(), Failure> {
        let names = &self.inner.names;
        self.inner
            .schema
            .get_or_try_init(|| async {
                let what = "checking the table sentinel_locks";
                let err = |e: tokio_postgres::Error| self.failure(what, &e);
                let found = names.existing(client).await.map_err(err)?;
                match found.all() {
                    true => self.inner.holds_table.store(true, Ordering::Relaxed),
                    false => self.create(client, found).await?,
                }
                let columns: Vec<(String, String, bool)> = client
                    .query(layout::COLUMNS_OF, &[&names.table])
                    .await
                    .map_err(err)?
                    .iter()
                    .map(|r| (r.get(0), r.get(1), r.get(2)))
                    .collect();
                let target = &self.inner.target;
                match names.migration(&columns) {
                    Ok(None) => Ok(()),
                    Err(why) => Err(Failure::Final(Error::Unexpected(format!(
                        "{target}: {why}"
                    )))),
                    Ok(Some((lacks, sql))) => self.migrate(client, &lacks, &sql).await,
                }
            })
            .await?;
        Ok(())
    }

    /// Creates what is missing. A role that may not create the holds table alone (its owner has
    /// not run this version yet) goes on with locks; semaphores and shared holds wait for it.
    async fn create(
        &self,
        client: &mut deadpool_postgres::Object,
        found: layout::Existing,
    ) -> std::result::Result<(), Failure> {
        let what = "creating sentinel's tables";
        let err = |e: tokio_postgres::Error| self.failure(what, &e);
        // Under the class's lock: concurrent `CREATE … IF NOT EXISTS` can otherwise fail on the
        // catalog's unique indexes. A transaction object, so that a failure rolls back instead
        // of leaving the pooled connection inside an aborted transaction.
        let tx = client.transaction().await.map_err(err)?;
        let sql = format!(
            "SELECT pg_advisory_xact_lock({LOCK_CLASS}, 0); {}",
            self.inner.names.create(found)
        );
        match tx.batch_execute(&sql).await {
            Ok(()) => {
                tx.commit().await.map_err(err)?;
                self.inner.holds_table.store(true, Ordering::Relaxed);
                Ok(())
            }
            Err(e)
                if e.code() == Some(&SqlState::INSUFFICIENT_PRIVILEGE)
                    && found.schema
                    && found.table
                    && found.sequence =>
            {
                tracing::warn!(
                    "{}: {} does not exist and this user may not create it: locks work, \
                     semaphores and shared holds need it (docs/postgres.md)",
                    self.inner.target,
                    self.inner.names.holds
                );
                Ok(())
            }
            Err(e) => Err(err(e)),
        }
    }

    /// Brings an older table to this layout, or says what its owner should run.
    async fn migrate(
        &self,
        client: &mut deadpool_postgres::Object,
        lacks: &str,
        sql: &str,
    ) -> std::result::Result<(), Failure> {
        let what = "changing the table sentinel_locks to this version's layout";
        let err = |e: tokio_postgres::Error| self.failure(what, &e);
        let tx = client.transaction().await.map_err(err)?;
        let applied = tx
            .batch_execute(&format!(
                "SELECT pg_advisory_xact_lock({LOCK_CLASS}, 0); {sql}"
            ))
            .await;
        match applied {
            Ok(()) => {
                tx.commit().await.map_err(err)?;
                tracing::warn!(table = %self.inner.names.table, "changed an older table: {lacks}");
                Ok(())
            }
            Err(e) if e.code() == Some(&SqlState::INSUFFICIENT_PRIVILEGE) => {
                Err(Failure::Final(Error::Unexpected(format!(
                    "{}: the table {} has an older layout ({lacks}) and this user may not change \
                     it ({}); as its owner run: {sql}",
                    self.inner.target,
                    self.inner.names.table,
                    self.redact(&describe(&e))
                ))))
            }
            Err(e) => Err(err(e)),
        }
    }

    /// Decides on the name `name` in one transaction: the name's advisory lock (which every
    /// operation on the name takes, whichever table it writes, so a lock and a hold of one name
    /// are never granted side by side), its rows of both tables in one query, the database's
    /// clock (and a fresh fencing token for an acquisition), `decide`'s answer, its rows written.
    /// `commit` sees the answer and may refuse to commit it. Two round trips
    /// ([`transaction`]): everything up to the token, then the writes and `COMMIT`.
    async fn transact<T>(
        &self,
        what: &str,
        name: &str,
        claim: Option<HoldKind>,
        decide: impl Fn(&holds::Name, u64, u64) -> Decided<T>,
        commit: impl Fn(&Result<T>) -> Result<()>,
    ) -> Result<(u64, T)> {
        self.call(what, |client| {
            let (decide, commit) = (&decide, &commit);
            async move {
                let err = |e: tokio_postgres::Error| self.failure(what, &e);
                let tx = Open::new(client);
                let (now, state, token) = self.read(&tx, name, claim).await.map_err(err)??;
                let decided = decide(&state, now, token);
                commit(&decided.answer)?;
                self.write_and_commit(&tx, name, &decided.writes)
                    .await
                    .map_err(err)?;
                tx.committed();
                Ok((now, decided.answer?))
            }
        })
        .await
    }

    /// The first batch of a name's transaction: `BEGIN`, the name's lock, the clock, its rows
    /// and, for a claim, a fresh token. The rows (and token) are asked for with the holds table
    /// if this process has seen it; if the clock, read under the name's lock, says otherwise
    /// (made or dropped meanwhile), they are read again as it says.
    async fn read(
        &self,
        tx: &Open,
        name: &str,
        claim: Option<HoldKind>,
    ) -> std::result::Result<Result<(u64, holds::Name, u64)>, tokio_postgres::Error> {
        let sql = &self.inner.sql;
        let seen = self.holds_table();
        let (lock, read) = tokio::try_join!(
            tx.prepare(&sql.lock),
            tx.prepare(sql.read(seen, claim.is_some())),
        )?;
        let c = tx.client();
        let holds = &self.inner.names.holds;
        let batch = tokio::try_join!(
            biased;
            c.batch_execute("BEGIN"),
            async { c.execute(&lock, &[&LOCK_CLASS, &name]).await },
            async { c.query(&read, &[&name, holds]).await },
        );
        let (_, _, mut rows) = batch.inspect_err(|e| {
            // Dropped since it was seen: the next attempt reads without it.
            if e.code() == Some(&SqlState::UNDEFINED_TABLE) {
                self.inner.holds_table.store(false, Ordering::Relaxed);
            }
        })?;
        let holds_table = match rows.first().map(|r| r.try_get(1)) {
            Some(Ok(found)) => found,
            Some(Err(e)) => return Ok(Err(unreadable(e))),
            None => false,
        };
        self.inner.holds_table.store(holds_table, Ordering::Relaxed);
        if claim.is_some_and(|k| k != HoldKind::Exclusive) && !holds_table {
            return Ok(Err(self.no_holds_table()));
        }
        if holds_table != seen {
            rows = c
                .query(sql.read(holds_table, claim.is_some()), &[&name, holds])
                .await?;
        }
        let Some(first) = rows.first() else {
            return Ok(Err(Error::Unexpected(format!(
                "{}: reading {name:?} answered no row",
                self.inner.target
            ))));
        };
        let clock = (first.try_get(0), first.try_get(2), first.try_get(3));
        let (now, drawn, floor) = match clock {
            (Ok(now), Ok(drawn), Ok(floor)) => (unsigned(now), drawn, floor),
            (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => return Ok(Err(unreadable(e))),
        };
        let token = match (drawn, floor) {
            (Some(drawn), Some(floor)) => unsigned(self.next_token(tx, drawn, floor).await?),
            _ => 0,
        };
        match read_name(&rows, 4) {
            Ok(state) => Ok(Ok((now, state, token))),
            Err(e) => Ok(Err(e)),
        }
    }

    /// The second batch of a name's transaction: its rows as decided, then `COMMIT`.
    async fn write_and_commit(
        &self,
        tx: &Open,
        name: &str,
        writes: &[Write],
    ) -> std::result::Result<(), tokio_postgres::Error> {
        let sql = &self.inner.sql;
        let mut statements = Vec::with_capacity(writes.len());
        for w in writes {
            statements.push(tx.prepare(write_sql(sql, w)).await?);
        }
        let c = tx.client();
        let sends = writes
            .iter()
            .zip(&statements)
            .map(|(w, statement)| write(c, statement, name, w));
        tokio::try_join!(
            biased;
            futures_util::future::try_join_all(sends),
            c.batch_execute("COMMIT"),
        )?;
        Ok(())
    }

    /// The refusal of a semaphore or shared claim where the holds table does not exist (this
    /// user may not create it).
    fn no_holds_table(&self) -> Error {
        Error::Auth(format!(
            "{}: semaphores and shared holds need the table {}, which does not exist and this \
             user may not create; create it once as its owner (any sentinel command run by the \
             owner does) and grant SELECT, INSERT, UPDATE on it (docs/postgres.md)",
            self.inner.target, self.inner.names.holds
        ))
    }

    /// The next fencing token, from the sequence's value and the floor drawn with it: the
    /// sequence's value, unless the sequence is behind the tokens the tables hold (locks' and
    /// holds'), free rows' included (it restarted: a restore, a promoted replica, `ALTER
    /// SEQUENCE … RESTART`); then the sequence is first moved past them, under the class's lock
    /// so that two claims catching it up do not both take the same number.
    async fn next_token(
        &self,
        tx: &Open,
        token: i64,
        floor: i64,
    ) -> std::result::Result<i64, tokio_postgres::Error> {
        if token >= floor {
            return Ok(token);
        }
        let Names {
            table, sequence, ..
        } = &self.inner.names;
        tracing::warn!(
            "the sequence {sequence} is behind the tokens in {table} ({token} < {floor}); moving it past them"
        );
        let c = tx.client();
        c.execute(
            &format!("SELECT pg_advisory_xact_lock({LOCK_CLASS}, 0)"),
            &[],
        )
        .await?;
        let moved = c
            .query_one(
                &format!(
                    "SELECT setval('{sequence}', greatest(nextval('{sequence}'), $1::bigint))"
                ),
                &[&floor],
            )
            .await?;
        Ok(moved.get(0))
    }

    /// Frees the lock or hold the attempt with `nonce` granted, if it still stands; under the name's
    /// lock, so it waits for that attempt's transaction. One try: it runs while the process is
    /// being stopped.
    async fn withdraw(&self, name: &str, nonce: &str) {
        let attempt = async {
            let mut client = self.inner.pool.get().await.ok()?;
            let tx = client.transaction().await.ok()?;
            tx.execute(
                "SELECT pg_advisory_xact_lock($1, hashtext($2))",
                &[&LOCK_CLASS, &name],
            )
            .await
            .ok()?;
            let Names { table, holds, .. } = &self.inner.names;
            let mut frees = vec![format!(
                "UPDATE {table} SET worker_id = NULL WHERE name = $1 AND grant_nonce = $2"
            )];
            if self.holds_table() {
                frees.push(format!(
                    "UPDATE {holds} SET worker_id = NULL
                     WHERE name = $1 AND slot >= 0 AND grant_nonce = $2"
                ));
            }
            for sql in frees {
                tx.execute(&sql, &[&name, &nonce]).await.ok()?;
            }
            tx.commit().await.ok()
        };
        if tokio::time::timeout(CONNECT_TIMEOUT, attempt)
            .await
            .ok()
            .flatten()
            .is_none()
        {
            tracing::warn!(
                "could not withdraw an interrupted grant of {name:?}; it stays until its lease runs out"
            );
        }
    }
}

/// The statement that writes `w`.
fn write_sql<'a>(sql: &'a Sql, w: &Write) -> &'a str {
    match w {
        Write::Lock(Some(_), _) => &sql.upsert_lock,
        Write::Lock(None, _) => &sql.free_lock,
        Write::Hold(_) => &sql.upsert_hold,
        Write::Free(_) => &sql.free_hold,
    }
}

/// Writes one row as decided with its statement ([`write_sql`]): the lock's (freed, kept for
/// its token; or inserted or replaced), or a hold's or reservation's.
async fn write(
    c: &tokio_postgres::Client,
    statement: &Statement,
    name: &str,
    w: &Write,
) -> std::result::Result<u64, tokio_postgres::Error> {
    let task_info =
        |r: &LockRecord| serde_json::to_string(&r.task_info).unwrap_or_else(|_| "{}".into());
    match w {
        Write::Lock(None, _) => c.execute(statement, &[&name]).await,
        Write::Lock(Some(r), nonce) => {
            c.execute(
                statement,
                &[
                    &name,
                    &r.worker_id,
                    &r.node_id,
                    &signed(r.fencing_token),
                    &signed(r.claimed_at_ms),
                    &signed(r.heartbeat_ms),
                    &signed(r.ttl_ms).max(1),
                    &task_info(r),
                    &nonce,
                ],
            )
            .await
        }
        Write::Free(slot) => c.execute(statement, &[&name, slot]).await,
        Write::Hold(h) => {
            let r = &h.record;
            let limit = h.limit.map(|l| i32::try_from(l).unwrap_or(i32::MAX));
            let permits = i32::try_from(h.permits).unwrap_or(i32::MAX);
            c.execute(
                statement,
                &[
                    &name,
                    &h.slot,
                    &r.worker_id,
                    &r.node_id,
                    &signed(r.fencing_token),
                    &signed(r.claimed_at_ms),
                    &signed(r.heartbeat_ms),
                    &signed(r.ttl_ms).max(1),
                    &task_info(r),
                    &h.nonce,
                    &permits,
                    &h.shared,
                    &limit,
                ],
            )
            .await
        }
    }
}

fn name_of(lock: &LockId) -> Result<&str> {
    match lock {
        LockId::Name(n) => Ok(n),
        other => Err(foreign(other, "postgres")),
    }
}

impl LockBackend for PostgresBackend {
    fn name(&self) -> &'static str {
        "postgres"
    }

    fn parse_lock(&self, raw: &str) -> Result<LockId> {
        validate_name(raw)?;
        Ok(LockId::Name(raw.to_string()))
    }

    fn holds_groups(&self) -> bool {
        true
    }

    /// One attempt, as one transaction. An interrupted claim must hold nothing or report its
    /// grant: the attempt registers an undo that frees the lock or hold if this attempt's nonce
    /// granted it (waiting for the transaction under the name's lock), and the transaction does
    /// not commit a grant once the interrupt is flagged.
    async fn try_acquire(&self, req: &AcquireRequest) -> Result<Attempt> {
        let name = name_of(&req.lock)?;
        let cmd = Op::acquire(name, req)?;
        holds::check_kind(req.kind)?;
        let nonce = format!("{:016x}", fastrand::u64(..));
        let undo = {
            let (this, name, nonce) = (self.clone(), name.to_string(), nonce.clone());
            interrupt::on_interrupt(move || async move { this.withdraw(&name, &nonce).await })
        };
        let decide = |state: &holds::Name, now, token| {
            let claim = holds::Claim {
                req,
                cmd: &cmd,
                nonce: &nonce,
                now,
                token,
            };
            holds::acquire(state, &claim)
        };
        let (_, attempt) = self
            .transact("a claim", name, Some(req.kind), decide, |_| {
                if interrupt::is_interrupted() {
                    return Err(Error::Unexpected("interrupted".into()));
                }
                Ok(())
            })
            .await?;
        if matches!(&attempt, Attempt::Granted(g) if !g.adopted) {
            // A grant stays undoable until the command has reported it.
            undo.keep_until_reported();
        }
        Ok(attempt)
    }

    async fn release(&self, req: &ReleaseRequest) -> Result<Released> {
        let name = name_of(&req.lock)?;
        let cmd = Op::release(name, &req.worker_id, req.force, req.fencing_token)?;
        let decide = |state: &holds::Name, now, _| holds::release(state, &cmd, req, now);
        let (_, released) = self
            .transact("a release", name, None, decide, |_| Ok(()))
            .await?;
        Ok(released)
    }

    async fn renew(&self, req: &RenewRequest) -> Result<Holder> {
        let name = name_of(&req.lock)?;
        let cmd = Op::renew(name, &req.worker_id, req.fencing_token, req.ttl)?;
        let decide = |state: &holds::Name, now, _| holds::renew(state, &cmd, now);
        let (_, holder) = self
            .transact("a renewal", name, None, decide, |_| Ok(()))
            .await?;
        Ok(holder)
    }

    async fn status(&self, lock: &LockId) -> Result<Status> {
        let name = name_of(lock)?;
        validate_name(name)?;
        self.call("a status read", |client| async move {
            let rows = client
                .query(
                    &format!(
                        "SELECT {NOW_MS}, r.* FROM (SELECT 1) AS one LEFT JOIN ({}) AS r ON true",
                        self.inner.sql.rows(self.holds_table())
                    ),
                    &[&name],
                )
                .await
                .map_err(|e| self.failure("a status read", &e))?;
            let now = rows.first().map_or(0, |r| unsigned(r.get(0)));
            Ok(read_name(&rows, 1)?.status(name, now))
        })
        .await
    }

    /// Every held lock and every hold, one row each, by name and then token.
    async fn list(&self, _req: &ListRequest) -> Result<Vec<(String, Holder)>> {
        let Names { table, holds, .. } = &self.inner.names;
        self.call("a listing", |client| async move {
            let of_holds = match self.holds_table() {
                true => format!(
                    "UNION ALL SELECT {NOW_MS}, name, {COLUMNS} FROM {holds}
                        WHERE worker_id IS NOT NULL AND slot >= 0"
                ),
                false => String::new(),
            };
            let rows = client
                .query(
                    &format!(
                        "SELECT {NOW_MS}, name, {COLUMNS} FROM {table} WHERE worker_id IS NOT NULL
                         {of_holds} ORDER BY 2, 5"
                    ),
                    &[],
                )
                .await
                .map_err(|e| self.failure("a listing", &e))?;
            let mut held = Vec::with_capacity(rows.len());
            for row in rows {
                let now = unsigned(row.get(0));
                let name: String = row.try_get(1).map_err(unreadable)?;
                held.push((name, record(&row, 2)?.0.to_holder(now)));
            }
            Ok(held)
        })
        .await
    }

    /// The janitor's release, decided inside the transaction on the database's clock.
    async fn release_stale(&self, req: &ReleaseStaleRequest) -> Result<StaleRelease> {
        let name = name_of(&req.lock)?;
        validate_name(name)?;
        let cmd = Op::ReleaseStale {
            name: name.to_string(),
        };
        let seen = req.seen.as_ref();
        let decide = |state: &holds::Name, now, _| holds::release_stale(state, &cmd, seen, now);
        let (_, released) = self
            .transact("a stale-lock release", name, None, decide, |_| Ok(()))
            .await?;
        Ok(released)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sentinel_core::error::ExitCode;

    #[test]
    fn urls_are_checked_without_echoing_credentials() {
        for ok in [
            "postgres://sentinel@127.0.0.1:5432/locks",
            "postgresql://u:secret@db.example/app?connect_timeout=5",
        ] {
            assert!(PostgresBackend::new(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "localhost:5432",
            "mysql://u:hunter2@h/db",
            "postgres://u:hunter2@h/db?sslmode=allow",
            "postgres://u:hunter2@h:99999/db",
        ] {
            let e = PostgresBackend::new(bad).unwrap_err();
            assert_eq!(e.exit_code(), ExitCode::Usage, "{bad}");
            assert!(!e.to_string().contains("hunter2"), "{e}");
        }
        let b = PostgresBackend::new("postgres://u:hunter2@db.example:6543/app").unwrap();
        assert_eq!(b.inner.target, "postgres at db.example:6543/app");
        assert!(!format!("{b:?}").contains("hunter2"));
        assert_eq!(b.redact("password hunter2 refused"), "password *** refused");
    }
}
