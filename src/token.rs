//! `orgctl token` (SPEC; issue 4). Not implemented yet.

use crate::cli::TokenCommand;
use crate::error::{Error, Exit, Result};
use crate::Context;

pub async fn run(_ctx: &Context, _cmd: &TokenCommand) -> Result<Exit> {
    Err(Error::failed(
        "`orgctl token` is not implemented in this build yet (issue 4); nothing was changed",
    ))
}
