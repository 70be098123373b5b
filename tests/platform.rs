//! Fidelity to the real platform (issue 10), from the built binary: the encryption key read
//! exactly as the platform reads it (SPEC §1 key table), and restart eligibility as the
//! platform's own automatic restart decides it (SPEC §1 restart rules).

use crate::harness::{ids, TestDb};

fn b64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn decrypt(key: &[u8], stored: &[u8]) -> Option<Vec<u8>> {
    use aes_gcm::aead::Aead;
    use aes_gcm::KeyInit;
    let cipher = aes_gcm::Aes256Gcm::new_from_slice(key).ok()?;
    if stored.len() < 12 + 16 {
        return None;
    }
    let (nonce, ct) = stored.split_at(12);
    cipher.decrypt(aes_gcm::Nonce::from_slice(nonce), ct).ok()
}

/// What a key should do: be used as these 32 bytes, or be refused as invalid.
enum Want {
    Key([u8; 32]),
    Invalid,
    Missing,
}

/// SPEC §1's key table, each under MOLECULE_ENV unset, `production` and ` Prod `.
#[tokio::test]
async fn key_table_behaves_as_the_platform_reads_keys() {
    let k32: [u8; 32] = *b"K3y-material-for-tests-32-bytes!";
    let raw = "0123456789abcdef-123456789abcdef"; // 32 bytes, '-' is not standard base64
    let raw_bytes: [u8; 32] = match raw.as_bytes().try_into() {
        Ok(b) => b,
        Err(_) => panic!("raw key length"),
    };
    let cases: Vec<(&str, Option<String>, Want)> = vec![
        // `openssl rand -hex 16`: base64 to the platform, 24 bytes.
        (
            "hex 32 characters",
            Some("0123456789abcdef0123456789abcdef".into()),
            Want::Invalid,
        ),
        (
            "surrounding spaces",
            Some(format!(" {} ", b64(&k32))),
            Want::Invalid,
        ),
        (
            "trailing newline",
            Some(format!("{}\n", b64(&k32))),
            Want::Invalid,
        ),
        ("raw 32 bytes", Some(raw.into()), Want::Key(raw_bytes)),
        ("base64 of 24 bytes", Some(b64(&[7u8; 24])), Want::Invalid),
        ("base64 of 32 bytes", Some(b64(&k32)), Want::Key(k32)),
        ("base64 of 33 bytes", Some(b64(&[7u8; 33])), Want::Invalid),
        ("no key", None, Want::Missing),
    ];
    let db = TestDb::sample();
    for env in [None, Some("production"), Some(" Prod ")] {
        for (label, key, want) in &cases {
            let before = db.snapshot();
            let mut cmd = db.orgctl(&[
                "secret",
                "set",
                ids::RESEARCH,
                "KEY_TABLE",
                "--no-restart",
                "--yes",
            ]);
            if let Some(k) = key {
                cmd = cmd.env("SECRETS_ENCRYPTION_KEY", k);
            }
            if let Some(e) = env {
                cmd = cmd.env("MOLECULE_ENV", e);
            }
            let r = cmd.stdin(b"v4lue").run();
            let ctx = format!("{label} under MOLECULE_ENV={env:?}");
            match want {
                Want::Invalid => {
                    assert_eq!(r.code, 2, "{ctx}: {}", r.stderr);
                    r.one_line_error("SECRETS_ENCRYPTION_KEY is invalid");
                    assert_eq!(db.snapshot(), before, "{ctx}: nothing written");
                    if let Some(k) = key {
                        assert!(!r.stderr.contains(k.trim()), "{ctx}: key echoed");
                    }
                }
                Want::Missing if env.is_some() => {
                    assert_eq!(r.code, 3, "{ctx}: {}", r.stderr);
                    r.one_line_error("SECRETS_ENCRYPTION_KEY is not set");
                    assert_eq!(db.snapshot(), before, "{ctx}: nothing written");
                }
                Want::Missing => {
                    assert_eq!(r.code, 0, "{ctx}: {}", r.stderr);
                    assert!(
                        r.stderr.contains("stored in plaintext"),
                        "{ctx}: {}",
                        r.stderr
                    );
                    assert_eq!(
                        db.scalar("SELECT encryption_version || ':' || convert_from(encrypted_value, 'UTF8') FROM workspace_secrets WHERE key = 'KEY_TABLE'"),
                        "0:v4lue",
                        "{ctx}"
                    );
                }
                Want::Key(bytes) => {
                    assert_eq!(r.code, 0, "{ctx}: {}", r.stderr);
                    assert!(!r.stderr.contains("plaintext"), "{ctx}: {}", r.stderr);
                    let mut conn = db.connect().await;
                    let (stored, version): (Vec<u8>, i32) = match sqlx::query_as(
                        "SELECT encrypted_value, encryption_version FROM workspace_secrets WHERE key = 'KEY_TABLE'",
                    )
                    .fetch_one(&mut conn)
                    .await
                    {
                        Ok(v) => v,
                        Err(e) => panic!("{ctx}: {e}"),
                    };
                    assert_eq!(version, 1, "{ctx}");
                    assert_eq!(
                        decrypt(bytes, &stored).as_deref(),
                        Some(&b"v4lue"[..]),
                        "{ctx}: readable with exactly the platform's key bytes"
                    );
                }
            }
            db.exec("DELETE FROM workspace_secrets WHERE key = 'KEY_TABLE'");
        }
    }
}
