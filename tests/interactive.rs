//! The interactive paths, through a pseudo-terminal (tests/pty.rs), as an operator meets them:
//! declining a prompt, the tenant or a secret changing between the plan shown and the answer,
//! the hidden value prompt, Ctrl-C at a prompt (the terminal's echo restored), and Ctrl-C while
//! install and token commands wait inside their transaction. Each checks the exit code, what
//! the terminal showed, and that the database holds exactly what it should.

use std::time::{Duration, Instant};

use crate::harness::{ids, TestDb};
use crate::pty::{Pty, CTRL_C};

const T: Duration = Duration::from_secs(20);

/// The platform tables (orgctl's own schema aside: an apply creates it before its transaction,
/// and it stays when the transaction rolls back; the audit log is checked on its own).
fn platform_rows(db: &TestDb) -> String {
    let s = db.snapshot();
    match s.find("== orgctl") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}

fn on_pty(db: &TestDb, args: &[&str]) -> Pty {
    Pty::spawn(db.orgctl(args).command())
}

/// Wait until one of orgctl's sessions waits on a lock (pg_stat_activity), with a deadline.
#[track_caller]
fn wait_until_orgctl_waits(db: &TestDb) {
    let deadline = Instant::now() + T;
    loop {
        let n = db.scalar(&format!(
            "SELECT count(*) FROM pg_stat_activity
              WHERE datname = '{}' AND application_name = 'orgctl' AND wait_event_type = 'Lock'",
            db.name
        ));
        if n != "0" {
            return;
        }
        assert!(Instant::now() < deadline, "orgctl never waited on the lock");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A session (psql in the background) that runs `sql` in an open transaction and then sleeps,
/// holding whatever it locked until dropped.
struct Holder(std::process::Child);

impl Holder {
    fn start(db: &TestDb, sql: &str) -> Self {
        let s = crate::harness::server();
        let child = std::process::Command::new(s.bindir.join("psql"))
            .args(["-X", "-q", "-h", "127.0.0.1", "-p", &s.port.to_string()])
            .args(["-U", "postgres", "-d", &db.name])
            .env("PGPASSWORD", crate::harness::PASSWORD)
            .arg("-c")
            .arg(format!("BEGIN; {sql}; SELECT pg_sleep(60) AS test_holder;"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn();
        let child = match child {
            Ok(c) => c,
            Err(e) => panic!("psql: {e}"),
        };
        // Synchronise on the server, not on time: the session has reached its sleep.
        let deadline = Instant::now() + T;
        while db.scalar(&format!(
            "SELECT count(*) FROM pg_stat_activity
              WHERE datname = '{}' AND state = 'active' AND query LIKE '%AS test_holder%'
                AND pid <> pg_backend_pid()",
            db.name
        )) == "0"
        {
            assert!(Instant::now() < deadline, "the holder never got its locks");
            std::thread::sleep(Duration::from_millis(20));
        }
        Holder(child)
    }

    /// Hold the tenant's advisory lock.
    fn tenant_lock(db: &TestDb) -> Self {
        Self::start(
            db,
            &format!(
                "SELECT pg_advisory_xact_lock({}, {})",
                orgctl::testing::db::TENANT_LOCK.0,
                orgctl::testing::db::TENANT_LOCK.1
            ),
        )
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

// ---------------------------------------------------------------------------------------------
// install-platform-agent

#[test]
fn install_declined_at_the_prompt_changes_nothing() {
    let db = TestDb::sample();
    let before = platform_rows(&db);
    let mut p = on_pty(&db, &["install-platform-agent", "--model", "m"]);
    p.expect("Apply this plan to", T);
    p.expect("[y/N]", T);
    p.send(b"n");
    let (code, out) = p.wait(T);
    assert_eq!(code, 3, "{out}");
    assert!(out.contains("not confirmed: nothing was changed"), "{out}");
    assert_eq!(platform_rows(&db), before);
    assert_eq!(db.audit_rows(), 0);
}

#[test]
fn install_refuses_when_the_tenant_changed_between_the_plan_and_the_answer() {
    let db = TestDb::sample();
    let mut p = on_pty(&db, &["install-platform-agent", "--model", "m"]);
    p.expect("[y/N]", T);
    // The platform mints a token on an old root while the operator reads the diff.
    db.exec(&format!(
        "INSERT INTO org_api_tokens (token_hash, prefix, org_id) VALUES (sha256('late'::bytea), 'late0000', '{}')",
        ids::HQ
    ));
    let before = platform_rows(&db);
    p.send(b"y");
    let (code, out) = p.wait(T);
    assert_eq!(code, 3, "{out}");
    assert!(
        out.contains("the tenant changed after the plan was reviewed"),
        "{out}"
    );
    assert_eq!(platform_rows(&db), before);
    assert_eq!(db.audit_rows(), 0);
}

#[test]
fn ctrl_c_at_the_install_prompt_exits_130_with_echo_restored() {
    let db = TestDb::sample();
    let before = platform_rows(&db);
    let mut p = on_pty(&db, &["install-platform-agent", "--model", "m"]);
    p.expect("[y/N]", T);
    p.expect_echo(false, T); // the y/N prompt reads keys without echo
    p.send(CTRL_C);
    let (code, out) = p.wait(T);
    assert_eq!(code, 130, "{out}");
    assert!(out.contains("interrupted"), "{out}");
    assert!(p.echo_on(), "echo was not restored:\n{out}");
    assert_eq!(platform_rows(&db), before);
}

/// Ctrl-C typed while the apply waits inside its transaction (a platform transaction holds a
/// token row): exit 130, rolled back, nothing changed.
#[test]
fn ctrl_c_during_the_install_apply_rolls_back() {
    let db = TestDb::sample();
    let before = platform_rows(&db);
    let holder = Holder::start(
        &db,
        "SELECT 1 FROM org_api_tokens WHERE id = '70000000-0000-4000-8000-000000000001' FOR UPDATE",
    );
    let mut p = on_pty(
        &db,
        &[
            "install-platform-agent",
            "--model",
            "m",
            "--lock-timeout",
            "30s",
        ],
    );
    p.expect("[y/N]", T);
    p.send(b"y");
    wait_until_orgctl_waits(&db);
    p.send(CTRL_C);
    let (code, out) = p.wait(T);
    drop(holder);
    assert_eq!(code, 130, "{out}");
    assert!(out.contains("rolled back and nothing was changed"), "{out}");
    assert!(p.echo_on());
    assert_eq!(platform_rows(&db), before);
    assert_eq!(db.audit_rows(), 0);
}

// ---------------------------------------------------------------------------------------------
// token

#[test]
fn token_revoke_declined_and_ctrl_c_while_waiting_for_the_lock() {
    let db = TestDb::sample();
    let live = "SELECT count(*) FROM org_api_tokens WHERE id = '70000000-0000-4000-8000-000000000001' AND revoked_at IS NULL";
    let mut p = on_pty(&db, &["token", "revoke", "sampl001"]);
    p.expect("Revoke", T);
    p.expect("[y/N]", T);
    p.send(b"n");
    let (code, out) = p.wait(T);
    assert_eq!(code, 3, "{out}");
    assert!(out.contains("not confirmed"), "{out}");
    assert_eq!(db.scalar(live), "1");

    // Confirmed, then Ctrl-C while it waits for the tenant lock another session holds.
    let before = platform_rows(&db);
    let lock = Holder::tenant_lock(&db);
    let mut p = on_pty(
        &db,
        &["token", "revoke", "sampl001", "--lock-timeout", "30s"],
    );
    p.expect("[y/N]", T);
    p.send(b"y");
    wait_until_orgctl_waits(&db);
    p.send(CTRL_C);
    let (code, out) = p.wait(T);
    drop(lock);
    assert_eq!(code, 130, "{out}");
    assert!(out.contains("nothing was changed"), "{out}");
    assert!(p.echo_on());
    assert_eq!(db.scalar(live), "1");
    assert_eq!(platform_rows(&db), before);
}

#[test]
fn ctrl_c_during_token_mint_mints_nothing_and_prints_no_token() {
    let db = TestDb::sample();
    let before = platform_rows(&db);
    let lock = Holder::tenant_lock(&db);
    let mut p = on_pty(
        &db,
        &[
            "token",
            "mint",
            "--name",
            "ci",
            "--org",
            ids::HQ,
            "--lock-timeout",
            "30s",
        ],
    );
    wait_until_orgctl_waits(&db);
    p.send(CTRL_C);
    let (code, out) = p.wait(T);
    drop(lock);
    assert_eq!(code, 130, "{out}");
    assert!(out.contains("nothing was changed"), "{out}");
    assert!(!out.contains("Copy the token now"), "{out}");
    assert_eq!(platform_rows(&db), before);
}

// ---------------------------------------------------------------------------------------------
// secret

const TYPED: &str = "typed-S3cret-value";

#[test]
fn the_hidden_value_prompt_never_echoes_and_stores_what_was_typed() {
    let db = TestDb::sample();
    let mut p = on_pty(
        &db,
        &["secret", "set", ids::RESEARCH, "TYPED_KEY", "--no-restart"],
    );
    p.expect("Value for TYPED_KEY (hidden)", T);
    p.expect_echo(false, T); // the value prompt does not echo
    p.send(format!("{TYPED}\r").as_bytes());
    p.expect("Repeat the value", T);
    p.send(format!("{TYPED}\r").as_bytes());
    p.expect("[y/N]", T);
    p.send(b"y");
    let (code, out) = p.wait(T);
    assert_eq!(code, 0, "{out}");
    assert!(!out.contains(TYPED), "the typed value was shown:\n{out}");
    assert!(p.echo_on());
    assert_eq!(
        db.scalar(&format!(
            "SELECT convert_from(encrypted_value, 'UTF8') FROM workspace_secrets
              WHERE workspace_id = '{}' AND key = 'TYPED_KEY'",
            ids::RESEARCH
        )),
        TYPED
    );
}

#[test]
fn ctrl_c_at_the_hidden_prompt_exits_130_with_echo_restored() {
    let db = TestDb::sample();
    let before = platform_rows(&db);
    let mut p = on_pty(
        &db,
        &["secret", "set", ids::RESEARCH, "TYPED_KEY", "--no-restart"],
    );
    p.expect("Value for TYPED_KEY (hidden)", T);
    p.expect_echo(false, T);
    p.send(b"half-typ");
    p.send(CTRL_C);
    let (code, out) = p.wait(T);
    assert_eq!(code, 130, "{out}");
    assert!(p.echo_on(), "echo was not restored:\n{out}");
    assert!(!out.contains("half-typ"), "{out}");
    assert_eq!(platform_rows(&db), before);
}

#[test]
fn secret_declined_or_changed_before_the_answer_writes_nothing() {
    let db = TestDb::sample();
    let dir = std::env::temp_dir().join(format!("orgctl-pty-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let file = dir.join("value");
    if let Err(e) = std::fs::write(&file, "from-file") {
        panic!("{e}");
    }
    let file_arg = file.to_string_lossy().to_string();
    let args = [
        "secret",
        "set",
        ids::RESEARCH,
        "NEW_KEY",
        "--value-file",
        file_arg.as_str(),
        "--no-restart",
    ];
    let before = platform_rows(&db);
    let mut p = on_pty(&db, &args);
    p.expect("[y/N]", T);
    p.send(b"n");
    let (code, out) = p.wait(T);
    assert_eq!(code, 3, "{out}");
    assert_eq!(platform_rows(&db), before);

    // The plan said "created"; the platform creates the key while the operator reads.
    let mut p = on_pty(&db, &args);
    p.expect("[y/N]", T);
    db.exec(&format!(
        "INSERT INTO workspace_secrets (workspace_id, key, encrypted_value) VALUES ('{}', 'NEW_KEY', 'platform')",
        ids::RESEARCH
    ));
    let before = platform_rows(&db);
    p.send(b"y");
    let (code, out) = p.wait(T);
    assert_eq!(code, 3, "{out}");
    assert!(
        out.contains("the secret changed while you were reading"),
        "{out}"
    );
    assert_eq!(platform_rows(&db), before);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Before the prompt the review says what answering yes does (never "Dry run: nothing was
/// changed."); after `y` the terminal gets one line of what was done, not the plan again.
#[test]
fn install_confirmed_says_what_will_happen_then_what_happened_once() {
    let db = TestDb::sample();
    let mut p = on_pty(&db, &["install-platform-agent", "--model", "m"]);
    p.expect("[y/N]", T);
    let review = p.output();
    assert!(!review.contains("Dry run"), "{review}");
    assert!(
        review.contains("Nothing has been changed yet: answer y to apply the plan above"),
        "{review}"
    );
    p.send(b"y");
    let (code, out) = p.wait(T);
    assert_eq!(code, 0, "{out}");
    assert_eq!(
        out.matches("Platform agent:").count(),
        1,
        "the plan once:\n{out}"
    );
    assert_eq!(
        out.matches("Applied: create the platform agent").count(),
        1,
        "{out}"
    );
    assert_eq!(out.matches("Plan: create").count(), 1, "{out}");
    assert_eq!(db.audit_rows(), 1);
}

/// A fleet of two tenants for the table-width tests — one with a long name, one that cannot be
/// reached — after a run (`run_id`) that applied the first and failed the second, with drift
/// (a new child under the agent) added after it: the widest tables orgctl prints. Returns the
/// tenants file and the run's output.
fn wide_tables_fleet(
    a: &TestDb,
    name: &str,
    run_id: &str,
) -> (std::path::PathBuf, crate::harness::Run) {
    let gone = format!(
        "postgres://postgres@127.0.0.1:{}/nowhere",
        orgctl::testing::pgserver::free_port().unwrap_or(1)
    );
    let fleet = crate::harness::tenants_file(
        name,
        &format!("a-tenant-with-a-long-name {}\ngone {gone}\n", a.url),
    );
    let f = fleet.to_string_lossy().to_string();
    let run = a
        .orgctl(&[
            "backfill",
            "run",
            "--tenants",
            &f,
            "--model",
            "m",
            "--yes",
            "--run-id",
            run_id,
        ])
        .env_remove("COLUMNS")
        .run();
    run.code(1);
    // Drift: a new child under the agent.
    a.exec(&format!(
        "INSERT INTO workspaces (name, tier, status, parent_id) VALUES ('a child added after the run with a long name', 2, 'online', '{}')",
        crate::harness::TEST_AGENT_ID
    ));
    (fleet, run)
}

/// Every table fits the terminal it is printed on, at 80 and at 120 columns: status, a fleet
/// run with a failed tenant's long error, a rollback dry run refused for drift (long drift
/// rows), and backfill status. Prose lines (warnings) are the terminal's to wrap; table lines
/// are checked.
#[test]
fn tables_fit_the_terminal_at_80_and_120_columns() {
    let a = TestDb::sample();
    let (fleet, _) = wide_tables_fleet(&a, "widths", "w1");
    let f = fleet.to_string_lossy().to_string();
    let commands: [&[&str]; 4] = [
        &["status"],
        &[
            "backfill",
            "run",
            "--tenants",
            &f,
            "--model",
            "m",
            "--dry-run",
        ],
        &[
            "backfill",
            "rollback",
            "--tenants",
            &f,
            "--run-id",
            "w1",
            "--dry-run",
        ],
        &["backfill", "status", "--tenants", &f, "--run-id", "w1"],
    ];
    for cols in [80u16, 120] {
        for args in commands {
            let mut p = Pty::spawn_sized(a.orgctl(args).command(), cols);
            let (_, out) = p.wait(T);
            let table: Vec<&str> = out
                .lines()
                .map(|l| l.trim_end_matches('\r'))
                .filter(|l| l.starts_with(['│', '┌', '╞', '└', '├', '╭', '╰']))
                .collect();
            assert!(!table.is_empty(), "{args:?}: no table:\n{out}");
            for l in table {
                assert!(
                    l.chars().count() <= usize::from(cols),
                    "{args:?} at {cols} columns: a line of {} characters:\n{out}",
                    l.chars().count()
                );
            }
        }
    }
    let _ = std::fs::remove_file(&fleet);
}

/// Piped (no terminal), a table keeps one line per row within 100 columns; a column that does
/// not fit follows the table as `ROW  COLUMN: text` lines, whole, so grep finds a tenant's
/// error on one line. Checked on the widest tables: the backfill summary with a failed tenant,
/// the rollback dry run with drift, status, and backfill status.
#[test]
fn piped_tables_fit_100_columns_and_long_cells_follow_whole() {
    let a = TestDb::sample();
    let (fleet, run) = wide_tables_fleet(&a, "piped-widths", "p1");
    let f = fleet.to_string_lossy().to_string();
    let table_lines = |out: &str| -> Vec<String> {
        out.lines()
            .filter(|l| l.starts_with(['+', '|']))
            .map(str::to_string)
            .collect()
    };
    let summary = &run.stdout;
    assert!(!table_lines(summary).is_empty(), "no table:\n{summary}");
    for l in table_lines(summary) {
        assert!(
            l.chars().count() <= 100,
            "a line of {}:\n{summary}",
            l.chars().count()
        );
    }
    // The unreachable tenant's error is one whole line after the table, named by its row.
    let error_line = summary
        .lines()
        .find(|l| l.starts_with("gone  "))
        .unwrap_or_else(|| panic!("no line for the failed tenant:\n{summary}"));
    assert!(
        error_line.contains("nowhere") || error_line.contains("connect"),
        "{summary}"
    );
    let commands: [&[&str]; 3] = [
        &["status"],
        &[
            "backfill",
            "rollback",
            "--tenants",
            &f,
            "--run-id",
            "p1",
            "--dry-run",
        ],
        &["backfill", "status", "--tenants", &f, "--run-id", "p1"],
    ];
    for args in commands {
        let r = a.orgctl(args).env_remove("COLUMNS").run();
        let lines = table_lines(&r.stdout);
        assert!(!lines.is_empty(), "{args:?}: no table:\n{}", r.stdout);
        for l in lines {
            assert!(
                l.chars().count() <= 100,
                "{args:?}: a line of {}:\n{}",
                l.chars().count(),
                r.stdout
            );
        }
    }
    let _ = std::fs::remove_file(&fleet);
}
