//! `orgctl completions SHELL`: print a shell completion script to stdout.

use std::io::Write;

use crate::cli::docs;
use crate::cli::Shell;
use crate::error::{Error, Exit, Result};

pub fn run(shell: Shell) -> Result<Exit> {
    match print(shell) {
        // A reader that went away (`| head`) is not a failure.
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(Error::failed(format!(
            "could not write the completions to stdout: {e}"
        ))),
        _ => Ok(Exit::Ok),
    }
}

/// Write the completion script for one shell to stdout.
fn print(shell: Shell) -> std::io::Result<()> {
    let buf = docs::completions(shell);
    let mut out = std::io::stdout().lock();
    out.write_all(&buf).and_then(|_| out.flush())
}
