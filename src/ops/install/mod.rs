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
//!
//! The parts: [`InstallInput`] (here) is what an install is asked to do; `planned` holds the
//! [`Plan`] and its parts; `plan` computes it (and owns its SQL), with the agent's row in
//! `agent`, the row locks in `locks` and the MODEL secret's rule in `model`; `apply` executes
//! a plan exactly and checks it before the commit; `checks` are the warnings a plan comes
//! with. The command that runs it and renders it is `crate::commands::install`; the backfill
//! runs it per tenant.

mod agent;
mod apply;
mod checks;
mod locks;
mod model;
mod plan;
mod planned;

use uuid::Uuid;
use zeroize::Zeroizing;

use crate::error::{Error, Result};
use crate::platform::agent::{self as platform_agent, Identity};

pub use crate::platform::agent::DEFAULT_NAME as DEFAULT_AGENT_NAME;
pub use crate::platform::MODEL_KEY;
pub use apply::{audit_args, execute, verification, Changes};
pub use checks::{chain_warnings, token_ceiling_warning};
pub use model::direct_model_warnings;
pub use plan::{lock_and_plan, plan, plan_tail, Orgctl};
pub use planned::{AgentAction, ModelAction, Plan, PluginAction};

/// The install's SQL that is constant text, by name, for the test that prepares every
/// statement against the platform's schema. (Statements built at run time are not here: the
/// second read of the plan, the name clashes, and every change of [`execute`].)
pub(crate) const STATEMENTS: &[(&str, &str)] = &[
    ("install platform agents", plan::PLATFORM_AGENTS),
    ("install global model override", plan::GLOBAL_MODEL_OVERRIDE),
    ("install roots", plan::ROOTS),
    ("install agent by id", agent::AGENT_BY_ID),
    ("install kind by id", agent::KIND_BY_ID),
    ("install model secret", model::MODEL_SECRET),
    ("install lock rows", locks::LOCK_ROWS),
    ("install lock rows with id", locks::LOCK_ROWS_WITH_ID),
    ("install row lock holders", locks::ROW_LOCK_HOLDERS),
];

/// The longest agent name (`--name`, or one made from the org's name).
const MAX_NAME_LEN: usize = 200;
/// A model name (`--model`), as long as any the platform registers and then some.
const MAX_MODEL_LEN: usize = 200;

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
    /// `--provision` was given but nothing can provision this tenant's agent: its line in the
    /// tenants file names no platform URL. Only changes what a refusal advises.
    pub provision_without_url: bool,
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
            provision_without_url: false,
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
}

#[cfg(test)]
mod tests {
    use super::STATEMENTS;

    #[test]
    fn each_listed_statement_is_one_statement_with_a_name_of_its_own() {
        let mut names: Vec<&str> = STATEMENTS.iter().map(|(n, _)| *n).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), STATEMENTS.len());
        for (name, sql) in STATEMENTS {
            assert!(!sql.contains(';'), "{name} is more than one statement");
        }
    }
}
