//! Org API tokens as the platform counts, gates and audits them. Every place orgctl counts,
//! lists or gates tokens uses [`live`]; every mint and revoke writes the platform's own audit
//! rows through [`audit_mint`] and [`revoke_with_audit`]; names and labels are checked here.
//!
//! - **Live** is `revoked_at IS NULL AND (expires_at IS NULL OR expires_at > now())`: the
//!   platform rejects an expired bearer exactly as it rejects a revoked one.
//! - **The mint ceiling**: the platform refuses an anchored mint when the org already has
//!   `ORG_TOKEN_MINT_CEILING` live tokens (default 100; zero or less turns the ceiling off).
//! - **Its audit trail** is `org_token_audit_logs`: a mint is `(token, 'mint', actor =
//!   created_by, org, {"name", "prefix"})`, a revoke one row per token `(token, 'revoke', actor,
//!   NULL, NULL)`, in the transaction of the change. There is no action for re-anchoring a
//!   token, so an anchor writes none.
//! - **Names** are at most 100 bytes (UTF-8), not characters.
//! - **Reserved labels**: the platform writes `admin-token`, `session`, `session:<id>`,
//!   `org-token:<prefix>` and `system:<…>` as `created_by` itself; the agent's own
//!   auto-rotated credential is `system:concierge:<agent id>`.

use sqlx::postgres::PgConnection;
use uuid::Uuid;

use crate::db;
use crate::error::{Error, Result};

/// The platform's mint ceiling, read from the environment as the platform reads it.
pub const CEILING_ENV: &str = "ORG_TOKEN_MINT_CEILING";
/// The ceiling when [`CEILING_ENV`] is unset (or empty).
pub const DEFAULT_CEILING: i64 = 100;
/// A token's name, in bytes.
pub const MAX_NAME_BYTES: usize = 100;
/// The label prefix of the platform agent's own auto-rotated credential.
pub const CONCIERGE_LABEL_PREFIX: &str = "system:concierge:";
/// `org_token_audit_logs.action` of a mint and of a revoke.
pub const AUDIT_MINT: &str = "mint";
pub const AUDIT_REVOKE: &str = "revoke";

/// The live-token predicate on the `org_api_tokens` row aliased `t` (`""` for no alias).
/// Only orgctl's fixed aliases go in.
pub fn live(t: &str) -> String {
    let p = if t.is_empty() {
        String::new()
    } else {
        format!("{t}.")
    };
    format!("({p}revoked_at IS NULL AND ({p}expires_at IS NULL OR {p}expires_at > now()))")
}

/// Expired but not revoked: dead to the platform, though `revoked_at` is still NULL.
pub fn expired(t: &str) -> String {
    let p = if t.is_empty() {
        String::new()
    } else {
        format!("{t}.")
    };
    format!("({p}revoked_at IS NULL AND {p}expires_at IS NOT NULL AND {p}expires_at <= now())")
}

/// The mint ceiling: `Ok(None)` when it is off (zero or less). A value that is not an integer
/// is bad input. Surrounding whitespace is ignored; unset or empty is the default.
pub fn parse_ceiling(raw: Option<&str>) -> Result<Option<i64>> {
    let Some(raw) = raw.map(str::trim).filter(|r| !r.is_empty()) else {
        return Ok(Some(DEFAULT_CEILING));
    };
    match raw.parse::<i64>() {
        Ok(n) if n <= 0 => Ok(None),
        Ok(n) => Ok(Some(n)),
        Err(_) => Err(Error::usage(format!(
            "{CEILING_ENV}='{}' is not an integer; set it to the platform's ceiling of live tokens per org (default {DEFAULT_CEILING}; 0 or less turns it off)",
            crate::error::sanitize(raw)
        ))),
    }
}

/// [`parse_ceiling`] of the environment.
pub fn ceiling_from_env() -> Result<Option<i64>> {
    match std::env::var(CEILING_ENV) {
        Ok(v) => parse_ceiling(Some(&v)),
        Err(std::env::VarError::NotPresent) => parse_ceiling(None),
        Err(std::env::VarError::NotUnicode(_)) => Err(Error::usage(format!(
            "{CEILING_ENV} is not valid UTF-8, so not an integer; set it to the platform's ceiling of live tokens per org (default {DEFAULT_CEILING}; 0 or less turns it off)"
        ))),
    }
}

/// Why the platform reserves `label` for itself, when it does.
pub fn reserved_label(label: &str) -> Option<&'static str> {
    if label == "admin-token" {
        Some("the platform labels tokens minted with its admin token 'admin-token'")
    } else if label == "session" || label.starts_with("session:") {
        Some("the platform labels tokens minted from a user session 'session' or 'session:<id>'")
    } else if label.starts_with("org-token:") {
        Some("the platform labels tokens minted with another org token 'org-token:<prefix>'")
    } else if label.starts_with("system:") {
        Some("'system:…' labels are the platform's own credentials (the agent's auto-rotated token is 'system:concierge:<agent id>')")
    } else {
        None
    }
}

/// Whether `label` marks the platform agent's own auto-rotated credential.
pub fn is_concierge_label(label: &str) -> bool {
    label.starts_with(CONCIERGE_LABEL_PREFIX)
}

/// Live tokens anchored to `org`: what the ceiling is compared with.
pub async fn live_count(conn: &mut PgConnection, org: Uuid) -> Result<i64> {
    Ok(db::query_scalar(&format!(
        "SELECT count(*) FROM org_api_tokens WHERE org_id = $1 AND {}",
        live("")
    ))
    .bind(org)
    .fetch_one(&mut *conn)
    .await?)
}

/// The platform's mint row for a token orgctl has just inserted. `over_ceiling` (the live
/// count and the ceiling) is recorded in the metadata when a break-glass mint went past it.
pub async fn audit_mint(
    conn: &mut PgConnection,
    token: Uuid,
    actor: &str,
    org: Uuid,
    name: Option<&str>,
    prefix: &str,
    over_ceiling: Option<(i64, i64)>,
) -> Result<()> {
    let mut meta = serde_json::json!({ "name": name, "prefix": prefix });
    if let Some((live, ceiling)) = over_ceiling {
        meta["over_ceiling"] = serde_json::json!(true);
        meta["live_tokens"] = serde_json::json!(live);
        meta["ceiling"] = serde_json::json!(ceiling);
    }
    let n = db::query(
        "INSERT INTO org_token_audit_logs (token_id, action, actor, org_id, metadata)
         VALUES ($1, $2, $3, $4, $5::text::jsonb)",
    )
    .bind(token)
    .bind(AUDIT_MINT)
    .bind(actor)
    .bind(org)
    .bind(meta.to_string())
    .execute(&mut *conn)
    .await?
    .rows_affected();
    db::ensure_rows("writing the platform's mint audit row", n, 1)
}

/// A revoke with the platform's audit rows, as one statement: `revoked_cte` is an `UPDATE`
/// returning the `id` of every token it revoked; the statement writes one platform revoke row
/// per such token, with the actor bound at `actor_param`. Its row count is the number of
/// tokens revoked.
pub fn revoke_with_audit(revoked_cte: &str, actor_param: &str) -> String {
    format!(
        "WITH r AS ({revoked_cte})
         INSERT INTO org_token_audit_logs (token_id, action, actor, org_id, metadata)
         SELECT id, '{AUDIT_REVOKE}', {actor_param}, NULL, NULL FROM r"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Exit;

    #[test]
    fn ceiling() {
        assert_eq!(parse_ceiling(None).ok(), Some(Some(100)));
        assert_eq!(parse_ceiling(Some("")).ok(), Some(Some(100)));
        assert_eq!(parse_ceiling(Some(" 7 ")).ok(), Some(Some(7)));
        assert_eq!(parse_ceiling(Some("0")).ok(), Some(None));
        assert_eq!(parse_ceiling(Some("-3")).ok(), Some(None));
        for bad in ["ten", "1.5", "1e3", "99999999999999999999"] {
            assert_eq!(
                parse_ceiling(Some(bad)).map_err(|e| e.exit).err(),
                Some(Exit::Usage),
                "{bad}"
            );
        }
    }

    #[test]
    fn labels() {
        for r in [
            "admin-token",
            "session",
            "session:42",
            "org-token:abcd1234",
            "system:concierge:x",
            "system:",
        ] {
            assert!(reserved_label(r).is_some(), "{r}");
        }
        for ok in ["orgctl:alice", "incident-1234", "sessions", "admin-tokens"] {
            assert!(reserved_label(ok).is_none(), "{ok}");
        }
        assert!(is_concierge_label("system:concierge:ea3cfcf1"));
        assert!(!is_concierge_label("system:other"));
    }

    #[test]
    fn predicates() {
        assert_eq!(
            live("t"),
            "(t.revoked_at IS NULL AND (t.expires_at IS NULL OR t.expires_at > now()))"
        );
        assert!(!live("").contains('.'));
    }
}
