//! install-platform-agent: make the platform agent the single root of the org.
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
use crate::platform::tree::{self, NameClash};
use crate::Context;

pub use crate::platform::agent::DEFAULT_NAME as DEFAULT_AGENT_NAME;
use crate::platform::agent::{self as platform_agent, Identity};
pub use crate::platform::MODEL_KEY;
const MAX_NAME_LEN: usize = 200;
/// A model name (`--model`), as long as any the platform registers and then some.
const MAX_MODEL_LEN: usize = 200;
/// Rows a table section lists before it summarises the rest (JSON always lists all).
const TABLE_ROWS: usize = 50;

/// The checked input of an install, shared by the command and the backfill.
#[derive(Clone)]
pub struct InstallInput {
    pub id: Option<Uuid>,
    pub name: Option<String>,
    pub model: Option<Zeroizing<String>>,
    pub allow_missing_model: bool,
    /// The org id the control plane knows the tenant by (trimmed): a new agent gets the
    /// platform's id for it.
    pub org_id: Option<String>,
    /// Declared self-hosted: a new agent gets the platform's self-hosted id.
    pub self_hosted: bool,
    /// Bring back a removed agent instead of refusing it.
    pub revive: bool,
    /// The org's name (`MOLECULE_ORG_NAME`): a new agent is named "<it> Agent".
    pub org_name: Option<String>,
    /// A new agent's runtime (`MOLECULE_DEFAULT_RUNTIME`, else the platform's default).
    pub runtime: String,
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
            .field("self_hosted", &self.self_hosted)
            .field("revive", &self.revive)
            .field("org_name", &self.org_name)
            .field("runtime", &self.runtime)
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
            Some(m) if m.chars().count() > MAX_MODEL_LEN => {
                return Err(Error::usage(format!(
                    "--model is longer than {MAX_MODEL_LEN} characters: give a model name"
                )));
            }
            Some(m) if m.chars().any(|c| c.is_control()) => {
                return Err(Error::usage("--model must not contain control characters"));
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
            self_hosted: false,
            revive: false,
            org_name: None,
            runtime: platform_agent::runtime(None),
            provision: false,
        })
    }

    /// The tenant's identity (`--org-id` and `--self-hosted` are one or the other), and a new
    /// agent's runtime from the environment the platform reads (`MOLECULE_DEFAULT_RUNTIME`).
    pub fn with_identity(
        mut self,
        org_id: Option<&str>,
        self_hosted: bool,
        what: &str,
    ) -> Result<Self> {
        let org_id = org_id
            .map(|o| platform_agent::check_org_id(o, what))
            .transpose()?;
        // Checked now: both together is a usage error.
        platform_agent::identity(org_id.clone(), self_hosted, what)?;
        self.org_id = org_id;
        self.self_hosted = self_hosted;
        self.runtime = platform_agent::runtime(
            platform_agent::env(platform_agent::DEFAULT_RUNTIME_ENV).as_deref(),
        );
        Ok(self)
    }

    /// The org's name from the environment the platform reads (`MOLECULE_ORG_NAME`): a new
    /// agent is named "<it> Agent", checked as `--name` is.
    pub fn with_org_name_from_env(mut self) -> Result<Self> {
        self.org_name = platform_agent::env(platform_agent::ORG_NAME_ENV);
        if let Some(n) = &self.org_name {
            let name = platform_agent::default_name(Some(n));
            if name.chars().count() > MAX_NAME_LEN || name.chars().any(|c| c.is_control()) {
                return Err(Error::usage(format!(
                    "{} gives an agent name longer than {MAX_NAME_LEN} characters or with control characters",
                    platform_agent::ORG_NAME_ENV
                )));
            }
        }
        Ok(self)
    }

    /// How a new agent's id is derived.
    pub fn identity(&self) -> Identity {
        platform_agent::identity(self.org_id.clone(), self.self_hosted, "the tenant")
            .unwrap_or(Identity::Unknown)
    }

    pub fn from_args(args: &InstallArgs) -> Result<Self> {
        let mut input = Self::new(
            args.id,
            args.name.as_deref(),
            args.model.as_deref(),
            args.allow_missing_model,
        )?
        .with_identity(
            args.org_id.as_deref(),
            args.self_hosted,
            "--org-id (or MOLECULE_ORG_ID)",
        )?
        .with_org_name_from_env()?;
        input.revive = args.revive;
        input.provision = args.provision;
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
    pub template: Option<String>,
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
    /// The id is the platform's, derived from the tenant's identity (not --id, not an
    /// existing row).
    pub generated_id: bool,
    /// How the id of a new agent was found, for the plan ("" for an existing row).
    pub id_source: String,
    /// A new agent's runtime (what the platform inserts).
    pub runtime: String,
    /// The existing agent is removed and this install brings it back (`--revive`).
    pub revive: bool,
    pub prior: Option<AgentRow>,
}

/// What the install does to the platform MCP plugin declared on the agent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PluginAction {
    /// No row yet: insert it.
    Create,
    /// A row with another source: refresh its source.
    Update,
    Unchanged,
}

impl PluginAction {
    pub fn as_str(self) -> &'static str {
        match self {
            PluginAction::Create => "create",
            PluginAction::Update => "update",
            PluginAction::Unchanged => "unchanged",
        }
    }
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
    /// Live workspaces the install would put beside a live namesake (see [`name_clashes`]).
    pub name_clashes: Vec<NameClash>,
    /// The declared plugin row the platform keeps on its agent.
    pub plugin: PluginAction,
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
            || self.plugin != PluginAction::Unchanged
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
        if let Some(e) = clash_refusal(self) {
            return Some(e);
        }
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
        let _ = writeln!(s, "orgctl-install-plan v2");
        let _ = writeln!(s, "agent {} {}", self.agent.action.as_str(), self.agent.id);
        if self.agent.action == AgentAction::Create {
            let _ = writeln!(s, "agent.name {}", self.agent.name);
            let _ = writeln!(s, "agent.runtime {}", self.agent.runtime);
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
        let _ = writeln!(
            s,
            "plugin {} {}",
            self.plugin.as_str(),
            platform_agent::MCP_PLUGIN
        );
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
        format!("Plan: {}.", self.actions().join(", "))
    }

    /// What the plan changes, one phrase per kind of change.
    fn actions(&self) -> Vec<String> {
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
                "move {t} token(s) ({} live, {} revoked or expired)",
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
        match self.plugin {
            PluginAction::Create => parts.push("declare the platform MCP plugin".to_string()),
            PluginAction::Update => {
                parts.push("refresh the platform MCP plugin's source".to_string())
            }
            PluginAction::Unchanged => {}
        }
        parts
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
    // One message, constant SQL: the platform agents and the roots (after `lead`, the row
    // locks, when given).
    let reads = if lead.is_empty() {
        db::simple_batch(conn, PLAN_READS).await?
    } else {
        match db::simple_batch(conn, &format!("{lead};\n{PLAN_READS}")).await {
            Ok(r) => r,
            Err(e) => return Err(lock_error(conn, input, e).await),
        }
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
    // Where a MOLECULE_MODEL secret outranks MODEL: the platform agents that have one, and global.
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
    let agent = resolve_agent(conn, input, platforms).await?;
    let reparented: Vec<RootMove> = roots.into_iter().filter(|r| r.id != agent.id).collect();

    // One statement for the rest of the plan: whether a derived id is taken (k 0), the
    // platform MCP plugin declared on the agent (k 6, its source), the roots
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
    let mut plugin_source: Option<String> = None;
    let mut former: Vec<Uuid> = Vec::new();
    let mut token_moves: Vec<TokenMove> = Vec::new();
    let mut allowlist_moves: Vec<AllowlistMove> = Vec::new();
    let mut merged: Vec<MergedRow> = Vec::new();
    let mut kept: BTreeMap<String, String> = BTreeMap::new();
    {
        let old = "(SELECT ids FROM old)::uuid[]";
        let scope = scope_cte(old, "$2");
        // Live as the platform counts it; the rest (revoked or expired) is the plan's "revoked".
        let live = crate::platform::tokens::live("");
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
        );
        let mut rows = db::query(&sql)
            .bind(&reparented_ids)
            .bind(agent.id)
            .bind(platform_agent::MCP_PLUGIN)
            .fetch(&mut *conn);
        while let Some(r) = rows.try_next().await? {
            match r.try_get::<i32, _>(0)? {
                0 => taken = r.try_get::<i64, _>(2)? != 0,
                5 => former.push(r.try_get(6)?),
                6 => plugin_source = Some(r.try_get::<String, _>(4)?),
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
            "the platform's id for a new platform agent ({}, {}) is already an ordinary workspace's; nothing was changed: check the org id, or pass --id",
            agent.id, agent.id_source
        )));
    }
    let plugin = match plugin_source.as_deref() {
        None => PluginAction::Create,
        Some(s) if s == platform_agent::MCP_PLUGIN_SOURCE => PluginAction::Unchanged,
        Some(_) => PluginAction::Update,
    };

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
    let name_clashes = name_clashes(conn, &agent, &reparented).await?;
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
        name_clashes,
        plugin,
        model_via_platform: input.provision && input.model.is_some(),
        ensure,
        model_outranked,
    })
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

/// The refusal for [`Plan::name_clashes`]: every pair, named.
fn clash_refusal(plan: &Plan) -> Option<Error> {
    if plan.name_clashes.is_empty() {
        return None;
    }
    let agent = plan.agent.id;
    let pairs: Vec<String> = plan
        .name_clashes
        .iter()
        .map(|c| {
            let name = crate::error::sanitize(&c.name);
            match c.parent {
                None => format!(
                    "the platform agent {agent} and the root {} \"{name}\" at the top level (the agent is written before the roots move under it)",
                    c.existing
                ),
                Some(_) => format!(
                    "the root {} and the agent's child {} \"{name}\" under the agent {agent}",
                    c.moving, c.existing
                ),
            }
        })
        .collect();
    let agent_named = plan.name_clashes.iter().any(|c| c.parent.is_none());
    Some(Error::refused(format!(
        "the install would give {} pair(s) of live workspaces the same name under one parent, which the platform does not allow ({}): {}; nothing was changed: rename one workspace of each pair{}, then rerun",
        plan.name_clashes.len(),
        tree::SIBLING_NAME_INDEX,
        pairs.join("; "),
        if agent_named {
            " (or give the agent another name with --name)"
        } else {
            ""
        }
    )))
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
/// agents (their template; whether each has a MOLECULE_MODEL secret,
/// [`crate::platform::MODEL_OVERRIDE_KEY`]; and its runtime, for whether `--provision` acts on
/// it), whether a global MOLECULE_MODEL secret is set, the roots (oldest first).
const PLAN_READS: &str = "SELECT id, name, parent_id, tier, status::text, template,
       EXISTS (SELECT 1 FROM workspace_secrets s
                WHERE s.workspace_id = workspaces.id AND s.key = 'MOLECULE_MODEL'),
       runtime
  FROM workspaces WHERE kind = 'platform' ORDER BY id;
SELECT EXISTS (SELECT 1 FROM global_secrets WHERE key = 'MOLECULE_MODEL');
SELECT id, name, status::text FROM workspaces WHERE parent_id IS NULL
  ORDER BY created_at NULLS LAST, id";

fn agent_row(r: &sqlx::postgres::PgRow) -> std::result::Result<AgentRow, sqlx::Error> {
    Ok(AgentRow {
        id: r.try_get(0)?,
        name: r.try_get(1)?,
        parent_id: r.try_get(2)?,
        tier: r.try_get(3)?,
        status: r.try_get(4)?,
        template: r.try_get(5)?,
    })
}

async fn resolve_agent(
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

    Ok(match row {
        None => AgentPlan {
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
        },
        Some(row) => {
            let removed = row.status.as_deref() == Some(platform_agent::REMOVED_STATUS);
            if removed && !input.revive {
                return Err(Error::refused(format!(
                    "the platform agent {} ('{}') is removed (a deleted agent, which the platform leaves alone); nothing was changed: pass --revive to bring it back (status offline, at the root), or leave it deleted",
                    row.id,
                    crate::error::sanitize(&row.name)
                )));
            }
            // What the platform's own re-install sets (kind, parent, template), what orgctl
            // sets on request (--name, --revive), and nothing else: status, runtime, tier,
            // broadcast and the name are the platform's once the agent exists.
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
                id_source: String::new(),
                runtime: input.runtime.clone(),
                revive: removed,
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
    let sql = format!(
        "SELECT id, name, parent_id, tier, status::text, template FROM workspaces {filter}"
    );
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
    match locked {
        Ok(()) => Ok(()),
        Err(e) => Err(lock_error(conn, input, e).await),
    }
}

/// [`lock_rows`] without `--id`: counted, not fetched (the locked ids are not needed).
const LOCK_ROWS: &str = "SELECT count(*) FROM (
        SELECT id FROM workspaces
         WHERE parent_id IS NULL OR kind = 'platform'
            OR id IN (SELECT workspace_id FROM orgctl.former_roots)
         ORDER BY id FOR UPDATE) l";

/// A lock timeout on the org's rows, said as such, naming the backends that hold them (the
/// timeout aborted the transaction: see [`row_lock_holders`]). Any other error as it is.
async fn lock_error(conn: &mut PgConnection, input: &InstallInput, err: Error) -> Error {
    if !err.lock_timeout {
        return err;
    }
    let held = match row_lock_holders(conn, input.id).await {
        Ok(h) if !h.is_empty() => format!(
            "held by {}",
            h.iter()
                .map(|b| format!("backend pid {b}"))
                .collect::<Vec<_>>()
                .join(" and ")
        ),
        // Ended in the meantime, or several sessions sharing a row lock (a multixact, which
        // names no single transaction): say so rather than guess.
        _ => "the session that held them has ended or could not be identified".to_string(),
    };
    Error {
        lock_timeout: true,
        ..Error::refused(format!(
            "timed out waiting for a lock on the org's root workspaces (--lock-timeout): {held}; retry when it is done or raise --lock-timeout"
        ))
    }
}

/// The backends whose open transactions hold (locked or changed) a workspace row that
/// [`lock_rows`] wanted, each as "PID (application 'A', user 'U', from ADDR)".
///
/// After the lock timeout the transaction is aborted and accepts no statement, and
/// `pg_blocking_pids` names blockers only while a wait lasts: so the transaction is rolled back
/// here (it changed nothing yet, and the caller fails anyway), the rows' `xmax` — the
/// transaction id of whoever locked or updated a row, while it runs — is matched to the live
/// transactions in `pg_locks` (every transaction holds the lock on its own id), and a fresh
/// empty transaction is begun so the caller's transaction handle rolls back as it expects. A
/// holder must also hold a lock on `workspaces` itself, so an xmax that is a multixact id
/// cannot be mistaken for an unrelated transaction. orgctl's own schema is not read: on a
/// tenant's first touch the rollback has just removed it.
async fn row_lock_holders(conn: &mut PgConnection, id: Option<Uuid>) -> Result<Vec<String>> {
    db::simple_batch(conn, "ROLLBACK").await?;
    let rows = db::query(
        "SELECT DISTINCT a.pid, coalesce(a.application_name, ''), coalesce(a.usename::text, ''),
                coalesce(host(a.client_addr), 'local')
           FROM workspaces w
           JOIN pg_locks x ON x.locktype = 'transactionid' AND x.granted
                          AND x.mode = 'ExclusiveLock' AND x.transactionid = w.xmax
           JOIN pg_locks r ON r.pid = x.pid AND r.locktype = 'relation' AND r.granted
                          AND r.relation = 'workspaces'::regclass
           JOIN pg_stat_activity a ON a.pid = x.pid
          WHERE (w.parent_id IS NULL OR w.kind = 'platform' OR w.id = $1)
            AND x.pid <> pg_backend_pid()
          ORDER BY a.pid
          LIMIT 5",
    )
    .bind(id)
    .fetch_all(&mut *conn)
    .await;
    // Whatever the answer, leave a transaction open for the caller's handle to roll back.
    let begun = db::simple_batch(conn, "BEGIN").await;
    let rows = rows?;
    begun?;
    rows.iter()
        .map(|r| {
            Ok(format!(
                "{} (application '{}', user '{}', from {})",
                r.try_get::<i32, _>(0)?,
                crate::error::sanitize(&r.try_get::<String, _>(1)?),
                crate::error::sanitize(&r.try_get::<String, _>(2)?),
                r.try_get::<String, _>(3)?
            ))
        })
        .collect()
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
    if plan.writes_model() && sb.key_set() {
        // Every write of a secret value passes the guard `secret set` passes: the key must open
        // the tenant's other encrypted values, or the platform could not read this one either
        // (the old key after a rotation is the common case). Under the tenant lock, so a write
        // that waited for a rekey sees the re-encrypted values.
        crate::rekey::ensure_key_matches_tenant(conn, sb, Some(agent.id), MODEL_KEY).await?;
    }
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
        // The row the platform inserts; on conflict what its re-install sets (kind, parent,
        // template), plus the name on --name and the status on --revive. Status, runtime,
        // tier and broadcast of an existing agent are left as they are.
        let (id, name, runtime, template) = (
            first.arg(Arg::Uuid(agent.id)),
            first.arg(Arg::Text(&agent.name)),
            first.arg(Arg::Text(&agent.runtime)),
            first.arg(Arg::Text(platform_agent::TEMPLATE)),
        );
        // A literal (orgctl's own constant), so it takes the column's type: the enum, or TEXT
        // on older tenants.
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
        first.add(
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
    if plan.plugin != PluginAction::Unchanged {
        let (id, plugin, source) = (
            first.arg(Arg::Uuid(agent.id)),
            first.arg(Arg::Text(platform_agent::MCP_PLUGIN)),
            first.arg(Arg::Text(platform_agent::MCP_PLUGIN_SOURCE)),
        );
        first.add(
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

/// Workspaces in a parent cycle or deeper than the platform's org-root lookup below a root are
/// outside every org: the install cannot re-parent them (they are not roots) and never walks
/// them, but it says so (`orgctl status` names them all). And re-parenting puts every old root
/// one level lower, so the dry run and apply warn, per depth limit of the platform, how many
/// workspaces will sit deeper below the agent than that limit after the install and what stops
/// working for them (one walk for all the checks; up to three rows named per warning).
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
            "{count} workspace(s) have a broken parent chain (a cycle, or deeper than {}) and stay outside the org: {}{}; see `orgctl status`",
            crate::org::MAX_DEPTH,
            named.join("; "),
            if count > rows.len() as i64 { "; …" } else { "" }
        ));
    }
    for (limit, beyond) in tree::DEPTH_LIMITS.iter().zip(check.beyond_after) {
        if beyond == 0 {
            continue;
        }
        let rows = crate::org::deeper_after(conn, &roots, *limit, 3).await?;
        let named: Vec<String> = rows
            .iter()
            .map(|(id, name, depth)| {
                format!("{id} \"{}\" ({depth} hops)", crate::error::sanitize(name))
            })
            .collect();
        let status = if limit.hops == crate::org::MAX_DEPTH {
            "; `orgctl status` will report them as broken"
        } else {
            ""
        };
        out.warn(&format!(
            "after the install, {beyond} workspace(s) sit deeper than {} hops below the agent: {}: {}{}{status}; make the org shallower (or move the deep branch up) to fix it",
            limit.hops,
            limit.beyond,
            named.join("; "),
            if beyond > rows.len() as i64 { "; …" } else { "" }
        ));
    }
    Ok(())
}

/// The platform refuses new tokens for an org that already has its ceiling of live tokens
/// (`ORG_TOKEN_MINT_CEILING`): when the live tokens an install moves onto the agent bring the
/// agent's org to it, the plan says so (a warning, never a refusal: the tokens exist either
/// way). Read-only; `None` when there is nothing to say. The backfill reports it per tenant.
pub async fn token_ceiling_warning(conn: &mut PgConnection, plan: &Plan) -> Result<Option<String>> {
    use crate::platform::tokens;
    let moved = plan.live_tokens_moved();
    if moved == 0 {
        return Ok(None);
    }
    let ceiling = match tokens::ceiling_from_env() {
        Ok(Some(c)) => c,
        Ok(None) => return Ok(None),
        Err(e) => {
            return Ok(Some(format!(
                "{}; the mint-ceiling check of this install was skipped",
                e.message
            )))
        }
    };
    // A new agent has no tokens yet (a token's org_id references an existing workspace), so
    // a fresh install pays no statement for the check.
    let on_agent = if plan.agent.action == AgentAction::Create {
        0
    } else {
        tokens::live_count(conn, plan.agent.id).await?
    };
    let after = on_agent + moved;
    if after < ceiling {
        return Ok(None);
    }
    Ok(Some(format!(
        "after this install the platform agent's org has {after} live token(s) ({moved} moved from the old roots, {on_agent} already on it), at or past the platform's mint ceiling ({}) of {ceiling}: the platform and `orgctl token mint` refuse new tokens for the org until live ones are revoked below it",
        tokens::CEILING_ENV
    )))
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

// ---------------------------------------------------------------------------------------------
// Rendering

#[derive(Serialize)]
struct JsonPlan<'a> {
    dry_run: bool,
    changed: bool,
    platform_agent: JsonAgent<'a>,
    reparented: Vec<JsonReparent<'a>>,
    /// What the re-parented roots lose on the platform; null when no root is re-parented.
    root_behaviour_lost: Option<JsonRootLoss>,
    anchor_moves: Vec<JsonMove>,
    allowlist_merged: Vec<JsonMerged<'a>>,
    model_secret: ModelAction,
    declared_plugin: JsonPlugin,
    plan_hash: String,
    /// Only with --provision.
    #[serde(skip_serializing_if = "Option::is_none")]
    provision: Option<&'a ProvisionResult>,
}

#[derive(Serialize)]
struct JsonAgent<'a> {
    id: Uuid,
    name: &'a str,
    action: AgentAction,
    /// The fields an update changes, old and new.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    changes: Vec<JsonChange<'a>>,
    /// On create: the row the platform inserts.
    #[serde(skip_serializing_if = "Option::is_none")]
    row: Option<JsonNewAgent<'a>>,
}

#[derive(Serialize)]
struct JsonChange<'a> {
    field: &'a str,
    old: &'a str,
    new: &'a str,
}

#[derive(Serialize)]
struct JsonNewAgent<'a> {
    /// How the id was found: the platform's id for the org id, its self-hosted id, or --id.
    id_source: &'a str,
    kind: &'static str,
    tier: i32,
    status: &'static str,
    runtime: &'a str,
    template: &'static str,
    broadcast_enabled: bool,
}

#[derive(Serialize)]
struct JsonPlugin {
    workspace_id: Uuid,
    plugin_name: &'static str,
    source_raw: &'static str,
    action: PluginAction,
}

#[derive(Serialize)]
struct JsonReparent<'a> {
    id: Uuid,
    name: &'a str,
    old_parent_id: Option<Uuid>,
    new_parent_id: Uuid,
}

#[derive(Serialize)]
struct JsonRootLoss {
    roots: usize,
    effect: &'static str,
}

/// What the re-parented roots lose (None when there are none): said in the plan, since the
/// platform's own installer does it without a word.
fn root_loss(plan: &Plan) -> Option<JsonRootLoss> {
    (!plan.reparented.is_empty()).then_some(JsonRootLoss {
        roots: plan.reparented.len(),
        effect: tree::FORMER_ROOT_LOSES,
    })
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
    render_after(out, plan, dry_run, applied, false, provision)
}

/// [`render`], told whether the whole plan was shown on the terminal before a confirmation
/// (`shown`): then an applied plan's text is one line of what was done, not the plan again.
fn render_after(
    out: &Output,
    plan: &Plan,
    dry_run: bool,
    applied: bool,
    shown: bool,
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
                changes: plan
                    .agent
                    .changes
                    .iter()
                    .map(|c| JsonChange {
                        field: c.field,
                        old: &c.old,
                        new: &c.new,
                    })
                    .collect(),
                row: (plan.agent.action == AgentAction::Create).then(|| JsonNewAgent {
                    id_source: &plan.agent.id_source,
                    kind: "platform",
                    tier: 0,
                    status: platform_agent::INITIAL_STATUS,
                    runtime: &plan.agent.runtime,
                    template: platform_agent::TEMPLATE,
                    broadcast_enabled: true,
                }),
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
            root_behaviour_lost: root_loss(plan),
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
            declared_plugin: JsonPlugin {
                workspace_id: plan.agent.id,
                plugin_name: platform_agent::MCP_PLUGIN,
                source_raw: platform_agent::MCP_PLUGIN_SOURCE,
                action: plan.plugin,
            },
            plan_hash: plan.hash(),
            provision: provision.map(|(p, _)| p),
        };
        return out.json(&doc);
    }
    let mut text = render_text(out, plan, dry_run, applied, model);
    if shown && applied {
        // The plan is on the terminal already (shown before the prompt): say what was done.
        text = format!(
            "Applied: {}.\nplan_hash: {}\n",
            plan.actions().join(", "),
            plan.hash()
        );
    }
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
            " (kind platform, tier 0, root, status {}, runtime {}, template {}, broadcast on; id: {})",
            platform_agent::INITIAL_STATUS,
            crate::error::sanitize(&agent.runtime),
            platform_agent::TEMPLATE,
            crate::error::sanitize(&agent.id_source),
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
        if let Some(loss) = root_loss(plan) {
            let _ = writeln!(
                s,
                "Note: {} ({} root(s) here; the platform's own installer does the same without saying so).",
                loss.effect, loss.roots
            );
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
    let _ = writeln!(
        s,
        "Declared plugin: {} ({}) — {}",
        platform_agent::MCP_PLUGIN,
        platform_agent::MCP_PLUGIN_SOURCE,
        plan.plugin.as_str()
    );
    let _ = writeln!(s, "\n{}", plan.summary());
    if plan.changed() {
        if dry_run {
            let _ = writeln!(s, "{}", crate::output::DRY_RUN_LINE);
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
    if let (Some(given), Some(derived)) = (input.id, input.identity().agent_id()) {
        if given != derived {
            out.warn(&format!(
                "--id {given} differs from the platform's id for this tenant ({derived}, {}): the platform adopts an existing agent whatever its id, but a control plane that installs or ensures with its own id expects {derived}",
                input.identity().describe()
            ));
        }
    }
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
        if let Some(w) = token_ceiling_warning(&mut tx, &p).await? {
            out.warn(&w);
        }
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
            Done::Nothing,
            platform.as_ref(),
        )
        .await;
    }

    // 2. Show and confirm. The locks are not held while a human reads.
    let asked = !ctx.yes;
    let shown = asked && out.interactive();
    if shown {
        crate::output::stderr(&crate::output::review_text(&render_text(
            out,
            &reviewed,
            true,
            false,
            reviewed.model,
        )));
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
            Done::Nothing,
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
    let txid = crate::audit::record_checked(
        &mut tx,
        "install-platform-agent",
        &audit_args(&input, &current),
        "applied",
        Some(verification(&current)),
    )
    .await?;
    let committed =
        db::commit_guarded(tx, &url, &ctx.settings, &crate::audit::AuditRow(txid)).await?;
    if let Some(note) = committed.note() {
        out.info(note);
    }
    finish(
        ctx,
        args,
        &input,
        &mut conn,
        &current,
        if shown {
            Done::AppliedAfterReview
        } else {
            Done::Applied
        },
        platform.as_ref(),
    )
    .await
}

/// What the command did, for the text printed after it.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Done {
    Nothing,
    Applied,
    /// Applied after the whole plan was shown on the terminal for a confirmation.
    AppliedAfterReview,
}

/// After the commit (or when there was nothing to change): with --provision, bring the agent to
/// life, then render the result with the provision outcome.
async fn finish(
    ctx: &Context,
    args: &InstallArgs,
    input: &InstallInput,
    conn: &mut PgConnection,
    plan: &Plan,
    done: Done,
    platform: Option<&Platform>,
) -> Result<Exit> {
    let out = &ctx.out;
    let applied = done != Done::Nothing;
    let shown = done == Done::AppliedAfterReview;
    let Some(platform) = platform else {
        render_after(out, plan, false, applied, shown, None)?;
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
    render_after(
        out,
        plan,
        false,
        applied,
        shown,
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
