//! Secret values exactly as the platform reads them: the key and the encryption.
//!
//! `encryption_version` 0 is the plain bytes; 1 is AES-256-GCM with a random 12-byte nonce
//! prepended to ciphertext-and-tag. The key comes from `SECRETS_ENCRYPTION_KEY`, read the way
//! the platform reads it ([`parse_key`]): the value as it is, never trimmed, decoded by the
//! platform's base64 decoder ([`platform_base64_decode`]: standard alphabet, `=` padding
//! required, `\r` and `\n` skipped anywhere, non-zero trailing bits accepted); a value that
//! decodes must decode to exactly 32 bytes, else it is invalid; only a value that does not
//! decode and is exactly 32 bytes long is a raw key. An invalid key is always an error
//! (exit 2): the platform could not read what orgctl wrote with it. With no key values are
//! written as version 0 with a warning, except in production (`MOLECULE_ENV`, trimmed and
//! case-insensitive, `prod`/`production`), where a missing key is a refusal (exit 3). This is
//! the one module that owns these rules; `secret verify/rekey` load keys through
//! [`SecretBox::from_env`] / [`SecretBox::from_key_bytes`] too, and the channel fields
//! ([`crate::platform::channels`]) decode their base64 with the same decoder.

use aes_gcm::aead::Aead;
use aes_gcm::{Aes256Gcm, KeyInit, Nonce};
use base64::alphabet;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::DecodePaddingMode;
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
    /// production), or None when the write is encrypted or refused anyway.
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

/// The platform's base64 decoder (a standard decoder that is not strict): the standard
/// alphabet, `=` padding required and canonical, non-zero trailing bits accepted.
const PLATFORM_BASE64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new()
        .with_decode_allow_trailing_bits(true)
        .with_decode_padding_mode(DecodePaddingMode::RequireCanonical),
);

/// Decode base64 as the platform does: `\r` and `\n` are skipped wherever they are (a key with a
/// trailing newline, or wrapped over lines, decodes), then [`PLATFORM_BASE64`]. Any other
/// whitespace is an error, as it is to the platform. The result is zeroed when dropped.
pub fn platform_base64_decode(
    encoded: &[u8],
) -> std::result::Result<Zeroizing<Vec<u8>>, base64::DecodeError> {
    let kept: Zeroizing<Vec<u8>> = Zeroizing::new(
        encoded
            .iter()
            .copied()
            .filter(|&c| c != b'\r' && c != b'\n')
            .collect(),
    );
    PLATFORM_BASE64.decode(kept.as_slice()).map(Zeroizing::new)
}

/// The platform's key rule, on the value exactly as set: when it decodes as base64 (the
/// platform's decoder, [`platform_base64_decode`]) it must decode to exactly 32 bytes; when it
/// does not decode, it is a raw key only when it is exactly 32 bytes long (its bytes as they
/// are, line breaks included). The reason it is invalid never contains the key.
pub fn parse_key(raw: &[u8]) -> std::result::Result<Zeroizing<[u8; 32]>, String> {
    let mut k = Zeroizing::new([0u8; 32]);
    if let Ok(bytes) = platform_base64_decode(raw) {
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
        .any(|&c| c.is_ascii_whitespace() && c != b'\r' && c != b'\n')
    {
        " (it starts or ends with a space or tab, which the platform does not skip)"
    } else {
        ""
    };
    Err(format!(
        "it is neither base64 of 32 bytes nor a raw value of exactly 32 bytes (it is {} bytes{ws}); use `openssl rand -base64 32`",
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

    /// Every form of key the platform accepts or refuses, with the 32 bytes it uses (None:
    /// invalid, the platform would disable encryption or refuse to boot).
    #[test]
    fn key_rule_is_the_platforms() {
        let b64 = |v: &[u8]| base64::engine::general_purpose::STANDARD.encode(v);
        let seven = [7u8; 32];
        let k = b64(&seven);
        assert!(k.ends_with("Bwc="), "{k}");
        let raw = "0123456789abcdef-123456789abcdef"; // '-' is not standard base64
        let raw31 = "0123456789abcdef-123456789abcde";
        let as32 = |s: &str| -> [u8; 32] {
            let mut a = [0u8; 32];
            a.copy_from_slice(s.as_bytes());
            a
        };
        let cases: Vec<(&str, String, Option<[u8; 32]>)> = vec![
            ("base64 of 32 bytes", k.clone(), Some(seven)),
            ("trailing \\n", format!("{k}\n"), Some(seven)),
            ("trailing \\r\\n", format!("{k}\r\n"), Some(seven)),
            ("leading \\n", format!("\n{k}"), Some(seven)),
            (
                "\\n in the middle",
                format!("{}\n{}", &k[..20], &k[20..]),
                Some(seven),
            ),
            (
                "\\r\\n inside the padding",
                format!("{}\r\n=", &k[..43]),
                Some(seven),
            ),
            (
                "non-canonical last character (non-zero trailing bits)",
                format!("{}d=", &k[..42]),
                Some(seven),
            ),
            ("raw 32 bytes", raw.to_string(), Some(as32(raw))),
            (
                "raw 31 bytes and a space: 32 raw bytes",
                format!("{raw31} "),
                Some(as32(&format!("{raw31} "))),
            ),
            (
                "raw 31 bytes and \\n: 32 raw bytes",
                format!("{raw31}\n"),
                Some(as32(&format!("{raw31}\n"))),
            ),
            ("trailing space", format!("{k} "), None),
            ("leading space", format!(" {k}"), None),
            ("a tab inside", format!("{}\t{}", &k[..20], &k[20..]), None),
            ("padding missing", k.trim_end_matches('=').to_string(), None),
            ("padding doubled", format!("{k}="), None),
            ("44 characters of base64 of 31 bytes", b64(&[7u8; 31]), None),
            ("44 characters of base64 of 33 bytes", b64(&[7u8; 33]), None),
            ("base64 of 24 bytes", b64(&[7u8; 24]), None),
            (
                "32 hex characters (base64 of 24 bytes)",
                "0123456789abcdef0123456789abcdef".into(),
                None,
            ),
            (
                "32 base64 characters without a line break are never raw",
                "abcdefghijklmnopqrstuvwxyzABCDEF".into(),
                None,
            ),
            ("a line break only", "\n".into(), None),
            ("short", "short".into(), None),
        ];
        for (label, key, want) in &cases {
            let got = parse_key(key.as_bytes());
            match (want, &got) {
                (Some(w), Ok(g)) => assert_eq!(&**g, w, "{label}: another key"),
                (None, Err(why)) => assert!(
                    key.trim().len() < 5 || !why.contains(key.trim()),
                    "{label}: the key in the reason: {why}"
                ),
                _ => panic!(
                    "{label}: want {}, got {:?}",
                    if want.is_some() { "valid" } else { "invalid" },
                    got.as_ref().err()
                ),
            }
        }
        let sb = SecretBox::new(None, "");
        assert!(sb.plaintext_warning("x").is_some());
        assert!(SecretBox::new(Some(&k), "")
            .plaintext_warning("x")
            .is_none());
    }

    #[test]
    fn platform_base64_skips_line_breaks_only() {
        let dec = |s: &str| {
            platform_base64_decode(s.as_bytes())
                .map(|v| v.to_vec())
                .ok()
        };
        assert_eq!(dec("QUJD\r\nRA==\n"), Some(b"ABCD".to_vec()));
        assert_eq!(dec("QR=="), Some(b"A".to_vec()), "trailing bits");
        assert_eq!(dec("QUJD RA=="), None);
        assert_eq!(dec("QUJDRA"), None, "padding is required");
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
