//! `orgctl status` against real PostgreSQL: every check on the awkward fixture before
//! and after an install, former-root stragglers, cycles and a 72-deep chain, several agents,
//! --limit, read-only (no schema created, no locks waited on), the JSON contract.
// The mirror structs exist to reject unknown fields; not every field is asserted on.
#![allow(dead_code)]

use serde::Deserialize;

use crate::harness::{ids, Run, TestDb};

/// The JSON contract of `orgctl status -o json`, rejecting unknown fields.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatusJson {
    pub ok: bool,
    pub tenant: String,
    pub orgctl_schema: bool,
    pub orgctl_readable: bool,
    pub roots: RootsJson,
    pub platform_agent: Option<AgentJson>,
    pub tokens: TokensJson,
    pub checks: Vec<CheckJson>,
    pub install_would: InstallWouldJson,
    pub secrets: Vec<SecretCountJson>,
}

#[derive(Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SecretCountJson {
    pub table: String,
    pub encryption_version: i32,
    pub rows: i64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RootsJson {
    pub count: i64,
    pub rows: Vec<RootJson>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RootJson {
    pub id: String,
    pub name: String,
    pub status: Option<String>,
    pub kind: Option<String>,
    pub tier: Option<i32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentJson {
    pub id: String,
    pub name: String,
    pub status: Option<String>,
    pub tier: Option<i32>,
    pub parent_id: Option<String>,
    pub model: bool,
}

#[derive(Debug, Deserialize, PartialEq, Eq, Clone, Copy)]
#[serde(deny_unknown_fields)]
pub struct CountsJson {
    pub live: i64,
    pub revoked: i64,
    pub expired: i64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokensJson {
    pub on_root: CountsJson,
    pub unanchored: CountsJson,
    pub on_non_root: CountsJson,
    pub on_former_root: CountsJson,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckJson {
    pub name: String,
    pub severity: String,
    pub ok: bool,
    pub count: i64,
    pub rows: Vec<FindingJson>,
    pub message: String,
    pub fix: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FindingJson {
    pub table: String,
    pub id: String,
    pub detail: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstallWouldJson {
    pub action: String,
    pub summary: String,
    pub agent: Option<String>,
    pub reparented: usize,
    pub tokens_moved: i64,
    pub allowlist_moved: i64,
    pub allowlist_merged: usize,
    pub model_secret: Option<String>,
}

/// The stable check names, in order (README documents them).
pub const CHECKS: &[&str] = &[
    "single_root",
    "platform_agent_is_root",
    "unique_platform_agent",
    "model_secret",
    "tokens_on_root",
    "allowlist_on_root",
    "parent_chains",
    "unanchored_tokens",
    "platform_agent_running",
    "platform_agent_not_removed",
];

impl StatusJson {
    #[track_caller]
    pub fn check(&self, name: &str) -> &CheckJson {
        match self.checks.iter().find(|c| c.name == name) {
            Some(c) => c,
            None => panic!("no check {name}"),
        }
    }

    /// The names of the failing error-severity checks.
    pub fn failing(&self) -> Vec<&str> {
        self.checks
            .iter()
            .filter(|c| !c.ok && c.severity == "error")
            .map(|c| c.name.as_str())
            .collect()
    }
}

#[track_caller]
pub fn parse(r: &Run) -> StatusJson {
    match serde_json::from_str(&r.stdout) {
        Ok(p) => p,
        Err(e) => panic!("status JSON contract: {e}\n{}\n{}", r.stdout, r.stderr),
    }
}

pub fn status_json(db: &TestDb, extra: &[&str]) -> (Run, StatusJson) {
    let mut args = vec!["status", "-o", "json"];
    args.extend_from_slice(extra);
    let r = db.orgctl(&args).run();
    let j = parse(&r);
    (r, j)
}

fn row_ids(c: &CheckJson) -> Vec<&str> {
    c.rows.iter().map(|f| f.id.as_str()).collect()
}

#[test]
fn before_install_names_every_finding_and_what_install_would_fix() {
    let db = TestDb::sample();
    let before = db.snapshot();
    let (r, s) = status_json(&db, &[]);
    r.code(1);
    assert!(!s.ok);
    assert!(!s.orgctl_schema);
    assert_eq!(
        s.checks.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(),
        CHECKS,
        "stable names, stable order"
    );
    assert_eq!(
        s.failing(),
        [
            "single_root",
            "platform_agent_is_root",
            "model_secret",
            "tokens_on_root"
        ]
    );
    let roots = s.check("single_root");
    assert_eq!(roots.count, 3);
    let mut rid = row_ids(roots);
    rid.sort();
    assert_eq!(rid, [ids::HQ, ids::LABS, ids::LEGACY]);
    assert_eq!(s.roots.count, 3);
    assert_eq!(s.roots.rows.len(), 3);
    assert!(s.platform_agent.is_none());
    assert_eq!(
        (
            s.tokens.on_root,
            s.tokens.unanchored,
            s.tokens.on_non_root,
            s.tokens.on_former_root
        ),
        (
            CountsJson {
                live: 4,
                revoked: 1,
                expired: 0
            },
            CountsJson {
                live: 1,
                revoked: 1,
                expired: 0
            },
            CountsJson {
                live: 1,
                revoked: 0,
                expired: 0
            },
            CountsJson {
                live: 0,
                revoked: 0,
                expired: 0
            }
        )
    );
    let toks = s.check("tokens_on_root");
    assert_eq!(toks.count, 1);
    assert_eq!(row_ids(toks), ["70000000-0000-4000-8000-000000000008"]);
    assert!(toks.rows[0].detail.contains(ids::RESEARCH));
    assert_eq!(toks.rows[0].table, "org_api_tokens");
    let un = s.check("unanchored_tokens");
    assert_eq!(un.severity, "warning");
    assert!(!un.ok);
    assert_eq!(row_ids(un), ["70000000-0000-4000-8000-000000000006"]);
    assert!(s.check("allowlist_on_root").ok);
    assert!(s.check("parent_chains").ok);

    let w = &s.install_would;
    assert_eq!(w.action, "install");
    assert_eq!(w.agent.as_deref(), Some("create"));
    assert_eq!(
        (
            w.reparented,
            w.tokens_moved,
            w.allowlist_moved,
            w.allowlist_merged
        ),
        (3, 5, 4, 1)
    );
    assert_eq!(w.model_secret.as_deref(), Some("missing"));
    assert!(w.summary.contains("--model"), "{}", w.summary);

    // The table says the same on one screen; the exit is 1 with a line on stderr.
    let t = db.orgctl(&["status"]).run();
    t.code(1);
    for needle in [
        "Roots (3):",
        "Platform agent: none",
        "install-platform-agent would fix: Plan: create the platform agent, re-parent 3 root(s)",
        "4 of 8 invariants broken",
        "70000000-0000-4000-8000-000000000008",
    ] {
        assert!(t.stdout.contains(needle), "{needle}:\n{}", t.stdout);
    }
    assert!(t.stderr.contains("invariant(s) broken"), "{}", t.stderr);
    assert!(!t.stderr.contains("error:"), "a finding is not an error");

    assert_eq!(
        db.snapshot(),
        before,
        "status is read-only and never creates orgctl's schema"
    );
}

#[test]
fn after_install_every_invariant_holds_and_status_exits_0() {
    let db = TestDb::sample();
    // The token on a non-root is a real finding install leaves alone; an operator fixes it.
    db.exec(
        "UPDATE org_api_tokens SET org_id = NULL WHERE id = '70000000-0000-4000-8000-000000000008'",
    );
    db.orgctl(&["install-platform-agent", "--model", "m", "--yes"])
        .run()
        .code(0);
    let (r, s) = status_json(&db, &[]);
    r.code(0);
    assert!(s.ok, "{:?}", s.failing());
    assert!(s.orgctl_schema);
    let agent = match &s.platform_agent {
        Some(a) => a,
        None => panic!("no agent"),
    };
    assert!(agent.model && agent.parent_id.is_none() && agent.tier == Some(0));
    assert_eq!(s.roots.count, 1);
    assert_eq!(s.roots.rows[0].id, agent.id);
    assert_eq!(s.roots.rows[0].kind.as_deref(), Some("platform"));
    assert_eq!(s.install_would.action, "none");
    assert_eq!(s.install_would.model_secret.as_deref(), Some("present"));
    // Warnings do not fail the gate.
    assert_eq!(s.check("unanchored_tokens").count, 2);
    assert_eq!(s.tokens.on_root.live + s.tokens.on_root.revoked, 5);

    let t = db.orgctl(&["status"]).run();
    t.code(0);
    assert!(t.stdout.contains("All invariants hold."), "{}", t.stdout);
    assert!(t.stdout.contains("install-platform-agent: nothing to do."));
    assert!(t.stdout.contains("MODEL present"));
}

#[test]
fn stragglers_on_former_roots_are_reported_and_install_would_sweep_them() {
    let db = TestDb::sample();
    db.exec("UPDATE org_api_tokens SET revoked_at = now() WHERE id = '70000000-0000-4000-8000-000000000008'");
    db.orgctl(&["install-platform-agent", "--model", "m", "--yes"])
        .run()
        .code(0);
    db.orgctl(&["status"]).run().code(0);
    // A platform write that raced the install's commit: rows on (now former) roots.
    db.exec(&format!(
        "INSERT INTO org_api_tokens (id, token_hash, prefix, org_id, revoked_at) VALUES
           ('71000000-0000-4000-8000-000000000001', sha256('late1'::bytea), 'late0001', '{hq}', NULL),
           ('71000000-0000-4000-8000-000000000002', sha256('late2'::bytea), 'late0002', '{labs}', now());
         INSERT INTO org_plugin_allowlist (id, org_id, plugin_name, enabled_by) VALUES
           ('e1000000-0000-4000-8000-000000000001', '{labs}', 'late-plugin', 'platform');",
        hq = ids::HQ,
        labs = ids::LABS
    ));
    let (r, s) = status_json(&db, &[]);
    r.code(1);
    assert_eq!(s.failing(), ["tokens_on_root", "allowlist_on_root"]);
    let toks = s.check("tokens_on_root");
    assert_eq!(toks.count, 2, "a revoked token on a former root counts too");
    assert!(toks.rows.iter().all(|f| f.detail.contains("former root")));
    assert_eq!(
        s.tokens.on_former_root,
        CountsJson {
            live: 1,
            revoked: 1,
            expired: 0
        }
    );
    // A revoked token on a non-root (not a former root) is counted, but does not fail.
    assert_eq!(
        s.tokens.on_non_root,
        CountsJson {
            live: 0,
            revoked: 1,
            expired: 0
        }
    );
    let allow = s.check("allowlist_on_root");
    assert_eq!(row_ids(allow), ["e1000000-0000-4000-8000-000000000001"]);
    assert!(allow.rows[0].detail.contains("former root"));
    assert_eq!(s.install_would.action, "install");
    assert_eq!(
        (
            s.install_would.tokens_moved,
            s.install_would.allowlist_moved
        ),
        (2, 1)
    );
    db.orgctl(&["install-platform-agent", "--yes"])
        .run()
        .code(0);
    let (r, s) = status_json(&db, &[]);
    r.code(0);
    assert_eq!(s.install_would.action, "none");
}

#[test]
fn cycles_and_a_72_deep_chain_are_found_by_one_bounded_query() {
    let db = TestDb::sample();
    // A two-workspace cycle with a child below it, a self-loop, and a chain 72 deep under HQ.
    db.exec(&format!(
        "INSERT INTO workspaces (id, name) VALUES
           ('dd000000-0000-4000-8000-000000000001', 'cycle a'),
           ('dd000000-0000-4000-8000-000000000002', 'cycle b'),
           ('dd000000-0000-4000-8000-000000000003', 'below the cycle'),
           ('dd000000-0000-4000-8000-000000000004', 'self loop');
         UPDATE workspaces SET parent_id = 'dd000000-0000-4000-8000-000000000002'
          WHERE id = 'dd000000-0000-4000-8000-000000000001';
         UPDATE workspaces SET parent_id = 'dd000000-0000-4000-8000-000000000001'
          WHERE id IN ('dd000000-0000-4000-8000-000000000002', 'dd000000-0000-4000-8000-000000000003');
         UPDATE workspaces SET parent_id = id WHERE id = 'dd000000-0000-4000-8000-000000000004';
         INSERT INTO workspaces (id, name, parent_id)
         SELECT ('ee000000-0000-4000-8000-' || lpad(i::text, 12, '0'))::uuid, 'deep ' || i,
                CASE WHEN i = 1 THEN '{hq}'::uuid
                     ELSE ('ee000000-0000-4000-8000-' || lpad((i - 1)::text, 12, '0'))::uuid END
           FROM generate_series(1, 72) i;",
        hq = ids::HQ
    ));
    let started = std::time::Instant::now();
    let (r, s) = status_json(&db, &["--limit", "50"]);
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
    r.code(1);
    let chains = s.check("parent_chains");
    // deep 65..72 are 65..72 steps from HQ, past the platform's org-root lookup: 8 rows;
    // plus the 4 in or below a cycle.
    assert_eq!(chains.count, 12, "{chains:#?}");
    assert_eq!(chains.rows.len(), 12);
    let detail = |id: &str| -> String {
        chains
            .rows
            .iter()
            .find(|f| f.id == id)
            .map(|f| f.detail.clone())
            .unwrap_or_else(|| panic!("{id} not named: {chains:#?}"))
    };
    assert!(detail("dd000000-0000-4000-8000-000000000001").contains("in a parent cycle"));
    assert!(detail("dd000000-0000-4000-8000-000000000002").contains("in a parent cycle"));
    assert!(detail("dd000000-0000-4000-8000-000000000004").contains("in a parent cycle"));
    assert!(detail("dd000000-0000-4000-8000-000000000003").contains("below a cycle"));
    assert!(detail("ee000000-0000-4000-8000-000000000065").contains("65 steps from its root"));
    assert!(detail("ee000000-0000-4000-8000-000000000072").contains("72 steps from its root"));
    assert!(
        !chains
            .rows
            .iter()
            .any(|f| f.id == "ee000000-0000-4000-8000-000000000064"),
        "64 steps is within the org-root lookup"
    );

    // --limit names that many, then counts.
    let (_, s) = status_json(&db, &["--limit", "3"]);
    let chains = s.check("parent_chains");
    assert_eq!((chains.count, chains.rows.len()), (12, 3));
    let t = db.orgctl(&["status", "--limit", "3"]).run();
    t.code(1);
    assert!(t.stdout.contains("… and 9 more"), "{}", t.stdout);
}

#[test]
fn several_agents_and_a_misplaced_agent_without_model() {
    let db = TestDb::sample().before_platform_constraints();
    db.exec(&format!(
        "INSERT INTO workspaces (id, name, kind, tier, parent_id) VALUES
           ('11111111-0000-4000-8000-000000000001', 'P1', 'platform', 2, '{hq}'),
           ('11111111-0000-4000-8000-000000000002', 'P2', 'platform', 0, NULL);
         INSERT INTO workspace_secrets (workspace_id, key, encrypted_value)
           VALUES ('11111111-0000-4000-8000-000000000002', 'MODEL', 'x'::bytea);",
        hq = ids::HQ
    ));
    let before = db.snapshot();
    let (r, s) = status_json(&db, &[]);
    r.code(1);
    let dup = s.check("unique_platform_agent");
    assert!(!dup.ok);
    assert_eq!(dup.count, 2);
    let mut d = row_ids(dup);
    d.sort();
    assert_eq!(
        d,
        [
            "11111111-0000-4000-8000-000000000001",
            "11111111-0000-4000-8000-000000000002"
        ]
    );
    let mis = s.check("platform_agent_is_root");
    assert_eq!(row_ids(mis), ["11111111-0000-4000-8000-000000000001"]);
    assert!(mis.rows[0].detail.contains(ids::HQ));
    let model = s.check("model_secret");
    assert_eq!(row_ids(model), ["11111111-0000-4000-8000-000000000001"]);
    assert!(s.platform_agent.is_none(), "no single agent to show");
    // install would refuse, and status says so instead of failing itself.
    assert_eq!(s.install_would.action, "refused");
    assert!(s
        .install_would
        .summary
        .contains("11111111-0000-4000-8000-000000000001"));
    let t = db.orgctl(&["status"]).run();
    t.code(1);
    assert!(t.stdout.contains("install-platform-agent would refuse"));
    assert!(t.stdout.contains("Platform agent: 2 candidates"));
    assert_eq!(db.snapshot(), before);
}

#[test]
fn limit_names_rows_then_counts() {
    let db = TestDb::sample();
    db.exec(&format!(
        "INSERT INTO org_api_tokens (token_hash, prefix, org_id)
         SELECT sha256(('nr' || g)::bytea), 'nonroot0', '{}' FROM generate_series(1, 30) g;
         INSERT INTO org_plugin_allowlist (org_id, plugin_name, enabled_by)
         SELECT '{}', 'p' || g, 'x' FROM generate_series(1, 7) g;",
        ids::RESEARCH,
        ids::LABS_BRIDGE
    ));
    let (_, s) = status_json(&db, &["--limit", "5"]);
    let t = s.check("tokens_on_root");
    assert_eq!((t.count, t.rows.len()), (31, 5));
    let a = s.check("allowlist_on_root");
    assert_eq!((a.count, a.rows.len()), (7, 5));
    assert_eq!(s.roots.rows.len(), 3);
    let (r, s) = status_json(&db, &["--limit", "0"]);
    r.code(1);
    assert!(s.checks.iter().all(|c| c.rows.is_empty()));
    assert_eq!(s.check("tokens_on_root").count, 31);
    assert_eq!(s.roots.count, 3);
    assert!(s.roots.rows.is_empty());
    let r = db.orgctl(&["status", "--limit", "2"]).run();
    assert!(r.stdout.contains("… and 29 more"), "{}", r.stdout);
    for bad in ["-1", "x", "10001"] {
        db.orgctl(&["status", &format!("--limit={bad}")])
            .run()
            .code(2)
            .one_line_error("--limit");
    }
}

#[test]
fn an_empty_tenant_has_no_root() {
    let db = TestDb::empty();
    let (r, s) = status_json(&db, &[]);
    r.code(1);
    let root = s.check("single_root");
    assert_eq!(root.count, 0);
    assert!(root.message.contains("no root"));
    assert_eq!(s.install_would.action, "install");
    assert_eq!(s.install_would.agent.as_deref(), Some("create"));
    assert_eq!(s.install_would.reparented, 0);
}

#[test]
fn an_incompatible_schema_is_refused_with_exit_3() {
    let db = TestDb::sample();
    db.exec("ALTER TABLE workspaces DROP COLUMN kind");
    let r = db.orgctl(&["status"]).run();
    r.code(3).one_line_error("workspaces.kind");
    assert!(r.stdout.is_empty());
}

#[test]
fn names_with_escape_sequences_are_sanitised_in_the_table() {
    let db = TestDb::sample();
    db.exec(&format!(
        "UPDATE workspaces SET name = E'\\x1b[31mEvil\\x1b[0m\\u202eHQ\\u200b 🚀' WHERE id = '{}';
         UPDATE org_api_tokens SET name = E'tok\\x1b]0;pwned\\x07' WHERE id = '70000000-0000-4000-8000-000000000008'",
        ids::HQ
    ));
    let t = db.orgctl(&["status"]).run();
    t.code(1);
    assert!(
        !t.stdout.contains('\x1b') && !t.stdout.contains('\x07'),
        "{:?}",
        t.stdout
    );
    assert!(t.stdout.contains("Evil"), "{}", t.stdout);
    assert!(t.stdout.contains('🚀'));
    // JSON keeps the value faithfully, escaped (a raw ESC byte never reaches the terminal).
    let (r, s) = status_json(&db, &[]);
    assert!(!r.stdout.contains('\x1b'));
    assert!(s
        .roots
        .rows
        .iter()
        .any(|root| root.name.starts_with("\x1b[31mEvil")));
}

/// status takes no locks: it answers while an install-like transaction holds the tenant's
/// advisory lock and a row lock on every root.
#[tokio::test]
async fn status_answers_while_the_tenant_is_locked() {
    let db = TestDb::sample();
    let mut holder = db.connect().await;
    let (k1, k2) = orgctl::testing::db::TENANT_LOCK;
    for sql in [
        "BEGIN".to_string(),
        format!("SELECT pg_advisory_xact_lock({k1}, {k2})"),
        "SELECT id FROM workspaces WHERE parent_id IS NULL FOR UPDATE".to_string(),
    ] {
        if let Err(e) = sqlx::query(&sql).execute(&mut holder).await {
            panic!("{e}");
        }
    }
    let r = db
        .orgctl(&["status", "--lock-timeout", "100ms"])
        .run_async()
        .await;
    r.code(1);
    assert!(r.stdout.contains("Roots (3):"));
    drop(holder);
}

#[test]
fn a_removed_agent_is_a_broken_invariant() {
    let db = TestDb::sample();
    // The token on a non-root is a finding of its own.
    db.exec(
        "UPDATE org_api_tokens SET org_id = NULL WHERE id = '70000000-0000-4000-8000-000000000008'",
    );
    db.orgctl(&["install-platform-agent", "--model", "m", "--yes"])
        .run()
        .code(0);
    let (r, s) = status_json(&db, &[]);
    r.code(0);
    assert!(s.check("platform_agent_not_removed").ok);
    // The platform deletes its agent: a tombstone that keeps kind 'platform'.
    let agent = crate::harness::TEST_AGENT_ID;
    db.exec(&format!(
        "UPDATE workspaces SET status = 'removed' WHERE id = '{agent}'"
    ));
    let before = db.snapshot();
    let (r, s) = status_json(&db, &[]);
    r.code(1);
    assert!(!s.ok);
    let c = s.check("platform_agent_not_removed");
    assert!(!c.ok);
    assert_eq!(c.count, 1);
    assert_eq!(row_ids(c), [agent]);
    assert!(c.message.contains("--revive"), "{}", c.message);
    assert_eq!(s.failing(), ["platform_agent_not_removed"]);
    // And install says it would refuse, as it does.
    assert_eq!(s.install_would.action, "refused");
    assert!(
        s.install_would.summary.contains("is removed"),
        "{}",
        s.install_would.summary
    );
    let t = db.orgctl(&["status"]).run();
    t.code(1);
    assert!(
        t.stdout.contains("platform_agent_not_removed"),
        "{}",
        t.stdout
    );
    assert_eq!(db.snapshot(), before);
}

/// After a clean install of the sample org, status fails only tokens_on_root (tokens on a
/// non-root, which install does not move) and names the command that fixes it; after that
/// command, every invariant holds. Every failing check with an orgctl fix names it.
#[test]
fn status_names_the_command_that_fixes_each_broken_invariant() {
    let db = TestDb::sample();
    // Before the install: the roots are fixed by install.
    let (r, j) = status_json(&db, &[]);
    r.code(1);
    let fix = |j: &StatusJson, name: &str| {
        j.checks
            .iter()
            .find(|c| c.name == name)
            .and_then(|c| c.fix.clone())
    };
    assert_eq!(
        fix(&j, "single_root").as_deref(),
        Some("orgctl install-platform-agent --dry-run, then without --dry-run")
    );
    db.orgctl(&["install-platform-agent", "--model", "m", "--yes"])
        .run()
        .code(0);
    let (r, j) = status_json(&db, &[]);
    r.code(1);
    let failing: Vec<&str> = j
        .checks
        .iter()
        .filter(|c| !c.ok && c.severity == "error")
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(failing, ["tokens_on_root"]);
    assert_eq!(
        fix(&j, "tokens_on_root").as_deref(),
        Some("orgctl token anchor --stale --dry-run, then --stale --yes")
    );
    // Passing checks name no fix.
    assert!(j.checks.iter().filter(|c| c.ok).all(|c| c.fix.is_none()));
    // The table says it too.
    let text = db.orgctl(&["status"]).run();
    text.code(1);
    assert!(text.stdout.contains("To fix:"), "{}", text.stdout);
    assert!(
        text.stdout
            .contains("orgctl token anchor --stale --dry-run"),
        "{}",
        text.stdout
    );
    // The runbook's step: then every invariant holds.
    db.orgctl(&["token", "anchor", "--stale", "--yes"])
        .run()
        .code(0);
    let (r, j) = status_json(&db, &[]);
    r.code(0);
    assert!(j.ok);
}
