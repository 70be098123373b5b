//! Computing the plan: read-only, set-based queries, the same code in a dry run and in apply.
//!
//! Two messages in the usual case: the first ([`PLATFORM_AGENTS`], [`GLOBAL_MODEL_OVERRIDE`],
//! [`ROOTS`], constant SQL in one simple-query message, after the row locks when apply takes
//! them) finds the agent and the roots; the second reads everything that hangs off the old
//! roots in one statement ([`read_anchors`]).

use std::collections::BTreeMap;

use futures_util::TryStreamExt;
use sqlx::postgres::{PgConnection, PgRow};
use sqlx::Row;
use uuid::Uuid;

use super::agent::{agent_row, resolve_agent};
use super::locks::{lock_error, lock_rows, LOCK_ROWS};
use super::model::model_action;
use super::planned::{
    AgentAction, AgentPlan, AgentRow, AllowlistMove, MergedRow, Plan, PluginAction, RootMove,
    TokenMove,
};
use super::InstallInput;
use crate::db;
use crate::error::{Error, Result};
use crate::platform::agent as platform_agent;
use crate::platform::keys::SecretBox;
use crate::platform::provision;
use crate::platform::tree::{self, NameClash};

/// Whether orgctl's schema is known to be present and usable in the planning transaction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Orgctl {
    /// Inside a transaction of [`db::begin_change`]: present and usable, no probe needed.
    Ready,
    /// A read-only plan (dry run, status): it may be absent or not readable by this role.
    Probe,
}

/// The platform agents: their template; whether each has a MOLECULE_MODEL secret
/// ([`crate::platform::MODEL_OVERRIDE_KEY`]); and its runtime, for whether `--provision` acts on
/// it. First of the plan's first read.
pub(super) const PLATFORM_AGENTS: &str = "SELECT id, name, parent_id, tier, status::text, template,
       EXISTS (SELECT 1 FROM workspace_secrets s
                WHERE s.workspace_id = workspaces.id AND s.key = 'MOLECULE_MODEL'),
       runtime
  FROM workspaces WHERE kind = 'platform' ORDER BY id";

/// Whether a global MOLECULE_MODEL secret is set.
pub(super) const GLOBAL_MODEL_OVERRIDE: &str =
    "SELECT EXISTS (SELECT 1 FROM global_secrets WHERE key = 'MOLECULE_MODEL')";

/// The roots, oldest first.
pub(super) const ROOTS: &str =
    "SELECT id, name, status::text FROM workspaces WHERE parent_id IS NULL
  ORDER BY created_at NULLS LAST, id";

/// The plan's first read, one simple-query message of constant SQL.
fn plan_reads() -> String {
    [PLATFORM_AGENTS, GLOBAL_MODEL_OVERRIDE, ROOTS].join(";\n")
}

/// The allowlist rows on the old roots ($1) and the agent ($2), ranked per plugin: rank 1 is
/// the row that stays (earliest enabled_at; on a tie the agent's own row, then the lowest id),
/// ranks above 1 are merged away.
const ALLOWLIST_SCOPE: &str = "WITH scope AS (
    SELECT id, org_id, plugin_name,
           row_number() OVER w AS rn
      FROM org_plugin_allowlist
     WHERE org_id = ANY($1) OR org_id = $2
    WINDOW w AS (PARTITION BY plugin_name
                 ORDER BY enabled_at ASC NULLS LAST, (org_id = $2) DESC, id ASC))";

/// [`ALLOWLIST_SCOPE`] as a CTE of a larger statement, with its parameters renumbered.
pub(super) fn scope_cte(old: &str, agent: &str) -> String {
    ALLOWLIST_SCOPE
        .trim_start()
        .trim_start_matches("WITH ")
        .replace("$1", "\u{0}old")
        .replace("$2", "\u{0}agent")
        .replace("\u{0}old", old)
        .replace("\u{0}agent", agent)
}

/// Compute the plan. Read-only: runs unchanged inside a dry run's read-only transaction and
/// inside apply's write transaction (after `lock_rows`; or use [`lock_and_plan`]).
pub async fn plan(
    conn: &mut PgConnection,
    input: &InstallInput,
    sb: &SecretBox,
    orgctl: Orgctl,
) -> Result<Plan> {
    plan_after(conn, input, sb, orgctl, "").await
}

/// `lock_rows` then [`plan`], inside a transaction of [`db::begin_change`]: without `--id`
/// the lock statement (constant SQL) leads the plan's first message, one round trip and one
/// statement fewer per tenant. `tail`: [`db::Begun::tail`] of a transaction begun with
/// [`plan_tail`] — when that message already rode with the creation of orgctl's schema, its
/// rows (or its failure, a lock timeout said as in `lock_rows`).
pub async fn lock_and_plan(
    conn: &mut PgConnection,
    input: &InstallInput,
    sb: &SecretBox,
    tail: Option<Result<Vec<Vec<PgRow>>>>,
) -> Result<Plan> {
    if let Some(reads) = tail {
        let reads = match reads {
            Ok(r) => r,
            Err(e) => return Err(lock_error(conn, input, e).await),
        };
        return plan_from_reads(conn, input, sb, Orgctl::Ready, reads, true).await;
    }
    if input.id.is_some() {
        lock_rows(conn, input).await?;
        return plan(conn, input, sb, Orgctl::Ready).await;
    }
    plan_after(conn, input, sb, Orgctl::Ready, LOCK_ROWS).await
}

/// [`lock_and_plan`]'s first message as [`db::begin_change_on`]'s `tail` (constant SQL: the
/// row locks, then the plan's first reads), so that on a tenant's first touch it rides in the
/// message that creates orgctl's schema: one round trip fewer. "" with `--id`, whose lock
/// binds a value.
pub fn plan_tail(input: &InstallInput) -> String {
    if input.id.is_some() {
        String::new()
    } else {
        format!("{LOCK_ROWS};\n{}", plan_reads())
    }
}

/// `lead`: the row locks ([`LOCK_ROWS`], constant SQL) sent ahead of the plan's first read in
/// the same message (its rows are ignored; a lock timeout there is said as in `lock_rows`),
/// or "".
async fn plan_after(
    conn: &mut PgConnection,
    input: &InstallInput,
    sb: &SecretBox,
    orgctl: Orgctl,
    lead: &str,
) -> Result<Plan> {
    // One message, constant SQL: the platform agents and the roots (after `lead`, the row
    // locks, when given).
    let reads = if lead.is_empty() {
        db::simple_batch(conn, &plan_reads()).await?
    } else {
        match db::simple_batch(conn, &format!("{lead};\n{}", plan_reads())).await {
            Ok(r) => r,
            Err(e) => return Err(lock_error(conn, input, e).await),
        }
    };
    plan_from_reads(conn, input, sb, orgctl, reads, !lead.is_empty()).await
}

/// What the plan's first message found.
struct FirstReads {
    platforms: Vec<AgentRow>,
    /// The platform agents with a MOLECULE_MODEL secret of their own.
    overridden: Vec<Uuid>,
    /// Each platform agent's runtime.
    runtimes: Vec<(Uuid, Option<String>)>,
    /// A global MOLECULE_MODEL secret is set.
    global_override: bool,
    roots: Vec<RootMove>,
}

/// The rows of the plan's first message, after the row locks' count when `locked`.
fn first_reads(mut reads: Vec<Vec<PgRow>>, locked: bool) -> Result<FirstReads> {
    if locked && !reads.is_empty() {
        reads.remove(0);
    }
    let (platform_rows, global_rows, root_rows) = match reads.as_slice() {
        [p, g, r] => (p, g, r),
        _ => {
            return Err(Error::failed(
                "internal: the plan's first read returned no rows",
            ))
        }
    };
    let platforms = platform_rows
        .iter()
        .map(agent_row)
        .collect::<std::result::Result<Vec<_>, sqlx::Error>>()?;
    let mut overridden: Vec<Uuid> = Vec::new();
    let mut runtimes: Vec<(Uuid, Option<String>)> = Vec::new();
    for r in platform_rows {
        if r.try_get::<bool, _>(6)? {
            overridden.push(r.try_get(0)?);
        }
        runtimes.push((r.try_get(0)?, r.try_get(7)?));
    }
    let global_override: bool = match global_rows.first() {
        Some(g) => g.try_get(0)?,
        None => false,
    };
    let roots = root_rows
        .iter()
        .map(|r| {
            Ok(RootMove {
                id: r.try_get(0)?,
                name: r.try_get(1)?,
                status: r.try_get(2)?,
            })
        })
        .collect::<std::result::Result<Vec<_>, sqlx::Error>>()?;
    Ok(FirstReads {
        platforms,
        overridden,
        runtimes,
        global_override,
        roots,
    })
}

/// The plan from the rows of its first message ([`plan_reads`], after the row locks' count
/// when `locked`).
async fn plan_from_reads(
    conn: &mut PgConnection,
    input: &InstallInput,
    sb: &SecretBox,
    orgctl: Orgctl,
    reads: Vec<Vec<PgRow>>,
    locked: bool,
) -> Result<Plan> {
    let first = first_reads(reads, locked)?;
    let agent = resolve_agent(conn, input, first.platforms).await?;
    let reparented: Vec<RootMove> = first
        .roots
        .into_iter()
        .filter(|r| r.id != agent.id)
        .collect();
    let reparented_ids: Vec<Uuid> = reparented.iter().map(|r| r.id).collect();
    let anchors = read_anchors(conn, orgctl, &reparented_ids, agent.id).await?;
    if anchors.taken && agent.generated_id {
        return Err(Error::refused(format!(
            "the platform's id for a new platform agent ({}, {}) is already an ordinary workspace's; nothing was changed: check the org id, or pass --id",
            agent.id, agent.id_source
        )));
    }
    let plugin = match anchors.plugin_source.as_deref() {
        None => PluginAction::Create,
        Some(s) if s == platform_agent::MCP_PLUGIN_SOURCE => PluginAction::Unchanged,
        Some(_) => PluginAction::Update,
    };
    let swept_former_roots = anchors.swept(&reparented);

    let model = model_action(conn, &agent, input, sb).await?;
    let name_clashes = name_clashes(conn, &agent, &reparented).await?;
    let model_outranked = if first.overridden.contains(&agent.id) {
        Some("on the agent")
    } else if first.global_override {
        Some("globally")
    } else {
        None
    };
    let ensure = input.provision && provision_acts(conn, &agent, &first.runtimes).await?;

    Ok(Plan {
        agent,
        reparented,
        swept_former_roots,
        token_moves: anchors.token_moves,
        allowlist_moves: anchors.allowlist_moves,
        merged: anchors.merged,
        kept: anchors.kept,
        model,
        allow_missing_model: input.allow_missing_model,
        name_clashes,
        plugin,
        model_via_platform: input.provision && input.model.is_some(),
        ensure,
        provision_without_url: input.provision_without_url,
        model_outranked,
    })
}

/// What the plan's second statement found: whether a derived id is taken, the declared plugin's
/// source, the former roots, and the anchors of every old root.
#[derive(Default)]
struct Anchors {
    taken: bool,
    plugin_source: Option<String>,
    former: Vec<Uuid>,
    token_moves: Vec<TokenMove>,
    allowlist_moves: Vec<AllowlistMove>,
    merged: Vec<MergedRow>,
    kept: BTreeMap<String, String>,
}

impl Anchors {
    /// The former roots not re-parented now that still have anchor rows: they are swept.
    fn swept(&self, reparented: &[RootMove]) -> Vec<Uuid> {
        self.former
            .iter()
            .copied()
            .filter(|f| {
                !reparented.iter().any(|r| r.id == *f)
                    && (self.token_moves.iter().any(|m| m.from == *f)
                        || self.allowlist_moves.iter().any(|m| m.from == *f)
                        || self.merged.iter().any(|m| m.from == *f))
            })
            .collect()
    }
}

/// One statement for the rest of the plan: whether a derived id is taken (k 0), the platform
/// MCP plugin declared on the agent (k 6, its source), the roots an earlier install re-parented
/// under this agent (k 5, none before orgctl's schema exists), and the anchors of every old root
/// (re-parented now, or former): token counts per old root (k 1), allowlist rows moving per old
/// root (k 2), the allowlist rows merged away (k 3, streamed: tens of thousands on a large org)
/// and the row that stays for each merged plugin (k 4). Each part keeps the order it had as a
/// query of its own. The old roots are one array (an InitPlan), so every part still reads
/// `org_id = ANY(array)`.
async fn read_anchors(
    conn: &mut PgConnection,
    orgctl: Orgctl,
    reparented_ids: &[Uuid],
    agent: Uuid,
) -> Result<Anchors> {
    let former_sql = if with_former_roots(conn, orgctl).await? {
        "SELECT f.workspace_id AS id FROM orgctl.former_roots f
          WHERE f.agent_id = $2 AND f.workspace_id <> $2"
    } else {
        "SELECT NULL::uuid AS id WHERE false"
    };
    let sql = anchors_sql(former_sql);
    let mut a = Anchors::default();
    let mut rows = db::query(&sql)
        .bind(reparented_ids)
        .bind(agent)
        .bind(platform_agent::MCP_PLUGIN)
        .fetch(&mut *conn);
    while let Some(r) = rows.try_next().await? {
        match r.try_get::<i32, _>(0)? {
            0 => a.taken = r.try_get::<i64, _>(2)? != 0,
            5 => a.former.push(r.try_get(6)?),
            6 => a.plugin_source = Some(r.try_get::<String, _>(4)?),
            1 => a.token_moves.push(TokenMove {
                from: r.try_get(6)?,
                live: r.try_get(2)?,
                revoked: r.try_get(3)?,
            }),
            2 => a.allowlist_moves.push(AllowlistMove {
                from: r.try_get(6)?,
                rows: r.try_get(2)?,
            }),
            3 => a.merged.push(MergedRow {
                id: r.try_get(5)?,
                plugin_name: r.try_get(4)?,
                from: r.try_get(6)?,
            }),
            _ => {
                a.kept.insert(r.try_get(4)?, r.try_get(5)?);
            }
        }
    }
    Ok(a)
}

/// The text of [`read_anchors`]' statement, reading the former roots with `former_sql`.
fn anchors_sql(former_sql: &str) -> String {
    let old = "(SELECT ids FROM old)::uuid[]";
    let scope = scope_cte(old, "$2");
    // Live as the platform counts it; the rest (revoked or expired) is the plan's "revoked".
    let live = crate::platform::tokens::live("");
    format!(
        "WITH former AS MATERIALIZED ({former_sql}),
              old AS MATERIALIZED (
                SELECT ARRAY(SELECT unnest($1::uuid[]) UNION SELECT id FROM former) AS ids),
              {scope}
         SELECT 0 AS k, NULL::uuid AS sort_org,
                (EXISTS (SELECT 1 FROM workspaces WHERE id = $2))::int::bigint AS a,
                NULL::bigint AS b, NULL::text AS plugin, NULL::text AS id,
                NULL::uuid AS from_org
         UNION ALL
         SELECT 5, id, NULL, NULL, NULL, NULL, id FROM former
         UNION ALL
         SELECT 6, NULL, NULL, NULL, source_raw, NULL, NULL
           FROM workspace_declared_plugins WHERE workspace_id = $2 AND plugin_name = $3
         UNION ALL
         SELECT 1, org_id,
                count(*) FILTER (WHERE {live}),
                count(*) FILTER (WHERE NOT {live}),
                NULL, NULL, org_id
           FROM org_api_tokens WHERE org_id = ANY({old}) GROUP BY org_id
         UNION ALL
         SELECT 2, org_id, count(*), NULL, NULL, NULL, org_id
           FROM scope WHERE rn = 1 AND org_id <> $2 GROUP BY org_id
         UNION ALL
         SELECT 3, NULL, NULL, NULL, plugin_name, id::text, org_id FROM scope WHERE rn > 1
         UNION ALL
         SELECT 4, NULL, NULL, NULL, plugin_name, id::text, NULL FROM scope
          WHERE rn = 1 AND plugin_name IN (SELECT plugin_name FROM scope WHERE rn > 1)
         ORDER BY k, sort_org, plugin, id"
    )
}

/// Whether the plan reads `orgctl.former_roots` (the roots an earlier install re-parented):
/// always inside a transaction of [`db::begin_change`]; for a read-only plan only when the
/// table is there and readable (a read-only role on a tenant another role installed plans
/// without them; an apply could not write orgctl's state anyway and is refused earlier).
async fn with_former_roots(conn: &mut PgConnection, orgctl: Orgctl) -> Result<bool> {
    Ok(orgctl == Orgctl::Ready || db::orgctl_table_readable(conn, "former_roots").await?)
}

/// Whether `--provision` will ask the platform for this agent: a new one always, an existing
/// one by its state now (the same rule the provisioning applies after the commit).
async fn provision_acts(
    conn: &mut PgConnection,
    agent: &AgentPlan,
    runtimes: &[(Uuid, Option<String>)],
) -> Result<bool> {
    Ok(
        match (
            &agent.prior,
            runtimes.iter().find(|(id, _)| *id == agent.id),
        ) {
            (Some(prior), Some((_, runtime))) => provision::acts_on(Some(&provision::AgentState {
                status: prior.status.clone(),
                runtime: runtime.clone(),
                url: None,
                last_error: None,
                updated_at: None,
            })),
            // A new agent; or --id naming a row that is not (yet) the platform's: read it.
            (Some(_), None) => {
                provision::acts_on(provision::agent_state(conn, agent.id).await?.as_ref())
            }
            (None, _) => true,
        },
    )
}

/// The pairs of live workspaces the install would give the same name under one parent, which
/// the platform's sibling-name rule forbids ([`tree::SIBLING_NAME_INDEX`]), in the order the
/// install writes: first the agent's upsert puts it at the top level beside the roots (a new
/// or renamed agent, or one moved up, named like a live root); then the roots move under the
/// agent, beside its existing children (a live root named like a live child of the agent).
/// The roots are distinct among themselves already (they share the top level), and `removed`
/// rows never count. The agent counts as live: an install leaves no removed agent in place.
/// One statement, only when an existing agent may already have children.
async fn name_clashes(
    conn: &mut PgConnection,
    agent: &AgentPlan,
    reparented: &[RootMove],
) -> Result<Vec<NameClash>> {
    let live: Vec<&RootMove> = reparented
        .iter()
        .filter(|r| tree::name_counts(r.status.as_deref()))
        .collect();
    let mut clashes = Vec::new();
    if agent.action != AgentAction::Unchanged {
        clashes.extend(
            live.iter()
                .filter(|r| r.name == agent.name)
                .map(|r| NameClash {
                    name: r.name.clone(),
                    parent: None,
                    moving: agent.id,
                    existing: r.id,
                }),
        );
    }
    if agent.action == AgentAction::Create || live.is_empty() {
        return Ok(clashes);
    }
    let names: Vec<&str> = live.iter().map(|r| r.name.as_str()).collect();
    let sql = format!(
        "SELECT w.id, w.name FROM workspaces w
          WHERE w.parent_id = $1 AND w.name = ANY($2) AND {}
          ORDER BY w.name, w.id",
        tree::name_counts_sql("w")
    );
    let children = db::query(&sql)
        .bind(agent.id)
        .bind(&names)
        .fetch_all(&mut *conn)
        .await?;
    for c in children {
        let (child, name): (Uuid, String) = (c.try_get(0)?, c.try_get(1)?);
        clashes.extend(live.iter().filter(|r| r.name == name).map(|r| NameClash {
            name: name.clone(),
            parent: Some(agent.id),
            moving: r.id,
            existing: child,
        }));
    }
    Ok(clashes)
}
