//! Revoking: one token, or every unrevoked token with a `created_by` label, each with the
//! platform's revoke rows and orgctl's audit row in the same transaction; and the read-back of
//! a label's revoked tokens.

use chrono::{DateTime, Utc};
use sqlx::postgres::PgConnection;
use sqlx::Row;

use super::row::by_id;
use super::{TokenRef, TokenRow, SHOWN};
use crate::db::{self, Settings};
use crate::error::{Error, Result};
use crate::platform::tokens as platform;

/// The newest $2 unrevoked tokens with the label $1: the sample a bulk revoke shows.
pub(super) const UNREVOKED_SAMPLE: &str = concat!(
    "SELECT ",
    token_columns!(),
    " FROM org_api_tokens
              WHERE created_by = $1 AND revoked_at IS NULL
              ORDER BY created_at DESC, id DESC LIMIT $2"
);

/// The transaction's start: the `revoked_at` of every row one statement revokes.
pub(super) const TRANSACTION_NOW: &str = "SELECT now()";

/// The revoked tokens of the label $1, those this run revoked (at $2) first.
pub(super) const DECLARE_REVOKED: &str = concat!(
    "DECLARE ",
    cursor!(),
    " NO SCROLL CURSOR FOR
         SELECT ",
    token_columns!(),
    ", revoked_at IS NOT DISTINCT FROM $2 AS by_this_run
           FROM org_api_tokens
          WHERE created_by = $1 AND revoked_at IS NOT NULL
          ORDER BY by_this_run DESC, created_at DESC, id DESC"
);

/// One token revoked, by id ($1), with the platform's revoke row (actor $2).
pub(super) const REVOKE_ONE: &str =
    "UPDATE org_api_tokens SET revoked_at = now() WHERE id = $1 AND revoked_at IS NULL RETURNING id";

/// Every unrevoked token with the label $1, with the platform's revoke rows (actor $2).
pub(super) const REVOKE_LABEL: &str = "UPDATE org_api_tokens SET revoked_at = now()
          WHERE created_by = $1 AND revoked_at IS NULL RETURNING id";

/// Who revokes, as the platform's audit row names it: the same `created_by`-style label a
/// mint defaults to.
fn revoke_actor() -> String {
    format!("orgctl:{}", crate::sys::os_user())
}

/// How a single revoke ended under the tenant lock.
pub enum OneRevoked {
    /// Revoked (not committed yet).
    Revoked,
    /// Revoked by someone else between the read and the lock: the token as it is now.
    Concurrently(TokenRow),
}

/// Revoke `token` in the caller's transaction, under the tenant lock, with the platform's
/// audit row for it in the same statement; orgctl's records [`revoke_one_audit`].
pub async fn revoke_one(conn: &mut PgConnection, token: &TokenRow) -> Result<OneRevoked> {
    let done = db::query(&platform::revoke_with_audit(REVOKE_ONE, "$2"))
        .bind(token.id)
        .bind(revoke_actor())
        .execute(&mut *conn)
        .await?
        .rows_affected();
    if done == 0 {
        // Revoked (or deleted) between the read and the lock.
        return match by_id(conn, token.id).await? {
            Some(t) => Ok(OneRevoked::Concurrently(t)),
            None => Err(Error::failed(format!(
                "token {} was deleted while orgctl waited; nothing was changed",
                token.id
            ))),
        };
    }
    if done != 1 {
        return Err(Error::failed(format!(
            "revoking token {} touched {done} rows instead of 1; rolled back, nothing was changed",
            token.id
        )));
    }
    Ok(OneRevoked::Revoked)
}

/// What orgctl's audit row of a single revoke records (`r`: how the token was named).
pub fn revoke_one_audit(r: &TokenRef, token: &TokenRow) -> serde_json::Value {
    serde_json::json!({
        "by": r.kind(),
        "id": token.id,
        "prefix": token.prefix,
        "expired": token.expired_unrevoked(),
        "revoked": 1,
    })
}

/// What a revoke by label would do: every token of the label that is not revoked yet — the
/// live ones, and the expired ones too (dead to the platform already; revoking them is
/// harmless and final). The counts are exact; the sample is the newest [`SHOWN`].
#[derive(Clone, Debug)]
pub struct LabelPlan {
    pub live: i64,
    pub expired: i64,
    /// Every token with the label, revoked ones included.
    pub total: i64,
    pub sample: Vec<TokenRow>,
}

impl LabelPlan {
    pub fn unrevoked(&self) -> i64 {
        self.live + self.expired
    }
}

/// [`LabelPlan`], in the caller's (read-only) transaction.
pub async fn read_label(conn: &mut PgConnection, label: &str) -> Result<LabelPlan> {
    let counts = db::query(&format!(
        "SELECT count(*) FILTER (WHERE {}), count(*) FILTER (WHERE {}), count(*)
               FROM org_api_tokens WHERE created_by = $1",
        platform::live(""),
        platform::expired("")
    ))
    .bind(label)
    .fetch_one(&mut *conn)
    .await?;
    let sample: Vec<TokenRow> = db::query_as(UNREVOKED_SAMPLE)
        .bind(label)
        .bind(SHOWN as i64)
        .fetch_all(&mut *conn)
        .await?;
    Ok(LabelPlan {
        live: counts.try_get(0)?,
        expired: counts.try_get(1)?,
        total: counts.try_get(2)?,
        sample,
    })
}

/// Revoke every unrevoked token with `label` at this moment, in the caller's transaction under
/// the tenant lock: in incident response a token minted after the confirmation must die too.
/// One statement; `now()` is the transaction's start, so every row revoked here carries the
/// same `revoked_at`, which identifies them afterwards. The platform's own audit rows, one per
/// token, come in the same statement. Returns how many were revoked (0: someone else revoked
/// them between the plan and the lock; nothing is to be written, not even an audit row) and
/// their `revoked_at`.
pub async fn revoke_label(conn: &mut PgConnection, label: &str) -> Result<(i64, DateTime<Utc>)> {
    let done = db::query(&platform::revoke_with_audit(REVOKE_LABEL, "$2"))
        .bind(label)
        .bind(revoke_actor())
        .execute(&mut *conn)
        .await?
        .rows_affected() as i64;
    let at: DateTime<Utc> = db::query_scalar(TRANSACTION_NOW)
        .fetch_one(&mut *conn)
        .await?;
    Ok((done, at))
}

/// What orgctl's audit row of a revoke by label records: what was confirmed, and `done`.
pub fn revoke_label_audit(label: &str, plan: &LabelPlan, done: i64) -> serde_json::Value {
    serde_json::json!({
        "by": "created_by",
        "created_by": label,
        "confirmed": plan.unrevoked(),
        "confirmed_live": plan.live,
        "confirmed_expired": plan.expired,
        "revoked": done,
    })
}

/// The revoked tokens of `label`, read back through the token cursor in a read-only
/// REPEATABLE READ transaction, so a huge incident never sits in memory. `revoked_at` is this
/// run's (one statement, so every row it revoked carries it): those rows come first and are
/// marked `true`; the label's other revoked tokens were revoked before this run (or
/// concurrently by someone else), never by it. `each` gets every batch in order and returns
/// whether to go on.
pub async fn read_back_revoked(
    conn: &mut PgConnection,
    settings: &Settings,
    label: &str,
    revoked_at: Option<DateTime<Utc>>,
    mut each: impl FnMut(&[(TokenRow, bool)]) -> Result<bool>,
) -> Result<()> {
    let mut tx = db::begin_read_only(conn, settings).await?;
    let declared = db::query(DECLARE_REVOKED).bind(label).bind(revoked_at);
    db::cursor::stream(&mut tx, cursor!(), declared, |rows| {
        let mut batch = Vec::with_capacity(rows.len());
        for row in &rows {
            let t = <TokenRow as sqlx::FromRow<_>>::from_row(row)?;
            let mine: bool = revoked_at.is_some() && row.try_get("by_this_run")?;
            batch.push((t, mine));
        }
        Ok(db::cursor::go_on(each(&batch)?))
    })
    .await?;
    tx.rollback().await?;
    Ok(())
}
