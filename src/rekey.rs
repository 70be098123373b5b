//! Key custody: `secret verify` and `secret rekey`.
//!
//! Everything the key protects is covered: the rows of both secret tables, and the encrypted
//! fields of `workspace_channels.channel_config` ([`crate::platform::channels`]). A channel
//! field counts like a row: `ec1:` is version 1, a string without the prefix is version 0
//! (legacy plaintext).
//!
//! `verify` reads every secret row and channel field in a read-only REPEATABLE READ transaction
//! and checks that each version-1 value decrypts with `SECRETS_ENCRYPTION_KEY`; it names the
//! ones that do not (table, id, workspace, key or field — never a value).
//!
//! `rekey` re-encrypts every value under a new key (or, with `--plaintext-only`, encrypts the
//! version-0 values with the current key), in ONE transaction under the tenant lock. The plan
//! is the count per table and version (one aggregate per table); the work is a keyset-paginated
//! scan by primary key, each page bounded in rows and bytes, written back with one set-based
//! `UPDATE … FROM unnest(…)` per page, so memory stays bounded on a tenant of any size. Any
//! version-1 value that does not decrypt with the current key stops the writes; the scan goes
//! on only to name every such value, and the transaction is rolled back (exit 3, nothing
//! written). A channel page's UPDATE merges only the rewritten fields into the object
//! (`channel_config || patch`): every other key stays as it is.
//!
//! Concurrency: the tenant advisory lock keeps other orgctl runs out; the secret tables and the
//! channel table are locked `SHARE ROW EXCLUSIVE` (readers go on, writers wait until the
//! commit), so the pages see tables nobody changes, and the counts the plan promised are what
//! the scan finds. A
//! `secret set` that waited for the lock meets [`ensure_key_matches_tenant`]: with the old key
//! it is refused, so nothing is written under the old key after the commit.
//!
//! Keys never come from argv: the current one from `SECRETS_ENCRYPTION_KEY`, the new one from
//! `SECRETS_ENCRYPTION_KEY_NEW` or the first line of `--new-key-file`; both are parsed by
//! [`crate::platform::crypto::SecretBox`] (the one owner of the key rules) and checked before any
//! connection is made. Plaintext is held in [`Zeroizing`] buffers.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use serde::Serialize;
use sha2::Digest;
use sqlx::postgres::PgConnection;
use sqlx::Row;
use uuid::Uuid;
use zeroize::Zeroizing;

use crate::cli::SecretRekeyArgs;
use crate::db;
use crate::error::{sanitize, Error, Exit, Result};
use crate::output::{truncated, Output};
use crate::platform::channels;
use crate::platform::keys::SecretBox;
use crate::Context;

/// Rows per page of the scan.
pub const PAGE_ROWS: i64 = 1000;
/// Bytes of `encrypted_value` per page (a page holds at least one row whatever its size).
pub const PAGE_BYTES: i64 = 4 << 20;
/// Rows that do not decrypt, named in the output; the rest are counted.
pub const NAMED_LIMIT: usize = 1000;
/// Rows a table lists before it summarises the rest (JSON lists up to [`NAMED_LIMIT`]).
const TABLE_ROWS: usize = 50;
/// Rows named in a one-line error.
const ERROR_ROWS: usize = 5;

pub const ENV_KEY: &str = "SECRETS_ENCRYPTION_KEY";
pub const ENV_NEW_KEY: &str = "SECRETS_ENCRYPTION_KEY_NEW";

// ---------------------------------------------------------------------------------------------
// Keys

/// A key that parsed as valid under the platform's rules ([`crate::platform::keys::parse_key`]).
pub struct Key(SecretBox);

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Key(<redacted>)")
    }
}

impl Key {
    /// Parse a key value exactly as the platform reads it (never trimmed). `what` names its
    /// source in the error. An empty value is missing, not a key.
    pub fn parse(raw: &str, what: &str) -> Result<Self> {
        if raw.is_empty() {
            return Err(Error::usage(format!("{what} is empty")));
        }
        // Not production: a bad key must be a usage error (exit 2) here, whatever MOLECULE_ENV.
        let sb = SecretBox::new(Some(raw), "");
        match sb.write_version() {
            Ok(1) => Ok(Key(sb)),
            Ok(_) => Err(Error::usage(format!("{what} is empty"))),
            Err(e) => Err(Error::usage(format!(
                "{what} is not a usable key: {}",
                e.message
                    .strip_prefix("SECRETS_ENCRYPTION_KEY is unusable: ")
                    .unwrap_or(&e.message)
            ))),
        }
    }

    /// Whether two keys are the same 32 bytes (whatever their encoding): a value sealed with
    /// one opens with the other. AES-GCM authentication makes a false "same" impossible in
    /// practice.
    pub fn same_as(&self, other: &Key) -> Result<bool> {
        let (probe, _) = self.0.seal(b"orgctl key probe")?;
        Ok(other.0.open(&probe, 1).is_some())
    }

    fn open(&self, stored: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
        self.0.open(stored, 1)
    }

    fn seal(&self, plaintext: &[u8]) -> Result<Vec<u8>> {
        let (sealed, version) = self.0.seal(plaintext)?;
        if version != 1 {
            return Err(Error::failed(
                "internal: a valid key sealed a plaintext value",
            ));
        }
        Ok(sealed)
    }
}

/// `SECRETS_ENCRYPTION_KEY`, required.
pub fn current_key_from_env(purpose: &str) -> Result<Key> {
    match std::env::var(ENV_KEY) {
        Ok(v) if !v.is_empty() => {
            let v = Zeroizing::new(v);
            Key::parse(&v, ENV_KEY)
        }
        Ok(_) | Err(std::env::VarError::NotPresent) => {
            Err(Error::usage(format!("{ENV_KEY} is not set: {purpose}")))
        }
        Err(std::env::VarError::NotUnicode(_)) => Err(Error::usage(format!(
            "{ENV_KEY} is not a usable key: it is not valid UTF-8"
        ))),
    }
}

/// The new key: `SECRETS_ENCRYPTION_KEY_NEW`, or the first line of `--new-key-file` (never
/// both: which one would win is not obvious, so neither does).
pub fn new_key(file: Option<&Path>) -> Result<Key> {
    let env = match std::env::var(ENV_NEW_KEY) {
        Ok(v) if !v.is_empty() => Some(Zeroizing::new(v)),
        Ok(_) | Err(std::env::VarError::NotPresent) => None,
        Err(std::env::VarError::NotUnicode(_)) => {
            return Err(Error::usage(format!(
                "{ENV_NEW_KEY} is not a usable key: it is not valid UTF-8"
            )))
        }
    };
    match (env, file) {
        (Some(_), Some(_)) => Err(Error::usage(format!(
            "both {ENV_NEW_KEY} and --new-key-file are given: unset one, so it is clear which key is the new one"
        ))),
        (Some(v), None) => Key::parse(&v, ENV_NEW_KEY),
        (None, Some(path)) => {
            let line = read_key_file(path)?;
            Key::parse(&line, &format!("the first line of {}", path.display()))
        }
        (None, None) => Err(Error::usage(format!(
            "no new key: set {ENV_NEW_KEY} or pass --new-key-file PATH (keys are never taken from the command line)"
        ))),
    }
}

/// The first line of a key file, without its line ending (`\n` or `\r\n`); nothing else is
/// trimmed: the platform reads its variable as it is.
pub fn read_key_file(path: &Path) -> Result<Zeroizing<String>> {
    let bytes = Zeroizing::new(std::fs::read(path).map_err(|e| {
        Error::usage(format!(
            "could not read --new-key-file {}: {e}",
            path.display()
        ))
    })?);
    let end = bytes
        .iter()
        .position(|&b| b == b'\n')
        .unwrap_or(bytes.len());
    let mut line = &bytes[..end];
    if end < bytes.len() {
        line = line.strip_suffix(b"\r").unwrap_or(line);
    }
    if line.is_empty() {
        return Err(Error::usage(format!(
            "--new-key-file {}: the first line is empty",
            path.display()
        )));
    }
    match std::str::from_utf8(line) {
        Ok(s) => Ok(Zeroizing::new(s.to_string())),
        Err(_) => Err(Error::usage(format!(
            "--new-key-file {}: the first line is not valid UTF-8",
            path.display()
        ))),
    }
}

/// Group- or world-readable key files are worth a warning (not a refusal: the operator may
/// have reasons, such as a tmpfs only they can reach).
fn warn_if_readable_by_others(out: &Output, path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = std::fs::metadata(path) {
        if meta.permissions().mode() & 0o077 != 0 {
            out.warn(&format!(
                "{} is readable by other users (mode {:o}); keep key files at 0600",
                path.display(),
                meta.permissions().mode() & 0o777
            ));
        }
    }
}

/// Refuse (exit 3) to write a version-1 secret with a key that decrypts none of the tenant's
/// existing encrypted values (a sample of up to three version-1 rows per secret table, leaving
/// out the row the write replaces, and up to three `ec1:` channel fields): the tenant's key was
/// rotated, or this is the wrong key, and the platform could not read the value. A tenant
/// without other encrypted values passes. Call it after taking the tenant lock, so a `secret
/// set` that waited for a `rekey` sees the re-encrypted values.
pub async fn ensure_key_matches_tenant(
    conn: &mut PgConnection,
    sb: &SecretBox,
    workspace_id: Option<Uuid>,
    key: &str,
) -> Result<()> {
    let sample: Vec<Vec<u8>> = db::query_scalar(
        "(SELECT encrypted_value FROM workspace_secrets
           WHERE encryption_version = 1
             AND NOT ($1::uuid IS NOT NULL AND workspace_id IS NOT DISTINCT FROM $1 AND key = $2)
           LIMIT 3)
         UNION ALL
         (SELECT encrypted_value FROM global_secrets
           WHERE encryption_version = 1 AND NOT ($1::uuid IS NULL AND key = $2)
           LIMIT 3)",
    )
    .bind(workspace_id)
    .bind(key)
    .fetch_all(&mut *conn)
    .await?;
    if sample.iter().any(|v| sb.open(v, 1).is_some()) {
        return Ok(());
    }
    let fields: Vec<String> = if channel_table(conn).await? == ChannelTable::Present {
        let sql = format!(
            "SELECT c.{col} ->> f FROM {t} c CROSS JOIN unnest($1::text[]) AS f
              WHERE jsonb_typeof(c.{col} -> f) = 'string' AND left(c.{col} ->> f, $2) = $3
              LIMIT 3",
            t = channels::TABLE,
            col = channels::COLUMN,
        );
        db::query_scalar(&sql)
            .bind(channels::SECRET_FIELDS.to_vec())
            .bind(channels::SEALED_PREFIX.len() as i32)
            .bind(channels::SEALED_PREFIX)
            .fetch_all(&mut *conn)
            .await?
    } else {
        Vec::new()
    };
    let sampled = sample.len() + fields.len();
    if sampled == 0
        || fields.iter().any(|f| {
            channels::sealed_payload(f.as_bytes()).is_some_and(|p| sb.open(&p, 1).is_some())
        })
    {
        return Ok(());
    }
    Err(Error::refused(format!(
        "{ENV_KEY} decrypts none of the tenant's existing encrypted secrets or channel fields ({sampled} sampled): the tenant's key was rotated or this is the wrong key, and the platform could not read a value written with it; nothing was changed (check the key with `orgctl secret verify`)",
    )))
}

// ---------------------------------------------------------------------------------------------
// Tables, counts, findings

/// Where the key protects values. The channel "table" is the encrypted fields of
/// `workspace_channels.channel_config`: its counts are fields (a channel row holds up to five),
/// its ids are channel ids and its keys are field names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub enum Table {
    #[serde(rename = "workspace_secrets")]
    WorkspaceSecrets,
    #[serde(rename = "global_secrets")]
    GlobalSecrets,
    #[serde(rename = "workspace_channels.channel_config")]
    ChannelFields,
}

impl Table {
    pub const ALL: [Table; 3] = [
        Table::WorkspaceSecrets,
        Table::GlobalSecrets,
        Table::ChannelFields,
    ];
    /// The two secret tables (rows of `encrypted_value` and `encryption_version`).
    pub const SECRETS: [Table; 2] = [Table::WorkspaceSecrets, Table::GlobalSecrets];

    pub fn name(self) -> &'static str {
        match self {
            Table::WorkspaceSecrets => "workspace_secrets",
            Table::GlobalSecrets => "global_secrets",
            Table::ChannelFields => "workspace_channels.channel_config",
        }
    }

    fn workspace_col(self) -> &'static str {
        match self {
            Table::WorkspaceSecrets | Table::ChannelFields => "workspace_id",
            Table::GlobalSecrets => "NULL::uuid",
        }
    }
}

/// What a run does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Check only (`verify`, and the scan of a dry run).
    Verify,
    /// Re-encrypt every row under the new key.
    Rotate,
    /// Encrypt the version-0 rows with the current key.
    PlaintextOnly,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Verify => "verify",
            Mode::Rotate => "rotate",
            Mode::PlaintextOnly => "plaintext-only",
        }
    }

    /// Whether a row of this version is re-encrypted.
    fn rewrites(self, version: i32) -> bool {
        match self {
            Mode::Verify => false,
            Mode::Rotate => version == 0 || version == 1,
            Mode::PlaintextOnly => version == 0,
        }
    }
}

/// Rows per table and `encryption_version`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counts(pub BTreeMap<(Table, i32), i64>);

impl Counts {
    fn add(&mut self, table: Table, version: i32, n: i64) {
        *self.0.entry((table, version)).or_insert(0) += n;
    }

    /// Every (table, version) to show: versions 0 and 1 of both tables always, plus any other
    /// version found.
    pub fn rows(&self) -> Vec<(Table, i32, i64)> {
        let mut m = self.0.clone();
        for t in Table::ALL {
            for v in [0, 1] {
                m.entry((t, v)).or_insert(0);
            }
        }
        m.into_iter().map(|((t, v), n)| (t, v, n)).collect()
    }

    pub fn total(&self) -> i64 {
        self.0.values().sum()
    }

    pub fn of_version(&self, version: i32) -> i64 {
        self.0
            .iter()
            .filter(|((_, v), _)| *v == version)
            .map(|(_, n)| n)
            .sum()
    }

    /// Secret rows (both secret tables) of one version.
    pub fn rows_of_version(&self, version: i32) -> i64 {
        Table::SECRETS
            .iter()
            .map(|t| self.0.get(&(*t, version)).copied().unwrap_or(0))
            .sum()
    }

    /// Channel fields of one version (1: `ec1:`, 0: legacy plaintext).
    pub fn fields_of_version(&self, version: i32) -> i64 {
        self.0
            .get(&(Table::ChannelFields, version))
            .copied()
            .unwrap_or(0)
    }

    /// Rows and fields the mode rewrites.
    pub fn rewritten(&self, mode: Mode) -> i64 {
        self.0
            .iter()
            .filter(|((_, v), _)| mode.rewrites(*v))
            .map(|(_, n)| n)
            .sum()
    }

    /// Channel fields the mode rewrites.
    pub fn fields_rewritten(&self, mode: Mode) -> i64 {
        self.0
            .iter()
            .filter(|((t, v), _)| *t == Table::ChannelFields && mode.rewrites(*v))
            .map(|(_, n)| n)
            .sum()
    }

    /// Rows with a version orgctl cannot read (neither 0 nor 1).
    pub fn unknown_versions(&self) -> i64 {
        self.0
            .iter()
            .filter(|((_, v), _)| *v != 0 && *v != 1)
            .map(|(_, n)| n)
            .sum()
    }
}

/// A row that does not decrypt (or has a version orgctl cannot read). Never a value.
#[derive(Clone, Debug, Serialize)]
pub struct BadRow {
    pub table: Table,
    pub id: Uuid,
    pub workspace_id: Option<Uuid>,
    pub key: String,
    pub encryption_version: i32,
}

impl BadRow {
    fn describe(&self) -> String {
        let place = match self.workspace_id {
            Some(w) => format!("workspace {w}"),
            None => "global".to_string(),
        };
        if self.table == Table::ChannelFields {
            return format!(
                "channel {} ({place}, field {} of channel_config)",
                self.id,
                sanitize(&self.key),
            );
        }
        format!(
            "{} {} ({place}, key {}, version {})",
            self.table.name(),
            self.id,
            sanitize(&self.key),
            self.encryption_version
        )
    }
}

/// Rows that do not decrypt: how many, and the first [`NAMED_LIMIT`] of them.
#[derive(Clone, Debug, Default, Serialize)]
pub struct BadRows {
    pub count: i64,
    pub rows: Vec<BadRow>,
}

impl BadRows {
    fn push(&mut self, row: BadRow) {
        self.count += 1;
        if self.rows.len() < NAMED_LIMIT {
            self.rows.push(row);
        }
    }

    /// "t id (…), t id (…) and N more" for a one-line error.
    fn named(&self) -> String {
        let (shown, _) = truncated(&self.rows, ERROR_ROWS);
        let mut s = shown
            .iter()
            .map(BadRow::describe)
            .collect::<Vec<_>>()
            .join(", ");
        let rest = self.count - shown.len() as i64;
        if rest > 0 {
            let _ = write!(s, " and {rest} more");
        }
        s
    }
}

/// One row of a page (for the channel fields: one field of a channel row, `key` its name and
/// `value` the JSON string's bytes). The value is zeroed when dropped (a version-0 value is
/// plaintext).
struct Stored {
    id: Uuid,
    workspace_id: Option<Uuid>,
    key: String,
    value: Zeroizing<Vec<u8>>,
    version: i32,
}

// ---------------------------------------------------------------------------------------------
// The scan

/// What one page writes back: ids and new values, and for the channel fields the field names
/// (one entry per field, in page order).
#[derive(Default)]
struct Writes {
    ids: Vec<Uuid>,
    fields: Vec<String>,
    values: Vec<Vec<u8>>,
}

/// The state of one scan over both secret tables and, when the tenant has them, the channel
/// fields.
pub struct Scan<'a> {
    mode: Mode,
    /// Whether the tenant has the channel table ([`channel_table`]).
    channels: bool,
    current: Option<&'a Key>,
    /// The key rows are sealed with (new for a rotation, current for --plaintext-only).
    target: Option<&'a Key>,
    write: bool,
    pub counts: Counts,
    pub bad: BadRows,
    /// Rows that do not decrypt, per table and version (all of them, named or not).
    pub bad_counts: Counts,
    pub written: i64,
}

impl<'a> Scan<'a> {
    pub fn new(mode: Mode, current: Option<&'a Key>, target: Option<&'a Key>, write: bool) -> Self {
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
    pub fn with_channels(mut self, present: bool) -> Self {
        self.channels = present;
        self
    }

    /// Check one page, and seal what it rewrites (while nothing has failed and this scan
    /// writes). Returns what to write.
    fn process(&mut self, table: Table, page: Vec<Stored>) -> Result<Writes> {
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
    pub async fn run(
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
                    let (touched, want) = match table {
                        Table::ChannelFields => {
                            let mut rows = w.ids.clone();
                            rows.dedup();
                            (update_channel_page(conn, &w).await?, rows.len())
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
                }
                pb.inc(n);
            }
        }
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
    let sql = format!(
        "UPDATE {t} AS t SET encrypted_value = u.v, encryption_version = 1
           FROM unnest($1::uuid[], $2::bytea[]) AS u(id, v)
          WHERE t.id = u.id AND t.id >= $3 AND t.id <= $4",
        t = table.name()
    );
    let done = db::query(&sql)
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

/// The channel fields of the page: the next channel rows after `after` in primary-key order
/// that hold at least one encrypted field as a non-empty string (the platform's rule), at most
/// [`PAGE_ROWS`] rows and [`PAGE_BYTES`] of field values (but at least one row); one result row
/// per field, in (id, field) order. Only the five fields leave the server, never the rest of
/// the object.
async fn fetch_channel_page(conn: &mut PgConnection, after: Option<Uuid>) -> Result<Vec<Stored>> {
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
async fn update_channel_page(conn: &mut PgConnection, w: &Writes) -> Result<u64> {
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

/// Rows per table and version, and the channel fields per version when the tenant has the
/// channel table in the shape the platform gives it: one aggregate per table, no values read.
pub async fn count_rows(conn: &mut PgConnection) -> Result<Counts> {
    let mut counts = Counts::default();
    for table in Table::SECRETS {
        let sql = format!(
            "SELECT encryption_version, count(*) FROM {} GROUP BY 1",
            table.name()
        );
        for r in db::query(&sql).fetch_all(&mut *conn).await? {
            counts.add(table, r.try_get(0)?, r.try_get(1)?);
        }
    }
    if channel_table(conn).await? == ChannelTable::Present {
        count_channel_fields(conn, &mut counts).await?;
    }
    Ok(counts)
}

/// The channel fields per version (1: `ec1:`, 0: plaintext), added to `counts`: one aggregate.
async fn count_channel_fields(conn: &mut PgConnection, counts: &mut Counts) -> Result<()> {
    {
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
    }
    Ok(())
}

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
    let r = db::query(
        "SELECT to_regclass($1) IS NOT NULL,
                (SELECT count(*) FROM pg_attribute a
                  WHERE a.attrelid = to_regclass($1) AND NOT a.attisdropped
                    AND ((a.attname IN ('id', 'workspace_id') AND a.atttypid = 'uuid'::regtype)
                      OR (a.attname = $2 AND a.atttypid = 'jsonb'::regtype)))",
    )
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
async fn ensure_scannable(conn: &mut PgConnection) -> Result<bool> {
    let rows = db::query(
        "SELECT t.name, a.atttypid = 'uuid'::regtype
           FROM unnest($1::text[]) AS t(name)
           LEFT JOIN pg_attribute a
             ON a.attrelid = to_regclass(t.name) AND a.attname = 'id' AND NOT a.attisdropped",
    )
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

// ---------------------------------------------------------------------------------------------
// verify

#[derive(Serialize)]
struct VerifyJson<'a> {
    ok: bool,
    /// Encrypted values checked against the key (secret rows and channel fields of version 1):
    /// 0 proves nothing about the key.
    verified: i64,
    tables: Vec<VerifyCount>,
    plaintext_rows: i64,
    plaintext_channel_fields: i64,
    undecryptable: &'a BadRows,
}

#[derive(Serialize)]
struct VerifyCount {
    table: Table,
    encryption_version: i32,
    rows: i64,
    undecryptable: i64,
}

pub async fn verify(ctx: &Context, args: &crate::cli::SecretVerifyArgs) -> Result<Exit> {
    let key = current_key_from_env(
        "verify checks the tenant's secrets against it; set it to the key the platform runs with",
    )?;
    let url = ctx.url()?;
    let out = &ctx.out;
    let mut conn = db::connect(&url, &ctx.settings).await?;
    db::ensure_compatible(&mut conn).await?;
    let channels = ensure_scannable(&mut conn).await?;

    let mut tx = db::begin_read_only(&mut conn, &ctx.settings).await?;
    let total = count_rows(&mut tx).await?.total();
    let pb = out.progress(u64::try_from(total).unwrap_or(0), "verifying");
    let mut scan = Scan::new(Mode::Verify, Some(&key), None, false).with_channels(channels);
    scan.run(&mut tx, &pb).await?;
    pb.finish_and_clear();
    tx.rollback().await?;

    let plaintext = scan.counts.rows_of_version(0);
    let plaintext_fields = scan.counts.fields_of_version(0);
    // Encrypted values checked: with none, every value "decrypts" and the key is unproven.
    let verified = scan.counts.rows_of_version(1) + scan.counts.fields_of_version(1);
    let empty = verified == 0;
    let ok = scan.bad.count == 0 && (!empty || args.allow_empty);
    if out.json_mode() {
        out.json(&VerifyJson {
            ok,
            verified,
            tables: scan
                .counts
                .rows()
                .into_iter()
                .map(|(t, v, n)| VerifyCount {
                    table: t,
                    encryption_version: v,
                    rows: n,
                    undecryptable: if v == 0 { 0 } else { scan.bad_in(t, v) },
                })
                .collect(),
            plaintext_rows: plaintext,
            plaintext_channel_fields: plaintext_fields,
            undecryptable: &scan.bad,
        })?;
    } else {
        let mut s = String::new();
        let mut t = out.new_table(["table", "version", "rows", "do not decrypt"]);
        for (table, v, n) in scan.counts.rows() {
            t.add_row(vec![
                table.name().to_string(),
                v.to_string(),
                n.to_string(),
                if v == 0 {
                    "-".to_string()
                } else {
                    scan.bad_in(table, v).to_string()
                },
            ]);
        }
        let _ = writeln!(s, "{t}");
        channel_note(&mut s, &scan.counts);
        render_bad(
            out,
            &mut s,
            &scan.bad,
            "Values that do not decrypt with SECRETS_ENCRYPTION_KEY",
        );
        if empty {
            let _ = writeln!(
                s,
                "\nNothing was verified: the tenant has no encrypted value (0 secret rows, 0 channel fields) to check SECRETS_ENCRYPTION_KEY against."
            );
        } else if ok {
            let _ = writeln!(
                s,
                "\nEvery encrypted value ({} secret row(s), {} channel field(s)) decrypts with SECRETS_ENCRYPTION_KEY.",
                scan.counts.rows_of_version(1),
                scan.counts.fields_of_version(1)
            );
        }
        out.stdout(&s)?;
    }
    if plaintext > 0 {
        out.warn(&format!(
            "{plaintext} secret row(s) are stored in plaintext (encryption_version 0); encrypt them with `orgctl secret rekey --plaintext-only`"
        ));
    }
    if plaintext_fields > 0 {
        out.warn(&format!(
            "{plaintext_fields} channel field(s) of {} are stored in plaintext (no {} prefix); encrypt them with `orgctl secret rekey --plaintext-only`",
            Table::ChannelFields.name(),
            channels::SEALED_PREFIX
        ));
    }
    if ok {
        Ok(Exit::Ok)
    } else if scan.bad.count == 0 {
        Err(Error::failed(
            "nothing was verified: the tenant has no encrypted secret or channel field, so SECRETS_ENCRYPTION_KEY was not checked against anything; pass --allow-empty to accept that (a tenant whose secrets are all plaintext: encrypt them with `orgctl secret rekey --plaintext-only`)",
        ))
    } else {
        out.info(&format!(
            "verify: {} value(s) do not decrypt with SECRETS_ENCRYPTION_KEY: {}",
            scan.bad.count,
            scan.bad.named()
        ));
        Ok(Exit::Failed)
    }
}

impl Scan<'_> {
    /// Rows of one table and version that do not decrypt.
    fn bad_in(&self, table: Table, version: i32) -> i64 {
        self.bad_counts
            .0
            .get(&(table, version))
            .copied()
            .unwrap_or(0)
    }
}

/// Under a table of counts that has channel fields: what their counts mean.
fn channel_note(s: &mut String, counts: &Counts) {
    if counts.fields_of_version(0) + counts.fields_of_version(1) == 0 {
        return;
    }
    let _ = writeln!(
        s,
        "({} counts fields ({}): version 1 is {}…, version 0 legacy plaintext.)",
        Table::ChannelFields.name(),
        channels::SECRET_FIELDS.join(", "),
        channels::SEALED_PREFIX
    );
}

fn render_bad(out: &Output, s: &mut String, bad: &BadRows, title: &str) {
    if bad.count == 0 {
        return;
    }
    let _ = writeln!(s, "\n{title} ({}):", bad.count);
    let mut t = out.new_table(["table", "id", "workspace", "key / field", "version"]);
    let (shown, _) = truncated(&bad.rows, TABLE_ROWS);
    for b in shown {
        t.add_row(vec![
            b.table.name().to_string(),
            b.id.to_string(),
            b.workspace_id
                .map(|w| w.to_string())
                .unwrap_or_else(|| "(global)".into()),
            sanitize(&b.key),
            b.encryption_version.to_string(),
        ]);
    }
    let _ = writeln!(s, "{t}");
    let rest = bad.count - shown.len() as i64;
    if rest > 0 {
        let _ = writeln!(
            s,
            "… and {rest} more (--output json names up to {NAMED_LIMIT})"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// rekey

/// What a rekey will do: the mode and the rows per table and version.
#[derive(Clone, Debug)]
pub struct Plan {
    pub mode: Mode,
    pub counts: Counts,
}

impl Plan {
    pub fn rewritten(&self) -> i64 {
        self.counts.rewritten(self.mode)
    }

    pub fn changed(&self) -> bool {
        self.rewritten() > 0
    }

    /// A fingerprint of the plan: the mode and every (table, version, rows). Never a key.
    pub fn hash(&self) -> String {
        let mut h = sha2::Sha256::new();
        h.update(format!(
            "orgctl-rekey-plan v2\nmode {}\n",
            self.mode.as_str()
        ));
        for (t, v, n) in self.counts.rows() {
            h.update(format!("{} v{v} rows={n}\n", t.name()));
        }
        format!("sha256:{:x}", h.finalize())
    }

    /// The refusal that needs no decryption: rows of a version orgctl cannot read.
    fn refusal(&self) -> Option<Error> {
        let n = self.counts.unknown_versions();
        (n > 0).then(|| {
            Error::refused(format!(
                "{n} secret row(s) have an encryption_version other than 0 or 1, which orgctl cannot re-encrypt; nothing was changed (they are named with --dry-run)"
            ))
        })
    }

    pub fn summary(&self) -> String {
        let n = self.rewritten();
        if n == 0 {
            return match self.mode {
                Mode::PlaintextOnly => {
                    "Nothing to do: no secret row or channel field is stored in plaintext."
                        .to_string()
                }
                _ => "Nothing to do: the tenant has no secret rows or encrypted channel fields."
                    .to_string(),
            };
        }
        let c = &self.counts;
        match self.mode {
            Mode::PlaintextOnly => format!(
                "Plan: encrypt {} plaintext row(s) and {} plaintext channel field(s) with the current key (rows as version 1, fields as {}…); encrypted values are left alone.",
                c.rows_of_version(0),
                c.fields_of_version(0),
                channels::SEALED_PREFIX
            ),
            _ => format!(
                "Plan: re-encrypt {} row(s) ({} version 1, {} version 0) and {} channel field(s) ({} encrypted, {} plaintext) under the new key; every one is left encrypted.",
                c.rows_of_version(1) + c.rows_of_version(0),
                c.rows_of_version(1),
                c.rows_of_version(0),
                c.fields_of_version(1) + c.fields_of_version(0),
                c.fields_of_version(1),
                c.fields_of_version(0)
            ),
        }
    }
}

#[derive(Serialize)]
struct RekeyJson<'a> {
    dry_run: bool,
    changed: bool,
    mode: &'static str,
    tables: Vec<RekeyCount>,
    reencrypt_total: i64,
    undecryptable: &'a BadRows,
    plan_hash: String,
}

#[derive(Serialize)]
struct RekeyCount {
    table: Table,
    encryption_version: i32,
    rows: i64,
    reencrypt: i64,
}

fn render_rekey(
    out: &Output,
    plan: &Plan,
    bad: &BadRows,
    dry_run: bool,
    applied: bool,
) -> Result<()> {
    let changed = (dry_run || applied) && plan.changed() && bad.count == 0;
    if out.json_mode() {
        return out.json(&RekeyJson {
            dry_run,
            changed,
            mode: plan.mode.as_str(),
            tables: plan
                .counts
                .rows()
                .into_iter()
                .map(|(t, v, n)| RekeyCount {
                    table: t,
                    encryption_version: v,
                    rows: n,
                    reencrypt: if plan.mode.rewrites(v) { n } else { 0 },
                })
                .collect(),
            reencrypt_total: plan.rewritten(),
            undecryptable: bad,
            plan_hash: plan.hash(),
        });
    }
    out.stdout(&rekey_text(out, plan, bad, dry_run, applied))
}

fn rekey_text(out: &Output, plan: &Plan, bad: &BadRows, dry_run: bool, applied: bool) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{}:",
        match plan.mode {
            Mode::PlaintextOnly => "Encrypt plaintext secrets with the current key",
            _ => "Re-encrypt secrets under the new key",
        }
    );
    let mut t = out.new_table(["table", "version", "rows", "re-encrypt"]);
    for (table, v, n) in plan.counts.rows() {
        t.add_row(vec![
            table.name().to_string(),
            v.to_string(),
            n.to_string(),
            if plan.mode.rewrites(v) { n } else { 0 }.to_string(),
        ]);
    }
    let _ = writeln!(s, "{t}");
    channel_note(&mut s, &plan.counts);
    render_bad(
        out,
        &mut s,
        bad,
        "Values that do not decrypt with SECRETS_ENCRYPTION_KEY (nothing is written while any remain)",
    );
    let _ = writeln!(s, "\n{}", plan.summary());
    if plan.changed() && bad.count == 0 {
        if dry_run {
            let _ = writeln!(s, "{}", crate::output::DRY_RUN_LINE);
        } else if applied {
            let _ = writeln!(s, "Applied.");
        }
    }
    let _ = writeln!(s, "plan_hash: {}", plan.hash());
    s
}

fn undecryptable_error(bad: &BadRows, mode: Mode) -> Error {
    let why = match mode {
        Mode::PlaintextOnly => "it is not the key the tenant's encrypted values use, so the platform could not read values encrypted with it",
        _ => "re-encrypting would need them",
    };
    Error::refused(format!(
        "{} encrypted secret row(s) or channel field(s) do not decrypt with SECRETS_ENCRYPTION_KEY ({why}): {}; nothing was changed",
        bad.count,
        bad.named()
    ))
}

pub async fn rekey(ctx: &Context, args: &SecretRekeyArgs) -> Result<Exit> {
    let out = &ctx.out;
    // Every key check before any connection (bad key input: exit 2).
    let (mode, current, new) = if args.plaintext_only {
        if args.new_key_file.is_some()
            || std::env::var_os(ENV_NEW_KEY).is_some_and(|v| !v.is_empty())
        {
            return Err(Error::usage(format!(
                "--plaintext-only encrypts with the current key ({ENV_KEY}); unset {ENV_NEW_KEY} / drop --new-key-file, or rotate without --plaintext-only"
            )));
        }
        let current = current_key_from_env(
            "--plaintext-only encrypts the plaintext rows with it; set it to the key the platform runs with",
        )?;
        (Mode::PlaintextOnly, current, None)
    } else {
        let current = current_key_from_env(
            "rekey decrypts the tenant's secrets with it (to encrypt a tenant that never had a key, set it and use --plaintext-only)",
        )?;
        if let Some(p) = &args.new_key_file {
            warn_if_readable_by_others(out, p);
        }
        let new = new_key(args.new_key_file.as_deref())?;
        if current.same_as(&new)? {
            return Err(Error::usage(format!(
                "the new key is the same key as {ENV_KEY}: nothing would change; give the new key"
            )));
        }
        (Mode::Rotate, current, Some(new))
    };
    if let Some(h) = &args.expect_plan {
        if !h.starts_with("sha256:") || h.len() != 7 + 64 {
            return Err(Error::usage(format!(
                "--expect-plan '{h}' is not a plan hash (sha256:<64 hex digits>, from a dry run)"
            )));
        }
    }
    let target = match mode {
        Mode::Rotate => new.as_ref(),
        _ => Some(&current),
    };
    let url = ctx.url()?;
    let mut conn = db::connect(&url, &ctx.settings).await?;
    db::ensure_compatible(&mut conn).await?;
    let channels = ensure_scannable(&mut conn).await?;

    // 1. Plan read-only: counts per table and version.
    if args.dry_run {
        // One snapshot: the counts and the scan that checks every encrypted row decrypts.
        let mut tx = db::begin_read_only(&mut conn, &ctx.settings).await?;
        let plan = Plan {
            mode,
            counts: count_rows(&mut tx).await?,
        };
        let pb = out.progress(u64::try_from(plan.counts.total()).unwrap_or(0), "checking");
        let mut scan = Scan::new(mode, Some(&current), target, false).with_channels(channels);
        scan.run(&mut tx, &pb).await?;
        pb.finish_and_clear();
        tx.rollback().await?;
        render_rekey(out, &plan, &scan.bad, true, false)?;
        if scan.bad.count > 0 {
            return Err(undecryptable_error(&scan.bad, mode));
        }
        if let Some(h) = &args.expect_plan {
            if *h != plan.hash() {
                return Err(Error::refused(format!(
                    "the plan differs from the expected one ({h}); it is now {}",
                    plan.hash()
                )));
            }
        }
        return Ok(Exit::Ok);
    }

    let reviewed = {
        let mut tx = db::begin_read_only(&mut conn, &ctx.settings).await?;
        let counts = count_rows(&mut tx).await?;
        tx.rollback().await?;
        Plan { mode, counts }
    };
    let none = BadRows::default();
    if let Some(h) = &args.expect_plan {
        if *h != reviewed.hash() {
            render_rekey(out, &reviewed, &none, false, false)?;
            return Err(Error::refused(format!(
                "the plan differs from the reviewed one ({h} expected, {} now); nothing was changed: review the plan above and rerun",
                reviewed.hash()
            )));
        }
    }
    if let Some(e) = reviewed.refusal() {
        return Err(e);
    }
    if !reviewed.changed() {
        render_rekey(out, &reviewed, &none, false, false)?;
        return Ok(Exit::Ok);
    }

    // 2. Show and confirm; no locks held while a human reads.
    let asked = !ctx.yes;
    if asked && out.interactive() {
        crate::output::stderr(&crate::output::review_text(&rekey_text(
            out, &reviewed, &none, true, false,
        )));
    }
    out.confirm(
        &format!(
            "{} {} secret row(s) and channel field(s) on {}?",
            match mode {
                Mode::PlaintextOnly => "Encrypt",
                _ => "Re-encrypt",
            },
            reviewed.rewritten(),
            url.target()
        ),
        ctx.yes,
    )?;

    // 3. Apply: one transaction, tenant lock, writers of the secret tables held off.
    let mut tx = db::begin_change(&mut conn, &url, &ctx.settings).await?;
    let lock = if channels {
        format!(
            "LOCK TABLE workspace_secrets, global_secrets, {} IN SHARE ROW EXCLUSIVE MODE",
            channels::TABLE
        )
    } else {
        "LOCK TABLE workspace_secrets, global_secrets IN SHARE ROW EXCLUSIVE MODE".to_string()
    };
    db::query(&lock).execute(&mut *tx).await?;
    let plan = Plan {
        mode,
        counts: count_rows(&mut tx).await?,
    };
    let strict = args.expect_plan.is_some() || asked;
    if strict && plan.hash() != reviewed.hash() {
        tx.rollback().await?;
        render_rekey(out, &plan, &none, false, false)?;
        return Err(Error::refused(format!(
            "the secrets changed after the plan was reviewed ({} reviewed, {} now); nothing was changed: review the new plan and rerun",
            reviewed.hash(),
            plan.hash()
        )));
    }
    if let Some(e) = plan.refusal() {
        return Err(e);
    }
    if !plan.changed() {
        tx.rollback().await?;
        render_rekey(out, &plan, &none, false, false)?;
        return Ok(Exit::Ok);
    }
    let pb = out.progress(
        u64::try_from(plan.counts.total()).unwrap_or(0),
        match mode {
            Mode::PlaintextOnly => "encrypting",
            _ => "re-encrypting",
        },
    );
    let mut scan = Scan::new(mode, Some(&current), target, true).with_channels(channels);
    let scanned = scan.run(&mut tx, &pb).await;
    pb.finish_and_clear();
    scanned?;
    if scan.bad.count > 0 {
        tx.rollback().await?;
        render_rekey(out, &plan, &scan.bad, false, false)?;
        return Err(undecryptable_error(&scan.bad, mode));
    }
    // What the scan found and wrote is exactly what the plan counted (the tables are locked
    // against writers, so any difference is a bug: roll back).
    if scan.counts != plan.counts {
        return Err(Error::failed(
            "apply diverged from the plan: the scan found other rows than the count; rolled back, nothing changed; rerun",
        ));
    }
    db::ensure_rows("the re-encryption", scan.written as u64, plan.rewritten())?;
    // Verify before commit: no row (or channel field) is left in a version the mode rewrites.
    let left: i64 = db::query_scalar(
        "SELECT (SELECT count(*) FROM workspace_secrets WHERE encryption_version = ANY($1))
              + (SELECT count(*) FROM global_secrets WHERE encryption_version = ANY($1))",
    )
    .bind(vec![0i32])
    .fetch_one(&mut *tx)
    .await?;
    let left_fields = if channels {
        let mut c = Counts::default();
        count_channel_fields(&mut tx, &mut c).await?;
        c.fields_of_version(0)
    } else {
        0
    };
    if left != 0 || left_fields != 0 {
        return Err(Error::failed(format!(
            "verification failed before commit: {left} plaintext row(s) and {left_fields} plaintext channel field(s) remain; rolled back, nothing changed; rerun"
        )));
    }
    let txid =
        crate::audit::record(&mut tx, "secret rekey", &audit_args(&plan, args), "applied").await?;
    let committed =
        db::commit_guarded(tx, &url, &ctx.settings, &crate::audit::AuditRow(txid)).await?;
    if let Some(note) = committed.note() {
        out.info(note);
    }
    render_rekey(out, &plan, &none, false, true)?;
    if mode == Mode::Rotate {
        out.info(
            "Next: set the platform's SECRETS_ENCRYPTION_KEY to the new key and restart the platform process now (until then what it writes itself, such as its CODEX_AUTH_JSON refresh, is under the old key), then run `orgctl secret verify` with the new key: it names any row or channel field written under the old one.",
        );
    }
    Ok(Exit::Ok)
}

/// The audit arguments: the mode, the counts and the plan hash — never a key or a value.
fn audit_args(plan: &Plan, args: &SecretRekeyArgs) -> serde_json::Value {
    let counts: Vec<serde_json::Value> = plan
        .counts
        .rows()
        .into_iter()
        .map(|(t, v, n)| {
            serde_json::json!({
                "table": t.name(),
                "encryption_version": v,
                "rows": n,
                "reencrypted": if plan.mode.rewrites(v) { n } else { 0 },
            })
        })
        .collect();
    serde_json::json!({
        "mode": plan.mode.as_str(),
        "new_key_source": match plan.mode {
            Mode::PlaintextOnly => "none",
            _ if args.new_key_file.is_some() => "file",
            _ => "env",
        },
        "reencrypted": plan.rewritten(),
        "counts": counts,
        "expect_plan": args.expect_plan.is_some(),
        "plan_hash": plan.hash(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;

    fn key(b: u8) -> Key {
        let s = base64::engine::general_purpose::STANDARD.encode([b; 32]);
        match Key::parse(&s, "k") {
            Ok(k) => k,
            Err(e) => panic!("{e}"),
        }
    }

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
    fn key_rules() {
        assert!(Key::parse("", "k").is_err());
        // 32 hex characters decode as base64 to 24 bytes: invalid under the platform's rules, never a raw
        // key. Whatever the shared parser (platform::keys) says, rekey follows it, never its own
        // rule: exit 2 exactly when SecretBox calls the key unusable.
        let hex = "00112233445566778899aabbccddeeff";
        let shared = SecretBox::new(Some(hex), "").write_version().is_ok();
        assert_eq!(Key::parse(hex, "k").is_ok(), shared);
        let short = base64::engine::general_purpose::STANDARD.encode([1u8; 16]);
        assert!(Key::parse(&short, "k").is_err());
        // The same 32 bytes, raw and base64: the same key.
        let raw = "this-is-a-raw-key-of-32-bytes!!!";
        assert_eq!(raw.len(), 32);
        let b64 = base64::engine::general_purpose::STANDARD.encode(raw);
        let (a, b) = match (Key::parse(raw, "a"), Key::parse(&b64, "b")) {
            (Ok(a), Ok(b)) => (a, b),
            _ => panic!("valid keys refused"),
        };
        assert!(matches!(a.same_as(&b), Ok(true)));
        assert!(matches!(key(1).same_as(&key(2)), Ok(false)));
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

    #[test]
    fn plan_hash_covers_mode_and_counts_only() {
        let mut c = Counts::default();
        c.add(Table::GlobalSecrets, 1, 3);
        let a = Plan {
            mode: Mode::Rotate,
            counts: c.clone(),
        };
        let b = Plan {
            mode: Mode::PlaintextOnly,
            counts: c.clone(),
        };
        assert_ne!(a.hash(), b.hash());
        let mut c2 = c.clone();
        c2.add(Table::GlobalSecrets, 0, 1);
        assert_ne!(
            a.hash(),
            Plan {
                mode: Mode::Rotate,
                counts: c2
            }
            .hash()
        );
        assert_eq!(
            a.hash(),
            Plan {
                mode: Mode::Rotate,
                counts: c
            }
            .hash()
        );
    }
}
