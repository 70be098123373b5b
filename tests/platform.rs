//! Fidelity to the real platform, from the built binary: the encryption key read
//! exactly as the platform reads it, and restart eligibility as the
//! platform's own automatic restart decides it.

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

/// base64 of 32 bytes with the last character before `=` changed so its two unused bits are
/// not zero: the same 32 bytes to a decoder that is not strict (the platform's).
fn non_canonical(b64_32: &str) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let c = b64_32.as_bytes()[42];
    let i = match ALPHABET.iter().position(|&a| a == c) {
        Some(i) => i,
        None => panic!("not base64"),
    };
    assert_eq!(i & 3, 0, "canonical: the two unused bits are zero");
    format!("{}{}=", &b64_32[..42], ALPHABET[i | 1] as char)
}

/// The key table (every form the platform accepts or refuses), each under MOLECULE_ENV unset,
/// `production` and ` Prod `.
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
            "trailing space",
            Some(format!("{} ", b64(&k32))),
            Want::Invalid,
        ),
        // The platform's decoder skips line breaks anywhere and accepts non-zero trailing bits.
        (
            "trailing newline",
            Some(format!("{}\n", b64(&k32))),
            Want::Key(k32),
        ),
        (
            "trailing CRLF",
            Some(format!("{}\r\n", b64(&k32))),
            Want::Key(k32),
        ),
        (
            "newline in the middle",
            Some(format!("{}\n{}", &b64(&k32)[..22], &b64(&k32)[22..])),
            Want::Key(k32),
        ),
        (
            "non-canonical last character",
            Some(non_canonical(&b64(&k32))),
            Want::Key(k32),
        ),
        (
            "44 characters of base64 of 31 bytes",
            Some(b64(&[7u8; 31])),
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
// Restart eligibility: the platform's restart rules, applied by orgctl before it calls the
// platform's admin restart route (so each skip has a reason), for workspace and global secrets.

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
    pub const KIMI: &str = "10000000-0000-4000-8000-00000000000c";
    pub const KIMI_CLI: &str = "10000000-0000-4000-8000-00000000000d";
    pub const MOCK: &str = "10000000-0000-4000-8000-00000000000e";
    pub const NO_STATUS: &str = "10000000-0000-4000-8000-00000000000f";
    /// Runtime `hermes` (the platform's default) and a runtime whose name only starts like a
    /// skipped one: restarted.
    pub const HERMES: &str = "10000000-0000-4000-8000-000000000010";
    pub const KIMI_LIKE: &str = "10000000-0000-4000-8000-000000000011";
}

fn restart_tenant(text_status: bool) -> TestDb {
    let db = TestDb::empty();
    if text_status {
        db.exec(orgctl::testing::db::PLATFORM_LEGACY_TEXT_STATUS_SQL);
    }
    db.exec(&format!(
        "INSERT INTO workspaces (id, name, status, parent_id, runtime, kind) VALUES
           ('{root}', 'root', 'online', NULL, 'langgraph', 'workspace'),
           ('{agent}', 'agent', 'online', NULL, 'langgraph', 'platform'),
           ('{paused}', 'paused', 'paused', '{root}', 'langgraph', 'workspace'),
           ('{child}', 'child', 'online', '{paused}', 'langgraph', 'workspace'),
           ('{grand}', 'grandchild', 'online', '{child}', NULL, 'workspace'),
           ('{hib}', 'hibernated', 'hibernated', '{root}', 'langgraph', 'workspace'),
           ('{rem}', 'removed', 'removed', '{root}', 'langgraph', 'workspace'),
           ('{ext}', 'external', 'online', '{root}', 'external', 'workspace'),
           ('{nullrt}', 'null runtime', 'online', '{root}', NULL, 'workspace'),
           ('{online}', 'online', 'degraded', '{root}', 'langgraph', 'workspace'),
           ('{underhib}', 'under hibernated', 'online', '{hib}', 'langgraph', 'workspace'),
           ('{kimi}', 'kimi', 'online', '{root}', 'kimi', 'workspace'),
           ('{kimicli}', 'kimi cli', 'offline', '{root}', 'kimi-cli', 'workspace'),
           ('{mock}', 'mock', 'online', '{root}', 'mock', 'workspace'),
           ('{nostatus}', 'no status', NULL, '{root}', 'langgraph', 'workspace'),
           ('{hermes}', 'hermes', 'online', '{root}', 'hermes', 'workspace'),
           ('{kimilike}', 'kimi like', 'online', '{root}', 'kimi-2', 'workspace')",
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
        kimi = w::KIMI,
        kimicli = w::KIMI_CLI,
        mock = w::MOCK,
        nostatus = w::NO_STATUS,
        hermes = w::HERMES,
        kimilike = w::KIMI_LIKE,
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
    restart_rules_on(false);
}

/// The same on an older tenant whose `workspaces.status` is TEXT.
#[test]
fn restart_rules_hold_on_a_text_status_tenant() {
    restart_rules_on(true);
}

fn restart_rules_on(text_status: bool) {
    let db = restart_tenant(text_status);
    assert_eq!(
        db.scalar("SELECT data_type FROM information_schema.columns WHERE table_name = 'workspaces' AND column_name = 'status'"),
        if text_status { "text" } else { "USER-DEFINED" }
    );

    // A workspace secret on each kind of workspace: skipped ones make no HTTP call.
    for (id, reason) in [
        (w::AGENT, Some("platform-root")),
        (w::PAUSED, Some("paused")),
        (w::CHILD, Some("paused-ancestor")),
        (w::GRANDCHILD, Some("paused-ancestor")),
        (w::HIBERNATED, Some("hibernated")),
        (w::REMOVED, Some("removed")),
        (w::EXTERNAL, Some("external")),
        (w::KIMI, Some("runtime-kimi")),
        (w::KIMI_CLI, Some("runtime-kimi-cli")),
        (w::MOCK, Some("runtime-mock")),
        (w::NO_STATUS, Some("no-status")),
        (w::NULL_RUNTIME, None),
        (w::UNDER_HIBERNATED, None),
        (w::HERMES, None),
        (w::KIMI_LIKE, None),
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
            (w::KIMI, "runtime-kimi"),
            (w::KIMI_CLI, "runtime-kimi-cli"),
            (w::MOCK, "runtime-mock"),
            (w::NO_STATUS, "no-status"),
        ])
    );
    // ONLINE overrides the key; the others are restarted (a NULL runtime is langgraph).
    let want = strs(&[
        w::ROOT,
        w::NULL_RUNTIME,
        w::UNDER_HIBERNATED,
        w::HERMES,
        w::KIMI_LIKE,
    ]);
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
    assert_eq!(reasons(&r.json()).len(), 11);
    assert!(platform.calls().is_empty());
}

/// A paused ancestor further up than the chain bound (a corrupt chain) is not looked for, and
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

// ---------------------------------------------------------------------------------------------
// Rollback on a lived-in tenant: the platform writes rows that reference the agent
// the run created, in tables orgctl has never heard of.

const AGENT_NAME_CHECK: &str = "SELECT id FROM workspaces WHERE kind = 'platform'";

/// A one-tenant tenants file, removed on drop.
struct OneTenant(std::path::PathBuf);

impl OneTenant {
    fn new(db: &TestDb) -> Self {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let path = std::env::temp_dir().join(format!(
            "orgctl-lived-{}-{}.txt",
            std::process::id(),
            N.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
        ));
        if let Err(e) = std::fs::write(&path, format!("acme {}\n", db.url)) {
            panic!("{e}");
        }
        OneTenant(path)
    }

    fn cmd(&self, args: &[&str]) -> crate::harness::Cmd {
        let mut v = vec!["backfill"];
        v.extend_from_slice(args);
        let p = self.0.to_str().unwrap_or_default();
        v.extend_from_slice(&["--tenants", p]);
        crate::harness::Cmd::new(&v)
    }
}

impl Drop for OneTenant {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Every platform table's rows (orgctl's own schema left out).
fn platform_rows(db: &TestDb) -> String {
    let s = db.snapshot();
    match s.find("== orgctl") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}

/// One table's rows as text, sorted, except those matching `except`.
fn table_rows(db: &TestDb, table: &str, except: &str) -> String {
    db.exec(&format!(
        "SELECT coalesce(string_agg(x::text, E'\\n' ORDER BY x::text), '') FROM {table} x WHERE NOT ({except})"
    ))
}

fn tenant0(doc: &serde_json::Value) -> serde_json::Value {
    doc["tenants"][0].clone()
}

fn run_backfill(fleet: &OneTenant, run_id: &str) {
    fleet
        .cmd(&["run", "--model", "m", "--yes", "--run-id", run_id])
        .run()
        .code(0);
}

/// The platform writes what a living agent gets: its own columns (status, URL, heartbeat,
/// updated_at), and rows in a CASCADE table and a plain (restrict) table.
fn live(db: &TestDb, agent: &str) {
    db.exec(&format!(
        "UPDATE workspaces SET status = 'online', url = 'http://agent.internal:8000',
                last_heartbeat_at = now(), uptime_seconds = 120, updated_at = now() + interval '1 minute'
          WHERE id = '{agent}';
         INSERT INTO activity_logs (workspace_id, activity_type) VALUES ('{agent}', 'registered'), ('{agent}', 'turn');
         INSERT INTO agents (id, workspace_id, model) VALUES ('ab000000-0000-4000-8000-000000000001', '{agent}', 'm');"
    ));
}

#[test]
fn rollback_of_a_lived_in_agent_refuses_then_force_soft_deletes_it_and_keeps_every_row() {
    for (label, db) in [
        ("enum status", TestDb::sample()),
        ("TEXT status", TestDb::sample_text_status()),
    ] {
        let fleet = OneTenant::new(&db);
        let tables_before: Vec<(&str, String)> = [
            "workspace_secrets",
            "global_secrets",
            "org_api_tokens",
            "org_plugin_allowlist",
            "rescue_bundles",
        ]
        .iter()
        .map(|t| (*t, table_rows(&db, t, "false")))
        .collect();
        let workspaces_before = table_rows(&db, "workspaces", "false");
        run_backfill(&fleet, "lived");
        let agent = db.scalar(AGENT_NAME_CHECK);
        live(&db, &agent);
        let lived = platform_rows(&db);

        // Refused, by the dry run and the real run alike, naming both tables and their counts.
        for args in [
            vec!["rollback", "--run-id", "lived", "--dry-run", "-o", "json"],
            vec!["rollback", "--run-id", "lived", "--yes", "-o", "json"],
        ] {
            let r = fleet.cmd(&args).run();
            r.code(3);
            let t = tenant0(&r.json());
            assert_eq!(t["status"], "refused", "{label}: {t}");
            let err = t["error"].as_str().unwrap_or_default().to_string();
            assert!(
                err.contains("activity_logs (2 row(s)") && err.contains("agents (1 row(s)"),
                "{label}: {err}"
            );
            assert!(err.contains("--force"), "{err}");
            assert!(
                !err.contains("drift since the run"),
                "status is not drift: {err}"
            );
            let refs: BTreeSet<(String, i64)> = t["referenced_by"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .map(|r| {
                            (
                                r["table"].as_str().unwrap_or_default().to_string(),
                                r["rows"].as_i64().unwrap_or(-1),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            assert_eq!(
                refs,
                BTreeSet::from([("activity_logs".to_string(), 2), ("agents".to_string(), 1)]),
                "{label}"
            );
            assert!(r.stderr.lines().filter(|l| l.starts_with("error:")).count() == 1);
            assert_eq!(
                platform_rows(&db),
                lived,
                "{label}: a refusal changes nothing"
            );
        }

        // The dry run with --force says what --force does.
        let r = fleet
            .cmd(&[
                "rollback",
                "--run-id",
                "lived",
                "--force",
                "--dry-run",
                "-o",
                "json",
            ])
            .run();
        r.code(0);
        assert_eq!(tenant0(&r.json())["agent"], "soft_deleted", "{label}");
        assert_eq!(platform_rows(&db), lived);

        let r = fleet
            .cmd(&[
                "rollback", "--run-id", "lived", "--force", "--yes", "-o", "json",
            ])
            .run();
        r.code(0);
        let t = tenant0(&r.json());
        assert_eq!(t["status"], "rolled_back", "{label}: {t}");
        assert_eq!(t["agent"], "soft_deleted");

        // Everything else exactly as before the run, byte for byte.
        for (table, before) in &tables_before {
            assert_eq!(&table_rows(&db, table, "false"), before, "{label}: {table}");
        }
        assert_eq!(
            table_rows(&db, "workspaces", &format!("id = '{agent}'")),
            workspaces_before,
            "{label}: every workspace but the agent"
        );
        // The agent soft-deleted the platform's way: a tombstone that is still the org's
        // platform row (so the platform's boot does not create a new agent and re-merge every
        // root); the platform's rows all still there.
        assert_eq!(
            db.scalar(&format!(
                "SELECT status::text || ' ' || kind || ' ' || (parent_id IS NULL) FROM workspaces WHERE id = '{agent}'"
            )),
            "removed platform true",
            "{label}"
        );
        assert_eq!(
            db.scalar(&format!(
                "SELECT (SELECT count(*) FROM activity_logs WHERE workspace_id = '{agent}') || ' ' ||
                        (SELECT count(*) FROM agents WHERE workspace_id = '{agent}')"
            )),
            "2 1",
            "{label}"
        );
        assert_eq!(
            db.scalar("SELECT count(*) FROM workspaces WHERE kind = 'platform'"),
            "1",
            "{label}: the tombstone is the one platform row"
        );
        assert_eq!(
            t["verification"]["exact"], true,
            "{label}: a removed platform row is what the rollback is for: {t}"
        );

        // Twice changes nothing.
        let after = platform_rows(&db);
        let r = fleet
            .cmd(&[
                "rollback", "--run-id", "lived", "--force", "--yes", "-o", "json",
            ])
            .run();
        r.code(0);
        assert_eq!(tenant0(&r.json())["status"], "already_rolled_back");
        assert_eq!(platform_rows(&db), after);
        // The tombstone keeps kind 'platform': a later install finds it removed and refuses
        // to bring it back unless told to (--revive), as the platform's boot leaves it alone.
        let r = db
            .orgctl(&["install-platform-agent", "--model", "m", "--yes"])
            .run();
        r.code(3).one_line_error("--revive");
        assert!(r.stderr.contains(&agent), "{}", r.stderr);
    }
}

#[test]
fn an_agent_whose_only_change_is_its_status_rolls_back_without_force() {
    for (label, db) in [
        ("enum status", TestDb::sample()),
        ("TEXT status", TestDb::sample_text_status()),
    ] {
        let before = platform_rows(&db);
        let fleet = OneTenant::new(&db);
        run_backfill(&fleet, "status-only");
        let agent = db.scalar(AGENT_NAME_CHECK);
        // The platform's provisioning timeout marks it failed; it heartbeats; it got a URL.
        db.exec(&format!(
            "UPDATE workspaces SET status = 'failed', url = 'http://a', last_heartbeat_at = now(),
                    updated_at = now() + interval '5 minutes'
              WHERE id = '{agent}'"
        ));
        let r = fleet
            .cmd(&["rollback", "--run-id", "status-only", "--yes", "-o", "json"])
            .run();
        r.code(0);
        let t = tenant0(&r.json());
        assert_eq!(t["status"], "rolled_back", "{label}: {t}");
        assert_eq!(t["agent"], "deleted");
        assert_eq!(platform_rows(&db), before, "{label}: byte for byte");
    }
}

/// Every kind of reference the catalog has, found at the moment of the rollback: a second
/// self-reference (`forwarded_to`), ON DELETE SET NULL (the platform's own token audit log), a
/// plain reference (approval requests), and a table created after the run.
#[test]
fn references_are_found_through_the_catalog_at_rollback_time() {
    let db = TestDb::sample();
    let fleet = OneTenant::new(&db);
    run_backfill(&fleet, "catalog");
    let agent = db.scalar(AGENT_NAME_CHECK);
    db.exec(&format!(
        "UPDATE workspaces SET forwarded_to = '{agent}' WHERE id = '{research}';
         INSERT INTO org_token_audit_logs (action, actor, org_id) VALUES ('mint', 'session', '{agent}');
         INSERT INTO approval_requests (workspace_id, action) VALUES ('{agent}', 'deploy');
         CREATE TABLE late_refs (id SERIAL PRIMARY KEY, ws UUID REFERENCES workspaces(id) ON DELETE CASCADE);
         INSERT INTO late_refs (ws) VALUES ('{agent}'), ('{agent}'), ('{agent}');",
        research = ids::RESEARCH,
    ));
    let r = fleet
        .cmd(&["rollback", "--run-id", "catalog", "--yes", "-o", "json"])
        .run();
    r.code(3);
    let t = tenant0(&r.json());
    let refs: BTreeSet<(String, String, i64)> = t["referenced_by"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|r| {
                    (
                        r["table"].as_str().unwrap_or_default().to_string(),
                        r["column"].as_str().unwrap_or_default().to_string(),
                        r["rows"].as_i64().unwrap_or(-1),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    let want: BTreeSet<(String, String, i64)> = [
        ("approval_requests", "workspace_id", 1),
        ("org_token_audit_logs", "org_id", 1),
        ("late_refs", "ws", 3),
        ("workspaces", "forwarded_to", 1),
    ]
    .iter()
    .map(|(a, b, n)| (a.to_string(), b.to_string(), *n))
    .collect();
    assert_eq!(refs, want, "{t}");

    let r = fleet
        .cmd(&[
            "rollback", "--run-id", "catalog", "--force", "--yes", "-o", "json",
        ])
        .run();
    r.code(0);
    assert_eq!(tenant0(&r.json())["agent"], "soft_deleted");
    // Nothing cascaded away, nulled or left pointing at a deleted row.
    assert_eq!(
        db.scalar(&format!(
            "SELECT (SELECT count(*) FROM late_refs WHERE ws = '{agent}') || ' ' ||
                    (SELECT count(*) FROM org_token_audit_logs WHERE org_id = '{agent}') || ' ' ||
                    (SELECT count(*) FROM approval_requests WHERE workspace_id = '{agent}') || ' ' ||
                    (SELECT count(*) FROM workspaces WHERE forwarded_to = '{agent}') || ' ' ||
                    (SELECT status::text FROM workspaces WHERE id = '{agent}')"
        )),
        "3 1 1 1 removed"
    );
}

// ---------------------------------------------------------------------------------------------
// The restart client's bounds: a total deadline and giving up after repeated
// failures, with the rest reported as not attempted.

/// A root with `n` online children; returns nothing (the global fan-out finds them).
fn fan_out_tenant(n: i32) -> TestDb {
    let db = TestDb::empty();
    db.exec(&format!(
        "INSERT INTO workspaces (id, name, status) VALUES ('40000000-0000-4000-8000-000000000000', 'root', 'online');
         INSERT INTO workspaces (name, status, parent_id)
         SELECT 'w' || g, 'online', '40000000-0000-4000-8000-000000000000' FROM generate_series(1, {n}) g;"
    ));
    db
}

fn not_attempted(j: &serde_json::Value, why: &str) -> usize {
    j["restart"]["dispatched"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|d| {
                    d["error"]
                        .as_str()
                        .is_some_and(|e| e.starts_with("not attempted") && e.contains(why))
                })
                .count()
        })
        .unwrap_or(0)
}

#[test]
fn restarts_stop_after_repeated_failures_and_report_the_rest() {
    let db = fan_out_tenant(40);
    let platform = FakePlatform::start(&["/restart"]);
    let r = db
        .orgctl(&["secret", "set", "--global", "K", "--yes", "-o", "json"])
        .env("MOLECULE_PLATFORM_URL", &platform.url())
        .env("MOLECULE_ADMIN_TOKEN", TOKEN)
        .stdin(b"v")
        .run();
    r.code(1).one_line_error("not attempted");
    let j = r.json();
    let calls = platform.calls().len();
    // 10 failures in a row stop it; at most the 8 calls in flight finish after that.
    assert!((10..=18).contains(&calls), "{calls} calls");
    assert_eq!(not_attempted(&j, "failed restarts in a row"), 41 - calls);
    // The secret is committed all the same.
    assert_eq!(
        db.scalar("SELECT count(*) FROM global_secrets WHERE key = 'K'"),
        "1"
    );
}

#[test]
fn restarts_respect_the_total_deadline() {
    let db = fan_out_tenant(40);
    let platform = FakePlatform::start_with(&[], std::time::Duration::from_millis(600));
    let started = std::time::Instant::now();
    let r = db
        .orgctl(&[
            "secret",
            "set",
            "--global",
            "K",
            "--yes",
            "--restart-timeout",
            "1s",
            "-o",
            "json",
        ])
        .env("MOLECULE_PLATFORM_URL", &platform.url())
        .env("MOLECULE_ADMIN_TOKEN", TOKEN)
        .stdin(b"v")
        .run();
    let took = started.elapsed();
    r.code(1).one_line_error("not attempted");
    let j = r.json();
    let calls = platform.calls().len();
    // 8 at a time, 600 ms each: two waves start within the second, the rest never do.
    assert!((8..=24).contains(&calls), "{calls} calls");
    assert!(not_attempted(&j, "deadline") >= 41 - 24, "{j}");
    assert!(took < std::time::Duration::from_secs(8), "{took:?}");
    // A bad duration is a usage error before anything is written.
    let before = db.snapshot();
    db.orgctl(&[
        "secret",
        "set",
        "--global",
        "K2",
        "--yes",
        "--restart-timeout",
        "soon",
    ])
    .stdin(b"v")
    .run()
    .code(2);
    assert_eq!(db.snapshot(), before);
}

/// A platform stand-in that answers each request `202 {"status":"restart_dispatched"}` (the
/// admin restart route's answer) as HTTP/1.1 keep-alive and then closes
/// the connection anyway (as a platform or proxy does with idle connections): a client that
/// reuses it meets a stale connection. Counts the requests it answered.
struct DroppingPlatform {
    addr: std::net::SocketAddr,
    answered: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl DroppingPlatform {
    fn start() -> Self {
        use std::io::{Read, Write};
        let listener = match std::net::TcpListener::bind("127.0.0.1:0") {
            Ok(l) => l,
            Err(e) => panic!("{e}"),
        };
        let addr = match listener.local_addr() {
            Ok(a) => a,
            Err(e) => panic!("{e}"),
        };
        let answered = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let a = answered.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut stream) = conn else { continue };
                let a = a.clone();
                std::thread::spawn(move || {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 1024];
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        match stream.read(&mut chunk) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    a.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let _ = stream.write_all(
                        b"HTTP/1.1 202 Accepted\r\nContent-Length: 31\r\n\r\n{\"status\":\"restart_dispatched\"}",
                    );
                    // Dropped here: closed although the response said keep-alive.
                });
            }
        });
        DroppingPlatform { addr, answered }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

#[test]
fn a_stale_keep_alive_connection_is_retried_once_on_a_new_one() {
    let db = fan_out_tenant(40);
    let platform = DroppingPlatform::start();
    let r = db
        .orgctl(&["secret", "set", "--global", "K", "--yes", "-o", "json"])
        .env("MOLECULE_PLATFORM_URL", &platform.url())
        .env("MOLECULE_ADMIN_TOKEN", TOKEN)
        .stdin(b"v")
        .run();
    r.code(0);
    let j = r.json();
    let ok = j["restart"]["dispatched"]
        .as_array()
        .map(|a| a.iter().filter(|d| d["ok"] == true).count())
        .unwrap_or(0);
    assert_eq!(ok, 41, "{j}");
    // Each workspace restarted once: the retry only follows a call the platform never answered.
    assert_eq!(
        platform.answered.load(std::sync::atomic::Ordering::SeqCst),
        41
    );
}

/// The platform's own install, as it performs it (one transaction): its agent row, on conflict
/// only kind, parent and template; its declared plugin, on conflict a refreshed source.
fn platform_install_sql(agent: &str) -> String {
    format!(
        "BEGIN;
         INSERT INTO workspaces (id, name, kind, tier, status, runtime, parent_id, template,
                                 broadcast_enabled)
         VALUES ('{agent}', 'Org Concierge', 'platform', 0, 'offline', 'hermes', NULL,
                 'platform-agent', TRUE)
         ON CONFLICT (id) DO UPDATE SET kind = 'platform', parent_id = NULL,
                                        template = 'platform-agent';
         INSERT INTO workspace_declared_plugins (workspace_id, plugin_name, source_raw)
         VALUES ('{agent}', 'molecule-ai-plugin-molecule-platform-mcp',
                 'gitea://molecule-ai/molecule-ai-plugin-molecule-platform-mcp#main')
         ON CONFLICT (workspace_id, plugin_name) DO UPDATE SET source_raw = EXCLUDED.source_raw;
         COMMIT;"
    )
}

#[test]
fn the_platforms_own_install_after_orgctls_changes_nothing_orgctl_wrote() {
    for (label, env) in [
        ("defaults", vec![]),
        (
            "org name and runtime",
            vec![
                ("MOLECULE_ORG_NAME", "Acme"),
                ("MOLECULE_DEFAULT_RUNTIME", "claude-code"),
            ],
        ),
    ] {
        let db = TestDb::sample();
        let mut cmd = db.orgctl(&["install-platform-agent", "--model", "m", "--yes"]);
        for (k, v) in &env {
            cmd = cmd.env(k, v);
        }
        cmd.run().code(0);
        let agent = crate::harness::TEST_AGENT_ID;
        assert_eq!(db.scalar(AGENT_NAME_CHECK), agent, "{label}");
        // The platform knows the same id for the same org: it finds orgctl's row and installs
        // over it.
        let before = db.snapshot();
        db.exec(&platform_install_sql(agent));
        assert_eq!(db.snapshot(), before, "{label}: the platform changed a row");
        assert_eq!(
            db.scalar("SELECT count(*) FROM workspaces WHERE kind = 'platform'"),
            "1",
            "{label}"
        );
    }
}
