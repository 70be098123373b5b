//! `orgctl audit` and `orgctl audit verify`.

use clap::{Args, Subcommand};

use super::shared::AFTER_HELP;

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
