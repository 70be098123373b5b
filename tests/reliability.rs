//! The reliability suite: the whole tool under the conditions operators meet, against
//! real PostgreSQL, no mocks, with nothing lost:
//! - `kill -9` at spread-out random moments during install-platform-agent;
//! - a live platform writer on the old roots while installs and `status` run;
//! - the database going away mid-command (backend terminated; a private server stopped);
//! - statement and lock timeouts;
//! - a table of bad inputs for install-platform-agent, status, dev and the global flags;
//! - a property test of the password masking.
//!
//! Every scenario runs in every `cargo test`, at a bounded size; `ORGCTL_SLOW_TESTS=1` only
//! scales them up (more tokens, kill rounds, install rounds, generated passwords). No test
//! returns early: a scenario that cannot run fails. Random choices print their seed;
//! `ORGCTL_TEST_SEED=N` replays one.

use std::process::Stdio;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::harness::{ids, orgctl_waiting, Cmd, PrivateServer, Run, TestDb};
use crate::status::{parse as parse_status, status_json};

/// Opt-in for the larger sizes of the suite (never for whether a scenario runs).
pub const SLOW_ENV: &str = "ORGCTL_SLOW_TESTS";

fn slow() -> bool {
    std::env::var(SLOW_ENV).map(|v| v == "1").unwrap_or(false)
}

/// A small deterministic generator (xorshift64*): no dependency, replayable from its seed.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed.max(1))
    }
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn frac(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn seed(what: &str) -> u64 {
    let seed = std::env::var("ORGCTL_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        });
    eprintln!("{what}: seed {seed} (ORGCTL_TEST_SEED={seed} replays it)");
    seed
}

/// Tokens added on the sample's three roots so that an apply takes a moment (more with the
/// slow opt-in).
fn bulk_tokens() -> u32 {
    if slow() {
        100_000
    } else {
        20_000
    }
}

static BIG: OnceLock<TestDb> = OnceLock::new();

/// The sample org with [`bulk_tokens`] tokens on its roots, and its one token on a non-root
/// unanchored (so a fully installed tenant passes `status`). Built once, copied per test.
fn big() -> TestDb {
    BIG.get_or_init(|| {
        let db = TestDb::sample();
        db.exec(&format!(
            "INSERT INTO org_api_tokens (token_hash, prefix, org_id, revoked_at)
             SELECT sha256(('bulk' || g)::bytea), 'bulk0000',
                    (ARRAY['{}','{}','{}']::uuid[])[1 + g % 3],
                    CASE WHEN g % 20 = 0 THEN now() END
               FROM generate_series(1, {}) g;
             UPDATE org_api_tokens SET org_id = NULL
              WHERE id = '70000000-0000-4000-8000-000000000008';
             ANALYZE;",
            ids::HQ,
            ids::LABS,
            ids::LEGACY,
            bulk_tokens()
        ));
        db
    })
    .copy_of()
}

/// A digest of every platform table, rows sorted: equal means untouched.
const FINGERPRINT_SQL: &str = "SELECT md5(string_agg(t, E'\\n' ORDER BY t)) FROM (
        SELECT 'w' || x::text AS t FROM workspaces x
        UNION ALL SELECT 's' || x::text FROM workspace_secrets x
        UNION ALL SELECT 'g' || x::text FROM global_secrets x
        UNION ALL SELECT 't' || x::text FROM org_api_tokens x
        UNION ALL SELECT 'a' || x::text FROM org_plugin_allowlist x
        UNION ALL SELECT 'r' || x::text FROM rescue_bundles x) u";

fn fingerprint(db: &TestDb) -> String {
    db.scalar(FINGERPRINT_SQL)
}

fn count(db: &TestDb, sql: &str) -> i64 {
    let v = db.scalar(sql);
    match v.parse() {
        Ok(n) => n,
        Err(_) => panic!("not a count: {v:?} from {sql}"),
    }
}

/// Wait until no orgctl session is left on the database (the backend of a killed client
/// notices within `client_connection_check_interval`, or at its next read).
fn wait_for_orgctl_sessions_to_end(db: &TestDb) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let n = db.scalar(&format!(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = '{}' AND application_name = 'orgctl'",
            db.name
        ));
        if n == "0" {
            return;
        }
        if Instant::now() > deadline {
            panic!("an orgctl session outlived its client by 20s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The sample's roots before any install.
const OLD_ROOTS: [&str; 3] = [ids::HQ, ids::LABS, ids::LEGACY];

/// Fully installed: exactly one root and it is the agent (kind platform, tier 0, MODEL
/// present); nothing on an old root; no token lost; the github collision merged; and
/// `orgctl status` agrees (exit 0).
#[track_caller]
fn assert_installed(db: &TestDb, tokens: i64, allowlist: i64) {
    assert_eq!(
        db.scalar(
            "SELECT count(*) || ' ' || string_agg(coalesce(kind, '-') || ' ' || tier, ',')
               FROM workspaces WHERE parent_id IS NULL"
        ),
        "1 platform 0"
    );
    let old = OLD_ROOTS
        .iter()
        .map(|r| format!("'{r}'"))
        .collect::<Vec<_>>()
        .join(",");
    assert_eq!(
        count(
            db,
            &format!(
                "SELECT (SELECT count(*) FROM org_api_tokens WHERE org_id IN ({old}))
                      + (SELECT count(*) FROM org_plugin_allowlist WHERE org_id IN ({old}))"
            )
        ),
        0,
        "an anchor left on an old root"
    );
    assert_eq!(count(db, "SELECT count(*) FROM org_api_tokens"), tokens);
    assert_eq!(
        count(db, "SELECT count(*) FROM org_plugin_allowlist"),
        allowlist - 1,
        "the one github collision merged, nothing else lost"
    );
    assert_eq!(
        count(
            db,
            "SELECT count(*) FROM workspace_secrets s JOIN workspaces w ON w.id = s.workspace_id
              WHERE w.kind = 'platform' AND s.key = 'MODEL'"
        ),
        1
    );
    let (r, s) = status_json(db, &[]);
    r.code(0);
    assert!(s.ok, "{:?}", s.failing());
}

const INSTALL: &[&str] = &["install-platform-agent", "--model", "m", "--yes"];

// ---------------------------------------------------------------------------------------------
// kill -9

#[test]
fn kill_9_during_install_leaves_the_tenant_untouched_or_fully_installed() {
    let rounds = if slow() { 12 } else { 3 };
    let mut rng = Rng::new(seed("kill -9 during install"));

    // How long a whole install takes here, to spread the kills over it.
    let probe = big();
    let t0 = Instant::now();
    probe.orgctl(INSTALL).run().code(0);
    let full = t0.elapsed();
    drop(probe);

    let mut outcomes = Vec::new();
    let mut mid_tx = 0;
    for round in 0..rounds {
        let db = big();
        let before = fingerprint(&db);
        let tokens = count(&db, "SELECT count(*) FROM org_api_tokens");
        let allowlist = count(&db, "SELECT count(*) FROM org_plugin_allowlist");
        // Round i is killed at a random moment of the i-th slice of [0, 0.9 × full] (the
        // rounds at observed moments are the test below).
        let delay = full.mul_f64((round as f64 + rng.frac()) / rounds as f64 * 0.9);
        let mut child = match db
            .orgctl(INSTALL)
            .command()
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
        {
            Ok(c) => c,
            Err(e) => panic!("spawn: {e}"),
        };
        std::thread::sleep(delay);
        // What the kill lands on: the process still running (never a finished one), and its
        // backend inside the transaction or not (seen from pg_stat_activity just before).
        let in_tx = db.scalar(&format!(
            "SELECT count(*) FROM pg_stat_activity
              WHERE datname = '{}' AND application_name = 'orgctl' AND xact_start IS NOT NULL",
            db.name
        )) != "0";
        let alive = matches!(child.try_wait(), Ok(None));
        let _ = child.kill(); // SIGKILL
        let _ = child.wait();
        wait_for_orgctl_sessions_to_end(&db);
        if !alive {
            // It finished before the kill: this round proves nothing about a kill, and says so.
            outcomes.push(format!("{}ms finished-before-kill", delay.as_millis()));
            db.orgctl(INSTALL).run().code(0);
            assert_installed(&db, tokens, allowlist);
            continue;
        }
        if in_tx {
            mid_tx += 1;
        }

        let installed = db.scalar("SELECT count(*) FROM workspaces WHERE kind = 'platform'") == "1";
        if installed {
            assert_installed(&db, tokens, allowlist);
            assert_eq!(db.audit_rows(), 1);
        } else {
            assert_eq!(
                fingerprint(&db),
                before,
                "round {round}, killed after {delay:?}: partial state"
            );
            assert_eq!(db.audit_rows(), 0);
        }
        outcomes.push(format!(
            "{}ms {}{}",
            delay.as_millis(),
            if in_tx { "in-transaction " } else { "" },
            if installed { "installed" } else { "untouched" }
        ));
        // A rerun completes it (or finds nothing to do).
        db.orgctl(INSTALL).run().code(0);
        assert_installed(&db, tokens, allowlist);
    }
    eprintln!(
        "kill -9 outcomes (a whole install takes {}ms; {mid_tx} of {rounds} landed inside the \
         transaction): {}",
        full.as_millis(),
        outcomes.join(", ")
    );
}

/// kill -9 at moments the test observes rather than guesses: a platform transaction holds one
/// row the install must change, and once `pg_stat_activity` shows orgctl's backend waiting on
/// it — inside its transaction, holding the tenant's advisory lock, at a known statement — the
/// orgctl process (still running) is killed. Every kill lands mid-transaction, and the tenant
/// is left exactly as it was; a rerun installs.
#[tokio::test]
async fn kill_9_at_observed_moments_inside_the_transaction_changes_nothing() {
    // (stage, what a platform transaction holds, the table orgctl's statement must name)
    let stages = [
        (
            "locking the roots",
            format!(
                "UPDATE workspaces SET last_outbound_at = now() WHERE id = '{}'",
                ids::LABS
            ),
            "workspaces",
        ),
        (
            "moving allowlist rows",
            "SELECT 1 FROM org_plugin_allowlist WHERE id = 'e0000000-0000-4000-8000-000000000002' FOR UPDATE"
                .to_string(),
            "org_plugin_allowlist",
        ),
        (
            "moving tokens",
            "SELECT 1 FROM org_api_tokens WHERE id = '70000000-0000-4000-8000-000000000001' FOR UPDATE"
                .to_string(),
            "org_api_tokens",
        ),
    ];
    let mut landed = Vec::new();
    for (stage, hold, table) in &stages {
        let db = big();
        let before = fingerprint(&db);
        let tokens = count(&db, "SELECT count(*) FROM org_api_tokens");
        let allowlist = count(&db, "SELECT count(*) FROM org_plugin_allowlist");
        let mut holder = db.connect().await;
        for sql in ["BEGIN", hold.as_str()] {
            if let Err(e) = sqlx::query(sql).execute(&mut holder).await {
                panic!("{e}");
            }
        }
        let mut child = match db
            .orgctl(&[
                "install-platform-agent",
                "--model",
                "m",
                "--yes",
                "--lock-timeout",
                "30s",
            ])
            .command()
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
        {
            Ok(c) => c,
            Err(e) => panic!("spawn: {e}"),
        };
        let mut admin = db.connect().await;
        let pid = orgctl_waiting(&mut admin, &db.name).await;
        // The table whose row orgctl waits for: the tuple lock a row-lock waiter holds (the
        // statement's text says less: on a first touch the row locks end the long message that
        // creates orgctl's schema, cut at track_activity_query_size).
        let (query, in_tx, advisory): (String, bool, i64) = match sqlx::query_as(
            "SELECT coalesce((SELECT string_agg(DISTINCT l.relation::regclass::text, ',')
                                FROM pg_locks l WHERE l.pid = a.pid AND l.locktype = 'tuple'), ''),
                    a.xact_start IS NOT NULL,
                    (SELECT count(*) FROM pg_locks l
                      WHERE l.pid = a.pid AND l.locktype = 'advisory' AND l.granted)
               FROM pg_stat_activity a WHERE a.pid = $1",
        )
        .bind(pid)
        .fetch_one(&mut admin)
        .await
        {
            Ok(r) => r,
            Err(e) => panic!("{e}"),
        };
        let alive = matches!(child.try_wait(), Ok(None));
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(
            query, *table,
            "{stage}: orgctl waits on a row of another table"
        );
        drop(holder);
        drop(admin);
        let db_name = db.name.clone();
        let db = match tokio::task::spawn_blocking(move || {
            wait_for_orgctl_sessions_to_end(&db);
            db
        })
        .await
        {
            Ok(d) => d,
            Err(e) => panic!("{e}"),
        };
        assert_eq!(
            fingerprint(&db),
            before,
            "{stage}: partial state in {db_name}"
        );
        assert_eq!(db.audit_rows(), 0, "{stage}");
        if alive && in_tx && advisory > 0 {
            landed.push(*stage);
        }
        db.orgctl(INSTALL).run_async().await.code(0);
        let db = match tokio::task::spawn_blocking(move || {
            assert_installed(&db, tokens, allowlist);
            db
        })
        .await
        {
            Ok(d) => d,
            Err(e) => panic!("{e}"),
        };
        drop(db);
    }
    assert_eq!(
        landed.len(),
        stages.len(),
        "kills that landed mid-transaction: {landed:?}"
    );
    eprintln!(
        "kill -9 at observed moments: {} of {} landed mid-transaction ({landed:?})",
        landed.len(),
        stages.len()
    );
}

// ---------------------------------------------------------------------------------------------
// A live platform writer

/// Extends tests/install.rs's writer test: the platform keeps writing on the OLD roots by id
/// (a stale cache) as well as on the root it resolves, while several installs and a `status`
/// run. No deadlock on either side, every row the writer committed is kept, and after a
/// final sweep nothing is on a former root and status passes.
#[tokio::test]
async fn live_writer_on_the_old_roots_during_repeated_installs() {
    let db = big();
    let tokens_before = count(&db, "SELECT count(*) FROM org_api_tokens");
    let allow_before = count(&db, "SELECT count(*) FROM org_plugin_allowlist");
    let installs = if slow() { 8 } else { 3 };
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..3usize {
        let url = db.url.clone();
        let stop = stop.clone();
        writers.push(tokio::spawn(async move {
            use sqlx::Connection;
            let mut conn = match sqlx::PgConnection::connect(&url).await {
                Ok(c) => c,
                Err(e) => panic!("{e}"),
            };
            // (tokens, children, allowlist rows, last_used_at bumps) committed.
            let mut done = [0i64; 4];
            let mut i = 0usize;
            let root_of = format!(
                "(WITH RECURSIVE up(id, parent_id, d) AS (
                    SELECT id, parent_id, 0 FROM workspaces WHERE id = '{}'
                    UNION ALL SELECT w.id, w.parent_id, d + 1 FROM workspaces w
                               JOIN up ON w.id = up.parent_id WHERE d < 32)
                  SELECT id FROM up WHERE parent_id IS NULL)",
                ids::RESEARCH
            );
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                i += 1;
                let old = OLD_ROOTS[i % 3];
                let (sql, kind) = match (w + i) % 5 {
                    0 => (
                        format!(
                            "INSERT INTO org_api_tokens (token_hash, prefix, org_id, created_by)
                             VALUES (sha256('w{w}-{i}'::bytea), 'writer00', {root_of}, 'writer')"
                        ),
                        0,
                    ),
                    1 => (
                        format!(
                            "INSERT INTO org_api_tokens (token_hash, prefix, org_id, created_by)
                             VALUES (sha256('s{w}-{i}'::bytea), 'writer00', '{old}', 'writer')"
                        ),
                        0,
                    ),
                    2 => (
                        format!(
                            "INSERT INTO workspaces (name, role, parent_id)
                             VALUES ('writer child {w}-{i}', 'writer', '{old}')"
                        ),
                        1,
                    ),
                    3 => (
                        format!(
                            "INSERT INTO org_plugin_allowlist (org_id, plugin_name, enabled_by)
                             VALUES ('{old}', 'wp-{w}-{i}', 'writer')"
                        ),
                        2,
                    ),
                    _ => (
                        "UPDATE org_api_tokens SET last_used_at = now()
                          WHERE id = '70000000-0000-4000-8000-000000000001'"
                            .to_string(),
                        3,
                    ),
                };
                match sqlx::query(&sql).execute(&mut conn).await {
                    Ok(_) => done[kind] += 1,
                    Err(e) => panic!("the platform's write failed (deadlock?): {e}"),
                }
            }
            done
        }));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    for round in 0..installs {
        let install = db
            .orgctl(&[
                "install-platform-agent",
                "--model",
                "m",
                "--yes",
                "--lock-timeout",
                "30s",
            ])
            .run_async();
        if round == 1 {
            // status reads alongside, without waiting on anyone.
            let (ri, rs) = tokio::join!(install, db.orgctl(&["status"]).run_async());
            ri.code(0);
            assert!(rs.code == 0 || rs.code == 1, "{rs:?}");
            assert!(!rs.stderr.contains("error:"), "{}", rs.stderr);
        } else {
            install.await.code(0);
        }
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let mut done = [0i64; 4];
    for w in writers {
        match w.await {
            Ok(d) => {
                for k in 0..4 {
                    done[k] += d[k];
                }
            }
            Err(e) => panic!("{e}"),
        }
    }
    assert!(
        done.iter().all(|n| *n > 0),
        "every kind of write ran: {done:?}"
    );

    // The final sweep: whatever raced the last commit moves to the agent.
    db.orgctl(&["install-platform-agent", "--yes"])
        .run()
        .code(0);
    let (r, s) = status_json(&db, &[]);
    r.code(0);
    assert!(s.ok, "{:?}", s.failing());
    assert_eq!(
        s.tokens.on_former_root.live + s.tokens.on_former_root.revoked,
        0
    );
    assert_eq!(
        count(
            &db,
            "SELECT (SELECT count(*) FROM org_api_tokens t JOIN orgctl.former_roots f ON f.workspace_id = t.org_id)
                  + (SELECT count(*) FROM org_plugin_allowlist a JOIN orgctl.former_roots f ON f.workspace_id = a.org_id)"
        ),
        0
    );
    // Every row the writer committed is still there.
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM org_api_tokens WHERE created_by = 'writer'"
        ),
        done[0]
    );
    assert_eq!(
        count(&db, "SELECT count(*) FROM workspaces WHERE role = 'writer'"),
        done[1]
    );
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM org_plugin_allowlist WHERE enabled_by = 'writer'"
        ),
        done[2]
    );
    assert_eq!(
        count(&db, "SELECT count(*) FROM org_api_tokens"),
        tokens_before + done[0]
    );
    assert_eq!(
        count(&db, "SELECT count(*) FROM org_plugin_allowlist"),
        allow_before - 1 + done[2]
    );
    eprintln!("live writer: {installs} installs, writes committed {done:?}");
}

// ---------------------------------------------------------------------------------------------
// The database going away, timeouts

/// Open a transaction that holds one token row, as a platform transaction might: an apply then
/// waits, deterministically, in the middle of its token UPDATE.
async fn hold_token_row(db_url: &str) -> sqlx::PgConnection {
    use sqlx::Connection;
    let mut c = match sqlx::PgConnection::connect(db_url).await {
        Ok(c) => c,
        Err(e) => panic!("{e}"),
    };
    for sql in [
        "BEGIN",
        "SELECT 1 FROM org_api_tokens WHERE id = '70000000-0000-4000-8000-000000000001' FOR UPDATE",
    ] {
        if let Err(e) = sqlx::query(sql).execute(&mut c).await {
            panic!("{e}");
        }
    }
    c
}

#[tokio::test]
async fn backend_terminated_mid_apply_is_exit_1_and_changes_nothing() {
    let db = big();
    let before = fingerprint(&db);
    let holder = hold_token_row(&db.url).await;
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
    let pid = orgctl_waiting(&mut admin, &db.name).await;
    if let Err(e) = sqlx::query("SELECT pg_terminate_backend($1)")
        .bind(pid)
        .execute(&mut admin)
        .await
    {
        panic!("{e}");
    }
    let r = match run.await {
        Ok(r) => r,
        Err(e) => panic!("{e}"),
    };
    r.code(1).one_line_error("rolled back");
    assert!(r.stdout.is_empty(), "{}", r.stdout);
    drop(holder);
    wait_for_orgctl_sessions_to_end(&db);
    assert_eq!(fingerprint(&db), before);
    assert_eq!(db.audit_rows(), 0);
    // Nothing is left half-done: a rerun installs.
    db.orgctl(INSTALL).run().code(0);
}

/// The real thing, on a private server (the shared one must stay up): the server is stopped
/// (fast shutdown) while an apply is in the middle of its token UPDATE.
#[tokio::test]
async fn server_stopped_mid_apply_is_exit_1_and_changes_nothing() {
    let mut pg = match tokio::task::spawn_blocking(PrivateServer::start).await {
        Ok(Ok(pg)) => pg,
        Ok(Err(e)) => panic!("{e}"),
        Err(e) => panic!("{e}"),
    };
    let setup = |pg: &PrivateServer, db: &str, sql: &str| {
        if let Err(e) = pg.psql(db, sql) {
            panic!("{e}");
        }
    };
    setup(&pg, "postgres", "CREATE DATABASE tenant");
    setup(&pg, "tenant", orgctl::testing::db::PLATFORM_SCHEMA_SQL);
    setup(&pg, "tenant", orgctl::testing::dev::SAMPLE_ORG_SQL);
    setup(
        &pg,
        "tenant",
        &format!(
            "INSERT INTO org_api_tokens (token_hash, prefix, org_id)
             SELECT sha256(('bulk' || g)::bytea), 'bulk0000', '{}'
               FROM generate_series(1, {}) g",
            ids::HQ,
            bulk_tokens()
        ),
    );
    let fp = |pg: &PrivateServer| match pg.psql("tenant", FINGERPRINT_SQL) {
        Ok(s) => s,
        Err(e) => panic!("{e}"),
    };
    let before = fp(&pg);
    let url = pg.url("tenant");
    let holder = hold_token_row(&url).await;
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
    let mut admin = {
        use sqlx::Connection;
        match sqlx::PgConnection::connect(&pg.url("postgres")).await {
            Ok(c) => c,
            Err(e) => panic!("{e}"),
        }
    };
    orgctl_waiting(&mut admin, "tenant").await;
    drop(admin);
    pg.stop(libc::SIGINT);
    let r = match run.await {
        Ok(r) => r,
        Err(e) => panic!("{e}"),
    };
    drop(holder);
    r.code(1).one_line_error("rolled back");
    // While it is down, every command says so in one line.
    let down = Cmd::new(&["status"]).env("DATABASE_URL", &url).run();
    down.code(1).one_line_error("is the server running");
    if let Err(e) = pg.resume() {
        panic!("{e}");
    }
    assert_eq!(
        fp(&pg),
        before,
        "no partial state after the server went away"
    );
    Cmd::new(INSTALL).env("DATABASE_URL", &url).run().code(0);
}

#[tokio::test]
async fn statement_timeout_is_exit_1_and_changes_nothing() {
    let db = big();
    let before = fingerprint(&db);
    // Deterministic: the apply's token UPDATE waits on a held row longer than the timeout.
    let holder = hold_token_row(&db.url).await;
    let r = db
        .orgctl(&[
            "install-platform-agent",
            "--model",
            "m",
            "--yes",
            "--lock-timeout",
            "30s",
            "--statement-timeout",
            "700ms",
        ])
        .run_async()
        .await;
    r.code(1).one_line_error("--statement-timeout");
    drop(holder);
    // And a real one: a 20k-token apply does not fit in 5ms per statement.
    let r = db
        .orgctl(&[
            "install-platform-agent",
            "--model",
            "m",
            "--yes",
            "--statement-timeout",
            "5ms",
        ])
        .run_async()
        .await;
    r.code(1).one_line_error("cancelled");
    wait_for_orgctl_sessions_to_end(&db);
    assert_eq!(fingerprint(&db), before);
    assert_eq!(db.audit_rows(), 0);
}

/// A DBA's statement_timeout on the database stays in force when --statement-timeout is not
/// given: the apply waiting on a held row is cancelled by it (not left waiting until the lock
/// timeout), and the message names both limits.
#[tokio::test]
async fn the_databases_own_statement_timeout_stays_in_force_without_the_flag() {
    let db = TestDb::sample();
    db.exec(&format!(
        "ALTER DATABASE {} SET statement_timeout = '400ms'",
        db.name
    ));
    let before = db.snapshot();
    let holder = crate::harness::hold(
        &db,
        &["SELECT 1 FROM org_api_tokens WHERE id = '70000000-0000-4000-8000-000000000001' FOR UPDATE"],
    )
    .await;
    let started = Instant::now();
    let run = tokio::spawn(
        db.orgctl(&[
            "install-platform-agent",
            "--model",
            "m",
            "--yes",
            "--lock-timeout",
            "60s",
        ])
        .run_async(),
    );
    let r = match tokio::time::timeout(Duration::from_secs(20), run).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => panic!("{e}"),
        Err(_) => panic!("the database's statement_timeout was overridden"),
    };
    drop(holder);
    r.code(1)
        .one_line_error("statement_timeout the database or role sets");
    assert!(started.elapsed() < Duration::from_secs(15));
    wait_for_orgctl_sessions_to_end(&db);
    assert_eq!(db.snapshot(), before);
    // A dry run and status run under the same limit and finish well within it.
    db.orgctl(&["status"]).run().code(1);
    db.orgctl(&["install-platform-agent", "--model", "m", "--dry-run"])
        .run()
        .code(0);
}

#[tokio::test]
async fn lock_timeout_is_exit_3_and_changes_nothing() {
    let db = big();
    let before = fingerprint(&db);
    // A platform transaction in flight that updated a root (a row lock install needs).
    let mut platform = db.connect().await;
    for sql in [
        "BEGIN".to_string(),
        format!(
            "UPDATE workspaces SET last_outbound_at = now() WHERE id = '{}'",
            ids::LABS
        ),
    ] {
        if let Err(e) = sqlx::query(&sql).execute(&mut platform).await {
            panic!("{e}");
        }
    }
    let started = Instant::now();
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
    r.code(3).one_line_error("timed out waiting for a lock");
    assert!(r.stderr.contains("--lock-timeout"), "{}", r.stderr);
    assert!(started.elapsed() < Duration::from_secs(10));
    // status reads past it: a full report (exit 1 because the tenant is not installed, not
    // because it timed out), with no error line and well within a lock wait.
    let started = Instant::now();
    let r = db
        .orgctl(&["status", "--lock-timeout", "200ms", "-o", "json"])
        .run_async()
        .await;
    r.code(1);
    assert!(!r.stderr.contains("error:"), "{}", r.stderr);
    let s = parse_status(&r);
    assert_eq!(
        s.failing(),
        ["single_root", "platform_agent_is_root", "model_secret"].as_slice(),
        "{:?}",
        s.failing()
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    drop(platform);
    wait_for_orgctl_sessions_to_end(&db);
    assert_eq!(fingerprint(&db), before);
    assert_eq!(db.audit_rows(), 0);
}

// ---------------------------------------------------------------------------------------------
// Bad inputs

/// Assert a run failed the way a user deserves: its exit code, exactly one error line naming
/// the problem, no panic, no terminal escape, nothing on stdout (unless allowed).
#[track_caller]
fn assert_clean_failure(what: &str, r: &Run, code: i32, needle: &str) {
    assert_eq!(
        r.code, code,
        "{what}: exit code\nstdout: {}\nstderr: {}",
        r.stdout, r.stderr
    );
    let errors: Vec<&str> = r
        .stderr
        .lines()
        .filter(|l| l.starts_with("error:"))
        .collect();
    assert_eq!(errors.len(), 1, "{what}: one error line:\n{}", r.stderr);
    // clap puts the missing argument on the line after its "error:" line.
    assert!(
        r.stderr.to_lowercase().contains(&needle.to_lowercase()),
        "{what}: the error should mention {needle:?}: {}",
        r.stderr
    );
    for s in [&r.stdout, &r.stderr] {
        assert!(!s.contains("panicked"), "{what}: {s}");
        assert!(!s.contains('\x1b') && !s.contains('\x07'), "{what}: {s:?}");
    }
}

/// (what, args, DATABASE_URL override, exit code, what the error mentions)
type Case<'a> = (&'a str, Vec<&'a str>, Option<&'a str>, i32, &'a str);

#[test]
fn bad_inputs_give_their_exit_code_one_line_and_change_nothing() {
    let db = TestDb::sample();
    let before = db.snapshot();
    let long_name = "n".repeat(201);
    let zero_hash = format!("sha256:{}", "0".repeat(64));
    let unreachable = format!(
        "postgres://u:pw-x@127.0.0.1:{}/db",
        orgctl::testing::pgserver::free_port().unwrap_or(1)
    );
    let unknown_db = db.url.replace(&db.name, "no_such_tenant");
    let cases: Vec<Case> = vec![
        // install-platform-agent
        (
            "malformed uuid",
            vec!["install-platform-agent", "--id", "not-a-uuid"],
            None,
            2,
            "--id",
        ),
        (
            "uuid with a bad digit",
            vec![
                "install-platform-agent",
                "--id",
                "a0000000-0000-4000-8000-00000000000g",
            ],
            None,
            2,
            "--id",
        ),
        (
            "empty uuid",
            vec!["install-platform-agent", "--id", ""],
            None,
            2,
            "--id",
        ),
        (
            "sql in a uuid",
            vec![
                "install-platform-agent",
                "--id",
                "a0000000-0000-4000-8000-000000000001'; DROP TABLE workspaces;--",
            ],
            None,
            2,
            "--id",
        ),
        (
            "id of an ordinary workspace",
            vec![
                "install-platform-agent",
                "--id",
                ids::HQ,
                "--model",
                "m",
                "--yes",
            ],
            None,
            3,
            "ordinary workspace",
        ),
        (
            "oversized name",
            vec![
                "install-platform-agent",
                "--name",
                &long_name,
                "--dry-run",
                "--model",
                "m",
            ],
            None,
            2,
            "--name",
        ),
        (
            "escape sequence in a name",
            vec![
                "install-platform-agent",
                "--name",
                "\x1b[31mred\x1b[0m",
                "--dry-run",
                "--model",
                "m",
            ],
            None,
            2,
            "control characters",
        ),
        (
            "blank name",
            vec![
                "install-platform-agent",
                "--name",
                "  ",
                "--dry-run",
                "--model",
                "m",
            ],
            None,
            2,
            "--name",
        ),
        (
            "blank model",
            vec!["install-platform-agent", "--model", "", "--dry-run"],
            None,
            2,
            "--model",
        ),
        (
            "malformed plan hash",
            vec![
                "install-platform-agent",
                "--expect-plan",
                "sha256:zz",
                "--model",
                "m",
                "--yes",
            ],
            None,
            2,
            "not a plan hash",
        ),
        (
            "detailed exit code without a dry run",
            vec!["install-platform-agent", "--detailed-exitcode"],
            None,
            2,
            "--dry-run",
        ),
        (
            "unknown flag",
            vec!["install-platform-agent", "--bogus"],
            None,
            2,
            "--bogus",
        ),
        (
            "apply without --yes and no terminal",
            vec!["install-platform-agent", "--model", "m"],
            None,
            3,
            "--yes",
        ),
        (
            "missing MODEL",
            vec!["install-platform-agent", "--yes"],
            None,
            3,
            "MODEL",
        ),
        // status
        (
            "negative limit",
            vec!["status", "--limit=-1"],
            None,
            2,
            "--limit",
        ),
        (
            "limit not a number",
            vec!["status", "--limit", "ten"],
            None,
            2,
            "--limit",
        ),
        (
            "limit too large",
            vec!["status", "--limit", "1000000"],
            None,
            2,
            "--limit",
        ),
        ("stray argument", vec!["status", "extra"], None, 2, "extra"),
        // global flags
        (
            "bad lock timeout",
            vec!["status", "--lock-timeout", "soon"],
            None,
            2,
            "soon",
        ),
        (
            "lock timeout out of range",
            vec!["status", "--lock-timeout", "8000h"],
            None,
            2,
            "out of range",
        ),
        (
            "bad statement timeout unit",
            vec!["status", "--statement-timeout", "5parsecs"],
            None,
            2,
            "unit",
        ),
        (
            "bad output format",
            vec!["status", "-o", "xml"],
            None,
            2,
            "xml",
        ),
        (
            "quiet and verbose",
            vec!["status", "-q", "-v"],
            None,
            2,
            "--quiet",
        ),
        ("no database", vec!["status"], Some(""), 2, "--database-url"),
        (
            "not a url",
            vec!["status"],
            Some("not a url"),
            2,
            "invalid database URL",
        ),
        (
            "wrong scheme",
            vec!["status"],
            Some("mysql://u:p@h/db"),
            2,
            "scheme",
        ),
        (
            "port out of range",
            vec!["status"],
            Some("postgres://u:p@h:99999/db"),
            2,
            "invalid database URL",
        ),
        (
            "unclosed ipv6 host",
            vec!["status"],
            Some("postgres://u:p@[::1/db"),
            2,
            "invalid database URL",
        ),
        (
            "bad sslmode",
            vec!["status"],
            Some("postgres://u:p@h/db?sslmode=sometimes"),
            2,
            "invalid database URL",
        ),
        (
            "escape sequence in a url",
            vec!["status"],
            Some("postgres://u:p@h\x1b[31m:5432/db"),
            2,
            "invalid database URL",
        ),
        (
            "unreachable server",
            vec!["status"],
            Some(&unreachable),
            1,
            "could not connect",
        ),
        (
            "unknown database",
            vec!["install-platform-agent", "--dry-run"],
            Some(&unknown_db),
            1,
            "does not exist",
        ),
        // dev
        (
            "dev seed with zero roots",
            vec!["dev", "seed", "--roots", "0"],
            None,
            2,
            "--roots",
        ),
        (
            "dev seed percent over 100",
            vec!["dev", "seed", "--revoked-pct", "101"],
            None,
            2,
            "--revoked-pct",
        ),
        (
            "dev seed on a real tenant",
            vec![
                "dev",
                "seed",
                "--roots",
                "2",
                "--workspaces",
                "2",
                "--tokens",
                "0",
                "--tokens-on-roots",
                "0",
                "--allowlist",
                "0",
            ],
            None,
            3,
            "not an orgctl dev database",
        ),
        (
            "dev up on a bad port",
            vec!["dev", "up", "--port", "70000"],
            None,
            2,
            "--port",
        ),
        (
            "unknown dev command",
            vec!["dev", "destroy"],
            None,
            2,
            "destroy",
        ),
    ];
    // All at once: each is a short process, and none may change anything.
    let runs: Vec<(usize, Run)> = std::thread::scope(|scope| {
        let handles: Vec<_> = cases
            .iter()
            .enumerate()
            .map(|(i, (_, args, url, _, _))| {
                let mut cmd = Cmd::new(args).env("DATABASE_URL", url.unwrap_or(&db.url));
                if url == &Some("") {
                    cmd = Cmd::new(args);
                }
                scope.spawn(move || (i, cmd.run()))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| match h.join() {
                Ok(r) => r,
                Err(_) => panic!("a runner thread panicked"),
            })
            .collect()
    });
    for (i, r) in &runs {
        let (what, _, _, code, needle) = &cases[*i];
        assert_clean_failure(what, r, *code, needle);
        if !matches!(*what, "missing MODEL") {
            assert!(r.stdout.is_empty(), "{what}: stdout {}", r.stdout);
        }
    }
    // An expected plan that does not match prints the new diff and refuses.
    let r = db
        .orgctl(&[
            "install-platform-agent",
            "--expect-plan",
            &zero_hash,
            "--model",
            "m",
            "--yes",
        ])
        .run();
    assert_clean_failure("stale plan hash", &r, 3, "differs");
    assert_eq!(db.snapshot(), before, "no bad input changed anything");
    assert_eq!(db.audit_rows(), 0);
}

#[test]
fn odd_unicode_and_sql_metacharacters_are_data_not_code() {
    let db = TestDb::sample();
    // A root whose name carries escape sequences: shown in tables without them.
    db.exec(&format!(
        "UPDATE workspaces SET name = E'\\x1b[2J\\x1b[31mLabs\\x1b]0;owned\\x07' WHERE id = '{}'",
        ids::LABS
    ));
    let r = db
        .orgctl(&["install-platform-agent", "--dry-run", "--model", "m"])
        .run();
    r.code(0);
    assert!(!r.stdout.contains('\x1b') && !r.stdout.contains('\x07'));
    assert!(r.stdout.contains("Labs"));

    // Names are data: right-to-left override, zero-width space, emoji, SQL metacharacters.
    let name = "Robert'); DROP TABLE workspaces;-- \u{202e}tnega\u{200b} 🚀 \"%_\\";
    let r = db
        .orgctl(&[
            "install-platform-agent",
            "--name",
            name,
            "--model",
            "m",
            "--yes",
            "-o",
            "json",
        ])
        .run();
    r.code(0);
    assert_eq!(r.json()["platform_agent"]["name"].as_str(), Some(name));
    let mut conn_check = db.scalar("SELECT count(*) FROM workspaces WHERE kind = 'platform'");
    assert_eq!(conn_check, "1");
    conn_check = db.scalar(&format!(
        "SELECT count(*) FROM workspaces WHERE name = '{}'",
        name.replace('\'', "''")
    ));
    assert_eq!(conn_check, "1", "stored exactly as given");
    let r = db.orgctl(&["status"]).run();
    r.code(1); // the sample's token on a non-root
    assert!(r.stdout.contains("🚀"));
    assert!(!r.stdout.contains('\x1b'));
    let s = parse_status(&db.orgctl(&["status", "-o", "json"]).run());
    assert_eq!(
        s.platform_agent.map(|a| a.name).as_deref(),
        Some(name),
        "JSON is faithful"
    );
}

// ---------------------------------------------------------------------------------------------
// Password masking

/// Characters a generated password draws from: ASCII letters and digits, every ASCII
/// punctuation character (URL delimiters `@:/%?#` included), a space, and Unicode (accents,
/// CJK, emoji, a right-to-left override, a zero-width space).
const ALPHABET: &[&str] = &[
    "a", "Z", "q", "7", "0", "!", "\"", "#", "$", "%", "&", "'", "(", ")", "*", "+", ",", "-", ".",
    "/", ":", ";", "<", "=", ">", "?", "@", "[", "\\", "]", "^", "_", "`", "{", "|", "}", "~", " ",
    "é", "ß", "日本", "🔑", "\u{202e}", "\u{200b}", "Ω", "%41", "%zz",
];

fn gen_password(rng: &mut Rng) -> String {
    loop {
        let len = 3 + rng.below(18);
        let pw: String = (0..len)
            .map(|_| ALPHABET[rng.below(ALPHABET.len())])
            .collect();
        // "**" would match the mask itself; a password must have 3+ bytes to be masked.
        if !pw.contains("**") && pw.trim().len() >= 3 {
            return pw;
        }
    }
}

/// Every form a password can take in a message: as typed, percent-encoded (fully, as the URL
/// crate encodes userinfo, and form-encoded), and percent-decoded when typed encoded.
fn forms(pw: &str) -> Vec<String> {
    use percent_encoding::{percent_decode_str, utf8_percent_encode, NON_ALPHANUMERIC};
    let mut v = vec![
        pw.to_string(),
        utf8_percent_encode(pw, NON_ALPHANUMERIC).to_string(),
        url::form_urlencoded::byte_serialize(pw.as_bytes()).collect(),
    ];
    if let Ok(mut u) = url::Url::parse("postgres://alice@h/db") {
        if u.set_password(Some(pw)).is_ok() {
            if let Some(p) = u.password() {
                v.push(p.to_string());
            }
        }
    }
    let decoded = percent_decode_str(pw).decode_utf8_lossy().to_string();
    if decoded.trim().len() >= 3 {
        v.push(decoded);
    }
    v.retain(|f| f.len() >= 3);
    v.sort();
    v.dedup();
    v
}

#[track_caller]
fn assert_hidden(pw: &str, text: &str, context: &str) {
    for f in forms(pw) {
        assert!(
            !text.contains(&f),
            "password {pw:?} (form {f:?}) appears in {context}: {text}"
        );
    }
}

/// What orgctl prints for an error: sanitised and masked.
fn printed(message: &str) -> String {
    orgctl::testing::mask(&orgctl::testing::sanitize(message))
}

#[test]
fn generated_passwords_never_appear_in_any_message() {
    use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};
    let mut rng = Rng::new(seed("password masking"));
    let n = if slow() { 2000 } else { 300 };
    let mut passwords: Vec<String> = (0..n).map(|_| gen_password(&mut rng)).collect();
    // Hand-picked awkward ones: delimiters that end the authority early when not encoded.
    passwords.extend(
        [
            "5432/s3cret-tail",
            "1?password=leak3d",
            "99#frag-s3cret",
            "p@ss:w0rd/%?#",
            "%41%42%43-encoded",
            "\u{202e}drowssap",
        ]
        .map(String::from),
    );
    for pw in &passwords {
        // First typed raw, unencoded (before any other form registers it): whether it parses
        // or not, nothing shows it.
        let raw = format!("postgres://alice:{pw}@db.invalid:5432/tenant");
        match orgctl::testing::db::DbUrl::parse(&raw) {
            Ok(u) => assert_hidden(
                pw,
                &printed(&format!("{u} {u:?} {}", u.target())),
                "a URL typed without encoding",
            ),
            Err(e) => assert_hidden(pw, &printed(&e.message), "a URL error"),
        }
        // Percent-encoded, as a URL must carry it.
        let enc = utf8_percent_encode(pw, NON_ALPHANUMERIC).to_string();
        for url in [
            format!("postgres://alice:{enc}@db.invalid:5432/tenant?sslmode=disable"),
            format!("postgresql://alice:{enc}@db.invalid/tenant?application_name=x"),
            format!("postgres://alice@db.invalid/tenant?password={enc}"),
        ] {
            match orgctl::testing::db::DbUrl::parse(&url) {
                Ok(u) => {
                    assert_hidden(pw, &format!("{u} {u:?} {}", u.target()), "a parsed URL");
                }
                Err(e) => panic!("a valid URL was refused ({}): {url}", e.message),
            }
            assert_hidden(
                pw,
                &printed(&format!("could not connect with {url} ({pw}, {enc})")),
                "a masked message",
            );
        }
    }

    // Through the binary, against a port nothing listens on (each run retries, so in parallel).
    let port = orgctl::testing::pgserver::free_port().unwrap_or(1);
    let sample: Vec<&String> = passwords
        .iter()
        .rev()
        .take(if slow() { 40 } else { 10 })
        .collect();
    std::thread::scope(|scope| {
        for pw in sample {
            scope.spawn(move || {
                let enc = utf8_percent_encode(pw, NON_ALPHANUMERIC).to_string();
                for (url, args) in [
                    (
                        format!("postgres://alice:{enc}@127.0.0.1:{port}/tenant"),
                        vec!["status", "-v"],
                    ),
                    (
                        // "localhost" as the user: when an unencoded delimiter makes it the host, it
                        // resolves without DNS.
                        format!("postgres://localhost:{pw}@127.0.0.1:{port}/tenant"),
                        vec!["install-platform-agent", "--dry-run", "-o", "json"],
                    ),
                ] {
                    let r = Cmd::new(&args).env("DATABASE_URL", &url).run();
                    assert!(r.code == 1 || r.code == 2, "{pw:?}: {r:?}");
                    assert_hidden(pw, &r.stdout, "stdout");
                    assert_hidden(pw, &r.stderr, "stderr");
                    assert!(!r.stderr.contains("panicked"));
                }
            });
        }
    });
}

#[test]
fn a_server_that_never_answers_is_reported_with_the_time_it_took_in_all() {
    // "no answer within 10s" used to arrive after 31 s without saying why.
    // A loopback listener that accepts and never speaks: every attempt times out, and the one
    // line says how many attempts and how long in all — which must match the clock.
    let listener = match std::net::TcpListener::bind("127.0.0.1:0") {
        Ok(l) => l,
        Err(e) => panic!("bind: {e}"),
    };
    let port = match listener.local_addr() {
        Ok(a) => a.port(),
        Err(e) => panic!("addr: {e}"),
    };
    let held = std::thread::spawn(move || {
        let mut conns = Vec::new();
        for c in listener.incoming().take(3).flatten() {
            conns.push(c);
        }
        std::thread::sleep(Duration::from_secs(60));
        drop(conns);
    });
    let url = format!("postgres://postgres:secret-pw@127.0.0.1:{port}/tenant");
    let t0 = Instant::now();
    let r = Cmd::new(&["status", "--database-url", &url]).run();
    let took = t0.elapsed().as_secs_f64();
    r.code(1).one_line_error("no answer within 10s");
    assert!(!r.stderr.contains("secret-pw"), "{}", r.stderr);
    let said = r
        .stderr
        .split("attempts, ")
        .nth(1)
        .and_then(|s| s.split("s in all").next())
        .and_then(|s| s.parse::<f64>().ok());
    let Some(said) = said else {
        panic!("no total time in: {}", r.stderr)
    };
    assert!(r.stderr.contains("(3 attempts, "), "{}", r.stderr);
    assert!(
        said >= 30.0 && said <= took + 0.2,
        "said {said}s, took {took:.1}s"
    );
    drop(held);
}
