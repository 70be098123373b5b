//! `backfill rollback` right after a run: every statement of the
//! rollback runs with nested loops off (statistics are stale after a run), and every restored
//! row is verified against its snapshot before commit — exact without platform triggers,
//! honestly reported when a platform trigger rewrites `updated_at`, refused when a column the
//! rollback is for cannot be put back.

use serde_json::Value;

use crate::harness::{ids, Cmd, Run, TestDb};

/// A one-tenant fleet file in the temp directory, removed on drop.
struct OneTenant {
    path: std::path::PathBuf,
}

impl OneTenant {
    fn new(db: &TestDb) -> Self {
        let path = std::env::temp_dir().join(format!(
            "orgctl-rollback-checks-{}-{}.txt",
            std::process::id(),
            db.name
        ));
        if let Err(e) = std::fs::write(&path, format!("t {}\n", db.url)) {
            panic!("write tenants file: {e}");
        }
        OneTenant { path }
    }

    fn run(&self, args: &[&str]) -> Run {
        let file = self.path.to_str().unwrap_or_default();
        let mut v: Vec<&str> = vec!["backfill"];
        v.extend_from_slice(args);
        v.extend_from_slice(&["--run-id", "r-15", "--tenants", file, "--yes", "-o", "json"]);
        Cmd::new(&v).run()
    }
}

impl Drop for OneTenant {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The platform tables only.
fn platform(db: &TestDb) -> String {
    let s = db.snapshot();
    match s.find("== orgctl") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}

fn only_tenant(r: &Run) -> Value {
    r.json()["tenants"][0].clone()
}

/// As a tenant looks right after a run: autovacuum has not analysed the run's changes.
fn autovacuum_off(db: &TestDb) {
    db.exec(
        "ALTER TABLE workspaces SET (autovacuum_enabled = off);
         ALTER TABLE org_api_tokens SET (autovacuum_enabled = off);
         ALTER TABLE org_plugin_allowlist SET (autovacuum_enabled = off);
         ALTER TABLE workspace_secrets SET (autovacuum_enabled = off);",
    );
}

/// A partly installed tenant: an existing agent (updated by the run), a later allowlist row the
/// run merges away, an old MODEL the run replaces — so every kind of restore is verified.
fn partly_installed() -> TestDb {
    let db = TestDb::sample().before_platform_constraints();
    db.exec(&format!(
        "INSERT INTO workspaces (id, name, kind, tier, parent_id, updated_at)
              VALUES ('f0000000-0000-4000-8000-000000000001', 'Old Agent', 'platform', 2, '{}', '2024-05-05T05:05:05.123456Z');
         INSERT INTO org_plugin_allowlist (id, org_id, plugin_name, enabled_by, enabled_at)
              VALUES ('e0000000-0000-4000-8000-0000000000aa', 'f0000000-0000-4000-8000-000000000001', 'github', 'zed', '2025-01-01T00:00:00Z');
         INSERT INTO workspace_secrets (workspace_id, key, encrypted_value, encryption_version, updated_at)
              VALUES ('f0000000-0000-4000-8000-000000000001', 'MODEL', 'old-model'::bytea, 0, '2024-06-06T06:06:06Z');",
        ids::HQ
    ));
    db
}

/// The common platform trigger: every update stamps `updated_at`.
const TOUCH_TRIGGER: &str = "
    CREATE FUNCTION platform_touch() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN NEW.updated_at = now(); RETURN NEW; END $$;
    CREATE TRIGGER set_updated_at BEFORE UPDATE ON workspaces
        FOR EACH ROW EXECUTE FUNCTION platform_touch();
    CREATE TRIGGER set_updated_at BEFORE UPDATE ON workspace_secrets
        FOR EACH ROW EXECUTE FUNCTION platform_touch();";

#[test]
fn rollback_without_triggers_is_verified_byte_exact() {
    let db = partly_installed();
    autovacuum_off(&db);
    let before = platform(&db);
    let fleet = OneTenant::new(&db);
    fleet
        .run(&["run", "--model", "new-model", "--replace-model"])
        .code(0);

    let r = fleet.run(&["rollback"]);
    r.code(0);
    let t = only_tenant(&r);
    assert_eq!(t["status"], "rolled_back", "{t}");
    let v = &t["verification"];
    assert_eq!(v["exact"], true, "{v}");
    assert_eq!(v["not_restored"], serde_json::json!([]), "{v}");
    // 3 roots + the anchors moved + 2 merged rows + the prior MODEL + the agent: every row the
    // run changed is checked, not a sample.
    let moved: i64 = db
        .scalar("SELECT count(*) FROM orgctl.backfill_rows WHERE run_id = 'r-15' AND kind IN ('root', 'anchor', 'merged')")
        .parse()
        .unwrap_or(-1);
    assert_eq!(v["rows_checked"], moved + 2, "{v}");
    assert!(!r.stderr.contains("not byte-exact"), "{}", r.stderr);
    assert_eq!(platform(&db), before, "restored byte for byte");
    assert_eq!(
        db.scalar(
            "SELECT args->'verification'->>'exact' FROM orgctl.audit_log WHERE command = 'backfill rollback'"
        ),
        "true",
        "the audit row records the verification"
    );
}

#[test]
fn a_trigger_that_stamps_updated_at_is_reported_not_claimed_exact() {
    let db = partly_installed();
    db.exec(TOUCH_TRIGGER);
    let parents = "SELECT string_agg(id || ' ' || coalesce(parent_id::text, '-') || ' ' || name || ' ' || coalesce(kind, '-') || ' ' || tier, E'\\n' ORDER BY id) FROM workspaces";
    let anchors = "SELECT string_agg(id || ' ' || coalesce(org_id::text, '-'), E'\\n' ORDER BY id) FROM (SELECT id, org_id FROM org_api_tokens UNION ALL SELECT id, org_id FROM org_plugin_allowlist) x";
    let tree = db.scalar(parents);
    let anchored = db.scalar(anchors);
    let fleet = OneTenant::new(&db);
    fleet
        .run(&["run", "--model", "new-model", "--replace-model"])
        .code(0);

    let r = fleet.run(&["rollback"]);
    r.code(0);
    let t = only_tenant(&r);
    assert_eq!(t["status"], "rolled_back", "{t}");
    let v = &t["verification"];
    assert_eq!(v["exact"], false, "{v}");
    let Some(list) = v["not_restored"].as_array() else {
        panic!("no not_restored list: {v}");
    };
    // The 3 roots and the agent: their updated_at, and nothing else.
    assert_eq!(list.len(), 1, "{v}");
    assert_eq!(list[0]["table"], "workspaces");
    assert_eq!(list[0]["column"], "updated_at");
    assert_eq!(list[0]["rows"], 3 + 1, "{v}");
    let reason = list[0]["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("rewritten by a trigger on workspaces (set_updated_at)"),
        "{reason}"
    );
    let warnings: Vec<&str> = r
        .stderr
        .lines()
        .filter(|l| l.contains("not byte-exact"))
        .collect();
    assert_eq!(warnings.len(), 1, "one warning line:\n{}", r.stderr);
    assert!(warnings[0].contains("set_updated_at"), "{}", warnings[0]);

    // Everything else is back; the platform's trigger is still enabled.
    assert_eq!(db.scalar(parents), tree);
    assert_eq!(db.scalar(anchors), anchored);
    assert_eq!(
        db.scalar("SELECT count(*) FROM workspace_secrets WHERE workspace_id = 'f0000000-0000-4000-8000-000000000001' AND key = 'MODEL' AND encrypted_value = 'old-model'::bytea AND updated_at = '2024-06-06T06:06:06Z'"),
        "1",
        "the prior MODEL is re-inserted whole (an insert: the update trigger does not fire)"
    );
    assert_eq!(
        db.scalar("SELECT string_agg(tgenabled::text, '') FROM pg_trigger WHERE tgname = 'set_updated_at'"),
        "OO"
    );
    assert_eq!(
        db.scalar("SELECT args->'verification'->>'exact' FROM orgctl.audit_log WHERE command = 'backfill rollback'"),
        "false"
    );
}

#[test]
fn a_column_the_restore_cannot_put_back_fails_the_tenant_and_changes_nothing() {
    let db = partly_installed();
    // A platform rule: an ordinary workspace that has a parent never becomes a root again.
    db.exec(
        "CREATE FUNCTION keep_parent() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN IF NEW.parent_id IS NULL AND OLD.parent_id IS NOT NULL AND NEW.kind IS DISTINCT FROM 'platform'
               THEN NEW.parent_id = OLD.parent_id; END IF;
               RETURN NEW; END $$;
         CREATE TRIGGER keep_parent BEFORE UPDATE ON workspaces
             FOR EACH ROW EXECUTE FUNCTION keep_parent();",
    );
    let fleet = OneTenant::new(&db);
    fleet
        .run(&["run", "--model", "new-model", "--replace-model"])
        .code(0);
    let after_run = platform(&db);
    let audits = db.audit_rows();

    let r = fleet.run(&["rollback"]);
    r.code(1);
    let t = only_tenant(&r);
    assert_eq!(t["status"], "failed", "{t}");
    let err = t["error"].as_str().unwrap_or_default();
    assert!(
        err.contains("workspaces.parent_id not restored on 3 row(s)")
            && err.contains("keep_parent")
            && err.contains("rolled back, nothing was changed"),
        "{err}"
    );
    assert!(t["verification"].is_null(), "{t}");
    r.one_line_error("failed to roll back");
    assert_eq!(platform(&db), after_run, "nothing changed");
    assert_eq!(db.audit_rows(), audits);
    assert_eq!(
        db.scalar("SELECT status FROM orgctl.backfill_runs WHERE run_id = 'r-15'"),
        "applied"
    );
}

#[test]
fn every_rollback_write_runs_with_nested_loops_and_jit_off_on_an_analysed_snapshot() {
    // Item 4: right after a run the planner's statistics are stale and a nested loop over the
    // snapshot is quadratic. A statement trigger records the settings each of the rollback's
    // writes ran with; without orgctl's protection nested loops are 'on'. With them off, a plan
    // that keeps one is costed past jit_above_cost, so JIT must be off too (it cost ~0.6 s per
    // such statement on the large org). The run's snapshot is analysed in the rollback's
    // transaction (true counts: sequential scans, not 300k index probes).
    let db = partly_installed();
    autovacuum_off(&db);
    db.exec(
        "CREATE TABLE seen (tbl TEXT, op TEXT, nestloop TEXT, jit TEXT);
         CREATE FUNCTION record_setting() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN INSERT INTO seen VALUES (TG_TABLE_NAME, TG_OP, current_setting('enable_nestloop'),
                                        current_setting('jit'));
               RETURN NULL; END $$;
         CREATE TRIGGER record_setting AFTER INSERT OR UPDATE OR DELETE ON workspaces
             FOR EACH STATEMENT EXECUTE FUNCTION record_setting();
         CREATE TRIGGER record_setting AFTER INSERT OR UPDATE OR DELETE ON org_api_tokens
             FOR EACH STATEMENT EXECUTE FUNCTION record_setting();
         CREATE TRIGGER record_setting AFTER INSERT OR UPDATE OR DELETE ON org_plugin_allowlist
             FOR EACH STATEMENT EXECUTE FUNCTION record_setting();
         CREATE TRIGGER record_setting AFTER INSERT OR UPDATE OR DELETE ON workspace_secrets
             FOR EACH STATEMENT EXECUTE FUNCTION record_setting();",
    );
    let fleet = OneTenant::new(&db);
    fleet
        .run(&["run", "--model", "new-model", "--replace-model"])
        .code(0);
    db.exec(
        "TRUNCATE seen;
         ALTER TABLE orgctl.backfill_rows SET (autovacuum_enabled = off);",
    );
    let stats =
        "SELECT count(*) FROM pg_stats WHERE schemaname = 'orgctl' AND tablename = 'backfill_rows'";
    assert_eq!(db.scalar(stats), "0", "the snapshot is not analysed before");
    let dry = fleet.run(&["rollback", "--dry-run"]);
    dry.code(0);
    assert_eq!(db.scalar(stats), "0", "a dry run writes no statistics");

    let r = fleet.run(&["rollback"]);
    r.code(0);
    assert_eq!(only_tenant(&r)["verification"]["exact"], true);
    let seen = db.scalar(
        "SELECT string_agg(DISTINCT tbl || ' ' || op || ' nestloop ' || nestloop || ' jit ' || jit, ', ') FROM seen",
    );
    for tbl in ["org_api_tokens", "org_plugin_allowlist", "workspaces"] {
        assert!(
            seen.contains(&format!("{tbl} UPDATE nestloop off jit off")),
            "{seen}"
        );
    }
    assert!(
        !seen.contains(" on"),
        "a rollback statement ran with nested loops or JIT on: {seen}"
    );
    assert_ne!(db.scalar(stats), "0", "the rollback analysed the snapshot");
    // The settings are LOCAL: they end with the rollback's transaction.
    assert_eq!(db.scalar("SHOW enable_nestloop"), "on");
    assert_eq!(db.scalar("SHOW jit"), "on");
}

#[test]
fn force_lists_the_rows_it_left_as_they_are() {
    let db = TestDb::sample();
    let fleet = OneTenant::new(&db);
    fleet.run(&["run", "--model", "m"]).code(0);
    // Drift: one moved token deleted since the run.
    let gone = db.scalar(
        "DELETE FROM org_api_tokens WHERE id = (SELECT row_id FROM orgctl.backfill_rows
          WHERE run_id = 'r-15' AND kind = 'anchor' AND tbl = 'org_api_tokens' ORDER BY row_id LIMIT 1)
         RETURNING id",
    );
    let refused = fleet.run(&["rollback"]);
    refused.code(3);
    assert!(only_tenant(&refused)["verification"].is_null());

    let r = fleet.run(&["rollback", "--force"]);
    r.code(0);
    let t = only_tenant(&r);
    assert_eq!(t["status"], "rolled_back", "{t}");
    let v = &t["verification"];
    assert_eq!(v["exact"], false, "{v}");
    assert_eq!(
        v["not_restored"],
        serde_json::json!([{"table": "org_api_tokens", "column": "(row)", "rows": 1,
                            "example": gone, "reason": "the row is gone (drift, left as it is by --force)"}]),
        "{v}"
    );
}

/// The run records a digest of each tenant's snapshot in its chained audit row when it takes
/// the snapshot; rollback checks the snapshot against it before restoring anything. A snapshot
/// edited since (a root's old parent, the tokens' old org) is refused (exit 3) naming what
/// differs — with --force too — and nothing changes; an intact one rolls back as always.
#[test]
fn a_snapshot_edited_after_the_run_is_refused_naming_what_differs() {
    let base = TestDb::sample();
    let fleet = OneTenant::new(&base);
    let r = fleet.run(&["run", "--model", "m"]);
    r.code(0);
    // The report carries each changed tenant's audit head, to keep outside the database.
    let head = &only_tenant(&r)["audit_head"];
    assert_eq!(
        format!(
            "{}:{}",
            head["seq"],
            head["row_hash"].as_str().unwrap_or_default()
        ),
        base.scalar("SELECT seq || ':' || encode(row_hash, 'hex') FROM orgctl.audit_head")
    );
    let digest = base.scalar(
        "SELECT args->'snapshot_digest' FROM orgctl.audit_log WHERE command = 'backfill run'",
    );
    for part in ["run", "root:workspaces", "anchor:org_api_tokens"] {
        assert!(digest.contains(&format!("\"{part}\"")), "{digest}");
    }
    drop(fleet);
    let edits = [
        (
            "UPDATE orgctl.backfill_rows SET old_parent_id = 'a0000000-0000-4000-8000-000000000002'
              WHERE kind = 'root' AND row_id = 'b0000000-0000-4000-8000-000000000001'",
            "the re-parented roots' old parents",
        ),
        (
            "UPDATE orgctl.backfill_rows SET old_org_id = 'c0000000-0000-4000-8000-000000000001'
              WHERE kind = 'anchor' AND tbl = 'org_api_tokens'",
            "the tokens' old org",
        ),
        (
            "DELETE FROM orgctl.backfill_rows WHERE kind = 'anchor' AND tbl = 'org_plugin_allowlist'",
            "the allowlist rows' old org",
        ),
    ];
    for (edit, named) in edits {
        let db = base.copy_of();
        db.exec(edit);
        let before = db.snapshot();
        let fleet = OneTenant::new(&db);
        for extra in [&[][..], &["--force"][..]] {
            let mut args = vec!["rollback"];
            args.extend_from_slice(extra);
            let r = fleet.run(&args);
            r.code(3);
            let t = only_tenant(&r);
            assert_eq!(t["status"], "refused", "{t}");
            let error = t["error"].as_str().unwrap_or_default();
            assert!(error.contains(named), "{edit}: {error}");
            assert!(
                error.contains("was changed after the run took it"),
                "{error}"
            );
            assert_eq!(db.snapshot(), before, "{edit}: something changed");
        }
        // `audit verify` finds it too, though the chain itself is intact.
        let r = db.orgctl(&["audit", "verify"]).run();
        r.code(1)
            .one_line_error("was changed after the run took it");
    }
    // Untouched, it rolls back.
    let db = base.copy_of();
    let fleet = OneTenant::new(&db);
    db.orgctl(&["audit", "verify"]).run().code(0);
    let r = fleet.run(&["rollback"]);
    r.code(0);
    assert_eq!(only_tenant(&r)["status"], "rolled_back");
}
