//! COMMIT, and finding out what happened when its answer is lost: a server's error answer is
//! a rollback; a lost connection leaves the COMMIT in doubt until orgctl, reconnected and
//! past the tenant lock, finds the transaction's [`Evidence`] or not.

use std::time::Duration;

use sqlx::postgres::PgConnection;
use sqlx::Row;

use super::connect::connect;
use super::query::{query, query_scalar, Arg, Binds};
use super::tx::{begin_write, TENANT_LOCK};
use super::{DbUrl, Settings};
use crate::error::{Error, Result};

/// COMMIT a transaction whose outcome needs no resolving (a best-effort record a rerun
/// rewrites), without ever saying "rolled back" for a COMMIT that may have reached the server:
/// an error the server answers with is a rollback; a lost connection is "may have been
/// committed", naming `what`.
pub async fn commit_best_effort(
    tx: sqlx::Transaction<'_, sqlx::Postgres>,
    what: &str,
) -> Result<()> {
    tx.commit().await.map_err(|e| match e {
        sqlx::Error::Database(_) => Error::from(e),
        other => Error::failed(format!(
            "the connection was lost while committing {what} ({}); it may or may not have been recorded",
            lost_cause(&other)
        )),
    })
}

/// How long the check after a lost COMMIT waits for the lost transaction to end (it holds the
/// tenant lock until its COMMIT or rollback has finished on the server).
const RESOLVE_LOCK_WAIT: Duration = Duration::from_secs(10);

/// What a write transaction left behind that proves it committed, looked for after a lost
/// COMMIT. The layers above define it (the audit row a change wrote, a token it inserted, a
/// run-state row): this module only runs its probe.
pub trait Evidence: Sync {
    /// What an operator checks when orgctl could not.
    fn check(&self) -> String;

    /// The statement that finds it.
    fn probe(&self) -> Probe<'_>;

    /// The COMMIT is known to have happened (answered, or verified through the probe): what
    /// the layer above records of a committed change (the audit head a change's JSON shows).
    fn committed(&self) {}
}

/// A statement returning one boolean: whether the lost transaction's trace is there.
pub struct Probe<'a> {
    /// A table of orgctl's own schema the probe reads. On a tenant's first touch the
    /// transaction also created orgctl's schema: when the table is not there, the transaction
    /// that would have written into it did not commit (and the probe is not run).
    pub own_table: Option<&'static str>,
    pub sql: &'static str,
    /// The values of the statement's placeholders, in order.
    pub args: Vec<Arg<'a>>,
}

/// Whether a table exists (by its qualified name).
const TABLE_EXISTS: &str = "SELECT to_regclass($1) IS NOT NULL";

/// Whether `evidence` is there, on a connection that waited for the lost transaction to end.
async fn present(evidence: &dyn Evidence, conn: &mut PgConnection) -> Result<bool> {
    let probe = evidence.probe();
    if let Some(table) = probe.own_table {
        let exists: bool = query_scalar(TABLE_EXISTS)
            .bind(table)
            .fetch_one(&mut *conn)
            .await?;
        if !exists {
            return Ok(false);
        }
    }
    let mut binds = Binds::after(0);
    for a in probe.args {
        binds.arg(a);
    }
    let row = binds
        .bind_to(query(probe.sql))
        .fetch_one(&mut *conn)
        .await?;
    Ok(row.try_get::<bool, _>(0)?)
}

/// A COMMIT that went through.
pub enum Committed {
    /// The server answered.
    Answered,
    /// The answer was lost, and orgctl verified on a new connection that the change is
    /// committed. The new connection is here for the work that follows the commit (the old one
    /// is gone).
    Verified(PgConnection),
}

impl Committed {
    /// Replace a connection that died with the COMMIT's answer by the verified one.
    pub fn reconnected(self, conn: &mut PgConnection) {
        if let Committed::Verified(c) = self {
            *conn = c;
        }
    }

    /// A line for stderr when the commit had to be verified.
    pub fn note(&self) -> Option<&'static str> {
        match self {
            Committed::Answered => None,
            Committed::Verified(_) => Some(
                "The connection was lost during COMMIT; orgctl reconnected and verified that the change was committed.",
            ),
        }
    }
}

/// A COMMIT that did not go through, or whose outcome is unknown.
#[derive(Debug)]
pub enum CommitError {
    /// The server refused the COMMIT (it answered with an error): rolled back.
    Refused { cause: String },
    /// The connection was lost; orgctl reconnected and found no trace of the transaction.
    NotCommitted { target: String, cause: String },
    /// The connection was lost and orgctl could not find out. The change may be committed.
    InDoubt {
        target: String,
        cause: String,
        why: String,
        check: String,
    },
}

impl CommitError {
    pub fn in_doubt(&self) -> bool {
        matches!(self, CommitError::InDoubt { .. })
    }
}

impl From<CommitError> for Error {
    fn from(e: CommitError) -> Self {
        match e {
            CommitError::Refused { cause } => Error::failed(format!(
                "the database refused the COMMIT ({cause}); the transaction was rolled back, nothing was changed"
            )),
            CommitError::NotCommitted { target, cause } => Error::failed(format!(
                "the connection to {target} was lost during COMMIT ({cause}); orgctl reconnected and verified that the change was NOT committed: nothing was changed, rerun"
            )),
            CommitError::InDoubt {
                target,
                cause,
                why,
                check,
            } => {
                let mut e = Error::failed(format!(
                    "the connection to {target} was lost during COMMIT ({cause}) and orgctl could not find out whether the change was committed ({why}): it may have been committed; check {check}"
                ));
                e.in_doubt = true;
                e
            }
        }
    }
}

/// [`commit_or_resolve`] inside the process's commit guard (a Ctrl-C that arrives meanwhile
/// waits for it), the guard marked done once the commit is known: how a single-tenant command
/// commits its change.
pub async fn commit_guarded(
    tx: sqlx::Transaction<'_, sqlx::Postgres>,
    url: &DbUrl,
    settings: &Settings,
    evidence: &dyn Evidence,
) -> std::result::Result<Committed, CommitError> {
    let guard = crate::interrupt::CommitGuard::enter();
    let c = commit_or_resolve(tx, url, settings, evidence).await?;
    guard.done();
    Ok(c)
}

/// COMMIT a write transaction, and tell the truth about it. An error the server answers the
/// COMMIT with means rolled back. Any other failure (the connection dropped, the server went
/// away) leaves the COMMIT *in doubt*: it may have reached the server and committed. Then
/// orgctl reconnects (the bounded retry of [`connect`]), waits for the tenant lock (the lost
/// transaction holds it until its COMMIT or rollback has finished, so the check cannot run
/// before the outcome is settled), and looks for `evidence`: found is committed, not found is
/// not committed; when it cannot look, the answer is "may have been committed", naming what to
/// check. Every mutating command commits through here.
pub async fn commit_or_resolve(
    tx: sqlx::Transaction<'_, sqlx::Postgres>,
    url: &DbUrl,
    settings: &Settings,
    evidence: &dyn Evidence,
) -> std::result::Result<Committed, CommitError> {
    let err = match tx.commit().await {
        Ok(()) => {
            evidence.committed();
            return Ok(Committed::Answered);
        }
        Err(e) => e,
    };
    if let sqlx::Error::Database(db) = &err {
        let fatal = db
            .try_downcast_ref::<sqlx::postgres::PgDatabaseError>()
            .map(|pg| {
                matches!(
                    pg.severity(),
                    sqlx::postgres::PgSeverity::Fatal | sqlx::postgres::PgSeverity::Panic
                )
            })
            .unwrap_or(true);
        if !fatal {
            // An ordinary ERROR answer: the server is there and rolled the transaction back.
            return Err(CommitError::Refused {
                cause: db.message().to_string(),
            });
        }
    }
    let cause = lost_cause(&err);
    let target = url.target().to_string();
    match resolve(url, settings, evidence).await {
        Ok((true, conn)) => {
            evidence.committed();
            Ok(Committed::Verified(conn))
        }
        Ok((false, _)) => Err(CommitError::NotCommitted { target, cause }),
        Err(why) => Err(CommitError::InDoubt {
            target,
            cause,
            why,
            check: evidence.check(),
        }),
    }
}

/// The driver error of a lost COMMIT, short and without "rolled back" (which it may not be).
pub(super) fn lost_cause(e: &sqlx::Error) -> String {
    match e {
        sqlx::Error::Io(io) => io.to_string(),
        sqlx::Error::Database(db) => db.message().to_string(),
        sqlx::Error::Protocol(p) => p.clone(),
        other => other.to_string(),
    }
}

/// This transaction's lock_timeout.
const SET_LOCK_TIMEOUT: &str = "SELECT set_config('lock_timeout', $1, true)";

/// Wait for an advisory lock (its two int4 keys), at most lock_timeout.
const WAIT_LOCK: &str = "SELECT pg_advisory_xact_lock($1, $2)";

/// Reconnect, wait until the lost transaction has ended, and look for its evidence.
async fn resolve(
    url: &DbUrl,
    settings: &Settings,
    evidence: &dyn Evidence,
) -> std::result::Result<(bool, PgConnection), String> {
    let mut conn = connect(url, settings)
        .await
        .map_err(|e| format!("reconnecting failed: {}", e.message))?;
    let found = async {
        let mut tx = begin_write(&mut conn, settings).await?;
        query(SET_LOCK_TIMEOUT)
            .bind(format!("{}ms", RESOLVE_LOCK_WAIT.as_millis()))
            .execute(&mut *tx)
            .await?;
        query(WAIT_LOCK)
            .bind(TENANT_LOCK.0)
            .bind(TENANT_LOCK.1)
            .execute(&mut *tx)
            .await?;
        let found = present(evidence, &mut tx).await?;
        tx.rollback().await?;
        Ok::<bool, Error>(found)
    }
    .await
    .map_err(|e| {
        if e.exit == crate::error::Exit::Refused {
            format!(
                "the lost transaction still held the tenant lock after {}",
                crate::output::duration::human(RESOLVE_LOCK_WAIT)
            )
        } else {
            format!("the check failed: {}", e.message)
        }
    })?;
    Ok((found, conn))
}

/// The static statements of this module, by name.
pub(crate) const STATEMENTS: &[(&str, &str)] = &[
    ("table_exists", TABLE_EXISTS),
    ("set_lock_timeout", SET_LOCK_TIMEOUT),
    ("wait_lock", WAIT_LOCK),
];
