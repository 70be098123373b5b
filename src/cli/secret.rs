//! `orgctl secret …`: set, delete, list, restart, verify and rekey secrets.

use std::path::PathBuf;

use clap::{Args, Subcommand};

use super::shared::{PlatformArgs, RestartDeadlineArgs, AFTER_HELP};

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
    #[command(flatten)]
    pub platform: PlatformArgs,
    /// Show the write and the restart plan; change nothing, restart nothing, never ask.
    #[arg(long)]
    pub dry_run: bool,
    #[command(flatten)]
    pub restart: RestartDeadlineArgs,
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
    #[command(flatten)]
    pub platform: PlatformArgs,
    /// Show the delete and the restart plan; change nothing, restart nothing, never ask.
    #[arg(long)]
    pub dry_run: bool,
    #[command(flatten)]
    pub restart: RestartDeadlineArgs,
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
    #[command(flatten)]
    pub platform: PlatformArgs,
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
