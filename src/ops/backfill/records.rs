//! The run records: each tenant's row of a run in its own `orgctl.backfill_runs` (the run
//! state `backfill status` reads and a resumed run skips), and the runs a tenant knows.

use sqlx::postgres::PgConnection;
use sqlx::Row;
use uuid::Uuid;

use crate::db::{self, Arg, DbUrl, Settings};
use crate::error::{Error, Result};
use crate::ops::install::Plan;

/// The static statements of the run records.
pub(crate) const STATEMENTS: &[(&str, &str)] = &[
    ("known runs", KNOWN_RUNS_SQL),
    ("prior run", PRIOR_RUN_SQL),
    ("run row", RUN_ROW_SQL),
    ("failure row", FAILURE_ROW_SQL),
];

/// Whether orgctl's backfill tables exist in this tenant (read-only commands never create them).
pub async fn backfill_tables_exist(conn: &mut PgConnection) -> Result<bool> {
    db::orgctl_table_readable(conn, "backfill_runs").await
}

/// A run a tenant has a row for: the answer to a run id that no selected tenant knows.
#[derive(Clone, Debug)]
pub struct KnownRun {
    pub run_id: String,
    pub at: chrono::DateTime<chrono::Utc>,
}

/// The newest run ids a tenant knows, with when each was recorded.
const KNOWN_RUNS_SQL: &str =
    "SELECT run_id, recorded_at FROM orgctl.backfill_runs ORDER BY recorded_at DESC, run_id LIMIT 10";

/// The runs this tenant knows, newest first (a handful: they go into one message).
pub async fn known_runs(conn: &mut PgConnection) -> Result<Vec<KnownRun>> {
    let rows = db::query(KNOWN_RUNS_SQL).fetch_all(&mut *conn).await?;
    rows.iter()
        .map(|r| {
            Ok(KnownRun {
                run_id: r.try_get(0)?,
                at: r.try_get(1)?,
            })
        })
        .collect()
}

/// The error for a run id that none of the selected tenants has a row for: a mistyped id must
/// not read as "nothing to do". Names the run ids the tenants do know, newest first.
pub fn unknown_run<'a>(run_id: &str, known: impl Iterator<Item = &'a KnownRun>) -> Error {
    let mut newest: std::collections::HashMap<&str, chrono::DateTime<chrono::Utc>> =
        std::collections::HashMap::new();
    for k in known {
        let at = newest.entry(k.run_id.as_str()).or_insert(k.at);
        *at = (*at).max(k.at);
    }
    let mut runs: Vec<(&str, chrono::DateTime<chrono::Utc>)> = newest.into_iter().collect();
    runs.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    const SHOWN: usize = 5;
    let known = if runs.is_empty() {
        "no selected tenant has any backfill run".to_string()
    } else {
        let mut list: Vec<String> = runs
            .iter()
            .take(SHOWN)
            .map(|(id, at)| {
                format!(
                    "{} ({})",
                    crate::error::sanitize(id),
                    at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                )
            })
            .collect();
        if runs.len() > SHOWN {
            list.push(format!("and {} more", runs.len() - SHOWN));
        }
        format!("the runs they know, newest first: {}", list.join(", "))
    };
    Error::failed(format!(
        "no selected tenant knows run id '{run_id}' (is it mistyped?); nothing was changed; {known}"
    ))
}

/// The tenant's row for this run, if any.
pub struct PriorRun {
    pub status: String,
    pub agent_id: Option<Uuid>,
}

impl PriorRun {
    /// Done under this run: resume does not touch it again (a failed tenant is retried).
    pub fn done(&self) -> bool {
        self.status != "failed"
    }
}

/// The tenant's row for a run id: its status and agent.
const PRIOR_RUN_SQL: &str = "SELECT status, agent_id FROM orgctl.backfill_runs WHERE run_id = $1";

/// `schema_ensured`: orgctl's schema was just created or checked on this connection, so the
/// table is there (one statement fewer per tenant).
pub async fn prior_run(
    conn: &mut PgConnection,
    run_id: &str,
    schema_ensured: bool,
) -> Result<Option<PriorRun>> {
    if !schema_ensured && !backfill_tables_exist(conn).await? {
        return Ok(None);
    }
    let row = db::query(PRIOR_RUN_SQL)
        .bind(run_id)
        .fetch_optional(&mut *conn)
        .await?;
    match row {
        None => Ok(None),
        Some(r) => Ok(Some(PriorRun {
            status: r.try_get(0)?,
            agent_id: r.try_get(1)?,
        })),
    }
}

/// The run-state row: binds $1 run id, $2 tenant, $3 status, $4 agent id, $5 agent action,
/// $6 model action, $7 the MODEL key, $8–$11 the counts, $12 plan hash, $13 OS user, $14 orgctl
/// version, $15 the declared plugin's action, $16 its name. Only a `failed` row of an earlier
/// attempt is overwritten.
pub const RUN_ROW_SQL: &str = "INSERT INTO orgctl.backfill_runs AS b
                (run_id, tenant, status, agent_id, agent_action, agent_prior, model_action,
                 model_prior, reparented, tokens_moved, allowlist_moved, allowlist_merged,
                 plan_hash, os_user, orgctl_version, plugin_action, plugin_prior)
         SELECT $1, $2, $3, $4, $5,
                (SELECT to_jsonb(w) FROM workspaces w WHERE w.id = $4),
                $6,
                (SELECT to_jsonb(s) FROM workspace_secrets s
                  WHERE s.workspace_id = $4 AND s.key = $7),
                $8, $9, $10, $11, $12, $13, $14, $15,
                (SELECT to_jsonb(p) FROM workspace_declared_plugins p
                  WHERE p.workspace_id = $4 AND p.plugin_name = $16)
         ON CONFLICT (run_id) DO UPDATE
            SET tenant = EXCLUDED.tenant, status = EXCLUDED.status,
                agent_id = EXCLUDED.agent_id, agent_action = EXCLUDED.agent_action,
                agent_prior = EXCLUDED.agent_prior, model_action = EXCLUDED.model_action,
                model_prior = EXCLUDED.model_prior, reparented = EXCLUDED.reparented,
                tokens_moved = EXCLUDED.tokens_moved,
                allowlist_moved = EXCLUDED.allowlist_moved,
                allowlist_merged = EXCLUDED.allowlist_merged, plan_hash = EXCLUDED.plan_hash,
                error = NULL, recorded_at = now(), os_user = EXCLUDED.os_user,
                orgctl_version = EXCLUDED.orgctl_version,
                plugin_action = EXCLUDED.plugin_action, plugin_prior = EXCLUDED.plugin_prior
          WHERE b.status = 'failed'";

/// The values of [`RUN_ROW_SQL`]'s $1–$16, in order.
pub fn run_row_args<'a>(
    run_id: &'a str,
    tenant: &'a str,
    status: &'a str,
    plan: &Plan,
) -> Vec<Arg<'a>> {
    vec![
        Arg::Text(run_id),
        Arg::Text(tenant),
        Arg::Text(status),
        Arg::Uuid(plan.agent.id),
        Arg::Text(plan.agent.action.as_str()),
        Arg::Text(plan.model.as_str()),
        Arg::Text(crate::platform::MODEL_KEY),
        Arg::I32(i32::try_from(plan.reparented.len()).unwrap_or(i32::MAX)),
        Arg::I64(plan.tokens_moved()),
        Arg::I64(plan.allowlist_moved()),
        Arg::I32(i32::try_from(plan.merged.len()).unwrap_or(i32::MAX)),
        Arg::TextOwned(plan.hash()),
        Arg::TextOwned(crate::sys::os_user()),
        Arg::Text(env!("CARGO_PKG_VERSION")),
        Arg::Text(plan.plugin.as_str()),
        Arg::Text(crate::platform::agent::MCP_PLUGIN),
    ]
}

/// The run-state row alone (a tenant with nothing to do).
pub async fn record_run(
    conn: &mut PgConnection,
    run_id: &str,
    tenant: &str,
    status: &str,
    plan: &Plan,
) -> Result<()> {
    let mut b = db::Binds::default();
    for a in run_row_args(run_id, tenant, status, plan) {
        b.arg(a);
    }
    let r = b
        .bind_to(db::query(RUN_ROW_SQL))
        .execute(&mut *conn)
        .await?;
    db::ensure_rows("the run-state row", r.rows_affected(), 1)
}

/// A failed attempt's run row: binds $1 run id, $2 tenant, $3 the error, $4 OS user, $5 orgctl
/// version. Never over a row that is not `failed`.
const FAILURE_ROW_SQL: &str =
    "INSERT INTO orgctl.backfill_runs AS b (run_id, tenant, status, error, os_user, orgctl_version)
         VALUES ($1, $2, 'failed', $3, $4, $5)
         ON CONFLICT (run_id) DO UPDATE
            SET error = EXCLUDED.error, recorded_at = now(), tenant = EXCLUDED.tenant
          WHERE b.status = 'failed'";

/// Remember a failure in the tenant's own tables (never over a row that is not `failed`). Its
/// own transaction: the change itself rolled back, and with it orgctl's schema when the change
/// was to create it, so the schema is created here for the row — on a tenant whose schema is
/// compatible only (an incompatible tenant is left untouched: `backfill status` says
/// `never_reached`).
pub async fn record_failure(
    conn: &mut PgConnection,
    url: &DbUrl,
    settings: &Settings,
    run_id: &str,
    tenant: &str,
    error: &str,
) -> Result<()> {
    db::ensure_compatible(conn).await?;
    db::ensure_orgctl_schema(conn, url, settings).await?;
    let mut tx = db::begin_write(conn, settings).await?;
    db::query(FAILURE_ROW_SQL)
        .bind(run_id)
        .bind(tenant)
        .bind(error)
        .bind(crate::sys::os_user())
        .bind(env!("CARGO_PKG_VERSION"))
        .execute(&mut *tx)
        .await?;
    db::commit_best_effort(tx, "the tenant's failure record").await
}
