//! A secret's value: read into a [`Zeroizing`] buffer grown by hand (so no stale copy is left
//! behind in freed memory), one trailing newline stripped, empty values, NUL bytes and values
//! over [`MAX_VALUE_BYTES`] refused. Where it came from is recorded; the value never is.

use std::io::Read;

use serde::Serialize;
use zeroize::Zeroizing;

use crate::error::{Error, Result};

/// The largest value accepted (environment values, certificates, small JSON documents).
pub const MAX_VALUE_BYTES: usize = 1 << 20;

/// Where a value came from (recorded in the audit row; the value never is).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ValueSource {
    Stdin,
    File,
    Prompt,
}

/// Read `r` to the end into a zeroizing buffer, refusing more than [`MAX_VALUE_BYTES`]. The
/// buffer is grown by hand: `Vec`'s own growth would leave an unzeroed copy in freed memory.
pub fn read_value_from(mut r: impl Read, what: &str) -> Result<Zeroizing<Vec<u8>>> {
    let mut buf = Zeroizing::new(Vec::with_capacity(1024));
    let mut chunk = Zeroizing::new([0u8; 4096]);
    loop {
        let n = match r.read(&mut chunk[..]) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                return Err(Error::usage(format!(
                    "could not read the value from {what}: {e}"
                )))
            }
        };
        // Room for the one trailing newline `finish_value` strips: the limit is on the value.
        if buf.len() + n > MAX_VALUE_BYTES + 2 {
            return Err(Error::usage(format!(
                "the value from {what} is larger than {} KiB; secrets are environment values",
                MAX_VALUE_BYTES / 1024
            )));
        }
        if buf.len() + n > buf.capacity() {
            let mut bigger =
                Zeroizing::new(Vec::with_capacity((buf.capacity() * 2).max(buf.len() + n)));
            bigger.extend_from_slice(&buf);
            buf = bigger;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Ok(buf)
}

/// Strip one trailing newline (`\n` or `\r\n`), then refuse empty values and NUL bytes (an
/// environment value cannot hold one).
pub fn finish_value(mut value: Zeroizing<Vec<u8>>, what: &str) -> Result<Zeroizing<Vec<u8>>> {
    if value.last() == Some(&b'\n') {
        value.pop();
        if value.last() == Some(&b'\r') {
            value.pop();
        }
    }
    if value.is_empty() {
        return Err(Error::usage(format!(
            "the value from {what} is empty; empty secrets are refused (use `orgctl secret delete` to remove one)"
        )));
    }
    if value.len() > MAX_VALUE_BYTES {
        return Err(Error::usage(format!(
            "the value from {what} is larger than {} KiB; secrets are environment values",
            MAX_VALUE_BYTES / 1024
        )));
    }
    if value.contains(&0) {
        return Err(Error::usage(format!(
            "the value from {what} contains a NUL byte, which an environment value cannot hold"
        )));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Exit;

    #[test]
    fn values_strip_one_newline_and_refuse_empty_and_nul() {
        let v = |b: &[u8]| {
            read_value_from(b, "t")
                .and_then(|r| finish_value(r, "t"))
                .map(|z| z.to_vec())
                .map_err(|e| e.exit)
        };
        assert_eq!(v(b"abc\n"), Ok(b"abc".to_vec()));
        assert_eq!(v(b"abc\r\n"), Ok(b"abc".to_vec()));
        assert_eq!(v(b"abc\n\n"), Ok(b"abc\n".to_vec()));
        assert_eq!(v(b" x "), Ok(b" x ".to_vec()));
        assert_eq!(v(b"\n"), Err(Exit::Usage));
        assert_eq!(v(b""), Err(Exit::Usage));
        assert_eq!(v(b"a\0b"), Err(Exit::Usage));
        let big = vec![b'x'; MAX_VALUE_BYTES + 1];
        assert_eq!(v(&big), Err(Exit::Usage));
        let ok = vec![b'x'; MAX_VALUE_BYTES];
        assert_eq!(v(&ok).map(|v| v.len()), Ok(MAX_VALUE_BYTES));
    }
}
