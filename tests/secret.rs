//! `orgctl secret` against real PostgreSQL and a real HTTP server on loopback standing in for
//! the platform: encryption checked with an independent AES-GCM computation, the
//! restart calls the server records (method, path, bearer), the platform-root guard, the global
//! fan-out, the MODEL gate, and every bad input with its exit code and nothing written.

use std::collections::BTreeSet;
use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use serde::Deserialize;

use crate::harness::{ids, Run, TestDb};

pub(crate) const TOKEN: &str = "adm-T0ken-for-tests-9f8e7d";
const VALUE: &str = "s3cret-Value-never-printed";

// ---------------------------------------------------------------------------------------------
// The JSON contract, rejecting unknown fields.

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SecretJson {
    /// The audit chain's head a committed change prints (not on a dry run).
    #[allow(dead_code)]
    #[serde(default)]
    audit_head: Option<serde_json::Value>,
    scope: String,
    workspace_id: Option<String>,
    key: String,
    action: String,
    encryption_version: Option<i32>,
    restart: RestartJson,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RestartJson {
    planned: Vec<String>,
    skipped: Vec<SkipJson>,
    dispatched: Vec<DispatchedJson>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SkipJson {
    id: String,
    reason: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DispatchedJson {
    id: String,
    ok: bool,
    outcome: String,
    error: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListJson {
    workspace_id: Option<String>,
    secrets: Vec<ListedJson>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListedJson {
    key: String,
    scope: String,
    encryption_version: i32,
    created_at: Option<String>,
    updated_at: Option<String>,
    overrides_global: bool,
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

fn skipped(j: &SecretJson) -> BTreeSet<(String, String)> {
    j.restart
        .skipped
        .iter()
        .map(|s| (s.id.clone(), s.reason.clone()))
        .collect()
}

fn set_of(ids: &[&str]) -> BTreeSet<String> {
    ids.iter().map(|s| s.to_string()).collect()
}

/// Neither the value nor the admin token anywhere a human or a log could see.
#[track_caller]
fn assert_nothing_leaked(db: &TestDb, r: &Run) {
    for needle in [VALUE, TOKEN] {
        assert!(!r.stdout.contains(needle), "{needle} on stdout");
        assert!(!r.stderr.contains(needle), "{needle} on stderr");
    }
    if db.scalar("SELECT to_regclass('orgctl.audit_log') IS NOT NULL") == "t" {
        let audit = db.exec("SELECT x::text FROM orgctl.audit_log x");
        assert!(!audit.contains(VALUE), "{audit}");
        assert!(!audit.contains(TOKEN), "{audit}");
    }
}

// ---------------------------------------------------------------------------------------------
// The platform stand-in: a TcpListener thread that records each request and answers as the
// platform's admin restart route does when it restarts (202 restart_dispatched), or 500 for the
// workspaces it is told to fail (echoing the Authorization header in the body, so
// the tests prove orgctl masks it).

#[derive(Clone, Debug)]
pub(crate) struct Call {
    method: String,
    path: String,
    auth: Option<String>,
}

pub(crate) struct FakePlatform {
    addr: SocketAddr,
    calls: Arc<Mutex<Vec<Call>>>,
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl FakePlatform {
    pub(crate) fn start(fail: &[&str]) -> Self {
        Self::start_with(fail, Duration::ZERO)
    }

    /// A platform that answers each call after `delay` (for interrupting a fan-out).
    pub(crate) fn start_with(fail: &[&str], delay: Duration) -> Self {
        let listener = match TcpListener::bind("127.0.0.1:0") {
            Ok(l) => l,
            Err(e) => panic!("bind: {e}"),
        };
        let addr = match listener.local_addr() {
            Ok(a) => a,
            Err(e) => panic!("{e}"),
        };
        let calls = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let fail: Vec<String> = fail.iter().map(|s| s.to_string()).collect();
        let (c, s) = (calls.clone(), stop.clone());
        let handle = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if s.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(stream) = conn else { continue };
                let (c, fail) = (c.clone(), fail.clone());
                std::thread::spawn(move || serve(stream, &c, &fail, delay));
            }
        });
        FakePlatform {
            addr,
            calls,
            stop,
            handle: Some(handle),
        }
    }

    pub(crate) fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub(crate) fn calls(&self) -> Vec<Call> {
        match self.calls.lock() {
            Ok(c) => c.clone(),
            Err(e) => panic!("{e}"),
        }
    }

    /// The workspace ids restart calls were made for, checking each call's shape (the admin
    /// restart route, the bearer).
    pub(crate) fn restarted(&self) -> BTreeSet<String> {
        let mut ids = BTreeSet::new();
        for c in self.calls() {
            assert_eq!(c.method, "POST", "{c:?}");
            assert_eq!(
                c.auth.as_deref(),
                Some(format!("Bearer {TOKEN}").as_str()),
                "{c:?}"
            );
            match crate::stand_in::admin_restart_path_id(&c.path) {
                Some(id) => assert!(ids.insert(id.to_string()), "restarted twice: {id}"),
                None => panic!("unexpected path {}", c.path),
            }
        }
        ids
    }
}

impl Drop for FakePlatform {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

fn serve(mut stream: TcpStream, calls: &Mutex<Vec<Call>>, fail: &[String], delay: Duration) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let mut buf = Vec::new();
    let Some(req) = crate::stand_in::read_http_request(&mut stream, &mut buf) else {
        return;
    };
    let auth = req.header("authorization");
    let (method, path) = (req.method, req.path);
    std::thread::sleep(delay);
    let failing = fail.iter().any(|f| path.contains(f.as_str()));
    if let Ok(mut c) = calls.lock() {
        c.push(Call {
            method,
            path,
            auth: auth.clone(),
        });
    }
    let (status, body) = if failing {
        (
            "500 Internal Server Error",
            format!(
                "restart failed for request with {}",
                auth.unwrap_or_default()
            ),
        )
    } else {
        (
            "202 Accepted",
            "{\"status\":\"restart_dispatched\"}".to_string(),
        )
    };
    let resp = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(resp.as_bytes());
}

// ---------------------------------------------------------------------------------------------
// Helpers

pub fn key_b64(key: &[u8; 32]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(key)
}

/// AES-256-GCM decryption done here, independently of orgctl's own code (also used by the
/// rekey tests).
pub fn decrypt(key: &[u8], stored: &[u8]) -> Option<Vec<u8>> {
    use aes_gcm::aead::Aead;
    use aes_gcm::KeyInit;
    let cipher = aes_gcm::Aes256Gcm::new_from_slice(key).ok()?;
    if stored.len() < 12 + 16 {
        return None;
    }
    let (nonce, ct) = stored.split_at(12);
    cipher.decrypt(aes_gcm::Nonce::from_slice(nonce), ct).ok()
}

async fn stored(db: &TestDb, sql: &str) -> (Vec<u8>, i32) {
    let mut conn = db.connect().await;
    match sqlx::query_as(sql).fetch_one(&mut conn).await {
        Ok(v) => v,
        Err(e) => panic!("{e}: {sql}"),
    }
}

fn install_agent(db: &TestDb) -> String {
    db.orgctl(&["install-platform-agent", "--model", "m", "--yes"])
        .run()
        .code(0);
    db.scalar("SELECT id FROM workspaces WHERE kind = 'platform'")
}

// ---------------------------------------------------------------------------------------------
// set: encryption, upsert, restart of the target with the bearer

#[tokio::test]
async fn set_encrypts_restarts_the_target_with_the_bearer_and_leaks_nothing() {
    let db = TestDb::sample();
    let platform = FakePlatform::start(&[]);
    let key = [7u8; 32];
    let r = db
        .orgctl(&[
            "secret",
            "set",
            ids::RESEARCH,
            "NEW_KEY",
            "--yes",
            "-o",
            "json",
        ])
        .env("SECRETS_ENCRYPTION_KEY", &key_b64(&key))
        .env("MOLECULE_PLATFORM_URL", &platform.url())
        .env("MOLECULE_ADMIN_TOKEN", TOKEN)
        .stdin(format!("{VALUE}\n").as_bytes())
        .run();
    r.code(0);
    let j: SecretJson = parse(&r);
    assert_eq!(j.scope, "workspace");
    assert_eq!(j.workspace_id.as_deref(), Some(ids::RESEARCH));
    assert_eq!(j.key, "NEW_KEY");
    assert_eq!(j.action, "created");
    assert_eq!(j.encryption_version, Some(1));
    assert_eq!(j.restart.planned, [ids::RESEARCH]);
    assert!(j.restart.skipped.is_empty());
    assert_eq!(j.restart.dispatched.len(), 1);
    assert_eq!(j.restart.dispatched[0].id, ids::RESEARCH);
    assert!(j.restart.dispatched[0].ok);
    assert_eq!(j.restart.dispatched[0].outcome, "restarted");
    assert_eq!(j.restart.dispatched[0].error, None);
    assert_eq!(platform.restarted(), set_of(&[ids::RESEARCH]));

    // nonce || ciphertext+tag, decrypted here with aes-gcm directly; one newline stripped.
    let (value, version) = stored(
        &db,
        &format!(
            "SELECT encrypted_value, encryption_version FROM workspace_secrets
              WHERE workspace_id = '{}' AND key = 'NEW_KEY'",
            ids::RESEARCH
        ),
    )
    .await;
    assert_eq!(version, 1);
    assert_eq!(value.len(), 12 + VALUE.len() + 16);
    assert_eq!(decrypt(&key, &value).as_deref(), Some(VALUE.as_bytes()));
    assert_nothing_leaked(&db, &r);
    assert_eq!(
        db.scalar("SELECT command || ' ' || outcome || ' ' || (args->>'action') || ' ' || (args->>'value_source') FROM orgctl.audit_log"),
        "secret set applied created stdin"
    );

    // Again, with a raw 32-byte key: an update that bumps updated_at.
    db.exec("UPDATE workspace_secrets SET updated_at = '2020-01-01' WHERE key = 'NEW_KEY'");
    let raw = "0123456789abcdef-123456789abcdef";
    let r = db
        .orgctl(&[
            "secret",
            "set",
            ids::RESEARCH,
            "NEW_KEY",
            "--yes",
            "-o",
            "json",
        ])
        .env("SECRETS_ENCRYPTION_KEY", raw)
        .env("MOLECULE_PLATFORM_URL", &platform.url())
        .env("MOLECULE_ADMIN_TOKEN", TOKEN)
        .stdin(b"second")
        .run();
    r.code(0);
    let j: SecretJson = parse(&r);
    assert_eq!(j.action, "updated");
    let (value, version) = stored(
        &db,
        "SELECT encrypted_value, encryption_version FROM workspace_secrets WHERE key = 'NEW_KEY'",
    )
    .await;
    assert_eq!(version, 1);
    assert_eq!(
        decrypt(raw.as_bytes(), &value).as_deref(),
        Some(&b"second"[..])
    );
    assert_eq!(
        db.scalar("SELECT count(*) FROM workspace_secrets WHERE key = 'NEW_KEY'"),
        "1"
    );
    assert_eq!(
        db.scalar("SELECT updated_at > now() - interval '1 minute' FROM workspace_secrets WHERE key = 'NEW_KEY'"),
        "t"
    );
    assert_eq!(platform.calls().len(), 2);
    assert_nothing_leaked(&db, &r);
}

#[tokio::test]
async fn global_set_without_key_is_version_0_and_refused_in_production() {
    let db = TestDb::sample();
    let before = db.snapshot();
    for env in ["prod", "Production"] {
        let r = db
            .orgctl(&["secret", "set", "--global", "NEW_GLOBAL", "--yes"])
            .env("MOLECULE_ENV", env)
            .stdin(VALUE.as_bytes())
            .run();
        r.code(3).one_line_error("SECRETS_ENCRYPTION_KEY");
        assert_eq!(db.snapshot(), before);
    }
    // A bad key in production is a usage error like everywhere (an invalid key is
    // always exit 2), and the key itself is never echoed.
    let r = db
        .orgctl(&["secret", "set", "--global", "NEW_GLOBAL", "--yes"])
        .env("MOLECULE_ENV", "prod")
        .env("SECRETS_ENCRYPTION_KEY", "not-a-key")
        .stdin(VALUE.as_bytes())
        .run();
    r.code(2).one_line_error("SECRETS_ENCRYPTION_KEY");
    assert!(!r.stderr.contains("not-a-key"));
    assert_eq!(db.snapshot(), before);

    let r = db
        .orgctl(&[
            "secret",
            "set",
            "--global",
            "NEW_GLOBAL",
            "--yes",
            "--no-restart",
            "-o",
            "json",
        ])
        .stdin(VALUE.as_bytes())
        .run();
    r.code(0);
    let j: SecretJson = parse(&r);
    assert_eq!(j.scope, "global");
    assert_eq!(j.workspace_id, None);
    assert_eq!(j.encryption_version, Some(0));
    assert!(
        r.stderr.contains("warning:") && r.stderr.contains("stored in plaintext"),
        "no plaintext warning on stderr: {}",
        r.stderr
    );
    let (value, version) = stored(
        &db,
        "SELECT encrypted_value, encryption_version FROM global_secrets WHERE key = 'NEW_GLOBAL'",
    )
    .await;
    assert_eq!((value.as_slice(), version), (VALUE.as_bytes(), 0));
    assert_nothing_leaked(&db, &r);

    // With a key in production it is written, encrypted.
    let key = [9u8; 32];
    db.orgctl(&["secret", "set", "--global", "PROD_KEY", "--yes"])
        .env("MOLECULE_ENV", "production")
        .env("SECRETS_ENCRYPTION_KEY", &key_b64(&key))
        .stdin(VALUE.as_bytes())
        .run()
        .code(0);
    let (value, version) = stored(
        &db,
        "SELECT encrypted_value, encryption_version FROM global_secrets WHERE key = 'PROD_KEY'",
    )
    .await;
    assert_eq!(version, 1);
    assert_eq!(decrypt(&key, &value).as_deref(), Some(VALUE.as_bytes()));
}

// ---------------------------------------------------------------------------------------------
// The platform-root guard and the global fan-out

#[test]
fn the_platform_agent_is_never_restarted() {
    let db = TestDb::sample();
    let agent = install_agent(&db);
    let platform = FakePlatform::start(&[]);
    let r = db
        .orgctl(&["secret", "set", &agent, "API_KEY", "--yes", "-o", "json"])
        .env("MOLECULE_PLATFORM_URL", &platform.url())
        .env("MOLECULE_ADMIN_TOKEN", TOKEN)
        .stdin(VALUE.as_bytes())
        .run();
    r.code(0);
    let j: SecretJson = parse(&r);
    assert_eq!(j.action, "created");
    assert!(j.restart.planned.is_empty());
    assert!(j.restart.dispatched.is_empty());
    assert_eq!(
        skipped(&j),
        BTreeSet::from([(agent.clone(), "platform-root".to_string())])
    );
    assert!(
        r.stderr.contains("platform-root guard"),
        "says so: {}",
        r.stderr
    );
    assert!(platform.calls().is_empty(), "{:?}", platform.calls());
    assert_eq!(
        db.scalar(&format!(
            "SELECT count(*) FROM workspace_secrets WHERE workspace_id = '{agent}' AND key = 'API_KEY'"
        )),
        "1"
    );
    // Replacing the agent's MODEL does not restart it either.
    let r = db
        .orgctl(&["secret", "set", &agent, "MODEL", "--yes", "-o", "json"])
        .env("MOLECULE_PLATFORM_URL", &platform.url())
        .env("MOLECULE_ADMIN_TOKEN", TOKEN)
        .stdin(b"claude-next")
        .run();
    r.code(0);
    assert_eq!(parse::<SecretJson>(&r).action, "updated");
    assert!(platform.calls().is_empty());
}

#[test]
fn global_fan_out_is_exactly_the_inheriting_set() {
    let db = TestDb::sample();
    let agent = install_agent(&db);
    // Research Ops overrides LOG_LEVEL (Labs Bridge already does, and is external too).
    let research_ops = "a0000000-0000-4000-8000-000000000003";
    db.exec(&format!(
        "INSERT INTO workspace_secrets (workspace_id, key, encrypted_value) VALUES ('{research_ops}', 'LOG_LEVEL', 'warn')"
    ));
    let platform = FakePlatform::start(&[]);
    let r = db
        .orgctl(&[
            "secret",
            "set",
            "--global",
            "LOG_LEVEL",
            "--yes",
            "-o",
            "json",
        ])
        .env("MOLECULE_PLATFORM_URL", &platform.url())
        .env("MOLECULE_ADMIN_TOKEN", TOKEN)
        .stdin(b"trace\n")
        .run();
    r.code(0);
    let j: SecretJson = parse(&r);
    assert_eq!(j.action, "updated");
    // Not removed (Legacy) or paused (Labs Archive), not external (Labs Bridge), not the
    // platform agent, no override (Research Ops, Labs Bridge).
    let expected = set_of(&[
        ids::HQ,
        ids::RESEARCH,
        "a0000000-0000-4000-8000-000000000004",
        "a0000000-0000-4000-8000-000000000005",
        "a0000000-0000-4000-8000-000000000006",
        ids::LABS,
    ]);
    let planned: BTreeSet<String> = j.restart.planned.iter().cloned().collect();
    assert_eq!(planned, expected);
    assert_eq!(platform.restarted(), expected);
    let dispatched: BTreeSet<String> = j
        .restart
        .dispatched
        .iter()
        .filter(|d| d.ok && d.error.is_none())
        .map(|d| d.id.clone())
        .collect();
    assert_eq!(dispatched, expected);
    assert_eq!(
        skipped(&j),
        BTreeSet::from([
            (agent, "platform-root".to_string()),
            (ids::LEGACY.to_string(), "removed".to_string()),
            (ids::LABS_ARCHIVE.to_string(), "paused".to_string()),
        ]),
        "the platform agent and the workspaces the platform's restart skips are reported, not restarted"
    );
    assert_eq!(
        db.scalar("SELECT convert_from(encrypted_value, 'UTF8') FROM global_secrets WHERE key = 'LOG_LEVEL'"),
        "trace"
    );
    assert_eq!(
        db.scalar("SELECT count(*) FROM global_secrets WHERE key = 'LOG_LEVEL'"),
        "1"
    );
}

#[test]
fn without_a_platform_url_the_plan_is_printed_and_nothing_dispatched() {
    let db = TestDb::sample();
    let r = db
        .orgctl(&[
            "secret",
            "set",
            "--global",
            "DEFAULT_REGION",
            "--yes",
            "-o",
            "json",
        ])
        .env("MOLECULE_ADMIN_TOKEN", TOKEN)
        .stdin(b"us-east-1")
        .run();
    r.code(0);
    let j: SecretJson = parse(&r);
    assert_eq!(
        j.restart.planned.len(),
        7,
        "no agent yet: every live root and child"
    );
    assert!(j.restart.dispatched.is_empty());
    assert!(r.stderr.contains("No platform URL"), "{}", r.stderr);
    assert_nothing_leaked(&db, &r);

    // The table names each workspace of the plan.
    let r = db
        .orgctl(&["secret", "set", ids::RESEARCH, "X", "--yes"])
        .stdin(b"1")
        .run();
    r.code(0);
    assert!(r.stdout.contains("created"), "{}", r.stdout);
    assert!(r.stdout.contains(ids::RESEARCH), "{}", r.stdout);
    assert!(r.stdout.contains("planned"), "{}", r.stdout);
}

#[test]
fn a_failing_restart_exits_1_after_commit_naming_the_workspaces() {
    let db = TestDb::sample();
    let platform = FakePlatform::start(&[ids::RESEARCH, ids::LABS]);
    let r = db
        .orgctl(&[
            "secret",
            "set",
            "--global",
            "DEFAULT_REGION",
            "--yes",
            "-o",
            "json",
        ])
        .env("MOLECULE_PLATFORM_URL", &platform.url())
        .env("MOLECULE_ADMIN_TOKEN", TOKEN)
        .stdin(b"ap-south-1")
        .run();
    r.code(1).one_line_error("not restarted");
    let err = r
        .stderr
        .lines()
        .find(|l| l.starts_with("error:"))
        .unwrap_or_default();
    assert!(
        err.contains(ids::RESEARCH) && err.contains(ids::LABS),
        "{err}"
    );
    assert!(err.contains("2 workspace(s)"), "{err}");
    assert!(err.contains("DEFAULT_REGION was updated"), "{err}");
    // Committed all the same.
    assert_eq!(
        db.scalar("SELECT convert_from(encrypted_value, 'UTF8') FROM global_secrets WHERE key = 'DEFAULT_REGION'"),
        "ap-south-1"
    );
    let j: SecretJson = parse(&r);
    assert_eq!(j.restart.dispatched.len(), 7);
    for d in &j.restart.dispatched {
        let should_fail = d.id == ids::RESEARCH || d.id == ids::LABS;
        assert_eq!(d.ok, !should_fail, "{d:?}");
        match (&d.error, should_fail) {
            (Some(e), true) => {
                assert!(e.contains("500"), "{e}");
                // The answer's body (which echoed the bearer) is never shown.
                assert!(!e.contains(TOKEN), "{e}");
            }
            (None, false) => {}
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(platform.restarted().len(), 7);
    assert_nothing_leaked(&db, &r);

    // An unreachable platform: exit 1, the workspace named, the secret committed.
    let closed = match TcpListener::bind("127.0.0.1:0") {
        Ok(l) => l.local_addr().map(|a| a.port()).unwrap_or(1),
        Err(e) => panic!("{e}"),
    };
    let r = db
        .orgctl(&["secret", "set", ids::RESEARCH, "Y", "--yes"])
        .env(
            "MOLECULE_PLATFORM_URL",
            &format!("http://127.0.0.1:{closed}"),
        )
        .env("MOLECULE_ADMIN_TOKEN", TOKEN)
        .stdin(b"1")
        .run();
    r.code(1).one_line_error(ids::RESEARCH);
    assert!(r.stdout.contains("FAILED"), "{}", r.stdout);
    assert_eq!(
        db.scalar("SELECT count(*) FROM workspace_secrets WHERE key = 'Y'"),
        "1"
    );
    assert_nothing_leaked(&db, &r);
}

#[test]
fn no_restart_skips_every_restart() {
    let db = TestDb::sample();
    let platform = FakePlatform::start(&[]);
    let r = db
        .orgctl(&[
            "secret",
            "set",
            ids::RESEARCH,
            "K",
            "--no-restart",
            "--yes",
            "-o",
            "json",
        ])
        .env("MOLECULE_PLATFORM_URL", &platform.url())
        .env("MOLECULE_ADMIN_TOKEN", TOKEN)
        .stdin(b"v")
        .run();
    r.code(0);
    let j: SecretJson = parse(&r);
    assert!(j.restart.planned.is_empty() && j.restart.dispatched.is_empty());
    assert_eq!(
        skipped(&j),
        BTreeSet::from([(ids::RESEARCH.to_string(), "no-restart".to_string())])
    );
    // A global one, with no admin token needed since nothing is dispatched.
    let r = db
        .orgctl(&[
            "secret",
            "delete",
            "--global",
            "DEFAULT_REGION",
            "--no-restart",
            "--yes",
            "-o",
            "json",
        ])
        .env("MOLECULE_PLATFORM_URL", &platform.url())
        .run();
    r.code(0);
    let j: SecretJson = parse(&r);
    assert_eq!(j.action, "deleted");
    // The 7 that would be restarted are skipped for --no-restart; the ones the platform's
    // restart skips anyway keep their own reason.
    let no_restart = j
        .restart
        .skipped
        .iter()
        .filter(|s| s.reason == "no-restart");
    assert_eq!(no_restart.count(), 7);
    assert!(j
        .restart
        .skipped
        .iter()
        .all(|s| ["no-restart", "removed", "paused", "external"].contains(&s.reason.as_str())));
    assert!(platform.calls().is_empty());
}

#[test]
fn dry_run_changes_nothing_and_dispatches_nothing() {
    let db = TestDb::sample();
    let platform = FakePlatform::start(&[]);
    let before = db.snapshot();
    let r = db
        .orgctl(&[
            "secret",
            "set",
            "--global",
            "LOG_LEVEL",
            "--dry-run",
            "-o",
            "json",
        ])
        .env("MOLECULE_PLATFORM_URL", &platform.url())
        .env("MOLECULE_ADMIN_TOKEN", TOKEN)
        .stdin(VALUE.as_bytes())
        .run();
    r.code(0);
    let j: SecretJson = parse(&r);
    assert_eq!(j.action, "updated");
    assert_eq!(
        j.restart.planned.len(),
        7,
        "Labs Bridge overrides LOG_LEVEL (and is external)"
    );
    assert!(!j.restart.planned.iter().any(|p| p == ids::LABS_BRIDGE));
    assert!(j.restart.dispatched.is_empty());
    assert_nothing_leaked(&db, &r);

    // Without a value (a dry run does not need one), as a table, and a delete.
    let r = db
        .orgctl(&["secret", "set", ids::RESEARCH, "NEW", "--dry-run"])
        .env("MOLECULE_PLATFORM_URL", &platform.url())
        .run();
    r.code(0);
    assert!(r.stdout.contains("would be created"), "{}", r.stdout);
    assert!(r.stdout.contains("Dry run: nothing was changed."));
    let r = db
        .orgctl(&[
            "secret",
            "delete",
            ids::RESEARCH,
            "OPENAI_API_KEY",
            "--dry-run",
            "-o",
            "json",
        ])
        .env("MOLECULE_PLATFORM_URL", &platform.url())
        .run();
    r.code(0);
    let j: SecretJson = parse(&r);
    assert_eq!(j.action, "deleted");
    assert_eq!(j.restart.planned, [ids::RESEARCH]);
    assert!(platform.calls().is_empty());
    assert_eq!(db.snapshot(), before, "not even orgctl's schema");
}

// ---------------------------------------------------------------------------------------------
// delete and the MODEL gate

#[test]
fn delete_restarts_the_target_and_a_second_delete_does_nothing() {
    let db = TestDb::sample();
    let platform = FakePlatform::start(&[]);
    let r = db
        .orgctl(&[
            "secret",
            "delete",
            ids::RESEARCH,
            "OPENAI_API_KEY",
            "--yes",
            "-o",
            "json",
        ])
        .env("MOLECULE_PLATFORM_URL", &platform.url())
        .env("MOLECULE_ADMIN_TOKEN", TOKEN)
        .run();
    r.code(0);
    let j: SecretJson = parse(&r);
    assert_eq!(
        (j.action.as_str(), j.encryption_version),
        ("deleted", Some(0))
    );
    assert_eq!(platform.restarted(), set_of(&[ids::RESEARCH]));
    assert_eq!(
        db.scalar("SELECT count(*) FROM workspace_secrets WHERE key = 'OPENAI_API_KEY'"),
        "0"
    );
    // The delete, and its restart.
    assert_eq!(db.audit_rows(), 2);
    // Again: nothing to do, no restart, no audit row, no --yes needed.
    let snap = db.snapshot();
    let r = db
        .orgctl(&[
            "secret",
            "delete",
            ids::RESEARCH,
            "OPENAI_API_KEY",
            "-o",
            "json",
        ])
        .env("MOLECULE_PLATFORM_URL", &platform.url())
        .env("MOLECULE_ADMIN_TOKEN", TOKEN)
        .run();
    r.code(0);
    let j: SecretJson = parse(&r);
    assert_eq!(j.action, "not-found");
    assert!(j.restart.planned.is_empty() && j.restart.skipped.is_empty());
    assert_eq!(platform.calls().len(), 1);
    assert_eq!(db.snapshot(), snap);
    assert_eq!(db.audit_rows(), 2);

    // Deleting the external workspace's override: the target is not restarted (external).
    let r = db
        .orgctl(&[
            "secret",
            "delete",
            ids::LABS_BRIDGE,
            "LOG_LEVEL",
            "--yes",
            "-o",
            "json",
        ])
        .env("MOLECULE_PLATFORM_URL", &platform.url())
        .env("MOLECULE_ADMIN_TOKEN", TOKEN)
        .run();
    r.code(0);
    let j: SecretJson = parse(&r);
    assert_eq!(
        skipped(&j),
        BTreeSet::from([(ids::LABS_BRIDGE.to_string(), "external".to_string())])
    );
    assert_eq!(platform.calls().len(), 1);
}

#[test]
fn model_delete_on_the_platform_agent_needs_force_and_never_restarts_it() {
    let db = TestDb::sample();
    let agent = install_agent(&db);
    let platform = FakePlatform::start(&[]);
    let before = db.snapshot();
    for extra in [&["--yes"][..], &["--dry-run"][..], &[][..]] {
        let mut args = vec!["secret", "delete", agent.as_str(), "MODEL"];
        args.extend_from_slice(extra);
        let r = db
            .orgctl(&args)
            .env("MOLECULE_PLATFORM_URL", &platform.url())
            .env("MOLECULE_ADMIN_TOKEN", TOKEN)
            .run();
        r.code(3).one_line_error("MODEL");
        assert!(r.stderr.contains("--force"), "{}", r.stderr);
        assert_eq!(db.snapshot(), before, "{extra:?}");
    }
    let audits = db.audit_rows();
    let r = db
        .orgctl(&[
            "secret", "delete", &agent, "MODEL", "--force", "--yes", "-o", "json",
        ])
        .env("MOLECULE_PLATFORM_URL", &platform.url())
        .env("MOLECULE_ADMIN_TOKEN", TOKEN)
        .run();
    r.code(0);
    let j: SecretJson = parse(&r);
    assert_eq!(j.action, "deleted");
    assert_eq!(
        skipped(&j),
        BTreeSet::from([(agent.clone(), "platform-root".to_string())])
    );
    assert!(platform.calls().is_empty(), "the agent is not restarted");
    assert!(r.stderr.contains("warning:"), "{}", r.stderr);
    assert_eq!(
        db.scalar(&format!(
            "SELECT count(*) FROM workspace_secrets WHERE workspace_id = '{agent}' AND key = 'MODEL'"
        )),
        "0"
    );
    // The delete, and the agent's restart row: skipped by the guard.
    assert_eq!(db.audit_rows(), audits + 2);
    assert_eq!(
        db.scalar("SELECT args->>'force' FROM orgctl.audit_log WHERE command = 'secret delete'"),
        "true"
    );
    // MODEL on an ordinary workspace, and a global MODEL, are not gated: deleted without
    // --force, each with its audit row.
    db.exec(&format!(
        "INSERT INTO workspace_secrets (workspace_id, key, encrypted_value) VALUES ('{}', 'MODEL', 'x');
         INSERT INTO global_secrets (key, encrypted_value) VALUES ('MODEL', 'g')",
        ids::RESEARCH
    ));
    // The change rows (restart rows come on top: one per workspace of the phase).
    let changes = || db.scalar("SELECT count(*) FROM orgctl.audit_log WHERE command <> 'restart'");
    for scope in [ids::RESEARCH, "--global"] {
        let audits: i64 = changes().parse().unwrap_or(-1);
        let r = db
            .orgctl(&[
                "secret",
                "delete",
                scope,
                "MODEL",
                "--yes",
                "--no-restart",
                "-o",
                "json",
            ])
            .run();
        r.code(0);
        assert_eq!(parse::<SecretJson>(&r).action, "deleted", "{scope}");
        assert!(!r.stderr.contains("--force"), "{scope}: {}", r.stderr);
        assert_eq!(changes(), (audits + 1).to_string(), "{scope}");
    }
    assert_eq!(
        db.scalar(&format!(
            "SELECT (SELECT count(*) FROM workspace_secrets WHERE workspace_id = '{}' AND key = 'MODEL')
                  + (SELECT count(*) FROM global_secrets WHERE key = 'MODEL')",
            ids::RESEARCH
        )),
        "0"
    );
}

// ---------------------------------------------------------------------------------------------
// Bad input: exit code, one error line, nothing written

struct Case {
    args: Vec<String>,
    stdin: Option<Vec<u8>>,
    env: Vec<(String, String)>,
    code: i32,
    needle: String,
}

fn case(
    args: &[&str],
    stdin: Option<&[u8]>,
    env: &[(&str, &str)],
    code: i32,
    needle: &str,
) -> Case {
    Case {
        args: args.iter().map(|s| s.to_string()).collect(),
        stdin: stdin.map(<[u8]>::to_vec),
        env: env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        code,
        needle: needle.to_string(),
    }
}

#[test]
fn every_bad_input_is_refused_with_nothing_written() {
    let db = TestDb::sample();
    let platform = FakePlatform::start(&[]);
    let before = db.snapshot();
    let missing = "d0000000-0000-4000-8000-00000000dead";
    let value = VALUE.as_bytes();
    let tmp = std::env::temp_dir().join(format!("orgctl-secret-empty-{}", std::process::id()));
    if let Err(e) = std::fs::write(&tmp, b"\n") {
        panic!("{e}");
    }
    let empty_file = tmp.to_string_lossy().to_string();
    let url = platform.url();
    let rs = ids::RESEARCH;
    let ok: Option<&[u8]> = Some(value);
    let tok = [("MOLECULE_ADMIN_TOKEN", TOKEN)];
    #[rustfmt::skip]
    let cases: Vec<Case> = vec![
        case(&["secret", "set", rs, "1BAD", "--yes"], ok, &[], 2, "not a valid secret key"),
        case(&["secret", "set", rs, "BAD-KEY", "--yes"], ok, &[], 2, "not a valid secret key"),
        case(&["secret", "set", rs, "K", "--yes"], Some(b"\n"), &[], 2, "empty"),
        case(&["secret", "set", rs, "K", "--yes", "--value-file", &empty_file], None, &[], 2, "empty"),
        case(&["secret", "set", rs, "K", "--yes", "--value-file", "/nonexistent/v"], None, &[], 2, "--value-file"),
        case(&["secret", "set", rs, "K", "--yes"], Some(b"a\0b"), &[], 2, "NUL"),
        case(&["secret", "set", missing, "K", "--yes"], ok, &[], 1, missing),
        case(&["secret", "delete", missing, "K", "--yes"], None, &[], 1, missing),
        case(&["secret", "set", "not-a-uuid", "K", "--yes"], ok, &[], 2, "not a workspace id"),
        case(&["secret", "set", "--global", rs, "K", "--yes"], ok, &[], 2, "--global"),
        case(&["secret", "set", "K", "--yes"], ok, &[], 2, "WORKSPACE_ID KEY"),
        // No value and no terminal.
        case(&["secret", "set", rs, "K", "--yes"], None, &[], 2, "no value"),
        case(&["secret", "set", rs, "K", "--yes"], ok, &[("SECRETS_ENCRYPTION_KEY", "too-short")], 2, "SECRETS_ENCRYPTION_KEY"),
        case(&["secret", "set", rs, "K", "--yes"], ok, &[("MOLECULE_ENV", "prod")], 3, "SECRETS_ENCRYPTION_KEY"),
        // A platform URL without the admin token would fail every restart after the commit.
        case(&["secret", "set", rs, "K", "--yes", "--platform-url", &url], ok, &[], 2, "MOLECULE_ADMIN_TOKEN"),
        case(&["secret", "set", rs, "K", "--yes", "--platform-url", "ftp://x"], ok, &tok, 2, "platform URL"),
        // Replacing an existing value needs --yes without a terminal; so does a new one.
        case(&["secret", "set", rs, "OPENAI_API_KEY"], ok, &[], 3, "confirmation needed"),
        case(&["secret", "set", rs, "BRAND_NEW"], ok, &[], 3, "confirmation needed"),
        case(&["secret", "delete", "--global", "LOG_LEVEL"], None, &[], 3, "confirmation needed"),
        case(&["secret", "list"], None, &[], 2, "WORKSPACE_ID"),
        case(&["secret", "list", "--global", rs], None, &[], 2, "not both"),
        case(&["secret", "list", missing], None, &[], 1, missing),
        case(&["secret", "list", "nope"], None, &[], 2, "not a workspace id"),
    ];
    for Case {
        args,
        stdin,
        env,
        code,
        needle,
    } in cases
    {
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut cmd = db.orgctl(&argv);
        if let Some(s) = &stdin {
            cmd = cmd.stdin(s);
        }
        for (k, v) in &env {
            cmd = cmd.env(k, v);
        }
        let r = cmd.run();
        assert_eq!(
            r.code, code,
            "{args:?}\nstdout: {}\nstderr: {}",
            r.stdout, r.stderr
        );
        r.one_line_error(&needle);
        assert!(r.stdout.is_empty(), "{args:?}: {}", r.stdout);
        assert_nothing_leaked(&db, &r);
        assert!(!r.stderr.contains("too-short"));
        assert_eq!(db.snapshot(), before, "{args:?} changed the tenant");
    }
    let _ = std::fs::remove_file(&tmp);
    // clap refuses a missing KEY and an argv value.
    for args in [
        &["secret", "set"][..],
        &["secret", "set", ids::RESEARCH, "K", "extra"][..],
        &["secret", "set", ids::RESEARCH, "K", "--value", "x"][..],
    ] {
        db.orgctl(args).run().code(2);
    }
    assert!(platform.calls().is_empty());
    assert_eq!(db.snapshot(), before);
}

#[test]
fn value_file_strips_one_newline() {
    let db = TestDb::sample();
    let path = std::env::temp_dir().join(format!("orgctl-secret-value-{}", std::process::id()));
    if let Err(e) = std::fs::write(&path, format!("{VALUE}\n\n")) {
        panic!("{e}");
    }
    let p = path.to_string_lossy().to_string();
    let r = db
        .orgctl(&[
            "secret",
            "set",
            "--global",
            "FROM_FILE",
            "--value-file",
            &p,
            "--yes",
        ])
        .run();
    let _ = std::fs::remove_file(&path);
    r.code(0);
    assert_eq!(
        db.scalar(
            "SELECT octet_length(encrypted_value) || ' ' || get_byte(encrypted_value, octet_length(encrypted_value) - 1)
               FROM global_secrets WHERE key = 'FROM_FILE'"
        ),
        format!("{} 10", VALUE.len() + 1),
        "exactly one trailing newline stripped"
    );
    assert_eq!(
        db.scalar("SELECT args->>'value_source' FROM orgctl.audit_log"),
        "file"
    );
    assert_nothing_leaked(&db, &r);
}

// ---------------------------------------------------------------------------------------------
// list

#[test]
fn list_shows_keys_scopes_and_versions_never_values_and_writes_nothing() {
    let db = TestDb::sample();
    let before = db.snapshot();
    let r = db
        .orgctl(&["secret", "list", ids::LABS_BRIDGE, "-o", "json"])
        .run();
    r.code(0);
    let l: ListJson = parse(&r);
    assert_eq!(l.workspace_id.as_deref(), Some(ids::LABS_BRIDGE));
    let got: Vec<(String, String, i32, bool)> = l
        .secrets
        .iter()
        .map(|s| {
            (
                s.key.clone(),
                s.scope.clone(),
                s.encryption_version,
                s.overrides_global,
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            ("DEFAULT_REGION".into(), "inherited".into(), 0, false),
            ("LOG_LEVEL".into(), "workspace".into(), 0, true),
        ]
    );
    assert!(l
        .secrets
        .iter()
        .all(|s| s.created_at.is_some() && s.updated_at.is_some()));
    for v in ["debug", "info", "eu-west-1"] {
        assert!(!r.stdout.contains(v), "a value leaked: {v}");
    }

    let r = db.orgctl(&["secret", "list", "--global"]).run();
    r.code(0);
    assert!(r.stdout.contains("DEFAULT_REGION") && r.stdout.contains("LOG_LEVEL"));
    assert!(r.stdout.contains("global"));
    for v in ["info", "eu-west-1"] {
        assert!(!r.stdout.contains(v), "a value leaked: {v}");
    }
    let r = db.orgctl(&["secret", "list", ids::RESEARCH]).run();
    r.code(0);
    assert!(r.stdout.contains("OPENAI_API_KEY") && r.stdout.contains("inherited"));
    assert!(!r.stdout.contains("sk-sample"));
    assert_eq!(db.snapshot(), before, "read-only: not even orgctl's schema");
}

/// Ctrl-C while restarts are being dispatched: no new calls, the in-flight ones finish, and the
/// exit is 130 with a message that says the secret was committed (never "nothing changed").
/// The interrupt lands when the first wave of calls (the concurrency cap) has arrived and none
/// is answered yet (each takes 1.5 s), so the count of calls at that moment is exact.
#[test]
fn ctrl_c_during_restarts_exits_130_saying_the_change_was_committed() {
    use crate::stand_in::{Reply, StandIn};
    let cap = crate::stand_in::RESTART_CAP;
    let db = TestDb::sample();
    db.exec(&format!(
        "INSERT INTO workspaces (name, parent_id, status) SELECT 'fan ' || g, '{}', 'online'
           FROM generate_series(1, 30) g",
        ids::HQ
    ));
    let platform = StandIn::start(Reply::Delay(
        Duration::from_millis(1500),
        Box::new(Reply::dispatched()),
    ));
    let mut cmd = db
        .orgctl(&[
            "secret",
            "set",
            "--global",
            "DEFAULT_REGION",
            "--yes",
            "-o",
            "json",
        ])
        .env("MOLECULE_PLATFORM_URL", &platform.url())
        .env("MOLECULE_ADMIN_TOKEN", TOKEN)
        .command();
    cmd.stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => panic!("{e}"),
    };
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(b"us-east-2");
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while platform.calls().len() < cap {
        assert!(
            std::time::Instant::now() < deadline,
            "the first wave of restart calls never arrived"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let at_interrupt = platform.calls();
    orgctl::testing::sys::kill(child.id() as i32, libc::SIGINT);
    assert!(
        at_interrupt.iter().all(|c| c.answered.is_none()),
        "the interrupt came too late to be mid-wave: {at_interrupt:?}"
    );
    let out = match child.wait_with_output() {
        Ok(o) => o,
        Err(e) => panic!("{e}"),
    };
    let exited = std::time::Instant::now();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{stderr}");
    assert!(
        stderr.contains("interrupted after the change was committed"),
        "{stderr}"
    );
    assert!(!stderr.contains("nothing was changed"), "{stderr}");
    assert_eq!(
        db.scalar("SELECT convert_from(encrypted_value, 'UTF8') FROM global_secrets WHERE key = 'DEFAULT_REGION'"),
        "us-east-2"
    );
    // No new call after the interrupt: exactly the wave that was in flight.
    let calls = platform.calls();
    assert_eq!(calls.len(), at_interrupt.len(), "calls after the interrupt");
    assert_eq!(at_interrupt.len(), cap);
    // The calls in flight were finished, not cut off: each was answered before orgctl exited.
    for c in &calls {
        match c.answered {
            Some(t) => assert!(t <= exited, "{c:?}"),
            None => panic!("a call in flight was abandoned: {c:?}"),
        }
        crate::stand_in::StandIn::admin_restart_id(c, TOKEN);
    }
    assert!(!stderr.contains(TOKEN));
}

/// A value typed on argv is refused without being echoed, whatever shape.
#[test]
fn a_value_on_the_command_line_is_refused_without_echoing_it() {
    let db = TestDb::sample();
    let before = db.snapshot();
    let value = "hunter2-TOPSECRET";
    for args in [
        vec!["secret", "set", ids::HQ, "API_KEY", value],
        vec!["secret", "set", ids::HQ, "API_KEY", value, "--yes"],
        vec![
            "secret",
            "set",
            "--global",
            "API_KEY",
            "--value=hunter2-TOPSECRET",
        ],
        vec![
            "secret",
            "set",
            "--global",
            "API_KEY=hunter2-TOPSECRET",
            "--yes",
        ],
        vec![
            "secret",
            "set",
            ids::HQ,
            "API_KEY=hunter2-TOPSECRET",
            "--yes",
        ],
        vec!["secret", "delete", ids::HQ, "API_KEY", value],
    ] {
        let r = db.orgctl(&args).stdin(b"").run();
        r.code(2).one_line_error("secret");
        assert!(
            !r.stderr.contains("TOPSECRET") && !r.stdout.contains("TOPSECRET"),
            "{args:?} echoed the value: {}",
            r.stderr
        );
    }
    assert_eq!(db.snapshot(), before);
}

/// Without a key (outside production) the write happens, in plaintext, and
/// stderr says so; with a key, no such warning.
#[test]
fn a_plaintext_write_warns_on_stderr() {
    let db = TestDb::sample();
    let r = db
        .orgctl(&[
            "secret",
            "set",
            "--global",
            "LOG_LEVEL",
            "--yes",
            "--no-restart",
        ])
        .stdin(b"debug")
        .run();
    r.code(0);
    assert!(
        r.stderr
            .contains("warning: SECRETS_ENCRYPTION_KEY is not set")
            && r.stderr.contains("stored in plaintext"),
        "{}",
        r.stderr
    );
    assert_eq!(
        db.scalar("SELECT encryption_version FROM global_secrets WHERE key = 'LOG_LEVEL'"),
        "0"
    );
    let keyed = db
        .orgctl(&[
            "secret",
            "set",
            "--global",
            "LOG_LEVEL",
            "--yes",
            "--no-restart",
        ])
        .env("SECRETS_ENCRYPTION_KEY", &key_b64(&[7u8; 32]))
        .stdin(b"info")
        .run();
    keyed.code(0);
    assert!(!keyed.stderr.contains("plaintext"), "{}", keyed.stderr);

    // install --model without a key warns as well.
    let i = db
        .orgctl(&["install-platform-agent", "--model", "m", "--yes"])
        .run();
    i.code(0);
    assert!(
        i.stderr.contains("MODEL secret is stored in plaintext"),
        "{}",
        i.stderr
    );
}

/// The platform refuses its vendor keys (ANTHROPIC_API_KEY, OPENAI_API_KEY, CODEX_AUTH_JSON, …,
/// compared upper-cased) on a workspace whose model is platform-managed. Nothing in the tenant
/// database says which workspaces those are, so orgctl warns on every write of such a key
/// (workspace: naming it; global: saying it reaches platform-managed workspaces too), in dry
/// runs as well, and writes it; other keys get no such warning; bad input is still refused
/// first with nothing written.
#[test]
fn a_vendor_key_write_warns_that_the_platform_refuses_it_on_platform_managed_models() {
    let db = TestDb::sample();
    let key = key_b64(&[9u8; 32]);
    let run = |args: &[&str]| {
        let mut a = vec!["secret", "set"];
        a.extend_from_slice(args);
        db.orgctl(&a)
            .env("SECRETS_ENCRYPTION_KEY", &key)
            .stdin(VALUE.as_bytes())
            .run()
    };
    for k in ["OPENAI_API_KEY", "codex_auth_json", "Hf_Token"] {
        let r = run(&[ids::RESEARCH, k, "--yes", "--no-restart"]);
        r.code(0);
        assert_nothing_leaked(&db, &r);
        let w = r
            .stderr
            .lines()
            .find(|l| l.starts_with(&format!("warning: {k} is a vendor key")))
            .unwrap_or_default();
        assert!(
            w.contains("platform-managed")
                && w.contains("cannot tell")
                && w.contains(ids::RESEARCH),
            "{k}: {}",
            r.stderr
        );
        assert_eq!(
            db.scalar(&format!(
                "SELECT count(*) FROM workspace_secrets WHERE workspace_id = '{}' AND key = '{k}'",
                ids::RESEARCH
            )),
            "1",
            "{k} is written all the same"
        );
    }
    let r = run(&["--global", "ANTHROPIC_API_KEY", "--yes", "--no-restart"]);
    r.code(0);
    assert!(
        r.stderr
            .contains("warning: ANTHROPIC_API_KEY is a vendor key")
            && r.stderr.contains("every inheriting workspace")
            && r.stderr.contains("platform-managed"),
        "{}",
        r.stderr
    );
    // A dry run warns too and writes nothing.
    let before = db.snapshot();
    let r = run(&["--global", "XAI_API_KEY", "--dry-run"]);
    r.code(0);
    assert!(
        r.stderr.contains("XAI_API_KEY is a vendor key"),
        "{}",
        r.stderr
    );
    assert_eq!(db.snapshot(), before);
    // Not a vendor key: no warning.
    let r = run(&["--global", "LOG_LEVEL", "--yes", "--no-restart"]);
    r.code(0);
    assert!(!r.stderr.contains("vendor key"), "{}", r.stderr);
    // Bad input is refused before any warning, nothing written.
    let before = db.snapshot();
    let r = run(&["not-a-uuid", "OPENAI_API_KEY", "--yes"]);
    r.code(2).one_line_error("not a workspace id");
    assert!(!r.stderr.contains("vendor key"), "{}", r.stderr);
    let r = run(&["--global", "OPENAI_API_KEY=sk-1", "--yes"]);
    r.code(2);
    assert_eq!(db.snapshot(), before);
}

// ---------------------------------------------------------------------------------------------
// Restart outcomes in the audit log, and `secret restart`

/// The restart rows of the audit log: (workspace, outcome, http_status, skip_reason, trigger).
fn restart_rows(db: &TestDb) -> BTreeSet<(String, String, String, String, String)> {
    db.exec(
        "SELECT args->>'workspace_id', outcome, coalesce(args->>'http_status', '-'),
                coalesce(args->>'skip_reason', '-'), args->>'trigger'
           FROM orgctl.audit_log WHERE command = 'restart' ORDER BY id",
    )
    .lines()
    .filter_map(|l| {
        let f: Vec<&str> = l.split('|').collect();
        (f.len() == 5).then(|| {
            (
                f[0].to_string(),
                f[1].to_string(),
                f[2].to_string(),
                f[3].to_string(),
                f[4].to_string(),
            )
        })
    })
    .collect()
}

fn restart_cmd(db: &TestDb, platform: &FakePlatform, args: &[&str]) -> Run {
    let mut a = vec!["secret", "restart"];
    a.extend_from_slice(args);
    a.extend_from_slice(&["--yes", "-o", "json"]);
    db.orgctl(&a)
        .env("MOLECULE_PLATFORM_URL", &platform.url())
        .env("MOLECULE_ADMIN_TOKEN", TOKEN)
        .run()
}

const INHERITING: [&str; 7] = [
    ids::HQ,
    ids::RESEARCH,
    "a0000000-0000-4000-8000-000000000003",
    "a0000000-0000-4000-8000-000000000004",
    "a0000000-0000-4000-8000-000000000005",
    "a0000000-0000-4000-8000-000000000006",
    ids::LABS,
];

#[test]
fn restart_outcomes_are_audit_rows_that_match_what_the_platform_saw_and_restart_replays_the_missed()
{
    let db = TestDb::sample();
    let agent = install_agent(&db);
    let platform = FakePlatform::start(&[ids::RESEARCH]);
    let r = db
        .orgctl(&["secret", "set", "--global", "REGION", "--yes", "-o", "json"])
        .env("MOLECULE_PLATFORM_URL", &platform.url())
        .env("MOLECULE_ADMIN_TOKEN", TOKEN)
        .env("ORGCTL_REASON", "INC-77")
        .stdin(VALUE.as_bytes())
        .run();
    r.code(1).one_line_error(ids::RESEARCH);
    assert_nothing_leaked(&db, &r);
    // One row per workspace the platform saw, with its answer; one for the guarded agent.
    let seen = platform.restarted();
    assert_eq!(seen, set_of(&INHERITING));
    let rows = restart_rows(&db);
    let called: BTreeSet<String> = rows
        .iter()
        .filter(|r| r.1 == "restarted" || r.1 == "failed")
        .map(|r| r.0.clone())
        .collect();
    assert_eq!(called, seen);
    for id in INHERITING {
        let (outcome, status) = if id == ids::RESEARCH {
            ("failed", "500")
        } else {
            ("restarted", "202")
        };
        let row = (
            id.to_string(),
            outcome.to_string(),
            status.to_string(),
            "-".to_string(),
            "secret set".to_string(),
        );
        assert!(rows.contains(&row), "{row:?} not in {rows:?}");
    }
    assert!(rows.contains(&(
        agent.clone(),
        "skipped".into(),
        "-".into(),
        "platform-root".into(),
        "secret set".into()
    )));
    // Every other row is a guard skip (the fan-out reports removed, paused, external ones too).
    assert_eq!(
        rows.iter().filter(|r| r.1 != "skipped").count(),
        INHERITING.len(),
        "{rows:?}"
    );
    assert_eq!(
        db.scalar("SELECT count(*) FROM orgctl.audit_log WHERE reason IS DISTINCT FROM 'INC-77' AND command <> 'install-platform-agent'"),
        "0"
    );
    let error = db.scalar(&format!(
        "SELECT args->>'error' FROM orgctl.audit_log WHERE command = 'restart' AND args->>'workspace_id' = '{}'",
        ids::RESEARCH
    ));
    assert!(error.contains("500") && !error.contains(TOKEN), "{error}");

    // secret restart: exactly the missed workspace, nothing for the guarded agent.
    let before = db.snapshot();
    let value =
        db.exec("SELECT encrypted_value, updated_at FROM global_secrets WHERE key = 'REGION'");
    let retry = FakePlatform::start(&[]);
    let r = restart_cmd(&db, &retry, &["--global", "REGION"]);
    r.code(0);
    assert_eq!(retry.restarted(), set_of(&[ids::RESEARCH]));
    let j: SecretJson = parse(&r);
    assert_eq!(j.action, "restart");
    assert_eq!(j.restart.planned, vec![ids::RESEARCH.to_string()]);
    assert_eq!(j.restart.dispatched.len(), 1);
    let mut want: BTreeSet<(String, String)> = INHERITING
        .iter()
        .filter(|id| **id != ids::RESEARCH)
        .map(|id| (id.to_string(), "already-restarted".to_string()))
        .collect();
    want.insert((agent.clone(), "platform-root".into()));
    for (id, why) in [
        ("b0000000-0000-4000-8000-000000000002", "external"),
        ("b0000000-0000-4000-8000-000000000003", "paused"),
        ("c0000000-0000-4000-8000-000000000001", "removed"),
    ] {
        want.insert((id.to_string(), why.to_string()));
    }
    assert_eq!(skipped(&j), want);
    assert_eq!(db.snapshot(), before, "secret restart rewrote the tenant");
    assert_eq!(
        db.exec("SELECT encrypted_value, updated_at FROM global_secrets WHERE key = 'REGION'"),
        value
    );
    assert_eq!(
        db.scalar(
            "SELECT string_agg((args->>'workspace_id') || ' ' || outcome, ',' ORDER BY id)
               FROM orgctl.audit_log
              WHERE command = 'restart' AND args->>'trigger' = 'secret restart'
                AND outcome <> 'skipped'"
        ),
        format!("{} restarted", ids::RESEARCH)
    );
    // Again: nothing is owed any more.
    let again = FakePlatform::start(&[]);
    let r = restart_cmd(&db, &again, &["--global", "REGION"]);
    r.code(0);
    assert!(again.calls().is_empty(), "{:?}", again.calls());
    // --all: every eligible workspace, never the agent.
    let all = FakePlatform::start(&[]);
    restart_cmd(&db, &all, &["--global", "REGION", "--all"]).code(0);
    assert_eq!(all.restarted(), set_of(&INHERITING));
    // The agent's own secret: the guard skips it, nothing is called.
    let none = FakePlatform::start(&[]);
    let r = restart_cmd(&db, &none, &[&agent, "MODEL"]);
    r.code(0);
    assert!(none.calls().is_empty());
    assert_eq!(
        skipped(&parse(&r)),
        BTreeSet::from([(agent.clone(), "platform-root".to_string())])
    );
    // A failing replay exits 1 naming the workspace, and is owed again afterwards.
    let failing = FakePlatform::start(&[ids::HQ]);
    db.orgctl(&[
        "secret",
        "set",
        "--global",
        "REGION",
        "--no-restart",
        "--yes",
    ])
    .stdin(b"v2")
    .run()
    .code(0);
    let r = restart_cmd(&db, &failing, &["--global", "REGION"]);
    r.code(1).one_line_error(ids::HQ);
    assert_eq!(
        failing.restarted(),
        set_of(&INHERITING),
        "--no-restart owed them all"
    );
    let last = FakePlatform::start(&[]);
    restart_cmd(&db, &last, &["--global", "REGION"]).code(0);
    assert_eq!(last.restarted(), set_of(&[ids::HQ]));
    // The chain stays intact through all of it.
    db.orgctl(&["audit", "verify"]).run().code(0);
}

#[test]
fn secret_restart_bad_input_and_no_platform_url_change_nothing() {
    let db = TestDb::sample();
    db.orgctl(&["secret", "set", ids::RESEARCH, "API_KEY", "--yes"])
        .stdin(b"v")
        .run()
        .code(0);
    let before = db.snapshot();
    let rows = db.audit_rows();
    let platform = FakePlatform::start(&[]);
    for (args, code, needle) in [
        (vec!["--global", "1BAD"], 2, "not a valid secret key"),
        (vec!["not-a-uuid", "API_KEY"], 2, "not a workspace id"),
        (vec!["--global"], 2, ""),
        (
            vec![ids::RESEARCH, "NO_SUCH_KEY"],
            1,
            "no record of changing it",
        ),
        (
            vec!["b9999999-0000-4000-8000-000000000009", "API_KEY"],
            1,
            "does not exist",
        ),
    ] {
        let r = restart_cmd(&db, &platform, &args);
        r.code(code).one_line_error(needle);
    }
    // A platform URL without the admin token is refused before anything happens.
    let r = db
        .orgctl(&["secret", "restart", ids::RESEARCH, "API_KEY", "--yes"])
        .env("MOLECULE_PLATFORM_URL", &platform.url())
        .run();
    r.code(2).one_line_error("MOLECULE_ADMIN_TOKEN");
    // Without --yes and without a terminal: refused.
    let r = db
        .orgctl(&["secret", "restart", ids::RESEARCH, "API_KEY"])
        .env("MOLECULE_PLATFORM_URL", &platform.url())
        .env("MOLECULE_ADMIN_TOKEN", TOKEN)
        .run();
    r.code(3).one_line_error("confirmation");
    // No platform URL, or a dry run: the plan, exit 0, nothing called or written.
    let r = db
        .orgctl(&["secret", "restart", ids::RESEARCH, "API_KEY", "--yes"])
        .run();
    r.code(0);
    assert!(r.stdout.contains(ids::RESEARCH), "{}", r.stdout);
    let r = db
        .orgctl(&["secret", "restart", ids::RESEARCH, "API_KEY", "--dry-run"])
        .env("MOLECULE_PLATFORM_URL", &platform.url())
        .env("MOLECULE_ADMIN_TOKEN", TOKEN)
        .run();
    r.code(0);
    assert!(r.stdout.contains("would"), "{}", r.stdout);
    assert!(platform.calls().is_empty(), "{:?}", platform.calls());
    assert_eq!(db.snapshot(), before);
    assert_eq!(db.audit_rows(), rows);
}

/// Killed (SIGKILL) during a restart fan-out, `secret set` has already recorded every batch of
/// outcomes it finished: the replay (`secret restart`) calls only the workspaces still owed,
/// never one that was restarted before the kill.
#[test]
fn killed_mid_fan_out_the_replay_restarts_only_what_is_still_owed() {
    use crate::stand_in::{Reply, StandIn};
    use std::io::Write;
    let db = TestDb::sample();
    db.exec(&format!(
        "INSERT INTO workspaces (name, parent_id, status) SELECT 'fan ' || g, '{}', 'online'
           FROM generate_series(1, 120) g",
        ids::HQ
    ));
    let slow = StandIn::start(Reply::Delay(
        Duration::from_millis(250),
        Box::new(Reply::dispatched()),
    ));
    let mut cmd = db
        .orgctl(&["secret", "set", "--global", "DEFAULT_REGION", "--yes"])
        .env("MOLECULE_PLATFORM_URL", &slow.url())
        .env("MOLECULE_ADMIN_TOKEN", TOKEN)
        .command();
    cmd.stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => panic!("{e}"),
    };
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(b"us-east-2");
    }
    // Past the first recorded batch (32 calls), well before the end.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while slow.calls().len() < 48 {
        assert!(
            std::time::Instant::now() < deadline,
            "the fan-out never got going"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    orgctl::testing::sys::kill(child.id() as i32, libc::SIGKILL);
    let _ = child.wait();
    let called_before: std::collections::BTreeSet<String> = slow
        .calls()
        .iter()
        .map(|c| StandIn::admin_restart_id(c, TOKEN))
        .collect();
    let recorded: std::collections::BTreeSet<String> = db
        .exec(
            "SELECT args->>'workspace_id' FROM orgctl.audit_log
              WHERE command = 'restart' AND outcome = 'restarted'",
        )
        .lines()
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty())
        .collect();
    assert!(
        recorded.len() >= 32,
        "no batch was recorded before the kill"
    );
    assert!(
        recorded.len() < 120,
        "the whole fan-out finished before the kill"
    );
    assert!(recorded.is_subset(&called_before));

    let fast = StandIn::start(Reply::dispatched());
    let r = db
        .orgctl(&[
            "secret",
            "restart",
            "--global",
            "DEFAULT_REGION",
            "--yes",
            "-o",
            "json",
        ])
        .env("MOLECULE_PLATFORM_URL", &fast.url())
        .env("MOLECULE_ADMIN_TOKEN", TOKEN)
        .run();
    r.code(0);
    let replayed: std::collections::BTreeSet<String> = fast
        .calls()
        .iter()
        .map(|c| StandIn::admin_restart_id(c, TOKEN))
        .collect();
    assert!(
        replayed.is_disjoint(&recorded),
        "the replay restarted {} workspace(s) already recorded as restarted",
        replayed.intersection(&recorded).count()
    );
    // Everything inheriting the key is restarted once in all, apart from at most the one batch
    // in flight at the kill.
    let inheriting: usize = db
        .scalar(
            "SELECT count(*) FROM workspaces w WHERE w.kind <> 'platform' AND w.status = 'online'
               AND NOT EXISTS (SELECT 1 FROM workspace_secrets s
                                WHERE s.workspace_id = w.id AND s.key = 'DEFAULT_REGION')",
        )
        .parse()
        .unwrap_or(0);
    assert!(recorded.len() + replayed.len() >= inheriting.min(120));
    assert!(called_before.len() - recorded.len() <= 32 + 8);
}
