//! `orgctl token anchor`: anchor one token to the org root, or (`--stale`) move every stale
//! anchor to it. Both show the plan and confirm first.

use std::fmt::Write as _;

use serde::Serialize;
use uuid::Uuid;

use super::{confirm, fmt_opt_text, fmt_opt_time, fmt_opt_uuid, SHOWN};
use crate::cli::TokenAnchorArgs;
use crate::error::{sanitize, Error, Exit, Result};
use crate::ops::org::Root;
use crate::ops::token::{self as ops, AnchorPlan, Anchored, StaleMove, StalePlan, TokenRef};
use crate::Context;

pub(super) async fn run(ctx: &Context, args: &TokenAnchorArgs) -> Result<Exit> {
    let Some(raw) = args.token.as_deref() else {
        return anchor_stale(ctx, args).await;
    };
    if args.dry_run {
        // clap's `requires` is not enforced here (the token/--stale group is satisfied).
        return Err(Error::usage(
            "--dry-run goes with --stale; for one token, `orgctl token list` shows where it is anchored",
        ));
    }
    anchor_one(ctx, args, &TokenRef::parse(raw)?).await
}

/// `id ('name')` of a root, for messages.
fn root_label(root: &Root) -> String {
    format!("{} ('{}')", root.id, sanitize(&root.name))
}

// ---------------------------------------------------------------------------------------------
// One token

#[derive(Serialize)]
struct AnchorJson {
    id: Uuid,
    prefix: String,
    org_id: Uuid,
    previous_org_id: Option<Uuid>,
    changed: bool,
}

fn render_anchor(ctx: &Context, plan: &AnchorPlan, changed: bool) -> Result<()> {
    let (t, root) = (&plan.token, &plan.root);
    if ctx.out.json_mode() {
        return ctx.out.json(&AnchorJson {
            id: t.id,
            prefix: t.prefix.clone(),
            org_id: root.id,
            previous_org_id: t.org_id,
            changed,
        });
    }
    let mut table =
        ctx.out
            .new_table(["id", "prefix", "name", "old org_id", "new org_id", "result"]);
    table.add_row(vec![
        t.id.to_string(),
        sanitize(&t.prefix),
        fmt_opt_text(&t.name),
        fmt_opt_uuid(&t.org_id),
        root.id.to_string(),
        if changed { "anchored" } else { "unchanged" }.to_string(),
    ]);
    ctx.out.table(&table)
}

/// A token anchored elsewhere moves only with `--force`; a dead one is warned about (anchoring
/// does not revive it).
fn check_move(ctx: &Context, args: &TokenAnchorArgs, plan: &AnchorPlan) -> Result<()> {
    let token = &plan.token;
    if let Some(current) = token.org_id {
        if !args.force {
            return Err(Error::refused(format!(
                "token {} is already anchored to {current}; pass --force to move it to {}",
                token.label(),
                plan.root.id
            )));
        }
    }
    if token.revoked_at.is_some() {
        ctx.out.warn(&format!(
            "token {} is revoked; anchoring it does not revive it",
            token.id
        ));
    } else if token.expired {
        ctx.out.warn(&format!(
            "token {} expired at {}; anchoring it does not revive it",
            token.id,
            fmt_opt_time(&token.expires_at)
        ));
    }
    Ok(())
}

async fn anchor_one(ctx: &Context, args: &TokenAnchorArgs, r: &TokenRef) -> Result<Exit> {
    let (url, mut conn) = super::connect(ctx).await?;
    let plan = ops::plan_anchor(&mut conn, &ctx.settings, r, args.org).await?;
    let (token, root) = (&plan.token, &plan.root);
    let root_label = root_label(root);
    if token.org_id == Some(root.id) {
        ctx.out.info(&format!(
            "Token {} is already anchored to {root_label}; nothing to do.",
            token.label()
        ));
        render_anchor(ctx, &plan, false)?;
        return Ok(Exit::Ok);
    }
    check_move(ctx, args, &plan)?;
    let from = match token.org_id {
        Some(o) => format!("from {o} "),
        None => "(now unanchored) ".to_string(),
    };
    let desc = format!("token {} {from}to {root_label}", token.label());
    confirm(
        ctx,
        &format!("anchors {desc}"),
        &format!("Anchor {desc} on {}?", url.target()),
    )?;
    let asked = Anchored {
        by: r,
        org: args.org,
        force: args.force,
    };
    let committed = ops::anchor_one(&mut conn, &url, &ctx.settings, &ctx.who, asked, &plan).await?;
    super::note_commit(ctx, &committed);
    ctx.out.info(&format!(
        "Anchored token {} to {root_label}.",
        token.label()
    ));
    render_anchor(ctx, &plan, true)?;
    Ok(Exit::Ok)
}

// ---------------------------------------------------------------------------------------------
// --stale

#[derive(Serialize)]
struct StaleJson<'a> {
    dry_run: bool,
    changed: bool,
    to: Uuid,
    tokens: i64,
    moves: &'a [StaleMove],
}

fn render_stale(ctx: &Context, plan: &StalePlan, dry_run: bool, changed: bool) -> Result<()> {
    let (root, moves) = (&plan.root, &plan.moves);
    if ctx.out.json_mode() {
        return ctx.out.json(&StaleJson {
            dry_run,
            changed,
            to: root.id,
            tokens: plan.total(),
            moves,
        });
    }
    if moves.is_empty() {
        return Ok(());
    }
    let mut t = ctx.out.new_table(["from", "live", "revoked", "to"]);
    let (shown, rest) = crate::output::truncated(moves, SHOWN);
    for m in shown {
        t.add_row(vec![
            m.from.to_string(),
            m.live.to_string(),
            m.revoked.to_string(),
            root.id.to_string(),
        ]);
    }
    let mut text = format!("{}\n", ctx.out.render_table(&t));
    if rest > 0 {
        let _ = writeln!(text, "… and {rest} more source workspaces (see -o json)");
    }
    ctx.out.stdout(&text)
}

async fn anchor_stale(ctx: &Context, args: &TokenAnchorArgs) -> Result<Exit> {
    let (url, mut conn) = super::connect(ctx).await?;
    // 1. Plan read-only.
    let reviewed = ops::plan_stale(&mut conn, &ctx.settings, args.org).await?;
    let (total, live) = (reviewed.total(), reviewed.live());
    if total == 0 {
        ctx.out
            .info("No stale anchors: every anchored live token is on a root; nothing to do.");
        render_stale(ctx, &reviewed, args.dry_run, false)?;
        return Ok(Exit::Ok);
    }
    let desc = format!(
        "{total} token(s) ({live} live, {} revoked on former roots) from {} workspace(s) to the root {}",
        total - live,
        reviewed.moves.len(),
        root_label(&reviewed.root)
    );
    if args.dry_run {
        ctx.out.info(&format!(
            "Would move {desc} (dry run: nothing was changed)."
        ));
        // A dry run's `changed` says whether applying would change something, as install's.
        render_stale(ctx, &reviewed, true, true)?;
        return Ok(Exit::Ok);
    }
    if !ctx.out.json_mode() && ctx.out.interactive() && !ctx.yes {
        render_stale(ctx, &reviewed, true, true)?;
    }
    confirm(
        ctx,
        &format!("moves {desc}"),
        &format!("Move {desc} on {}?", url.target()),
    )?;
    // 2. Apply exactly the reviewed plan under the tenant lock.
    let committed = ops::anchor_stale(
        &mut conn,
        &url,
        &ctx.settings,
        &ctx.who,
        args.org,
        &reviewed,
    )
    .await?;
    super::note_commit(ctx, &committed);
    ctx.out.info(&format!("Moved {desc}."));
    render_stale(ctx, &reviewed, false, true)?;
    Ok(Exit::Ok)
}
