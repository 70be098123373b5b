//! `orgctl secret`: set, delete and list workspace and global secrets, replay the restarts of a
//! change, verify the tenant's values against the key, and re-encrypt them under a new one.
//! One file per subcommand; the shared flow of `set` and `delete` is in [`write`](self::write),
//! the report of a change and its restarts in [`outcome`](self::outcome), and the tables of
//! `verify` and `rekey` in [`findings`](self::findings). The domain is in
//! [`crate::ops::secret`] and [`crate::ops::rekey`].

mod delete;
mod findings;
mod list;
mod outcome;
mod rekey;
mod restart;
mod set;
mod verify;
mod write;

use chrono::{DateTime, SecondsFormat, Utc};
use uuid::Uuid;

use crate::cli::SecretCommand;
use crate::error::{sanitize, Error, Exit, Result};
use crate::ops::secret::{check_key, Scope};
use crate::Context;

/// Rows a table lists before it summarises the rest (JSON always lists all).
const TABLE_ROWS: usize = 50;
/// Workspaces named in a one-line error before it counts the rest.
const ERROR_IDS: usize = 20;

pub async fn run(ctx: &Context, cmd: &SecretCommand) -> Result<Exit> {
    match cmd {
        SecretCommand::Set(args) => set::run(ctx, args).await,
        SecretCommand::Delete(args) => delete::run(ctx, args).await,
        SecretCommand::List(args) => list::run(ctx, args).await,
        SecretCommand::Restart(args) => restart::run(ctx, args).await,
        SecretCommand::Verify(args) => verify::run(ctx, args).await,
        SecretCommand::Rekey(args) => rekey::run(ctx, args).await,
    }
}

/// `WORKSPACE_ID KEY`, or `KEY` with `--global`, into a checked scope and key.
pub fn parse_scope(global: bool, positional: &[String]) -> Result<(Scope, String)> {
    let (scope, key) = match (global, positional) {
        (true, [key]) => (Scope::Global, key),
        (true, _) => {
            return Err(Error::usage(format!(
                "with --global give only KEY (got {} arguments); a workspace secret is WORKSPACE_ID KEY without --global",
                positional.len()
            )))
        }
        (false, [ws, key]) => (Scope::Workspace(parse_workspace_id(ws)?), key),
        (false, _) => {
            return Err(Error::usage(
                "give WORKSPACE_ID KEY for a workspace secret, or --global KEY for a global one",
            ))
        }
    };
    check_key(key)?;
    Ok((scope, key.clone()))
}

pub fn parse_workspace_id(raw: &str) -> Result<Uuid> {
    Uuid::parse_str(raw.trim()).map_err(|_| {
        Error::usage(format!(
            "'{}' is not a workspace id (expected a UUID such as a0000000-0000-4000-8000-000000000001)",
            sanitize(raw)
        ))
    })
}

/// A timestamp as printed in tables (RFC 3339, seconds), `-` for none.
fn ts(t: Option<DateTime<Utc>>) -> String {
    t.map(|t| t.to_rfc3339_opts(SecondsFormat::Secs, true))
        .unwrap_or_else(|| "-".into())
}

/// "id, id, … and N more" of at most [`ERROR_IDS`] workspaces, for a one-line error.
fn named_ids(ids: &[Uuid]) -> String {
    let (shown, rest) = crate::output::truncated(ids, ERROR_IDS);
    let mut names: Vec<String> = shown.iter().map(Uuid::to_string).collect();
    if rest > 0 {
        names.push(format!("and {rest} more"));
    }
    names.join(", ")
}

/// The platform client a secret change restarts workspaces through, with its deadline; None
/// when nothing is to be restarted (`--no-restart`, a dry run) or no `--platform-url` is given
/// (the restart plan is printed instead).
fn restart_client(
    platform: &crate::cli::PlatformArgs,
    restart: &crate::cli::RestartDeadlineArgs,
    no_restart: bool,
) -> Result<Option<crate::platform::restart::Platform>> {
    Ok(
        crate::platform::restart::Platform::resolve(platform.platform_url.as_deref(), !no_restart)?
            .map(|p| p.with_total_timeout(restart.restart_timeout)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id() -> Uuid {
        Uuid::from_u128(0xa000_0000_0000_4000_8000_0000_0000_0001)
    }

    #[test]
    fn scopes() {
        let s = |g: bool, p: &[&str]| {
            let p: Vec<String> = p.iter().map(|s| s.to_string()).collect();
            parse_scope(g, &p).map_err(|e| e.exit)
        };
        assert_eq!(s(true, &["K"]), Ok((Scope::Global, "K".into())));
        assert_eq!(
            s(false, &["a0000000-0000-4000-8000-000000000001", "K"]),
            Ok((Scope::Workspace(id()), "K".into()))
        );
        assert_eq!(
            s(true, &["a0000000-0000-4000-8000-000000000001", "K"]),
            Err(Exit::Usage)
        );
        assert_eq!(s(false, &["K"]), Err(Exit::Usage));
        assert_eq!(s(false, &["not-a-uuid", "K"]), Err(Exit::Usage));
        assert_eq!(s(true, &["1BAD"]), Err(Exit::Usage));
    }
}
