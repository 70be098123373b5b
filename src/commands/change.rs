//! The flow of a change to one tenant database, written once: a command supplies its steps
//! (a [`Change`]) and [`run`] drives them. `install-platform-agent`, `secret set`/`delete`,
//! `secret rekey`, `token anchor` and `token revoke` run on it; `token mint` does not (it
//! delivers the token before the COMMIT, and a lost COMMIT is checked by the token's hash).
//!
//! 1. **Connect** and check the tenant's schema ([`db::ensure_compatible`]).
//! 2. **Plan read-only** ([`Change::plan`]) in one REPEATABLE READ, READ ONLY snapshot: no
//!    locks, no writes; the snapshot is rolled back.
//! 3. A **dry run** renders that plan and ends there: exit 3 with the refusal apply would meet,
//!    exit 3 when `--expect-plan` names another plan, exit 4 with `--detailed-exitcode` when
//!    something would change, else 0.
//! 4. Otherwise the plan is **checked**: another hash than `--expect-plan` is refused (the plan
//!    rendered, nothing applied), a refusal ends the run, and a plan with nothing to change goes
//!    straight to the end ([`Change::finish`] with [`Done::Nothing`]).
//! 5. **Show and confirm**: when a human is asked (no `--yes`) on a terminal, the plan is shown
//!    on stderr ([`Change::review`], then [`Change::reviewed`]), then the question is put
//!    ([`Change::confirm`]). No lock is held while a human reads.
//! 6. **Lock and re-plan**: the write transaction begins ([`db::begin_change_on`], with the
//!    tenant's advisory lock) and the same planning code runs again under the change's own
//!    locks ([`Change::lock_and_plan`]). A refusal ends the run; nothing left to change (another
//!    run did it meanwhile) is said ([`Change::RACED`]) and goes to the end; a plan that differs
//!    from the one a human confirmed or `--expect-plan` approved is refused
//!    ([`Change::moved`]: by default the new plan rendered). A change with
//!    [`Change::COMPARED_FIRST`] compares before the refusal and "nothing left to change".
//! 7. **Apply** exactly that plan ([`Change::apply`]), which returns what the **audit** row
//!    records and the check it verifies before the commit; the audit row is written in the same
//!    transaction.
//! 8. **Commit or resolve** ([`db::commit_guarded`]): a COMMIT whose answer is lost is checked
//!    through the audit row; after a verified one the command carries on on the new connection.
//! 9. **Render** the result and do any work after the commit ([`Change::finish`]).

use sqlx::postgres::{PgConnection, PgRow};

use crate::db::{self, DbUrl};
use crate::error::{Error, Exit, Result};
use crate::Context;

/// How a command was asked to run its change.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Mode<'a> {
    /// `--dry-run`: show the plan, change nothing.
    pub dry_run: bool,
    /// `--detailed-exitcode` (with `--dry-run`): exit 4 when changes are pending.
    pub detailed_exitcode: bool,
    /// `--expect-plan`: the hash the plan must have (checked with [`check_plan_hash`]).
    pub expect_plan: Option<&'a str>,
}

/// Why [`run`] renders a plan on stdout (the applied result is [`Change::finish`]'s to render).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Shown {
    /// A dry run's plan.
    DryRun,
    /// A plan refused for its hash: nothing was applied.
    NotApplied,
}

/// What the change came to, for [`Change::finish`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Done {
    /// Nothing to change (found before the confirmation, or after the lock).
    Nothing,
    /// Applied and committed.
    Applied,
    /// Applied after the whole plan was shown on the terminal for a confirmation.
    AppliedAfterReview,
}

/// What the audit row of an applied change records, and the check it verifies first.
pub(crate) struct Audit {
    /// The arguments, free of secret values.
    pub args: serde_json::Value,
    /// Read and judged in the audit statement, before the row is written.
    pub check: Option<db::Check<'static>>,
}

/// What [`run`] asks of every plan.
pub(crate) trait Planned {
    /// Whether applying it changes anything.
    fn changed(&self) -> bool;
    /// Its fingerprint (`sha256:…`): what `--expect-plan` names and a confirmation approves.
    fn hash(&self) -> String;
    /// The refusal apply would meet.
    fn refusal(&self) -> Option<Error>;
}

/// The steps of one command's change, which [`run`] drives (see the module's documentation).
pub(crate) trait Change {
    type Plan: Planned;
    /// What the rendered plan is called in a refusal: "review the {} above".
    const REVIEWED: &'static str;
    /// What changed when the re-plan differs: "{} changed after the plan was reviewed".
    const SUBJECT: &'static str;
    /// Said (stderr) when the re-plan under the lock finds nothing left to change; None: the
    /// end ([`Change::finish`] with [`Done::Nothing`]) says it all.
    const RACED: Option<&'static str>;
    /// Whether the re-plan under the lock is compared with the reviewed plan before its
    /// refusal and before "nothing left to change" (rekey: a plan that moved is reported as
    /// such whatever it now is). False: refusal, nothing to change, then the comparison.
    const COMPARED_FIRST: bool = false;

    /// The audit row's outcome.
    const OUTCOME: &'static str = "applied";

    /// The audit row's command.
    fn command(&self) -> &'static str;

    /// Plan read-only inside `tx`, and say on stderr what the plan warns about.
    async fn plan(&mut self, tx: &mut PgConnection) -> Result<Self::Plan>;

    /// Constant SQL to send with the write transaction's opening ([`db::begin_change_on`]'s
    /// `tail`); its rows come to [`Change::lock_and_plan`]. "" by default.
    fn tail(&self) -> String {
        String::new()
    }

    /// Take the change's locks and plan again, inside the write transaction. A change whose
    /// write itself says what it did (a secret's upsert, a token revoke's UPDATE … WHERE
    /// revoked_at IS NULL) writes here: its result is the plan, and [`Change::apply`] records it.
    async fn lock_and_plan(
        &mut self,
        tx: &mut PgConnection,
        tail: Option<Result<Vec<Vec<PgRow>>>>,
    ) -> Result<Self::Plan>;

    /// Render `plan` on stdout.
    fn render(&self, plan: &Self::Plan, shown: Shown) -> Result<()>;

    /// The plan as shown on stderr before the confirmation; None shows nothing there.
    fn review(&self, plan: &Self::Plan) -> Option<String>;

    /// Said after the review was shown, before the question (secret changes: the restart notes
    /// on stderr; `token anchor --stale`: its table on stdout). Nothing by default.
    fn reviewed(&self, _plan: &Self::Plan) {}

    /// The confirmation's question; `target` names the database.
    fn question(&self, plan: &Self::Plan, target: &str) -> String;

    /// Ask [`Change::question`] ([`crate::output::Output::confirm`]: `--yes` skips it; without
    /// a terminal it is refused, pointing to `--dry-run`). Token changes, which have no dry run
    /// to point to, refuse in their own words.
    fn confirm(&self, ctx: &Context, plan: &Self::Plan, target: &str) -> Result<()> {
        ctx.out.confirm(&self.question(plan, target), ctx.yes)
    }

    /// The refusal of a re-plan under the lock whose hash is not `reviewed`, the hash a human
    /// confirmed or `--expect-plan` named (the transaction is rolled back already). By default
    /// `current` is rendered ([`Shown::NotApplied`]) and the refusal names both hashes.
    fn moved(&self, reviewed: &str, current: &Self::Plan) -> Result<Error> {
        self.render(current, Shown::NotApplied)?;
        Ok(Error::refused(format!(
            "{} changed after the plan was reviewed ({reviewed} reviewed, {} now); nothing was changed: review the new {} and rerun",
            Self::SUBJECT,
            current.hash(),
            Self::REVIEWED
        )))
    }

    /// Execute exactly `plan` in `tx`; what the audit row records.
    async fn apply(&mut self, tx: &mut PgConnection, plan: &Self::Plan) -> Result<Audit>;

    /// After the commit, or with nothing to change: work that follows, and the rendered result.
    async fn finish(
        &mut self,
        conn: &mut PgConnection,
        plan: &Self::Plan,
        done: Done,
    ) -> Result<Exit>;
}

/// `--expect-plan`'s value is a plan hash (checked before connecting).
pub(crate) fn check_plan_hash(h: &str) -> Result<()> {
    if !h.starts_with("sha256:") || h.len() != 7 + 64 {
        return Err(Error::usage(format!(
            "--expect-plan '{h}' is not a plan hash (sha256:<64 hex digits>, from a dry run)"
        )));
    }
    Ok(())
}

/// Run `change` on the database at `url`: plan → show → confirm → lock → re-plan → apply →
/// audit → commit → render.
pub(crate) async fn run<C: Change>(
    ctx: &Context,
    url: &DbUrl,
    mode: Mode<'_>,
    change: &mut C,
) -> Result<Exit> {
    let mut conn = super::connect_to(ctx, url).await?;

    // Plan read-only: a consistent snapshot, no locks, no writes.
    let reviewed = {
        let mut tx = db::begin_read_only(&mut conn, &ctx.settings).await?;
        let p = change.plan(&mut tx).await?;
        tx.rollback().await?;
        p
    };
    if mode.dry_run {
        return dry_run(change, &reviewed, mode);
    }
    if let Some(h) = mode.expect_plan {
        if h != reviewed.hash() {
            // Not a dry run and nothing applied.
            change.render(&reviewed, Shown::NotApplied)?;
            return Err(Error::refused(format!(
                "the plan differs from the reviewed one ({h} expected, {} now); nothing was changed: review the {} above and rerun",
                reviewed.hash(),
                C::REVIEWED
            )));
        }
    }
    if let Some(e) = reviewed.refusal() {
        return Err(e);
    }
    if !reviewed.changed() {
        return change.finish(&mut conn, &reviewed, Done::Nothing).await;
    }

    // Show and confirm. The locks are not held while a human reads.
    let asked = !ctx.yes;
    let shown = asked && ctx.out.interactive();
    if shown {
        if let Some(review) = change.review(&reviewed) {
            crate::output::stderr(&crate::output::review_text(&review));
        }
        change.reviewed(&reviewed);
    }
    change.confirm(ctx, &reviewed, url.target())?;
    // What a human confirmed or change control approved is exactly what gets applied.
    let strict = mode.expect_plan.is_some() || asked;
    let reviewed_hash = reviewed.hash();
    drop(reviewed);
    let done = if shown {
        Done::AppliedAfterReview
    } else {
        Done::Applied
    };
    apply(
        ctx,
        url,
        &mut conn,
        change,
        strict.then_some(reviewed_hash),
        done,
    )
    .await
}

/// A dry run's end: the plan rendered, then its refusal, `--expect-plan` and the exit code.
fn dry_run<C: Change>(change: &C, plan: &C::Plan, mode: Mode<'_>) -> Result<Exit> {
    change.render(plan, Shown::DryRun)?;
    if let Some(e) = plan.refusal() {
        return Err(e);
    }
    if let Some(h) = mode.expect_plan {
        if h != plan.hash() {
            return Err(Error::refused(format!(
                "the plan differs from the expected one ({h}); it is now {}",
                plan.hash()
            )));
        }
    }
    Ok(if mode.detailed_exitcode && plan.changed() {
        Exit::Pending
    } else {
        Exit::Ok
    })
}

/// Lock, re-plan, apply, audit, commit, finish. `reviewed`: the hash the re-plan must have (a
/// human confirmed it or `--expect-plan` named it), or None.
async fn apply<C: Change>(
    ctx: &Context,
    url: &DbUrl,
    conn: &mut PgConnection,
    change: &mut C,
    reviewed: Option<String>,
    done: Done,
) -> Result<Exit> {
    let db::Begun { mut tx, tail, .. } =
        db::begin_change_on(conn, url, &ctx.settings, &change.tail()).await?;
    let current = change.lock_and_plan(&mut tx, tail).await?;
    let moved = reviewed.filter(|h| *h != current.hash());
    if let Some(reviewed) = moved.as_deref().filter(|_| C::COMPARED_FIRST) {
        tx.rollback().await?;
        return Err(change.moved(reviewed, &current)?);
    }
    if let Some(e) = current.refusal() {
        // Rolled back here, not left to the drop, so that "nothing was changed" is said of a
        // transaction that has ended.
        tx.rollback().await?;
        return Err(e);
    }
    if !current.changed() {
        tx.rollback().await?;
        if let Some(raced) = C::RACED {
            ctx.out.info(raced);
        }
        return change.finish(conn, &current, Done::Nothing).await;
    }
    if let Some(reviewed) = moved {
        tx.rollback().await?;
        return Err(change.moved(&reviewed, &current)?);
    }
    let audit = change.apply(&mut tx, &current).await?;
    let txid = crate::audit::record_checked(
        &mut tx,
        &ctx.who,
        change.command(),
        &audit.args,
        C::OUTCOME,
        audit.check,
    )
    .await?;
    let committed =
        db::commit_guarded(tx, url, &ctx.settings, &crate::audit::AuditRow(txid)).await?;
    if let Some(note) = committed.note() {
        ctx.out.info(note);
    }
    // After a verified lost COMMIT the old connection is gone: carry on with the new one.
    committed.reconnected(conn);
    change.finish(conn, &current, done).await
}

#[cfg(test)]
mod tests {
    use super::check_plan_hash;

    #[test]
    fn a_plan_hash_is_sha256_and_64_hex_digits_long() {
        assert!(check_plan_hash(&format!("sha256:{}", "0".repeat(64))).is_ok());
        assert!(check_plan_hash(&format!("sha256:{}", "0".repeat(63))).is_err());
        assert!(check_plan_hash(&format!("md5:{}", "0".repeat(67))).is_err());
    }
}
