//! The one place that renders output: tables (comfy-table) and JSON (serde_json) on stdout,
//! messages, progress (indicatif) and prompts (dialoguer) on stderr.
//!
//! stdout carries the result only. A closed stdout (`orgctl token list | head`) is not an error.
//!
//! Here: [`Output`] (the result on stdout, messages on stderr) and JSON; `table` (on a terminal
//! and piped), `listing` (how many rows, the streamed stdout), `progress`, `prompt`, `verbose`
//! (-v/-vv), `duration` (the one format of durations) and `head` (the audit head a committed
//! change's JSON carries).

use std::io::{IsTerminal, Write};

use serde::Serialize;

use crate::error::{sanitize, Error, Result};

pub mod duration;
pub mod head;
mod listing;
mod progress;
mod prompt;
pub mod table;
pub mod verbose;

pub use listing::{listing_limit, truncated, Sink};
pub use progress::fleet_progress;
pub use prompt::{in_ci, prompt_line_open, review_text, set_prompt_line_open, DRY_RUN_LINE};
pub use table::compact_table;

/// How a command's result is printed (`-o`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    /// Human-readable tables.
    Table,
    /// One JSON document on stdout.
    Json,
}

#[derive(Clone, Debug)]
pub struct Output {
    pub format: OutputFormat,
    pub quiet: bool,
    pub verbose: u8,
    stdout_tty: bool,
    stderr_tty: bool,
    stdin_tty: bool,
    /// `CI` is set: never prompt, even with a terminal attached (CI runners often allocate a
    /// pty, and a prompt there hangs the job until it times out).
    ci: bool,
}

impl Output {
    pub fn new(format: OutputFormat, quiet: bool, verbose: u8) -> Self {
        Output {
            format,
            quiet,
            verbose,
            stdout_tty: std::io::stdout().is_terminal(),
            stderr_tty: std::io::stderr().is_terminal(),
            stdin_tty: std::io::stdin().is_terminal(),
            ci: in_ci(),
        }
    }

    /// Whether stdout is a terminal (a human reads it), not a pipe, file or `$(…)`.
    pub fn stdout_is_terminal(&self) -> bool {
        self.stdout_tty
    }

    pub fn json_mode(&self) -> bool {
        self.format == OutputFormat::Json
    }

    pub fn stdin_is_terminal(&self) -> bool {
        self.stdin_tty
    }

    /// Write the command's result to stdout. A broken pipe ends output quietly, unless this
    /// process committed a change: then the result was not delivered, and that is an error
    /// saying the change was committed.
    pub fn stdout(&self, text: &str) -> Result<()> {
        let mut out = std::io::stdout().lock();
        let r = out.write_all(text.as_bytes()).and_then(|_| out.flush());
        stdout_result(r)
    }

    /// Exactly one JSON document on stdout.
    /// Streamed to stdout: a large plan's document is never built in memory whole.
    ///
    /// After a committed change the document also carries `audit_head` (the chain's head the
    /// change moved it to), for the operator to keep outside the database.
    pub fn json<T: Serialize>(&self, value: &T) -> Result<()> {
        #[derive(Serialize)]
        struct WithHead<'a, T> {
            #[serde(flatten)]
            inner: &'a T,
            audit_head: head::HeadJson,
        }
        let stdout = std::io::stdout();
        let mut w = std::io::BufWriter::new(stdout.lock());
        let r = match head::committed_head() {
            Some(audit_head) => serde_json::to_writer_pretty(
                &mut w,
                &WithHead {
                    inner: value,
                    audit_head,
                },
            ),
            None => serde_json::to_writer_pretty(&mut w, value),
        }
        .map_err(std::io::Error::from)
        .and_then(|_| w.write_all(b"\n"))
        .and_then(|_| w.flush());
        stdout_result(r)
    }

    /// A human message on stderr (suppressed by --quiet).
    pub fn info(&self, msg: &str) {
        if !self.quiet {
            stderr(&format!("{}\n", crate::redact::mask(msg)));
        }
    }

    /// Detail shown with -v.
    pub fn detail(&self, msg: &str) {
        if self.verbose > 0 && !self.quiet {
            stderr(&format!("{}\n", crate::redact::mask(msg)));
        }
    }

    pub fn warn(&self, msg: &str) {
        if !self.quiet {
            stderr(&format!(
                "warning: {}\n",
                crate::redact::mask(&sanitize(msg))
            ));
        }
    }
}

/// Write to stderr, never panicking: a full disk (`2>/dev/full`) or a closed pipe loses the
/// message, never the command's outcome or exit code. Every human message goes through here
/// (`eprintln!` panics when the write fails).
pub fn stderr(text: &str) {
    let mut err = std::io::stderr().lock();
    let _ = err.write_all(text.as_bytes()).and_then(|_| err.flush());
}

/// The outcome of a stdout write (see [`Output::stdout`]).
fn stdout_result(r: std::io::Result<()>) -> Result<()> {
    let e = match r {
        Ok(()) => return Ok(()),
        Err(e) => e,
    };
    if crate::interrupt::committed() {
        return Err(Error::failed(format!(
            "the change was committed, but its result could not be written to stdout ({e}); see orgctl.audit_log for what was done"
        )));
    }
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        return Ok(());
    }
    Err(Error::failed(format!("could not write to stdout: {e}")))
}
