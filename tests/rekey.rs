//! `orgctl secret verify` and `orgctl secret rekey` against real
//! PostgreSQL. Every check of a stored value is an independent AES-256-GCM decryption done here
//! (tests/secret.rs `decrypt`), never orgctl's own code.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde::Deserialize;
use sqlx::Row;

use crate::harness::{ids, Run, TestDb};
use crate::secret::{decrypt, key_b64};

const OLD: [u8; 32] = [0x11; 32];
const NEW: [u8; 32] = [0x22; 32];
const THIRD: [u8; 32] = [0x33; 32];
/// The name the encrypted channel fields are counted and named under.
const CHANNELS: &str = "workspace_channels.channel_config";

// ---------------------------------------------------------------------------------------------
// The JSON contract, rejecting unknown fields.

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RekeyJson {
    /// The audit chain's head a committed change prints (not on a dry run).
    #[allow(dead_code)]
    #[serde(default)]
    audit_head: Option<serde_json::Value>,
    dry_run: bool,
    changed: bool,
    mode: String,
    tables: Vec<RekeyCount>,
    reencrypt_total: i64,
    undecryptable: BadJson,
    plan_hash: String,
}

#[derive(Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
struct RekeyCount {
    table: String,
    encryption_version: i32,
    rows: i64,
    reencrypt: i64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BadJson {
    count: i64,
    rows: Vec<BadRowJson>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BadRowJson {
    table: String,
    id: String,
    workspace_id: Option<String>,
    key: String,
    encryption_version: i32,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct VerifyJson {
    ok: bool,
    verified: i64,
    tables: Vec<VerifyCount>,
    plaintext_rows: i64,
    plaintext_channel_fields: i64,
    undecryptable: BadJson,
}

#[derive(Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
struct VerifyCount {
    table: String,
    encryption_version: i32,
    rows: i64,
    undecryptable: i64,
}

fn parse<T: serde::de::DeserializeOwned>(r: &Run) -> T {
    match serde_json::from_str(&r.stdout) {
        Ok(p) => p,
        Err(e) => panic!(
            "JSON contract: {e}\nstdout:\n{}\nstderr:\n{}",
            r.stdout, r.stderr
        ),
    }
}

// ---------------------------------------------------------------------------------------------
// Helpers

/// AES-256-GCM with a random nonce, done here (the platform's format).
fn encrypt(key: &[u8; 32], plaintext: &[u8]) -> Vec<u8> {
    use aes_gcm::aead::Aead;
    use aes_gcm::KeyInit;
    let cipher = match aes_gcm::Aes256Gcm::new_from_slice(key) {
        Ok(c) => c,
        Err(e) => panic!("{e}"),
    };
    let mut nonce = [0u8; 12];
    if let Err(e) = getrandom::getrandom(&mut nonce) {
        panic!("{e}");
    }
    let ct = match cipher.encrypt(aes_gcm::Nonce::from_slice(&nonce), plaintext) {
        Ok(c) => c,
        Err(e) => panic!("{e}"),
    };
    let mut out = nonce.to_vec();
    out.extend_from_slice(&ct);
    out
}

/// A stored secret row, as read back through our own connection.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Stored {
    value: Vec<u8>,
    version: i32,
    updated_at: String,
}

/// Every secret row of both tables, by "table/id".
async fn rows(db: &TestDb) -> BTreeMap<String, Stored> {
    let mut conn = db.connect().await;
    let mut m = BTreeMap::new();
    for t in ["workspace_secrets", "global_secrets"] {
        let q = format!(
            "SELECT id::text, encrypted_value, encryption_version, updated_at::text FROM {t}"
        );
        let rs = match sqlx::query(&q).fetch_all(&mut conn).await {
            Ok(r) => r,
            Err(e) => panic!("{e}"),
        };
        for r in rs {
            let id: String = r.get(0);
            m.insert(
                format!("{t}/{id}"),
                Stored {
                    value: r.get(1),
                    version: r.get(2),
                    updated_at: r.get(3),
                },
            );
        }
    }
    m
}

/// The plaintext of every row under `key` (version 0 as is); panics naming a row that does
/// not decrypt.
fn plaintexts(rows: &BTreeMap<String, Stored>, key: &[u8; 32]) -> BTreeMap<String, Vec<u8>> {
    rows.iter()
        .map(|(id, s)| {
            let p = match s.version {
                0 => s.value.clone(),
                1 => match decrypt(key, &s.value) {
                    Some(p) => p,
                    None => panic!("{id} does not decrypt"),
                },
                v => panic!("{id} has version {v}"),
            };
            (id.clone(), p)
        })
        .collect()
}

/// The sample org plus encrypted rows under OLD in both tables, every updated_at set in the
/// past (so a bump would show).
async fn seeded() -> TestDb {
    let db = TestDb::sample();
    let mut conn = db.connect().await;
    for (i, ws) in [ids::HQ, ids::LABS, ids::LEGACY].iter().enumerate() {
        let r = sqlx::query(
            "INSERT INTO workspace_secrets (workspace_id, key, encrypted_value, encryption_version)
             VALUES ($1::uuid, $2, $3, 1)",
        )
        .bind(*ws)
        .bind(format!("ENC_{i}"))
        .bind(encrypt(&OLD, format!("workspace-value-{i}").as_bytes()))
        .execute(&mut conn)
        .await;
        if let Err(e) = r {
            panic!("{e}");
        }
    }
    for i in 0..3 {
        let r = sqlx::query(
            "INSERT INTO global_secrets (key, encrypted_value, encryption_version)
             VALUES ($1, $2, 1)",
        )
        .bind(format!("GENC_{i}"))
        .bind(encrypt(&OLD, format!("global-value-{i}").as_bytes()))
        .execute(&mut conn)
        .await;
        if let Err(e) = r {
            panic!("{e}");
        }
    }
    db.exec(
        "UPDATE workspace_secrets SET updated_at = '2021-02-03 04:05:06+00';
         UPDATE global_secrets SET updated_at = '2021-02-03 04:05:06+00';",
    );
    db
}

/// Add `n` plaintext global rows (set-based, for the large cases).
fn add_plaintext_rows(db: &TestDb, n: u32) {
    db.exec(&format!(
        "INSERT INTO global_secrets (key, encrypted_value, encryption_version)
         SELECT 'BULK_' || g, convert_to('bulk-value-' || g, 'UTF8'), 0
           FROM generate_series(1, {n}) g"
    ));
}

/// The platform tables only (orgctl's own schema may be created by a refused apply).
fn platform_dump(db: &TestDb) -> String {
    let s = db.snapshot();
    match s.split_once("== orgctl") {
        Some((p, _)) => p.to_string(),
        None => s,
    }
}

fn rekey(db: &TestDb, args: &[&str]) -> crate::harness::Cmd {
    let mut a = vec!["secret", "rekey"];
    a.extend_from_slice(args);
    db.orgctl(&a)
        .env("SECRETS_ENCRYPTION_KEY", &key_b64(&OLD))
        .env("SECRETS_ENCRYPTION_KEY_NEW", &key_b64(&NEW))
}

fn verify(db: &TestDb, key: &[u8; 32]) -> Run {
    db.orgctl(&["secret", "verify", "-o", "json"])
        .env("SECRETS_ENCRYPTION_KEY", &key_b64(key))
        .run()
}

/// Neither key nor any value anywhere a human or a log could see.
#[track_caller]
fn assert_nothing_leaked(db: &TestDb, r: &Run, values: &BTreeMap<String, Vec<u8>>) {
    let mut needles: Vec<String> = vec![key_b64(&OLD), key_b64(&NEW), key_b64(&THIRD)];
    needles.extend(
        values
            .values()
            .map(|v| String::from_utf8_lossy(v).to_string()),
    );
    let audit = if db.scalar("SELECT to_regclass('orgctl.audit_log') IS NOT NULL") == "t" {
        db.exec("SELECT x::text FROM orgctl.audit_log x")
    } else {
        String::new()
    };
    for n in &needles {
        assert!(!r.stdout.contains(n.as_str()), "{n} on stdout");
        assert!(!r.stderr.contains(n.as_str()), "{n} on stderr");
        assert!(!audit.contains(n.as_str()), "{n} in the audit log");
    }
}

// ---------------------------------------------------------------------------------------------
// rekey: rotation

#[tokio::test(flavor = "multi_thread")]
async fn rekey_moves_every_row_to_the_new_key_and_changes_nothing_else() {
    let db = seeded().await;
    let before = rows(&db).await;
    let values = plaintexts(&before, &OLD);
    assert_eq!(before.values().filter(|s| s.version == 0).count(), 4);
    assert_eq!(before.values().filter(|s| s.version == 1).count(), 6);

    // Dry run: counts per table and version, a plan hash, nothing changed.
    let dry = rekey(&db, &["--dry-run", "-o", "json"]).run();
    dry.code(0);
    let d: RekeyJson = parse(&dry);
    assert!(d.dry_run && d.changed);
    assert_eq!(d.mode, "rotate");
    assert_eq!(d.reencrypt_total, 10);
    assert_eq!(d.undecryptable.count, 0);
    let want = |t: &str, v: i32, n: i64| RekeyCount {
        table: t.into(),
        encryption_version: v,
        rows: n,
        reencrypt: n,
    };
    assert_eq!(
        d.tables,
        vec![
            want("workspace_secrets", 0, 2),
            want("workspace_secrets", 1, 3),
            want("global_secrets", 0, 2),
            want("global_secrets", 1, 3),
            want(CHANNELS, 0, 0),
            want(CHANNELS, 1, 0),
        ]
    );
    assert!(d.plan_hash.starts_with("sha256:"));
    assert_eq!(rows(&db).await, before, "a dry run changes nothing");
    assert_eq!(db.audit_rows(), 0);

    // Apply exactly the reviewed plan, the new key from a file (first line, newline dropped).
    let dir = db_tempdir(&db);
    let key_file = dir.join("new.key");
    write_private(
        &key_file,
        format!("{}\nignored second line\n", key_b64(&NEW)).as_bytes(),
    );
    let r = db
        .orgctl(&[
            "secret",
            "rekey",
            "--new-key-file",
            &key_file.to_string_lossy(),
            "--expect-plan",
            &d.plan_hash,
            "--yes",
            "-o",
            "json",
        ])
        .env("SECRETS_ENCRYPTION_KEY", &key_b64(&OLD))
        .run();
    r.code(0);
    let a: RekeyJson = parse(&r);
    assert!(!a.dry_run && a.changed);
    assert_eq!(a.plan_hash, d.plan_hash);
    assert_eq!(a.reencrypt_total, 10);

    let after = rows(&db).await;
    assert_eq!(after.len(), before.len());
    for (id, s) in &after {
        let old = &before[id];
        assert_eq!(s.version, 1, "{id}");
        assert_eq!(s.updated_at, old.updated_at, "{id}: updated_at untouched");
        assert_eq!(decrypt(&NEW, &s.value).as_ref(), Some(&values[id]), "{id}");
        assert_eq!(
            decrypt(&OLD, &s.value),
            None,
            "{id} still opens with the old key"
        );
        assert_ne!(
            s.value[..12],
            old.value[..12.min(old.value.len())],
            "{id}: fresh nonce"
        );
    }
    assert_nothing_leaked(&db, &r, &values);

    // One audit row with the counts, never a key or a value.
    let audit = db.exec(
        "SELECT command || ' ' || outcome || ' ' || (args->>'mode') || ' ' || (args->>'reencrypted')
           FROM orgctl.audit_log",
    );
    assert_eq!(audit.trim(), "secret rekey applied rotate 10");

    // verify: the new key reads everything; the old one nothing, each row named.
    let v = verify(&db, &NEW);
    v.code(0);
    let vj: VerifyJson = parse(&v);
    assert!(vj.ok);
    assert_eq!(vj.plaintext_rows, 0);
    let v = verify(&db, &OLD);
    v.code(1);
    let vj: VerifyJson = parse(&v);
    assert!(!vj.ok);
    assert_eq!(vj.undecryptable.count, 10);
    let named: Vec<String> = vj
        .undecryptable
        .rows
        .iter()
        .map(|b| format!("{}/{}", b.table, b.id))
        .collect();
    let mut all: Vec<String> = after.keys().cloned().collect();
    let mut named_sorted = named.clone();
    named_sorted.sort();
    all.sort();
    assert_eq!(named_sorted, all);
    assert_nothing_leaked(&db, &v, &values);

    // A second rotation with the same (now stale) current key refuses: nothing decrypts.
    let again = rekey(&db, &["--yes"]).run();
    again.code(3).one_line_error("do not decrypt");
    assert_eq!(rows(&db).await, after);
}

fn db_tempdir(db: &TestDb) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("orgctl-rekey-{}", db.name));
    let _ = std::fs::create_dir_all(&dir);
    dir
}

fn write_private(path: &std::path::Path, data: &[u8]) {
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path);
    match f {
        Ok(mut f) => {
            use std::io::Write;
            if let Err(e) = f.write_all(data) {
                panic!("{e}");
            }
        }
        Err(e) => panic!("{e}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_row_under_a_third_key_refuses_with_the_tenant_unchanged() {
    let db = seeded().await;
    let foreign_id = db.scalar(&format!(
        "INSERT INTO global_secrets (key, encrypted_value, encryption_version)
         VALUES ('FOREIGN', '\\x{}'::bytea, 1) RETURNING id",
        hex(&encrypt(&THIRD, b"under-a-third-key"))
    ));
    let before = platform_dump(&db);

    let dry = rekey(&db, &["--dry-run", "-o", "json"]).run();
    dry.code(3).one_line_error(&foreign_id);
    let d: RekeyJson = parse(&dry);
    assert_eq!(d.undecryptable.count, 1);
    assert!(!d.changed);
    assert_eq!(d.undecryptable.rows[0].id, foreign_id);
    assert_eq!(d.undecryptable.rows[0].key, "FOREIGN");
    assert_eq!(d.undecryptable.rows[0].workspace_id, None);
    assert_eq!(d.undecryptable.rows[0].encryption_version, 1);

    let r = rekey(&db, &["--yes"]).run();
    r.code(3).one_line_error(&foreign_id);
    assert!(r.stderr.contains("nothing was changed"), "{}", r.stderr);
    assert!(
        r.stdout.contains("FOREIGN"),
        "the rows are named:\n{}",
        r.stdout
    );
    assert!(!r.stdout.contains("under-a-third-key"));
    assert_eq!(platform_dump(&db), before, "the tenant is unchanged");
    assert_eq!(db.audit_rows(), 0);

    // verify names it too (exit 1), and only it.
    let v = verify(&db, &OLD);
    v.code(1);
    let vj: VerifyJson = parse(&v);
    assert_eq!(vj.undecryptable.count, 1);
    assert_eq!(vj.undecryptable.rows[0].id, foreign_id);
    assert_eq!(vj.plaintext_rows, 4);
    assert!(v.stderr.contains("plaintext"), "{}", v.stderr);
    assert!(vj.tables.contains(&VerifyCount {
        table: "global_secrets".into(),
        encryption_version: 1,
        rows: 4,
        undecryptable: 1
    }));
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn plaintext_only_encrypts_version_0_and_leaves_version_1_byte_identical() {
    let db = seeded().await;
    let before = rows(&db).await;
    let values = plaintexts(&before, &OLD);
    let r = db
        .orgctl(&["secret", "rekey", "--plaintext-only", "--yes", "-o", "json"])
        .env("SECRETS_ENCRYPTION_KEY", &key_b64(&OLD))
        .run();
    r.code(0);
    let j: RekeyJson = parse(&r);
    assert_eq!(j.mode, "plaintext-only");
    assert_eq!(j.reencrypt_total, 4);
    let after = rows(&db).await;
    for (id, s) in &after {
        let old = &before[id];
        if old.version == 1 {
            assert_eq!(s, old, "{id}: version-1 rows byte-identical");
        } else {
            assert_eq!(s.version, 1, "{id}");
            assert_eq!(s.updated_at, old.updated_at, "{id}");
            assert_eq!(decrypt(&OLD, &s.value).as_ref(), Some(&values[id]), "{id}");
        }
    }
    assert_nothing_leaked(&db, &r, &values);
    // Again: nothing to do, exit 0, nothing written, no audit row.
    let audit = db.audit_rows();
    let r = db
        .orgctl(&["secret", "rekey", "--plaintext-only", "--yes"])
        .env("SECRETS_ENCRYPTION_KEY", &key_b64(&OLD))
        .run();
    r.code(0);
    assert!(r.stdout.contains("Nothing to do"), "{}", r.stdout);
    assert_eq!(rows(&db).await, after);
    assert_eq!(db.audit_rows(), audit);
}

#[tokio::test(flavor = "multi_thread")]
async fn plaintext_only_refuses_a_key_the_encrypted_rows_do_not_use() {
    let db = seeded().await;
    let before = platform_dump(&db);
    let r = db
        .orgctl(&["secret", "rekey", "--plaintext-only", "--yes"])
        .env("SECRETS_ENCRYPTION_KEY", &key_b64(&THIRD))
        .run();
    r.code(3).one_line_error("do not decrypt");
    assert_eq!(platform_dump(&db), before);
}

#[tokio::test(flavor = "multi_thread")]
async fn apply_needs_confirmation_and_honours_expect_plan() {
    let db = seeded().await;
    let before = platform_dump(&db);
    // No terminal, no --yes.
    rekey(&db, &[])
        .run()
        .code(3)
        .one_line_error("confirmation needed");
    // A plan hash from another state of the tenant.
    let stale = format!("sha256:{}", "0".repeat(64));
    let r = rekey(&db, &["--expect-plan", &stale, "--yes"]).run();
    r.code(3).one_line_error("differs");
    assert!(r.stdout.contains("plan_hash:"), "the new plan is printed");
    let r = rekey(&db, &["--dry-run", "--expect-plan", &stale]).run();
    r.code(3).one_line_error("differs");
    assert_eq!(platform_dump(&db), before);
    assert_eq!(db.audit_rows(), 0);
}

// ---------------------------------------------------------------------------------------------
// Bad key inputs: exit 2, before any connection.

#[test]
fn bad_key_inputs_are_exit_2_before_any_connection() {
    use base64::Engine;
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    let old = key_b64(&OLD);
    let short = b64(&[7u8; 16]);
    let hex32 = "00112233445566778899aabbccddeeff".to_string();
    // The same 32 bytes as OLD, written raw: the same key in another encoding.
    let raw_old = String::from_utf8(OLD.to_vec()).unwrap_or_default();
    let dir = std::env::temp_dir().join(format!("orgctl-rekey-bad-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let empty_file = dir.join("empty.key");
    write_private(&empty_file, b"\nsecond line\n");
    let short_file = dir.join("short.key");
    write_private(&short_file, format!("{short}\n").as_bytes());
    let missing_file = dir.join("missing.key");
    let (ef, sf, mf) = (
        empty_file.to_string_lossy().to_string(),
        short_file.to_string_lossy().to_string(),
        missing_file.to_string_lossy().to_string(),
    );
    let good_new = key_b64(&NEW);

    type Case<'a> = (Vec<&'a str>, Vec<(&'a str, &'a str)>, &'a str);
    let cases: Vec<Case> = vec![
        // new key: wrong length, same as current (even in another encoding); hex below
        (
            vec!["secret", "rekey", "--yes"],
            vec![
                ("SECRETS_ENCRYPTION_KEY", &old),
                ("SECRETS_ENCRYPTION_KEY_NEW", &short),
            ],
            "SECRETS_ENCRYPTION_KEY_NEW",
        ),
        (
            vec!["secret", "rekey", "--yes"],
            vec![
                ("SECRETS_ENCRYPTION_KEY", &old),
                ("SECRETS_ENCRYPTION_KEY_NEW", &old),
            ],
            "same key",
        ),
        (
            vec!["secret", "rekey", "--yes"],
            vec![
                ("SECRETS_ENCRYPTION_KEY", &old),
                ("SECRETS_ENCRYPTION_KEY_NEW", &raw_old),
            ],
            "same key",
        ),
        // no new key; both sources; key files that are no keys
        (
            vec!["secret", "rekey", "--yes"],
            vec![("SECRETS_ENCRYPTION_KEY", &old)],
            "no new key",
        ),
        (
            vec!["secret", "rekey", "--yes", "--new-key-file", &sf],
            vec![
                ("SECRETS_ENCRYPTION_KEY", &old),
                ("SECRETS_ENCRYPTION_KEY_NEW", &good_new),
            ],
            "both",
        ),
        (
            vec!["secret", "rekey", "--yes", "--new-key-file", &ef],
            vec![("SECRETS_ENCRYPTION_KEY", &old)],
            "first line is empty",
        ),
        (
            vec!["secret", "rekey", "--yes", "--new-key-file", &sf],
            vec![("SECRETS_ENCRYPTION_KEY", &old)],
            "not a usable key",
        ),
        (
            vec!["secret", "rekey", "--yes", "--new-key-file", &mf],
            vec![("SECRETS_ENCRYPTION_KEY", &old)],
            "could not read",
        ),
        // current key: missing, invalid (hex), for rekey, --plaintext-only and verify
        (
            vec!["secret", "rekey", "--yes"],
            vec![("SECRETS_ENCRYPTION_KEY_NEW", &good_new)],
            "SECRETS_ENCRYPTION_KEY is not set",
        ),
        (
            vec!["secret", "rekey", "--plaintext-only", "--yes"],
            vec![],
            "SECRETS_ENCRYPTION_KEY is not set",
        ),
        (
            vec!["secret", "rekey", "--plaintext-only", "--yes"],
            vec![
                ("SECRETS_ENCRYPTION_KEY", &old),
                ("SECRETS_ENCRYPTION_KEY_NEW", &good_new),
            ],
            "--plaintext-only",
        ),
        (
            vec!["secret", "verify"],
            vec![],
            "SECRETS_ENCRYPTION_KEY is not set",
        ),
        (
            vec!["secret", "verify"],
            vec![("SECRETS_ENCRYPTION_KEY", &short)],
            "not a usable key",
        ),
        // a plan hash that is no hash
        (
            vec!["secret", "rekey", "--yes", "--expect-plan", "abc"],
            vec![
                ("SECRETS_ENCRYPTION_KEY", &old),
                ("SECRETS_ENCRYPTION_KEY_NEW", &good_new),
            ],
            "not a plan hash",
        ),
    ];
    // A 32-character hex key decodes as base64 to 24 bytes: invalid under the platform's key
    // rule (platform::keys); these cases apply as soon as it calls such a key unusable.
    let hex_is_invalid = orgctl::testing::SecretBox::new(Some(&hex32), "")
        .write_version()
        .is_err();
    let mut cases = cases;
    if hex_is_invalid {
        cases.push((
            vec!["secret", "rekey", "--yes"],
            vec![
                ("SECRETS_ENCRYPTION_KEY", &old),
                ("SECRETS_ENCRYPTION_KEY_NEW", &hex32),
            ],
            "SECRETS_ENCRYPTION_KEY_NEW",
        ));
        cases.push((
            vec!["secret", "rekey", "--yes"],
            vec![
                ("SECRETS_ENCRYPTION_KEY", &hex32),
                ("SECRETS_ENCRYPTION_KEY_NEW", &good_new),
            ],
            "SECRETS_ENCRYPTION_KEY is not a usable key",
        ));
    }
    // Nothing listens on port 1: a connection attempt would fail with exit 1 "could not
    // connect", so exit 2 with the key's message proves none was made.
    let unreachable = "postgres://u:pw@127.0.0.1:1/nowhere";
    for (args, env, needle) in &cases {
        let mut cmd = crate::harness::Cmd::new(args).env("DATABASE_URL", unreachable);
        for (k, v) in env {
            cmd = cmd.env(k, v);
        }
        let r = cmd.run();
        assert_eq!(r.code, 2, "{args:?} {env:?}\n{}", r.stderr);
        r.one_line_error(needle);
        assert!(!r.stderr.contains("connect"), "{args:?}: {}", r.stderr);
        assert!(r.stdout.is_empty(), "{args:?}: {}", r.stdout);
        for (_, v) in env {
            assert!(!r.stderr.contains(v), "{args:?}: a key value on stderr");
        }
    }
    // clap: a new key file with --plaintext-only, and no key on the command line at all.
    for args in [
        vec!["secret", "rekey", "--plaintext-only", "--new-key-file", &sf],
        vec!["secret", "rekey", "--new-key", &good_new],
        vec!["secret", "verify", &old],
    ] {
        let r = crate::harness::Cmd::new(&args)
            .env("DATABASE_URL", unreachable)
            .env("SECRETS_ENCRYPTION_KEY", &old)
            .run();
        assert_eq!(r.code, 2, "{args:?}\n{}", r.stderr);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

// ---------------------------------------------------------------------------------------------
// Concurrency and crashes

/// Wait until an orgctl backend of this database has sent the rekey's first page UPDATE (so
/// rows are rewritten but not committed); returns its pid.
async fn wait_for_rekey_update(db: &TestDb, child: &mut std::process::Child) -> i32 {
    let mut conn = db.connect().await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let pid: Option<i32> = sqlx::query_scalar(
            "SELECT pid FROM pg_stat_activity
              WHERE datname = current_database() AND application_name = 'orgctl'
                AND query LIKE 'UPDATE global_secrets%unnest%'",
        )
        .fetch_optional(&mut conn)
        .await
        .unwrap_or(None);
        if let Some(p) = pid {
            return p;
        }
        if let Ok(Some(st)) = child.try_wait() {
            panic!("the rekey ended ({st}) before it was observed writing");
        }
        assert!(Instant::now() < deadline, "never saw the rekey write");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

async fn wait_for_no_orgctl_backend(db: &TestDb) {
    let mut conn = db.connect().await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity
              WHERE datname = current_database() AND application_name = 'orgctl'",
        )
        .fetch_one(&mut conn)
        .await
        .unwrap_or(1);
        if n == 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "orgctl's backend never went away"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn spawn(cmd: &crate::harness::Cmd) -> std::process::Child {
    let mut c = cmd.command();
    c.stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    match c.spawn() {
        Ok(c) => c,
        Err(e) => panic!("{e}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_during_rekey_leaves_every_row_under_the_old_key() {
    let db = seeded().await;
    add_plaintext_rows(&db, 60_000);
    let before = rows(&db).await;
    let dump = platform_dump(&db);
    let mut child = spawn(&rekey(&db, &["--yes"]));
    let pid = wait_for_rekey_update(&db, &mut child).await;
    // Writers of every table the key protects wait for the commit, the channels included.
    let locked = db.scalar(&format!(
        "SELECT string_agg(c.relname, ',' ORDER BY c.relname)
           FROM pg_locks l JOIN pg_class c ON c.oid = l.relation
          WHERE l.pid = {pid} AND l.mode = 'ShareRowExclusiveLock'
            AND c.relnamespace = 'public'::regnamespace"
    ));
    assert_eq!(
        locked, "global_secrets,workspace_channels,workspace_secrets",
        "{locked}"
    );
    // Pages are written but not committed: kill the client outright.
    orgctl::testing::sys::kill(child.id() as i32, libc::SIGKILL);
    let st = child.wait();
    assert!(
        matches!(st, Ok(s) if s.code().is_none()),
        "killed by a signal"
    );
    wait_for_no_orgctl_backend(&db).await;
    assert_eq!(platform_dump(&db), dump, "nothing of the rekey survived");
    let after = rows(&db).await;
    assert_eq!(after, before);
    // Everything still reads with the old key.
    plaintexts(&after, &OLD);
    verify(&db, &OLD).code(0);
    assert_eq!(db.audit_rows(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn secret_set_during_rekey_waits_or_is_refused_and_never_writes_under_the_old_key() {
    let db = seeded().await;
    add_plaintext_rows(&db, 60_000);
    let mut child = spawn(&rekey(&db, &["--yes", "--lock-timeout", "60s"]));
    wait_for_rekey_update(&db, &mut child).await;

    let set = |key: &[u8; 32], name: &str, timeout: &str| {
        db.orgctl(&[
            "secret",
            "set",
            "--global",
            name,
            "--no-restart",
            "--yes",
            "--lock-timeout",
            timeout,
        ])
        .env("SECRETS_ENCRYPTION_KEY", &key_b64(key))
        .stdin(b"value-set-during-rekey")
    };
    // With the old key and a long lock timeout: waits for the rekey, then is refused.
    // With the old key and a short one: refused on the lock.
    // With the new key: waits, then writes under the new key.
    let (old_wait, old_short, new_wait) = tokio::join!(
        set(&OLD, "SET_OLD_WAIT", "60s").run_async(),
        set(&OLD, "SET_OLD_SHORT", "100ms").run_async(),
        set(&NEW, "SET_NEW_WAIT", "60s").run_async(),
    );
    let st = child.wait();
    assert!(matches!(st, Ok(s) if s.success()), "the rekey committed");
    old_wait
        .code(3)
        .one_line_error("decrypts none of the tenant's existing encrypted secrets");
    old_short.code(3).one_line_error("lock");
    new_wait.code(0);

    // After the commit: every row reads with the new key, none with the old.
    let after = rows(&db).await;
    for (id, s) in &after {
        assert_eq!(s.version, 1, "{id}");
        assert!(decrypt(&NEW, &s.value).is_some(), "{id}");
        assert!(decrypt(&OLD, &s.value).is_none(), "{id} under the old key");
    }
    assert_eq!(
        db.scalar("SELECT count(*) FROM global_secrets WHERE key LIKE 'SET_OLD%'"),
        "0"
    );
    assert_eq!(
        db.scalar("SELECT count(*) FROM global_secrets WHERE key = 'SET_NEW_WAIT'"),
        "1"
    );
}

// ---------------------------------------------------------------------------------------------
// status

#[tokio::test(flavor = "multi_thread")]
async fn status_counts_secret_rows_per_version_without_a_key() {
    let db = seeded().await;
    let (_, j) = crate::status::status_json(&db, &[]);
    let got: Vec<(String, i32, i64)> = j
        .secrets
        .iter()
        .map(|c| (c.table.clone(), c.encryption_version, c.rows))
        .collect();
    assert_eq!(
        got,
        vec![
            ("workspace_secrets".to_string(), 0, 2),
            ("workspace_secrets".to_string(), 1, 3),
            ("global_secrets".to_string(), 0, 2),
            ("global_secrets".to_string(), 1, 3),
            (CHANNELS.to_string(), 0, 0),
            (CHANNELS.to_string(), 1, 0),
        ]
    );
    let r = db.orgctl(&["status"]).run();
    assert!(
        r.stdout.contains("Secrets by encryption version"),
        "{}",
        r.stdout
    );
}

// ---------------------------------------------------------------------------------------------
// Channel secrets: the five encrypted fields of workspace_channels.channel_config, each the JSON
// string "ec1:" + standard base64(nonce ‖ AES-256-GCM ciphertext-and-tag), or legacy plaintext.

mod ch {
    pub const TELEGRAM: &str = "d0000000-0000-4000-8000-000000000001";
    pub const SLACK: &str = "d0000000-0000-4000-8000-000000000002";
    pub const LARK: &str = "d0000000-0000-4000-8000-000000000003";
}

/// An encrypted channel field, made here (the platform's format).
fn ec1(key: &[u8; 32], plaintext: &str) -> String {
    use base64::Engine;
    format!(
        "ec1:{}",
        base64::engine::general_purpose::STANDARD.encode(encrypt(key, plaintext.as_bytes()))
    )
}

/// An encrypted channel field opened here, independently of orgctl.
fn open_ec1(key: &[u8; 32], value: &serde_json::Value) -> Option<String> {
    use base64::Engine;
    let b64 = value.as_str()?.strip_prefix("ec1:")?;
    let bytes = base64::engine::general_purpose::STANDARD.decode(b64).ok()?;
    decrypt(key, &bytes).and_then(|p| String::from_utf8(p).ok())
}

/// Every channel's (channel_config, updated_at), by id.
fn channel_rows(db: &TestDb) -> BTreeMap<String, (serde_json::Value, String)> {
    let out = db.exec(
        "SELECT id || E'\\t' || channel_config::text || E'\\t' || updated_at::text
           FROM workspace_channels ORDER BY id",
    );
    out.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let mut parts = l.splitn(3, '\t');
            let (id, cfg, at) = (
                parts.next().unwrap_or_default(),
                parts.next().unwrap_or_default(),
                parts.next().unwrap_or_default(),
            );
            let cfg: serde_json::Value = match serde_json::from_str(cfg) {
                Ok(v) => v,
                Err(e) => panic!("{e}: {cfg}"),
            };
            (id.to_string(), (cfg, at.to_string()))
        })
        .collect()
}

/// The seeded secrets plus three channels: Telegram (an encrypted bot token, a legacy plaintext
/// webhook secret, other keys — one of them a nested `bot_token` that is not a field), Slack (two
/// encrypted fields, a non-string and an empty field the platform leaves alone), Lark (no
/// secret field). Every updated_at in the past. Returns the plaintexts by "channel/field".
async fn seeded_with_channels() -> (TestDb, BTreeMap<String, String>) {
    let db = seeded().await;
    let telegram = serde_json::json!({
        "bot_token": ec1(&OLD, "123456:AA-telegram-bot"),
        "webhook_secret": "legacy-webhook-secret",
        "chat_id": "-100123",
        "enable_polling": true,
        "nested": {"bot_token": "not a field"},
    });
    let slack = serde_json::json!({
        "signing_secret": ec1(&OLD, "slack-signing-secret"),
        "webhook_url": ec1(&OLD, "https://hooks.slack.example/T1/B2"),
        "verify_token": 42,
        "bot_token": "",
        "channel_name": "ops",
    });
    let lark = serde_json::json!({"app_id": "cli_lark", "webhook_secret": null});
    for (id, ws, ty, cfg) in [
        (ch::TELEGRAM, ids::HQ, "telegram", telegram),
        (ch::SLACK, ids::LABS, "slack", slack),
        (ch::LARK, ids::LEGACY, "lark", lark),
    ] {
        db.exec(&format!(
            "INSERT INTO workspace_channels (id, workspace_id, channel_type, channel_config, updated_at)
             VALUES ('{id}', '{ws}', '{ty}', '{}'::jsonb, '2021-02-03 04:05:06+00')",
            cfg.to_string().replace('\'', "''")
        ));
    }
    let plain = [
        ("telegram/bot_token", "123456:AA-telegram-bot"),
        ("telegram/webhook_secret", "legacy-webhook-secret"),
        ("slack/signing_secret", "slack-signing-secret"),
        ("slack/webhook_url", "https://hooks.slack.example/T1/B2"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    (db, plain)
}

/// The object without the five encrypted fields: what must never change.
fn without_fields(cfg: &serde_json::Value) -> serde_json::Value {
    let mut c = cfg.clone();
    if let Some(o) = c.as_object_mut() {
        for f in [
            "bot_token",
            "webhook_secret",
            "webhook_url",
            "verify_token",
            "signing_secret",
        ] {
            if o.get(f)
                .is_some_and(|v| v.as_str().is_some_and(|s| !s.is_empty()))
            {
                o.remove(f);
            }
        }
    }
    c
}

fn values_with(plain: &BTreeMap<String, String>) -> BTreeMap<String, Vec<u8>> {
    plain
        .iter()
        .map(|(k, v)| (k.clone(), v.clone().into_bytes()))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn rekey_moves_channel_fields_to_the_new_key_and_leaves_the_rest_of_the_object() {
    let (db, plain) = seeded_with_channels().await;
    let before = channel_rows(&db);
    let secrets_before = rows(&db).await;
    let mut values = plaintexts(&secrets_before, &OLD);
    values.extend(values_with(&plain));

    // Dry run: the channel fields counted with the rows, in the plan and its hash.
    let dry = rekey(&db, &["--dry-run", "-o", "json"]).run();
    dry.code(0);
    let d: RekeyJson = parse(&dry);
    assert_eq!(d.reencrypt_total, 10 + 4, "6 + 4 secret rows, 3 + 1 fields");
    let ch: Vec<&RekeyCount> = d.tables.iter().filter(|c| c.table == CHANNELS).collect();
    assert_eq!(
        ch,
        vec![
            &RekeyCount {
                table: CHANNELS.into(),
                encryption_version: 0,
                rows: 1,
                reencrypt: 1
            },
            &RekeyCount {
                table: CHANNELS.into(),
                encryption_version: 1,
                rows: 3,
                reencrypt: 3
            },
        ]
    );
    assert_eq!(channel_rows(&db), before, "a dry run changes nothing");
    // The same secret rows without the channel fields: another plan hash.
    let other = seeded().await;
    let o: RekeyJson = parse(&rekey(&other, &["--dry-run", "-o", "json"]).run());
    assert_ne!(
        o.plan_hash, d.plan_hash,
        "the plan hash covers the channel fields"
    );
    drop(other);

    let r = rekey(&db, &["--expect-plan", &d.plan_hash, "--yes", "-o", "json"]).run();
    r.code(0);
    let a: RekeyJson = parse(&r);
    assert_eq!(a.plan_hash, d.plan_hash);
    assert_nothing_leaked(&db, &r, &values);
    assert!(
        r.stderr.contains("CODEX_AUTH_JSON") && r.stderr.contains("verify"),
        "the next steps name the platform's own writes: {}",
        r.stderr
    );

    let after = channel_rows(&db);
    assert_eq!(after.len(), 3);
    for (id, (cfg, at)) in &after {
        let (old_cfg, old_at) = &before[id];
        assert_eq!(at, old_at, "{id}: updated_at untouched");
        assert_eq!(
            without_fields(cfg),
            without_fields(old_cfg),
            "{id}: other keys untouched"
        );
    }
    let tg = &after[ch::TELEGRAM].0;
    assert_eq!(
        open_ec1(&NEW, &tg["bot_token"]).as_deref(),
        Some("123456:AA-telegram-bot")
    );
    assert_eq!(
        open_ec1(&OLD, &tg["bot_token"]),
        None,
        "not under the old key"
    );
    assert_ne!(
        tg["bot_token"],
        before[ch::TELEGRAM].0["bot_token"],
        "fresh nonce"
    );
    assert_eq!(
        open_ec1(&NEW, &tg["webhook_secret"]).as_deref(),
        Some("legacy-webhook-secret"),
        "a full rekey encrypts legacy plaintext fields too, under the new key"
    );
    assert_eq!(tg["nested"]["bot_token"], "not a field");
    let sl = &after[ch::SLACK].0;
    assert_eq!(
        open_ec1(&NEW, &sl["signing_secret"]).as_deref(),
        Some("slack-signing-secret")
    );
    assert_eq!(
        open_ec1(&NEW, &sl["webhook_url"]).as_deref(),
        Some("https://hooks.slack.example/T1/B2")
    );
    assert_eq!(sl["verify_token"], 42, "a non-string field is left alone");
    assert_eq!(sl["bot_token"], "", "an empty field is left alone");
    assert_eq!(after[ch::LARK], before[ch::LARK]);

    // The audit row carries the channel counts.
    let audit = db.exec(
        "SELECT (args->>'reencrypted') || ' ' || (
                  SELECT string_agg((c->>'encryption_version') || ':' || (c->>'reencrypted'), ',')
                    FROM jsonb_array_elements(args->'counts') c
                   WHERE c->>'table' = 'workspace_channels.channel_config')
           FROM orgctl.audit_log WHERE command = 'secret rekey'",
    );
    assert_eq!(audit.trim(), "14 0:1,1:3");

    // verify: the new key reads every field; the old key names each (channel, workspace, field).
    let v = verify(&db, &NEW);
    v.code(0);
    let vj: VerifyJson = parse(&v);
    assert_eq!(vj.plaintext_channel_fields, 0);
    assert!(vj.tables.contains(&VerifyCount {
        table: CHANNELS.into(),
        encryption_version: 1,
        rows: 4,
        undecryptable: 0
    }));
    let v = verify(&db, &OLD);
    v.code(1);
    let vj: VerifyJson = parse(&v);
    let mut named: Vec<String> = vj
        .undecryptable
        .rows
        .iter()
        .filter(|b| b.table == CHANNELS)
        .map(|b| {
            format!(
                "{} {} {} {}",
                b.id,
                b.workspace_id.as_deref().unwrap_or("-"),
                b.key,
                b.encryption_version
            )
        })
        .collect();
    named.sort();
    assert_eq!(
        named,
        vec![
            format!("{} {} bot_token 1", ch::TELEGRAM, ids::HQ),
            format!("{} {} webhook_secret 1", ch::TELEGRAM, ids::HQ),
            format!("{} {} signing_secret 1", ch::SLACK, ids::LABS),
            format!("{} {} webhook_url 1", ch::SLACK, ids::LABS),
        ]
    );
    assert_nothing_leaked(&db, &v, &values);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_channel_field_that_does_not_decrypt_refuses_with_the_tenant_unchanged() {
    for (label, bad_value) in [
        ("under a third key", ec1(&THIRD, "foreign-bot-token")),
        ("not base64", "ec1:@@not-base64@@".to_string()),
    ] {
        let (db, plain) = seeded_with_channels().await;
        db.exec(&format!(
            "UPDATE workspace_channels
                SET channel_config = channel_config || jsonb_build_object('verify_token', '{bad_value}')
              WHERE id = '{}'",
            ch::LARK
        ));
        let before = platform_dump(&db);
        let mut values = values_with(&plain);
        values.insert("foreign".into(), b"foreign-bot-token".to_vec());

        let dry = rekey(&db, &["--dry-run", "-o", "json"]).run();
        dry.code(3).one_line_error(ch::LARK);
        let d: RekeyJson = parse(&dry);
        assert_eq!(d.undecryptable.count, 1, "{label}");
        let b = &d.undecryptable.rows[0];
        assert_eq!(
            (
                b.table.as_str(),
                b.id.as_str(),
                b.workspace_id.as_deref(),
                b.key.as_str()
            ),
            (CHANNELS, ch::LARK, Some(ids::LEGACY), "verify_token"),
            "{label}"
        );

        let r = rekey(&db, &["--yes"]).run();
        r.code(3).one_line_error(ch::LARK);
        assert!(r.stderr.contains("verify_token"), "{label}: {}", r.stderr);
        assert!(
            r.stderr.contains("nothing was changed"),
            "{label}: {}",
            r.stderr
        );
        assert_eq!(
            platform_dump(&db),
            before,
            "{label}: the tenant is unchanged"
        );
        assert_eq!(db.audit_rows(), 0, "{label}");
        // --plaintext-only refuses on it too: the key would not be the platform's.
        let r = db
            .orgctl(&["secret", "rekey", "--plaintext-only", "--yes"])
            .env("SECRETS_ENCRYPTION_KEY", &key_b64(&OLD))
            .run();
        r.code(3).one_line_error(ch::LARK);
        assert_eq!(platform_dump(&db), before, "{label}");

        let v = verify(&db, &OLD);
        v.code(1);
        let vj: VerifyJson = parse(&v);
        assert_eq!(vj.undecryptable.count, 1, "{label}");
        assert_eq!(vj.undecryptable.rows[0].id, ch::LARK, "{label}");
        assert_eq!(vj.plaintext_channel_fields, 1, "{label}");
        assert!(
            v.stderr.contains("channel field(s)"),
            "{label}: {}",
            v.stderr
        );
        assert_nothing_leaked(&db, &v, &values);
        assert_nothing_leaked(&db, &r, &values);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn plaintext_only_encrypts_legacy_channel_fields_with_the_current_key_over_many_pages() {
    let (db, plain) = seeded_with_channels().await;
    // 2500 channels with a plaintext bot token: more than two pages of 1000.
    db.exec(&format!(
        "INSERT INTO workspace_channels (workspace_id, channel_type, channel_config, updated_at)
         SELECT '{}', 'bulk-' || g,
                jsonb_build_object('bot_token', 'bulk-token-' || g, 'chat_id', g),
                '2021-02-03 04:05:06+00'
           FROM generate_series(1, 2500) g",
        ids::RESEARCH
    ));
    let before = channel_rows(&db);
    let v = verify(&db, &OLD);
    v.code(0);
    let vj: VerifyJson = parse(&v);
    assert_eq!(vj.plaintext_channel_fields, 2501);
    assert!(
        v.stderr.contains("2501 channel field(s)") && v.stderr.contains("plaintext"),
        "{}",
        v.stderr
    );

    let dry = db
        .orgctl(&[
            "secret",
            "rekey",
            "--plaintext-only",
            "--dry-run",
            "-o",
            "json",
        ])
        .env("SECRETS_ENCRYPTION_KEY", &key_b64(&OLD))
        .run();
    dry.code(0);
    let d: RekeyJson = parse(&dry);
    assert_eq!(d.reencrypt_total, 4 + 2501);
    let r = db
        .orgctl(&[
            "secret",
            "rekey",
            "--plaintext-only",
            "--expect-plan",
            &d.plan_hash,
            "--yes",
        ])
        .env("SECRETS_ENCRYPTION_KEY", &key_b64(&OLD))
        .run();
    r.code(0);
    assert_nothing_leaked(&db, &r, &values_with(&plain));

    let after = channel_rows(&db);
    assert_eq!(after.len(), before.len());
    for (id, (cfg, at)) in &after {
        let (old_cfg, old_at) = &before[id];
        assert_eq!(at, old_at, "{id}: updated_at untouched");
        assert_eq!(without_fields(cfg), without_fields(old_cfg), "{id}");
        for f in [
            "bot_token",
            "webhook_secret",
            "signing_secret",
            "webhook_url",
        ] {
            let (new, old) = (&cfg[f], &old_cfg[f]);
            match old.as_str() {
                Some(s) if s.starts_with("ec1:") => {
                    assert_eq!(
                        new, old,
                        "{id}/{f}: an encrypted field stays byte-identical"
                    )
                }
                Some(s) if !s.is_empty() => assert_eq!(
                    open_ec1(&OLD, new).as_deref(),
                    Some(s),
                    "{id}/{f}: encrypted with the current key"
                ),
                _ => assert_eq!(new, old, "{id}/{f}"),
            }
        }
    }
    let v = verify(&db, &OLD);
    v.code(0);
    let vj: VerifyJson = parse(&v);
    assert_eq!(vj.plaintext_channel_fields, 0);
    assert!(!v.stderr.contains("plaintext"), "{}", v.stderr);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tenant_without_the_channel_table_is_rekeyed_and_one_in_another_shape_is_refused() {
    // An older tenant: no channel table at all. Nothing there to protect.
    let db = seeded().await;
    db.exec("DROP TABLE workspace_channels");
    verify(&db, &OLD).code(0);
    let r = rekey(&db, &["--yes", "-o", "json"]).run();
    r.code(0);
    let j: RekeyJson = parse(&r);
    assert_eq!(j.reencrypt_total, 10);
    verify(&db, &NEW).code(0);

    // A channel table orgctl does not know the shape of: refused, nothing written.
    let (db, _) = seeded_with_channels().await;
    db.exec("ALTER TABLE workspace_channels ALTER COLUMN channel_config DROP DEFAULT, ALTER COLUMN channel_config TYPE text");
    let before = platform_dump(&db);
    let r = rekey(&db, &["--yes"]).run();
    r.code(3).one_line_error("workspace_channels");
    assert_eq!(platform_dump(&db), before);
    verify(&db, &OLD)
        .code(3)
        .one_line_error("workspace_channels");
    assert_eq!(db.audit_rows(), 0);
}

// ---------------------------------------------------------------------------------------------
// Keys as the platform reads them: line breaks are skipped.

#[tokio::test(flavor = "multi_thread")]
async fn keys_with_line_breaks_work_for_set_verify_and_rekey() {
    let db = TestDb::sample();
    let old_nl = format!("{}\n", key_b64(&OLD));
    let r = db
        .orgctl(&[
            "secret",
            "set",
            "--global",
            "NL_KEY",
            "--no-restart",
            "--yes",
        ])
        .env("SECRETS_ENCRYPTION_KEY", &old_nl)
        .stdin(b"value-under-a-newline-key")
        .run();
    r.code(0);
    assert!(!r.stderr.contains("plaintext"), "{}", r.stderr);
    let mut conn = db.connect().await;
    let (stored, version): (Vec<u8>, i32) = match sqlx::query_as(
        "SELECT encrypted_value, encryption_version FROM global_secrets WHERE key = 'NL_KEY'",
    )
    .fetch_one(&mut conn)
    .await
    {
        Ok(v) => v,
        Err(e) => panic!("{e}"),
    };
    assert_eq!(version, 1);
    assert_eq!(
        decrypt(&OLD, &stored).as_deref(),
        Some(&b"value-under-a-newline-key"[..]),
        "encrypted with exactly the 32 bytes the base64 encodes"
    );
    db.orgctl(&["secret", "verify"])
        .env("SECRETS_ENCRYPTION_KEY", &old_nl)
        .run()
        .code(0);

    // The new key with CRLF, then verify with it wrapped over two lines.
    let new_b64 = key_b64(&NEW);
    db.orgctl(&["secret", "rekey", "--yes"])
        .env("SECRETS_ENCRYPTION_KEY", &old_nl)
        .env("SECRETS_ENCRYPTION_KEY_NEW", &format!("{new_b64}\r\n"))
        .run()
        .code(0);
    let stored: Vec<u8> =
        match sqlx::query_scalar("SELECT encrypted_value FROM global_secrets WHERE key = 'NL_KEY'")
            .fetch_one(&mut conn)
            .await
        {
            Ok(v) => v,
            Err(e) => panic!("{e}"),
        };
    assert_eq!(
        decrypt(&NEW, &stored).as_deref(),
        Some(&b"value-under-a-newline-key"[..])
    );
    db.orgctl(&["secret", "verify"])
        .env(
            "SECRETS_ENCRYPTION_KEY",
            &format!("{}\n{}", &new_b64[..20], &new_b64[20..]),
        )
        .run()
        .code(0);

    // A trailing space is still no key: exit 2, nothing written.
    let before = db.snapshot();
    let r = db
        .orgctl(&[
            "secret",
            "set",
            "--global",
            "SP_KEY",
            "--no-restart",
            "--yes",
        ])
        .env("SECRETS_ENCRYPTION_KEY", &format!("{new_b64} "))
        .stdin(b"x")
        .run();
    r.code(2)
        .one_line_error("SECRETS_ENCRYPTION_KEY is invalid");
    assert!(!r.stderr.contains(&new_b64), "{}", r.stderr);
    assert_eq!(db.snapshot(), before);
    db.orgctl(&["secret", "verify"])
        .env("SECRETS_ENCRYPTION_KEY", &format!("{new_b64} "))
        .run()
        .code(2)
        .one_line_error("not a usable key");
}

#[tokio::test(flavor = "multi_thread")]
async fn secret_set_with_a_key_no_channel_field_opens_is_refused_when_fields_are_all_that_is_encrypted(
) {
    // No encrypted secret row at all: the channel field is the only witness of the tenant's key.
    let db = TestDb::sample();
    db.exec(&format!(
        "INSERT INTO workspace_channels (workspace_id, channel_type, channel_config)
         VALUES ('{}', 'telegram', jsonb_build_object('bot_token', '{}'))",
        ids::HQ,
        ec1(&OLD, "123456:AA-telegram-bot")
    ));
    let set = |key: &[u8; 32]| {
        db.orgctl(&[
            "secret",
            "set",
            "--global",
            "NEW_ONE",
            "--no-restart",
            "--yes",
        ])
        .env("SECRETS_ENCRYPTION_KEY", &key_b64(key))
        .stdin(b"a-value")
        .run()
    };
    let before = platform_dump(&db);
    let r = set(&THIRD);
    r.code(3).one_line_error(
        "decrypts none of the tenant's existing encrypted secrets or channel fields",
    );
    assert_eq!(platform_dump(&db), before, "nothing written");
    set(&OLD).code(0);
    assert_eq!(
        db.scalar(
            "SELECT count(*) FROM global_secrets WHERE key = 'NEW_ONE' AND encryption_version = 1"
        ),
        "1"
    );
}

/// `secret rotate` is `secret rekey` (clap used to suggest `restart`, which restarts
/// workspaces): the same plan, the same hash.
#[tokio::test]
async fn secret_rotate_is_rekey() {
    let db = seeded().await;
    let before = platform_dump(&db);
    let rotate = db
        .orgctl(&["secret", "rotate", "--dry-run", "-o", "json"])
        .env("SECRETS_ENCRYPTION_KEY", &key_b64(&OLD))
        .env("SECRETS_ENCRYPTION_KEY_NEW", &key_b64(&NEW))
        .run();
    rotate.code(0);
    let r: RekeyJson = parse(&rotate);
    let k: RekeyJson = parse(&rekey(&db, &["--dry-run", "-o", "json"]).run());
    assert_eq!(r.plan_hash, k.plan_hash);
    assert_eq!(r.reencrypt_total, 10);
    assert_eq!(platform_dump(&db), before, "a dry run changes nothing");
    // Its help names it, and a bad key is refused as rekey refuses it.
    let help = crate::harness::Cmd::new(&["secret", "--help"]).run();
    help.code(0);
    assert!(help.stdout.contains("rotate"), "{}", help.stdout);
    db.orgctl(&["secret", "rotate", "--dry-run"])
        .env("SECRETS_ENCRYPTION_KEY", "short")
        .run()
        .code(2)
        .one_line_error("SECRETS_ENCRYPTION_KEY");
}

/// A tenant with no encrypted value proves nothing about the key: verify says nothing was
/// verified and exits 1, whatever the key, unless --allow-empty.
#[tokio::test]
async fn verify_with_no_encrypted_value_is_not_a_pass_without_allow_empty() {
    let db = TestDb::sample();
    add_plaintext_rows(&db, 3);
    let before = platform_dump(&db);
    for key in [&OLD, &NEW] {
        let r = db
            .orgctl(&["secret", "verify"])
            .env("SECRETS_ENCRYPTION_KEY", &key_b64(key))
            .run();
        r.code(1).one_line_error("nothing was verified");
        assert!(r.stdout.contains("Nothing was verified"), "{}", r.stdout);
        assert!(!r.stdout.contains("Every encrypted value"), "{}", r.stdout);
    }
    let r = db
        .orgctl(&["secret", "verify", "-o", "json"])
        .env("SECRETS_ENCRYPTION_KEY", &key_b64(&OLD))
        .run();
    r.code(1);
    let v: VerifyJson = parse(&r);
    assert!(!v.ok);
    assert_eq!(v.verified, 0);
    assert_eq!(
        v.plaintext_rows,
        4 + 3,
        "the sample org's plaintext rows and ours"
    );
    let r = db
        .orgctl(&["secret", "verify", "--allow-empty", "-o", "json"])
        .env("SECRETS_ENCRYPTION_KEY", &key_b64(&OLD))
        .run();
    r.code(0);
    let v: VerifyJson = parse(&r);
    assert!(v.ok && v.verified == 0);
    // With encrypted values, the count says what was checked.
    let seeded = seeded().await;
    let v: VerifyJson = parse(verify(&seeded, &OLD).code(0));
    assert_eq!(v.verified, 6);
    assert_eq!(platform_dump(&db), before, "read-only");
}
