//! `orgctl install-platform-agent`'s options.

use std::time::Duration;

use clap::Args;
use uuid::Uuid;

use super::shared::{parse_duration, PlatformArgs};

#[derive(Debug, Args, Clone)]
pub struct InstallArgs {
    /// Id of the platform agent, overriding the platform's own (a warning says so when it
    /// differs). Default: the existing kind='platform' row whatever its id, else the id the
    /// platform derives from --org-id (or the self-hosted id with --self-hosted).
    #[arg(long, value_name = "UUID")]
    pub id: Option<Uuid>,

    /// Name of the platform agent. Default on create: "<MOLECULE_ORG_NAME> Agent" when that
    /// variable is set, else "Org Concierge" (as the platform names it); an existing agent
    /// keeps its name unless this is given.
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,

    /// The org id the control plane knows this tenant by: a new agent gets the platform's id
    /// for it, uuidv5(URL namespace, "molecule-platform-agent:" + ID). Needed only when the
    /// tenant has no kind='platform' row yet.
    #[arg(long, env = "MOLECULE_ORG_ID", value_name = "ID")]
    pub org_id: Option<String>,

    /// The tenant is self-hosted (no org id): a new agent gets the platform's self-hosted id,
    /// ea3cfcf1-cb9c-53b4-90fd-c53123569c4a.
    #[arg(long)]
    pub self_hosted: bool,

    /// Bring back a removed (deleted) platform agent: status offline, root, kind platform.
    /// Without it a removed agent is refused (exit 3), as the platform leaves it alone.
    #[arg(long)]
    pub revive: bool,

    /// The agent's model, a model registered for its runtime. With --provision it goes to the
    /// platform, which validates it (a refusal is exit 3, MODEL unchanged) and sets MODEL;
    /// without, orgctl writes the MODEL secret itself, unvalidated, and it applies at the next
    /// provision (a MOLECULE_MODEL secret outranks it; orgctl warns about both).
    #[arg(long, value_name = "MODEL")]
    pub model: Option<String>,

    /// Proceed even though the agent has no MODEL secret and this run does not provision it
    /// (the platform marks an agent that registers without MODEL failed). Not needed with
    /// --provision: the platform seeds MODEL when it provisions the agent.
    #[arg(long)]
    pub allow_missing_model: bool,

    /// Show the plan and change nothing (read-only: no locks, no writes).
    #[arg(long)]
    pub dry_run: bool,

    /// With --dry-run: exit 4 when changes are pending, 0 when there is nothing to do.
    #[arg(long, requires = "dry_run")]
    pub detailed_exitcode: bool,

    /// Refuse (exit 3) unless the plan computed now has this plan_hash (from a reviewed dry run).
    #[arg(long, value_name = "HASH")]
    pub expect_plan: Option<String>,
    /// After the commit, ask the platform to provision the agent through its own route
    /// (POST {URL}/admin/org/platform-agent/ensure with MOLECULE_ADMIN_TOKEN) when nothing runs
    /// or starts it: an agent this run created, or one that is offline, failed or has no
    /// status. Never when it is online or degraded (a running root is never restarted), nor
    /// provisioning or awaiting_agent (the platform is starting it), nor removed, paused,
    /// hibernated, hibernating or on an external runtime.
    #[arg(long)]
    pub provision: bool,

    /// With --provision: watch the agent's status (read-only, about once a second) for up to
    /// DUR (default: the platform's provisioning deadline for the agent's runtime, 30m for
    /// hermes, else 12m); exit 0 when it is online, 1 when the platform marks it failed (its
    /// last error is shown), when it is hibernating or hibernated, or when DUR passes.
    /// provisioning and awaiting_agent are waited through. The change stays committed.
    #[arg(long, value_name = "DUR", value_parser = parse_duration, requires = "provision",
          num_args = 0..=1)]
    pub wait: Option<Option<Duration>>,

    #[command(flatten)]
    pub platform: PlatformArgs,
}
