//! Applying a rekey plan: the secret tables (and the channel table) locked against writers,
//! every value the mode rewrites re-encrypted page by page, and the result checked against the
//! plan before the caller commits. Also the read-only check of a dry run, and the audit
//! arguments of an applied rekey.

use sqlx::postgres::PgConnection;

use super::counts::{BadRows, Counts, Mode};
use super::keys::Key;
use super::plan::Plan;
use super::scan::Scan;
use crate::db;
use crate::error::{Error, Result};
use crate::platform::channels;

/// Writers of the secret tables wait until the commit; readers go on.
pub(super) const LOCK_SECRET_TABLES_SQL: &str =
    "LOCK TABLE workspace_secrets, global_secrets IN SHARE ROW EXCLUSIVE MODE";

/// Secret rows still in one of the versions `$1` (both secret tables).
pub const LEFT_PLAINTEXT_SQL: &str =
    "SELECT (SELECT count(*) FROM workspace_secrets WHERE encryption_version = ANY($1))
              + (SELECT count(*) FROM global_secrets WHERE encryption_version = ANY($1))";

/// Lock the secret tables (and the channel table, when it is scanned) `SHARE ROW EXCLUSIVE`:
/// the pages then see tables nobody changes, and the counts of the plan are what the scan finds.
pub async fn lock_tables(conn: &mut PgConnection, channels: bool) -> Result<()> {
    if channels {
        let lock = format!(
            "LOCK TABLE workspace_secrets, global_secrets, {} IN SHARE ROW EXCLUSIVE MODE",
            channels::TABLE
        );
        db::query(&lock).execute(&mut *conn).await?;
    } else {
        db::query(LOCK_SECRET_TABLES_SQL)
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

/// The scan of a dry run: every value checked as the rekey would, nothing written. Returns
/// the values that do not decrypt with `current`.
pub async fn check(
    conn: &mut PgConnection,
    mode: Mode,
    current: &Key,
    target: Option<&Key>,
    channels: bool,
    pb: &indicatif::ProgressBar,
) -> Result<BadRows> {
    let mut scan = Scan::new(mode, Some(current), target, false).with_channels(channels);
    scan.run(conn, pb).await?;
    pb.finish_and_clear();
    Ok(scan.bad)
}

/// What [`apply`] did.
#[derive(Debug)]
pub enum Applied {
    /// Every value the plan counted was rewritten and checked; the caller commits.
    Written,
    /// Values that do not decrypt with the current key: nothing may be committed.
    Undecryptable(BadRows),
}

/// Re-encrypt what `plan` counts, under the locks of [`lock_tables`], with the target key
/// (`target`: the new key of a rotation, the current one for plaintext-only). Then check,
/// before the commit: the scan found exactly the plan's rows (the tables are locked against
/// writers, so any difference is a bug), wrote every one, and left no row or channel field in
/// plaintext. An error means: roll back.
pub async fn apply(
    conn: &mut PgConnection,
    plan: &Plan,
    current: &Key,
    target: Option<&Key>,
    channels: bool,
    pb: &indicatif::ProgressBar,
) -> Result<Applied> {
    let mut scan = Scan::new(plan.mode, Some(current), target, true).with_channels(channels);
    let scanned = scan.run(conn, pb).await;
    pb.finish_and_clear();
    scanned?;
    if scan.bad.count > 0 {
        return Ok(Applied::Undecryptable(scan.bad));
    }
    // What the scan found and wrote is exactly what the plan counted (the tables are locked
    // against writers, so any difference is a bug: roll back).
    if scan.counts != plan.counts {
        return Err(Error::failed(
            "apply diverged from the plan: the scan found other rows than the count; rolled back, nothing was changed; rerun",
        ));
    }
    db::ensure_rows("the re-encryption", scan.written as u64, plan.rewritten())?;
    ensure_no_plaintext_left(conn, channels).await?;
    Ok(Applied::Written)
}

/// Verify before commit: no row (or channel field) is left in a version the mode rewrites.
async fn ensure_no_plaintext_left(conn: &mut PgConnection, channels: bool) -> Result<()> {
    let left: i64 = db::query_scalar(LEFT_PLAINTEXT_SQL)
        .bind(vec![0i32])
        .fetch_one(&mut *conn)
        .await?;
    let left_fields = if channels {
        let mut c = Counts::default();
        super::channels::count_channel_fields(conn, &mut c).await?;
        c.fields_of_version(0)
    } else {
        0
    };
    if left != 0 || left_fields != 0 {
        return Err(Error::failed(format!(
            "verification failed before commit: {left} plaintext row(s) and {left_fields} plaintext channel field(s) remain; rolled back, nothing was changed; rerun"
        )));
    }
    Ok(())
}

/// The audit arguments: the mode, the counts and the plan hash — never a key or a value.
/// `new_key_from_file`: the new key came from `--new-key-file` (else from the environment);
/// `expect_plan`: the run was pinned to a reviewed plan hash.
pub fn audit_args(plan: &Plan, new_key_from_file: bool, expect_plan: bool) -> serde_json::Value {
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
            _ if new_key_from_file => "file",
            _ => "env",
        },
        "reencrypted": plan.rewritten(),
        "counts": counts,
        "expect_plan": expect_plan,
        "plan_hash": plan.hash(),
    })
}
