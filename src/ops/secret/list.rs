//! `secret list` as a read: a workspace's secrets (its own, and the global ones it inherits),
//! or the global ones. Keys, versions and dates only; never a value.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::postgres::PgConnection;
use sqlx::Row;

use super::scope::Scope;
use crate::db;
use crate::error::{Error, Result};

/// Whether workspace `$1` exists.
pub(super) const WORKSPACE_EXISTS_SQL: &str = "SELECT 1 FROM workspaces WHERE id = $1";
/// Workspace `$1`'s own secrets (and whether each overrides a global one), then the global
/// ones it inherits, by key.
pub(super) const LIST_WORKSPACE_SQL: &str =
    "SELECT s.key, 'workspace', s.encryption_version, s.created_at, s.updated_at,
                        EXISTS (SELECT 1 FROM global_secrets g WHERE g.key = s.key)
                   FROM workspace_secrets s WHERE s.workspace_id = $1
                 UNION ALL
                 SELECT g.key, 'inherited', g.encryption_version, g.created_at, g.updated_at, false
                   FROM global_secrets g
                  WHERE NOT EXISTS (SELECT 1 FROM workspace_secrets s
                                     WHERE s.workspace_id = $1 AND s.key = g.key)
                 ORDER BY 1";
/// The global secrets, by key.
pub(super) const LIST_GLOBAL_SQL: &str =
    "SELECT key, 'global', encryption_version, created_at, updated_at, false
                   FROM global_secrets ORDER BY key";

/// One secret as listed.
#[derive(Clone, Debug, Serialize)]
pub struct Listed {
    pub key: String,
    /// "workspace", "inherited" (a global secret the workspace reads) or "global".
    pub scope: &'static str,
    pub encryption_version: i32,
    pub created_at: Option<DateTime<Utc>>,
    pub updated_at: Option<DateTime<Utc>>,
    /// A workspace secret with a global secret of the same key under it.
    pub overrides_global: bool,
}

/// The secrets of `scope`, in the caller's read-only transaction.
pub async fn list(conn: &mut PgConnection, scope: Scope) -> Result<Vec<Listed>> {
    let rows = match scope {
        Scope::Workspace(id) => {
            let exists: Option<i32> = db::query_scalar(WORKSPACE_EXISTS_SQL)
                .bind(id)
                .fetch_optional(&mut *conn)
                .await?;
            if exists.is_none() {
                return Err(Error::failed(format!(
                    "workspace {id} does not exist in this tenant: check the id"
                )));
            }
            db::query(LIST_WORKSPACE_SQL)
                .bind(id)
                .fetch_all(&mut *conn)
                .await?
        }
        Scope::Global => db::query(LIST_GLOBAL_SQL).fetch_all(&mut *conn).await?,
    };
    let listed = rows
        .iter()
        .map(|r| {
            let scope: String = r.try_get(1)?;
            Ok(Listed {
                key: r.try_get(0)?,
                scope: match scope.as_str() {
                    "workspace" => "workspace",
                    "inherited" => "inherited",
                    _ => "global",
                },
                encryption_version: r.try_get(2)?,
                created_at: r.try_get(3)?,
                updated_at: r.try_get(4)?,
                overrides_global: r.try_get(5)?,
            })
        })
        .collect::<std::result::Result<_, sqlx::Error>>()?;
    Ok(listed)
}
