//! A token row as the platform writes it, and finding one by id or prefix.

use chrono::{DateTime, Utc};
use sqlx::postgres::PgConnection;
use sqlx::Row;
use uuid::Uuid;

use super::{like_prefix, TokenRef, SHOWN};
use crate::db;
use crate::error::{sanitize, Error, Result};

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

/// One token by id ($1).
pub(super) const BY_ID: &str = concat!(
    "SELECT ",
    token_columns!(),
    " FROM org_api_tokens WHERE id = $1"
);

/// Prefixes are short and random: few rows match, but a million-row table has no index on
/// prefix, so a bounded page ($2 rows) of the matches of $1 comes with their total.
pub(super) const BY_PREFIX: &str = concat!(
    "SELECT ",
    token_columns!(),
    ", count(*) OVER () AS matches
                   FROM org_api_tokens WHERE prefix LIKE $1 ESCAPE '\\'
                  ORDER BY created_at DESC, id DESC LIMIT $2"
);

impl TokenRow {
    /// Expired and not revoked: dead to the platform, though `revoke` still marks it revoked.
    pub fn expired_unrevoked(&self) -> bool {
        self.revoked_at.is_none() && self.expired
    }

    /// `live`, `expired` or `revoked`, as the platform sees it: `revoked` wins over `expired`.
    pub fn state(&self) -> &'static str {
        if self.revoked_at.is_some() {
            "revoked"
        } else if self.expired {
            "expired"
        } else {
            "live"
        }
    }

    /// "id (prefix p, 'name')" for messages.
    pub fn label(&self) -> String {
        match &self.name {
            Some(n) => format!("{} (prefix {}, '{}')", self.id, self.prefix, sanitize(n)),
            None => format!("{} (prefix {})", self.id, self.prefix),
        }
    }
}

/// One token by id, live or revoked; `None` when there is none.
pub(super) async fn by_id(conn: &mut PgConnection, id: Uuid) -> Result<Option<TokenRow>> {
    Ok(db::query_as(BY_ID)
        .bind(id)
        .fetch_optional(&mut *conn)
        .await?)
}

/// Find exactly one token (live or revoked) by id or unique prefix. Unknown: exit 1;
/// ambiguous prefix: exit 2 listing the candidates.
pub async fn find_token(conn: &mut PgConnection, r: &TokenRef) -> Result<TokenRow> {
    match r {
        TokenRef::Id(id) => by_id(conn, *id).await?.ok_or_else(|| {
            Error::failed(format!(
                "no token with id {id} in this tenant; check the id with `orgctl token list --all`"
            ))
        }),
        TokenRef::Prefix(p) => find_by_prefix(conn, p).await,
    }
}

async fn find_by_prefix(conn: &mut PgConnection, p: &str) -> Result<TokenRow> {
    let rows = db::query(BY_PREFIX)
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
        1 if matches == 1 => Ok(tokens
            .into_iter()
            .next()
            .ok_or_else(|| Error::failed("the matching token vanished while it was read"))?),
        _ => Err(ambiguous(p, &tokens, matches)),
    }
}

/// A prefix that matches several tokens: the first of them, and how many more.
fn ambiguous(p: &str, tokens: &[TokenRow], matches: i64) -> Error {
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
    Error::usage(format!(
        "prefix '{p}' is ambiguous: it matches {matches} tokens ({}{more}); give a longer prefix or the token id",
        listed.join("; ")
    ))
}
