//! Org API token material: a fresh token and the hash the platform looks it up by.
//! The secret-value encryption rules live in [`crate::platform::keys`].

use base64::Engine;
use zeroize::Zeroizing;

use crate::error::{Error, Result};

// Kept so code written against the old path still builds; new code uses platform::keys.

/// A fresh org API token: 32 bytes from the OS CSPRNG, base64url without padding.
pub fn new_token() -> Result<Zeroizing<String>> {
    let mut bytes = Zeroizing::new([0u8; 32]);
    getrandom::getrandom(bytes.as_mut_slice())
        .map_err(|e| Error::failed(format!("the OS random number generator failed: {e}")))?;
    Ok(Zeroizing::new(
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes.as_slice()),
    ))
}

/// `sha256(plaintext as UTF-8 bytes)`, as stored in `org_api_tokens.token_hash`.
pub fn token_hash(plaintext: &str) -> Vec<u8> {
    use sha2::Digest;
    sha2::Sha256::digest(plaintext.as_bytes()).to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_format() {
        let t = match new_token() {
            Ok(t) => t,
            Err(e) => panic!("{e}"),
        };
        assert_eq!(t.len(), 43);
        assert!(t
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'));
        assert_eq!(token_hash(&t).len(), 32);
    }
}
