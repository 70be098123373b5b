//! Typed errors and the exit codes scripts rely on.
//!
//! Every failure a user or the database can cause ends up as an [`Error`]: a kind that decides
//! the exit code, and one sentence saying what failed, where, and what to do. The sentence is
//! sanitised (control characters stripped, known passwords masked) when it is printed, once, on
//! stderr, by [`crate::run`].

use std::fmt;

/// The process exit codes scripts rely on: 0 done, 1 failed, 2 usage, 3 refused, 4 changes
/// pending (`--detailed-exitcode`), 130 interrupted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    /// Done, or nothing to do.
    Ok = 0,
    /// Failed; nothing changed unless the message says what did.
    Failed = 1,
    /// Bad input or usage.
    Usage = 2,
    /// Refused by a guard or precondition.
    Refused = 3,
    /// Only with `--detailed-exitcode` on a dry run: changes are pending.
    Pending = 4,
    /// Interrupted (Ctrl-C).
    Interrupted = 130,
}

impl Exit {
    pub fn code(self) -> i32 {
        self as i32
    }
}

#[derive(Debug)]
pub struct Error {
    pub exit: Exit,
    pub message: String,
    /// A COMMIT whose outcome orgctl could not learn: the change may have been committed.
    pub in_doubt: bool,
    /// A lock wait ran out (`--lock-timeout`): the caller that knows which rows it wanted can
    /// name the sessions that hold them.
    pub lock_timeout: bool,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn new(exit: Exit, message: impl Into<String>) -> Self {
        Error {
            exit,
            message: message.into(),
            in_doubt: false,
            lock_timeout: false,
        }
    }
    /// Exit 2: the input is wrong.
    pub fn usage(message: impl Into<String>) -> Self {
        Self::new(Exit::Usage, message)
    }
    /// Exit 3: a guard or precondition refused.
    pub fn refused(message: impl Into<String>) -> Self {
        Self::new(Exit::Refused, message)
    }
    /// Exit 1: the operation failed.
    pub fn failed(message: impl Into<String>) -> Self {
        Self::new(Exit::Failed, message)
    }
    pub fn interrupted() -> Self {
        Self::new(
            Exit::Interrupted,
            "interrupted: the open transaction was rolled back and nothing was changed",
        )
    }

    /// Prefix the message with where it happened ("tenant acme: …").
    pub fn context(mut self, what: impl fmt::Display) -> Self {
        self.message = format!("{what}: {}", self.message);
        self
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}

impl From<sqlx::Error> for Error {
    fn from(e: sqlx::Error) -> Self {
        classify_sqlx(&e)
    }
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Error::failed(e.to_string())
    }
}

/// SQLSTATEs that decide an exit code or a hint.
pub mod sqlstate {
    pub const LOCK_NOT_AVAILABLE: &str = "55P03";
    pub const QUERY_CANCELED: &str = "57014";
    pub const DEADLOCK: &str = "40P01";
    pub const SERIALIZATION: &str = "40001";
    pub const INVALID_PASSWORD: &str = "28P01";
    pub const INVALID_AUTH: &str = "28000";
    pub const UNDEFINED_DATABASE: &str = "3D000";
    pub const ADMIN_SHUTDOWN: &str = "57P01";
    pub const READ_ONLY_TXN: &str = "25006";
    pub const INSUFFICIENT_PRIVILEGE: &str = "42501";
    pub const UNIQUE_VIOLATION: &str = "23505";
}

/// Turn a driver error into one sentence and an exit code. Raw driver dumps never reach
/// the user; the database's own message (which never carries our password) is kept.
pub fn classify_sqlx(e: &sqlx::Error) -> Error {
    match e {
        sqlx::Error::Database(db) => {
            let code = db.code().map(|c| c.to_string()).unwrap_or_default();
            let msg = db.message().to_string();
            match code.as_str() {
                // The driver's text says no more than this; who holds the lock is named by the
                // callers that know which rows they wanted (see `lock_timeout`).
                sqlstate::LOCK_NOT_AVAILABLE => Error {
                    lock_timeout: true,
                    ..Error::refused(
                        "timed out waiting for a lock another session holds (--lock-timeout); retry when it is done or raise --lock-timeout",
                    )
                },
                sqlstate::QUERY_CANCELED => Error::failed(format!(
                    "a statement was cancelled ({msg}); it may have hit --statement-timeout or the statement_timeout the database or role sets: raise it (--statement-timeout DUR, 0 for no limit) and retry"
                )),
                sqlstate::DEADLOCK => Error::failed(format!(
                    "the database detected a deadlock with a concurrent writer and rolled back ({msg}); retry"
                )),
                sqlstate::SERIALIZATION => Error::failed(format!(
                    "a concurrent change conflicted with this one ({msg}); retry"
                )),
                sqlstate::INVALID_PASSWORD | sqlstate::INVALID_AUTH => Error::failed(format!(
                    "authentication failed ({msg}); check the user and password in --database-url"
                )),
                sqlstate::UNDEFINED_DATABASE => Error::failed(format!(
                    "{msg}; check the database name in --database-url"
                )),
                sqlstate::READ_ONLY_TXN => Error::failed(format!(
                    "the database is read-only ({msg}): it is a standby, or default_transaction_read_only is on; nothing was changed: point --database-url at the primary"
                )),
                sqlstate::ADMIN_SHUTDOWN => Error::failed(format!(
                    "the database ended this session during the command ({msg}): an administrator terminated it, or the server is shutting down; the open transaction was rolled back"
                )),
                sqlstate::INSUFFICIENT_PRIVILEGE => Error::refused(format!(
                    "the database role lacks a privilege this command needs ({msg}){}; nothing was changed: grant it, or run as a role that has it",
                    privilege_hint(&msg)
                )),
                // The platform's sibling-name rule met by a write the plan did not foresee (a
                // workspace created or renamed concurrently): a refusal, said as such.
                sqlstate::UNIQUE_VIOLATION
                    if db.constraint() == Some(SIBLING_NAME_INDEX) =>
                {
                    let detail = db
                        .try_downcast_ref::<sqlx::postgres::PgDatabaseError>()
                        .and_then(|p| p.detail());
                    Error::refused(sibling_name_violation(detail))
                }
                _ if code.is_empty() => Error::failed(format!("database error: {msg}")),
                _ => Error::failed(format!("database error {code}: {msg}")),
            }
        }
        sqlx::Error::Io(io) => Error::failed(format!(
            "lost the connection to the database ({io}); the open transaction was rolled back"
        )),
        sqlx::Error::Tls(t) => Error::failed(format!(
            "TLS error talking to the database: {}",
            without_source_locations(&t.to_string())
        )),
        sqlx::Error::PoolTimedOut => Error::failed("timed out waiting for a database connection"),
        sqlx::Error::Protocol(p) => Error::failed(format!(
            "database protocol error: {}",
            without_source_locations(p)
        )),
        sqlx::Error::RowNotFound => Error::failed("an expected row was not found"),
        sqlx::Error::ColumnDecode { index, source } => Error::failed(format!(
            "could not read column {index} from the database: {source}"
        )),
        sqlx::Error::Configuration(_) => {
            Error::failed(format!("invalid connection settings: {}", driver_text(e)))
        }
        other => Error::failed(format!(
            "database error: {}",
            without_source_locations(&other.to_string())
        )),
    }
}

/// What to grant, when PostgreSQL's message names the object: orgctl reads and writes the
/// platform's tables it changes (SELECT, INSERT, UPDATE; DELETE for a rollback) and its own
/// schema `orgctl` (USAGE, CREATE on first use, and the same on its tables).
fn privilege_hint(msg: &str) -> String {
    let object = [
        "permission denied for table ",
        "permission denied for relation ",
    ]
    .iter()
    .find_map(|p| msg.strip_prefix(p));
    if let Some(table) = object {
        let table = sanitize(table.trim());
        return format!(
            ": GRANT SELECT, INSERT, UPDATE, DELETE ON {table} (and the other tables this command changes) to this role"
        );
    }
    if let Some(schema) = msg.strip_prefix("permission denied for schema ") {
        let schema = sanitize(schema.trim());
        return format!(
            ": GRANT USAGE, CREATE ON SCHEMA {schema}, and SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA {schema}, to this role"
        );
    }
    String::new()
}

/// A driver message without the source locations sqlx appends to some of its own errors
/// (`… (sqlx_postgres::connection::tls:95)`): they mean nothing to an operator.
pub fn without_source_locations(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find(" (sqlx") {
        let tail = &rest[start + 2..];
        let end = tail.find(')');
        let is_location = end.is_some_and(|e| {
            let inner = &tail[..e];
            inner.contains("::")
                && inner.rsplit_once(':').is_some_and(|(_, line)| {
                    !line.is_empty() && line.bytes().all(|b| b.is_ascii_digit())
                })
                && inner
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b':')
        });
        match (is_location, end) {
            (true, Some(e)) => {
                out.push_str(&rest[..start]);
                rest = &tail[e + 1..];
            }
            _ => {
                out.push_str(&rest[..start + 2]);
                rest = tail;
            }
        }
    }
    out.push_str(rest);
    out
}

/// A driver error's text without sqlx's "error with configuration: " prefix, which it repeats
/// once per level of nesting.
pub fn driver_text(e: &sqlx::Error) -> String {
    let text = e.to_string();
    let mut rest = text.as_str();
    while let Some(r) = rest.strip_prefix("error with configuration: ") {
        rest = r;
    }
    rest.to_string()
}

/// Make a database value safe to print: control characters (terminal escape sequences,
/// newlines: an error is one line) become spaces, and bidirectional overrides and isolates are
/// dropped, so a name cannot visually reorder the table row or message it appears in.
pub fn sanitize(s: &str) -> String {
    s.chars()
        .filter(|c| !is_bidi_control(*c))
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

/// The platform's unique index on sibling names: one name per parent (the top level counts as
/// one parent) among workspaces that are not `removed`.
pub const SIBLING_NAME_INDEX: &str = "workspaces_parent_name_uniq";

/// A unique violation of [`SIBLING_NAME_INDEX`] (a write that raced the plan) as one sentence;
/// `detail` is the server's "Key (…)=(…) already exists." line when it sent one.
pub fn sibling_name_violation(detail: Option<&str>) -> String {
    let key = detail
        .and_then(|d| d.split_once(")=(").map(|(_, k)| k))
        .map(|k| k.trim_end_matches(" already exists.").trim_end_matches(')'))
        .map(|k| format!(" (parent, name: {})", crate::error::sanitize(k)))
        .unwrap_or_default();
    format!(
        "two live workspaces would have the same name under one parent{key}, which the platform does not allow ({SIBLING_NAME_INDEX}); the transaction was rolled back, nothing was changed: rename one of them (a workspace was probably created or renamed during the run), then rerun"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    #[test]
    fn sanitize_strips_escapes() {
        assert_eq!(sanitize("a\x1b[31mb\nc"), "a [31mb c");
        assert_eq!(sanitize("evil\u{202E}gpj.exe"), "evilgpj.exe");
        assert_eq!(sanitize("naïve 🚀"), "naïve 🚀");
    }

    #[test]
    fn configuration_errors_are_prefixed_once() {
        let e = match sqlx::postgres::PgConnectOptions::from_str("postgres://h/db?sslmode=bogus") {
            Ok(_) => panic!("accepted a bogus sslmode"),
            Err(e) => e,
        };
        let text = driver_text(&e);
        assert!(!text.contains("error with configuration"), "{text}");
        assert!(text.contains("bogus"), "{text}");
        let m = classify_sqlx(&e).message;
        assert_eq!(m.matches("configuration").count(), 0, "{m}");
    }

    #[test]
    fn source_locations_are_dropped_from_driver_text() {
        assert_eq!(
            without_source_locations(
                "server does not support TLS (sqlx_postgres::connection::tls:95)"
            ),
            "server does not support TLS"
        );
        assert_eq!(
            without_source_locations("a (sqlx_core::x:1) b (sqlx note) (sqlx_a::b:)"),
            "a b (sqlx note) (sqlx_a::b:)"
        );
        let e = classify_sqlx(&sqlx::Error::Protocol(
            "expected X (sqlx_postgres::connection::stream:12)".into(),
        ));
        assert_eq!(e.message, "database protocol error: expected X");
    }
}
