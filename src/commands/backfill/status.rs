//! `orgctl backfill status`: each tenant's state under a run, as a table or JSON; with
//! `--check`, a gate for CI.

use super::shard;
use crate::cli::BackfillStatusArgs;
use crate::error::{Error, Exit, Result};
use crate::ops::backfill::status::{check, read_fleet, Report};
use crate::ops::backfill::{check_run_id, tenants, Cancel, Shard};
use crate::Context;

pub async fn run(ctx: &Context, args: &BackfillStatusArgs, cancel: &Cancel) -> Result<Exit> {
    check_run_id(&args.run_id)?;
    let shard = shard(&args.shard)?;
    let tenants = Shard::select(shard, tenants::read(&args.tenants).await?);
    let report = read_fleet(&args.run_id, &ctx.settings, &tenants, shard, cancel).await?;
    render(ctx, &report)?;
    let unknown = report
        .tenants
        .iter()
        .filter(|s| s.status == "unknown")
        .count();
    if unknown > 0 {
        return Err(Error::failed(format!(
            "could not read {unknown} tenant(s); see the summary"
        )));
    }
    if args.check {
        check(&report)?;
    }
    Ok(Exit::Ok)
}

/// The report as JSON, or a table and a line of counts per status.
fn render(ctx: &Context, report: &Report) -> Result<()> {
    let out = &ctx.out;
    if out.json_mode() {
        out.json(report)?;
    } else {
        let mut table = out.new_table([
            "tenant",
            "status",
            "at",
            "re-parented",
            "tokens moved",
            "allowlist moved",
            "error",
        ]);
        for s in &report.tenants {
            table.add_row(vec![
                crate::error::sanitize(&s.tenant),
                s.status.clone(),
                s.at.map(|a| a.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
                    .unwrap_or_else(|| "-".into()),
                s.reparented.to_string(),
                s.tokens_moved.to_string(),
                s.allowlist_moved.to_string(),
                s.error
                    .as_deref()
                    .map(crate::error::sanitize)
                    .unwrap_or_default(),
            ]);
        }
        let mut summary = std::collections::BTreeMap::<&str, usize>::new();
        for s in &report.tenants {
            *summary.entry(s.status.as_str()).or_default() += 1;
        }
        let parts: Vec<String> = summary.iter().map(|(k, v)| format!("{v} {k}")).collect();
        out.stdout(&format!(
            "{}\nRun {}: {}.\n",
            out.render_table(&table),
            report.run_id,
            parts.join(", ")
        ))?;
    }
    Ok(())
}
