//! In-doubt commits: every mutating command, run through a loopback proxy
//! that cuts the connection at its COMMIT, must tell the truth: committed (verified after
//! reconnecting, and carry on), not committed (verified), or "may have been committed" with
//! what to check and exit 1 when it cannot find out. Never "rolled back" for a commit.

use crate::harness::{ids, Cmd, Cut, CutProxy, Run, TestDb};

/// orgctl's own schema, created before the proxy is in the path: the proxy cuts the first
/// COMMIT it sees, which must be the command's own write transaction.
fn with_schema(db: &TestDb) {
    db.orgctl(&["token", "mint", "--org", ids::LEGACY, "--name", "setup"])
        .run()
        .code(0);
    db.exec("DELETE FROM org_api_tokens WHERE name = 'setup'; DELETE FROM orgctl.audit_log");
}

struct Case {
    name: &'static str,
    args: Vec<String>,
    stdin: Option<&'static [u8]>,
    /// An environment variable the command needs (the secrets key of `secret rekey`).
    env: Option<(&'static str, &'static str)>,
    /// SQL returning 't' once the command's change is committed.
    done: &'static str,
    /// Exit code when the commit is verified.
    ok_code: i32,
    /// What stderr names to check when the outcome is unknown.
    check: &'static str,
    backfill: bool,
}

fn case(name: &'static str, args: &[&str], done: &'static str) -> Case {
    Case {
        name,
        args: args.iter().map(|s| s.to_string()).collect(),
        stdin: None,
        env: None,
        done,
        ok_code: 0,
        check: "orgctl.audit_log has a row with txid",
        backfill: false,
    }
}

fn cases() -> Vec<Case> {
    let mut v = vec![
        case(
            "install-platform-agent",
            &["install-platform-agent", "--model", "m-1", "--yes"],
            "SELECT count(*) = 1 FROM workspaces WHERE kind = 'platform'",
        ),
        case(
            "token revoke",
            &["token", "revoke", "--yes", "--", "sampl001"],
            "SELECT revoked_at IS NOT NULL FROM org_api_tokens WHERE prefix = 'sampl001'",
        ),
        case(
            "token revoke --created-by",
            &["-o", "json", "token", "revoke", "--created-by", "session", "--yes"],
            "SELECT count(*) = 0 FROM org_api_tokens WHERE created_by = 'session' AND revoked_at IS NULL",
        ),
        case(
            "token anchor",
            &["token", "anchor", "--org", ids::HQ, "--yes", "--", "sampl006"],
            "SELECT org_id IS NOT NULL FROM org_api_tokens WHERE prefix = 'sampl006'",
        ),
        Case {
            stdin: Some(b"v-1"),
            ..case(
                "secret set",
                &["-o", "json", "secret", "set", ids::HQ, "NEWKEY", "--yes"],
                "SELECT count(*) = 1 FROM workspace_secrets WHERE key = 'NEWKEY'",
            )
        },
        case(
            "secret delete",
            &["secret", "delete", "--global", "SHARED_KEY", "--yes"],
            "SELECT count(*) = 0 FROM global_secrets WHERE key = 'SHARED_KEY'",
        ),
        case(
            "token anchor --stale",
            &["token", "anchor", "--stale", "--org", ids::HQ, "--yes"],
            "SELECT org_id = 'a0000000-0000-4000-8000-000000000001' FROM org_api_tokens WHERE name = 'stale'",
        ),
        Case {
            // 32 bytes of 0x01, base64.
            env: Some(("SECRETS_ENCRYPTION_KEY", "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=")),
            ..case(
                "secret rekey --plaintext-only",
                &["secret", "rekey", "--plaintext-only", "--yes"],
                "SELECT count(*) = 0 FROM global_secrets WHERE encryption_version = 0",
            )
        },
        Case {
            check: "a token with prefix",
            ..case(
                "token mint",
                &["token", "mint", "--org", ids::HQ, "--name", "cut"],
                "SELECT count(*) = 1 FROM org_api_tokens WHERE name = 'cut'",
            )
        },
        Case {
            backfill: true,
            check: "backfill status --run-id",
            ..case(
                "backfill run",
                &["backfill", "run", "--run-id", "cut-1", "--model", "m-1", "--yes"],
                "SELECT count(*) = 1 FROM workspaces WHERE kind = 'platform'",
            )
        },
    ];
    v.push(Case {
        backfill: true,
        ..case(
            "backfill rollback",
            &["backfill", "rollback", "--run-id", "pre-1", "--yes"],
            "SELECT count(*) = 0 FROM workspaces WHERE kind = 'platform'",
        )
    });
    v
}

fn run_through(c: &Case, db: &TestDb, proxy: &CutProxy) -> Run {
    let url = proxy.url(&db.name);
    let mut args: Vec<&str> = c.args.iter().map(String::as_str).collect();
    let tenants;
    if c.backfill {
        tenants = std::env::temp_dir().join(format!(
            "orgctl-indoubt-{}-{}.txt",
            std::process::id(),
            db.name
        ));
        if let Err(e) = std::fs::write(&tenants, format!("acme {url}\n")) {
            panic!("{e}");
        }
        args.push("--tenants");
        args.push(tenants.to_str().unwrap_or_default());
    }
    let mut cmd = Cmd::new(&args).env("DATABASE_URL", &url);
    if let Some(s) = c.stdin {
        cmd = cmd.stdin(s);
    }
    if let Some((k, v)) = c.env {
        cmd = cmd.env(k, v);
    }
    cmd.run()
}

fn setup(c: &Case) -> TestDb {
    let db = TestDb::sample();
    with_schema(&db);
    db.exec("INSERT INTO global_secrets (key, encrypted_value) VALUES ('SHARED_KEY', 'x'::bytea)");
    // A live token anchored to a child workspace: a stale anchor for `token anchor --stale`.
    db.exec(&format!(
        "INSERT INTO org_api_tokens (token_hash, prefix, name, org_id)
         VALUES ('\\x5717e0'::bytea, 'stale001', 'stale', '{}')",
        ids::LABS_BRIDGE
    ));
    if c.name == "backfill rollback" {
        let tenants = std::env::temp_dir().join(format!("orgctl-indoubt-pre-{}.txt", db.name));
        if let Err(e) = std::fs::write(&tenants, format!("acme {}\n", db.url)) {
            panic!("{e}");
        }
        let t = tenants.to_str().unwrap_or_default().to_string();
        Cmd::new(&[
            "backfill",
            "run",
            "--run-id",
            "pre-1",
            "--model",
            "m-1",
            "--yes",
            "--tenants",
            &t,
        ])
        .run()
        .code(0);
        let _ = std::fs::remove_file(&tenants);
    }
    db
}

fn assert_never_rolled_back(c: &Case, r: &Run) {
    assert!(
        !r.stderr.contains("rolled back") && !r.stdout.contains("rolled back\""),
        "{}: a lost COMMIT reported as rolled back:\n{}",
        c.name,
        r.stderr
    );
    assert!(!r.stderr.contains("panicked"), "{}", r.stderr);
}

/// The COMMIT reaches the server, the answer is lost: orgctl finds the change committed, says
/// so and carries on (exit as on success).
#[test]
fn a_commit_whose_answer_is_lost_is_verified_as_committed() {
    for c in cases() {
        let db = setup(&c);
        let proxy = CutProxy::start(Cut::AfterCommit);
        let r = run_through(&c, &db, &proxy);
        assert!(
            proxy.did_cut(),
            "{}: the proxy saw no COMMIT\n{}",
            c.name,
            r.stderr
        );
        assert_eq!(
            db.scalar(c.done),
            "t",
            "{}: not committed\n{}",
            c.name,
            r.stderr
        );
        assert_eq!(r.code, c.ok_code, "{}:\n{}\n{}", c.name, r.stdout, r.stderr);
        let said = if c.backfill { &r.stdout } else { &r.stderr };
        assert!(
            said.contains("verified that the change was committed"),
            "{}: {}\n{}",
            c.name,
            r.stdout,
            r.stderr
        );
        assert_never_rolled_back(&c, &r);
        match c.name {
            "token mint" => {
                // The printed token is the live one.
                let token = r.stdout.trim();
                assert_eq!(token.len(), 43, "{}", r.stdout);
                assert_eq!(
                    db.scalar(&format!(
                        "SELECT count(*) FROM org_api_tokens WHERE token_hash = sha256('{token}'::bytea) AND revoked_at IS NULL"
                    )),
                    "1"
                );
            }
            "secret set" => {
                // Carried on: the restart plan was computed on the new connection.
                let j = r.json();
                assert_eq!(j["action"], "created", "{}", r.stdout);
                assert!(j["restart"]["planned"].is_array(), "{}", r.stdout);
            }
            "token revoke --created-by" => {
                // The read-back ran on the new connection.
                let j = r.json();
                assert_eq!(
                    j["revoked"].as_array().map(Vec::len),
                    Some(3),
                    "{}",
                    r.stdout
                );
            }
            _ => {}
        }
    }
}

/// The COMMIT never reaches the server: orgctl verifies nothing was committed.
#[test]
fn a_commit_that_never_arrived_is_verified_as_not_committed() {
    for c in cases() {
        let db = setup(&c);
        let before = db.snapshot();
        let proxy = CutProxy::start(Cut::BeforeCommit);
        let r = run_through(&c, &db, &proxy);
        assert!(
            proxy.did_cut(),
            "{}: the proxy saw no COMMIT\n{}",
            c.name,
            r.stderr
        );
        assert_eq!(r.code, 1, "{}:\n{}\n{}", c.name, r.stdout, r.stderr);
        assert_eq!(db.snapshot(), before, "{}: something changed", c.name);
        let said = if c.backfill { &r.stdout } else { &r.stderr };
        assert!(
            said.contains("NOT committed") || said.contains("NOT minted"),
            "{}: {}\n{}",
            c.name,
            r.stdout,
            r.stderr
        );
        if !c.backfill {
            r.one_line_error("verified");
        }
    }
}

/// The COMMIT reaches the server but orgctl cannot reconnect: "may have been committed",
/// naming what to check, exit 1 — even for a token that is in fact live.
#[test]
fn a_lost_commit_that_cannot_be_checked_may_have_been_committed() {
    for c in cases() {
        let db = setup(&c);
        let proxy = CutProxy::start(Cut::AfterCommitThenRefuse);
        let r = run_through(&c, &db, &proxy);
        assert!(
            proxy.did_cut(),
            "{}: the proxy saw no COMMIT\n{}",
            c.name,
            r.stderr
        );
        // The server received the COMMIT before the cut; under load its backend may still be
        // finishing it when orgctl has given up, so wait for it (bounded) before judging.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while db.scalar(c.done) != "t" && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        assert_eq!(
            db.scalar(c.done),
            "t",
            "{}: the server did not commit",
            c.name
        );
        assert_eq!(r.code, 1, "{}:\n{}\n{}", c.name, r.stdout, r.stderr);
        let said = format!("{}\n{}", r.stdout, r.stderr);
        assert!(
            said.contains("may have been committed"),
            "{}: {said}",
            c.name
        );
        assert!(said.contains(c.check), "{}: {said}", c.name);
        assert!(
            !said.contains("NOT minted") && !said.contains("NOT committed"),
            "{said}"
        );
        assert_never_rolled_back(&c, &r);
        if !c.backfill {
            r.one_line_error("may have been committed");
        }
    }
}

/// `token revoke --created-by` commits, then reads its result back; when the read-back fails,
/// the error says the revocation was committed (exit 1), and stdout holds no JSON document.
#[test]
fn a_failed_read_back_after_a_bulk_revoke_says_it_was_committed() {
    let db = TestDb::sample();
    with_schema(&db);
    let proxy = CutProxy::start(Cut::BeforeStatement("by_this_run"));
    let r = Cmd::new(&[
        "-o",
        "json",
        "token",
        "revoke",
        "--created-by",
        "session",
        "--yes",
    ])
    .env("DATABASE_URL", &proxy.url(&db.name))
    .run();
    assert!(proxy.did_cut(), "{}", r.stderr);
    r.code(1).one_line_error("were revoked and committed");
    assert!(!r.stderr.contains("rolled back"), "{}", r.stderr);
    assert!(
        serde_json::from_str::<serde_json::Value>(&r.stdout).is_err(),
        "{}",
        r.stdout
    );
    assert_eq!(
        db.scalar("SELECT count(*) FROM org_api_tokens WHERE created_by = 'session' AND revoked_at IS NULL"),
        "0"
    );
}

/// On a tenant's first touch the lost transaction was also creating orgctl's schema: its absence
/// after reconnecting proves nothing was committed ("NOT committed", not "may have been").
#[test]
fn a_lost_first_touch_is_verified_as_not_committed() {
    for c in cases()
        .into_iter()
        .filter(|c| matches!(c.name, "install-platform-agent" | "backfill run"))
    {
        let db = TestDb::sample();
        let before = db.snapshot();
        let proxy = CutProxy::start(Cut::BeforeCommit);
        let r = run_through(&c, &db, &proxy);
        assert!(proxy.did_cut(), "{}: no COMMIT seen\n{}", c.name, r.stderr);
        assert_eq!(r.code, 1, "{}:\n{}\n{}", c.name, r.stdout, r.stderr);
        assert_eq!(db.snapshot(), before, "{}: something changed", c.name);
        assert_eq!(
            db.scalar("SELECT to_regclass('orgctl.audit_log') IS NULL"),
            "t"
        );
        let said = format!("{}\n{}", r.stdout, r.stderr);
        assert!(said.contains("NOT committed"), "{}: {said}", c.name);
        assert!(!said.contains("may have been committed"), "{said}");
        assert!(!said.contains("42P01"), "{said}");
    }
}

/// What a command commits after its change (here `secret set`'s restart outcome rows) is
/// resolved like the change itself when the COMMIT's answer is lost: the rows were written, and
/// orgctl says neither "rolled back" nor "could not be recorded".
#[test]
fn a_lost_commit_of_the_restart_records_is_resolved_not_called_rolled_back() {
    use crate::stand_in::{Reply, StandIn};
    let db = TestDb::sample();
    with_schema(&db);
    let platform = StandIn::start(Reply::Status(202));
    // The change, then the schema check before the outcome rows, then the rows themselves.
    let proxy = CutProxy::start(Cut::AfterNthCommit(3));
    let r = Cmd::new(&["secret", "set", ids::RESEARCH, "LOG_LEVEL", "--yes"])
        .env("DATABASE_URL", &proxy.url(&db.name))
        .env("MOLECULE_PLATFORM_URL", &platform.url())
        .env("MOLECULE_ADMIN_TOKEN", "t0k3n-for-the-test")
        .stdin(b"debug\n")
        .run();
    assert!(proxy.did_cut(), "no second COMMIT was cut:\n{}", r.stderr);
    assert!(!r.stderr.contains("rolled back"), "{}", r.stderr);
    assert!(!r.stderr.contains("could not be recorded"), "{}", r.stderr);
    assert!(!platform.calls().is_empty(), "no restart was dispatched");
    // The outcome rows are there, once.
    assert_eq!(
        db.scalar("SELECT count(*) FROM orgctl.audit_log WHERE command = 'restart'"),
        "1",
        "{}",
        db.exec("SELECT command, outcome FROM orgctl.audit_log ORDER BY id")
    );
}
