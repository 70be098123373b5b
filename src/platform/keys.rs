//! Secret values exactly as the platform reads them (SPEC §1): the key and the encryption.
//!
//! `encryption_version` 0 is the plain bytes; 1 is AES-256-GCM with a random 12-byte nonce
//! prepended to ciphertext-and-tag. The key comes from `SECRETS_ENCRYPTION_KEY`, read the way
//! the platform reads it ([`parse_key`]): the value as it is, never trimmed; if it decodes as
//! strict standard base64 it must decode to exactly 32 bytes, else it is invalid; only a value
//! that is not base64 and is exactly 32 bytes long is a raw key. An invalid key is always an
//! error (exit 2): the platform could not read what orgctl wrote with it. With no key values are
//! written as version 0 with a warning, except in production (`MOLECULE_ENV`, trimmed and
//! case-insensitive, `prod`/`production`), where a missing key is a refusal (exit 3). This is
//! the one module that owns these rules; `secret verify/rekey` load keys through
//! [`SecretBox::from_env`] / [`SecretBox::from_key_bytes`] too.

use aes_gcm::aead::Aead;
use aes_gcm::{Aes256Gcm, KeyInit, Nonce};
use base64::Engine;
use zeroize::Zeroizing;

use crate::error::{Error, Result};

pub const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;

#[derive(Clone)]
enum KeyState {
    Missing,
    Valid(Zeroizing<[u8; 32]>),
    Invalid(String),
}

/// The encryption settings read from the environment once per command.
#[derive(Clone)]
pub struct SecretBox {
    key: KeyState,
    production: bool,
}

impl std::fmt::Debug for SecretBox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let key = match self.key {
            KeyState::Missing => "missing",
            KeyState::Valid(_) => "set",
            KeyState::Invalid(_) => "invalid",
        };
        write!(
            f,
            "SecretBox {{ key: {key}, production: {} }}",
            self.production
        )
    }
}

impl SecretBox {
    /// Read `SECRETS_ENCRYPTION_KEY` (its bytes exactly as set: never trimmed, and a value
    /// that is not UTF-8 is judged by its bytes like any other) and `MOLECULE_ENV`. A bad key is
    /// not an error yet: it becomes one when a value has to be written with it
    /// ([`SecretBox::write_version`]) or when a caller asks ([`SecretBox::ensure_key_valid`]).
    pub fn from_env() -> Self {
        use std::os::unix::ffi::OsStrExt;
        let key = std::env::var_os("SECRETS_ENCRYPTION_KEY");
        let env = std::env::var_os("MOLECULE_ENV")
            .map(|v| v.to_string_lossy().into_owned())
            .unwrap_or_default();
        Self::from_key_bytes(key.as_ref().map(|k| k.as_bytes()), &env)
    }

    /// The key from a string (tests, `--new-key-file` contents); see [`SecretBox::from_key_bytes`].
    pub fn new(key: Option<&str>, molecule_env: &str) -> Self {
        Self::from_key_bytes(key.map(str::as_bytes), molecule_env)
    }

    /// The key from its raw bytes, under the rules of [`parse_key`]. An empty value is no key
    /// (as the platform treats an empty variable).
    pub fn from_key_bytes(key: Option<&[u8]>, molecule_env: &str) -> Self {
        let key = match key {
            None | Some(b"") => KeyState::Missing,
            Some(k) => match parse_key(k) {
                Ok(k) => KeyState::Valid(k),
                Err(why) => KeyState::Invalid(why),
            },
        };
        SecretBox {
            key,
            production: is_production(molecule_env),
        }
    }

    /// Whether a key is set (valid or not).
    pub fn key_set(&self) -> bool {
        !matches!(self.key, KeyState::Missing)
    }

    /// Exit 2 when a key is set but invalid; Ok when it is valid or missing.
    pub fn ensure_key_valid(&self) -> Result<()> {
        match &self.key {
            KeyState::Invalid(why) => Err(invalid_key(why)),
            _ => Ok(()),
        }
    }

    pub fn production(&self) -> bool {
        self.production
    }

    /// The version a write would produce, or the refusal/error it would meet. Planning calls
    /// this so a dry run reports the same refusal apply would.
    pub fn write_version(&self) -> Result<i32> {
        match (&self.key, self.production) {
            (KeyState::Valid(_), _) => Ok(1),
            (KeyState::Missing, false) => Ok(0),
            (KeyState::Missing, true) => Err(Error::refused(
                "MOLECULE_ENV is production and SECRETS_ENCRYPTION_KEY is not set: refusing to write a plaintext secret",
            )),
            // Always a usage error, in production too: the key itself is wrong, not the situation.
            (KeyState::Invalid(why), _) => Err(invalid_key(why)),
        }
    }

    /// The stderr warning for a write that will be stored in plaintext (no key, outside
    /// production: SPEC §1), or None when the write is encrypted or refused anyway.
    pub fn plaintext_warning(&self, what: &str) -> Option<String> {
        match self.write_version() {
            Ok(0) => Some(format!(
                "SECRETS_ENCRYPTION_KEY is not set: {what} is stored in plaintext (encryption_version 0); set the platform's key in SECRETS_ENCRYPTION_KEY to encrypt it"
            )),
            _ => None,
        }
    }

    /// Encrypt (or, without a key outside production, pass through) a value for storage.
    /// Returns `(encrypted_value, encryption_version)`.
    pub fn seal(&self, plaintext: &[u8]) -> Result<(Vec<u8>, i32)> {
        let version = self.write_version()?;
        match &self.key {
            KeyState::Valid(key) if version == 1 => {
                let cipher = Aes256Gcm::new_from_slice(key.as_slice())
                    .map_err(|_| Error::failed("could not initialise AES-256-GCM"))?;
                let mut nonce = [0u8; NONCE_LEN];
                getrandom::getrandom(&mut nonce).map_err(|e| {
                    Error::failed(format!("the OS random number generator failed: {e}"))
                })?;
                let ct = cipher
                    .encrypt(Nonce::from_slice(&nonce), plaintext)
                    .map_err(|_| Error::failed("AES-256-GCM encryption failed"))?;
                let mut out = Vec::with_capacity(NONCE_LEN + ct.len());
                out.extend_from_slice(&nonce);
                out.extend_from_slice(&ct);
                Ok((out, 1))
            }
            _ => Ok((plaintext.to_vec(), 0)),
        }
    }

    /// Decrypt a stored value; `None` when it cannot be read with the key at hand (no key,
    /// wrong key, unknown version, corrupt value). Callers treat `None` as "differs".
    pub fn open(&self, stored: &[u8], version: i32) -> Option<Zeroizing<Vec<u8>>> {
        match version {
            0 => Some(Zeroizing::new(stored.to_vec())),
            1 => {
                let KeyState::Valid(key) = &self.key else {
                    return None;
                };
                if stored.len() < NONCE_LEN + TAG_LEN {
                    return None;
                }
                let cipher = Aes256Gcm::new_from_slice(key.as_slice()).ok()?;
                let (nonce, ct) = stored.split_at(NONCE_LEN);
                cipher
                    .decrypt(Nonce::from_slice(nonce), ct)
                    .ok()
                    .map(Zeroizing::new)
            }
            _ => None,
        }
    }
}

/// `MOLECULE_ENV`, trimmed and case-insensitive, is `prod` or `production`.
pub fn is_production(molecule_env: &str) -> bool {
    matches!(
        molecule_env.trim().to_ascii_lowercase().as_str(),
        "prod" | "production"
    )
}

fn invalid_key(why: &str) -> Error {
    Error::usage(format!(
        "SECRETS_ENCRYPTION_KEY is invalid: {why}; the platform could not read secrets written with it (nothing was changed)"
    ))
}

/// The platform's key rule, on the value exactly as set: strict standard base64 (canonical
/// padding, no whitespace) must decode to exactly 32 bytes; a value that is not base64 is a raw
/// key only when it is exactly 32 bytes long. The reason it is invalid never contains the key.
pub fn parse_key(raw: &[u8]) -> std::result::Result<Zeroizing<[u8; 32]>, String> {
    let mut k = Zeroizing::new([0u8; 32]);
    if let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(raw) {
        let bytes = Zeroizing::new(bytes);
        if bytes.len() == 32 {
            k.copy_from_slice(&bytes);
            return Ok(k);
        }
        let hex = if raw.len() == 32 && raw.iter().all(u8::is_ascii_hexdigit) {
            " (a 32-character hex key such as `openssl rand -hex 16` is base64 to the platform)"
        } else {
            ""
        };
        return Err(format!(
            "it is base64 that decodes to {} bytes, not 32{hex}; use `openssl rand -base64 32`",
            bytes.len()
        ));
    }
    if raw.len() == 32 {
        k.copy_from_slice(raw);
        return Ok(k);
    }
    let ws = if raw
        .first()
        .into_iter()
        .chain(raw.last())
        .any(|c| c.is_ascii_whitespace())
    {
        " (it starts or ends with whitespace, which the platform does not trim)"
    } else {
        ""
    };
    Err(format!(
        "it is neither standard base64 of 32 bytes nor a raw value of exactly 32 bytes (it is {} bytes{ws}); use `openssl rand -base64 32`",
        raw.len()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_with_base64_and_raw_keys() {
        let b64 = base64::engine::general_purpose::STANDARD.encode([7u8; 32]);
        for key in [b64.as_str(), "0123456789abcdef-123456789abcdef"] {
            let sb = SecretBox::new(Some(key), "");
            let (ct, v) = match sb.seal(b"gpt") {
                Ok(x) => x,
                Err(e) => panic!("{e}"),
            };
            assert_eq!(v, 1);
            assert_eq!(ct.len(), NONCE_LEN + 3 + TAG_LEN);
            assert_eq!(
                sb.open(&ct, 1).as_deref().map(|v| v.as_slice()),
                Some(&b"gpt"[..])
            );
        }
    }

    #[test]
    fn key_rule_is_the_platforms() {
        let b = |n: usize| base64::engine::general_purpose::STANDARD.encode(vec![7u8; n]);
        let ok = |k: &str| parse_key(k.as_bytes()).is_ok();
        assert!(ok(&b(32)));
        assert!(ok("0123456789abcdef-123456789abcdef"));
        assert!(
            !ok("0123456789abcdef0123456789abcdef"),
            "hex is base64 of 24 bytes"
        );
        assert!(!ok(&b(24)));
        assert!(!ok(&b(33)));
        assert!(!ok(&format!(" {} ", b(32))), "never trimmed");
        assert!(!ok(&format!("{}\n", b(32))), "never trimmed");
        assert!(!ok(b(32).trim_end_matches('=')), "padding is required");
        assert!(!ok("short"));
        let sb = SecretBox::new(None, "");
        assert!(sb.plaintext_warning("x").is_some());
        assert!(SecretBox::new(Some(&b(32)), "")
            .plaintext_warning("x")
            .is_none());
    }

    #[test]
    fn no_key_is_plaintext_outside_production_only() {
        let sb = SecretBox::new(None, "staging");
        assert!(matches!(sb.seal(b"x"), Ok((ref v, 0)) if v == b"x"));
        for env in ["prod", "PRODUCTION", " Prod "] {
            let sb = SecretBox::new(None, env);
            assert_eq!(
                sb.seal(b"x").map_err(|e| e.exit).err(),
                Some(crate::error::Exit::Refused)
            );
        }
    }

    #[test]
    fn bad_key_is_an_error() {
        let sb = SecretBox::new(Some("short"), "");
        assert_eq!(
            sb.seal(b"x").map_err(|e| e.exit).err(),
            Some(crate::error::Exit::Usage)
        );
        let sb = SecretBox::new(Some("short"), "production");
        assert_eq!(
            sb.seal(b"x").map_err(|e| e.exit).err(),
            Some(crate::error::Exit::Usage)
        );
    }
}
