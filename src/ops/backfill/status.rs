//! `backfill status`: each tenant's state under a run, from the tenant's own `orgctl` tables.
//! Read-only: a read-only transaction, no lock, and orgctl's schema is never created.

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{Connection, Row};

use crate::db::{self, Settings};
use crate::error::{Error, Result};
use crate::ops::backfill::{
    backfill_tables_exist, clean, for_each, known_runs, unknown_run, Cancel, Committing, KnownRun,
    Shard, Slot, Tenant,
};

/// The static statements of the status.
pub(crate) const STATEMENTS: &[(&str, &str)] = &[("run row status", STATUS_SQL)];

/// A tenant's row for a run: what `backfill status` shows.
const STATUS_SQL: &str =
    "SELECT status, coalesce(rolled_back_at, recorded_at), agent_id, reparented,
                tokens_moved, allowlist_moved, error
           FROM orgctl.backfill_runs WHERE run_id = $1";

#[derive(Clone, Debug, Serialize)]
pub struct TenantStatus {
    pub tenant: String,
    pub database: String,
    /// applied, skipped, failed, rolled_back, never_reached, or unknown (could not read it).
    pub status: String,
    pub at: Option<DateTime<Utc>>,
    pub agent_id: Option<uuid::Uuid>,
    pub reparented: i64,
    pub tokens_moved: i64,
    pub allowlist_moved: i64,
    pub error: Option<String>,
    /// Whether the tenant has a row for the run (a tenant that never saw it is never_reached).
    #[serde(skip)]
    pub knows_run: bool,
    /// The runs the tenant does know, when it does not know this one.
    #[serde(skip)]
    pub known_runs: Vec<KnownRun>,
}

impl TenantStatus {
    fn new(t: &Tenant, status: &str) -> Self {
        TenantStatus {
            tenant: t.name.clone(),
            database: t.database(),
            status: status.to_string(),
            at: None,
            agent_id: None,
            reparented: 0,
            tokens_moved: 0,
            allowlist_moved: 0,
            error: None,
            knows_run: false,
            known_runs: Vec::new(),
        }
    }
}

async fn tenant(run_id: Arc<String>, settings: Arc<Settings>, t: Tenant) -> TenantStatus {
    match read(&run_id, &settings, &t).await {
        Ok(s) => s,
        Err(e) => {
            let mut s = TenantStatus::new(&t, "unknown");
            s.error = Some(clean(&e));
            s
        }
    }
}

async fn read(run_id: &str, settings: &Settings, t: &Tenant) -> Result<TenantStatus> {
    let mut conn = db::connect(&t.url, settings).await?;
    let mut tx = db::begin_read_only(&mut conn, settings).await?;
    if !backfill_tables_exist(&mut tx).await? {
        return Ok(TenantStatus::new(t, "never_reached"));
    }
    let row = db::query(STATUS_SQL)
        .bind(run_id)
        .fetch_optional(&mut *tx)
        .await?;
    let Some(row) = row else {
        let mut s = TenantStatus::new(t, "never_reached");
        s.known_runs = known_runs(&mut tx).await?;
        tx.rollback().await?;
        let _ = conn.close().await;
        return Ok(s);
    };
    tx.rollback().await?;
    let _ = conn.close().await;
    let status: String = row.try_get(0)?;
    let mut s = TenantStatus::new(t, &status);
    s.knows_run = true;
    s.at = row.try_get(1)?;
    s.agent_id = row.try_get(2)?;
    s.reparented = i64::from(row.try_get::<i32, _>(3)?);
    s.tokens_moved = row.try_get(4)?;
    s.allowlist_moved = row.try_get(5)?;
    s.error = row.try_get(6)?;
    Ok(s)
}

/// Every selected tenant's state under a run (`--output json`).
#[derive(Serialize)]
pub struct Report {
    pub run_id: String,
    pub shard: Option<String>,
    /// Tenants per status (applied, skipped, failed, rolled_back, never_reached, unknown),
    /// every status present with 0 when none, and `tenants`: how many were read.
    pub totals: BTreeMap<&'static str, usize>,
    pub tenants: Vec<TenantStatus>,
}

const STATUSES: [&str; 6] = [
    "applied",
    "skipped",
    "failed",
    "rolled_back",
    "never_reached",
    "unknown",
];

/// Read every tenant's state under `run_id`, eight at once. Ctrl-C is exit 130 (nothing is
/// reported); a run id that no selected tenant knows (every tenant read) is an error naming the
/// runs they know.
pub async fn read_fleet(
    run_id: &str,
    settings: &Settings,
    tenants: &[Tenant],
    shard: Option<Shard>,
    cancel: &Cancel,
) -> Result<Report> {
    let run = Arc::new(run_id.to_string());
    let settings = Arc::new(settings.clone());
    let work = |t: Tenant, _c: Committing| tenant(run.clone(), settings.clone(), t);
    let slots = for_each(tenants, 8, cancel, work, |_, _| {}).await;
    if cancel.stopping() {
        return Err(Error::interrupted());
    }
    let statuses: Vec<TenantStatus> = slots
        .into_iter()
        .zip(tenants.iter())
        .map(|(s, t)| match s {
            Slot::Done(r) => r,
            _ => TenantStatus::new(t, "unknown"),
        })
        .collect();
    // Every tenant read and none has a row for the run: most likely a mistyped run id.
    if !statuses.is_empty()
        && statuses.iter().all(|s| s.status != "unknown")
        && !statuses.iter().any(|s| s.knows_run)
    {
        return Err(unknown_run(
            run_id,
            statuses.iter().flat_map(|s| s.known_runs.iter()),
        ));
    }
    let mut totals: BTreeMap<&'static str, usize> = STATUSES.iter().map(|s| (*s, 0)).collect();
    totals.insert("tenants", statuses.len());
    for s in &statuses {
        if let Some(k) = STATUSES.iter().find(|k| **k == s.status) {
            *totals.entry(k).or_default() += 1;
        }
    }
    Ok(Report {
        run_id: run_id.to_string(),
        shard: shard.map(|s| s.to_string()),
        totals,
        tenants: statuses,
    })
}

/// `--check`: every selected tenant is applied or skipped under the run, else exit 1 naming the
/// others by status (a few names each: the table has them all).
pub fn check(report: &Report) -> Result<()> {
    let mut not_done: std::collections::BTreeMap<&str, Vec<&str>> =
        std::collections::BTreeMap::new();
    for s in &report.tenants {
        if s.status != "applied" && s.status != "skipped" {
            not_done.entry(&s.status).or_default().push(&s.tenant);
        }
    }
    if not_done.is_empty() {
        return Ok(());
    }
    const NAMED: usize = 5;
    let n: usize = not_done.values().map(Vec::len).sum();
    let parts: Vec<String> = not_done
        .iter()
        .map(|(status, names)| {
            let mut shown: Vec<String> = names
                .iter()
                .take(NAMED)
                .map(|n| crate::error::sanitize(n))
                .collect();
            if names.len() > NAMED {
                shown.push(format!("and {} more", names.len() - NAMED));
            }
            format!("{} {status} ({})", names.len(), shown.join(", "))
        })
        .collect();
    Err(Error::failed(format!(
        "--check: {n} of {} tenant(s) are not applied or skipped under run {}: {}",
        report.tenants.len(),
        report.run_id,
        parts.join(", ")
    )))
}
