//! `orgctl audit` (the log, newest first) and `orgctl audit verify` (the chain's check).

mod list;
mod verify;

use crate::cli::{AuditArgs, AuditCommand};
use crate::error::{Exit, Result};
use crate::Context;

pub async fn run(ctx: &Context, args: &AuditArgs) -> Result<Exit> {
    match &args.command {
        Some(AuditCommand::Verify(v)) => verify::run(ctx, v).await,
        None => list::run(ctx, args).await,
    }
}
