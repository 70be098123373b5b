//! The flow `set` and `delete` share, as [`change::run`] drives it: every input is checked
//! before touching the database (the subcommand's own file does); the plan is read-only (what
//! the write does and which workspaces it would restart); `--dry-run` stops there. Otherwise
//! show and confirm, then in ONE transaction under the tenant lock: re-check the target (and
//! the MODEL gate), write with one upsert or delete, append the audit row, commit. Only after
//! the commit is the restart plan computed again — from the committed state — and dispatched.

use chrono::{DateTime, Utc};
use sqlx::postgres::{PgConnection, PgRow};

use super::outcome::Outcome;
use super::{named_ids, ts};
use crate::commands::change::{self, Audit, Done, Planned, Shown};
use crate::db;
use crate::error::{Error, Exit, Result};
use crate::ops::secret::{self, Action, Change, Op, Phase, Scope, Written};
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

/// plan → show → confirm → lock → re-check → write → audit → commit ([`change::run`]) → restart
/// plan from the committed state → dispatch and record → report.
pub(super) async fn change(ctx: &Context, url: &db::DbUrl, req: Request<'_>) -> Result<Exit> {
    let mode = change::Mode {
        dry_run: req.dry_run,
        detailed_exitcode: false,
        expect_plan: None,
    };
    let mut write = Write {
        ctx,
        url,
        req,
        target_name: None,
        target_is_platform: false,
        reviewed_version: None,
    };
    change::run(ctx, url, mode, &mut write).await
}

/// A secret change as [`change::run`] drives it.
struct Write<'a> {
    ctx: &'a Context,
    url: &'a db::DbUrl,
    req: Request<'a>,
    /// From the read-only plan: the target workspace's name, whether it is the platform agent,
    /// and the encryption version the change writes (set) or removes (delete).
    target_name: Option<String>,
    target_is_platform: bool,
    reviewed_version: Option<i32>,
}

/// What a secret change does to the row: from the read-only snapshot, or as the write under the
/// lock did it.
struct Plan {
    action: Action,
    encryption_version: Option<i32>,
    /// The read-only plan's restarts when the action changes something, else none (after the
    /// commit they are planned again from the committed state).
    restart: RestartPlan,
    /// When the existing row was last updated (the question names it).
    updated_at: Option<DateTime<Utc>>,
    /// The MODEL gate's refusal (the read-only plan's; under the lock the gate refuses at once).
    refusal: Option<Error>,
    /// Under the lock: what the write did, for the audit row.
    written: Option<Written>,
}

impl Planned for Plan {
    fn changed(&self) -> bool {
        self.action.changes()
    }
    /// A secret change has no `--expect-plan`: what a confirmation approves is the action.
    fn hash(&self) -> String {
        self.action.as_str().to_string()
    }
    fn refusal(&self) -> Option<Error> {
        self.refusal
            .as_ref()
            .map(|e| Error::new(e.exit, e.message.clone()))
    }
}

impl Write<'_> {
    /// The report of `plan` (no restart dispatched yet).
    fn outcome(&self, plan: &Plan) -> Outcome<'_> {
        let change = &self.req.change;
        Outcome {
            scope: change.scope,
            key: change.key,
            target_name: self.target_name.as_deref(),
            action: plan.action,
            encryption_version: plan.encryption_version,
            restart: plan.restart.clone(),
            dispatched: Vec::new(),
            dry_run: self.req.dry_run,
            no_restart: change.no_restart,
            plan_only: self.req.platform.is_none(),
        }
    }
}

impl change::Change for Write<'_> {
    type Plan = Plan;
    const REVIEWED: &'static str = "plan";
    const SUBJECT: &'static str = "the secret";
    const RACED: Option<&'static str> = Some("The secret was deleted concurrently; nothing to do.");

    fn command(&self) -> &'static str {
        self.req.change.command()
    }

    /// The read-only plan, the MODEL warnings when the change writes MODEL on the platform
    /// agent, and the MODEL gate of a delete (its warning when `--force` passes it).
    async fn plan(&mut self, tx: &mut PgConnection) -> Result<Plan> {
        let (out, change) = (&self.ctx.out, &self.req.change);
        let reviewed = secret::plan(tx, change).await?;
        if change.model_on_agent(reviewed.target_is_platform()) {
            // The platform validates a model only when it sets it (install-platform-agent
            // --provision --model); written here it is unchecked until the agent's next start.
            out.warn(
                "MODEL is written straight to the database: the platform has not validated it for the agent's runtime, and it applies at the agent's next provision (`orgctl install-platform-agent --provision --model …` has the platform validate and set it)",
            );
            if let Some(place) = &reviewed.outranked {
                out.warn(&format!(
                    "a {MODEL_OVERRIDE_KEY} secret is set {place}: it outranks MODEL, so the agent will not run this model",
                ));
            }
        }
        let action = reviewed.action(&change.op);
        let refusal = match change.op {
            Op::Delete { force } if action.changes() => model_gate(
                out,
                change.scope,
                change.key,
                reviewed.target_is_platform(),
                force,
            )
            .err(),
            _ => None,
        };
        self.target_name = reviewed.target.as_ref().map(|t| t.name.clone());
        self.target_is_platform = reviewed.target_is_platform();
        self.reviewed_version = reviewed.encryption_version(&change.op);
        Ok(Plan {
            action,
            encryption_version: self.reviewed_version,
            restart: if action.changes() {
                reviewed.restart
            } else {
                RestartPlan::default()
            },
            updated_at: reviewed.existing.and_then(|e| e.updated_at),
            refusal,
            written: None,
        })
    }

    /// Under the tenant lock: the target re-checked (a workspace that became the platform agent
    /// meets the MODEL gate), then the one upsert or delete, whose result is the plan.
    async fn lock_and_plan(
        &mut self,
        tx: &mut PgConnection,
        _tail: Option<Result<Vec<Vec<PgRow>>>>,
    ) -> Result<Plan> {
        let change = &self.req.change;
        let is_platform = secret::lock_target(tx, change.scope).await?;
        if let (Some(true), Op::Delete { force }) = (is_platform, &change.op) {
            if !self.target_is_platform {
                model_gate(&self.ctx.out, change.scope, change.key, true, *force)?;
            }
        }
        let written = secret::write(tx, change).await?;
        Ok(Plan {
            action: written.action,
            encryption_version: written.encryption_version.or(self.reviewed_version),
            restart: RestartPlan::default(),
            updated_at: None,
            refusal: None,
            written: Some(written),
        })
    }

    fn render(&self, plan: &Plan, shown: Shown) -> Result<()> {
        let outcome = self.outcome(plan);
        outcome.render(&self.ctx.out)?;
        if shown == Shown::DryRun {
            outcome.notes(&self.ctx.out, true);
        }
        Ok(())
    }

    fn review(&self, plan: &Plan) -> Option<String> {
        Some(self.outcome(plan).text(&self.ctx.out, true))
    }

    /// The restart notes, under the review.
    fn reviewed(&self, plan: &Plan) {
        self.outcome(plan).notes(&self.ctx.out, true);
    }

    fn question(&self, plan: &Plan, target: &str) -> String {
        let what = self.req.change.scope.describe(self.req.change.key);
        let question = match plan.action {
            Action::Created => format!("Create the {what}?"),
            Action::Updated => {
                format!("Replace the {what} (last updated {})?", ts(plan.updated_at))
            }
            _ => format!("Delete the {what}?"),
        };
        format!("{question} ({target})")
    }

    /// What a human confirmed is exactly what gets applied: another action now is refused.
    fn moved(&self, reviewed: &str, current: &Plan) -> Result<Error> {
        Ok(Error::refused(format!(
            "the secret changed while you were reading (it would be {} now, not {reviewed}); nothing was changed: rerun",
            current.action.as_str()
        )))
    }

    /// The write is done (in [`Self::lock_and_plan`]); the value is zeroed now.
    async fn apply(&mut self, _tx: &mut PgConnection, plan: &Plan) -> Result<Audit> {
        let written = plan
            .written
            .ok_or_else(|| Error::failed("internal: the secret was not written"))?;
        let args = secret::audit_args(&self.req.change, &written, self.req.platform.is_some());
        if let Op::Set { value, .. } = &mut self.req.change.op {
            *value = None;
        }
        Ok(Audit { args, check: None })
    }

    /// Nothing to change: the report. Committed: the restarts ([`restart_after_commit`]).
    async fn finish(&mut self, conn: &mut PgConnection, plan: &Plan, done: Done) -> Result<Exit> {
        let mut outcome = self.outcome(plan);
        if done == Done::Nothing {
            outcome.render(&self.ctx.out)?;
            return Ok(Exit::Ok);
        }
        let change = &self.req.change;
        let (scope, key) = (change.scope, change.key);
        let phase = Phase {
            trigger: change.command(),
            who: &self.ctx.who,
            scope,
            key,
            platform: self.req.platform.as_ref(),
        };
        let committed = format!("the {} was {}", scope.describe(key), plan.action.as_str());
        restart_after_commit(
            self.ctx,
            conn,
            self.url,
            &phase,
            change.no_restart,
            &committed,
            &mut outcome,
        )
        .await
    }
}

/// The MODEL gate, its warning printed when `--force` passes it.
fn model_gate(out: &Output, scope: Scope, key: &str, is_platform: bool, force: bool) -> Result<()> {
    if let Some(warning) = secret::model_gate(scope, key, is_platform, force)? {
        out.warn(&warning);
    }
    Ok(())
}

/// After the commit, the restart plan from the committed state, the calls and their
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
