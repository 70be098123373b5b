//! `orgctl token mint`: the plaintext goes to stdout once, before the commit; a closed stdout
//! rolls the insert back, so a token nobody received is never left live.

use std::fmt::Write as _;
use std::io::Write as _;

use serde::Serialize;
use uuid::Uuid;
use zeroize::Zeroizing;

use crate::cli::TokenMintArgs;
use crate::db;
use crate::error::{sanitize, Error, Exit, Result};
use crate::ops::org::Root;
use crate::ops::token::{self as ops, MintInput, MintPlan, Minted};
use crate::platform::tokens as platform;
use crate::Context;

#[derive(Serialize)]
struct MintJson<'a> {
    id: Uuid,
    prefix: &'a str,
    name: Option<&'a str>,
    org_id: Uuid,
    created_by: &'a str,
    /// True when this mint went past the platform's ceiling with `--over-ceiling`.
    over_ceiling: bool,
    auth_token: &'a str,
    /// The audit chain's head this mint moves it to.
    #[serde(skip_serializing_if = "Option::is_none")]
    audit_head: Option<crate::audit::HeadJson>,
}

pub(super) async fn run(ctx: &Context, args: &TokenMintArgs) -> Result<Exit> {
    let input = MintInput {
        name: ops::check_name(args.name.as_deref())?,
        created_by: ops::check_mint_label(args.created_by.as_deref())?,
        org: args.org,
        over_ceiling: args.over_ceiling,
        ceiling: platform::ceiling_from_env()?,
    };
    // The plaintext goes to stdout once; a stdout nobody reads would leave a live full-admin
    // token that nobody received.
    if let Some(why) = crate::sys::stdout_undeliverable() {
        return Err(Error::refused(format!(
            "refusing to mint: stdout is {why}, so the token would be shown to no one; nothing was changed: redirect stdout to a file or a terminal"
        )));
    }
    let (url, mut conn) = super::connect(ctx).await?;
    ops::plan_mint(&mut conn, &ctx.settings, &input).await?;

    let mut tx = db::begin_change(&mut conn, &url, &ctx.settings).await?;
    let plan = ops::gate_mint(&mut tx, &input).await?;
    if let Some((live, c)) = plan.over {
        ctx.out.warn(&format!(
            "--over-ceiling: minting past the platform's ceiling: the org already has {live} live token(s) and {} is {c}; both audit trails record it",
            platform::CEILING_ENV
        ));
    }
    let minted = ops::insert_token(&mut tx, &ctx.who, &input, &plan).await?;
    // Deliver first, then commit: a token nobody received is never left live.
    deliver(&document(ctx, &input, &plan, &minted)?)?;
    let committed = ops::commit_mint(tx, &url, &ctx.settings, &minted).await?;
    super::note_commit(ctx, &committed);
    ctx.out
        .info(&summary(ctx, &input, &plan.root, &minted.prefix, minted.id));
    Ok(Exit::Ok)
}

/// What goes to stdout: the JSON document, or the plaintext alone on its line.
fn document(
    ctx: &Context,
    input: &MintInput,
    plan: &MintPlan,
    minted: &Minted,
) -> Result<Zeroizing<String>> {
    if !ctx.out.json_mode() {
        let mut text = Zeroizing::new(String::with_capacity(minted.plaintext.len() + 1));
        text.push_str(&minted.plaintext);
        text.push('\n');
        return Ok(text);
    }
    let doc = MintJson {
        id: minted.id,
        prefix: &minted.prefix,
        name: input.name.as_deref(),
        org_id: plan.root.id,
        created_by: &input.created_by,
        over_ceiling: plan.over.is_some(),
        auth_token: &minted.plaintext,
        audit_head: crate::audit::committed_head(),
    };
    let mut text = Zeroizing::new(
        serde_json::to_string_pretty(&doc)
            .map_err(|e| Error::failed(format!("could not render JSON: {e}")))?,
    );
    text.push('\n');
    Ok(text)
}

/// Write the plaintext's document to stdout. Unlike other output, a closed or failing stdout
/// is an error here: the caller has not committed yet and rolls the token back.
fn deliver(text: &str) -> Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|_| out.flush())
        .map_err(|e| {
            Error::failed(format!(
                "could not write the token to stdout ({}); it was rolled back, nothing was minted",
                e.kind()
            ))
        })
}

/// The stderr summary after the commit (never the plaintext).
fn summary(ctx: &Context, input: &MintInput, root: &Root, prefix: &str, id: Uuid) -> String {
    let org = if root.is_agent {
        format!(
            "{} (the platform agent '{}')",
            root.id,
            sanitize(&root.name)
        )
    } else {
        format!("{} ('{}')", root.id, sanitize(&root.name))
    };
    let mut info = format!(
        "Minted token {id}\n  prefix:     {prefix}\n  name:       {}\n  org_id:     {org}\n  created_by: {}\n",
        input.name.as_deref().map(sanitize).unwrap_or_else(|| "-".into()),
        sanitize(&input.created_by),
    );
    if root.status.as_deref() == Some("removed") {
        info.push_str("warning: that root's status is 'removed'\n");
    }
    // "Copy it now" only to a human looking at it: captured (`TOKEN=$(…)`, a pipe, a file),
    // the token has already gone where it was sent.
    let _ = if ctx.out.stdout_is_terminal() {
        write!(
            info,
            "Copy the token now: it is shown only once and cannot be recovered (revoke it with `orgctl token revoke -- {prefix}`)."
        )
    } else {
        write!(
            info,
            "The token was written to stdout, once: it cannot be shown again (revoke it with `orgctl token revoke -- {prefix}`)."
        )
    };
    info
}
