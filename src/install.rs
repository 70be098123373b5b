//! install-platform-agent (SPEC §4): make the platform agent the single root of the org.
//!
//! [`plan`] computes a [`Plan`] with read-only, set-based queries. A dry run calls it inside a
//! read-only REPEATABLE READ transaction (no locks, no writes). Apply calls the very same
//! function inside its write transaction, after taking the tenant's advisory lock and the row
//! locks, then [`execute`]s that plan: one statement per kind of change, each checked against
//! the row count the plan predicted; any difference rolls the whole transaction back.
//!
//! Lock order (fixed, so a live platform cannot deadlock us): the tenant advisory lock, then
//! the workspace rows of the agent, every root and every former root (`FOR UPDATE`, in id
//! order), then the secret, allowlist and token rows through the updates. `FOR UPDATE` on the
//! roots conflicts with the `FOR KEY SHARE` a foreign-key insert takes, so a platform insert
//! of a token, allowlist row or child that references a root waits for our commit, and every
//! such insert already in flight has committed before we count: nothing written during the
//! run is left behind on an old root. An insert that was waiting at our commit lands on its
//! (now former) root afterwards; `orgctl.former_roots` remembers those roots, the next install
//! sweeps such rows, and `status` reports them.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use futures_util::TryStreamExt;
use serde::Serialize;
use sha2::Digest;
use sqlx::postgres::PgConnection;
use sqlx::Row;
use uuid::Uuid;
use zeroize::Zeroizing;

use crate::cli::InstallArgs;
use crate::db::{self, Arg};
use crate::error::{Error, Exit, Result};
use crate::output::{truncated, Output};
use crate::platform::keys::SecretBox;
use crate::platform::provision::{self, ProvisionResult};
use crate::platform::restart::Platform;
use crate::Context;

pub const DEFAULT_AGENT_NAME: &str = "Platform Agent";
pub use crate::platform::MODEL_KEY;
const MAX_NAME_LEN: usize = 200;
/// Rows a table section lists before it summarises the rest (JSON always lists all).
const TABLE_ROWS: usize = 50;

/// The checked input of an install, shared by the command and the backfill.
#[derive(Clone)]
pub struct InstallInput {
    pub id: Option<Uuid>,
    pub name: Option<String>,
    pub model: Option<Zeroizing<String>>,
    pub allow_missing_model: bool,
    /// The org's id (the control plane's), sent to the platform as its org header.
    pub org_id: Option<String>,
    /// This run provisions the agent through the platform (`--provision` with a platform URL):
    /// `--model` then goes to the platform, which validates it and writes MODEL, and a missing
    /// MODEL is seeded by the platform (see [`crate::platform::missing_model_is_seeded`]).
    pub provision: bool,
}

impl std::fmt::Debug for InstallInput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InstallInput")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("model", &self.model.as_ref().map(|_| "<set>"))
            .field("allow_missing_model", &self.allow_missing_model)
            .field("org_id", &self.org_id)
            .field("provision", &self.provision)
            .finish()
    }
}

impl InstallInput {
    pub fn new(
        id: Option<Uuid>,
        name: Option<&str>,
        model: Option<&str>,
        allow_missing_model: bool,
    ) -> Result<Self> {
        let name = match name {
            Some(n) => {
                let n = n.trim();
                if n.is_empty() {
                    return Err(Error::usage("--name must not be empty"));
                }
                if n.chars().count() > MAX_NAME_LEN {
                    return Err(Error::usage(format!(
                        "--name is longer than {MAX_NAME_LEN} characters"
                    )));
                }
                if n.chars().any(|c| c.is_control()) {
                    return Err(Error::usage("--name must not contain control characters"));
                }
                Some(n.to_string())
            }
            None => None,
        };
        let model = match model {
            Some(m) if m.trim().is_empty() => {
                return Err(Error::usage("--model must not be empty"));
            }
            Some(m) => Some(Zeroizing::new(m.to_string())),
            None => None,
        };
        Ok(InstallInput {
            id,
            name,
            model,
            allow_missing_model,
            org_id: None,
            provision: false,
        })
    }

    pub fn from_args(args: &InstallArgs) -> Result<Self> {
        let mut input = Self::new(
            args.id,
            args.name.as_deref(),
            args.model.as_deref(),
            args.allow_missing_model,
        )?;
        input.provision = args.provision;
        // Only a request to the platform carries the org id: read (and checked) only then.
        if args.provision {
            input.org_id = provision::org_id_from_env()?;
        }
        Ok(input)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AgentAction {
    Create,
    Update,
    Unchanged,
}

impl AgentAction {
    pub fn as_str(self) -> &'static str {
        match self {
            AgentAction::Create => "create",
            AgentAction::Update => "update",
            AgentAction::Unchanged => "unchanged",
        }
    }
}

/// A workspace row as it was before the install (for diffs and backfill snapshots).
#[derive(Clone, Debug)]
pub struct AgentRow {
    pub id: Uuid,
    pub name: String,
    pub parent_id: Option<Uuid>,
    pub tier: Option<i32>,
    pub status: Option<String>,
}

#[derive(Clone, Debug)]
pub struct FieldChange {
    pub field: &'static str,
    pub old: String,
    pub new: String,
}

#[derive(Clone, Debug)]
pub struct AgentPlan {
    pub id: Uuid,
    pub name: String,
    pub action: AgentAction,
    pub changes: Vec<FieldChange>,
    /// orgctl generated the id itself (it is then not part of the plan hash).
    pub generated_id: bool,
    pub prior: Option<AgentRow>,
}

#[derive(Clone, Debug)]
pub struct RootMove {
    pub id: Uuid,
    pub name: String,
    pub status: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenMove {
    pub from: Uuid,
    pub live: i64,
    pub revoked: i64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AllowlistMove {
    pub from: Uuid,
    pub rows: i64,
}

/// An allowlist row merged away (deleted); the row kept for its plugin is in
/// [`Plan::kept`]. Kept small: a large org can merge tens of thousands of rows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MergedRow {
    pub id: String,
    pub plugin_name: String,
    pub from: Uuid,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ModelAction {
    Seeded,
    Replaced,
    Present,
    Missing,
}

impl ModelAction {
    pub fn as_str(self) -> &'static str {
        match self {
            ModelAction::Seeded => "seeded",
            ModelAction::Replaced => "replaced",
            ModelAction::Present => "present",
            ModelAction::Missing => "missing",
        }
    }
    fn writes(self) -> bool {
        matches!(self, ModelAction::Seeded | ModelAction::Replaced)
    }
}

/// Everything an install will change, computed with read-only queries.
#[derive(Clone, Debug)]
pub struct Plan {
    pub agent: AgentPlan,
    pub reparented: Vec<RootMove>,
    /// Roots re-parented by an earlier install that still have anchor rows (a platform write
    /// that raced that install's commit); their rows are swept to the agent.
    pub swept_former_roots: Vec<Uuid>,
    pub token_moves: Vec<TokenMove>,
    pub allowlist_moves: Vec<AllowlistMove>,
    pub merged: Vec<MergedRow>,
    /// For each plugin with merged rows, the id of the row that stays.
    pub kept: BTreeMap<String, String>,
    pub model: ModelAction,
    pub allow_missing_model: bool,
    /// `--model` goes to the platform's ensure (not written by orgctl): [`InstallInput::provision`].
    pub model_via_platform: bool,
    /// `--provision` will ask the platform to provision this agent (it is new, or nothing runs
    /// or starts it), so the platform seeds a missing MODEL.
    pub ensure: bool,
    /// Where a MOLECULE_MODEL secret, which outranks MODEL, is set: `on the agent`, `globally`.
    pub model_outranked: Option<&'static str>,
}

impl Plan {
    pub fn changed(&self) -> bool {
        self.agent.action != AgentAction::Unchanged
            || !self.reparented.is_empty()
            || !self.token_moves.is_empty()
            || !self.allowlist_moves.is_empty()
            || !self.merged.is_empty()
            || self.writes_model()
    }

    /// orgctl writes MODEL itself in the install's transaction.
    pub fn writes_model(&self) -> bool {
        self.model.writes() && !self.model_via_platform
    }

    /// The platform is asked to set `--model` (it validates it for the agent's runtime).
    pub fn model_to_platform(&self) -> bool {
        self.model_via_platform && (self.model.writes() || self.ensure)
    }

    /// What to report as the MODEL secret once the platform answered: the plan's action when
    /// orgctl wrote it or the platform accepted it; else what is really there (nothing was set).
    pub fn model_reported(&self, platform_accepted: bool) -> ModelAction {
        match self.model {
            ModelAction::Seeded if self.model_via_platform && !platform_accepted => {
                ModelAction::Missing
            }
            ModelAction::Replaced if self.model_via_platform && !platform_accepted => {
                ModelAction::Present
            }
            m => m,
        }
    }

    /// The roots whose anchors move: the re-parented ones and swept former roots.
    pub fn old_roots(&self) -> Vec<Uuid> {
        let mut v: Vec<Uuid> = self.reparented.iter().map(|r| r.id).collect();
        v.extend(self.swept_former_roots.iter().copied());
        v
    }

    pub fn tokens_moved(&self) -> i64 {
        self.token_moves.iter().map(|m| m.live + m.revoked).sum()
    }

    pub fn live_tokens_moved(&self) -> i64 {
        self.token_moves.iter().map(|m| m.live).sum()
    }

    pub fn allowlist_moved(&self) -> i64 {
        self.allowlist_moves.iter().map(|m| m.rows).sum()
    }

    /// The refusal apply would meet (a dry run reports it too).
    pub fn refusal(&self) -> Option<Error> {
        let which = if self.agent.action == AgentAction::Create {
            format!("the platform agent to be created ({})", self.agent.id)
        } else {
            format!("the platform agent {}", self.agent.id)
        };
        if self.model_via_platform && self.model.writes() && !self.ensure {
            let status = self
                .agent
                .prior
                .as_ref()
                .and_then(|p| p.status.as_deref())
                .unwrap_or("without a status");
            return Some(Error::refused(format!(
                "{which} is {status}: --provision does not ask the platform to provision it, so --model cannot be set through the platform (which validates it); nothing was changed: rerun without --provision to write MODEL directly (unvalidated, it applies at the next provision), or when the agent is offline or failed"
            )));
        }
        if self.model == ModelAction::Missing
            && !self.allow_missing_model
            && !crate::platform::missing_model_is_seeded(self.ensure)
        {
            return Some(Error::refused(format!(
                "{which} would have no MODEL secret and the platform would mark it failed when it registers: pass --model MODEL, or --provision (the platform seeds MODEL when it provisions the agent), or --allow-missing-model to install without it"
            )));
        }
        None
    }

    /// A fingerprint of what the plan does. An id orgctl generates itself is left out, so a dry
    /// run and the apply that follows it hash alike.
    pub fn hash(&self) -> String {
        // Hash as we go: the merged list of a large org is tens of thousands of lines.
        let mut s = HashWriter(sha2::Sha256::new());
        let _ = writeln!(s, "orgctl-install-plan v1");
        let agent_id = if self.agent.generated_id {
            "new".to_string()
        } else {
            self.agent.id.to_string()
        };
        let _ = writeln!(s, "agent {} {}", self.agent.action.as_str(), agent_id);
        if self.agent.action == AgentAction::Create {
            let _ = writeln!(s, "agent.name {}", self.agent.name);
        }
        for c in &self.agent.changes {
            let _ = writeln!(s, "agent.{} {} -> {}", c.field, c.old, c.new);
        }
        let mut roots: Vec<String> = self.reparented.iter().map(|r| r.id.to_string()).collect();
        roots.sort();
        for r in roots {
            let _ = writeln!(s, "reparent {r}");
        }
        let mut tokens = self.token_moves.clone();
        tokens.sort_by_key(|m| m.from);
        for m in tokens {
            let _ = writeln!(
                s,
                "move org_api_tokens {} live={} revoked={}",
                m.from, m.live, m.revoked
            );
        }
        let mut allow = self.allowlist_moves.clone();
        allow.sort_by_key(|m| m.from);
        for m in allow {
            let _ = writeln!(s, "move org_plugin_allowlist {} rows={}", m.from, m.rows);
        }
        let mut merged: Vec<&MergedRow> = self.merged.iter().collect();
        merged.sort_by(|a, b| a.id.cmp(&b.id));
        for m in merged {
            let _ = writeln!(s, "merge {} {} {}", m.id, m.plugin_name, m.from);
        }
        for (plugin, kept) in &self.kept {
            let _ = writeln!(s, "keep {plugin} {kept}");
        }
        let _ = writeln!(s, "model {}", self.model.as_str());
        if self.model_via_platform {
            let _ = writeln!(s, "model via platform ensure={}", self.ensure);
        }
        format!("sha256:{:x}", s.0.finalize())
    }

    pub fn summary(&self) -> String {
        if !self.changed() {
            return format!(
                "Nothing to do: {} is already the single root and every anchor points at it.",
                self.agent.id
            );
        }
        let mut parts = Vec::new();
        match self.agent.action {
            AgentAction::Create => parts.push("create the platform agent".to_string()),
            AgentAction::Update => parts.push(format!(
                "update the platform agent ({})",
                self.agent
                    .changes
                    .iter()
                    .map(|c| c.field)
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
            AgentAction::Unchanged => {}
        }
        if !self.reparented.is_empty() {
            parts.push(format!("re-parent {} root(s)", self.reparented.len()));
        }
        let t = self.tokens_moved();
        if t > 0 {
            parts.push(format!(
                "move {t} token(s) ({} live, {} revoked)",
                self.live_tokens_moved(),
                t - self.live_tokens_moved()
            ));
        }
        let a = self.allowlist_moved();
        if a > 0 {
            parts.push(format!("move {a} allowlist row(s)"));
        }
        if !self.merged.is_empty() {
            parts.push(format!("merge {} allowlist row(s)", self.merged.len()));
        }
        if self.writes_model() {
            match self.model {
                ModelAction::Seeded => parts.push("seed MODEL".to_string()),
                ModelAction::Replaced => parts.push("replace MODEL".to_string()),
                ModelAction::Present | ModelAction::Missing => {}
            }
        }
        format!("Plan: {}.", parts.join(", "))
    }
}

struct HashWriter(sha2::Sha256);

impl std::fmt::Write for HashWriter {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.update(s.as_bytes());
        Ok(())
    }
}

/// Whether orgctl's schema is known to be present and usable in the planning transaction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Orgctl {
    /// Inside a transaction of [`db::begin_change`]: present and usable, no probe needed.
    Ready,
    /// A read-only plan (dry run, status): it may be absent or not readable by this role.
    Probe,
}

/// Compute the plan. Read-only: runs unchanged inside a dry run's read-only transaction and
/// inside apply's write transaction (after [`lock_rows`]; or use [`lock_and_plan`]).
pub async fn plan(
    conn: &mut PgConnection,
    input: &InstallInput,
    sb: &SecretBox,
    orgctl: Orgctl,
) -> Result<Plan> {
    plan_after(conn, input, sb, orgctl, "").await
}

/// [`lock_rows`] then [`plan`], inside a transaction of [`db::begin_change`]: without `--id`
/// the lock statement (constant SQL) leads the plan's first message, one round trip and one
/// statement fewer per tenant. `tail`: [`db::Begun::tail`] of a transaction begun with
/// [`plan_tail`] — when that message already rode with the creation of orgctl's schema, its
/// rows (or its failure, a lock timeout said as in [`lock_rows`]).
pub async fn lock_and_plan(
    conn: &mut PgConnection,
    input: &InstallInput,
    sb: &SecretBox,
    tail: Option<Result<Vec<Vec<sqlx::postgres::PgRow>>>>,
) -> Result<Plan> {
    if let Some(reads) = tail {
        let reads = reads.map_err(lock_error)?;
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
        format!("{LOCK_ROWS};\n{PLAN_READS}")
    }
}

/// `lead`: the row locks ([`LOCK_ROWS`], constant SQL) sent ahead of the plan's first read in
/// the same message (its rows are ignored; a lock timeout there is said as in [`lock_rows`]),
/// or "".
async fn plan_after(
    conn: &mut PgConnection,
    input: &InstallInput,
    sb: &SecretBox,
    orgctl: Orgctl,
    lead: &str,
) -> Result<Plan> {
    // One message, constant SQL: the platform agents, the tenant's identity (for a derived
    // agent id) and the roots (after `lead`, the row locks, when given).
    let reads = if lead.is_empty() {
        db::simple_batch(conn, PLAN_READS).await?
    } else {
        db::simple_batch(conn, &format!("{lead};\n{PLAN_READS}"))
            .await
            .map_err(lock_error)?
    };
    plan_from_reads(conn, input, sb, orgctl, reads, !lead.is_empty()).await
}

/// The plan from the rows of its first message ([`PLAN_READS`], after the row locks' count
/// when `locked`).
async fn plan_from_reads(
    conn: &mut PgConnection,
    input: &InstallInput,
    sb: &SecretBox,
    orgctl: Orgctl,
    mut reads: Vec<Vec<sqlx::postgres::PgRow>>,
    locked: bool,
) -> Result<Plan> {
    if locked && !reads.is_empty() {
        reads.remove(0);
    }
    let (platform_rows, ident, root_rows) = match reads.as_slice() {
        [p, i, r] if i.len() == 1 => (p, &i[0], r),
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
    // Where a MOLECULE_MODEL secret outranks MODEL: the platform agents that have one, and global.
    let mut overridden: Vec<Uuid> = Vec::new();
    let mut runtimes: Vec<(Uuid, Option<String>)> = Vec::new();
    for r in platform_rows {
        if r.try_get::<bool, _>(5)? {
            overridden.push(r.try_get(0)?);
        }
        runtimes.push((r.try_get(0)?, r.try_get(6)?));
    }
    let global_override: bool = ident.try_get(3)?;
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
    let derive = || derived_agent_id(ident, &roots);
    let agent = resolve_agent(conn, input, platforms, derive).await?;
    let reparented: Vec<RootMove> = roots.into_iter().filter(|r| r.id != agent.id).collect();

    // One statement for the rest of the plan: whether a derived id is taken (k 0), the roots
    // an earlier install re-parented under this agent (k 5, none before orgctl's schema
    // exists), and the anchors of every old root (re-parented now, or former): token counts
    // per old root (k 1), allowlist rows moving per old root (k 2), the allowlist rows merged
    // away (k 3, streamed: tens of thousands on a large org) and the row that stays for each
    // merged plugin (k 4). Each part keeps the order it had as a query of its own. The old
    // roots are one array (an InitPlan), so every part still reads `org_id = ANY(array)`.
    let reparented_ids: Vec<Uuid> = reparented.iter().map(|r| r.id).collect();
    let former_sql = if with_former_roots(conn, orgctl).await? {
        "SELECT f.workspace_id AS id FROM orgctl.former_roots f
          WHERE f.agent_id = $2 AND f.workspace_id <> $2"
    } else {
        "SELECT NULL::uuid AS id WHERE false"
    };
    let mut taken = false;
    let mut former: Vec<Uuid> = Vec::new();
    let mut token_moves: Vec<TokenMove> = Vec::new();
    let mut allowlist_moves: Vec<AllowlistMove> = Vec::new();
    let mut merged: Vec<MergedRow> = Vec::new();
    let mut kept: BTreeMap<String, String> = BTreeMap::new();
    {
        let old = "(SELECT ids FROM old)::uuid[]";
        let scope = scope_cte(old, "$2");
        let sql = format!(
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
             SELECT 1, org_id,
                    count(*) FILTER (WHERE revoked_at IS NULL),
                    count(*) FILTER (WHERE revoked_at IS NOT NULL),
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
        );
        let mut rows = db::query(&sql)
            .bind(&reparented_ids)
            .bind(agent.id)
            .fetch(&mut *conn);
        while let Some(r) = rows.try_next().await? {
            match r.try_get::<i32, _>(0)? {
                0 => taken = r.try_get::<i64, _>(2)? != 0,
                5 => former.push(r.try_get(6)?),
                1 => token_moves.push(TokenMove {
                    from: r.try_get(6)?,
                    live: r.try_get(2)?,
                    revoked: r.try_get(3)?,
                }),
                2 => allowlist_moves.push(AllowlistMove {
                    from: r.try_get(6)?,
                    rows: r.try_get(2)?,
                }),
                3 => merged.push(MergedRow {
                    id: r.try_get(5)?,
                    plugin_name: r.try_get(4)?,
                    from: r.try_get(6)?,
                }),
                _ => {
                    kept.insert(r.try_get(4)?, r.try_get(5)?);
                }
            }
        }
    }
    if taken && agent.generated_id {
        return Err(Error::refused(format!(
            "the id orgctl derives for a new platform agent ({}) is taken by an existing workspace; pass --id with a fresh UUID",
            agent.id
        )));
    }

    let swept_former_roots: Vec<Uuid> = former
        .into_iter()
        .filter(|f| {
            !reparented.iter().any(|r| r.id == *f)
                && (token_moves.iter().any(|m| m.from == *f)
                    || allowlist_moves.iter().any(|m| m.from == *f)
                    || merged.iter().any(|m| m.from == *f))
        })
        .collect();

    let model = model_action(conn, &agent, input, sb).await?;
    let model_outranked = if overridden.contains(&agent.id) {
        Some("on the agent")
    } else if global_override {
        Some("globally")
    } else {
        None
    };
    // Whether --provision will ask the platform for this agent: a new one always, an existing
    // one by its state now (the same rule the provisioning applies after the commit).
    let ensure = input.provision
        && match (
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
        };

    Ok(Plan {
        agent,
        reparented,
        swept_former_roots,
        token_moves,
        allowlist_moves,
        merged,
        kept,
        model,
        allow_missing_model: input.allow_missing_model,
        model_via_platform: input.provision && input.model.is_some(),
        ensure,
        model_outranked,
    })
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

/// The plan's first read ([`plan`]), one simple-query message of constant SQL: the platform
/// agents (and whether each has a MOLECULE_MODEL secret, [`crate::platform::MODEL_OVERRIDE_KEY`],
/// and its runtime, for whether `--provision` acts on it),
/// the tenant's identity (and whether a global MOLECULE_MODEL secret is set), the roots (oldest
/// first).
const PLAN_READS: &str = "SELECT id, name, parent_id, tier, status::text,
       EXISTS (SELECT 1 FROM workspace_secrets s
                WHERE s.workspace_id = workspaces.id AND s.key = 'MOLECULE_MODEL'),
       runtime
  FROM workspaces WHERE kind = 'platform' ORDER BY id;
SELECT (SELECT system_identifier::text FROM pg_control_system()),
       (SELECT oid::text FROM pg_database WHERE datname = current_database()),
       current_database(),
       EXISTS (SELECT 1 FROM global_secrets WHERE key = 'MOLECULE_MODEL');
SELECT id, name, status::text FROM workspaces WHERE parent_id IS NULL
  ORDER BY created_at NULLS LAST, id";

/// The id of an agent orgctl creates itself: derived from the tenant's identity (the cluster's
/// system identifier, the database's oid and name) and the ids of the roots it adopts, so a dry
/// run shows exactly the id apply will create (SPEC §4: what the dry run shows is what apply
/// does), and a different org — or the same org after its roots changed — gets another.
/// A random id would differ between the dry run and the apply that follows it. (Whether it is
/// taken is checked by [`plan`] with its next statement.)
fn derived_agent_id(ident: &sqlx::postgres::PgRow, roots: &[RootMove]) -> Result<Uuid> {
    let mut ids: Vec<Uuid> = roots.iter().map(|r| r.id).collect();
    // PostgreSQL's uuid order is the order of its 16 bytes, as Uuid's.
    ids.sort_unstable();
    let joined = ids
        .iter()
        .map(Uuid::to_string)
        .collect::<Vec<_>>()
        .join(",");
    let mut h = sha2::Sha256::new();
    for i in 0..3 {
        let part: Option<String> = ident.try_get(i)?;
        h.update(b"\0");
        h.update(part.unwrap_or_default().as_bytes());
    }
    h.update(b"\0");
    h.update(joined.as_bytes());
    h.update(b"\0orgctl platform agent");
    let digest = h.finalize();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    Ok(uuid::Builder::from_bytes(bytes)
        .with_variant(uuid::Variant::RFC4122)
        .with_version(uuid::Version::Sha1)
        .into_uuid())
}

fn agent_row(r: &sqlx::postgres::PgRow) -> std::result::Result<AgentRow, sqlx::Error> {
    Ok(AgentRow {
        id: r.try_get(0)?,
        name: r.try_get(1)?,
        parent_id: r.try_get(2)?,
        tier: r.try_get(3)?,
        status: r.try_get(4)?,
    })
}

async fn resolve_agent(
    conn: &mut PgConnection,
    input: &InstallInput,
    platforms: Vec<AgentRow>,
    derive: impl FnOnce() -> Result<Uuid>,
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
    let (row, id, generated) = match input.id {
        Some(id) => {
            let named = fetch_agents(conn, "WHERE id = $1", Some(id))
                .await?
                .into_iter()
                .next();
            let named_kind: Option<String> = if named.is_some() {
                db::query_scalar("SELECT COALESCE(kind, 'workspace') FROM workspaces WHERE id = $1")
                    .bind(id)
                    .fetch_optional(&mut *conn)
                    .await?
            } else {
                None
            };
            match (named, existing) {
                (Some(row), _) if named_kind.as_deref() != Some("platform") => {
                    return Err(Error::refused(format!(
                        "--id {id} names an ordinary workspace ('{}', kind {}), not the platform agent; omit --id or pass the agent's id",
                        row.name,
                        named_kind.unwrap_or_else(|| "workspace".into())
                    )));
                }
                (Some(row), _) => (Some(row), id, false),
                (None, Some(other)) => {
                    return Err(Error::refused(format!(
                        "--id {id} names a different agent than the existing platform agent {}; omit --id or pass {}",
                        other.id, other.id
                    )));
                }
                (None, None) => (None, id, false),
            }
        }
        None => match existing {
            Some(row) => {
                let id = row.id;
                (Some(row), id, false)
            }
            None => (None, derive()?, true),
        },
    };

    Ok(match row {
        None => AgentPlan {
            id,
            name: input
                .name
                .clone()
                .unwrap_or_else(|| DEFAULT_AGENT_NAME.to_string()),
            action: AgentAction::Create,
            changes: Vec::new(),
            generated_id: generated,
            prior: None,
        },
        Some(row) => {
            let mut changes = Vec::new();
            if let Some(p) = row.parent_id {
                changes.push(FieldChange {
                    field: "parent_id",
                    old: p.to_string(),
                    new: "null".into(),
                });
            }
            if row.tier != Some(0) {
                changes.push(FieldChange {
                    field: "tier",
                    old: row
                        .tier
                        .map(|t| t.to_string())
                        .unwrap_or_else(|| "null".into()),
                    new: "0".into(),
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
            AgentPlan {
                id,
                name,
                action: if changes.is_empty() {
                    AgentAction::Unchanged
                } else {
                    AgentAction::Update
                },
                changes,
                generated_id: false,
                prior: Some(row),
            }
        }
    })
}

async fn fetch_agents(
    conn: &mut PgConnection,
    filter: &str,
    id: Option<Uuid>,
) -> Result<Vec<AgentRow>> {
    let sql = format!("SELECT id, name, parent_id, tier, status::text FROM workspaces {filter}");
    let mut q = db::query(&sql);
    if let Some(id) = id {
        q = q.bind(id);
    }
    let rows = q.fetch_all(&mut *conn).await?;
    rows.iter()
        .map(agent_row)
        .collect::<std::result::Result<_, sqlx::Error>>()
        .map_err(Error::from)
}

/// Whether the plan reads `orgctl.former_roots` (the roots an earlier install re-parented):
/// always inside a transaction of [`db::begin_change`]; for a read-only plan only when the
/// table is there and readable (a read-only role on a tenant another role installed plans
/// without them; an apply could not write orgctl's state anyway and is refused earlier).
async fn with_former_roots(conn: &mut PgConnection, orgctl: Orgctl) -> Result<bool> {
    Ok(orgctl == Orgctl::Ready || db::orgctl_table_readable(conn, "former_roots").await?)
}

async fn model_action(
    conn: &mut PgConnection,
    agent: &AgentPlan,
    input: &InstallInput,
    sb: &SecretBox,
) -> Result<ModelAction> {
    let existing = if agent.action == AgentAction::Create {
        None
    } else {
        db::query(
            "SELECT encrypted_value, encryption_version FROM workspace_secrets
              WHERE workspace_id = $1 AND key = $2",
        )
        .bind(agent.id)
        .bind(MODEL_KEY)
        .fetch_optional(&mut *conn)
        .await?
    };
    let action = match (&input.model, existing) {
        (None, Some(_)) => ModelAction::Present,
        (None, None) => ModelAction::Missing,
        (Some(_), None) => ModelAction::Seeded,
        (Some(wanted), Some(row)) => {
            let stored: Vec<u8> = row.try_get(0)?;
            let version: i32 = row.try_get(1)?;
            // Same value already stored (readable with the key at hand): nothing to write, so a
            // rerun with the same --model stays a no-op.
            match sb.open(&stored, version) {
                Some(plain) if plain.as_slice() == wanted.as_bytes() => ModelAction::Present,
                _ => ModelAction::Replaced,
            }
        }
    };
    if action.writes() && !input.provision {
        // A dry run meets the same key/production refusal apply would. (Through the platform,
        // the platform encrypts MODEL with its own key.)
        sb.write_version()?;
    }
    Ok(action)
}

/// Lock, in a fixed order, the workspace rows the install changes or hangs rows off: the agent
/// (or the --id row), every root, every former root.
///
/// Only inside a transaction of [`db::begin_change`], which has made orgctl's schema (and so
/// `orgctl.former_roots`) present and usable: no probe for it here.
pub async fn lock_rows(conn: &mut PgConnection, input: &InstallInput) -> Result<()> {
    let locked = match input.id {
        // Constant SQL: one simple-query message.
        None => db::simple_batch(conn, LOCK_ROWS).await.map(|_| ()),
        Some(id) => db::query(
            "SELECT count(*) FROM (
                SELECT id FROM workspaces
                 WHERE parent_id IS NULL OR kind = 'platform' OR id = $1
                    OR id IN (SELECT workspace_id FROM orgctl.former_roots)
                 ORDER BY id FOR UPDATE) l",
        )
        .bind(id)
        .execute(&mut *conn)
        .await
        .map(|_| ())
        .map_err(Error::from),
    };
    locked.map_err(lock_error)
}

/// [`lock_rows`] without `--id`: counted, not fetched (the locked ids are not needed).
const LOCK_ROWS: &str = "SELECT count(*) FROM (
        SELECT id FROM workspaces
         WHERE parent_id IS NULL OR kind = 'platform'
            OR id IN (SELECT workspace_id FROM orgctl.former_roots)
         ORDER BY id FOR UPDATE) l";

/// A lock timeout on the org's rows, said as such.
fn lock_error(err: Error) -> Error {
    if err.exit == Exit::Refused {
        Error::refused(format!(
            "could not lock the org's root workspaces within --lock-timeout (a platform transaction holds them): {}",
            err.message
        ))
    } else {
        err
    }
}

/// Execute exactly `plan` in the caller's transaction, checking every change's row count. The
/// caller verifies the result with [`verification`] in its audit statement, then commits.
/// `first`: the caller's own changes and reads to send ahead of the plan's, in its first
/// statement (the backfill's snapshot, which so reads every row before the change, and the
/// audit chain's head), or `Changes::default()`; returns that statement's row when it had reads.
///
/// Every kind of change is one data-modifying CTE, and the kinds go to the server in as few
/// statements as the constraints allow (a fleet pays each round trip once per tenant): one
/// statement in all, or two when allowlist rows merge — the merged rows must be gone before
/// the others move, or the move would meet `UNIQUE (org_id, plugin_name)` mid-statement. A
/// foreign key to the new agent is checked at the end of its statement, after the agent row
/// is in. Each CTE's row count is checked against the plan, as separate statements were.
pub async fn execute(
    conn: &mut PgConnection,
    plan: &Plan,
    input: &InstallInput,
    sb: &SecretBox,
    first: Changes<'_>,
) -> Result<Option<sqlx::postgres::PgRow>> {
    let agent = &plan.agent;
    let old = plan.old_roots();
    let reparented: Vec<Uuid> = plan.reparented.iter().map(|r| r.id).collect();
    let sealed = if plan.writes_model() {
        let value = input
            .model
            .as_ref()
            .ok_or_else(|| Error::failed("internal: MODEL planned without a value"))?;
        let (sealed, version) = sb.seal(value.as_bytes())?;
        Some((Zeroizing::new(sealed), version))
    } else {
        None
    };

    let mut first = first;
    if agent.action != AgentAction::Unchanged {
        let (id, name) = (
            first.arg(Arg::Uuid(agent.id)),
            first.arg(Arg::Text(&agent.name)),
        );
        first.add(
            "the agent upsert",
            format!(
                "INSERT INTO workspaces (id, name, kind, parent_id, tier)
                 VALUES ({id}, {name}, 'platform', NULL, 0)
                 ON CONFLICT (id) DO UPDATE
                    SET kind = 'platform', parent_id = NULL, tier = 0, name = EXCLUDED.name,
                        updated_at = now()"
            ),
            Some(1),
        );
    }
    if let Some((sealed, version)) = &sealed {
        let id = first.arg(Arg::Uuid(agent.id));
        let key = first.arg(Arg::Text(MODEL_KEY));
        let value = first.arg(Arg::Bytes(sealed.as_slice()));
        let version = first.arg(Arg::I32(*version));
        first.add(
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
    if !plan.allowlist_moves.is_empty() {
        let (a, o) = (moves.arg(Arg::Uuid(agent.id)), moves.arg(Arg::Uuids(&old)));
        moves.add(
            "moving allowlist rows",
            format!("UPDATE org_plugin_allowlist SET org_id = {a} WHERE org_id = ANY({o})"),
            Some(plan.allowlist_moved()),
        );
    }
    if !plan.token_moves.is_empty() {
        let (a, o) = (moves.arg(Arg::Uuid(agent.id)), moves.arg(Arg::Uuids(&old)));
        moves.add(
            "moving tokens",
            format!("UPDATE org_api_tokens SET org_id = {a} WHERE org_id = ANY({o})"),
            Some(plan.tokens_moved()),
        );
    }
    if !reparented.is_empty() {
        let (a, ids) = (
            moves.arg(Arg::Uuid(agent.id)),
            moves.arg(Arg::Uuids(&reparented)),
        );
        moves.add(
            "re-parenting roots",
            format!(
                "UPDATE workspaces SET parent_id = {a}, updated_at = now()
                  WHERE id = ANY({ids}) AND parent_id IS NULL"
            ),
            Some(reparented.len() as i64),
        );
        moves.add(
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
    let read = first.run(conn).await?;
    second.run(conn).await?;
    Ok(read)
}

/// [`ALLOWLIST_SCOPE`] as a CTE of a larger statement, with its parameters renumbered.
fn scope_cte(old: &str, agent: &str) -> String {
    ALLOWLIST_SCOPE
        .trim_start()
        .trim_start_matches("WITH ")
        .replace("$1", "\u{0}old")
        .replace("$2", "\u{0}agent")
        .replace("\u{0}old", old)
        .replace("\u{0}agent", agent)
}

/// Changes sent as one statement: each a data-modifying CTE, with the rows the plan counted
/// for it (None: not checked), and the parameters they bind.
#[derive(Default)]
pub struct Changes<'a> {
    scope: Option<String>,
    ctes: Vec<(&'static str, String, Option<i64>)>,
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
        self.ctes.push((what, sql, planned));
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
        for (i, (_, sql, _)) in self.ctes.iter().enumerate() {
            parts.push(format!("c{i} AS ({sql} RETURNING 1)"));
            counts.push(format!("(SELECT count(*) FROM c{i})"));
        }
        let sql = format!("WITH {} SELECT {}", parts.join(",\n"), counts.join(", "));
        let row = self
            .args
            .bind_to(db::query(&sql))
            .fetch_one(&mut *conn)
            .await?;
        for (i, (what, _, planned)) in self.ctes.iter().enumerate() {
            if let Some(planned) = planned {
                let touched: i64 = row.try_get(first + i)?;
                db::ensure_rows(what, u64::try_from(touched).unwrap_or(0), *planned)?;
            }
        }
        Ok((first > 0).then_some(row))
    }
}

/// The invariants that must hold before commit: exactly one root and it is the agent, one
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
                                                  AND kind = 'platform' AND tier = 0)"
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
                "verification failed before commit ({}); rolled back, nothing changed; rerun",
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

/// Workspaces in a parent cycle or deeper than 32 below a root are outside every org: the
/// install cannot re-parent them (they are not roots) and never walks them, but it says so
/// (SPEC §1: corrupt chains are reported, never looped on). `orgctl status` names them all.
/// And re-parenting puts every old root one level lower: a workspace exactly 32 steps below
/// a root it re-parents would end up 33 steps below the agent, past the bound, so the dry run
/// and apply warn about that too (one walk for both checks).
async fn warn_chains(out: &Output, conn: &mut PgConnection, plan: &Plan) -> Result<()> {
    let roots: Vec<Uuid> = plan.reparented.iter().map(|r| r.id).collect();
    let check = crate::org::chain_check(conn, &roots).await?;
    if check.broken > 0 {
        let (count, rows) = crate::org::broken_chains(conn, 3).await?;
        let named: Vec<String> = rows
            .iter()
            .map(|b| {
                format!(
                    "{} \"{}\": {}",
                    b.id,
                    crate::error::sanitize(&b.name),
                    b.why
                )
            })
            .collect();
        out.warn(&format!(
            "{count} workspace(s) have a broken parent chain (a cycle, or deeper than 32) and stay outside the org: {}{}; see `orgctl status`",
            named.join("; "),
            if count > rows.len() as i64 { "; …" } else { "" }
        ));
    }
    if check.too_deep_after > 0 {
        let rows = crate::org::at_max_depth_under(conn, &roots, 3).await?;
        let named: Vec<String> = rows
            .iter()
            .map(|(id, name, root)| {
                format!(
                    "{id} \"{}\" (under root {root})",
                    crate::error::sanitize(name)
                )
            })
            .collect();
        out.warn(&format!(
            "re-parenting makes {} parent chain(s) longer than {} steps: {}{}; `orgctl status` will report them as broken until the org is made shallower",
            check.too_deep_after,
            crate::org::MAX_DEPTH,
            named.join("; "),
            if check.too_deep_after > rows.len() as i64 { "; …" } else { "" }
        ));
    }
    Ok(())
}

/// The audit arguments of an install: no secret values.
pub fn audit_args(input: &InstallInput, plan: &Plan) -> serde_json::Value {
    serde_json::json!({
        "id": input.id,
        "name": input.name,
        "model_given": input.model.is_some(),
        "allow_missing_model": input.allow_missing_model,
        "agent_id": plan.agent.id,
        "agent_action": plan.agent.action,
        "reparented": plan.reparented.len(),
        "tokens_moved": plan.tokens_moved(),
        "allowlist_moved": plan.allowlist_moved(),
        "allowlist_merged": plan.merged.len(),
        "model_secret": plan.model,
        "model_via_platform": plan.model_via_platform,
        "plan_hash": plan.hash(),
    })
}

// ---------------------------------------------------------------------------------------------
// Rendering

#[derive(Serialize)]
struct JsonPlan<'a> {
    dry_run: bool,
    changed: bool,
    platform_agent: JsonAgent<'a>,
    reparented: Vec<JsonReparent<'a>>,
    anchor_moves: Vec<JsonMove>,
    allowlist_merged: Vec<JsonMerged<'a>>,
    model_secret: ModelAction,
    plan_hash: String,
    /// Only with --provision (SPEC §9).
    #[serde(skip_serializing_if = "Option::is_none")]
    provision: Option<&'a ProvisionResult>,
}

#[derive(Serialize)]
struct JsonAgent<'a> {
    id: Uuid,
    name: &'a str,
    action: AgentAction,
}

#[derive(Serialize)]
struct JsonReparent<'a> {
    id: Uuid,
    name: &'a str,
    old_parent_id: Option<Uuid>,
    new_parent_id: Uuid,
}

#[derive(Serialize)]
struct JsonMove {
    table: &'static str,
    from: Uuid,
    to: Uuid,
    rows: i64,
}

#[derive(Serialize)]
struct JsonMerged<'a> {
    id: &'a str,
    plugin_name: &'a str,
    from: Uuid,
}

/// Render the plan (or the applied result) on stdout, with the provision result when
/// --provision was given.
pub fn render(
    out: &Output,
    plan: &Plan,
    dry_run: bool,
    applied: bool,
    provision: Option<(&ProvisionResult, Option<&Error>)>,
) -> Result<()> {
    // In a dry run, whether apply would change anything.
    let changed = (dry_run || applied) && plan.changed();
    // After the platform answered, MODEL as it is: a model the platform refused is not claimed.
    let model = match provision {
        Some((p, _)) if !dry_run => plan.model_reported(p.accepted()),
        _ => plan.model,
    };
    if out.json_mode() {
        let to = plan.agent.id;
        let mut anchor_moves: Vec<JsonMove> = plan
            .token_moves
            .iter()
            .map(|m| JsonMove {
                table: "org_api_tokens",
                from: m.from,
                to,
                rows: m.live + m.revoked,
            })
            .collect();
        anchor_moves.extend(plan.allowlist_moves.iter().map(|m| JsonMove {
            table: "org_plugin_allowlist",
            from: m.from,
            to,
            rows: m.rows,
        }));
        let doc = JsonPlan {
            dry_run,
            changed,
            platform_agent: JsonAgent {
                id: plan.agent.id,
                name: &plan.agent.name,
                action: plan.agent.action,
            },
            reparented: plan
                .reparented
                .iter()
                .map(|r| JsonReparent {
                    id: r.id,
                    name: &r.name,
                    old_parent_id: None,
                    new_parent_id: to,
                })
                .collect(),
            anchor_moves,
            allowlist_merged: plan
                .merged
                .iter()
                .map(|m| JsonMerged {
                    id: &m.id,
                    plugin_name: &m.plugin_name,
                    from: m.from,
                })
                .collect(),
            model_secret: model,
            plan_hash: plan.hash(),
            provision: provision.map(|(p, _)| p),
        };
        return out.json(&doc);
    }
    let mut text = render_text(out, plan, dry_run, applied, model);
    if let Some((p, problem)) = provision {
        let _ = writeln!(text, "Provision: {}", p.short(problem));
    }
    out.stdout(&text)
}

fn render_text(
    out: &Output,
    plan: &Plan,
    dry_run: bool,
    applied: bool,
    model: ModelAction,
) -> String {
    let mut s = String::new();
    let agent = &plan.agent;
    let detail = match agent.action {
        AgentAction::Create => format!(
            " (kind platform, tier 0, root{})",
            if agent.generated_id {
                ", new id derived from the tenant and its roots"
            } else {
                ""
            }
        ),
        AgentAction::Update => format!(
            " ({})",
            agent
                .changes
                .iter()
                .map(|c| format!("{}: {} → {}", c.field, c.old, c.new))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        AgentAction::Unchanged => String::new(),
    };
    let _ = writeln!(
        s,
        "Platform agent: {} \"{}\" — {}{detail}",
        agent.id,
        crate::error::sanitize(&agent.name),
        agent.action.as_str(),
    );

    if !plan.reparented.is_empty() {
        let _ = writeln!(s, "\nRe-parented roots ({}):", plan.reparented.len());
        let mut t = out.new_table(["id", "name", "status", "old parent", "new parent"]);
        let (shown, rest) = truncated(&plan.reparented, TABLE_ROWS);
        for r in shown {
            t.add_row(vec![
                r.id.to_string(),
                crate::error::sanitize(&r.name),
                // status may be TEXT on older tenants: any value, escape sequences included.
                crate::error::sanitize(r.status.as_deref().unwrap_or("-")),
                "none (root)".into(),
                agent.id.to_string(),
            ]);
        }
        let _ = writeln!(s, "{t}");
        if rest > 0 {
            let _ = writeln!(s, "… and {rest} more (use --output json for all)");
        }
    }

    if !plan.token_moves.is_empty() || !plan.allowlist_moves.is_empty() {
        let _ = writeln!(s, "\nAnchor moves (to {}):", agent.id);
        let mut t = out.new_table(["table", "from", "rows", "live", "revoked"]);
        let mut rows: Vec<Vec<String>> = plan
            .token_moves
            .iter()
            .map(|m| {
                vec![
                    "org_api_tokens".into(),
                    from_label(plan, m.from),
                    (m.live + m.revoked).to_string(),
                    m.live.to_string(),
                    m.revoked.to_string(),
                ]
            })
            .collect();
        rows.extend(plan.allowlist_moves.iter().map(|m| {
            vec![
                "org_plugin_allowlist".into(),
                from_label(plan, m.from),
                m.rows.to_string(),
                "-".into(),
                "-".into(),
            ]
        }));
        let (shown, rest) = truncated(&rows, TABLE_ROWS);
        for r in shown {
            t.add_row(r.clone());
        }
        let _ = writeln!(s, "{t}");
        if rest > 0 {
            let _ = writeln!(s, "… and {rest} more (use --output json for all)");
        }
    }

    if !plan.merged.is_empty() {
        let _ = writeln!(
            s,
            "\nMerged allowlist rows ({}; the row with the earliest enabled_at is kept):",
            plan.merged.len()
        );
        let mut t = out.new_table(["id", "plugin", "from", "kept row"]);
        let (shown, rest) = truncated(&plan.merged, TABLE_ROWS);
        for m in shown {
            t.add_row(vec![
                m.id.clone(),
                crate::error::sanitize(&m.plugin_name),
                from_label(plan, m.from),
                plan.kept.get(&m.plugin_name).cloned().unwrap_or_default(),
            ]);
        }
        let _ = writeln!(s, "{t}");
        if rest > 0 {
            let _ = writeln!(s, "… and {rest} more (use --output json for all)");
        }
    }

    let _ = writeln!(
        s,
        "\nMODEL secret: {}{}",
        model.as_str(),
        if plan.model_to_platform() && model.writes() {
            " (by the platform, with the provision request: it validates the model for the agent's runtime)"
        } else if plan.model == ModelAction::Missing && plan.ensure {
            " (the platform seeds it when it provisions the agent)"
        } else {
            ""
        }
    );
    let _ = writeln!(s, "\n{}", plan.summary());
    if plan.changed() {
        if dry_run {
            let _ = writeln!(s, "Dry run: nothing was changed.");
        } else if applied {
            let _ = writeln!(s, "Applied.");
        }
    }
    let _ = writeln!(s, "plan_hash: {}", plan.hash());
    s
}

fn from_label(plan: &Plan, id: Uuid) -> String {
    if plan.swept_former_roots.contains(&id) {
        format!("{id} (former root)")
    } else {
        id.to_string()
    }
}

// ---------------------------------------------------------------------------------------------
// The command

pub async fn run(ctx: &Context, args: &InstallArgs) -> Result<Exit> {
    let input = InstallInput::from_args(args)?;
    if let Some(h) = &args.expect_plan {
        if !h.starts_with("sha256:") || h.len() != 7 + 64 {
            return Err(Error::usage(format!(
                "--expect-plan '{h}' is not a plan hash (sha256:<64 hex digits>, from a dry run)"
            )));
        }
    }
    // --provision needs the platform and its token before anything is changed.
    let platform = if args.provision {
        Some(provision::platform_for(args.platform_url.as_deref())?)
    } else {
        None
    };
    let url = ctx.url()?;
    let sb = SecretBox::from_env();
    let out = &ctx.out;
    if input.model.is_some() && !input.provision {
        // An invalid key is exit 2 (production without a key exit 3) before connecting.
        sb.write_version()?;
    }
    let mut conn = db::connect(&url, &ctx.settings).await?;
    db::ensure_compatible(&mut conn).await?;

    // 1. Plan read-only: a consistent snapshot, no locks, no writes.
    let reviewed = {
        let mut tx = db::begin_read_only(&mut conn, &ctx.settings).await?;
        let p = plan(&mut tx, &input, &sb, Orgctl::Probe).await?;
        warn_chains(out, &mut tx, &p).await?;
        if p.writes_model() {
            warn_direct_model(out, &p);
        }
        let dry = if args.dry_run && args.provision {
            let state = provision::agent_state(&mut tx, p.agent.id).await?;
            Some(provision::ProvisionResult {
                final_status: state.and_then(|s| s.status),
                ..provision::ProvisionResult::skipped("dry-run")
            })
        } else {
            None
        };
        tx.rollback().await?;
        (p, dry)
    };
    let (reviewed, dry_provision) = reviewed;
    if reviewed.writes_model() {
        if let Some(w) = sb.plaintext_warning("the agent's MODEL secret") {
            out.warn(&w);
        }
    }

    if args.dry_run {
        render(
            out,
            &reviewed,
            true,
            false,
            dry_provision.as_ref().map(|p| (p, None)),
        )?;
        if let Some(e) = reviewed.refusal() {
            return Err(e);
        }
        if let Some(h) = &args.expect_plan {
            if *h != reviewed.hash() {
                return Err(Error::refused(format!(
                    "the plan differs from the expected one ({h}); it is now {}",
                    reviewed.hash()
                )));
            }
        }
        return Ok(if args.detailed_exitcode && reviewed.changed() {
            Exit::Pending
        } else {
            Exit::Ok
        });
    }

    if let Some(h) = &args.expect_plan {
        if *h != reviewed.hash() {
            // Not a dry run and nothing applied: "dry_run": false, "changed": false, exit 3.
            render(out, &reviewed, false, false, None)?;
            return Err(Error::refused(format!(
                "the plan differs from the reviewed one ({h} expected, {} now); nothing was changed: review the diff above and rerun",
                reviewed.hash()
            )));
        }
    }
    if let Some(e) = reviewed.refusal() {
        return Err(e);
    }
    if !reviewed.changed() {
        return finish(
            ctx,
            args,
            &input,
            &mut conn,
            &reviewed,
            false,
            platform.as_ref(),
        )
        .await;
    }

    // 2. Show and confirm. The locks are not held while a human reads.
    let asked = !ctx.yes;
    if asked && out.interactive() {
        crate::output::stderr(&render_text(out, &reviewed, true, false, reviewed.model));
    }
    out.confirm(&format!("Apply this plan to {}?", url.target()), ctx.yes)?;

    // 3. Apply: lock, re-plan with the same code, execute exactly that plan, verify, commit.
    // Only the reviewed plan's hash is needed from here on; free the plan itself.
    let reviewed_hash = reviewed.hash();
    drop(reviewed);
    let db::Begun { mut tx, tail, .. } =
        db::begin_change_on(&mut conn, &url, &ctx.settings, &plan_tail(&input)).await?;
    let current = lock_and_plan(&mut tx, &input, &sb, tail).await?;
    if let Some(e) = current.refusal() {
        return Err(e);
    }
    if !current.changed() {
        tx.rollback().await?;
        out.info("Another run installed the platform agent in the meantime.");
        return finish(
            ctx,
            args,
            &input,
            &mut conn,
            &current,
            false,
            platform.as_ref(),
        )
        .await;
    }
    // What a human confirmed or change control approved is exactly what gets applied.
    let strict = args.expect_plan.is_some() || asked;
    if strict && current.hash() != reviewed_hash {
        tx.rollback().await?;
        render(out, &current, false, false, None)?;
        return Err(Error::refused(format!(
            "the tenant changed after the plan was reviewed ({reviewed_hash} reviewed, {} now); nothing was changed: review the new diff and rerun",
            current.hash()
        )));
    }
    execute(&mut tx, &current, &input, &sb, Changes::default()).await?;
    let txid = db::audit_checked(
        &mut tx,
        "install-platform-agent",
        &audit_args(&input, &current),
        "applied",
        Some(verification(&current)),
    )
    .await?;
    let committed = db::commit_guarded(tx, &url, &ctx.settings, &db::Evidence::Audit(txid)).await?;
    if let Some(note) = committed.note() {
        out.info(note);
    }
    finish(
        ctx,
        args,
        &input,
        &mut conn,
        &current,
        true,
        platform.as_ref(),
    )
    .await
}

/// After the commit (or when there was nothing to change): with --provision, bring the agent to
/// life (SPEC §9), then render the result with the provision outcome.
async fn finish(
    ctx: &Context,
    args: &InstallArgs,
    input: &InstallInput,
    conn: &mut PgConnection,
    plan: &Plan,
    applied: bool,
    platform: Option<&Platform>,
) -> Result<Exit> {
    let out = &ctx.out;
    let Some(platform) = platform else {
        render(out, plan, false, applied, None)?;
        return Ok(Exit::Ok);
    };
    // Post-commit work: a Ctrl-C lets it report what it did (exit 130) instead of cutting it.
    let _guard = crate::interrupt::CommitGuard::enter();
    let created = applied && plan.agent.action == AgentAction::Create;
    let ask = provision::Ask {
        org_id: input.org_id.as_deref(),
        model: input
            .model
            .as_ref()
            .filter(|_| plan.model_to_platform())
            .map(|m| m.as_str()),
    };
    let p = provision::provision(
        out,
        conn,
        &ctx.settings,
        platform,
        plan.agent.id,
        created,
        ask,
        provision::Wait::from_arg(args.wait),
        provision::ctrl_c(),
        if applied {
            "the install"
        } else {
            "the install (already in place, nothing changed)"
        },
    )
    .await;
    render(
        out,
        plan,
        false,
        applied,
        Some((&p.result, p.problem.as_ref())),
    )?;
    match p.problem {
        Some(e) => Err(e),
        None => Ok(Exit::Ok),
    }
}

/// orgctl writes MODEL itself (no `--provision`): the platform has not validated the value for
/// the agent's runtime, and the running agent picks it up only at its next provision; and a
/// MOLECULE_MODEL secret, when set, outranks it. Said on stderr, before anything is changed.
pub fn warn_direct_model(out: &Output, plan: &Plan) {
    out.warn(
        "MODEL is written straight to the database: the platform has not validated it for the agent's runtime, and it applies at the agent's next provision (pass --provision to have the platform validate and set it)",
    );
    if let Some(place) = plan.model_outranked {
        out.warn(&format!(
            "a {} secret is set {place}: it outranks MODEL, so the agent will not run the model given with --model",
            crate::platform::MODEL_OVERRIDE_KEY,
        ));
    }
}
