//! backfill run | rollback | status against real PostgreSQL: a mixed fleet, exact rollback,
//! drift and --force, resume, shards, canary, the tenants file, kill -9 and Ctrl-C.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::Value;
use sqlx::Connection;

use crate::harness::{ids, server, urlencode, Cmd, Run, TestDb, PASSWORD};

/// A tenants file in the temp directory, removed on drop.
struct Fleet {
    path: PathBuf,
}

impl Fleet {
    fn new(lines: &[(&str, &str)]) -> Self {
        Self::raw(
            &lines
                .iter()
                .map(|(n, u)| format!("{n} {u}\n"))
                .collect::<String>(),
        )
    }

    fn raw(text: &str) -> Self {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let path = std::env::temp_dir().join(format!(
            "orgctl-tenants-{}-{}.txt",
            std::process::id(),
            N.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
        ));
        if let Err(e) = std::fs::write(&path, text) {
            panic!("write tenants file: {e}");
        }
        Fleet { path }
    }

    fn arg(&self) -> &str {
        match self.path.to_str() {
            Some(s) => s,
            None => panic!("temp path is not UTF-8"),
        }
    }

    fn cmd(&self, args: &[&str]) -> Cmd {
        let mut v: Vec<&str> = vec!["backfill"];
        v.extend_from_slice(args);
        v.extend_from_slice(&["--tenants", self.arg()]);
        Cmd::new(&v)
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The platform tables only (orgctl's own schema appears with the first run and stays).
fn platform(db: &TestDb) -> String {
    let s = db.snapshot();
    match s.find("== orgctl") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}

fn unreachable_url() -> String {
    let port = match orgctl::testing::pgserver::free_port() {
        Ok(p) => p,
        Err(e) => panic!("{e}"),
    };
    format!(
        "postgres://postgres:{}@127.0.0.1:{port}/nowhere",
        urlencode(PASSWORD)
    )
}

fn statuses(doc: &Value) -> BTreeMap<String, String> {
    let Some(tenants) = doc["tenants"].as_array() else {
        panic!("no tenants in {doc}");
    };
    tenants
        .iter()
        .map(|t| {
            (
                t["tenant"].as_str().unwrap_or("?").to_string(),
                t["status"].as_str().unwrap_or("?").to_string(),
            )
        })
        .collect()
}

fn tenant<'a>(doc: &'a Value, name: &str) -> &'a Value {
    match doc["tenants"]
        .as_array()
        .and_then(|a| a.iter().find(|t| t["tenant"] == name))
    {
        Some(t) => t,
        None => panic!("no tenant {name} in {doc}"),
    }
}

fn no_password(r: &Run) {
    assert!(!r.stdout.contains(PASSWORD), "stdout leaks: {}", r.stdout);
    assert!(!r.stderr.contains(PASSWORD), "stderr leaks: {}", r.stderr);
    assert!(!r.stderr.contains("panicked"), "{}", r.stderr);
}

async fn hold_lock(db: &TestDb) -> sqlx::PgConnection {
    let mut conn = db.connect().await;
    if let Err(e) = sqlx::query("SELECT pg_advisory_lock($1, $2)")
        .bind(orgctl::testing::db::TENANT_LOCK.0)
        .bind(orgctl::testing::db::TENANT_LOCK.1)
        .execute(&mut conn)
        .await
    {
        panic!("{e}");
    }
    conn
}

fn installed(db: &TestDb) -> bool {
    db.scalar(
        "SELECT count(*) = 1 AND bool_and(kind = 'platform') FROM workspaces WHERE parent_id IS NULL",
    ) == "t"
}

fn run_id_of(r: &Run) -> String {
    match r
        .stderr
        .lines()
        .next()
        .and_then(|l| l.strip_prefix("run id: "))
    {
        Some(id) => id.trim().to_string(),
        None => panic!("the run id is not printed first:\n{}", r.stderr),
    }
}

#[tokio::test]
async fn a_mixed_fleet_applies_the_healthy_tenants_and_reports_the_rest() {
    let healthy1 = TestDb::sample();
    let healthy2 = TestDb::sample();
    let done = TestDb::sample();
    done.orgctl(&["install-platform-agent", "--model", "m", "--yes"])
        .run()
        .code(0);
    let old = TestDb::sample();
    old.exec("ALTER TABLE workspaces DROP COLUMN kind");
    let old_before = old.snapshot();
    let locked = TestDb::sample();
    let locked_before = platform(&locked);
    let holder = hold_lock(&locked).await;
    let gone = unreachable_url();
    let fleet = Fleet::new(&[
        ("healthy-1", &healthy1.url),
        ("done", &done.url),
        ("old-schema", &old.url),
        ("gone", &gone),
        ("locked", &locked.url),
        ("healthy-2", &healthy2.url),
    ]);
    let report = std::env::temp_dir().join(format!("orgctl-report-{}.json", std::process::id()));
    let report_arg = report.to_string_lossy().to_string();

    // No terminal and no --yes: refused before anything happens.
    let r = fleet.cmd(&["run", "--model", "m"]).run_async().await;
    r.code(3).one_line_error("--yes");
    assert!(!installed(&healthy1));

    let r = fleet
        .cmd(&[
            "run",
            "--model",
            "m",
            "--yes",
            "--lock-timeout",
            "300ms",
            "-o",
            "json",
            "--report",
            &report_arg,
        ])
        .run_async()
        .await;
    r.code(1);
    no_password(&r);
    let run_id = run_id_of(&r);
    let doc = r.json();
    assert_eq!(doc["run_id"], run_id.as_str());
    let want: BTreeMap<String, String> = [
        ("healthy-1", "applied"),
        ("done", "skipped"),
        ("old-schema", "failed"),
        ("gone", "failed"),
        ("locked", "failed"),
        ("healthy-2", "applied"),
    ]
    .iter()
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .collect();
    assert_eq!(statuses(&doc), want);
    let err = |n: &str| tenant(&doc, n)["error"].as_str().unwrap_or("").to_string();
    assert!(
        err("old-schema").contains("workspaces.kind"),
        "{}",
        err("old-schema")
    );
    assert!(err("gone").contains("could not connect"), "{}", err("gone"));
    assert!(err("locked").contains("lock"), "{}", err("locked"));
    let h = tenant(&doc, "healthy-1");
    assert_eq!(h["reparented"], 3);
    assert_eq!(h["tokens_moved"], 5);
    assert_eq!(h["allowlist_moved"], 4);
    assert_eq!(h["allowlist_merged"], 1);
    assert_eq!(doc["totals"]["applied"], 2);
    assert_eq!(doc["totals"]["failed"], 3);
    assert!(doc["started_at"].is_string() && doc["finished_at"].is_string());

    // The report file is the same document.
    let file: Value = match std::fs::read_to_string(&report)
        .ok()
        .and_then(|s| serde_json::from_str(&s).ok())
    {
        Some(v) => v,
        None => panic!("no report file"),
    };
    let _ = std::fs::remove_file(&report);
    assert_eq!(file["run_id"], doc["run_id"]);
    assert_eq!(statuses(&file), want);
    assert!(!file.to_string().contains(PASSWORD));

    assert!(installed(&healthy1) && installed(&healthy2) && installed(&done));
    assert_eq!(
        old.snapshot(),
        old_before,
        "an incompatible tenant is not written to"
    );
    assert_eq!(platform(&locked), locked_before);
    // The snapshot and the audit row are there, atomically with the change.
    assert_eq!(
        healthy1.scalar(&format!(
            "SELECT status || ' ' || (SELECT count(*) FROM orgctl.backfill_rows WHERE run_id = '{run_id}' AND kind = 'root')
                    || ' ' || (SELECT count(*) FROM orgctl.backfill_rows WHERE run_id = '{run_id}' AND kind = 'anchor')
                    || ' ' || (SELECT count(*) FROM orgctl.backfill_rows WHERE run_id = '{run_id}' AND kind = 'merged')
               FROM orgctl.backfill_runs WHERE run_id = '{run_id}'"
        )),
        "applied 3 9 1"
    );
    assert_eq!(
        healthy1.scalar("SELECT count(*) FROM orgctl.audit_log WHERE command = 'backfill run'"),
        "1"
    );

    // Table output of status, from the tenants' own tables; the unreachable one is unknown.
    drop(holder);
    let st = fleet
        .cmd(&["status", "--run-id", &run_id, "-o", "json"])
        .run_async()
        .await;
    st.code(1);
    no_password(&st);
    let sdoc = st.json();
    let got = statuses(&sdoc);
    assert_eq!(got["healthy-1"], "applied");
    assert_eq!(got["done"], "skipped");
    assert_eq!(got["old-schema"], "never_reached");
    assert_eq!(got["gone"], "unknown");
    assert_eq!(got["locked"], "failed");
    let t = fleet
        .cmd(&["status", "--run-id", &run_id])
        .run_async()
        .await;
    assert!(
        t.stdout.contains("healthy-2") && t.stdout.contains("applied"),
        "{}",
        t.stdout
    );
}

#[test]
fn rollback_restores_every_tenant_byte_for_byte_and_twice_is_a_no_op() {
    let plain = TestDb::sample();
    // A partly installed tenant: an agent under HQ with its own token, a later 'github' row
    // (merged away by the install) and an old MODEL (replaced).
    let partial = TestDb::sample().before_platform_constraints();
    partial.exec(&format!(
        "INSERT INTO workspaces (id, name, kind, tier, parent_id, updated_at)
              VALUES ('f0000000-0000-4000-8000-000000000001', 'Old Agent', 'platform', 2, '{}', '2024-05-05T05:05:05.123456Z');
         INSERT INTO org_plugin_allowlist (id, org_id, plugin_name, enabled_by, enabled_at)
              VALUES ('e0000000-0000-4000-8000-0000000000aa', 'f0000000-0000-4000-8000-000000000001', 'github', 'zed', '2025-01-01T00:00:00Z');
         INSERT INTO org_api_tokens (token_hash, prefix, org_id)
              VALUES (sha256('agent-tok'::bytea), 'agent000', 'f0000000-0000-4000-8000-000000000001');
         INSERT INTO workspace_secrets (workspace_id, key, encrypted_value, encryption_version, updated_at)
              VALUES ('f0000000-0000-4000-8000-000000000001', 'MODEL', 'old-model'::bytea, 0, '2024-06-06T06:06:06Z');",
        ids::HQ
    ));
    let empty = TestDb::empty();
    let dbs = [&plain, &partial, &empty];
    let before: Vec<String> = dbs.iter().map(|d| platform(d)).collect();
    let fleet = Fleet::new(&[
        ("plain", &plain.url),
        ("partial", &partial.url),
        ("empty", &empty.url),
    ]);
    // The partial tenant's agent has another MODEL: replacing it needs --replace-model.
    let r = fleet
        .cmd(&[
            "run",
            "--model",
            "new-model",
            "--replace-model",
            "--yes",
            "-o",
            "json",
        ])
        .run();
    r.code(0);
    let doc = r.json();
    let run_id = doc["run_id"].as_str().unwrap_or("").to_string();
    assert_eq!(tenant(&doc, "partial")["agent_action"], "update");
    assert_eq!(tenant(&doc, "partial")["model_secret"], "replaced");
    assert_eq!(tenant(&doc, "partial")["allowlist_merged"], 2);
    for d in dbs {
        assert!(installed(d));
    }

    // Dry run of the rollback: what would be restored, nothing changed.
    let after: Vec<String> = dbs.iter().map(|d| platform(d)).collect();
    let dry = fleet
        .cmd(&["rollback", "--run-id", &run_id, "--dry-run", "-o", "json"])
        .run();
    dry.code(0);
    let ddoc = dry.json();
    assert_eq!(tenant(&ddoc, "plain")["status"], "would_roll_back");
    assert_eq!(tenant(&ddoc, "plain")["roots_restored"], 3);
    assert_eq!(tenant(&ddoc, "plain")["agent"], "deleted");
    assert_eq!(tenant(&ddoc, "partial")["agent"], "restored");
    assert_eq!(tenant(&ddoc, "partial")["model_secret"], "restored");
    assert_eq!(dbs.iter().map(|d| platform(d)).collect::<Vec<_>>(), after);

    let rb = fleet
        .cmd(&["rollback", "--run-id", &run_id, "--yes", "-o", "json"])
        .run();
    rb.code(0);
    for (n, s) in statuses(&rb.json()) {
        assert_eq!(s, "rolled_back", "{n}");
    }
    for (d, b) in dbs.iter().zip(&before) {
        assert_eq!(&platform(d), b, "{} is restored byte for byte", d.name);
    }
    assert_eq!(
        plain.scalar("SELECT count(*) FROM orgctl.former_roots"),
        "0",
        "restored roots are no former roots"
    );
    assert_eq!(
        plain.scalar("SELECT count(*) FROM orgctl.audit_log WHERE command = 'backfill rollback'"),
        "1"
    );

    // A second rollback changes nothing.
    let again = fleet
        .cmd(&["rollback", "--run-id", &run_id, "--yes", "-o", "json"])
        .run();
    again.code(0);
    for (_, s) in statuses(&again.json()) {
        assert_eq!(s, "already_rolled_back");
    }
    for (d, b) in dbs.iter().zip(&before) {
        assert_eq!(&platform(d), b);
    }
    let st = fleet
        .cmd(&["status", "--run-id", &run_id, "-o", "json"])
        .run();
    st.code(0);
    for (_, s) in statuses(&st.json()) {
        assert_eq!(s, "rolled_back");
    }
    // A new run installs again (the partial tenant's agent has its old MODEL back).
    fleet
        .cmd(&["run", "--model", "m", "--replace-model", "--yes"])
        .run()
        .code(0);
    assert!(installed(&plain));
}

#[test]
fn drift_refuses_naming_the_rows_and_force_moves_them_to_the_oldest_former_root() {
    let db = TestDb::sample();
    let fleet = Fleet::new(&[("acme", &db.url)]);
    let r = fleet
        .cmd(&["run", "--model", "m", "--yes", "--run-id", "change-42"])
        .run();
    r.code(0);
    assert_eq!(run_id_of(&r), "change-42");
    let agent = db.scalar("SELECT id FROM workspaces WHERE kind = 'platform'");
    // The platform keeps working after the run: a child, a token and an allowlist row on the
    // agent, and a root touched.
    db.exec(&format!(
        "INSERT INTO workspaces (id, name, parent_id) VALUES ('d0000000-0000-4000-8000-000000000001', 'New Team', '{agent}');
         INSERT INTO org_api_tokens (id, token_hash, prefix, org_id) VALUES ('d0000000-0000-4000-8000-000000000002', sha256('new'::bytea), 'new00000', '{agent}');
         INSERT INTO org_plugin_allowlist (id, org_id, plugin_name, enabled_by) VALUES ('d0000000-0000-4000-8000-000000000003', '{agent}', 'linear', 'dan');
         UPDATE workspaces SET updated_at = now() + interval '1 minute' WHERE id = '{}';",
        ids::LABS
    ));
    let drifted = platform(&db);
    for args in [
        vec!["rollback", "--run-id", "change-42", "--yes", "-o", "json"],
        vec![
            "rollback",
            "--run-id",
            "change-42",
            "--dry-run",
            "-o",
            "json",
        ],
    ] {
        let r = fleet.cmd(&args).run();
        r.code(3).one_line_error("drift");
        let t = tenant(&r.json(), "acme").clone();
        assert_eq!(t["status"], "refused");
        let text = t["error"].as_str().unwrap_or("").to_string();
        for id in [
            "d0000000-0000-4000-8000-000000000001",
            "d0000000-0000-4000-8000-000000000002",
            "d0000000-0000-4000-8000-000000000003",
            ids::LABS,
        ] {
            assert!(text.contains(id), "{id} not named: {text}");
        }
        assert_eq!(platform(&db), drifted, "a refused rollback changes nothing");
    }

    fleet
        .cmd(&[
            "rollback",
            "--run-id",
            "change-42",
            "--tenant",
            "nope",
            "--yes",
        ])
        .run()
        .code(2)
        .one_line_error("--tenant 'nope'");
    let r = fleet
        .cmd(&[
            "rollback",
            "--run-id",
            "change-42",
            "--tenant",
            "acme",
            "--force",
            "--yes",
            "-o",
            "json",
        ])
        .run();
    r.code(0);
    let t = tenant(&r.json(), "acme").clone();
    assert_eq!(t["status"], "rolled_back");
    assert!(
        t.to_string().contains("moved to the oldest former root"),
        "{t}"
    );
    // Acme HQ is the oldest LIVE former root (created 2024-01-01); Acme Legacy, older, is a
    // removed tombstone and never receives them while a live root exists.
    assert_eq!(
        db.scalar(
            "SELECT parent_id FROM workspaces WHERE id = 'd0000000-0000-4000-8000-000000000001'"
        ),
        ids::HQ
    );
    assert_eq!(
        db.scalar(
            "SELECT org_id FROM org_api_tokens WHERE id = 'd0000000-0000-4000-8000-000000000002'"
        ),
        ids::HQ
    );
    assert_eq!(
        db.scalar("SELECT org_id FROM org_plugin_allowlist WHERE id = 'd0000000-0000-4000-8000-000000000003'"),
        ids::HQ
    );
    assert_eq!(
        db.scalar("SELECT count(*) FROM workspaces WHERE kind = 'platform'"),
        "0"
    );
    assert_eq!(
        db.scalar("SELECT count(*) FROM workspaces WHERE parent_id IS NULL"),
        "3",
        "the three roots are roots again"
    );
    // The sample's own rows are back exactly where they were (HQ's 3, plus the new one).
    assert_eq!(
        db.scalar("SELECT count(*) FROM org_api_tokens WHERE org_id = 'a0000000-0000-4000-8000-000000000001' AND id <> 'd0000000-0000-4000-8000-000000000002'"),
        "3"
    );
    assert_eq!(
        db.scalar(&format!(
            "SELECT count(*) FROM org_plugin_allowlist WHERE id = '{}'",
            ids::GITHUB_LABS
        )),
        "1",
        "the merged row is back"
    );
}

#[tokio::test]
async fn the_same_run_id_resumes_and_skips_tenants_done_under_it() {
    let a = TestDb::sample();
    let b = TestDb::sample();
    let c = TestDb::empty();
    let holder = hold_lock(&b).await;
    let fleet = Fleet::new(&[("a", &a.url), ("b", &b.url), ("c", &c.url)]);
    let args = [
        "run",
        "--model",
        "m",
        "--yes",
        "--run-id",
        "resume-1",
        "--lock-timeout",
        "200ms",
        "-o",
        "json",
        "--concurrency",
        "2",
    ];
    let r = fleet.cmd(&args).run_async().await;
    r.code(1);
    assert_eq!(statuses(&r.json())["b"], "failed");
    drop(holder);
    let r = fleet.cmd(&args).run_async().await;
    r.code(0);
    let doc = r.json();
    assert_eq!(tenant(&doc, "a")["status"], "skipped");
    assert_eq!(tenant(&doc, "a")["note"], "applied under this run already");
    assert_eq!(tenant(&doc, "b")["status"], "applied");
    assert_eq!(tenant(&doc, "c")["status"], "skipped");
    for d in [&a, &b, &c] {
        assert!(installed(d));
        assert_eq!(
            d.scalar("SELECT count(*) FROM orgctl.audit_log WHERE command = 'backfill run'"),
            "1",
            "each tenant changed once"
        );
    }
    // Status from stdin.
    let text = std::fs::read(&fleet.path).unwrap_or_default();
    let st = Cmd::new(&[
        "backfill",
        "status",
        "--run-id",
        "resume-1",
        "--tenants",
        "-",
        "-o",
        "json",
    ])
    .stdin(&text)
    .run_async()
    .await;
    st.code(0);
    for (_, s) in statuses(&st.json()) {
        assert_eq!(s, "applied");
    }
}

#[test]
fn shards_are_disjoint_and_cover_the_fleet_and_a_dry_run_writes_nothing() {
    let dbs: Vec<TestDb> = (0..6).map(|_| TestDb::empty()).collect();
    let names: Vec<String> = (0..6).map(|i| format!("tenant-{i:03}")).collect();
    let lines: Vec<(&str, &str)> = names
        .iter()
        .zip(&dbs)
        .map(|(n, d)| (n.as_str(), d.url.as_str()))
        .collect();
    let fleet = Fleet::new(&lines);
    let mut seen = BTreeSet::new();
    for i in 1..=3 {
        let shard = format!("{i}/3");
        let r = fleet
            .cmd(&[
                "run",
                "--dry-run",
                "--model",
                "m",
                "--shard",
                &shard,
                "-o",
                "json",
            ])
            .run();
        r.code(0);
        for (n, s) in statuses(&r.json()) {
            assert_eq!(s, "pending");
            assert!(seen.insert(n.clone()), "{n} in two shards");
        }
    }
    assert_eq!(seen, names.iter().cloned().collect::<BTreeSet<_>>());
    for d in &dbs {
        assert!(
            d.snapshot().contains("== orgctl\nabsent"),
            "a dry run creates nothing"
        );
    }
    for bad in ["0/3", "4/3", "1/0", "x"] {
        fleet
            .cmd(&["run", "--dry-run", "--shard", bad])
            .run()
            .code(2)
            .one_line_error("--shard");
    }
}

#[test]
fn a_failed_canary_stops_the_run_before_the_rest() {
    let a = TestDb::sample();
    let b = TestDb::sample();
    let gone = unreachable_url();
    let fleet = Fleet::new(&[("gone", &gone), ("a", &a.url), ("b", &b.url)]);
    let r = fleet
        .cmd(&[
            "run", "--model", "m", "--yes", "--canary", "1", "-o", "json",
        ])
        .run();
    r.code(1);
    let doc = r.json();
    assert_eq!(doc["canary_stopped"], true);
    assert_eq!(tenant(&doc, "a")["status"], "not_started");
    assert_eq!(tenant(&doc, "b")["status"], "not_started");
    assert!(!installed(&a) && !installed(&b));
    // A healthy canary lets the rest run.
    let fleet = Fleet::new(&[("a", &a.url), ("b", &b.url)]);
    fleet
        .cmd(&["run", "--model", "m", "--yes", "--canary", "1"])
        .run()
        .code(0);
    assert!(installed(&a) && installed(&b));
}

#[test]
fn malformed_or_duplicate_tenant_lines_are_usage_errors_naming_the_line() {
    let db = TestDb::sample();
    let before = db.snapshot();
    let secret_url = db.url.clone();
    for (text, needle) in [
        (format!("# fleet\nacme {secret_url}\nbroken\n"), "line 3"),
        (
            format!("acme {secret_url}\n\nacme {secret_url}\n"),
            "line 3: duplicate tenant name 'acme' (first on line 1)",
        ),
        (format!("{secret_url} acme\n"), "line 1"),
        (format!("acme {secret_url} extra\n"), "line 1"),
        ("# nothing\n".to_string(), "lists no tenant"),
    ] {
        let fleet = Fleet::raw(&text);
        for sub in [
            vec!["run", "--yes"],
            vec!["status", "--run-id", "x"],
            vec!["rollback", "--run-id", "x", "--yes"],
        ] {
            let r = fleet.cmd(&sub).run();
            r.code(2).one_line_error(needle);
            no_password(&r);
        }
    }
    let r = Cmd::new(&[
        "backfill",
        "run",
        "--tenants",
        "/nonexistent/tenants.txt",
        "--yes",
    ])
    .run();
    r.code(2).one_line_error("tenants file");
    assert_eq!(db.snapshot(), before);
}

/// kill -9 at random moments: every tenant is untouched or fully installed with its snapshot,
/// and a rerun with the same run id finishes the job.
#[test]
fn kill_9_leaves_every_tenant_untouched_or_installed_and_a_rerun_finishes() {
    let mut seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos() as u64)
        .unwrap_or(7)
        | 1;
    for round in 0..3 {
        let dbs: Vec<TestDb> = (0..6).map(|_| TestDb::sample()).collect();
        let original = platform(&dbs[0]);
        let names: Vec<String> = (0..6).map(|i| format!("k{i}")).collect();
        let lines: Vec<(&str, &str)> = names
            .iter()
            .zip(&dbs)
            .map(|(n, d)| (n.as_str(), d.url.as_str()))
            .collect();
        let fleet = Fleet::new(&lines);
        let run_id = format!("kill-{round}");
        let args = [
            "run",
            "--model",
            "m",
            "--yes",
            "--run-id",
            &run_id,
            "--concurrency",
            "1",
        ];
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        // Round 0 kills at a random moment from the start; later rounds wait until the first
        // tenant committed, then kill within the next few tenants' work, so the kill lands
        // mid-run (often inside a tenant's transaction) however fast this machine is.
        let delay = Duration::from_millis(if round == 0 { seed % 400 } else { seed % 150 });
        let mut child = match fleet
            .cmd(&args)
            .command()
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
        {
            Ok(c) => c,
            Err(e) => panic!("{e}"),
        };
        if round > 0 {
            let deadline = Instant::now() + Duration::from_secs(20);
            let committed = |d: &TestDb| {
                d.scalar("SELECT to_regclass('orgctl.backfill_runs') IS NOT NULL") == "t"
                    && d.scalar("SELECT count(*) FROM orgctl.backfill_runs") != "0"
            };
            while !committed(&dbs[0]) {
                assert!(
                    Instant::now() < deadline,
                    "the run never committed a tenant"
                );
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        std::thread::sleep(delay);
        let _ = child.kill(); // SIGKILL
        let _ = child.wait();
        // The server notices the dead client and rolls back: wait (with a deadline) until no
        // orgctl session is left on any tenant, rather than for a fixed time.
        let deadline = Instant::now() + Duration::from_secs(20);
        for d in &dbs {
            while d.scalar(&format!(
                "SELECT count(*) FROM pg_stat_activity
                  WHERE datname = '{}' AND application_name = 'orgctl'",
                d.name
            )) != "0"
            {
                assert!(
                    Instant::now() < deadline,
                    "an orgctl session outlived its killed client"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let mut done = 0;
        for d in &dbs {
            let has_tables =
                d.scalar("SELECT to_regclass('orgctl.backfill_runs') IS NOT NULL") == "t";
            let applied = has_tables
                && d.scalar(&format!(
                    "SELECT count(*) FROM orgctl.backfill_runs WHERE run_id = '{run_id}' AND status = 'applied'"
                )) == "1";
            if applied {
                done += 1;
                assert!(
                    installed(d),
                    "round {round} ({delay:?}): snapshot without the change"
                );
                assert_eq!(
                    d.scalar(&format!(
                        "SELECT (SELECT count(*) FROM orgctl.backfill_rows WHERE run_id = '{run_id}' AND kind = 'root')
                              + (SELECT count(*) FROM orgctl.backfill_rows WHERE run_id = '{run_id}' AND kind = 'anchor')"
                    )),
                    "12"
                );
            } else {
                assert_eq!(
                    platform(d),
                    original,
                    "round {round} ({delay:?}): half a change"
                );
            }
        }
        eprintln!("kill -9 after {delay:?}: {done} of 6 tenants installed");
        let r = fleet.cmd(&args).run();
        r.code(0);
        for d in &dbs {
            assert!(installed(d));
        }
        // And the whole fleet rolls back to the original.
        fleet
            .cmd(&["rollback", "--run-id", &run_id, "--yes"])
            .run()
            .code(0);
        for d in &dbs {
            assert_eq!(platform(d), original);
        }
    }
}

/// Ctrl-C: no new tenant starts, the in-flight one finishes, the summary prints, exit 130.
#[tokio::test]
async fn ctrl_c_finishes_in_flight_tenants_prints_the_summary_and_exits_130() {
    interrupted_backfill_finishes_in_flight(&[libc::SIGINT]).await;
}

/// SIGTERM (systemd, Kubernetes) is the first Ctrl-C, not a kill.
#[tokio::test]
async fn sigterm_behaves_as_the_first_ctrl_c() {
    interrupted_backfill_finishes_in_flight(&[libc::SIGTERM]).await;
}

/// `timeout -s INT` or a process-group signal delivers SIGINT twice at once;
/// that is one interrupt, so in-flight tenants still finish.
#[tokio::test]
async fn two_signals_within_a_second_count_as_one() {
    interrupted_backfill_finishes_in_flight(&[libc::SIGINT, libc::SIGINT]).await;
}

/// A second Ctrl-C well after the first abandons the in-flight tenant (rolled back).
#[tokio::test]
async fn a_second_ctrl_c_after_the_window_abandons_in_flight_tenants() {
    interrupted_backfill(&[libc::SIGINT, libc::SIGINT], 1300, false).await;
}

async fn interrupted_backfill_finishes_in_flight(signals: &[i32]) {
    interrupted_backfill(signals, 100, true).await;
}

async fn interrupted_backfill(signals: &[i32], gap_ms: u64, finishes: bool) {
    let locked = TestDb::sample();
    let a = TestDb::sample();
    let b = TestDb::sample();
    let a_before = platform(&a);
    let holder = hold_lock(&locked).await;
    let fleet = Fleet::new(&[("locked", &locked.url), ("a", &a.url), ("b", &b.url)]);
    let mut cmd = fleet
        .cmd(&[
            "run",
            "--model",
            "m",
            "--yes",
            "--concurrency",
            "1",
            "--lock-timeout",
            "20s",
            "-o",
            "json",
        ])
        .command();
    cmd.stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => panic!("{e}"),
    };
    // Wait until orgctl waits for the tenant lock.
    let mut probe = locked.connect().await;
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let waiting: i64 = match sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity
              WHERE application_name = 'orgctl' AND wait_event_type = 'Lock'
                AND datname = current_database()",
        )
        .fetch_one(&mut probe)
        .await
        {
            Ok(n) => n,
            Err(e) => panic!("{e}"),
        };
        if waiting > 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "orgctl never waited for the lock"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for sig in signals {
        orgctl::testing::sys::kill(child.id() as i32, *sig);
        tokio::time::sleep(Duration::from_millis(gap_ms)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Let the in-flight tenant go on.
    let _ = holder.close().await;
    let _ = probe.close().await;
    let out = match tokio::task::spawn_blocking(move || child.wait_with_output()).await {
        Ok(Ok(o)) => o,
        other => panic!("{other:?}"),
    };
    let r = Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).to_string(),
        stderr: String::from_utf8_lossy(&out.stderr).to_string(),
    };
    r.code(130).one_line_error("interrupted");
    // The first signal says what is happening, once.
    assert_eq!(
        r.stderr
            .matches("finishing 1 in-flight tenant (Ctrl-C again to abandon it")
            .count(),
        1,
        "{}",
        r.stderr
    );
    let doc = r.json();
    assert_eq!(doc["interrupted"], true);
    assert_eq!(tenant(&doc, "a")["status"], "not_started");
    assert_eq!(tenant(&doc, "b")["status"], "not_started");
    if finishes {
        assert_eq!(tenant(&doc, "locked")["status"], "applied");
        assert!(installed(&locked));
    } else {
        assert_eq!(tenant(&doc, "locked")["status"], "failed");
        assert!(!installed(&locked));
        // The second Ctrl-C is answered, and the abandoned tenant's time is what it ran.
        assert_eq!(
            r.stderr
                .matches("interrupted again: abandoning 1 in-flight tenant")
                .count(),
            1,
            "{}",
            r.stderr
        );
        let ms = tenant(&doc, "locked")["duration_ms"].as_u64().unwrap_or(0);
        assert!(ms >= 1000, "duration_ms {ms}");
    }
    // No empty line before the error line (no prompt was cut off).
    assert!(!r.stderr.contains("\n\nerror:"), "{:?}", r.stderr);
    assert_eq!(platform(&a), a_before, "no new tenant started after Ctrl-C");
    let _ = server();
}

/// Status and rollback take the shard options of run (a shard worker no
/// longer sees other shards' tenants, nor fails on an unreachable one elsewhere); status JSON
/// has totals and RFC 3339 times.
#[test]
fn status_and_rollback_take_the_shard_options_and_status_has_totals() {
    use orgctl::testing::Shard;
    let a = TestDb::sample();
    let gone = unreachable_url();
    // A name for the unreachable tenant that lands in another of 3 shards than "a".
    let shard_of = |n: &str| {
        (1..=3)
            .find(|i| {
                Shard {
                    index: *i,
                    count: 3,
                }
                .contains(n)
            })
            .unwrap_or(0)
    };
    let mine = shard_of("a");
    let gone_name = (0..100)
        .map(|i| format!("gone-{i}"))
        .find(|n| shard_of(n) != mine)
        .unwrap_or_default();
    let fleet = Fleet::new(&[("a", &a.url), (&gone_name, &gone)]);
    let shard = format!("{mine}/3");
    let run = fleet
        .cmd(&["run", "--model", "m", "--yes", "--shard", &shard])
        .run();
    run.code(0);
    let id = run_id_of(&run);

    let st = fleet
        .cmd(&["status", "--run-id", &id, "--shard", &shard, "-o", "json"])
        .run();
    st.code(0);
    let doc = st.json();
    assert_eq!(doc["shard"], shard.as_str());
    assert_eq!(doc["totals"]["tenants"], 1, "{doc}");
    assert_eq!(doc["totals"]["applied"], 1, "{doc}");
    assert_eq!(doc["totals"]["unknown"], 0, "{doc}");
    assert_eq!(statuses(&doc).len(), 1, "only this shard's tenants");
    let at = doc["tenants"][0]["at"].as_str().unwrap_or_default();
    assert!(
        chrono::DateTime::parse_from_rfc3339(at).is_ok(),
        "RFC 3339: {at}"
    );
    // --shards N with JOB_COMPLETION_INDEX (0-based) is the same shard.
    let idx = (mine - 1).to_string();
    let k8s = fleet
        .cmd(&["status", "--run-id", &id, "--shards", "3", "-o", "json"])
        .env("JOB_COMPLETION_INDEX", &idx)
        .run();
    k8s.code(0);
    assert_eq!(k8s.json()["totals"]["applied"], 1);
    // Without the shard the unreachable tenant of another shard fails the status.
    fleet
        .cmd(&["status", "--run-id", &id, "-o", "json"])
        .run()
        .code(1);
    // --shards without JOB_COMPLETION_INDEX, or out of range: usage errors.
    fleet
        .cmd(&["status", "--run-id", &id, "--shards", "3"])
        .run()
        .code(2)
        .one_line_error("JOB_COMPLETION_INDEX");
    fleet
        .cmd(&["status", "--run-id", &id, "--shards", "3"])
        .env("JOB_COMPLETION_INDEX", "3")
        .run()
        .code(2)
        .one_line_error("out of range");

    // Rollback with the shard: only this shard's tenant, and it succeeds.
    let rb = fleet
        .cmd(&[
            "rollback", "--run-id", &id, "--shard", &shard, "--yes", "-o", "json",
        ])
        .run();
    rb.code(0);
    assert_eq!(statuses(&rb.json()).len(), 1, "{}", rb.stdout);
    assert!(!installed(&a));
}

/// A rerun with a different --model does not silently replace MODEL on a
/// tenant whose agent already exists; --replace-model does.
#[test]
fn a_rerun_with_another_model_needs_replace_model() {
    let a = TestDb::sample();
    let fleet = Fleet::new(&[("a", &a.url)]);
    fleet.cmd(&["run", "--model", "m1", "--yes"]).run().code(0);
    let model = || {
        a.scalar(
            "SELECT convert_from(s.encrypted_value, 'UTF8') FROM workspace_secrets s
               JOIN workspaces w ON w.id = s.workspace_id
              WHERE w.kind = 'platform' AND s.key = 'MODEL'",
        )
    };
    assert_eq!(model(), "m1");
    let before = a.snapshot();
    for extra in [&["--dry-run"][..], &[][..]] {
        let mut args = vec!["run", "--model", "m2", "--yes", "-o", "json"];
        args.extend_from_slice(extra);
        let r = fleet.cmd(&args).run();
        r.code(1);
        let err = tenant(&r.json(), "a")["error"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        assert!(err.contains("--replace-model"), "{err}");
    }
    assert_eq!(model(), "m1");
    assert_eq!(platform(&a), platform_of(&before));
    // The same model again is fine (nothing to do), and --replace-model replaces.
    fleet.cmd(&["run", "--model", "m1", "--yes"]).run().code(0);
    fleet
        .cmd(&["run", "--model", "m2", "--replace-model", "--yes"])
        .run()
        .code(0);
    assert_eq!(model(), "m2");
    fleet
        .cmd(&["run", "--replace-model", "--yes"])
        .run()
        .code(2);
}

fn platform_of(snapshot: &str) -> String {
    match snapshot.find("== orgctl") {
        Some(i) => snapshot[..i].to_string(),
        None => snapshot.to_string(),
    }
}

/// `--report FILE.jsonl` is written as tenants finish: a run killed mid-way (SIGKILL, as a
/// pod's hard kill) leaves one parseable line per finished tenant; a full run ends with the
/// summary line; an unwritable path fails up front with nothing changed.
#[tokio::test(flavor = "multi_thread")]
async fn a_jsonl_report_is_written_as_tenants_finish_and_survives_a_kill() {
    let dbs: Vec<TestDb> = (0..4).map(|_| TestDb::empty()).collect();
    let names: Vec<String> = (0..4).map(|i| format!("j{i}")).collect();
    let lines: Vec<(&str, &str)> = names
        .iter()
        .zip(&dbs)
        .map(|(n, d)| (n.as_str(), d.url.as_str()))
        .collect();
    let fleet = Fleet::new(&lines);
    let report = std::env::temp_dir().join(format!("orgctl-report-{}.jsonl", std::process::id()));
    let rep = report.to_string_lossy().to_string();
    let parse = |text: &str| -> Vec<Value> {
        text.lines()
            .map(|l| match serde_json::from_str::<Value>(l) {
                Ok(v) => v,
                Err(e) => panic!("not a JSON line: {e}: {l}"),
            })
            .collect()
    };
    // The third tenant waits on a held lock, so the kill lands after exactly two finished.
    let lock = hold_lock(&dbs[2]).await;
    let mut child = match fleet
        .cmd(&[
            "--lock-timeout",
            "60s",
            "run",
            "--model",
            "m",
            "--yes",
            "--run-id",
            "jsonl-1",
            "--concurrency",
            "1",
            "--report",
            &rep,
        ])
        .command()
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
    {
        Ok(c) => c,
        Err(e) => panic!("{e}"),
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::fs::read_to_string(&report)
        .map(|t| t.lines().count())
        .unwrap_or(0)
        < 2
    {
        assert!(Instant::now() < deadline, "no two report lines in time");
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(200));
    let _ = child.kill();
    let _ = child.wait();
    drop(lock);
    let partial = parse(&std::fs::read_to_string(&report).unwrap_or_default());
    assert_eq!(partial.len(), 2, "{partial:?}");
    for (v, n) in partial.iter().zip(["j0", "j1"]) {
        assert_eq!(v["kind"], "tenant");
        assert_eq!(v["run_id"], "jsonl-1");
        assert_eq!(v["tenant"], n);
        assert_eq!(v["status"], "applied", "{v}");
    }
    // The rerun finishes: every tenant once (done ones skipped), then the summary, last.
    let r = fleet
        .cmd(&[
            "run", "--model", "m", "--yes", "--run-id", "jsonl-1", "--report", &rep,
        ])
        .run();
    r.code(0);
    no_password(&r);
    let full = parse(&std::fs::read_to_string(&report).unwrap_or_default());
    assert_eq!(full.len(), 5, "{full:?}");
    let tenants: BTreeMap<String, String> = full[..4]
        .iter()
        .map(|v| {
            assert_eq!(v["kind"], "tenant");
            (
                v["tenant"].as_str().unwrap_or("?").to_string(),
                v["status"].as_str().unwrap_or("?").to_string(),
            )
        })
        .collect();
    assert_eq!(tenants["j0"], "skipped");
    assert_eq!(tenants["j2"], "applied");
    assert_eq!(tenants.len(), 4);
    assert_eq!(full[4]["kind"], "summary");
    assert_eq!(full[4]["totals"]["tenants"], 4);
    assert!(!std::fs::read_to_string(&report)
        .unwrap_or_default()
        .contains(PASSWORD));
    let _ = std::fs::remove_file(&report);
    // An unwritable report path: exit 1 before any tenant, nothing changed.
    let fresh = TestDb::empty();
    let one = Fleet::new(&[("fresh", &fresh.url)]);
    one.cmd(&[
        "run",
        "--model",
        "m",
        "--yes",
        "--report",
        "/nonexistent-dir/r.jsonl",
    ])
    .run()
    .code(1)
    .one_line_error("report");
    assert!(fresh.snapshot().contains("== orgctl\nabsent"));
}

#[test]
fn a_fresh_tenant_costs_at_most_eight_statements_and_twelve_round_trips() {
    // A fleet pays every statement once per tenant (and twice its round trip behind
    // latency). Counted by a proxy in front of the server, independently of orgctl: simple
    // queries and extended-protocol executions, as the server's log_statement counts them. A
    // fresh tenant of the sample org (orgctl's schema absent, merged allowlist rows: the most
    // statements a tenant without --id needs).
    let db = TestDb::sample();
    let proxy = crate::harness::CutProxy::start(crate::harness::Cut::Never);
    let tenants = crate::harness::tenants_file(
        &format!("count-{}", db.name),
        &format!("acme {}\n", proxy.url(&db.name)),
    );
    let path = tenants.to_str().unwrap_or_default();
    let r = Cmd::new(&[
        "backfill",
        "run",
        "--tenants",
        path,
        "--model",
        "m",
        "--yes",
        "-q",
    ])
    .run();
    r.code(0);
    let fresh = proxy.statements();
    assert!(
        fresh <= 12,
        "a fresh tenant cost {fresh} statements (target: at most 12)\n{}",
        r.stderr
    );
    // What it costs now, so a change that adds a statement or a round trip is seen: 8
    // statements (one fewer than the hand-written install) and 12 waits for the server after
    // the startup (3 simple-query messages before the plan is known — BEGIN with the tenant
    // lock; the checks; orgctl's schema with the row locks and the plan's first reads — 4
    // prepared statements at two each, the COMMIT).
    assert!(
        fresh <= 8,
        "a fresh tenant cost {fresh} statements (8 before)"
    );
    let waits = proxy.waits();
    assert!(
        waits <= 12,
        "a fresh tenant cost {waits} round trips (12 before)"
    );
    assert!(fresh >= 7, "the proxy counted too few statements: {fresh}");
    // The audit row written from the head read in the change's first statement is a sound
    // link of the chain.
    Cmd::new(&["audit", "verify", "--database-url", &db.url])
        .run()
        .code(0);
    assert_eq!(
        db.scalar("SELECT count(*) FROM workspaces WHERE parent_id IS NULL"),
        "1"
    );
    assert_eq!(
        db.scalar(
            "SELECT string_agg(version::text, ',' ORDER BY version) FROM orgctl._sqlx_migrations"
        ),
        "1,2,3,4,5,6"
    );
    let _ = std::fs::remove_file(&tenants);
}

#[test]
fn the_progress_bar_shows_done_failed_and_in_flight_with_a_rounded_rate() {
    // Two tenants, one of them locked by another session, so
    // the last frame the bar draws (when the locked one gives up, a second later) counts one
    // of each. The same message for rollback.
    let ok = TestDb::sample();
    let locked = TestDb::sample();
    let tenants = crate::harness::tenants_file(
        &format!("progress-{}", ok.name),
        &format!("ok {}\nlocked {}\n", ok.url, locked.url),
    );
    let path = tenants.to_str().unwrap_or_default().to_string();
    let hold = |db: &TestDb| {
        let name = db.name.clone();
        let holder = std::thread::spawn(move || {
            let _ = server().psql(
                &name,
                "BEGIN; SELECT pg_advisory_xact_lock(1869768547, 1); SELECT pg_sleep(3); COMMIT;",
            );
        });
        let deadline = Instant::now() + Duration::from_secs(10);
        while db.scalar(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted
                AND classid = 1869768547 AND objid = 1 AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
        ) != "1"
        {
            assert!(Instant::now() < deadline, "the lock holder never got the lock");
            std::thread::sleep(Duration::from_millis(20));
        }
        holder
    };
    let rate_ok = |out: &str| {
        // No rate with more than two decimals (indicatif's own "51.3538/s").
        out.match_indices("/s").all(|(i, _)| {
            let digits = out[..i]
                .chars()
                .rev()
                .take_while(char::is_ascii_digit)
                .count();
            !(digits > 2 && out[..i - digits].ends_with('.'))
        })
    };

    let holder = hold(&locked);
    let r = Cmd::new(&[
        "--lock-timeout",
        "1s",
        "backfill",
        "run",
        "--tenants",
        &path,
        "--run-id",
        "pb-1",
        "--model",
        "m",
        "--yes",
        "--concurrency",
        "2",
    ])
    .run_in_pty("");
    let _ = holder.join();
    assert_eq!(r.code, 1, "{}", r.stdout);
    assert!(
        r.stdout.contains("done 1 · failed 1 · in flight 0"),
        "no fleet progress on the terminal:\n{}",
        r.stdout
    );
    assert!(rate_ok(&r.stdout), "{}", r.stdout);

    let holder = hold(&ok);
    let r = Cmd::new(&[
        "--lock-timeout",
        "1s",
        "backfill",
        "rollback",
        "--tenants",
        &path,
        "--run-id",
        "pb-1",
        "--yes",
    ])
    .run_in_pty("");
    let _ = holder.join();
    assert!(
        r.stdout.contains("done 1 · failed 1 · in flight 0"),
        "no fleet progress on the terminal for rollback:\n{}",
        r.stdout
    );
    let _ = std::fs::remove_file(&tenants);
}

#[test]
fn a_refused_plan_is_reported_as_itself_not_as_a_lock_timeout() {
    // The row locks travel in the plan's first message; only their own timeout is said as
    // "could not lock": a plan refusal (here several platform agents) keeps its own words.
    let db = TestDb::sample().before_platform_constraints();
    db.exec(
        "INSERT INTO workspaces (id, name, kind) VALUES
           ('11111111-0000-4000-8000-000000000001', 'P1', 'platform'),
           ('11111111-0000-4000-8000-000000000002', 'P2', 'platform')",
    );
    let tenants = crate::harness::tenants_file(
        &format!("refused-{}", db.name),
        &format!("acme {}\n", db.url),
    );
    let path = tenants.to_str().unwrap_or_default();
    let r = Cmd::new(&[
        "-o",
        "json",
        "backfill",
        "run",
        "--tenants",
        path,
        "--model",
        "m",
        "--yes",
    ])
    .run();
    assert_eq!(r.code, 1, "{}", r.stderr);
    let error = r.json()["tenants"][0]["error"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        error.contains("11111111-0000-4000-8000-000000000002"),
        "{error}"
    );
    assert!(!error.contains("could not lock"), "{error}");
    assert_eq!(
        db.scalar("SELECT count(*) FROM workspaces WHERE kind = 'platform'"),
        "2"
    );
    let _ = std::fs::remove_file(&tenants);
}

#[test]
fn a_tenant_whose_result_breaks_an_invariant_fails_with_nothing_changed_and_no_snapshot() {
    // The snapshot travels in the change's first statement and the verification in its audit
    // statement: a failed verification must take the snapshot and the change back together.
    let db = TestDb::sample();
    db.exec(crate::install::SNEAKY_ROOT);
    let before = db.snapshot();
    let tenants = crate::harness::tenants_file(
        &format!("sneaky-{}", db.name),
        &format!("acme {}\n", db.url),
    );
    let path = tenants.to_str().unwrap_or_default();
    let r = Cmd::new(&[
        "-o",
        "json",
        "backfill",
        "run",
        "--tenants",
        path,
        "--model",
        "m",
        "--yes",
    ])
    .run();
    assert_eq!(r.code, 1, "{}", r.stderr);
    let t = &r.json()["tenants"][0];
    assert_eq!(t["status"], "failed", "{t}");
    assert!(
        t["error"]
            .as_str()
            .unwrap_or_default()
            .contains("verification failed before commit (2 root(s)"),
        "{t}"
    );
    assert_eq!(db.snapshot().replace("present", "absent"), before);
    // Only the failure's own row: no snapshot row, no audit row of an apply.
    assert_eq!(db.scalar("SELECT count(*) FROM orgctl.backfill_rows"), "0");
    assert_eq!(
        db.scalar("SELECT string_agg(status, ',') FROM orgctl.backfill_runs"),
        "failed"
    );
    assert_eq!(
        db.scalar("SELECT count(*) FROM orgctl.audit_log WHERE outcome = 'applied'"),
        "0"
    );
    let _ = std::fs::remove_file(&tenants);
}

// ---------------------------------------------------------------------------------------------
// The agent's identity from the tenants file, and its declared plugin through run and rollback.

const MCP: &str = "molecule-ai-plugin-molecule-platform-mcp";

fn report_tenants(r: &Run) -> BTreeMap<String, Value> {
    let doc: Value = match serde_json::from_str(&r.stdout) {
        Ok(v) => v,
        Err(e) => panic!("{e}: {}", r.stdout),
    };
    doc["tenants"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .map(|t| (t["tenant"].as_str().unwrap_or_default().to_string(), t))
        .collect()
}

#[test]
fn each_tenant_gets_the_platforms_id_from_its_line() {
    let (a, b, c) = (TestDb::sample(), TestDb::sample(), TestDb::sample());
    let fleet = Fleet::raw(&format!(
        "# org ids from the control plane\nacme {} org_id=org-b\nhomelab {} self-hosted\nnoid {}\n",
        a.url, b.url, c.url
    ));
    let c_before = c.snapshot();
    let r = fleet
        .cmd(&["run", "--model", "m", "--yes", "-o", "json"])
        .env_remove("MOLECULE_ORG_ID")
        .run();
    r.code(1);
    let t = report_tenants(&r);
    // uuid5(NAMESPACE_URL, "molecule-platform-agent:org-b") and the self-hosted id, both
    // computed with python3.
    assert_eq!(t["acme"]["status"], "applied");
    assert_eq!(
        t["acme"]["agent_id"],
        "ff506107-d497-59e7-a384-56bfab91789d"
    );
    assert_eq!(
        a.scalar("SELECT id FROM workspaces WHERE kind = 'platform'"),
        "ff506107-d497-59e7-a384-56bfab91789d"
    );
    assert_eq!(t["homelab"]["status"], "applied");
    assert_eq!(
        b.scalar("SELECT id FROM workspaces WHERE kind = 'platform'"),
        "ea3cfcf1-cb9c-53b4-90fd-c53123569c4a"
    );
    // No id and no agent: that tenant fails, nothing invented, nothing changed there.
    assert_eq!(t["noid"]["status"], "failed");
    assert!(
        t["noid"]["error"]
            .as_str()
            .is_some_and(|e| e.contains("--org-id")),
        "{}",
        t["noid"]
    );
    assert_eq!(platform(&c), {
        let s = c_before;
        match s.find("== orgctl") {
            Some(i) => s[..i].to_string(),
            None => s,
        }
    });
    assert_eq!(
        c.scalar("SELECT count(*) FROM workspaces WHERE kind = 'platform'"),
        "0"
    );

    // A line's own id wins over --org-id; lines without one take it.
    let (d, e) = (TestDb::sample(), TestDb::sample());
    let fleet = Fleet::raw(&format!("d {} org_id=org-b\ne {}\n", d.url, e.url));
    // One MOLECULE_ORG_NAME cannot name a fleet's orgs: the backfill ignores it.
    fleet
        .cmd(&["run", "--model", "m", "--yes", "--org-id", "test-org-0001"])
        .env("MOLECULE_ORG_NAME", "Acme\u{1b}[31m")
        .run()
        .code(0);
    assert_eq!(
        d.scalar("SELECT id || ' ' || name FROM workspaces WHERE kind = 'platform'"),
        "ff506107-d497-59e7-a384-56bfab91789d Org Concierge"
    );
    assert_eq!(
        e.scalar("SELECT id FROM workspaces WHERE kind = 'platform'"),
        crate::harness::TEST_AGENT_ID
    );
}

#[test]
fn a_fleet_wide_org_id_on_several_tenants_warns_and_bad_identities_are_usage_errors() {
    let (a, b) = (TestDb::sample(), TestDb::sample());
    let fleet = Fleet::new(&[("a", &a.url), ("b", &b.url)]);
    let r = fleet.cmd(&["run", "--model", "m", "--dry-run"]).run();
    r.code(0);
    assert!(
        r.stderr
            .contains("2 tenants take the org id of --org-id (or MOLECULE_ORG_ID)"),
        "{}",
        r.stderr
    );
    let (a0, b0) = (a.snapshot(), b.snapshot());
    for (text, flags, needle) in [
        (
            format!("a {} org_id=o self-hosted\n", a.url),
            vec![],
            "both given",
        ),
        (
            format!("a {} org_id=\n", a.url),
            vec![],
            "must not be empty",
        ),
        (
            format!("a {} tenant_id=o\n", a.url),
            vec![],
            "unknown field `tenant_id=`",
        ),
        (
            format!("a {}\n", a.url),
            vec!["--self-hosted"],
            "both given",
        ),
        (
            format!("a {}\n", a.url),
            vec!["--org-id", " "],
            "must not be empty",
        ),
    ] {
        let f = Fleet::raw(&text);
        let mut args = vec!["run", "--model", "m", "--yes"];
        args.extend(flags);
        f.cmd(&args).run().code(2).one_line_error(needle);
    }
    assert_eq!(a.snapshot(), a0);
    assert_eq!(b.snapshot(), b0);
}

#[test]
fn rollback_restores_the_declared_plugin_exactly() {
    // Created by the run: the rollback deletes it (with the agent), byte-exact.
    let db = TestDb::sample();
    let before = platform(&db);
    let fleet = Fleet::new(&[("acme", &db.url)]);
    fleet
        .cmd(&["run", "--model", "m", "--yes", "--run-id", "plug-1"])
        .run()
        .code(0);
    assert_eq!(
        db.scalar(&format!(
            "SELECT count(*) FROM workspace_declared_plugins WHERE plugin_name = '{MCP}'"
        )),
        "1"
    );
    assert_eq!(
        db.scalar("SELECT plugin_action FROM orgctl.backfill_runs WHERE run_id = 'plug-1'"),
        "create"
    );
    let r = fleet
        .cmd(&["rollback", "--run-id", "plug-1", "--yes", "-o", "json"])
        .run();
    r.code(0);
    assert_eq!(report_tenants(&r)["acme"]["agent"], "deleted");
    assert_eq!(platform(&db), before);

    // An existing agent whose declared plugin had another source: the run refreshes it, the
    // rollback puts the prior row back whole.
    let db = TestDb::sample();
    let agent = "44444444-0000-4000-8000-000000000009";
    db.exec(&format!(
        "INSERT INTO workspaces (id, name, kind, tier, status, template)
         VALUES ('{agent}', 'Concierge', 'platform', 0, 'online', 'platform-agent');
         INSERT INTO workspace_secrets (workspace_id, key, encrypted_value) VALUES ('{agent}', 'MODEL', 'x'::bytea);
         INSERT INTO workspace_declared_plugins (workspace_id, plugin_name, source_raw, created_at, updated_at)
         VALUES ('{agent}', '{MCP}', 'gitea://old#v1', '2026-01-01T00:00:00Z', '2026-01-02T00:00:00Z');"
    ));
    let before = platform(&db);
    let fleet = Fleet::new(&[("acme", &db.url)]);
    fleet
        .cmd(&["run", "--yes", "--run-id", "plug-2"])
        .env_remove("MOLECULE_ORG_ID")
        .run()
        .code(0);
    assert_eq!(
        db.scalar(&format!(
            "SELECT source_raw FROM workspace_declared_plugins WHERE workspace_id = '{agent}'"
        )),
        "gitea://molecule-ai/molecule-ai-plugin-molecule-platform-mcp#main"
    );
    fleet
        .cmd(&["rollback", "--run-id", "plug-2", "--yes"])
        .run()
        .code(0);
    assert_eq!(platform(&db), before);
}

#[test]
fn a_tenant_whose_agent_is_removed_fails_refused_and_is_left_alone() {
    let db = TestDb::sample();
    let agent = "44444444-0000-4000-8000-00000000000a";
    db.exec(&format!(
        "INSERT INTO workspaces (id, name, kind, tier, status)
         VALUES ('{agent}', 'Deleted concierge', 'platform', 0, 'removed');"
    ));
    let before = platform(&db);
    let fleet = Fleet::new(&[("acme", &db.url)]);
    for extra in [&["--dry-run"][..], &["--yes"][..]] {
        let mut args = vec!["run", "--model", "m", "-o", "json"];
        args.extend_from_slice(extra);
        let r = fleet.cmd(&args).run();
        r.code(1);
        let t = report_tenants(&r);
        assert_eq!(t["acme"]["status"], "failed");
        assert!(
            t["acme"]["error"]
                .as_str()
                .is_some_and(|e| e.contains(&format!("the platform agent {agent}"))
                    && e.contains("--revive")),
            "{}",
            t["acme"]
        );
    }
    assert_eq!(platform(&db), before);
}

/// A mistyped run id is not success: when no selected tenant knows the run, rollback and status
/// exit 1 naming the runs the tenants do know, newest first, and nothing is changed.
#[test]
fn a_run_id_no_tenant_knows_fails_naming_the_known_runs_newest_first() {
    let a = TestDb::sample();
    let b = TestDb::sample();
    let fleet = Fleet::new(&[("a", &a.url), ("b", &b.url)]);
    for id in ["change-1234", "change-0001"] {
        fleet
            .cmd(&["run", "--model", "m", "--yes", "--run-id", id])
            .run()
            .code(0);
    }
    let before = (a.snapshot(), b.snapshot());
    for args in [
        vec!["rollback", "--run-id", "change-1243", "--yes"],
        vec!["rollback", "--run-id", "change-1243", "--dry-run"],
        vec!["status", "--run-id", "nope"],
        vec!["status", "--run-id", "nope", "-o", "json"],
    ] {
        let r = fleet.cmd(&args).run();
        r.code(1).one_line_error("no selected tenant knows run id");
        no_password(&r);
        let line = r
            .stderr
            .lines()
            .find(|l| l.starts_with("error:"))
            .unwrap_or("");
        let (newer, older) = (line.find("change-0001"), line.find("change-1234"));
        assert!(
            newer.is_some() && older.is_some() && newer < older,
            "known runs newest first: {line}"
        );
        assert!(r.stdout.is_empty(), "{}", r.stdout);
    }
    assert_eq!((a.snapshot(), b.snapshot()), before, "nothing changed");
    // One tenant knowing the run is enough: the others are reported as before.
    let c = TestDb::sample();
    let mixed = Fleet::new(&[("a", &a.url), ("c", &c.url)]);
    mixed
        .cmd(&["status", "--run-id", "change-1234"])
        .run()
        .code(0);
    // A fleet where no tenant has ever run a backfill says so.
    let fresh = Fleet::new(&[("c", &c.url)]);
    fresh
        .cmd(&["status", "--run-id", "change-1234"])
        .run()
        .code(1)
        .one_line_error("no selected tenant has any backfill run");
}

/// Exit codes a CI pipeline can gate on: a fleet dry run with --detailed-exitcode is 4 while any
/// tenant has pending changes and 0 once every tenant is done; `backfill status --check` is 1
/// while any selected tenant is not applied or skipped, naming them.
#[tokio::test]
async fn fleet_exit_codes_for_ci_detailed_exitcode_and_status_check() {
    let a = TestDb::sample();
    let b = TestDb::sample();
    let fleet = Fleet::new(&[("a", &a.url), ("b", &b.url)]);
    let before = (platform(&a), platform(&b));
    let dry = ["run", "--model", "m", "--dry-run", "--detailed-exitcode"];
    fleet.cmd(&dry).run_async().await.code(4);
    // Without the flag a pending dry run is still 0; the flag needs --dry-run.
    fleet
        .cmd(&["run", "--model", "m", "--dry-run"])
        .run_async()
        .await
        .code(0);
    let r = fleet
        .cmd(&["run", "--model", "m", "--yes", "--detailed-exitcode"])
        .run_async()
        .await;
    r.code(2);
    assert!(r.stderr.contains("--dry-run"), "{}", r.stderr);
    assert_eq!((platform(&a), platform(&b)), before, "nothing changed");

    // b fails (its lock is held): status is informational (0), --check is a gate (1).
    let holder = hold_lock(&b).await;
    let run = [
        "run",
        "--model",
        "m",
        "--yes",
        "--run-id",
        "ci-1",
        "--lock-timeout",
        "200ms",
    ];
    fleet.cmd(&run).run_async().await.code(1);
    drop(holder);
    fleet
        .cmd(&["status", "--run-id", "ci-1"])
        .run_async()
        .await
        .code(0);
    let r = fleet
        .cmd(&["status", "--run-id", "ci-1", "--check"])
        .run_async()
        .await;
    r.code(1).one_line_error("--check: 1 of 2 tenant(s)");
    assert!(r.stderr.contains("1 failed (b)"), "{}", r.stderr);
    // The dry run still sees b pending; after the resume everything is done.
    fleet.cmd(&dry).run_async().await.code(4);
    fleet.cmd(&run).run_async().await.code(0);
    fleet
        .cmd(&["status", "--run-id", "ci-1", "--check"])
        .run_async()
        .await
        .code(0);
    fleet.cmd(&dry).run_async().await.code(0);
}
