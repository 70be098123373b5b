//! `orgctl status`: the org's invariants at a glance, and a CI gate. The checks are
//! [`crate::ops::status`]'s; this reads them in one read-only snapshot, renders the report (a
//! table, or one JSON document) and exits 1 when any invariant is broken.

use std::fmt::Write as _;

use crate::cli::StatusArgs;
use crate::db;
use crate::error::{sanitize, Exit, Result};
use crate::ops::status::{self, Report, Severity};
use crate::output::Output;
use crate::Context;

pub async fn run(ctx: &Context, args: &StatusArgs) -> Result<Exit> {
    let url = ctx.url()?;
    let mut conn = super::connect_to(ctx, &url).await?;
    let report = {
        let mut tx = db::begin_read_only(&mut conn, &ctx.settings).await?;
        let r = status::collect(&mut tx, i64::from(args.limit), url.target()).await?;
        tx.rollback().await?;
        r
    };
    if !report.orgctl_readable {
        ctx.out.warn(
            "orgctl's own state (schema orgctl) is not readable by this role: the checks leave out the former roots it records; grant USAGE ON SCHEMA orgctl and SELECT on its tables for a complete report",
        );
    }
    render(&ctx.out, &report, args.limit as usize)?;
    let failed = report.failed();
    if failed.is_empty() {
        Ok(Exit::Ok)
    } else {
        ctx.out.info(&format!(
            "status: {} invariant(s) broken: {}",
            failed.len(),
            failed.iter().map(|c| c.name).collect::<Vec<_>>().join(", ")
        ));
        Ok(Exit::Failed)
    }
}

pub fn render(out: &Output, report: &Report, limit: usize) -> Result<()> {
    if out.json_mode() {
        return out.json(report);
    }
    out.stdout(&render_text(out, report, limit))
}

fn render_text(out: &Output, r: &Report, limit: usize) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "Tenant: {}", sanitize(&r.tenant));
    roots(&mut s, out, r);
    platform_agent(&mut s, r);
    tokens(&mut s, out, r);
    secrets(&mut s, out, r);
    checks(&mut s, out, r);
    findings(&mut s, out, r, limit);
    install_would(&mut s, r);
    verdict(&mut s, r);
    s
}

/// The roots, at most --limit of them.
fn roots(s: &mut String, out: &Output, r: &Report) {
    let _ = writeln!(s, "\nRoots ({}):", r.roots.count);
    if r.roots.rows.is_empty() {
        let _ = writeln!(s, "  none");
    } else {
        let mut t = out.new_table(["id", "name", "status", "kind", "tier"]);
        for root in &r.roots.rows {
            t.add_row(vec![
                root.id.to_string(),
                sanitize(&root.name),
                sanitize(root.status.as_deref().unwrap_or("-")),
                sanitize(root.kind.as_deref().unwrap_or("workspace")),
                root.tier
                    .map(|t| t.to_string())
                    .unwrap_or_else(|| "-".into()),
            ]);
        }
        let _ = writeln!(s, "{}", out.render_table(&t));
        let rest = r.roots.count - r.roots.rows.len() as i64;
        if rest > 0 {
            let _ = writeln!(s, "… and {rest} more");
        }
    }
}

/// The platform agent, or how many candidates there are.
fn platform_agent(s: &mut String, r: &Report) {
    match &r.platform_agent {
        Some(a) => {
            let _ = writeln!(
                s,
                "\nPlatform agent: {} \"{}\" — status {}, tier {}, {}, MODEL {}",
                a.id,
                sanitize(&a.name),
                sanitize(a.status.as_deref().unwrap_or("-")),
                a.tier.map(|t| t.to_string()).unwrap_or_else(|| "-".into()),
                match a.parent_id {
                    None => "root".to_string(),
                    Some(p) => format!("under {p}"),
                },
                if a.model { "present" } else { "missing" }
            );
        }
        None => {
            let n = r
                .checks
                .iter()
                .find(|c| c.name == "unique_platform_agent")
                .map(|c| c.count)
                .unwrap_or(0);
            if n > 1 {
                let _ = writeln!(s, "\nPlatform agent: {n} candidates (see below)");
            } else {
                let _ = writeln!(s, "\nPlatform agent: none");
            }
        }
    }
}

/// Tokens by anchor state.
fn tokens(s: &mut String, out: &Output, r: &Report) {
    let _ = writeln!(s, "\nTokens by anchor:");
    let mut t = out.new_table(["anchor", "live", "expired", "revoked"]);
    for (label, c) in [
        ("on a root", r.tokens.on_root),
        ("unanchored", r.tokens.unanchored),
        ("on a non-root", r.tokens.on_non_root),
        ("on a former root", r.tokens.on_former_root),
    ] {
        t.add_row(vec![
            label.to_string(),
            c.live.to_string(),
            c.expired.to_string(),
            c.revoked.to_string(),
        ]);
    }
    let _ = writeln!(s, "{}", out.render_table(&t));
}

/// Secret rows by encryption version.
fn secrets(s: &mut String, out: &Output, r: &Report) {
    let _ = writeln!(s, "\nSecrets by encryption version:");
    let mut t = out.new_table(["table", "version", "rows"]);
    for c in &r.secrets {
        t.add_row(vec![
            c.table.to_string(),
            match c.encryption_version {
                0 => "0 (plaintext)".to_string(),
                1 => "1 (AES-256-GCM)".to_string(),
                v => format!("{v} (unknown)"),
            },
            c.rows.to_string(),
        ]);
    }
    let _ = writeln!(s, "{}", out.render_table(&t));
}

/// Every check with its result, then the command that fixes each broken one.
fn checks(s: &mut String, out: &Output, r: &Report) {
    let _ = writeln!(s, "\nChecks:");
    let mut t = out.new_table(["check", "result", "count", "message"]);
    for c in &r.checks {
        t.add_row(vec![
            c.name.to_string(),
            match (c.ok, c.severity) {
                (true, _) => "ok".to_string(),
                (false, Severity::Error) => "FAIL".to_string(),
                (false, Severity::Warning) => "warn".to_string(),
            },
            c.count.to_string(),
            c.message.clone(),
        ]);
    }
    let _ = writeln!(s, "{}", out.render_table(&t));
    let fixes: Vec<(&str, &str)> = r
        .checks
        .iter()
        .filter(|c| !c.ok)
        .filter_map(|c| c.fix.as_deref().map(|f| (c.name, f)))
        .collect();
    if !fixes.is_empty() {
        let _ = writeln!(s, "\nTo fix:");
        let mut t = out.new_table(["check", "command"]);
        for (name, fix) in fixes {
            t.add_row(vec![name.to_string(), fix.to_string()]);
        }
        let _ = writeln!(s, "{}", out.render_table(&t));
    }
}

/// The rows each broken check names.
fn findings(s: &mut String, out: &Output, r: &Report, limit: usize) {
    for c in r.checks.iter().filter(|c| !c.ok && !c.rows.is_empty()) {
        let _ = writeln!(s, "\n{} ({}):", c.name, c.count);
        let mut t = out.new_table(["table", "id", "detail"]);
        for f in &c.rows {
            t.add_row(vec![f.table.to_string(), f.id.clone(), f.detail.clone()]);
        }
        let _ = writeln!(s, "{}", out.render_table(&t));
        let rest = c.count - c.rows.len() as i64;
        if rest > 0 {
            let _ = writeln!(
                s,
                "… and {rest} more (raise --limit, now {limit}, to name them)"
            );
        }
    }
}

/// What install-platform-agent would do now.
fn install_would(s: &mut String, r: &Report) {
    let w = &r.install_would;
    let _ = match w.action {
        "none" => writeln!(s, "\ninstall-platform-agent: nothing to do."),
        "refused" => writeln!(
            s,
            "\ninstall-platform-agent would refuse: {}",
            sanitize(&w.summary)
        ),
        _ => writeln!(
            s,
            "\ninstall-platform-agent would fix: {}",
            sanitize(&w.summary)
        ),
    };
}

/// The gate: every invariant holds, or which are broken.
fn verdict(s: &mut String, r: &Report) {
    let failed = r.failed();
    if failed.is_empty() {
        let _ = writeln!(s, "\nAll invariants hold.");
    } else {
        let _ = writeln!(
            s,
            "\n{} of {} invariants broken: {}.",
            failed.len(),
            r.checks
                .iter()
                .filter(|c| c.severity == Severity::Error)
                .count(),
            failed.iter().map(|c| c.name).collect::<Vec<_>>().join(", ")
        );
    }
}
