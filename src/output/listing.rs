//! Listings: how many rows a listing shows, stdout for streamed output, and a shortened list.

use std::io::Write;

use crate::error::{Error, Result};

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

#[cfg(test)]
mod tests {
    use super::listing_limit;

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
}
