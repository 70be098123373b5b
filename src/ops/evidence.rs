//! What a change left behind that proves it committed, other than its audit row
//! ([`crate::audit::AuditRow`]): looked for by [`crate::db::commit_or_resolve`] when the answer
//! to a COMMIT is lost.

use crate::db::{Arg, Evidence, Probe};

/// The token `token mint` inserted, by its hash; the prefix is for messages.
#[derive(Clone, Debug)]
pub struct Token {
    pub hash: Vec<u8>,
    pub prefix: String,
}

/// Whether a token with a hash exists.
const TOKEN_EXISTS: &str = "SELECT EXISTS (SELECT 1 FROM org_api_tokens WHERE token_hash = $1)";

impl Evidence for Token {
    fn check(&self) -> String {
        let prefix = &self.prefix;
        format!(
            "whether a token with prefix {prefix} exists (`orgctl token list --all`): if it does, it is live; revoke it with `orgctl token revoke -- {prefix}`"
        )
    }

    fn probe(&self) -> Probe<'_> {
        Probe {
            own_table: None,
            sql: TOKEN_EXISTS,
            args: vec![Arg::Bytes(&self.hash)],
        }
    }

    fn committed(&self) {
        crate::output::head::note_committed();
    }
}

/// The backfill run-state row, at the status the transaction set (a `skipped` tenant writes
/// no audit row). Before the transaction the row was absent or `failed`.
#[derive(Clone, Debug)]
pub struct RunRow {
    pub run_id: String,
    pub status: &'static str,
}

/// Whether a run's row has a status.
const RUN_ROW_EXISTS: &str = "SELECT EXISTS (SELECT 1 FROM orgctl.backfill_runs
                                     WHERE run_id = $1 AND status = $2)";

impl Evidence for RunRow {
    fn check(&self) -> String {
        format!(
            "`orgctl backfill status --run-id {}`: the tenant's run row says '{}' if the change was committed",
            self.run_id, self.status
        )
    }

    fn probe(&self) -> Probe<'_> {
        Probe {
            own_table: Some("orgctl.backfill_runs"),
            sql: RUN_ROW_EXISTS,
            args: vec![Arg::Text(&self.run_id), Arg::Text(self.status)],
        }
    }

    fn committed(&self) {
        crate::output::head::note_committed();
    }
}

/// The static statements of this module, by name.
pub(crate) const STATEMENTS: &[(&str, &str)] = &[
    ("token_exists", TOKEN_EXISTS),
    ("run_row_exists", RUN_ROW_EXISTS),
];
