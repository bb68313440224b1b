//! The tables and sequence sentinel keeps its locks in: what they look like, the SQL that creates
//! what is missing, and what an older or hand-made table lacks.
//!
//! `sentinel_holds`, the rows of shared holds and semaphore permits, came later than the lock
//! table: created where missing, it takes the lock table's SELECT, INSERT and UPDATE grants, so
//! worker roles granted what the lock table needs keep working once the owner's first use made
//! it. Where a role may not create it, locks go on without it.
//!
//! Both are named with their schema, never found through `search_path`: PostgreSQL's default
//! path starts with `"$user"`, so two roles each owning a schema of their name would otherwise
//! each find (and create) a table of their own, and hold one lock at once. Only what is missing is
//! created, so a worker role with grants on existing objects (no CREATE right) works. A table of
//! another layout is changed to this one when the role may (it owns the table), else the message
//! says what its owner should run.
//!
//! `worker_id` is NULL in a free row: a release keeps the row, because its token is the floor of
//! the name's next one ([`crate`]'s `next_token`), so the table holds a row per lock name ever
//! used. A table made by an older version, which deleted the row instead, has `worker_id NOT NULL`
//! and is changed. The table is indexed by fencing token, because every grant reads the largest
//! token it holds; a table made by an older version has no such index and pays a scan of its rows
//! per grant instead.

/// The table's columns: name, type as `format_type` spells it, and the clause that adds it to a
/// table that lacks it (`None`: a table without it is not sentinel's).
const COLUMNS: [(&str, &str, Option<&str>); 9] = [
    ("name", "text", None),
    ("worker_id", "text", None),
    ("node_id", "text", Some("text NOT NULL DEFAULT ''")),
    ("fencing_token", "bigint", None),
    ("claimed_at", "timestamp with time zone", None),
    ("heartbeat_at", "timestamp with time zone", None),
    ("ttl_ms", "bigint", None),
    ("task_info", "jsonb", Some("jsonb NOT NULL DEFAULT '{}'")),
    ("grant_nonce", "text", Some("text NOT NULL DEFAULT ''")),
];

/// Columns a free row leaves NULL (a release keeps the row); older versions made them NOT NULL.
const NULLABLE: [&str; 1] = ["worker_id"];

/// Which of schema ($1, as written), table ($2), sequence ($3) and holds table ($4) exist; a
/// role without USAGE on the schema gets an error here, not a wrong answer.
const EXISTING: &str = "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1),
    to_regclass($2) IS NOT NULL, to_regclass($3) IS NOT NULL, to_regclass($4) IS NOT NULL";

/// The columns of the table $1: name, type, and whether it is NOT NULL.
pub(crate) const COLUMNS_OF: &str =
    "SELECT attname::text, format_type(atttypid, atttypmod), attnotnull FROM pg_attribute
    WHERE attrelid = $1::text::regclass AND attnum > 0 AND NOT attisdropped";

/// The schema's objects, as SQL names.
#[derive(Debug, Clone)]
pub(crate) struct Names {
    /// The schema as written, to look it up in `pg_namespace`.
    pub schema: String,
    /// `"schema"`.
    pub quoted_schema: String,
    /// `"schema".sentinel_locks`.
    pub table: String,
    /// `"schema".sentinel_fencing_tokens`.
    pub sequence: String,
    /// `"schema".sentinel_holds`.
    pub holds: String,
}

/// Which of sentinel's objects exist.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Existing {
    pub schema: bool,
    pub table: bool,
    pub sequence: bool,
    pub holds: bool,
}

impl Existing {
    pub fn all(&self) -> bool {
        self.schema && self.table && self.sequence && self.holds
    }
}

impl Names {
    /// Which of the schema, the table, the sequence and the holds table exist.
    pub async fn existing(
        &self,
        client: &tokio_postgres::Client,
    ) -> Result<Existing, tokio_postgres::Error> {
        let row = client
            .query_one(
                EXISTING,
                &[&self.schema, &self.table, &self.sequence, &self.holds],
            )
            .await?;
        Ok(Existing {
            schema: row.get(0),
            table: row.get(1),
            sequence: row.get(2),
            holds: row.get(3),
        })
    }

    /// The names in `schema`, which [`crate::settings`] has checked holds letters, digits and `_`
    /// only, so quoting it is enough.
    pub fn new(schema: &str) -> Names {
        let quoted_schema = format!("\"{schema}\"");
        Names {
            schema: schema.to_string(),
            table: format!("{quoted_schema}.sentinel_locks"),
            sequence: format!("{quoted_schema}.sentinel_fencing_tokens"),
            holds: format!("{quoted_schema}.sentinel_holds"),
            quoted_schema,
        }
    }

    /// The statements that create what is missing.
    pub fn create(&self, found: Existing) -> String {
        let mut sql = String::new();
        if !found.schema {
            sql += &format!("CREATE SCHEMA IF NOT EXISTS {};\n", self.quoted_schema);
        }
        if !found.table {
            sql += &format!(
                "CREATE TABLE IF NOT EXISTS {} (
                    name text PRIMARY KEY,
                    worker_id text,
                    node_id text NOT NULL,
                    fencing_token bigint NOT NULL,
                    claimed_at timestamptz NOT NULL,
                    heartbeat_at timestamptz NOT NULL,
                    ttl_ms bigint NOT NULL CHECK (ttl_ms > 0),
                    task_info jsonb NOT NULL DEFAULT '{{}}',
                    grant_nonce text NOT NULL DEFAULT ''
                );
                CREATE INDEX IF NOT EXISTS sentinel_locks_fencing_token ON {} (fencing_token);\n",
                self.table, self.table
            );
        }
        if !found.sequence {
            sql += &format!("CREATE SEQUENCE IF NOT EXISTS {};\n", self.sequence);
        }
        if !found.holds {
            // A row per hold of a name held by several (slot 0 up; a released hold's row is kept
            // for its token, and reused), and the name's reservation in slot -1.
            sql += &format!(
                "CREATE TABLE IF NOT EXISTS {} (
                    name text NOT NULL,
                    slot integer NOT NULL,
                    worker_id text,
                    node_id text NOT NULL,
                    fencing_token bigint NOT NULL,
                    claimed_at timestamptz NOT NULL,
                    heartbeat_at timestamptz NOT NULL,
                    ttl_ms bigint NOT NULL CHECK (ttl_ms > 0),
                    task_info jsonb NOT NULL DEFAULT '{{}}',
                    grant_nonce text NOT NULL DEFAULT '',
                    permits integer NOT NULL CHECK (permits > 0),
                    shared boolean NOT NULL,
                    semaphore_limit integer,
                    PRIMARY KEY (name, slot)
                );
                CREATE INDEX IF NOT EXISTS sentinel_holds_fencing_token ON {} (fencing_token);\n",
                self.holds, self.holds
            );
            // Whoever may use the lock table may use its companion: a worker role granted what
            // it needs before this version keeps working once the owner's first use made it.
            sql += &format!(
                "DO $$ DECLARE g record; BEGIN
                    FOR g IN SELECT a.privilege_type AS what, CASE WHEN a.grantee = 0
                            THEN 'PUBLIC' ELSE quote_ident(r.rolname) END AS who
                        FROM pg_class c CROSS JOIN LATERAL aclexplode(c.relacl) a
                        LEFT JOIN pg_roles r ON r.oid = a.grantee
                        WHERE c.oid = '{}'::regclass
                            AND a.privilege_type IN ('SELECT', 'INSERT', 'UPDATE')
                    LOOP
                        EXECUTE format('GRANT %s ON {} TO %s', g.what, g.who);
                    END LOOP;
                END $$;\n",
                self.table, self.holds
            );
        }
        sql
    }

    /// What the table with `found` columns (name, type, NOT NULL) lacks: `Ok(None)` if nothing,
    /// `Ok(Some((what, sql)))` with a description and the one `ALTER TABLE` that brings it to this
    /// layout, or `Err` if no change can (it is not sentinel's table).
    pub fn migration(
        &self,
        found: &[(String, String, bool)],
    ) -> Result<Option<(String, String)>, String> {
        let mut changes = Vec::new();
        let mut what = Vec::new();
        for (column, ty, add) in COLUMNS {
            match found.iter().find(|(name, _, _)| name == column) {
                Some((_, t, not_null)) => {
                    if t != ty {
                        what.push(format!("{column} is {t}, not {ty}"));
                        changes.push(format!(
                            "ALTER COLUMN {column} TYPE {ty} USING {column}::{ty}"
                        ));
                    }
                    if *not_null && NULLABLE.contains(&column) {
                        what.push(format!("{column} is NOT NULL"));
                        changes.push(format!("ALTER COLUMN {column} DROP NOT NULL"));
                    }
                }
                None => match add {
                    Some(def) => {
                        what.push(format!("no column {column}"));
                        changes.push(format!("ADD COLUMN IF NOT EXISTS {column} {def}"));
                    }
                    None => {
                        return Err(format!(
                            "the table {} has no column {column}: it is not sentinel's lock table; \
                             name another schema with ?sentinel_schema=NAME",
                            self.table
                        ));
                    }
                },
            }
        }
        if changes.is_empty() {
            return Ok(None);
        }
        Ok(Some((
            what.join(", "),
            format!("ALTER TABLE {} {};", self.table, changes.join(", ")),
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_older_table_gets_one_alter_and_a_foreign_one_an_error() {
        let names = Names::new("public");
        let mut found: Vec<(String, String, bool)> = COLUMNS
            .iter()
            .map(|(c, t, _)| (c.to_string(), t.to_string(), !NULLABLE.contains(c)))
            .collect();
        assert_eq!(names.migration(&found), Ok(None));
        found[1].2 = true;
        found[3].1 = "integer".into();
        found.pop();
        let (what, sql) = names.migration(&found).unwrap().unwrap();
        assert_eq!(
            what,
            "worker_id is NOT NULL, fencing_token is integer, not bigint, no column grant_nonce"
        );
        assert_eq!(
            sql,
            "ALTER TABLE \"public\".sentinel_locks ALTER COLUMN worker_id DROP NOT NULL, \
             ALTER COLUMN fencing_token TYPE bigint USING fencing_token::bigint, \
             ADD COLUMN IF NOT EXISTS grant_nonce text NOT NULL DEFAULT '';"
        );
        found.remove(0);
        assert!(
            names
                .migration(&found)
                .unwrap_err()
                .contains("no column name")
        );
    }
}
