//! The encrypted fields of `workspace_channels.channel_config`: whether the tenant has the
//! table in the platform's shape, their counts per version, and their pages for the scan. Only
//! the five secret fields leave the server, never the rest of the object, and a write merges
//! only the rewritten fields back into it.

use sqlx::postgres::PgConnection;
use sqlx::Row;
use uuid::Uuid;
use zeroize::Zeroizing;

use super::counts::{Counts, Table};
use super::scan::{Stored, Writes};
use super::{PAGE_BYTES, PAGE_ROWS};
use crate::db;
use crate::error::{Error, Result};
use crate::platform::channels;

/// Whether the relation `$1` exists, and how many of its columns have the platform's types
/// (UUID `id` and `workspace_id`, jsonb `$2`).
pub(super) const CHANNEL_TABLE_SQL: &str = "SELECT to_regclass($1) IS NOT NULL,
                (SELECT count(*) FROM pg_attribute a
                  WHERE a.attrelid = to_regclass($1) AND NOT a.attisdropped
                    AND ((a.attname IN ('id', 'workspace_id') AND a.atttypid = 'uuid'::regtype)
                      OR (a.attname = $2 AND a.atttypid = 'jsonb'::regtype)))";

/// Each table of `$1` with whether its `id` column is a UUID (NULL without one).
pub(super) const SCANNABLE_SQL: &str = "SELECT t.name, a.atttypid = 'uuid'::regtype
           FROM unnest($1::text[]) AS t(name)
           LEFT JOIN pg_attribute a
             ON a.attrelid = to_regclass(t.name) AND a.attname = 'id' AND NOT a.attisdropped";

/// Whether the tenant has the channel table, and in which shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChannelTable {
    /// No such table (an older tenant): nothing there to protect.
    Absent,
    /// UUID `id` and `workspace_id`, `jsonb` config: scanned like the secret tables.
    Present,
    /// The table is there in a shape orgctl does not know: `verify`/`rekey` refuse.
    Unknown,
}

/// The channel table as the catalog has it.
pub async fn channel_table(conn: &mut PgConnection) -> Result<ChannelTable> {
    let r = db::query(CHANNEL_TABLE_SQL)
        .bind(channels::TABLE)
        .bind(channels::COLUMN)
        .fetch_one(&mut *conn)
        .await?;
    Ok(match (r.try_get::<bool, _>(0)?, r.try_get::<i64, _>(1)?) {
        (false, _) => ChannelTable::Absent,
        (true, 3) => ChannelTable::Present,
        (true, _) => ChannelTable::Unknown,
    })
}

/// The secret tables need a UUID `id` primary key for the keyset scan (the platform's schema
/// has one), and the channel table, when there is one, the platform's shape; refuse, naming
/// the table, otherwise. Returns whether the channel fields are to be scanned.
pub async fn ensure_scannable(conn: &mut PgConnection) -> Result<bool> {
    let rows = db::query(SCANNABLE_SQL)
        .bind(Table::SECRETS.map(Table::name).to_vec())
        .fetch_all(&mut *conn)
        .await?;
    let mut bad = Vec::new();
    for r in rows {
        let name: String = r.try_get(0)?;
        if r.try_get::<Option<bool>, _>(1)? != Some(true) {
            bad.push(name);
        }
    }
    if !bad.is_empty() {
        return Err(Error::refused(format!(
            "the tenant's schema is incompatible with secret verify/rekey: {} has no UUID id column to page through",
            bad.join(" and ")
        )));
    }
    match channel_table(conn).await? {
        ChannelTable::Absent => Ok(false),
        ChannelTable::Present => Ok(true),
        ChannelTable::Unknown => Err(Error::refused(format!(
            "the tenant's schema is incompatible with secret verify/rekey: {t} is not the platform's (UUID id and workspace_id, jsonb {c}), so its encrypted fields cannot be checked or re-encrypted; nothing was changed",
            t = channels::TABLE,
            c = channels::COLUMN,
        ))),
    }
}

/// The channel fields per version (1: `ec1:`, 0: plaintext), added to `counts`: one aggregate.
pub(super) async fn count_channel_fields(
    conn: &mut PgConnection,
    counts: &mut Counts,
) -> Result<()> {
    let sql = format!(
        "SELECT (left(c.{col} ->> f, $2) = $3)::int, count(*)
               FROM {t} c CROSS JOIN unnest($1::text[]) AS f
              WHERE jsonb_typeof(c.{col} -> f) = 'string' AND c.{col} ->> f <> ''
              GROUP BY 1",
        t = channels::TABLE,
        col = channels::COLUMN,
    );
    let rows = db::query(&sql)
        .bind(channels::SECRET_FIELDS.to_vec())
        .bind(channels::SEALED_PREFIX.len() as i32)
        .bind(channels::SEALED_PREFIX)
        .fetch_all(&mut *conn)
        .await?;
    for r in rows {
        counts.add(Table::ChannelFields, r.try_get(0)?, r.try_get(1)?);
    }
    Ok(())
}

/// The channel fields of the page: the next channel rows after `after` in primary-key order
/// that hold at least one encrypted field as a non-empty string (the platform's rule), at most
/// [`PAGE_ROWS`] rows and [`PAGE_BYTES`] of field values (but at least one row); one result row
/// per field, in (id, field) order. Only the five fields leave the server, never the rest of
/// the object.
pub(super) async fn fetch_channel_page(
    conn: &mut PgConnection,
    after: Option<Uuid>,
) -> Result<Vec<Stored>> {
    let cond = if after.is_some() { "c.id > $4" } else { "true" };
    let sql = format!(
        "SELECT w.id, w.workspace_id, f.name, w.cfg ->> f.name
           FROM (
             SELECT id, workspace_id, cfg,
                    row_number() OVER (ORDER BY id) AS rn,
                    sum(bytes) OVER (ORDER BY id) AS total
               FROM (SELECT c.id, c.workspace_id, c.{col} AS cfg,
                            (SELECT sum(octet_length(c.{col} ->> n)) FROM unnest($3::text[]) AS n
                              WHERE jsonb_typeof(c.{col} -> n) = 'string') AS bytes
                       FROM {t} c
                      WHERE {cond}
                        AND EXISTS (SELECT 1 FROM unnest($3::text[]) AS n
                                     WHERE jsonb_typeof(c.{col} -> n) = 'string'
                                       AND c.{col} ->> n <> '')
                      ORDER BY c.id LIMIT $1) s
           ) w
           CROSS JOIN unnest($3::text[]) WITH ORDINALITY AS f(name, i)
          WHERE (w.rn = 1 OR w.total <= $2)
            AND jsonb_typeof(w.cfg -> f.name) = 'string' AND w.cfg ->> f.name <> ''
          ORDER BY w.id, f.i",
        t = channels::TABLE,
        col = channels::COLUMN,
    );
    let mut q = db::query(&sql)
        // Always unnamed (even with --pooler session): planned with this page's bounds.
        .persistent(false)
        .bind(PAGE_ROWS)
        .bind(PAGE_BYTES)
        .bind(channels::SECRET_FIELDS.to_vec());
    if let Some(a) = after {
        q = q.bind(a);
    }
    let rows = q.fetch_all(&mut *conn).await?;
    let mut page = Vec::with_capacity(rows.len());
    for r in rows {
        let value = Zeroizing::new(r.try_get::<String, _>(3)?.into_bytes());
        page.push(Stored {
            id: r.try_get(0)?,
            workspace_id: r.try_get(1)?,
            key: r.try_get(2)?,
            version: i32::from(channels::is_sealed(&value)),
            value,
        });
    }
    Ok(page)
}

/// Write one page of channel fields: one set-based UPDATE that merges each row's rewritten
/// fields into its object (`||` replaces those keys and keeps every other one). Returns the
/// rows touched. `updated_at` is left alone.
pub(super) async fn update_channel_page(conn: &mut PgConnection, w: &Writes) -> Result<u64> {
    let (Some(lo), Some(hi)) = (w.ids.first(), w.ids.last()) else {
        return Ok(0);
    };
    let sql = format!(
        "UPDATE {t} AS t SET {col} = t.{col} || p.patch
           FROM (SELECT id, jsonb_object_agg(f, convert_from(v, 'UTF8')) AS patch
                   FROM unnest($1::uuid[], $2::text[], $3::bytea[]) AS u(id, f, v)
                  GROUP BY id) p
          WHERE t.id = p.id AND t.id >= $4 AND t.id <= $5",
        t = channels::TABLE,
        col = channels::COLUMN,
    );
    let done = db::query(&sql)
        // Always unnamed (even with --pooler session): planned with this page's bounds.
        .persistent(false)
        .bind(&w.ids)
        .bind(&w.fields)
        .bind(&w.values)
        .bind(lo)
        .bind(hi)
        .execute(&mut *conn)
        .await?;
    Ok(done.rows_affected())
}
