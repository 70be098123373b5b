//! The backfill: install-platform-agent across a fleet of tenant databases, each in its own
//! transaction with a snapshot of every row it changes, and an exact rollback from that
//! snapshot. Plain data and the SQL it owns; the commands (`orgctl backfill run | rollback |
//! status`) turn arguments into a job and render the results.
//!
//! - [`tenants`]: the tenants file.
//! - `shard`: this worker's part of the fleet, by the stable shard hash.
//! - `fleet`: the runner: tenants at a bounded concurrency, Ctrl-C answered.
//! - `records`: each tenant's run row, and the runs a tenant knows.
//! - `apply`: one tenant of a run (and its dry run), and the run over the fleet.
//! - `digest`: the snapshot's digest in the run's audit row.
//! - `rollback`: one tenant of a rollback (drift check, restore).
//! - `verify`: rollback's plan-proof joins and its check of every restored row.
//! - `status`: each tenant's state under a run, read-only.
//!
//! Ctrl-C (and SIGTERM, the same as the first Ctrl-C): backfill handles it itself (see
//! [`Cancel`]) instead of having its future dropped: the first Ctrl-C starts no new tenant and
//! lets in-flight ones finish or roll back, then the summary prints and the exit code is 130; a
//! second Ctrl-C abandons the in-flight tenants (closing their connections rolls their
//! transactions back), except one whose COMMIT is on the wire, which is waited for.

pub(crate) mod apply;
mod digest;
mod fleet;
mod records;
pub(crate) mod rollback;
mod shard;
pub(crate) mod status;
pub mod tenants;
mod verify;

use crate::error::{Error, Result};

pub use digest::tampered_snapshots;
pub use fleet::{for_each, Cancel, Committing, Slot, TenantLine};
pub use records::{backfill_tables_exist, known_runs, unknown_run, KnownRun};
pub use shard::Shard;
pub use tenants::Tenant;

/// Every static statement of the backfill, by name: each module's `STATEMENTS` (statements
/// built at run time are not listed).
pub fn statements() -> Vec<(&'static str, &'static str)> {
    [
        records::STATEMENTS,
        digest::STATEMENTS,
        status::STATEMENTS,
        rollback::STATEMENTS,
        rollback::DRIFT_STATEMENTS,
        rollback::RESTORE_STATEMENTS,
        verify::STATEMENTS,
    ]
    .concat()
}

/// A new run id: `bf-` UTC timestamp and 8 random hex digits.
pub fn new_run_id() -> String {
    let mut b = [0u8; 4];
    let _ = getrandom::getrandom(&mut b);
    format!(
        "bf-{}-{:02x}{:02x}{:02x}{:02x}",
        chrono::Utc::now().format("%Y%m%dT%H%M%SZ"),
        b[0],
        b[1],
        b[2],
        b[3]
    )
}

/// Run ids are 1-64 letters, digits, '.', '_', ':' or '-' (they go into messages and files).
pub fn check_run_id(id: &str) -> Result<()> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-'));
    if ok {
        Ok(())
    } else {
        Err(Error::usage(
            "--run-id must be 1 to 64 letters, digits, '.', '_', ':' or '-'",
        ))
    }
}

/// An error as the summary shows it: one line, control characters stripped, passwords masked.
pub fn clean(e: &Error) -> String {
    crate::redact::mask(&crate::error::sanitize(&e.message))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statement_names_are_unique() {
        let all = statements();
        let names: std::collections::BTreeSet<&str> = all.iter().map(|(n, _)| *n).collect();
        assert_eq!(names.len(), all.len());
    }

    #[test]
    fn run_ids() {
        let id = new_run_id();
        assert!(check_run_id(&id).is_ok(), "{id}");
        assert!(id.starts_with("bf-"));
        for bad in ["", "a b", "x/y", &"a".repeat(65), "é"] {
            assert!(check_run_id(bad).is_err(), "{bad}");
        }
    }
}
