//! `orgctl backfill rollback`: restore the selected tenants to the state a run snapshotted,
//! then the summary table (or JSON) and the exit code.

use std::sync::Arc;

use super::shard;
use crate::cli::BackfillRollbackArgs;
use crate::error::{Error, Exit, Result};
use crate::ops::backfill::rollback::{roll_back_fleet, Drift, Job, Referenced, Report, Status};
use crate::ops::backfill::{check_run_id, tenants, Cancel, Shard, Tenant};
use crate::output::duration::human_ms;
use crate::Context;

pub async fn run(ctx: &Context, args: &BackfillRollbackArgs, cancel: &Cancel) -> Result<Exit> {
    let out = &ctx.out;
    check_run_id(&args.run_id)?;
    let selected = select(args).await?;
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
        who: ctx.who.clone(),
        force: args.force,
        dry_run: args.dry_run,
    });
    let pb = out.progress(selected.len() as u64, "tenants");
    let (mut done, mut failed) = (0usize, 0usize);
    let report = roll_back_fleet(job, &selected, cancel, |r, in_flight| {
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
    let report = report?;
    render(ctx, args, &report)?;
    exit_of(args, &report)
}

/// The tenants of the file in this shard, or only those named by --tenant (each must be there).
async fn select(args: &BackfillRollbackArgs) -> Result<Vec<Tenant>> {
    let shard = shard(&args.shard)?;
    let all = Shard::select(shard, tenants::read(&args.tenants).await?);
    Ok(if args.tenant.is_empty() {
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
    })
}

/// The report as JSON, or a table and a line saying what the counts are.
fn render(ctx: &Context, args: &BackfillRollbackArgs, report: &Report) -> Result<()> {
    let out = &ctx.out;
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
        out.json(report).map_err(committed)?;
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
            "{}\n{}\n",
            out.render_table(&table),
            if args.dry_run {
                "Dry run: nothing was changed."
            } else {
                "Counts are the snapshot's rows restored per tenant."
            }
        ))
        .map_err(committed)?;
    }
    Ok(())
}

/// The exit code, or the error that says which tenants did not roll back.
fn exit_of(args: &BackfillRollbackArgs, report: &Report) -> Result<Exit> {
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
