//! Anchoring: moving one token to the org root, or every stale anchor at once.

use serde::Serialize;
use sqlx::postgres::PgConnection;
use sqlx::Row;
use uuid::Uuid;

use super::{find_token, TokenRef, TokenRow};
use crate::db;
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

/// [`AnchorPlan`] in the caller's transaction (read-only, then again under the tenant lock):
/// the token `r` names and the root (`org`, or the org's own).
pub async fn read_anchor(
    conn: &mut PgConnection,
    r: &TokenRef,
    org: Option<Uuid>,
) -> Result<AnchorPlan> {
    let token = find_token(conn, r).await?;
    let root = resolve_root(conn, org).await?;
    Ok(AnchorPlan { token, root })
}

/// How an anchor was asked for, as its audit row records it.
#[derive(Clone, Copy, Debug)]
pub struct Anchored<'a> {
    pub by: &'a TokenRef,
    pub org: Option<Uuid>,
    pub force: bool,
}

/// Under the tenant lock: the root is still the one confirmed, or nothing is changed.
pub async fn check_anchor_root(
    conn: &mut PgConnection,
    org: Option<Uuid>,
    plan: &AnchorPlan,
) -> Result<()> {
    let (root, now_root) = (&plan.root, resolve_root(conn, org).await?);
    if now_root.id != root.id {
        return Err(Error::refused(format!(
            "the org root changed while you confirmed ({} then, {} now); nothing was changed: rerun",
            root.id, now_root.id
        )));
    }
    Ok(())
}

/// Apply an [`AnchorPlan`] under the tenant lock, after [`check_anchor_root`]: what was
/// confirmed is what is applied — the token where it was — or nothing is changed. Returns what
/// orgctl's audit row records.
pub async fn anchor_one(
    conn: &mut PgConnection,
    asked: Anchored<'_>,
    plan: &AnchorPlan,
) -> Result<serde_json::Value> {
    let (token, root) = (&plan.token, &plan.root);
    let done = db::query(ANCHOR_ONE)
        .bind(root.id)
        .bind(token.id)
        .bind(token.org_id)
        .execute(&mut *conn)
        .await?
        .rows_affected();
    if done != 1 {
        return Err(Error::refused(format!(
            "token {} changed (or was deleted) while you confirmed; nothing was changed: rerun",
            token.id
        )));
    }
    Ok(serde_json::json!({
        "by": asked.by.kind(),
        "id": token.id,
        "prefix": token.prefix,
        "from": token.org_id,
        "to": root.id,
        "org_given": asked.org.is_some(),
        "force": asked.force,
    }))
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

/// [`StalePlan`] in the caller's transaction; the root is `org` or the org's own.
pub async fn read_stale(conn: &mut PgConnection, org: Option<Uuid>) -> Result<StalePlan> {
    let root = resolve_root(conn, org).await?;
    let moves = stale_moves(conn, root.id).await?;
    Ok(StalePlan { root, moves })
}

/// Under the tenant lock: the stale anchors are exactly the reviewed ones, or nothing is
/// changed.
pub async fn check_stale(
    conn: &mut PgConnection,
    org: Option<Uuid>,
    reviewed: &StalePlan,
) -> Result<()> {
    let now = read_stale(conn, org).await?;
    if now.root.id != reviewed.root.id || now.moves != reviewed.moves {
        return Err(Error::refused(
            "the stale anchors changed while you confirmed; nothing was changed: rerun to see the new plan",
        ));
    }
    Ok(())
}

/// Apply exactly the reviewed plan under the tenant lock, after [`check_stale`]. Returns what
/// orgctl's audit row records.
pub async fn anchor_stale(
    conn: &mut PgConnection,
    org: Option<Uuid>,
    reviewed: &StalePlan,
) -> Result<serde_json::Value> {
    let (root, total) = (&reviewed.root, reviewed.total());
    let former = has_former_roots(conn).await?;
    // Join on the primary key only, so a stale planner estimate cannot pick a bad plan.
    let done = db::query(&format!(
        "UPDATE org_api_tokens u SET org_id = $1
           FROM ({}) s
          WHERE u.id = s.id",
        stale_sql(former)
    ))
    .bind(root.id)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    db::ensure_rows("moving stale token anchors", done, total)?;
    Ok(serde_json::json!({
        "by": "stale",
        "to": root.id,
        "org_given": org.is_some(),
        "tokens": total,
        "live": reviewed.live(),
        "moves": reviewed.moves,
    }))
}
