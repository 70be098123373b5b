//! The channel secrets the platform encrypts with `SECRETS_ENCRYPTION_KEY`: five fields of
//! `workspace_channels.channel_config` (a JSON object), each a JSON string.
//!
//! An encrypted field is `"ec1:" + standard base64(nonce ‖ AES-256-GCM ciphertext-and-tag)`,
//! the layout of a version-1 secret ([`crate::platform::keys`]); a string without the prefix is
//! legacy plaintext, which the platform reads as it is. The platform encrypts and decrypts only
//! non-empty strings: a field that is missing, not a string, or empty is none of its business,
//! and none of orgctl's. Every other key of the object is left as it is.

use zeroize::Zeroizing;

use crate::platform::keys::platform_base64_decode;

/// The table and its JSON column.
pub const TABLE: &str = "workspace_channels";
pub const COLUMN: &str = "channel_config";

/// The fields of `channel_config` the platform encrypts.
pub const SECRET_FIELDS: [&str; 5] = [
    "bot_token",
    "webhook_secret",
    "webhook_url",
    "verify_token",
    "signing_secret",
];

/// The prefix of an encrypted field.
pub const SEALED_PREFIX: &str = "ec1:";

/// Whether a field's value is encrypted (carries the prefix); otherwise it is plaintext.
pub fn is_sealed(value: &[u8]) -> bool {
    value.starts_with(SEALED_PREFIX.as_bytes())
}

/// The nonce-and-ciphertext of an encrypted field, decoded as the platform decodes it; `None`
/// when the value has no prefix or its base64 does not decode (the platform cannot read it).
pub fn sealed_payload(value: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
    let b64 = value.strip_prefix(SEALED_PREFIX.as_bytes())?;
    platform_base64_decode(b64).ok()
}

/// The field value for a sealed version-1 payload (nonce ‖ ciphertext-and-tag).
pub fn sealed_value(payload: &[u8]) -> Vec<u8> {
    use base64::Engine;
    let mut v = SEALED_PREFIX.as_bytes().to_vec();
    v.extend_from_slice(
        base64::engine::general_purpose::STANDARD
            .encode(payload)
            .as_bytes(),
    );
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_values_round_trip_and_plaintext_is_told_apart() {
        let v = sealed_value(b"\x01\x02\x03");
        assert_eq!(v, b"ec1:AQID");
        assert!(is_sealed(&v));
        assert_eq!(
            sealed_payload(&v).as_deref().map(|p| p.as_slice()),
            Some(&b"\x01\x02\x03"[..])
        );
        assert!(!is_sealed(b"123456:AAbot"));
        assert!(sealed_payload(b"123456:AAbot").is_none());
        assert!(sealed_payload(b"ec1:not base64!").is_none());
    }
}
