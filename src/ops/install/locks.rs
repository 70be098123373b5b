//! The row locks of an install, and what a lock timeout on them says: who holds them.

use sqlx::postgres::PgConnection;
use sqlx::Row;
use uuid::Uuid;

use super::InstallInput;
use crate::db;
use crate::error::{Error, Result};

/// Lock, in a fixed order, the workspace rows the install changes or hangs rows off: the agent
/// (or the --id row), every root, every former root.
///
/// Only inside a transaction of [`db::begin_change`], which has made orgctl's schema (and so
/// `orgctl.former_roots`) present and usable: no probe for it here.
pub(super) async fn lock_rows(conn: &mut PgConnection, input: &InstallInput) -> Result<()> {
    let locked = match input.id {
        // Constant SQL: one simple-query message.
        None => db::simple_batch(conn, LOCK_ROWS).await.map(|_| ()),
        Some(id) => db::query(LOCK_ROWS_WITH_ID)
            .bind(id)
            .execute(&mut *conn)
            .await
            .map(|_| ())
            .map_err(Error::from),
    };
    match locked {
        Ok(()) => Ok(()),
        Err(e) => Err(lock_error(conn, input, e).await),
    }
}

/// [`lock_rows`] without `--id`: counted, not fetched (the locked ids are not needed).
pub(super) const LOCK_ROWS: &str = "SELECT count(*) FROM (
        SELECT id FROM workspaces
         WHERE parent_id IS NULL OR kind = 'platform'
            OR id IN (SELECT workspace_id FROM orgctl.former_roots)
         ORDER BY id FOR UPDATE) l";

/// [`lock_rows`] with `--id` ($1): that row too.
pub(super) const LOCK_ROWS_WITH_ID: &str = "SELECT count(*) FROM (
                SELECT id FROM workspaces
                 WHERE parent_id IS NULL OR kind = 'platform' OR id = $1
                    OR id IN (SELECT workspace_id FROM orgctl.former_roots)
                 ORDER BY id FOR UPDATE) l";

/// A lock timeout on the org's rows, said as such, naming the backends that hold them (the
/// timeout aborted the transaction: see [`row_lock_holders`]). Any other error as it is.
pub(super) async fn lock_error(conn: &mut PgConnection, input: &InstallInput, err: Error) -> Error {
    if !err.lock_timeout {
        return err;
    }
    let held = match row_lock_holders(conn, input.id).await {
        Ok(h) if !h.is_empty() => format!(
            "held by {}",
            h.iter()
                .map(|b| format!("backend pid {b}"))
                .collect::<Vec<_>>()
                .join(" and ")
        ),
        // Ended in the meantime, or several sessions sharing a row lock (a multixact, which
        // names no single transaction): say so rather than guess.
        _ => "the session that held them has ended or could not be identified".to_string(),
    };
    Error {
        lock_timeout: true,
        ..Error::refused(format!(
            "timed out waiting for a lock on the org's root workspaces (--lock-timeout): {held}; retry when it is done or raise --lock-timeout"
        ))
    }
}

/// The backends whose open transactions hold (locked or changed) a workspace row that
/// [`lock_rows`] wanted, each as "PID (application 'A', user 'U', from ADDR)".
///
/// After the lock timeout the transaction is aborted and accepts no statement, and
/// `pg_blocking_pids` names blockers only while a wait lasts: so the transaction is rolled back
/// here (it changed nothing yet, and the caller fails anyway), the rows' `xmax` — the
/// transaction id of whoever locked or updated a row, while it runs — is matched to the live
/// transactions in `pg_locks` (every transaction holds the lock on its own id), and a fresh
/// empty transaction is begun so the caller's transaction handle rolls back as it expects. A
/// holder must also hold a lock on `workspaces` itself, so an xmax that is a multixact id
/// cannot be mistaken for an unrelated transaction. orgctl's own schema is not read: on a
/// tenant's first touch the rollback has just removed it.
async fn row_lock_holders(conn: &mut PgConnection, id: Option<Uuid>) -> Result<Vec<String>> {
    db::simple_batch(conn, "ROLLBACK").await?;
    let rows = db::query(ROW_LOCK_HOLDERS)
        .bind(id)
        .fetch_all(&mut *conn)
        .await;
    // Whatever the answer, leave a transaction open for the caller's handle to roll back.
    let begun = db::simple_batch(conn, "BEGIN").await;
    let rows = rows?;
    begun?;
    rows.iter()
        .map(|r| {
            Ok(format!(
                "{} (application '{}', user '{}', from {})",
                r.try_get::<i32, _>(0)?,
                crate::error::sanitize(&r.try_get::<String, _>(1)?),
                crate::error::sanitize(&r.try_get::<String, _>(2)?),
                r.try_get::<String, _>(3)?
            ))
        })
        .collect()
}

/// The backends (up to five) whose live transaction has locked or changed a workspace row
/// [`lock_rows`] wanted ($1: the `--id` row, or NULL): see [`row_lock_holders`].
pub(super) const ROW_LOCK_HOLDERS: &str =
    "SELECT DISTINCT a.pid, coalesce(a.application_name, ''), coalesce(a.usename::text, ''),
                coalesce(host(a.client_addr), 'local')
           FROM workspaces w
           JOIN pg_locks x ON x.locktype = 'transactionid' AND x.granted
                          AND x.mode = 'ExclusiveLock' AND x.transactionid = w.xmax
           JOIN pg_locks r ON r.pid = x.pid AND r.locktype = 'relation' AND r.granted
                          AND r.relation = 'workspaces'::regclass
           JOIN pg_stat_activity a ON a.pid = x.pid
          WHERE (w.parent_id IS NULL OR w.kind = 'platform' OR w.id = $1)
            AND x.pid <> pg_backend_pid()
          ORDER BY a.pid
          LIMIT 5";
