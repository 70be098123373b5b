//! The drift checks of a rollback: what changed since the run among the rows it snapshotted,
//! new rows hanging off the agent, names a restore would duplicate, and the platform's rows
//! that reference a created agent. Each finding names up to [`LIST`] rows and counts the rest.

use sqlx::postgres::PgConnection;
use sqlx::Row;
use uuid::Uuid;

use super::{Drift, RunRow};
use crate::db;
use crate::error::Result;
use crate::ops::org::{self, Count, Referencing};
use crate::platform::{tree, MODEL_KEY};

/// Rows named per drift finding before it is summarised as a count.
pub(super) const LIST: i64 = 20;

/// The static statements of the drift checks.
pub(crate) const STATEMENTS: &[(&str, &str)] = &[
    ("drift: root deleted", ROOT_DELETED),
    ("drift: root changed", ROOT_CHANGED),
    ("drift: token moved away", TOKEN_MOVED_AWAY),
    ("drift: allowlist row moved away", ALLOWLIST_MOVED_AWAY),
    ("drift: allowlist row collides", ALLOWLIST_COLLIDES),
    ("drift: merged row collides", MERGED_COLLIDES),
    ("drift: new children", NEW_CHILDREN),
    ("drift: new tokens", NEW_TOKENS),
    ("drift: new allowlist rows", NEW_ALLOWLIST),
    ("drift: agent kept", AGENT_KEPT),
    ("drift: MODEL kept", MODEL_KEPT),
];

/// Rows that are not in the snapshot and hang off the agent: `tbl` rows whose `col` is the
/// agent and that `snapshot` (a subquery on `x`) does not find.
macro_rules! new_rows {
    ($tbl:literal, $col:literal, $snapshot:literal) => {
        concat!(
            "SELECT x.id::text, count(*) OVER () FROM ",
            $tbl,
            " x
          WHERE x.",
            $col,
            " = $2 AND $3::timestamptz IS NOT NULL
            AND NOT EXISTS (",
            $snapshot,
            ")
            AND NOT EXISTS (SELECT 1 FROM orgctl.backfill_rows k
                             WHERE k.run_id = $1 AND k.kind = 'kept' AND k.tbl = '",
            $tbl,
            "' AND k.row_id = x.id)
          ORDER BY x.id LIMIT $4"
        )
    };
}

/// A re-parented root deleted since the run.
const ROOT_DELETED: &str = "SELECT s.row_id::text, count(*) OVER () FROM orgctl.backfill_rows s
              WHERE s.run_id = $1 AND s.kind = 'root' AND $2::uuid IS NOT NULL AND $3::timestamptz IS NOT NULL
                AND NOT EXISTS (SELECT 1 FROM workspaces w WHERE w.id = s.row_id)
              ORDER BY 1 LIMIT $4";

/// A re-parented root moved or written since the run.
const ROOT_CHANGED: &str = "SELECT w.id::text, count(*) OVER () FROM orgctl.backfill_rows s
               JOIN workspaces w ON w.id = s.row_id
              WHERE s.run_id = $1 AND s.kind = 'root'
                AND (w.parent_id IS DISTINCT FROM $2 OR w.updated_at IS DISTINCT FROM $3)
              ORDER BY 1 LIMIT $4";

/// A moved token deleted or moved off the agent since the run. An anti-join against the
/// agent's rows (an index range), not a join with the whole table: the run just put every one
/// of them on the agent.
const TOKEN_MOVED_AWAY: &str = "SELECT s.row_id::text, count(*) OVER () FROM orgctl.backfill_rows s
              WHERE s.run_id = $1 AND s.kind = 'anchor' AND s.tbl = 'org_api_tokens'
                AND $3::timestamptz IS NOT NULL
                AND NOT EXISTS (SELECT 1 FROM org_api_tokens x WHERE x.id = s.row_id AND x.org_id = $2)
              ORDER BY 1 LIMIT $4";

/// A moved allowlist row deleted or moved off the agent since the run (an anti-join, as for
/// the tokens).
const ALLOWLIST_MOVED_AWAY: &str = "SELECT s.row_id::text, count(*) OVER () FROM orgctl.backfill_rows s
              WHERE s.run_id = $1 AND s.kind = 'anchor' AND s.tbl = 'org_plugin_allowlist'
                AND $3::timestamptz IS NOT NULL
                AND NOT EXISTS (SELECT 1 FROM org_plugin_allowlist x WHERE x.id = s.row_id AND x.org_id = $2)
              ORDER BY 1 LIMIT $4";

/// A moved allowlist row whose root has a row of its plugin again.
const ALLOWLIST_COLLIDES: &str = "SELECT x.id::text, count(*) OVER () FROM orgctl.backfill_rows s
               JOIN org_plugin_allowlist x ON x.id = s.row_id
              WHERE s.run_id = $1 AND s.kind = 'anchor' AND s.tbl = 'org_plugin_allowlist'
                AND x.org_id = $2 AND $3::timestamptz IS NOT NULL
                AND EXISTS (SELECT 1 FROM org_plugin_allowlist b
                             WHERE b.org_id = s.old_org_id AND b.plugin_name = x.plugin_name
                               AND b.id <> x.id)
              ORDER BY 1 LIMIT $4";

/// A merged-away allowlist row whose re-insert would collide with a row not of the run.
const MERGED_COLLIDES: &str = "SELECT m.row_id::text, count(*) OVER () FROM orgctl.backfill_rows m
              CROSS JOIN LATERAL jsonb_populate_record(NULL::org_plugin_allowlist, m.row) r
              WHERE m.run_id = $1 AND m.kind = 'merged' AND $2::uuid IS NOT NULL AND $3::timestamptz IS NOT NULL
                AND EXISTS (SELECT 1 FROM org_plugin_allowlist b
                             WHERE (b.id = r.id
                                    OR (b.org_id = r.org_id AND b.plugin_name = r.plugin_name))
                               AND NOT EXISTS (SELECT 1 FROM orgctl.backfill_rows s
                                                WHERE s.run_id = $1 AND s.kind = 'anchor' AND s.row_id = b.id
                                                  AND s.tbl = 'org_plugin_allowlist'))
              ORDER BY 1 LIMIT $4";

/// Children added under the agent since the run.
const NEW_CHILDREN: &str = new_rows!(
    "workspaces",
    "parent_id",
    "SELECT 1 FROM orgctl.backfill_rows s WHERE s.run_id = $1 AND s.kind = 'root' AND s.row_id = x.id"
);

/// Tokens added on the agent since the run.
const NEW_TOKENS: &str = new_rows!(
    "org_api_tokens",
    "org_id",
    "SELECT 1 FROM orgctl.backfill_rows s WHERE s.run_id = $1 AND s.kind = 'anchor' AND s.tbl = 'org_api_tokens' AND s.row_id = x.id"
);

/// Allowlist rows added on the agent since the run.
const NEW_ALLOWLIST: &str = new_rows!(
    "org_plugin_allowlist",
    "org_id",
    "SELECT 1 FROM orgctl.backfill_rows s WHERE s.run_id = $1 AND s.kind = 'anchor' AND s.tbl = 'org_plugin_allowlist' AND s.row_id = x.id"
);

/// The drift checks of the snapshotted rows and of new rows off the agent: (table, reason,
/// statement). Every statement binds $1 run id, $2 agent, $3 the run's transaction time, $4 the
/// list limit, and returns (id, total count).
const CHECKS: &[(&str, &str, &str)] = &[
    (
        "workspaces",
        "(a re-parented root) deleted since the run",
        ROOT_DELETED,
    ),
    (
        "workspaces",
        "(a re-parented root) changed since the run",
        ROOT_CHANGED,
    ),
    (
        "org_api_tokens",
        "(moved to the agent) deleted or moved since the run",
        TOKEN_MOVED_AWAY,
    ),
    (
        "org_plugin_allowlist",
        "(moved to the agent) deleted or moved since the run",
        ALLOWLIST_MOVED_AWAY,
    ),
    (
        "org_plugin_allowlist",
        "would collide on (org_id, plugin_name) when moved back to its root",
        ALLOWLIST_COLLIDES,
    ),
    (
        "org_plugin_allowlist",
        "(merged away by the run) would collide when re-inserted",
        MERGED_COLLIDES,
    ),
    (
        "workspaces",
        "added under the agent since the run (children)",
        NEW_CHILDREN,
    ),
    (
        "org_api_tokens",
        "added on the agent since the run",
        NEW_TOKENS,
    ),
    (
        "org_plugin_allowlist",
        "added on the agent since the run",
        NEW_ALLOWLIST,
    ),
];

/// Whether the agent still is what the run made it (binds $1 agent, $2 the run's agent action,
/// $3 the name a created agent got); no row when it is gone.
const AGENT_KEPT: &str = "SELECT parent_id IS NULL AND kind IS NOT DISTINCT FROM 'platform'
                    AND ($2 = 'update' OR (tier IS NOT DISTINCT FROM 0
                                           AND name IS NOT DISTINCT FROM $3))
               FROM workspaces WHERE id = $1";

/// Whether the agent's MODEL secret is the one the run wrote (binds $1 agent, $2 the key, $3 the
/// run's transaction time); no row when it is gone.
const MODEL_KEPT: &str =
    "SELECT updated_at = $3 FROM workspace_secrets WHERE workspace_id = $1 AND key = $2";

/// Every drift since the run, in the order the checks run: the snapshotted rows, new rows off
/// the agent, then the agent and its MODEL secret.
pub(super) async fn find_drift(
    conn: &mut PgConnection,
    run_id: &str,
    agent: Uuid,
    run: &RunRow,
) -> Result<Vec<Drift>> {
    let mut found = Vec::new();
    for (table, reason, sql) in CHECKS {
        let rows = db::query(sql)
            .bind(run_id)
            .bind(agent)
            .bind(run.at)
            .bind(LIST)
            .fetch_all(&mut *conn)
            .await?;
        if let Some(first) = rows.first() {
            let total: i64 = first.try_get(1)?;
            let ids = rows
                .iter()
                .map(|r| r.try_get::<String, _>(0))
                .collect::<std::result::Result<Vec<_>, _>>()?;
            found.push(Drift {
                table,
                reason: reason.to_string(),
                rows: total,
                ids,
                action: None,
            });
        }
    }

    found.extend(agent_drift(conn, agent, run).await?);
    Ok(found)
}

/// The agent and its MODEL secret changed or deleted since the run, as drift.
async fn agent_drift(conn: &mut PgConnection, agent: Uuid, run: &RunRow) -> Result<Vec<Drift>> {
    let mut found = Vec::new();
    // The agent and its MODEL secret, when the run wrote them. Only the agent's columns orgctl
    // set count (it is a root, kind 'platform', tier 0, and the name a created agent got): the
    // platform maintains the rest once the agent lives (status, URL, heartbeats, updated_at,
    // every column orgctl did not set), and a change there is not drift.
    if run.agent_action != "unchanged" {
        let state: Option<bool> = db::query_scalar(AGENT_KEPT)
            .bind(agent)
            .bind(&run.agent_action)
            .bind(crate::ops::install::DEFAULT_AGENT_NAME)
            .fetch_optional(&mut *conn)
            .await?;
        let reason = match state {
            None => Some("(the platform agent) deleted since the run"),
            Some(false) => Some("(the platform agent) changed since the run"),
            Some(true) => None,
        };
        if let Some(reason) = reason {
            found.push(Drift {
                table: "workspaces",
                reason: reason.into(),
                rows: 1,
                ids: vec![agent.to_string()],
                action: None,
            });
        }
    }
    if matches!(run.model_action.as_str(), "seeded" | "replaced") {
        let same: Option<bool> = db::query_scalar(MODEL_KEPT)
            .bind(agent)
            .bind(MODEL_KEY)
            .bind(run.at)
            .fetch_optional(&mut *conn)
            .await?;
        if same != Some(true) {
            found.push(Drift {
                table: "workspace_secrets",
                reason: format!(
                    "(the agent's MODEL) {} since the run",
                    if same.is_none() { "deleted" } else { "changed" }
                ),
                rows: 1,
                ids: vec![format!("{agent}/{MODEL_KEY}")],
                action: None,
            });
        }
    }

    Ok(found)
}

/// Live workspaces the rollback would put beside a live namesake under one parent, which the
/// platform's sibling-name rule forbids, as drift (each id listed as `ID "NAME" and OTHER`):
/// the re-parented roots go back to the top level, beside every live root that stays there (one
/// created since, or the agent, which leaves only after the roots are back) and beside each
/// other; with `--force` (`forced_to`: the oldest former root) children added under the agent
/// since the run move under that root, beside its own children. Two statements at most.
pub(super) async fn name_clashes(
    conn: &mut PgConnection,
    run_id: &str,
    agent: Uuid,
    forced_to: Option<Uuid>,
) -> Result<Vec<Drift>> {
    let (b, o) = (tree::name_counts_sql("w"), tree::name_counts_sql("o"));
    let restore = format!(
        "WITH back AS MATERIALIZED (
              SELECT w.id, w.name FROM orgctl.backfill_rows s JOIN workspaces w ON w.id = s.row_id
               WHERE s.run_id = $1 AND s.kind = 'root' AND {b}
         ),
         stay AS MATERIALIZED (
              SELECT o.id, o.name FROM workspaces o
               WHERE o.parent_id IS NULL AND {o}
                 AND NOT EXISTS (SELECT 1 FROM orgctl.backfill_rows s
                                  WHERE s.run_id = $1 AND s.kind = 'root' AND s.row_id = o.id)
         ),
         pairs AS (
              SELECT b.id, b.name, x.id AS other FROM back b JOIN stay x ON x.name = b.name
            UNION ALL
              SELECT b.id, b.name, x.id FROM back b JOIN back x ON x.name = b.name AND x.id > b.id
         )
         SELECT id, name, other, count(*) OVER () FROM pairs
          WHERE $2::uuid IS NOT NULL ORDER BY name, id, other LIMIT $3"
    );
    let mut found = Vec::new();
    let rows = db::query(&restore)
        .bind(run_id)
        .bind(agent)
        .bind(LIST)
        .fetch_all(&mut *conn)
        .await?;
    found.extend(clash_drift(
        &rows,
        format!(
            "(a re-parented root) would share its name with another live workspace at the top level once restored there ({})",
            tree::SIBLING_NAME_INDEX
        ),
    )?);
    if let Some(to) = forced_to {
        let moved = format!(
            "SELECT w.id, w.name, o.id, count(*) OVER ()
               FROM workspaces w JOIN workspaces o ON o.name = w.name AND o.parent_id = $3
              WHERE w.parent_id = $2 AND {b} AND {o}
                AND NOT EXISTS (SELECT 1 FROM orgctl.backfill_rows s WHERE s.run_id = $1 AND s.kind = 'root' AND s.row_id = w.id)
                AND NOT EXISTS (SELECT 1 FROM orgctl.backfill_rows k WHERE k.run_id = $1 AND k.kind = 'kept' AND k.tbl = 'workspaces' AND k.row_id = w.id)
              ORDER BY w.name, w.id, o.id LIMIT $4"
        );
        let rows = db::query(&moved)
            .bind(run_id)
            .bind(agent)
            .bind(to)
            .bind(LIST)
            .fetch_all(&mut *conn)
            .await?;
        found.extend(clash_drift(
            &rows,
            format!(
                "(a child added under the agent since the run) would share its name with a live child of the oldest former root {to} once moved there ({})",
                tree::SIBLING_NAME_INDEX
            ),
        )?);
    }
    Ok(found)
}

/// Rows of (id, name, other id, total) as one drift finding, or none.
fn clash_drift(rows: &[sqlx::postgres::PgRow], reason: String) -> Result<Option<Drift>> {
    let Some(first) = rows.first() else {
        return Ok(None);
    };
    let ids = rows
        .iter()
        .map(|r| {
            let (id, name, other): (Uuid, String, Uuid) =
                (r.try_get(0)?, r.try_get(1)?, r.try_get(2)?);
            Ok(format!(
                "{id} \"{}\" and {other}",
                crate::error::sanitize(&name)
            ))
        })
        .collect::<std::result::Result<Vec<_>, sqlx::Error>>()?;
    Ok(Some(Drift {
        table: "workspaces",
        reason,
        rows: first.try_get(3)?,
        ids,
        action: None,
    }))
}

/// Rows of other tables that reference the created agent, before the restore: every
/// referencing column the catalog has, apart from the rows the run wrote or moved (which the
/// restore puts back first) and the rows the drift check already names (children, tokens and
/// allowlist rows on the agent).
pub(super) async fn other_references(
    conn: &mut PgConnection,
    agent: Uuid,
    run: &RunRow,
) -> Result<Vec<Referencing>> {
    let model_seeded = run.model_action == "seeded";
    let plugin_created = run.plugin_action == "create";
    org::rows_referencing(conn, agent, |r| {
        match (r.table.as_str(), r.column.as_str()) {
            ("workspaces", "parent_id")
            | ("org_api_tokens", "org_id")
            | ("org_plugin_allowlist", "org_id") => Count::Skip,
            // The MODEL row the run seeded is deleted by the restore.
            ("workspace_secrets", "workspace_id") if model_seeded => {
                Count::Where("x.key <> 'MODEL'")
            }
            // The plugin row the run declared is deleted by the restore.
            ("workspace_declared_plugins", "workspace_id") if plugin_created => {
                Count::Where(crate::platform::agent::NOT_MCP_PLUGIN)
            }
            _ => Count::All,
        }
    })
    .await
}
