//! The platform agent as the platform itself installs it: its id, the row it inserts, what a
//! re-install sets and preserves, and the plugin it declares on it. orgctl writes exactly these
//! values, so the platform's own boot or ensure finds nothing to undo.

use uuid::Uuid;

use crate::error::{Error, Result};

/// The id of the agent on a tenant the control plane knows: `uuidv5(NAMESPACE_URL, this +
/// trim(org id))`.
pub const ORG_AGENT_ID_PREFIX: &str = "molecule-platform-agent:";

/// The name hashed (under NAMESPACE_URL) for the agent of a self-hosted tenant.
#[cfg(test)]
pub const SELF_HOSTED_AGENT_NAME: &str = "molecule:self-hosted:platform-agent";

/// `uuidv5(NAMESPACE_URL, "molecule:self-hosted:platform-agent")`.
pub const SELF_HOSTED_AGENT_ID: Uuid = uuid::uuid!("ea3cfcf1-cb9c-53b4-90fd-c53123569c4a");

/// The name of a new agent when the org's name is not known.
pub const DEFAULT_NAME: &str = "Org Concierge";

/// The runtime of a new agent when `MOLECULE_DEFAULT_RUNTIME` is not set.
pub const DEFAULT_RUNTIME: &str = "hermes";

/// The template of every platform agent (set on insert and on every re-install).
pub const TEMPLATE: &str = "platform-agent";

/// The status a new agent gets: nothing is starting it yet. (A `provisioning` row with no
/// container is turned `failed` by the platform's sweep after 12 to 30 minutes.)
pub const INITIAL_STATUS: &str = "offline";

/// The status of a deleted (tombstoned) agent: the platform leaves such a row alone.
pub const REMOVED_STATUS: &str = "removed";

/// The plugin the platform declares on its agent, in the same transaction as the agent row.
pub const MCP_PLUGIN: &str = "molecule-ai-plugin-molecule-platform-mcp";

/// Where the platform says that plugin comes from (refreshed on every install).
pub const MCP_PLUGIN_SOURCE: &str =
    "gitea://molecule-ai/molecule-ai-plugin-molecule-platform-mcp#main";

/// Rows of `workspace_declared_plugins` (alias `x`) other than [`MCP_PLUGIN`]: a constant
/// predicate for counting the references to an agent apart from the plugin row an install
/// declared on it.
pub const NOT_MCP_PLUGIN: &str = "x.plugin_name <> 'molecule-ai-plugin-molecule-platform-mcp'";

/// The environment the platform reads for the org's name and a new agent's runtime.
pub const ORG_NAME_ENV: &str = "MOLECULE_ORG_NAME";
pub const DEFAULT_RUNTIME_ENV: &str = "MOLECULE_DEFAULT_RUNTIME";

/// The longest org id orgctl accepts (the platform's are UUIDs; this only bounds input).
const MAX_ORG_ID_LEN: usize = 200;

/// How the tenant's agent id is derived when no `kind='platform'` row exists yet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Identity {
    /// A tenant of the control plane: its org id (trimmed).
    Org(String),
    /// A self-hosted tenant, declared so by the operator.
    SelfHosted,
    /// Neither: orgctl cannot know the platform's id and must not invent one.
    Unknown,
}

impl Identity {
    /// The platform's id for a new agent, when it can be known.
    pub fn agent_id(&self) -> Option<Uuid> {
        match self {
            Identity::Org(org) => Some(org_agent_id(org)),
            Identity::SelfHosted => Some(SELF_HOSTED_AGENT_ID),
            Identity::Unknown => None,
        }
    }

    /// How the id was derived, for the plan.
    pub fn describe(&self) -> String {
        match self {
            Identity::Org(org) => format!("the platform's id for org id {org}"),
            Identity::SelfHosted => "the platform's self-hosted id".to_string(),
            Identity::Unknown => "no id".to_string(),
        }
    }
}

/// The agent id the platform uses on a tenant with this org id.
pub fn org_agent_id(org_id: &str) -> Uuid {
    Uuid::new_v5(
        &Uuid::NAMESPACE_URL,
        format!("{ORG_AGENT_ID_PREFIX}{}", org_id.trim()).as_bytes(),
    )
}

/// An org id as given (`--org-id`, `MOLECULE_ORG_ID`, a tenants-file field), trimmed as the
/// platform trims it. `what` names the source in the error.
pub fn check_org_id(raw: &str, what: &str) -> Result<String> {
    let t = raw.trim();
    if t.is_empty() {
        return Err(Error::usage(format!(
            "{what} must not be empty (for a self-hosted tenant declare it self-hosted instead)"
        )));
    }
    if t.chars().count() > MAX_ORG_ID_LEN {
        return Err(Error::usage(format!(
            "{what} is longer than {MAX_ORG_ID_LEN} characters"
        )));
    }
    if t.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(Error::usage(format!(
            "{what} must not contain spaces or control characters"
        )));
    }
    Ok(t.to_string())
}

/// The identity from an org id and the self-hosted declaration (both given is a usage error:
/// a tenant is one or the other).
pub fn identity(org_id: Option<String>, self_hosted: bool, what: &str) -> Result<Identity> {
    match (org_id, self_hosted) {
        (Some(_), true) => Err(Error::usage(format!(
            "{what} and self-hosted are both given: a tenant of the control plane has an org id, a self-hosted tenant has none; give one of them"
        ))),
        (Some(o), false) => Ok(Identity::Org(o)),
        (None, true) => Ok(Identity::SelfHosted),
        (None, false) => Ok(Identity::Unknown),
    }
}

/// The name of a new agent: `"<org name> Agent"` when the org's name is known, else
/// [`DEFAULT_NAME`].
pub fn default_name(org_name: Option<&str>) -> String {
    match org_name.map(str::trim).filter(|n| !n.is_empty()) {
        Some(n) => format!("{n} Agent"),
        None => DEFAULT_NAME.to_string(),
    }
}

/// The runtime of a new agent: `MOLECULE_DEFAULT_RUNTIME` when set (trimmed, non-empty), else
/// [`DEFAULT_RUNTIME`].
pub fn runtime(default_runtime: Option<&str>) -> String {
    match default_runtime.map(str::trim).filter(|r| !r.is_empty()) {
        Some(r) => r.to_string(),
        None => DEFAULT_RUNTIME.to_string(),
    }
}

/// A non-empty environment variable, trimmed.
pub fn env(name: &str) -> Option<String> {
    std::env::var(name)
        .ok()
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Literal ids computed independently with python3:
    /// `uuid.uuid5(uuid.NAMESPACE_URL, "molecule:self-hosted:platform-agent")` and
    /// `uuid.uuid5(uuid.NAMESPACE_URL, "molecule-platform-agent:acme-org")`.
    #[test]
    fn ids_are_the_platforms() {
        assert_eq!(
            SELF_HOSTED_AGENT_ID.to_string(),
            "ea3cfcf1-cb9c-53b4-90fd-c53123569c4a"
        );
        assert_eq!(
            Uuid::new_v5(&Uuid::NAMESPACE_URL, SELF_HOSTED_AGENT_NAME.as_bytes()),
            SELF_HOSTED_AGENT_ID
        );
        assert_eq!(
            org_agent_id("acme-org").to_string(),
            "9c0ec666-dadf-5636-ae5f-1c26fef421b3"
        );
        // Trimmed, as the platform trims MOLECULE_ORG_ID.
        assert_eq!(org_agent_id("  acme-org\n"), org_agent_id("acme-org"));
    }

    #[test]
    fn the_predicate_names_the_plugin() {
        assert!(NOT_MCP_PLUGIN.ends_with(&format!("'{MCP_PLUGIN}'")));
    }

    #[test]
    fn names_and_runtimes() {
        assert_eq!(default_name(Some("Acme")), "Acme Agent");
        assert_eq!(default_name(Some("  ")), "Org Concierge");
        assert_eq!(default_name(None), "Org Concierge");
        assert_eq!(runtime(None), "hermes");
        assert_eq!(runtime(Some(" claude-code ")), "claude-code");
    }

    #[test]
    fn org_ids_are_checked_and_identity_is_one_or_the_other() {
        assert_eq!(
            check_org_id(" o-1 ", "--org-id").ok().as_deref(),
            Some("o-1")
        );
        for bad in ["", "  ", "a b", "a\u{1b}b"] {
            let e = check_org_id(bad, "--org-id").err();
            assert!(
                e.is_some_and(|e| e.exit == crate::error::Exit::Usage),
                "{bad:?}"
            );
        }
        assert!(identity(Some("o".into()), true, "x").is_err());
        assert_eq!(identity(None, false, "x").ok(), Some(Identity::Unknown));
        assert_eq!(identity(None, true, "x").ok(), Some(Identity::SelfHosted));
    }
}
