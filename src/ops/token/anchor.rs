//! Anchoring: moving one token to the org root, or every stale anchor at once.

use serde::Serialize;
use sqlx::postgres::PgConnection;
use sqlx::Row;
use uuid::Uuid;

use super::{find_token, TokenRef, TokenRow};
use crate::audit::Who;
use crate::db::{self, DbUrl, Settings};
use crate::error::{Error, Result};
use crate::ops::org::{resolve_root, Root};
use crate::platform::tokens as platform;

/// Anchor token $2 to $1, only if it is still anchored to $3.
pub(super) const ANCHOR_ONE: &str = "UPDATE org_api_tokens SET org_id = $1
          WHERE id = $2 AND org_id IS NOT DISTINCT FROM $3";

/// Whether orgctl's record of former roots exists.
pub(super) const HAS_FORMER_ROOTS: &str = "SELECT to_regclass('orgctl.former_roots') IS NOT NULL";

/// One token and the root it would be anchored to, read together.
#[derive(Clone, Debug)]
pub struct AnchorPlan {
    pub token: TokenRow,
    pub root: Root,
}

/// [`AnchorPlan`], read-only: the token `r` names and the root (`org`, or the org's own).
pub async fn plan_anchor(
    conn: &mut PgConnection,
    settings: &Settings,
    r: &TokenRef,
    org: Option<Uuid>,
) -> Result<AnchorPlan> {
    let mut tx = db::begin_read_only(conn, settings).await?;
    let token = find_token(&mut tx, r).await?;
    let root = resolve_root(&mut tx, org).await?;
    tx.rollback().await?;
    Ok(AnchorPlan { token, root })
}

/// How an anchor was asked for, as its audit row records it.
#[derive(Clone, Copy, Debug)]
pub struct Anchored<'a> {
    pub by: &'a TokenRef,
    pub org: Option<Uuid>,
    pub force: bool,
}

/// Apply an [`AnchorPlan`] under the tenant lock: what was confirmed is what is applied — the
/// same root, and the token where it was — or nothing is changed.
pub async fn anchor_one(
    conn: &mut PgConnection,
    url: &DbUrl,
    settings: &Settings,
    who: &Who,
    asked: Anchored<'_>,
    plan: &AnchorPlan,
) -> Result<db::Committed> {
    let (token, root) = (&plan.token, &plan.root);
    let mut tx = db::begin_change(conn, url, settings).await?;
    let now_root = resolve_root(&mut tx, asked.org).await?;
    if now_root.id != root.id {
        return Err(Error::refused(format!(
            "the org root changed while you confirmed ({} then, {} now); nothing was changed: rerun",
            root.id, now_root.id
        )));
    }
    let done = db::query(ANCHOR_ONE)
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
        who,
        "token anchor",
        &serde_json::json!({
            "by": asked.by.kind(),
            "id": token.id,
            "prefix": token.prefix,
            "from": token.org_id,
            "to": root.id,
            "org_given": asked.org.is_some(),
            "force": asked.force,
        }),
        "anchored",
    )
    .await?;
    Ok(db::commit_guarded(tx, url, settings, &crate::audit::AuditRow(txid)).await?)
}

// ---------------------------------------------------------------------------------------------
// Stale anchors

/// Stale anchors moving from one workspace.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct StaleMove {
    pub from: Uuid,
    pub live: i64,
    pub revoked: i64,
}

/// The plan of `anchor --stale`: the root, and per source workspace how many live and revoked
/// tokens move to it.
#[derive(Clone, Debug)]
pub struct StalePlan {
    pub root: Root,
    pub moves: Vec<StaleMove>,
}

impl StalePlan {
    /// Tokens that move.
    pub fn total(&self) -> i64 {
        self.moves.iter().map(|m| m.live + m.revoked).sum()
    }

    /// Live tokens that move.
    pub fn live(&self) -> i64 {
        self.moves.iter().map(|m| m.live).sum()
    }
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
    Ok(db::query_scalar(HAS_FORMER_ROOTS)
        .fetch_one(&mut *conn)
        .await?)
}

/// Per source workspace, how many live and revoked tokens move to `root`.
async fn stale_moves(conn: &mut PgConnection, root: Uuid) -> Result<Vec<StaleMove>> {
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

/// [`StalePlan`], read-only; the root is `org` or the org's own.
pub async fn plan_stale(
    conn: &mut PgConnection,
    settings: &Settings,
    org: Option<Uuid>,
) -> Result<StalePlan> {
    let mut tx = db::begin_read_only(conn, settings).await?;
    let root = resolve_root(&mut tx, org).await?;
    let moves = stale_moves(&mut tx, root.id).await?;
    tx.rollback().await?;
    Ok(StalePlan { root, moves })
}

/// Apply exactly the reviewed plan under the tenant lock, or nothing when the stale anchors
/// changed meanwhile.
pub async fn anchor_stale(
    conn: &mut PgConnection,
    url: &DbUrl,
    settings: &Settings,
    who: &Who,
    org: Option<Uuid>,
    reviewed: &StalePlan,
) -> Result<db::Committed> {
    let (root, total) = (&reviewed.root, reviewed.total());
    let mut tx = db::begin_change(conn, url, settings).await?;
    let now_root = resolve_root(&mut tx, org).await?;
    let now = stale_moves(&mut tx, now_root.id).await?;
    if now_root.id != root.id || now != reviewed.moves {
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
        who,
        "token anchor",
        &serde_json::json!({
            "by": "stale",
            "to": root.id,
            "org_given": org.is_some(),
            "tokens": total,
            "live": reviewed.live(),
            "moves": reviewed.moves,
        }),
        "anchored",
    )
    .await?;
    // A lost answer to COMMIT is in doubt, never "rolled back": look for the audit row.
    Ok(db::commit_guarded(tx, url, settings, &crate::audit::AuditRow(txid)).await?)
}
