//! Read-only roles and read-only servers (issue 15 item 6): a role without USAGE on schema
//! orgctl can run `status` and every dry run (orgctl's own state reported as not readable);
//! a read-only server is named as such, exit 1, not a CREATE SCHEMA hint.

use crate::harness::{ids, server, urlencode, Cmd, TestDb, PASSWORD};

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
