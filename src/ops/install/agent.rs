//! Which row is the platform agent, and what the install does to it: create it (with the id the
//! platform derives from the tenant's identity, or `--id`), update it (what the platform's own
//! re-install sets, and what orgctl sets on request), or leave it as it is.

use sqlx::postgres::{PgConnection, PgRow};
use sqlx::Row;
use uuid::Uuid;

use super::planned::{AgentAction, AgentPlan, AgentRow, FieldChange};
use super::InstallInput;
use crate::db;
use crate::error::{Error, Result};
use crate::platform::agent::{self as platform_agent, Identity};

/// The workspace row `--id` names.
pub(super) const AGENT_BY_ID: &str =
    "SELECT id, name, parent_id, tier, status::text, template FROM workspaces WHERE id = $1";

/// The kind of the row `--id` names (an older row may have none: an ordinary workspace).
pub(super) const KIND_BY_ID: &str =
    "SELECT COALESCE(kind, 'workspace') FROM workspaces WHERE id = $1";

/// A workspace row read as its first six columns: id, name, parent_id, tier (not kept), status,
/// template.
pub(super) fn agent_row(r: &PgRow) -> std::result::Result<AgentRow, sqlx::Error> {
    Ok(AgentRow {
        id: r.try_get(0)?,
        name: r.try_get(1)?,
        parent_id: r.try_get(2)?,
        status: r.try_get(4)?,
        template: r.try_get(5)?,
    })
}

/// The agent's plan from the platform agents there are (`platforms`, at most one) and the input.
pub(super) async fn resolve_agent(
    conn: &mut PgConnection,
    input: &InstallInput,
    platforms: Vec<AgentRow>,
) -> Result<AgentPlan> {
    if platforms.len() > 1 {
        let ids: Vec<String> = platforms.iter().map(|p| p.id.to_string()).collect();
        return Err(Error::refused(format!(
            "{} workspaces have kind='platform' ({}); an org has one platform agent: set kind='workspace' on all but one, then rerun",
            platforms.len(),
            ids.join(", ")
        )));
    }
    let existing = platforms.into_iter().next();
    let identity = input.identity();
    let (row, id, generated) = match input.id {
        Some(id) => named_by_id(conn, id, existing).await?,
        // The existing agent is adopted whatever its id, as the platform adopts it.
        None => match existing {
            Some(row) => {
                let id = row.id;
                (Some(row), id, false)
            }
            None => match identity.agent_id() {
                Some(id) => (None, id, true),
                None => {
                    return Err(Error::usage(
                        "the tenant has no platform agent yet, and its id is the platform's own: pass --org-id ID (or set MOLECULE_ORG_ID) with the org id the control plane knows this tenant by, or --self-hosted for a self-hosted tenant",
                    ))
                }
            },
        },
    };
    match row {
        None => Ok(new_agent(input, &identity, id, generated)),
        Some(row) => existing_agent(input, id, row),
    }
}

/// The agent `--id` names: its row (None: a new agent with that id), its id, and whether the id
/// is generated (never, here). Refused when it names an ordinary workspace, or another agent
/// than the existing one.
async fn named_by_id(
    conn: &mut PgConnection,
    id: Uuid,
    existing: Option<AgentRow>,
) -> Result<(Option<AgentRow>, Uuid, bool)> {
    let named = db::query(AGENT_BY_ID)
        .bind(id)
        .fetch_optional(&mut *conn)
        .await?
        .as_ref()
        .map(agent_row)
        .transpose()?;
    let named_kind: Option<String> = if named.is_some() {
        db::query_scalar(KIND_BY_ID)
            .bind(id)
            .fetch_optional(&mut *conn)
            .await?
    } else {
        None
    };
    match (named, existing) {
        (Some(row), _) if named_kind.as_deref() != Some("platform") => {
            Err(Error::refused(format!(
                "--id {id} names an ordinary workspace ('{}', kind {}), not the platform agent; omit --id or pass the agent's id",
                row.name,
                named_kind.unwrap_or_else(|| "workspace".into())
            )))
        }
        (Some(row), _) => Ok((Some(row), id, false)),
        (None, Some(other)) => Err(Error::refused(format!(
            "--id {id} names a different agent than the existing platform agent {}; omit --id or pass {}",
            other.id, other.id
        ))),
        (None, None) => Ok((None, id, false)),
    }
}

/// A new agent: the row the platform inserts.
fn new_agent(input: &InstallInput, identity: &Identity, id: Uuid, generated: bool) -> AgentPlan {
    AgentPlan {
        id,
        name: input
            .name
            .clone()
            .unwrap_or_else(|| platform_agent::default_name(input.org_name.as_deref())),
        action: AgentAction::Create,
        changes: Vec::new(),
        generated_id: generated,
        id_source: if generated {
            identity.describe()
        } else {
            "--id".to_string()
        },
        runtime: input.runtime.clone(),
        revive: false,
        prior: None,
    }
}

/// An existing agent: what the platform's own re-install sets (kind, parent, template), what
/// orgctl sets on request (`--name`, `--revive`), and nothing else: status, runtime, tier,
/// broadcast and the name are the platform's once the agent exists. A removed agent is refused
/// without `--revive`.
fn existing_agent(input: &InstallInput, id: Uuid, row: AgentRow) -> Result<AgentPlan> {
    let removed = row.status.as_deref() == Some(platform_agent::REMOVED_STATUS);
    if removed && !input.revive {
        return Err(Error::refused(format!(
            "the platform agent {} ('{}') is removed (a deleted agent, which the platform leaves alone); nothing was changed: pass --revive to bring it back (status offline, at the root), or leave it deleted",
            row.id,
            crate::error::sanitize(&row.name)
        )));
    }
    let mut changes = Vec::new();
    if let Some(p) = row.parent_id {
        changes.push(FieldChange {
            field: "parent_id",
            old: p.to_string(),
            new: "null".into(),
        });
    }
    if row.template.as_deref() != Some(platform_agent::TEMPLATE) {
        changes.push(FieldChange {
            field: "template",
            old: row.template.clone().unwrap_or_else(|| "null".into()),
            new: platform_agent::TEMPLATE.into(),
        });
    }
    if removed {
        changes.push(FieldChange {
            field: "status",
            old: platform_agent::REMOVED_STATUS.into(),
            new: platform_agent::INITIAL_STATUS.into(),
        });
    }
    let mut name = row.name.clone();
    if let Some(n) = &input.name {
        if *n != row.name {
            changes.push(FieldChange {
                field: "name",
                old: row.name.clone(),
                new: n.clone(),
            });
            name = n.clone();
        }
    }
    Ok(AgentPlan {
        id,
        name,
        action: if changes.is_empty() {
            AgentAction::Unchanged
        } else {
            AgentAction::Update
        },
        changes,
        generated_id: false,
        id_source: String::new(),
        runtime: input.runtime.clone(),
        revive: removed,
        prior: Some(row),
    })
}
