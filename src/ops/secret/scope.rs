//! Where a secret lives and what its key may be.

use uuid::Uuid;

use crate::error::{sanitize, Error, Result};

/// Where a secret lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    Workspace(Uuid),
    Global,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Workspace(_) => "workspace",
            Scope::Global => "global",
        }
    }

    pub fn workspace_id(self) -> Option<Uuid> {
        match self {
            Scope::Workspace(id) => Some(id),
            Scope::Global => None,
        }
    }

    /// "workspace secret KEY of ID" / "global secret KEY", for questions and errors.
    pub fn describe(self, key: &str) -> String {
        match self {
            Scope::Workspace(id) => format!("workspace secret {key} of {id}"),
            Scope::Global => format!("global secret {key}"),
        }
    }
}

/// The longest secret key (an environment variable name) orgctl writes.
pub const MAX_KEY_CHARS: usize = 256;

/// Keys are environment variable names: `^[A-Za-z_][A-Za-z0-9_]*$`, at most
/// [`MAX_KEY_CHARS`] characters.
pub fn check_key(key: &str) -> Result<()> {
    if key.chars().count() > MAX_KEY_CHARS {
        // Never echoed whole: it may be a value pasted in the wrong place.
        return Err(Error::usage(format!(
            "the secret key is longer than {MAX_KEY_CHARS} characters ({} given; not shown): a key is an environment variable name",
            key.chars().count()
        )));
    }
    let mut chars = key.chars();
    let ok = match chars.next() {
        Some(c) if c.is_ascii_alphabetic() || c == '_' => {
            chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        }
        _ => false,
    };
    if ok {
        Ok(())
    } else if key.contains('=') {
        // KEY=value: the part after '=' is likely the secret itself; never echo it.
        Err(Error::usage(
            "the secret key contains '=' (not shown: it may carry the value); give KEY alone: secret values are never read from the command line, pipe the value on stdin or pass --value-file PATH",
        ))
    } else {
        Err(Error::usage(format!(
            "'{}' is not a valid secret key: use letters, digits and '_', not starting with a digit (^[A-Za-z_][A-Za-z0-9_]*$)",
            sanitize(key)
        )))
    }
}

/// The refusal when the target workspace is not in the tenant.
pub(super) fn unknown_workspace(id: Uuid) -> Error {
    Error::failed(format!(
        "workspace {id} does not exist in this tenant; nothing was changed: check the id"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Exit;

    #[test]
    fn keys() {
        for good in ["A", "_", "OPENAI_API_KEY", "a1_b2", "_9"] {
            assert!(check_key(good).is_ok(), "{good}");
        }
        for bad in ["", "1A", "A-B", "A B", "Ä", "A.B", "A\n"] {
            assert_eq!(
                check_key(bad).map_err(|e| e.exit).err(),
                Some(Exit::Usage),
                "{bad}"
            );
        }
    }
}
