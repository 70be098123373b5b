//! The `--reason` rule: checked once at start-up ([`check_reason`]) and carried by the
//! command's `Context` as a [`Who`] to every append, whose rows store it. With
//! `ORGCTL_REQUIRE_REASON=1` a mutating command without one is refused before any connection
//! (exit 2).

use crate::error::{sanitize, Error, Result};

/// The longest `--reason` accepted (an incident or change number with a short note).
pub const MAX_REASON_CHARS: usize = 500;

/// On whose word the rows of an append are written, as each row records it: the run's
/// `--reason` (checked by [`check_reason`]). The command's `Context` holds it and passes it
/// down to every function that appends ([`super::record`], [`super::append_audit`],
/// [`super::append_after_head`], [`super::record_after_commit`]); `Who::default()` records no
/// reason.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Who {
    /// The checked `--reason` / `ORGCTL_REASON`, stored in the `reason` column of every row.
    pub reason: Option<String>,
}

/// Check `--reason` / `ORGCTL_REASON` against `ORGCTL_REQUIRE_REASON` before anything
/// connects: a reason is one line of at most [`MAX_REASON_CHARS`] characters; a mutating
/// command without one is refused when a reason is required. Exit 2 for all of these.
pub fn check_reason(
    reason: Option<&str>,
    require: Option<&str>,
    mutating: bool,
) -> Result<Option<String>> {
    let required = match require.map(|r| r.trim().to_ascii_lowercase()) {
        None => false,
        Some(r) => match r.as_str() {
            "" | "0" | "false" | "no" | "off" => false,
            "1" | "true" | "yes" | "on" => true,
            _ => {
                return Err(Error::usage(format!(
                "ORGCTL_REQUIRE_REASON is '{}': set it to 1 to require --reason on changes, or 0",
                sanitize(&r)
            )))
            }
        },
    };
    let reason = match reason {
        None => None,
        Some(r) => {
            let r = r.trim();
            if r.is_empty() {
                return Err(Error::usage(
                    "--reason (or ORGCTL_REASON) is empty: give the incident or change number, e.g. --reason INC-1234",
                ));
            }
            if r.chars().any(char::is_control) {
                return Err(Error::usage(
                    "--reason must be one line without control characters",
                ));
            }
            if r.chars().count() > MAX_REASON_CHARS {
                return Err(Error::usage(format!(
                    "--reason is longer than {MAX_REASON_CHARS} characters: give the incident or change number and keep the story in the ticket"
                )));
            }
            Some(r.to_string())
        }
    };
    if required && mutating && reason.is_none() {
        return Err(Error::usage(
            "ORGCTL_REQUIRE_REASON=1: this command changes the tenant and needs a reason: pass --reason TEXT or set ORGCTL_REASON (an incident or change number); nothing was done",
        ));
    }
    Ok(reason)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Exit;

    #[test]
    fn reasons() {
        assert_eq!(
            check_reason(None, None, true).map_err(|e| e.exit).ok(),
            Some(None)
        );
        assert_eq!(
            check_reason(Some(" INC-1 "), Some("1"), true)
                .ok()
                .flatten()
                .as_deref(),
            Some("INC-1")
        );
        for (reason, require, mutating) in [
            (None, Some("1"), true),
            (Some("  "), None, false),
            (Some("a\nb"), None, true),
            (None, Some("maybe"), false),
        ] {
            assert_eq!(
                check_reason(reason, require, mutating)
                    .map_err(|e| e.exit)
                    .err(),
                Some(Exit::Usage),
                "{reason:?} {require:?}"
            );
        }
        assert!(check_reason(None, Some("1"), false).is_ok());
        assert!(check_reason(None, Some("0"), true).is_ok());
        let long = "x".repeat(MAX_REASON_CHARS + 1);
        assert!(check_reason(Some(&long), None, true).is_err());
    }
}
