//! The query helpers every statement of orgctl goes through (`.ci/run` rejects a bare
//! `sqlx::query` outside this folder), values bound to statements composed of parts, and
//! constant SQL sent as one simple-query message.

use std::sync::atomic::{AtomicBool, Ordering};

use sqlx::postgres::{PgArguments, PgConnection, PgRow};
use sqlx::query::{Query, QueryAs, QueryScalar};
use sqlx::Postgres;

use crate::error::{Error, Result};

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

pub(super) fn statement_cache() -> bool {
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
#[derive(Clone, Debug)]
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
pub(super) async fn simple_batch_partial(
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

/// Check that a statement of an apply touched exactly the rows its plan counted; anything else
/// is a failure that rolls the whole transaction back.
pub fn ensure_rows(what: &str, touched: u64, planned: i64) -> Result<()> {
    if i64::try_from(touched).ok() == Some(planned) {
        return Ok(());
    }
    Err(Error::failed(format!(
        "apply diverged from the plan: {what} touched {touched} row(s) where the plan counted {planned}; rolled back, nothing was changed; rerun to see the new plan"
    )))
}
