//! `orgctl token …`: mint, list, revoke and anchor org API tokens.

use clap::{Args, Subcommand};
use uuid::Uuid;

use super::shared::AFTER_HELP;

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
