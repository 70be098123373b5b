//! Database URLs: parsed once, their passwords registered for masking, shown only redacted.

use std::fmt;
use std::str::FromStr;

use sqlx::postgres::PgConnectOptions;

use crate::error::{Error, Result};
use crate::redact;

/// A parsed database URL whose `Debug` and `Display` never show the password.
#[derive(Clone)]
pub struct DbUrl {
    opts: PgConnectOptions,
    redacted: String,
    host: String,
}

impl DbUrl {
    pub fn parse(raw: &str) -> Result<Self> {
        let raw = raw.trim();
        register_intended_password(raw);
        let url = url::Url::parse(raw).map_err(|e| {
            Error::usage(format!(
                "invalid database URL: {e} (expected postgres://user:password@host:port/dbname)"
            ))
        })?;
        if !matches!(url.scheme(), "postgres" | "postgresql") {
            return Err(Error::usage(format!(
                "invalid database URL: scheme '{}' is not postgres:// or postgresql://",
                url.scheme()
            )));
        }
        if let Some(pw) = url.password() {
            // url gives the percent-encoded form; the server and sqlx see the decoded one.
            redact::register(pw);
            redact::register(&percent_encoding::percent_decode_str(pw).decode_utf8_lossy());
        }
        let mut shown = url.clone();
        if shown.password().is_some() {
            // set_password only fails for cannot-be-a-base URLs, which postgres:// is not.
            let _ = shown.set_password(Some("****"));
        }
        // Query parameters can carry a password too (?password=...).
        let pairs: Vec<(String, String)> = shown
            .query_pairs()
            .map(|(k, v)| {
                if k.eq_ignore_ascii_case("password") {
                    redact::register(&v);
                    (k.into_owned(), "****".to_string())
                } else {
                    (k.into_owned(), v.into_owned())
                }
            })
            .collect();
        if !pairs.is_empty() {
            shown.query_pairs_mut().clear().extend_pairs(pairs);
        }
        let redacted = shown.to_string();
        let opts = PgConnectOptions::from_str(raw).map_err(|e| {
            Error::usage(format!(
                "invalid database URL {redacted}: {}",
                redact::mask(&crate::error::driver_text(&e))
            ))
        })?;
        let host = format!(
            "{}:{}/{}",
            opts.get_host(),
            opts.get_port(),
            opts.get_database().unwrap_or("")
        );
        Ok(DbUrl {
            opts,
            redacted,
            host,
        })
    }

    /// `host:port/dbname`, for messages.
    pub fn target(&self) -> &str {
        &self.host
    }

    pub fn options(&self) -> &PgConnectOptions {
        &self.opts
    }
}

impl fmt::Display for DbUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted)
    }
}

impl fmt::Debug for DbUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DbUrl({})", self.redacted)
    }
}

/// A password typed without percent-encoding its '/', '?' or '#' ends the authority early:
/// `postgres://u:5432/pw@host/db` parses as host `u`, port 5432 and database `pw@host/db`, so
/// the parsed URL has no password to mask and the rest of it would be printed as host and
/// database name. Userinfo ends at the last '@' of the authority the user meant, so register
/// what follows the first ':' before it. Masking a string that is not really a password is
/// harmless.
fn register_intended_password(raw: &str) {
    let Some((_, rest)) = raw.split_once("://") else {
        return;
    };
    let Some(at) = rest.rfind('@') else {
        return;
    };
    if let Some((_, pw)) = rest[..at].split_once(':') {
        redact::register(pw);
        redact::register(&percent_encoding::percent_decode_str(pw).decode_utf8_lossy());
    }
}

/// Resolve `--database-url` / `DATABASE_URL`.
pub fn url_from(arg: Option<&str>) -> Result<DbUrl> {
    match arg {
        Some(s) if !s.trim().is_empty() => DbUrl::parse(s),
        _ => Err(Error::usage(
            "no database given: pass --database-url or set DATABASE_URL (try `orgctl dev up`)",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_redacts_password() {
        let u = match DbUrl::parse(
            "postgres://alice:s3cr%40t@db.example:6543/tenant?sslmode=disable",
        ) {
            Ok(u) => u,
            Err(e) => panic!("{e}"),
        };
        let shown = format!("{u} {u:?} {}", u.target());
        assert!(!shown.contains("s3cr"), "{shown}");
        assert!(shown.contains("db.example:6543/tenant"));
        assert!(!redact::mask("x s3cr@t y").contains("s3cr@t"));
    }

    #[test]
    fn unencoded_delimiters_in_a_password_do_not_leak_it() {
        for (raw, pw) in [
            (
                "postgres://alice:5432/s3cret-tail@db.example/tenant",
                "5432/s3cret-tail",
            ),
            (
                "postgres://alice:99#frag-s3cret@db.example/tenant",
                "99#frag-s3cret",
            ),
        ] {
            let shown = match DbUrl::parse(raw) {
                Ok(u) => format!("{u} {u:?} {}", u.target()),
                Err(e) => e.message,
            };
            let printed = redact::mask(&shown);
            assert!(!printed.contains(pw), "{printed}");
        }
    }

    #[test]
    fn url_rejects_garbage() {
        for bad in [
            "",
            "not a url",
            "mysql://u:p@h/db",
            "postgres://u:pw@h:99999/db",
        ] {
            match DbUrl::parse(bad) {
                Ok(_) => panic!("accepted {bad}"),
                Err(e) => {
                    assert_eq!(e.exit, crate::error::Exit::Usage, "{bad}");
                    assert!(!e.message.contains(":pw@"), "{}", e.message);
                }
            }
        }
    }
}
