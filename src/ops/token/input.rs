//! Checked input: how a command names a token, and the names and labels it may give one.

use uuid::Uuid;

use super::{MAX_LABEL_CHARS, MIN_PREFIX_LEN, PREFIX_LEN};
use crate::error::{sanitize, Error, Result};
use crate::platform::tokens as platform;

/// How a command names one token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TokenRef {
    Id(Uuid),
    /// 4 to 8 characters matched against the start of `prefix`.
    Prefix(String),
}

impl TokenRef {
    /// A UUID is an id; 4 to 8 characters are a prefix; anything else is bad input. The
    /// argument is not echoed when it is longer than a prefix: it might be a pasted plaintext.
    pub fn parse(raw: &str) -> Result<Self> {
        if raw.chars().any(|c| c.is_control()) {
            return Err(Error::usage(
                "the token id or prefix must not contain control characters",
            ));
        }
        if let Ok(id) = Uuid::try_parse(raw) {
            return Ok(TokenRef::Id(id));
        }
        let n = raw.chars().count();
        if n > PREFIX_LEN {
            return Err(Error::usage(format!(
                "the token argument ({n} characters) is neither a token id (a UUID) nor a prefix ({MIN_PREFIX_LEN} to {PREFIX_LEN} characters); if it is a token's plaintext, use its first {PREFIX_LEN} characters"
            )));
        }
        if n < MIN_PREFIX_LEN {
            return Err(Error::usage(format!(
                "token prefix '{raw}' is too short: give at least {MIN_PREFIX_LEN} characters, or the token id"
            )));
        }
        Ok(TokenRef::Prefix(raw.to_string()))
    }

    /// `id` or `prefix`, as the audit row records how the token was named.
    pub fn kind(&self) -> &'static str {
        match self {
            TokenRef::Id(_) => "id",
            TokenRef::Prefix(_) => "prefix",
        }
    }
}

/// `prefix LIKE $1 ESCAPE '\'`: the user's characters match literally (`_` is a base64url
/// character and a LIKE wildcard).
pub fn like_prefix(p: &str) -> String {
    let mut s = String::with_capacity(p.len() + 1);
    for c in p.chars() {
        if matches!(c, '\\' | '%' | '_') {
            s.push('\\');
        }
        s.push(c);
    }
    s.push('%');
    s
}

/// A token's name: trimmed, not empty, at most the platform's bytes, no control characters.
pub fn check_name(name: Option<&str>) -> Result<Option<String>> {
    let Some(n) = name else { return Ok(None) };
    let n = n.trim();
    if n.is_empty() {
        return Err(Error::usage(
            "--name must not be empty (omit it for no name)",
        ));
    }
    // The platform counts bytes: 40 characters of 3 bytes each are 120.
    let bytes = n.len();
    if bytes > platform::MAX_NAME_BYTES {
        return Err(Error::usage(format!(
            "--name is {bytes} bytes long in UTF-8 ({} characters); the platform allows at most {} bytes",
            n.chars().count(),
            platform::MAX_NAME_BYTES
        )));
    }
    if n.chars().any(|c| c.is_control()) {
        return Err(Error::usage("--name must not contain control characters"));
    }
    Ok(Some(n.to_string()))
}

/// The `created_by` of a mint: `orgctl:<OS user>` when not given; never a label the platform
/// reserves for itself.
pub fn check_mint_label(label: Option<&str>) -> Result<String> {
    let Some(l) = label else {
        return Ok(format!("orgctl:{}", crate::sys::os_user()));
    };
    let l = l.trim();
    if l.is_empty() {
        return Err(Error::usage(
            "--created-by must not be empty (omit it for orgctl:<OS user>)",
        ));
    }
    let len = l.chars().count();
    if len > MAX_LABEL_CHARS {
        return Err(Error::usage(format!(
            "--created-by is {len} characters long; at most {MAX_LABEL_CHARS} are allowed"
        )));
    }
    if l.chars().any(|c| c.is_control()) {
        return Err(Error::usage(
            "--created-by must not contain control characters",
        ));
    }
    // A token minted under the platform's own provenance would pass for one the platform
    // minted (or for the agent's own credential) in every audit and every bulk revoke.
    if let Some(why) = platform::reserved_label(l) {
        return Err(Error::usage(format!(
            "--created-by '{}' is reserved by the platform ({why}); choose a label of your own, e.g. the incident or change number",
            sanitize(l)
        )));
    }
    Ok(l.to_string())
}

/// A label to match (revoke, list): exact, not trimmed, but never empty.
pub fn check_match_label(label: &str) -> Result<&str> {
    if label.is_empty() {
        return Err(Error::usage("--created-by must not be empty"));
    }
    Ok(label)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Exit;

    #[test]
    fn references() {
        let id = "70000000-0000-4000-8000-000000000001";
        assert!(matches!(TokenRef::parse(id), Ok(TokenRef::Id(_))));
        assert_eq!(
            TokenRef::parse("ab_d").ok(),
            Some(TokenRef::Prefix("ab_d".into()))
        );
        for bad in [
            "",
            "abc",
            "70000000-0000-4000-8000-00000000000Z",
            "a\u{1b}cd",
        ] {
            assert_eq!(
                TokenRef::parse(bad).map_err(|e| e.exit).err(),
                Some(Exit::Usage),
                "{bad:?}"
            );
        }
        // A pasted plaintext is refused without being echoed.
        let plain = "AbCdEfGhIjKlMnOpQrStUvWxYz0123456789-_AbCd";
        match TokenRef::parse(plain) {
            Err(e) => assert!(!e.message.contains(plain) && !e.message.contains("AbCdEfGh")),
            Ok(_) => panic!("accepted a plaintext"),
        }
    }

    #[test]
    fn like_escaping() {
        assert_eq!(like_prefix("ab_%"), "ab\\_\\%%");
        assert_eq!(like_prefix("a\\b'"), "a\\\\b'%");
    }

    #[test]
    fn names_and_labels() {
        assert!(check_name(Some(&"x".repeat(100))).is_ok());
        assert_eq!(
            check_name(Some(&"x".repeat(101))).map_err(|e| e.exit).err(),
            Some(Exit::Usage)
        );
        assert_eq!(
            check_name(Some("  ")).map_err(|e| e.exit).err(),
            Some(Exit::Usage)
        );
        // Bytes, not characters: 34 three-byte characters are 102 bytes.
        assert_eq!(
            check_name(Some(&"€".repeat(34))).map_err(|e| e.exit).err(),
            Some(Exit::Usage)
        );
        assert!(check_name(Some(&"€".repeat(33))).is_ok());
        assert!(matches!(check_mint_label(None), Ok(l) if l.starts_with("orgctl:")));
        for reserved in ["session", " admin-token ", "system:concierge:x"] {
            assert_eq!(
                check_mint_label(Some(reserved)).map_err(|e| e.exit).err(),
                Some(Exit::Usage),
                "{reserved}"
            );
        }
        assert_eq!(
            check_mint_label(Some("a\nb")).map_err(|e| e.exit).err(),
            Some(Exit::Usage)
        );
    }
}
