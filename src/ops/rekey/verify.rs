//! Verifying: every secret row and channel field read in the caller's read-only snapshot, each
//! version-1 value opened with the key; what does not open is named (never a value).

use sqlx::postgres::PgConnection;

use super::counts::{BadRows, Counts, Mode, Table};
use super::keys::Key;
use super::scan::Scan;
use crate::error::Result;

/// What a verification found.
#[derive(Debug)]
pub struct Verified {
    /// Rows (and channel fields) per table and version.
    pub counts: Counts,
    /// The values that do not decrypt (the first of them named).
    pub bad: BadRows,
    /// Rows that do not decrypt, per table and version (all of them, named or not).
    pub bad_counts: Counts,
}

impl Verified {
    /// Rows of one table and version that do not decrypt.
    pub fn bad_in(&self, table: Table, version: i32) -> i64 {
        self.bad_counts.get(table, version)
    }

    /// Encrypted values checked (secret rows and channel fields of version 1): with none,
    /// every value "decrypts" and the key is unproven.
    pub fn verified(&self) -> i64 {
        self.counts.rows_of_version(1) + self.counts.fields_of_version(1)
    }
}

/// Check every value under `key`; `channels`: the tenant has the channel table
/// ([`super::ensure_scannable`]).
pub async fn verify(
    conn: &mut PgConnection,
    key: &Key,
    channels: bool,
    pb: &indicatif::ProgressBar,
) -> Result<Verified> {
    let mut scan = Scan::new(Mode::Verify, Some(key), None, false).with_channels(channels);
    scan.run(conn, pb).await?;
    pb.finish_and_clear();
    Ok(Verified {
        counts: scan.counts,
        bad: scan.bad,
        bad_counts: scan.bad_counts,
    })
}
