//! Fidelity to the real platform (issue 10), from the built binary: the encryption key read
//! exactly as the platform reads it (SPEC §1 key table), and restart eligibility as the
//! platform's own automatic restart decides it (SPEC §1 restart rules).

use std::collections::BTreeSet;

use crate::harness::{ids, TestDb};
use crate::secret::{FakePlatform, TOKEN};

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

// ---------------------------------------------------------------------------------------------
// Restart eligibility (SPEC §1): the platform's automatic-restart rules, applied before orgctl
// calls the manual endpoint, for workspace and global secrets.

mod w {
    pub const ROOT: &str = "10000000-0000-4000-8000-000000000001";
    pub const AGENT: &str = "10000000-0000-4000-8000-000000000002";
    pub const PAUSED: &str = "10000000-0000-4000-8000-000000000003";
    pub const CHILD: &str = "10000000-0000-4000-8000-000000000004"; // parent paused
    pub const GRANDCHILD: &str = "10000000-0000-4000-8000-000000000005"; // grandparent paused
    pub const HIBERNATED: &str = "10000000-0000-4000-8000-000000000006";
    pub const REMOVED: &str = "10000000-0000-4000-8000-000000000007";
    pub const EXTERNAL: &str = "10000000-0000-4000-8000-000000000008";
    pub const NULL_RUNTIME: &str = "10000000-0000-4000-8000-000000000009";
    pub const ONLINE: &str = "10000000-0000-4000-8000-00000000000a";
    pub const UNDER_HIBERNATED: &str = "10000000-0000-4000-8000-00000000000b";
}

fn restart_tenant() -> TestDb {
    let db = TestDb::empty();
    db.exec(&format!(
        "INSERT INTO workspaces (id, name, status, parent_id, runtime, kind) VALUES
           ('{root}', 'root', 'online', NULL, 'langgraph', NULL),
           ('{agent}', 'agent', 'online', NULL, 'langgraph', 'platform'),
           ('{paused}', 'paused', 'paused', '{root}', 'langgraph', NULL),
           ('{child}', 'child', 'online', '{paused}', 'langgraph', NULL),
           ('{grand}', 'grandchild', 'online', '{child}', NULL, 'workspace'),
           ('{hib}', 'hibernated', 'hibernated', '{root}', 'langgraph', NULL),
           ('{rem}', 'removed', 'removed', '{root}', 'langgraph', NULL),
           ('{ext}', 'external', 'online', '{root}', 'external', NULL),
           ('{nullrt}', 'null runtime', 'online', '{root}', NULL, NULL),
           ('{online}', 'online', 'degraded', '{root}', 'langgraph', 'workspace'),
           ('{underhib}', 'under hibernated', 'online', '{hib}', 'langgraph', NULL)",
        root = w::ROOT,
        agent = w::AGENT,
        paused = w::PAUSED,
        child = w::CHILD,
        grand = w::GRANDCHILD,
        hib = w::HIBERNATED,
        rem = w::REMOVED,
        ext = w::EXTERNAL,
        nullrt = w::NULL_RUNTIME,
        online = w::ONLINE,
        underhib = w::UNDER_HIBERNATED,
    ));
    db
}

fn reasons(j: &serde_json::Value) -> BTreeSet<(String, String)> {
    j["restart"]["skipped"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|s| {
                    (
                        s["id"].as_str().unwrap_or_default().to_string(),
                        s["reason"].as_str().unwrap_or_default().to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

fn planned(j: &serde_json::Value) -> BTreeSet<String> {
    j["restart"]["planned"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|s| s.as_str().unwrap_or_default().to_string())
                .collect()
        })
        .unwrap_or_default()
}

fn strs(v: &[&str]) -> BTreeSet<String> {
    v.iter().map(|s| s.to_string()).collect()
}

fn pairs(v: &[(&str, &str)]) -> BTreeSet<(String, String)> {
    v.iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

#[test]
fn restart_rules_skip_what_the_platforms_own_restart_skips() {
    let db = restart_tenant();

    // A workspace secret on each kind of workspace: skipped ones make no HTTP call.
    for (id, reason) in [
        (w::AGENT, Some("platform-root")),
        (w::PAUSED, Some("paused")),
        (w::CHILD, Some("paused-ancestor")),
        (w::GRANDCHILD, Some("paused-ancestor")),
        (w::HIBERNATED, Some("hibernated")),
        (w::REMOVED, Some("removed")),
        (w::EXTERNAL, Some("external")),
        (w::NULL_RUNTIME, None),
        (w::UNDER_HIBERNATED, None),
    ] {
        let platform = FakePlatform::start(&[]);
        let r = db
            .orgctl(&["secret", "set", id, "RULE_KEY", "--yes", "-o", "json"])
            .env("MOLECULE_PLATFORM_URL", &platform.url())
            .env("MOLECULE_ADMIN_TOKEN", TOKEN)
            .stdin(b"v")
            .run();
        r.code(0);
        let j = r.json();
        match reason {
            Some(reason) => {
                assert_eq!(reasons(&j), pairs(&[(id, reason)]), "{id}");
                assert!(planned(&j).is_empty(), "{id}");
                assert!(platform.calls().is_empty(), "{id}: no HTTP call");
            }
            None => {
                assert!(reasons(&j).is_empty(), "{id}: {j}");
                assert_eq!(planned(&j), strs(&[id]));
                assert_eq!(platform.restarted(), strs(&[id]));
            }
        }
    }

    // A global secret: one fan-out, each skip with its reason, calls only for the rest.
    let platform = FakePlatform::start(&[]);
    db.exec(&format!(
        "INSERT INTO workspace_secrets (workspace_id, key, encrypted_value) VALUES ('{}', 'G_KEY', 'x')",
        w::ONLINE
    ));
    let r = db
        .orgctl(&["secret", "set", "--global", "G_KEY", "--yes", "-o", "json"])
        .env("MOLECULE_PLATFORM_URL", &platform.url())
        .env("MOLECULE_ADMIN_TOKEN", TOKEN)
        .stdin(b"v")
        .run();
    r.code(0);
    let j = r.json();
    assert_eq!(
        reasons(&j),
        pairs(&[
            (w::AGENT, "platform-root"),
            (w::PAUSED, "paused"),
            (w::CHILD, "paused-ancestor"),
            (w::GRANDCHILD, "paused-ancestor"),
            (w::HIBERNATED, "hibernated"),
            (w::REMOVED, "removed"),
            (w::EXTERNAL, "external"),
        ])
    );
    // ONLINE overrides the key; the others are restarted (a NULL runtime is langgraph).
    let want = strs(&[w::ROOT, w::NULL_RUNTIME, w::UNDER_HIBERNATED]);
    assert_eq!(planned(&j), want);
    assert_eq!(platform.restarted(), want);

    // A dry run reports the same plan and calls nothing.
    let platform = FakePlatform::start(&[]);
    let r = db
        .orgctl(&[
            "secret",
            "delete",
            "--global",
            "G_KEY",
            "--dry-run",
            "-o",
            "json",
        ])
        .env("MOLECULE_PLATFORM_URL", &platform.url())
        .env("MOLECULE_ADMIN_TOKEN", TOKEN)
        .run();
    r.code(0);
    assert_eq!(reasons(&r.json()).len(), 7);
    assert!(platform.calls().is_empty());
}

/// A paused ancestor further up than the 32-step bound (a corrupt chain) is not looked for, and
/// a parent cycle never makes the walk loop.
#[test]
fn paused_ancestor_walk_is_bounded() {
    let db = TestDb::empty();
    db.exec(
        "INSERT INTO workspaces (id, name, status) VALUES ('20000000-0000-4000-8000-000000000001', 'a', 'online'),
                                                      ('20000000-0000-4000-8000-000000000002', 'b', 'online');
         UPDATE workspaces SET parent_id = '20000000-0000-4000-8000-000000000002' WHERE name = 'a';
         UPDATE workspaces SET parent_id = '20000000-0000-4000-8000-000000000001' WHERE name = 'b';",
    );
    let r = db
        .orgctl(&[
            "secret",
            "set",
            "20000000-0000-4000-8000-000000000001",
            "K",
            "--yes",
            "--no-restart",
            "-o",
            "json",
        ])
        .stdin(b"v")
        .run();
    r.code(0);
    assert_eq!(
        reasons(&r.json()),
        pairs(&[("20000000-0000-4000-8000-000000000001", "no-restart")])
    );
    let r = db
        .orgctl(&[
            "secret",
            "set",
            "--global",
            "K2",
            "--yes",
            "--no-restart",
            "-o",
            "json",
        ])
        .stdin(b"v")
        .run();
    r.code(0);
    assert_eq!(reasons(&r.json()).len(), 2);
}
