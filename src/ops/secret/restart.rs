//! The restart phase of a secret change, as data and as calls: which workspaces a change
//! restarts (the platform-root guard and the platform's own restart rules live in
//! [`crate::platform::restart`]), the calls in recorded batches, one audit row per workspace,
//! and what `secret restart` still owes since orgctl last changed the key.

use std::collections::HashSet;

use sqlx::postgres::PgConnection;
use uuid::Uuid;

use super::change::{existing_row, Existing};
use super::scope::Scope;
use crate::db;
use crate::error::{Error, Result};
use crate::output::Output;
use crate::platform::restart::{
    self, DispatchOutcome, Dispatched, Platform, RestartPlan, SkipReason, TargetRow,
};

/// The audit command of a per-workspace restart row.
pub const RESTART_COMMAND: &str = "restart";

/// Restart calls per recorded batch: each batch's outcomes are committed to the audit log
/// before the next batch is called, so a run killed mid-phase leaves a record of every restart
/// it finished, and `secret restart` replays only what is still owed (at most one batch is
/// restarted twice). Four waves of the call concurrency.
pub const RESTART_RECORD_BATCH: usize = 32;

/// Whether orgctl's audit log exists.
pub(super) const AUDIT_LOG_EXISTS_SQL: &str = "SELECT to_regclass('orgctl.audit_log') IS NOT NULL";
/// The last applied `secret set`/`secret delete` of a key (`$1` scope, `$2` key, `$3` the
/// workspace id as text or NULL).
pub(super) const LAST_CHANGE_SQL: &str = "SELECT max(id) FROM orgctl.audit_log
          WHERE command IN ('secret set', 'secret delete') AND outcome = 'applied'
            AND args->>'scope' = $1 AND args->>'key' = $2
            AND (args->>'workspace_id') IS NOT DISTINCT FROM $3";
/// The workspaces recorded as restarted for a key after audit row `$5` (`$1` the restart
/// command, `$2` scope, `$3` key, `$4` the secret's workspace id as text or NULL).
pub(super) const RESTARTED_SINCE_SQL: &str =
    "SELECT DISTINCT args->>'workspace_id' FROM orgctl.audit_log
          WHERE command = $1 AND outcome = 'restarted'
            AND args->>'scope' = $2 AND args->>'key' = $3
            AND (args->>'secret_workspace_id') IS NOT DISTINCT FROM $4
            AND id > $5";

/// The restart plan of a change to `scope`/`key`, from the state `conn` sees.
pub async fn restart_plan(
    conn: &mut PgConnection,
    scope: Scope,
    key: &str,
    no_restart: bool,
) -> Result<RestartPlan> {
    match scope {
        Scope::Workspace(id) => Ok(restart::plan_workspace(conn, id, no_restart).await),
        Scope::Global => restart::plan_global(conn, key, no_restart).await,
    }
}

/// One restart phase: the secret it is for, the command that caused it, where the calls go
/// (none: nothing is called, the plan is recorded as not sent), and the run's `--reason` its
/// audit rows record.
#[derive(Clone, Copy)]
pub struct Phase<'a> {
    pub trigger: &'a str,
    pub who: &'a crate::audit::Who,
    pub scope: Scope,
    pub key: &'a str,
    pub platform: Option<&'a Platform>,
}

/// The restart calls, then the 404s checked against the tenant: "gone" only when the tenant
/// has the workspace removed or no longer has it; else the 404 is a failure (a wrong platform
/// URL answers 404 for every workspace).
async fn dispatch(
    out: &Output,
    conn: &mut PgConnection,
    settings: &db::Settings,
    platform: &Platform,
    ids: &[Uuid],
) -> Vec<Dispatched> {
    let mut results = restart::dispatch(out, platform, ids).await;
    if results.iter().any(|d| d.outcome == DispatchOutcome::Gone) {
        // Short and after the commit, like the calls: a Ctrl-C waits for it, so the outcomes
        // are still reported and recorded. A read-only transaction of its own (a transaction
        // pooler needs one per statement).
        let _guard = crate::interrupt::CommitGuard::enter();
        let checked = async {
            let mut tx = db::begin_read_only(conn, settings).await?;
            restart::confirm_gone(&mut tx, &mut results).await?;
            tx.rollback().await?;
            Ok::<_, Error>(())
        };
        if let Err(e) = checked.await {
            restart::unconfirmed_gone(&mut results, &e.message);
        }
    }
    results
}

/// One audit row per workspace of a restart phase: each dispatch with the platform's answer
/// (`restarted`, `noop`, `gone` or `failed`; a call never made is `failed` with its reason),
/// each planned workspace that was not called (`not-sent`: no platform URL) and each workspace
/// the guard or `--no-restart` skipped (`skipped`), so "which workspaces were never restarted"
/// can be answered from the log later. `trigger` is the command that caused the phase.
pub fn restart_entries(
    trigger: &str,
    scope: Scope,
    key: &str,
    plan: &RestartPlan,
    dispatched: &[Dispatched],
) -> Vec<crate::audit::AuditEntry> {
    let results: std::collections::HashMap<Uuid, &Dispatched> =
        dispatched.iter().map(|d| (d.id, d)).collect();
    let entry = |id: Uuid,
                 outcome: &str,
                 http: Option<u16>,
                 error: Option<&str>,
                 skip: Option<SkipReason>| {
        crate::audit::AuditEntry {
            command: RESTART_COMMAND.to_string(),
            args: serde_json::json!({
                "workspace_id": id,
                "trigger": trigger,
                "scope": scope.as_str(),
                "secret_workspace_id": scope.workspace_id(),
                "key": key,
                "http_status": http,
                "error": error,
                "skip_reason": skip.map(SkipReason::as_str),
            }),
            outcome: outcome.to_string(),
            txid: None,
        }
    };
    let mut rows = Vec::with_capacity(plan.planned.len() + plan.skipped.len());
    for t in &plan.planned {
        rows.push(match results.get(&t.id) {
            Some(d) => {
                let outcome = match d.outcome {
                    DispatchOutcome::NotAttempted => DispatchOutcome::Failed,
                    o => o,
                };
                entry(
                    t.id,
                    outcome.as_str(),
                    d.http_status,
                    d.error.as_deref(),
                    None,
                )
            }
            None => entry(t.id, "not-sent", None, Some("no platform URL"), None),
        });
    }
    // An already-restarted workspace has its row from the restart that succeeded.
    for k in plan
        .skipped
        .iter()
        .filter(|k| k.reason != SkipReason::AlreadyRestarted)
    {
        rows.push(entry(
            k.id,
            "skipped",
            None,
            k.detail.as_deref(),
            Some(k.reason),
        ));
    }
    rows
}

/// Dispatch the planned restarts of `plan` (with the phase's platform; none without one) in
/// batches of [`RESTART_RECORD_BATCH`], recording each batch's outcomes as it completes, then
/// the skipped and unsent workspaces. Returns the outcomes of the calls, and whether everything
/// could be recorded (the first failure stops further records, never the calls).
pub async fn dispatch_and_record(
    out: &Output,
    conn: &mut PgConnection,
    url: &db::DbUrl,
    settings: &db::Settings,
    phase: &Phase<'_>,
    plan: &RestartPlan,
) -> (Vec<Dispatched>, Result<()>) {
    let mut recorded: Result<()> = Ok(());
    let mut dispatched = Vec::new();
    let planned = plan.planned.clone();
    if let Some(platform) = phase.platform {
        // Why the calls stopped (interrupted, or the platform refused too many in a row): the
        // later batches are not called either, and say so.
        let mut stopped: Option<String> = None;
        for batch in planned.chunks(RESTART_RECORD_BATCH) {
            let ids: Vec<Uuid> = batch.iter().map(|t| t.id).collect();
            if stopped.is_none() && *crate::interrupt::level().borrow() > 0 {
                stopped = Some("not called: interrupted".into());
            }
            let results: Vec<Dispatched> = match &stopped {
                Some(why) => ids
                    .iter()
                    .map(|id| {
                        Dispatched::new(*id, DispatchOutcome::NotAttempted, Some(why.clone()), None)
                    })
                    .collect(),
                None => dispatch(out, conn, settings, platform, &ids).await,
            };
            if stopped.is_none() {
                stopped = results
                    .iter()
                    .find(|d| d.outcome == DispatchOutcome::NotAttempted)
                    .map(|d| d.error.clone().unwrap_or_else(|| "not called".into()));
            }
            let batch_plan = RestartPlan {
                planned: batch.to_vec(),
                skipped: Vec::new(),
            };
            if recorded.is_ok() {
                recorded = record_restarts(conn, url, settings, phase, &batch_plan, &results).await;
            }
            dispatched.extend(results);
        }
    }
    // The workspaces not called (the guard's skips; without a platform, the whole plan).
    let rest = RestartPlan {
        planned: if phase.platform.is_some() {
            Vec::new()
        } else {
            planned
        },
        skipped: plan.skipped.clone(),
    };
    if recorded.is_ok() {
        recorded = record_restarts(conn, url, settings, phase, &rest, &[]).await;
    }
    (dispatched, recorded)
}

/// Append the restart rows of a finished batch ([`restart_entries`]) after the commit; nothing
/// to write is no write. Marked like a COMMIT, so a Ctrl-C waits for it (it is short) instead
/// of losing the record.
async fn record_restarts(
    conn: &mut PgConnection,
    url: &db::DbUrl,
    settings: &db::Settings,
    phase: &Phase<'_>,
    plan: &RestartPlan,
    dispatched: &[Dispatched],
) -> Result<()> {
    let entries = restart_entries(phase.trigger, phase.scope, phase.key, plan, dispatched);
    if entries.is_empty() {
        return Ok(());
    }
    let _guard = crate::interrupt::CommitGuard::enter();
    crate::audit::record_after_commit(conn, phase.who, url, settings, &entries).await
}

/// What `secret restart` read in its snapshot: the target, the row, the restart plan of the
/// current state, and the audit log's record of the key.
pub struct ReplayState {
    target: Option<TargetRow>,
    existing: Option<Existing>,
    plan: RestartPlan,
    /// Workspaces recorded as restarted since orgctl last changed the key.
    done: HashSet<Uuid>,
    /// Whether orgctl changed the key at all.
    changed: bool,
}

/// The replay `secret restart` performs: the target, the row (if it still exists) and the
/// workspaces to call, with those not called among the skips.
pub struct Replay {
    pub target: Option<TargetRow>,
    pub existing: Option<Existing>,
    pub plan: RestartPlan,
}

/// Read what a replay of the restarts of `scope`/`key` needs, in the caller's read-only
/// transaction: the plan comes from the current state under the same guard and rules as `set`.
pub async fn read_replay(conn: &mut PgConnection, scope: Scope, key: &str) -> Result<ReplayState> {
    let target = super::change::target_of(conn, scope).await?;
    let existing = existing_row(conn, scope, key).await?;
    let plan = restart_plan(conn, scope, key, false).await?;
    let (done, changed) = restarted_since_change(conn, scope, key).await?;
    Ok(ReplayState {
        target,
        existing,
        plan,
        done,
        changed,
    })
}

impl ReplayState {
    /// The replay: by default only the workspaces the audit log does not record as restarted
    /// since orgctl last changed the key (a failed, interrupted or never-sent restart); `all`
    /// calls every eligible one. Refused when the key does not exist and orgctl never changed
    /// it: there is nothing to replay.
    pub fn replay(self, scope: Scope, key: &str, all: bool) -> Result<Replay> {
        let ReplayState {
            target,
            existing,
            mut plan,
            done,
            changed,
        } = self;
        if existing.is_none() && !changed {
            return Err(Error::failed(format!(
                "the {} does not exist and orgctl has no record of changing it, so there are no restarts to replay: check the key and the scope",
                scope.describe(key)
            )));
        }
        if !all {
            let (owed, already): (Vec<restart::Target>, Vec<restart::Target>) = plan
                .planned
                .into_iter()
                .partition(|t| !done.contains(&t.id));
            plan.planned = owed;
            plan.skipped
                .extend(already.into_iter().map(|t| restart::Skip {
                    id: t.id,
                    name: t.name,
                    reason: SkipReason::AlreadyRestarted,
                    detail: None,
                }));
        }
        Ok(Replay {
            target,
            existing,
            plan,
        })
    }
}

/// The workspaces whose restart for this secret the audit log records as successful since
/// orgctl last changed it, and whether orgctl changed it at all. Read in the caller's
/// (read-only) transaction; empty when orgctl's log does not exist.
async fn restarted_since_change(
    conn: &mut PgConnection,
    scope: Scope,
    key: &str,
) -> Result<(HashSet<Uuid>, bool)> {
    let log: bool = db::query_scalar(AUDIT_LOG_EXISTS_SQL)
        .fetch_one(&mut *conn)
        .await?;
    if !log {
        return Ok((Default::default(), false));
    }
    let scope_ws = scope.workspace_id().map(|u| u.to_string());
    let changed: Option<i64> = db::query_scalar(LAST_CHANGE_SQL)
        .bind(scope.as_str())
        .bind(key)
        .bind(&scope_ws)
        .fetch_one(&mut *conn)
        .await?;
    let done: Vec<String> = db::query_scalar(RESTARTED_SINCE_SQL)
        .bind(RESTART_COMMAND)
        .bind(scope.as_str())
        .bind(key)
        .bind(&scope_ws)
        .bind(changed.unwrap_or(0))
        .fetch_all(&mut *conn)
        .await?;
    Ok((
        done.iter()
            .filter_map(|s| Uuid::parse_str(s).ok())
            .collect(),
        changed.is_some(),
    ))
}
