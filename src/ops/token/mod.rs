//! Org API tokens as orgctl mints, lists, revokes and anchors them: the rows as the platform
//! writes them, the mint ceiling, the platform's `org_token_audit_logs` rows, which tokens a
//! revoke selects, and the listing queries. Plain data in, plain data out: no arguments, no
//! tables (`crate::commands::token` renders).
//!
//! - **mint** adds one row: 32 CSPRNG bytes, base64url without padding, `sha256` of the
//!   plaintext in `token_hash`, the first 8 characters in `prefix`, anchored to the org root.
//!   The plaintext exists only in memory (zeroed on drop) and on stdout; it is delivered
//!   *before* the commit, so a token nobody received is never left live.
//! - **list** reads through a server-side cursor in batches in a REPEATABLE READ READ ONLY
//!   transaction (it never creates orgctl's schema), so an unlimited list streams a million
//!   tokens with bounded memory; a limited one reads `limit + 1` rows to know whether more
//!   exist without counting.
//! - **revoke** and **anchor** plan with read-only queries, then lock the tenant, re-check and
//!   change the rows in one statement, with the audit row in the same transaction.
//!
//! What the platform decides — which tokens are live (expiry included), its ceiling, its own
//! audit rows, the name limit in bytes, the labels it reserves — is
//! [`crate::platform::tokens`]; what a root is, [`crate::ops::org`].
//!
//! Nothing here ever logs or audits a plaintext token or a hash. Arguments that could be a
//! pasted plaintext (anything longer than a prefix that is not a UUID) are never echoed.

/// The columns of a [`TokenRow`]; `expired` is judged by the database's clock, as the
/// platform judges it.
macro_rules! token_columns {
    () => {
        "id, prefix, name, org_id, created_by, created_at, last_used_at, revoked_at, expires_at, COALESCE(expires_at <= now(), false) AS expired"
    };
}

/// The server-side cursor every token listing reads through (one at a time per transaction).
macro_rules! cursor {
    () => {
        "orgctl_token_cursor"
    };
}

mod anchor;
mod input;
mod list;
mod mint;
mod revoke;
mod row;

pub use anchor::{
    anchor_one, anchor_stale, check_anchor_root, check_stale, read_anchor, read_stale, AnchorPlan,
    Anchored, StaleMove, StalePlan,
};
pub use input::{check_match_label, check_mint_label, check_name, like_prefix, TokenRef};
pub use list::{stream_listing, ListFilter, DEFAULT_TABLE_LIMIT};
pub use mint::{
    commit as commit_mint, gate as gate_mint, insert as insert_token, plan_mint, MintInput,
    MintPlan, Minted,
};
pub use revoke::{
    read_back_revoked, read_label, revoke_label, revoke_label_audit, revoke_one, revoke_one_audit,
    LabelPlan, OneRevoked,
};
pub use row::{find_token, TokenRow};

/// `--created-by` on mint is at most this many characters (the platform sets no bound).
pub const MAX_LABEL_CHARS: usize = 200;
/// The stored prefix is the first 8 plaintext characters; a reference may be 4 to 8 of them.
pub const PREFIX_LEN: usize = 8;
pub const MIN_PREFIX_LEN: usize = 4;
/// Tokens named in an ambiguity error or a plan's sample.
pub const SHOWN: usize = 20;

/// The statements of these modules that are fixed text, by name (prepared against the
/// template schema by a test; statements built at run time are not listed).
pub(crate) const STATEMENTS: &[(&str, &str)] = &[
    ("token_by_id", row::BY_ID),
    ("tokens_by_prefix", row::BY_PREFIX),
    ("token_insert", mint::INSERT),
    ("token_anchor_one", anchor::ANCHOR_ONE),
    ("token_has_former_roots", anchor::HAS_FORMER_ROOTS),
    ("token_unrevoked_sample", revoke::UNREVOKED_SAMPLE),
    ("token_revoke_one", revoke::REVOKE_ONE),
    ("token_revoke_label", revoke::REVOKE_LABEL),
    ("token_transaction_now", revoke::TRANSACTION_NOW),
    ("token_revoked_cursor", revoke::DECLARE_REVOKED),
];
