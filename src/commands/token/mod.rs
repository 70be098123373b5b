//! `orgctl token`: mint, list, revoke and anchor org API tokens. Each subcommand turns its
//! arguments into the input of [`crate::ops::token`], asks before a change, and renders the
//! result; the shared pieces (the confirmation, the compact row, cell formats) are here.

mod anchor;
mod list;
mod mint;
mod revoke;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::cli::TokenCommand;
use crate::db;
use crate::error::{sanitize, Error, Exit, Result};
use crate::ops::token::TokenRow;
use crate::Context;

/// Tokens shown in a confirmation or a bulk result table.
const SHOWN: usize = crate::ops::token::SHOWN;

pub async fn run(ctx: &Context, cmd: &TokenCommand) -> Result<Exit> {
    match cmd {
        TokenCommand::Mint(a) => mint::run(ctx, a).await,
        TokenCommand::List(a) => list::run(ctx, a).await,
        TokenCommand::Revoke(a) => revoke::run(ctx, a).await,
        TokenCommand::Anchor(a) => anchor::run(ctx, a).await,
    }
}

use super::connect;

/// Ask before changing rows ([`crate::output::Output::confirm`]: `--yes` skips it, the
/// default answer is no). No terminal and no `--yes` is a refusal (exit 3) that says `what`
/// would have changed: a token change has no dry run to point to.
fn confirm(ctx: &Context, what: &str, question: &str) -> Result<()> {
    if !ctx.yes && !ctx.out.interactive() {
        return Err(Error::refused(format!(
            "confirmation needed: this {what} and {}; nothing was changed: rerun with --yes",
            ctx.out.no_prompt_reason()
        )));
    }
    ctx.out.confirm(question, ctx.yes)
}

/// A line for stderr when the COMMIT's answer was lost and orgctl verified it.
fn note_commit(ctx: &Context, committed: &db::Committed) {
    if let Some(note) = committed.note() {
        ctx.out.info(note);
    }
}

fn fmt_time(t: &DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

fn fmt_opt_time(t: &Option<DateTime<Utc>>) -> String {
    t.as_ref().map(fmt_time).unwrap_or_else(|| "-".into())
}

fn fmt_opt_uuid(u: &Option<Uuid>) -> String {
    u.map(|u| u.to_string()).unwrap_or_else(|| "-".into())
}

fn fmt_opt_text(s: &Option<String>) -> String {
    s.as_deref().map(sanitize).unwrap_or_else(|| "-".into())
}

/// The default table: fits the terminal (80 columns when unknown), the prefix is the handle
/// (`revoke`/`anchor` take it), org ids are shortened to 8 characters, times to dates. Full
/// ids and times with `--wide`.
const COMPACT_HEADER: [&str; 6] = [
    "PREFIX",
    "NAME",
    "ORG",
    "CREATED_BY",
    "CREATED",
    "LAST_USED",
];
/// NAME and CREATED_BY give way; handles and dates never do.
const COMPACT_FLEX: [usize; 2] = [1, 3];

fn short_uuid(u: &Option<Uuid>) -> String {
    u.map(|u| u.to_string()[..8].to_string())
        .unwrap_or_else(|| "-".into())
}

fn date(t: &DateTime<Utc>) -> String {
    t.format("%Y-%m-%d").to_string()
}

/// The compact row. The last column is the expiry date (or `never`) of a live token; with
/// `--all`, the state with its date (`live`, `live to D`, `expired D`, `revoked D`), so the
/// table still fits 80 columns.
fn compact_cells(t: &TokenRow, all: bool) -> Vec<String> {
    let mut v = vec![
        sanitize(&t.prefix),
        fmt_opt_text(&t.name),
        short_uuid(&t.org_id),
        fmt_opt_text(&t.created_by),
        date(&t.created_at),
        t.last_used_at
            .as_ref()
            .map(date)
            .unwrap_or_else(|| "never".into()),
    ];
    let expires = t.expires_at.as_ref().map(date);
    v.push(match (all, t.state(), t.revoked_at.as_ref()) {
        (false, _, _) => expires.unwrap_or_else(|| "never".into()),
        (true, "revoked", Some(at)) => format!("revoked {}", date(at)),
        (true, "expired", _) => format!("expired {}", expires.unwrap_or_default()),
        (true, _, _) => match expires {
            Some(d) => format!("live to {d}"),
            None => "live".into(),
        },
    });
    v
}

fn compact_list(ctx: &Context, rows: &[Vec<String>], all: bool) -> String {
    let mut h: Vec<&str> = COMPACT_HEADER.to_vec();
    h.push(if all { "STATE" } else { "EXPIRES" });
    crate::output::compact_table(&h, rows, &COMPACT_FLEX, ctx.out.compact_width())
}
