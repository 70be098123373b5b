//! `orgctl secret delete (WORKSPACE_ID | --global) KEY`: MODEL is not deleted from the platform
//! agent without `--force`.

use super::parse_scope;
use super::write::{change, Request};
use crate::cli::SecretDeleteArgs;
use crate::error::{Exit, Result};
use crate::ops::secret::{Change, Op};
use crate::platform::restart::Platform;
use crate::Context;

pub(super) async fn run(ctx: &Context, args: &SecretDeleteArgs) -> Result<Exit> {
    let (scope, key) = parse_scope(args.scope.global, &args.positional)?;
    let url = ctx.url()?;
    let platform = Platform::resolve(
        args.platform.platform_url.as_deref(),
        !(args.no_restart || args.dry_run),
    )?
    .map(|p| p.with_total_timeout(args.restart.restart_timeout));
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
