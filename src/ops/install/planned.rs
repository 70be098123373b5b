//! The plan of an install and its parts: what it does to the agent, the roots, their anchors,
//! the MODEL secret and the declared plugin; the refusal it would meet; its fingerprint.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;
use sha2::Digest;
use uuid::Uuid;

use crate::error::Error;
use crate::platform::agent as platform_agent;
use crate::platform::tree::{self, NameClash};

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
    /// orgctl (or the platform) writes the secret.
    pub fn writes(self) -> bool {
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
    /// Live workspaces the install would put beside a live namesake (see
    /// `plan::name_clashes`).
    pub name_clashes: Vec<NameClash>,
    /// The declared plugin row the platform keeps on its agent.
    pub plugin: PluginAction,
    /// `--model` goes to the platform's ensure (not written by orgctl): [`super::InstallInput::provision`].
    pub model_via_platform: bool,
    /// `--provision` will ask the platform to provision this agent (it is new, or nothing runs
    /// or starts it), so the platform seeds a missing MODEL.
    pub ensure: bool,
    /// [`super::InstallInput::provision_without_url`]: what a missing MODEL's refusal advises.
    pub provision_without_url: bool,
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
            let provision = if self.provision_without_url {
                "or give this tenant's line its platform URL (the third field) so that --provision acts on it (the platform seeds MODEL when it provisions the agent)"
            } else {
                "or --provision (the platform seeds MODEL when it provisions the agent)"
            };
            return Some(Error::refused(format!(
                "{which} would have no MODEL secret and the platform would mark it failed when it registers: pass --model MODEL, {provision}, or --allow-missing-model to install without it"
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
    pub fn actions(&self) -> Vec<String> {
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
