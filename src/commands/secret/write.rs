//! The flow `set` and `delete` share: check every input before touching the database (the
//! subcommand's own file does), plan with read-only queries (what the write does and which
//! workspaces it would restart); `--dry-run` stops there. Otherwise show and confirm, then in
//! ONE transaction under the tenant lock: re-check the target (and the MODEL gate), write with
//! one upsert or delete, append the audit row, commit. Only after the commit is the restart
//! plan computed again — from the committed state — and dispatched.

use sqlx::postgres::PgConnection;

use super::outcome::Outcome;
use super::{named_ids, ts};
use crate::db;
use crate::error::{Error, Exit, Result};
use crate::ops::secret::{self, Action, Change, Op, Phase, Reviewed, Scope};
use crate::output::Output;
use crate::platform::restart::{Platform, RestartPlan};
use crate::platform::MODEL_OVERRIDE_KEY;
use crate::Context;

/// A checked `set` or `delete`: the change, and how to run it.
pub(super) struct Request<'a> {
    pub(super) change: Change<'a>,
    pub(super) dry_run: bool,
    pub(super) platform: Option<Platform>,
}

/// plan → show → confirm → lock → re-check → write → audit → commit → restart plan from the
/// committed state → dispatch and record → report.
pub(super) async fn change(ctx: &Context, url: &db::DbUrl, req: Request<'_>) -> Result<Exit> {
    let out = &ctx.out;
    let (scope, key) = (req.change.scope, req.change.key);
    let mut conn = crate::commands::connect_to(ctx, url).await?;

    // 1. Plan read-only: one snapshot, no locks, no writes.
    let reviewed = review(ctx, &mut conn, &req.change).await?;
    let action = reviewed.action(&req.change.op);
    let mut outcome = Outcome {
        scope,
        key,
        target_name: reviewed.target.as_ref().map(|t| t.name.as_str()),
        action,
        encryption_version: reviewed.encryption_version(&req.change.op),
        restart: if action.changes() {
            reviewed.restart.clone()
        } else {
            RestartPlan::default()
        },
        dispatched: Vec::new(),
        dry_run: req.dry_run,
        no_restart: req.change.no_restart,
        plan_only: req.platform.is_none(),
    };
    let gate = match &req.change.op {
        Op::Delete { force } if action.changes() => {
            model_gate(out, scope, key, reviewed.target_is_platform(), *force)
        }
        _ => Ok(()),
    };
    if req.dry_run {
        outcome.render(out)?;
        outcome.notes(out, true);
        gate?;
        return Ok(Exit::Ok);
    }
    gate?;
    if !action.changes() {
        outcome.render(out)?;
        return Ok(Exit::Ok);
    }

    // 2. Show and confirm (no locks held while a human reads).
    let asked = confirm(ctx, url, &outcome, &reviewed)?;

    // 3. Apply in one transaction under the tenant lock: re-check, write, audit, commit.
    let target_is_platform = reviewed.target_is_platform();
    let applied = apply(
        ctx,
        &mut conn,
        url,
        &req,
        &mut outcome,
        target_is_platform,
        asked,
    )
    .await?;
    let Some(applied) = applied else {
        return Ok(Exit::Ok);
    };
    let command = req.change.command();
    // The value is zeroed as soon as it is written.
    drop(req.change.op);

    // 4. After the commit: the restart plan from the committed state, then dispatch.
    let phase = Phase {
        trigger: command,
        who: &ctx.who,
        scope,
        key,
        platform: req.platform.as_ref(),
    };
    let committed = format!("the {} was {}", scope.describe(key), applied.as_str());
    restart_after_commit(
        ctx,
        &mut conn,
        url,
        &phase,
        req.change.no_restart,
        &committed,
        &mut outcome,
    )
    .await
}

/// Step 1: the read-only plan, and the MODEL warnings when the change writes MODEL on the
/// platform agent.
async fn review(ctx: &Context, conn: &mut PgConnection, change: &Change<'_>) -> Result<Reviewed> {
    let reviewed = {
        let mut tx = db::begin_read_only(conn, &ctx.settings).await?;
        let reviewed = secret::plan(&mut tx, change).await?;
        tx.rollback().await?;
        reviewed
    };
    if change.model_on_agent(reviewed.target_is_platform()) {
        // The platform validates a model only when it sets it (install-platform-agent
        // --provision --model); written here it is unchecked until the agent's next start.
        ctx.out.warn(
            "MODEL is written straight to the database: the platform has not validated it for the agent's runtime, and it applies at the agent's next provision (`orgctl install-platform-agent --provision --model …` has the platform validate and set it)",
        );
        if let Some(place) = &reviewed.outranked {
            ctx.out.warn(&format!(
                "a {MODEL_OVERRIDE_KEY} secret is set {place}: it outranks MODEL, so the agent will not run this model",
            ));
        }
    }
    Ok(reviewed)
}

/// The MODEL gate, its warning printed when `--force` passes it.
fn model_gate(out: &Output, scope: Scope, key: &str, is_platform: bool, force: bool) -> Result<()> {
    if let Some(warning) = secret::model_gate(scope, key, is_platform, force)? {
        out.warn(&warning);
    }
    Ok(())
}

/// Step 2: show the plan to a human and ask; returns whether a human was asked (then what
/// gets applied must be exactly what they confirmed).
fn confirm(
    ctx: &Context,
    url: &db::DbUrl,
    outcome: &Outcome<'_>,
    reviewed: &Reviewed,
) -> Result<bool> {
    let out = &ctx.out;
    let (scope, key) = (outcome.scope, outcome.key);
    let asked = !ctx.yes;
    if asked && out.interactive() {
        crate::output::stderr(&crate::output::review_text(&outcome.text(out, true)));
        outcome.notes(out, true);
    }
    let question = match outcome.action {
        Action::Created => format!("Create the {}?", scope.describe(key)),
        Action::Updated => format!(
            "Replace the {} (last updated {})?",
            scope.describe(key),
            ts(reviewed.existing.as_ref().and_then(|e| e.updated_at))
        ),
        _ => format!("Delete the {}?", scope.describe(key)),
    };
    out.confirm(&format!("{question} ({})", url.target()), ctx.yes)?;
    Ok(asked)
}

/// Step 3: in one transaction under the tenant lock, re-check the target, write, audit and
/// commit. Returns what was applied, or `None` when the secret was deleted concurrently (the
/// report is printed, nothing is left to do).
async fn apply(
    ctx: &Context,
    conn: &mut PgConnection,
    url: &db::DbUrl,
    req: &Request<'_>,
    outcome: &mut Outcome<'_>,
    target_is_platform: bool,
    asked: bool,
) -> Result<Option<Action>> {
    let out = &ctx.out;
    let change = &req.change;
    let reviewed_action = outcome.action;
    let mut tx = db::begin_change(conn, url, &ctx.settings).await?;
    let is_platform = secret::lock_target(&mut tx, change.scope).await?;
    if let (Some(is_platform), Op::Delete { force }) = (is_platform, &change.op) {
        if is_platform && !target_is_platform {
            model_gate(out, change.scope, change.key, true, *force)?;
        }
    }
    let written = secret::write(&mut tx, change).await?;
    if let Some(v) = written.encryption_version {
        outcome.encryption_version = Some(v);
    }
    if written.action == Action::NotFound {
        tx.rollback().await?;
        out.info("The secret was deleted concurrently; nothing to do.");
        outcome.action = Action::NotFound;
        outcome.restart = RestartPlan::default();
        outcome.render(out)?;
        return Ok(None);
    }
    if asked && written.action != reviewed_action {
        // What a human confirmed is exactly what gets applied.
        tx.rollback().await?;
        return Err(Error::refused(format!(
            "the secret changed while you were reading (it would be {} now, not {}); nothing was changed: rerun",
            written.action.as_str(),
            reviewed_action.as_str()
        )));
    }
    outcome.action = written.action;
    let audit = secret::audit_args(change, &written, req.platform.is_some());
    let txid = crate::audit::record(&mut tx, &ctx.who, change.command(), &audit, "applied").await?;
    let committed =
        db::commit_guarded(tx, url, &ctx.settings, &crate::audit::AuditRow(txid)).await?;
    if let Some(note) = committed.note() {
        out.info(note);
    }
    // After a verified lost COMMIT the old connection is gone: carry on with the new one.
    committed.reconnected(conn);
    Ok(Some(written.action))
}

/// Step 4: after the commit, the restart plan from the committed state, the calls and their
/// audit rows, the report; an error names the workspaces that were not restarted.
/// `committed` says what was committed, for the errors.
async fn restart_after_commit(
    ctx: &Context,
    conn: &mut PgConnection,
    url: &db::DbUrl,
    phase: &Phase<'_>,
    no_restart: bool,
    committed: &str,
    outcome: &mut Outcome<'_>,
) -> Result<Exit> {
    let out = &ctx.out;
    // In a read-only transaction of its own: outside one, a transaction pooler may run a
    // statement's Parse and its Bind on two different server connections.
    let plan = async {
        let mut tx = db::begin_read_only(conn, &ctx.settings).await?;
        let p = secret::restart_plan(&mut tx, phase.scope, phase.key, no_restart).await?;
        tx.rollback().await?;
        Ok::<_, Error>(p)
    };
    outcome.restart = match plan.await {
        Ok(p) => p,
        Err(e) => {
            outcome.restart = RestartPlan::default();
            outcome.render(out)?;
            return Err(Error::failed(format!(
                "{committed}, but the workspaces to restart could not be determined ({}); restart the affected workspaces by hand",
                e.message
            )));
        }
    };
    let (dispatched, recorded) =
        secret::dispatch_and_record(out, conn, url, &ctx.settings, phase, &outcome.restart).await;
    outcome.dispatched = dispatched;
    outcome.render(out)?;
    outcome.notes(out, false);
    recorded.map_err(|e| {
        Error::failed(format!(
            "{committed} and its restarts are reported above, but they could not be recorded in orgctl.audit_log: {}",
            e.message
        ))
    })?;
    let failed = outcome.failed();
    if failed.is_empty() {
        return Ok(Exit::Ok);
    }
    // Calls never made (deadline, repeated failures, Ctrl-C) are named apart from failed ones.
    let not_attempted = outcome
        .dispatched
        .iter()
        .filter(|d| {
            d.error
                .as_deref()
                .is_some_and(|e| e.starts_with("not attempted"))
        })
        .count();
    let never = if not_attempted > 0 {
        format!(" ({not_attempted} of them not attempted)")
    } else {
        String::new()
    };
    Err(Error::failed(format!(
        "{committed}, but {} workspace(s) were not restarted{never}: {}; restart them by hand (the output lists each error)",
        failed.len(),
        named_ids(&failed)
    )))
}
