//! Global behaviour: connection errors, password masking, output streams.

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
    let port = orgctl::testing::pgserver::free_port().unwrap_or(1);
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
        .bind(orgctl::testing::db::TENANT_LOCK.0)
        .bind(orgctl::testing::db::TENANT_LOCK.1)
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

/// Messages that pointed the wrong way.
#[tokio::test]
async fn messages_point_the_right_way() {
    // A database with none of the platform's tables is not "an old tenant to upgrade".
    let not_tenant = server().url("postgres");
    let r = Cmd::new(&["status"]).env("DATABASE_URL", &not_tenant).run();
    r.code(3).one_line_error("it is not a tenant database");
    assert!(!r.stderr.contains("upgrade"), "{}", r.stderr);

    // TLS asked of a server without it: not "is the server running and reachable?".
    let tls = format!("{}?sslmode=require", server().url("postgres"));
    let r = Cmd::new(&["status"]).env("DATABASE_URL", &tls).run();
    r.code(1).one_line_error("asks for TLS");
    assert!(!r.stderr.contains("reachable"), "{}", r.stderr);

    // The tenant lock held by psql (not orgctl) is named for what it is.
    let db = TestDb::sample();
    let mut psql = db.connect().await;
    for q in [
        "SET application_name = 'psql'",
        "SELECT pg_advisory_lock(1869768547, 1)",
    ] {
        if let Err(e) = sqlx::query(q).execute(&mut psql).await {
            panic!("{e}");
        }
    }
    assert_eq!(orgctl::testing::db::TENANT_LOCK, (1_869_768_547, 1));
    let r = db
        .orgctl(&[
            "install-platform-agent",
            "--model",
            "m",
            "--yes",
            "--lock-timeout",
            "200ms",
        ])
        .run_async()
        .await;
    r.code(3)
        .one_line_error("a session that is not orgctl holds this tenant's lock");
    assert!(r.stderr.contains("application 'psql'"), "{}", r.stderr);
    assert!(!r.stderr.contains("another orgctl"), "{}", r.stderr);
    drop(psql);

    // A dry run that could not plan a tenant never says anything was rolled back.
    let gone = format!(
        "postgres://postgres:{}@127.0.0.1:{}/nowhere",
        urlencode(PASSWORD),
        orgctl::testing::pgserver::free_port().unwrap_or(1)
    );
    let path = std::env::temp_dir().join(format!("orgctl-msg-{}.txt", std::process::id()));
    std::fs::write(&path, format!("gone {gone}\n")).ok();
    let p = path.to_string_lossy().to_string();
    let r = Cmd::new(&["backfill", "run", "--dry-run", "--tenants", &p]).run();
    r.code(1).one_line_error("dry run: nothing was changed");
    assert!(!r.stderr.contains("rolled back"), "{}", r.stderr);
    let r = Cmd::new(&[
        "backfill",
        "rollback",
        "--dry-run",
        "--run-id",
        "bf-x",
        "--tenants",
        &p,
    ])
    .run();
    r.code(1).one_line_error("dry run: nothing was changed");
    assert!(!r.stderr.contains("rolled back"), "{}", r.stderr);
    let _ = std::fs::remove_file(&path);
}

/// -v says where and how long and how many statements; -vv each statement
/// (never a bound value); CI never prompts, even on a terminal; libpq variables are honoured.
#[test]
fn verbose_ci_and_libpq_variables() {
    let db = TestDb::sample();
    let v = db.orgctl(&["-v", "token", "list", "--limit", "1"]).run();
    v.code(0);
    assert!(
        v.stderr.contains("token list on 127.0.0.1:"),
        "{}",
        v.stderr
    );
    assert!(v.stderr.contains("SQL statement(s)"), "{}", v.stderr);
    assert!(!v.stderr.contains("sql: "), "{}", v.stderr);
    let vv = db
        .orgctl(&[
            "-vv",
            "secret",
            "set",
            "--global",
            "LOG_LEVEL",
            "--yes",
            "--no-restart",
        ])
        .stdin(b"very-secret-value-42")
        .run();
    vv.code(0);
    assert!(vv.stderr.contains("sql: "), "{}", vv.stderr);
    assert!(vv.stderr.contains("rows "), "{}", vv.stderr);
    assert!(!vv.stderr.contains("very-secret-value-42"), "{}", vv.stderr);
    assert!(!vv.stderr.contains(PASSWORD), "{}", vv.stderr);
    let q = db.orgctl(&["-q", "token", "list", "--limit", "1"]).run();
    assert!(q.stderr.is_empty(), "{}", q.stderr);

    // CI set: a terminal is attached, but orgctl refuses instead of prompting.
    let before = db.snapshot();
    let ci = db
        .orgctl(&["token", "revoke", "--created-by", "session"])
        .env("CI", "true")
        .run_in_pty("y");
    ci.code(3);
    assert!(ci.stdout.contains("CI is set"), "{}", ci.stdout);
    assert!(!ci.stdout.contains("[y/N]"), "{}", ci.stdout);
    assert_eq!(db.snapshot(), before);
    // CI=false is not CI.
    let not_ci = db
        .orgctl(&["token", "revoke", "--created-by", "session"])
        .env("CI", "false")
        .run_in_pty("n");
    assert!(not_ci.stdout.contains("[y/N]"), "{}", not_ci.stdout);

    // PGPASSWORD (and PGHOST, PGPORT, PGUSER, PGDATABASE) fill what the URL leaves out.
    let Some((_, rest)) = db.url.split_once('@') else {
        panic!("{}", db.url)
    };
    let (hostport, dbname) = rest.split_once('/').unwrap_or((rest, ""));
    let (host, port) = hostport.split_once(':').unwrap_or((hostport, "5432"));
    let r = Cmd::new(&["token", "list", "--limit", "1"])
        .env(
            "DATABASE_URL",
            &format!("postgres://postgres@{hostport}/{dbname}"),
        )
        .env("PGPASSWORD", PASSWORD)
        .run();
    r.code(0);
    let r = Cmd::new(&["token", "list", "--limit", "1"])
        .env("DATABASE_URL", "postgres://")
        .env("PGHOST", host)
        .env("PGPORT", port)
        .env("PGUSER", "postgres")
        .env("PGDATABASE", dbname)
        .env("PGPASSWORD", PASSWORD)
        .run();
    r.code(0);
    assert!(r.stdout.contains("sampl008"), "{}", r.stdout);
}

/// Help a new operator can scan: the global options under their own heading, exit code 4 only
/// on the commands that accept --detailed-exitcode, examples for status and backfill status;
/// and backfill refuses a typed --database-url instead of silently ignoring it.
#[test]
fn help_is_scannable_and_backfill_refuses_database_url() {
    let help = |args: &[&str]| {
        let r = Cmd::new(args).run();
        r.code(0);
        r.stdout
    };
    let seed = help(&["dev", "seed", "-h"]);
    let (own, global) = match seed.split_once("Global options:") {
        Some(p) => p,
        None => panic!("no Global options heading:\n{seed}"),
    };
    assert!(
        own.contains("--roots") && !own.contains("--database-url"),
        "{seed}"
    );
    assert!(
        global.contains("--database-url") && global.contains("--lock-timeout"),
        "{seed}"
    );
    let four = "  4    ";
    for args in [
        &["install-platform-agent", "--help"][..],
        &["backfill", "run", "--help"],
    ] {
        assert!(help(args).contains(four), "{args:?}");
    }
    for args in [
        &["status", "--help"][..],
        &["token", "mint", "--help"],
        &["backfill", "status", "--help"],
        &["backfill", "rollback", "--help"],
    ] {
        assert!(!help(args).contains(four), "{args:?}");
    }
    for args in [&["status", "--help"][..], &["backfill", "status", "--help"]] {
        assert!(help(args).contains("Examples:"), "{args:?}");
    }
    // A typed --database-url (either side of the subcommand) is refused; DATABASE_URL in the
    // environment is not (it is the usual shell setting), and reading the tenants goes on.
    let db = TestDb::empty();
    let tenants = crate::harness::tenants_file("dburl", &format!("t1 {}\n", db.url));
    let t = tenants.to_string_lossy().to_string();
    let before = db.snapshot();
    for args in [
        &[
            "backfill",
            "status",
            "--run-id",
            "x",
            "--tenants",
            &t,
            "--database-url",
            &db.url,
        ][..],
        &[
            "--database-url",
            &db.url,
            "backfill",
            "run",
            "--tenants",
            &t,
            "--yes",
        ],
    ] {
        Cmd::new(args)
            .run()
            .code(2)
            .one_line_error("backfill takes its databases from the tenants file");
    }
    assert_eq!(db.snapshot(), before, "nothing touched");
    let r = Cmd::new(&["backfill", "status", "--run-id", "x", "--tenants", &t])
        .env("DATABASE_URL", &db.url)
        .run();
    r.code(1).one_line_error("no selected tenant");
    let _ = std::fs::remove_file(&tenants);
}
