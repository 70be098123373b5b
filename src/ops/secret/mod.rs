//! Workspace and global secrets the way the platform reads them: set, delete and list them,
//! then restart the workspaces a change affects — never the platform agent.
//!
//! `secret verify` and `secret rekey` work on every encrypted value at once under a key, not
//! on one secret: their domain is [`crate::ops::rekey`].
//!
//! A change is planned with read-only queries ([`plan`]: what the write does and which
//! workspaces it would restart), then written in ONE transaction under the tenant lock
//! ([`lock_target`] re-checks the target and the MODEL gate, [`write`] does the one upsert or
//! delete, [`audit_args`] is its audit row). Only after the commit is the restart plan computed
//! again ([`restart_plan`]) — from the committed state — and dispatched
//! ([`dispatch_and_record`]), each batch's outcomes recorded in the audit log so that
//! `secret restart` can replay exactly what is still owed ([`read_replay`]).
//!
//! Values are read into [`zeroize::Zeroizing`] buffers ([`read_value_from`]), sealed by
//! [`crate::platform::keys::SecretBox`] (the one owner of the encryption rules), and never
//! printed, logged or put in the audit row.

mod change;
mod list;
mod restart;
mod scope;
mod value;

pub use change::{audit_args, lock_target, model_gate, plan, write, Action, Change, Op, Written};
pub use list::{list, Listed};
pub use restart::{dispatch_and_record, read_replay, restart_plan, Phase, Replay};
pub use scope::{check_key, Scope};
pub use value::{finish_value, read_value_from, ValueSource};

/// Every static statement of the secret operations, by name.
// Read by the test that prepares every statement against the template schema.
pub(crate) const STATEMENTS: &[(&str, &str)] = &[
    ("secret.existing_workspace", change::EXISTING_WORKSPACE_SQL),
    ("secret.existing_global", change::EXISTING_GLOBAL_SQL),
    ("secret.model_outranked", change::MODEL_OUTRANKED_SQL),
    ("secret.lock_target", change::LOCK_TARGET_SQL),
    ("secret.upsert_workspace", change::UPSERT_WORKSPACE_SQL),
    ("secret.upsert_global", change::UPSERT_GLOBAL_SQL),
    ("secret.delete_workspace", change::DELETE_WORKSPACE_SQL),
    ("secret.delete_global", change::DELETE_GLOBAL_SQL),
    ("secret.audit_log_exists", restart::AUDIT_LOG_EXISTS_SQL),
    ("secret.last_change", restart::LAST_CHANGE_SQL),
    ("secret.restarted_since", restart::RESTARTED_SINCE_SQL),
    ("secret.workspace_exists", list::WORKSPACE_EXISTS_SQL),
    ("secret.list_workspace", list::LIST_WORKSPACE_SQL),
    ("secret.list_global", list::LIST_GLOBAL_SQL),
];
