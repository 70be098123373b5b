//! What every command gets: output, connection settings, `--yes`, the database URL, and the
//! run's `--reason` for the audit rows it writes.

use crate::audit::Who;
use crate::cli;
use crate::db::{self, DbUrl, Settings};
use crate::error::Result;
use crate::output::Output;

/// What every command gets: output, connection settings, `--yes`, the database URL, and the
/// run's `--reason` for the audit rows it writes.
pub struct Context {
    pub out: Output,
    pub settings: Settings,
    pub yes: bool,
    /// The checked `--reason` ([`crate::audit::check_reason`]): passed to every function that
    /// appends to the audit chain, whose rows store it.
    pub who: Who,
    database_url: Option<String>,
}

impl Context {
    /// The context of `cli`'s run; `reason` is `--reason` as [`crate::audit::check_reason`]
    /// returned it.
    pub fn new(cli: &crate::cli::Cli, reason: Option<String>) -> Self {
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
            who: Who { reason },
            database_url: cli.global.database_url.clone(),
        }
    }

    /// The tenant database from `--database-url` / `DATABASE_URL`.
    pub fn url(&self) -> Result<DbUrl> {
        db::url_from(self.database_url.as_deref())
    }
}
