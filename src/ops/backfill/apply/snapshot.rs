//! The snapshot a run takes of every row it changes, in the change's first statement.

use uuid::Uuid;

use crate::db::Arg;
use crate::error::{Error, Result};
use crate::ops::backfill::digest;
use crate::ops::backfill::records::{run_row_args, RUN_ROW_SQL};
use crate::ops::install::{self, AgentAction, Plan};

/// The snapshot of every row `plan` changes, as the first changes of the change's first
/// statement ([`install::execute`]): data-modifying CTEs read the rows as they were before the
/// statement, so the snapshot is of the rows before the change, and a fresh tenant pays no
/// round trip for it. The run row ([`RUN_ROW_SQL`], so its values are $1–$16) holds the agent's
/// prior row (NULL when the run creates it), the prior MODEL secret row (NULL when none) and
/// the prior declared plugin row (NULL when none);
/// one CTE per kind of row the plan has, each checked against the plan's count.
pub(super) fn snapshot<'a>(
    run_id: &'a str,
    tenant: &'a str,
    plan: &Plan,
) -> Result<(install::Changes<'a>, Vec<String>)> {
    let ids: Vec<Uuid> = plan.reparented.iter().map(|r| r.id).collect();
    let merged: Vec<Uuid> = plan
        .merged
        .iter()
        .map(|m| {
            m.id.parse::<Uuid>().map_err(|_| {
                Error::failed(format!(
                    "allowlist row id '{}' is not a UUID; cannot snapshot it",
                    m.id
                ))
            })
        })
        .collect::<Result<_>>()?;
    let mut c = install::Changes::default();
    for a in run_row_args(run_id, tenant, "applied", plan) {
        c.arg(a);
    }
    if c.bound() != 16 {
        return Err(Error::failed("internal: the run row binds 16 values"));
    }
    // Every snapshot write returns its lines, for the digest the audit row records.
    let mut parts = vec![c.add_returning(
        "the run-state row",
        RUN_ROW_SQL.to_string(),
        Some(1),
        &digest::returning_run(),
    )];
    let row_lines = digest::returning_row();
    let run = "$1";
    if !ids.is_empty() {
        let n = ids.len() as i64;
        let ids = c.arg(Arg::UuidList(ids));
        parts.push(c.add_returning(
            "the roots snapshot",
            format!(
                "INSERT INTO orgctl.backfill_rows (run_id, kind, tbl, row_id, old_parent_id, old_updated_at)
                 SELECT {run}, 'root', 'workspaces', id, parent_id, updated_at FROM workspaces WHERE id = ANY({ids})"
            ),
            Some(n),
            &row_lines,
        ));
    }
    let old = c.arg(Arg::UuidList(plan.old_roots()));
    if plan.tokens_moved() > 0 {
        parts.push(c.add_returning(
            "the tokens snapshot",
            format!(
                "INSERT INTO orgctl.backfill_rows (run_id, kind, tbl, row_id, old_org_id)
                 SELECT {run}, 'anchor', 'org_api_tokens', id, org_id FROM org_api_tokens WHERE org_id = ANY({old})"
            ),
            Some(plan.tokens_moved()),
            &row_lines,
        ));
    }
    let n_merged = merged.len() as i64;
    let merged = c.arg(Arg::UuidList(merged));
    if n_merged > 0 {
        parts.push(c.add_returning(
            "the merged allowlist snapshot",
            format!(
                "INSERT INTO orgctl.backfill_rows (run_id, kind, tbl, row_id, row)
                 SELECT {run}, 'merged', 'org_plugin_allowlist', a.id, to_jsonb(a)
                   FROM org_plugin_allowlist a WHERE a.id = ANY({merged})"
            ),
            Some(n_merged),
            &row_lines,
        ));
    }
    if plan.allowlist_moved() > 0 {
        parts.push(c.add_returning(
            "the allowlist snapshot",
            format!(
                "INSERT INTO orgctl.backfill_rows (run_id, kind, tbl, row_id, old_org_id)
                 SELECT {run}, 'anchor', 'org_plugin_allowlist', id, org_id FROM org_plugin_allowlist
                  WHERE org_id = ANY({old}) AND NOT (id = ANY({merged}))"
            ),
            Some(plan.allowlist_moved()),
            &row_lines,
        ));
    }
    // Rows that already hung off an existing agent stay there on rollback; only rows added
    // after the run count as new.
    if plan.agent.action != AgentAction::Create {
        let agent = c.arg(Arg::Uuid(plan.agent.id));
        parts.push(c.add_returning(
            "the kept rows snapshot",
            format!(
                "INSERT INTO orgctl.backfill_rows (run_id, kind, tbl, row_id)
                 SELECT {run}, 'kept', 'workspaces', id FROM workspaces WHERE parent_id = {agent}
                 UNION ALL
                 SELECT {run}, 'kept', 'org_api_tokens', id FROM org_api_tokens WHERE org_id = {agent}
                 UNION ALL
                 SELECT {run}, 'kept', 'org_plugin_allowlist', id FROM org_plugin_allowlist WHERE org_id = {agent}"
            ),
            None,
            &row_lines,
        ));
    }
    Ok((c, parts))
}
