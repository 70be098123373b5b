//! Reading a result of any size with bounded memory: a server-side cursor declared in the
//! caller's read-only transaction, fetched [`FETCH_BATCH`] rows per round trip, each batch
//! handed to the caller as it arrives (a listing streams to stdout while the next batch is
//! fetched only when asked for).

use std::ops::ControlFlow;

use sqlx::postgres::{PgArguments, PgConnection, PgRow};
use sqlx::query::Query;
use sqlx::{FromRow, Postgres};

use super::query::query;
use crate::error::Result;

/// Rows per round trip when reading through a cursor.
pub const FETCH_BATCH: i64 = 1000;

/// The DECLARE statement of the cursor `name` over `select` (bind its values to the query
/// made of it, then pass that to [`stream`]). A cursor lives until its transaction ends.
pub fn declare(name: &str, select: &str) -> String {
    format!("DECLARE {name} NO SCROLL CURSOR FOR {select}")
}

/// Declare the cursor `name` (`declared`: a query of [`declare`]'s text with its values bound)
/// in the caller's transaction, then [`fetch_rows`] from it.
pub async fn stream<F>(
    conn: &mut PgConnection,
    name: &str,
    declared: Query<'_, Postgres, PgArguments>,
    each: F,
) -> Result<()>
where
    F: FnMut(Vec<PgRow>) -> Result<ControlFlow<()>>,
{
    declared.execute(&mut *conn).await?;
    fetch_rows(conn, name, each).await
}

/// [`stream`], each row decoded as `O`.
pub async fn stream_as<O, F>(
    conn: &mut PgConnection,
    name: &str,
    declared: Query<'_, Postgres, PgArguments>,
    mut each: F,
) -> Result<()>
where
    O: for<'r> FromRow<'r, PgRow>,
    F: FnMut(Vec<O>) -> Result<ControlFlow<()>>,
{
    stream(conn, name, declared, |rows| {
        let rows = rows
            .iter()
            .map(O::from_row)
            .collect::<std::result::Result<Vec<O>, sqlx::Error>>()?;
        each(rows)
    })
    .await
}

/// Fetch the declared cursor `name` batch by batch until it is exhausted or `each` breaks:
/// `each` gets every batch (never an empty one) as it arrives.
pub async fn fetch_rows<F>(conn: &mut PgConnection, name: &str, mut each: F) -> Result<()>
where
    F: FnMut(Vec<PgRow>) -> Result<ControlFlow<()>>,
{
    let fetch = format!("FETCH {FETCH_BATCH} FROM {name}");
    loop {
        let rows = query(&fetch).fetch_all(&mut *conn).await?;
        if rows.is_empty() || each(rows)?.is_break() {
            return Ok(());
        }
    }
}

/// A reader's "go on?" (true) as the flow [`stream`]'s callback returns.
pub fn go_on(more: bool) -> ControlFlow<()> {
    if more {
        ControlFlow::Continue(())
    } else {
        ControlFlow::Break(())
    }
}
