//! install-platform-agent against real PostgreSQL: the diff on the awkward fixture, dry run
//! read-only, apply's rows, MODEL encryption, idempotency, refusals, concurrency.

use std::collections::BTreeSet;

use serde::Deserialize;

use crate::harness::{ids, TestDb};

/// The JSON contract, rejecting unknown fields.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PlanJson {
    /// The audit chain's head a committed change prints (not on a dry run).
    #[allow(dead_code)]
    #[serde(default)]
    audit_head: Option<serde_json::Value>,
    dry_run: bool,
    changed: bool,
    platform_agent: AgentJson,
    reparented: Vec<ReparentJson>,
    root_behaviour_lost: Option<RootLossJson>,
    anchor_moves: Vec<MoveJson>,
    allowlist_merged: Vec<MergedJson>,
    model_secret: String,
    declared_plugin: PluginJson,
    plan_hash: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AgentJson {
    id: String,
    name: String,
    action: String,
    /// An update's changed fields (absent otherwise).
    #[serde(default)]
    changes: Vec<ChangeJson>,
    /// A create's row, as the platform inserts it (absent otherwise).
    row: Option<NewAgentJson>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct ChangeJson {
    field: String,
    old: String,
    new: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct NewAgentJson {
    id_source: String,
    kind: String,
    tier: i32,
    status: String,
    runtime: String,
    template: String,
    broadcast_enabled: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct PluginJson {
    workspace_id: String,
    plugin_name: String,
    source_raw: String,
    action: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReparentJson {
    id: String,
    name: String,
    old_parent_id: Option<String>,
    new_parent_id: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RootLossJson {
    roots: usize,
    effect: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MoveJson {
    table: String,
    from: String,
    to: String,
    rows: i64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MergedJson {
    id: String,
    plugin_name: String,
    from: String,
}

fn parse(stdout: &str) -> PlanJson {
    match serde_json::from_str(stdout) {
        Ok(p) => p,
        Err(e) => panic!("JSON contract: {e}\n{stdout}"),
    }
}

fn moves(p: &PlanJson, table: &str) -> BTreeSet<(String, i64)> {
    p.anchor_moves
        .iter()
        .filter(|m| m.table == table)
        .map(|m| (m.from.clone(), m.rows))
        .collect()
}

#[test]
fn dry_run_diff_on_the_awkward_fixture_is_exact_and_read_only() {
    let db = TestDb::sample();
    let before = db.snapshot();
    let r = db
        .orgctl(&[
            "install-platform-agent",
            "--dry-run",
            "--model",
            "claude",
            "-o",
            "json",
        ])
        .run();
    r.code(0);
    let p = parse(&r.stdout);
    assert!(p.dry_run);
    assert!(p.changed, "a dry run with pending changes says so");
    assert_eq!(p.platform_agent.action, "create");
    // The platform's name for an org whose name is not known.
    assert_eq!(p.platform_agent.name, "Org Concierge");
    let agent = p.platform_agent.id.clone();
    let roots: BTreeSet<&str> = p.reparented.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(
        roots,
        BTreeSet::from([ids::HQ, ids::LABS, ids::LEGACY]),
        "the removed tombstone too"
    );
    for r in &p.reparented {
        assert_eq!(r.old_parent_id, None);
        assert_eq!(r.new_parent_id, agent);
        assert!(!r.name.is_empty());
    }
    // What the re-parented roots lose on the platform is said, not done silently.
    let loss = p.root_behaviour_lost.as_ref();
    assert_eq!(loss.map(|l| l.roots), Some(3));
    assert!(
        loss.is_some_and(|l| l.effect.contains("org-wide memories become unreachable")),
        "{loss:?}"
    );
    assert_eq!(
        moves(&p, "org_api_tokens"),
        BTreeSet::from([
            (ids::HQ.into(), 3),
            (ids::LABS.into(), 1),
            (ids::LEGACY.into(), 1)
        ])
    );
    assert_eq!(
        moves(&p, "org_plugin_allowlist"),
        BTreeSet::from([
            (ids::HQ.into(), 2),
            (ids::LABS.into(), 1),
            (ids::LEGACY.into(), 1)
        ])
    );
    assert!(p.anchor_moves.iter().all(|m| m.to == agent));
    assert_eq!(p.allowlist_merged.len(), 1);
    assert_eq!(
        p.allowlist_merged[0].id,
        ids::GITHUB_LABS,
        "the later github row merges"
    );
    assert_eq!(p.allowlist_merged[0].plugin_name, "github");
    assert_eq!(p.allowlist_merged[0].from, ids::LABS);
    assert_eq!(p.model_secret, "seeded");
    assert!(p.plan_hash.starts_with("sha256:") && p.plan_hash.len() == 71);

    // Table output: live and revoked tokens apart (HQ: 3 rows = 2 live + 1 revoked).
    let t = db
        .orgctl(&["install-platform-agent", "--dry-run", "--model", "claude"])
        .run();
    t.code(0);
    let hq_line = t
        .stdout
        .lines()
        .find(|l| l.contains("org_api_tokens") && l.contains(ids::HQ))
        .unwrap_or_default()
        .to_string();
    let nums: Vec<&str> = hq_line
        .split_whitespace()
        .filter(|w| w.parse::<i64>().is_ok())
        .collect();
    assert_eq!(nums, ["3", "2", "1"], "{hq_line}");
    assert!(t.stdout.contains("Dry run: nothing was changed."));
    assert!(
        t.stdout.contains(&p.plan_hash),
        "same plan, same hash (generated id excluded)"
    );

    assert_eq!(
        db.snapshot(),
        before,
        "a dry run changes nothing, not even orgctl's schema"
    );
}

#[test]
fn dry_run_detailed_exitcode_and_missing_model() {
    let db = TestDb::sample();
    let r = db
        .orgctl(&[
            "install-platform-agent",
            "--dry-run",
            "--model",
            "m",
            "--detailed-exitcode",
        ])
        .run();
    r.code(4);
    // Without --model the plan shows MODEL missing and the refusal apply would meet.
    let r = db
        .orgctl(&["install-platform-agent", "--dry-run", "-o", "json"])
        .run();
    r.code(3).one_line_error("no MODEL secret");
    assert_eq!(parse(&r.stdout).model_secret, "missing");
    let r = db
        .orgctl(&[
            "install-platform-agent",
            "--dry-run",
            "--allow-missing-model",
            "-o",
            "json",
        ])
        .run();
    r.code(0);
}

#[tokio::test]
async fn apply_moves_everything_and_model_decrypts_independently() {
    let db = TestDb::sample();
    let key = [42u8; 32];
    let key_b64 = base64_std(&key);
    let rescue_before = db.scalar("SELECT string_agg(x::text, ',') FROM rescue_bundles x");
    let r = db
        .orgctl(&[
            "install-platform-agent",
            "--model",
            "claude-sonnet",
            "--name",
            "Concierge",
            "--yes",
            "-o",
            "json",
        ])
        .env("SECRETS_ENCRYPTION_KEY", &key_b64)
        .run();
    r.code(0);
    let p = parse(&r.stdout);
    assert!(!p.dry_run && p.changed);
    let agent = p.platform_agent.id.clone();

    // The agent: the single root, kind platform, tier 0.
    assert_eq!(
        db.scalar("SELECT string_agg(id::text || ' ' || name || ' ' || kind || ' ' || tier, ',') FROM workspaces WHERE parent_id IS NULL"),
        format!("{agent} Concierge platform 0")
    );
    // Every former root is its child; deeper rows keep their parents.
    assert_eq!(
        db.scalar(&format!(
            "SELECT count(*) FROM workspaces WHERE parent_id = '{agent}'"
        )),
        "3"
    );
    assert_eq!(
        db.scalar(&format!(
            "SELECT parent_id FROM workspaces WHERE id = '{}'",
            ids::RESEARCH
        )),
        ids::HQ
    );
    // Tokens: the five on roots moved (live and revoked); unanchored and non-root untouched.
    assert_eq!(
        db.scalar(&format!(
            "SELECT count(*) FROM org_api_tokens WHERE org_id = '{agent}'"
        )),
        "5"
    );
    assert_eq!(
        db.scalar("SELECT count(*) FROM org_api_tokens WHERE org_id IS NULL"),
        "2"
    );
    assert_eq!(
        db.scalar(&format!(
            "SELECT count(*) FROM org_api_tokens WHERE org_id = '{}'",
            ids::RESEARCH
        )),
        "1"
    );
    // Allowlist: merged to one row per plugin, keeping the earliest github row.
    assert_eq!(
        db.scalar(&format!(
            "SELECT string_agg(plugin_name || '=' || id, ',' ORDER BY plugin_name) FROM org_plugin_allowlist WHERE org_id = '{agent}'"
        )),
        format!(
            "github={},jira=e0000000-0000-4000-8000-000000000004,pagerduty=e0000000-0000-4000-8000-000000000005,slack=e0000000-0000-4000-8000-000000000002",
            ids::GITHUB_HQ
        )
    );
    assert_eq!(db.scalar("SELECT count(*) FROM org_plugin_allowlist"), "4");
    assert_eq!(
        db.scalar("SELECT string_agg(x::text, ',') FROM rescue_bundles x"),
        rescue_before,
        "rescue_bundles.org_id is another namespace"
    );

    // MODEL: version 1, nonce || ciphertext+tag, decrypted here with aes-gcm directly.
    let mut conn = db.connect().await;
    let (value, version): (Vec<u8>, i32) = match sqlx::query_as(
        "SELECT encrypted_value, encryption_version FROM workspace_secrets WHERE workspace_id = $1::uuid AND key = 'MODEL'",
    )
    .bind(&agent)
    .fetch_one(&mut conn)
    .await
    {
        Ok(v) => v,
        Err(e) => panic!("{e}"),
    };
    assert_eq!(version, 1);
    use aes_gcm::aead::Aead;
    use aes_gcm::KeyInit;
    let cipher = match aes_gcm::Aes256Gcm::new_from_slice(&key) {
        Ok(c) => c,
        Err(e) => panic!("{e}"),
    };
    let (nonce, ct) = value.split_at(12);
    let plain = cipher.decrypt(aes_gcm::Nonce::from_slice(nonce), ct);
    assert_eq!(plain.ok().as_deref(), Some(&b"claude-sonnet"[..]));

    // The audit row, in orgctl's own schema, without the MODEL value.
    let audit = db.scalar("SELECT os_user || ' ' || command || ' ' || outcome || ' ' || args::text FROM orgctl.audit_log");
    assert!(
        audit.starts_with("tester install-platform-agent applied"),
        "{audit}"
    );
    assert!(!audit.contains("claude-sonnet"), "{audit}");
    // orgctl's migrations table lives in its schema, not public.
    assert_eq!(
        db.scalar("SELECT to_regclass('public._sqlx_migrations') IS NULL"),
        "t"
    );
    assert_eq!(
        db.scalar("SELECT to_regclass('orgctl._sqlx_migrations') IS NOT NULL"),
        "t"
    );
}

fn base64_std(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[test]
fn model_without_key_is_version_0_and_refused_in_production() {
    let db = TestDb::sample();
    let before = db.snapshot();
    let r = db
        .orgctl(&["install-platform-agent", "--model", "m", "--yes"])
        .env("MOLECULE_ENV", "Production")
        .run();
    r.code(3).one_line_error("SECRETS_ENCRYPTION_KEY");
    assert_eq!(db.snapshot(), before);

    let r = db
        .orgctl(&["install-platform-agent", "--model", "m", "--yes"])
        .env("SECRETS_ENCRYPTION_KEY", "too-short")
        .run();
    r.code(2).one_line_error("SECRETS_ENCRYPTION_KEY");
    assert!(!r.stderr.contains("too-short"));
    assert_eq!(db.snapshot(), before);

    let r = db
        .orgctl(&["install-platform-agent", "--model", "plain-model", "--yes"])
        .run();
    r.code(0);
    assert!(
        r.stderr.contains("warning:") && r.stderr.contains("stored in plaintext"),
        "no plaintext warning on stderr: {}",
        r.stderr
    );
    assert_eq!(
        db.scalar("SELECT encryption_version || ':' || convert_from(encrypted_value, 'UTF8') FROM workspace_secrets WHERE key = 'MODEL'"),
        "0:plain-model"
    );
    // A raw 32-byte key (not base64) works too, and replaces the value (no plaintext warning then).
    let r = db
        .orgctl(&["install-platform-agent", "--model", "other", "--yes"])
        .env("SECRETS_ENCRYPTION_KEY", "0123456789abcdef-123456789abcdef")
        .run();
    r.code(0);
    assert!(!r.stderr.contains("plaintext"), "{}", r.stderr);
    assert_eq!(
        db.scalar("SELECT encryption_version FROM workspace_secrets WHERE key = 'MODEL'"),
        "1"
    );
}

#[test]
fn second_run_changes_nothing_and_writes_nothing() {
    let db = TestDb::sample();
    db.orgctl(&["install-platform-agent", "--model", "m", "--yes"])
        .run()
        .code(0);
    let snap = db.snapshot();
    let audits = db.audit_rows();
    assert_eq!(audits, 1);
    for args in [
        vec!["install-platform-agent", "--yes", "-o", "json"],
        vec![
            "install-platform-agent",
            "--model",
            "m",
            "--yes",
            "-o",
            "json",
        ],
        // No --yes needed when there is nothing to do.
        vec!["install-platform-agent", "-o", "json"],
    ] {
        let r = db.orgctl(&args).run();
        r.code(0);
        let p = parse(&r.stdout);
        assert!(!p.changed, "{args:?}");
        assert_eq!(p.platform_agent.action, "unchanged");
        assert!(p.reparented.is_empty() && p.anchor_moves.is_empty());
        assert_eq!(p.model_secret, "present");
    }
    let r = db
        .orgctl(&["install-platform-agent", "--dry-run", "--detailed-exitcode"])
        .run();
    r.code(0);
    assert!(r.stdout.contains("Nothing to do"));
    assert_eq!(db.snapshot(), snap);
    assert_eq!(db.audit_rows(), audits, "no audit row claiming a change");
}

#[test]
fn refuses_several_agents_listing_them() {
    let db = TestDb::sample().before_platform_constraints();
    db.exec(
        "INSERT INTO workspaces (id, name, kind) VALUES
           ('11111111-0000-4000-8000-000000000001', 'P1', 'platform'),
           ('11111111-0000-4000-8000-000000000002', 'P2', 'platform')",
    );
    let before = db.snapshot();
    let r = db
        .orgctl(&["install-platform-agent", "--model", "m", "--yes"])
        .run();
    r.code(3)
        .one_line_error("11111111-0000-4000-8000-000000000001");
    assert!(r.stderr.contains("11111111-0000-4000-8000-000000000002"));
    assert_eq!(db.snapshot(), before);
    let r = db
        .orgctl(&["install-platform-agent", "--dry-run", "--model", "m"])
        .run();
    r.code(3);
}

#[test]
fn refuses_id_of_an_ordinary_workspace_or_a_different_agent() {
    let db = TestDb::sample();
    let before = db.snapshot();
    let r = db
        .orgctl(&[
            "install-platform-agent",
            "--id",
            ids::HQ,
            "--model",
            "m",
            "--yes",
        ])
        .run();
    r.code(3).one_line_error("ordinary workspace");
    assert_eq!(db.snapshot(), before);

    let agent = "22222222-0000-4000-8000-000000000001";
    db.orgctl(&[
        "install-platform-agent",
        "--id",
        agent,
        "--model",
        "m",
        "--yes",
    ])
    .run()
    .code(0);
    assert_eq!(
        db.scalar("SELECT id FROM workspaces WHERE kind = 'platform'"),
        agent
    );
    let after = db.snapshot();
    let r = db
        .orgctl(&[
            "install-platform-agent",
            "--id",
            "33333333-0000-4000-8000-000000000001",
            "--model",
            "m",
            "--yes",
        ])
        .run();
    r.code(3).one_line_error("different agent");
    assert!(r.stderr.contains(agent));
    assert_eq!(db.snapshot(), after);
    // Its own id is fine: a no-op that says so, changes no row and writes no audit row.
    let audits = db.audit_rows();
    let r = db
        .orgctl(&[
            "install-platform-agent",
            "--id",
            agent,
            "--yes",
            "-o",
            "json",
        ])
        .run();
    r.code(0);
    let p = parse(&r.stdout);
    assert!(!p.changed);
    assert_eq!(
        (
            p.platform_agent.id.as_str(),
            p.platform_agent.action.as_str()
        ),
        (agent, "unchanged")
    );
    assert_eq!(db.snapshot(), after);
    assert_eq!(db.audit_rows(), audits);
}

#[test]
fn existing_agent_under_a_root_is_promoted() {
    let db = TestDb::sample().before_platform_constraints();
    let agent = "44444444-0000-4000-8000-000000000001";
    db.exec(&format!(
        "INSERT INTO workspaces (id, name, kind, tier, parent_id) VALUES ('{agent}', 'Old concierge', 'platform', 2, '{}');
         INSERT INTO workspace_secrets (workspace_id, key, encrypted_value) VALUES ('{agent}', 'MODEL', 'x'::bytea);",
        ids::HQ
    ));
    let r = db
        .orgctl(&["install-platform-agent", "--yes", "-o", "json"])
        .run();
    r.code(0);
    let p = parse(&r.stdout);
    assert_eq!(p.platform_agent.id, agent);
    assert_eq!(p.platform_agent.action, "update");
    assert_eq!(
        p.platform_agent.name, "Old concierge",
        "an existing agent keeps its name"
    );
    assert_eq!(p.model_secret, "present");
    // At the root; its tier is the platform's (a re-install preserves it), its template set.
    assert_eq!(
        db.scalar(&format!("SELECT coalesce(parent_id::text, 'null') || ' ' || tier || ' ' || template FROM workspaces WHERE id = '{agent}'")),
        "null 2 platform-agent"
    );
    assert_eq!(
        db.scalar("SELECT count(*) FROM workspaces WHERE parent_id IS NULL"),
        "1"
    );
}

#[test]
fn refuses_without_model_and_changes_nothing() {
    let db = TestDb::sample();
    let before = db.snapshot();
    let r = db.orgctl(&["install-platform-agent", "--yes"]).run();
    r.code(3).one_line_error("--allow-missing-model");
    assert_eq!(db.snapshot(), before);
    db.orgctl(&["install-platform-agent", "--yes", "--allow-missing-model"])
        .run()
        .code(0);
    assert_eq!(
        db.scalar("SELECT count(*) FROM workspace_secrets WHERE key = 'MODEL'"),
        "0"
    );
}

#[test]
fn refuses_an_incompatible_schema_naming_what_is_missing() {
    let db = TestDb::sample();
    db.exec("ALTER TABLE workspaces DROP COLUMN kind; DROP TABLE org_plugin_allowlist;");
    let before = db.snapshot_without_allowlist();
    for args in [
        vec!["install-platform-agent", "--model", "m", "--yes"],
        vec!["install-platform-agent", "--dry-run", "--model", "m"],
    ] {
        let r = db.orgctl(&args).run();
        r.code(3).one_line_error("workspaces.kind");
        assert!(
            r.stderr.contains("table org_plugin_allowlist"),
            "{}",
            r.stderr
        );
    }
    assert_eq!(db.snapshot_without_allowlist(), before);
}

impl TestDb {
    fn snapshot_without_allowlist(&self) -> String {
        self.exec(
            "SELECT string_agg(x::text, E'\\n' ORDER BY x::text) FROM workspaces x;
             SELECT string_agg(x::text, E'\\n' ORDER BY x::text) FROM org_api_tokens x;
             SELECT to_regclass('orgctl.audit_log') IS NULL;",
        )
    }
}

#[tokio::test]
async fn refuses_when_another_orgctl_holds_the_lock() {
    let db = TestDb::sample();
    let before = db.snapshot();
    let mut holder = db.connect().await;
    // Another orgctl: its connections say application_name=orgctl.
    if let Err(e) = sqlx::query("SET application_name = 'orgctl'")
        .execute(&mut holder)
        .await
    {
        panic!("{e}");
    }
    let (k1, k2) = orgctl::testing::db::TENANT_LOCK;
    if let Err(e) = sqlx::query("SELECT pg_advisory_lock($1, $2)")
        .bind(k1)
        .bind(k2)
        .execute(&mut holder)
        .await
    {
        panic!("{e}");
    }
    let r = db
        .orgctl(&[
            "install-platform-agent",
            "--model",
            "m",
            "--yes",
            "--lock-timeout",
            "300ms",
        ])
        .run_async()
        .await;
    r.code(3)
        .one_line_error("another orgctl holds this tenant's lock");
    assert!(
        r.stderr.contains("backend pid"),
        "names the holder: {}",
        r.stderr
    );
    // orgctl's own schema may now exist (first mutating use); the platform tables are untouched.
    let after = db.snapshot();
    assert_eq!(
        after.split("== orgctl").next(),
        before.split("== orgctl").next()
    );
    assert_eq!(db.audit_rows(), 0);
    // A dry run takes no lock and works meanwhile.
    db.orgctl(&["install-platform-agent", "--dry-run", "--model", "m"])
        .run_async()
        .await
        .code(0);
    drop(holder);
}

#[test]
fn expect_plan_applies_only_the_reviewed_plan() {
    let db = TestDb::sample();
    let dry = db
        .orgctl(&[
            "install-platform-agent",
            "--dry-run",
            "--model",
            "m",
            "-o",
            "json",
        ])
        .run();
    dry.code(0);
    let hash = parse(&dry.stdout).plan_hash;

    // The tenant changes after review: a new token on a root.
    db.exec(&format!(
        "INSERT INTO org_api_tokens (token_hash, prefix, org_id) VALUES (sha256('late'::bytea), 'late0000', '{}')",
        ids::LABS
    ));
    let before = db.snapshot();
    let r = db
        .orgctl(&[
            "install-platform-agent",
            "--model",
            "m",
            "--yes",
            "--expect-plan",
            &hash,
            "-o",
            "json",
        ])
        .run();
    r.code(3).one_line_error("differs from the reviewed one");
    let new_plan = parse(&r.stdout);
    assert_ne!(new_plan.plan_hash, hash, "the new diff is printed");
    assert_eq!(db.snapshot(), before);

    let r = db
        .orgctl(&[
            "install-platform-agent",
            "--model",
            "m",
            "--yes",
            "--expect-plan",
            &new_plan.plan_hash,
        ])
        .run();
    r.code(0);
    assert_eq!(
        db.scalar("SELECT count(*) FROM workspaces WHERE parent_id IS NULL"),
        "1"
    );

    let bad = db
        .orgctl(&["install-platform-agent", "--yes", "--expect-plan", "abc"])
        .run();
    bad.code(2).one_line_error("not a plan hash");
}

#[test]
fn apply_needs_yes_without_a_terminal() {
    let db = TestDb::sample();
    let before = db.snapshot();
    let r = db.orgctl(&["install-platform-agent", "--model", "m"]).run();
    r.code(3).one_line_error("--yes");
    assert_eq!(db.snapshot(), before);
    assert!(r.stdout.is_empty());
}

#[test]
fn bad_arguments_are_usage_errors() {
    let db = TestDb::sample();
    let before = db.snapshot();
    for (args, needle) in [
        (
            vec!["install-platform-agent", "--id", "not-a-uuid"],
            "not-a-uuid",
        ),
        (
            vec!["install-platform-agent", "--name", "", "--yes"],
            "--name",
        ),
        (
            vec!["install-platform-agent", "--model", " ", "--yes"],
            "--model",
        ),
        (
            vec!["install-platform-agent", "--detailed-exitcode"],
            "--dry-run",
        ),
        (
            vec!["install-platform-agent", "--lock-timeout", "soon"],
            "soon",
        ),
    ] {
        let r = db.orgctl(&args).run();
        r.code(2);
        assert!(r.stderr.contains(needle), "{args:?}: {}", r.stderr);
        assert!(!r.stderr.contains("panicked"));
    }
    assert_eq!(db.snapshot(), before);
}

#[tokio::test]
async fn two_installs_at_once_end_with_exactly_one_agent() {
    let db = TestDb::sample();
    let a = db.orgctl(&[
        "install-platform-agent",
        "--model",
        "m",
        "--yes",
        "-o",
        "json",
    ]);
    let b = db.orgctl(&[
        "install-platform-agent",
        "--model",
        "m",
        "--yes",
        "-o",
        "json",
    ]);
    let (ra, rb) = tokio::join!(a.run_async(), b.run_async());
    for r in [&ra, &rb] {
        assert!(r.code == 0 || r.code == 3, "{r:?}");
        if r.code == 3 {
            assert!(r.stderr.contains("lock"), "{}", r.stderr);
        }
    }
    let changed: Vec<bool> = [&ra, &rb]
        .iter()
        .filter(|r| r.code == 0)
        .map(|r| r.json()["changed"].as_bool().unwrap_or(false))
        .collect();
    assert_eq!(changed.iter().filter(|c| **c).count(), 1, "{ra:?} {rb:?}");
    assert_eq!(
        db.scalar("SELECT count(*) FROM workspaces WHERE kind = 'platform'"),
        "1"
    );
    assert_eq!(
        db.scalar("SELECT count(*) FROM workspaces WHERE parent_id IS NULL"),
        "1"
    );
    assert_eq!(db.audit_rows(), 1);
}

/// A live platform keeps writing while the install runs: tokens minted on a root, last_used_at
/// bumps, children and allowlist rows added. No deadlock, nothing lost, and no row written
/// during the run is left on a former root (a row whose insert waited at the commit is swept by
/// the next install).
#[tokio::test]
async fn concurrent_platform_writer_is_not_deadlocked_or_left_behind() {
    let db = TestDb::sample();
    // Make the install take a while: many tokens on the roots.
    db.exec(&format!(
        "INSERT INTO org_api_tokens (token_hash, prefix, org_id)
         SELECT sha256(('bulk' || g)::bytea), 'bulk', (ARRAY['{}','{}','{}']::uuid[])[1 + g % 3]
           FROM generate_series(1, 60000) g",
        ids::HQ,
        ids::LABS,
        ids::LEGACY
    ));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..3 {
        let url = db.url.clone();
        let stop = stop.clone();
        writers.push(tokio::spawn(async move {
            use sqlx::Connection;
            let mut conn = match sqlx::PgConnection::connect(&url).await {
                Ok(c) => c,
                Err(e) => panic!("{e}"),
            };
            // Committed writes by kind: tokens, last_used_at bumps, children, allowlist rows.
            let mut written = [0i64; 4];
            let mut i = 0u64;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                i += 1;
                // The platform resolves the org root at request time, walking up.
                let root_of = format!(
                    "(WITH RECURSIVE up(id, parent_id, d) AS (
                        SELECT id, parent_id, 0 FROM workspaces WHERE id = '{}'
                        UNION ALL SELECT w.id, w.parent_id, d + 1 FROM workspaces w JOIN up ON w.id = up.parent_id WHERE d < 32)
                      SELECT id FROM up WHERE parent_id IS NULL)",
                    ids::RESEARCH
                );
                let kind = (w + i as usize) % 4;
                let sql = match kind {
                    0 => format!(
                        "INSERT INTO org_api_tokens (token_hash, prefix, org_id, created_by)
                         VALUES (sha256('w{w}-{i}'::bytea), 'live0000', {root_of}, 'writer')"
                    ),
                    1 => "UPDATE org_api_tokens SET last_used_at = now() WHERE id = '70000000-0000-4000-8000-000000000001'".to_string(),
                    2 => format!(
                        "INSERT INTO workspaces (name, parent_id) VALUES ('child w{w}-{i}', '{}')",
                        ids::HQ
                    ),
                    _ => format!(
                        "INSERT INTO org_plugin_allowlist (org_id, plugin_name, enabled_by)
                         VALUES ({root_of}, 'p-w{w}-{i}', 'writer')"
                    ),
                };
                match sqlx::query(&sql).execute(&mut conn).await {
                    Ok(_) => written[kind] += 1,
                    Err(e) => panic!("the platform's write failed: {e}"),
                }
            }
            written
        }));
    }
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let r = db
        .orgctl(&[
            "install-platform-agent",
            "--model",
            "m",
            "--yes",
            "--lock-timeout",
            "30s",
        ])
        .run_async()
        .await;
    r.code(0);
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let mut done = [0i64; 4];
    for w in writers {
        match w.await {
            Ok(n) => {
                for k in 0..4 {
                    done[k] += n[k];
                }
            }
            Err(e) => panic!("{e}"),
        }
    }
    assert!(
        done.iter().all(|n| *n > 0),
        "every kind of write ran: {done:?}"
    );
    // Rows that raced the commit are swept by the next run; then nothing is on a former root.
    db.orgctl(&["install-platform-agent", "--yes"])
        .run()
        .code(0);
    let left = db.scalar(
        "SELECT (SELECT count(*) FROM org_api_tokens t JOIN orgctl.former_roots f ON f.workspace_id = t.org_id)
              + (SELECT count(*) FROM org_plugin_allowlist a JOIN orgctl.former_roots f ON f.workspace_id = a.org_id)",
    );
    assert_eq!(left, "0");
    assert_eq!(
        db.scalar("SELECT count(*) FROM workspaces WHERE parent_id IS NULL"),
        "1"
    );
    // Every row the writer committed is kept: exactly as many as it counted, nothing lost.
    assert_eq!(
        db.scalar("SELECT count(*) FROM org_api_tokens WHERE created_by = 'writer'"),
        done[0].to_string()
    );
    assert_eq!(
        db.scalar("SELECT count(*) FROM workspaces WHERE name LIKE 'child w%'"),
        done[2].to_string()
    );
    assert_eq!(
        db.scalar("SELECT count(*) FROM org_plugin_allowlist WHERE enabled_by = 'writer'"),
        done[3].to_string()
    );
    assert_eq!(
        db.scalar("SELECT count(*) FROM org_api_tokens"),
        (60_000 + 8 + done[0]).to_string()
    );
}

#[test]
fn a_tenant_migrated_by_a_newer_orgctl_is_refused_clearly() {
    let db = TestDb::sample();
    db.orgctl(&["install-platform-agent", "--model", "m", "--yes"])
        .run()
        .code(0);
    db.exec(
        "INSERT INTO orgctl._sqlx_migrations (version, description, success, checksum, execution_time)
         VALUES (9999, 'from the future', true, '\\x00'::bytea, 0)",
    );
    db.exec("UPDATE workspaces SET name = 'Renamed' WHERE kind = 'platform'");
    let before = db.snapshot();
    let r = db
        .orgctl(&["install-platform-agent", "--name", "Concierge", "--yes"])
        .run();
    r.code(3).one_line_error("newer than this orgctl");
    assert_eq!(db.snapshot(), before);
}

#[test]
fn broken_parent_chains_are_reported_never_walked() {
    let db = TestDb::sample();
    db.exec(
        "INSERT INTO workspaces (id, name) VALUES
           ('99999999-0000-4000-8000-000000000001', 'loop a'),
           ('99999999-0000-4000-8000-000000000002', 'loop b');
         UPDATE workspaces SET parent_id = '99999999-0000-4000-8000-000000000002'
          WHERE id = '99999999-0000-4000-8000-000000000001';
         UPDATE workspaces SET parent_id = '99999999-0000-4000-8000-000000000001'
          WHERE id = '99999999-0000-4000-8000-000000000002';",
    );
    let r = db
        .orgctl(&["install-platform-agent", "--dry-run", "--model", "m"])
        .run();
    r.code(0);
    assert!(
        r.stderr
            .contains("2 workspace(s) have a broken parent chain")
            && r.stderr.contains("99999999-0000-4000-8000-000000000001"),
        "{}",
        r.stderr
    );
    // The install itself still does its job; the cycle stays for a human to repair.
    db.orgctl(&["install-platform-agent", "--model", "m", "--yes"])
        .run()
        .code(0);
    assert_eq!(
        db.scalar("SELECT count(*) FROM workspaces WHERE parent_id IS NULL"),
        "1"
    );
}

/// The id a dry run shows for a created agent is the id apply creates (it was
/// a fresh random id on every run), and the MODEL refusal names that same id.
#[test]
fn dry_run_shows_the_agent_id_apply_creates() {
    let db = TestDb::sample();
    let dry = |extra: &[&str]| {
        let mut args = vec!["install-platform-agent", "--dry-run", "-o", "json"];
        args.extend_from_slice(extra);
        db.orgctl(&args).run()
    };
    let first = dry(&["--model", "m"]);
    first.code(0);
    let id = first.json()["platform_agent"]["id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert_eq!(id.len(), 36, "{}", first.stdout);
    let second = dry(&["--model", "m"]);
    assert_eq!(second.json()["platform_agent"]["id"], id.as_str());
    assert_eq!(second.json()["reparented"][0]["new_parent_id"], id.as_str());

    let refused = dry(&[]);
    refused
        .code(3)
        .one_line_error(&format!("to be created ({id})"));

    let applied = db
        .orgctl(&[
            "install-platform-agent",
            "--model",
            "m",
            "--yes",
            "-o",
            "json",
        ])
        .run();
    applied.code(0);
    assert_eq!(applied.json()["platform_agent"]["id"], id.as_str());
    assert_eq!(
        db.scalar("SELECT id FROM workspaces WHERE kind = 'platform'"),
        id
    );
    // It is the platform's id for the org id: another org (a copy of the same roots) gets
    // the platform's id for its own org id. (Expected id computed with python3:
    // uuid.uuid5(uuid.NAMESPACE_URL, "molecule-platform-agent:org-b").)
    assert_eq!(id, crate::harness::TEST_AGENT_ID);
    let other = TestDb::sample();
    let o = other
        .orgctl(&[
            "install-platform-agent",
            "--dry-run",
            "--model",
            "m",
            "-o",
            "json",
        ])
        .env("MOLECULE_ORG_ID", " org-b\n")
        .run();
    assert_eq!(
        o.json()["platform_agent"]["id"],
        "ff506107-d497-59e7-a384-56bfab91789d"
    );
}

#[test]
fn a_schema_created_by_hand_from_the_migrations_is_adopted() {
    // A tenant's first touch runs every migration in one message (after seeing no orgctl
    // schema under the tenant lock); should the schema appear meanwhile — here a DBA ran the
    // migration files by hand, twice, without sqlx's version table — every migration must be
    // safe to run again, and orgctl records the versions and carries on.
    let db = TestDb::sample();
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations/orgctl");
    let mut files: Vec<_> = match std::fs::read_dir(&dir) {
        Ok(d) => d.filter_map(|e| e.ok().map(|e| e.path())).collect(),
        Err(e) => panic!("{e}"),
    };
    files.sort();
    assert_eq!(files.len(), 6, "{files:?}");
    db.exec("CREATE SCHEMA orgctl");
    for _ in 0..2 {
        for f in &files {
            match std::fs::read_to_string(f) {
                Ok(sql) => {
                    db.exec(&sql);
                }
                Err(e) => panic!("{e}"),
            }
        }
    }
    db.orgctl(&["install-platform-agent", "--model", "m", "--yes"])
        .run()
        .code(0);
    assert_eq!(
        db.scalar("SELECT string_agg(version::text, ',' ORDER BY version) FROM orgctl._sqlx_migrations WHERE success"),
        "1,2,3,4,5,6"
    );
    assert_eq!(db.scalar("SELECT count(*) FROM orgctl.audit_head"), "1");
    assert_eq!(db.audit_rows(), 1);
    // And the next command finds it at its version.
    db.orgctl(&["token", "mint", "--name", "after", "--created-by", "t"])
        .run()
        .code(0);
}

#[test]
fn a_root_locked_by_the_platform_is_a_lock_timeout_naming_the_roots() {
    // The row locks go in the same message as the plan's first reads — on a tenant's first
    // touch, at the end of the message that creates orgctl's schema; their timeout is still
    // said as such (exit 3), and nothing changes. Both paths: orgctl's schema absent, and
    // present (another command created it before).
    let fresh = TestDb::sample();
    assert!(fresh.snapshot().contains("== orgctl\nabsent"));
    root_locked_is_a_lock_timeout(&fresh);
    let present = TestDb::sample();
    present
        .orgctl(&[
            "token",
            "mint",
            "--name",
            "first",
            "--created-by",
            "t",
            "--org",
            ids::HQ,
        ])
        .run()
        .code(0);
    root_locked_is_a_lock_timeout(&present);
}

fn root_locked_is_a_lock_timeout(db: &TestDb) {
    let before = db.snapshot();
    let name = db.name.clone();
    let holder = std::thread::spawn(move || {
        let _ = crate::harness::server().psql(
            &name,
            &format!(
                "BEGIN; SELECT 1 FROM workspaces WHERE id = '{}' FOR UPDATE; SELECT pg_sleep(4); COMMIT;",
                ids::HQ
            ),
        );
    });
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while db.scalar(
        "SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%pg_sleep(4)%' AND wait_event = 'PgSleep' AND pid <> pg_backend_pid() AND datname = current_database()",
    ) != "1"
    {
        assert!(std::time::Instant::now() < deadline, "the holder never started");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let r = db
        .orgctl(&[
            "--lock-timeout",
            "1s",
            "install-platform-agent",
            "--model",
            "m",
            "--yes",
        ])
        .run();
    let pid = db.scalar(
        "SELECT pid FROM pg_stat_activity WHERE query LIKE '%pg_sleep(4)%' AND pid <> pg_backend_pid() AND datname = current_database()",
    );
    let _ = holder.join();
    // The holder named as the advisory-lock refusal names it: pid, application, user, client;
    // no driver text, no guess.
    r.code(3).one_line_error(&format!(
        "timed out waiting for a lock on the org's root workspaces (--lock-timeout): held by backend pid {pid} (application 'psql', user 'postgres', from 127.0.0.1); retry when it is done or raise --lock-timeout"
    ));
    assert!(!r.stderr.contains("canceling statement"), "{}", r.stderr);
    assert!(!r.stderr.contains("another orgctl"), "{}", r.stderr);
    assert_eq!(db.snapshot(), before);
}

/// A platform trigger that adds a root (a workspace without a parent) whenever the platform
/// agent's row goes in: every change orgctl makes still matches its plan, but the result breaks
/// the invariant "exactly one root, the agent".
pub const SNEAKY_ROOT: &str = "CREATE FUNCTION sneaky_root() RETURNS trigger LANGUAGE plpgsql AS $$
     BEGIN INSERT INTO workspaces (id, name) VALUES (gen_random_uuid(), 'Sneaky'); RETURN NULL; END $$;
     CREATE TRIGGER sneaky_root AFTER INSERT ON workspaces
         FOR EACH ROW WHEN (NEW.kind = 'platform') EXECUTE FUNCTION sneaky_root();";

#[test]
fn a_result_that_breaks_an_invariant_is_caught_before_commit_and_nothing_changes() {
    // The verification is read in the audit statement, after every change of the plan: it
    // must see the trigger's extra root and roll the whole change back.
    let db = TestDb::sample();
    db.exec(SNEAKY_ROOT);
    let before = db.snapshot();
    let r = db
        .orgctl(&["install-platform-agent", "--model", "m", "--yes"])
        .run();
    r.code(1);
    assert!(
        r.stderr.contains(
            "verification failed before commit (2 root(s) where there must be exactly one"
        ),
        "{}",
        r.stderr
    );
    let errors: Vec<&str> = r
        .stderr
        .lines()
        .filter(|l| l.starts_with("error:"))
        .collect();
    assert_eq!(errors.len(), 1, "{}", r.stderr);
    assert_eq!(db.snapshot(), before);
    assert_eq!(db.audit_rows(), 0);
}

// ---------------------------------------------------------------------------------------------
// The agent's identity and row are the platform's.

/// The agent row as text, for comparisons: the columns the platform's install writes.
fn agent_row(db: &TestDb, id: &str) -> String {
    db.scalar(&format!(
        "SELECT concat_ws('|', kind, tier, status, runtime, coalesce(parent_id::text, 'null'),
                          template, broadcast_enabled, name)
           FROM workspaces WHERE id = '{id}'"
    ))
}

fn declared_plugins(db: &TestDb) -> String {
    db.scalar(
        "SELECT coalesce(string_agg(workspace_id || ' ' || plugin_name || ' ' || source_raw, E'\\n'
                                    ORDER BY workspace_id, plugin_name), '')
           FROM workspace_declared_plugins",
    )
}

const MCP: &str = "molecule-ai-plugin-molecule-platform-mcp";
const MCP_SOURCE: &str = "gitea://molecule-ai/molecule-ai-plugin-molecule-platform-mcp#main";
/// uuid.uuid5(uuid.NAMESPACE_URL, "molecule:self-hosted:platform-agent"), computed with python3.
const SELF_HOSTED_ID: &str = "ea3cfcf1-cb9c-53b4-90fd-c53123569c4a";

#[test]
fn a_new_agent_is_the_row_the_platform_inserts_with_its_declared_plugin() {
    let db = TestDb::sample();
    let id = crate::harness::TEST_AGENT_ID;
    let dry = db
        .orgctl(&[
            "install-platform-agent",
            "--dry-run",
            "--model",
            "m",
            "-o",
            "json",
        ])
        .run();
    dry.code(0);
    let p = parse(&dry.stdout);
    assert_eq!(p.platform_agent.id, id);
    let row = p.platform_agent.row.as_ref().map(|r| {
        (
            r.status.as_str(),
            r.runtime.as_str(),
            r.template.as_str(),
            r.broadcast_enabled,
            r.tier,
        )
    });
    assert_eq!(row, Some(("offline", "hermes", "platform-agent", true, 0)));
    assert_eq!(
        (
            p.declared_plugin.plugin_name.as_str(),
            p.declared_plugin.source_raw.as_str(),
            p.declared_plugin.action.as_str()
        ),
        (MCP, MCP_SOURCE, "create")
    );
    let text = db
        .orgctl(&["install-platform-agent", "--dry-run", "--model", "m"])
        .run();
    assert!(
        text.stdout
            .contains(&format!("Declared plugin: {MCP} ({MCP_SOURCE}) — create")),
        "{}",
        text.stdout
    );
    assert!(
        text.stdout.contains("declare the platform MCP plugin"),
        "{}",
        text.stdout
    );

    let applied = db
        .orgctl(&[
            "install-platform-agent",
            "--model",
            "m",
            "--yes",
            "-o",
            "json",
        ])
        .run();
    applied.code(0);
    assert_eq!(parse(&applied.stdout).plan_hash, p.plan_hash);
    assert_eq!(
        agent_row(&db, id),
        "platform|0|offline|hermes|null|platform-agent|t|Org Concierge"
    );
    assert_eq!(declared_plugins(&db), format!("{id} {MCP} {MCP_SOURCE}"));
    // A second run changes nothing.
    let again = db
        .orgctl(&["install-platform-agent", "--yes", "-o", "json"])
        .run();
    again.code(0);
    let q = parse(&again.stdout);
    assert!(!q.changed);
    assert_eq!(q.declared_plugin.action, "unchanged");
}

#[test]
fn a_new_agent_takes_the_org_name_and_default_runtime_from_the_platforms_environment() {
    let db = TestDb::sample();
    db.orgctl(&["install-platform-agent", "--model", "m", "--yes"])
        .env("MOLECULE_ORG_NAME", "  Acme Corp ")
        .env("MOLECULE_DEFAULT_RUNTIME", "claude-code")
        .run()
        .code(0);
    assert_eq!(
        agent_row(&db, crate::harness::TEST_AGENT_ID),
        "platform|0|offline|claude-code|null|platform-agent|t|Acme Corp Agent"
    );
    // --name still overrides the org's name.
    let db = TestDb::sample();
    db.orgctl(&[
        "install-platform-agent",
        "--model",
        "m",
        "--yes",
        "--name",
        "Concierge",
    ])
    .env("MOLECULE_ORG_NAME", "Acme Corp")
    .run()
    .code(0);
    assert_eq!(
        db.scalar("SELECT name FROM workspaces WHERE kind = 'platform'"),
        "Concierge"
    );
    // An org name with a control character is refused before anything is read.
    let db = TestDb::sample();
    let before = db.snapshot();
    db.orgctl(&["install-platform-agent", "--model", "m", "--yes"])
        .env("MOLECULE_ORG_NAME", "Acme\u{1b}[31m")
        .run()
        .code(2)
        .one_line_error("MOLECULE_ORG_NAME");
    assert_eq!(db.snapshot(), before);
}

#[test]
fn a_self_hosted_tenant_gets_the_platforms_self_hosted_id() {
    let db = TestDb::sample();
    db.orgctl(&[
        "install-platform-agent",
        "--self-hosted",
        "--model",
        "m",
        "--yes",
    ])
    .env_remove("MOLECULE_ORG_ID")
    .run()
    .code(0);
    assert_eq!(
        db.scalar("SELECT id FROM workspaces WHERE kind = 'platform'"),
        SELF_HOSTED_ID
    );
}

#[test]
fn without_an_org_id_or_self_hosted_a_new_agent_is_refused_rather_than_invented() {
    let db = TestDb::sample();
    let before = db.snapshot();
    for extra in [&["--dry-run"][..], &["--yes"][..]] {
        let mut args = vec!["install-platform-agent", "--model", "m"];
        args.extend_from_slice(extra);
        db.orgctl(&args)
            .env_remove("MOLECULE_ORG_ID")
            .run()
            .code(2)
            .one_line_error("--org-id");
    }
    // Both an org id and self-hosted: one or the other.
    db.orgctl(&[
        "install-platform-agent",
        "--self-hosted",
        "--model",
        "m",
        "--yes",
    ])
    .run()
    .code(2)
    .one_line_error("self-hosted are both given");
    // A blank or spaced org id is not an org id.
    for bad in ["   ", "acme corp"] {
        db.orgctl(&[
            "install-platform-agent",
            "--model",
            "m",
            "--yes",
            "--org-id",
            bad,
        ])
        .run()
        .code(2)
        .one_line_error("--org-id");
    }
    assert_eq!(db.snapshot(), before);
    assert_eq!(db.audit_rows(), 0);
}

#[test]
fn an_existing_agent_is_adopted_whatever_its_id_and_keeps_what_the_platform_keeps() {
    let db = TestDb::sample();
    let agent = "44444444-0000-4000-8000-000000000002";
    db.exec(&format!(
        "INSERT INTO workspaces (id, name, kind, tier, status, runtime, broadcast_enabled, template)
         VALUES ('{agent}', 'Their concierge', 'platform', 3, 'online', 'claude-code', false, 'custom');
         INSERT INTO workspace_secrets (workspace_id, key, encrypted_value) VALUES ('{agent}', 'MODEL', 'x'::bytea);
         INSERT INTO workspace_declared_plugins (workspace_id, plugin_name, source_raw)
         VALUES ('{agent}', '{MCP}', 'gitea://old#v1');"
    ));
    // No org id needed to adopt it.
    let r = db
        .orgctl(&["install-platform-agent", "--yes", "-o", "json"])
        .env_remove("MOLECULE_ORG_ID")
        .run();
    r.code(0);
    let p = parse(&r.stdout);
    assert_eq!(p.platform_agent.id, agent);
    assert_eq!(p.platform_agent.action, "update");
    let fields: Vec<&str> = p
        .platform_agent
        .changes
        .iter()
        .map(|c| c.field.as_str())
        .collect();
    assert_eq!(fields, ["template"]);
    assert_eq!(p.declared_plugin.action, "update");
    // Only kind, parent and template are the install's; status, tier, runtime, broadcast and
    // name stay as they were.
    assert_eq!(
        agent_row(&db, agent),
        "platform|3|online|claude-code|null|platform-agent|f|Their concierge"
    );
    assert_eq!(declared_plugins(&db), format!("{agent} {MCP} {MCP_SOURCE}"));
}

#[test]
fn an_id_override_that_differs_from_the_platforms_warns() {
    let db = TestDb::sample();
    let mine = "55555555-0000-4000-8000-000000000001";
    let r = db
        .orgctl(&[
            "install-platform-agent",
            "--id",
            mine,
            "--model",
            "m",
            "--yes",
        ])
        .run();
    r.code(0);
    assert!(
        r.stderr
            .contains(&format!("--id {mine} differs from the platform's id"))
            && r.stderr.contains(crate::harness::TEST_AGENT_ID),
        "{}",
        r.stderr
    );
    assert_eq!(
        db.scalar("SELECT id FROM workspaces WHERE kind = 'platform'"),
        mine
    );
    // The platform's own id: no warning.
    let db = TestDb::sample();
    let r = db
        .orgctl(&[
            "install-platform-agent",
            "--id",
            crate::harness::TEST_AGENT_ID,
            "--model",
            "m",
            "--yes",
        ])
        .run();
    r.code(0);
    assert!(!r.stderr.contains("differs"), "{}", r.stderr);
}

#[test]
fn a_removed_agent_is_refused_unless_revived() {
    let db = TestDb::sample();
    let agent = "44444444-0000-4000-8000-000000000003";
    db.exec(&format!(
        "INSERT INTO workspaces (id, name, kind, tier, status, runtime)
         VALUES ('{agent}', 'Deleted concierge', 'platform', 0, 'removed', 'hermes');
         INSERT INTO workspace_secrets (workspace_id, key, encrypted_value) VALUES ('{agent}', 'MODEL', 'x'::bytea);"
    ));
    let before = db.snapshot();
    for extra in [&["--dry-run"][..], &["--yes"][..]] {
        let mut args = vec!["install-platform-agent"];
        args.extend_from_slice(extra);
        db.orgctl(&args).run().code(3).one_line_error(&format!(
            "the platform agent {agent} ('Deleted concierge') is removed"
        ));
    }
    assert_eq!(db.snapshot(), before);

    let dry = db
        .orgctl(&[
            "install-platform-agent",
            "--revive",
            "--dry-run",
            "-o",
            "json",
        ])
        .run();
    dry.code(0);
    let p = parse(&dry.stdout);
    let status = p
        .platform_agent
        .changes
        .iter()
        .find(|c| c.field == "status")
        .map(|c| (c.old.as_str(), c.new.as_str()));
    assert_eq!(status, Some(("removed", "offline")));
    db.orgctl(&["install-platform-agent", "--revive", "--yes"])
        .run()
        .code(0);
    assert_eq!(
        agent_row(&db, agent),
        "platform|0|offline|hermes|null|platform-agent|f|Deleted concierge"
    );
    assert_eq!(
        db.scalar("SELECT count(*) FROM workspaces WHERE parent_id IS NULL"),
        "1"
    );
}
