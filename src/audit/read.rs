//! Reading the audit log, read-only: which of the chain's columns the tenant's log has, the
//! rows newest first through a filter ([`list`]), and the whole chain in id order for
//! [`Verifier`] ([`read_chain`]). Rows come through a server-side cursor in batches, so any
//! log size reads in bounded memory; nothing is created (a tenant orgctl never touched has an
//! empty log).

use std::ops::ControlFlow;

use chrono::{DateTime, Utc};
use sqlx::postgres::PgConnection;
use sqlx::Row;

use super::verify::{StoredRow, Verifier};
use crate::db::{self, cursor};
use crate::error::{Error, Result};

/// The cursor both reads declare (one per transaction).
const CURSOR: &str = "orgctl_audit_cursor";

/// Which of orgctl's audit tables and chain columns exist, through the catalog by name.
const COLUMNS: &str = "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_class c
                  JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
                 WHERE n.nspname = 'orgctl' AND c.relname = 'audit_log'),
        EXISTS (SELECT 1 FROM pg_catalog.pg_attribute a
                  JOIN pg_catalog.pg_class c ON c.oid = a.attrelid
                  JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
                 WHERE n.nspname = 'orgctl' AND c.relname = 'audit_log'
                   AND a.attname = 'row_hash' AND NOT a.attisdropped),
        EXISTS (SELECT 1 FROM pg_catalog.pg_class c
                  JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
                 WHERE n.nspname = 'orgctl' AND c.relname = 'audit_head'),
        EXISTS (SELECT 1 FROM pg_catalog.pg_attribute a
                  JOIN pg_catalog.pg_class c ON c.oid = a.attrelid
                  JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
                 WHERE n.nspname = 'orgctl' AND c.relname = 'audit_head'
                   AND a.attname = 'pre_chain_rows' AND NOT a.attisdropped)";

/// Which of the chain's columns the tenant's `orgctl.audit_log` has (none before migration 4).
pub struct Columns {
    pub log: bool,
    pub chain: bool,
    pub head: bool,
    /// The head records the rows written before the chain began.
    pub pre_chain: bool,
}

/// [`Columns`], refused (exit 3) when the log exists but this role cannot read it.
pub async fn columns(conn: &mut PgConnection) -> Result<Columns> {
    // Through the catalog by name, never `to_regclass('orgctl.…')`, which raises "permission
    // denied for schema orgctl" for a role without USAGE on it.
    let row = db::query(COLUMNS).fetch_one(&mut *conn).await?;
    let cols = Columns {
        log: row.try_get(0)?,
        chain: row.try_get(1)?,
        head: row.try_get(2)?,
        pre_chain: row.try_get(3)?,
    };
    if cols.log && db::orgctl_table(conn, "audit_log").await? == db::Access::NotReadable {
        return Err(Error::refused(
            "orgctl.audit_log exists but this role cannot read it: GRANT USAGE ON SCHEMA orgctl and SELECT ON orgctl.audit_log (and orgctl.audit_head for `audit verify`) to it, or run as a role that can",
        ));
    }
    Ok(cols)
}

/// `--since`: a duration back from now (`90m`, `36h`, `7d`, `2w`), an RFC 3339 timestamp, or
/// a date (`2026-12-01`, midnight UTC).
#[derive(Clone, Debug, PartialEq)]
pub enum Since {
    Ago(std::time::Duration),
    At(DateTime<Utc>),
}

pub fn parse_since(raw: &str) -> std::result::Result<Since, String> {
    let s = raw.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(Since::At(t.with_timezone(&Utc)));
    }
    if let Ok(d) = chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d") {
        if let Some(t) = d.and_hms_opt(0, 0, 0) {
            return Ok(Since::At(t.and_utc()));
        }
    }
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let bad = || {
        format!(
            "'{s}' is neither a duration (30m, 12h, 7d, 2w) nor a timestamp (2026-12-01T07:00:00Z, 2026-12-01)"
        )
    };
    let value: f64 = num.parse().map_err(|_| bad())?;
    let secs = match unit.trim() {
        "ms" => value / 1000.0,
        "" | "s" => value,
        "m" | "min" => value * 60.0,
        "h" => value * 3600.0,
        "d" => value * 86_400.0,
        "w" => value * 7.0 * 86_400.0,
        _ => return Err(bad()),
    };
    // About 100 years back is as far as a duration makes sense.
    if !secs.is_finite() || !(0.0..=3.2e9).contains(&secs) {
        return Err(format!("'{s}' is out of range"));
    }
    Ok(Since::Ago(std::time::Duration::from_secs_f64(secs)))
}

/// An audit row as the listing reads it.
#[derive(Debug, sqlx::FromRow)]
pub struct ListedRow {
    pub id: i64,
    pub at: DateTime<Utc>,
    pub os_user: String,
    pub db_user: String,
    pub command: String,
    pub args: String,
    pub reason: Option<String>,
    pub outcome: String,
    pub orgctl_version: String,
}

/// What `orgctl audit` lists: rows at or after `since`, of `command` (a name without a space
/// also matches its family: "secret" → "secret set"), at most `limit`.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    pub since: Option<Since>,
    pub command: Option<String>,
    pub limit: Option<i64>,
}

/// Stream the rows that match `filter`, newest first by id (the order rows were appended in: a
/// clock step cannot reorder them), batch by batch to `each`, in the caller's read-only
/// transaction. With a limit, one row more than it is read, so the caller can tell that more
/// match. `cols`: what [`columns`] found (the log must exist).
pub async fn list<F>(
    conn: &mut PgConnection,
    cols: &Columns,
    filter: &Filter,
    each: F,
) -> Result<()>
where
    F: FnMut(Vec<ListedRow>) -> Result<ControlFlow<()>>,
{
    let reason = if cols.chain { "reason" } else { "NULL::text" };
    let (since_at, since_secs) = match filter.since {
        Some(Since::At(t)) => (Some(t), None),
        Some(Since::Ago(d)) => (None, Some(d.as_secs_f64())),
        None => (None, None),
    };
    let mut select = format!(
        "SELECT id, at, os_user, db_user, command, args::text AS args, {reason} AS reason,
                    outcome, orgctl_version
               FROM orgctl.audit_log
              WHERE ($1::timestamptz IS NULL OR at >= $1)
                AND ($2::float8 IS NULL OR at >= now() - make_interval(secs => $2))
                AND ($3::text IS NULL OR command = $3
                     OR (strpos($3, ' ') = 0 AND starts_with(command, $3 || ' ')))
              ORDER BY id DESC"
    );
    if filter.limit.is_some() {
        select.push_str(" LIMIT $4");
    }
    let declare = cursor::declare(CURSOR, &select);
    let mut q = db::query(&declare)
        .bind(since_at)
        .bind(since_secs)
        .bind(&filter.command);
    if let Some(l) = filter.limit {
        q = q.bind(l + 1);
    }
    cursor::stream_as(conn, CURSOR, q, each).await
}

/// The chain's head as orgctl recorded it.
const HEAD: &str = "SELECT seq, row_hash FROM orgctl.audit_head WHERE one";
/// What the chain recorded when it began: the rows written before it, and their highest id.
const PRE_CHAIN: &str = "SELECT pre_chain_rows, pre_chain_max_id FROM orgctl.audit_head WHERE one";

/// Feed the whole log, in id order, to `v`, and then the recorded head (when there is a chain
/// to compare it with); returns that head. `cols`: what [`columns`] found (the log must exist).
pub async fn read_chain(
    conn: &mut PgConnection,
    cols: &Columns,
    v: &mut Verifier,
) -> Result<Option<(i64, Vec<u8>)>> {
    let mut head = None;
    if cols.head {
        head = db::query_as::<(i64, Vec<u8>)>(HEAD)
            .fetch_optional(&mut *conn)
            .await?;
    }
    if cols.pre_chain {
        v.pre_chain = db::query_as::<(Option<i64>, Option<i64>)>(PRE_CHAIN)
            .fetch_optional(&mut *conn)
            .await?
            .and_then(|(n, max_id)| n.map(|n| (n, max_id)));
    }
    let chain = if cols.chain {
        "seq, prev_hash, row_hash, reason"
    } else {
        "NULL::bigint AS seq, NULL::bytea AS prev_hash, NULL::bytea AS row_hash, NULL::text AS reason"
    };
    let declare = cursor::declare(
        CURSOR,
        &format!(
            "SELECT id, at, os_user, db_user, command, args::text AS args, outcome,
                    orgctl_version, {chain}
               FROM orgctl.audit_log ORDER BY id"
        ),
    );
    cursor::stream_as(conn, CURSOR, db::query(&declare), |rows: Vec<StoredRow>| {
        for r in &rows {
            v.row(r);
        }
        Ok(ControlFlow::Continue(()))
    })
    .await?;
    if cols.head || v.chained > 0 || v.anchor.is_some() {
        v.finish(head.clone());
    }
    Ok(head)
}

/// The static statements of this module, by name (the two cursors' SELECTs are composed from
/// the columns the log has).
pub(crate) const STATEMENTS: &[(&str, &str)] = &[
    ("columns", COLUMNS),
    ("head", HEAD),
    ("pre_chain", PRE_CHAIN),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since() {
        assert_eq!(
            parse_since("7d"),
            Ok(Since::Ago(std::time::Duration::from_secs(7 * 86_400)))
        );
        assert_eq!(
            parse_since("90m"),
            Ok(Since::Ago(std::time::Duration::from_secs(5400)))
        );
        assert!(matches!(
            parse_since("2026-12-01T07:00:00+01:00"),
            Ok(Since::At(_))
        ));
        assert!(matches!(parse_since("2026-12-01"), Ok(Since::At(_))));
        assert!(parse_since("yesterday").is_err());
        assert!(parse_since("-1h").is_err());
    }
}
