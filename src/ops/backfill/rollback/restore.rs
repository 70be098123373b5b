//! The restore of a rollback: one statement per kind of row the run snapshotted. Without
//! `--force` every statement must touch exactly the snapshot's rows (there is no drift, so
//! anything else is a bug or a race); with `--force` each restores what it still can, and rows
//! added off the agent since the run go to the oldest live former root.

use sqlx::postgres::PgConnection;
use sqlx::Row;
use uuid::Uuid;

use super::{Job, Referenced, RunRow};
use crate::db;
use crate::error::{Error, Result};
use crate::ops::org::{self, Count};
use crate::platform::MODEL_KEY;

/// The static statements of the restore.
pub(crate) const STATEMENTS: &[(&str, &str)] = &[
    ("snapshot counts", COUNTS_SQL),
    ("forced: move new children", MOVE_NEW_CHILDREN),
    ("forced: move new tokens", MOVE_NEW_TOKENS),
    ("restore roots", RESTORE_ROOTS),
    ("forced: restore roots", RESTORE_ROOTS_FORCED),
    ("restore tokens", RESTORE_TOKENS),
    ("forced: restore tokens", RESTORE_TOKENS_FORCED),
    (
        "forced: drop colliding allowlist rows",
        DROP_COLLIDING_ALLOWLIST,
    ),
    ("restore allowlist", RESTORE_ALLOWLIST),
    ("forced: restore allowlist", RESTORE_ALLOWLIST_FORCED),
    ("restore merged", RESTORE_MERGED),
    ("forced: restore merged", RESTORE_MERGED_FORCED),
    ("forced: merge new allowlist rows", MERGE_NEW_ALLOWLIST),
    ("forced: move new allowlist rows", MOVE_NEW_ALLOWLIST),
    ("delete MODEL", DELETE_MODEL),
    ("forced: delete MODEL", DELETE_MODEL_FORCED),
    ("reinsert prior MODEL", REINSERT_MODEL),
    ("delete declared plugin", DELETE_PLUGIN),
    ("reinsert prior declared plugin", REINSERT_PLUGIN),
    ("delete agent", DELETE_AGENT),
    ("restore agent", RESTORE_AGENT),
    ("forget former roots", FORGET_FORMER_ROOTS),
];

/// The snapshot's rows per kind: binds $1 run id.
const COUNTS_SQL: &str = "SELECT count(*) FILTER (WHERE kind = 'root'),
                count(*) FILTER (WHERE kind = 'anchor' AND tbl = 'org_api_tokens'),
                count(*) FILTER (WHERE kind = 'anchor' AND tbl = 'org_plugin_allowlist'),
                count(*) FILTER (WHERE kind = 'merged')
           FROM orgctl.backfill_rows WHERE run_id = $1";

/// --force: children added under the agent ($2) since run $1 go to the oldest former root ($3).
const MOVE_NEW_CHILDREN: &str = "UPDATE workspaces x SET parent_id = $3, updated_at = now()
              WHERE x.parent_id = $2
                AND NOT EXISTS (SELECT 1 FROM orgctl.backfill_rows s WHERE s.run_id = $1 AND s.kind = 'root' AND s.row_id = x.id)
                AND NOT EXISTS (SELECT 1 FROM orgctl.backfill_rows k WHERE k.run_id = $1 AND k.kind = 'kept' AND k.tbl = 'workspaces' AND k.row_id = x.id)";

/// --force: tokens added on the agent ($2) since run $1 go to the oldest former root ($3).
const MOVE_NEW_TOKENS: &str = "UPDATE org_api_tokens x SET org_id = $3
              WHERE x.org_id = $2
                AND NOT EXISTS (SELECT 1 FROM orgctl.backfill_rows s WHERE s.run_id = $1 AND s.kind = 'anchor' AND s.tbl = 'org_api_tokens' AND s.row_id = x.id)
                AND NOT EXISTS (SELECT 1 FROM orgctl.backfill_rows k WHERE k.run_id = $1 AND k.kind = 'kept' AND k.tbl = 'org_api_tokens' AND k.row_id = x.id)";

/// Roots: parent and updated_at as they were, where each still is as the run left it (binds $1
/// run id, $2 agent, $3 the run's transaction time).
const RESTORE_ROOTS: &str =
    "UPDATE workspaces w SET parent_id = s.old_parent_id, updated_at = s.old_updated_at
           FROM orgctl.backfill_rows s
          WHERE s.run_id = $1 AND s.kind = 'root' AND w.id = s.row_id AND w.parent_id = $2 AND w.updated_at = $3";

/// --force: roots as they were, wherever they are (binds $1 run id).
const RESTORE_ROOTS_FORCED: &str =
    "UPDATE workspaces w SET parent_id = s.old_parent_id, updated_at = s.old_updated_at
           FROM orgctl.backfill_rows s
          WHERE s.run_id = $1 AND s.kind = 'root' AND w.id = s.row_id";

/// Moved tokens back to their old root, those still on the agent (binds $1 run id, $2 agent).
const RESTORE_TOKENS: &str = "UPDATE org_api_tokens x SET org_id = s.old_org_id
           FROM orgctl.backfill_rows s
          WHERE s.run_id = $1 AND s.kind = 'anchor' AND s.tbl = 'org_api_tokens' AND x.id = s.row_id AND x.org_id = $2";

/// --force: moved tokens back to their old root wherever they are, if that root exists.
const RESTORE_TOKENS_FORCED: &str = "UPDATE org_api_tokens x SET org_id = s.old_org_id
           FROM orgctl.backfill_rows s
          WHERE s.run_id = $1 AND s.kind = 'anchor' AND s.tbl = 'org_api_tokens' AND x.id = s.row_id AND EXISTS (SELECT 1 FROM workspaces w WHERE w.id = s.old_org_id)";

/// --force: a moved allowlist row whose root has the plugin again: the root's row stands.
const DROP_COLLIDING_ALLOWLIST: &str = "DELETE FROM org_plugin_allowlist x USING orgctl.backfill_rows s
              WHERE s.run_id = $1 AND s.kind = 'anchor' AND s.tbl = 'org_plugin_allowlist' AND x.id = s.row_id
                AND EXISTS (SELECT 1 FROM org_plugin_allowlist b
                             WHERE b.org_id = s.old_org_id AND b.plugin_name = x.plugin_name
                               AND b.id <> x.id)";

/// Moved allowlist rows back to their old root, those still on the agent (binds $1 run id, $2
/// agent).
const RESTORE_ALLOWLIST: &str = "UPDATE org_plugin_allowlist x SET org_id = s.old_org_id
           FROM orgctl.backfill_rows s
          WHERE s.run_id = $1 AND s.kind = 'anchor' AND s.tbl = 'org_plugin_allowlist' AND x.id = s.row_id AND x.org_id = $2";

/// --force: moved allowlist rows back to their old root wherever they are, if it exists.
const RESTORE_ALLOWLIST_FORCED: &str = "UPDATE org_plugin_allowlist x SET org_id = s.old_org_id
           FROM orgctl.backfill_rows s
          WHERE s.run_id = $1 AND s.kind = 'anchor' AND s.tbl = 'org_plugin_allowlist' AND x.id = s.row_id AND EXISTS (SELECT 1 FROM workspaces w WHERE w.id = s.old_org_id)";

/// Merged rows: re-inserted whole (ids, enabled_by, enabled_at); binds $1 run id.
const RESTORE_MERGED: &str = "INSERT INTO org_plugin_allowlist
         SELECT (jsonb_populate_record(NULL::org_plugin_allowlist, m.row)).*
           FROM orgctl.backfill_rows m WHERE m.run_id = $1 AND m.kind = 'merged'";

/// --force: merged rows re-inserted where their root exists and nothing is in the way.
const RESTORE_MERGED_FORCED: &str = "INSERT INTO org_plugin_allowlist
         SELECT (jsonb_populate_record(NULL::org_plugin_allowlist, m.row)).*
           FROM orgctl.backfill_rows m WHERE m.run_id = $1 AND m.kind = 'merged' AND EXISTS (SELECT 1 FROM workspaces w WHERE w.id = (m.row->>'org_id')::uuid)
          ON CONFLICT DO NOTHING";

/// --force: new allowlist rows on the agent ($2) whose plugin the oldest former root ($3) has:
/// merged into the root's row.
const MERGE_NEW_ALLOWLIST: &str = "DELETE FROM org_plugin_allowlist x WHERE x.org_id = $2
                AND NOT EXISTS (SELECT 1 FROM orgctl.backfill_rows s WHERE s.run_id = $1 AND s.kind = 'anchor' AND s.tbl = 'org_plugin_allowlist' AND s.row_id = x.id)
                AND NOT EXISTS (SELECT 1 FROM orgctl.backfill_rows k WHERE k.run_id = $1 AND k.kind = 'kept' AND k.tbl = 'org_plugin_allowlist' AND k.row_id = x.id)
                AND EXISTS (SELECT 1 FROM org_plugin_allowlist b WHERE b.org_id = $3 AND b.plugin_name = x.plugin_name)";

/// --force: the other new allowlist rows on the agent ($2) go to the oldest former root ($3).
const MOVE_NEW_ALLOWLIST: &str = "UPDATE org_plugin_allowlist x SET org_id = $3 WHERE x.org_id = $2
                AND NOT EXISTS (SELECT 1 FROM orgctl.backfill_rows s WHERE s.run_id = $1 AND s.kind = 'anchor' AND s.tbl = 'org_plugin_allowlist' AND s.row_id = x.id)
                AND NOT EXISTS (SELECT 1 FROM orgctl.backfill_rows k WHERE k.run_id = $1 AND k.kind = 'kept' AND k.tbl = 'org_plugin_allowlist' AND k.row_id = x.id)";

/// The MODEL secret the run wrote, as the run wrote it (binds $1 agent, $2 key, $3 the run's
/// transaction time).
const DELETE_MODEL: &str =
    "DELETE FROM workspace_secrets WHERE workspace_id = $1 AND key = $2 AND updated_at = $3";

/// --force: the MODEL secret, whatever it is now.
const DELETE_MODEL_FORCED: &str =
    "DELETE FROM workspace_secrets WHERE workspace_id = $1 AND key = $2";

/// The MODEL secret the run replaced, whole, from the run row (binds $1 run id).
const REINSERT_MODEL: &str = "INSERT INTO workspace_secrets
         SELECT (jsonb_populate_record(NULL::workspace_secrets, b.model_prior)).*
           FROM orgctl.backfill_runs b WHERE b.run_id = $1 AND b.model_prior IS NOT NULL";

/// The declared plugin row the run wrote (binds $1 agent, $2 the plugin's name).
const DELETE_PLUGIN: &str =
    "DELETE FROM workspace_declared_plugins WHERE workspace_id = $1 AND plugin_name = $2";

/// The declared plugin row the run replaced, whole, from the run row (binds $1 run id).
const REINSERT_PLUGIN: &str = "INSERT INTO workspace_declared_plugins
         SELECT (jsonb_populate_record(NULL::workspace_declared_plugins, b.plugin_prior)).*
           FROM orgctl.backfill_runs b WHERE b.run_id = $1 AND b.plugin_prior IS NOT NULL";

/// The agent the run created (binds $1 agent).
const DELETE_AGENT: &str = "DELETE FROM workspaces WHERE id = $1";

/// The agent's prior fields; the status only when the run revived a removed agent (binds $1
/// run id, $2 agent).
const RESTORE_AGENT: &str = "UPDATE workspaces w
                    SET name = p.name, kind = p.kind, parent_id = p.parent_id, tier = p.tier,
                        template = p.template,
                        status = CASE WHEN p.status::text = 'removed' THEN p.status ELSE w.status END,
                        updated_at = p.updated_at
                   FROM orgctl.backfill_runs b
                  CROSS JOIN LATERAL jsonb_populate_record(NULL::workspaces, b.agent_prior) p
                  WHERE b.run_id = $1 AND w.id = $2";

/// The roots are roots again: install must not sweep their anchors to the agent (binds $1 run
/// id).
const FORGET_FORMER_ROOTS: &str = "DELETE FROM orgctl.former_roots f USING orgctl.backfill_rows s
          WHERE s.run_id = $1 AND s.kind = 'root' AND f.workspace_id = s.row_id";

/// The snapshot's rows per kind.
pub(super) struct Counts {
    pub roots: i64,
    pub tokens: i64,
    pub allowlist: i64,
    pub merged: i64,
}

pub(super) async fn snapshot_counts(conn: &mut PgConnection, run_id: &str) -> Result<Counts> {
    let r = db::query(COUNTS_SQL)
        .bind(run_id)
        .fetch_one(&mut *conn)
        .await?;
    Ok(Counts {
        roots: r.try_get(0)?,
        tokens: r.try_get(1)?,
        allowlist: r.try_get(2)?,
        merged: r.try_get(3)?,
    })
}

/// Restore the snapshot: one statement per kind of row. Returns what happened to a created
/// agent (`deleted` or `soft_deleted`).
pub(super) async fn restore(
    conn: &mut PgConnection,
    job: &Job,
    agent: Uuid,
    run: &RunRow,
    counts: &Counts,
    oldest: Option<Uuid>,
) -> Result<Option<&'static str>> {
    let id = &job.run_id;
    let force = job.force;
    // --force: rows added off the agent since the run go to the oldest live former root.
    if let (true, Some(to)) = (force, oldest) {
        for sql in [MOVE_NEW_CHILDREN, MOVE_NEW_TOKENS] {
            db::query(sql)
                .bind(id)
                .bind(agent)
                .bind(to)
                .execute(&mut *conn)
                .await?;
        }
    }
    restore_roots(conn, job, agent, run, counts).await?;
    restore_anchors(conn, job, agent, counts).await?;
    // Merged rows: re-inserted whole (ids, enabled_by, enabled_at).
    let sql = if force {
        RESTORE_MERGED_FORCED
    } else {
        RESTORE_MERGED
    };
    let r = db::query(sql).bind(id).execute(&mut *conn).await?;
    check(
        "the merged allowlist rows",
        r.rows_affected(),
        counts.merged,
        force,
    )?;
    if let (true, Some(to)) = (force, oldest) {
        // New allowlist rows on the agent: merged into the root's row of the same plugin, else
        // moved to the oldest former root.
        for sql in [MERGE_NEW_ALLOWLIST, MOVE_NEW_ALLOWLIST] {
            db::query(sql)
                .bind(id)
                .bind(agent)
                .bind(to)
                .execute(&mut *conn)
                .await?;
        }
    }
    restore_model_and_plugin(conn, job, agent, run).await?;
    let outcome = restore_agent(conn, job, agent, run).await?;
    db::query(FORGET_FORMER_ROOTS)
        .bind(id)
        .execute(&mut *conn)
        .await?;
    Ok(outcome)
}

/// Roots: parent and updated_at as they were.
async fn restore_roots(
    conn: &mut PgConnection,
    job: &Job,
    agent: Uuid,
    run: &RunRow,
    counts: &Counts,
) -> Result<()> {
    let r = if job.force {
        db::query(RESTORE_ROOTS_FORCED).bind(&job.run_id)
    } else {
        db::query(RESTORE_ROOTS)
            .bind(&job.run_id)
            .bind(agent)
            .bind(run.at)
    }
    .execute(&mut *conn)
    .await?;
    check(
        "the re-parented roots",
        r.rows_affected(),
        counts.roots,
        job.force,
    )
}

/// Anchors (tokens, allowlist rows): back to their old root (with --force, wherever they are,
/// if that root exists).
async fn restore_anchors(
    conn: &mut PgConnection,
    job: &Job,
    agent: Uuid,
    counts: &Counts,
) -> Result<()> {
    let (id, force) = (&job.run_id, job.force);
    let r = if force {
        db::query(RESTORE_TOKENS_FORCED).bind(id)
    } else {
        db::query(RESTORE_TOKENS).bind(id).bind(agent)
    }
    .execute(&mut *conn)
    .await?;
    check("the moved tokens", r.rows_affected(), counts.tokens, force)?;
    if force {
        db::query(DROP_COLLIDING_ALLOWLIST)
            .bind(id)
            .execute(&mut *conn)
            .await?;
    }
    let r = if force {
        db::query(RESTORE_ALLOWLIST_FORCED).bind(id)
    } else {
        db::query(RESTORE_ALLOWLIST).bind(id).bind(agent)
    }
    .execute(&mut *conn)
    .await?;
    check(
        "the moved allowlist rows",
        r.rows_affected(),
        counts.allowlist,
        force,
    )
}

/// MODEL: deleted if the run seeded it, else the prior row whole; the declared plugin: deleted
/// if the run declared it, else its prior row whole.
async fn restore_model_and_plugin(
    conn: &mut PgConnection,
    job: &Job,
    agent: Uuid,
    run: &RunRow,
) -> Result<()> {
    let (id, force) = (&job.run_id, job.force);
    if matches!(run.model_action.as_str(), "seeded" | "replaced") {
        let r = if force {
            db::query(DELETE_MODEL_FORCED).bind(agent).bind(MODEL_KEY)
        } else {
            db::query(DELETE_MODEL)
                .bind(agent)
                .bind(MODEL_KEY)
                .bind(run.at)
        }
        .execute(&mut *conn)
        .await?;
        check("the MODEL secret", r.rows_affected(), 1, force)?;
        if run.model_action == "replaced" {
            let r = db::query(REINSERT_MODEL)
                .bind(id)
                .execute(&mut *conn)
                .await?;
            check("the prior MODEL secret", r.rows_affected(), 1, force)?;
        }
    }
    if matches!(run.plugin_action.as_str(), "create" | "update") {
        db::query(DELETE_PLUGIN)
            .bind(agent)
            .bind(crate::platform::agent::MCP_PLUGIN)
            .execute(&mut *conn)
            .await?;
        if run.plugin_action == "update" {
            let r = db::query(REINSERT_PLUGIN)
                .bind(id)
                .execute(&mut *conn)
                .await?;
            check("the prior declared plugin", r.rows_affected(), 1, force)?;
        }
    }
    Ok(())
}

/// The agent: deleted if the run created it (soft-deleted with --force when the platform's
/// rows reference it), else its prior fields. Returns what happened to a created agent.
async fn restore_agent(
    conn: &mut PgConnection,
    job: &Job,
    agent: Uuid,
    run: &RunRow,
) -> Result<Option<&'static str>> {
    match run.agent_action.as_str() {
        "create" => {
            // Everything the run wrote or moved is restored by now, so any row of any table
            // that still references the agent (the catalog's foreign keys, now) is the
            // platform's: never delete, cascade or orphan it.
            let refs = org::rows_referencing(conn, agent, |_| Count::All).await?;
            if refs.is_empty() {
                let r = db::query(DELETE_AGENT)
                    .bind(agent)
                    .execute(&mut *conn)
                    .await?;
                check("the platform agent", r.rows_affected(), 1, job.force)?;
                Ok(Some("deleted"))
            } else if job.force {
                soft_delete_agent(conn, agent).await?;
                Ok(Some("soft_deleted"))
            } else {
                let list: Vec<Referenced> = refs.iter().map(Referenced::from).collect();
                Err(Error::failed(format!(
                    "rows of other tables reference the platform agent {agent} after the restore: {}; rolled back, nothing was changed; rerun (the dry run names them)",
                    Referenced::line(&list)
                )))
            }
        }
        "update" => {
            let r = db::query(RESTORE_AGENT)
                .bind(&job.run_id)
                .bind(agent)
                .execute(&mut *conn)
                .await?;
            check("the platform agent", r.rows_affected(), 1, job.force)?;
            Ok(None)
        }
        _ => Ok(None),
    }
}

/// Delete the agent the way the platform deletes its agent: `status = 'removed'`, `kind` left
/// `'platform'`. The tombstone is still the org's platform row, so the platform's boot and its
/// ensure find it and leave it alone instead of creating a new agent and re-merging every root
/// (the row is at the top level, and it is the only platform row: the platform's checks hold).
/// The literal takes the column's type, so it works for the enum and for older tenants' TEXT
/// `status`.
async fn soft_delete_agent(conn: &mut PgConnection, agent: Uuid) -> Result<()> {
    let sql = format!(
        "UPDATE workspaces SET status = '{}', updated_at = now()
          WHERE id = $1 AND kind = 'platform' AND parent_id IS NULL",
        crate::platform::tree::TOMBSTONE_STATUS
    );
    let r = db::query(&sql).bind(agent).execute(&mut *conn).await?;
    db::ensure_rows("soft-deleting the platform agent", r.rows_affected(), 1)
}

/// Without --force a restore statement touches exactly the snapshot's rows of its kind.
fn check(what: &str, got: u64, want: i64, force: bool) -> Result<()> {
    if force || got as i64 == want {
        Ok(())
    } else {
        Err(Error::failed(format!(
            "restoring {what} touched {got} row(s) where the snapshot has {want}; rolled back, nothing was changed; rerun"
        )))
    }
}
