//! The audit trail: `orgctl audit`, `--reason`, the hash chain and
//! `audit verify`, against the real PostgreSQL of the harness.

use std::collections::BTreeSet;

use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::harness::{ids, server, Cmd, TestDb};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EntryJson {
    id: i64,
    at: String,
    os_user: String,
    db_user: String,
    command: String,
    args: serde_json::Value,
    reason: Option<String>,
    outcome: String,
    orgctl_version: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct VerifyJson {
    intact: bool,
    rows: u64,
    chained: u64,
    unchained: u64,
    head: Option<HeadJson>,
    problems: u64,
    first_problem: Option<ProblemJson>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HeadJson {
    seq: i64,
    row_hash: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProblemJson {
    kind: String,
    id: Option<i64>,
    seq: Option<i64>,
    message: String,
}

fn entries(db: &TestDb, args: &[&str]) -> Vec<EntryJson> {
    let mut a = vec!["audit", "-o", "json"];
    a.extend_from_slice(args);
    let r = db.orgctl(&a).run();
    r.code(0);
    match serde_json::from_str(&r.stdout) {
        Ok(v) => v,
        Err(e) => panic!("audit JSON ({e}):\n{}\n{}", r.stdout, r.stderr),
    }
}

fn verify(db: &TestDb) -> (i32, VerifyJson, String) {
    let r = db.orgctl(&["audit", "verify", "-o", "json"]).run();
    let v: VerifyJson = match serde_json::from_str(&r.stdout) {
        Ok(v) => v,
        Err(e) => panic!("verify JSON ({e}):\n{}\n{}", r.stdout, r.stderr),
    };
    (r.code, v, r.stderr)
}

#[track_caller]
fn assert_intact(db: &TestDb) -> VerifyJson {
    let (code, v, stderr) = verify(db);
    assert_eq!(code, 0, "{v:?}\n{stderr}");
    assert!(
        v.intact && v.first_problem.is_none() && v.problems == 0,
        "{v:?}"
    );
    v
}

#[track_caller]
fn assert_broken(db: &TestDb, kind: &str, id: Option<i64>) -> ProblemJson {
    let (code, v, stderr) = verify(db);
    assert_eq!(code, 1, "{v:?}\n{stderr}");
    assert!(!v.intact, "{v:?}");
    let lines: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(lines[0].contains("not intact"), "{stderr}");
    let p = match v.first_problem {
        Some(p) => p,
        None => panic!("no problem reported: {stderr}"),
    };
    assert_eq!((p.kind.as_str(), p.id), (kind, id), "{p:?}");
    p
}

fn mint(db: &TestDb, name: &str) {
    db.orgctl(&["token", "mint", "--name", name, "--org", ids::HQ])
        .run()
        .code(0);
}

fn ids_in(db: &TestDb, sql: &str) -> Vec<i64> {
    db.exec(sql)
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

// ---------------------------------------------------------------------------------------------
// audit (the list)

#[test]
fn audit_on_an_untouched_tenant_is_empty_exit_0_and_creates_nothing() {
    let db = TestDb::sample();
    let before = db.snapshot();
    let r = db.orgctl(&["audit"]).run();
    r.code(0);
    assert_eq!(r.stdout, "", "{r:?}");
    assert!(r.stderr.contains("No audit log"), "{r:?}");
    assert_eq!(entries(&db, &[]).len(), 0);
    let r = db.orgctl(&["audit", "verify"]).run();
    r.code(0);
    assert!(r.stdout.contains("Nothing to verify"), "{r:?}");
    let (_, v, _) = verify(&db);
    assert!(v.intact && v.rows == 0 && v.head.is_none(), "{v:?}");
    assert_eq!(
        db.snapshot(),
        before,
        "a read-only command changed the tenant"
    );
    assert_eq!(
        db.scalar("SELECT count(*) FROM pg_namespace WHERE nspname = 'orgctl'"),
        "0"
    );
    // The same on a database without the platform's tables at all: audit needs only its log.
    let s = server();
    let bare = format!("orgctl_bare_{}", std::process::id());
    let _ = s.psql("postgres", &format!("CREATE DATABASE {bare}"));
    let r = Cmd::new(&["audit", "-o", "json"])
        .env("DATABASE_URL", &s.url(&bare))
        .run();
    let _ = s.psql("postgres", &format!("DROP DATABASE IF EXISTS {bare}"));
    r.code(0);
    assert_eq!(r.stdout.trim(), "[]");
}

#[test]
fn audit_bad_input_is_a_one_line_usage_error_and_changes_nothing() {
    let db = TestDb::sample();
    mint(&db, "a");
    let before = db.snapshot();
    let rows = db.audit_rows();
    for args in [
        vec!["audit", "--since", "yesterday"],
        vec!["audit", "--since", "-3h"],
        vec!["audit", "--command", " "],
    ] {
        let r = db.orgctl(&args).run();
        r.code(2).one_line_error("");
        assert_eq!(r.stdout, "", "{args:?}");
    }
    for args in [
        vec!["audit", "--limit", "x"],
        vec!["audit", "verify", "--since", "1h"],
    ] {
        db.orgctl(&args).run().code(2);
    }
    assert_eq!(db.snapshot(), before);
    assert_eq!(db.audit_rows(), rows);
}

#[test]
fn audit_lists_newest_first_with_every_field_and_filters() {
    let db = TestDb::sample();
    db.orgctl(&["install-platform-agent", "--model", "m", "--yes"])
        .env("ORGCTL_REASON", "CHG-42")
        .run()
        .code(0);
    db.orgctl(&["token", "mint", "--name", "first"])
        .run()
        .code(0);
    db.orgctl(&[
        "token",
        "mint",
        "--name",
        "second",
        "--reason",
        "INC-7 break-glass",
    ])
    .run()
    .code(0);
    let all = entries(&db, &[]);
    let commands: Vec<&str> = all.iter().map(|e| e.command.as_str()).collect();
    assert_eq!(
        commands,
        ["token mint", "token mint", "install-platform-agent"]
    );
    let ids: Vec<i64> = all.iter().map(|e| e.id).collect();
    assert!(ids.windows(2).all(|w| w[0] > w[1]), "{ids:?}");
    let newest = &all[0];
    assert_eq!(newest.reason.as_deref(), Some("INC-7 break-glass"));
    assert_eq!(newest.os_user, "tester");
    assert_eq!(newest.db_user, "postgres");
    assert_eq!(newest.outcome, "minted");
    assert_eq!(newest.orgctl_version, env!("CARGO_PKG_VERSION"));
    assert_eq!(newest.args["name"], "second");
    assert!(
        chrono::DateTime::parse_from_rfc3339(&newest.at).is_ok() && newest.at.ends_with('Z'),
        "{}",
        newest.at
    );
    assert_eq!(all[1].reason, None);
    assert_eq!(all[2].reason.as_deref(), Some("CHG-42"));

    // Filters: the family, an exact command, a time window, a limit.
    assert_eq!(entries(&db, &["--command", "token"]).len(), 2);
    assert_eq!(entries(&db, &["--command", "token mint"]).len(), 2);
    assert_eq!(entries(&db, &["--command", "tok"]).len(), 0);
    assert_eq!(
        entries(&db, &["--command", "install-platform-agent"]).len(),
        1
    );
    assert_eq!(entries(&db, &["--since", "1h"]).len(), 3);
    assert_eq!(entries(&db, &["--since", "2999-01-01"]).len(), 0);
    assert_eq!(entries(&db, &["--since", "2000-01-01T00:00:00Z"]).len(), 3);
    let one = entries(&db, &["--limit", "1"]);
    assert_eq!(one.iter().map(|e| e.id).collect::<Vec<_>>(), [ids[0]]);

    // The table (not a terminal: every row, a header, the reason and the arguments).
    let r = db.orgctl(&["audit"]).run();
    r.code(0);
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert!(lines
        .iter()
        .any(|l| l.contains("reason") && l.contains("outcome")));
    assert!(r.stdout.contains("INC-7 break-glass") && r.stdout.contains("CHG-42"));
    assert!(r.stdout.contains("\"name\":\"second\""), "{}", r.stdout);
    let r = db.orgctl(&["audit", "--limit", "1"]).run();
    r.code(0);
    assert!(r.stderr.contains("more match"), "{r:?}");
}

// ---------------------------------------------------------------------------------------------
// --reason

#[test]
fn every_mutating_command_stores_the_reason_on_its_rows() {
    let db = TestDb::sample();
    let reason = "CHG-2026-1201 move to platform agent";
    let with = |args: &[&str]| db.orgctl(args).env("ORGCTL_REASON", reason);
    let tenants = format!("t1 {}\n", db.url);
    let run_id = "bf-audit-reason";
    with(&[
        "backfill",
        "run",
        "--tenants",
        "-",
        "--run-id",
        run_id,
        "--model",
        "m",
        "--yes",
    ])
    .stdin(tenants.as_bytes())
    .run()
    .code(0);
    with(&[
        "backfill",
        "rollback",
        "--tenants",
        "-",
        "--run-id",
        run_id,
        "--yes",
    ])
    .stdin(tenants.as_bytes())
    .run()
    .code(0);
    with(&["install-platform-agent", "--model", "m", "--yes"])
        .run()
        .code(0);
    let r = with(&["token", "mint", "--name", "ci", "-o", "json"]).run();
    r.code(0);
    let prefix = r.json()["prefix"].as_str().unwrap_or_default().to_string();
    with(&["token", "revoke", "--yes", "--", &prefix])
        .run()
        .code(0);
    let unanchored = db.scalar(
        "INSERT INTO org_api_tokens (token_hash, prefix, name) VALUES ('\\x01', 'zzzzzzzz', 'u')
         RETURNING id",
    );
    with(&["token", "anchor", "--yes", &unanchored])
        .run()
        .code(0);
    with(&["secret", "set", ids::RESEARCH, "API_KEY", "--yes"])
        .stdin(b"v1")
        .run()
        .code(0);
    with(&["secret", "delete", ids::RESEARCH, "API_KEY", "--yes"])
        .run()
        .code(0);
    // A dry run writes no row (and needs no reason even when one is required).
    db.orgctl(&["install-platform-agent", "--dry-run"])
        .env("ORGCTL_REQUIRE_REASON", "1")
        .run()
        .code(0);

    let all = entries(&db, &[]);
    let commands: BTreeSet<&str> = all.iter().map(|e| e.command.as_str()).collect();
    for c in [
        "backfill run",
        "backfill rollback",
        "install-platform-agent",
        "token mint",
        "token revoke",
        "token anchor",
        "secret set",
        "secret delete",
    ] {
        assert!(commands.contains(c), "no {c} row: {commands:?}");
    }
    for e in &all {
        assert_eq!(e.reason.as_deref(), Some(reason), "{e:?}");
    }
    assert_eq!(
        db.scalar("SELECT count(*) FROM orgctl.audit_log WHERE reason IS DISTINCT FROM 'CHG-2026-1201 move to platform agent'"),
        "0"
    );
    assert_intact(&db);
}

#[test]
fn a_required_reason_is_checked_before_connecting() {
    let db = TestDb::sample();
    let before = db.snapshot();
    // An unreachable database: the refusal must come first, naming the reason, exit 2.
    let port = orgctl::testing::pgserver::free_port().unwrap_or(1);
    let nowhere = format!("postgres://u:pw@127.0.0.1:{port}/tenant");
    for args in [
        vec!["token", "mint", "--name", "x"],
        vec!["install-platform-agent", "--yes"],
        vec!["token", "revoke", "--created-by", "admin-token", "--yes"],
        vec!["secret", "delete", "--global", "K", "--yes"],
    ] {
        let r = Cmd::new(&args)
            .env("DATABASE_URL", &nowhere)
            .env("ORGCTL_REQUIRE_REASON", "1")
            .run();
        r.code(2).one_line_error("ORGCTL_REQUIRE_REASON");
        let r = db.orgctl(&args).env("ORGCTL_REQUIRE_REASON", "1").run();
        r.code(2).one_line_error("--reason");
    }
    // Empty, multi-line and unparsable settings are usage errors too.
    let r = db
        .orgctl(&["token", "mint", "--reason", "   "])
        .env("ORGCTL_REQUIRE_REASON", "1")
        .run();
    r.code(2).one_line_error("empty");
    db.orgctl(&["token", "mint", "--reason", "a\nb"])
        .run()
        .code(2);
    db.orgctl(&["token", "mint", "--reason", "INC-1"])
        .env("ORGCTL_REQUIRE_REASON", "perhaps")
        .run()
        .code(2);
    assert_eq!(
        db.snapshot(),
        before,
        "a refused command changed the tenant"
    );
    // Read-only commands never need one.
    db.orgctl(&["audit"])
        .env("ORGCTL_REQUIRE_REASON", "1")
        .run()
        .code(0);
    // With the reason, the change goes through and carries it.
    db.orgctl(&["token", "mint", "--name", "x", "--org", ids::HQ])
        .env("ORGCTL_REQUIRE_REASON", "1")
        .env("ORGCTL_REASON", "INC-9")
        .run()
        .code(0);
    assert_eq!(db.scalar("SELECT reason FROM orgctl.audit_log"), "INC-9");
}

// ---------------------------------------------------------------------------------------------
// The chain and verify

/// The canonical content as the README defines it, recomputed here independently of orgctl's
/// code: the JSON array, sorted keys, six fractional digits, sha256 over prev_hash || content.
#[tokio::test]
async fn row_hashes_follow_the_documented_canonical_content() {
    let db = TestDb::sample();
    mint(&db, "a");
    db.orgctl(&[
        "token",
        "mint",
        "--name",
        "b\"é",
        "--reason",
        "INC-1",
        "--org",
        ids::HQ,
    ])
    .run()
    .code(0);
    let mut conn = db.connect().await;
    type Raw = (
        i64,
        i64,
        String,
        String,
        String,
        String,
        String,
        Option<String>,
        String,
        String,
        Vec<u8>,
        Vec<u8>,
    );
    let rows: Vec<Raw> = match sqlx::query_as(
        "SELECT id, seq, to_char(at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'),
                os_user, db_user, command, args::text, reason, outcome, orgctl_version,
                prev_hash, row_hash
           FROM orgctl.audit_log ORDER BY id",
    )
    .fetch_all(&mut conn)
    .await
    {
        Ok(r) => r,
        Err(e) => panic!("{e}"),
    };
    assert_eq!(rows.len(), 2);
    let mut prev = vec![0u8; 32];
    for (i, r) in rows.iter().enumerate() {
        let (id, seq, at, os, dbu, cmd, args, reason, outcome, version, p, h) = r.clone();
        assert_eq!(seq, i as i64 + 1);
        assert_eq!(p, prev, "prev_hash of seq {seq}");
        // serde_json's Map is ordered by key (no preserve_order here), and to_string is compact.
        let args: serde_json::Value = serde_json::from_str(&args).unwrap_or_default();
        let content = serde_json::json!([
            "orgctl-audit-v1",
            seq,
            id,
            at,
            os,
            dbu,
            cmd,
            args,
            reason,
            outcome,
            version
        ])
        .to_string();
        let mut hasher = Sha256::new();
        hasher.update(&prev);
        hasher.update(content.as_bytes());
        let want = hasher.finalize().to_vec();
        assert_eq!(h, want, "row_hash of seq {seq}: {content}");
        prev = h;
    }
    let head: (i64, Vec<u8>) = match sqlx::query_as("SELECT seq, row_hash FROM orgctl.audit_head")
        .fetch_one(&mut conn)
        .await
    {
        Ok(h) => h,
        Err(e) => panic!("{e}"),
    };
    assert_eq!(head, (2, prev));
}

#[test]
fn verify_names_an_updated_row() {
    let db = TestDb::sample();
    for n in ["a", "b", "c"] {
        mint(&db, n);
    }
    let v = assert_intact(&db);
    assert_eq!((v.rows, v.chained, v.unchained), (3, 3, 0));
    assert_eq!(
        v.head.as_ref().map(|h| (h.seq, h.row_hash.len())),
        Some((3, 64))
    );
    let ids = ids_in(&db, "SELECT id FROM orgctl.audit_log ORDER BY id");
    db.exec(&format!(
        "UPDATE orgctl.audit_log SET os_user = 'mallory' WHERE id = {}",
        ids[1]
    ));
    let p = assert_broken(&db, "altered", Some(ids[1]));
    assert_eq!(p.seq, Some(2));
    assert!(p.message.contains(&format!("row id {}", ids[1])), "{p:?}");
    // Changing a reason, or the arguments, is an alteration too.
    let db = TestDb::sample();
    mint(&db, "a");
    db.exec("UPDATE orgctl.audit_log SET reason = 'INC-fake'");
    assert_broken(
        &db,
        "altered",
        ids_in(&db, "SELECT id FROM orgctl.audit_log")
            .first()
            .copied(),
    );
    let db = TestDb::sample();
    mint(&db, "a");
    db.exec("UPDATE orgctl.audit_log SET args = args || '{\"name\": \"other\"}'");
    assert_broken(
        &db,
        "altered",
        ids_in(&db, "SELECT id FROM orgctl.audit_log")
            .first()
            .copied(),
    );
}

#[test]
fn verify_names_a_deleted_middle_row() {
    let db = TestDb::sample();
    for n in ["a", "b", "c", "d"] {
        mint(&db, n);
    }
    let ids = ids_in(&db, "SELECT id FROM orgctl.audit_log ORDER BY id");
    db.exec(&format!(
        "DELETE FROM orgctl.audit_log WHERE id = {}",
        ids[1]
    ));
    let p = assert_broken(&db, "removed", Some(ids[2]));
    assert!(p.message.contains("seq 2 missing"), "{p:?}");
}

#[test]
fn verify_names_a_deleted_last_row_with_and_without_a_command_after_it() {
    let db = TestDb::sample();
    for n in ["a", "b", "c"] {
        mint(&db, n);
    }
    let ids = ids_in(&db, "SELECT id FROM orgctl.audit_log ORDER BY id");
    db.exec(&format!(
        "DELETE FROM orgctl.audit_log WHERE id = {}",
        ids[2]
    ));
    // Nothing after it yet: the head still records seq 3.
    let p = assert_broken(&db, "removed", None);
    assert!(p.message.contains("newest 1 row(s) were removed"), "{p:?}");
    // A new command appends after the head, not after the remaining rows: the gap shows.
    mint(&db, "d");
    let new_id = ids_in(&db, "SELECT max(id) FROM orgctl.audit_log")[0];
    let p = assert_broken(&db, "removed", Some(new_id));
    assert!(p.message.contains("seq 3 missing"), "{p:?}");
    assert_eq!(
        db.scalar(&format!(
            "SELECT seq FROM orgctl.audit_log WHERE id = {new_id}"
        )),
        "4"
    );
}

#[test]
fn verify_names_a_hand_inserted_row() {
    let db = TestDb::sample();
    mint(&db, "a");
    mint(&db, "b");
    let forged = db.scalar(
        "INSERT INTO orgctl.audit_log (os_user, command, args, outcome, orgctl_version)
         VALUES ('alice', 'token revoke', '{}', 'applied', '0.1.0') RETURNING id",
    );
    let forged: i64 = forged.parse().unwrap_or_default();
    let p = assert_broken(&db, "inserted", Some(forged));
    assert!(p.message.contains("inserted outside orgctl"), "{p:?}");
    // A forged row that copies a real row's chain fields is caught by its hash.
    let db = TestDb::sample();
    mint(&db, "a");
    mint(&db, "b");
    let forged = db.scalar(
        "INSERT INTO orgctl.audit_log (os_user, command, args, outcome, orgctl_version, seq,
                                       prev_hash, row_hash)
         SELECT 'alice', 'token revoke', '{}', 'applied', orgctl_version, seq + 1, row_hash,
                row_hash
           FROM orgctl.audit_log ORDER BY id DESC LIMIT 1
         RETURNING id",
    );
    let forged: i64 = forged.parse().unwrap_or_default();
    assert_broken(&db, "altered", Some(forged));
}

#[test]
fn rows_from_before_the_chain_are_unchained_not_broken() {
    let db = TestDb::sample();
    mint(&db, "a");
    mint(&db, "b");
    // What a log written before migration 4 looks like once migrated.
    // (and the record the chain's start keeps of them).
    db.exec(
        "UPDATE orgctl.audit_log SET seq = NULL, prev_hash = NULL, row_hash = NULL, reason = NULL;
         UPDATE orgctl.audit_head SET seq = 0, row_hash = decode(repeat('00', 32), 'hex'),
                pre_chain_rows = 2, pre_chain_max_id = (SELECT max(id) FROM orgctl.audit_log);",
    );
    let v = assert_intact(&db);
    assert_eq!((v.rows, v.chained, v.unchained), (2, 0, 2));
    mint(&db, "c");
    let v = assert_intact(&db);
    assert_eq!((v.rows, v.chained, v.unchained), (3, 1, 2));
    let r = db.orgctl(&["audit", "verify"]).run();
    r.code(0);
    assert!(
        r.stdout.contains("2 unchained") && r.stdout.contains("Intact"),
        "{r:?}"
    );
}

#[tokio::test]
async fn concurrent_orgctl_processes_leave_one_linear_chain() {
    let db = TestDb::sample();
    let mut jobs = Vec::new();
    for i in 0..8 {
        let name = format!("c{i}");
        let cmd = db
            .orgctl(&["token", "mint", "--name", &name, "--org", ids::HQ])
            .env("ORGCTL_LOCK_TIMEOUT", "60s");
        jobs.push(tokio::spawn(cmd.run_async()));
    }
    for j in jobs {
        match j.await {
            Ok(r) => {
                r.code(0);
            }
            Err(e) => panic!("{e}"),
        }
    }
    let v = assert_intact(&db);
    assert_eq!(v.chained, 8);
    assert_eq!(
        db.scalar("SELECT string_agg(seq::text, ',' ORDER BY id) FROM orgctl.audit_log"),
        "1,2,3,4,5,6,7,8"
    );
}

#[test]
fn a_log_from_before_migration_4_is_listed_verified_and_then_upgraded() {
    let db = TestDb::sample();
    mint(&db, "old");
    // What a tenant last changed by an orgctl without the chain looks like.
    db.exec(
        "ALTER TABLE orgctl.audit_log DROP COLUMN reason, DROP COLUMN seq, DROP COLUMN prev_hash,
                                      DROP COLUMN row_hash;
         DROP TABLE orgctl.audit_head;
         DELETE FROM orgctl._sqlx_migrations WHERE version >= 4;",
    );
    let before = db.snapshot();
    let all = entries(&db, &[]);
    assert_eq!(all.len(), 1);
    assert_eq!(
        (all[0].command.as_str(), all[0].reason.as_deref()),
        ("token mint", None)
    );
    let v = assert_intact(&db);
    assert_eq!((v.rows, v.chained, v.unchained), (1, 0, 1));
    assert!(v.head.is_none());
    assert_eq!(db.snapshot(), before);
    assert_eq!(
        db.scalar("SELECT count(*) FROM orgctl._sqlx_migrations WHERE version = 4"),
        "0",
        "read-only commands never migrate"
    );
    // The next change upgrades the schema and starts the chain after the old row.
    db.orgctl(&[
        "token",
        "mint",
        "--name",
        "new",
        "--org",
        ids::HQ,
        "--reason",
        "CHG-1",
    ])
    .run()
    .code(0);
    let v = assert_intact(&db);
    assert_eq!((v.rows, v.chained, v.unchained), (2, 1, 1));
    assert_eq!(entries(&db, &[])[0].reason.as_deref(), Some("CHG-1"));
}

/// The chain records, when it begins, how many rows were written before it: on a tenant whose
/// log was chained from its first row, a row without a hash is a forgery wherever its id is
/// (below the first chained row too), and a removed pre-chain row is found.
#[test]
fn a_row_without_a_hash_is_unchained_only_if_the_chain_start_recorded_it() {
    let db = TestDb::sample();
    mint(&db, "a");
    mint(&db, "b");
    assert_eq!(
        db.scalar("SELECT pre_chain_rows || ' ' || coalesce(pre_chain_max_id::text, '-') FROM orgctl.audit_head"),
        "0 -"
    );
    db.exec(
        "INSERT INTO orgctl.audit_log (id, os_user, command, args, outcome, orgctl_version)
         VALUES (-1, 'alice', 'token revoke', '{}', 'applied', '0.1.0')",
    );
    let p = assert_broken(&db, "inserted", Some(-1));
    assert!(
        p.message
            .contains("not one of the 0 row(s) written before the chain began"),
        "{p:?}"
    );

    // A log from before the chain: the next change's migration records its one old row; a
    // second unchained row, and the old row's removal, both break verification.
    let db = TestDb::sample();
    mint(&db, "old");
    db.exec(
        "ALTER TABLE orgctl.audit_log DROP COLUMN reason, DROP COLUMN seq, DROP COLUMN prev_hash,
                                      DROP COLUMN row_hash;
         DROP TABLE orgctl.audit_head;
         DELETE FROM orgctl._sqlx_migrations WHERE version >= 4;",
    );
    let old_id = db.scalar("SELECT max(id) FROM orgctl.audit_log");
    mint(&db, "new");
    assert_eq!(
        db.scalar("SELECT pre_chain_rows || ' ' || pre_chain_max_id FROM orgctl.audit_head"),
        format!("1 {old_id}")
    );
    let v = assert_intact(&db);
    assert_eq!((v.rows, v.chained, v.unchained), (2, 1, 1));
    let copy = db.copy_of();
    db.exec(&format!(
        "INSERT INTO orgctl.audit_log (id, os_user, command, args, outcome, orgctl_version)
         VALUES ({old_id} - 1, 'alice', 'token revoke', '{{}}', 'applied', '0.1.0')"
    ));
    let p = assert_broken(&db, "inserted", None);
    assert!(
        p.message.contains("more than the 1 written before"),
        "{p:?}"
    );
    copy.exec("DELETE FROM orgctl.audit_log WHERE seq IS NULL");
    let p = assert_broken(&copy, "removed", None);
    assert!(
        p.message
            .contains("written before the chain began were removed"),
        "{p:?}"
    );
}

/// Deleting the newest rows and moving the head back leaves a chain that is intact in itself;
/// a head the operator kept from a change's JSON (`audit_head`) catches it.
#[test]
fn a_head_kept_outside_the_database_catches_the_newest_rows_removed() {
    let db = TestDb::sample();
    let mut heads = Vec::new();
    for name in ["a", "b", "c"] {
        let r = db
            .orgctl(&[
                "-o",
                "json",
                "token",
                "mint",
                "--name",
                name,
                "--org",
                ids::HQ,
            ])
            .run();
        r.code(0);
        let j = r.json();
        let head = format!(
            "{}:{}",
            j["audit_head"]["seq"],
            j["audit_head"]["row_hash"].as_str().unwrap_or_default()
        );
        // What the change printed is the head it committed.
        assert_eq!(
            head,
            db.scalar("SELECT seq || ':' || encode(row_hash, 'hex') FROM orgctl.audit_head")
        );
        heads.push(head);
    }
    for h in &heads {
        db.orgctl(&["audit", "verify", "--head", h]).run().code(0);
    }
    db.exec(
        "DELETE FROM orgctl.audit_log WHERE seq = 3;
         UPDATE orgctl.audit_head SET seq = 2,
                row_hash = (SELECT row_hash FROM orgctl.audit_log WHERE seq = 2);",
    );
    assert_intact(&db);
    let r = db.orgctl(&["audit", "verify", "--head", &heads[2]]).run();
    r.code(1).one_line_error("recorded outside the database");
    db.orgctl(&["audit", "verify", "--head", &heads[1]])
        .run()
        .code(0);

    let before = db.snapshot();
    let zeros = "0".repeat(64);
    for bad in [
        "".to_string(),
        "abc".to_string(),
        "2".to_string(),
        format!("0:{zeros}"),
        format!("x:{zeros}"),
        format!("2:{}", &zeros[1..]),
        format!("2:{}g", &zeros[1..]),
    ] {
        let r = db.orgctl(&["audit", "verify", "--head", &bad]).run();
        r.code(2).one_line_error("--head");
    }
    assert_eq!(db.snapshot(), before);
}
