//! `orgctl backfill run | rollback | status`: install-platform-agent across a fleet of tenant
//! databases from a tenants file, and its rollback and status (the operations are
//! [`crate::ops::backfill`]'s). One file per subcommand; the report files beside them.
//!
//! Backfill handles Ctrl-C itself (see [`Cancel`]): the first starts no new tenant and lets
//! in-flight ones finish or roll back, then the summary prints and the exit code is 130.

mod jsonl;
mod report_file;
mod rollback;
mod run;
mod status;

use crate::cli::{BackfillCommand, ShardArgs};
use crate::error::{Exit, Result};
use crate::ops::backfill::{Cancel, Shard};
use crate::Context;

pub async fn run(ctx: &Context, cmd: &BackfillCommand) -> Result<Exit> {
    // Each tenant has its own audit chain: no single head to print.
    crate::audit::fleet_mode();
    let cancel = Cancel::listen();
    match cmd {
        BackfillCommand::Run(args) => run::run(ctx, args, &cancel).await,
        BackfillCommand::Rollback(args) => rollback::run(ctx, args, &cancel).await,
        BackfillCommand::Status(args) => status::run(ctx, args, &cancel).await,
    }
}

/// The shard options of run, status and rollback: this worker's shard, or none (every tenant).
fn shard(a: &ShardArgs) -> Result<Option<Shard>> {
    Shard::from_options(a.shard.as_deref(), a.shards)
}
