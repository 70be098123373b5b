//! The dev server: a throwaway local PostgreSQL with the platform schema and a sample org.
//!
//! The server runs from the installed binaries with its data in one place per OS user
//! (`$TMPDIR/orgctl-dev-<uid>` by default, whatever the current directory), listening on
//! loopback only, trusted (it holds nothing real). `dev up` twice reuses the running server;
//! `dev down` stops it and deletes its data — only when the directory's marker names that
//! data directory's system identifier, so it never takes a directory it did not make.
//!
//! [`server`] starts a PostgreSQL from the installed binaries (the test harness uses it too);
//! `cluster` is the dev directory's life (up, down, its marker); `sample` the sample org, the
//! sample tenants and the large generated org of `dev seed`.

mod cluster;
mod sample;
pub mod server;

pub use cluster::{dev_dir, down, up, Down, Up, UpInput, MARKER};
pub use sample::{seed, SeedInput, DEV_COMMENT, DEV_DATABASE, SAMPLE_ORG_SQL};

/// Every static statement of the dev server, by name (each is prepared against the platform
/// schema by a test; `dev seed`'s own statements need its temporary tables and are not listed).
pub(crate) const STATEMENTS: &[(&str, &str)] = &[
    ("dev_database_exists", sample::DATABASE_EXISTS_SQL),
    ("dev_database_comment", sample::DATABASE_COMMENT_SQL),
];
