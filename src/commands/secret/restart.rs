//! `orgctl secret restart (WORKSPACE_ID | --global) KEY`: replay the restart phase of a change
//! without touching the value. The plan comes from the current state under the same guard and
//! rules as `set`; by default only the workspaces the audit log does not record as restarted
//! since orgctl last changed the key are called (a failed, interrupted or never-sent restart),
//! `--all` calls every eligible one. No tenant lock: nothing of the tenant is written, and the
//! outcome rows are serialised by the audit chain's head.

use super::outcome::Outcome;
use super::{named_ids, parse_scope};
use crate::cli::SecretRestartArgs;
use crate::db;
use crate::error::{Error, Exit, Result};
use crate::ops::secret::{self, Action, Phase};
use crate::platform::restart::Platform;
use crate::Context;

/// plan (read-only) → show → confirm → dispatch and record → report.
pub(super) async fn run(ctx: &Context, args: &SecretRestartArgs) -> Result<Exit> {
    let out = &ctx.out;
    let (scope, key) = parse_scope(args.scope.global, &args.positional)?;
    let url = ctx.url()?;
    let platform = Platform::resolve(args.platform.platform_url.as_deref(), !args.dry_run)?;
    let mut conn = crate::commands::connect_to(ctx, &url).await?;

    let state = {
        let mut tx = db::begin_read_only(&mut conn, &ctx.settings).await?;
        let state = secret::read_replay(&mut tx, scope, &key).await?;
        tx.rollback().await?;
        state
    };
    let secret::Replay {
        target,
        existing,
        plan,
    } = state.replay(scope, &key, args.all)?;
    let mut outcome = Outcome {
        scope,
        key: &key,
        target_name: target.as_ref().map(|t| t.name.as_str()),
        action: Action::Restart,
        encryption_version: existing.as_ref().map(|e| e.version),
        restart: plan,
        dispatched: Vec::new(),
        dry_run: args.dry_run,
        no_restart: false,
        plan_only: platform.is_none(),
    };
    let Some(platform) = platform.filter(|_| !args.dry_run) else {
        // A dry run, or no platform URL: the plan is the report (as for set).
        outcome.render(out)?;
        outcome.notes(out, args.dry_run);
        return Ok(Exit::Ok);
    };
    if outcome.restart.planned.is_empty() {
        outcome.render(out)?;
        outcome.notes(out, false);
        out.info("Nothing to restart: every eligible workspace is recorded as restarted since the last change (--all restarts them again).");
        return Ok(Exit::Ok);
    }
    if !ctx.yes && out.interactive() {
        crate::output::stderr(&crate::output::review_text(&outcome.text(out, true)));
        outcome.notes(out, true);
    }
    out.confirm(
        &format!(
            "Restart {} workspace(s) for the {} ({})?",
            outcome.restart.planned.len(),
            scope.describe(&key),
            url.target()
        ),
        ctx.yes,
    )?;
    let phase = Phase {
        trigger: "secret restart",
        who: &ctx.who,
        scope,
        key: &key,
        platform: Some(&platform),
    };
    let (dispatched, recorded) = secret::dispatch_and_record(
        out,
        &mut conn,
        &url,
        &ctx.settings,
        &phase,
        &outcome.restart,
    )
    .await;
    outcome.dispatched = dispatched;
    outcome.render(out)?;
    outcome.notes(out, false);
    recorded.map_err(|e| {
        Error::failed(format!(
            "the restarts are reported above, but they could not be recorded in orgctl.audit_log: {}",
            e.message
        ))
    })?;
    let failed = outcome.failed();
    if failed.is_empty() {
        return Ok(Exit::Ok);
    }
    Err(Error::failed(format!(
        "{} workspace(s) were not restarted: {}; rerun `orgctl secret restart` to retry exactly those (the output lists each error)",
        failed.len(),
        named_ids(&failed)
    )))
}
