//! Every clap definition of orgctl, in one place: the binary, the completions in
//! `completions/` and the man pages in `man/` are all generated from [`Cli`].
//!
//! Parsing happens in two stages: clap checks the shape of the command line here, and each
//! command family turns its arguments into a checked value (a plan input) before touching the
//! database.

mod audit;
mod backfill;
mod dev;
pub mod docs;
mod install;
mod secret;
mod shared;
mod status;
mod token;

use std::time::Duration;

use clap::{ArgAction, Args, Parser, Subcommand, ValueEnum};

pub use audit::{AuditArgs, AuditCommand, AuditVerifyArgs};
pub use backfill::{BackfillCommand, BackfillRollbackArgs, BackfillRunArgs, BackfillStatusArgs};
pub use dev::{DevCommand, DevDirArgs, DevSeedArgs, DevUpArgs};
pub use install::InstallArgs;
pub use secret::{
    SecretCommand, SecretDeleteArgs, SecretListArgs, SecretRekeyArgs, SecretRestartArgs,
    SecretSetArgs, SecretVerifyArgs,
};
pub use shared::{parse_duration, PlatformArgs, RestartDeadlineArgs, ShardArgs};
use shared::{AFTER_HELP, AFTER_HELP_PENDING, AFTER_HELP_TOP};
pub use status::StatusArgs;
pub use token::{TokenAnchorArgs, TokenCommand, TokenListArgs, TokenMintArgs, TokenRevokeArgs};

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
