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
    // Each path the run takes is the one we meant (its exit code), so the absence of the
    // password is not the absence of any output: a dry run, a verbose JSON dry run, the
    // confirmation refusal, an apply, and a failure that names the database.
    for (args, code) in [
        (
            vec!["install-platform-agent", "--dry-run", "--model", "m"],
            0,
        ),
        (
            vec![
                "install-platform-agent",
                "--dry-run",
                "--model",
                "m",
                "-v",
                "-o",
                "json",
            ],
            0,
        ),
        (vec!["install-platform-agent", "--model", "m"], 3),
        (
            vec!["install-platform-agent", "--model", "m", "--yes", "-v"],
            0,
        ),
        // The sample keeps a live token on a child after the install: status exits 1.
        (vec!["status", "-v"], 1),
    ] {
        let r = db.orgctl(&args).run();
        r.code(code);
        assert!(!r.stdout.is_empty() || !r.stderr.is_empty(), "{args:?}");
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
    assert!(
        !r.stdout.contains("warning"),
        "a message on stdout: {}",
        r.stdout
    );
    // An apply with something to say: the plaintext-MODEL warning (no key) and -v progress go
    // to stderr, and stdout is still exactly the one JSON document.
    let r = db
        .orgctl(&[
            "install-platform-agent",
            "--model",
            "m",
            "--yes",
            "-v",
            "-o",
            "json",
        ])
        .run();
    r.code(0);
    let doc = r.json();
    assert_eq!(doc["model_secret"], "seeded", "{doc}");
    assert!(
        r.stderr.contains("warning:") && r.stderr.contains("stored in plaintext"),
        "the plaintext warning is not on stderr: {}",
        r.stderr
    );
    assert!(
        !r.stdout.contains("warning") && !r.stdout.contains("plaintext"),
        "a message on stdout: {}",
        r.stdout
    );
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
    let doc = r.json();
    assert_eq!(doc["changed"], false, "{doc}");
    assert!(
        r.stderr.is_empty() || !r.stderr.contains('{'),
        "{}",
        r.stderr
    );
}

/// orgctl's sessions carry `application_name = orgctl`. Synchronised on what the server shows,
/// not on sleeps: a session of ours holds the tenant lock, orgctl is started, and
/// `pg_stat_activity` is polled (with a deadline) until orgctl's backend waits on that lock.
#[tokio::test]
async fn application_name_is_orgctl() {
    let db = TestDb::sample();
    let mut holder = db.connect().await;
    if let Err(e) = sqlx::query("SELECT pg_advisory_lock($1, $2)")
        .bind(orgctl::db::TENANT_LOCK.0)
        .bind(orgctl::db::TENANT_LOCK.1)
        .execute(&mut holder)
        .await
    {
        panic!("{e}");
    }
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
    let mut admin = db.connect().await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let seen = loop {
        let row: Option<(String, String)> = match sqlx::query_as(
            "SELECT application_name, wait_event FROM pg_stat_activity
              WHERE datname = $1 AND wait_event_type = 'Lock' AND wait_event = 'advisory'",
        )
        .bind(&db.name)
        .fetch_optional(&mut admin)
        .await
        {
            Ok(r) => r,
            Err(e) => panic!("{e}"),
        };
        if let Some(r) = row {
            break r;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no session ever waited on the tenant lock"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    assert_eq!(seen.0, "orgctl", "the waiting session's application_name");
    drop(holder);
    match run.await {
        Ok(r) => {
            r.code(0);
        }
        Err(e) => panic!("{e}"),
    }
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
