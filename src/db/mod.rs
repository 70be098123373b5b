//! PostgreSQL mechanics: parsing and redacting database URLs ([`url`]), connecting with
//! timeouts and a bounded retry ([`connect`]), the query helpers every statement goes through
//! ([`query`]), transactions with orgctl's settings and the per-tenant advisory lock ([`tx`]),
//! reading through a server-side cursor ([`cursor`]), and COMMIT with the resolution of one
//! whose answer is lost ([`commit`]: what proves a commit is an [`Evidence`] the layers above
//! define, and they record what a commit means).
//!
//! Two schema facts live here too, because the transaction that opens a change checks both in
//! the same round trip: the platform tables and columns orgctl needs ([`schema`]), and
//! orgctl's own schema and its migrations ([`migrate`]). Nothing here knows what a root, a
//! token, a secret or an audit row means.

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
    PLATFORM_LEGACY_TEXT_STATUS_SQL, PLATFORM_SCHEMA_SQL,
};
pub use query::{
    ensure_rows, query, query_as, query_scalar, set_pooler, simple_batch, Arg, Binds, Check, Pooler,
};
pub use schema::ensure_compatible;
pub use tx::{
    begin_change, begin_change_on, begin_read_only, begin_write, lock_tenant, Begun, Settings,
    TENANT_LOCK,
};
pub use url::{url_from, DbUrl};

/// The static statements of the database layer, by name, for the test that prepares them.
pub(crate) const STATEMENTS: &[&[(&str, &str)]] =
    &[tx::STATEMENTS, migrate::STATEMENTS, commit::STATEMENTS];
