//! The statements of one name's transaction and how they travel: prepared once per connection
//! (the pool's statement cache) and sent in two pipelined batches, so that an operation costs
//! two round trips to the server instead of one (or two, with an unprepared statement) per
//! statement.
//!
//! The server runs a connection's statements one after the other in the order they were sent,
//! so pipelining changes nothing of what runs, or in which order: the first batch is `BEGIN`,
//! the name's advisory lock, then one statement that reads the database's clock, the name's rows
//! and, for a claim, a fresh token (a statement of its own after the lock's, so that its
//! snapshot and clock come after the lock is held); the second the rows as decided and `COMMIT`. A
//! statement that fails aborts the transaction, and the ones after it in its batch fail too, so
//! the batch's first error is the one to report (its answers arrive in order).
//!
//! Without tokio-postgres's `Transaction` (whose statements cannot be sent ahead of `BEGIN`'s
//! answer) the rollback is this module's: a transaction not committed (a failed statement, a
//! decision not to commit, or the future dropped midway) queues a `ROLLBACK` on its connection
//! before the connection goes back to the pool, so its next user starts outside any
//! transaction and the name's advisory lock is let go.

use std::task::{Context, Waker};

use deadpool_postgres::Object;
use tokio_postgres::Statement;

use crate::layout::Names;
use crate::{COLUMNS, NOW_MS};

/// The texts of the statements an operation's transaction runs, made once per backend.
pub(crate) struct Sql {
    /// $1 class, $2 name: the name's transaction-scoped advisory lock.
    pub lock: String,
    /// $1 name: the held rows of the name, in no order, without and with the holds table (what
    /// `status` reads).
    rows: [String; 2],
    /// $1 name, $2 the holds table's name: [`Sql::read`]'s statements, by holds table and
    /// claim.
    read: [[String; 2]; 2],
    /// $1 name, $2 worker, $3 node, $4 token, $5 claimed ms, $6 heartbeat ms, $7 TTL ms,
    /// $8 task info JSON, $9 nonce: the lock's row inserted or replaced.
    pub upsert_lock: String,
    /// $1 name: the lock's row freed (kept, for its token).
    pub free_lock: String,
    /// The lock's columns and $10 permits, $11 shared, $12 limit, $2 the slot (the others one
    /// on): a hold's or the reservation's row inserted or replaced.
    pub upsert_hold: String,
    /// $1 name, $2 slot: a hold's or the reservation's row freed.
    pub free_hold: String,
}

impl Sql {
    pub fn new(names: &Names) -> Sql {
        let Names {
            table,
            holds,
            sequence,
            ..
        } = names;
        let lock_rows = format!(
            "SELECT NULL::integer, {COLUMNS}, 1, false, NULL::integer FROM {table}
                WHERE name = $1 AND worker_id IS NOT NULL"
        );
        let rows = [
            lock_rows.clone(),
            format!(
                "{lock_rows} UNION ALL
                 SELECT slot, {COLUMNS}, permits, shared, semaphore_limit FROM {holds}
                    WHERE name = $1 AND worker_id IS NOT NULL"
            ),
        ];
        let read = |holds_table: bool, claim: bool| {
            let token = match (claim, holds_table) {
                (false, _) => "NULL::bigint, NULL::bigint".to_string(),
                (true, holds_table) => {
                    let holds_max = match holds_table {
                        true => format!("(SELECT coalesce(max(fencing_token), 0) FROM {holds})"),
                        false => "0".into(),
                    };
                    format!(
                        "nextval('{sequence}'), greatest(
                            (SELECT coalesce(max(fencing_token), 0) FROM {table}), {holds_max}) + 1"
                    )
                }
            };
            // `one` is the outer side of a join on `true`, a nested loop, so it runs once: one
            // clock reading, one token drawn (`OFFSET 0` keeps the planner from pulling its
            // volatile calls up into the join). The held rows follow it in no order: sorting
            // them is the reader's (`read_name`), which costs the server no sort per operation.
            format!(
                "SELECT one.*, r.* FROM (
                    SELECT {NOW_MS}, to_regclass($2) IS NOT NULL, {token} OFFSET 0) AS one
                 LEFT JOIN ({}) AS r ON true",
                rows[usize::from(holds_table)]
            )
        };
        Sql {
            lock: "SELECT pg_advisory_xact_lock($1, hashtext($2))".into(),
            read: [
                [read(false, false), read(false, true)],
                [read(true, false), read(true, true)],
            ],
            rows,
            upsert_lock: format!(
                "INSERT INTO {table} (name, worker_id, node_id, fencing_token, claimed_at,
                    heartbeat_at, ttl_ms, task_info, grant_nonce)
                 VALUES ($1, $2, $3, $4, to_timestamp($5::bigint / 1000.0),
                    to_timestamp($6::bigint / 1000.0), $7, $8::text::jsonb, $9)
                 ON CONFLICT (name) DO UPDATE SET worker_id = EXCLUDED.worker_id,
                    node_id = EXCLUDED.node_id, fencing_token = EXCLUDED.fencing_token,
                    claimed_at = EXCLUDED.claimed_at, heartbeat_at = EXCLUDED.heartbeat_at,
                    ttl_ms = EXCLUDED.ttl_ms, task_info = EXCLUDED.task_info,
                    grant_nonce = EXCLUDED.grant_nonce"
            ),
            free_lock: format!("UPDATE {table} SET worker_id = NULL WHERE name = $1"),
            upsert_hold: format!(
                "INSERT INTO {holds} (name, slot, worker_id, node_id, fencing_token, claimed_at,
                    heartbeat_at, ttl_ms, task_info, grant_nonce, permits, shared,
                    semaphore_limit)
                 VALUES ($1, $2, $3, $4, $5, to_timestamp($6::bigint / 1000.0),
                    to_timestamp($7::bigint / 1000.0), $8, $9::text::jsonb, $10, $11, $12, $13)
                 ON CONFLICT (name, slot) DO UPDATE SET worker_id = EXCLUDED.worker_id,
                    node_id = EXCLUDED.node_id, fencing_token = EXCLUDED.fencing_token,
                    claimed_at = EXCLUDED.claimed_at, heartbeat_at = EXCLUDED.heartbeat_at,
                    ttl_ms = EXCLUDED.ttl_ms, task_info = EXCLUDED.task_info,
                    grant_nonce = EXCLUDED.grant_nonce, permits = EXCLUDED.permits,
                    shared = EXCLUDED.shared, semaphore_limit = EXCLUDED.semaphore_limit"
            ),
            free_hold: format!("UPDATE {holds} SET worker_id = NULL WHERE name = $1 AND slot = $2"),
        }
    }

    /// The held rows of the name $1 in both tables (the lock's alone without `holds_table`):
    /// the lock's with slot NULL, the holds' and the reservation's with theirs; each with
    /// permits, shared and the semaphore's limit.
    pub fn rows(&self, holds_table: bool) -> &str {
        &self.rows[usize::from(holds_table)]
    }

    /// What a transaction reads once it holds the name's lock, in one statement (so on one
    /// snapshot, taken after the lock): the database's clock in Unix ms, whether the holds table
    /// exists, for a claim the sequence's next value and the floor a token must reach (the
    /// greatest token the tables hold, free rows' included, + 1; else NULLs), and then the
    /// name's held rows as [`Sql::rows`] selects them (a row of NULLs if none).
    pub fn read(&self, holds_table: bool, claim: bool) -> &str {
        &self.read[usize::from(holds_table)][usize::from(claim)]
    }
}

/// A connection inside a transaction this module began: committed by [`Open::committed`], else
/// rolled back when dropped.
pub(crate) struct Open {
    client: Object,
    done: bool,
}

impl Open {
    pub fn new(client: Object) -> Open {
        Open {
            client,
            done: false,
        }
    }

    pub fn client(&self) -> &Object {
        &self.client
    }

    /// The statement for `sql`, prepared on this connection once.
    pub async fn prepare(&self, sql: &str) -> Result<Statement, tokio_postgres::Error> {
        self.client.prepare_cached(sql).await
    }

    /// The transaction is over (its `COMMIT` answered): the connection goes back to the pool as
    /// it is.
    pub fn committed(mut self) {
        self.done = true;
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        // A request is queued on the connection when its future is first polled, so one poll
        // sends the `ROLLBACK` ahead of anything the connection's next user sends; its answer is
        // not waited for. (tokio-postgres's own `Transaction` rolls back on drop the same way.)
        let rollback = std::pin::pin!(self.client.batch_execute("ROLLBACK"));
        let _ = rollback.poll(&mut Context::from_waker(Waker::noop()));
    }
}
