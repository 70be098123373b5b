//! `orgctl secret delete (WORKSPACE_ID | --global) KEY`: MODEL is not deleted from the platform
//! agent without `--force`.

use super::parse_scope;
use super::write::{change, Request};
use crate::cli::SecretDeleteArgs;
use crate::error::{Exit, Result};
use crate::ops::secret::{Change, Op};
use crate::Context;

pub(super) async fn run(ctx: &Context, args: &SecretDeleteArgs) -> Result<Exit> {
    let (scope, key) = parse_scope(args.scope.global, &args.positional)?;
    let url = ctx.url()?;
    let platform = super::restart_client(
        &args.platform,
        &args.restart,
        args.no_restart || args.dry_run,
    )?;
    let req = Request {
        change: Change {
            scope,
            key: &key,
            no_restart: args.no_restart,
            op: Op::Delete { force: args.force },
        },
        dry_run: args.dry_run,
        platform,
    };
    change(ctx, &url, req).await
}
