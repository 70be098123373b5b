//! What every command gets: output, connection settings, `--yes`, and the database URL.

use crate::cli;
use crate::db::{self, DbUrl, Settings};
use crate::error::Result;
use crate::output::Output;

/// What every command gets: output, connection settings, `--yes`, and the database URL.
pub struct Context {
    pub out: Output,
    pub settings: Settings,
    pub yes: bool,
    database_url: Option<String>,
}

impl Context {
    pub fn new(cli: &crate::cli::Cli) -> Self {
        db::set_pooler(match cli.global.pooler {
            cli::PoolerMode::Transaction => db::Pooler::Transaction,
            cli::PoolerMode::Session | cli::PoolerMode::None => db::Pooler::Session,
        });
        Context {
            out: Output::new(cli.global.output, cli.global.quiet, cli.global.verbose),
            settings: Settings {
                lock_timeout: cli.global.lock_timeout,
                // Not given: the server's own limit stays in force; 0 means no limit.
                statement_timeout: cli.global.statement_timeout,
            },
            yes: cli.global.yes,
            database_url: cli.global.database_url.clone(),
        }
    }

    /// The tenant database from `--database-url` / `DATABASE_URL`.
    pub fn url(&self) -> Result<DbUrl> {
        db::url_from(self.database_url.as_deref())
    }
}
