//! Listing tokens: which rows a `list` selects, how many it shows by default, and the read
//! through the token cursor.

use sqlx::postgres::PgConnection;
use std::fmt::Write as _;
use uuid::Uuid;

use super::TokenRow;
use crate::db::{self, Settings};
use crate::error::Result;
use crate::platform::tokens as platform;

/// `list` shows this many tokens by default, in the table on a terminal only.
pub const DEFAULT_TABLE_LIMIT: u64 = 100;

/// Which tokens a listing selects.
#[derive(Clone, Debug, Default)]
pub struct ListFilter {
    /// Revoked and expired ones too; otherwise live ones only.
    pub all: bool,
    /// Anchored to this org.
    pub org: Option<Uuid>,
    /// Anchored to no org.
    pub unanchored: bool,
    /// With exactly this `created_by`.
    pub created_by: Option<String>,
}

/// The cursor's query: the filter's matches, newest first, at most `limit_plus_one` rows.
/// Only fixed text goes in; the values are bound in the order org, label, limit.
fn declare_sql(filter: &ListFilter, limited: bool) -> String {
    let mut conds: Vec<String> = Vec::new();
    let mut n = 0;
    if !filter.all {
        conds.push(platform::live(""));
    }
    if filter.org.is_some() {
        n += 1;
        conds.push(format!("org_id = ${n}"));
    }
    if filter.unanchored {
        conds.push("org_id IS NULL".into());
    }
    if filter.created_by.is_some() {
        n += 1;
        conds.push(format!("created_by = ${n}"));
    }
    let mut sql = concat!(
        "DECLARE ",
        cursor!(),
        " NO SCROLL CURSOR FOR SELECT ",
        token_columns!(),
        " FROM org_api_tokens"
    )
    .to_string();
    if !conds.is_empty() {
        let _ = write!(sql, " WHERE {}", conds.join(" AND "));
    }
    sql.push_str(" ORDER BY created_at DESC, id DESC");
    if limited {
        n += 1;
        let _ = write!(sql, " LIMIT ${n}");
    }
    sql
}

/// The listing of `token list`, through a server-side cursor in a read-only REPEATABLE READ
/// transaction, so memory stays bounded however many tokens match. `limit` rows are asked for
/// plus one, so the caller learns whether more exist without counting them. `each` gets every
/// batch in order and returns whether to go on (a reader that went away, a limit reached).
pub async fn stream_listing(
    conn: &mut PgConnection,
    settings: &Settings,
    filter: &ListFilter,
    limit: Option<i64>,
    mut each: impl FnMut(&[TokenRow]) -> Result<bool>,
) -> Result<()> {
    let sql = declare_sql(filter, limit.is_some());
    let mut q = db::query(&sql);
    if let Some(org) = filter.org {
        q = q.bind(org);
    }
    if let Some(l) = &filter.created_by {
        q = q.bind(l.as_str());
    }
    if let Some(l) = limit {
        q = q.bind(l + 1);
    }
    let mut tx = db::begin_read_only(conn, settings).await?;
    db::cursor::stream_as::<TokenRow, _>(&mut tx, cursor!(), q, |rows| {
        Ok(db::cursor::go_on(each(&rows)?))
    })
    .await?;
    tx.rollback().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listing_binds_in_order() {
        let f = ListFilter {
            all: true,
            org: Some(Uuid::nil()),
            unanchored: false,
            created_by: Some("x".into()),
        };
        let sql = declare_sql(&f, true);
        assert!(sql.contains("org_id = $1 AND created_by = $2"), "{sql}");
        assert!(
            sql.ends_with("ORDER BY created_at DESC, id DESC LIMIT $3"),
            "{sql}"
        );
    }
}
