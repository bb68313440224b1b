//! `sentinel doctor`'s look at a database: the login, and the grants the backend's first use and
//! every operation need on its tables and sequence (docs/postgres.md lists them), read from the
//! catalog. Unlike a lock
//! operation it creates and changes nothing: a missing table is reported as what the first use
//! will create, if this user may.

use sentinel_core::diagnose::Check;
use sentinel_core::error::Error;

use crate::{Failure, PostgresBackend, layout};

/// The table privileges the operations use: reads, grants, renewals and releases. No DELETE: a
/// release keeps the row, for its token.
const TABLE_PRIVILEGES: [&str; 3] = ["SELECT", "INSERT", "UPDATE"];
/// The sequence privileges of `nextval` and `setval`.
const SEQUENCE_PRIVILEGES: [&str; 2] = ["USAGE", "UPDATE"];
/// What every query of the check is called in messages.
const WHAT: &str = "a check of privileges";

/// What the catalog says about this user and sentinel's objects.
struct Facts {
    user: String,
    version: String,
    /// The table exists, and the privileges of [`TABLE_PRIVILEGES`] the user lacks on it.
    table: Option<Vec<String>>,
    /// The sequence exists, and the privileges of [`SEQUENCE_PRIVILEGES`] the user lacks on it.
    sequence: Option<Vec<String>>,
    /// The holds table exists, and the privileges of [`TABLE_PRIVILEGES`] the user lacks on it.
    holds: Option<Vec<String>>,
    /// The user may create what is missing: CREATE on the schema, or on the database when the
    /// schema is missing too.
    can_create: bool,
    /// The table's columns (name, type, NOT NULL), to compare with this version's layout.
    columns: Vec<(String, String, bool)>,
}

impl PostgresBackend {
    /// `sentinel doctor`'s checks: the database answers to this login, and the user holds the
    /// grants on the table and sequence, or may create them.
    pub async fn diagnose(&self) -> Vec<Check> {
        let facts = self
            .call_with(
                WHAT,
                false,
                |client| async move { self.facts(&client).await },
            )
            .await;
        match facts {
            Ok(facts) => self.judge(&facts),
            Err(e) => vec![Check::fail("connection", e)],
        }
    }

    /// What the catalog says of this login, the tables, the sequence and their grants.
    async fn facts(&self, client: &tokio_postgres::Client) -> Result<Facts, Failure> {
        let names = &self.inner.names;
        let err = |e: tokio_postgres::Error| self.failure(WHAT, &e);
        let row = client
            .query_one(
                "SELECT current_user::text, current_setting('server_version')",
                &[],
            )
            .await
            .map_err(err)?;
        let (user, version): (String, String) = (row.get(0), row.get(1));
        let found = names.existing(client).await.map_err(err)?;
        let lacking = |function: &'static str, object: &'static str| {
            let sql = format!(
                "SELECT array(SELECT p FROM unnest($2::text[]) p WHERE NOT {function}($1, p))"
            );
            let (name, privileges) = match object {
                "table" => (&names.table, &TABLE_PRIVILEGES[..]),
                "holds" => (&names.holds, &TABLE_PRIVILEGES[..]),
                _ => (&names.sequence, &SEQUENCE_PRIVILEGES[..]),
            };
            async move {
                let row = client
                    .query_one(&sql, &[name, &privileges])
                    .await
                    .map_err(err)?;
                Ok::<Vec<String>, Failure>(row.get(0))
            }
        };
        let table = match found.table {
            true => Some(lacking("has_table_privilege", "table").await?),
            false => None,
        };
        let sequence = match found.sequence {
            true => Some(lacking("has_sequence_privilege", "sequence").await?),
            false => None,
        };
        let holds = match found.holds {
            true => Some(lacking("has_table_privilege", "holds").await?),
            false => None,
        };
        let can_create = self.may_create(client, found.schema).await.map_err(err)?;
        let columns: Vec<(String, String, bool)> = match table.is_some() {
            true => client
                .query(layout::COLUMNS_OF, &[&names.table])
                .await
                .map_err(err)?
                .iter()
                .map(|r| (r.get(0), r.get(1), r.get(2)))
                .collect(),
            false => Vec::new(),
        };
        Ok(Facts {
            user,
            version,
            table,
            sequence,
            holds,
            can_create,
            columns,
        })
    }

    /// Whether this login may create what is missing: in the schema if it exists, else the
    /// schema itself in the database.
    async fn may_create(
        &self,
        client: &tokio_postgres::Client,
        schema_exists: bool,
    ) -> Result<bool, tokio_postgres::Error> {
        let row = match schema_exists {
            true => {
                client
                    .query_one(
                        "SELECT has_schema_privilege($1, 'CREATE')",
                        &[&self.inner.names.schema],
                    )
                    .await?
            }
            false => {
                client
                    .query_one(
                        "SELECT has_database_privilege(current_database(), 'CREATE')",
                        &[],
                    )
                    .await?
            }
        };
        Ok(row.get(0))
    }

    /// The checks the catalog's answers make.
    fn judge(&self, f: &Facts) -> Vec<Check> {
        let names = &self.inner.names;
        let target = &self.inner.target;
        let mut checks = vec![Check::ok(
            "connection",
            format!("{target} as {}, PostgreSQL {}", f.user, f.version),
        )];
        let grants = |kind: &str, name: &str, found: &Option<Vec<String>>, all: &[&str]| {
            let check = format!("{kind} {name}");
            match found {
                Some(lacking) if lacking.is_empty() => {
                    Check::ok(check, format!("{} granted", all.join(", ")))
                }
                Some(lacking) => Check::fail(
                    check,
                    Error::Auth(format!(
                        "{target}: {} lacks {} on {kind} {name}; as its owner run: GRANT {} ON \
                         {}{name} TO {} (docs/postgres.md)",
                        f.user,
                        lacking.join(", "),
                        lacking.join(", "),
                        if kind == "sequence" { "SEQUENCE " } else { "" },
                        f.user
                    )),
                ),
                None if f.can_create => Check::ok(
                    check,
                    format!("missing: the first lock operation creates it as {}", f.user),
                ),
                None => Check::fail(
                    check,
                    Error::Auth(format!(
                        "{target}: {kind} {name} does not exist and {} may not create it (no \
                         CREATE on the schema {}); create it once as its owner (docs/postgres.md)",
                        f.user, names.schema
                    )),
                ),
            }
        };
        checks.push(grants("table", &names.table, &f.table, &TABLE_PRIVILEGES));
        checks.push(grants(
            "sequence",
            &names.sequence,
            &f.sequence,
            &SEQUENCE_PRIVILEGES,
        ));
        checks.push(match (&f.holds, f.can_create) {
            // Locks work without it; only semaphores and shared holds are refused.
            (None, false) => Check::warn(
                format!("table {}", names.holds),
                format!(
                    "does not exist and {} may not create it: locks work, semaphores and shared \
                     holds are refused until its owner creates it (docs/postgres.md)",
                    f.user
                ),
            ),
            _ => grants("table", &names.holds, &f.holds, &TABLE_PRIVILEGES),
        });
        if f.table.is_some() {
            checks.push(match names.migration(&f.columns) {
                Ok(None) => Check::ok("table layout", "this version's"),
                Ok(Some((lacks, _))) => Check::warn(
                    "table layout",
                    format!(
                        "an older layout ({lacks}): the first lock operation changes it if {} \
                         owns the table, else says what its owner should run",
                        f.user
                    ),
                ),
                Err(why) => Check::fail(
                    "table layout",
                    Error::Unexpected(format!("{target}: {why}")),
                ),
            });
        }
        checks
    }
}
