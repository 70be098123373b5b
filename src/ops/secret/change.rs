//! `secret set` and `secret delete` as an operation: the read-only plan (the target, the
//! existing row, the workspaces the change would restart, the MODEL rules), the re-check of
//! the target under the tenant lock, the one upsert or delete, and the audit arguments. The
//! caller owns the transactions: [`plan`] runs in a read-only snapshot, [`lock_target`] and
//! [`write`] in the change's transaction under the tenant lock.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::postgres::PgConnection;
use sqlx::Row;
use zeroize::Zeroizing;

use super::restart::restart_plan;
use super::scope::{unknown_workspace, Scope};
use super::value::ValueSource;
use crate::db;
use crate::error::{Error, Result};
use crate::platform::keys::SecretBox;
use crate::platform::restart::{self, RestartPlan, TargetRow};
use crate::platform::{MODEL_KEY, MODEL_OVERRIDE_KEY};

/// The existing workspace secret's version and last update (`$1` workspace, `$2` key).
pub(super) const EXISTING_WORKSPACE_SQL: &str =
    "SELECT encryption_version, updated_at FROM workspace_secrets
                  WHERE workspace_id = $1 AND key = $2";
/// The existing global secret's version and last update (`$1` key).
pub(super) const EXISTING_GLOBAL_SQL: &str =
    "SELECT encryption_version, updated_at FROM global_secrets WHERE key = $1";
/// Where a MOLECULE_MODEL secret (`$2`) outranks the agent's (`$1`) MODEL: on the agent,
/// globally, or NULL.
pub(super) const MODEL_OUTRANKED_SQL: &str =
    "SELECT CASE WHEN EXISTS (SELECT 1 FROM workspace_secrets
                                           WHERE workspace_id = $1 AND key = $2) THEN 'on the agent'
                             WHEN EXISTS (SELECT 1 FROM global_secrets WHERE key = $2) THEN 'globally'
                        END";
/// Whether the target workspace is the platform agent, its row held FOR SHARE until the commit.
pub(super) const LOCK_TARGET_SQL: &str =
    "SELECT COALESCE(kind, 'workspace') = 'platform' FROM workspaces WHERE id = $1 FOR SHARE";
/// One upsert of a workspace secret; returns whether the row was inserted.
pub(super) const UPSERT_WORKSPACE_SQL: &str =
    "INSERT INTO workspace_secrets (workspace_id, key, encrypted_value, encryption_version)
                 VALUES ($1, $2, $3, $4)
                 ON CONFLICT (workspace_id, key) DO UPDATE
                    SET encrypted_value = EXCLUDED.encrypted_value,
                        encryption_version = EXCLUDED.encryption_version,
                        updated_at = now()
                 RETURNING (xmax = 0)";
/// One upsert of a global secret; returns whether the row was inserted.
pub(super) const UPSERT_GLOBAL_SQL: &str =
    "INSERT INTO global_secrets (key, encrypted_value, encryption_version)
                 VALUES ($1, $2, $3)
                 ON CONFLICT (key) DO UPDATE
                    SET encrypted_value = EXCLUDED.encrypted_value,
                        encryption_version = EXCLUDED.encryption_version,
                        updated_at = now()
                 RETURNING (xmax = 0)";
/// One delete of a workspace secret; returns the deleted row's version.
pub(super) const DELETE_WORKSPACE_SQL: &str =
    "DELETE FROM workspace_secrets WHERE workspace_id = $1 AND key = $2
                 RETURNING encryption_version";
/// One delete of a global secret; returns the deleted row's version.
pub(super) const DELETE_GLOBAL_SQL: &str =
    "DELETE FROM global_secrets WHERE key = $1 RETURNING encryption_version";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Action {
    Created,
    Updated,
    Deleted,
    /// `delete` of a key that does not exist: nothing to do.
    NotFound,
    /// `secret restart`: the value is left alone, the restarts are replayed.
    Restart,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Created => "created",
            Action::Updated => "updated",
            Action::Deleted => "deleted",
            Action::NotFound => "not-found",
            Action::Restart => "restart",
        }
    }

    /// Whether the action changes anything (not a delete of a missing key).
    pub fn changes(self) -> bool {
        self != Action::NotFound
    }
}

/// The existing secret row, if any.
#[derive(Clone, Debug)]
pub struct Existing {
    pub version: i32,
    pub updated_at: Option<DateTime<Utc>>,
}

/// What a change writes.
pub enum Op {
    /// Write `value` sealed by `sb` (`version`: the version `sb` writes). `value` is `None`
    /// only for a dry run that was given none.
    Set {
        value: Option<(Zeroizing<Vec<u8>>, ValueSource)>,
        sb: SecretBox,
        version: i32,
    },
    /// Delete the key; `force` allows deleting MODEL from the platform agent.
    Delete { force: bool },
}

/// A checked `secret set` or `secret delete`.
pub struct Change<'a> {
    pub scope: Scope,
    pub key: &'a str,
    pub no_restart: bool,
    pub op: Op,
}

impl Change<'_> {
    /// The audit command of the change.
    pub fn command(&self) -> &'static str {
        match self.op {
            Op::Set { .. } => "secret set",
            Op::Delete { .. } => "secret delete",
        }
    }

    /// Whether this writes MODEL on the platform agent (the target is the agent).
    pub fn model_on_agent(&self, target_is_platform: bool) -> bool {
        matches!(self.op, Op::Set { .. }) && target_is_platform && self.key == MODEL_KEY
    }
}

/// What the read-only planning found.
#[derive(Clone, Debug)]
pub struct Reviewed {
    pub target: Option<TargetRow>,
    pub existing: Option<Existing>,
    pub restart: RestartPlan,
    /// Where a MOLECULE_MODEL secret outranks the agent's MODEL ("on the agent", "globally"),
    /// when the change writes MODEL on the platform agent.
    pub outranked: Option<String>,
}

impl Reviewed {
    pub fn target_is_platform(&self) -> bool {
        self.target.as_ref().is_some_and(|t| t.is_platform)
    }

    /// What the change would do to the row found.
    pub fn action(&self, op: &Op) -> Action {
        match (op, &self.existing) {
            (Op::Set { .. }, None) => Action::Created,
            (Op::Set { .. }, Some(_)) => Action::Updated,
            (Op::Delete { .. }, Some(_)) => Action::Deleted,
            (Op::Delete { .. }, None) => Action::NotFound,
        }
    }

    /// The encryption version the change writes (set) or removes (delete).
    pub fn encryption_version(&self, op: &Op) -> Option<i32> {
        match (op, &self.existing) {
            (Op::Set { version, .. }, _) => Some(*version),
            (Op::Delete { .. }, Some(e)) => Some(e.version),
            (Op::Delete { .. }, None) => None,
        }
    }
}

/// The workspace a per-workspace secret belongs to, as the restart guard sees it (None for a
/// global secret); a workspace the tenant does not have is refused.
pub(super) async fn target_of(conn: &mut PgConnection, scope: Scope) -> Result<Option<TargetRow>> {
    match scope {
        Scope::Workspace(id) => Ok(Some(
            restart::lookup_target(conn, id)
                .await
                .map_err(Error::failed)?
                .ok_or_else(|| unknown_workspace(id))?,
        )),
        Scope::Global => Ok(None),
    }
}

/// Plan the change from the snapshot `conn` sees (read-only: no locks, no writes).
pub async fn plan(conn: &mut PgConnection, change: &Change<'_>) -> Result<Reviewed> {
    let (scope, key) = (change.scope, change.key);
    let target = target_of(conn, scope).await?;
    let existing = existing_row(conn, scope, key).await?;
    let restart = restart_plan(conn, scope, key, change.no_restart).await?;
    let is_platform = target.as_ref().is_some_and(|t| t.is_platform);
    let outranked: Option<String> = if change.model_on_agent(is_platform) {
        db::query_scalar(MODEL_OUTRANKED_SQL)
            .bind(scope.workspace_id())
            .bind(MODEL_OVERRIDE_KEY)
            .fetch_one(&mut *conn)
            .await?
    } else {
        None
    };
    Ok(Reviewed {
        target,
        existing,
        restart,
        outranked,
    })
}

/// The existing row of `scope`/`key`.
pub(super) async fn existing_row(
    conn: &mut PgConnection,
    scope: Scope,
    key: &str,
) -> Result<Option<Existing>> {
    let row = match scope {
        Scope::Workspace(id) => {
            db::query(EXISTING_WORKSPACE_SQL)
                .bind(id)
                .bind(key)
                .fetch_optional(&mut *conn)
                .await?
        }
        Scope::Global => {
            db::query(EXISTING_GLOBAL_SQL)
                .bind(key)
                .fetch_optional(&mut *conn)
                .await?
        }
    };
    Ok(match row {
        Some(r) => Some(Existing {
            version: r.try_get(0)?,
            updated_at: r.try_get(1)?,
        }),
        None => None,
    })
}

/// The MODEL gate: the platform marks a platform agent without a MODEL workspace secret failed.
/// Deleting MODEL from the agent is refused (exit 3) unless `force`; forced, the warning to
/// print is returned.
pub fn model_gate(
    scope: Scope,
    key: &str,
    target_is_platform: bool,
    force: bool,
) -> Result<Option<String>> {
    if !(matches!(scope, Scope::Workspace(_)) && key == MODEL_KEY && target_is_platform) {
        return Ok(None);
    }
    let id = scope
        .workspace_id()
        .map(|i| i.to_string())
        .unwrap_or_default();
    if force {
        Ok(Some(format!(
            "deleting MODEL from the platform agent {id} (--force): the platform marks an agent without MODEL failed at its next registration; it is not restarted now"
        )))
    } else {
        Err(Error::refused(format!(
            "refusing to delete MODEL from the platform agent {id}: the platform marks an agent without it failed; set a new value with `orgctl secret set` instead, or pass --force"
        )))
    }
}

/// Under the tenant lock, for a workspace secret: whether the target is the platform agent,
/// its row held FOR SHARE so it cannot become (or stop being) the platform agent, nor vanish,
/// before the commit. `None` for a global secret.
pub async fn lock_target(conn: &mut PgConnection, scope: Scope) -> Result<Option<bool>> {
    let Scope::Workspace(id) = scope else {
        return Ok(None);
    };
    let is_platform: Option<bool> = db::query_scalar(LOCK_TARGET_SQL)
        .bind(id)
        .fetch_optional(&mut *conn)
        .await?;
    is_platform.ok_or_else(|| unknown_workspace(id)).map(Some)
}

/// What [`write`] did.
#[derive(Clone, Copy, Debug)]
pub struct Written {
    /// Created, Updated, Deleted, or NotFound (deleted concurrently: nothing written).
    pub action: Action,
    /// The version written or deleted (`None` when nothing was deleted).
    pub encryption_version: Option<i32>,
    pub source: Option<ValueSource>,
}

/// The one upsert or delete, in the change's transaction under the tenant lock. A version-1
/// write first passes [`crate::ops::rekey::ensure_key_matches_tenant`]: under the lock, a rekey
/// that committed meanwhile left no row the old key reads.
pub async fn write(conn: &mut PgConnection, change: &Change<'_>) -> Result<Written> {
    let (scope, key) = (change.scope, change.key);
    match &change.op {
        Op::Set { value, sb, version } => {
            let (value, source) = value
                .as_ref()
                .ok_or_else(|| Error::failed("internal: no value to write"))?;
            if *version == 1 {
                crate::ops::rekey::ensure_key_matches_tenant(conn, sb, scope.workspace_id(), key)
                    .await?;
            }
            let (sealed, v) = sb.seal(value)?;
            let sealed = Zeroizing::new(sealed);
            let inserted = upsert(conn, scope, key, &sealed, v).await?;
            Ok(Written {
                action: if inserted {
                    Action::Created
                } else {
                    Action::Updated
                },
                encryption_version: Some(v),
                source: Some(*source),
            })
        }
        Op::Delete { .. } => Ok(match delete_row(conn, scope, key).await? {
            Some(v) => Written {
                action: Action::Deleted,
                encryption_version: Some(v),
                source: None,
            },
            None => Written {
                action: Action::NotFound,
                encryption_version: None,
                source: None,
            },
        }),
    }
}

/// The audit arguments of an applied change: never the value. `platform_url`: restarts are
/// sent to a platform.
pub fn audit_args(change: &Change<'_>, written: &Written, platform_url: bool) -> serde_json::Value {
    let scope = change.scope;
    serde_json::json!({
        "scope": scope.as_str(),
        "workspace_id": scope.workspace_id(),
        "key": change.key,
        "action": written.action,
        "encryption_version": written.encryption_version,
        "value_source": written.source,
        "no_restart": change.no_restart,
        "force": matches!(change.op, Op::Delete { force: true }),
        "platform_url": platform_url,
    })
}

/// One upsert; returns whether the row was inserted (not updated).
async fn upsert(
    conn: &mut PgConnection,
    scope: Scope,
    key: &str,
    sealed: &[u8],
    version: i32,
) -> Result<bool> {
    let inserted: bool = match scope {
        Scope::Workspace(id) => {
            db::query_scalar(UPSERT_WORKSPACE_SQL)
                .bind(id)
                .bind(key)
                .bind(sealed)
                .bind(version)
                .fetch_one(&mut *conn)
                .await?
        }
        Scope::Global => {
            db::query_scalar(UPSERT_GLOBAL_SQL)
                .bind(key)
                .bind(sealed)
                .bind(version)
                .fetch_one(&mut *conn)
                .await?
        }
    };
    Ok(inserted)
}

/// One delete; returns the deleted row's encryption_version, `None` when there was none.
async fn delete_row(conn: &mut PgConnection, scope: Scope, key: &str) -> Result<Option<i32>> {
    Ok(match scope {
        Scope::Workspace(id) => {
            db::query_scalar(DELETE_WORKSPACE_SQL)
                .bind(id)
                .bind(key)
                .fetch_optional(&mut *conn)
                .await?
        }
        Scope::Global => {
            db::query_scalar(DELETE_GLOBAL_SQL)
                .bind(key)
                .fetch_optional(&mut *conn)
                .await?
        }
    })
}
