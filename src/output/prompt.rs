//! Prompts: whether a human can be asked (a terminal on stdin and stderr, and not CI), the
//! confirmation before a change, and the plan's text as shown before it.

use super::Output;
use crate::error::{Error, Result};

/// Whether the `CI` environment variable says this is a CI job (set, not empty, not
/// "false"/"0"), as GitHub Actions, GitLab, Buildkite, CircleCI and others set it.
pub fn in_ci() -> bool {
    match std::env::var("CI") {
        Ok(v) => {
            let v = v.trim().to_ascii_lowercase();
            !(v.is_empty() || v == "false" || v == "0" || v == "no")
        }
        Err(_) => false,
    }
}

impl Output {
    /// Whether a human can answer a prompt: stdin and stderr are both terminals, and `CI` is
    /// not set.
    pub fn interactive(&self) -> bool {
        self.stdin_tty && self.stderr_tty && !self.ci
    }

    /// Why there is no prompt, for refusals: CI, or no terminal.
    pub fn no_prompt_reason(&self) -> &'static str {
        if self.ci {
            "CI is set (orgctl never prompts in CI)"
        } else {
            "there is no terminal to ask on"
        }
    }

    /// Ask before a change. `--yes` skips the question; without a terminal and without
    /// `--yes` the answer is a refusal (exit 3). The default answer is no.
    pub fn confirm(&self, question: &str, yes: bool) -> Result<()> {
        if yes {
            return Ok(());
        }
        if !self.interactive() {
            return Err(Error::refused(format!(
                "confirmation needed: this changes the tenant and {}; review with --dry-run, then rerun with --yes",
                self.no_prompt_reason()
            )));
        }
        set_prompt_line_open(true);
        let answer = dialoguer::Confirm::new()
            .with_prompt(question)
            .default(false)
            .interact_on_opt(&dialoguer::console::Term::stderr())
            .inspect(|_| set_prompt_line_open(false))
            .map_err(|e| match e {
                // Ctrl-C at the prompt: the read is interrupted by SIGINT (orgctl handles the
                // signal, so it does not kill the process). That is an interrupt, exit 130
                // (the caller restores the terminal), not a failure to read.
                dialoguer::Error::IO(io) if io.kind() == std::io::ErrorKind::Interrupted => {
                    Error::interrupted()
                }
                e => Error::failed(format!("could not read the answer: {e}")),
            })?;
        match answer {
            Some(true) => Ok(()),
            _ => Err(Error::refused("not confirmed: nothing was changed")),
        }
    }
}

/// A prompt's line is on the terminal, not yet ended by an answer: an interrupt must end it
/// before its error line (and only then: elsewhere that newline is a stray empty line).
static PROMPT_LINE_OPEN: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Mark a prompt's line open (`true`, before asking) or ended by an answer (`false`).
pub fn set_prompt_line_open(open: bool) {
    PROMPT_LINE_OPEN.store(open, std::sync::atomic::Ordering::SeqCst);
}

/// Whether a prompt was cut off with its line still open.
pub fn prompt_line_open() -> bool {
    PROMPT_LINE_OPEN.load(std::sync::atomic::Ordering::SeqCst)
}

/// The last line of a dry run's text.
pub const DRY_RUN_LINE: &str = "Dry run: nothing was changed.";

/// A plan's text as shown before a confirmation: it says what answering yes will do, not that
/// a dry run changed nothing (the renderers share their text with the dry run).
pub fn review_text(rendered: &str) -> String {
    rendered.replace(
        DRY_RUN_LINE,
        "Nothing has been changed yet: answer y to apply the plan above, anything else to leave it as it is.",
    )
}
