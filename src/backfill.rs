//! `orgctl backfill` (SPEC; issue 6). Not implemented yet.

use crate::cli::BackfillCommand;
use crate::error::{Error, Exit, Result};
use crate::Context;

pub async fn run(_ctx: &Context, _cmd: &BackfillCommand) -> Result<Exit> {
    Err(Error::failed(
        "`orgctl backfill` is not implemented in this build yet (issue 6); nothing was changed",
    ))
}
