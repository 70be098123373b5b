//! `orgctl backfill …`: install, roll back and report across a fleet of tenants.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand};

use super::shared::{parse_duration, ShardArgs, AFTER_HELP, AFTER_HELP_PENDING};

#[derive(Debug, Subcommand)]
pub enum BackfillCommand {
    /// Install the platform agent on every tenant in a tenants file.
    ///
    /// Each tenant runs install-platform-agent in its own transaction that first snapshots every
    /// row it changes into the tenant's `orgctl` schema, then applies, verifies and commits; a
    /// failing tenant rolls back alone and the others carry on. The run id is printed first (on
    /// stderr); give it again with --run-id to resume. Statuses: applied, skipped (already
    /// installed, or done under this run id), failed, pending (dry run), not_started (Ctrl-C or
    /// a failed canary). Exit 0 when every tenant applied or was skipped (a dry run: when every
    /// tenant could be planned; with --detailed-exitcode 4 when any is pending), 1 otherwise, 130 on
    /// Ctrl-C (no new tenant starts; in-flight ones finish or roll back; the summary prints).
    ///
    /// Example: orgctl backfill run --tenants fleet.txt --shard 2/8 --provision --yes
    ///
    /// A tenant with no kind='platform' row gets the platform's id for its agent: from the
    /// org_id=ID field of its line, or the self-hosted id for a line marked self-hosted (else
    /// from --org-id / --self-hosted); a tenant with neither fails
    /// rather than get an invented id. A removed agent fails the tenant (refused).
    ///
    /// With --provision, each tenant whose line carries a platform URL (third field) gets its
    /// agent provisioned after its commit through the platform's own route (MOLECULE_ADMIN_TOKEN
    /// is the bearer, MOLECULE_ORG_ID the org header), which validates and sets --model and
    /// seeds MODEL when none is given, and with --wait watched until online; the summary and
    /// report show each tenant's provision result, and a provision that fails or times out
    /// makes the exit 1 (the tenant stays committed).
    #[command(after_long_help = AFTER_HELP_PENDING)]
    Run(BackfillRunArgs),
    /// Restore tenants to the state snapshotted by a run.
    ///
    /// Per tenant in one transaction: re-parented roots, moved anchors, merged allowlist rows,
    /// the MODEL secret and the agent go back exactly as they were. Rows changed since the run,
    /// or new rows hanging off the agent, are drift: that tenant is refused (exit 3) with the
    /// rows named, unless --force. A second rollback changes nothing. A root that would go back
    /// beside a live root of its name is refused even with --force (rename one first).
    ///
    /// A created agent that has lived is never deleted: with --force it is soft-deleted as the
    /// platform deletes its agent (status 'removed', kind still 'platform'). The platform's own
    /// installer (its boot, the control plane's ensure) can redo the install afterwards: see
    /// the README's "Durable rollback".
    ///
    /// Before commit every restored row is compared with its snapshot: a column a platform
    /// trigger rewrote (such as updated_at) is reported as not restored (warning, exit 0);
    /// any other difference fails the tenant (exit 1) and changes nothing there.
    ///
    /// Example: orgctl backfill rollback --run-id bf-20250101T120000Z-1a2b3c4d --tenants fleet.txt --dry-run
    #[command(after_long_help = AFTER_HELP)]
    Rollback(BackfillRollbackArgs),
    /// Show each tenant's state under a run (read-only).
    ///
    /// applied, skipped, failed, rolled_back or never_reached, read from each tenant's own
    /// `orgctl` tables; unknown (exit 1) when a tenant cannot be read. Exit 0 otherwise, unless
    /// --check: then 1 unless every tenant is applied or skipped (a CI gate). A run id that no
    /// selected tenant knows is exit 1, listing the run ids they know, newest first.
    ///
    /// Examples:
    ///   orgctl backfill status --run-id change-1234 --tenants fleet.txt
    ///   orgctl backfill status --run-id change-1234 --tenants fleet.txt --check
    ///   orgctl backfill status --run-id change-1234 --tenants fleet.txt -o json | jq .totals
    #[command(after_long_help = AFTER_HELP, verbatim_doc_comment)]
    Status(BackfillStatusArgs),
}

#[derive(Debug, Args, Clone)]
pub struct BackfillRunArgs {
    /// Tenants file: one "NAME DATABASE_URL [PLATFORM_URL] [org_id=ID | self-hosted]" per
    /// line ('-' for stdin); blank lines and '#' comments are ignored. Names are letters,
    /// digits, '.', '_' or '-'. The platform URL is used by --provision; org_id=ID or
    /// self-hosted says which id a new agent gets on that tenant.
    #[arg(long, value_name = "FILE")]
    pub tenants: PathBuf,
    /// The org id for tenant lines that have neither org_id= nor self-hosted (meant for a
    /// single tenant: every org has its own id, so a warning names each extra tenant).
    #[arg(long, env = "MOLECULE_ORG_ID", value_name = "ID")]
    pub org_id: Option<String>,
    /// Tenant lines that have neither org_id= nor self-hosted are self-hosted.
    #[arg(long)]
    pub self_hosted: bool,
    /// Tenants in flight at once (one connection each).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=256))]
    pub concurrency: u32,
    #[command(flatten)]
    pub shard: ShardArgs,
    /// Run the first N selected tenants alone first; stop before the rest if any of them fails.
    #[arg(long, value_name = "N")]
    pub canary: Option<u32>,
    /// Run id (resume a run by giving its id again). Default: a new one, printed first.
    #[arg(long, value_name = "ID")]
    pub run_id: Option<String>,
    /// The agent's model on every tenant (registered for the agents' runtime). On a tenant
    /// provisioned through its platform (--provision and a platform URL) the platform validates
    /// and sets it; elsewhere orgctl writes MODEL itself, unvalidated (orgctl warns).
    #[arg(long, value_name = "MODEL")]
    pub model: Option<String>,
    /// Install even where the agent would have no MODEL secret and is not provisioned through
    /// its platform (which seeds MODEL).
    #[arg(long)]
    pub allow_missing_model: bool,
    /// Replace a different MODEL on tenants whose agent already exists. Without it such a
    /// tenant fails with a refusal naming this flag, so a rerun with another --model never
    /// silently changes the model of agents that are already running.
    #[arg(long, requires = "model")]
    pub replace_model: bool,
    /// Plan every tenant read-only and report; change and create nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// With --dry-run: exit 4 when any tenant has pending changes, 0 when every tenant is
    /// already done (a tenant that could not be planned is still exit 1).
    #[arg(long, requires = "dry_run")]
    pub detailed_exitcode: bool,
    /// Write the summary as JSON to this file (run id, start and end, totals, every tenant).
    /// A FILE ending in .jsonl is written as JSON Lines as the run goes: one tenant per line
    /// as it finishes, then a summary line, so a killed run leaves a usable partial report.
    #[arg(long, value_name = "FILE")]
    pub report: Option<PathBuf>,
    /// After each tenant's commit, ask that tenant's platform (the third field of its line) to
    /// provision its agent through the platform's own route when nothing runs or starts it,
    /// as install-platform-agent --provision does; never when it is online, degraded,
    /// provisioning or awaiting_agent. A tenant without a platform URL is reported skipped,
    /// not failed.
    #[arg(long)]
    pub provision: bool,

    /// With --provision: per tenant, watch the agent for up to DUR (default: the platform's
    /// provisioning deadline for its runtime, 30m for hermes, else 12m) until it is online
    /// (the tenant's provision result says online, failed with the platform's last error, or
    /// the status at the deadline).
    #[arg(long, value_name = "DUR", value_parser = parse_duration, requires = "provision",
          num_args = 0..=1)]
    pub wait: Option<Option<Duration>>,
}

#[derive(Debug, Args, Clone)]
pub struct BackfillRollbackArgs {
    /// The run to roll back (a run id no selected tenant knows is exit 1, listing the ones
    /// they know).
    #[arg(long, value_name = "ID")]
    pub run_id: String,
    /// Tenants file: one "NAME DATABASE_URL" per line ('-' for stdin).
    #[arg(long, value_name = "FILE")]
    pub tenants: PathBuf,
    #[command(flatten)]
    pub shard: ShardArgs,
    /// Only these tenants (repeatable).
    #[arg(long, value_name = "NAME")]
    pub tenant: Vec<String>,
    /// Roll back despite drift; new rows go to the oldest former root (name clashes are still
    /// refused).
    #[arg(long)]
    pub force: bool,
    /// Show what would be restored and the drift; change nothing.
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Debug, Args, Clone)]
pub struct BackfillStatusArgs {
    /// The run to report on (a run id no selected tenant knows is exit 1, listing the ones
    /// they know).
    #[arg(long, value_name = "ID")]
    pub run_id: String,
    /// Tenants file: one "NAME DATABASE_URL" per line ('-' for stdin).
    #[arg(long, value_name = "FILE")]
    pub tenants: PathBuf,
    #[command(flatten)]
    pub shard: ShardArgs,
    /// A gate for CI: exit 1 unless every selected tenant is applied or skipped under the run
    /// (failed, rolled_back and never_reached tenants are named in the error).
    #[arg(long)]
    pub check: bool,
}
