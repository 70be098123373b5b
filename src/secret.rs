//! `orgctl secret` (SPEC; issue 5). Not implemented yet.

use crate::cli::SecretCommand;
use crate::error::{Error, Exit, Result};
use crate::Context;

pub async fn run(_ctx: &Context, _cmd: &SecretCommand) -> Result<Exit> {
    Err(Error::failed(
        "`orgctl secret` is not implemented in this build yet (issue 5); nothing was changed",
    ))
}
