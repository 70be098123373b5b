//! A rollback over the fleet, and its report.

use std::sync::Arc;

use serde::Serialize;

use super::{tenant, Job, Status, TenantResult};
use crate::error::Result;
use crate::ops::backfill::{for_each, unknown_run, Cancel, Committing, Tenant, TenantLine};

/// The rollback's report (`--output json`).
#[derive(Serialize)]
pub struct Report {
    pub run_id: String,
    pub dry_run: bool,
    pub force: bool,
    pub interrupted: bool,
    pub tenants: Vec<TenantResult>,
}

/// Roll back every selected tenant, four at once, in list order; `on_done` is called as each
/// finishes (for progress). Every tenant read and none with a row for the run is an error
/// naming the runs they know: most likely a mistyped run id, which must not read as "nothing
/// to roll back".
pub async fn roll_back_fleet(
    job: Arc<Job>,
    selected: &[Tenant],
    cancel: &Cancel,
    on_done: impl FnMut(&TenantResult, usize),
) -> Result<Report> {
    let work = |t: Tenant, c: Committing| tenant(job.clone(), t, c);
    let slots = for_each(selected, 4, cancel, work, on_done).await;
    let tenants: Vec<TenantResult> = slots
        .into_iter()
        .zip(selected.iter())
        .map(|(s, t)| s.into_line(t))
        .collect();
    if !cancel.stopping()
        && !tenants.is_empty()
        && tenants
            .iter()
            .all(|r| r.status == Status::NothingToRollBack && !r.knows_run)
    {
        return Err(unknown_run(
            &job.run_id,
            tenants.iter().flat_map(|r| r.known_runs.iter()),
        ));
    }
    Ok(Report {
        run_id: job.run_id.clone(),
        dry_run: job.dry_run,
        force: job.force,
        interrupted: cancel.stopping(),
        tenants,
    })
}

impl TenantLine for TenantResult {
    fn not_started(t: &Tenant) -> Self {
        TenantResult::new(t, Status::NotStarted)
    }

    fn failed(t: &Tenant, error: String, duration_ms: u64) -> Self {
        let mut r = TenantResult::new(t, Status::Failed);
        r.error = Some(error);
        r.duration_ms = duration_ms;
        r
    }
}
