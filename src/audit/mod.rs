//! The audit chain: who did what to a tenant, when, why, and whether the record is intact.
//!
//! - **reason** ([`reason`]): `--reason` / `ORGCTL_REASON`, checked once at start-up, passed
//!   to every append as a [`Who`] and stored on every row the run appends.
//! - **canonical form** ([`canonical`]): every row orgctl appends carries `seq`, `prev_hash`
//!   and `row_hash = sha256(prev_hash || canonical content)` ([`Link`]); the head (last `seq`
//!   and hash) lives in `orgctl.audit_head`. The canonical content is defined in
//!   [`Link::content`], so anyone can recompute it.
//! - **append** ([`append`]): rows written in the caller's transaction after the locked head;
//!   [`AuditRow`] is the evidence a lost COMMIT is resolved by.
//! - **read** ([`read`]) and **verify** ([`verify`]): read-only, one REPEATABLE READ READ ONLY
//!   transaction, rows through a server-side cursor in batches, nothing created.

mod append;
mod canonical;
mod read;
mod reason;
mod verify;

pub use append::{
    append_after_head, append_audit, audit_head_args, audit_head_columns_merging, record,
    record_after_commit, record_checked, AuditEntry, AuditHead, AuditRow, AUDIT_HEAD_CTE,
};
pub use canonical::canonical_json;
pub use read::{columns, list, parse_since, read_chain, Filter, ListedRow};
pub use reason::{check_reason, Who};
pub use verify::{Problem, ProblemKind, Verifier};

pub use crate::output::head::{committed_head, fleet_mode, hex, HeadJson};

/// The static statements of the audit chain, by name, for the test that prepares them.
pub(crate) const STATEMENTS: &[&[(&str, &str)]] = &[append::STATEMENTS, read::STATEMENTS];
