//! The digest of a tenant's backfill snapshot, recorded in the run's chained audit row when the
//! snapshot is taken (in the same statement that writes it), and checked by `backfill rollback`
//! and `audit verify` before anything trusts the snapshot: a snapshot edited by hand (a root's
//! old parent, the tokens' old org) would otherwise be restored as if it were the truth.
//!
//! The digest is a JSON object with one sha256 per part of the snapshot — `run` (the run row's
//! prior agent, MODEL and plugin rows and actions) and `KIND:TABLE` for the snapshot rows — so
//! a mismatch names what differs. Each part hashes its rows' lines, sorted bytewise, joined by
//! newlines; a line is the row's fields as text (`quote_nullable`, so NULL and '' differ,
//! timestamps in UTC with microseconds, jsonb in PostgreSQL's own canonical text).

use sqlx::postgres::PgConnection;
use sqlx::Row;

use crate::db;
use crate::error::Result;

/// One snapshot row (`orgctl.backfill_rows`) as a line.
const ROW_LINE: &str =
    "concat_ws('|', kind, tbl, row_id::text, quote_nullable(old_parent_id::text),
       quote_nullable(to_char(old_updated_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US')),
       quote_nullable(old_org_id::text), quote_nullable(row::text))";

/// The run row's snapshot fields (`orgctl.backfill_runs`) as a line.
const RUN_LINE: &str =
    "concat_ws('|', quote_nullable(agent_id::text), quote_nullable(agent_action),
       quote_nullable(agent_prior::text), quote_nullable(model_action),
       quote_nullable(model_prior::text), quote_nullable(plugin_action),
       quote_nullable(plugin_prior::text))";

/// The audit argument the digest is recorded under.
pub const ARG: &str = "snapshot_digest";

/// RETURNING list of a snapshot row insert: its part and line.
pub fn returning_row() -> String {
    format!("kind::text || ':' || tbl::text AS part, {ROW_LINE} AS line")
}

/// RETURNING list of the run row's upsert: its part and line.
pub fn returning_run() -> String {
    format!("'run'::text AS part, {RUN_LINE} AS line")
}

/// A jsonb object `{part: sha256 hex}` over `lines`, a query yielding `(part, line)`.
pub fn digest_sql(lines: &str) -> String {
    format!(
        "(SELECT coalesce(jsonb_object_agg(part, d), '{{}}'::jsonb)
            FROM (SELECT part,
                         encode(sha256(convert_to(string_agg(line, E'\\n' ORDER BY line COLLATE \"C\"),
                                                  'UTF8')), 'hex') AS d
                    FROM ({lines}) l GROUP BY part) g)"
    )
}

/// The digest of the snapshot as stored now for run `run` (a placeholder bound to the run id).
pub fn stored_digest_sql(run: &str) -> String {
    digest_sql(&format!(
        "SELECT 'run'::text AS part, {RUN_LINE} AS line FROM orgctl.backfill_runs WHERE run_id = {run}
         UNION ALL
         SELECT kind::text || ':' || tbl::text, {ROW_LINE} FROM orgctl.backfill_rows WHERE run_id = {run}"
    ))
}

/// The parts of two digests that differ (present in one only, or with another hash), sorted.
pub fn differing(recorded: &serde_json::Value, stored: &serde_json::Value) -> Vec<String> {
    let empty = serde_json::Map::new();
    let (a, b) = (
        recorded.as_object().unwrap_or(&empty),
        stored.as_object().unwrap_or(&empty),
    );
    let mut parts: Vec<String> = a
        .keys()
        .chain(b.keys())
        .filter(|k| a.get(*k) != b.get(*k))
        .cloned()
        .collect();
    parts.sort();
    parts.dedup();
    parts
}

/// How a part is said in messages.
pub fn describe(part: &str) -> String {
    match part {
        "run" => "the run row (the agent's, MODEL's or plugin's prior state)".to_string(),
        "root:workspaces" => "the re-parented roots' old parents".to_string(),
        "anchor:org_api_tokens" => "the tokens' old org".to_string(),
        "anchor:org_plugin_allowlist" => "the allowlist rows' old org".to_string(),
        "merged:org_plugin_allowlist" => "the merged allowlist rows".to_string(),
        p if p.starts_with("kept:") => format!("the rows kept on the agent ({})", &p[5..]),
        p => p.to_string(),
    }
}

/// Whether the stored snapshot of `run_id` differs from the digest its chained audit row
/// recorded when it was taken: the refusal naming what differs, or None. A run whose audit row
/// has no digest (written by an orgctl before the digest existed) is not checked.
pub async fn snapshot_tampered(conn: &mut PgConnection, run_id: &str) -> Result<Option<String>> {
    let sql = format!(
        "SELECT (SELECT args -> '{arg}' FROM orgctl.audit_log
                  WHERE command = 'backfill run' AND outcome = 'applied'
                    AND args ->> 'run_id' = $1 AND args ? '{arg}'
                  ORDER BY id DESC LIMIT 1),
                {stored}",
        arg = ARG,
        stored = stored_digest_sql("$1"),
    );
    let row = db::query(&sql).bind(run_id).fetch_one(&mut *conn).await?;
    let recorded: Option<serde_json::Value> = row.try_get(0)?;
    let stored: serde_json::Value = row.try_get(1)?;
    let Some(recorded) = recorded else {
        return Ok(None);
    };
    let parts = differing(&recorded, &stored);
    if parts.is_empty() {
        return Ok(None);
    }
    let named: Vec<String> = parts.iter().map(|p| describe(p)).collect();
    Ok(Some(format!(
        "the snapshot of run {run_id} was changed after the run took it: {} no longer match the digest its audit row recorded; refusing to restore from it (not even --force): run `orgctl audit verify`, and restore by hand from a trusted copy",
        named.join(", ")
    )))
}

/// The backfill runs whose snapshots are still held for a rollback.
const APPLIED_RUNS: &str =
    "SELECT run_id FROM orgctl.backfill_runs WHERE status = 'applied' ORDER BY run_id";

/// The static statements of this module, by name.
pub(crate) const STATEMENTS: &[(&str, &str)] = &[("applied_runs", APPLIED_RUNS)];

/// For every run whose snapshot is still held for a rollback, the refusal naming what of its
/// snapshot changed since the run took it (see [`snapshot_tampered`]); empty when none did or
/// the tenant has no backfill tables.
pub async fn tampered_snapshots(conn: &mut PgConnection) -> Result<Vec<String>> {
    if !super::backfill_tables_exist(&mut *conn).await? {
        return Ok(Vec::new());
    }
    let runs: Vec<String> = db::query_scalar(APPLIED_RUNS).fetch_all(&mut *conn).await?;
    let mut found = Vec::new();
    for run in runs {
        if let Some(why) = snapshot_tampered(&mut *conn, &run).await? {
            found.push(why);
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn differing_parts_are_named_once_sorted() {
        let a = serde_json::json!({"run": "1", "root:workspaces": "2"});
        let b = serde_json::json!({"run": "1", "root:workspaces": "3", "kept:workspaces": "4"});
        assert_eq!(differing(&a, &b), ["kept:workspaces", "root:workspaces"]);
        assert!(differing(&a, &a).is_empty());
    }
}
