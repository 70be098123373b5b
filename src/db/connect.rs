//! Connecting: `application_name`, a bounded retry on transient network errors, errors that
//! name the host and never the password, and the server's version checked.

use std::time::Duration;

use sqlx::postgres::PgConnection;
use sqlx::{Connection, Row};

use super::query::statement_cache;
use super::{DbUrl, Settings};
use crate::error::{sqlstate, Error, Result};

/// How long one connection attempt may take, and how many attempts are made. Connecting is
/// the only step orgctl retries: it is idempotent.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const CONNECT_ATTEMPTS: u32 = 3;

/// Connect with `application_name=orgctl` and a bounded retry on transient network errors.
/// The error names the host, never the password.
///
/// Nothing that must hold is set here: behind a transaction pooler a session setting lands on
/// whichever server connection runs it, not on the one a later transaction gets. The timeouts
/// are set inside each transaction by [`begin_write`] and [`begin_read_only`]. The startup
/// packet carries only what PgBouncer accepts without `ignore_startup_parameters`
/// (`DateStyle`, `client_encoding`, `TimeZone`, `application_name`): no `options`, no
/// `extra_float_digits` (orgctl reads no floats in text format).
pub async fn connect(url: &DbUrl, _settings: &Settings) -> Result<PgConnection> {
    let mut opts = url
        .options()
        .clone()
        .application_name("orgctl")
        .extra_float_digits(None);
    if !statement_cache() {
        opts = opts.statement_cache_capacity(0);
    }

    let mut last: Option<Error> = None;
    let started = std::time::Instant::now();
    for attempt in 0..CONNECT_ATTEMPTS {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_millis(250 * u64::from(attempt))).await;
        }
        match tokio::time::timeout(CONNECT_TIMEOUT, PgConnection::connect_with(&opts)).await {
            Ok(Ok(mut conn)) => {
                check_server(&mut conn, url).await?;
                return Ok(conn);
            }
            Ok(Err(e)) => {
                let transient = matches!(e, sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut);
                let err = connect_error(url, &e);
                if !transient {
                    return Err(err);
                }
                last = Some(err);
            }
            Err(_) => {
                last = Some(Error::failed(format!(
                    "could not connect to {}: no answer within {}s",
                    url.target(),
                    CONNECT_TIMEOUT.as_secs()
                )));
            }
        }
    }
    let last =
        last.unwrap_or_else(|| Error::failed(format!("could not connect to {}", url.target())));
    Err(after_attempts(last, started.elapsed()))
}

/// The last connection error, saying how long connecting took in all: "no answer within 10s"
/// alone, after three attempts and 31 s, undersold the wait.
fn after_attempts(last: Error, total: Duration) -> Error {
    Error::new(
        last.exit,
        format!(
            "{} ({CONNECT_ATTEMPTS} attempts, {} in all)",
            last.message,
            crate::output::duration::human(total)
        ),
    )
}

/// A TLS failure the driver reports as I/O (rustls errors surface as `io::Error`).
fn is_tls_failure(msg: &str) -> bool {
    let m = msg.to_ascii_lowercase();
    [
        "certificate",
        "tls",
        "handshake",
        "unknownissuer",
        "invalid peer",
    ]
    .iter()
    .any(|k| m.contains(k))
}

fn connect_error(url: &DbUrl, e: &sqlx::Error) -> Error {
    let target = url.target();
    match e {
        sqlx::Error::Io(io) if is_tls_failure(&io.to_string()) => Error::failed(format!(
            "could not connect to {target}: the TLS handshake failed ({}); check sslmode and sslrootcert in the URL",
            crate::error::without_source_locations(&io.to_string())
        )),
        sqlx::Error::Io(io) => Error::failed(format!(
            "could not connect to {target}: {}; is the server running and reachable?",
            crate::error::without_source_locations(&io.to_string())
        )),
        sqlx::Error::Tls(t) if t.to_string().contains("does not support TLS") => {
            Error::failed(format!(
                "could not connect to {target}: the URL asks for TLS (sslmode) but the server does not support it; use sslmode=prefer or enable TLS on the server"
            ))
        }
        sqlx::Error::Tls(t) => Error::failed(format!(
            "could not connect to {target}: the TLS handshake failed ({}); check sslmode and sslrootcert in the URL (the server's certificate must be trusted and match the host)",
            crate::error::without_source_locations(&t.to_string())
        )),
        sqlx::Error::Database(db)
            if db.code().as_deref() == Some(sqlstate::INVALID_AUTH)
                && db.message().contains("pg_hba.conf") =>
        {
            // pg_hba.conf rejected the connection before any password was checked.
            let hint = if db.message().contains("no encryption") {
                "; the server requires TLS for this host: add sslmode=require to the URL"
            } else {
                "; the server's pg_hba.conf has no rule for this host, user and database: ask its administrator"
            };
            Error::failed(format!(
                "could not connect to {target}: the server refused the connection ({}){hint}",
                db.message()
            ))
        }
        sqlx::Error::Database(db) => match db.code().as_deref() {
            Some(sqlstate::INVALID_PASSWORD) | Some(sqlstate::INVALID_AUTH) => {
                Error::failed(format!(
                    "could not connect to {target}: authentication failed for user '{}'; check the credentials in --database-url",
                    url.options().get_username()
                ))
            }
            Some(sqlstate::UNDEFINED_DATABASE) => Error::failed(format!(
                "could not connect to {target}: the database does not exist"
            )),
            _ => Error::failed(format!(
                "could not connect to {target}: {}",
                db.message()
            )),
        },
        other => Error::failed(format!(
            "could not connect to {target}: {}",
            crate::error::classify_sqlx(other).message
        )),
    }
}

/// Refuse servers too old for what orgctl relies on.
async fn check_server(conn: &mut PgConnection, url: &DbUrl) -> Result<()> {
    let version = server_version(conn).await?;
    if version < 130_000 {
        return Err(Error::refused(format!(
            "{} runs PostgreSQL {}; orgctl needs 13 or newer",
            url.target(),
            version / 10_000
        )));
    }
    Ok(())
}

/// `server_version_num`: reported when the connection starts (PgBouncer passes the server's
/// on); asked only if it was not.
pub(super) async fn server_version(conn: &mut PgConnection) -> Result<i32> {
    match conn
        .server_version_num()
        .and_then(|v| i32::try_from(v).ok())
    {
        Some(v) => Ok(v),
        None => {
            // A simple query (one message, one round trip): safe outside a transaction even
            // behind a transaction pooler.
            let row = sqlx::Executor::fetch_one(
                &mut *conn,
                "SELECT current_setting('server_version_num')",
            )
            .await?;
            let v: String = row.try_get(0)?;
            v.trim().parse().map_err(|_| {
                Error::failed(format!("the server reported version '{v}', not a number"))
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connect_failure_says_how_long_it_took_in_all() {
        let e = after_attempts(
            Error::failed("could not connect to h:5432/db: no answer within 10s"),
            Duration::from_millis(31_300),
        );
        assert_eq!(
            e.message,
            "could not connect to h:5432/db: no answer within 10s (3 attempts, 31.3s in all)"
        );
    }
}
