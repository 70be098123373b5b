//! `orgctl secret set (WORKSPACE_ID | --global) KEY`: the value from `--value-file`, stdin or a
//! hidden prompt — never the command line — sealed with the key the platform reads.

use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

use super::parse_scope;
use super::write::{change, Request};
use crate::cli::SecretSetArgs;
use crate::error::{Error, Exit, Result};
use crate::ops::secret::{finish_value, read_value_from, Change, Op, ValueSource};
use crate::output::Output;
use crate::platform::keys::SecretBox;
use crate::Context;

pub(super) async fn run(ctx: &Context, args: &SecretSetArgs) -> Result<Exit> {
    let (scope, key) = parse_scope(args.scope.global, &args.positional)?;
    let url = ctx.url()?;
    let platform = super::restart_client(
        &args.platform,
        &args.restart,
        args.no_restart || args.dry_run,
    )?;
    let sb = SecretBox::from_env();
    // Refusals of the key (bad key: 2; production without a key: 3) before reading a value.
    let version = sb.write_version()?;
    if let Some(w) = sb.plaintext_warning(&format!("the value of {key}")) {
        ctx.out.warn(&w);
    }
    if let Some(w) = crate::platform::vendor_keys::vendor_key_warning(&key, scope.workspace_id()) {
        ctx.out.warn(&w);
    }
    let value = read_value(&ctx.out, args.value_file.as_deref(), &key, args.dry_run).await?;
    let req = Request {
        change: Change {
            scope,
            key: &key,
            no_restart: args.no_restart,
            op: Op::Set { value, sb, version },
        },
        dry_run: args.dry_run,
        platform,
    };
    change(ctx, &url, req).await
}

/// The value of `secret set`: `--value-file`, else stdin when it is not a terminal, else a
/// hidden prompt. `None` only for a dry run that was given no value (it does not need one).
async fn read_value(
    out: &Output,
    value_file: Option<&Path>,
    key: &str,
    dry_run: bool,
) -> Result<Option<(Zeroizing<Vec<u8>>, ValueSource)>> {
    // Reads run on a blocking thread so Ctrl-C still ends a read that never finishes.
    if let Some(path) = value_file {
        let path: PathBuf = path.to_path_buf();
        let what = format!("--value-file {}", path.display());
        let w = what.clone();
        let raw = blocking(move || {
            let f = std::fs::File::open(&path)
                .map_err(|e| Error::usage(format!("could not read {w}: {e}")))?;
            read_value_from(f, &w)
        })
        .await?;
        return Ok(Some((finish_value(raw, &what)?, ValueSource::File)));
    }
    if dry_run {
        // A dry run needs no value, so it never reads stdin (an open pipe that is never closed
        // would block it forever) and never prompts.
        return Ok(None);
    }
    if !out.stdin_is_terminal() {
        let raw = blocking(|| read_value_from(std::io::stdin().lock(), "stdin")).await?;
        if raw.is_empty() {
            return Err(Error::usage(
                "no value: stdin is empty and not a terminal; pipe the value on stdin, pass --value-file PATH, or run on a terminal to be prompted",
            ));
        }
        return Ok(Some((finish_value(raw, "stdin")?, ValueSource::Stdin)));
    }
    if !out.interactive() {
        return Err(Error::usage(format!(
            "no value and no prompt: {}; pipe the value on stdin or pass --value-file PATH",
            if crate::output::in_ci() {
                "CI is set (orgctl never prompts in CI)"
            } else {
                "stderr is not a terminal to prompt on"
            }
        )));
    }
    let prompt = format!("Value for {key} (hidden)");
    let typed = blocking(move || prompt_value(prompt)).await?;
    let bytes = Zeroizing::new(typed.as_bytes().to_vec());
    Ok(Some((
        finish_value(bytes, "the prompt")?,
        ValueSource::Prompt,
    )))
}

/// The hidden prompt, typed twice.
fn prompt_value(prompt: String) -> Result<Zeroizing<String>> {
    crate::output::set_prompt_line_open(true);
    dialoguer::Password::new()
        .with_prompt(prompt)
        .with_confirmation("Repeat the value", "the two values differ; try again")
        .interact_on(&dialoguer::console::Term::stderr())
        .inspect(|_| crate::output::set_prompt_line_open(false))
        .map(Zeroizing::new)
        .map_err(|e| Error::failed(format!("could not read the value from the terminal: {e}")))
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::failed(format!("internal: a blocking task failed: {e}")))?
}
