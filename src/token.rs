//! `orgctl token`: mint, list, revoke and anchor org API tokens.
//!
//! - **mint** adds one row: 32 CSPRNG bytes, base64url without padding, `sha256` of the
//!   plaintext in `token_hash`, the first 8 characters in `prefix`, anchored to the org root.
//!   The plaintext exists only in memory (zeroed on drop) and on stdout. It is written to
//!   stdout *before* the commit: a token nobody received is never left live (a closed stdout
//!   rolls the insert back).
//! - **list** is read-only (a REPEATABLE READ READ ONLY transaction; it never creates orgctl's
//!   schema) and reads through a server-side cursor in batches, so an unlimited list (the
//!   default for JSON and for a stdout that is not a terminal; `--limit 0` anywhere) streams a
//!   million tokens with bounded memory. A limited view (`--limit N`, or the newest 100 in the
//!   table on a terminal) reads `limit + 1` rows to know whether more exist without counting.
//! - **revoke** and **anchor** change existing rows: they plan with read-only queries, show
//!   the plan and confirm (on a terminal; `--yes` without one), then lock the tenant, re-check
//!   and change the rows in one statement, with the audit row in the same transaction.
//!
//! What the platform decides — which tokens are live (expiry included), its mint ceiling,
//! its own audit rows for mint and revoke, the name limit in bytes, the labels it reserves —
//! lives in [`crate::platform::tokens`]; this module applies it.
//!
//! Nothing here ever prints, logs or audits a plaintext token or a hash. Arguments that could
//! be a pasted plaintext (anything longer than a prefix that is not a UUID) are never echoed.

use std::fmt::Write as _;
use std::io::{IsTerminal as _, Write as _};

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::postgres::PgConnection;
use sqlx::Row;
use uuid::Uuid;
use zeroize::Zeroizing;

use crate::cli::{TokenAnchorArgs, TokenCommand, TokenListArgs, TokenMintArgs, TokenRevokeArgs};
use crate::error::{sanitize, Error, Exit, Result};
use crate::platform::crypto;
use crate::platform::tokens as platform;
use crate::{db, Context};

/// `--created-by` on mint is at most this many characters (the platform sets no bound).
pub const MAX_LABEL_CHARS: usize = 200;
/// The stored prefix is the first 8 plaintext characters; a reference may be 4 to 8 of them.
pub const PREFIX_LEN: usize = 8;
pub const MIN_PREFIX_LEN: usize = 4;
/// Rows per round trip when reading through a cursor.
const FETCH_BATCH: i64 = 1000;
/// `list` shows this many tokens by default, in the table on a terminal only.
pub const DEFAULT_TABLE_LIMIT: u64 = 100;
/// Limits above this (and 0) stream tab-separated lines instead of collecting a table.
const MAX_TABLE_ROWS: u64 = 10_000;
/// Tokens shown in a confirmation, an ambiguity error or a bulk result table.
const SHOWN: usize = 20;
const CURSOR: &str = "orgctl_token_cursor";

pub async fn run(ctx: &Context, cmd: &TokenCommand) -> Result<Exit> {
    match cmd {
        TokenCommand::Mint(a) => mint(ctx, a).await,
        TokenCommand::List(a) => list(ctx, a).await,
        TokenCommand::Revoke(a) => revoke(ctx, a).await,
        TokenCommand::Anchor(a) => anchor(ctx, a).await,
    }
}

// ---------------------------------------------------------------------------------------------
// Checked input

/// How a command names one token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TokenRef {
    Id(Uuid),
    /// 4 to 8 characters matched against the start of `prefix`.
    Prefix(String),
}

impl TokenRef {
    /// A UUID is an id; 4 to 8 characters are a prefix; anything else is bad input. The
    /// argument is not echoed when it is longer than a prefix: it might be a pasted plaintext.
    pub fn parse(raw: &str) -> Result<Self> {
        if raw.chars().any(|c| c.is_control()) {
            return Err(Error::usage(
                "the token id or prefix must not contain control characters",
            ));
        }
        if let Ok(id) = Uuid::try_parse(raw) {
            return Ok(TokenRef::Id(id));
        }
        let n = raw.chars().count();
        if n > PREFIX_LEN {
            return Err(Error::usage(format!(
                "the token argument ({n} characters) is neither a token id (a UUID) nor a prefix ({MIN_PREFIX_LEN} to {PREFIX_LEN} characters); if it is a token's plaintext, use its first {PREFIX_LEN} characters"
            )));
        }
        if n < MIN_PREFIX_LEN {
            return Err(Error::usage(format!(
                "token prefix '{raw}' is too short: give at least {MIN_PREFIX_LEN} characters, or the token id"
            )));
        }
        Ok(TokenRef::Prefix(raw.to_string()))
    }

    fn kind(&self) -> &'static str {
        match self {
            TokenRef::Id(_) => "id",
            TokenRef::Prefix(_) => "prefix",
        }
    }
}

/// `prefix LIKE $1 ESCAPE '\'`: the user's characters match literally (`_` is a base64url
/// character and a LIKE wildcard).
pub fn like_prefix(p: &str) -> String {
    let mut s = String::with_capacity(p.len() + 1);
    for c in p.chars() {
        if matches!(c, '\\' | '%' | '_') {
            s.push('\\');
        }
        s.push(c);
    }
    s.push('%');
    s
}

fn check_name(name: Option<&str>) -> Result<Option<String>> {
    let Some(n) = name else { return Ok(None) };
    let n = n.trim();
    if n.is_empty() {
        return Err(Error::usage(
            "--name must not be empty (omit it for no name)",
        ));
    }
    // The platform counts bytes: 40 characters of 3 bytes each are 120.
    let bytes = n.len();
    if bytes > platform::MAX_NAME_BYTES {
        return Err(Error::usage(format!(
            "--name is {bytes} bytes long in UTF-8 ({} characters); the platform allows at most {} bytes",
            n.chars().count(),
            platform::MAX_NAME_BYTES
        )));
    }
    if n.chars().any(|c| c.is_control()) {
        return Err(Error::usage("--name must not contain control characters"));
    }
    Ok(Some(n.to_string()))
}

fn check_mint_label(label: Option<&str>) -> Result<String> {
    let Some(l) = label else {
        return Ok(format!("orgctl:{}", crate::sys::os_user()));
    };
    let l = l.trim();
    if l.is_empty() {
        return Err(Error::usage(
            "--created-by must not be empty (omit it for orgctl:<OS user>)",
        ));
    }
    let len = l.chars().count();
    if len > MAX_LABEL_CHARS {
        return Err(Error::usage(format!(
            "--created-by is {len} characters long; at most {MAX_LABEL_CHARS} are allowed"
        )));
    }
    if l.chars().any(|c| c.is_control()) {
        return Err(Error::usage(
            "--created-by must not contain control characters",
        ));
    }
    // A token minted under the platform's own provenance would pass for one the platform
    // minted (or for the agent's own credential) in every audit and every bulk revoke.
    if let Some(why) = platform::reserved_label(l) {
        return Err(Error::usage(format!(
            "--created-by '{}' is reserved by the platform ({why}); choose a label of your own, e.g. the incident or change number",
            sanitize(l)
        )));
    }
    Ok(l.to_string())
}

/// A label to match (revoke, list): exact, not trimmed, but never empty.
fn check_match_label(label: &str) -> Result<&str> {
    if label.is_empty() {
        return Err(Error::usage("--created-by must not be empty"));
    }
    Ok(label)
}

// ---------------------------------------------------------------------------------------------
// Reading

#[derive(Clone, Debug, sqlx::FromRow)]
pub struct TokenRow {
    pub id: Uuid,
    pub prefix: String,
    pub name: Option<String>,
    pub org_id: Option<Uuid>,
    pub created_by: Option<String>,
    pub created_at: DateTime<Utc>,
    pub last_used_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
    pub expires_at: Option<DateTime<Utc>>,
    /// Past its `expires_at` (by the database's clock), revoked or not.
    pub expired: bool,
}

/// The columns of a [`TokenRow`]; `expired` is judged by the database's clock, as the
/// platform judges it.
const TOKEN_COLUMNS: &str = "id, prefix, name, org_id, created_by, created_at, last_used_at, revoked_at, expires_at, COALESCE(expires_at <= now(), false) AS expired";

impl TokenRow {
    /// Whether the platform still accepts it ([`platform::live`]).
    pub fn live(&self) -> bool {
        self.revoked_at.is_none() && !self.expired
    }

    /// Expired and not revoked: dead to the platform, though `revoke` still marks it revoked.
    pub fn expired_unrevoked(&self) -> bool {
        self.revoked_at.is_none() && self.expired
    }

    /// "id (prefix p, 'name')" for messages.
    fn label(&self) -> String {
        match &self.name {
            Some(n) => format!("{} (prefix {}, '{}')", self.id, self.prefix, sanitize(n)),
            None => format!("{} (prefix {})", self.id, self.prefix),
        }
    }
}

/// Find exactly one token (live or revoked) by id or unique prefix. Unknown: exit 1;
/// ambiguous prefix: exit 2 listing the candidates.
pub async fn find_token(conn: &mut PgConnection, r: &TokenRef) -> Result<TokenRow> {
    match r {
        TokenRef::Id(id) => {
            let row: Option<TokenRow> = db::query_as(&format!(
                "SELECT {TOKEN_COLUMNS} FROM org_api_tokens WHERE id = $1"
            ))
            .bind(id)
            .fetch_optional(&mut *conn)
            .await?;
            row.ok_or_else(|| {
                Error::failed(format!(
                    "no token with id {id} in this tenant; check the id with `orgctl token list --all`"
                ))
            })
        }
        TokenRef::Prefix(p) => {
            // Prefixes are short and random: few rows match, but a million-row table has no
            // index on prefix, so fetch a bounded page with the total.
            let rows = db::query(&format!(
                "SELECT {TOKEN_COLUMNS}, count(*) OVER () AS matches
                   FROM org_api_tokens WHERE prefix LIKE $1 ESCAPE '\\'
                  ORDER BY created_at DESC, id DESC LIMIT $2"
            ))
            .bind(like_prefix(p))
            .bind(SHOWN as i64)
            .fetch_all(&mut *conn)
            .await?;
            let matches: i64 = match rows.first() {
                Some(r) => r.try_get("matches")?,
                None => 0,
            };
            let tokens = rows
                .iter()
                .map(<TokenRow as sqlx::FromRow<_>>::from_row)
                .collect::<std::result::Result<Vec<TokenRow>, sqlx::Error>>()?;
            match tokens.len() {
                0 => {
                    // With a leading hyphen it may have been meant as an option.
                    let hint = if p.starts_with('-') {
                        " (if you meant an option, see --help)"
                    } else {
                        ""
                    };
                    Err(Error::failed(format!(
                        "no token has a prefix starting with '{p}'{hint}; check it with `orgctl token list --all`"
                    )))
                }
                1 if matches == 1 => Ok(tokens.into_iter().next().ok_or_else(|| {
                    Error::failed("the matching token vanished while it was read")
                })?),
                _ => {
                    let listed: Vec<String> = tokens
                        .iter()
                        .map(|t| {
                            let state = if t.revoked_at.is_some() {
                                ", revoked"
                            } else if t.expired {
                                ", expired"
                            } else {
                                ""
                            };
                            format!("{} {}{state}", t.id, t.prefix)
                        })
                        .collect();
                    let more = matches - tokens.len() as i64;
                    let more = if more > 0 {
                        format!(" and {more} more")
                    } else {
                        String::new()
                    };
                    Err(Error::usage(format!(
                        "prefix '{p}' is ambiguous: it matches {matches} tokens ({}{more}); give a longer prefix or the token id",
                        listed.join("; ")
                    )))
                }
            }
        }
    }
}

/// The workspace a token is anchored to by default or by `--org`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Root {
    pub id: Uuid,
    pub name: String,
    pub status: Option<String>,
    pub is_agent: bool,
}

/// Resolve the org root: `--org` (which must be a root), else the platform agent, else the
/// only root. Several roots and no agent: `--org` is required (exit 2). Read-only.
pub async fn resolve_root(conn: &mut PgConnection, org: Option<Uuid>) -> Result<Root> {
    if let Some(org) = org {
        let row = db::query(
            "SELECT id, name, parent_id, status::text, COALESCE(kind, 'workspace') = 'platform'
               FROM workspaces WHERE id = $1",
        )
        .bind(org)
        .fetch_optional(&mut *conn)
        .await?;
        let Some(row) = row else {
            return Err(Error::refused(format!(
                "--org {org} names no workspace in this tenant; pass the id of an org root (a workspace with no parent; see `orgctl status`)"
            )));
        };
        let name: String = row.try_get(1)?;
        let parent: Option<Uuid> = row.try_get(2)?;
        if let Some(parent) = parent {
            return Err(Error::refused(format!(
                "--org {org} ('{}') is not an org root: its parent is {parent}; tokens are anchored to a root, so pass the root's id or omit --org",
                sanitize(&name)
            )));
        }
        return Ok(Root {
            id: org,
            name,
            status: row.try_get(3)?,
            is_agent: row.try_get(4)?,
        });
    }

    let agents = db::query(
        "SELECT id, name, parent_id, status::text FROM workspaces
          WHERE kind = 'platform' ORDER BY id LIMIT 11",
    )
    .fetch_all(&mut *conn)
    .await?;
    match agents.len() {
        0 => {}
        1 => {
            let r = &agents[0];
            let id: Uuid = r.try_get(0)?;
            let parent: Option<Uuid> = r.try_get(2)?;
            if parent.is_some() {
                return Err(Error::refused(format!(
                    "the platform agent {id} is not a root (its parent_id is set); run `orgctl install-platform-agent` to repair the org, or pass --org ROOT"
                )));
            }
            return Ok(Root {
                id,
                name: r.try_get(1)?,
                status: r.try_get(3)?,
                is_agent: true,
            });
        }
        _ => {
            let ids: Vec<String> = agents
                .iter()
                .filter_map(|r| r.try_get::<Uuid, _>(0).ok())
                .map(|u| u.to_string())
                .collect();
            return Err(Error::refused(format!(
                "this tenant has several platform agents ({}), so the org root is ambiguous; fix the data, or pass --org ROOT",
                ids.join(", ")
            )));
        }
    }

    // Live roots first (oldest first), `removed` tombstones last: the operator picks from the
    // top of the list.
    let roots = db::query(
        "SELECT id, name, status::text, count(*) OVER (),
                count(*) FILTER (WHERE COALESCE(status::text, '') <> 'removed') OVER ()
           FROM workspaces
          WHERE parent_id IS NULL
          ORDER BY COALESCE(status::text, '') = 'removed', created_at NULLS LAST, id
          LIMIT $1",
    )
    .bind(SHOWN as i64)
    .fetch_all(&mut *conn)
    .await?;
    let (total, live): (i64, i64) = match roots.first() {
        Some(r) => (r.try_get(3)?, r.try_get(4)?),
        None => (0, 0),
    };
    match total {
        0 => Err(Error::refused(
            "this tenant has no root workspace (parent_id IS NULL), so there is no org to anchor a token to; check the tenant with `orgctl status`",
        )),
        1 => {
            let r = &roots[0];
            Ok(Root {
                id: r.try_get(0)?,
                name: r.try_get(1)?,
                status: r.try_get(2)?,
                is_agent: false,
            })
        }
        n => {
            let mut first_live = None;
            let listed: Vec<String> = roots
                .iter()
                .map(|r| {
                    let id: Uuid = r.try_get(0).unwrap_or_default();
                    let name: String = r.try_get(1).unwrap_or_default();
                    let status: Option<String> = r.try_get(2).unwrap_or_default();
                    if status.as_deref() == Some("removed") {
                        format!("{id} '{}' (removed)", sanitize(&name))
                    } else {
                        first_live.get_or_insert(id);
                        format!("{id} '{}'", sanitize(&name))
                    }
                })
                .collect();
            let more = n - roots.len() as i64;
            let more = if more > 0 {
                format!(" and {more} more")
            } else {
                String::new()
            };
            let how = match first_live {
                Some(id) => format!(
                    "choose the root of the org the token is for (live roots are listed first, oldest first) and run again with --org, e.g. --org {id}"
                ),
                None => "every root is removed; choose one with --org if you must".to_string(),
            };
            Err(Error::usage(format!(
                "--org is required: this tenant has {n} roots ({live} live) and no platform agent: {}{more}; {how}, or install the platform agent first",
                listed.join(", ")
            )))
        }
    }
}

/// Ask before changing rows: `--yes` skips it; no terminal and no `--yes` is a refusal
/// (exit 3) that says what would have changed.
fn ensure_confirmed(ctx: &Context, what: &str, question: &str) -> Result<()> {
    if ctx.yes {
        return Ok(());
    }
    if !ctx.out.interactive() {
        return Err(Error::refused(format!(
            "confirmation needed: this {what} and {}; nothing was changed: rerun with --yes",
            ctx.out.no_prompt_reason()
        )));
    }
    ctx.out.confirm(question, false)
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

// ---------------------------------------------------------------------------------------------
// mint

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

/// The platform's mint ceiling for `root`: refuse (exit 3) when the org already has `ceiling`
/// live tokens, unless `break_glass`. Returns `(live, ceiling)` when a break-glass mint goes
/// past it. Only the caller's transaction sees the count; under the tenant lock no other
/// orgctl mint can pass the same count.
async fn ceiling_gate(
    conn: &mut PgConnection,
    root: &Root,
    ceiling: Option<i64>,
    break_glass: bool,
) -> Result<Option<(i64, i64)>> {
    let Some(ceiling) = ceiling else {
        return Ok(None);
    };
    let live = platform::live_count(conn, root.id).await?;
    if live < ceiling {
        return Ok(None);
    }
    if !break_glass {
        return Err(Error::refused(format!(
            "refusing to mint: the org {} ('{}') already has {live} live token(s) and the platform's ceiling ({}) is {ceiling}, so the platform itself would refuse this mint; nothing was changed: revoke tokens it no longer needs (`orgctl token list --org {}`), or pass --over-ceiling for a break-glass mint past it (recorded in both audit trails)",
            root.id,
            sanitize(&root.name),
            platform::CEILING_ENV,
            root.id
        )));
    }
    Ok(Some((live, ceiling)))
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

/// A failed mint COMMIT, for the operator holding a printed token: "NOT minted" only when the
/// server said so or orgctl verified it; otherwise the token may be live.
fn mint_commit_error(e: db::CommitError) -> Error {
    let in_doubt = e.in_doubt();
    let msg = match e {
        db::CommitError::Refused { cause } => format!(
            "the database refused the COMMIT ({cause}); the token printed above was NOT minted and will not work: rerun"
        ),
        db::CommitError::NotCommitted { target, cause } => format!(
            "the connection to {target} was lost during COMMIT ({cause}); orgctl reconnected and verified that the token printed above was NOT minted and will not work: rerun"
        ),
        db::CommitError::InDoubt {
            target,
            cause,
            why,
            check,
        } => format!(
            "the connection to {target} was lost during COMMIT ({cause}) and orgctl could not find out whether it was committed ({why}): it may have been committed, so the token printed above may be live; check {check}"
        ),
    };
    let mut err = Error::failed(msg);
    err.in_doubt = in_doubt;
    err
}

async fn mint(ctx: &Context, args: &TokenMintArgs) -> Result<Exit> {
    let name = check_name(args.name.as_deref())?;
    let created_by = check_mint_label(args.created_by.as_deref())?;
    let ceiling = platform::ceiling_from_env()?;
    // The plaintext goes to stdout once; a stdout nobody reads would leave a live full-admin
    // token that nobody received.
    if let Some(why) = crate::sys::stdout_undeliverable() {
        return Err(Error::refused(format!(
            "refusing to mint: stdout is {why}, so the token would be shown to no one; nothing was changed: redirect stdout to a file or a terminal"
        )));
    }
    let url = ctx.url()?;
    let mut conn = db::connect(&url, &ctx.settings).await?;
    db::ensure_compatible(&mut conn).await?;

    // Check the anchor and the ceiling before creating anything (orgctl's schema included).
    {
        let mut tx = db::begin_read_only(&mut conn, &ctx.settings).await?;
        let root = resolve_root(&mut tx, args.org).await?;
        ceiling_gate(&mut tx, &root, ceiling, args.over_ceiling).await?;
        tx.rollback().await?;
    }

    let mut tx = db::begin_change(&mut conn, &url, &ctx.settings).await?;
    // Again under the lock: an install may have made the agent the root meanwhile, and a
    // concurrent mint may have reached the ceiling.
    let root = resolve_root(&mut tx, args.org).await?;
    let over = ceiling_gate(&mut tx, &root, ceiling, args.over_ceiling).await?;
    if let Some((live, c)) = over {
        ctx.out.warn(&format!(
            "--over-ceiling: minting past the platform's ceiling: the org already has {live} live token(s) and {} is {c}; both audit trails record it",
            platform::CEILING_ENV
        ));
    }

    let plaintext = crypto::new_token()?;
    let prefix: String = plaintext.chars().take(PREFIX_LEN).collect();
    let hash = crypto::token_hash(&plaintext);
    let row = db::query(
        "INSERT INTO org_api_tokens (token_hash, prefix, name, created_by, org_id)
         VALUES ($1, $2, $3, $4, $5) RETURNING id",
    )
    .bind(&hash)
    .bind(&prefix)
    .bind(name.as_deref())
    .bind(&created_by)
    .bind(root.id)
    .fetch_one(&mut *tx)
    .await?;
    let id: Uuid = row.try_get(0)?;
    platform::audit_mint(
        &mut tx,
        id,
        &created_by,
        root.id,
        name.as_deref(),
        &prefix,
        over,
    )
    .await?;
    crate::audit::record(
        &mut tx,
        "token mint",
        &serde_json::json!({
            "id": id,
            "prefix": prefix,
            "name": name,
            "org_id": root.id,
            "org_given": args.org.is_some(),
            "created_by": created_by,
            "over_ceiling": over.is_some(),
            "live_tokens": over.map(|o| o.0),
            "ceiling": ceiling,
        }),
        "minted",
    )
    .await?;

    // Deliver first, then commit: a token nobody received is never left live.
    let doc: Zeroizing<String> = if ctx.out.json_mode() {
        let doc = MintJson {
            id,
            prefix: &prefix,
            name: name.as_deref(),
            org_id: root.id,
            created_by: &created_by,
            over_ceiling: over.is_some(),
            auth_token: &plaintext,
            audit_head: crate::audit::committed_head(),
        };
        let mut text = Zeroizing::new(
            serde_json::to_string_pretty(&doc)
                .map_err(|e| Error::failed(format!("could not render JSON: {e}")))?,
        );
        text.push('\n');
        text
    } else {
        let mut text = Zeroizing::new(String::with_capacity(plaintext.len() + 1));
        text.push_str(&plaintext);
        text.push('\n');
        text
    };
    deliver(&doc)?;
    let evidence = crate::ops::evidence::Token {
        hash: hash.clone(),
        prefix: prefix.clone(),
    };
    let committed = db::commit_guarded(tx, &url, &ctx.settings, &evidence)
        .await
        .map_err(mint_commit_error)?;
    if let Some(note) = committed.note() {
        ctx.out.info(note);
    }

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
        name.as_deref().map(sanitize).unwrap_or_else(|| "-".into()),
        sanitize(&created_by),
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
    ctx.out.info(&info);
    Ok(Exit::Ok)
}

// ---------------------------------------------------------------------------------------------
// list

#[derive(Serialize)]
struct ListedJson<'a> {
    id: Uuid,
    prefix: &'a str,
    name: Option<&'a str>,
    org_id: Option<Uuid>,
    created_by: Option<&'a str>,
    created_at: DateTime<Utc>,
    last_used_at: Option<DateTime<Utc>>,
    expires_at: Option<DateTime<Utc>>,
    /// Present (possibly null) only with --all.
    #[serde(skip_serializing_if = "Option::is_none")]
    revoked_at: Option<Option<DateTime<Utc>>>,
    /// `live`, `expired` or `revoked`; only with --all.
    #[serde(skip_serializing_if = "Option::is_none")]
    state: Option<&'static str>,
}

const LIST_HEADER: [&str; 8] = [
    "id",
    "prefix",
    "name",
    "org_id",
    "created_by",
    "created_at",
    "last_used_at",
    "expires_at",
];

/// A token as the platform sees it: `revoked` wins over `expired`.
fn state(t: &TokenRow) -> &'static str {
    if t.revoked_at.is_some() {
        "revoked"
    } else if t.expired {
        "expired"
    } else {
        "live"
    }
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
    v.push(match (all, state(t), t.revoked_at.as_ref()) {
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

fn list_cells(t: &TokenRow, all: bool) -> Vec<String> {
    let mut v = vec![
        t.id.to_string(),
        sanitize(&t.prefix),
        fmt_opt_text(&t.name),
        fmt_opt_uuid(&t.org_id),
        fmt_opt_text(&t.created_by),
        fmt_time(&t.created_at),
        fmt_opt_time(&t.last_used_at),
        fmt_opt_time(&t.expires_at),
    ];
    if all {
        v.push(fmt_opt_time(&t.revoked_at));
        v.push(state(t).to_string());
    }
    v
}

/// The number of tokens `list` shows (None: all, streamed). `--limit N` wins (0 = all).
/// Without it a script gets every match: JSON, or any stdout that is not a terminal. Only the
/// human table on a terminal defaults to the newest [`DEFAULT_TABLE_LIMIT`] (stderr says when
/// more match), so a 3 a.m. `token list` does not scroll a million rows past.
pub fn effective_limit(given: Option<u64>, json: bool, stdout_tty: bool) -> Option<u64> {
    match given {
        Some(0) => None,
        Some(n) => Some(n),
        None if json || !stdout_tty => None,
        None => Some(DEFAULT_TABLE_LIMIT),
    }
}

async fn list(ctx: &Context, args: &TokenListArgs) -> Result<Exit> {
    let label = match &args.created_by {
        Some(l) => Some(check_match_label(l)?),
        None => None,
    };
    // Read one row more than shown to learn whether more exist, without counting them all.
    let limit: Option<i64> = effective_limit(
        args.limit,
        ctx.out.json_mode(),
        std::io::stdout().is_terminal(),
    )
    .map(|n| i64::try_from(n).unwrap_or(i64::MAX - 1).min(i64::MAX - 1));

    let mut conds: Vec<String> = Vec::new();
    let mut n = 0;
    if !args.all {
        conds.push(platform::live(""));
    }
    if args.org.is_some() {
        n += 1;
        conds.push(format!("org_id = ${n}"));
    }
    if args.unanchored {
        conds.push("org_id IS NULL".into());
    }
    if label.is_some() {
        n += 1;
        conds.push(format!("created_by = ${n}"));
    }
    let mut sql =
        format!("DECLARE {CURSOR} NO SCROLL CURSOR FOR SELECT {TOKEN_COLUMNS} FROM org_api_tokens");
    if !conds.is_empty() {
        let _ = write!(sql, " WHERE {}", conds.join(" AND "));
    }
    sql.push_str(" ORDER BY created_at DESC, id DESC");
    if limit.is_some() {
        n += 1;
        let _ = write!(sql, " LIMIT ${n}");
    }
    let mut q = db::query(&sql);
    if let Some(org) = args.org {
        q = q.bind(org);
    }
    if let Some(l) = label {
        q = q.bind(l);
    }
    if let Some(l) = limit {
        q = q.bind(l + 1);
    }

    let url = ctx.url()?;
    let mut conn = db::connect(&url, &ctx.settings).await?;
    db::ensure_compatible(&mut conn).await?;
    let mut tx = db::begin_read_only(&mut conn, &ctx.settings).await?;
    q.execute(&mut *tx).await?;
    let fetch = format!("FETCH {FETCH_BATCH} FROM {CURSOR}");

    let json = ctx.out.json_mode();
    let stream_text = !json && limit.map_or(true, |l| l as u64 > MAX_TABLE_ROWS);
    let mut sink = crate::output::Sink::new();
    let mut compact: Option<Vec<Vec<String>>> =
        (!json && !stream_text && !args.wide).then(Vec::new);
    let mut table = (!json && !stream_text && args.wide).then(|| {
        let mut h: Vec<&str> = LIST_HEADER.to_vec();
        if args.all {
            h.extend(["revoked_at", "state"]);
        }
        ctx.out.new_table(h)
    });
    if json {
        sink.write("[")?;
    } else if stream_text {
        let mut h = LIST_HEADER.join("\t");
        if args.all {
            h.push_str("\trevoked_at\tstate");
        }
        h.push('\n');
        sink.write(&h)?;
    }

    let mut shown: i64 = 0;
    let mut more = false;
    'read: loop {
        let rows: Vec<TokenRow> = db::query_as(&fetch).fetch_all(&mut *tx).await?;
        if rows.is_empty() {
            break;
        }
        for t in &rows {
            if limit.is_some_and(|l| shown >= l) {
                more = true;
                break 'read;
            }
            if json {
                let item = ListedJson {
                    id: t.id,
                    prefix: &t.prefix,
                    name: t.name.as_deref(),
                    org_id: t.org_id,
                    created_by: t.created_by.as_deref(),
                    created_at: t.created_at,
                    last_used_at: t.last_used_at,
                    expires_at: t.expires_at,
                    revoked_at: args.all.then_some(t.revoked_at),
                    state: args.all.then(|| state(t)),
                };
                let text = serde_json::to_string(&item)
                    .map_err(|e| Error::failed(format!("could not render JSON: {e}")))?;
                sink.write(if shown == 0 { "\n  " } else { ",\n  " })?;
                sink.write(&text)?;
            } else if let Some(rows) = compact.as_mut() {
                rows.push(compact_cells(t, args.all));
            } else if let Some(table) = table.as_mut() {
                table.add_row(list_cells(t, args.all));
            } else {
                let mut line = list_cells(t, args.all).join("\t");
                line.push('\n');
                sink.write(&line)?;
            }
            shown += 1;
        }
        if sink.closed {
            // `orgctl token list | head`: stop reading once nobody listens.
            break;
        }
    }
    tx.rollback().await?;

    if json {
        // A bare array of tokens; whether more rows match is said on stderr.
        sink.write(if shown > 0 { "\n]\n" } else { "]\n" })?;
    } else if let Some(rows) = compact {
        sink.write(&compact_list(ctx, &rows, args.all))?;
    } else if let Some(table) = table {
        sink.write(&format!("{table}\n"))?;
    }
    sink.flush()?;

    let what = if args.all { "tokens" } else { "live tokens" };
    if more {
        ctx.out.info(&format!(
            "Showing the newest {shown} {what}; more match: pass --limit N (0 for all) or narrow with --org, --unanchored or --created-by."
        ));
    } else if shown == 0 {
        ctx.out.info(&format!("No {what} match."));
    } else {
        ctx.out.detail(&format!("{shown} {what}."));
    }
    Ok(Exit::Ok)
}

// ---------------------------------------------------------------------------------------------
// revoke

#[derive(Serialize)]
struct RevokeJson {
    revoked: Vec<Uuid>,
    already_revoked: Vec<Uuid>,
}

/// Who revokes, as the platform's audit row names it: the same `created_by`-style label a
/// mint defaults to.
fn revoke_actor() -> String {
    format!("orgctl:{}", crate::sys::os_user())
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

async fn revoke(ctx: &Context, args: &TokenRevokeArgs) -> Result<Exit> {
    match (&args.token, &args.created_by) {
        (Some(t), None) => revoke_one(ctx, &TokenRef::parse(t)?).await,
        (None, Some(l)) => revoke_label(ctx, check_match_label(l)?).await,
        _ => Err(Error::usage(
            "give either a token (ID or PREFIX) or --created-by LABEL, not both",
        )),
    }
}

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

async fn revoke_one(ctx: &Context, r: &TokenRef) -> Result<Exit> {
    let url = ctx.url()?;
    let mut conn = db::connect(&url, &ctx.settings).await?;
    db::ensure_compatible(&mut conn).await?;
    let token = {
        let mut tx = db::begin_read_only(&mut conn, &ctx.settings).await?;
        let t = find_token(&mut tx, r).await?;
        tx.rollback().await?;
        t
    };
    if token.revoked_at.is_some() {
        ctx.out.info(&format!(
            "Token {} was already revoked at {}; nothing to do.",
            token.label(),
            fmt_opt_time(&token.revoked_at)
        ));
        render_revoke_one(ctx, &token, false)?;
        return Ok(Exit::Ok);
    }

    if token.expired_unrevoked() {
        // Harmless and final: an expired token is dead to the platform already, and a revoked
        // one stays dead whatever happens to its expiry.
        ctx.out.info(&format!(
            "Token {} expired at {}: the platform already rejects it; revoking it marks it revoked for good.",
            token.label(),
            fmt_opt_time(&token.expires_at)
        ));
    }
    let anchored = match token.org_id {
        Some(o) => format!("anchored to {o}"),
        None => "unanchored".to_string(),
    };
    let mut desc = format!(
        "token {}, created_by '{}', {anchored}",
        token.label(),
        fmt_opt_text(&token.created_by)
    );
    if let Some(w) = token.created_by.as_deref().and_then(concierge_warning) {
        ctx.out.warn(&w);
        let _ = write!(desc, " — the platform agent's own credential");
    }
    ensure_confirmed(
        ctx,
        &format!("revokes {desc}"),
        &format!("Revoke {desc} on {}?", url.target()),
    )?;

    let mut tx = db::begin_change(&mut conn, &url, &ctx.settings).await?;
    // The revoke and the platform's own audit row for it, in one statement.
    let done = db::query(&platform::revoke_with_audit(
        "UPDATE org_api_tokens SET revoked_at = now() WHERE id = $1 AND revoked_at IS NULL RETURNING id",
        "$2",
    ))
    .bind(token.id)
    .bind(revoke_actor())
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if done == 0 {
        // Revoked (or deleted) between the read and the lock.
        let now: Option<TokenRow> = db::query_as(&format!(
            "SELECT {TOKEN_COLUMNS} FROM org_api_tokens WHERE id = $1"
        ))
        .bind(token.id)
        .fetch_optional(&mut *tx)
        .await?;
        tx.rollback().await?;
        return match now {
            Some(t) => {
                ctx.out.info(&format!(
                    "Token {} was revoked concurrently at {}; nothing to do.",
                    t.label(),
                    fmt_opt_time(&t.revoked_at)
                ));
                render_revoke_one(ctx, &t, false)?;
                Ok(Exit::Ok)
            }
            None => Err(Error::failed(format!(
                "token {} was deleted while orgctl waited; nothing was changed",
                token.id
            ))),
        };
    }
    if done != 1 {
        return Err(Error::failed(format!(
            "revoking token {} touched {done} rows instead of 1; rolled back, nothing changed",
            token.id
        )));
    }
    let txid = crate::audit::record(
        &mut tx,
        "token revoke",
        &serde_json::json!({
            "by": r.kind(),
            "id": token.id,
            "prefix": token.prefix,
            "expired": token.expired_unrevoked(),
            "revoked": 1,
        }),
        "revoked",
    )
    .await?;
    let committed =
        db::commit_guarded(tx, &url, &ctx.settings, &crate::audit::AuditRow(txid)).await?;
    if let Some(note) = committed.note() {
        ctx.out.info(note);
    }
    ctx.out.info(&format!(
        "Revoked token {}; it no longer authenticates.",
        token.label()
    ));
    render_revoke_one(ctx, &token, true)?;
    Ok(Exit::Ok)
}

async fn revoke_label(ctx: &Context, label: &str) -> Result<Exit> {
    let url = ctx.url()?;
    let mut conn = db::connect(&url, &ctx.settings).await?;
    db::ensure_compatible(&mut conn).await?;
    let shown_label = sanitize(label);

    // Plan: how many and which (a bounded sample; the count is exact).
    // Every token of the label that is not revoked yet: the live ones, and the expired ones
    // too (dead to the platform already; revoking them is harmless and final).
    let (live, expired, total, sample) = {
        let mut tx = db::begin_read_only(&mut conn, &ctx.settings).await?;
        let counts = db::query(&format!(
            "SELECT count(*) FILTER (WHERE {}), count(*) FILTER (WHERE {}), count(*)
               FROM org_api_tokens WHERE created_by = $1",
            platform::live(""),
            platform::expired("")
        ))
        .bind(label)
        .fetch_one(&mut *tx)
        .await?;
        let live: i64 = counts.try_get(0)?;
        let expired: i64 = counts.try_get(1)?;
        let total: i64 = counts.try_get(2)?;
        let sample: Vec<TokenRow> = db::query_as(&format!(
            "SELECT {TOKEN_COLUMNS} FROM org_api_tokens
              WHERE created_by = $1 AND revoked_at IS NULL
              ORDER BY created_at DESC, id DESC LIMIT $2"
        ))
        .bind(label)
        .bind(SHOWN as i64)
        .fetch_all(&mut *tx)
        .await?;
        tx.rollback().await?;
        (live, expired, total, sample)
    };
    let unrevoked = live + expired;
    if total == 0 {
        return Err(Error::failed(format!(
            "no token has created_by '{shown_label}' (the match is exact); check the label with `orgctl token list --all`"
        )));
    }
    if unrevoked == 0 {
        // Nothing to write (not even an audit row); the result lists them as already revoked.
        ctx.out.info(&format!(
            "Every token with created_by '{shown_label}' ({total}) is already revoked; nothing to do."
        ));
        render_revoke_label(ctx, &mut conn, label, None).await?;
        return Ok(Exit::Ok);
    }

    let what = if expired > 0 {
        format!("{unrevoked} token(s) ({live} live, {expired} expired)")
    } else {
        format!("{live} live token(s)")
    };
    let concierge = concierge_warning(label);
    if let Some(w) = &concierge {
        ctx.out.warn(w);
    }
    if ctx.out.interactive() && !ctx.yes {
        let rows: Vec<Vec<String>> = sample.iter().map(|s| compact_cells(s, true)).collect();
        let t = compact_list(ctx, &rows, true);
        let mut text = format!("Tokens with created_by '{shown_label}' to revoke: {what}:\n{t}");
        if unrevoked > sample.len() as i64 {
            let _ = writeln!(
                text,
                "… and {} more (see `orgctl token list --all --created-by '{shown_label}' --limit 0`)",
                unrevoked - sample.len() as i64
            );
        }
        crate::output::stderr(&text);
    }
    let own = if concierge.is_some() {
        " — the platform agent's own credential"
    } else {
        ""
    };
    ensure_confirmed(
        ctx,
        &format!("revokes {what} with created_by '{shown_label}'{own} (check them with `orgctl token list --all --created-by '{shown_label}'`)"),
        &format!(
            "Revoke {what} with created_by '{shown_label}'{own} on {}?",
            url.target()
        ),
    )?;

    let mut tx = db::begin_change(&mut conn, &url, &ctx.settings).await?;
    // Every unrevoked token with the label at this moment: in incident response a token minted
    // after the confirmation must die too. One statement; `now()` is the transaction's start,
    // so every row revoked here carries the same revoked_at, which identifies them afterwards.
    // The platform's own audit rows, one per token, come in the same statement.
    let done = db::query(&platform::revoke_with_audit(
        "UPDATE org_api_tokens SET revoked_at = now()
          WHERE created_by = $1 AND revoked_at IS NULL RETURNING id",
        "$2",
    ))
    .bind(label)
    .bind(revoke_actor())
    .execute(&mut *tx)
    .await?
    .rows_affected() as i64;
    let at: DateTime<Utc> = db::query_scalar("SELECT now()").fetch_one(&mut *tx).await?;
    if done == 0 {
        // Revoked by someone else between the plan and the lock: nothing to write, not even an
        // audit row.
        tx.rollback().await?;
        ctx.out.info(&format!(
            "Every token with created_by '{shown_label}' was revoked concurrently; nothing to do."
        ));
        render_revoke_label(ctx, &mut conn, label, None)
            .await
            .map_err(|e| {
                e.context("nothing was revoked by this run, but reading the tokens back failed")
            })?;
        return Ok(Exit::Ok);
    }
    let txid = crate::audit::record(
        &mut tx,
        "token revoke",
        &serde_json::json!({
            "by": "created_by",
            "created_by": label,
            "confirmed": unrevoked,
            "confirmed_live": live,
            "confirmed_expired": expired,
            "revoked": done,
        }),
        "revoked",
    )
    .await?;
    let committed =
        db::commit_guarded(tx, &url, &ctx.settings, &crate::audit::AuditRow(txid)).await?;
    if let Some(note) = committed.note() {
        ctx.out.info(note);
    }
    committed.reconnected(&mut conn);
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
    let already = render_revoke_label(ctx, &mut conn, label, Some((at, done)))
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
    Ok(Exit::Ok)
}

/// The result of a bulk revoke, read back through a cursor in a read-only REPEATABLE READ
/// transaction, so a huge incident never sits in memory. `revoked` is this run's
/// `revoked_at` (one statement, so every row it revoked carries it) and count; the label's
/// other revoked tokens are `already_revoked`: revoked before this run (or concurrently by
/// someone else), never by it. One pass, this run's rows first. Returns how many were already
/// revoked.
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
    let mut tx = db::begin_read_only(&mut *conn, &ctx.settings).await?;
    db::query(&format!(
        "DECLARE {CURSOR} NO SCROLL CURSOR FOR
         SELECT {TOKEN_COLUMNS}, revoked_at IS NOT DISTINCT FROM $2 AS by_this_run
           FROM org_api_tokens
          WHERE created_by = $1 AND revoked_at IS NOT NULL
          ORDER BY by_this_run DESC, created_at DESC, id DESC"
    ))
    .bind(label)
    .bind(at)
    .execute(&mut *tx)
    .await?;
    let fetch = format!("FETCH {FETCH_BATCH} FROM {CURSOR}");
    let mut sink = crate::output::Sink::new();
    let mut table = ctx.out.new_table(["id", "prefix", "name", "result"]);
    let mut shown: usize = 0;
    let (mut n_revoked, mut n_already): (i64, i64) = (0, 0);
    if json {
        sink.write("{\"revoked\": [")?;
    }
    loop {
        let rows = db::query(&fetch).fetch_all(&mut *tx).await?;
        if rows.is_empty() || sink.closed {
            break;
        }
        for row in &rows {
            let t = <TokenRow as sqlx::FromRow<_>>::from_row(row)?;
            let mine: bool = at.is_some() && row.try_get("by_this_run")?;
            if json {
                let sep = if mine {
                    if n_revoked == 0 {
                        "\n  "
                    } else {
                        ",\n  "
                    }
                } else if n_already == 0 {
                    // The first already revoked token closes the revoked list.
                    if n_revoked > 0 {
                        "\n ],\n \"already_revoked\": [\n  "
                    } else {
                        "],\n \"already_revoked\": [\n  "
                    }
                } else {
                    ",\n  "
                };
                sink.write(&format!("{sep}\"{}\"", t.id))?;
            } else if shown < SHOWN * 2 {
                table.add_row(vec![
                    t.id.to_string(),
                    sanitize(&t.prefix),
                    fmt_opt_text(&t.name),
                    if mine {
                        "revoked".to_string()
                    } else {
                        format!("already revoked ({})", fmt_opt_time(&t.revoked_at))
                    },
                ]);
                shown += 1;
            }
            if mine {
                n_revoked += 1;
            } else {
                n_already += 1;
            }
        }
    }
    tx.rollback().await?;
    let n = n_revoked + n_already;
    if json {
        sink.write(match (n_revoked > 0, n_already > 0) {
            (_, true) => "\n ]}\n",
            (true, false) => "\n ],\n \"already_revoked\": []}\n",
            (false, false) => "],\n \"already_revoked\": []}\n",
        })?;
    } else if shown > 0 {
        sink.write(&format!("{table}\n"))?;
        if n > shown as i64 {
            sink.write(&format!(
                "… and {} more (use --output json for all)\n",
                n - shown as i64
            ))?;
        }
    }
    sink.flush()?;
    if n_revoked != count && !sink.closed {
        ctx.out.warn(&format!(
            "read back {n_revoked} revoked token(s) where {count} were revoked; a concurrent change touched them"
        ));
    }
    Ok(n_already)
}

// ---------------------------------------------------------------------------------------------
// anchor

#[derive(Serialize)]
struct AnchorJson {
    id: Uuid,
    prefix: String,
    org_id: Uuid,
    previous_org_id: Option<Uuid>,
    changed: bool,
}

fn render_anchor(ctx: &Context, t: &TokenRow, root: &Root, changed: bool) -> Result<()> {
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

async fn anchor(ctx: &Context, args: &TokenAnchorArgs) -> Result<Exit> {
    let Some(raw) = args.token.as_deref() else {
        return anchor_stale(ctx, args).await;
    };
    if args.dry_run {
        // clap's `requires` is not enforced here (the token/--stale group is satisfied).
        return Err(Error::usage(
            "--dry-run goes with --stale; for one token, `orgctl token list` shows where it is anchored",
        ));
    }
    let r = TokenRef::parse(raw)?;
    let url = ctx.url()?;
    let mut conn = db::connect(&url, &ctx.settings).await?;
    db::ensure_compatible(&mut conn).await?;
    let (token, root) = {
        let mut tx = db::begin_read_only(&mut conn, &ctx.settings).await?;
        let t = find_token(&mut tx, &r).await?;
        let root = resolve_root(&mut tx, args.org).await?;
        tx.rollback().await?;
        (t, root)
    };
    let root_label = format!("{} ('{}')", root.id, sanitize(&root.name));
    if token.org_id == Some(root.id) {
        ctx.out.info(&format!(
            "Token {} is already anchored to {root_label}; nothing to do.",
            token.label()
        ));
        render_anchor(ctx, &token, &root, false)?;
        return Ok(Exit::Ok);
    }
    if let Some(current) = token.org_id {
        if !args.force {
            return Err(Error::refused(format!(
                "token {} is already anchored to {current}; pass --force to move it to {}",
                token.label(),
                root.id
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
    let from = match token.org_id {
        Some(o) => format!("from {o} "),
        None => "(now unanchored) ".to_string(),
    };
    let desc = format!("token {} {from}to {root_label}", token.label());
    ensure_confirmed(
        ctx,
        &format!("anchors {desc}"),
        &format!("Anchor {desc} on {}?", url.target()),
    )?;

    let mut tx = db::begin_change(&mut conn, &url, &ctx.settings).await?;
    // What was confirmed is what is applied: the same root, and the token where it was.
    let now_root = resolve_root(&mut tx, args.org).await?;
    if now_root.id != root.id {
        return Err(Error::refused(format!(
            "the org root changed while you confirmed ({} then, {} now); nothing was changed: rerun",
            root.id, now_root.id
        )));
    }
    let done = db::query(
        "UPDATE org_api_tokens SET org_id = $1
          WHERE id = $2 AND org_id IS NOT DISTINCT FROM $3",
    )
    .bind(root.id)
    .bind(token.id)
    .bind(token.org_id)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if done != 1 {
        return Err(Error::refused(format!(
            "token {} changed (or was deleted) while you confirmed; nothing was changed: rerun",
            token.id
        )));
    }
    let txid = crate::audit::record(
        &mut tx,
        "token anchor",
        &serde_json::json!({
            "by": r.kind(),
            "id": token.id,
            "prefix": token.prefix,
            "from": token.org_id,
            "to": root.id,
            "org_given": args.org.is_some(),
            "force": args.force,
        }),
        "anchored",
    )
    .await?;
    let committed =
        db::commit_guarded(tx, &url, &ctx.settings, &crate::audit::AuditRow(txid)).await?;
    if let Some(note) = committed.note() {
        ctx.out.info(note);
    }
    ctx.out.info(&format!(
        "Anchored token {} to {root_label}.",
        token.label()
    ));
    render_anchor(ctx, &token, &root, true)?;
    Ok(Exit::Ok)
}

// ---------------------------------------------------------------------------------------------
// anchor --stale

/// Stale anchors moving from one workspace.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct StaleMove {
    pub from: Uuid,
    pub live: i64,
    pub revoked: i64,
}

#[derive(Serialize)]
struct StaleJson<'a> {
    dry_run: bool,
    changed: bool,
    to: Uuid,
    tokens: i64,
    moves: &'a [StaleMove],
}

/// The tokens `status` counts against tokens_on_root: anchored (not to `$1`, the root) to a
/// workspace that is not a root (or no longer exists), live — or on a former root, revoked or
/// not. `{join}`/`{is_former}` are fixed strings, chosen by whether orgctl's schema exists.
fn stale_sql(former: bool) -> String {
    let (join, is_former) = if former {
        (
            "LEFT JOIN orgctl.former_roots f ON f.workspace_id = t.org_id",
            "f.workspace_id IS NOT NULL",
        )
    } else {
        ("", "false")
    };
    let live = platform::live("t");
    format!(
        "SELECT t.id, t.org_id, {live} AS live
           FROM org_api_tokens t
           LEFT JOIN workspaces w ON w.id = t.org_id
           {join}
          WHERE t.org_id IS NOT NULL AND t.org_id <> $1
            AND (w.id IS NULL OR w.parent_id IS NOT NULL)
            AND ({live} OR {is_former})"
    )
}

async fn has_former_roots(conn: &mut PgConnection) -> Result<bool> {
    Ok(
        db::query_scalar("SELECT to_regclass('orgctl.former_roots') IS NOT NULL")
            .fetch_one(&mut *conn)
            .await?,
    )
}

/// The plan of `anchor --stale`: per source workspace, how many live and revoked tokens move.
async fn plan_stale(conn: &mut PgConnection, root: Uuid) -> Result<Vec<StaleMove>> {
    let former = has_former_roots(conn).await?;
    let sql = format!(
        "WITH s AS ({})
         SELECT org_id, count(*) FILTER (WHERE live), count(*) FILTER (WHERE NOT live)
           FROM s GROUP BY org_id ORDER BY count(*) DESC, org_id",
        stale_sql(former)
    );
    db::query(&sql)
        .bind(root)
        .fetch_all(&mut *conn)
        .await?
        .iter()
        .map(|r| {
            Ok(StaleMove {
                from: r.try_get(0)?,
                live: r.try_get(1)?,
                revoked: r.try_get(2)?,
            })
        })
        .collect()
}

fn render_stale(
    ctx: &Context,
    root: &Root,
    moves: &[StaleMove],
    dry_run: bool,
    changed: bool,
) -> Result<()> {
    let total: i64 = moves.iter().map(|m| m.live + m.revoked).sum();
    if ctx.out.json_mode() {
        return ctx.out.json(&StaleJson {
            dry_run,
            changed,
            to: root.id,
            tokens: total,
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
    let mut text = format!("{t}\n");
    if rest > 0 {
        let _ = writeln!(text, "… and {rest} more source workspaces (see -o json)");
    }
    ctx.out.stdout(&text)
}

async fn anchor_stale(ctx: &Context, args: &TokenAnchorArgs) -> Result<Exit> {
    let url = ctx.url()?;
    let mut conn = db::connect(&url, &ctx.settings).await?;
    db::ensure_compatible(&mut conn).await?;
    // 1. Plan read-only.
    let (root, reviewed) = {
        let mut tx = db::begin_read_only(&mut conn, &ctx.settings).await?;
        let root = resolve_root(&mut tx, args.org).await?;
        let moves = plan_stale(&mut tx, root.id).await?;
        tx.rollback().await?;
        (root, moves)
    };
    let root_label = format!("{} ('{}')", root.id, sanitize(&root.name));
    let total: i64 = reviewed.iter().map(|m| m.live + m.revoked).sum();
    let live: i64 = reviewed.iter().map(|m| m.live).sum();
    if total == 0 {
        ctx.out
            .info("No stale anchors: every anchored live token is on a root; nothing to do.");
        render_stale(ctx, &root, &reviewed, args.dry_run, false)?;
        return Ok(Exit::Ok);
    }
    let desc = format!(
        "{total} token(s) ({live} live, {} revoked on former roots) from {} workspace(s) to the root {root_label}",
        total - live,
        reviewed.len()
    );
    if args.dry_run {
        ctx.out
            .info(&format!("Would move {desc} (dry run: nothing changed)."));
        // A dry run's `changed` says whether applying would change something, as install's.
        render_stale(ctx, &root, &reviewed, true, true)?;
        return Ok(Exit::Ok);
    }
    if !ctx.out.json_mode() && ctx.out.interactive() && !ctx.yes {
        render_stale(ctx, &root, &reviewed, true, true)?;
    }
    ensure_confirmed(
        ctx,
        &format!("moves {desc}"),
        &format!("Move {desc} on {}?", url.target()),
    )?;

    // 2. Apply exactly the reviewed plan under the tenant lock.
    let mut tx = db::begin_change(&mut conn, &url, &ctx.settings).await?;
    let now_root = resolve_root(&mut tx, args.org).await?;
    let now = plan_stale(&mut tx, now_root.id).await?;
    if now_root.id != root.id || now != reviewed {
        return Err(Error::refused(
            "the stale anchors changed while you confirmed; nothing was changed: rerun to see the new plan",
        ));
    }
    let former = has_former_roots(&mut tx).await?;
    // Join on the primary key only, so a stale planner estimate cannot pick a bad plan.
    let done = db::query(&format!(
        "UPDATE org_api_tokens u SET org_id = $1
           FROM ({}) s
          WHERE u.id = s.id",
        stale_sql(former)
    ))
    .bind(root.id)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    db::ensure_rows("moving stale token anchors", done, total)?;
    let txid = crate::audit::record(
        &mut tx,
        "token anchor",
        &serde_json::json!({
            "by": "stale",
            "to": root.id,
            "org_given": args.org.is_some(),
            "tokens": total,
            "live": live,
            "moves": reviewed,
        }),
        "anchored",
    )
    .await?;
    // A lost answer to COMMIT is in doubt, never "rolled back": look for the audit row.
    let committed =
        db::commit_guarded(tx, &url, &ctx.settings, &crate::audit::AuditRow(txid)).await?;
    if let Some(note) = committed.note() {
        ctx.out.info(note);
    }
    ctx.out.info(&format!("Moved {desc}."));
    render_stale(ctx, &root, &reviewed, false, true)?;
    Ok(Exit::Ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references() {
        let id = "70000000-0000-4000-8000-000000000001";
        assert!(matches!(TokenRef::parse(id), Ok(TokenRef::Id(_))));
        assert_eq!(
            TokenRef::parse("ab_d").ok(),
            Some(TokenRef::Prefix("ab_d".into()))
        );
        for bad in [
            "",
            "abc",
            "70000000-0000-4000-8000-00000000000Z",
            "a\u{1b}cd",
        ] {
            assert_eq!(
                TokenRef::parse(bad).map_err(|e| e.exit).err(),
                Some(Exit::Usage),
                "{bad:?}"
            );
        }
        // A pasted plaintext is refused without being echoed.
        let plain = "AbCdEfGhIjKlMnOpQrStUvWxYz0123456789-_AbCd";
        match TokenRef::parse(plain) {
            Err(e) => assert!(!e.message.contains(plain) && !e.message.contains("AbCdEfGh")),
            Ok(_) => panic!("accepted a plaintext"),
        }
    }

    #[test]
    fn list_limit_defaults() {
        // --limit wins everywhere; 0 is all.
        for (json, tty) in [(false, false), (false, true), (true, false), (true, true)] {
            assert_eq!(effective_limit(Some(7), json, tty), Some(7));
            assert_eq!(effective_limit(Some(0), json, tty), None);
        }
        // Without it only the human table on a terminal is cut.
        assert_eq!(
            effective_limit(None, false, true),
            Some(DEFAULT_TABLE_LIMIT)
        );
        assert_eq!(effective_limit(None, false, false), None);
        assert_eq!(effective_limit(None, true, true), None);
        assert_eq!(effective_limit(None, true, false), None);
    }

    #[test]
    fn like_escaping() {
        assert_eq!(like_prefix("ab_%"), "ab\\_\\%%");
        assert_eq!(like_prefix("a\\b'"), "a\\\\b'%");
    }

    #[test]
    fn names_and_labels() {
        assert!(check_name(Some(&"x".repeat(100))).is_ok());
        assert_eq!(
            check_name(Some(&"x".repeat(101))).map_err(|e| e.exit).err(),
            Some(Exit::Usage)
        );
        assert_eq!(
            check_name(Some("  ")).map_err(|e| e.exit).err(),
            Some(Exit::Usage)
        );
        // Bytes, not characters: 34 three-byte characters are 102 bytes.
        assert_eq!(
            check_name(Some(&"€".repeat(34))).map_err(|e| e.exit).err(),
            Some(Exit::Usage)
        );
        assert!(check_name(Some(&"€".repeat(33))).is_ok());
        assert!(matches!(check_mint_label(None), Ok(l) if l.starts_with("orgctl:")));
        for reserved in ["session", " admin-token ", "system:concierge:x"] {
            assert_eq!(
                check_mint_label(Some(reserved)).map_err(|e| e.exit).err(),
                Some(Exit::Usage),
                "{reserved}"
            );
        }
        assert_eq!(
            check_mint_label(Some("a\nb")).map_err(|e| e.exit).err(),
            Some(Exit::Usage)
        );
    }
}
