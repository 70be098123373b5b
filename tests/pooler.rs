//! orgctl through a real PgBouncer (transaction and session pooling) started by the harness:
//! every command of every family; no named prepared statement left on a pooled server
//! connection; --lock-timeout and --statement-timeout in force inside the pooled transaction;
//! a backfill and its rollback with more tenants in flight than the pooler has server
//! connections; two orgctl processes sharing one server connection.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use sqlx::Connection;

use crate::harness::{hold, ids, orgctl_waiting, server, Bouncer, Cmd, PoolMode, Run, TestDb};

/// The platform tables of a snapshot (orgctl's own schema appears with the first apply,
/// before its transaction, and stays).
fn platform(snapshot: &str) -> String {
    snapshot[..snapshot.find("== orgctl").unwrap_or(snapshot.len())].to_string()
}

/// Named prepared statements alive on the server connection PgBouncer hands out next (with a
/// pool of one, the very connection orgctl used).
fn prepared_statements(b: &Bouncer, db: &TestDb) -> String {
    match b.psql(&db.name, "SELECT count(*) FROM pg_prepared_statements") {
        Ok(s) => s.trim().to_string(),
        Err(e) => panic!("through pgbouncer: {e}\n{}", b.log()),
    }
}

/// A tenants file in the temp directory, removed on drop.
struct TenantsFile(PathBuf);

impl TenantsFile {
    fn new(lines: &[(String, String)]) -> Self {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let path = std::env::temp_dir().join(format!(
            "orgctl-pooled-tenants-{}-{}.txt",
            std::process::id(),
            N.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
        ));
        let text: String = lines.iter().map(|(n, u)| format!("{n} {u}\n")).collect();
        if let Err(e) = std::fs::write(&path, text) {
            panic!("write tenants file: {e}");
        }
        TenantsFile(path)
    }

    fn arg(&self) -> String {
        self.0.display().to_string()
    }
}

impl Drop for TenantsFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// One step of the table: arguments, stdin, expected exit code, and a word stdout must hold.
struct Step {
    args: Vec<String>,
    stdin: Option<&'static [u8]>,
    env: Vec<(&'static str, String)>,
    code: i32,
    stdout_has: &'static str,
}

fn step(args: &[&str], code: i32, stdout_has: &'static str) -> Step {
    Step {
        args: args.iter().map(|s| s.to_string()).collect(),
        stdin: None,
        env: Vec::new(),
        code,
        stdout_has,
    }
}

/// A step with environment variables (the encryption keys of `secret verify` / `rekey`).
fn step_env(
    args: &[&str],
    env: &[(&'static str, &[u8; 32])],
    code: i32,
    stdout_has: &'static str,
) -> Step {
    Step {
        env: env
            .iter()
            .map(|(k, v)| (*k, crate::secret::key_b64(v)))
            .collect(),
        ..step(args, code, stdout_has)
    }
}

/// Every command of every family that talks to a tenant, in an order where each one has
/// something to do, through PgBouncer with ONE server connection per database: a named
/// statement left behind by one orgctl would be found by the next ("prepared statement
/// sqlx_s_1 already exists") and by the count after each step.
fn every_command(mode: PoolMode, pooler: &str) {
    let b = Bouncer::start(mode, 1, 0);
    let db = TestDb::sample();
    let other = TestDb::sample();
    let seedable = TestDb::empty();
    seedable.exec(&format!(
        "COMMENT ON DATABASE {} IS '{}'",
        seedable.name,
        orgctl::testing::dev::DEV_COMMENT
    ));
    let fleet = TenantsFile::new(&[("pooled-tenant".into(), b.url(&other.name))]);
    let f = fleet.arg();
    let other_before = other.snapshot();

    let mut steps = vec![
        step(&["status"], 1, "roots"),
        step(
            &["install-platform-agent", "--dry-run", "--model", "m"],
            0,
            "",
        ),
        step(&["install-platform-agent", "--model", "m", "--yes"], 0, ""),
        step(&["install-platform-agent", "--model", "m", "--yes"], 0, ""),
        // A token anchored on a child stays a broken invariant until it is re-anchored.
        step(&["status"], 1, "tokens_on_root"),
        step(&["token", "mint", "--name", "pooled"], 0, ""),
        step(&["token", "list", "--all"], 0, "pooled"),
        step(&["token", "anchor", "sampl006", "--yes"], 0, ""),
        step(&["token", "revoke", "sampl005", "--yes"], 0, "revoked"),
        Step {
            stdin: Some(b"pooled-value\n"),
            ..step(
                &[
                    "secret",
                    "set",
                    ids::RESEARCH,
                    "POOLED",
                    "--yes",
                    "--no-restart",
                ],
                0,
                "",
            )
        },
        Step {
            stdin: Some(b"global-value\n"),
            ..step(
                &[
                    "secret",
                    "set",
                    "--global",
                    "POOLED_G",
                    "--yes",
                    "--no-restart",
                ],
                0,
                "",
            )
        },
        step(&["secret", "list", ids::RESEARCH], 0, "POOLED"),
        step(&["secret", "list", "--global"], 0, "POOLED_G"),
        step(
            &[
                "secret",
                "delete",
                ids::RESEARCH,
                "POOLED",
                "--yes",
                "--no-restart",
            ],
            0,
            "",
        ),
        // The audit trail: a replay without a platform URL (the plan), the log, and
        // the chain every step above appended to through the pooler.
        step(
            &["secret", "restart", "--global", "POOLED_G", "--yes"],
            0,
            "POOLED_G",
        ),
        step(&["audit", "--since", "1h"], 0, "token mint"),
        step(&["audit", "verify"], 0, "Intact"),
    ];
    // Key custody: encrypt the plaintext rows, rotate the key, verify with the new one.
    let (k1, k2) = (&[0x41u8; 32], &[0x42u8; 32]);
    let cur = "SECRETS_ENCRYPTION_KEY";
    let new = "SECRETS_ENCRYPTION_KEY_NEW";
    steps.extend([
        // Every row is plaintext yet: nothing to verify the key against (--allow-empty).
        step_env(
            &["secret", "verify", "--allow-empty"],
            &[(cur, k1)],
            0,
            "global_secrets",
        ),
        step_env(
            &["secret", "rekey", "--plaintext-only", "--yes"],
            &[(cur, k1)],
            0,
            "Applied",
        ),
        step_env(
            &["secret", "rekey", "--dry-run"],
            &[(cur, k1), (new, k2)],
            0,
            "plan_hash",
        ),
        step_env(
            &["secret", "rekey", "--yes"],
            &[(cur, k1), (new, k2)],
            0,
            "Applied",
        ),
        step_env(&["secret", "verify"], &[(cur, k2)], 0, "decrypts"),
    ]);
    for args in [
        vec![
            "backfill",
            "run",
            "--run-id",
            "p1",
            "--model",
            "m",
            "--dry-run",
        ],
        vec!["backfill", "run", "--run-id", "p1", "--model", "m", "--yes"],
        vec!["backfill", "status", "--run-id", "p1"],
        vec!["backfill", "rollback", "--run-id", "p1", "--dry-run"],
        vec!["backfill", "rollback", "--run-id", "p1", "--yes"],
    ] {
        let mut s = step(&args, 0, "pooled-tenant");
        s.args.extend(["--tenants".to_string(), f.clone()]);
        steps.push(s);
    }

    let url = b.url(&db.name);
    for s in &steps {
        let args: Vec<&str> = s.args.iter().map(|a| a.as_str()).collect();
        let mut cmd = Cmd::new(&args)
            .env("DATABASE_URL", &url)
            .env("ORGCTL_POOLER", pooler);
        if let Some(input) = s.stdin {
            cmd = cmd.stdin(input);
        }
        for (k, v) in &s.env {
            cmd = cmd.env(k, v);
        }
        let r = cmd.run();
        assert_eq!(
            r.code,
            s.code,
            "{mode:?} {args:?}\nstdout:\n{}\nstderr:\n{}\npgbouncer:\n{}",
            r.stdout,
            r.stderr,
            b.log()
        );
        assert!(r.stdout.contains(s.stdout_has), "{args:?}: {}", r.stdout);
        assert!(!r.stderr.contains("prepared statement"), "{}", r.stderr);
        let target = if args[0] == "backfill" { &other } else { &db };
        assert_eq!(prepared_statements(&b, target), "0", "after {args:?}");
        // orgctl's timeouts ended with its transactions: the next client of that server
        // connection has the server's defaults.
        let settings = b.psql(
            &target.name,
            "SELECT current_setting('lock_timeout') || ' ' || current_setting('statement_timeout')",
        );
        assert_eq!(
            settings.as_deref().map(str::trim),
            Ok("0 0"),
            "after {args:?}"
        );
    }
    // The backfill rollback through the pooler restored the other tenant exactly.
    assert_eq!(platform(&other.snapshot()), platform(&other_before));
    // Every mutation was audited through the pooler.
    assert!(db.audit_rows() >= 7, "{}", db.audit_rows());

    // dev seed (the one dev command that takes a DATABASE_URL).
    let r = Cmd::new(&[
        "dev",
        "seed",
        "--roots",
        "3",
        "--workspaces",
        "20",
        "--tokens",
        "20",
        "--tokens-on-roots",
        "5",
        "--allowlist",
        "10",
        "--plugins",
        "3",
    ])
    .env("DATABASE_URL", &b.url(&seedable.name))
    .env("ORGCTL_POOLER", pooler)
    .run();
    r.code(0);
    assert_eq!(seedable.scalar("SELECT count(*) > 0 FROM workspaces"), "t");
    assert_eq!(prepared_statements(&b, &seedable), "0");
}

#[test]
fn every_command_works_through_a_transaction_pooler() {
    every_command(PoolMode::Transaction, "transaction");
}

#[test]
fn every_command_works_through_a_session_pooler_with_the_statement_cache() {
    every_command(PoolMode::Session, "session");
}

/// The control for the check above: with named statements allowed (`--pooler none`), a
/// transaction pooler is left holding them and the next orgctl on that server connection
/// fails. So a count of 0 above means something.
#[test]
fn named_statements_break_on_a_transaction_pooler() {
    let b = Bouncer::start(PoolMode::Transaction, 1, 0);
    let db = TestDb::sample();
    let url = b.url(&db.name);
    let direct = |args: &[&str]| {
        Cmd::new(args)
            .env("DATABASE_URL", &url)
            .env("ORGCTL_POOLER", "none")
            .run()
    };
    direct(&["status"]).code(1);
    assert_ne!(prepared_statements(&b, &db), "0");
    let r = direct(&["status"]);
    assert!(r.stderr.contains("already exists"), "{r:?}");
    // The safe default works on that same poisoned server connection.
    Cmd::new(&["status"])
        .env("DATABASE_URL", &url)
        .run()
        .code(1);
}

#[test]
fn a_bad_pooler_mode_is_a_usage_error() {
    let db = TestDb::sample();
    let before = db.snapshot();
    db.orgctl(&["status", "--pooler", "pgcat"]).run().code(2);
    let r = db
        .orgctl(&["install-platform-agent", "--yes", "--model", "m"])
        .env("ORGCTL_POOLER", "bogus")
        .run();
    r.code(2);
    assert!(r.stderr.contains("--pooler"), "{}", r.stderr);
    assert_eq!(db.snapshot(), before);
}

/// Run orgctl; if it has not finished 20s later (a timeout not in force), release the holder
/// so it cannot hang the suite, and return what it then did.
async fn run_with_watchdog(cmd: Cmd, holder: sqlx::PgConnection) -> (Run, Duration) {
    let started = Instant::now();
    let mut run = tokio::spawn(cmd.run_async());
    let r = match tokio::time::timeout(Duration::from_secs(20), &mut run).await {
        Ok(r) => {
            drop(holder);
            r
        }
        Err(_) => {
            let _ = holder.close().await;
            run.await
        }
    };
    match r {
        Ok(r) => (r, started.elapsed()),
        Err(e) => panic!("{e}"),
    }
}

#[tokio::test]
async fn lock_timeout_holds_inside_the_pooled_transaction() {
    // Two server connections, warmed: a session-level SET would land on either.
    let b = Bouncer::start(PoolMode::Transaction, 2, 0);
    let db = TestDb::sample();
    let url = b.url(&db.name);
    Cmd::new(&["status"])
        .env("DATABASE_URL", &url)
        .run()
        .code(1);
    let before = db.snapshot();

    // A row lock: a platform transaction that updated a root install must re-parent.
    let update = format!(
        "UPDATE workspaces SET last_outbound_at = now() WHERE id = '{}'",
        ids::LABS
    );
    let holder = hold(&db, &[&update]).await;
    let cmd = Cmd::new(&[
        "install-platform-agent",
        "--model",
        "m",
        "--yes",
        "--lock-timeout",
        "300ms",
    ])
    .env("DATABASE_URL", &url);
    let (r, took) = run_with_watchdog(cmd, holder).await;
    r.code(3).one_line_error("timed out waiting for a lock");
    assert!(took < Duration::from_secs(10), "{took:?}");
    assert_eq!(platform(&db.snapshot()), platform(&before));

    // The tenant's advisory lock, held by another orgctl.
    let holder = hold(&db, &["SELECT pg_advisory_xact_lock(1869768547, 1)"]).await;
    let cmd = Cmd::new(&["token", "mint", "--org", ids::HQ, "--lock-timeout", "300ms"])
        .env("DATABASE_URL", &url);
    let (r, took) = run_with_watchdog(cmd, holder).await;
    r.code(3).one_line_error("holds this tenant's lock");
    assert!(took < Duration::from_secs(10), "{took:?}");
    assert_eq!(platform(&db.snapshot()), platform(&before));
    assert_eq!(prepared_statements(&b, &db), "0");
}

#[tokio::test]
async fn statement_timeout_holds_inside_the_pooled_transaction_and_0_means_no_limit() {
    let b = Bouncer::start(PoolMode::Transaction, 2, 0);
    let db = TestDb::sample();
    let url = b.url(&db.name);
    Cmd::new(&["status"])
        .env("DATABASE_URL", &url)
        .run()
        .code(1);
    let before = db.snapshot();
    let row =
        "SELECT 1 FROM org_api_tokens WHERE id = '70000000-0000-4000-8000-000000000001' FOR UPDATE";

    // Waits on the held token row (seen in pg_stat_activity as orgctl), then is cancelled.
    let holder = hold(&db, &[row]).await;
    let cmd = Cmd::new(&[
        "install-platform-agent",
        "--model",
        "m",
        "--yes",
        "--lock-timeout",
        "60s",
        "--statement-timeout",
        "1s",
    ])
    .env("DATABASE_URL", &url);
    let started = Instant::now();
    let run = tokio::spawn(cmd.run_async());
    orgctl_waiting(&mut db.connect().await, &db.name).await;
    let r = match tokio::time::timeout(Duration::from_secs(20), run).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => panic!("{e}"),
        Err(_) => panic!("--statement-timeout 1s was not in force through the pooler"),
    };
    drop(holder);
    r.code(1).one_line_error("--statement-timeout");
    assert!(started.elapsed() < Duration::from_secs(15));
    assert_eq!(platform(&db.snapshot()), platform(&before));

    // --statement-timeout 0: no limit. orgctl waits on the row until the holder lets go,
    // then applies.
    let mut holder = hold(&db, &[row]).await;
    let run = tokio::spawn(
        Cmd::new(&[
            "install-platform-agent",
            "--model",
            "m",
            "--yes",
            "--lock-timeout",
            "60s",
            "--statement-timeout",
            "0",
        ])
        .env("DATABASE_URL", &url)
        .run_async(),
    );
    orgctl_waiting(&mut db.connect().await, &db.name).await;
    if let Err(e) = sqlx::query("ROLLBACK").execute(&mut holder).await {
        panic!("{e}");
    }
    let r = match run.await {
        Ok(r) => r,
        Err(e) => panic!("{e}"),
    };
    r.code(0);
    assert_eq!(
        db.scalar("SELECT count(*) FROM workspaces WHERE kind = 'platform'"),
        "1"
    );
    assert_eq!(prepared_statements(&b, &db), "0");
}

/// Six tenants at --concurrency 8 through a pooler that allows the user two server
/// connections in all: tenants queue for a server connection inside the pooler, and the run
/// and its rollback still complete every tenant.
#[test]
fn backfill_and_rollback_with_more_tenants_in_flight_than_server_connections() {
    let b = Bouncer::start(PoolMode::Transaction, 1, 2);
    let dbs: Vec<TestDb> = (0..6).map(|_| TestDb::sample()).collect();
    let before: Vec<String> = dbs.iter().map(|d| d.snapshot()).collect();
    let fleet = TenantsFile::new(
        &dbs.iter()
            .enumerate()
            .map(|(i, d)| (format!("tenant-{i}"), b.url(&d.name)))
            .collect::<Vec<_>>(),
    );
    let f = fleet.arg();
    let backfill = |args: &[&str]| {
        let mut v = vec!["backfill"];
        v.extend_from_slice(args);
        v.extend(["--tenants", f.as_str(), "-o", "json"]);
        Cmd::new(&v).run()
    };
    let r = backfill(&[
        "run",
        "--run-id",
        "wide",
        "--model",
        "m",
        "--yes",
        "--concurrency",
        "8",
    ]);
    assert_eq!(r.code, 0, "{r:?}\n{}", b.log());
    for d in &dbs {
        assert_eq!(
            d.scalar(
                "SELECT count(*) FROM workspaces WHERE parent_id IS NULL AND kind = 'platform'"
            ),
            "1"
        );
    }
    backfill(&["status", "--run-id", "wide"]).code(0);
    // Rollback runs four tenants at once: still more than the two server connections.
    let r = backfill(&["rollback", "--run-id", "wide", "--yes"]);
    r.code(0);
    for (d, was) in dbs.iter().zip(&before) {
        assert_eq!(platform(&d.snapshot()), platform(was), "{}", d.name);
        assert_eq!(prepared_statements(&b, d), "0");
    }
    // The pooler never had more than two server connections for the user.
    let n = server()
        .psql(
            "postgres",
            "SELECT count(*) <= 2 FROM pg_stat_activity WHERE datname LIKE 't\\_%' AND application_name = 'orgctl'",
        )
        .unwrap_or_default();
    assert_eq!(n.trim(), "t");
}

/// Two orgctl processes at once on ONE pooled server connection (transaction pooling, pool
/// size 1): their transactions take turns on it, and neither sees the other's statements or
/// settings.
#[test]
fn two_orgctl_processes_interleave_on_one_server_connection() {
    let b = Bouncer::start(PoolMode::Transaction, 1, 0);
    let db = TestDb::sample();
    let url = b.url(&db.name);
    Cmd::new(&["install-platform-agent", "--model", "m", "--yes"])
        .env("DATABASE_URL", &url)
        .run()
        .code(0);
    let audited = db.audit_rows();
    let (u1, u2) = (url.clone(), url.clone());
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(2));
    let b1 = barrier.clone();
    let minting = std::thread::spawn(move || {
        b1.wait();
        (0..6)
            .map(|i| {
                Cmd::new(&[
                    "token",
                    "mint",
                    "--name",
                    &format!("a-{i}"),
                    "--lock-timeout",
                    "30s",
                ])
                .env("DATABASE_URL", &u1)
                .run()
            })
            .collect::<Vec<_>>()
    });
    let setting = std::thread::spawn(move || {
        barrier.wait();
        (0..6)
            .map(|i| {
                Cmd::new(&[
                    "secret",
                    "set",
                    ids::RESEARCH,
                    &format!("B_{i}"),
                    "--yes",
                    "--no-restart",
                    "--lock-timeout",
                    "30s",
                ])
                .env("DATABASE_URL", &u2)
                .stdin(b"v\n")
                .run()
            })
            .collect::<Vec<_>>()
    });
    let (a, s) = match (minting.join(), setting.join()) {
        (Ok(a), Ok(s)) => (a, s),
        _ => panic!("a runner thread panicked"),
    };
    for r in a.iter().chain(&s) {
        r.code(0);
    }
    assert_eq!(
        db.scalar("SELECT count(*) FROM org_api_tokens WHERE name LIKE 'a-%'"),
        "6"
    );
    assert_eq!(
        db.scalar(&format!(
            "SELECT count(*) FROM workspace_secrets WHERE workspace_id = '{}' AND key LIKE 'B\\_%'",
            ids::RESEARCH
        )),
        "6"
    );
    // Twelve change rows (each no-restart secret set adds its per-workspace restart row too).
    assert_eq!(
        db.scalar("SELECT count(*) FROM orgctl.audit_log WHERE command <> 'restart'"),
        (audited + 12).to_string()
    );
    // They did interleave: the audit trail is not all of one process, then all of the other.
    let order = db.scalar(&format!(
        "SELECT string_agg(left(command, 1), '' ORDER BY id)
           FROM (SELECT id, command FROM orgctl.audit_log WHERE command <> 'restart'
                  ORDER BY id OFFSET {audited}) a"
    ));
    assert_eq!(order.len(), 12, "{order}");
    assert!(
        order != "ttttttssssss" && order != "sssssstttttt",
        "the two processes ran one after the other: {order}"
    );
    // One server connection served both, and nothing named was left on it.
    assert_eq!(prepared_statements(&b, &db), "0");
}
