//! The one place that renders output: tables (comfy-table) and JSON (serde_json) on stdout,
//! messages, progress (indicatif) and prompts (dialoguer) on stderr.
//!
//! stdout carries the result only. A closed stdout (`orgctl token list | head`) is not an error.

pub mod duration;
pub mod head;
pub mod table;

/// How a command's result is printed (`-o`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    /// Human-readable tables.
    Table,
    /// One JSON document on stdout.
    Json,
}

use std::io::{IsTerminal, Write};

use comfy_table::{presets, ContentArrangement, Table};
use serde::Serialize;

use crate::error::{sanitize, Error, Result};

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

    /// A table on stdout: wrapped to the terminal's width, or, piped, one line per row within
    /// [`table::PIPED_WIDTH`] columns (`COLUMNS` when set), long columns following it.
    pub fn table(&self, table: &Table) -> Result<()> {
        self.stdout(&format!("{}\n", self.render_table(table)))
    }

    /// A table's text as [`Output::table`] prints it (no final newline).
    pub fn render_table(&self, table: &Table) -> String {
        if self.stdout_tty {
            return table.to_string();
        }
        table::piped(table, self.width().map_or(table::PIPED_WIDTH, usize::from))
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
            // Wrap to the terminal only when its width is known: a terminal that reports 0x0
            // (some CI runners, `docker exec` without a size) counts as 80 columns, and one
            // whose size cannot be read gets no wrapping at all, never 1-character columns.
            match self.width() {
                Some(w) => {
                    t.set_content_arrangement(ContentArrangement::Dynamic);
                    t.set_width(w);
                }
                None => {
                    t.set_content_arrangement(ContentArrangement::Disabled);
                }
            }
        } else {
            t.load_preset(presets::ASCII_BORDERS_ONLY_CONDENSED);
            t.set_content_arrangement(ContentArrangement::Disabled);
        }
        t.set_header(header);
        t
    }

    /// The width of the terminal on stdout: `COLUMNS` when set, else the terminal's own size
    /// (0 columns counts as 80); None when stdout is not a terminal or its size is unknown.
    pub fn width(&self) -> Option<u16> {
        if let Some(w) = std::env::var("COLUMNS")
            .ok()
            .and_then(|c| c.trim().parse::<u16>().ok())
            .filter(|w| *w > 0)
        {
            return Some(w);
        }
        if !self.stdout_tty {
            return None;
        }
        match dialoguer::console::Term::stdout().size_checked() {
            Some((_, 0)) => Some(80),
            Some((_, cols)) => Some(cols),
            None => None,
        }
    }

    /// The width a compact table must fit: the terminal's, else 80.
    pub fn compact_width(&self) -> usize {
        usize::from(self.width().unwrap_or(80)).max(40)
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
            "{spinner} {msg} [{bar:30}] {pos}/{len} {rate} eta {eta}",
        ) {
            // indicatif's {per_sec} prints rates like "51.3538/s": round them.
            let style = style.with_key(
                "rate",
                |state: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
                    let _ = w.write_str(&rate(state.per_sec()));
                },
            );
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

/// How many rows a listing shows (None: all, streamed). `--limit N` wins (0 = all). Without it
/// a script gets every match: JSON, or any stdout that is not a terminal. Only the human table
/// on a terminal defaults to the newest `default_on_terminal` rows (stderr says when more
/// match), so a 3 a.m. listing does not scroll a million rows past.
pub fn listing_limit(
    given: Option<u64>,
    json: bool,
    stdout_tty: bool,
    default_on_terminal: u64,
) -> Option<u64> {
    match given {
        Some(0) => None,
        Some(n) => Some(n),
        None if json || !stdout_tty => None,
        None => Some(default_on_terminal),
    }
}

/// The progress bar's message over a fleet (backfill run and rollback): tenants finished
/// without an error, with one, and still running.
pub fn fleet_progress(done: usize, failed: usize, in_flight: usize) -> String {
    format!("done {done} · failed {failed} · in flight {in_flight}")
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

/// `-v` / `-vv`: what an operator debugging a tenant wants on stderr. sqlx reports every
/// statement it runs (target `sqlx::query`: its summary, rows, elapsed time) through the `log`
/// facade; this logger counts them, and with `-vv` prints each one on a line of its own. Bound
/// parameters (secret values among them) are never part of those records.
pub mod verbose {
    use std::io::Write;
    use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};

    static LEVEL: AtomicU8 = AtomicU8::new(0);
    static STATEMENTS: AtomicU64 = AtomicU64::new(0);
    static LOGGER: Logger = Logger;

    struct Logger;

    impl log::Log for Logger {
        fn enabled(&self, m: &log::Metadata<'_>) -> bool {
            m.target().starts_with("sqlx::query")
        }

        fn log(&self, r: &log::Record<'_>) {
            if !self.enabled(r.metadata()) {
                return;
            }
            STATEMENTS.fetch_add(1, Ordering::Relaxed);
            if LEVEL.load(Ordering::Relaxed) < 2 {
                return;
            }
            let line = statement_line(&r.args().to_string());
            let line = crate::redact::mask(&crate::error::sanitize(&line));
            let _ = writeln!(std::io::stderr(), "sql: {line}");
        }

        fn flush(&self) {}
    }

    /// "elapsed  rows  summary" from sqlx's record (`summary="…" db.statement="…"
    /// rows_affected=N rows_returned=N elapsed=…`); the raw text, folded, if it has another shape.
    pub fn statement_line(text: &str) -> String {
        let field = |name: &str| -> Option<String> {
            let start = text.find(&format!("{name}="))? + name.len() + 1;
            let rest = &text[start..];
            Some(rest.split_whitespace().next().unwrap_or("").to_string())
        };
        let summary = text.find("summary=\"").and_then(|i| {
            let rest = &text[i + 9..];
            rest.find("\" db.statement=")
                .or_else(|| rest.find('"'))
                .map(|j| rest[..j].to_string())
        });
        let folded = |s: &str| s.split_whitespace().collect::<Vec<_>>().join(" ");
        let mut line = match (summary, field("elapsed")) {
            (Some(sum), Some(el)) => format!(
                "{el:>10}  rows {}/{}  {}",
                field("rows_affected").unwrap_or_default(),
                field("rows_returned").unwrap_or_default(),
                folded(&sum)
            ),
            _ => folded(text),
        };
        if line.chars().count() > 200 {
            line = line.chars().take(199).collect::<String>() + "…";
        }
        line
    }

    /// Start counting (and with -vv printing) statements. Nothing happens without -v.
    pub fn install(verbose: u8) {
        if verbose == 0 {
            return;
        }
        LEVEL.store(verbose, Ordering::Relaxed);
        if log::set_logger(&LOGGER).is_ok() {
            log::set_max_level(log::LevelFilter::Debug);
        }
    }

    /// Statements run so far (counted only with -v).
    pub fn statements() -> u64 {
        STATEMENTS.load(Ordering::Relaxed)
    }

    /// A `-v` line on stderr; never fails the command.
    pub fn say(verbose: u8, msg: &str) {
        if verbose > 0 {
            let _ = writeln!(std::io::stderr(), "{}", crate::redact::mask(msg));
        }
    }
}

/// A progress rate for humans: "51/s", "3.2/s", "0.25/s".
pub fn rate(per_sec: f64) -> String {
    if !per_sec.is_finite() || per_sec <= 0.0 {
        "-/s".to_string()
    } else if per_sec >= 10.0 {
        format!("{}/s", per_sec.round() as u64)
    } else if per_sec >= 1.0 {
        format!("{per_sec:.1}/s")
    } else {
        format!("{per_sec:.2}/s")
    }
}

/// stdout for streamed output: buffered, and a closed pipe just ends the output.
pub struct Sink {
    out: std::io::BufWriter<std::io::Stdout>,
    pub closed: bool,
}

impl Default for Sink {
    fn default() -> Self {
        Self::new()
    }
}

impl Sink {
    pub fn new() -> Self {
        Sink {
            out: std::io::BufWriter::with_capacity(64 * 1024, std::io::stdout()),
            closed: false,
        }
    }

    fn check(&mut self, r: std::io::Result<()>) -> Result<()> {
        match r {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {
                self.closed = true;
                Ok(())
            }
            Err(e) => Err(Error::failed(format!("could not write to stdout: {e}"))),
        }
    }

    pub fn write(&mut self, s: &str) -> Result<()> {
        if self.closed {
            return Ok(());
        }
        let r = self.out.write_all(s.as_bytes());
        self.check(r)
    }

    pub fn flush(&mut self) -> Result<()> {
        if self.closed {
            return Ok(());
        }
        let r = self.out.flush();
        self.check(r)
    }
}

/// Shorten a list for a table: the first `limit` items, and how many were left out.
pub fn truncated<T>(items: &[T], limit: usize) -> (&[T], usize) {
    if items.len() > limit {
        (&items[..limit], items.len() - limit)
    } else {
        (items, 0)
    }
}

/// A borderless table (columns two spaces apart) that fits `width` columns: the columns in
/// `flex` (names, labels) are cut with '…' as needed, the others (handles, dates) never are,
/// so every handle stays whole and copyable.
pub fn compact_table(
    header: &[&str],
    rows: &[Vec<String>],
    flex: &[usize],
    width: usize,
) -> String {
    let n = header.len();
    let len = |s: &str| s.chars().count();
    let mut widths: Vec<usize> = header.iter().map(|h| len(h)).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate().take(n) {
            widths[i] = widths[i].max(len(c));
        }
    }
    let fixed: usize = (0..n)
        .filter(|i| !flex.contains(i))
        .map(|i| widths[i])
        .sum();
    let seps = 2 * n.saturating_sub(1);
    let mut budget = width.saturating_sub(fixed + seps);
    // Share what is left between the flexible columns, narrowest first, each at least 6.
    let mut order: Vec<usize> = flex.to_vec();
    order.sort_by_key(|&i| widths[i]);
    for (k, &i) in order.iter().enumerate() {
        let share = (budget / (order.len() - k)).max(6);
        widths[i] = widths[i].min(share);
        budget = budget.saturating_sub(widths[i]);
    }
    let cut = |s: &str, w: usize| -> String {
        if len(s) <= w {
            s.to_string()
        } else {
            let mut t: String = s.chars().take(w.saturating_sub(1)).collect();
            t.push('…');
            t
        }
    };
    let line = |cells: &mut dyn Iterator<Item = &str>| -> String {
        let parts: Vec<String> = cells
            .enumerate()
            .map(|(i, c)| {
                let c = cut(c, widths[i]);
                if i + 1 == n {
                    c
                } else {
                    format!("{c:<w$}", w = widths[i])
                }
            })
            .collect();
        let mut l = parts.join("  ");
        l.truncate(l.trim_end().len());
        l.push('\n');
        l
    };
    let mut out = line(&mut header.iter().copied());
    for r in rows {
        out.push_str(&line(&mut r.iter().map(|s| s.as_str())));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::{compact_table, listing_limit};

    #[test]
    fn list_limit_defaults() {
        // --limit wins everywhere; 0 is all.
        for (json, tty) in [(false, false), (false, true), (true, false), (true, true)] {
            assert_eq!(listing_limit(Some(7), json, tty, 100), Some(7));
            assert_eq!(listing_limit(Some(0), json, tty, 100), None);
        }
        // Without it only the human table on a terminal is cut.
        assert_eq!(listing_limit(None, false, true, 100), Some(100));
        assert_eq!(listing_limit(None, false, false, 100), None);
        assert_eq!(listing_limit(None, true, true, 100), None);
        assert_eq!(listing_limit(None, true, false, 100), None);
    }

    #[test]
    fn statement_lines() {
        let l = super::verbose::statement_line(
            "summary=\"SELECT 1 …\" db.statement=\"\\n\\nSELECT 1\\n\" rows_affected=0 rows_returned=1 elapsed=2.1ms elapsed_secs=0.0021",
        );
        assert_eq!(l, "     2.1ms  rows 0/1  SELECT 1 …");
    }

    #[test]
    fn rates_are_rounded() {
        assert_eq!(super::rate(51.3538), "51/s");
        assert_eq!(super::rate(3.21), "3.2/s");
        assert_eq!(super::rate(0.254), "0.25/s");
        assert_eq!(super::rate(0.0), "-/s");
    }

    #[test]
    fn compact_tables_fit_and_keep_handles_whole() {
        let rows = vec![vec![
            "abcdefgh".to_string(),
            "a very long token name that goes on and on".to_string(),
            "org-token:abcdefgh-and-a-long-label".to_string(),
            "2024-03-01".to_string(),
        ]];
        let t = compact_table(
            &["PREFIX", "NAME", "CREATED_BY", "CREATED"],
            &rows,
            &[1, 2],
            50,
        );
        for l in t.lines() {
            assert!(l.chars().count() <= 50, "{l}");
        }
        assert!(t.contains("abcdefgh  ") && t.contains("2024-03-01") && t.contains('…'));
    }
}
