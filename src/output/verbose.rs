//! `-v` / `-vv`: what an operator debugging a tenant wants on stderr. sqlx reports every
//! statement it runs (target `sqlx::query`: its summary, rows, elapsed time) through the `log`
//! facade; this logger counts them, and with `-vv` prints each one on a line of its own. Bound
//! parameters (secret values among them) are never part of those records.

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

#[cfg(test)]
mod tests {
    use super::statement_line;

    #[test]
    fn statement_lines() {
        let l = statement_line(
            "summary=\"SELECT 1 …\" db.statement=\"\\n\\nSELECT 1\\n\" rows_affected=0 rows_returned=1 elapsed=2.1ms elapsed_secs=0.0021",
        );
        assert_eq!(l, "     2.1ms  rows 0/1  SELECT 1 …");
    }
}
