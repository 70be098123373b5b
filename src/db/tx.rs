//! Transactions and locks: BEGIN with orgctl's settings in force for exactly that transaction
//! (lock_timeout, statement_timeout, idle limit), the read-only snapshot, the write
//! transaction of a change with the tenant's advisory lock, and naming who holds that lock.

use std::time::Duration;

use sqlx::postgres::{PgConnection, PgRow};
use sqlx::{Connection, Row};

use super::connect::server_version;
use super::migrate::{ensure_orgctl_schema_in, MIGRATIONS_ACCESS};
use super::query::{query, query_scalar, simple_batch};
use super::schema::{check_compatible, compatibility_sql};
use super::{Access, DbUrl};
use crate::error::{sqlstate, Error, Result};

/// The advisory lock every mutation of a tenant takes (two int4 keys: "orgc", 1). Advisory
/// locks are per database, so this is per tenant.
pub const TENANT_LOCK: (i32, i32) = (0x6f72_6763, 1);

/// Connection settings that come from the global flags.
#[derive(Clone, Debug)]
pub struct Settings {
    pub lock_timeout: Duration,
    /// `None`: the server's, database's or role's own `statement_timeout` stays in force (a
    /// DBA's limit is respected); `Some(0)`: no limit, as PostgreSQL's own 0; `Some(d)`: `d`.
    pub statement_timeout: Option<Duration>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            lock_timeout: Duration::from_secs(5),
            statement_timeout: None,
        }
    }
}

/// How long a write transaction of orgctl may sit idle (orgctl stopped with Ctrl-Z, a hung
/// process) before the server ends it and frees its locks. orgctl never waits for a person
/// inside a write transaction: confirmations come between the read-only plan and the write
/// transaction. Read-only transactions hold no row locks and may wait on the reader of their
/// output (`orgctl token list | less` streams from a cursor), so orgctl sets none for them.
const IDLE_IN_TRANSACTION: Duration = Duration::from_secs(60);

/// Open a write transaction with orgctl's settings in force for exactly this transaction:
/// every mutation, and orgctl's schema migration, begins here.
pub async fn begin_write<'c>(
    conn: &'c mut PgConnection,
    settings: &Settings,
) -> Result<sqlx::Transaction<'c, sqlx::Postgres>> {
    let version = server_version(conn).await?;
    begin_with_settings(conn, "BEGIN", transaction_settings(settings, version, true)).await
}

/// Open a read-only REPEATABLE READ transaction: one consistent snapshot, no row locks, no
/// writes, the same timeouts. Used by every dry run and every read-only command.
pub async fn begin_read_only<'c>(
    conn: &'c mut PgConnection,
    settings: &Settings,
) -> Result<sqlx::Transaction<'c, sqlx::Postgres>> {
    let version = server_version(conn).await?;
    begin_with_settings(
        conn,
        "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY",
        transaction_settings(settings, version, false),
    )
    .await
}

/// BEGIN and the settings that must hold for the transaction (`set_config(…, true)`, SET
/// LOCAL) in ONE simple-query message, one round trip: they end with the transaction, so
/// behind a transaction pooler they are in force on the server connection that runs it and
/// never leak to the next client. A fleet pays every round trip once per tenant, so this one
/// is not spent on a separate statement.
///
/// The values are written into the message as literals, the one place orgctl does not bind
/// parameters: the simple-query protocol has none. They are never user text — names are
/// orgctl's constants, values are milliseconds orgctl formats and the word `orgctl` — and
/// [`setting_literal`] refuses anything but ASCII letters, digits and `_`.
async fn begin_with_settings<'c>(
    conn: &'c mut PgConnection,
    begin: &'static str,
    settings: Vec<(&'static str, String)>,
) -> Result<sqlx::Transaction<'c, sqlx::Postgres>> {
    begin_batch(conn, begin, settings, "").await
}

/// [`begin_with_settings`] with `then` (constant SQL) in the same message.
///
/// A statement of the message that fails leaves the server in an aborted transaction the
/// driver does not know it began (sqlx counts a transaction only once its BEGIN message
/// succeeded): the next BEGIN on this connection would then fail too. Nothing in the message
/// is expected to fail (the tenant lock is only tried there, see [`TAKE_TENANT_LOCK`]); when
/// something does (a lost connection, a cancelled statement), the caller's command — or the
/// backfill's tenant — fails, and a transaction begun on that connection afterwards (the
/// backfill's failure record) fails too, with the original error already reported. (A ROLLBACK first in every message would clean such a leftover up, at
/// the price of a warning from the server on every change; not done.)
async fn begin_batch<'c>(
    conn: &'c mut PgConnection,
    begin: &'static str,
    settings: Vec<(&'static str, String)>,
    then: &'static str,
) -> Result<sqlx::Transaction<'c, sqlx::Postgres>> {
    let mut calls = Vec::with_capacity(settings.len());
    for (n, v) in &settings {
        match (setting_literal(n), setting_literal(v)) {
            (Some(n), Some(v)) => calls.push(format!("set_config({n}, {v}, true)")),
            _ => {
                return Err(Error::failed(format!(
                    "internal: the transaction setting {} is not a plain word",
                    crate::error::sanitize(n)
                )))
            }
        }
    }
    let sql = format!("{begin}; SELECT {}; {then}", calls.join(", "));
    Ok(conn.begin_with(sql).await?)
}

/// Try the tenant's advisory lock inside the BEGIN message of [`begin_change`], without
/// waiting: when it is free (the usual case) the change has it; when it is held, a
/// transaction-local setting says so, [`begin_change`] reads it back with its next statement
/// and only then waits, at most `lock_timeout`, in a statement of its own (so a timeout there
/// can name the holder, read before the wait). Plain SQL: no PL/pgSQL block, whose language a
/// new connection would load (~0.7 ms of server time per tenant) and a DBA may have dropped.
/// The constants are [`TENANT_LOCK`].
const TAKE_TENANT_LOCK: &str = "SELECT set_config('orgctl.tenant_lock', 'busy', true)
  WHERE NOT pg_try_advisory_xact_lock(1869768547, 1)";

/// The wait for the tenant's lock after [`TAKE_TENANT_LOCK`] found it held; clears the note.
const WAIT_TENANT_LOCK: &str =
    "SELECT pg_advisory_xact_lock($1, $2), set_config('orgctl.tenant_lock', '', true)";

/// Open the write transaction of a change: BEGIN, orgctl's settings and the tenant's
/// advisory lock in ONE round trip; then one more message that reads whether the lock was
/// had, checks the platform's schema ([`REQUIRED_COLUMNS`]) and finds orgctl's own schema;
/// then, only on first use or after an upgrade of orgctl, creates or migrates orgctl's schema
/// inside this same transaction ([`ensure_orgctl_schema_in`]), so a change and the schema it
/// records into commit or roll back together (a refused or declined change leaves nothing
/// behind). Every mutating command applies inside a transaction begun here.
pub async fn begin_change<'c>(
    conn: &'c mut PgConnection,
    url: &DbUrl,
    settings: &Settings,
) -> Result<sqlx::Transaction<'c, sqlx::Postgres>> {
    Ok(begin_change_on(conn, url, settings, "").await?.tx)
}

/// A change's transaction as [`begin_change_on`] opened it.
pub struct Begun<'c> {
    pub tx: sqlx::Transaction<'c, sqlx::Postgres>,
    /// This transaction has just created orgctl's schema (first touch: none of orgctl's own
    /// rows exist yet, a caller can skip reading them).
    pub created: bool,
    /// The rows of the caller's `tail` statements, one list per statement, when they rode in
    /// the message that created orgctl's schema; their failure as it is (the transaction is
    /// then aborted: roll it back). None when they were not sent: the caller sends them.
    pub tail: Option<Result<Vec<Vec<PgRow>>>>,
}

/// [`begin_change`], and whether this transaction has just created orgctl's schema. `tail`:
/// constant SQL (no values: orgctl's own text) the caller would send next, or "". On a
/// tenant's first touch it rides at the end of the message that creates orgctl's schema (one
/// round trip fewer), and its rows or its failure come back in [`Begun::tail`].
pub async fn begin_change_on<'c>(
    conn: &'c mut PgConnection,
    url: &DbUrl,
    settings: &Settings,
    tail: &str,
) -> Result<Begun<'c>> {
    let version = server_version(conn).await?;
    let mut tx = begin_batch(
        conn,
        "BEGIN",
        transaction_settings(settings, version, true),
        TAKE_TENANT_LOCK,
    )
    .await?;
    let sql = format!(
        "SELECT coalesce(current_setting('orgctl.tenant_lock', true), '') = 'busy',
                {MIGRATIONS_ACCESS};
         {}",
        compatibility_sql()
    );
    let mut waited = false;
    let access = loop {
        let results = simple_batch(&mut tx, &sql).await?;
        let (probe, columns) = match results.as_slice() {
            [p, c] if p.len() == 1 => (&p[0], c),
            _ => {
                return Err(Error::failed(
                    "internal: orgctl's first check returned no row",
                ))
            }
        };
        check_compatible(columns)?;
        if probe.try_get::<bool, _>(0)? {
            if waited {
                return Err(Error::failed(
                    "internal: the tenant lock is still noted busy after the wait for it",
                ));
            }
            // Held by another session: wait for it as --lock-timeout allows; once had, read
            // the checks again (the holder may have changed orgctl's schema meanwhile).
            if let Err(e) = wait_for_tenant_lock(&mut tx, settings).await {
                let _ = tx.rollback().await;
                return Err(e);
            }
            waited = true;
            continue;
        }
        break match probe.try_get::<Option<bool>, _>(1)? {
            None => Access::Absent,
            Some(true) => Access::Readable,
            Some(false) => Access::NotReadable,
        };
    };
    let (created, tail) = ensure_orgctl_schema_in(&mut tx, url, access, tail).await?;
    Ok(Begun { tx, created, tail })
}

/// A quoted literal of a setting's name or value (see [`begin_with_settings`]); None for
/// anything but a plain word.
fn setting_literal(v: &str) -> Option<String> {
    (!v.is_empty() && v.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'))
        .then(|| format!("'{v}'"))
}

/// Name and value of each per-transaction setting (pure, unit-tested).
fn transaction_settings(
    settings: &Settings,
    version: i32,
    write: bool,
) -> Vec<(&'static str, String)> {
    let ms = |d: Duration| d.as_millis().max(1).to_string();
    let mut v = vec![("lock_timeout", ms(settings.lock_timeout))];
    // Only when asked: otherwise the limit the server, database or role sets stays in force.
    match settings.statement_timeout {
        Some(d) if d.is_zero() => v.push(("statement_timeout", "0".to_string())),
        Some(d) => v.push(("statement_timeout", ms(d))),
        None => {}
    }
    v.extend([
        // Who holds the tenant lock is told by application_name (lock_holder); a pooler may
        // not pass the startup parameter on, so say it here too.
        ("application_name", "orgctl".to_string()),
    ]);
    if write {
        // Read-only: left as the server or role has it (a DBA's limit stays in force).
        v.push((
            "idle_in_transaction_session_timeout",
            ms(IDLE_IN_TRANSACTION),
        ));
    }
    if version >= 140_000 {
        // Notice a vanished client within a second (PostgreSQL 14+), so an interrupted orgctl
        // does not leave a long statement holding locks.
        v.push(("client_connection_check_interval", "1000".to_string()));
    }
    v
}

/// Try an advisory lock (its two int4 keys) for the rest of the transaction, without waiting.
const TRY_TENANT_LOCK: &str = "SELECT pg_try_advisory_xact_lock($1, $2)";

/// Take the tenant's advisory lock for the rest of the transaction, waiting at most
/// `--lock-timeout`. When it is held, the refusal names the holder. ([`begin_change`] takes it
/// inside its BEGIN message instead; this is for a transaction begun otherwise.)
pub async fn lock_tenant(conn: &mut PgConnection, settings: &Settings) -> Result<()> {
    let got: bool = query_scalar(TRY_TENANT_LOCK)
        .bind(TENANT_LOCK.0)
        .bind(TENANT_LOCK.1)
        .fetch_one(&mut *conn)
        .await?;
    if got {
        return Ok(());
    }
    wait_for_tenant_lock(conn, settings).await
}

/// The tenant lock was found held: name the holder, then wait for the lock at most
/// `--lock-timeout`. A timeout is the refusal naming the holder (the transaction is then
/// aborted: roll it back).
async fn wait_for_tenant_lock(conn: &mut PgConnection, settings: &Settings) -> Result<()> {
    let (holder, by_orgctl) = lock_holder(conn).await.unwrap_or_default();
    match query(WAIT_TENANT_LOCK)
        .bind(TENANT_LOCK.0)
        .bind(TENANT_LOCK.1)
        .execute(&mut *conn)
        .await
    {
        Ok(_) => Ok(()),
        Err(sqlx::Error::Database(db))
            if db.code().as_deref() == Some(sqlstate::LOCK_NOT_AVAILABLE) =>
        {
            Err(lock_refusal(&holder, by_orgctl, settings))
        }
        Err(e) => Err(e.into()),
    }
}

/// The refusal when the tenant lock stayed held for `--lock-timeout`. The lock is an
/// advisory lock anyone can take: name the holder for what it is.
fn lock_refusal(holder: &str, by_orgctl: bool, settings: &Settings) -> Error {
    let who = if by_orgctl {
        "another orgctl holds this tenant's lock"
    } else if holder.is_empty() {
        "another session holds this tenant's lock"
    } else {
        "a session that is not orgctl holds this tenant's lock"
    };
    Error::refused(format!(
        "{who}{holder}; waited {}: retry when it is done or raise --lock-timeout",
        crate::output::duration::human(settings.lock_timeout)
    ))
}

/// The backend that holds an advisory lock (its two int4 keys), as [`lock_holder`] names it.
const LOCK_HOLDER: &str =
    "SELECT a.pid, coalesce(a.application_name, ''), coalesce(a.usename::text, ''),
                coalesce(host(a.client_addr), 'local')
           FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
          WHERE l.locktype = 'advisory' AND l.granted
            AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
            AND l.classid = $1::int::oid AND l.objid = $2::int::oid AND l.objsubid = 2
          LIMIT 1";

/// Who holds the tenant lock, for the message, and whether it is orgctl (application_name).
async fn lock_holder(conn: &mut PgConnection) -> Result<(String, bool)> {
    let row = query(LOCK_HOLDER)
        .bind(TENANT_LOCK.0)
        .bind(TENANT_LOCK.1)
        .fetch_optional(&mut *conn)
        .await?;
    Ok(match row {
        Some(r) => {
            let app = r.try_get::<String, _>(1).unwrap_or_default();
            (
                format!(
                    " (backend pid {}, application '{}', user '{}', from {})",
                    r.try_get::<i32, _>(0).unwrap_or_default(),
                    crate::error::sanitize(&app),
                    r.try_get::<String, _>(2).unwrap_or_default(),
                    r.try_get::<String, _>(3).unwrap_or_default()
                ),
                app == "orgctl",
            )
        }
        None => (String::new(), false),
    })
}

/// The static statements of this module, by name.
pub(crate) const STATEMENTS: &[(&str, &str)] = &[
    ("take_tenant_lock", TAKE_TENANT_LOCK),
    ("wait_tenant_lock", WAIT_TENANT_LOCK),
    ("try_tenant_lock", TRY_TENANT_LOCK),
    ("lock_holder", LOCK_HOLDER),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transaction_settings_are_local_values_and_0_is_no_statement_limit() {
        let get = |s: &Settings, version: i32, name: &str| {
            transaction_settings(s, version, true)
                .into_iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| v)
        };
        let mut s = Settings {
            lock_timeout: Duration::from_millis(500),
            statement_timeout: Some(Duration::from_secs(30)),
        };
        assert_eq!(get(&s, 150_000, "lock_timeout").as_deref(), Some("500"));
        assert_eq!(
            get(&s, 150_000, "statement_timeout").as_deref(),
            Some("30000")
        );
        assert_eq!(
            get(&s, 150_000, "idle_in_transaction_session_timeout").as_deref(),
            Some("60000")
        );
        assert_eq!(
            get(&s, 150_000, "application_name").as_deref(),
            Some("orgctl")
        );
        assert_eq!(
            get(&s, 150_000, "client_connection_check_interval").as_deref(),
            Some("1000")
        );
        // Read-only transactions may wait on their reader: no idle limit of orgctl's.
        assert!(!transaction_settings(&s, 150_000, false)
            .iter()
            .any(|(n, _)| *n == "idle_in_transaction_session_timeout"));
        // PostgreSQL 13 does not know client_connection_check_interval.
        assert_eq!(get(&s, 130_000, "client_connection_check_interval"), None);
        // 0 means no limit, as PostgreSQL's own 0 (never a 1 ms limit).
        s.statement_timeout = Some(Duration::ZERO);
        assert_eq!(get(&s, 150_000, "statement_timeout").as_deref(), Some("0"));
        // Not given: not set at all, so the database's or role's own limit stays in force.
        s.statement_timeout = None;
        assert_eq!(get(&s, 150_000, "statement_timeout"), None);
    }
}
