//! `backfill rollback`: restore, per tenant in one transaction, exactly what a run snapshotted.
//!
//! Under the tenant advisory lock and row locks on the agent and the snapshotted roots, the
//! drift check runs first (set-based; each finding names up to [`LIST`] rows and counts the
//! rest): a snapshotted row changed or deleted since the run (every `updated_at` the run wrote
//! equals the run's transaction time, and every moved anchor points at the agent), a row whose
//! restore would collide, the agent or its MODEL secret changed, and new rows hanging off the
//! agent (children, tokens, allowlist rows, other secrets). Drift refuses that tenant (exit 3)
//! unless `--force`. Then one statement per kind of row restores the snapshot, each checked
//! against the snapshot's counts (without `--force`), the run row becomes `rolled_back`, an
//! audit row is written, and the transaction commits. A second rollback finds `rolled_back` and
//! changes nothing.

use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;
use sqlx::postgres::PgConnection;
use sqlx::{Connection, Row};
use uuid::Uuid;

use super::verify::{self, Verification};
use super::{clean, Cancel, Committing, Slot, Tenant};
use crate::cli::BackfillRollbackArgs;
use crate::db::{self, Settings};
use crate::error::{Error, Exit, Result};
use crate::org::{self, Count, Referencing};
use crate::output::duration::{human_ms, millis};
use crate::platform::{tree, MODEL_KEY};
use crate::Context;

/// Rows named per drift finding before it is summarised as a count.
const LIST: i64 = 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    RolledBack,
    /// Dry run: this is what a rollback would restore.
    WouldRollBack,
    AlreadyRolledBack,
    /// The run did not change this tenant (skipped, failed, or never reached it).
    NothingToRollBack,
    /// Drift, and no --force.
    Refused,
    Failed,
    NotStarted,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::RolledBack => "rolled_back",
            Status::WouldRollBack => "would_roll_back",
            Status::AlreadyRolledBack => "already_rolled_back",
            Status::NothingToRollBack => "nothing_to_roll_back",
            Status::Refused => "refused",
            Status::Failed => "failed",
            Status::NotStarted => "not_started",
        }
    }
}

/// One drift finding: a kind of row, how many, and the first few ids.
#[derive(Clone, Debug, Serialize)]
pub struct Drift {
    pub table: &'static str,
    pub reason: String,
    pub rows: i64,
    pub ids: Vec<String>,
    /// With --force: what is done about it.
    pub action: Option<String>,
}

impl Drift {
    fn line(&self) -> String {
        let more = self.rows - self.ids.len() as i64;
        format!(
            "{} {} row(s) {}: {}{}{}",
            self.rows,
            self.table,
            self.reason,
            self.ids.join(", "),
            if more > 0 {
                format!(" and {more} more")
            } else {
                String::new()
            },
            self.action
                .as_deref()
                .map(|a| format!(" ({a})"))
                .unwrap_or_default()
        )
    }
}

/// A table whose rows reference the created agent, and how many.
#[derive(Clone, Debug, Serialize)]
pub struct Referenced {
    pub table: String,
    pub column: String,
    pub rows: i64,
}

impl Referenced {
    fn from(r: &Referencing) -> Self {
        Referenced {
            table: if r.reference.schema == "public" {
                r.reference.table.clone()
            } else {
                format!("{}.{}", r.reference.schema, r.reference.table)
            },
            column: r.reference.column.clone(),
            rows: r.rows,
        }
    }

    fn line(list: &[Referenced]) -> String {
        list.iter()
            .map(|r| format!("{} ({} row(s) by {})", r.table, r.rows, r.column))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct TenantResult {
    pub tenant: String,
    pub database: String,
    pub status: Status,
    pub agent_id: Option<Uuid>,
    /// deleted (the run created it and nothing else references it), soft_deleted (the run
    /// created it and rows of other tables reference it: --force marks it removed instead),
    /// restored (its prior fields), unchanged.
    pub agent: Option<&'static str>,
    /// deleted (the run seeded it), restored (the prior row), unchanged.
    pub model_secret: Option<&'static str>,
    pub roots_restored: i64,
    pub tokens_restored: i64,
    pub allowlist_restored: i64,
    pub merged_restored: i64,
    pub drift: Vec<Drift>,
    /// Rows of other tables that reference the agent the run created (found through the
    /// catalog's foreign keys), apart from the rows the run wrote or moved itself.
    pub referenced_by: Vec<Referenced>,
    /// After the restore: every restored row compared with its snapshot (None when nothing was
    /// restored: dry run, refusal, failure).
    pub verification: Option<Verification>,
    pub duration_ms: u64,
    pub error: Option<String>,
    /// The COMMIT's answer was lost and orgctl could not check it: the change may have been
    /// committed (see `error`). Only present when true.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub in_doubt: bool,
    /// Set when the COMMIT's answer was lost and the commit was verified afterwards.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// Whether the tenant has a row for the run at all.
    #[serde(skip)]
    pub knows_run: bool,
    /// The runs the tenant does know, when it does not know this one.
    #[serde(skip)]
    pub known_runs: Vec<super::KnownRun>,
}

impl TenantResult {
    fn new(t: &Tenant, status: Status) -> Self {
        TenantResult {
            tenant: t.name.clone(),
            database: t.database(),
            status,
            agent_id: None,
            agent: None,
            model_secret: None,
            roots_restored: 0,
            tokens_restored: 0,
            allowlist_restored: 0,
            merged_restored: 0,
            drift: Vec::new(),
            referenced_by: Vec::new(),
            verification: None,
            duration_ms: 0,
            error: None,
            in_doubt: false,
            note: None,
            knows_run: false,
            known_runs: Vec::new(),
        }
    }
}

struct Job {
    run_id: String,
    settings: Settings,
    force: bool,
    dry_run: bool,
}

/// The run row of a tenant.
struct RunRow {
    status: String,
    agent_id: Option<Uuid>,
    agent_action: String,
    model_action: String,
    /// What the run did to the declared plugin row ("" for runs that did not declare it).
    plugin_action: String,
    at: chrono::DateTime<chrono::Utc>,
}

fn tenant(
    job: Arc<Job>,
    t: Tenant,
    committing: Committing,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = TenantResult> + Send>> {
    Box::pin(async move {
        let start = Instant::now();
        let mut r = match rollback(&job, &t, &committing).await {
            Ok(r) => r,
            Err(e) => {
                let mut f = TenantResult::new(&t, Status::Failed);
                f.error = Some(clean(&e));
                f.in_doubt = e.in_doubt;
                f
            }
        };
        r.duration_ms = millis(start.elapsed());
        r
    })
}

async fn rollback(job: &Job, t: &Tenant, committing: &Committing) -> Result<TenantResult> {
    let mut conn = db::connect(&t.url, &job.settings).await?;
    let r = rollback_on(job, t, &mut conn, committing).await;
    let _ = conn.close().await;
    r
}

async fn rollback_on(
    job: &Job,
    t: &Tenant,
    conn: &mut PgConnection,
    committing: &Committing,
) -> Result<TenantResult> {
    db::ensure_compatible(conn).await?;
    let mut tx = if job.dry_run {
        db::begin_read_only(conn, &job.settings).await?
    } else {
        let mut tx = db::begin_write(conn, &job.settings).await?;
        db::lock_tenant(&mut tx, &job.settings).await?;
        tx
    };
    if !super::backfill_tables_exist(&mut tx).await? {
        tx.rollback().await?;
        return Ok(TenantResult::new(t, Status::NothingToRollBack));
    }
    // Statistics are stale right after a run: keep every join of this transaction linear.
    verify::plan_proof(&mut tx, !job.dry_run).await?;
    let lock = if job.dry_run { "" } else { " FOR UPDATE" };
    let row = db::query(&format!(
        "SELECT status, agent_id, coalesce(agent_action, ''), coalesce(model_action, ''),
                recorded_at, coalesce(plugin_action, '')
           FROM orgctl.backfill_runs WHERE run_id = $1{lock}"
    ))
    .bind(&job.run_id)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(row) = row else {
        let mut r = TenantResult::new(t, Status::NothingToRollBack);
        r.known_runs = super::known_runs(&mut tx).await?;
        return Ok(r);
    };
    let run = RunRow {
        status: row.try_get(0)?,
        agent_id: row.try_get(1)?,
        agent_action: row.try_get(2)?,
        model_action: row.try_get(3)?,
        at: row.try_get(4)?,
        plugin_action: row.try_get(5)?,
    };
    match run.status.as_str() {
        "applied" => {}
        "rolled_back" => {
            let mut r = TenantResult::new(t, Status::AlreadyRolledBack);
            r.knows_run = true;
            return Ok(r);
        }
        _ => {
            let mut r = TenantResult::new(t, Status::NothingToRollBack);
            r.knows_run = true;
            return Ok(r);
        }
    }
    let agent = run
        .agent_id
        .ok_or_else(|| Error::failed("the run row has no agent id; cannot roll back"))?;
    // The snapshot must be the one the run took (its digest is in the run's chained audit
    // row): a snapshot edited since would have rollback restore whatever was written into it.
    // Not even --force restores from it.
    if let Some(why) = snapshot_tampered(&mut tx, &job.run_id).await? {
        let mut result = TenantResult::new(t, Status::Refused);
        result.agent_id = Some(agent);
        result.error = Some(why);
        tx.rollback().await?;
        return Ok(result);
    }

    if !job.dry_run {
        // The same lock order as install: the agent and every snapshotted root, in id order.
        db::query(
            "SELECT id FROM workspaces
              WHERE id = $2 OR id IN (SELECT row_id FROM orgctl.backfill_rows WHERE run_id = $1 AND kind = 'root')
              ORDER BY id FOR UPDATE",
        )
        .bind(&job.run_id)
        .bind(agent)
        .execute(&mut *tx)
        .await?;
    }

    let counts = snapshot_counts(&mut tx, &job.run_id).await?;
    let drift = find_drift(&mut tx, &job.run_id, agent, &run).await?;
    let mut result = TenantResult::new(t, Status::WouldRollBack);
    result.knows_run = true;
    result.agent_id = Some(agent);
    result.agent = Some(match run.agent_action.as_str() {
        "create" => "deleted",
        "update" => "restored",
        _ => "unchanged",
    });
    result.model_secret = Some(match run.model_action.as_str() {
        "seeded" => "deleted",
        "replaced" => "restored",
        _ => "unchanged",
    });
    result.roots_restored = counts.roots;
    result.tokens_restored = counts.tokens;
    result.allowlist_restored = counts.allowlist;
    result.merged_restored = counts.merged;
    result.drift = drift;

    // New rows can only go to the oldest former root that is live (a `removed` tombstone only
    // when every former root is one); without a former root there is nowhere to put them.
    // `status::text`: older tenants have a TEXT status.
    let oldest: Option<Uuid> = db::query_scalar(
        "SELECT w.id FROM orgctl.backfill_rows s JOIN workspaces w ON w.id = s.row_id
          WHERE s.run_id = $1 AND s.kind = 'root'
          ORDER BY w.status::text IS NOT DISTINCT FROM 'removed', w.created_at NULLS LAST, w.id
          LIMIT 1",
    )
    .bind(&job.run_id)
    .fetch_optional(&mut *tx)
    .await?;
    // Names the restore (or --force's move of new children) would duplicate under one parent:
    // not even --force goes on, since orgctl cannot choose which workspace to rename.
    let clashes = name_clashes(&mut tx, &job.run_id, agent, oldest.filter(|_| job.force)).await?;
    let unresolvable = clashes.len();
    let has_new = result.drift.iter().any(|d| d.reason.starts_with("added"));
    let blocking = result
        .drift
        .iter()
        .filter(|d| d.reason.starts_with("added") && oldest.is_none())
        .count();
    // A created agent that other tables' rows reference has lived: deleting it would fail
    // (plain keys) or take the platform's rows with it (CASCADE) or leave them dangling (SET
    // NULL). Refuse; with --force restore the rest and soft-delete it instead.
    if run.agent_action == "create" {
        let refs = other_references(&mut tx, agent, &run).await?;
        result.referenced_by = refs.iter().map(Referenced::from).collect();
        if !refs.is_empty() && job.force {
            result.agent = Some("soft_deleted");
        }
    }
    if job.force {
        let to = oldest.map(|o| o.to_string()).unwrap_or_default();
        for d in result.drift.iter_mut() {
            d.action = Some(if d.reason.starts_with("added") {
                format!("moved to the oldest former root {to}")
            } else if d.reason.contains("collide") {
                "merged into the existing row".to_string()
            } else {
                "restored anyway where the row still exists".to_string()
            });
        }
    }
    for mut c in clashes {
        if job.force {
            c.action = Some("not restored: rename one of each pair first".to_string());
        }
        result.drift.push(c);
    }

    if !result.referenced_by.is_empty() && !job.force {
        let mut why = format!(
            "the platform agent {agent} the run created has lived: rows of other tables reference it: {}",
            Referenced::line(&result.referenced_by)
        );
        if !result.drift.is_empty() {
            let lines: Vec<String> = result.drift.iter().map(Drift::line).collect();
            why.push_str(&format!("; and drift since the run: {}", lines.join("; ")));
        }
        result.status = Status::Refused;
        result.error = Some(format!(
            "{why}; nothing was changed; rerun with --force to restore everything else and soft-delete the agent (status 'removed', kept as the org's platform row), leaving those rows in place"
        ));
        return Ok(result);
    }
    if !result.drift.is_empty() && (!job.force || blocking > 0 || unresolvable > 0) {
        let lines: Vec<String> = result.drift.iter().map(Drift::line).collect();
        let hint = if unresolvable > 0 {
            "the platform allows one live workspace per name under a parent and orgctl cannot choose which to rename, so not even --force restores this tenant: rename one workspace of each pair named, then rerun"
        } else if !job.force {
            "rerun with --force to restore anyway and move new rows to the oldest live former root"
        } else {
            debug_assert!(has_new && oldest.is_none());
            "the run re-parented no root, so new rows have nowhere to go: move or delete them first"
        };
        result.status = Status::Refused;
        result.error = Some(format!("drift since the run: {}; {hint}", lines.join("; ")));
        return Ok(result);
    }
    if job.dry_run {
        return Ok(result);
    }

    let agent_outcome = restore(&mut tx, job, agent, &run, &counts, oldest).await?;
    if let Some(a) = agent_outcome {
        result.agent = Some(a);
    }
    let verification = verify_restore(&mut tx, job, agent, &run).await?;
    let txid = crate::audit::record(
        &mut tx,
        "backfill rollback",
        &serde_json::json!({
            "run_id": job.run_id,
            "tenant": t.name,
            "force": job.force,
            "agent_id": agent,
            "agent": result.agent,
            "model_secret": result.model_secret,
            "roots_restored": counts.roots,
            "tokens_restored": counts.tokens,
            "allowlist_restored": counts.allowlist,
            "merged_restored": counts.merged,
            "drift": result.drift,
            "verification": verification,
        }),
        "rolled back",
    )
    .await?;
    db::query(
        "UPDATE orgctl.backfill_runs
            SET status = 'rolled_back', rolled_back_at = now(), rollback_forced = $2,
                rollback_notes = $3::jsonb,
                -- The prior MODEL value (ciphertext, or plaintext for a version-0 row) is back
                -- in workspace_secrets now: keep no second copy of a secret.
                model_prior = NULL
          WHERE run_id = $1",
    )
    .bind(&job.run_id)
    .bind(job.force)
    .bind(serde_json::to_string(&result.drift).unwrap_or_else(|_| "[]".into()))
    .execute(&mut *tx)
    .await?;
    let committed = {
        let _guard = committing.enter();
        db::commit_or_resolve(tx, &t.url, &job.settings, &crate::audit::AuditRow(txid)).await?
    };
    if let Some(note) = committed.note() {
        result.note = Some(note.to_string());
    }
    result.status = Status::RolledBack;
    result.verification = Some(verification);
    Ok(result)
}

/// Compare every restored row with its snapshot before commit; a difference orgctl cannot
/// accept (see [`verify::restored`]) fails the tenant, which rolls its transaction back.
async fn verify_restore(
    conn: &mut PgConnection,
    job: &Job,
    agent: Uuid,
    run: &RunRow,
) -> Result<Verification> {
    let v = verify::restored(
        conn,
        &verify::RunActions {
            run_id: &job.run_id,
            agent,
            agent_action: &run.agent_action,
            model_action: &run.model_action,
            force: job.force,
        },
    )
    .await?;
    let fatal = v.fatal();
    if !fatal.is_empty() {
        let lines: Vec<String> = fatal.iter().map(|n| n.line()).collect();
        return Err(Error::failed(format!(
            "the restore did not verify against the snapshot: {}; rolled back, nothing changed",
            lines.join("; ")
        )));
    }
    Ok(v)
}

struct Counts {
    roots: i64,
    tokens: i64,
    allowlist: i64,
    merged: i64,
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
        arg = super::digest::ARG,
        stored = super::digest::stored_digest_sql("$1"),
    );
    let row = db::query(&sql).bind(run_id).fetch_one(&mut *conn).await?;
    let recorded: Option<serde_json::Value> = row.try_get(0)?;
    let stored: serde_json::Value = row.try_get(1)?;
    let Some(recorded) = recorded else {
        return Ok(None);
    };
    let parts = super::digest::differing(&recorded, &stored);
    if parts.is_empty() {
        return Ok(None);
    }
    let named: Vec<String> = parts.iter().map(|p| super::digest::describe(p)).collect();
    Ok(Some(format!(
        "the snapshot of run {run_id} was changed after the run took it: {} no longer match the digest its audit row recorded; refusing to restore from it (not even --force): run `orgctl audit verify`, and restore by hand from a trusted copy",
        named.join(", ")
    )))
}

/// Re-insert a row the run replaced, whole, from its snapshot column of the run row
/// (`table` and `column` are orgctl's own constants, never input). Returns the rows inserted.
async fn reinsert_prior(
    conn: &mut PgConnection,
    run_id: &str,
    table: &'static str,
    column: &'static str,
) -> Result<u64> {
    let sql = format!(
        "INSERT INTO {table}
         SELECT (jsonb_populate_record(NULL::{table}, b.{column})).*
           FROM orgctl.backfill_runs b WHERE b.run_id = $1 AND b.{column} IS NOT NULL"
    );
    let r = db::query(&sql).bind(run_id).execute(&mut *conn).await?;
    Ok(r.rows_affected())
}

async fn snapshot_counts(conn: &mut PgConnection, run_id: &str) -> Result<Counts> {
    let r = db::query(
        "SELECT count(*) FILTER (WHERE kind = 'root'),
                count(*) FILTER (WHERE kind = 'anchor' AND tbl = 'org_api_tokens'),
                count(*) FILTER (WHERE kind = 'anchor' AND tbl = 'org_plugin_allowlist'),
                count(*) FILTER (WHERE kind = 'merged')
           FROM orgctl.backfill_rows WHERE run_id = $1",
    )
    .bind(run_id)
    .fetch_one(&mut *conn)
    .await?;
    Ok(Counts {
        roots: r.try_get(0)?,
        tokens: r.try_get(1)?,
        allowlist: r.try_get(2)?,
        merged: r.try_get(3)?,
    })
}

/// Rows that are not in the snapshot and hang off the agent: `tbl` rows whose `col` is the agent.
fn new_rows_sql(tbl: &str, col: &str, snapshot: &str) -> String {
    format!(
        "SELECT x.id::text, count(*) OVER () FROM {tbl} x
          WHERE x.{col} = $2 AND $3::timestamptz IS NOT NULL
            AND NOT EXISTS ({snapshot})
            AND NOT EXISTS (SELECT 1 FROM orgctl.backfill_rows k
                             WHERE k.run_id = $1 AND k.kind = 'kept' AND k.tbl = '{tbl}' AND k.row_id = x.id)
          ORDER BY x.id LIMIT $4"
    )
}

async fn find_drift(
    conn: &mut PgConnection,
    run_id: &str,
    agent: Uuid,
    run: &RunRow,
) -> Result<Vec<Drift>> {
    // Every query binds $1 run id, $2 agent, $3 the run's transaction time, $4 the list limit,
    // and returns (id, total count).
    let checks: Vec<(&'static str, String, String)> = vec![
        (
            "workspaces",
            "(a re-parented root) deleted since the run".into(),
            "SELECT s.row_id::text, count(*) OVER () FROM orgctl.backfill_rows s
              WHERE s.run_id = $1 AND s.kind = 'root' AND $2::uuid IS NOT NULL AND $3::timestamptz IS NOT NULL
                AND NOT EXISTS (SELECT 1 FROM workspaces w WHERE w.id = s.row_id)
              ORDER BY 1 LIMIT $4"
                .into(),
        ),
        (
            "workspaces",
            "(a re-parented root) changed since the run".into(),
            "SELECT w.id::text, count(*) OVER () FROM orgctl.backfill_rows s
               JOIN workspaces w ON w.id = s.row_id
              WHERE s.run_id = $1 AND s.kind = 'root'
                AND (w.parent_id IS DISTINCT FROM $2 OR w.updated_at IS DISTINCT FROM $3)
              ORDER BY 1 LIMIT $4"
                .into(),
        ),
        (
            "org_api_tokens",
            "(moved to the agent) deleted or moved since the run".into(),
            // An anti-join against the agent's rows (an index range), not a join with the
            // whole table: the run just put every one of them on the agent.
            "SELECT s.row_id::text, count(*) OVER () FROM orgctl.backfill_rows s
              WHERE s.run_id = $1 AND s.kind = 'anchor' AND s.tbl = 'org_api_tokens'
                AND $3::timestamptz IS NOT NULL
                AND NOT EXISTS (SELECT 1 FROM org_api_tokens x WHERE x.id = s.row_id AND x.org_id = $2)
              ORDER BY 1 LIMIT $4"
                .into(),
        ),
        (
            "org_plugin_allowlist",
            "(moved to the agent) deleted or moved since the run".into(),
            // An anti-join against the agent's rows (an index range), not a join with the
            // whole table: the run just put every one of them on the agent.
            "SELECT s.row_id::text, count(*) OVER () FROM orgctl.backfill_rows s
              WHERE s.run_id = $1 AND s.kind = 'anchor' AND s.tbl = 'org_plugin_allowlist'
                AND $3::timestamptz IS NOT NULL
                AND NOT EXISTS (SELECT 1 FROM org_plugin_allowlist x WHERE x.id = s.row_id AND x.org_id = $2)
              ORDER BY 1 LIMIT $4"
                .into(),
        ),
        (
            "org_plugin_allowlist",
            "would collide on (org_id, plugin_name) when moved back to its root".into(),
            "SELECT x.id::text, count(*) OVER () FROM orgctl.backfill_rows s
               JOIN org_plugin_allowlist x ON x.id = s.row_id
              WHERE s.run_id = $1 AND s.kind = 'anchor' AND s.tbl = 'org_plugin_allowlist'
                AND x.org_id = $2 AND $3::timestamptz IS NOT NULL
                AND EXISTS (SELECT 1 FROM org_plugin_allowlist b
                             WHERE b.org_id = s.old_org_id AND b.plugin_name = x.plugin_name
                               AND b.id <> x.id)
              ORDER BY 1 LIMIT $4"
                .into(),
        ),
        (
            "org_plugin_allowlist",
            "(merged away by the run) would collide when re-inserted".into(),
            "SELECT m.row_id::text, count(*) OVER () FROM orgctl.backfill_rows m
              CROSS JOIN LATERAL jsonb_populate_record(NULL::org_plugin_allowlist, m.row) r
              WHERE m.run_id = $1 AND m.kind = 'merged' AND $2::uuid IS NOT NULL AND $3::timestamptz IS NOT NULL
                AND EXISTS (SELECT 1 FROM org_plugin_allowlist b
                             WHERE (b.id = r.id
                                    OR (b.org_id = r.org_id AND b.plugin_name = r.plugin_name))
                               AND NOT EXISTS (SELECT 1 FROM orgctl.backfill_rows s
                                                WHERE s.run_id = $1 AND s.kind = 'anchor' AND s.row_id = b.id
                                                  AND s.tbl = 'org_plugin_allowlist'))
              ORDER BY 1 LIMIT $4"
                .into(),
        ),
        (
            "workspaces",
            "added under the agent since the run (children)".into(),
            new_rows_sql(
                "workspaces",
                "parent_id",
                "SELECT 1 FROM orgctl.backfill_rows s WHERE s.run_id = $1 AND s.kind = 'root' AND s.row_id = x.id",
            ),
        ),
        (
            "org_api_tokens",
            "added on the agent since the run".into(),
            new_rows_sql(
                "org_api_tokens",
                "org_id",
                "SELECT 1 FROM orgctl.backfill_rows s WHERE s.run_id = $1 AND s.kind = 'anchor' AND s.tbl = 'org_api_tokens' AND s.row_id = x.id",
            ),
        ),
        (
            "org_plugin_allowlist",
            "added on the agent since the run".into(),
            new_rows_sql(
                "org_plugin_allowlist",
                "org_id",
                "SELECT 1 FROM orgctl.backfill_rows s WHERE s.run_id = $1 AND s.kind = 'anchor' AND s.tbl = 'org_plugin_allowlist' AND s.row_id = x.id",
            ),
        ),
    ];
    let mut found = Vec::new();
    for (table, reason, sql) in checks {
        let rows = db::query(&sql)
            .bind(run_id)
            .bind(agent)
            .bind(run.at)
            .bind(LIST)
            .fetch_all(&mut *conn)
            .await?;
        if let Some(first) = rows.first() {
            let total: i64 = first.try_get(1)?;
            let ids = rows
                .iter()
                .map(|r| r.try_get::<String, _>(0))
                .collect::<std::result::Result<Vec<_>, _>>()?;
            found.push(Drift {
                table,
                reason,
                rows: total,
                ids,
                action: None,
            });
        }
    }

    // The agent and its MODEL secret, when the run wrote them. Only the agent's columns orgctl
    // set count (it is a root, kind 'platform', tier 0, and the name a created agent got): the
    // platform maintains the rest once the agent lives (status, URL, heartbeats, updated_at,
    // every column orgctl did not set), and a change there is not drift.
    if run.agent_action != "unchanged" {
        let state: Option<bool> = db::query_scalar(
            "SELECT parent_id IS NULL AND kind IS NOT DISTINCT FROM 'platform'
                    AND ($2 = 'update' OR (tier IS NOT DISTINCT FROM 0
                                           AND name IS NOT DISTINCT FROM $3))
               FROM workspaces WHERE id = $1",
        )
        .bind(agent)
        .bind(&run.agent_action)
        .bind(crate::install::DEFAULT_AGENT_NAME)
        .fetch_optional(&mut *conn)
        .await?;
        let reason = match state {
            None => Some("(the platform agent) deleted since the run"),
            Some(false) => Some("(the platform agent) changed since the run"),
            Some(true) => None,
        };
        if let Some(reason) = reason {
            found.push(Drift {
                table: "workspaces",
                reason: reason.into(),
                rows: 1,
                ids: vec![agent.to_string()],
                action: None,
            });
        }
    }
    if matches!(run.model_action.as_str(), "seeded" | "replaced") {
        let same: Option<bool> = db::query_scalar(
            "SELECT updated_at = $3 FROM workspace_secrets WHERE workspace_id = $1 AND key = $2",
        )
        .bind(agent)
        .bind(MODEL_KEY)
        .bind(run.at)
        .fetch_optional(&mut *conn)
        .await?;
        if same != Some(true) {
            found.push(Drift {
                table: "workspace_secrets",
                reason: format!(
                    "(the agent's MODEL) {} since the run",
                    if same.is_none() { "deleted" } else { "changed" }
                ),
                rows: 1,
                ids: vec![format!("{agent}/{MODEL_KEY}")],
                action: None,
            });
        }
    }
    Ok(found)
}

/// Live workspaces the rollback would put beside a live namesake under one parent, which the
/// platform's sibling-name rule forbids, as drift (each id listed as `ID "NAME" and OTHER`):
/// the re-parented roots go back to the top level, beside every live root that stays there (one
/// created since, or the agent, which leaves only after the roots are back) and beside each
/// other; with `--force` (`forced_to`: the oldest former root) children added under the agent
/// since the run move under that root, beside its own children. Two statements at most.
async fn name_clashes(
    conn: &mut PgConnection,
    run_id: &str,
    agent: Uuid,
    forced_to: Option<Uuid>,
) -> Result<Vec<Drift>> {
    let (b, o) = (tree::name_counts_sql("w"), tree::name_counts_sql("o"));
    let restore = format!(
        "WITH back AS MATERIALIZED (
              SELECT w.id, w.name FROM orgctl.backfill_rows s JOIN workspaces w ON w.id = s.row_id
               WHERE s.run_id = $1 AND s.kind = 'root' AND {b}
         ),
         stay AS MATERIALIZED (
              SELECT o.id, o.name FROM workspaces o
               WHERE o.parent_id IS NULL AND {o}
                 AND NOT EXISTS (SELECT 1 FROM orgctl.backfill_rows s
                                  WHERE s.run_id = $1 AND s.kind = 'root' AND s.row_id = o.id)
         ),
         pairs AS (
              SELECT b.id, b.name, x.id AS other FROM back b JOIN stay x ON x.name = b.name
            UNION ALL
              SELECT b.id, b.name, x.id FROM back b JOIN back x ON x.name = b.name AND x.id > b.id
         )
         SELECT id, name, other, count(*) OVER () FROM pairs
          WHERE $2::uuid IS NOT NULL ORDER BY name, id, other LIMIT $3"
    );
    let mut found = Vec::new();
    let rows = db::query(&restore)
        .bind(run_id)
        .bind(agent)
        .bind(LIST)
        .fetch_all(&mut *conn)
        .await?;
    found.extend(clash_drift(
        &rows,
        format!(
            "(a re-parented root) would share its name with another live workspace at the top level once restored there ({})",
            tree::SIBLING_NAME_INDEX
        ),
    )?);
    if let Some(to) = forced_to {
        let moved = format!(
            "SELECT w.id, w.name, o.id, count(*) OVER ()
               FROM workspaces w JOIN workspaces o ON o.name = w.name AND o.parent_id = $3
              WHERE w.parent_id = $2 AND {b} AND {o}
                AND NOT EXISTS (SELECT 1 FROM orgctl.backfill_rows s WHERE s.run_id = $1 AND s.kind = 'root' AND s.row_id = w.id)
                AND NOT EXISTS (SELECT 1 FROM orgctl.backfill_rows k WHERE k.run_id = $1 AND k.kind = 'kept' AND k.tbl = 'workspaces' AND k.row_id = w.id)
              ORDER BY w.name, w.id, o.id LIMIT $4"
        );
        let rows = db::query(&moved)
            .bind(run_id)
            .bind(agent)
            .bind(to)
            .bind(LIST)
            .fetch_all(&mut *conn)
            .await?;
        found.extend(clash_drift(
            &rows,
            format!(
                "(a child added under the agent since the run) would share its name with a live child of the oldest former root {to} once moved there ({})",
                tree::SIBLING_NAME_INDEX
            ),
        )?);
    }
    Ok(found)
}

/// Rows of (id, name, other id, total) as one drift finding, or none.
fn clash_drift(rows: &[sqlx::postgres::PgRow], reason: String) -> Result<Option<Drift>> {
    let Some(first) = rows.first() else {
        return Ok(None);
    };
    let ids = rows
        .iter()
        .map(|r| {
            let (id, name, other): (Uuid, String, Uuid) =
                (r.try_get(0)?, r.try_get(1)?, r.try_get(2)?);
            Ok(format!(
                "{id} \"{}\" and {other}",
                crate::error::sanitize(&name)
            ))
        })
        .collect::<std::result::Result<Vec<_>, sqlx::Error>>()?;
    Ok(Some(Drift {
        table: "workspaces",
        reason,
        rows: first.try_get(3)?,
        ids,
        action: None,
    }))
}

/// Rows of other tables that reference the created agent, before the restore: every
/// referencing column the catalog has, apart from the rows the run wrote or moved (which the
/// restore puts back first) and the rows the drift check already names (children, tokens and
/// allowlist rows on the agent).
async fn other_references(
    conn: &mut PgConnection,
    agent: Uuid,
    run: &RunRow,
) -> Result<Vec<Referencing>> {
    let model_seeded = run.model_action == "seeded";
    let plugin_created = run.plugin_action == "create";
    org::rows_referencing(conn, agent, |r| {
        match (r.table.as_str(), r.column.as_str()) {
            ("workspaces", "parent_id")
            | ("org_api_tokens", "org_id")
            | ("org_plugin_allowlist", "org_id") => Count::Skip,
            // The MODEL row the run seeded is deleted by the restore.
            ("workspace_secrets", "workspace_id") if model_seeded => {
                Count::Where("x.key <> 'MODEL'")
            }
            // The plugin row the run declared is deleted by the restore.
            ("workspace_declared_plugins", "workspace_id") if plugin_created => {
                Count::Where(crate::platform::agent::NOT_MCP_PLUGIN)
            }
            _ => Count::All,
        }
    })
    .await
}

/// Delete the agent the way the platform deletes its agent: `status = 'removed'`, `kind` left
/// `'platform'`. The tombstone is still the org's platform row, so the platform's boot and its
/// ensure find it and leave it alone instead of creating a new agent and re-merging every root
/// (the row is at the top level, and it is the only platform row: the platform's checks hold).
/// The literal takes the column's type, so it works for the enum and for older tenants' TEXT
/// `status`.
async fn soft_delete_agent(conn: &mut PgConnection, agent: Uuid) -> Result<()> {
    let sql = format!(
        "UPDATE workspaces SET status = '{}', updated_at = now()
          WHERE id = $1 AND kind = 'platform' AND parent_id IS NULL",
        crate::platform::tree::TOMBSTONE_STATUS
    );
    let r = db::query(&sql).bind(agent).execute(&mut *conn).await?;
    db::ensure_rows("soft-deleting the platform agent", r.rows_affected(), 1)
}

fn check(what: &str, got: u64, want: i64, force: bool) -> Result<()> {
    if force || got as i64 == want {
        Ok(())
    } else {
        Err(Error::failed(format!(
            "restoring {what} touched {got} row(s) where the snapshot has {want}; rolled back, nothing changed; rerun"
        )))
    }
}

/// Restore the snapshot: one statement per kind of row. Without --force every statement must
/// touch exactly the snapshot's rows (there is no drift, so anything else is a bug or a race).
/// Returns what happened to a created agent (`deleted` or `soft_deleted`).
async fn restore(
    conn: &mut PgConnection,
    job: &Job,
    agent: Uuid,
    run: &RunRow,
    counts: &Counts,
    oldest: Option<Uuid>,
) -> Result<Option<&'static str>> {
    let id = &job.run_id;
    let force = job.force;
    let mut outcome = None;
    // --force: rows added off the agent since the run go to the oldest live former root.
    if let (true, Some(to)) = (force, oldest) {
        db::query(
            "UPDATE workspaces x SET parent_id = $3, updated_at = now()
              WHERE x.parent_id = $2
                AND NOT EXISTS (SELECT 1 FROM orgctl.backfill_rows s WHERE s.run_id = $1 AND s.kind = 'root' AND s.row_id = x.id)
                AND NOT EXISTS (SELECT 1 FROM orgctl.backfill_rows k WHERE k.run_id = $1 AND k.kind = 'kept' AND k.tbl = 'workspaces' AND k.row_id = x.id)",
        )
        .bind(id)
        .bind(agent)
        .bind(to)
        .execute(&mut *conn)
        .await?;
        db::query(
            "UPDATE org_api_tokens x SET org_id = $3
              WHERE x.org_id = $2
                AND NOT EXISTS (SELECT 1 FROM orgctl.backfill_rows s WHERE s.run_id = $1 AND s.kind = 'anchor' AND s.tbl = 'org_api_tokens' AND s.row_id = x.id)
                AND NOT EXISTS (SELECT 1 FROM orgctl.backfill_rows k WHERE k.run_id = $1 AND k.kind = 'kept' AND k.tbl = 'org_api_tokens' AND k.row_id = x.id)",
        )
        .bind(id)
        .bind(agent)
        .bind(to)
        .execute(&mut *conn)
        .await?;
    }

    // Roots: parent and updated_at as they were.
    let guard = if force {
        ""
    } else {
        " AND w.parent_id = $2 AND w.updated_at = $3"
    };
    let sql = format!(
        "UPDATE workspaces w SET parent_id = s.old_parent_id, updated_at = s.old_updated_at
           FROM orgctl.backfill_rows s
          WHERE s.run_id = $1 AND s.kind = 'root' AND w.id = s.row_id{guard}"
    );
    let mut q = db::query(&sql).bind(id);
    if !force {
        q = q.bind(agent).bind(run.at);
    }
    let r = q.execute(&mut *conn).await?;
    check(
        "the re-parented roots",
        r.rows_affected(),
        counts.roots,
        force,
    )?;

    // Anchors: back to their old root (with --force, wherever they are, if that root exists).
    let guard = if force {
        " AND EXISTS (SELECT 1 FROM workspaces w WHERE w.id = s.old_org_id)"
    } else {
        " AND x.org_id = $2"
    };
    let sql = format!(
        "UPDATE org_api_tokens x SET org_id = s.old_org_id
           FROM orgctl.backfill_rows s
          WHERE s.run_id = $1 AND s.kind = 'anchor' AND s.tbl = 'org_api_tokens' AND x.id = s.row_id{guard}"
    );
    let mut q = db::query(&sql).bind(id);
    if !force {
        q = q.bind(agent);
    }
    let r = q.execute(&mut *conn).await?;
    check("the moved tokens", r.rows_affected(), counts.tokens, force)?;

    if force {
        // A moved allowlist row whose root has the plugin again: the root's row stands.
        db::query(
            "DELETE FROM org_plugin_allowlist x USING orgctl.backfill_rows s
              WHERE s.run_id = $1 AND s.kind = 'anchor' AND s.tbl = 'org_plugin_allowlist' AND x.id = s.row_id
                AND EXISTS (SELECT 1 FROM org_plugin_allowlist b
                             WHERE b.org_id = s.old_org_id AND b.plugin_name = x.plugin_name
                               AND b.id <> x.id)",
        )
        .bind(id)
        .execute(&mut *conn)
        .await?;
    }
    let sql = format!(
        "UPDATE org_plugin_allowlist x SET org_id = s.old_org_id
           FROM orgctl.backfill_rows s
          WHERE s.run_id = $1 AND s.kind = 'anchor' AND s.tbl = 'org_plugin_allowlist' AND x.id = s.row_id{guard}"
    );
    let mut q = db::query(&sql).bind(id);
    if !force {
        q = q.bind(agent);
    }
    let r = q.execute(&mut *conn).await?;
    check(
        "the moved allowlist rows",
        r.rows_affected(),
        counts.allowlist,
        force,
    )?;

    // Merged rows: re-inserted whole (ids, enabled_by, enabled_at).
    let guard = if force {
        " AND EXISTS (SELECT 1 FROM workspaces w WHERE w.id = (m.row->>'org_id')::uuid)
          ON CONFLICT DO NOTHING"
    } else {
        ""
    };
    let r = db::query(&format!(
        "INSERT INTO org_plugin_allowlist
         SELECT (jsonb_populate_record(NULL::org_plugin_allowlist, m.row)).*
           FROM orgctl.backfill_rows m WHERE m.run_id = $1 AND m.kind = 'merged'{guard}"
    ))
    .bind(id)
    .execute(&mut *conn)
    .await?;
    check(
        "the merged allowlist rows",
        r.rows_affected(),
        counts.merged,
        force,
    )?;

    if let (true, Some(to)) = (force, oldest) {
        // New allowlist rows on the agent: merged into the root's row of the same plugin, else
        // moved to the oldest former root.
        let new_allow = "x.org_id = $2
                AND NOT EXISTS (SELECT 1 FROM orgctl.backfill_rows s WHERE s.run_id = $1 AND s.kind = 'anchor' AND s.tbl = 'org_plugin_allowlist' AND s.row_id = x.id)
                AND NOT EXISTS (SELECT 1 FROM orgctl.backfill_rows k WHERE k.run_id = $1 AND k.kind = 'kept' AND k.tbl = 'org_plugin_allowlist' AND k.row_id = x.id)";
        db::query(&format!(
            "DELETE FROM org_plugin_allowlist x WHERE {new_allow}
                AND EXISTS (SELECT 1 FROM org_plugin_allowlist b WHERE b.org_id = $3 AND b.plugin_name = x.plugin_name)"
        ))
        .bind(id)
        .bind(agent)
        .bind(to)
        .execute(&mut *conn)
        .await?;
        db::query(&format!(
            "UPDATE org_plugin_allowlist x SET org_id = $3 WHERE {new_allow}"
        ))
        .bind(id)
        .bind(agent)
        .bind(to)
        .execute(&mut *conn)
        .await?;
    }

    // MODEL: deleted if the run seeded it, else the prior row whole.
    if matches!(run.model_action.as_str(), "seeded" | "replaced") {
        let guard = if force { "" } else { " AND updated_at = $3" };
        let sql =
            format!("DELETE FROM workspace_secrets WHERE workspace_id = $1 AND key = $2{guard}");
        let mut q = db::query(&sql).bind(agent).bind(MODEL_KEY);
        if !force {
            q = q.bind(run.at);
        }
        let r = q.execute(&mut *conn).await?;
        check("the MODEL secret", r.rows_affected(), 1, force)?;
        if run.model_action == "replaced" {
            let n = reinsert_prior(conn, id, "workspace_secrets", "model_prior").await?;
            check("the prior MODEL secret", n, 1, force)?;
        }
    }

    // The declared plugin: deleted if the run declared it, else its prior row whole.
    if matches!(run.plugin_action.as_str(), "create" | "update") {
        db::query(
            "DELETE FROM workspace_declared_plugins WHERE workspace_id = $1 AND plugin_name = $2",
        )
        .bind(agent)
        .bind(crate::platform::agent::MCP_PLUGIN)
        .execute(&mut *conn)
        .await?;
        if run.plugin_action == "update" {
            let n = reinsert_prior(conn, id, "workspace_declared_plugins", "plugin_prior").await?;
            check("the prior declared plugin", n, 1, force)?;
        }
    }

    // The agent: deleted if the run created it, else its prior fields.
    match run.agent_action.as_str() {
        "create" => {
            // Everything the run wrote or moved is restored by now, so any row of any table
            // that still references the agent (the catalog's foreign keys, now) is the
            // platform's: never delete, cascade or orphan it.
            let refs = org::rows_referencing(conn, agent, |_| Count::All).await?;
            if refs.is_empty() {
                let r = db::query("DELETE FROM workspaces WHERE id = $1")
                    .bind(agent)
                    .execute(&mut *conn)
                    .await?;
                check("the platform agent", r.rows_affected(), 1, force)?;
                outcome = Some("deleted");
            } else if force {
                soft_delete_agent(conn, agent).await?;
                outcome = Some("soft_deleted");
            } else {
                let list: Vec<Referenced> = refs.iter().map(Referenced::from).collect();
                return Err(Error::failed(format!(
                    "rows of other tables reference the platform agent {agent} after the restore: {}; rolled back, nothing changed; rerun (the dry run names them)",
                    Referenced::line(&list)
                )));
            }
        }
        "update" => {
            let r = db::query(
                // The status only when the run revived a removed agent.
                "UPDATE workspaces w
                    SET name = p.name, kind = p.kind, parent_id = p.parent_id, tier = p.tier,
                        template = p.template,
                        status = CASE WHEN p.status::text = 'removed' THEN p.status ELSE w.status END,
                        updated_at = p.updated_at
                   FROM orgctl.backfill_runs b
                  CROSS JOIN LATERAL jsonb_populate_record(NULL::workspaces, b.agent_prior) p
                  WHERE b.run_id = $1 AND w.id = $2",
            )
            .bind(id)
            .bind(agent)
            .execute(&mut *conn)
            .await?;
            check("the platform agent", r.rows_affected(), 1, force)?;
        }
        _ => {}
    }

    // The roots are roots again: install must not sweep their anchors to the agent.
    db::query(
        "DELETE FROM orgctl.former_roots f USING orgctl.backfill_rows s
          WHERE s.run_id = $1 AND s.kind = 'root' AND f.workspace_id = s.row_id",
    )
    .bind(id)
    .execute(&mut *conn)
    .await?;
    Ok(outcome)
}

// ---------------------------------------------------------------------------------------------
// The command

#[derive(Serialize)]
struct Report {
    run_id: String,
    dry_run: bool,
    force: bool,
    interrupted: bool,
    tenants: Vec<TenantResult>,
}

pub async fn run(ctx: &Context, args: &BackfillRollbackArgs, cancel: &Cancel) -> Result<Exit> {
    let out = &ctx.out;
    super::check_run_id(&args.run_id)?;
    let shard = super::Shard::from_args(&args.shard)?;
    let all = super::Shard::select(shard, super::tenants::read(&args.tenants).await?);
    let selected: Vec<Tenant> = if args.tenant.is_empty() {
        all
    } else {
        let mut v = Vec::new();
        for name in &args.tenant {
            match all.iter().find(|t| &t.name == name) {
                Some(t) => v.push(t.clone()),
                None => {
                    return Err(Error::usage(format!(
                        "--tenant '{}' is not in the tenants file{}",
                        crate::error::sanitize(name),
                        shard
                            .map(|s| format!(" (or not in shard {s})"))
                            .unwrap_or_default()
                    )))
                }
            }
        }
        v
    };
    if !args.dry_run {
        out.info(&format!(
            "Rolling back run {} on {} tenant(s){}.",
            args.run_id,
            selected.len(),
            if args.force { " with --force" } else { "" }
        ));
        out.confirm(
            &format!(
                "Restore {} tenant(s) to their state before run {}?",
                selected.len(),
                args.run_id
            ),
            ctx.yes,
        )?;
    }
    let job = Arc::new(Job {
        run_id: args.run_id.clone(),
        settings: ctx.settings.clone(),
        force: args.force,
        dry_run: args.dry_run,
    });
    let pb = out.progress(selected.len() as u64, "tenants");
    let work = |t: Tenant, c: Committing| tenant(job.clone(), t, c);
    let (mut done, mut failed) = (0usize, 0usize);
    let slots = super::for_each(&selected, 4, cancel, work, |r: &TenantResult, in_flight| {
        if let Some(e) = &r.error {
            failed += 1;
            pb.suspend(|| out.warn(&format!("{}: {e}", r.tenant)));
        } else {
            done += 1;
        }
        if let Some(v) = r.verification.as_ref().filter(|v| !v.exact) {
            pb.suspend(|| {
                out.warn(&format!(
                    "{}: rolled back, but not byte-exact: {}",
                    r.tenant,
                    v.summary()
                ))
            });
        }
        pb.inc(1);
        pb.set_message(crate::output::fleet_progress(done, failed, in_flight));
    })
    .await;
    pb.finish_and_clear();
    let tenants: Vec<TenantResult> = slots
        .into_iter()
        .zip(selected.iter())
        .map(|(s, t)| match s {
            Slot::Done(r) => r,
            Slot::NotStarted => TenantResult::new(t, Status::NotStarted),
            Slot::Abandoned(ms) => {
                let mut r = TenantResult::new(t, Status::Failed);
                r.error =
                    Some("abandoned by a second Ctrl-C: its transaction was rolled back".into());
                r.duration_ms = ms;
                r
            }
            Slot::Panicked(detail) => {
                let mut r = TenantResult::new(t, Status::Failed);
                r.error = Some(super::panicked_message(&detail));
                r
            }
        })
        .collect();
    // Every tenant read and none has a row for the run: most likely a mistyped run id, which
    // must not read as "nothing to roll back".
    if !cancel.stopping()
        && !tenants.is_empty()
        && tenants
            .iter()
            .all(|r| r.status == Status::NothingToRollBack && !r.knows_run)
    {
        return Err(super::unknown_run(
            &args.run_id,
            tenants.iter().flat_map(|r| r.known_runs.iter()),
        ));
    }
    let report = Report {
        run_id: args.run_id.clone(),
        dry_run: args.dry_run,
        force: args.force,
        interrupted: cancel.stopping(),
        tenants,
    };
    let rolled_back = report
        .tenants
        .iter()
        .filter(|r| r.status == Status::RolledBack)
        .count();
    // After commits, a summary that cannot be printed must not read as "nothing changed".
    let committed = |e: Error| {
        if rolled_back == 0 {
            return e;
        }
        Error::failed(format!(
            "{rolled_back} tenant(s) were rolled back (committed), but the summary could not be printed: {}; see `orgctl backfill status --run-id {}`",
            e.message, args.run_id
        ))
    };
    if out.json_mode() {
        out.json(&report).map_err(committed)?;
    } else {
        let mut table = out.new_table([
            "tenant",
            "status",
            "roots",
            "tokens",
            "allowlist",
            "merged",
            "MODEL",
            "agent",
            "duration",
            "error / drift",
        ]);
        for r in &report.tenants {
            table.add_row(vec![
                crate::error::sanitize(&r.tenant),
                r.status.as_str().to_string(),
                r.roots_restored.to_string(),
                r.tokens_restored.to_string(),
                r.allowlist_restored.to_string(),
                r.merged_restored.to_string(),
                r.model_secret.unwrap_or("-").to_string(),
                r.agent.unwrap_or("-").to_string(),
                human_ms(r.duration_ms),
                r.error.clone().unwrap_or_else(|| {
                    let mut lines: Vec<String> = r.drift.iter().map(Drift::line).collect();
                    if !r.referenced_by.is_empty() {
                        lines.push(format!(
                            "agent kept as removed: referenced by {}",
                            Referenced::line(&r.referenced_by)
                        ));
                    }
                    lines.extend(
                        r.verification
                            .iter()
                            .filter(|v| !v.exact)
                            .map(|v| crate::error::sanitize(&v.summary())),
                    );
                    lines.extend(r.note.clone());
                    lines.join("; ")
                }),
            ]);
        }
        out.stdout(&format!(
            "{table}\n{}\n",
            if args.dry_run {
                "Dry run: nothing was changed."
            } else {
                "Counts are the snapshot's rows restored per tenant."
            }
        ))
        .map_err(committed)?;
    }
    let count = |s: Status| report.tenants.iter().filter(|r| r.status == s).count();
    if report.interrupted {
        return Err(Error::new(
            Exit::Interrupted,
            if args.dry_run {
                format!(
                    "interrupted: {} tenant(s) were not checked (dry run: nothing was changed)",
                    count(Status::NotStarted)
                )
            } else {
                format!(
                    "interrupted: {} tenant(s) were not started; in-flight tenants finished or rolled back",
                    count(Status::NotStarted)
                )
            },
        ));
    }
    let failed = count(Status::Failed);
    let refused = count(Status::Refused);
    if failed > 0 {
        return Err(Error::failed(format!(
            "{failed} tenant(s) {}{}; {}: see the summary and rerun",
            if args.dry_run {
                "could not be checked"
            } else {
                "failed to roll back"
            },
            if refused > 0 {
                format!(" and {refused} refused because of drift")
            } else {
                String::new()
            },
            match report.tenants.iter().filter(|r| r.in_doubt).count() {
                _ if args.dry_run => "dry run: nothing was changed".to_string(),
                0 => "a failed tenant is left as it was".to_string(),
                n => format!("the rollback of {n} of them may have been committed (their COMMIT's answer was lost: check them with `orgctl backfill status`), the others left their tenant unchanged"),
            }
        )));
    }
    if refused > 0 {
        let names: Vec<&str> = report
            .tenants
            .iter()
            .filter(|r| r.status == Status::Refused)
            .map(|r| r.tenant.as_str())
            .collect();
        return Err(Error::refused(format!(
            "drift since the run on {} ({}): nothing was changed there; review the rows named above, then {}",
            if refused == 1 { "1 tenant".to_string() } else { format!("{refused} tenants") },
            names.join(", "),
            if args.force {
                "rename one workspace of each clashing pair, or move or delete new rows that have nowhere to go, and rerun (--force does not settle those)"
            } else {
                "rerun with --force to restore anyway (name clashes are refused even then)"
            }
        )));
    }
    Ok(Exit::Ok)
}
