//! `orgctl backfill run`: install-platform-agent on every selected tenant of a tenants file,
//! then the summary table (or JSON), the report files and the exit code.

use std::collections::HashSet;
use std::sync::Arc;

use chrono::Utc;
use zeroize::Zeroizing;

use super::jsonl::{self, Jsonl};
use super::report_file::write_report;
use super::shard;
use crate::cli::BackfillRunArgs;
use crate::error::{Error, Exit, Result};
use crate::ops::backfill::apply::{
    run_fleet, taking_run_org_id, totals, Job, ProvisionJob, Report, Status, Summary, TenantResult,
};
use crate::ops::backfill::{check_run_id, new_run_id, tenants, Cancel, Shard, Tenant};
use crate::ops::install::InstallInput;
use crate::output::duration::human_ms;
use crate::platform::keys::SecretBox;
use crate::platform::provision;
use crate::Context;

/// The run's checked input: what the arguments and the tenants file say, before any prompt.
struct Checked {
    shard: Option<Shard>,
    run_id: String,
    sb: SecretBox,
    selected: Vec<Tenant>,
    /// orgctl writes MODEL itself on some tenant: one not provisioned through its platform.
    direct_model: bool,
    org_id: Option<String>,
}

pub async fn run(ctx: &Context, args: &BackfillRunArgs, cancel: &Cancel) -> Result<Exit> {
    let checked = check(ctx, args).await?;
    announce(ctx, args, &checked)?;
    if cancel.stopping() {
        return Err(Error::new(
            Exit::Interrupted,
            "interrupted before any tenant was started; nothing was changed",
        ));
    }
    if checked.direct_model {
        ctx.out.warn(
            "MODEL is written straight to the database on tenants not provisioned through their platform (no --provision, or no platform URL): the platform has not validated it for the agents' runtime, and it applies at each agent's next provision",
        );
        if let Some(w) = checked.sb.plaintext_warning("the agents' MODEL secret") {
            ctx.out.warn(&w);
        }
    }
    let Checked {
        shard,
        run_id,
        sb,
        selected,
        org_id,
        ..
    } = checked;
    let job = Arc::new(job(ctx, args, cancel, &run_id, sb, org_id));
    let started_at = Utc::now();
    let (results, canary_stopped, jsonl) =
        run_tenants(ctx, args, cancel, job, &selected, &run_id).await?;
    let report = Report {
        run_id,
        dry_run: args.dry_run,
        started_at,
        finished_at: Utc::now(),
        shard: shard.map(|s| s.to_string()),
        concurrency: args.concurrency,
        canary: args.canary,
        canary_stopped,
        interrupted: cancel.stopping(),
        totals: totals(&results),
        tenants: results,
    };
    // The report is written even when stdout fails: it is the record of what was committed.
    let rendered = render(ctx, &report);
    write_reports(args, &report, jsonl)?;
    rendered.map_err(|e| after_commits(e, report.totals.applied + report.totals.skipped))?;
    exit_of(ctx, args, &report)
}

/// The arguments and the tenants file checked once, before any tenant: a bad value is one
/// usage error, not a failure per tenant.
async fn check(ctx: &Context, args: &BackfillRunArgs) -> Result<Checked> {
    let shard = shard(&args.shard)?;
    let run_id = match &args.run_id {
        Some(id) => {
            check_run_id(id)?;
            id.clone()
        }
        None => new_run_id(),
    };
    // Checked once up front, so a bad --model is a usage error and not N failed tenants.
    let _ = InstallInput::new(None, None, args.model.as_deref(), args.allow_missing_model)?;
    let sb = SecretBox::from_env();
    let all = tenants::read(&args.tenants).await?;
    let selected: Vec<Tenant> = Shard::select(shard, all);
    // Tenants where orgctl writes MODEL itself: those not provisioned through their platform.
    let direct_model = args.model.is_some()
        && !(args.provision && selected.iter().all(|t| t.platform_url.is_some()));
    if direct_model {
        // The key too: an invalid key (exit 2) or production without one (exit 3) refuses the
        // run before any tenant, and plaintext is said once, not per tenant.
        sb.write_version()?;
    }
    // The run's identity, checked once (a bad --org-id is a usage error, not N failures).
    let org_id = args
        .org_id
        .as_deref()
        .map(|o| crate::platform::agent::check_org_id(o, "--org-id (or MOLECULE_ORG_ID)"))
        .transpose()?;
    crate::platform::agent::identity(
        org_id.clone(),
        args.self_hosted,
        "--org-id (or MOLECULE_ORG_ID)",
    )?;
    // --provision: the admin token is needed before anything changes, when any selected tenant
    // has a platform URL to call (a tenant without one is reported skipped, not failed).
    if args.provision && !args.dry_run {
        match selected.iter().find_map(|t| t.platform_url.as_deref()) {
            Some(url) => {
                provision::platform_for(Some(url))?;
            }
            None => ctx.out.warn(
                "--provision: no selected tenant line has a platform URL (third field); every provision will be skipped",
            ),
        }
    }
    Ok(Checked {
        shard,
        run_id,
        sb,
        selected,
        direct_model,
        org_id,
    })
}

/// The run id first, then what the run will do, and the confirmation (not for a dry run).
fn announce(ctx: &Context, args: &BackfillRunArgs, c: &Checked) -> Result<()> {
    let out = &ctx.out;
    let run_id = &c.run_id;
    // The run id comes first, so an operator can resume or roll back whatever happens next.
    crate::output::stderr(&format!("run id: {run_id}\n"));
    if c.org_id.is_some() {
        let taking = taking_run_org_id(&c.selected);
        if taking.len() > 1 {
            out.warn(&format!(
                "{} tenants take the org id of --org-id (or MOLECULE_ORG_ID), but every org has its own: a tenant without a platform agent gets an agent id meant for another org; give each line its org_id=ID ({}{})",
                taking.len(),
                taking.iter().take(5).copied().collect::<Vec<_>>().join(", "),
                if taking.len() > 5 { ", …" } else { "" }
            ));
        }
    }
    let what = format!(
        "{} tenant(s){}, concurrency {}{}",
        c.selected.len(),
        c.shard.map(|s| format!(" (shard {s})")).unwrap_or_default(),
        args.concurrency,
        args.canary
            .map(|n| format!(", canary {n}"))
            .unwrap_or_default()
    );
    if args.dry_run {
        out.info(&format!("Dry run on {what}: planning read-only."));
        return Ok(());
    }
    out.info(&format!(
        "Installing the platform agent on {what}{}.",
        if args.model.is_some() {
            ", seeding MODEL"
        } else {
            ""
        }
    ));
    out.confirm(
        &format!("Install the platform agent on {what} (run {run_id})?"),
        ctx.yes,
    )
}

/// What every tenant's task shares.
fn job(
    ctx: &Context,
    args: &BackfillRunArgs,
    cancel: &Cancel,
    run_id: &str,
    sb: SecretBox,
    org_id: Option<String>,
) -> Job {
    Job {
        run_id: run_id.to_string(),
        settings: ctx.settings.clone(),
        who: ctx.who.clone(),
        model: args.model.as_deref().map(|m| Zeroizing::new(m.to_string())),
        allow_missing_model: args.allow_missing_model,
        replace_model: args.replace_model,
        sb,
        dry_run: args.dry_run,
        org_id,
        self_hosted: args.self_hosted,
        provision: args.provision.then(|| ProvisionJob {
            wait: provision::Wait::from_arg(args.wait),
            cancel: cancel.clone(),
            // Per-tenant messages and spinners would fight the progress bar: the summary and
            // the report carry each tenant's provision result instead.
            out: crate::output::Output::new(ctx.out.format, true, 0),
        }),
    }
}

/// A JSON Lines report as the run goes: its file, and the tenants already written to it.
type Written = Option<(Jsonl, HashSet<String>)>;

/// Every selected tenant, with the progress bar, a warning per failed tenant and (with a
/// `.jsonl` report) a line per tenant as it finishes. Returns the results, whether a failed
/// canary stopped the run, and the JSON Lines report still to finish.
async fn run_tenants(
    ctx: &Context,
    args: &BackfillRunArgs,
    cancel: &Cancel,
    job: Arc<Job>,
    selected: &[Tenant],
    run_id: &str,
) -> Result<(Vec<TenantResult>, bool, Written)> {
    let out = &ctx.out;
    let pb = out.progress(selected.len() as u64, "tenants");
    let (mut ok, mut failed) = (0usize, 0usize);
    // --report FILE.jsonl: one line per tenant as it finishes (see jsonl).
    let mut jsonl = match &args.report {
        Some(p) if jsonl::wanted(p) => Some(Jsonl::create(p)?),
        _ => None,
    };
    let mut written = HashSet::new();
    let on_done = |r: &TenantResult, in_flight: usize| {
        if let Some(j) = jsonl.as_mut() {
            j.line("tenant", run_id, r);
            written.insert(r.tenant.clone());
        }
        if r.status == Status::Failed {
            failed += 1;
            let warn = || {
                out.warn(&format!(
                    "{}: {}",
                    r.tenant,
                    r.error.as_deref().unwrap_or("")
                ))
            };
            if !pb.is_hidden() {
                pb.suspend(warn);
            } else {
                warn();
            }
        } else {
            ok += 1;
            out.detail(&format!(
                "{}: {} in {}",
                r.tenant,
                r.status.as_str(),
                human_ms(r.duration_ms)
            ));
        }
        pb.inc(1);
        pb.set_message(crate::output::fleet_progress(ok, failed, in_flight));
    };
    let concurrency = args.concurrency as usize;
    let (results, canary_stopped) =
        run_fleet(job, selected, concurrency, args.canary, cancel, on_done).await;
    if canary_stopped {
        out.warn("a canary tenant failed: the rest of the run was not started");
    }
    pb.finish_and_clear();
    Ok((results, canary_stopped, jsonl.map(|j| (j, written))))
}

/// `--report FILE`: the JSON Lines report finished (the tenants that never finished, then the
/// summary line), or the JSON report written whole.
fn write_reports(args: &BackfillRunArgs, report: &Report, jsonl: Written) -> Result<()> {
    if let Some((mut j, written)) = jsonl {
        // The tenants that never finished (not started, abandoned, panicked), then the summary.
        for r in report
            .tenants
            .iter()
            .filter(|r| !written.contains(&r.tenant))
        {
            j.line("tenant", &report.run_id, r);
        }
        j.line("summary", &report.run_id, &Summary::of(report));
        j.finish()?;
    }
    if let Some(path) = args.report.as_ref().filter(|p| !jsonl::wanted(p)) {
        write_report(path, report)?;
    }
    Ok(())
}

/// The exit code, or the error that says what did not go through.
fn exit_of(ctx: &Context, args: &BackfillRunArgs, report: &Report) -> Result<Exit> {
    let t = &report.totals;
    let run_id = &report.run_id;
    let in_doubt = report.tenants.iter().filter(|r| r.in_doubt).count();
    if report.interrupted {
        return Err(Error::new(
            Exit::Interrupted,
            if args.dry_run {
                format!(
                    "interrupted: {} tenant(s) were not planned (dry run: nothing was changed)",
                    t.not_started
                )
            } else {
                format!(
                    "interrupted: {} tenant(s) were not started; in-flight tenants finished or rolled back; resume with --run-id {run_id}",
                    t.not_started
                )
            },
        ));
    }
    if args.dry_run && t.failed > 0 {
        // Nothing ran, so nothing "rolled back".
        return Err(Error::failed(format!(
            "{} of {} tenant(s) could not be planned (see the summary); dry run: nothing was changed",
            t.failed, t.tenants
        )));
    }
    if t.failed > 0 || t.not_started > 0 {
        if t.provision_failed > 0 {
            ctx.out.warn(&format!(
                "{} committed tenant(s) did not get a running agent (see the provision column)",
                t.provision_failed
            ));
        }
        return Err(Error::failed(format!(
            "{} of {} tenant(s) failed{}; {}: fix and rerun with --run-id {run_id} to resume",
            t.failed,
            t.tenants,
            if report.canary_stopped {
                format!(" (canary: {} not started)", t.not_started)
            } else {
                String::new()
            },
            if in_doubt > 0 {
                format!("{in_doubt} of them may have been committed (their COMMIT's answer was lost: check them with `orgctl backfill status --run-id {run_id}`), the others changed nothing")
            } else {
                "a failed tenant is left as it was".to_string()
            }
        )));
    }
    if t.provision_failed > 0 {
        let names: Vec<&str> = report
            .tenants
            .iter()
            .filter(|r| r.provision_error.is_some())
            .map(|r| r.tenant.as_str())
            .collect();
        return Err(Error::failed(format!(
            "{} tenant(s) are installed and committed, but their agent did not come to life ({}): see the provision column, fix, and rerun with --run-id {run_id} --provision",
            t.provision_failed,
            names.join(", ")
        )));
    }
    if args.dry_run && args.detailed_exitcode && t.pending > 0 {
        return Ok(Exit::Pending);
    }
    Ok(Exit::Ok)
}

/// A failure to print the summary after tenants committed: say so (exit 1).
fn after_commits(e: Error, committed: usize) -> Error {
    if committed == 0 {
        return e;
    }
    Error::failed(format!(
        "{committed} tenant(s) were committed (applied or recorded skipped), but the summary could not be printed: {}",
        e.message
    ))
}

/// The summary: the report as JSON, or a table and a line of totals.
fn render(ctx: &Context, report: &Report) -> Result<()> {
    let out = &ctx.out;
    if out.json_mode() {
        return out.json(report);
    }
    let provisioning = report.tenants.iter().any(|r| r.provision.is_some());
    let mut header = vec![
        "tenant",
        "status",
        "re-parented",
        "tokens moved",
        "allowlist moved",
        "duration",
        // A failed tenant's error, or a skipped one's note ("applied under this run already").
        "error / note",
    ];
    if provisioning {
        header.push("provision");
    }
    let mut table = out.new_table(header);
    for r in &report.tenants {
        let detail = r
            .error
            .clone()
            .or_else(|| r.note.clone())
            .unwrap_or_default();
        let mut row = vec![
            crate::error::sanitize(&r.tenant),
            r.status.as_str().to_string(),
            r.reparented.to_string(),
            r.tokens_moved.to_string(),
            r.allowlist_moved.to_string(),
            if r.status == Status::NotStarted {
                "-".into()
            } else {
                human_ms(r.duration_ms)
            },
            detail,
        ];
        if provisioning {
            row.push(match (&r.provision, &r.provision_error) {
                (Some(p), Some(e)) => format!("{}: {e}", p.short(Some(&Error::failed(e.as_str())))),
                (Some(p), None) => p.short(None),
                (None, _) => "-".into(),
            });
        }
        table.add_row(row);
    }
    let t = &report.totals;
    let mut s = format!("{}\n", out.render_table(&table));
    s.push_str(&format!(
        "Run {}{}: {} tenant(s): {} applied, {} skipped, {} failed{}{}; {} root(s) re-parented, {} token(s) and {} allowlist row(s) moved, {} merged.\n",
        report.run_id,
        if report.dry_run { " (dry run, nothing was changed)" } else { "" },
        t.tenants,
        t.applied,
        t.skipped,
        t.failed,
        if report.dry_run { format!(", {} pending", t.pending) } else { String::new() },
        if t.not_started > 0 { format!(", {} not started", t.not_started) } else { String::new() },
        t.reparented,
        t.tokens_moved,
        t.allowlist_moved,
        t.allowlist_merged,
    ));
    out.stdout(&s)
}
