//! Minting: the mint ceiling, the new row with the platform's audit row and orgctl's, and the
//! commit of a token that has already been delivered.
//!
//! The steps, in order: [`plan_mint`] checks the anchor and the ceiling read-only (before
//! orgctl's schema is created); then, in the change's transaction, [`gate`] checks them again
//! under the tenant lock, [`insert`] writes the rows, the caller delivers the plaintext, and
//! [`commit`] commits — a token nobody received is never left live.

use sqlx::postgres::PgConnection;
use sqlx::Row;
use uuid::Uuid;
use zeroize::Zeroizing;

use super::PREFIX_LEN;
use crate::audit::Who;
use crate::db::{self, DbUrl, Settings};
use crate::error::{sanitize, Error, Result};
use crate::ops::org::{resolve_root, Root};
use crate::platform::crypto;
use crate::platform::tokens as platform;

/// One token row; the platform fills the rest (id, created_at).
pub(super) const INSERT: &str =
    "INSERT INTO org_api_tokens (token_hash, prefix, name, created_by, org_id)
         VALUES ($1, $2, $3, $4, $5) RETURNING id";

/// What a mint was asked for, checked.
#[derive(Clone, Debug)]
pub struct MintInput {
    pub name: Option<String>,
    pub created_by: String,
    /// `--org`: the root to anchor to; otherwise the org's root is resolved.
    pub org: Option<Uuid>,
    /// A break-glass mint past the ceiling.
    pub over_ceiling: bool,
    /// The platform's ceiling of live tokens per org (`None`: off).
    pub ceiling: Option<i64>,
}

/// Where the token goes, and whether it goes past the ceiling (the live count and the
/// ceiling), as checked under the tenant lock.
#[derive(Clone, Debug)]
pub struct MintPlan {
    pub root: Root,
    pub over: Option<(i64, i64)>,
}

/// A token inserted, not yet committed. The plaintext is zeroed on drop.
pub struct Minted {
    pub id: Uuid,
    pub prefix: String,
    pub plaintext: Zeroizing<String>,
    hash: Vec<u8>,
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

/// Check the anchor and the ceiling before creating anything (orgctl's schema included), in a
/// read-only transaction.
pub async fn plan_mint(
    conn: &mut PgConnection,
    settings: &Settings,
    input: &MintInput,
) -> Result<MintPlan> {
    let mut tx = db::begin_read_only(conn, settings).await?;
    let plan = gate(&mut tx, input).await?;
    tx.rollback().await?;
    Ok(plan)
}

/// The root and the ceiling in the caller's transaction. Again under the lock: an install may
/// have made the agent the root meanwhile, and a concurrent mint may have reached the ceiling.
pub async fn gate(conn: &mut PgConnection, input: &MintInput) -> Result<MintPlan> {
    let root = resolve_root(conn, input.org).await?;
    let over = ceiling_gate(conn, &root, input.ceiling, input.over_ceiling).await?;
    Ok(MintPlan { root, over })
}

/// A fresh token's row, the platform's mint audit row and orgctl's, in the caller's
/// transaction. Neither audit row carries the plaintext or the hash; orgctl's records `who`.
pub async fn insert(
    conn: &mut PgConnection,
    who: &Who,
    input: &MintInput,
    plan: &MintPlan,
) -> Result<Minted> {
    let plaintext = crypto::new_token()?;
    let prefix: String = plaintext.chars().take(PREFIX_LEN).collect();
    let hash = crypto::token_hash(&plaintext);
    let root = &plan.root;
    let row = db::query(INSERT)
        .bind(&hash)
        .bind(&prefix)
        .bind(input.name.as_deref())
        .bind(&input.created_by)
        .bind(root.id)
        .fetch_one(&mut *conn)
        .await?;
    let id: Uuid = row.try_get(0)?;
    platform::audit_mint(
        conn,
        id,
        &input.created_by,
        root.id,
        input.name.as_deref(),
        &prefix,
        plan.over,
    )
    .await?;
    crate::audit::record(
        conn,
        who,
        "token mint",
        &serde_json::json!({
            "id": id,
            "prefix": prefix,
            "name": input.name,
            "org_id": root.id,
            "org_given": input.org.is_some(),
            "created_by": input.created_by,
            "over_ceiling": plan.over.is_some(),
            "live_tokens": plan.over.map(|o| o.0),
            "ceiling": input.ceiling,
        }),
        "minted",
    )
    .await?;
    Ok(Minted {
        id,
        prefix,
        plaintext,
        hash,
    })
}

/// Commit a delivered token. A lost answer is checked by looking for the token's hash.
pub async fn commit(
    tx: sqlx::Transaction<'_, sqlx::Postgres>,
    url: &DbUrl,
    settings: &Settings,
    minted: &Minted,
) -> Result<db::Committed> {
    let evidence = crate::ops::evidence::Token {
        hash: minted.hash.clone(),
        prefix: minted.prefix.clone(),
    };
    db::commit_guarded(tx, url, settings, &evidence)
        .await
        .map_err(commit_error)
}

/// A failed mint COMMIT, for the operator holding a printed token: "NOT minted" only when the
/// server said so or orgctl verified it; otherwise the token may be live.
fn commit_error(e: db::CommitError) -> Error {
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
