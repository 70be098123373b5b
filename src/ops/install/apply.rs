//! Executing a plan exactly, in the caller's transaction: every kind of change one
//! data-modifying CTE, each checked against the row count the plan predicted; then the
//! invariants checked before the commit ([`verification`]), and what the audit row records.

use sqlx::postgres::{PgConnection, PgRow};
use sqlx::Row;
use uuid::Uuid;
use zeroize::Zeroizing;

use super::plan::scope_cte;
use super::planned::{AgentAction, AgentPlan, Plan, PluginAction};
use super::InstallInput;
use crate::db::{self, Arg};
use crate::error::{Error, Result};
use crate::platform::agent as platform_agent;
use crate::platform::keys::SecretBox;
use crate::platform::MODEL_KEY;

/// Execute exactly `plan` in the caller's transaction, checking every change's row count. The
/// caller verifies the result with [`verification`] in its audit statement, then commits.
/// `first`: the caller's own changes and reads to send ahead of the plan's, in its first
/// statement (the backfill's snapshot, which so reads every row before the change, and the
/// audit chain's head), or `Changes::default()`; returns that statement's row when it had reads.
///
/// Every kind of change is one data-modifying CTE, and the kinds go to the server in as few
pub async fn execute(
    conn: &mut PgConnection,
    plan: &Plan,
    input: &InstallInput,
    sb: &SecretBox,
    first: Changes<'_>,
) -> Result<Option<PgRow>> {
    let agent = &plan.agent;
    let old = plan.old_roots();
    let reparented: Vec<Uuid> = plan.reparented.iter().map(|r| r.id).collect();
    let sealed = seal_model(conn, plan, input, sb).await?;

    let mut first = first;
    if agent.action != AgentAction::Unchanged {
        upsert_agent(&mut first, agent, input);
    }
    if plan.plugin != PluginAction::Unchanged {
        declare_plugin(&mut first, agent.id);
    }
    if let Some((sealed, version)) = &sealed {
        upsert_model(&mut first, agent.id, sealed, *version);
    }
    if !plan.merged.is_empty() {
        let (o, a) = (first.arg(Arg::Uuids(&old)), first.arg(Arg::Uuid(agent.id)));
        first.scope = Some(scope_cte(&o, &a));
        first.add(
            "merging allowlist rows",
            "DELETE FROM org_plugin_allowlist a USING scope s WHERE a.id = s.id AND s.rn > 1"
                .to_string(),
            Some(plan.merged.len() as i64),
        );
    }
    let mut second = Changes::default();
    let moves = if plan.merged.is_empty() {
        &mut first
    } else {
        &mut second
    };
    move_anchors(moves, plan, &old, &reparented);
    let read = first.run(conn).await?;
    second.run(conn).await?;
    Ok(read)
}

/// The MODEL value sealed for the database, when orgctl writes it: checked first against the
/// tenant's other encrypted values.
async fn seal_model(
    conn: &mut PgConnection,
    plan: &Plan,
    input: &InstallInput,
    sb: &SecretBox,
) -> Result<Option<(Zeroizing<Vec<u8>>, i32)>> {
    if !plan.writes_model() {
        return Ok(None);
    }
    if sb.key_set() {
        // Every write of a secret value passes the guard `secret set` passes: the key must open
        // the tenant's other encrypted values, or the platform could not read this one either
        // (the old key after a rotation is the common case). Under the tenant lock, so a write
        // that waited for a rekey sees the re-encrypted values.
        crate::ops::rekey::ensure_key_matches_tenant(conn, sb, Some(plan.agent.id), MODEL_KEY)
            .await?;
    }
    let value = input
        .model
        .as_ref()
        .ok_or_else(|| Error::failed("internal: MODEL planned without a value"))?;
    let (sealed, version) = sb.seal(value.as_bytes())?;
    Ok(Some((Zeroizing::new(sealed), version)))
}

/// The row the platform inserts; on conflict what its re-install sets (kind, parent,
/// template), plus the name on --name and the status on --revive. Status, runtime, tier and
/// broadcast of an existing agent are left as they are.
fn upsert_agent<'a>(c: &mut Changes<'a>, agent: &'a AgentPlan, input: &InstallInput) {
    let (id, name, runtime, template) = (
        c.arg(Arg::Uuid(agent.id)),
        c.arg(Arg::Text(&agent.name)),
        c.arg(Arg::Text(&agent.runtime)),
        c.arg(Arg::Text(platform_agent::TEMPLATE)),
    );
    // A literal (orgctl's own constant), so it takes the column's type: the enum, or TEXT on
    // older tenants.
    let status = format!("'{}'", platform_agent::INITIAL_STATUS);
    let mut set = vec![
        "kind = 'platform'".to_string(),
        "parent_id = NULL".to_string(),
        "template = EXCLUDED.template".to_string(),
    ];
    if input.name.is_some() {
        set.push("name = EXCLUDED.name".to_string());
    }
    if agent.revive {
        set.push("status = EXCLUDED.status".to_string());
    }
    set.push("updated_at = now()".to_string());
    c.add(
        "the agent upsert",
        format!(
            "INSERT INTO workspaces (id, name, kind, parent_id, tier, status, runtime, template,
                                     broadcast_enabled)
             VALUES ({id}, {name}, 'platform', NULL, 0, {status}, {runtime}, {template}, TRUE)
             ON CONFLICT (id) DO UPDATE SET {}",
            set.join(", ")
        ),
        Some(1),
    );
}

/// The platform MCP plugin declared on the agent, with the platform's source.
fn declare_plugin(c: &mut Changes<'_>, agent: Uuid) {
    let (id, plugin, source) = (
        c.arg(Arg::Uuid(agent)),
        c.arg(Arg::Text(platform_agent::MCP_PLUGIN)),
        c.arg(Arg::Text(platform_agent::MCP_PLUGIN_SOURCE)),
    );
    c.add(
        "the declared plugin upsert",
        format!(
            "INSERT INTO workspace_declared_plugins (workspace_id, plugin_name, source_raw)
             VALUES ({id}, {plugin}, {source})
             ON CONFLICT (workspace_id, plugin_name) DO UPDATE
                SET source_raw = EXCLUDED.source_raw, updated_at = now()"
        ),
        Some(1),
    );
}

/// The MODEL secret on the agent, sealed.
fn upsert_model<'a>(c: &mut Changes<'a>, agent: Uuid, sealed: &'a [u8], version: i32) {
    let id = c.arg(Arg::Uuid(agent));
    let key = c.arg(Arg::Text(MODEL_KEY));
    let value = c.arg(Arg::Bytes(sealed));
    let version = c.arg(Arg::I32(version));
    c.add(
        "the MODEL secret upsert",
        format!(
            "INSERT INTO workspace_secrets (workspace_id, key, encrypted_value, encryption_version)
             VALUES ({id}, {key}, {value}, {version})
             ON CONFLICT (workspace_id, key) DO UPDATE
                SET encrypted_value = EXCLUDED.encrypted_value,
                    encryption_version = EXCLUDED.encryption_version,
                    updated_at = now()"
        ),
        Some(1),
    );
}

/// The anchors of the old roots (`old`) onto the agent, and the roots (`reparented`) under it,
/// remembered as former roots.
fn move_anchors<'a>(c: &mut Changes<'a>, plan: &Plan, old: &'a [Uuid], reparented: &'a [Uuid]) {
    let agent = plan.agent.id;
    if !plan.allowlist_moves.is_empty() {
        let (a, o) = (c.arg(Arg::Uuid(agent)), c.arg(Arg::Uuids(old)));
        c.add(
            "moving allowlist rows",
            format!("UPDATE org_plugin_allowlist SET org_id = {a} WHERE org_id = ANY({o})"),
            Some(plan.allowlist_moved()),
        );
    }
    if !plan.token_moves.is_empty() {
        let (a, o) = (c.arg(Arg::Uuid(agent)), c.arg(Arg::Uuids(old)));
        c.add(
            "moving tokens",
            format!("UPDATE org_api_tokens SET org_id = {a} WHERE org_id = ANY({o})"),
            Some(plan.tokens_moved()),
        );
    }
    if !reparented.is_empty() {
        let (a, ids) = (c.arg(Arg::Uuid(agent)), c.arg(Arg::Uuids(reparented)));
        c.add(
            "re-parenting roots",
            format!(
                "UPDATE workspaces SET parent_id = {a}, updated_at = now()
                  WHERE id = ANY({ids}) AND parent_id IS NULL"
            ),
            Some(reparented.len() as i64),
        );
        c.add(
            "recording the former roots",
            format!(
                "INSERT INTO orgctl.former_roots (workspace_id, agent_id)
                 SELECT unnest({ids}::uuid[]), {a}
                 ON CONFLICT (workspace_id) DO UPDATE SET agent_id = EXCLUDED.agent_id,
                     reparented_at = now()"
            ),
            None,
        );
    }
}

/// Changes sent as one statement: each a data-modifying CTE, with the rows the plan counted
/// for it (None: not checked), and the parameters they bind.
#[derive(Default)]
pub struct Changes<'a> {
    scope: Option<String>,
    /// What each change is called, its SQL, the rows it must touch, and what it returns
    /// (`None`: only a count).
    ctes: Vec<(&'static str, String, Option<i64>, Option<String>)>,
    args: db::Binds<'a>,
    /// A caller's reads in the same statement: CTEs ahead of the changes, and columns that
    /// come first in the statement's row (see [`Changes::read`]).
    lead: Vec<String>,
    reads: Vec<String>,
}

impl<'a> Changes<'a> {
    /// Bind a value; returns its placeholder.
    pub fn arg(&mut self, a: Arg<'a>) -> String {
        self.args.arg(a)
    }

    /// How many values are bound so far.
    pub fn bound(&self) -> usize {
        self.args.len()
    }

    /// One change: `sql` a data-modifying statement (without RETURNING), `planned` the rows
    /// it must touch (None: not checked), `what` how an error names it.
    pub fn add(&mut self, what: &'static str, sql: String, planned: Option<i64>) {
        self.ctes.push((what, sql, planned, None));
    }

    /// [`Changes::add`], returning `returning` (a RETURNING list) from a CTE whose name this
    /// gives back, for a caller's read ([`Changes::read`]) of what the change wrote.
    pub fn add_returning(
        &mut self,
        what: &'static str,
        sql: String,
        planned: Option<i64>,
        returning: &str,
    ) -> String {
        let name = format!("c{}", self.ctes.len());
        self.ctes
            .push((what, sql, planned, Some(returning.to_string())));
        name
    }

    /// Read `columns` in the same statement (after a non-modifying `cte` of the caller's, put
    /// first): they read the rows as they were before the statement, and come back as the first
    /// columns of the row [`execute`] returns.
    pub fn read(&mut self, cte: &str, columns: Vec<String>) {
        self.lead.push(cte.to_string());
        self.reads.extend(columns);
    }

    /// Send the changes (nothing when there are none); the row when there were reads.
    async fn run(self, conn: &mut PgConnection) -> Result<Option<sqlx::postgres::PgRow>> {
        if self.ctes.is_empty() && self.reads.is_empty() {
            return Ok(None);
        }
        let mut parts: Vec<String> = self.lead;
        parts.extend(self.scope);
        let first = self.reads.len();
        let mut counts = self.reads;
        for (i, (_, sql, _, returning)) in self.ctes.iter().enumerate() {
            let returning = returning.as_deref().unwrap_or("1");
            parts.push(format!("c{i} AS ({sql} RETURNING {returning})"));
            counts.push(format!("(SELECT count(*) FROM c{i})"));
        }
        let sql = format!("WITH {} SELECT {}", parts.join(",\n"), counts.join(", "));
        let row = self
            .args
            .bind_to(db::query(&sql))
            .fetch_one(&mut *conn)
            .await?;
        for (i, (what, _, planned, _)) in self.ctes.iter().enumerate() {
            if let Some(planned) = planned {
                let touched: i64 = row.try_get(first + i)?;
                db::ensure_rows(what, u64::try_from(touched).unwrap_or(0), *planned)?;
            }
        }
        Ok((first > 0).then_some(row))
    }
}

/// The invariants that must hold before commit: exactly one root and it is the agent (its
/// tier is the platform's once it exists: a re-install preserves it), one
/// platform agent, no anchor row on an old root, and MODEL present unless allowed missing. A
/// [`db::Check`] for the audit statement that follows [`execute`].
pub fn verification(plan: &Plan) -> db::Check<'static> {
    let args = vec![
        Arg::Uuid(plan.agent.id),
        Arg::UuidList(plan.old_roots()),
        Arg::Text(MODEL_KEY),
    ];
    let columns = |ph: &[String]| -> Vec<String> {
        let [agent, old, key] = ph else {
            return Vec::new();
        };
        vec![
            "(SELECT count(*) FROM workspaces WHERE parent_id IS NULL)".to_string(),
            format!(
                "(SELECT count(*) FROM workspaces WHERE parent_id IS NULL AND id = {agent}
                                                  AND kind = 'platform')"
            ),
            "(SELECT count(*) FROM workspaces WHERE kind = 'platform')".to_string(),
            format!("(SELECT count(*) FROM org_api_tokens WHERE org_id = ANY({old}))"),
            format!("(SELECT count(*) FROM org_plugin_allowlist WHERE org_id = ANY({old}))"),
            format!(
                "(SELECT count(*) FROM workspace_secrets WHERE workspace_id = {agent} AND key = {key})"
            ),
        ]
    };
    // The platform seeds (or sets) MODEL when --provision provisions the agent.
    let allow_missing_model =
        plan.allow_missing_model || crate::platform::missing_model_is_seeded(plan.ensure);
    let judge = move |v: &[i64]| -> Result<()> {
        let [roots, agent_root, agents, tokens_left, allow_left, model] = v else {
            return Err(Error::failed("internal: the verification read no row"));
        };
        let mut broken = Vec::new();
        if *roots != 1 || *agent_root != 1 {
            broken.push(format!(
                "{roots} root(s) where there must be exactly one, the agent (a workspace created concurrently?)"
            ));
        }
        if *agents != 1 {
            broken.push(format!("{agents} platform agents"));
        }
        if *tokens_left != 0 {
            broken.push(format!("{tokens_left} token(s) still on an old root"));
        }
        if *allow_left != 0 {
            broken.push(format!(
                "{allow_left} allowlist row(s) still on an old root"
            ));
        }
        if *model == 0 && !allow_missing_model {
            broken.push("no MODEL secret on the agent".to_string());
        }
        if broken.is_empty() {
            Ok(())
        } else {
            Err(Error::failed(format!(
                "verification failed before commit ({}); rolled back, nothing was changed; rerun",
                broken.join("; ")
            )))
        }
    };
    db::Check {
        args,
        columns: Box::new(columns),
        judge: Box::new(judge),
    }
}

/// The audit arguments of an install: no secret values.
pub fn audit_args(input: &InstallInput, plan: &Plan) -> serde_json::Value {
    serde_json::json!({
        "id": input.id,
        "name": input.name,
        "model_given": input.model.is_some(),
        "allow_missing_model": input.allow_missing_model,
        "org_id": input.org_id,
        "self_hosted": input.self_hosted,
        "revive": input.revive,
        "agent_id": plan.agent.id,
        "agent_action": plan.agent.action,
        "reparented": plan.reparented.len(),
        "tokens_moved": plan.tokens_moved(),
        "allowlist_moved": plan.allowlist_moved(),
        "allowlist_merged": plan.merged.len(),
        "model_secret": plan.model,
        "declared_plugin": plan.plugin,
        "model_via_platform": plan.model_via_platform,
        "plan_hash": plan.hash(),
    })
}
