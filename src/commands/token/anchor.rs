//! `orgctl token anchor`: anchor one token to the org root, or (`--stale`) move every stale
//! anchor to it. Both show the plan and confirm first.

use std::fmt::Write as _;

use serde::Serialize;
use sqlx::postgres::{PgConnection, PgRow};
use uuid::Uuid;

use super::{confirm, fmt_opt_text, fmt_opt_time, fmt_opt_uuid, SHOWN};
use crate::cli::TokenAnchorArgs;
use crate::commands::change::{self, Audit, Done, Planned, Shown};
use crate::error::{sanitize, Error, Exit, Result};
use crate::ops::org::Root;
use crate::ops::token::{self as ops, AnchorPlan, Anchored, StaleMove, StalePlan, TokenRef};
use crate::Context;

pub(super) async fn run(ctx: &Context, args: &TokenAnchorArgs) -> Result<Exit> {
    let Some(raw) = args.token.as_deref() else {
        let url = ctx.url()?;
        let mode = change::Mode {
            dry_run: args.dry_run,
            ..Default::default()
        };
        let mut stale = Stale {
            ctx,
            args,
            reviewed: None,
        };
        return change::run(ctx, &url, mode, &mut stale).await;
    };
    if args.dry_run {
        // clap's `requires` is not enforced here (the token/--stale group is satisfied).
        return Err(Error::usage(
            "--dry-run goes with --stale; for one token, `orgctl token list` shows where it is anchored",
        ));
    }
    let r = TokenRef::parse(raw)?;
    let url = ctx.url()?;
    let mut one = One {
        ctx,
        args,
        r: &r,
        reviewed: None,
    };
    change::run(ctx, &url, change::Mode::default(), &mut one).await
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

/// `token anchor TOKEN` as [`change::run`] drives it; `reviewed` is the read-only plan.
struct One<'a> {
    ctx: &'a Context,
    args: &'a TokenAnchorArgs,
    r: &'a TokenRef,
    reviewed: Option<AnchorPlan>,
}

/// One token's anchor plan, and whether `--force` lets it move from another workspace.
struct OnePlan {
    plan: AnchorPlan,
    force: bool,
}

impl Planned for OnePlan {
    fn changed(&self) -> bool {
        self.plan.token.org_id != Some(self.plan.root.id)
    }
    /// No `--expect-plan`: the token and the root (under the lock a root that changed is
    /// refused, see [`ops::check_anchor_root`]).
    fn hash(&self) -> String {
        format!("{} {}", self.plan.token.id, self.plan.root.id)
    }
    /// A token anchored elsewhere moves only with `--force`.
    fn refusal(&self) -> Option<Error> {
        let (token, root) = (&self.plan.token, &self.plan.root);
        match token.org_id {
            Some(current) if self.changed() && !self.force => Some(Error::refused(format!(
                "token {} is already anchored to {current}; pass --force to move it to {}",
                token.label(),
                root.id
            ))),
            _ => None,
        }
    }
}

impl One<'_> {
    /// "token … from … to …" of the confirmation and its refusal.
    fn describe(&self, plan: &AnchorPlan) -> String {
        let from = match plan.token.org_id {
            Some(o) => format!("from {o} "),
            None => "(now unanchored) ".to_string(),
        };
        format!(
            "token {} {from}to {}",
            plan.token.label(),
            root_label(&plan.root)
        )
    }

    fn with_force(&self, plan: AnchorPlan) -> OnePlan {
        OnePlan {
            plan,
            force: self.args.force,
        }
    }
}

impl change::Change for One<'_> {
    type Plan = OnePlan;
    const REVIEWED: &'static str = "plan";
    const SUBJECT: &'static str = "the token";
    const RACED: Option<&'static str> = None;
    const OUTCOME: &'static str = "anchored";

    fn command(&self) -> &'static str {
        "token anchor"
    }

    /// The token and the root; a dead token that moves is warned about (anchoring does not
    /// revive it).
    async fn plan(&mut self, tx: &mut PgConnection) -> Result<OnePlan> {
        let plan = self.with_force(ops::read_anchor(tx, self.r, self.args.org).await?);
        let token = &plan.plan.token;
        if plan.changed() && plan.refusal().is_none() {
            if token.revoked_at.is_some() {
                self.ctx.out.warn(&format!(
                    "token {} is revoked; anchoring it does not revive it",
                    token.id
                ));
            } else if token.expired {
                self.ctx.out.warn(&format!(
                    "token {} expired at {}; anchoring it does not revive it",
                    token.id,
                    fmt_opt_time(&token.expires_at)
                ));
            }
        }
        self.reviewed = Some(plan.plan.clone());
        Ok(plan)
    }

    /// The root must still be the one confirmed; the token is the one read.
    async fn lock_and_plan(
        &mut self,
        tx: &mut PgConnection,
        _tail: Option<Result<Vec<Vec<PgRow>>>>,
    ) -> Result<OnePlan> {
        let reviewed = self
            .reviewed
            .clone()
            .ok_or_else(|| Error::failed("internal: anchoring an unplanned token"))?;
        ops::check_anchor_root(tx, self.args.org, &reviewed).await?;
        Ok(self.with_force(reviewed))
    }

    fn render(&self, plan: &OnePlan, _shown: Shown) -> Result<()> {
        render_anchor(self.ctx, &plan.plan, false)
    }

    fn review(&self, _plan: &OnePlan) -> Option<String> {
        None
    }

    fn question(&self, plan: &OnePlan, target: &str) -> String {
        format!("Anchor {} on {target}?", self.describe(&plan.plan))
    }

    fn confirm(&self, ctx: &Context, plan: &OnePlan, target: &str) -> Result<()> {
        let what = format!("anchors {}", self.describe(&plan.plan));
        confirm(ctx, &what, &self.question(plan, target))
    }

    async fn apply(&mut self, tx: &mut PgConnection, plan: &OnePlan) -> Result<Audit> {
        let asked = Anchored {
            by: self.r,
            org: self.args.org,
            force: self.args.force,
        };
        Ok(Audit {
            args: ops::anchor_one(tx, asked, &plan.plan).await?,
            check: None,
        })
    }

    async fn finish(
        &mut self,
        _conn: &mut PgConnection,
        plan: &OnePlan,
        done: Done,
    ) -> Result<Exit> {
        let (token, root) = (&plan.plan.token, &plan.plan.root);
        let root_label = root_label(root);
        if done == Done::Nothing {
            self.ctx.out.info(&format!(
                "Token {} is already anchored to {root_label}; nothing to do.",
                token.label()
            ));
        } else {
            self.ctx.out.info(&format!(
                "Anchored token {} to {root_label}.",
                token.label()
            ));
        }
        render_anchor(self.ctx, &plan.plan, done != Done::Nothing)?;
        Ok(Exit::Ok)
    }
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

/// `token anchor --stale` as [`change::run`] drives it; `reviewed` is the read-only plan.
struct Stale<'a> {
    ctx: &'a Context,
    args: &'a TokenAnchorArgs,
    reviewed: Option<StalePlan>,
}

impl Planned for StalePlan {
    fn changed(&self) -> bool {
        self.total() > 0
    }
    /// No `--expect-plan`: under the lock any other plan is refused ([`ops::check_stale`]).
    fn hash(&self) -> String {
        self.root.id.to_string()
    }
    fn refusal(&self) -> Option<Error> {
        None
    }
}

impl Stale<'_> {
    /// What moves, for the messages.
    fn describe(&self, plan: &StalePlan) -> String {
        let (total, live) = (plan.total(), plan.live());
        format!(
            "{total} token(s) ({live} live, {} revoked on former roots) from {} workspace(s) to the root {}",
            total - live,
            plan.moves.len(),
            root_label(&plan.root)
        )
    }

    fn nothing(&self, plan: &StalePlan, dry_run: bool) -> Result<()> {
        self.ctx
            .out
            .info("No stale anchors: every anchored live token is on a root; nothing to do.");
        render_stale(self.ctx, plan, dry_run, false)
    }
}

impl change::Change for Stale<'_> {
    type Plan = StalePlan;
    const REVIEWED: &'static str = "plan";
    const SUBJECT: &'static str = "the stale anchors";
    const RACED: Option<&'static str> = None;
    const OUTCOME: &'static str = "anchored";

    fn command(&self) -> &'static str {
        "token anchor"
    }

    async fn plan(&mut self, tx: &mut PgConnection) -> Result<StalePlan> {
        let plan = ops::read_stale(tx, self.args.org).await?;
        self.reviewed = Some(plan.clone());
        Ok(plan)
    }

    /// Exactly the reviewed stale anchors, or a refusal.
    async fn lock_and_plan(
        &mut self,
        tx: &mut PgConnection,
        _tail: Option<Result<Vec<Vec<PgRow>>>>,
    ) -> Result<StalePlan> {
        let reviewed = self
            .reviewed
            .clone()
            .ok_or_else(|| Error::failed("internal: moving unplanned anchors"))?;
        ops::check_stale(tx, self.args.org, &reviewed).await?;
        Ok(reviewed)
    }

    /// A dry run's `changed` says whether applying would change something, as install's.
    fn render(&self, plan: &StalePlan, _shown: Shown) -> Result<()> {
        if !plan.changed() {
            return self.nothing(plan, true);
        }
        self.ctx.out.info(&format!(
            "Would move {} (dry run: nothing was changed).",
            self.describe(plan)
        ));
        render_stale(self.ctx, plan, true, true)
    }

    fn review(&self, _plan: &StalePlan) -> Option<String> {
        None
    }

    /// The table of moves, on stdout, before the question (not in JSON mode).
    fn reviewed(&self, plan: &StalePlan) {
        if !self.ctx.out.json_mode() {
            let _ = render_stale(self.ctx, plan, true, true);
        }
    }

    fn question(&self, plan: &StalePlan, target: &str) -> String {
        format!("Move {} on {target}?", self.describe(plan))
    }

    fn confirm(&self, ctx: &Context, plan: &StalePlan, target: &str) -> Result<()> {
        let what = format!("moves {}", self.describe(plan));
        confirm(ctx, &what, &self.question(plan, target))
    }

    async fn apply(&mut self, tx: &mut PgConnection, plan: &StalePlan) -> Result<Audit> {
        Ok(Audit {
            args: ops::anchor_stale(tx, self.args.org, plan).await?,
            check: None,
        })
    }

    async fn finish(
        &mut self,
        _conn: &mut PgConnection,
        plan: &StalePlan,
        done: Done,
    ) -> Result<Exit> {
        if done == Done::Nothing {
            self.nothing(plan, false)?;
            return Ok(Exit::Ok);
        }
        self.ctx
            .out
            .info(&format!("Moved {}.", self.describe(plan)));
        render_stale(self.ctx, plan, false, true)?;
        Ok(Exit::Ok)
    }
}
