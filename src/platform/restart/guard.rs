//! The restart guard: which workspaces a secret change restarts — never the platform agent,
//! and only those the platform's own restart eligibility would restart — each skip with its
//! reason.

use serde::Serialize;
use sqlx::postgres::PgConnection;
use sqlx::Row;
use uuid::Uuid;

use crate::error::{Error, Result};

/// How far a parent chain is walked, up from a target or down from a paused workspace: the
/// platform's org-root lookup gives up past this many steps, so a longer chain (or a cycle) is
/// outside every org.
const MAX_STEPS: i32 = crate::platform::tree::ORG_ROOT_LOOKUP.hops;

/// Runtimes the platform's restart never restarts (it does not run them in a container it can
/// re-provision), each with its skip reason. `external` predates these and keeps its own name.
pub const SKIPPED_RUNTIMES: [(&str, SkipReason); 3] = [
    ("kimi", SkipReason::RuntimeKimi),
    ("kimi-cli", SkipReason::RuntimeKimiCli),
    ("mock", SkipReason::RuntimeMock),
];

/// Why a workspace that a change affects is not restarted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SkipReason {
    /// It is the platform agent (`kind='platform'`): never restarted by orgctl.
    PlatformRoot,
    /// Its kind could not be proven (lookup failed, or the row is gone): fail closed.
    KindUnknown,
    /// `--no-restart`.
    NoRestart,
    /// The platform's restart eligibility skips these, and orgctl skips them before calling, so
    /// each is reported with its reason rather than as the platform's bare no-op: status
    /// `removed`, `paused` or `hibernated`, `COALESCE(runtime,'langgraph') = 'external'` (the
    /// platform does not run it), or a `paused` ancestor within the chain bound (64 steps).
    Removed,
    Paused,
    Hibernated,
    External,
    PausedAncestor,
    /// The workspace has no status (NULL): the platform's eligibility never restarts it.
    NoStatus,
    /// Runtimes the platform's restart skips ([`SKIPPED_RUNTIMES`]).
    RuntimeKimi,
    RuntimeKimiCli,
    RuntimeMock,
    /// `secret restart`: the audit log records a successful restart of it since the key last
    /// changed (pass --all to restart it again).
    AlreadyRestarted,
}

impl SkipReason {
    pub fn as_str(self) -> &'static str {
        match self {
            SkipReason::PlatformRoot => "platform-root",
            SkipReason::KindUnknown => "kind-unknown",
            SkipReason::NoRestart => "no-restart",
            SkipReason::Removed => "removed",
            SkipReason::Paused => "paused",
            SkipReason::Hibernated => "hibernated",
            SkipReason::External => "external",
            SkipReason::PausedAncestor => "paused-ancestor",
            SkipReason::NoStatus => "no-status",
            SkipReason::RuntimeKimi => "runtime-kimi",
            SkipReason::RuntimeKimiCli => "runtime-kimi-cli",
            SkipReason::RuntimeMock => "runtime-mock",
            SkipReason::AlreadyRestarted => "already-restarted",
        }
    }

    /// The skip reason of a runtime the platform's restart never restarts.
    pub fn of_runtime(runtime: &str) -> Option<Self> {
        if runtime == "external" {
            return Some(SkipReason::External);
        }
        SKIPPED_RUNTIMES
            .iter()
            .find(|(r, _)| *r == runtime)
            .map(|(_, reason)| *reason)
    }

    /// The reason for a value of the fan-out query's `skip` column.
    fn from_sql(s: &str) -> Option<Self> {
        Some(match s {
            "platform-root" => SkipReason::PlatformRoot,
            "removed" => SkipReason::Removed,
            "paused" => SkipReason::Paused,
            "hibernated" => SkipReason::Hibernated,
            "external" => SkipReason::External,
            "paused-ancestor" => SkipReason::PausedAncestor,
            "no-status" => SkipReason::NoStatus,
            "runtime-kimi" => SkipReason::RuntimeKimi,
            "runtime-kimi-cli" => SkipReason::RuntimeKimiCli,
            "runtime-mock" => SkipReason::RuntimeMock,
            _ => return None,
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub id: Uuid,
    pub name: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Skip {
    pub id: Uuid,
    pub name: Option<String>,
    pub reason: SkipReason,
    /// Why the kind is unknown (for the warning), never shown for other reasons.
    pub detail: Option<String>,
}

/// Which workspaces a committed change restarts, and which it deliberately does not.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RestartPlan {
    pub planned: Vec<Target>,
    pub skipped: Vec<Skip>,
}

/// What the guard's lookup of a workspace target found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TargetRow {
    pub name: String,
    pub is_platform: bool,
    pub status: Option<String>,
    /// `COALESCE(runtime, 'langgraph')`.
    pub runtime: String,
    /// A `paused` workspace among its ancestors (at most [`MAX_STEPS`] steps up).
    pub paused_ancestor: bool,
}

/// The guard for a workspace-secret change: restart the target only when a successful lookup
/// proves `COALESCE(kind,'workspace') <> 'platform'`. A failed lookup or a missing row means
/// the kind is unknown: no restart (fail closed).
pub fn target_decision(
    id: Uuid,
    lookup: std::result::Result<Option<TargetRow>, String>,
    no_restart: bool,
) -> RestartPlan {
    let skip = |name: Option<String>, reason, detail| RestartPlan {
        planned: Vec::new(),
        skipped: vec![Skip {
            id,
            name,
            reason,
            detail,
        }],
    };
    let row = match lookup {
        Err(e) => return skip(None, SkipReason::KindUnknown, Some(e)),
        Ok(None) => {
            return skip(
                None,
                SkipReason::KindUnknown,
                Some("the workspace row is gone".into()),
            )
        }
        Ok(Some(row)) => row,
    };
    let name = Some(row.name.clone());
    if row.is_platform {
        return skip(name, SkipReason::PlatformRoot, None);
    }
    match row.status.as_deref() {
        None => return skip(name, SkipReason::NoStatus, None),
        Some("removed") => return skip(name, SkipReason::Removed, None),
        Some("paused") => return skip(name, SkipReason::Paused, None),
        Some("hibernated") => return skip(name, SkipReason::Hibernated, None),
        _ => {}
    }
    if let Some(reason) = SkipReason::of_runtime(&row.runtime) {
        return skip(name, reason, None);
    }
    if row.paused_ancestor {
        return skip(name, SkipReason::PausedAncestor, None);
    }
    if no_restart {
        return skip(name, SkipReason::NoRestart, None);
    }
    RestartPlan {
        planned: vec![Target { id, name }],
        skipped: Vec::new(),
    }
}

/// The target and its ancestors: the walk up stops at a root, a missing parent, or
/// [`MAX_STEPS`] steps (a cycle or a corrupt chain can never make it loop).
/// `status` is compared as text: older tenants have a TEXT column, or an enum without every
/// label (a literal the enum lacks would be an error, not a mismatch).
pub(super) const TARGET_SQL: &str = "WITH RECURSIVE up(id, steps) AS (
                               SELECT parent_id, 1 FROM workspaces WHERE id = $1 AND parent_id IS NOT NULL
                             UNION ALL
                               SELECT w.parent_id, u.steps + 1
                                 FROM up u JOIN workspaces w ON w.id = u.id
                                WHERE w.parent_id IS NOT NULL AND u.steps < $2
                          )
                          SELECT name, COALESCE(kind, 'workspace') = 'platform', status::text,
                                 COALESCE(runtime, 'langgraph'),
                                 EXISTS (SELECT 1 FROM up JOIN workspaces a ON a.id = up.id
                                          WHERE a.status::text = 'paused')
                            FROM workspaces WHERE id = $1";

/// The global fan-out, ONE set-based statement: every workspace that inherits key $1 (no
/// workspace-level override), each with the reason it is skipped, or NULL when it is
/// restarted. The reasons in order: the platform agent (the guard), a NULL status,
/// `removed`/`paused`/`hibernated`, external runtime, a runtime of $3 (`runtime-<name>`), a
/// paused ancestor — found by walking DOWN from every paused workspace at most
/// [`MAX_STEPS`] levels (the same bound as walking up from each row, in one pass;
/// the walk starts at the paused workspaces themselves, which the CASE already reports as
/// `paused`, so no join is needed to seed it) and hash-joined, so the plan stays linear even
/// with stale statistics. Without a paused workspace the walk is one scan.
pub const FANOUT_SQL: &str = "WITH RECURSIVE below_paused(id, depth) AS (
                                   SELECT p.id, 0 FROM workspaces p WHERE p.status::text = 'paused'
                                 UNION ALL
                                   SELECT w.id, b.depth + 1
                                     FROM below_paused b JOIN workspaces w ON w.parent_id = b.id
                                    WHERE b.depth < $2
                              ),
                              under AS (SELECT DISTINCT id FROM below_paused)
                              SELECT w.id, w.name,
                                     CASE WHEN COALESCE(w.kind, 'workspace') = 'platform' THEN 'platform-root'
                                          WHEN w.status IS NULL THEN 'no-status'
                                          WHEN w.status::text IN ('removed', 'paused', 'hibernated') THEN w.status::text
                                          WHEN COALESCE(w.runtime, 'langgraph') = 'external' THEN 'external'
                                          WHEN COALESCE(w.runtime, 'langgraph') = ANY($3::text[])
                                               THEN 'runtime-' || COALESCE(w.runtime, 'langgraph')
                                          WHEN u.id IS NOT NULL THEN 'paused-ancestor'
                                     END
                                FROM workspaces w
                                LEFT JOIN under u ON u.id = w.id
                               WHERE NOT EXISTS (SELECT 1 FROM workspace_secrets s
                                                  WHERE s.workspace_id = w.id AND s.key = $1)
                               ORDER BY w.id";

pub async fn lookup_target(
    conn: &mut PgConnection,
    id: Uuid,
) -> std::result::Result<Option<TargetRow>, String> {
    let row = crate::db::query(TARGET_SQL)
        .bind(id)
        .bind(MAX_STEPS)
        .fetch_optional(&mut *conn)
        .await
        .map_err(|e| crate::error::classify_sqlx(&e).message)?;
    let Some(r) = row else { return Ok(None) };
    let decode = || -> std::result::Result<TargetRow, sqlx::Error> {
        Ok(TargetRow {
            name: r.try_get(0)?,
            is_platform: r.try_get(1)?,
            status: r.try_get(2)?,
            runtime: r.try_get(3)?,
            paused_ancestor: r.try_get(4)?,
        })
    };
    decode()
        .map(Some)
        .map_err(|e| crate::error::classify_sqlx(&e).message)
}

/// The restart plan of a change to workspace `id`'s secret, from the state `conn` sees.
pub async fn plan_workspace(conn: &mut PgConnection, id: Uuid, no_restart: bool) -> RestartPlan {
    let lookup = lookup_target(conn, id).await;
    target_decision(id, lookup, no_restart)
}

/// The restart plan of a change to global secret `key`, from the state `conn` sees.
pub async fn plan_global(
    conn: &mut PgConnection,
    key: &str,
    no_restart: bool,
) -> Result<RestartPlan> {
    let runtimes: Vec<&str> = SKIPPED_RUNTIMES.iter().map(|(r, _)| *r).collect();
    let rows = crate::db::query(FANOUT_SQL)
        .bind(key)
        .bind(MAX_STEPS)
        .bind(&runtimes)
        .fetch_all(&mut *conn)
        .await?;
    let mut plan = RestartPlan::default();
    for r in rows {
        let id: Uuid = r.try_get(0)?;
        let name: String = r.try_get(1)?;
        let skip: Option<String> = r.try_get(2)?;
        let reason = match skip.as_deref() {
            None if no_restart => Some(SkipReason::NoRestart),
            None => None,
            Some(s) => Some(SkipReason::from_sql(s).ok_or_else(|| {
                Error::failed(format!("internal: unknown restart skip reason '{s}'"))
            })?),
        };
        match reason {
            Some(reason) => plan.skipped.push(Skip {
                id,
                name: Some(name),
                reason,
                detail: None,
            }),
            None => plan.planned.push(Target {
                id,
                name: Some(name),
            }),
        }
    }
    Ok(plan)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id() -> Uuid {
        Uuid::from_u128(0xa000_0000_0000_4000_8000_0000_0000_0001)
    }

    fn row(is_platform: bool, status: &str, runtime: &str) -> TargetRow {
        TargetRow {
            paused_ancestor: false,
            name: "w".into(),
            is_platform,
            status: Some(status.into()),
            runtime: runtime.into(),
        }
    }

    fn reasons(p: &RestartPlan) -> Vec<SkipReason> {
        p.skipped.iter().map(|s| s.reason).collect()
    }

    #[test]
    fn guard_restarts_only_a_proven_ordinary_workspace() {
        let p = target_decision(id(), Ok(Some(row(false, "online", "langgraph"))), false);
        assert_eq!(p.planned.len(), 1);
        assert!(p.skipped.is_empty());

        let p = target_decision(id(), Ok(Some(row(true, "online", "langgraph"))), false);
        assert!(p.planned.is_empty());
        assert_eq!(reasons(&p), [SkipReason::PlatformRoot]);
        // The guard wins over --no-restart in the report.
        let p = target_decision(id(), Ok(Some(row(true, "online", "langgraph"))), true);
        assert_eq!(reasons(&p), [SkipReason::PlatformRoot]);
    }

    #[test]
    fn guard_fails_closed_when_the_kind_is_unknown() {
        let p = target_decision(id(), Err("connection reset".into()), false);
        assert!(p.planned.is_empty());
        assert_eq!(reasons(&p), [SkipReason::KindUnknown]);
        assert_eq!(p.skipped[0].detail.as_deref(), Some("connection reset"));
        let p = target_decision(id(), Ok(None), false);
        assert!(p.planned.is_empty());
        assert_eq!(reasons(&p), [SkipReason::KindUnknown]);
    }

    #[test]
    fn target_not_running_on_the_platform_is_not_restarted() {
        for (status, runtime, reason) in [
            ("removed", "langgraph", SkipReason::Removed),
            ("paused", "langgraph", SkipReason::Paused),
            ("hibernated", "langgraph", SkipReason::Hibernated),
            ("online", "external", SkipReason::External),
            ("online", "kimi", SkipReason::RuntimeKimi),
            ("offline", "kimi-cli", SkipReason::RuntimeKimiCli),
            ("failed", "mock", SkipReason::RuntimeMock),
        ] {
            let p = target_decision(id(), Ok(Some(row(false, status, runtime))), false);
            assert!(p.planned.is_empty());
            assert_eq!(reasons(&p), [reason]);
            // A rule's reason wins over --no-restart.
            let p = target_decision(id(), Ok(Some(row(false, status, runtime))), true);
            assert_eq!(reasons(&p), [reason]);
        }
        // A NULL status: the platform's eligibility never restarts it.
        let mut no_status = row(false, "online", "langgraph");
        no_status.status = None;
        let p = target_decision(id(), Ok(Some(no_status)), false);
        assert!(p.planned.is_empty());
        assert_eq!(reasons(&p), [SkipReason::NoStatus]);
        assert_eq!(SkipReason::NoStatus.as_str(), "no-status");
        // Runtimes are compared exactly, as the platform does; others are restarted.
        for runtime in ["hermes", "langgraph", "Kimi", "kimi-cli2", "claude-code"] {
            let p = target_decision(id(), Ok(Some(row(false, "online", runtime))), false);
            assert_eq!(p.planned.len(), 1, "{runtime}");
        }
        for (runtime, reason) in SKIPPED_RUNTIMES {
            assert_eq!(reason.as_str(), format!("runtime-{runtime}"));
            assert_eq!(SkipReason::from_sql(reason.as_str()), Some(reason));
        }
        let mut under = row(false, "online", "langgraph");
        under.paused_ancestor = true;
        let p = target_decision(id(), Ok(Some(under)), false);
        assert_eq!(reasons(&p), [SkipReason::PausedAncestor]);
        let p = target_decision(id(), Ok(Some(row(false, "online", ""))), true);
        assert_eq!(reasons(&p), [SkipReason::NoRestart]);
    }
}
