//! A run over the fleet: the canary tenants alone first, then the rest, and the run's report.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::{tenant, Job, Status, TenantResult};
use crate::ops::backfill::{for_each, Cancel, Committing, Slot, Tenant, TenantLine};

/// Install on every selected tenant, at most `concurrency` at once, in list order; `on_done` is
/// called as each finishes (for progress). With a canary (`canary` tenants; none in a dry run)
/// the first tenants run alone first, and any failure among them leaves the rest not started.
/// Returns every tenant's result, in list order, and whether a failed canary stopped the run.
pub async fn run_fleet(
    job: Arc<Job>,
    selected: &[Tenant],
    concurrency: usize,
    canary: Option<u32>,
    cancel: &Cancel,
    mut on_done: impl FnMut(&TenantResult, usize),
) -> (Vec<TenantResult>, bool) {
    let work = |t: Tenant, c: Committing| tenant(job.clone(), t, c);
    let canary = if job.dry_run {
        0
    } else {
        canary.map(|n| n as usize).unwrap_or(0).min(selected.len())
    };
    let mut slots = Vec::new();
    let mut canary_stopped = false;
    if canary > 0 {
        slots = for_each(&selected[..canary], concurrency, cancel, work, &mut on_done).await;
        canary_stopped = slots.iter().any(|s| match s {
            Slot::Done(r) => r.status == Status::Failed,
            Slot::Abandoned(_) | Slot::Panicked(_) => true,
            Slot::NotStarted => false,
        });
    }
    if canary_stopped {
        slots.extend(selected[canary..].iter().map(|_| Slot::NotStarted));
    } else {
        let rest = for_each(&selected[canary..], concurrency, cancel, work, &mut on_done).await;
        slots.extend(rest);
    }
    let results = slots
        .into_iter()
        .zip(selected.iter())
        .map(|(s, t)| s.into_line(t))
        .collect();
    (results, canary_stopped)
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

#[derive(Serialize)]
pub struct Totals {
    pub tenants: usize,
    pub applied: usize,
    pub skipped: usize,
    pub failed: usize,
    pub pending: usize,
    pub not_started: usize,
    pub reparented: i64,
    pub tokens_moved: i64,
    pub allowlist_moved: i64,
    pub allowlist_merged: i64,
    /// Tenants whose agent --provision did not bring to life (request refused, failed, deadline).
    pub provision_failed: usize,
}

/// The run's report (`--report FILE`, and stdout with `--output json`).
#[derive(Serialize)]
pub struct Report {
    pub run_id: String,
    pub dry_run: bool,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    pub shard: Option<String>,
    pub concurrency: u32,
    pub canary: Option<u32>,
    /// A canary tenant failed, so the rest were not started.
    pub canary_stopped: bool,
    /// Ctrl-C stopped the run before every tenant was started.
    pub interrupted: bool,
    pub totals: Totals,
    pub tenants: Vec<TenantResult>,
}

/// The last line of a JSON Lines report: the report without its tenants.
#[derive(Serialize)]
pub struct Summary<'a> {
    dry_run: bool,
    started_at: DateTime<Utc>,
    finished_at: DateTime<Utc>,
    shard: &'a Option<String>,
    concurrency: u32,
    canary: Option<u32>,
    canary_stopped: bool,
    interrupted: bool,
    totals: &'a Totals,
}

impl<'a> Summary<'a> {
    pub fn of(r: &'a Report) -> Self {
        Summary {
            dry_run: r.dry_run,
            started_at: r.started_at,
            finished_at: r.finished_at,
            shard: &r.shard,
            concurrency: r.concurrency,
            canary: r.canary,
            canary_stopped: r.canary_stopped,
            interrupted: r.interrupted,
            totals: &r.totals,
        }
    }
}

pub fn totals(results: &[TenantResult]) -> Totals {
    let count = |s: Status| results.iter().filter(|r| r.status == s).count();
    let applied: Vec<&TenantResult> = results
        .iter()
        .filter(|r| matches!(r.status, Status::Applied | Status::Pending))
        .collect();
    Totals {
        tenants: results.len(),
        applied: count(Status::Applied),
        skipped: count(Status::Skipped),
        failed: count(Status::Failed),
        pending: count(Status::Pending),
        not_started: count(Status::NotStarted),
        reparented: applied.iter().map(|r| r.reparented).sum(),
        tokens_moved: applied.iter().map(|r| r.tokens_moved).sum(),
        allowlist_moved: applied.iter().map(|r| r.allowlist_moved).sum(),
        allowlist_merged: applied.iter().map(|r| r.allowlist_merged).sum(),
        provision_failed: results
            .iter()
            .filter(|r| r.provision_error.is_some())
            .count(),
    }
}
