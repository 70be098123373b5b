//! Global behaviour (SPEC §3): connection errors, password masking, output streams.

use crate::harness::{server, urlencode, Cmd, TestDb, PASSWORD};

#[test]
fn bad_database_urls_are_usage_errors() {
    for url in [
        "not a url",
        "mysql://u:p@h/db",
        "postgres://u:hunter22@h:99999/db",
    ] {
        let r = Cmd::new(&["install-platform-agent", "--dry-run"])
            .env("DATABASE_URL", url)
            .run();
        r.code(2).one_line_error("invalid database URL");
        assert!(!r.stderr.contains("hunter22"), "{}", r.stderr);
    }
    let r = Cmd::new(&["install-platform-agent", "--dry-run"]).run();
    r.code(2).one_line_error("--database-url");
}

#[test]
fn unreachable_server_names_the_host_not_the_password() {
    // A port nothing listens on.
    let port = orgctl::pgserver::free_port().unwrap_or(1);
    let url = format!("postgres://alice:S3cretPw@127.0.0.1:{port}/tenant");
    let r = Cmd::new(&["install-platform-agent", "--dry-run"])
        .env("DATABASE_URL", &url)
        .run();
    r.code(1)
        .one_line_error(&format!("127.0.0.1:{port}/tenant"));
    assert!(!r.stderr.contains("S3cretPw"), "{}", r.stderr);
}

#[test]
fn wrong_password_and_unknown_database_fail_cleanly() {
    let s = server();
    let url = format!(
        "postgres://postgres:WrongPw99@127.0.0.1:{}/postgres",
        s.port
    );
    let r = Cmd::new(&["install-platform-agent", "--dry-run"])
        .env("DATABASE_URL", &url)
        .run();
    r.code(1).one_line_error("authentication failed");
    assert!(!r.stderr.contains("WrongPw99"));

    let url = format!(
        "postgres://postgres:{}@127.0.0.1:{}/no_such_db",
        urlencode(PASSWORD),
        s.port
    );
    let r = Cmd::new(&[
        "install-platform-agent",
        "--dry-run",
        "--database-url",
        &url,
    ])
    .run();
    r.code(1).one_line_error("does not exist");
    assert!(!r.stderr.contains(PASSWORD));
}

#[test]
fn password_never_appears_in_any_output() {
    let db = TestDb::sample();
    for args in [
        vec!["install-platform-agent", "--dry-run", "--model", "m"],
        vec![
            "install-platform-agent",
            "--dry-run",
            "--model",
            "m",
            "-v",
            "-o",
            "json",
        ],
        vec!["install-platform-agent", "--model", "m"],
    ] {
        let r = db.orgctl(&args).run();
        assert!(!r.stdout.contains(PASSWORD) && !r.stderr.contains(PASSWORD));
        assert!(
            !r.stdout.contains(&urlencode(PASSWORD)) && !r.stderr.contains(&urlencode(PASSWORD))
        );
    }
    // --help never shows DATABASE_URL's value.
    let r = db.orgctl(&["--help"]).run();
    r.code(0);
    assert!(!r.stdout.contains(PASSWORD) && !r.stdout.contains(&urlencode(PASSWORD)));
}

#[test]
fn json_output_is_one_document_and_messages_go_to_stderr() {
    let db = TestDb::sample();
    let r = db
        .orgctl(&[
            "install-platform-agent",
            "--dry-run",
            "--model",
            "m",
            "-o",
            "json",
        ])
        .run();
    r.code(0);
    r.json();
    // Flags work before the subcommand too.
    let r = db
        .orgctl(&[
            "-o",
            "json",
            "install-platform-agent",
            "--dry-run",
            "--model",
            "m",
        ])
        .run();
    r.code(0);
    r.json();
}

#[test]
fn application_name_is_orgctl() {
    let db = TestDb::sample();
    // Hold a lock so the install waits, and look at it from the outside meanwhile.
    let mut cmd = db
        .orgctl(&[
            "install-platform-agent",
            "--model",
            "m",
            "--yes",
            "--lock-timeout",
            "5s",
        ])
        .command();
    db.exec(""); // warm
    let lock = std::process::Command::new(server().bindir.join("psql"))
        .args([
            "-X",
            "-h",
            "127.0.0.1",
            "-p",
            &server().port.to_string(),
            "-U",
            "postgres",
            "-d",
            &db.name,
        ])
        .env("PGPASSWORD", PASSWORD)
        .arg("-c")
        .arg(format!(
            "SELECT pg_advisory_lock({}, {}); SELECT pg_sleep(2);",
            orgctl::db::TENANT_LOCK.0,
            orgctl::db::TENANT_LOCK.1
        ))
        .stdout(std::process::Stdio::null())
        .spawn();
    std::thread::sleep(std::time::Duration::from_millis(300));
    let child = cmd
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn();
    std::thread::sleep(std::time::Duration::from_millis(700));
    let seen = db.scalar(&format!(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = '{}' AND application_name = 'orgctl'",
        db.name
    ));
    if let Ok(mut c) = child {
        let _ = c.wait();
    }
    if let Ok(mut l) = lock {
        let _ = l.wait();
    }
    assert_ne!(seen, "0");
}

#[test]
fn unimplemented_help_and_version() {
    let r = Cmd::new(&["--version"]).run();
    r.code(0);
    assert!(r.stdout.starts_with("orgctl "));
    let r = Cmd::new(&["no-such-command"]).run();
    r.code(2);
    let r = Cmd::new(&["install-platform-agent", "--help"]).run();
    r.code(0);
    assert!(r.stdout.contains("Exit codes"));
}
