//! The one place that renders output: tables (comfy-table) and JSON (serde_json) on stdout,
//! messages, progress (indicatif) and prompts (dialoguer) on stderr.
//!
//! stdout carries the result only. A closed stdout (`orgctl token list | head`) is not an error.

use std::io::{IsTerminal, Write};

use comfy_table::{presets, ContentArrangement, Table};
use serde::Serialize;

use crate::cli::OutputFormat;
use crate::error::{sanitize, Error, Result};

#[derive(Clone, Debug)]
pub struct Output {
    pub format: OutputFormat,
    pub quiet: bool,
    pub verbose: u8,
    stdout_tty: bool,
    stderr_tty: bool,
    stdin_tty: bool,
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
        }
    }

    pub fn json_mode(&self) -> bool {
        self.format == OutputFormat::Json
    }

    /// Whether a human can answer a prompt: stdin and stderr are both terminals.
    pub fn interactive(&self) -> bool {
        self.stdin_tty && self.stderr_tty
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
    pub fn json<T: Serialize>(&self, value: &T) -> Result<()> {
        let stdout = std::io::stdout();
        let mut w = std::io::BufWriter::new(stdout.lock());
        let r = serde_json::to_writer_pretty(&mut w, value)
            .map_err(std::io::Error::from)
            .and_then(|_| w.write_all(b"\n"))
            .and_then(|_| w.flush());
        stdout_result(r)
    }

    pub fn table(&self, table: &Table) -> Result<()> {
        self.stdout(&format!("{table}\n"))
    }

    /// A new table with a header, styled for the terminal or plain for pipes.
    pub fn new_table<I, S>(&self, header: I) -> Table
    where
        I: IntoIterator<Item = S>,
        S: Into<comfy_table::Cell>,
    {
        let mut t = Table::new();
        if self.stdout_tty {
            t.load_preset(presets::UTF8_FULL_CONDENSED);
            t.set_content_arrangement(ContentArrangement::Dynamic);
        } else {
            t.load_preset(presets::ASCII_BORDERS_ONLY_CONDENSED);
            t.set_content_arrangement(ContentArrangement::Disabled);
        }
        t.set_header(header);
        t
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

    /// Ask before a change. `--yes` skips the question; without a terminal and without
    /// `--yes` the answer is a refusal (exit 3). The default answer is no.
    pub fn confirm(&self, question: &str, yes: bool) -> Result<()> {
        if yes {
            return Ok(());
        }
        if !self.interactive() {
            return Err(Error::refused(
                "confirmation needed: this changes the tenant and there is no terminal to ask on; review with --dry-run, then rerun with --yes",
            ));
        }
        let answer = dialoguer::Confirm::new()
            .with_prompt(question)
            .default(false)
            .interact_on_opt(&dialoguer::console::Term::stderr())
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

    /// A progress bar on stderr, drawn only when stderr is a terminal and not --quiet.
    pub fn progress(&self, len: u64, what: &str) -> indicatif::ProgressBar {
        if !self.stderr_tty || self.quiet {
            return indicatif::ProgressBar::hidden();
        }
        let pb = indicatif::ProgressBar::with_draw_target(
            Some(len),
            indicatif::ProgressDrawTarget::stderr(),
        );
        if let Ok(style) = indicatif::ProgressStyle::with_template(
            "{spinner} {msg} [{bar:30}] {pos}/{len} {per_sec} eta {eta}",
        ) {
            pb.set_style(style.progress_chars("=> "));
        }
        pb.set_message(what.to_string());
        pb
    }

    /// A spinner on stderr, drawn only when stderr is a terminal and not --quiet (waiting for
    /// something with no known length, such as an agent coming online).
    pub fn spinner(&self, what: &str) -> indicatif::ProgressBar {
        if !self.stderr_tty || self.quiet {
            return indicatif::ProgressBar::hidden();
        }
        let pb =
            indicatif::ProgressBar::with_draw_target(None, indicatif::ProgressDrawTarget::stderr());
        if let Ok(style) = indicatif::ProgressStyle::with_template("{spinner} {msg} {elapsed}") {
            pb.set_style(style);
        }
        pb.set_message(what.to_string());
        pb.enable_steady_tick(std::time::Duration::from_millis(120));
        pb
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

/// Shorten a list for a table: the first `limit` items, and how many were left out.
pub fn truncated<T>(items: &[T], limit: usize) -> (&[T], usize) {
    if items.len() > limit {
        (&items[..limit], items.len() - limit)
    } else {
        (items, 0)
    }
}
