//! The scan: every secret row (and channel field) in primary-key order, page by page, each
//! version-1 value opened with the current key, and — when the scan writes — every value the
//! mode rewrites sealed under the target key and written back with one UPDATE per page.

use sqlx::postgres::PgConnection;
use sqlx::Row;
use uuid::Uuid;
use zeroize::Zeroizing;

use super::channels::{fetch_channel_page, update_channel_page};
use super::counts::{BadRow, BadRows, Counts, Mode, Table};
use super::keys::Key;
use super::{PAGE_BYTES, PAGE_ROWS};
use crate::db;
use crate::error::{Error, Result};
use crate::platform::channels;

/// One page of `workspace_secrets` written back (`$1` ids, `$2` values, `$3`..`$4` the id range).
pub(super) const UPDATE_WORKSPACE_SECRETS_SQL: &str =
    "UPDATE workspace_secrets AS t SET encrypted_value = u.v, encryption_version = 1
           FROM unnest($1::uuid[], $2::bytea[]) AS u(id, v)
          WHERE t.id = u.id AND t.id >= $3 AND t.id <= $4";
/// One page of `global_secrets` written back, as [`UPDATE_WORKSPACE_SECRETS_SQL`].
pub(super) const UPDATE_GLOBAL_SECRETS_SQL: &str =
    "UPDATE global_secrets AS t SET encrypted_value = u.v, encryption_version = 1
           FROM unnest($1::uuid[], $2::bytea[]) AS u(id, v)
          WHERE t.id = u.id AND t.id >= $3 AND t.id <= $4";

/// One row of a page (for the channel fields: one field of a channel row, `key` its name and
/// `value` the JSON string's bytes). The value is zeroed when dropped (a version-0 value is
/// plaintext).
pub(super) struct Stored {
    pub(super) id: Uuid,
    pub(super) workspace_id: Option<Uuid>,
    pub(super) key: String,
    pub(super) value: Zeroizing<Vec<u8>>,
    pub(super) version: i32,
}

/// What one page writes back: ids and new values, and for the channel fields the field names
/// (one entry per field, in page order).
#[derive(Default)]
pub(super) struct Writes {
    pub(super) ids: Vec<Uuid>,
    pub(super) fields: Vec<String>,
    pub(super) values: Vec<Vec<u8>>,
}

/// The state of one scan over both secret tables and, when the tenant has them, the channel
/// fields.
pub(super) struct Scan<'a> {
    mode: Mode,
    /// Whether the tenant has the channel table ([`super::channel_table`]).
    channels: bool,
    current: Option<&'a Key>,
    /// The key rows are sealed with (new for a rotation, current for --plaintext-only).
    target: Option<&'a Key>,
    write: bool,
    pub(super) counts: Counts,
    pub(super) bad: BadRows,
    /// Rows that do not decrypt, per table and version (all of them, named or not).
    pub(super) bad_counts: Counts,
    pub(super) written: i64,
}

impl<'a> Scan<'a> {
    pub(super) fn new(
        mode: Mode,
        current: Option<&'a Key>,
        target: Option<&'a Key>,
        write: bool,
    ) -> Self {
        Scan {
            mode,
            channels: false,
            current,
            target,
            write,
            counts: Counts::default(),
            bad: BadRows::default(),
            bad_counts: Counts::default(),
            written: 0,
        }
    }

    /// Scan the channel fields too (the tenant has the channel table).
    pub(super) fn with_channels(mut self, present: bool) -> Self {
        self.channels = present;
        self
    }

    /// Check one page, and seal what it rewrites (while nothing has failed and this scan
    /// writes). Returns what to write.
    pub(super) fn process(&mut self, table: Table, page: Vec<Stored>) -> Result<Writes> {
        let mut w = Writes::default();
        for row in page {
            self.counts.add(table, row.version, 1);
            let opened = |k: &Key| match table {
                Table::ChannelFields => {
                    channels::sealed_payload(&row.value).and_then(|p| k.open(&p))
                }
                _ => k.open(&row.value),
            };
            let plaintext: Option<Zeroizing<Vec<u8>>> = match row.version {
                0 => None,
                1 => match self.current.and_then(opened) {
                    Some(p) => Some(p),
                    None => {
                        self.bad_counts.add(table, row.version, 1);
                        self.bad.push(bad_row(table, row));
                        continue;
                    }
                },
                _ => {
                    self.bad_counts.add(table, row.version, 1);
                    self.bad.push(bad_row(table, row));
                    continue;
                }
            };
            if !(self.write && self.bad.count == 0 && self.mode.rewrites(row.version)) {
                continue;
            }
            let target = self
                .target
                .ok_or_else(|| Error::failed("internal: no key to encrypt with"))?;
            let sealed = match &plaintext {
                Some(p) => target.seal(p)?,
                None => target.seal(&row.value)?,
            };
            if table == Table::ChannelFields {
                w.values.push(channels::sealed_value(&sealed));
                w.fields.push(row.key);
            } else {
                w.values.push(sealed);
            }
            w.ids.push(row.id);
        }
        if self.bad.count > 0 {
            // Nothing more is written once a row failed; the scan only counts and names.
            w = Writes::default();
        }
        Ok(w)
    }

    /// Scan every table in primary-key order, page by page; write each page's new values with
    /// one UPDATE when this scan writes.
    pub(super) async fn run(
        &mut self,
        conn: &mut PgConnection,
        pb: &indicatif::ProgressBar,
    ) -> Result<()> {
        for table in Table::ALL {
            if table == Table::ChannelFields && !self.channels {
                continue;
            }
            let mut after: Option<Uuid> = None;
            loop {
                let page = match table {
                    Table::ChannelFields => fetch_channel_page(conn, after).await?,
                    _ => fetch_page(conn, table, after).await?,
                };
                let Some(last) = page.last() else { break };
                after = Some(last.id);
                let n = page.len() as u64;
                let w = self.process(table, page)?;
                if !w.ids.is_empty() {
                    self.write_page(conn, table, &w).await?;
                }
                pb.inc(n);
            }
        }
        Ok(())
    }

    /// Write one page's new values and check that every row it names was touched.
    async fn write_page(
        &mut self,
        conn: &mut PgConnection,
        table: Table,
        w: &Writes,
    ) -> Result<()> {
        let (touched, want) = match table {
            Table::ChannelFields => {
                let mut rows = w.ids.clone();
                rows.dedup();
                (update_channel_page(conn, w).await?, rows.len())
            }
            _ => (
                update_page(conn, table, &w.ids, &w.values).await?,
                w.ids.len(),
            ),
        };
        db::ensure_rows(
            &format!("the re-encryption of a page of {}", table.name()),
            touched,
            want as i64,
        )?;
        self.written += w.ids.len() as i64;
        Ok(())
    }
}

fn bad_row(table: Table, row: Stored) -> BadRow {
    BadRow {
        table,
        id: row.id,
        workspace_id: row.workspace_id,
        key: row.key,
        encryption_version: row.version,
    }
}

/// One page: the next rows after `after` in primary-key order, at most [`PAGE_ROWS`] and at
/// most [`PAGE_BYTES`] of values (but at least one row). `ORDER BY id LIMIT` with a constant
/// limit is an index range scan whatever the statistics say (fresh after a bulk change or
/// not); the byte bound is a window over those rows, so no value past it leaves the server.
/// Unnamed statements: planned with the actual cursor each time, nothing left prepared on a
/// pooled server connection.
async fn fetch_page(
    conn: &mut PgConnection,
    table: Table,
    after: Option<Uuid>,
) -> Result<Vec<Stored>> {
    let cond = if after.is_some() { "id > $3" } else { "true" };
    let sql = format!(
        "SELECT id, ws, key, encrypted_value, encryption_version FROM (
             SELECT id, ws, key, encrypted_value, encryption_version,
                    row_number() OVER (ORDER BY id) AS rn,
                    sum(octet_length(encrypted_value)) OVER (ORDER BY id) AS bytes
               FROM (SELECT id, {ws} AS ws, key, encrypted_value, encryption_version
                       FROM {t} WHERE {cond} ORDER BY id LIMIT $1) s
         ) w
         WHERE rn = 1 OR bytes <= $2
         ORDER BY id",
        ws = table.workspace_col(),
        t = table.name(),
    );
    let mut q = db::query(&sql)
        // Always unnamed (even with --pooler session): planned with this page's bounds.
        .persistent(false)
        .bind(PAGE_ROWS)
        .bind(PAGE_BYTES);
    if let Some(a) = after {
        q = q.bind(a);
    }
    let rows = q.fetch_all(&mut *conn).await?;
    let mut page = Vec::with_capacity(rows.len());
    for r in rows {
        page.push(Stored {
            id: r.try_get(0)?,
            workspace_id: r.try_get(1)?,
            key: r.try_get(2)?,
            value: Zeroizing::new(r.try_get(3)?),
            version: r.try_get(4)?,
        });
    }
    Ok(page)
}

/// Write one page: one set-based UPDATE. The id range bounds the join to the page whatever
/// plan the statistics suggest. `updated_at` is left alone.
async fn update_page(
    conn: &mut PgConnection,
    table: Table,
    ids: &[Uuid],
    values: &[Vec<u8>],
) -> Result<u64> {
    let (Some(lo), Some(hi)) = (ids.first(), ids.last()) else {
        return Ok(0);
    };
    let sql = match table {
        Table::WorkspaceSecrets => UPDATE_WORKSPACE_SECRETS_SQL,
        Table::GlobalSecrets => UPDATE_GLOBAL_SECRETS_SQL,
        Table::ChannelFields => {
            return Err(Error::failed(
                "internal: channel fields are written by their own UPDATE",
            ))
        }
    };
    let done = db::query(sql)
        // Always unnamed (even with --pooler session): planned with this page's bounds.
        .persistent(false)
        .bind(ids)
        .bind(values)
        .bind(lo)
        .bind(hi)
        .execute(&mut *conn)
        .await?;
    Ok(done.rows_affected())
}

#[cfg(test)]
mod tests {
    use super::super::keys::tests::key;
    use super::*;

    fn stored(version: i32, value: Vec<u8>) -> Stored {
        Stored {
            id: Uuid::new_v4(),
            workspace_id: None,
            key: "K".into(),
            value: Zeroizing::new(value),
            version,
        }
    }

    #[test]
    fn rotation_reseals_under_the_target_and_stops_at_a_bad_row() {
        let (old, new, third) = (key(1), key(2), key(3));
        let v1 = old.seal(b"one").unwrap_or_default();
        let mut scan = Scan::new(Mode::Rotate, Some(&old), Some(&new), true);
        let page = vec![stored(1, v1.clone()), stored(0, b"zero".to_vec())];
        let Writes { ids, values, .. } = match scan.process(Table::GlobalSecrets, page) {
            Ok(x) => x,
            Err(e) => panic!("{e}"),
        };
        assert_eq!(ids.len(), 2);
        assert_eq!(
            new.open(&values[0]).as_deref().map(|v| v.as_slice()),
            Some(&b"one"[..])
        );
        assert_eq!(
            new.open(&values[1]).as_deref().map(|v| v.as_slice()),
            Some(&b"zero"[..])
        );
        assert!(old.open(&values[0]).is_none());
        assert_ne!(values[0][..12], v1[..12], "a fresh nonce");

        let foreign = third.seal(b"x").unwrap_or_default();
        let page = vec![
            stored(1, v1.clone()),
            stored(1, foreign),
            stored(7, vec![1]),
        ];
        let Writes { ids, .. } = match scan.process(Table::WorkspaceSecrets, page) {
            Ok(x) => x,
            Err(e) => panic!("{e}"),
        };
        assert!(ids.is_empty(), "nothing is written once a row fails");
        assert_eq!(scan.bad.count, 2);
        // And nothing after it either.
        let Writes { ids, .. } =
            match scan.process(Table::GlobalSecrets, vec![stored(0, b"z".to_vec())]) {
                Ok(x) => x,
                Err(e) => panic!("{e}"),
            };
        assert!(ids.is_empty());
    }

    #[test]
    fn plaintext_only_leaves_encrypted_rows_alone() {
        let cur = key(1);
        let v1 = cur.seal(b"one").unwrap_or_default();
        let mut scan = Scan::new(Mode::PlaintextOnly, Some(&cur), Some(&cur), true);
        let page = vec![stored(1, v1), stored(0, b"zero".to_vec())];
        let Writes { ids, values, .. } = match scan.process(Table::GlobalSecrets, page) {
            Ok(x) => x,
            Err(e) => panic!("{e}"),
        };
        assert_eq!(ids.len(), 1);
        assert_eq!(
            cur.open(&values[0]).as_deref().map(|v| v.as_slice()),
            Some(&b"zero"[..])
        );
    }

    #[test]
    fn channel_fields_are_resealed_as_ec1_strings_and_a_bad_one_stops_the_writes() {
        let (old, new) = (key(1), key(2));
        let sealed = channels::sealed_value(&old.seal(b"bot-123").unwrap_or_default());
        let mut scan = Scan::new(Mode::Rotate, Some(&old), Some(&new), true);
        let page = vec![
            Stored {
                key: "bot_token".into(),
                ..stored(1, sealed.clone())
            },
            Stored {
                key: "webhook_url".into(),
                ..stored(0, b"https://hooks.example/x".to_vec())
            },
        ];
        let w = match scan.process(Table::ChannelFields, page) {
            Ok(x) => x,
            Err(e) => panic!("{e}"),
        };
        assert_eq!(w.fields, vec!["bot_token", "webhook_url"]);
        let opened: Vec<Option<Vec<u8>>> = w
            .values
            .iter()
            .map(|v| {
                channels::sealed_payload(v)
                    .and_then(|p| new.open(&p))
                    .map(|p| p.to_vec())
            })
            .collect();
        assert_eq!(
            opened,
            vec![
                Some(b"bot-123".to_vec()),
                Some(b"https://hooks.example/x".to_vec())
            ]
        );
        assert_eq!(scan.counts.fields_of_version(1), 1);
        assert_eq!(scan.counts.fields_of_version(0), 1);

        // Plaintext-only leaves an encrypted field alone; an ec1: value that is not base64
        // under the key does not decrypt and nothing is written.
        let mut scan = Scan::new(Mode::PlaintextOnly, Some(&old), Some(&old), true);
        let page = vec![
            stored(1, sealed.clone()),
            stored(1, b"ec1:not-base64".to_vec()),
            stored(0, b"plain".to_vec()),
        ];
        let w = match scan.process(Table::ChannelFields, page) {
            Ok(x) => x,
            Err(e) => panic!("{e}"),
        };
        assert!(w.ids.is_empty() && w.values.is_empty() && w.fields.is_empty());
        assert_eq!(scan.bad.count, 1);
        assert!(
            scan.bad.named().starts_with("channel "),
            "{}",
            scan.bad.named()
        );
    }
}
