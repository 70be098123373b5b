//! Where the key protects values, what a run does to them, and how many there are: the tables,
//! the modes, the counts per table and version, and the values that do not decrypt.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;
use sqlx::postgres::PgConnection;
use sqlx::Row;
use uuid::Uuid;

use super::channels::{channel_table, count_channel_fields, ChannelTable};
use super::{ERROR_ROWS, NAMED_LIMIT};
use crate::db;
use crate::error::{sanitize, Result};

/// Rows of `workspace_secrets` per `encryption_version`.
pub(super) const COUNT_WORKSPACE_SECRETS_SQL: &str =
    "SELECT encryption_version, count(*) FROM workspace_secrets GROUP BY 1";
/// Rows of `global_secrets` per `encryption_version`.
pub(super) const COUNT_GLOBAL_SECRETS_SQL: &str =
    "SELECT encryption_version, count(*) FROM global_secrets GROUP BY 1";

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

    pub(super) fn workspace_col(self) -> &'static str {
        match self {
            Table::WorkspaceSecrets | Table::ChannelFields => "workspace_id",
            Table::GlobalSecrets => "NULL::uuid",
        }
    }

    /// The rows per version of a secret table (none for the channel fields: see
    /// [`count_channel_fields`]).
    fn count_sql(self) -> Option<&'static str> {
        match self {
            Table::WorkspaceSecrets => Some(COUNT_WORKSPACE_SECRETS_SQL),
            Table::GlobalSecrets => Some(COUNT_GLOBAL_SECRETS_SQL),
            Table::ChannelFields => None,
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
    pub fn rewrites(self, version: i32) -> bool {
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
    pub(super) fn add(&mut self, table: Table, version: i32, n: i64) {
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

    /// Rows with a version orgctl cannot read (neither 0 nor 1).
    pub fn unknown_versions(&self) -> i64 {
        self.0
            .iter()
            .filter(|((_, v), _)| *v != 0 && *v != 1)
            .map(|(_, n)| n)
            .sum()
    }

    /// Rows of one table and version (0 when there are none).
    pub fn get(&self, table: Table, version: i32) -> i64 {
        self.0.get(&(table, version)).copied().unwrap_or(0)
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
    pub(super) fn push(&mut self, row: BadRow) {
        self.count += 1;
        if self.rows.len() < NAMED_LIMIT {
            self.rows.push(row);
        }
    }

    /// "t id (…), t id (…) and N more" for a one-line error.
    pub fn named(&self) -> String {
        let shown = &self.rows[..self.rows.len().min(ERROR_ROWS)];
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

/// Rows per table and version, and the channel fields per version when the tenant has the
/// channel table in the shape the platform gives it: one aggregate per table, no values read.
pub async fn count_rows(conn: &mut PgConnection) -> Result<Counts> {
    let mut counts = Counts::default();
    for table in Table::SECRETS {
        let Some(sql) = table.count_sql() else {
            continue;
        };
        for r in db::query(sql).fetch_all(&mut *conn).await? {
            counts.add(table, r.try_get(0)?, r.try_get(1)?);
        }
    }
    if channel_table(conn).await? == ChannelTable::Present {
        count_channel_fields(conn, &mut counts).await?;
    }
    Ok(counts)
}
