//! `backfill rollback`: restore, per tenant in one transaction, exactly what a run snapshotted.
//!
//! Under the tenant advisory lock and row locks on the agent and the snapshotted roots, the
//! drift check runs first (set-based; each finding names up to twenty rows and counts the
//! rest): a snapshotted row changed or deleted since the run (every `updated_at` the run wrote
//! equals the run's transaction time, and every moved anchor points at the agent), a row whose
//! restore would collide, the agent or its MODEL secret changed, and new rows hanging off the
//! agent (children, tokens, allowlist rows, other secrets). Drift refuses that tenant (exit 3)
//! unless `--force`. Then one statement per kind of row restores the snapshot, each checked
//! against the snapshot's counts (without `--force`), the run row becomes `rolled_back`, an
//! audit row is written, and the transaction commits. A second rollback finds `rolled_back` and
//! changes nothing.

mod drift;
mod restore;
mod run;

use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;
use sqlx::postgres::PgConnection;
use sqlx::{Connection, Row};
use uuid::Uuid;

use crate::db::{self, Settings};
use crate::error::{Error, Result};
pub use crate::ops::backfill::digest::snapshot_tampered;
use crate::ops::backfill::verify::{self, Verification};
use crate::ops::backfill::{
    backfill_tables_exist, clean, known_runs, Committing, KnownRun, Tenant,
};
use crate::ops::org::Referencing;
use crate::output::duration::millis;
use drift::{find_drift, name_clashes, other_references};
use restore::{restore, snapshot_counts, Counts};
pub use run::{roll_back_fleet, Report};

/// The static statements of a tenant's rollback (the drift checks and the restore list theirs).
pub(crate) const STATEMENTS: &[(&str, &str)] = &[
    ("rollback: run row", RUN_ROW_SQL),
    ("rollback: run row locked", RUN_ROW_LOCKED_SQL),
    ("rollback: lock rows", LOCK_ROWS_SQL),
    ("rollback: oldest former root", OLDEST_FORMER_ROOT_SQL),
    ("rollback: mark rolled back", MARK_ROLLED_BACK_SQL),
];
pub(crate) use drift::STATEMENTS as DRIFT_STATEMENTS;
pub(crate) use restore::STATEMENTS as RESTORE_STATEMENTS;

/// The run row of a run id, as a rollback reads it.
macro_rules! run_row_sql {
    () => {
        "SELECT status, agent_id, coalesce(agent_action, ''), coalesce(model_action, ''),
                recorded_at, coalesce(plugin_action, '')
           FROM orgctl.backfill_runs WHERE run_id = $1"
    };
}

/// The tenant's row for run $1 (a dry run).
const RUN_ROW_SQL: &str = run_row_sql!();

/// The tenant's row for run $1, locked for the rollback.
const RUN_ROW_LOCKED_SQL: &str = concat!(run_row_sql!(), " FOR UPDATE");

/// The same lock order as install: the agent ($2) and every root run $1 snapshotted, in id
/// order.
const LOCK_ROWS_SQL: &str = "SELECT id FROM workspaces
              WHERE id = $2 OR id IN (SELECT row_id FROM orgctl.backfill_rows WHERE run_id = $1 AND kind = 'root')
              ORDER BY id FOR UPDATE";

/// The oldest former root of run $1 that is live (a `removed` one only when every former root
/// is). `status::text`: older tenants have a TEXT status.
const OLDEST_FORMER_ROOT_SQL: &str =
    "SELECT w.id FROM orgctl.backfill_rows s JOIN workspaces w ON w.id = s.row_id
          WHERE s.run_id = $1 AND s.kind = 'root'
          ORDER BY w.status::text IS NOT DISTINCT FROM 'removed', w.created_at NULLS LAST, w.id
          LIMIT 1";

/// Run $1 rolled back: $2 whether forced, $3 the drift as JSON.
const MARK_ROLLED_BACK_SQL: &str = "UPDATE orgctl.backfill_runs
            SET status = 'rolled_back', rolled_back_at = now(), rollback_forced = $2,
                rollback_notes = $3::jsonb,
                -- The prior MODEL value (ciphertext, or plaintext for a version-0 row) is back
                -- in workspace_secrets now: keep no second copy of a secret.
                model_prior = NULL
          WHERE run_id = $1";

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
    pub fn line(&self) -> String {
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

    pub fn line(list: &[Referenced]) -> String {
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
    pub known_runs: Vec<KnownRun>,
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

/// What every tenant of a rollback shares.
pub struct Job {
    pub run_id: String,
    pub settings: Settings,
    /// The run's `--reason`, recorded on every tenant's audit row.
    pub who: crate::audit::Who,
    pub force: bool,
    pub dry_run: bool,
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

/// Roll back one tenant. Never returns an error: a failure is a `failed` result.
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
    if !backfill_tables_exist(&mut tx).await? {
        tx.rollback().await?;
        return Ok(TenantResult::new(t, Status::NothingToRollBack));
    }
    // Statistics are stale right after a run: keep every join of this transaction linear.
    verify::plan_proof(&mut tx, !job.dry_run).await?;
    let run = match run_row(&mut tx, job, t).await? {
        Ok(run) => run,
        Err(nothing_to_do) => return Ok(nothing_to_do),
    };
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
        db::query(LOCK_ROWS_SQL)
            .bind(&job.run_id)
            .bind(agent)
            .execute(&mut *tx)
            .await?;
    }
    let mut p = plan(&mut tx, job, t, agent, &run).await?;
    if refuse(&mut p, job, agent) || job.dry_run {
        return Ok(p.result);
    }
    let Planned {
        mut result,
        counts,
        oldest,
        ..
    } = p;
    if let Some(a) = restore(&mut tx, job, agent, &run, &counts, oldest).await? {
        result.agent = Some(a);
    }
    let verification = verify_restore(&mut tx, job, agent, &run).await?;
    let txid = crate::audit::record(
        &mut tx,
        &job.who,
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
    db::query(MARK_ROLLED_BACK_SQL)
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

/// The tenant's row for the run, when the run applied there (locked, unless a dry run); else
/// the tenant's result: nothing to roll back, or rolled back already.
async fn run_row(
    conn: &mut PgConnection,
    job: &Job,
    t: &Tenant,
) -> Result<std::result::Result<RunRow, TenantResult>> {
    let sql = if job.dry_run {
        RUN_ROW_SQL
    } else {
        RUN_ROW_LOCKED_SQL
    };
    let row = db::query(sql)
        .bind(&job.run_id)
        .fetch_optional(&mut *conn)
        .await?;
    let Some(row) = row else {
        let mut r = TenantResult::new(t, Status::NothingToRollBack);
        r.known_runs = known_runs(conn).await?;
        return Ok(Err(r));
    };
    let run = RunRow {
        status: row.try_get(0)?,
        agent_id: row.try_get(1)?,
        agent_action: row.try_get(2)?,
        model_action: row.try_get(3)?,
        at: row.try_get(4)?,
        plugin_action: row.try_get(5)?,
    };
    let status = match run.status.as_str() {
        "applied" => return Ok(Ok(run)),
        "rolled_back" => Status::AlreadyRolledBack,
        _ => Status::NothingToRollBack,
    };
    let mut r = TenantResult::new(t, status);
    r.knows_run = true;
    Ok(Err(r))
}

/// What a rollback of one tenant would do, before it does it.
struct Planned {
    /// The tenant's result as a dry run reports it.
    result: TenantResult,
    counts: Counts,
    /// The oldest live former root (a `removed` one only when every former root is), where
    /// --force puts new rows.
    oldest: Option<Uuid>,
    /// Drift findings of new rows with nowhere to go (no former root).
    blocking: usize,
    /// Name clashes the restore would cause (not even --force restores then).
    unresolvable: usize,
}

/// The snapshot's counts, the drift, the name clashes and the platform's references to a
/// created agent, with what --force does about each.
async fn plan(
    conn: &mut PgConnection,
    job: &Job,
    t: &Tenant,
    agent: Uuid,
    run: &RunRow,
) -> Result<Planned> {
    let counts = snapshot_counts(conn, &job.run_id).await?;
    let drift = find_drift(conn, &job.run_id, agent, run).await?;
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
    let oldest: Option<Uuid> = db::query_scalar(OLDEST_FORMER_ROOT_SQL)
        .bind(&job.run_id)
        .fetch_optional(&mut *conn)
        .await?;
    // Names the restore (or --force's move of new children) would duplicate under one parent:
    // not even --force goes on, since orgctl cannot choose which workspace to rename.
    let clashes = name_clashes(conn, &job.run_id, agent, oldest.filter(|_| job.force)).await?;
    let unresolvable = clashes.len();
    let blocking = result
        .drift
        .iter()
        .filter(|d| d.reason.starts_with("added") && oldest.is_none())
        .count();
    // A created agent that other tables' rows reference has lived: deleting it would fail
    // (plain keys) or take the platform's rows with it (CASCADE) or leave them dangling (SET
    // NULL). Refuse; with --force restore the rest and soft-delete it instead.
    if run.agent_action == "create" {
        let refs = other_references(conn, agent, run).await?;
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
    Ok(Planned {
        result,
        counts,
        oldest,
        blocking,
        unresolvable,
    })
}

/// Whether the plan is refused (its result then says why): a created agent that has lived
/// (without --force), or drift (without --force, or of a kind --force does not settle).
fn refuse(p: &mut Planned, job: &Job, agent: Uuid) -> bool {
    let result = &mut p.result;
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
        return true;
    }
    if !result.drift.is_empty() && (!job.force || p.blocking > 0 || p.unresolvable > 0) {
        let lines: Vec<String> = result.drift.iter().map(Drift::line).collect();
        let hint = if p.unresolvable > 0 {
            "the platform allows one live workspace per name under a parent and orgctl cannot choose which to rename, so not even --force restores this tenant: rename one workspace of each pair named, then rerun"
        } else if !job.force {
            "rerun with --force to restore anyway and move new rows to the oldest live former root"
        } else {
            debug_assert!(
                result.drift.iter().any(|d| d.reason.starts_with("added")) && p.oldest.is_none()
            );
            "the run re-parented no root, so new rows have nowhere to go: move or delete them first"
        };
        result.status = Status::Refused;
        result.error = Some(format!("drift since the run: {}; {hint}", lines.join("; ")));
        return true;
    }
    false
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
            "the restore did not verify against the snapshot: {}; rolled back, nothing was changed",
            lines.join("; ")
        )));
    }
    Ok(v)
}
