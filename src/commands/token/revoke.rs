//! `orgctl token revoke`: one token by id or prefix, or every unrevoked token with a
//! `created_by` label. Both show what they revoke and confirm first.

use std::fmt::Write as _;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::postgres::{PgConnection, PgRow};
use uuid::Uuid;

use super::{compact_cells, compact_list, confirm, fmt_opt_text, fmt_opt_time, SHOWN};
use crate::cli::TokenRevokeArgs;
use crate::commands::change::{self, Audit, Done, Planned, Shown};
use crate::error::{sanitize, Error, Exit, Result};
use crate::ops::token::{self as ops, LabelPlan, OneRevoked, TokenRef, TokenRow};
use crate::output::Sink;
use crate::platform::tokens as platform;
use crate::Context;

#[derive(Serialize)]
struct RevokeJson {
    revoked: Vec<Uuid>,
    already_revoked: Vec<Uuid>,
}

pub(super) async fn run(ctx: &Context, args: &TokenRevokeArgs) -> Result<Exit> {
    match (&args.token, &args.created_by) {
        (Some(t), None) => {
            let r = TokenRef::parse(t)?;
            let url = ctx.url()?;
            let mut one = One {
                ctx,
                r: &r,
                reviewed: None,
            };
            change::run(ctx, &url, change::Mode::default(), &mut one).await
        }
        (None, Some(l)) => {
            let label = ops::check_match_label(l)?;
            let url = ctx.url()?;
            let mut revoke = Label {
                ctx,
                label,
                reviewed: None,
            };
            change::run(ctx, &url, change::Mode::default(), &mut revoke).await
        }
        _ => Err(Error::usage(
            "give either a token (ID or PREFIX) or --created-by LABEL, not both",
        )),
    }
}

/// The warning before revoking the platform agent's own auto-rotated credential.
fn concierge_warning(label: &str) -> Option<String> {
    platform::is_concierge_label(label).then(|| {
        format!(
            "created_by '{}' is the platform agent's own auto-rotated credential: once it is revoked the agent cannot call the platform's API until the platform issues it a new one",
            sanitize(label)
        )
    })
}

// ---------------------------------------------------------------------------------------------
// One token

fn render_revoke_one(ctx: &Context, t: &TokenRow, revoked: bool) -> Result<()> {
    if ctx.out.json_mode() {
        let (r, a) = if revoked {
            (vec![t.id], vec![])
        } else {
            (vec![], vec![t.id])
        };
        return ctx.out.json(&RevokeJson {
            revoked: r,
            already_revoked: a,
        });
    }
    let mut table = ctx.out.new_table(["id", "prefix", "name", "result"]);
    table.add_row(vec![
        t.id.to_string(),
        sanitize(&t.prefix),
        fmt_opt_text(&t.name),
        if revoked {
            "revoked".to_string()
        } else {
            format!("already revoked ({})", fmt_opt_time(&t.revoked_at))
        },
    ]);
    ctx.out.table(&table)
}

/// Said before a single revoke is confirmed: the agent's own credential is warned about, and
/// a token that has expired already is said to be.
fn warn_one(ctx: &Context, token: &TokenRow) {
    if token.expired_unrevoked() {
        // Harmless and final: an expired token is dead to the platform already, and a revoked
        // one stays dead whatever happens to its expiry.
        ctx.out.info(&format!(
            "Token {} expired at {}: the platform already rejects it; revoking it marks it revoked for good.",
            token.label(),
            fmt_opt_time(&token.expires_at)
        ));
    }
    if let Some(w) = token.created_by.as_deref().and_then(concierge_warning) {
        ctx.out.warn(&w);
    }
}

/// What a single revoke changes, for the confirmation.
fn describe_one(token: &TokenRow) -> String {
    let anchored = match token.org_id {
        Some(o) => format!("anchored to {o}"),
        None => "unanchored".to_string(),
    };
    let mut desc = format!(
        "token {}, created_by '{}', {anchored}",
        token.label(),
        fmt_opt_text(&token.created_by)
    );
    if token
        .created_by
        .as_deref()
        .is_some_and(platform::is_concierge_label)
    {
        let _ = write!(desc, " — the platform agent's own credential");
    }
    desc
}

/// `token revoke TOKEN` as [`change::run`] drives it; `reviewed` is the token as read.
struct One<'a> {
    ctx: &'a Context,
    r: &'a TokenRef,
    reviewed: Option<TokenRow>,
}

/// The token a single revoke names; `concurrently`: found revoked under the lock, by someone
/// else.
struct OnePlan {
    token: TokenRow,
    concurrently: bool,
}

impl Planned for OnePlan {
    fn changed(&self) -> bool {
        self.token.revoked_at.is_none()
    }
    /// No `--expect-plan`: the token.
    fn hash(&self) -> String {
        self.token.id.to_string()
    }
    fn refusal(&self) -> Option<Error> {
        None
    }
}

impl change::Change for One<'_> {
    type Plan = OnePlan;
    const REVIEWED: &'static str = "plan";
    const SUBJECT: &'static str = "the token";
    const RACED: Option<&'static str> = None;
    const OUTCOME: &'static str = "revoked";

    fn command(&self) -> &'static str {
        "token revoke"
    }

    async fn plan(&mut self, tx: &mut PgConnection) -> Result<OnePlan> {
        let token = ops::find_token(tx, self.r).await?;
        if token.revoked_at.is_none() {
            warn_one(self.ctx, &token);
        }
        self.reviewed = Some(token.clone());
        Ok(OnePlan {
            token,
            concurrently: false,
        })
    }

    /// The revoke itself (with the platform's audit row): it finds a token revoked meanwhile.
    async fn lock_and_plan(
        &mut self,
        tx: &mut PgConnection,
        _tail: Option<Result<Vec<Vec<PgRow>>>>,
    ) -> Result<OnePlan> {
        let token = self
            .reviewed
            .clone()
            .ok_or_else(|| Error::failed("internal: revoking an unplanned token"))?;
        Ok(match ops::revoke_one(tx, &token).await? {
            OneRevoked::Revoked => OnePlan {
                token,
                concurrently: false,
            },
            OneRevoked::Concurrently(t) => OnePlan {
                token: t,
                concurrently: true,
            },
        })
    }

    /// Never asked for in practice: no dry run, and the plan (the token) never differs.
    fn render(&self, plan: &OnePlan, _shown: Shown) -> Result<()> {
        render_revoke_one(self.ctx, &plan.token, false)
    }

    fn review(&self, _plan: &OnePlan) -> Option<String> {
        None
    }

    fn question(&self, plan: &OnePlan, target: &str) -> String {
        format!("Revoke {} on {target}?", describe_one(&plan.token))
    }

    fn confirm(&self, ctx: &Context, plan: &OnePlan, target: &str) -> Result<()> {
        let what = format!("revokes {}", describe_one(&plan.token));
        confirm(ctx, &what, &self.question(plan, target))
    }

    async fn apply(&mut self, _tx: &mut PgConnection, plan: &OnePlan) -> Result<Audit> {
        Ok(Audit {
            args: ops::revoke_one_audit(self.r, &plan.token),
            check: None,
        })
    }

    async fn finish(
        &mut self,
        _conn: &mut PgConnection,
        plan: &OnePlan,
        done: Done,
    ) -> Result<Exit> {
        let t = &plan.token;
        let applied = done != Done::Nothing;
        self.ctx.out.info(&if applied {
            format!("Revoked token {}; it no longer authenticates.", t.label())
        } else if plan.concurrently {
            format!(
                "Token {} was revoked concurrently at {}; nothing to do.",
                t.label(),
                fmt_opt_time(&t.revoked_at)
            )
        } else {
            format!(
                "Token {} was already revoked at {}; nothing to do.",
                t.label(),
                fmt_opt_time(&t.revoked_at)
            )
        });
        render_revoke_one(self.ctx, t, applied)?;
        Ok(Exit::Ok)
    }
}

// ---------------------------------------------------------------------------------------------
// By label

/// "N live token(s)", or with expired ones "N token(s) (L live, E expired)".
fn label_what(plan: &LabelPlan) -> String {
    if plan.expired > 0 {
        format!(
            "{} token(s) ({} live, {} expired)",
            plan.unrevoked(),
            plan.live,
            plan.expired
        )
    } else {
        format!("{} live token(s)", plan.live)
    }
}

/// The sample of a bulk revoke on stderr, before the question (a terminal only).
fn show_sample(ctx: &Context, plan: &LabelPlan, shown_label: &str, what: &str) {
    let rows: Vec<Vec<String>> = plan.sample.iter().map(|s| compact_cells(s, true)).collect();
    let t = compact_list(ctx, &rows, true);
    let mut text = format!("Tokens with created_by '{shown_label}' to revoke: {what}:\n{t}");
    let unrevoked = plan.unrevoked();
    if unrevoked > plan.sample.len() as i64 {
        let _ = writeln!(
            text,
            "… and {} more (see `orgctl token list --all --created-by '{shown_label}' --limit 0`)",
            unrevoked - plan.sample.len() as i64
        );
    }
    crate::output::stderr(&text);
}

/// `token revoke --created-by LABEL` as [`change::run`] drives it; `reviewed` is the plan the
/// audit row says was confirmed.
struct Label<'a> {
    ctx: &'a Context,
    label: &'a str,
    reviewed: Option<LabelPlan>,
}

/// A revoke by label: the plan confirmed, and under the lock what the revoke did.
struct LabelState {
    plan: LabelPlan,
    /// Under the lock: how many were revoked (0: revoked by someone else meanwhile) and when.
    revoked: Option<(i64, DateTime<Utc>)>,
    /// No token has the label (exit 1).
    unknown: Option<String>,
}

impl Planned for LabelState {
    fn changed(&self) -> bool {
        match self.revoked {
            Some((done, _)) => done > 0,
            None => self.plan.unrevoked() > 0,
        }
    }
    /// No `--expect-plan`, and by design no comparison: every unrevoked token of the label at
    /// the moment of the revoke dies, minted after the confirmation or not.
    fn hash(&self) -> String {
        String::new()
    }
    fn refusal(&self) -> Option<Error> {
        self.unknown.as_ref().map(|m| Error::failed(m.clone()))
    }
}

impl Label<'_> {
    /// "N live token(s) … with created_by '…'[ — the platform agent's own credential]".
    fn describe(&self, plan: &LabelPlan) -> String {
        let own = if concierge_warning(self.label).is_some() {
            " — the platform agent's own credential"
        } else {
            ""
        };
        format!(
            "{} with created_by '{}'{own}",
            label_what(plan),
            sanitize(self.label)
        )
    }
}

impl change::Change for Label<'_> {
    type Plan = LabelState;
    const REVIEWED: &'static str = "plan";
    const SUBJECT: &'static str = "the tokens";
    const RACED: Option<&'static str> = None;
    const OUTCOME: &'static str = "revoked";

    fn command(&self) -> &'static str {
        "token revoke"
    }

    /// How many and which (a bounded sample; the count is exact); the agent's own credential
    /// warned about when there is something to revoke.
    async fn plan(&mut self, tx: &mut PgConnection) -> Result<LabelState> {
        let plan = ops::read_label(tx, self.label).await?;
        let unknown = (plan.total == 0).then(|| {
            format!(
                "no token has created_by '{}' (the match is exact); check the label with `orgctl token list --all`",
                sanitize(self.label)
            )
        });
        if unknown.is_none() && plan.unrevoked() > 0 {
            if let Some(w) = concierge_warning(self.label) {
                self.ctx.out.warn(&w);
            }
        }
        self.reviewed = Some(plan.clone());
        Ok(LabelState {
            plan,
            revoked: None,
            unknown,
        })
    }

    /// The revoke itself: every token of the label unrevoked now.
    async fn lock_and_plan(
        &mut self,
        tx: &mut PgConnection,
        _tail: Option<Result<Vec<Vec<PgRow>>>>,
    ) -> Result<LabelState> {
        let plan = self
            .reviewed
            .clone()
            .ok_or_else(|| Error::failed("internal: revoking an unplanned label"))?;
        let revoked = ops::revoke_label(tx, self.label).await?;
        Ok(LabelState {
            plan,
            revoked: Some(revoked),
            unknown: None,
        })
    }

    /// Never asked for: a revoke by label has no dry run, and its plan is never compared.
    fn render(&self, _plan: &LabelState, _shown: Shown) -> Result<()> {
        Ok(())
    }

    fn review(&self, _plan: &LabelState) -> Option<String> {
        None
    }

    /// The sample, on stderr.
    fn reviewed(&self, s: &LabelState) {
        show_sample(
            self.ctx,
            &s.plan,
            &sanitize(self.label),
            &label_what(&s.plan),
        );
    }

    fn question(&self, s: &LabelState, target: &str) -> String {
        format!("Revoke {} on {target}?", self.describe(&s.plan))
    }

    fn confirm(&self, ctx: &Context, s: &LabelState, target: &str) -> Result<()> {
        let shown_label = sanitize(self.label);
        let what = format!(
            "revokes {} (check them with `orgctl token list --all --created-by '{shown_label}'`)",
            self.describe(&s.plan)
        );
        confirm(ctx, &what, &self.question(s, target))
    }

    async fn apply(&mut self, _tx: &mut PgConnection, s: &LabelState) -> Result<Audit> {
        let done = s.revoked.map(|(done, _)| done).unwrap_or(0);
        Ok(Audit {
            args: ops::revoke_label_audit(self.label, &s.plan, done),
            check: None,
        })
    }

    /// Nothing to revoke (nothing written, not even an audit row: the result lists them as
    /// already revoked), or what was revoked; then the tokens read back.
    async fn finish(
        &mut self,
        conn: &mut PgConnection,
        s: &LabelState,
        done: Done,
    ) -> Result<Exit> {
        let (ctx, label) = (self.ctx, self.label);
        let shown_label = sanitize(label);
        match (done, s.revoked) {
            (Done::Nothing, None) => {
                ctx.out.info(&format!(
                    "Every token with created_by '{shown_label}' ({}) is already revoked; nothing to do.",
                    s.plan.total
                ));
                render_revoke_label(ctx, conn, label, None).await?;
            }
            (Done::Nothing, Some(_)) => {
                ctx.out.info(&format!(
                    "Every token with created_by '{shown_label}' was revoked concurrently; nothing to do."
                ));
                render_revoke_label(ctx, conn, label, None)
                    .await
                    .map_err(|e| {
                        e.context(
                            "nothing was revoked by this run, but reading the tokens back failed",
                        )
                    })?;
            }
            (_, revoked) => {
                let (done, at) = revoked
                    .ok_or_else(|| Error::failed("internal: a revoke without its result"))?;
                report_label(ctx, conn, label, &s.plan, done, at).await?;
            }
        }
        Ok(Exit::Ok)
    }
}

/// After a committed bulk revoke: what was revoked, then the tokens read back.
async fn report_label(
    ctx: &Context,
    conn: &mut PgConnection,
    label: &str,
    plan: &LabelPlan,
    done: i64,
    at: DateTime<Utc>,
) -> Result<()> {
    let shown_label = sanitize(label);
    let (live, expired, unrevoked) = (plan.live, plan.expired, plan.unrevoked());
    if done != unrevoked {
        ctx.out.warn(&format!(
            "{unrevoked} token(s) were confirmed but {done} were revoked: tokens with this label were minted or revoked in between"
        ));
    }
    let split = if expired > 0 {
        format!(" ({live} live and {expired} expired when confirmed)")
    } else {
        String::new()
    };
    ctx.out.info(&format!(
        "Revoked {done} token(s) with created_by '{shown_label}'{split}; they no longer authenticate."
    ));
    // Committed: a failing read-back must not read as "nothing changed".
    let already = render_revoke_label(ctx, conn, label, Some((at, done)))
        .await
        .map_err(|e| {
            Error::failed(format!(
                "{done} token(s) with created_by '{shown_label}' were revoked and committed, but reading them back failed ({}); the output above is incomplete: see them with `orgctl token list --all --created-by '{shown_label}'`",
                // The read-back's own (read-only) transaction is what ended, not the revoke.
                e.message.replace("; the open transaction was rolled back", "")
            ))
        })?;
    if already > 0 {
        ctx.out.info(&format!(
            "{already} other token(s) with this label were already revoked (listed as already revoked)."
        ));
    }
    Ok(())
}

/// The rendering of a bulk revoke's read-back as its rows arrive: JSON streamed, or a table
/// of the first rows.
struct ReadBack {
    json: bool,
    sink: Sink,
    table: comfy_table::Table,
    shown: usize,
    revoked: i64,
    already: i64,
}

impl ReadBack {
    fn open(ctx: &Context, json: bool) -> Result<Self> {
        let mut sink = Sink::new();
        if json {
            sink.write("{\"revoked\": [")?;
        }
        Ok(ReadBack {
            json,
            sink,
            table: ctx.out.new_table(["id", "prefix", "name", "result"]),
            shown: 0,
            revoked: 0,
            already: 0,
        })
    }

    /// One batch; whether to read on.
    fn batch(&mut self, rows: &[(TokenRow, bool)]) -> Result<bool> {
        if self.sink.closed {
            return Ok(false);
        }
        for (t, mine) in rows {
            if self.json {
                self.json_item(t, *mine)?;
            } else if self.shown < SHOWN * 2 {
                self.table.add_row(vec![
                    t.id.to_string(),
                    sanitize(&t.prefix),
                    fmt_opt_text(&t.name),
                    if *mine {
                        "revoked".to_string()
                    } else {
                        format!("already revoked ({})", fmt_opt_time(&t.revoked_at))
                    },
                ]);
                self.shown += 1;
            }
            if *mine {
                self.revoked += 1;
            } else {
                self.already += 1;
            }
        }
        Ok(true)
    }

    /// `{"revoked": [...], "already_revoked": [...]}`, this run's rows first.
    fn json_item(&mut self, t: &TokenRow, mine: bool) -> Result<()> {
        let sep = if mine {
            if self.revoked == 0 {
                "\n  "
            } else {
                ",\n  "
            }
        } else if self.already == 0 {
            // The first already revoked token closes the revoked list.
            if self.revoked > 0 {
                "\n ],\n \"already_revoked\": [\n  "
            } else {
                "],\n \"already_revoked\": [\n  "
            }
        } else {
            ",\n  "
        };
        self.sink.write(&format!("{sep}\"{}\"", t.id))
    }

    fn finish(&mut self) -> Result<()> {
        let n = self.revoked + self.already;
        if self.json {
            self.sink
                .write(match (self.revoked > 0, self.already > 0) {
                    (_, true) => "\n ]}\n",
                    (true, false) => "\n ],\n \"already_revoked\": []}\n",
                    (false, false) => "],\n \"already_revoked\": []}\n",
                })?;
        } else if self.shown > 0 {
            self.sink.write(&format!("{}\n", self.table))?;
            if n > self.shown as i64 {
                self.sink.write(&format!(
                    "… and {} more (use --output json for all)\n",
                    n - self.shown as i64
                ))?;
            }
        }
        self.sink.flush()
    }
}

/// The result of a bulk revoke, read back ([`ops::read_back_revoked`]) so a huge incident
/// never sits in memory: `revoked` is this run's `revoked_at` and count; the label's other
/// revoked tokens are `already_revoked`. Returns how many were already revoked.
async fn render_revoke_label(
    ctx: &Context,
    conn: &mut PgConnection,
    label: &str,
    revoked: Option<(DateTime<Utc>, i64)>,
) -> Result<i64> {
    let json = ctx.out.json_mode();
    let (at, count) = match revoked {
        Some((at, count)) => (Some(at), count),
        None => (None, 0),
    };
    // Opened once the cursor is: an error before it leaves stdout empty.
    let mut out: Option<ReadBack> = None;
    ops::read_back_revoked(conn, &ctx.settings, label, at, |rows| {
        if out.is_none() {
            out = Some(ReadBack::open(ctx, json)?);
        }
        match out.as_mut() {
            Some(o) => o.batch(rows),
            None => Ok(false),
        }
    })
    .await?;
    let mut out = match out {
        Some(o) => o,
        None => ReadBack::open(ctx, json)?,
    };
    out.finish()?;
    if out.revoked != count && !out.sink.closed {
        ctx.out.warn(&format!(
            "read back {} revoked token(s) where {count} were revoked; a concurrent change touched them",
            out.revoked
        ));
    }
    Ok(out.already)
}
