//! Every clap definition of orgctl, in one place: the binary, the completions in
//! `completions/` and the man pages in `man/` are all generated from [`Cli`].
//!
//! Parsing happens in two stages: clap checks the shape of the command line here, and each
//! command family turns its arguments into a checked value (a plan input) before touching the
//! database.

use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgAction, Args, Parser, Subcommand, ValueEnum};
use uuid::Uuid;

/// The long help's tail: exit codes (`$four`: the line of exit 4, for the commands that accept
/// --detailed-exitcode, else "") and the environment.
macro_rules! after_help {
    ($four:literal) => {
        concat!(
            "Exit codes:\n  0    done, or nothing to do\n  1    failed (nothing changed unless the message says what did)\n  2    bad input or usage\n  3    refused by a guard or precondition (incompatible schema, lock held, missing MODEL,\n       drift on rollback, confirmation needed)\n",
            $four,
            "  130  interrupted\n\nEnvironment:\n  DATABASE_URL             tenant database when --database-url is not given\n  SECRETS_ENCRYPTION_KEY   AES-256 key for secret values (base64 of 32 bytes, or 32 raw bytes)\n  MOLECULE_ENV             prod/production: refuse to write secrets without a usable key\n  NO_COLOR                 disable colour\n  CI                       set (not false/0): never prompt; changes need --yes\n  PGHOST PGPORT PGUSER PGPASSWORD PGDATABASE PGSSLMODE PGSSLROOTCERT PGPASSFILE\n                           fill what the URL leaves out (the URL wins)"
        )
    };
}

const AFTER_HELP: &str = after_help!("");
/// For install-platform-agent and backfill run, which take --detailed-exitcode.
const AFTER_HELP_PENDING: &str =
    after_help!("  4    with --dry-run --detailed-exitcode: changes are pending\n");
/// For the top level: which commands exit 4.
const AFTER_HELP_TOP: &str = after_help!(
    "  4    with --dry-run --detailed-exitcode (install-platform-agent, backfill run): changes are pending\n"
);

/// `orgctl --version`: the version, the commit it was built from (build.rs) and the platform
/// schema it is tested against (`migrations/platform/schema-<date>.sql`). `-V` and the man
/// pages carry the version only, so they do not change with every commit.
pub const LONG_VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    "\ncommit: ",
    env!("ORGCTL_COMMIT"),
    "\nplatform schema: 2026-08 (tested), older tenants with TEXT workspaces.status"
);

/// Change the org hierarchy of an agent platform's tenant database, safely.
///
/// orgctl talks straight to the tenant's PostgreSQL. Every mutating command plans first with
/// read-only queries, shows the plan (--dry-run stops there), asks for confirmation on a
/// terminal (--yes in scripts), and applies exactly that plan in one transaction under a
/// per-tenant advisory lock, with an audit row in orgctl.audit_log.
#[derive(Debug, Parser)]
#[command(
    name = "orgctl",
    version,
    long_version = LONG_VERSION,
    propagate_version = true,
    after_long_help = AFTER_HELP_TOP,
    infer_subcommands = false
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,

    #[command(subcommand)]
    pub command: Command,
}

/// Options every command accepts, before or after the subcommand (listed apart from each
/// command's own options in its help).
#[derive(Debug, Args, Clone)]
#[command(next_help_heading = "Global options")]
pub struct GlobalArgs {
    /// PostgreSQL URL of the tenant database (postgres://user:pass@host:port/db?sslmode=...).
    /// The password is never printed.
    #[arg(
        long,
        env = "DATABASE_URL",
        hide_env_values = true,
        global = true,
        value_name = "URL"
    )]
    pub database_url: Option<String>,

    /// Output format on stdout: a human table, or exactly one JSON document.
    #[arg(
        long,
        short = 'o',
        value_enum,
        default_value_t = OutputFormat::Table,
        env = "ORGCTL_OUTPUT",
        global = true
    )]
    pub output: OutputFormat,

    /// Answer yes to confirmations. Required for changes when stdin/stderr is not a terminal.
    #[arg(long, short = 'y', global = true)]
    pub yes: bool,

    /// How long to wait for the tenant's advisory lock and for row locks (e.g. 500ms, 5s, 2m).
    #[arg(
        long,
        value_name = "DUR",
        default_value = "5s",
        value_parser = parse_duration,
        env = "ORGCTL_LOCK_TIMEOUT",
        global = true
    )]
    pub lock_timeout: Duration,

    /// Abort any single statement that runs longer than this (e.g. 30s, 10m); 0: no limit.
    /// Not given: the statement_timeout the server, database or role sets stays in force.
    #[arg(
        long,
        value_name = "DUR",
        value_parser = parse_duration,
        env = "ORGCTL_STATEMENT_TIMEOUT",
        global = true
    )]
    pub statement_timeout: Option<Duration>,

    /// What sits between orgctl and PostgreSQL. `transaction` (the default) is correct through
    /// any pooler and on a direct connection: statements are prepared unnamed, so nothing
    /// outlives a transaction on a pooled server connection. `session` or `none` (a session
    /// pooler, or a direct connection) lets orgctl cache named prepared statements instead.
    #[arg(
        long,
        value_enum,
        value_name = "MODE",
        default_value_t = PoolerMode::Transaction,
        env = "ORGCTL_POOLER",
        global = true
    )]
    pub pooler: PoolerMode,

    /// Only print errors on stderr.
    #[arg(long, short = 'q', global = true, conflicts_with = "verbose")]
    pub quiet: bool,

    /// More detail on stderr: -v the target, timings and the SQL statement count; -vv also
    /// each statement (time, rows, start of its text; never a bound value).
    #[arg(long, short = 'v', action = ArgAction::Count, global = true)]
    pub verbose: u8,

    /// Why this change is made (an incident or change number), stored on every audit row the
    /// command writes. Required for changes when ORGCTL_REQUIRE_REASON=1.
    #[arg(long, value_name = "TEXT", env = "ORGCTL_REASON", global = true)]
    pub reason: Option<String>,

    /// `--database-url` was given on the command line (not from `DATABASE_URL`): backfill,
    /// which takes its databases from the tenants file, refuses it. Set after parsing.
    #[arg(skip)]
    pub database_url_on_command_line: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PoolerMode {
    /// A transaction pooler (PgBouncer pool_mode=transaction, managed proxies), or unknown.
    Transaction,
    /// A session pooler (PgBouncer pool_mode=session).
    Session,
    /// A direct connection to PostgreSQL.
    None,
}

pub use crate::output::OutputFormat;

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Make the platform agent the single root of the org, moving every anchor to it.
    ///
    /// In one transaction: resolve or create the platform agent as the platform installs it
    /// (an existing kind='platform' row whatever its id; else a new row with the platform's
    /// id for --org-id, or its self-hosted id with --self-hosted: kind 'platform', parent_id
    /// NULL, tier 0, status offline, template platform-agent, broadcast on), declare its
    /// platform MCP plugin, re-parent every other root under it, move org_api_tokens.org_id and
    /// org_plugin_allowlist.org_id from every old root to it (merging allowlist collisions,
    /// keeping the earliest enabled_at), seed its MODEL secret (without --provision), and
    /// verify before commit. A second run changes nothing.
    ///
    /// With --provision the platform provisions the agent through its own route, validates
    /// --model for the agent's runtime and sets MODEL (seeding its default when no --model is
    /// given), so --model is optional there. MODEL is a model registered for the agent's
    /// runtime (the platform's default runtime is hermes); the platform refuses others (exit 3).
    ///
    /// The platform allows one live name per parent: an install that would put two live
    /// workspaces of the same name under one parent (the agent beside a root of its name, a
    /// root beside a child of the agent) is refused (exit 3), in a dry run too, naming the
    /// pairs. It warns when workspaces would sit deeper below the agent than the platform
    /// reaches (33 hops: the agent; 50: memory namespaces; 64: the org-root lookup), and the
    /// plan says that former roots lose root-only behaviour (org-wide memories, team namespaces).
    ///
    /// Examples:
    ///   orgctl install-platform-agent --dry-run --provision
    ///   orgctl install-platform-agent --dry-run --provision -o json --detailed-exitcode
    ///   orgctl install-platform-agent --provision --expect-plan sha256:… --yes
    ///   orgctl install-platform-agent --yes --provision --wait
    ///   orgctl install-platform-agent --yes --provision --model '<a model registered for your runtime>'
    ///
    /// Environment:
    ///   MOLECULE_ORG_ID           as --org-id (also sent as the X-Molecule-Org-Id header)
    ///   MOLECULE_ORG_NAME         a new agent is named "<MOLECULE_ORG_NAME> Agent"
    ///   MOLECULE_DEFAULT_RUNTIME  a new agent's runtime (default hermes)
    ///   MOLECULE_PLATFORM_URL     as --platform-url (for --provision)
    ///   MOLECULE_ADMIN_TOKEN      bearer token for the provision request (never printed)
    #[command(
        name = "install-platform-agent",
        after_long_help = AFTER_HELP_PENDING,
        verbatim_doc_comment
    )]
    InstallPlatformAgent(InstallArgs),

    /// Mint, list, revoke and anchor org API tokens.
    #[command(subcommand)]
    Token(TokenCommand),

    /// Set, delete and list workspace and global secrets; verify and rotate their key.
    #[command(subcommand)]
    Secret(SecretCommand),

    /// Install the platform agent across a fleet of tenant databases.
    #[command(subcommand)]
    Backfill(BackfillCommand),

    /// The org's invariants at a glance; exit 1 when any is broken (a CI gate).
    ///
    /// Read-only, one consistent snapshot, no locks. Shows the roots, the platform agent, tokens
    /// by anchor, secrets by encryption version, every check with its result, the command that
    /// fixes each broken one (To fix:), and what install-platform-agent would do now.
    ///
    /// Examples:
    ///   orgctl status
    ///   orgctl status -o json | jq '.checks[] | select(.ok | not) | {name, fix}'
    ///   orgctl status --limit 0        # counts only, in a CI gate
    #[command(after_long_help = AFTER_HELP, verbatim_doc_comment)]
    Status(StatusArgs),

    /// Who changed this tenant, when, why and how it ended; `audit verify` checks the chain.
    ///
    /// Lists orgctl.audit_log newest first: id, time (RFC 3339, UTC), OS user, database user,
    /// command, reason, outcome and arguments (never a secret value). Read-only; a tenant orgctl
    /// never changed has an empty log (exit 0) and nothing is created. A table on a terminal
    /// shows the newest 50 rows; JSON and a stdout that is not a terminal get every match,
    /// streamed (tab-separated lines past 10,000 rows).
    ///
    /// Examples:
    ///   orgctl audit --since 24h
    ///   orgctl audit --command secret --since 2026-12-01 --output json
    ///   orgctl audit verify
    #[command(
        after_long_help = AFTER_HELP,
        verbatim_doc_comment,
        args_conflicts_with_subcommands = true
    )]
    Audit(AuditArgs),

    /// A throwaway local PostgreSQL with a sample org, for trying orgctl out.
    #[command(subcommand)]
    Dev(DevCommand),

    /// Print a shell completion script to stdout.
    ///
    /// Example: orgctl completions bash > /etc/bash_completion.d/orgctl
    Completions {
        /// The shell to generate for.
        #[arg(value_enum)]
        shell: Shell,
    },
}

impl Command {
    /// Whether the command (as given) can change the tenant, so it writes audit rows and needs
    /// a reason under ORGCTL_REQUIRE_REASON=1. Dry runs, listings and checks change nothing.
    pub fn mutating(&self) -> bool {
        match self {
            Command::InstallPlatformAgent(a) => !a.dry_run,
            Command::Token(t) => !matches!(t, TokenCommand::List(_)),
            Command::Secret(s) => match s {
                SecretCommand::Set(a) => !a.dry_run,
                SecretCommand::Delete(a) => !a.dry_run,
                SecretCommand::Restart(a) => !a.dry_run,
                SecretCommand::Rekey(a) => !a.dry_run,
                SecretCommand::List(_) | SecretCommand::Verify(_) => false,
            },
            Command::Backfill(b) => match b {
                BackfillCommand::Run(a) => !a.dry_run,
                BackfillCommand::Rollback(a) => !a.dry_run,
                BackfillCommand::Status(_) => false,
            },
            Command::Status(_)
            | Command::Audit(_)
            | Command::Dev(_)
            | Command::Completions { .. } => false,
        }
    }
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Shell {
    Bash,
    Zsh,
    Fish,
}

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

    /// Base URL of the platform API, for --provision (needs MOLECULE_ADMIN_TOKEN).
    #[arg(
        long,
        env = "MOLECULE_PLATFORM_URL",
        value_name = "URL",
        hide_env_values = true
    )]
    pub platform_url: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Mint a full-admin org API token; the plaintext is printed once, alone, on stdout.
    ///
    /// The token is anchored to the org root: --org, else the platform agent, else the only
    /// root (with several roots and no agent, --org is required). Metadata and a copy-now
    /// warning go to stderr. Minting only adds a row, so it never asks for confirmation.
    ///
    /// Like the platform, it refuses (exit 3) when the org already has ORG_TOKEN_MINT_CEILING
    /// live tokens (not revoked, not expired; default 100, 0 or less turns it off), counted
    /// under the tenant lock; --over-ceiling mints past it anyway. Each mint also writes the
    /// platform's own org_token_audit_logs row ('mint', actor = created_by).
    ///
    /// Examples:
    ///   TOKEN=$(orgctl token mint --name ci)
    ///   orgctl token mint --name break-glass --output json
    ///   TOKEN=$(orgctl token mint --name "incident-1234" --created-by incident-1234 --over-ceiling)
    #[command(after_long_help = AFTER_HELP, verbatim_doc_comment)]
    Mint(TokenMintArgs),
    /// List live tokens (not revoked, not expired), newest first (never a hash or plaintext).
    ///
    /// Examples:
    ///   orgctl token list
    ///   orgctl token list --all --unanchored
    ///   orgctl token list --wide            # full ids and timestamps
    ///   orgctl token list --limit 0 --output json > tokens.json
    #[command(after_long_help = AFTER_HELP, verbatim_doc_comment)]
    List(TokenListArgs),
    /// Revoke a token by id or unique prefix, or every live token with a provenance label.
    ///
    /// Revocation sets revoked_at = now(); the platform rejects the token at once. Asks for
    /// confirmation on a terminal; --yes without one. An expired token is revoked too
    /// (harmless: it is dead already, and now for good). Each revoked token gets the
    /// platform's own org_token_audit_logs row ('revoke', actor orgctl:<OS user>). Revoking
    /// the platform agent's own credential (created_by system:concierge:…) warns first.
    ///
    /// Examples:
    ///   orgctl token revoke 3f9c2a1b --yes
    ///   orgctl token revoke --created-by admin-token
    #[command(after_long_help = AFTER_HELP, verbatim_doc_comment)]
    Revoke(TokenRevokeArgs),
    /// Anchor a token to the org root (or --org); moving an anchored token needs --force.
    ///
    /// With --stale instead of a token: move every stale anchor to the root in one
    /// transaction — each live token anchored to a non-root workspace, and any token on a
    /// former root (what `orgctl status` fails its tokens_on_root check on). Planned read-only
    /// first (--dry-run stops there), confirmed, audited, row counts checked.
    /// Asks for confirmation on a terminal; --yes without one.
    ///
    /// Examples:
    ///   orgctl token anchor 3f9c2a1b --yes
    ///   orgctl token anchor --stale --dry-run
    ///   orgctl token anchor --stale --yes
    #[command(after_long_help = AFTER_HELP, verbatim_doc_comment)]
    Anchor(TokenAnchorArgs),
}

#[derive(Debug, Args, Clone)]
pub struct TokenMintArgs {
    /// A name for the token (at most 100 bytes in UTF-8, as the platform counts).
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
    /// Anchor to this org root (a workspace with no parent). Default: the platform agent,
    /// else the only root.
    #[arg(long, value_name = "UUID")]
    pub org: Option<Uuid>,
    /// Provenance label (at most 200 characters). Default: orgctl:<OS user>. The platform's
    /// own labels are refused: admin-token, session, session:*, org-token:*, system:*.
    #[arg(long, value_name = "LABEL")]
    pub created_by: Option<String>,
    /// Break glass: mint even when the org already has ORG_TOKEN_MINT_CEILING live tokens.
    /// Both audit trails record that the ceiling was passed.
    #[arg(long)]
    pub over_ceiling: bool,
}

#[derive(Debug, Args, Clone)]
pub struct TokenListArgs {
    /// Include revoked and expired tokens (and the revoked_at and state columns).
    #[arg(long)]
    pub all: bool,
    /// Only tokens anchored to this workspace.
    #[arg(long, value_name = "UUID", conflicts_with = "unanchored")]
    pub org: Option<Uuid>,
    /// Only tokens with no org_id.
    #[arg(long)]
    pub unanchored: bool,
    /// Only tokens with exactly this created_by label (preview of revoke --created-by).
    #[arg(long, value_name = "LABEL")]
    pub created_by: Option<String>,
    /// Full ids and timestamps in the table (wide). The default table fits the terminal (80
    /// columns when its width is unknown): the prefix is the handle `revoke` and `anchor`
    /// take, org ids are cut to 8 characters, times to dates, long names end in '…'.
    /// JSON always has everything.
    #[arg(long)]
    pub wide: bool,
    /// Show at most N tokens (0 = all). Default: all, but 100 in the table on a terminal.
    ///
    /// Without --limit, --output json and a stdout that is not a terminal (a pipe, a file)
    /// get every match, streamed: scripts are never cut short. Only the human table on a
    /// terminal shows the newest 100 by default. When a limit cuts the list, stderr says so.
    #[arg(long, value_name = "N")]
    pub limit: Option<u64>,
}

#[derive(Debug, Args, Clone)]
#[command(group(clap::ArgGroup::new("which").required(true).args(["token", "created_by"])))]
pub struct TokenRevokeArgs {
    /// Token id, or a unique prefix of 4 to 8 characters (it may start with '-').
    ///
    /// A prefix that starts with '-' is still the token, with options before or after it
    /// (`revoke -Ab_cdef --yes`). In scripts put every option first and `--` before the
    /// prefix (`revoke --yes -- "$PREFIX"`), so no prefix can ever read as flags.
    #[arg(value_name = "ID|PREFIX", allow_hyphen_values = true)]
    pub token: Option<String>,
    /// Revoke every token with exactly this created_by label that is not revoked yet, live or
    /// expired (incident response); the label's tokens revoked earlier are reported as
    /// already revoked.
    #[arg(long, value_name = "LABEL")]
    pub created_by: Option<String>,
}

#[derive(Debug, Args, Clone)]
#[command(group(clap::ArgGroup::new("which_anchor").required(true).args(["token", "stale"])))]
pub struct TokenAnchorArgs {
    /// Token id, or a unique prefix of 4 to 8 characters (it may start with '-').
    ///
    /// A prefix that starts with '-' is still the token, with options before or after it
    /// (`anchor -Ab_cdef --yes`). In scripts put every option first and `--` before the
    /// prefix (`anchor --yes -- "$PREFIX"`), so no prefix can ever read as flags.
    #[arg(value_name = "ID|PREFIX", allow_hyphen_values = true)]
    pub token: Option<String>,
    /// Move every stale anchor to the root: live tokens on a non-root, any token on a former
    /// root.
    #[arg(long, conflicts_with_all = ["token", "force"])]
    pub stale: bool,
    /// With --stale: show what would move and change nothing (read-only, never asks).
    #[arg(long, requires = "stale")]
    pub dry_run: bool,
    /// Anchor to this root instead of the org root (the platform agent, else the only root).
    #[arg(long, value_name = "UUID")]
    pub org: Option<Uuid>,
    /// Move a token that is already anchored to another workspace.
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, Subcommand)]
pub enum SecretCommand {
    /// Set a secret; the value comes from stdin, --value-file, or a hidden prompt. Never argv
    ///
    /// Encrypts the value as the platform reads it (AES-256-GCM with SECRETS_ENCRYPTION_KEY,
    /// untrimmed: base64 of exactly 32 bytes — line breaks anywhere are skipped, spaces are
    /// not — or 32 raw bytes that are not base64; encryption_version 1; without a key the plain
    /// bytes, version 0, refused in production),
    /// upserts it, then restarts the workspaces the change affects:
    ///   WORKSPACE_ID  the workspace itself, only when a lookup proves it is not the platform
    ///                 agent (kind='platform'); an unprovable kind is not restarted either;
    ///                 like the platform's own restart, a NULL status, removed, paused and
    ///                 hibernated workspaces, runtimes external, kimi, kimi-cli and mock, and
    ///                 those under a paused ancestor are skipped
    ///   --global      every workspace that inherits the key (no workspace-level override),
    ///                 under the same rules, never the platform agent; each skip has a reason
    /// Restarts are POST {URL}/admin/workspaces/{id}/restart (the platform's admin route, with
    /// its own eligibility, 60 s debounce and coalescing) with MOLECULE_ADMIN_TOKEN as bearer,
    /// after the commit. Each answer is reported: restarted (202), noop (the platform did not
    /// restart it: debounced or ineligible; not a failure), gone (404 for a workspace the
    /// tenant has removed) or failed. Without a platform URL the restart plan is printed
    /// instead; a failed restart is exit 1 (the secret stays committed), naming each workspace.
    /// A vendor key (OPENAI_API_KEY, ANTHROPIC_API_KEY, CODEX_AUTH_JSON, ...) warns: the
    /// platform refuses it on workspaces whose model is platform-managed, which orgctl cannot
    /// tell from the tenant.
    /// Asks for confirmation on a terminal; needs --yes without one.
    ///
    /// Examples:
    ///   printf %s "$VALUE" | orgctl secret set 6f1c… OPENAI_API_KEY --yes
    ///   orgctl secret set --global LOG_LEVEL --value-file ./level.txt
    ///   orgctl secret set --global LOG_LEVEL --dry-run --output json
    ///
    /// Environment:
    ///   MOLECULE_PLATFORM_URL  as --platform-url
    ///   MOLECULE_ADMIN_TOKEN   bearer token for restarts (never printed)
    #[command(after_long_help = AFTER_HELP, verbatim_doc_comment)]
    Set(SecretSetArgs),
    /// Delete a secret (MODEL on the platform agent needs --force)
    ///
    /// Deletes the row, then restarts the affected workspaces under the same rules as set.
    /// Deleting MODEL from the platform agent is refused (exit 3) unless --force: the platform
    /// marks an agent without MODEL failed. The platform agent is never restarted. Deleting a
    /// key that does not exist changes nothing (exit 0).
    ///
    /// Examples:
    ///   orgctl secret delete 6f1c… OPENAI_API_KEY --yes
    ///   orgctl secret delete --global LOG_LEVEL --dry-run
    ///
    /// Environment:
    ///   MOLECULE_PLATFORM_URL  as --platform-url
    ///   MOLECULE_ADMIN_TOKEN   bearer token for restarts (never printed)
    #[command(after_long_help = AFTER_HELP, verbatim_doc_comment)]
    Delete(SecretDeleteArgs),
    /// List secret keys with scope and version (never values)
    ///
    /// For a workspace: its own secrets (scope workspace, marked when they override a global
    /// one) and the global secrets it inherits (scope inherited). With --global: every global
    /// secret. Read-only.
    #[command(after_long_help = AFTER_HELP, verbatim_doc_comment)]
    List(SecretListArgs),
    /// Replay the restarts of a secret without touching its value
    ///
    /// Plans the restarts exactly as set and delete do (the platform agent is never restarted;
    /// removed, paused and external workspaces are skipped), then calls only the workspaces that
    /// orgctl.audit_log does not record as restarted since orgctl last changed the key: the ones
    /// a failed, no-op, interrupted or never-sent restart left behind (reported as skipped:
    /// already-restarted otherwise). --all restarts every eligible workspace. Calls go to
    /// POST {URL}/admin/workspaces/{id}/restart; each becomes an audit row (command restart).
    /// Exit 1 names the workspaces still not restarted. Asks for confirmation on a terminal;
    /// needs --yes without one.
    ///
    /// Examples:
    ///   orgctl secret restart --global OPENAI_API_KEY --yes
    ///   orgctl secret restart 6f1c… OPENAI_API_KEY --dry-run
    ///
    /// Environment:
    ///   MOLECULE_PLATFORM_URL  as --platform-url
    ///   MOLECULE_ADMIN_TOKEN   bearer token for restarts (never printed)
    #[command(after_long_help = AFTER_HELP, verbatim_doc_comment)]
    Restart(SecretRestartArgs),
    /// Check that every encrypted secret decrypts with SECRETS_ENCRYPTION_KEY (read-only)
    ///
    /// Reads every row of workspace_secrets and global_secrets, and the encrypted fields of
    /// workspace_channels.channel_config (bot_token, webhook_secret, webhook_url, verify_token,
    /// signing_secret), in one read-only snapshot and decrypts each version-1 row and each
    /// "ec1:" field with SECRETS_ENCRYPTION_KEY. Prints the rows (fields) per table and
    /// version, and names each one that does not decrypt (table, id, workspace, key or field —
    /// never a value). Version-0 (plaintext) rows and plaintext channel fields are a warning,
    /// not a failure. Exit 0 when every encrypted value decrypts, 1 otherwise; 2 when the key
    /// is missing or invalid (checked before connecting). A tenant with no encrypted value at
    /// all proves nothing about the key: exit 1 ("nothing was verified") unless --allow-empty.
    ///
    /// Examples:
    ///   orgctl secret verify
    ///   SECRETS_ENCRYPTION_KEY="$NEW_KEY" orgctl secret verify -o json
    ///   orgctl secret verify --allow-empty    # a tenant whose secrets are all plaintext
    #[command(after_long_help = AFTER_HELP, verbatim_doc_comment)]
    Verify(SecretVerifyArgs),
    /// Re-encrypt every secret under a new key, or encrypt the plaintext ones
    ///
    /// In ONE transaction under the tenant lock (writers of the two secret tables and of
    /// workspace_channels wait until the commit): every row of workspace_secrets and
    /// global_secrets is decrypted with SECRETS_ENCRYPTION_KEY (version 1) or taken as is
    /// (version 0), encrypted with the new key under a fresh nonce, and written as version 1;
    /// likewise every encrypted field of workspace_channels.channel_config (bot_token,
    /// webhook_secret, webhook_url, verify_token, signing_secret: "ec1:" + base64, or legacy
    /// plaintext) is written back as "ec1:" under the new key, every other key of the object
    /// untouched. updated_at is left alone. Pages of at most 1000 rows / 4 MiB, one UPDATE
    /// each, so memory stays bounded. If any encrypted row or field does not decrypt with the
    /// current key, nothing is written (exit 3, naming them).
    ///
    /// Keys never come from the command line:
    ///   SECRETS_ENCRYPTION_KEY      the current key (required)
    ///   SECRETS_ENCRYPTION_KEY_NEW  the new key, or --new-key-file (not both)
    /// Both follow the platform's rules (standard base64 of 32 bytes, line breaks skipped, or a
    /// non-base64 raw string of exactly 32 bytes). A missing, invalid or unchanged key is
    /// exit 2, before any connection is made.
    ///
    /// --plaintext-only encrypts the version-0 rows and plaintext channel fields with the
    /// current key and leaves encrypted ones alone (turning encryption on for a tenant that ran
    /// without a key); it refuses when the tenant's encrypted values do not decrypt with that
    /// key.
    ///
    /// The platform rewrites the CODEX_AUTH_JSON global secret by itself every few minutes:
    /// stop its writers, or rekey, swap the platform's SECRETS_ENCRYPTION_KEY and restart the
    /// platform inside one maintenance window; then run `orgctl secret verify` with the new
    /// key (it names anything written under the old one). Asks for confirmation on a
    /// terminal; --yes without one.
    ///
    /// Examples:
    ///   orgctl secret verify
    ///   SECRETS_ENCRYPTION_KEY_NEW="$NEW" orgctl secret rekey --dry-run
    ///   orgctl secret rekey --new-key-file ./new.key --expect-plan sha256:… --yes
    ///   orgctl secret rekey --plaintext-only --dry-run
    ///
    /// `orgctl secret rotate` is the same command (the word an operator reaches for).
    #[command(after_long_help = AFTER_HELP, verbatim_doc_comment, visible_alias = "rotate")]
    Rekey(SecretRekeyArgs),
}

#[derive(Debug, Args, Clone)]
pub struct SecretVerifyArgs {
    /// Exit 0 even when the tenant has no encrypted value to check the key against (all its
    /// secrets are plaintext, or it has none); without it that is exit 1.
    #[arg(long)]
    pub allow_empty: bool,
}

#[derive(Debug, Args, Clone)]
pub struct SecretRekeyArgs {
    /// Read the new key from the first line of this file (instead of
    /// SECRETS_ENCRYPTION_KEY_NEW). Keep it at mode 0600.
    #[arg(long, value_name = "PATH", conflicts_with = "plaintext_only")]
    pub new_key_file: Option<PathBuf>,
    /// Only encrypt the plaintext (version 0) rows and plaintext channel fields, with the
    /// current key; leave the rest.
    #[arg(long)]
    pub plaintext_only: bool,
    /// Show the rows (channel fields) per table and version that would be re-encrypted, and
    /// check that every encrypted one decrypts; change nothing (read-only, no locks).
    #[arg(long)]
    pub dry_run: bool,
    /// Refuse (exit 3) unless the plan computed now has this plan_hash (from a reviewed dry run).
    #[arg(long, value_name = "HASH")]
    pub expect_plan: Option<String>,
}

/// Where a secret lives: a workspace, or --global.
#[derive(Debug, Args, Clone)]
pub struct SecretScopeArgs {
    /// The secret is global (then the only positional argument is KEY).
    #[arg(long)]
    pub global: bool,
}

#[derive(Debug, Args, Clone)]
pub struct SecretSetArgs {
    #[command(flatten)]
    pub scope: SecretScopeArgs,
    /// WORKSPACE_ID KEY, or KEY with --global.
    #[arg(value_name = "WORKSPACE_ID|KEY", num_args = 1..=2, required = true)]
    pub positional: Vec<String>,
    /// Read the value from this file (one trailing newline stripped). Default: stdin when it is
    /// piped, else a hidden prompt.
    #[arg(long, value_name = "PATH")]
    pub value_file: Option<PathBuf>,
    /// Do not restart affected workspaces (they are reported as skipped: no-restart).
    #[arg(long)]
    pub no_restart: bool,
    /// Base URL of the platform API for restarts (needs MOLECULE_ADMIN_TOKEN). Without it the
    /// restart plan is printed instead.
    #[arg(
        long,
        env = "MOLECULE_PLATFORM_URL",
        value_name = "URL",
        hide_env_values = true
    )]
    pub platform_url: Option<String>,
    /// Show the write and the restart plan; change nothing, restart nothing, never ask.
    #[arg(long)]
    pub dry_run: bool,
    /// Deadline for all the restart calls together (e.g. 90s, 10m): calls not started by
    /// then are reported as not attempted (the secret stays committed; exit 1).
    #[arg(long, value_name = "DUR", default_value = "5m", value_parser = parse_duration)]
    pub restart_timeout: Duration,
}

#[derive(Debug, Args, Clone)]
pub struct SecretDeleteArgs {
    #[command(flatten)]
    pub scope: SecretScopeArgs,
    /// WORKSPACE_ID KEY, or KEY with --global.
    #[arg(value_name = "WORKSPACE_ID|KEY", num_args = 1..=2, required = true)]
    pub positional: Vec<String>,
    /// Do not restart affected workspaces (they are reported as skipped: no-restart).
    #[arg(long)]
    pub no_restart: bool,
    /// Allow deleting MODEL from the platform agent (it is still not restarted).
    #[arg(long)]
    pub force: bool,
    /// Base URL of the platform API for restarts.
    #[arg(
        long,
        env = "MOLECULE_PLATFORM_URL",
        value_name = "URL",
        hide_env_values = true
    )]
    pub platform_url: Option<String>,
    /// Show the delete and the restart plan; change nothing, restart nothing, never ask.
    #[arg(long)]
    pub dry_run: bool,
    /// Deadline for all the restart calls together (e.g. 90s, 10m): calls not started by
    /// then are reported as not attempted (the secret stays committed; exit 1).
    #[arg(long, value_name = "DUR", default_value = "5m", value_parser = parse_duration)]
    pub restart_timeout: Duration,
}

#[derive(Debug, Args, Clone)]
pub struct SecretRestartArgs {
    #[command(flatten)]
    pub scope: SecretScopeArgs,
    /// WORKSPACE_ID KEY, or KEY with --global.
    #[arg(value_name = "WORKSPACE_ID|KEY", num_args = 1..=2, required = true)]
    pub positional: Vec<String>,
    /// Restart every eligible workspace, also those already recorded as restarted.
    #[arg(long)]
    pub all: bool,
    /// Base URL of the platform API (needs MOLECULE_ADMIN_TOKEN). Without it the restart plan
    /// is printed instead.
    #[arg(
        long,
        env = "MOLECULE_PLATFORM_URL",
        value_name = "URL",
        hide_env_values = true
    )]
    pub platform_url: Option<String>,
    /// Show which workspaces would be restarted; restart nothing, never ask.
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Debug, Args, Clone)]
pub struct SecretListArgs {
    #[command(flatten)]
    pub scope: SecretScopeArgs,
    /// The workspace whose secrets (own and inherited) to list; omit with --global.
    #[arg(value_name = "WORKSPACE_ID")]
    pub workspace: Option<String>,
}

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

/// Which part of the fleet this worker takes (run, status and rollback alike).
#[derive(Debug, Args, Clone, Default)]
pub struct ShardArgs {
    /// Only the tenants whose stable hash of NAME modulo N is I-1 (e.g. 2/8). The hash is the
    /// first 8 bytes of sha256(NAME) as a big-endian integer: the same on every machine.
    #[arg(long, value_name = "I/N", conflicts_with = "shards")]
    pub shard: Option<String>,
    /// N shards, this worker's taken from JOB_COMPLETION_INDEX (0-based, as a Kubernetes
    /// Indexed Job sets it): shard JOB_COMPLETION_INDEX+1 of N.
    #[arg(long, value_name = "N")]
    pub shards: Option<u64>,
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

#[derive(Debug, Args, Clone)]
pub struct StatusArgs {
    /// How many offending rows to name per finding (and roots to list) before summarising
    /// as a count; 0 shows counts only.
    #[arg(
        long,
        default_value_t = 20,
        value_name = "N",
        value_parser = clap::value_parser!(u32).range(0..=10_000)
    )]
    pub limit: u32,
}

#[derive(Debug, Args, Clone)]
pub struct AuditArgs {
    #[command(subcommand)]
    pub command: Option<AuditCommand>,
    /// Only rows since then: a duration back from now (30m, 12h, 7d, 2w), an RFC 3339
    /// timestamp (2026-12-01T07:00:00Z) or a date (2026-12-01, midnight UTC).
    #[arg(long, value_name = "DUR|TIMESTAMP")]
    pub since: Option<String>,
    /// Only rows of this command ('secret set'); a name without a space also matches its
    /// family (secret: secret set, secret delete, secret restart).
    #[arg(long = "command", value_name = "NAME")]
    pub command_name: Option<String>,
    /// Show at most N rows (0: all). Default: 50 in a table on a terminal, else all.
    #[arg(long, value_name = "N")]
    pub limit: Option<u64>,
}

#[derive(Debug, Subcommand, Clone)]
pub enum AuditCommand {
    /// Check the audit log's hash chain: exit 0 when intact, 1 naming the first row that was
    /// altered, removed or inserted out of order.
    ///
    /// Every row orgctl appends carries seq, prev_hash and row_hash = sha256(prev_hash ||
    /// canonical content); the last link is recorded in orgctl.audit_head. Rows written before
    /// the chain existed are counted as unchained, not as broken. Read-only.
    ///
    /// The chain began with a record of the rows written before it (their count and highest
    /// id): any other row without a hash breaks verification. A writer of the orgctl schema
    /// can still delete the newest rows and move the head back; to catch that, keep the head
    /// every change prints (`audit_head` in its JSON) outside the database and pass it to
    /// --head.
    ///
    /// Example: orgctl audit verify --output json
    ///          orgctl audit verify --head 41:9f2c…   (seq:row_hash recorded earlier)
    #[command(after_long_help = AFTER_HELP, verbatim_doc_comment)]
    Verify(AuditVerifyArgs),
}

#[derive(Debug, Args, Clone)]
pub struct AuditVerifyArgs {
    /// A head recorded outside the database earlier, as SEQ:ROW_HASH (the `audit_head` a change
    /// prints in its JSON, or `audit verify` prints): the chain must still hold that link
    /// unchanged, so rows deleted after it with the head moved back are found.
    #[arg(long, value_name = "SEQ:HASH")]
    pub head: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum DevCommand {
    /// Start (or reuse) a throwaway PostgreSQL with the platform schema and a sample org;
    /// prints the DATABASE_URL on stdout.
    ///
    /// Example: export DATABASE_URL=$(orgctl dev up)
    Up(DevUpArgs),
    /// Stop the throwaway PostgreSQL and delete its data.
    Down(DevDirArgs),
    /// Add a large generated org to a dev database (for benchmarks).
    Seed(DevSeedArgs),
}

#[derive(Debug, Args, Clone)]
pub struct DevDirArgs {
    /// Where the dev server keeps its data. Default: $TMPDIR/orgctl-dev-<uid> (/tmp unless
    /// TMPDIR is set), the same whatever the current directory. `dev down` only stops and
    /// deletes a directory that `dev up` created (its marker must name the data directory's
    /// system identifier); anything else is refused (exit 3) untouched.
    #[arg(long, value_name = "DIR", env = "ORGCTL_DEV_DIR")]
    pub dir: Option<PathBuf>,
}

#[derive(Debug, Args, Clone)]
pub struct DevUpArgs {
    #[command(flatten)]
    pub dir: DevDirArgs,
    /// Loopback port to listen on. Default: a free port.
    #[arg(long, value_name = "PORT")]
    pub port: Option<u16>,
    /// Also make N sample tenants (databases orgctl_dev_t1 … orgctl_dev_tN, each with the
    /// sample org; existing ones are kept as they are) and write a ready tenants file for
    /// `backfill` into the dev directory (tenants.txt; its path is printed on stderr, and in
    /// the JSON as tenants_file).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=100))]
    pub tenants: Option<u32>,
}

#[derive(Debug, Args, Clone)]
pub struct DevSeedArgs {
    /// Number of root workspaces.
    #[arg(long, default_value_t = 1000)]
    pub roots: u32,
    /// Total number of workspaces (roots included).
    #[arg(long, default_value_t = 100_000)]
    pub workspaces: u32,
    /// Total number of tokens.
    #[arg(long, default_value_t = 1_000_000)]
    pub tokens: u32,
    /// How many of the tokens are anchored to roots (the rest to non-roots or unanchored).
    #[arg(long, default_value_t = 300_000)]
    pub tokens_on_roots: u32,
    /// Percentage of tokens that are revoked.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(0..=100))]
    pub revoked_pct: u32,
    /// Allowlist rows spread over the roots.
    #[arg(long, default_value_t = 50_000)]
    pub allowlist: u32,
    /// Distinct plugin names (fewer names mean more collisions across roots).
    #[arg(long, default_value_t = 200)]
    pub plugins: u32,
}

/// Parse "500ms", "5s", "2m", "1h" (a bare number is seconds).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let value: f64 = num
        .parse()
        .map_err(|_| format!("'{s}' is not a duration (try 500ms, 5s, 2m, 1h)"))?;
    let secs = match unit.trim() {
        "ms" => value / 1000.0,
        "" | "s" => value,
        "m" | "min" => value * 60.0,
        "h" => value * 3600.0,
        other => {
            return Err(format!(
                "unknown duration unit '{other}' (use ms, s, m or h)"
            ))
        }
    };
    if !secs.is_finite() || !(0.0..=86_400.0 * 7.0).contains(&secs) {
        return Err(format!("'{s}' is out of range"));
    }
    Ok(Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn clap_definitions_are_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("").is_err());
        assert!(parse_duration("-1s").is_err());
    }

    #[test]
    fn global_flags_after_subcommand() {
        let cli = Cli::try_parse_from([
            "orgctl",
            "install-platform-agent",
            "--dry-run",
            "--output",
            "json",
            "--yes",
        ])
        .map_err(|e| e.to_string());
        let cli = match cli {
            Ok(c) => c,
            Err(e) => panic!("{e}"),
        };
        assert_eq!(cli.global.output, OutputFormat::Json);
        assert!(cli.global.yes);
    }

    #[test]
    fn detailed_exitcode_needs_dry_run() {
        assert!(
            Cli::try_parse_from(["orgctl", "install-platform-agent", "--detailed-exitcode"])
                .is_err()
        );
    }

    #[test]
    fn which_commands_need_a_reason() {
        let mutating = |args: &[&str]| {
            let mut v = vec!["orgctl"];
            v.extend_from_slice(args);
            Cli::try_parse_from(v)
                .map(|c| c.command.mutating())
                .map_err(|e| e.to_string())
        };
        for args in [
            &["install-platform-agent"][..],
            &["token", "mint"],
            &["token", "revoke", "abcd"],
            &["token", "anchor", "abcd"],
            &["secret", "set", "--global", "K"],
            &["secret", "delete", "--global", "K"],
            &["secret", "restart", "--global", "K"],
            &["backfill", "run", "--tenants", "f"],
            &["backfill", "rollback", "--run-id", "r", "--tenants", "f"],
        ] {
            assert_eq!(mutating(args), Ok(true), "{args:?}");
        }
        for args in [
            &["install-platform-agent", "--dry-run"][..],
            &["token", "list"],
            &["secret", "set", "--global", "K", "--dry-run"],
            &["secret", "restart", "--global", "K", "--dry-run"],
            &["secret", "list", "--global"],
            &["backfill", "run", "--tenants", "f", "--dry-run"],
            &["backfill", "status", "--run-id", "r", "--tenants", "f"],
            &["status"],
            &["audit"],
            &["audit", "verify"],
            &["dev", "down"],
        ] {
            assert_eq!(mutating(args), Ok(false), "{args:?}");
        }
    }

    #[test]
    fn no_inferred_subcommands() {
        assert!(Cli::try_parse_from(["orgctl", "tok", "list"]).is_err());
    }
}
