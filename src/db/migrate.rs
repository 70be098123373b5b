//! orgctl's own schema (`orgctl`): whether it is there and readable, and creating or
//! upgrading it from orgctl's migrations, inside the transaction of the change that needs it.

use sqlx::postgres::{PgConnection, PgRow};
use sqlx::{Column, Row};

use super::commit::lost_cause;
use super::query::{query, query_scalar, simple_batch, simple_batch_partial};
use super::{begin_write, DbUrl, Settings};
use crate::error::{Error, Result};

/// orgctl's own migrations, applied into the `orgctl` schema (with its own `_sqlx_migrations`
/// there, so it never meets a platform's table of the same name).
pub static ORGCTL_MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("migrations/orgctl");

/// The platform's schema as it ships (a schema-only dump of a database built from its
/// migrations through 2026-08, kept verbatim as a fixture). Applied only to databases orgctl
/// creates itself (`dev up`, tests), never to a real tenant.
pub const PLATFORM_SCHEMA_SQL: &str = include_str!("../../migrations/platform/schema-2026-08.sql");

/// An older tenant's variant, applied after [`PLATFORM_SCHEMA_SQL`]: `workspaces.status` as
/// TEXT instead of the enum (dev/test only).
pub const PLATFORM_LEGACY_TEXT_STATUS_SQL: &str =
    include_str!("../../migrations/platform/legacy_text_status.sql");
/// Serialises creation/migration of the `orgctl` schema.
const SCHEMA_LOCK: (i32, i32) = (0x6f72_6763, 2);

/// Whether orgctl's own schema exists (read-only commands must not create it), whether or not
/// this role may read it.
pub async fn orgctl_schema_exists(conn: &mut PgConnection) -> Result<bool> {
    Ok(!matches!(
        orgctl_table(conn, "audit_log").await?,
        Access::Absent
    ))
}

/// Whether a table of orgctl's own schema exists, and whether this role may read it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    Absent,
    Readable,
    /// It exists, but the role lacks USAGE on schema orgctl or SELECT on the table (a
    /// read-only CI role, after another role created the schema).
    NotReadable,
}

/// Whether a table of schema orgctl (by name) may be read: NULL when there is none.
const ORGCTL_TABLE_ACCESS: &str =
    "SELECT has_schema_privilege(n.oid, 'USAGE') AND has_table_privilege(c.oid, 'SELECT')
           FROM pg_catalog.pg_class c
           JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
          WHERE n.nspname = 'orgctl' AND c.relname = $1";

/// Look an orgctl table up through the catalog by name: `to_regclass('orgctl.x')` raises
/// "permission denied for schema orgctl" for a role without USAGE on it, where a read-only
/// command should carry on and report orgctl's own state as not readable.
pub async fn orgctl_table(conn: &mut PgConnection, table: &str) -> Result<Access> {
    let readable: Option<bool> = query_scalar(ORGCTL_TABLE_ACCESS)
        .bind(table)
        .fetch_optional(&mut *conn)
        .await?;
    Ok(match readable {
        None => Access::Absent,
        Some(true) => Access::Readable,
        Some(false) => Access::NotReadable,
    })
}

/// Whether an orgctl table can be read now: absent and unreadable both read as "no state".
pub async fn orgctl_table_readable(conn: &mut PgConnection, table: &str) -> Result<bool> {
    Ok(orgctl_table(conn, table).await? == Access::Readable)
}

/// sqlx's own version table, qualified: the same columns sqlx's migrator uses, so sqlx tooling
/// reads what orgctl writes.
const MIGRATIONS_TABLE_SQL: &str = "CREATE SCHEMA IF NOT EXISTS orgctl;
CREATE TABLE IF NOT EXISTS orgctl._sqlx_migrations (
    version BIGINT PRIMARY KEY,
    description TEXT NOT NULL,
    installed_on TIMESTAMPTZ NOT NULL DEFAULT now(),
    success BOOLEAN NOT NULL,
    checksum BYTEA NOT NULL,
    execution_time BIGINT NOT NULL
);";

/// Create or upgrade the `orgctl` schema on first mutating use, on the caller's connection
/// (outside any transaction), in ONE transaction under an advisory lock: the schema, sqlx's
/// version table (`orgctl._sqlx_migrations`, sqlx's format and checksums), every pending
/// migration of [`ORGCTL_MIGRATOR`] and its bookkeeping row. sqlx's own migrator needs a
/// transaction per migration, a session lock and about twenty statements, and can stop between
/// migrations; on a fleet, first touch of every tenant pays for that, and here it is six
/// statements that apply all or nothing. The migrations are schema-qualified, so the
/// connection's `search_path` is never changed.
pub async fn ensure_orgctl_schema(
    conn: &mut PgConnection,
    url: &DbUrl,
    settings: &Settings,
) -> Result<()> {
    // Checked inside the transaction (no statement outside one, see ensure_compatible); the
    // common case, nothing to do, ends it right there.
    let mut tx = begin_write(conn, settings).await?;
    let access = match simple_batch(&mut tx, &format!("SELECT {MIGRATIONS_ACCESS}"))
        .await?
        .first()
        .and_then(|rows| rows.first())
    {
        Some(row) => match row.try_get::<Option<bool>, _>(0)? {
            None => Access::Absent,
            Some(true) => Access::Readable,
            Some(false) => Access::NotReadable,
        },
        None => Access::Absent,
    };
    let _ = ensure_orgctl_schema_in(&mut tx, url, access, "").await?;
    // Not through commit_or_resolve: nothing of the tenant changes here, and a rerun finishes
    // whatever this did or did not commit. But a lost answer is not "rolled back".
    tx.commit().await.map_err(|e| match e {
        sqlx::Error::Database(_) => Error::from(e),
        other => Error::failed(format!(
            "the connection to {} was lost while committing orgctl's own schema ({}); it may or may not have been created, and nothing else was changed: rerun",
            url.target(),
            lost_cause(&other)
        )),
    })?;
    Ok(())
}

/// Whether orgctl's version table is there and readable (NULL: absent), as a select-list
/// item of a constant query.
pub(super) const MIGRATIONS_ACCESS: &str =
    "(SELECT has_schema_privilege(n.oid, 'USAGE') AND has_table_privilege(c.oid, 'SELECT')
   FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
  WHERE n.nspname = 'orgctl' AND c.relname = '_sqlx_migrations')";

/// The version orgctl's schema is at (the last migration recorded as applied).
const CURRENT_VERSION: &str = "SELECT max(version) FROM orgctl._sqlx_migrations WHERE success";

/// Create or upgrade orgctl's schema in the caller's write transaction, given what
/// [`MIGRATIONS_ACCESS`] found. Steady state (schema at this orgctl's version) costs one
/// statement; a tenant without the schema, one message ([`create_fresh_schema`]); an upgrade:
/// the schema lock, the DDL and the version table in one message, then the pending migrations'
/// script and their bookkeeping rows.
///
/// Returns true when the schema was absent and this transaction created it whole (so it holds
/// no row of any earlier command: a caller can skip reading its own state back).
pub(super) async fn ensure_orgctl_schema_in(
    conn: &mut PgConnection,
    url: &DbUrl,
    access: Access,
    tail: &str,
) -> Result<(bool, Option<Result<Vec<Vec<PgRow>>>>)> {
    let latest = ORGCTL_MIGRATOR.iter().map(|m| m.version).max().unwrap_or(0);
    let started = std::time::Instant::now();
    match access {
        Access::Absent => {
            if let Some(script) = fresh_schema_script(started) {
                let tail = create_fresh_schema(conn, url, &script, latest, tail).await?;
                return Ok((true, tail));
            }
        }
        Access::NotReadable => {
            return Err(Error::refused(format!(
                "role '{}' may not use orgctl's own schema (another role created it): nothing was changed; ask a DBA to GRANT USAGE ON SCHEMA orgctl and SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA orgctl to it, or run as the role that owns it",
                current_role(conn).await
            )))
        }
        Access::Readable => {
            // Constant SQL: one simple-query message, one round trip.
            let rows =
                simple_batch(conn, CURRENT_VERSION)
                    .await?;
            let current: Option<i64> = match rows.first().and_then(|r| r.first()) {
                Some(row) => row.try_get(0)?,
                None => None,
            };
            match current {
                Some(c) if c == latest => return Ok((false, None)),
                Some(c) if c > latest => return Err(newer_schema(url, c, latest)),
                _ => {}
            }
        }
    }
    apply_pending(conn, url, latest, started).await?;
    Ok((false, None))
}

/// The general path of [`ensure_orgctl_schema_in`]: under the schema lock, apply the
/// migrations the version table does not record yet, with their bookkeeping rows.
async fn apply_pending(
    conn: &mut PgConnection,
    url: &DbUrl,
    latest: i64,
    started: std::time::Instant,
) -> Result<()> {
    // The schema lock, the schema and sqlx's version table, and — under the lock — what
    // another orgctl may have applied meanwhile: one message (constant SQL).
    let (results, _) = schema_batch(conn, url, "", "").await?;
    let mut applied: Vec<(i64, Vec<u8>, bool)> = Vec::new();
    for r in results.last().map(Vec::as_slice).unwrap_or_default() {
        applied.push((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?));
    }
    if let Some((v, _, _)) = applied.iter().find(|(v, _, _)| *v > latest) {
        return Err(newer_schema(url, *v, latest));
    }
    let mut script = String::new();
    let (mut versions, mut descriptions, mut checksums) = (Vec::new(), Vec::new(), Vec::new());
    for m in ORGCTL_MIGRATOR.iter() {
        match applied.iter().find(|(v, _, _)| *v == m.version) {
            Some((_, sum, ok)) if *ok && sum.as_slice() == &*m.checksum => {}
            Some(_) => {
                return Err(Error::failed(format!(
                    "orgctl's schema on {} has migration {} recorded as failed or with another checksum than this orgctl's; repair orgctl._sqlx_migrations by hand",
                    url.target(),
                    m.version
                )))
            }
            None => {
                script.push_str(&m.sql);
                script.push_str(";\n");
                versions.push(m.version);
                descriptions.push(m.description.to_string());
                checksums.push(m.checksum.to_vec());
            }
        }
    }
    if !versions.is_empty() {
        // The bookkeeping rows go in the script's own message (one round trip on a tenant's
        // first touch) when they are plain: the versions, checksums and descriptions are this
        // orgctl's own constants (its migrations' file names), never user input.
        let plain = descriptions.iter().all(|d| plain_description(d));
        if plain {
            let elapsed = i64::try_from(started.elapsed().as_nanos()).unwrap_or(i64::MAX);
            let rows: Vec<String> = versions
                .iter()
                .zip(&descriptions)
                .zip(&checksums)
                .map(|((v, d), c)| {
                    let hex: String = c.iter().map(|b| format!("{b:02x}")).collect();
                    format!("({v}, '{d}', true, decode('{hex}', 'hex'), {elapsed})")
                })
                .collect();
            script.push_str(&format!(
                "INSERT INTO orgctl._sqlx_migrations
                        (version, description, success, checksum, execution_time)
                 VALUES {};",
                rows.join(", ")
            ));
        }
        sqlx::Executor::execute(&mut *conn, script.as_str())
            .await
            .map_err(|e| {
                Error::failed(format!(
                    "could not migrate orgctl's schema on {}: {}",
                    url.target(),
                    crate::error::classify_sqlx(&e).message
                ))
            })?;
        if !plain {
            query(RECORD_MIGRATIONS)
                .bind(&versions)
                .bind(&descriptions)
                .bind(&checksums)
                .bind(i64::try_from(started.elapsed().as_nanos()).unwrap_or(i64::MAX))
                .execute(&mut *conn)
                .await?;
        }
    }
    Ok(())
}

/// The bookkeeping rows of migrations whose descriptions cannot go into a literal.
const RECORD_MIGRATIONS: &str = "INSERT INTO orgctl._sqlx_migrations
                        (version, description, success, checksum, execution_time)
                 SELECT v, d, true, c, $4
                   FROM unnest($1::bigint[], $2::text[], $3::bytea[]) AS m(v, d, c)";

/// Whether every migration's description can go into a literal (they are this orgctl's own
/// constants, its migrations' file names, never user input).
fn plain_description(d: &str) -> bool {
    d.bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b' ' | b'_' | b'-' | b'.'))
}

/// Every migration of [`ORGCTL_MIGRATOR`] and their bookkeeping rows as one script (constant
/// SQL: this orgctl's own text and numbers), for a tenant without orgctl's schema; None when a
/// description is not plain (then the general path binds them).
fn fresh_schema_script(started: std::time::Instant) -> Option<String> {
    if !ORGCTL_MIGRATOR
        .iter()
        .all(|m| plain_description(&m.description))
    {
        return None;
    }
    let mut script = String::new();
    let mut rows = Vec::new();
    let elapsed = i64::try_from(started.elapsed().as_nanos()).unwrap_or(i64::MAX);
    for m in ORGCTL_MIGRATOR.iter() {
        script.push_str(&m.sql);
        script.push_str(";\n");
        let hex: String = m.checksum.iter().map(|b| format!("{b:02x}")).collect();
        rows.push(format!(
            "({}, '{}', true, decode('{hex}', 'hex'), {elapsed})",
            m.version, m.description
        ));
    }
    script.push_str(&format!(
        "INSERT INTO orgctl._sqlx_migrations
                (version, description, success, checksum, execution_time)
         VALUES {}
         ON CONFLICT (version) DO NOTHING;",
        rows.join(", ")
    ));
    Some(script)
}

/// First touch of a tenant: the schema lock, the schema, sqlx's version table, every migration
/// and its bookkeeping row, and the version table read back — ONE message. The schema was
/// absent when [`begin_change`] looked, under the tenant lock every orgctl change takes; should
/// another orgctl (one without that lock) have created it meanwhile, the migrations are written
/// to be rerun (`IF NOT EXISTS`, `ON CONFLICT DO NOTHING`: a test runs them twice) and the
/// rows read back are checked as on the general path: a newer or different migration refuses,
/// and the transaction, with everything it created, rolls back.
async fn create_fresh_schema(
    conn: &mut PgConnection,
    url: &DbUrl,
    script: &str,
    latest: i64,
    tail: &str,
) -> Result<Option<Result<Vec<Vec<PgRow>>>>> {
    let (results, tail) = schema_batch(conn, url, script, tail).await?;
    for r in results.last().map(Vec::as_slice).unwrap_or_default() {
        let (version, checksum, success): (i64, Vec<u8>, bool) =
            (r.try_get(0)?, r.try_get(1)?, r.try_get(2)?);
        if version > latest {
            return Err(newer_schema(url, version, latest));
        }
        let ours = ORGCTL_MIGRATOR.iter().find(|m| m.version == version);
        if !success || ours.is_some_and(|m| checksum.as_slice() != &*m.checksum) {
            return Err(Error::failed(format!(
                "orgctl's schema on {} has migration {version} recorded as failed or with another checksum than this orgctl's; repair orgctl._sqlx_migrations by hand",
                url.target()
            )));
        }
    }
    Ok(tail)
}

/// One message: the schema lock, the schema and sqlx's version table, `script` (constant SQL:
/// orgctl's migrations, or nothing), and — under the lock — the version table read back; then,
/// when `tail` (constant SQL) is not empty, a marker statement and the tail. Returns the
/// schema part's rows (the version table's last) and, with a tail, the tail's rows or its
/// failure as it is: the marker's row tells a failure of the tail from one of the schema.
async fn schema_batch(
    conn: &mut PgConnection,
    url: &DbUrl,
    script: &str,
    tail: &str,
) -> Result<(Vec<Vec<PgRow>>, Option<Result<Vec<Vec<PgRow>>>>)> {
    let mut batch = format!(
        "SELECT pg_advisory_xact_lock({}, {});
         {MIGRATIONS_TABLE_SQL}
         {script}
         SELECT version, checksum, success FROM orgctl._sqlx_migrations",
        SCHEMA_LOCK.0, SCHEMA_LOCK.1
    );
    if !tail.is_empty() {
        batch.push_str(&format!(";\n SELECT true AS {TAIL_MARK};\n{tail}"));
    }
    let (mut out, failed) = simple_batch_partial(conn, &batch).await;
    let mark = (!tail.is_empty())
        .then(|| {
            out.iter().position(|rows| {
                rows.len() == 1 && rows[0].columns().first().map(|c| c.name()) == Some(TAIL_MARK)
            })
        })
        .flatten();
    match (mark, failed) {
        // A lock timeout, a standby or default_transaction_read_only: no grant helps
        // (schema_error).
        (None, Some(e)) => Err(schema_error(url, e)),
        (None, None) if !tail.is_empty() => Err(Error::failed(
            "internal: the message that creates orgctl's schema did not reach its tail",
        )),
        (None, None) => Ok((out, None)),
        (Some(m), failed) => {
            let tail_rows = out.split_off(m + 1);
            out.truncate(m);
            let tail = match failed {
                Some(e) => Err(e),
                None => Ok(tail_rows),
            };
            Ok((out, Some(tail)))
        }
    }
}

/// The column name of [`schema_batch`]'s marker statement.
const TAIL_MARK: &str = "orgctl_schema_done";

/// A failure to create orgctl's schema: a lock timeout or a read-only server as it is, anything
/// else (usually no CREATE privilege on the database) with what a DBA can do.
fn schema_error(url: &DbUrl, e: Error) -> Error {
    if e.exit == crate::error::Exit::Refused || e.message.starts_with("the database is read-only") {
        return e;
    }
    Error::refused(format!(
        "could not create orgctl's own schema on {}: {}; ask a DBA to run CREATE SCHEMA orgctl AUTHORIZATION {}",
        url.target(),
        e.message,
        url.options().get_username()
    ))
}

const CURRENT_ROLE: &str = "SELECT current_user::text";

async fn current_role(conn: &mut PgConnection) -> String {
    query_scalar(CURRENT_ROLE)
        .fetch_one(&mut *conn)
        .await
        .unwrap_or_else(|_| "?".to_string())
}

fn newer_schema(url: &DbUrl, version: i64, latest: i64) -> Error {
    Error::refused(format!(
        "orgctl's schema on {} is at version {version}, newer than this orgctl knows ({latest}): use a newer orgctl",
        url.target()
    ))
}

/// The static statements of this module, by name (the version table's multi-statement DDL
/// and the scripts built from the migrations are not single statements).
pub(crate) const STATEMENTS: &[(&str, &str)] = &[
    ("orgctl_table_access", ORGCTL_TABLE_ACCESS),
    ("current_version", CURRENT_VERSION),
    ("record_migrations", RECORD_MIGRATIONS),
    ("current_role", CURRENT_ROLE),
];
