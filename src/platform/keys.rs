//! Secret values exactly as the platform reads them (SPEC §1): the key and the encryption.
//!
//! `encryption_version` 0 is the plain bytes; 1 is AES-256-GCM with a random 12-byte nonce
//! prepended to ciphertext-and-tag. The key comes from `SECRETS_ENCRYPTION_KEY`: standard
//! base64 decoding to 32 bytes, or else a raw string of exactly 32 bytes. With no key values are
//! written as version 0, except in production (`MOLECULE_ENV` = prod/production), where a missing
//! or bad key is a refusal. This is the one module that owns these rules.

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
    Invalid(&'static str),
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
    /// Read `SECRETS_ENCRYPTION_KEY` and `MOLECULE_ENV`. A bad key is not an error yet: it
    /// becomes one only when a value has to be written or read with it.
    pub fn from_env() -> Self {
        let key = std::env::var("SECRETS_ENCRYPTION_KEY").ok();
        let env = std::env::var("MOLECULE_ENV").unwrap_or_default();
        Self::new(key.as_deref(), &env)
    }

    pub fn new(key: Option<&str>, molecule_env: &str) -> Self {
        let production = matches!(
            molecule_env.trim().to_ascii_lowercase().as_str(),
            "prod" | "production"
        );
        let key = match key {
            None | Some("") => KeyState::Missing,
            Some(k) => parse_key(k),
        };
        SecretBox { key, production }
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
            (KeyState::Invalid(why), true) => Err(Error::refused(format!(
                "MOLECULE_ENV is production and SECRETS_ENCRYPTION_KEY is unusable ({why}): refusing to write the secret"
            ))),
            (KeyState::Invalid(why), false) => Err(Error::usage(format!(
                "SECRETS_ENCRYPTION_KEY is unusable: {why}"
            ))),
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

fn parse_key(raw: &str) -> KeyState {
    if let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(raw.trim()) {
        let bytes = Zeroizing::new(bytes);
        if bytes.len() == 32 {
            let mut k = Zeroizing::new([0u8; 32]);
            k.copy_from_slice(&bytes);
            return KeyState::Valid(k);
        }
    }
    if raw.len() == 32 {
        let mut k = Zeroizing::new([0u8; 32]);
        k.copy_from_slice(raw.as_bytes());
        return KeyState::Valid(k);
    }
    KeyState::Invalid("it must be standard base64 of 32 bytes, or a raw string of exactly 32 bytes")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_with_base64_and_raw_keys() {
        let b64 = base64::engine::general_purpose::STANDARD.encode([7u8; 32]);
        for key in [b64.as_str(), "0123456789abcdef0123456789abcdef"] {
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
            Some(crate::error::Exit::Refused)
        );
    }
}
