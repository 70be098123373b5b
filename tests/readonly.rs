//! Read-only roles and read-only servers: a role without USAGE on schema
//! orgctl can run `status` and every dry run (orgctl's own state reported as not readable);
//! a read-only server is named as such, exit 1, not a CREATE SCHEMA hint.

use crate::harness::{hold, ids, orgctl_waiting, server, urlencode, Cmd, TestDb, PASSWORD};

/// A login role that can read the platform tables but not orgctl's schema.
fn read_only_role(db: &TestDb) -> String {
    let role = format!("ro_{}", db.name);
    db.exec(&format!(
        "DROP ROLE IF EXISTS {role};
         CREATE ROLE {role} LOGIN PASSWORD '{PASSWORD}';
         GRANT CONNECT ON DATABASE {db} TO {role};
         GRANT USAGE ON SCHEMA public TO {role};
         GRANT SELECT ON ALL TABLES IN SCHEMA public TO {role};",
        db = db.name
    ));
    format!(
        "postgres://{role}:{}@127.0.0.1:{}/{}",
        urlencode(PASSWORD),
        server().port,
        db.name
    )
}

#[test]
fn a_role_without_usage_on_orgctl_can_run_status_and_dry_runs() {
    let db = TestDb::sample();
    // Another role (the superuser) installs: orgctl's schema now exists, with former roots.
    db.orgctl(&["install-platform-agent", "--model", "m", "--yes"])
        .run()
        .code(0);
    let url = read_only_role(&db);
    let ro = |args: &[&str]| Cmd::new(args).env("DATABASE_URL", &url).run();

    let r = ro(&["-o", "json", "status"]);
    assert!(r.code == 0 || r.code == 1, "{}", r.stderr);
    assert!(!r.stderr.contains("permission denied"), "{}", r.stderr);
    let j = r.json();
    assert_eq!(j["orgctl_schema"], true);
    assert_eq!(j["orgctl_readable"], false, "{}", r.stdout);
    assert!(
        r.stderr.contains("not readable by this role"),
        "{}",
        r.stderr
    );

    let r = ro(&["-o", "json", "install-platform-agent", "--dry-run"]);
    r.code(0);
    assert_eq!(r.json()["changed"], false, "{}", r.stdout);

    let fleet = std::env::temp_dir().join(format!("orgctl-ro-{}.txt", db.name));
    if let Err(e) = std::fs::write(&fleet, format!("acme {url}\n")) {
        panic!("{e}");
    }
    let f = fleet.to_str().unwrap_or_default();
    let r = Cmd::new(&["backfill", "run", "--dry-run", "--tenants", f]).run();
    r.code(0);
    assert!(!r.stdout.contains("permission denied"), "{}", r.stdout);
    let _ = std::fs::remove_file(&fleet);

    let r = ro(&["token", "list"]);
    r.code(0);

    // The audit log it cannot read: one clear line naming the grants, never "permission
    // denied for schema orgctl", for the list and for verify.
    for args in [&["audit"][..], &["audit", "verify"][..]] {
        let r = ro(args);
        r.code(3)
            .one_line_error("cannot read it: GRANT USAGE ON SCHEMA orgctl");
        assert!(!r.stderr.contains("permission denied"), "{}", r.stderr);
    }

    // A write by that role: refused with what to grant, nothing changed.
    let before = db.snapshot();
    let r = ro(&["token", "revoke", "--yes", "--", "sampl001"]);
    r.code(3).one_line_error("may not use orgctl's own schema");
    assert_eq!(db.snapshot(), before);
}

#[test]
fn a_read_only_server_is_named_exit_1() {
    for with_schema in [false, true] {
        let db = TestDb::sample();
        if with_schema {
            db.orgctl(&["token", "revoke", "--yes", "--", "sampl005"])
                .run()
                .code(0);
        }
        db.exec(&format!(
            "ALTER DATABASE {} SET default_transaction_read_only = on",
            db.name
        ));
        let before = db.snapshot();
        let r = db
            .orgctl(&["install-platform-agent", "--model", "m", "--yes"])
            .run();
        r.code(1).one_line_error("read-only");
        assert!(!r.stderr.contains("ask a DBA"), "{}", r.stderr);
        let r = db.orgctl(&["token", "mint", "--org", ids::HQ]).run();
        r.code(1).one_line_error("read-only");
        assert!(r.stdout.is_empty(), "a token was printed: {}", r.stdout);
        assert_eq!(db.snapshot(), before);
        // Reading still works.
        let r = db.orgctl(&["status"]).run();
        assert!(r.code == 0 || r.code == 1, "{}", r.stderr);
    }
}

/// The tenant lock held while orgctl starts: orgctl waits for it, and what the holder did
/// meanwhile is what orgctl sees once it has the lock — its checks are read again after the
/// wait. Here the holder (another role) creates orgctl's schema, which orgctl's role may not
/// use: the refusal says so ("may not use orgctl's own schema"), not the CREATE SCHEMA hint of
/// a schema still thought absent. Nothing changes.
#[tokio::test]
async fn what_the_lock_holder_did_is_seen_after_the_wait() {
    let db = TestDb::sample();
    assert!(db.snapshot().contains("== orgctl\nabsent"));
    let url = read_only_role(&db);
    let mut holder = hold(
        &db,
        &[
            "SELECT pg_advisory_xact_lock(1869768547, 1)",
            "CREATE SCHEMA orgctl",
            "CREATE TABLE orgctl._sqlx_migrations (version BIGINT PRIMARY KEY)",
        ],
    )
    .await;
    let run = tokio::spawn(
        Cmd::new(&[
            "install-platform-agent",
            "--model",
            "m",
            "--yes",
            "--lock-timeout",
            "30s",
        ])
        .env("DATABASE_URL", &url)
        .run_async(),
    );
    orgctl_waiting(&mut db.connect().await, &db.name).await;
    if let Err(e) = sqlx::query("COMMIT").execute(&mut holder).await {
        panic!("{e}");
    }
    let before = db.snapshot();
    let r = match run.await {
        Ok(r) => r,
        Err(e) => panic!("{e}"),
    };
    r.code(3).one_line_error("may not use orgctl's own schema");
    assert_eq!(db.snapshot(), before);
}

/// A tenant whose database has no PL/pgSQL (a DBA dropped the language): every change is
/// plain SQL, so install, the backfill and a wait for the tenant lock work there.
#[tokio::test]
async fn a_database_without_plpgsql_is_changed_as_any_other() {
    let db = TestDb::sample();
    db.exec("DROP EXTENSION plpgsql");
    assert_eq!(
        db.scalar("SELECT count(*) FROM pg_language WHERE lanname = 'plpgsql'"),
        "0"
    );
    // The tenant lock held for a moment: orgctl waits for it, then installs.
    let holder = hold(&db, &["SELECT pg_advisory_xact_lock(1869768547, 1)"]).await;
    let run = tokio::spawn(
        db.orgctl(&[
            "install-platform-agent",
            "--model",
            "m",
            "--yes",
            "--lock-timeout",
            "30s",
        ])
        .run_async(),
    );
    orgctl_waiting(&mut db.connect().await, &db.name).await;
    drop(holder);
    let r = match run.await {
        Ok(r) => r,
        Err(e) => panic!("{e}"),
    };
    r.code(0);
    assert_eq!(
        db.scalar("SELECT count(*) FROM workspaces WHERE parent_id IS NULL"),
        "1"
    );
    // And a fleet tenant without it, on its first touch.
    let fresh = TestDb::sample();
    fresh.exec("DROP EXTENSION plpgsql");
    let tenants = crate::harness::tenants_file(
        &format!("noplpgsql-{}", fresh.name),
        &format!("acme {}\n", fresh.url),
    );
    let path = tenants.to_str().unwrap_or_default();
    Cmd::new(&[
        "backfill",
        "run",
        "--tenants",
        path,
        "--model",
        "m",
        "--yes",
        "-q",
    ])
    .run_async()
    .await
    .code(0);
    assert_eq!(
        fresh.scalar("SELECT count(*) FROM workspaces WHERE parent_id IS NULL"),
        "1"
    );
    let _ = std::fs::remove_file(&tenants);
}

/// A role that may use orgctl's schema but not write the platform's tables: a refusal (exit 3)
/// naming the table and the grant, not "database error 42501"; nothing changed.
#[test]
fn a_role_without_write_grants_is_refused_naming_the_grant() {
    let db = TestDb::sample();
    // orgctl's schema exists (created by the superuser) and the role may use all of it.
    db.orgctl(&["token", "mint", "--name", "setup", "--org", ids::LEGACY])
        .run()
        .code(0);
    let url = read_only_role(&db);
    let role = format!("ro_{}", db.name);
    db.exec(&format!(
        "GRANT USAGE, CREATE ON SCHEMA orgctl TO {role};
         GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA orgctl TO {role};
         GRANT USAGE ON ALL SEQUENCES IN SCHEMA orgctl TO {role};"
    ));
    let before = db.snapshot();
    let r = Cmd::new(&["install-platform-agent", "--model", "m", "--yes"])
        .env("DATABASE_URL", &url)
        .run();
    r.code(3)
        .one_line_error("GRANT SELECT, INSERT, UPDATE, DELETE ON");
    assert!(!r.stderr.contains("database error 42501"), "{}", r.stderr);
    assert_eq!(db.snapshot(), before);
}
