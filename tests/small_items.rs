//! Small items, each from the built binary where it is about the
//! binary: a TEXT status column's values sanitised, `secret set --dry-run` never reading stdin,
//! duplicate databases and a BOM in a tenants file, a revoke that revoked nothing writing no
//! audit row, the prior MODEL value dropped by rollback, a dry run refused for several agents
//! (no plan, as the README says), and configuration errors with one prefix.

use std::io::Read;
use std::process::Stdio;
use std::time::{Duration, Instant};

use sqlx::Connection;

use crate::harness::{ids, tenants_file, Cmd, TestDb};

#[test]
fn a_text_status_column_is_printed_sanitised() {
    let db = TestDb::sample_text_status();
    db.exec(
        "UPDATE workspaces SET status = E'on\\x1b[2J\\x1b]0;pwned\\x07line' WHERE id = 'b0000000-0000-4000-8000-000000000001';",
    );
    for args in [
        &["status"][..],
        &["install-platform-agent", "--dry-run", "--model", "m"][..],
    ] {
        let r = db.orgctl(args).run();
        assert!(r.code == 0 || r.code == 1, "{args:?}: {}", r.stderr);
        assert!(
            r.stdout.contains("on [2J ]0;pwned line"),
            "{args:?}: {}",
            r.stdout
        );
        for text in [&r.stdout, &r.stderr] {
            assert!(
                !text.contains('\x1b') && !text.contains('\x07'),
                "{args:?}: a control character reached the terminal: {text:?}"
            );
        }
    }
}

#[test]
fn secret_set_dry_run_never_reads_stdin() {
    let db = TestDb::sample();
    let mut c = db
        .orgctl(&["secret", "set", ids::HQ, "NEWKEY", "--dry-run"])
        .command();
    c.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = match c.spawn() {
        Ok(c) => c,
        Err(e) => panic!("{e}"),
    };
    // stdin stays open and empty: a dry run that reads it never ends.
    let _stdin = child.stdin.take();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break s,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            _ => {
                let _ = child.kill();
                panic!("secret set --dry-run blocked on an open stdin");
            }
        }
    };
    let mut out = String::new();
    if let Some(mut o) = child.stdout.take() {
        let _ = o.read_to_string(&mut out);
    }
    assert_eq!(status.code(), Some(0), "{out}");
    assert!(out.contains("would be created"), "{out}");
}

#[test]
fn a_tenants_file_with_one_database_twice_is_refused_naming_both_lines() {
    let db = TestDb::sample();
    let f = tenants_file(
        "dup",
        &format!(
            "acme {}\n# same database, other name\nglobex {}\n",
            db.url, db.url
        ),
    );
    let before = db.snapshot();
    let r = Cmd::new(&[
        "backfill",
        "run",
        "--yes",
        "--model",
        "m",
        "--tenants",
        f.to_str().unwrap_or_default(),
    ])
    .run();
    r.code(2).one_line_error("line 3");
    assert!(r.stderr.contains("'acme' on line 1"), "{}", r.stderr);
    assert!(!r.stderr.contains(crate::harness::PASSWORD), "{}", r.stderr);
    assert_eq!(db.snapshot(), before);
    let _ = std::fs::remove_file(&f);

    // A byte order mark (a file saved by a Windows editor) is not part of the first name.
    let f = tenants_file("bom", &format!("\u{FEFF}acme {}\n", db.url));
    let r = Cmd::new(&[
        "backfill",
        "run",
        "--dry-run",
        "--model",
        "m",
        "--tenants",
        f.to_str().unwrap_or_default(),
    ])
    .run();
    r.code(0);
    assert!(r.stdout.contains("acme"), "{}", r.stdout);
    let _ = std::fs::remove_file(&f);
}

#[tokio::test]
async fn a_revoke_that_revoked_nothing_writes_no_audit_row() {
    let db = TestDb::sample();
    // orgctl's schema first, so the audit table exists and the count is meaningful.
    db.orgctl(&["token", "revoke", "--yes", "--", "sampl002"])
        .run()
        .code(0);
    let audited = db.audit_rows();
    // Hold the tenant lock while orgctl plans (it sees live tokens) and waits for the lock;
    // revoke them meanwhile, then let it go.
    let mut holder = db.connect().await;
    let mut tx = match holder.begin().await {
        Ok(t) => t,
        Err(e) => panic!("{e}"),
    };
    if let Err(e) = sqlx::query("SELECT pg_advisory_xact_lock(1869768547, 1)")
        .execute(&mut *tx)
        .await
    {
        panic!("{e}");
    }
    let run = db
        .orgctl(&[
            "--lock-timeout",
            "30s",
            "token",
            "revoke",
            "--created-by",
            "session",
            "--yes",
        ])
        .run_async();
    let waiter = tokio::spawn(run);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let waiting = db.scalar(
            "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
              WHERE a.application_name = 'orgctl' AND l.locktype = 'advisory' AND NOT l.granted",
        );
        if waiting == "1" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "orgctl never waited for the lock"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if let Err(e) = sqlx::query(
        "UPDATE org_api_tokens SET revoked_at = now() WHERE created_by = 'session' AND revoked_at IS NULL",
    )
    .execute(&mut *tx)
    .await
    {
        panic!("{e}");
    }
    if let Err(e) = tx.commit().await {
        panic!("{e}");
    }
    let r = match waiter.await {
        Ok(r) => r,
        Err(e) => panic!("{e}"),
    };
    r.code(0);
    assert!(r.stderr.contains("revoked concurrently"), "{}", r.stderr);
    assert_eq!(db.audit_rows(), audited, "a revoke of nothing was audited");
}

#[test]
fn rollback_drops_the_prior_model_value_it_kept() {
    let db = TestDb::sample();
    db.orgctl(&["install-platform-agent", "--model", "old-model", "--yes"])
        .run()
        .code(0);
    let f = tenants_file("model", &format!("acme {}\n", db.url));
    let t = f.to_str().unwrap_or_default();
    Cmd::new(&[
        "backfill",
        "run",
        "--run-id",
        "m1",
        "--model",
        "new-model",
        "--replace-model",
        "--yes",
        "--tenants",
        t,
    ])
    .run()
    .code(0);
    assert_eq!(
        db.scalar("SELECT model_prior IS NOT NULL FROM orgctl.backfill_runs WHERE run_id = 'm1'"),
        "t"
    );
    Cmd::new(&[
        "backfill",
        "rollback",
        "--run-id",
        "m1",
        "--yes",
        "--tenants",
        t,
    ])
    .run()
    .code(0);
    assert_eq!(
        db.scalar("SELECT model_prior IS NULL FROM orgctl.backfill_runs WHERE run_id = 'm1'"),
        "t"
    );
    assert_eq!(
        db.scalar("SELECT convert_from(encrypted_value, 'UTF8') FROM workspace_secrets WHERE key = 'MODEL'"),
        "old-model"
    );
    let _ = std::fs::remove_file(&f);
}

/// The README's rule: a dry run that apply would refuse prints its plan and exits 3 — except
/// with several agents, where there is no plan to print (which agent?): exit 3 naming them,
/// and nothing on stdout, not even in JSON mode.
#[test]
fn a_dry_run_refused_for_several_agents_names_them_and_prints_no_plan() {
    let db = TestDb::sample().before_platform_constraints();
    db.exec(&format!(
        "UPDATE workspaces SET kind = 'platform' WHERE id IN ('{}', '{}')",
        ids::HQ,
        ids::LABS
    ));
    let r = db
        .orgctl(&["install-platform-agent", "--dry-run", "--model", "m"])
        .run();
    r.code(3).one_line_error(ids::LABS);
    assert!(r.stderr.contains(ids::HQ), "{}", r.stderr);
    assert!(r.stdout.is_empty(), "{}", r.stdout);
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
    r.code(3);
    assert!(r.stdout.is_empty(), "{}", r.stdout);
    // A refusal that has a plan (missing MODEL) does print it.
    let db = TestDb::sample();
    let r = db
        .orgctl(&["-o", "json", "install-platform-agent", "--dry-run"])
        .run();
    r.code(3);
    assert_eq!(r.json()["model_secret"], "missing", "{}", r.stdout);
}

#[test]
fn a_configuration_error_is_prefixed_once() {
    let r = Cmd::new(&["status"])
        .env(
            "DATABASE_URL",
            "postgres://u:p4ssw0rd@127.0.0.1:1/db?sslmode=bogus",
        )
        .run();
    r.code(2).one_line_error("bogus");
    assert_eq!(
        r.stderr.matches("error with configuration").count(),
        0,
        "{}",
        r.stderr
    );
}

#[test]
fn a_jsonl_report_is_created_0600_and_never_through_a_symbolic_link() {
    // The `--report` rule, for the JSON Lines report too: a link at the
    // path is refused before any tenant starts (nothing changed, the link's target untouched),
    // and a new report is readable by its owner only.
    use std::os::unix::fs::PermissionsExt;
    let db = TestDb::sample();
    let t = tenants_file("jsonl-link", &format!("acme {}\n", db.url));
    let dir = std::env::temp_dir().join(format!("orgctl-jsonl-{}", db.name));
    let _ = std::fs::remove_dir_all(&dir);
    if let Err(e) = std::fs::create_dir_all(&dir) {
        panic!("{e}");
    }
    let victim = dir.join("victim.txt");
    let link = dir.join("report.jsonl");
    if let Err(e) = std::fs::write(&victim, "keep me\n") {
        panic!("{e}");
    }
    if let Err(e) = std::os::unix::fs::symlink(&victim, &link) {
        panic!("{e}");
    }
    let before = db.snapshot();
    let run = |report: &std::path::Path| {
        Cmd::new(&[
            "backfill",
            "run",
            "--tenants",
            t.to_str().unwrap_or_default(),
            "--model",
            "m",
            "--yes",
            "--report",
            report.to_str().unwrap_or_default(),
        ])
        .run()
    };
    let r = run(&link);
    r.code(1).one_line_error("symbolic link");
    assert_eq!(
        std::fs::read_to_string(&victim).ok().as_deref(),
        Some("keep me\n")
    );
    assert_eq!(db.snapshot(), before, "nothing changed");

    let fresh = dir.join("fresh.jsonl");
    run(&fresh).code(0);
    let mode = std::fs::metadata(&fresh).map(|m| m.permissions().mode() & 0o777);
    assert_eq!(mode.ok(), Some(0o600));
    let text = std::fs::read_to_string(&fresh).unwrap_or_default();
    assert!(text.contains("\"kind\":\"summary\""), "{text}");
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_file(&t);
}

/// The tenants file is read with a bound and can be interrupted: `/dev/zero` is a clear
/// refusal (exit 2) after 16 MiB, not gigabytes of memory; a pipe that never closes gives way
/// to SIGTERM and to Ctrl-C (exit 130).
#[test]
fn the_tenants_file_is_bounded_and_its_read_interruptible() {
    let started = Instant::now();
    let r = Cmd::new(&["backfill", "run", "--dry-run", "--tenants", "/dev/zero"]).run();
    r.code(2).one_line_error("larger than 16 MiB");
    assert!(started.elapsed() < Duration::from_secs(20));

    for signal in [libc::SIGTERM, libc::SIGINT] {
        let mut child = match std::process::Command::new(env!("CARGO_BIN_EXE_orgctl"))
            .args(["backfill", "status", "--run-id", "r1", "--tenants", "-"])
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
        {
            Ok(c) => c,
            Err(e) => panic!("{e}"),
        };
        // Something arrives, then the writer goes quiet without closing the pipe.
        let mut stdin = child.stdin.take();
        if let Some(w) = stdin.as_mut() {
            use std::io::Write;
            let _ = w.write_all(b"acme postgres://u@127.0.0.1:1/db\n");
            let _ = w.flush();
        }
        std::thread::sleep(Duration::from_millis(500));
        orgctl::testing::sys::kill(child.id() as i32, signal);
        let deadline = Instant::now() + Duration::from_secs(10);
        let status = loop {
            match child.try_wait() {
                Ok(Some(s)) => break s,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50))
                }
                Ok(None) => {
                    let _ = child.kill();
                    panic!("signal {signal}: orgctl kept reading the open pipe");
                }
                Err(e) => panic!("{e}"),
            }
        };
        drop(stdin);
        assert_eq!(status.code(), Some(130), "signal {signal}");
    }
}

/// Input bounds: a secret key is at most 256 characters and a longer one is never echoed; a
/// value of exactly 1 MiB is accepted with its trailing newline (the size is checked after the
/// newline is stripped) and one byte more is refused; `--model` refuses control characters and
/// overlong values as `--name` does. Every refusal is exit 2 and changes nothing.
#[test]
fn secret_keys_values_and_models_are_bounded() {
    let db = TestDb::sample();
    let before = db.snapshot();
    let long_key = "K".repeat(257);
    let r = db
        .orgctl(&["secret", "set", "--global", &long_key])
        .stdin(b"v\n")
        .run();
    r.code(2).one_line_error("longer than 256 characters");
    assert!(!r.stderr.contains(&"K".repeat(40)), "{}", r.stderr);
    let mut big = vec![b'x'; 1 << 20];
    big.push(b'x');
    let r = db
        .orgctl(&["secret", "set", "--global", "BIG"])
        .stdin(&big)
        .run();
    r.code(2).one_line_error("larger than 1024 KiB");
    for model in ["m\u{1b}[2J", "m\nx", &"m".repeat(201)] {
        let r = db
            .orgctl(&["install-platform-agent", "--model", model, "--yes"])
            .run();
        r.code(2).one_line_error("--model");
    }
    assert_eq!(db.snapshot(), before);

    let key = "K".repeat(256);
    db.orgctl(&["secret", "set", "--global", &key, "--yes"])
        .stdin(b"v\n")
        .run()
        .code(0);
    let mut exact = vec![b'y'; 1 << 20];
    exact.push(b'\n');
    db.orgctl(&["secret", "set", "--global", "EXACT", "--yes"])
        .stdin(&exact)
        .run()
        .code(0);
    assert_eq!(
        db.scalar("SELECT length(encrypted_value) FROM global_secrets WHERE key = 'EXACT'"),
        (1 << 20).to_string()
    );
}

/// Every write of a secret value passes the same key guard: with a key that opens none of the
/// tenant's encrypted values (the old key after a rotation), install's and backfill's `--model`
/// are refused (exit 3), nothing changed, as `secret set` is; and `status` says when the
/// agent's MODEL does not decrypt with the key given, not only that a row exists.
#[test]
fn model_is_never_written_under_a_key_the_tenant_cannot_read() {
    const KEY_A: &str = "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=";
    const KEY_B: &str = "AgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgI=";
    let db = TestDb::sample();
    // The tenant's values are encrypted under A.
    db.orgctl(&["secret", "set", "--global", "REGION", "--yes"])
        .env("SECRETS_ENCRYPTION_KEY", KEY_A)
        .stdin(b"eu\n")
        .run()
        .code(0);
    let before = db.snapshot();
    let r = db
        .orgctl(&["install-platform-agent", "--model", "m", "--yes"])
        .env("SECRETS_ENCRYPTION_KEY", KEY_B)
        .run();
    r.code(3)
        .one_line_error("decrypts none of the tenant's existing encrypted");
    assert_eq!(db.snapshot(), before);
    let fleet = tenants_file("wrongkey", &format!("acme {}\n", db.url));
    let fleet = fleet.to_string_lossy().to_string();
    let r = Cmd::new(&[
        "backfill",
        "run",
        "--model",
        "m",
        "--yes",
        "--tenants",
        &fleet,
        "-o",
        "json",
    ])
    .env("SECRETS_ENCRYPTION_KEY", KEY_B)
    .run();
    r.code(1);
    assert!(r.stdout.contains("decrypts none"), "{}", r.stdout);
    assert_eq!(
        db.scalar("SELECT count(*) FROM workspaces WHERE kind = 'platform'"),
        "0"
    );

    // With the tenant's key the install goes through; status then checks MODEL decrypts.
    db.orgctl(&["install-platform-agent", "--model", "m", "--yes"])
        .env("SECRETS_ENCRYPTION_KEY", KEY_A)
        .run()
        .code(0);
    let model_check = |key: &str| {
        let r = db
            .orgctl(&["status", "-o", "json"])
            .env("SECRETS_ENCRYPTION_KEY", key)
            .run();
        let j = r.json();
        let checks = j["checks"].as_array().cloned().unwrap_or_default();
        match checks.into_iter().find(|c| c["name"] == "model_secret") {
            Some(c) => c,
            None => panic!("no model_secret check: {}", r.stdout),
        }
    };
    let good = model_check(KEY_A);
    assert_eq!(good["ok"], true, "{good}");
    let bad = model_check(KEY_B);
    assert_eq!(
        (bad["ok"].clone(), bad["severity"].clone()),
        (false.into(), "error".into()),
        "{bad}"
    );
    assert!(
        bad["message"]
            .as_str()
            .unwrap_or_default()
            .contains("does not decrypt"),
        "{bad}"
    );
}

/// One database under two spellings of its host (`127.0.0.1` and `localhost`) is refused before
/// anything starts (exit 2, naming both lines); two databases of one server are two tenants.
#[test]
fn one_database_reached_under_two_host_names_is_refused() {
    let db = TestDb::sample();
    let other = TestDb::sample();
    let port = crate::harness::server().port;
    let by_name = db.url.replace("127.0.0.1", "localhost");
    let text = format!("a {}\nb {}\nc {}\n", db.url, other.url, by_name);
    let fleet = tenants_file("two-names", &text);
    let fleet = fleet.to_string_lossy().to_string();
    let before = db.snapshot();
    for args in [
        &["backfill", "run", "--dry-run", "--tenants", &fleet][..],
        &[
            "backfill",
            "run",
            "--yes",
            "--model",
            "m",
            "--tenants",
            &fleet,
        ][..],
        &["backfill", "status", "--run-id", "x", "--tenants", &fleet][..],
    ] {
        let r = Cmd::new(args).run();
        r.code(2).one_line_error("reaches the same database");
        assert!(
            r.stderr.contains("line 3") && r.stderr.contains("line 1"),
            "{}",
            r.stderr
        );
        assert!(r.stderr.contains(&port.to_string()), "{}", r.stderr);
    }
    assert_eq!(db.snapshot(), before);
    // Without the third line: two databases on one server, two tenants.
    let fleet = tenants_file("two-dbs", &format!("a {}\nb {}\n", db.url, other.url));
    let fleet = fleet.to_string_lossy().to_string();
    Cmd::new(&[
        "backfill",
        "run",
        "--dry-run",
        "--model",
        "m",
        "--tenants",
        &fleet,
    ])
    .run()
    .code(0);
}

/// `secret set <agent> MODEL` writes a model the platform has not validated: it says so, and
/// says when a MOLECULE_MODEL secret outranks it; on an ordinary workspace it says nothing.
#[test]
fn setting_the_agents_model_directly_warns_that_it_is_unvalidated() {
    let db = TestDb::sample();
    db.orgctl(&["install-platform-agent", "--model", "m", "--yes"])
        .run()
        .code(0);
    let agent = db.scalar("SELECT id FROM workspaces WHERE kind = 'platform'");
    let set = |ws: &str| {
        db.orgctl(&["secret", "set", ws, "MODEL", "--yes"])
            .stdin(b"m-2\n")
            .run()
    };
    let r = set(&agent);
    r.code(0);
    assert!(r.stderr.contains("has not validated it"), "{}", r.stderr);
    assert!(!r.stderr.contains("outranks"), "{}", r.stderr);
    db.exec(
        "INSERT INTO global_secrets (key, encrypted_value) VALUES ('MOLECULE_MODEL', 'x'::bytea)",
    );
    let r = set(&agent);
    r.code(0);
    assert!(
        r.stderr.contains("MOLECULE_MODEL secret is set globally"),
        "{}",
        r.stderr
    );
    let r = set(ids::RESEARCH);
    r.code(0);
    assert!(!r.stderr.contains("has not validated"), "{}", r.stderr);
}
