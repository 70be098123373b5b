//! PostgreSQL mechanics, and nothing of the platform's or the audit chain's meaning: parsing
//! and redacting database URLs ([`url`]), connecting with timeouts and a bounded retry
//! ([`connect`]), the query helpers every statement goes through ([`query`]), transactions
//! with orgctl's settings and the per-tenant advisory lock ([`tx`]), reading through a
//! server-side cursor ([`cursor`]), the platform-schema compatibility check ([`schema`]),
//! orgctl's own schema and migrations ([`migrate`]), and COMMIT with the resolution of one
//! whose answer is lost ([`commit`]).

mod commit;
mod connect;
pub mod cursor;
mod migrate;
mod query;
mod schema;
mod tx;
mod url;

pub use commit::{
    commit_best_effort, commit_guarded, commit_or_resolve, CommitError, Committed, Evidence, Probe,
};
pub use connect::connect;
pub use migrate::{
    ensure_orgctl_schema, orgctl_schema_exists, orgctl_table, orgctl_table_readable, Access,
    ORGCTL_MIGRATOR, PLATFORM_LEGACY_TEXT_STATUS_SQL, PLATFORM_SCHEMA_SQL,
};
pub use query::{
    ensure_rows, query, query_as, query_scalar, set_pooler, simple_batch, Arg, Binds, Check, Pooler,
};
pub use schema::{ensure_compatible, REQUIRED_COLUMNS};
pub use tx::{
    begin_change, begin_change_on, begin_read_only, begin_write, lock_tenant, Begun, Settings,
    TENANT_LOCK,
};
pub use url::{url_from, DbUrl};

/// The static statements of the database layer, by name, for the test that prepares them.
pub(crate) const STATEMENTS: &[&[(&str, &str)]] =
    &[tx::STATEMENTS, migrate::STATEMENTS, commit::STATEMENTS];
