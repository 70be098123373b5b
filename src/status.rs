//! `orgctl status` (SPEC; issue 7). Not implemented yet.

use crate::cli::StatusArgs;
use crate::error::{Error, Exit, Result};
use crate::Context;

pub async fn run(_ctx: &Context, _cmd: &StatusArgs) -> Result<Exit> {
    Err(Error::failed(
        "`orgctl status` is not implemented in this build yet (issue 7); nothing was changed",
    ))
}
