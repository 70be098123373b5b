//! The keys: the current one from `SECRETS_ENCRYPTION_KEY`, the new one from
//! `SECRETS_ENCRYPTION_KEY_NEW` or a key file, both parsed by the platform's own rules; and the
//! guard every write of a secret value passes, so nothing is written under a key the tenant's
//! other values do not use.

use std::path::Path;

use sqlx::postgres::PgConnection;
use uuid::Uuid;
use zeroize::Zeroizing;

use super::channels::{channel_table, ChannelTable};
use crate::db;
use crate::error::{Error, Result};
use crate::platform::channels;
use crate::platform::keys::SecretBox;

pub const ENV_KEY: &str = "SECRETS_ENCRYPTION_KEY";
pub const ENV_NEW_KEY: &str = "SECRETS_ENCRYPTION_KEY_NEW";

/// Up to three version-1 values of each secret table, leaving out the row a write replaces
/// (`$1` its workspace or NULL for a global secret, `$2` its key).
pub(super) const KEY_SAMPLE_SQL: &str = "(SELECT encrypted_value FROM workspace_secrets
           WHERE encryption_version = 1
             AND NOT ($1::uuid IS NOT NULL AND workspace_id IS NOT DISTINCT FROM $1 AND key = $2)
           LIMIT 3)
         UNION ALL
         (SELECT encrypted_value FROM global_secrets
           WHERE encryption_version = 1 AND NOT ($1::uuid IS NULL AND key = $2)
           LIMIT 3)";

/// A key that parsed as valid under the platform's rules ([`crate::platform::keys::parse_key`]).
pub struct Key(SecretBox);

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Key(<redacted>)")
    }
}

impl Key {
    /// Parse a key value exactly as the platform reads it (never trimmed). `what` names its
    /// source in the error. An empty value is missing, not a key.
    pub fn parse(raw: &str, what: &str) -> Result<Self> {
        if raw.is_empty() {
            return Err(Error::usage(format!("{what} is empty")));
        }
        // Not production: a bad key must be a usage error (exit 2) here, whatever MOLECULE_ENV.
        let sb = SecretBox::new(Some(raw), "");
        match sb.write_version() {
            Ok(1) => Ok(Key(sb)),
            Ok(_) => Err(Error::usage(format!("{what} is empty"))),
            Err(e) => Err(Error::usage(format!(
                "{what} is not a usable key: {}",
                e.message
                    .strip_prefix("SECRETS_ENCRYPTION_KEY is unusable: ")
                    .unwrap_or(&e.message)
            ))),
        }
    }

    /// Whether two keys are the same 32 bytes (whatever their encoding): a value sealed with
    /// one opens with the other. AES-GCM authentication makes a false "same" impossible in
    /// practice.
    pub fn same_as(&self, other: &Key) -> Result<bool> {
        let (probe, _) = self.0.seal(b"orgctl key probe")?;
        Ok(other.0.open(&probe, 1).is_some())
    }

    pub(super) fn open(&self, stored: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
        self.0.open(stored, 1)
    }

    pub(super) fn seal(&self, plaintext: &[u8]) -> Result<Vec<u8>> {
        let (sealed, version) = self.0.seal(plaintext)?;
        if version != 1 {
            return Err(Error::failed(
                "internal: a valid key sealed a plaintext value",
            ));
        }
        Ok(sealed)
    }
}

/// `SECRETS_ENCRYPTION_KEY`, required.
pub fn current_key_from_env(purpose: &str) -> Result<Key> {
    match std::env::var(ENV_KEY) {
        Ok(v) if !v.is_empty() => {
            let v = Zeroizing::new(v);
            Key::parse(&v, ENV_KEY)
        }
        Ok(_) | Err(std::env::VarError::NotPresent) => {
            Err(Error::usage(format!("{ENV_KEY} is not set: {purpose}")))
        }
        Err(std::env::VarError::NotUnicode(_)) => Err(Error::usage(format!(
            "{ENV_KEY} is not a usable key: it is not valid UTF-8"
        ))),
    }
}

/// The new key: `SECRETS_ENCRYPTION_KEY_NEW`, or the first line of `--new-key-file` (never
/// both: which one would win is not obvious, so neither does).
pub fn new_key(file: Option<&Path>) -> Result<Key> {
    let env = match std::env::var(ENV_NEW_KEY) {
        Ok(v) if !v.is_empty() => Some(Zeroizing::new(v)),
        Ok(_) | Err(std::env::VarError::NotPresent) => None,
        Err(std::env::VarError::NotUnicode(_)) => {
            return Err(Error::usage(format!(
                "{ENV_NEW_KEY} is not a usable key: it is not valid UTF-8"
            )))
        }
    };
    match (env, file) {
        (Some(_), Some(_)) => Err(Error::usage(format!(
            "both {ENV_NEW_KEY} and --new-key-file are given: unset one, so it is clear which key is the new one"
        ))),
        (Some(v), None) => Key::parse(&v, ENV_NEW_KEY),
        (None, Some(path)) => {
            let line = read_key_file(path)?;
            Key::parse(&line, &format!("the first line of {}", path.display()))
        }
        (None, None) => Err(Error::usage(format!(
            "no new key: set {ENV_NEW_KEY} or pass --new-key-file PATH (keys are never taken from the command line)"
        ))),
    }
}

/// The first line of a key file, without its line ending (`\n` or `\r\n`); nothing else is
/// trimmed: the platform reads its variable as it is.
pub fn read_key_file(path: &Path) -> Result<Zeroizing<String>> {
    let bytes = Zeroizing::new(std::fs::read(path).map_err(|e| {
        Error::usage(format!(
            "could not read --new-key-file {}: {e}",
            path.display()
        ))
    })?);
    let end = bytes
        .iter()
        .position(|&b| b == b'\n')
        .unwrap_or(bytes.len());
    let mut line = &bytes[..end];
    if end < bytes.len() {
        line = line.strip_suffix(b"\r").unwrap_or(line);
    }
    if line.is_empty() {
        return Err(Error::usage(format!(
            "--new-key-file {}: the first line is empty",
            path.display()
        )));
    }
    match std::str::from_utf8(line) {
        Ok(s) => Ok(Zeroizing::new(s.to_string())),
        Err(_) => Err(Error::usage(format!(
            "--new-key-file {}: the first line is not valid UTF-8",
            path.display()
        ))),
    }
}

/// Refuse (exit 3) to write a version-1 secret with a key that decrypts none of the tenant's
/// existing encrypted values (a sample of up to three version-1 rows per secret table, leaving
/// out the row the write replaces, and up to three `ec1:` channel fields): the tenant's key was
/// rotated, or this is the wrong key, and the platform could not read the value. A tenant
/// without other encrypted values passes. Call it after taking the tenant lock, so a `secret
/// set` that waited for a `rekey` sees the re-encrypted values.
pub async fn ensure_key_matches_tenant(
    conn: &mut PgConnection,
    sb: &SecretBox,
    workspace_id: Option<Uuid>,
    key: &str,
) -> Result<()> {
    let sample: Vec<Vec<u8>> = db::query_scalar(KEY_SAMPLE_SQL)
        .bind(workspace_id)
        .bind(key)
        .fetch_all(&mut *conn)
        .await?;
    if sample.iter().any(|v| sb.open(v, 1).is_some()) {
        return Ok(());
    }
    let fields: Vec<String> = if channel_table(conn).await? == ChannelTable::Present {
        let sql = format!(
            "SELECT c.{col} ->> f FROM {t} c CROSS JOIN unnest($1::text[]) AS f
              WHERE jsonb_typeof(c.{col} -> f) = 'string' AND left(c.{col} ->> f, $2) = $3
              LIMIT 3",
            t = channels::TABLE,
            col = channels::COLUMN,
        );
        db::query_scalar(&sql)
            .bind(channels::SECRET_FIELDS.to_vec())
            .bind(channels::SEALED_PREFIX.len() as i32)
            .bind(channels::SEALED_PREFIX)
            .fetch_all(&mut *conn)
            .await?
    } else {
        Vec::new()
    };
    let sampled = sample.len() + fields.len();
    if sampled == 0
        || fields.iter().any(|f| {
            channels::sealed_payload(f.as_bytes()).is_some_and(|p| sb.open(&p, 1).is_some())
        })
    {
        return Ok(());
    }
    Err(Error::refused(format!(
        "{ENV_KEY} decrypts none of the tenant's existing encrypted secrets or channel fields ({sampled} sampled): the tenant's key was rotated or this is the wrong key, and the platform could not read a value written with it; nothing was changed (check the key with `orgctl secret verify`)",
    )))
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use base64::Engine;

    pub(in crate::ops::rekey) fn key(b: u8) -> Key {
        let s = base64::engine::general_purpose::STANDARD.encode([b; 32]);
        match Key::parse(&s, "k") {
            Ok(k) => k,
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn key_rules() {
        assert!(Key::parse("", "k").is_err());
        // 32 hex characters decode as base64 to 24 bytes: invalid under the platform's rules, never a raw
        // key. Whatever the shared parser (platform::keys) says, rekey follows it, never its own
        // rule: exit 2 exactly when SecretBox calls the key unusable.
        let hex = "00112233445566778899aabbccddeeff";
        let shared = SecretBox::new(Some(hex), "").write_version().is_ok();
        assert_eq!(Key::parse(hex, "k").is_ok(), shared);
        let short = base64::engine::general_purpose::STANDARD.encode([1u8; 16]);
        assert!(Key::parse(&short, "k").is_err());
        // The same 32 bytes, raw and base64: the same key.
        let raw = "this-is-a-raw-key-of-32-bytes!!!";
        assert_eq!(raw.len(), 32);
        let b64 = base64::engine::general_purpose::STANDARD.encode(raw);
        let (a, b) = match (Key::parse(raw, "a"), Key::parse(&b64, "b")) {
            (Ok(a), Ok(b)) => (a, b),
            _ => panic!("valid keys refused"),
        };
        assert!(matches!(a.same_as(&b), Ok(true)));
        assert!(matches!(key(1).same_as(&key(2)), Ok(false)));
    }
}
