//! The one place that owns talking to PostgreSQL: parsing and redacting database URLs,
//! connecting (with `application_name`, timeouts and a bounded retry), the per-tenant advisory
//! lock, the platform-schema compatibility check, orgctl's own schema and its audit log.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use std::sync::atomic::{AtomicBool, Ordering};

use sqlx::postgres::{PgArguments, PgConnectOptions, PgConnection, PgRow};
use sqlx::query::{Query, QueryAs, QueryScalar};
use sqlx::{Column, Connection, Postgres, Row};

use crate::error::{sqlstate, Error, Result};
use crate::redact;

/// orgctl's own migrations, applied into the `orgctl` schema (with its own `_sqlx_migrations`
/// there, so it never meets a platform's table of the same name).
pub static ORGCTL_MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("migrations/orgctl");

/// The platform's schema as it ships (a schema-only dump of a database built from its
/// migrations through 2026-08, kept verbatim as a fixture). Applied only to databases orgctl
/// creates itself (`dev up`, tests), never to a real tenant.
pub const PLATFORM_SCHEMA_SQL: &str = include_str!("../migrations/platform/schema-2026-08.sql");

/// An older tenant's variant, applied after [`PLATFORM_SCHEMA_SQL`]: `workspaces.status` as
/// TEXT instead of the enum (dev/test only).
pub const PLATFORM_LEGACY_TEXT_STATUS_SQL: &str =
    include_str!("../migrations/platform/legacy_text_status.sql");

/// The advisory lock every mutation of a tenant takes (two int4 keys: "orgc", 1). Advisory
/// locks are per database, so this is per tenant.
pub const TENANT_LOCK: (i32, i32) = (0x6f72_6763, 1);
/// Serialises creation/migration of the `orgctl` schema.
const SCHEMA_LOCK: (i32, i32) = (0x6f72_6763, 2);

/// How long one connection attempt may take, and how many attempts are made. Connecting is
/// the only step orgctl retries: it is idempotent.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const CONNECT_ATTEMPTS: u32 = 3;

/// A parsed database URL whose `Debug` and `Display` never show the password.
#[derive(Clone)]
pub struct DbUrl {
    opts: PgConnectOptions,
    redacted: String,
    host: String,
}

impl DbUrl {
    pub fn parse(raw: &str) -> Result<Self> {
        let raw = raw.trim();
        register_intended_password(raw);
        let url = url::Url::parse(raw).map_err(|e| {
            Error::usage(format!(
                "invalid database URL: {e} (expected postgres://user:password@host:port/dbname)"
            ))
        })?;
        if !matches!(url.scheme(), "postgres" | "postgresql") {
            return Err(Error::usage(format!(
                "invalid database URL: scheme '{}' is not postgres:// or postgresql://",
                url.scheme()
            )));
        }
        if let Some(pw) = url.password() {
            // url gives the percent-encoded form; the server and sqlx see the decoded one.
            redact::register(pw);
            redact::register(&percent_encoding::percent_decode_str(pw).decode_utf8_lossy());
        }
        let mut shown = url.clone();
        if shown.password().is_some() {
            // set_password only fails for cannot-be-a-base URLs, which postgres:// is not.
            let _ = shown.set_password(Some("****"));
        }
        // Query parameters can carry a password too (?password=...).
        let pairs: Vec<(String, String)> = shown
            .query_pairs()
            .map(|(k, v)| {
                if k.eq_ignore_ascii_case("password") {
                    redact::register(&v);
                    (k.into_owned(), "****".to_string())
                } else {
                    (k.into_owned(), v.into_owned())
                }
            })
            .collect();
        if !pairs.is_empty() {
            shown.query_pairs_mut().clear().extend_pairs(pairs);
        }
        let redacted = shown.to_string();
        let opts = PgConnectOptions::from_str(raw).map_err(|e| {
            Error::usage(format!(
                "invalid database URL {redacted}: {}",
                redact::mask(&crate::error::driver_text(&e))
            ))
        })?;
        let host = format!(
            "{}:{}/{}",
            opts.get_host(),
            opts.get_port(),
            opts.get_database().unwrap_or("")
        );
        Ok(DbUrl {
            opts,
            redacted,
            host,
        })
    }

    /// `host:port/dbname`, for messages.
    pub fn target(&self) -> &str {
        &self.host
    }

    pub fn options(&self) -> &PgConnectOptions {
        &self.opts
    }
}

impl fmt::Display for DbUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted)
    }
}

impl fmt::Debug for DbUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DbUrl({})", self.redacted)
    }
}

/// A password typed without percent-encoding its '/', '?' or '#' ends the authority early:
/// `postgres://u:5432/pw@host/db` parses as host `u`, port 5432 and database `pw@host/db`, so
/// the parsed URL has no password to mask and the rest of it would be printed as host and
/// database name. Userinfo ends at the last '@' of the authority the user meant, so register
/// what follows the first ':' before it. Masking a string that is not really a password is
/// harmless.
fn register_intended_password(raw: &str) {
    let Some((_, rest)) = raw.split_once("://") else {
        return;
    };
    let Some(at) = rest.rfind('@') else {
        return;
    };
    if let Some((_, pw)) = rest[..at].split_once(':') {
        redact::register(pw);
        redact::register(&percent_encoding::percent_decode_str(pw).decode_utf8_lossy());
    }
}

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

/// What sits between orgctl and the server, from `--pooler` / `ORGCTL_POOLER`. It decides one
/// thing: whether orgctl may keep named prepared statements on its connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pooler {
    /// A transaction pooler (PgBouncer `pool_mode = transaction`, managed proxies) or not known:
    /// every statement is prepared unnamed, so nothing outlives the transaction on the server
    /// connection another client gets next. Safe everywhere; the default.
    Transaction,
    /// A session pooler, or a direct connection: the server connection is this client's for the
    /// whole session, so sqlx's statement cache (named statements) may be used.
    Session,
}

/// The process-wide mode, set once from the command line before anything connects (the query
/// helpers below cannot be handed a setting at each of their call sites).
static STATEMENT_CACHE: AtomicBool = AtomicBool::new(false);

pub fn set_pooler(p: Pooler) {
    STATEMENT_CACHE.store(p == Pooler::Session, Ordering::Relaxed);
}

fn statement_cache() -> bool {
    STATEMENT_CACHE.load(Ordering::Relaxed)
}

/// `sqlx::query`, prepared unnamed unless `--pooler session|none` allows named statements.
/// Every orgctl statement goes through these three helpers (`.ci/run` rejects a bare
/// `sqlx::query` in src/): sqlx 0.8 keeps preparing *named* statements even with
/// `statement_cache_capacity(0)` (and then never closes them), so the cache capacity alone
/// does not make a connection safe behind a transaction pooler.
pub fn query(sql: &str) -> Query<'_, Postgres, PgArguments> {
    sqlx::query(sql).persistent(statement_cache())
}

/// `sqlx::query_as`, see [`query`].
pub fn query_as<'q, O>(sql: &'q str) -> QueryAs<'q, Postgres, O, PgArguments>
where
    O: for<'r> sqlx::FromRow<'r, PgRow>,
{
    sqlx::query_as(sql).persistent(statement_cache())
}

/// `sqlx::query_scalar`, see [`query`].
pub fn query_scalar<'q, O>(sql: &'q str) -> QueryScalar<'q, Postgres, O, PgArguments>
where
    (O,): for<'r> sqlx::FromRow<'r, PgRow>,
{
    sqlx::query_scalar(sql).persistent(statement_cache())
}

/// A value bound to a statement composed of parts ([`Binds`]).
pub enum Arg<'a> {
    Uuid(uuid::Uuid),
    Uuids(&'a [uuid::Uuid]),
    UuidList(Vec<uuid::Uuid>),
    Text(&'a str),
    TextOwned(String),
    TextList(Vec<String>),
    Bytes(&'a [u8]),
    I32(i32),
    I64(i64),
}

/// The parameters of a statement composed of parts (CTEs, select lists): each part takes its
/// placeholders from here as it binds its values, so no part needs to know another's
/// numbering. `after(n)`: the statement's own fixed text uses $1…$n before these.
#[derive(Default)]
pub struct Binds<'a> {
    offset: usize,
    args: Vec<Arg<'a>>,
}

impl<'a> Binds<'a> {
    pub fn after(offset: usize) -> Self {
        Binds {
            offset,
            args: Vec::new(),
        }
    }

    /// Bind a value; returns its placeholder.
    pub fn arg(&mut self, a: Arg<'a>) -> String {
        self.args.push(a);
        format!("${}", self.offset + self.args.len())
    }

    /// How many values are bound.
    pub fn len(&self) -> usize {
        self.args.len()
    }

    pub fn is_empty(&self) -> bool {
        self.args.is_empty()
    }

    /// `q` with every value bound, in order.
    pub fn bind_to<'q>(
        &'q self,
        mut q: Query<'q, Postgres, PgArguments>,
    ) -> Query<'q, Postgres, PgArguments> {
        for a in &self.args {
            q = match a {
                Arg::Uuid(u) => q.bind(*u),
                Arg::Uuids(v) => q.bind(*v),
                Arg::UuidList(v) => q.bind(v.as_slice()),
                Arg::Text(t) => q.bind(*t),
                Arg::TextOwned(t) => q.bind(t.as_str()),
                Arg::TextList(v) => q.bind(v.as_slice()),
                Arg::Bytes(b) => q.bind(*b),
                Arg::I32(n) => q.bind(*n),
                Arg::I64(n) => q.bind(*n),
            };
        }
        q
    }
}

/// A caller's last check before its audit rows are in, read in the statement that writes them
/// (one round trip less for every change: a fleet pays each once per tenant). `columns` gets the
/// placeholders `args` were bound to, in order, and returns bigint expressions; `judge` gets
/// their values and fails the change when they are wrong (the caller's transaction then rolls
/// back, the audit rows with it).
pub struct Check<'a> {
    pub args: Vec<Arg<'a>>,
    #[allow(clippy::type_complexity)]
    pub columns: Box<dyn FnOnce(&[String]) -> Vec<String> + Send + 'a>,
    #[allow(clippy::type_complexity)]
    pub judge: Box<dyn FnOnce(&[i64]) -> Result<()> + Send + 'a>,
}

/// Resolve `--database-url` / `DATABASE_URL`.
pub fn url_from(arg: Option<&str>) -> Result<DbUrl> {
    match arg {
        Some(s) if !s.trim().is_empty() => DbUrl::parse(s),
        _ => Err(Error::usage(
            "no database given: pass --database-url or set DATABASE_URL (try `orgctl dev up`)",
        )),
    }
}

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
        .opts
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
            "{} ({CONNECT_ATTEMPTS} attempts, {:.1}s in all)",
            last.message,
            total.as_secs_f64()
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
                    url.opts.get_username()
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
async fn server_version(conn: &mut PgConnection) -> Result<i32> {
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

/// Run constant SQL — no values, no user input: orgctl's own text only — as ONE simple-query
/// message (one round trip for all its statements) and return each statement's rows. Rows
/// come in text format (every type orgctl reads this way decodes from text).
pub async fn simple_batch(conn: &mut PgConnection, sql: &str) -> Result<Vec<Vec<PgRow>>> {
    let (out, failed) = simple_batch_partial(conn, sql).await;
    match failed {
        Some(e) => Err(e),
        None => Ok(out),
    }
}

/// [`simple_batch`], keeping on a failure the rows of the statements before it: the lists of
/// the statements that completed, then the failed statement's own (usually empty) list.
async fn simple_batch_partial(
    conn: &mut PgConnection,
    sql: &str,
) -> (Vec<Vec<PgRow>>, Option<Error>) {
    use futures_util::TryStreamExt;
    let mut out = vec![Vec::new()];
    let mut stream = sqlx::Executor::fetch_many(&mut *conn, sql);
    loop {
        match stream.try_next().await {
            Ok(Some(sqlx::Either::Left(_))) => out.push(Vec::new()),
            Ok(Some(sqlx::Either::Right(row))) => {
                if let Some(last) = out.last_mut() {
                    last.push(row);
                }
            }
            Ok(None) => break,
            Err(e) => return (out, Some(e.into())),
        }
    }
    // Each statement's end opened the next one's list: drop the last, empty one.
    out.pop();
    (out, None)
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

/// Take the tenant's advisory lock for the rest of the transaction, waiting at most
/// `--lock-timeout`. When it is held, the refusal names the holder. ([`begin_change`] takes it
/// inside its BEGIN message instead; this is for a transaction begun otherwise.)
pub async fn lock_tenant(conn: &mut PgConnection, settings: &Settings) -> Result<()> {
    let got: bool = query_scalar("SELECT pg_try_advisory_xact_lock($1, $2)")
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

/// Who holds the tenant lock, for the message, and whether it is orgctl (application_name).
async fn lock_holder(conn: &mut PgConnection) -> Result<(String, bool)> {
    let row = query(
        "SELECT a.pid, coalesce(a.application_name, ''), coalesce(a.usename::text, ''),
                coalesce(host(a.client_addr), 'local')
           FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
          WHERE l.locktype = 'advisory' AND l.granted
            AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
            AND l.classid = $1::int::oid AND l.objid = $2::int::oid AND l.objsubid = 2
          LIMIT 1",
    )
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

/// The platform tables and columns orgctl reads or writes. A tenant missing any of them is
/// refused before anything else happens.
pub const REQUIRED_COLUMNS: &[(&str, &[&str])] = &[
    (
        "workspaces",
        &[
            "id",
            "name",
            "tier",
            "status",
            "parent_id",
            "runtime",
            "kind",
            "template",
            "broadcast_enabled",
            "created_at",
            "updated_at",
        ],
    ),
    (
        "workspace_declared_plugins",
        &["workspace_id", "plugin_name", "source_raw", "updated_at"],
    ),
    (
        "workspace_secrets",
        &[
            "workspace_id",
            "key",
            "encrypted_value",
            "encryption_version",
            "created_at",
            "updated_at",
        ],
    ),
    (
        "global_secrets",
        &[
            "key",
            "encrypted_value",
            "encryption_version",
            "created_at",
            "updated_at",
        ],
    ),
    (
        "org_api_tokens",
        &[
            "id",
            "token_hash",
            "prefix",
            "name",
            "created_by",
            "created_at",
            "last_used_at",
            "revoked_at",
            "org_id",
            "expires_at",
        ],
    ),
    (
        "org_token_audit_logs",
        &["token_id", "action", "actor", "org_id", "metadata"],
    ),
    (
        "org_plugin_allowlist",
        &["id", "org_id", "plugin_name", "enabled_by", "enabled_at"],
    ),
];

/// Refuse (exit 3) a tenant whose schema lacks a table or column orgctl needs, naming each.
/// Runs in a transaction of its own (catalog reads only, one simple-query message): no
/// statement of orgctl runs outside one, because a transaction pooler may hand the server
/// connection to another client between statements. A change checks the same inside its own
/// transaction ([`begin_change`]).
pub async fn ensure_compatible(conn: &mut PgConnection) -> Result<()> {
    let mut tx = conn.begin().await?;
    let rows = simple_batch(&mut tx, &compatibility_sql()).await?;
    tx.rollback().await?;
    check_compatible(rows.first().map(Vec::as_slice).unwrap_or_default())
}

/// The catalog query behind [`check_compatible`]: each required table (resolved through the
/// `search_path`, as the platform's own queries do), whether it is there, and its columns.
/// Only orgctl's constant table names are written into it.
fn compatibility_sql() -> String {
    let names: Vec<String> = REQUIRED_COLUMNS
        .iter()
        .map(|(t, _)| format!("'{t}'"))
        .collect();
    format!(
        "SELECT t.name, to_regclass(t.name) IS NOT NULL AS present, a.attname::text
           FROM unnest(ARRAY[{}]::text[]) AS t(name)
           LEFT JOIN pg_catalog.pg_attribute a
             ON a.attrelid = to_regclass(t.name) AND a.attnum > 0 AND NOT a.attisdropped",
        names.join(", ")
    )
}

fn check_compatible(rows: &[PgRow]) -> Result<()> {
    let mut missing = Vec::new();
    for (table, columns) in REQUIRED_COLUMNS {
        let present = rows.iter().any(|r| {
            r.try_get::<String, _>(0).ok().as_deref() == Some(*table)
                && r.try_get::<bool, _>(1).unwrap_or(false)
        });
        if !present {
            missing.push(format!("table {table}"));
            continue;
        }
        for col in *columns {
            let has = rows.iter().any(|r| {
                r.try_get::<String, _>(0).ok().as_deref() == Some(*table)
                    && r.try_get::<Option<String>, _>(2).ok().flatten().as_deref() == Some(*col)
            });
            if !has {
                let hint = if *table == "workspaces" && *col == "kind" {
                    " (the platform predates the platform-agent kind)"
                } else {
                    ""
                };
                missing.push(format!("column {table}.{col}{hint}"));
            }
        }
    }
    let absent_tables = missing.iter().filter(|m| m.starts_with("table ")).count();
    if missing.is_empty() {
        Ok(())
    } else if absent_tables == REQUIRED_COLUMNS.len() {
        // None of the platform's tables: not an old tenant, not a tenant at all.
        Err(Error::refused(
            "this database has none of the platform's tables (workspaces, org_api_tokens, …): it is not a tenant database; check the database name in --database-url (or DATABASE_URL)",
        ))
    } else {
        Err(Error::refused(format!(
            "the tenant's schema is incompatible with orgctl: missing {}; upgrade the platform's schema first",
            missing.join(", ")
        )))
    }
}

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

/// Look an orgctl table up through the catalog by name: `to_regclass('orgctl.x')` raises
/// "permission denied for schema orgctl" for a role without USAGE on it, where a read-only
/// command should carry on and report orgctl's own state as not readable.
pub async fn orgctl_table(conn: &mut PgConnection, table: &str) -> Result<Access> {
    let readable: Option<bool> = query_scalar(
        "SELECT has_schema_privilege(n.oid, 'USAGE') AND has_table_privilege(c.oid, 'SELECT')
           FROM pg_catalog.pg_class c
           JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
          WHERE n.nspname = 'orgctl' AND c.relname = $1",
    )
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
const MIGRATIONS_ACCESS: &str =
    "(SELECT has_schema_privilege(n.oid, 'USAGE') AND has_table_privilege(c.oid, 'SELECT')
   FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
  WHERE n.nspname = 'orgctl' AND c.relname = '_sqlx_migrations')";

/// Create or upgrade orgctl's schema in the caller's write transaction, given what
/// [`MIGRATIONS_ACCESS`] found. Steady state (schema at this orgctl's version) costs one
/// statement; a tenant without the schema, one message ([`create_fresh_schema`]); an upgrade:
/// the schema lock, the DDL and the version table in one message, then the pending migrations'
/// script and their bookkeeping rows.
///
/// Returns true when the schema was absent and this transaction created it whole (so it holds
/// no row of any earlier command: a caller can skip reading its own state back).
async fn ensure_orgctl_schema_in(
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
                simple_batch(conn, "SELECT max(version) FROM orgctl._sqlx_migrations WHERE success")
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
            query(
                "INSERT INTO orgctl._sqlx_migrations
                        (version, description, success, checksum, execution_time)
                 SELECT v, d, true, c, $4
                   FROM unnest($1::bigint[], $2::text[], $3::bytea[]) AS m(v, d, c)",
            )
            .bind(&versions)
            .bind(&descriptions)
            .bind(&checksums)
            .bind(i64::try_from(started.elapsed().as_nanos()).unwrap_or(i64::MAX))
            .execute(&mut *conn)
            .await?;
        }
    }
    Ok((false, None))
}

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
        url.opts.get_username()
    ))
}

async fn current_role(conn: &mut PgConnection) -> String {
    query_scalar("SELECT current_user::text")
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

/// Check that a statement of an apply touched exactly the rows its plan counted; anything else
/// is a failure that rolls the whole transaction back.
pub fn ensure_rows(what: &str, touched: u64, planned: i64) -> Result<()> {
    if i64::try_from(touched).ok() == Some(planned) {
        return Ok(());
    }
    Err(Error::failed(format!(
        "apply diverged from the plan: {what} touched {touched} row(s) where the plan counted {planned}; rolled back, nothing changed; rerun to see the new plan"
    )))
}

/// Append an audit row in the caller's transaction. `args` must already be free of secret
/// values. The row carries the run's `--reason` and is a link of the audit hash chain (see
/// [`append_audit`]). Returns the row's `txid`, a fresh id that names this write transaction:
/// pass it to [`commit_or_resolve`] as [`Evidence::Audit`], so a COMMIT whose answer is lost
/// can be checked afterwards.
pub async fn audit(
    conn: &mut PgConnection,
    command: &str,
    args: &serde_json::Value,
    outcome: &str,
) -> Result<uuid::Uuid> {
    audit_checked(conn, command, args, outcome, None).await
}

/// [`audit`], with `check` read and judged before the row is written ([`Check`]).
pub async fn audit_checked(
    conn: &mut PgConnection,
    command: &str,
    args: &serde_json::Value,
    outcome: &str,
    check: Option<Check<'_>>,
) -> Result<uuid::Uuid> {
    let txid = uuid::Uuid::new_v4();
    append_audit_checked(
        conn,
        &[AuditEntry {
            command: command.to_string(),
            args: args.clone(),
            outcome: outcome.to_string(),
            txid: Some(txid),
        }],
        check,
    )
    .await?;
    Ok(txid)
}

/// One audit row to append: what was done (`command`), with which arguments (never a secret
/// value), and how it ended.
#[derive(Clone, Debug)]
pub struct AuditEntry {
    pub command: String,
    pub args: serde_json::Value,
    pub outcome: String,
    /// The write transaction's id (issue: in-doubt COMMITs), on the change's own row; None on
    /// after-commit rows. Not part of the hashed content.
    pub txid: Option<uuid::Uuid>,
}

/// Rows appended per INSERT statement.
const AUDIT_BATCH: usize = 1000;

/// Append audit rows, in order, in the caller's transaction, as links of the hash chain
/// (`seq`, `prev_hash`, `row_hash`; README "Incident review"). The chain's head row is locked
/// `FOR UPDATE` first, which serialises every append of the tenant whatever other lock the
/// caller holds (the tenant lock for a change; nothing for the after-commit outcome rows of
/// [`audit_after_commit`]); row locks wait at most `--lock-timeout`. Each row records the
/// run's `--reason` ([`crate::audit::reason`]).
pub async fn append_audit(conn: &mut PgConnection, entries: &[AuditEntry]) -> Result<()> {
    append_audit_checked(conn, entries, None).await
}

/// [`append_audit`], with `check` read and judged in the statement that writes the rows.
async fn append_audit_checked(
    conn: &mut PgConnection,
    entries: &[AuditEntry],
    check: Option<Check<'_>>,
) -> Result<()> {
    if entries.is_empty() {
        return Ok(());
    }
    let mut b = Binds::default();
    let raw = b.arg(Arg::TextList(audit_head_args(entries)));
    let sql = format!(
        "WITH {AUDIT_HEAD_CTE} SELECT {}",
        audit_head_columns(&raw).join(", ")
    );
    let row = b.bind_to(query(&sql)).fetch_one(&mut *conn).await?;
    let head = AuditHead::decode(&row, 0)?;
    append_after_head(conn, head, entries, check).await?;
    Ok(())
}

/// The audit chain's head locked `FOR UPDATE`, as a CTE (`h`) of a statement that reads
/// [`audit_head_columns`]: alone before the rows are written, or in a change's first statement
/// (one round trip less per change).
pub const AUDIT_HEAD_CTE: &str =
    "h AS (SELECT seq, row_hash FROM orgctl.audit_head WHERE one FOR UPDATE)";

/// The first chunk's arguments as sent, to bind for [`audit_head_columns`].
pub fn audit_head_args(entries: &[AuditEntry]) -> Vec<String> {
    entries
        .iter()
        .take(AUDIT_BATCH)
        .map(|e| e.args.to_string())
        .collect()
}

/// What the first rows of an append need, read with the head locked ([`AUDIT_HEAD_CTE`]):
/// the head (NULL when its row is gone), the transaction's time and role, and — only once the
/// head is locked (the arrays are correlated with the locked row, so they are computed after the
/// row lock is had) — the first chunk's ids and normalised arguments (`raw`: the placeholder of
/// [`audit_head_args`]), so ids still grow in chain order.
pub fn audit_head_columns(raw: &str) -> Vec<String> {
    audit_head_columns_merging(raw, None)
}

/// [`audit_head_columns`], with `first_extra` (an SQL expression of a jsonb object, read in the
/// same statement) merged into the first row's arguments: what the statement itself wrote (a
/// backfill snapshot's digest) becomes part of the chained row.
pub fn audit_head_columns_merging(raw: &str, first_extra: Option<&str>) -> Vec<String> {
    let normalised = match first_extra {
        Some(extra) => {
            format!("CASE WHEN n = 1 THEN (a::jsonb || ({extra}))::text ELSE a::jsonb::text END")
        }
        None => "a::jsonb::text".to_string(),
    };
    vec![
        "(SELECT seq FROM h)".to_string(),
        "(SELECT row_hash FROM h)".to_string(),
        "now()".to_string(),
        "current_user::text".to_string(),
        format!(
            "ARRAY(SELECT nextval(pg_get_serial_sequence('orgctl.audit_log', 'id'))
                     FROM h, unnest({raw}::text[]) WITH ORDINALITY AS t(a, n)
                    WHERE h.seq IS NOT NULL ORDER BY n)"
        ),
        format!(
            "ARRAY(SELECT {normalised} FROM h, unnest({raw}::text[]) WITH ORDINALITY AS t(a, n)
                    WHERE h.seq IS NOT NULL ORDER BY n)"
        ),
    ]
}

/// The values of [`audit_head_columns`], read.
pub struct AuditHead {
    seq: i64,
    prev: [u8; 32],
    at: chrono::DateTime<chrono::Utc>,
    db_user: String,
    ids: Vec<i64>,
    args: Vec<String>,
}

impl AuditHead {
    /// From `row`, whose [`audit_head_columns`] start at column `at`.
    pub fn decode(row: &PgRow, at: usize) -> Result<Self> {
        let seq: Option<i64> = row.try_get(at)?;
        let prev: Option<Vec<u8>> = row.try_get(at + 1)?;
        let (Some(seq), Some(prev)) = (seq, prev) else {
            return Err(Error::failed(
                "orgctl.audit_head has no row: the audit chain's head was deleted by hand, so orgctl cannot append to the audit log; nothing was changed: run `orgctl audit verify` and restore the head from the last intact row",
            ));
        };
        let prev: [u8; 32] = prev.as_slice().try_into().map_err(|_| {
            Error::failed(
                "orgctl.audit_head holds a malformed hash: the audit chain's head was altered by hand; nothing was changed: run `orgctl audit verify`",
            )
        })?;
        Ok(AuditHead {
            seq,
            prev,
            at: row.try_get(at + 2)?,
            db_user: row.try_get(at + 3)?,
            ids: row.try_get(at + 4)?,
            args: row.try_get(at + 5)?,
        })
    }
}

/// Append `entries` after `head` (read, locked, in this transaction with
/// [`audit_head_args`] of these same entries), with `check` read and judged in the statement
/// that writes the last rows and moves the head.
pub async fn append_after_head(
    conn: &mut PgConnection,
    head: AuditHead,
    entries: &[AuditEntry],
    mut check: Option<Check<'_>>,
) -> Result<(i64, [u8; 32])> {
    let AuditHead {
        mut seq,
        mut prev,
        at,
        db_user,
        ids: first_ids,
        args: first_args,
    } = head;
    if first_ids.len() != entries.len().min(AUDIT_BATCH) || first_args.len() != first_ids.len() {
        return Err(Error::failed(
            "internal: the audit head was read for other rows than these",
        ));
    }
    let os_user = crate::sys::os_user();
    let reason = crate::audit::reason();
    let version = env!("CARGO_PKG_VERSION");
    let chunks = entries.len().div_ceil(AUDIT_BATCH);
    for (i, chunk) in entries.chunks(AUDIT_BATCH).enumerate() {
        let raw: Vec<String> = chunk.iter().map(|e| e.args.to_string()).collect();
        // Ids from the table's own sequence, and the arguments as PostgreSQL will store and
        // return them (jsonb normalises), so the hash covers exactly what `audit verify` reads.
        let rows: Vec<(i64, String)> = if i == 0 {
            first_ids
                .iter()
                .copied()
                .zip(first_args.iter().cloned())
                .collect()
        } else {
            query_as(
                "SELECT nextval(pg_get_serial_sequence('orgctl.audit_log', 'id')), a::jsonb::text
                   FROM unnest($1::text[]) WITH ORDINALITY AS t(a, n) ORDER BY n",
            )
            .bind(&raw)
            .fetch_all(&mut *conn)
            .await?
        };
        let mut ids: Vec<i64> = rows.iter().map(|(id, _)| *id).collect();
        ids.sort_unstable();
        let n = chunk.len();
        let (mut seqs, mut prevs, mut hashes, mut args) = (
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
        );
        let (mut commands, mut outcomes) = (Vec::with_capacity(n), Vec::with_capacity(n));
        let mut txids: Vec<Option<uuid::Uuid>> = Vec::with_capacity(n);
        for ((e, (_, stored_args)), id) in chunk.iter().zip(&rows).zip(&ids) {
            seq += 1;
            let link = crate::audit::Link {
                seq,
                id: *id,
                at,
                os_user: &os_user,
                db_user: &db_user,
                command: &e.command,
                args: stored_args,
                reason: reason.as_deref(),
                outcome: &e.outcome,
                orgctl_version: version,
            };
            let hash = link.hash(&prev)?;
            seqs.push(seq);
            prevs.push(prev.to_vec());
            hashes.push(hash.to_vec());
            args.push(stored_args.clone());
            commands.push(e.command.clone());
            outcomes.push(e.outcome.clone());
            txids.push(e.txid);
            prev = hash;
        }
        // The last chunk moves the chain's head in the same statement (one round trip less
        // per change: a fleet pays each one once per tenant).
        let last = i + 1 == chunks;
        let sql = format!(
            "WITH ins AS (
               INSERT INTO orgctl.audit_log
                      (id, at, os_user, db_user, command, args, reason, outcome, orgctl_version,
                       seq, prev_hash, row_hash, txid)
               SELECT id, $2, $3, $4, c, a::jsonb, $5, o, $6, s, p, h, x
                 FROM unnest($1::bigint[], $7::text[], $8::text[], $9::text[], $10::bigint[],
                             $11::bytea[], $12::bytea[], $13::uuid[]) AS t(id, c, a, o, s, p, h, x)
               RETURNING 1){}
             SELECT (SELECT count(*) FROM ins), {}",
            if last {
                ", head AS (UPDATE orgctl.audit_head SET seq = $14, row_hash = $15 WHERE one RETURNING 1)"
            } else {
                ""
            },
            if last {
                "(SELECT count(*) FROM head)"
            } else {
                "1::bigint"
            }
        );
        let mut extra = Binds::after(if last { 15 } else { 13 });
        let mut judge = None;
        let mut sql = sql;
        if last {
            if let Some(c) = check.take() {
                let ph: Vec<String> = c.args.into_iter().map(|a| extra.arg(a)).collect();
                for col in (c.columns)(&ph) {
                    sql.push_str(", ");
                    sql.push_str(&col);
                }
                judge = Some(c.judge);
            }
        }
        let mut q = query(&sql)
            .bind(&ids)
            .bind(at)
            .bind(&os_user)
            .bind(&db_user)
            .bind(reason.as_deref())
            .bind(version)
            .bind(&commands)
            .bind(&args)
            .bind(&outcomes)
            .bind(&seqs)
            .bind(&prevs)
            .bind(&hashes)
            .bind(&txids);
        if last {
            q = q.bind(seq).bind(prev.to_vec());
        }
        let row = extra.bind_to(q).fetch_one(&mut *conn).await?;
        let (inserted, moved): (i64, i64) = (row.try_get(0)?, row.try_get(1)?);
        if let Some(judge) = judge {
            let values = (2..row.len())
                .map(|i| row.try_get::<i64, _>(i))
                .collect::<std::result::Result<Vec<_>, sqlx::Error>>()?;
            judge(&values)?;
        }
        ensure_rows(
            "the audit append",
            u64::try_from(inserted).unwrap_or(0),
            n as i64,
        )?;
        ensure_rows(
            "the audit head update",
            u64::try_from(moved).unwrap_or(0),
            1,
        )?;
    }
    crate::audit::note_appended(seq, prev);
    Ok((seq, prev))
}

/// Record what happened after a commit (a restart dispatch, a provision request: one row per
/// workspace with its HTTP outcome) in a transaction of its own, creating orgctl's schema when
/// needed. The change itself is committed already, so a failure here is reported by the caller
/// as a warning, never as "nothing changed".
pub async fn audit_after_commit(
    conn: &mut PgConnection,
    url: &DbUrl,
    settings: &Settings,
    entries: &[AuditEntry],
) -> Result<()> {
    if entries.is_empty() {
        return Ok(());
    }
    ensure_orgctl_schema(conn, url, settings).await?;
    // The first row carries a transaction id: a COMMIT whose answer is lost is resolved by
    // looking for it, as the change's own commit is (never said to be rolled back).
    let txid = uuid::Uuid::new_v4();
    let mut entries = entries.to_vec();
    entries[0].txid = Some(txid);
    let mut tx = begin_write(conn, settings).await?;
    append_audit(&mut tx, &entries).await?;
    match commit_or_resolve(tx, url, settings, &Evidence::Audit(txid)).await? {
        Committed::Answered => {}
        Committed::Verified(fresh) => *conn = fresh,
    }
    Ok(())
}

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

// ---------------------------------------------------------------------------------------------
// COMMIT, and finding out what happened when its answer is lost

/// How long the check after a lost COMMIT waits for the lost transaction to end (it holds the
/// tenant lock until its COMMIT or rollback has finished on the server).
const RESOLVE_LOCK_WAIT: Duration = Duration::from_secs(10);

/// What a write transaction left behind that proves it committed, looked for after a lost
/// COMMIT.
#[derive(Clone, Debug)]
pub enum Evidence {
    /// The audit row written in the transaction, by its `txid` (from [`audit`]).
    Audit(uuid::Uuid),
    /// The token `token mint` inserted, by its hash; the prefix is for messages.
    Token { hash: Vec<u8>, prefix: String },
    /// The backfill run-state row, at the status the transaction set (a `skipped` tenant
    /// writes no audit row). Before the transaction the row was absent or `failed`.
    RunRow {
        run_id: String,
        status: &'static str,
    },
}

impl Evidence {
    /// What an operator checks when orgctl could not.
    pub fn check(&self) -> String {
        match self {
            Evidence::Audit(id) => format!(
                "whether orgctl.audit_log has a row with txid {id} (SELECT * FROM orgctl.audit_log WHERE txid = '{id}'): if it has, the change was committed"
            ),
            Evidence::Token { prefix, .. } => format!(
                "whether a token with prefix {prefix} exists (`orgctl token list --all`): if it does, it is live; revoke it with `orgctl token revoke -- {prefix}`"
            ),
            Evidence::RunRow { run_id, status } => format!(
                "`orgctl backfill status --run-id {run_id}`: the tenant's run row says '{status}' if the change was committed"
            ),
        }
    }

    async fn present(&self, conn: &mut PgConnection) -> Result<bool> {
        // On a tenant's first touch the transaction also created orgctl's schema: when its
        // table is not there, the transaction that would have written into it did not commit.
        let own_table = match self {
            Evidence::Audit(_) => Some("orgctl.audit_log"),
            Evidence::RunRow { .. } => Some("orgctl.backfill_runs"),
            Evidence::Token { .. } => None,
        };
        if let Some(table) = own_table {
            let exists: bool = query_scalar("SELECT to_regclass($1) IS NOT NULL")
                .bind(table)
                .fetch_one(&mut *conn)
                .await?;
            if !exists {
                return Ok(false);
            }
        }
        let found: bool = match self {
            Evidence::Audit(id) => {
                query_scalar("SELECT EXISTS (SELECT 1 FROM orgctl.audit_log WHERE txid = $1)")
                    .bind(id)
                    .fetch_one(&mut *conn)
                    .await?
            }
            Evidence::Token { hash, .. } => {
                query_scalar("SELECT EXISTS (SELECT 1 FROM org_api_tokens WHERE token_hash = $1)")
                    .bind(hash)
                    .fetch_one(&mut *conn)
                    .await?
            }
            Evidence::RunRow { run_id, status } => {
                query_scalar(
                    "SELECT EXISTS (SELECT 1 FROM orgctl.backfill_runs
                                     WHERE run_id = $1 AND status = $2)",
                )
                .bind(run_id)
                .bind(*status)
                .fetch_one(&mut *conn)
                .await?
            }
        };
        Ok(found)
    }
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
    evidence: &Evidence,
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
    evidence: &Evidence,
) -> std::result::Result<Committed, CommitError> {
    let err = match tx.commit().await {
        Ok(()) => {
            crate::audit::note_committed();
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
            crate::audit::note_committed();
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
fn lost_cause(e: &sqlx::Error) -> String {
    match e {
        sqlx::Error::Io(io) => io.to_string(),
        sqlx::Error::Database(db) => db.message().to_string(),
        sqlx::Error::Protocol(p) => p.clone(),
        other => other.to_string(),
    }
}

/// Reconnect, wait until the lost transaction has ended, and look for its evidence.
async fn resolve(
    url: &DbUrl,
    settings: &Settings,
    evidence: &Evidence,
) -> std::result::Result<(bool, PgConnection), String> {
    let mut conn = connect(url, settings)
        .await
        .map_err(|e| format!("reconnecting failed: {}", e.message))?;
    let found = async {
        let mut tx = begin_write(&mut conn, settings).await?;
        query("SELECT set_config('lock_timeout', $1, true)")
            .bind(format!("{}ms", RESOLVE_LOCK_WAIT.as_millis()))
            .execute(&mut *tx)
            .await?;
        query("SELECT pg_advisory_xact_lock($1, $2)")
            .bind(TENANT_LOCK.0)
            .bind(TENANT_LOCK.1)
            .execute(&mut *tx)
            .await?;
        let found = evidence.present(&mut tx).await?;
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

    #[test]
    fn url_redacts_password() {
        let u = match DbUrl::parse(
            "postgres://alice:s3cr%40t@db.example:6543/tenant?sslmode=disable",
        ) {
            Ok(u) => u,
            Err(e) => panic!("{e}"),
        };
        let shown = format!("{u} {u:?} {}", u.target());
        assert!(!shown.contains("s3cr"), "{shown}");
        assert!(shown.contains("db.example:6543/tenant"));
        assert!(!redact::mask("x s3cr@t y").contains("s3cr@t"));
    }

    #[test]
    fn unencoded_delimiters_in_a_password_do_not_leak_it() {
        for (raw, pw) in [
            (
                "postgres://alice:5432/s3cret-tail@db.example/tenant",
                "5432/s3cret-tail",
            ),
            (
                "postgres://alice:99#frag-s3cret@db.example/tenant",
                "99#frag-s3cret",
            ),
        ] {
            let shown = match DbUrl::parse(raw) {
                Ok(u) => format!("{u} {u:?} {}", u.target()),
                Err(e) => e.message,
            };
            let printed = redact::mask(&shown);
            assert!(!printed.contains(pw), "{printed}");
        }
    }

    #[test]
    fn url_rejects_garbage() {
        for bad in [
            "",
            "not a url",
            "mysql://u:p@h/db",
            "postgres://u:pw@h:99999/db",
        ] {
            match DbUrl::parse(bad) {
                Ok(_) => panic!("accepted {bad}"),
                Err(e) => {
                    assert_eq!(e.exit, crate::error::Exit::Usage, "{bad}");
                    assert!(!e.message.contains(":pw@"), "{}", e.message);
                }
            }
        }
    }
}
