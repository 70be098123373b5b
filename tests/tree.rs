//! The org tree as the platform has it: one live name per parent (install and rollback plan it
//! instead of meeting the unique index mid-transaction), how deep its lookups reach (install
//! warns at each of the platform's limits, status calls a chain past the org-root lookup
//! broken), and the tombstone a forced rollback leaves (still the org's platform row).

use crate::harness::{ids, Cmd, Run, TestDb};

const AGENT: &str = "f1000000-0000-4000-8000-000000000001";
const CHILD: &str = "f1000000-0000-4000-8000-000000000002";
const NEW_ROOT: &str = "f1000000-0000-4000-8000-000000000003";

/// The platform tables only (orgctl's own schema left out).
fn platform(db: &TestDb) -> String {
    let s = db.snapshot();
    match s.find("== orgctl") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}

fn install(db: &TestDb, extra: &[&str]) -> Run {
    let mut args = vec!["install-platform-agent", "--model", "m"];
    args.extend_from_slice(extra);
    db.orgctl(&args).run()
}

/// A one-tenant fleet file, removed on drop.
struct Fleet(std::path::PathBuf);

impl Fleet {
    fn new(db: &TestDb) -> Self {
        Fleet(crate::harness::tenants_file(
            &format!("tree-{}", db.name),
            &format!("acme {}\n", db.url),
        ))
    }

    fn run(&self, args: &[&str]) -> Run {
        let mut v = vec!["-o", "json", "backfill"];
        v.extend_from_slice(args);
        v.extend_from_slice(&["--tenants", self.0.to_str().unwrap_or_default(), "--yes"]);
        Cmd::new(&v).run()
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn tenant(r: &Run) -> serde_json::Value {
    r.json()["tenants"][0].clone()
}

// ---------------------------------------------------------------------------------------------
// Sibling names

#[test]
fn install_refuses_an_agent_named_like_a_live_root_in_dry_run_and_apply_alike() {
    let db = TestDb::sample();
    let before = db.snapshot();
    let mut said = std::collections::BTreeSet::new();
    // The agent is written at the top level before the roots move under it.
    for extra in [
        vec!["--name", "Acme Labs", "--dry-run", "--detailed-exitcode"],
        vec!["--name", "Acme Labs", "--dry-run", "-o", "json"],
        vec!["--name", "Acme Labs", "--yes"],
    ] {
        let r = install(&db, &extra);
        r.code(3);
        r.one_line_error("the same name under one parent");
        let line = r
            .stderr
            .lines()
            .find(|l| l.starts_with("error:"))
            .unwrap_or_default();
        assert!(
            line.contains(ids::LABS)
                && line.contains("\"Acme Labs\"")
                && line.contains("workspaces_parent_name_uniq")
                && line.contains("--name"),
            "{extra:?}: {line}"
        );
        assert!(!r.stderr.contains("23505"), "{}", r.stderr);
        assert_eq!(db.snapshot(), before, "{extra:?}: nothing changed");
        said.insert(line.to_string());
    }
    assert_eq!(said.len(), 1, "dry run and apply say the same: {said:#?}");
    // The agent's id in the message is the one apply would create (the dry run's).
    let dry = install(&db, &["--name", "Acme Labs", "--dry-run", "-o", "json"]);
    let id = dry.json()["platform_agent"]["id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(dry.stderr.contains(&id), "{}", dry.stderr);

    // A removed tombstone of that name does not count, as in the platform's index.
    let r = install(
        &db,
        &["--name", "Acme Legacy", "--dry-run", "--detailed-exitcode"],
    );
    r.code(4);
    install(&db, &["--name", "Acme Legacy", "--yes"]).code(0);
    assert_eq!(
        db.scalar("SELECT name FROM workspaces WHERE kind = 'platform'"),
        "Acme Legacy"
    );
}

/// An existing agent (a root, as the platform keeps it) with live children named like roots.
fn agent_with_children(db: &TestDb) {
    db.exec(&format!(
        "INSERT INTO workspaces (id, name, kind, tier, status, parent_id)
              VALUES ('{AGENT}', 'Concierge', 'platform', 0, 'online', NULL);
         INSERT INTO workspaces (id, name, status, parent_id)
              VALUES ('{CHILD}', 'Acme Labs', 'online', '{AGENT}'),
                     ('f1000000-0000-4000-8000-000000000004', 'Acme HQ', 'removed', '{AGENT}');
         INSERT INTO workspace_secrets (workspace_id, key, encrypted_value, encryption_version)
              VALUES ('{AGENT}', 'MODEL', 'm'::bytea, 0);"
    ));
}

#[test]
fn install_refuses_a_root_named_like_a_live_child_of_the_existing_agent() {
    let db = TestDb::sample();
    agent_with_children(&db);
    let before = db.snapshot();
    let mut said = std::collections::BTreeSet::new();
    for extra in [
        vec!["--dry-run", "--detailed-exitcode"],
        vec!["--dry-run", "-o", "json"],
        vec!["--yes"],
    ] {
        let r = install(&db, &extra);
        r.code(3);
        r.one_line_error("1 pair(s) of live workspaces the same name under one parent");
        let line = r
            .stderr
            .lines()
            .find(|l| l.starts_with("error:"))
            .unwrap_or_default();
        // Labs against the child; HQ's namesake is removed and does not count.
        assert!(
            line.contains(&format!(
                "the root {} and the agent's child {CHILD} \"Acme Labs\" under the agent {AGENT}",
                ids::LABS
            )),
            "{extra:?}: {line}"
        );
        assert!(!line.contains(ids::HQ), "{line}");
        assert!(!line.contains("--name"), "{line}");
        assert_eq!(db.snapshot(), before, "{extra:?}: nothing changed");
        said.insert(line.to_string());
    }
    assert_eq!(said.len(), 1, "dry run and apply say the same: {said:#?}");
    // status reports the install as refused rather than promising it.
    let s = db.orgctl(&["status", "-o", "json"]).run();
    assert_eq!(
        s.json()["install_would"]["action"],
        "refused",
        "{}",
        s.stdout
    );

    // The backfill's per-tenant install refuses the tenant with the same words.
    let fleet = Fleet::new(&db);
    for args in [
        vec!["run", "--model", "m", "--run-id", "names", "--dry-run"],
        vec!["run", "--model", "m", "--run-id", "names"],
    ] {
        let r = fleet.run(&args);
        r.code(1);
        let err = tenant(&r)["error"].as_str().unwrap_or_default().to_string();
        assert!(
            err.contains(ids::LABS)
                && err.contains(CHILD)
                && err.contains("workspaces_parent_name_uniq"),
            "{args:?}: {err}"
        );
        assert!(!err.contains("23505"), "{err}");
        assert_eq!(platform(&db), platform_of(&before), "{args:?}");
    }

    // Once the child is gone (removed), the install goes through.
    db.exec(&format!(
        "UPDATE workspaces SET status = 'removed' WHERE id = '{CHILD}'"
    ));
    install(&db, &["--dry-run", "--detailed-exitcode"]).code(4);
    install(&db, &["--yes"]).code(0);
    assert_eq!(
        db.scalar(&format!(
            "SELECT parent_id FROM workspaces WHERE id = '{}'",
            ids::LABS
        )),
        AGENT
    );
}

fn platform_of(snapshot: &str) -> String {
    match snapshot.find("== orgctl") {
        Some(i) => snapshot[..i].to_string(),
        None => snapshot.to_string(),
    }
}

#[test]
fn name_clashes_are_found_on_a_text_status_tenant_too() {
    let db = TestDb::sample_text_status();
    let before = db.snapshot();
    for extra in [
        vec!["--name", "Acme HQ", "--dry-run"],
        vec!["--name", "Acme HQ", "--yes"],
    ] {
        let r = install(&db, &extra);
        r.code(3);
        r.one_line_error(&format!(
            "the root {} \"Acme HQ\" at the top level",
            ids::HQ
        ));
        assert_eq!(db.snapshot(), before, "{extra:?}");
    }
    // The removed tombstone's name is free, as in the index's `status <> 'removed'`.
    install(&db, &["--name", "Acme Legacy", "--yes"]).code(0);
}

#[test]
fn a_namesake_created_during_the_apply_is_a_clear_refusal_not_a_raw_23505() {
    let db = TestDb::sample();
    // A root of the agent's name appears just before the agent is written (what a platform
    // write racing the plan would do): the plan did not see it.
    db.exec(
        "CREATE FUNCTION namesake() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN IF NEW.kind = 'platform' THEN
                 INSERT INTO workspaces (name, status) VALUES (NEW.name, 'online');
               END IF;
               RETURN NEW; END $$;
         CREATE TRIGGER namesake BEFORE INSERT ON workspaces
             FOR EACH ROW EXECUTE FUNCTION namesake();",
    );
    let before = db.snapshot();
    install(
        &db,
        &["--name", "Concierge", "--dry-run", "--detailed-exitcode"],
    )
    .code(4);
    let r = install(&db, &["--name", "Concierge", "--yes"]);
    r.code(3);
    r.one_line_error("two live workspaces would have the same name under one parent");
    assert!(r.stderr.contains("Concierge"), "{}", r.stderr);
    assert!(!r.stderr.contains("23505"), "{}", r.stderr);
    assert_eq!(db.snapshot(), before, "rolled back");
}

#[test]
fn rollback_refuses_to_restore_a_root_beside_a_live_namesake_even_with_force() {
    let db = TestDb::sample();
    let before = platform(&db);
    let fleet = Fleet::new(&db);
    fleet
        .run(&["run", "--model", "m", "--run-id", "names"])
        .code(0);
    // Since the run, the top level has a new live root named like a re-parented one.
    db.exec(&format!(
        "INSERT INTO workspaces (id, name, status) VALUES ('{NEW_ROOT}', 'Acme Labs', 'online')"
    ));
    let after = platform(&db);
    for args in [
        vec!["rollback", "--run-id", "names", "--dry-run"],
        vec!["rollback", "--run-id", "names"],
        vec!["rollback", "--run-id", "names", "--force", "--dry-run"],
        vec!["rollback", "--run-id", "names", "--force"],
    ] {
        let r = fleet.run(&args);
        r.code(3);
        let t = tenant(&r);
        assert_eq!(t["status"], "refused", "{args:?}: {t}");
        let err = t["error"].as_str().unwrap_or_default().to_string();
        assert!(
            err.contains(&format!("{} \"Acme Labs\" and {NEW_ROOT}", ids::LABS))
                && err.contains("workspaces_parent_name_uniq")
                && err.contains("not even --force"),
            "{args:?}: {err}"
        );
        assert!(!r.stderr.contains("23505"), "{}", r.stderr);
        r.one_line_error("drift since the run");
        let last = r
            .stderr
            .lines()
            .rfind(|l| l.starts_with("error:"))
            .unwrap_or_default();
        assert_eq!(
            last.contains("rerun with --force"),
            !args.contains(&"--force"),
            "--force is not offered to a --force run: {last}"
        );
        assert_eq!(platform(&db), after, "{args:?}: nothing changed");
    }
    // Renamed, the new root no longer collides: the rollback restores the run exactly (the new
    // root stays, a root of its own).
    db.exec(&format!(
        "UPDATE workspaces SET name = 'Acme Labs 2' WHERE id = '{NEW_ROOT}'"
    ));
    let r = fleet.run(&["rollback", "--run-id", "names"]);
    r.code(0);
    assert_eq!(tenant(&r)["status"], "rolled_back");
    db.exec(&format!("DELETE FROM workspaces WHERE id = '{NEW_ROOT}'"));
    assert_eq!(platform(&db), before);
}

#[test]
fn force_refuses_to_move_a_new_child_beside_a_namesake_under_the_oldest_former_root() {
    let db = TestDb::sample();
    let fleet = Fleet::new(&db);
    fleet
        .run(&["run", "--model", "m", "--run-id", "kids"])
        .code(0);
    let agent = db.scalar("SELECT id FROM workspaces WHERE kind = 'platform'");
    // A child added under the agent since the run, named like a live child of Acme HQ (the
    // oldest live former root, where --force moves new children).
    db.exec(&format!(
        "INSERT INTO workspaces (id, name, status, parent_id) VALUES ('{CHILD}', 'Research', 'online', '{agent}')"
    ));
    let after = platform(&db);
    // Without --force it is drift (a new child); with --force, a clash --force cannot settle.
    let r = fleet.run(&["rollback", "--run-id", "kids"]);
    r.code(3);
    let err = tenant(&r)["error"].as_str().unwrap_or_default().to_string();
    assert!(err.contains("added under the agent"), "{err}");
    for args in [
        vec!["rollback", "--run-id", "kids", "--force", "--dry-run"],
        vec!["rollback", "--run-id", "kids", "--force"],
    ] {
        let r = fleet.run(&args);
        r.code(3);
        let t = tenant(&r);
        assert_eq!(t["status"], "refused", "{args:?}: {t}");
        let err = t["error"].as_str().unwrap_or_default().to_string();
        assert!(
            err.contains(&format!("{CHILD} \"Research\" and {}", ids::RESEARCH))
                && err.contains(&format!("oldest former root {}", ids::HQ)),
            "{args:?}: {err}"
        );
        assert!(!r.stderr.contains("23505"), "{}", r.stderr);
        assert_eq!(platform(&db), after, "{args:?}: nothing changed");
    }
    // Renamed, --force moves it under Acme HQ.
    db.exec(&format!(
        "UPDATE workspaces SET name = 'Research 2' WHERE id = '{CHILD}'"
    ));
    fleet
        .run(&["rollback", "--run-id", "kids", "--force"])
        .code(0);
    assert_eq!(
        db.scalar(&format!(
            "SELECT parent_id FROM workspaces WHERE id = '{CHILD}'"
        )),
        ids::HQ
    );
}

// ---------------------------------------------------------------------------------------------
// Depth limits

/// A root `tag` with a chain `depth` levels below it; returns the deepest id.
fn chain(db: &TestDb, tag: u32, depth: i32) -> String {
    db.exec(&format!(
        "INSERT INTO workspaces (id, name, parent_id, status)
         SELECT ('3{tag:07}-0000-4000-8000-' || lpad(g::text, 12, '0'))::uuid, 'chain {tag} level ' || g,
                CASE WHEN g = 0 THEN NULL ELSE ('3{tag:07}-0000-4000-8000-' || lpad((g - 1)::text, 12, '0'))::uuid END,
                'online'
           FROM generate_series(0, {depth}) g"
    ));
    format!("3{tag:07}-0000-4000-8000-{depth:012}")
}

fn warnings<'a>(r: &'a Run, needle: &str) -> Vec<&'a str> {
    r.stderr.lines().filter(|l| l.contains(needle)).collect()
}

fn chains_ok(db: &TestDb) -> bool {
    let r = db.orgctl(&["status", "-o", "json"]).run();
    r.json()["checks"]
        .as_array()
        .and_then(|a| a.iter().find(|c| c["name"] == "parent_chains"))
        .map(|c| c["ok"] == true)
        .unwrap_or(false)
}

/// For a depth limit: one root whose deepest workspace ends up exactly at the limit below the
/// agent (no warning for it) and one whose deepest ends up one past it (named, alone).
fn warns_past(limit: i32, needle: &str, reason: &str) -> TestDb {
    let db = TestDb::empty();
    let at = chain(&db, 1, limit - 1);
    let past = chain(&db, 2, limit);
    let before = db.snapshot();
    for args in [vec!["--dry-run"], vec!["--yes"]] {
        let r = install(&db, &args);
        r.code(0);
        let w = warnings(&r, needle);
        assert_eq!(w.len(), 1, "{args:?}: {}", r.stderr);
        assert!(
            w[0].contains("after the install, 1 workspace(s) sit deeper than")
                && w[0].contains(reason)
                && w[0].contains(&format!(
                    "{past} \"chain 2 level {limit}\" ({} hops)",
                    limit + 1
                )),
            "{args:?}: {}",
            w[0]
        );
        assert!(!w[0].contains(&at), "{}", w[0]);
        if args == ["--dry-run"] {
            assert_eq!(db.snapshot(), before, "the dry run changes nothing");
        }
    }
    // The oracle: the depths below the agent, walked independently.
    let depth = |id: &str| {
        db.scalar(&format!(
            "WITH RECURSIVE up(id, n) AS (SELECT parent_id, 1 FROM workspaces WHERE id = '{id}'
               UNION ALL SELECT w.parent_id, u.n + 1 FROM up u JOIN workspaces w ON w.id = u.id WHERE w.parent_id IS NOT NULL)
             SELECT max(n) FROM up"
        ))
    };
    assert_eq!(depth(&at), limit.to_string());
    assert_eq!(depth(&past), (limit + 1).to_string());
    db
}

#[test]
fn install_warns_past_the_agents_reach_of_33_hops_not_at_32() {
    let db = warns_past(
        33,
        "hops below the agent: the agent cannot reach",
        "the agent cannot reach them",
    );
    // Nothing past the memory or org-root limits, and status stays clean.
    assert!(chains_ok(&db));
    let r = install(&db, &["--dry-run"]);
    assert!(!r.stderr.contains("deeper than 50"), "{}", r.stderr);
    assert!(!r.stderr.contains("deeper than 64"), "{}", r.stderr);
}

#[test]
fn install_warns_past_the_memory_namespaces_50_levels() {
    let db = warns_past(
        50,
        "deeper than 50 hops",
        "memory namespaces no longer resolve",
    );
    assert!(chains_ok(&db), "51 is within the org-root lookup");
}

#[test]
fn install_warns_past_the_org_root_lookup_of_64_and_status_then_calls_the_chain_broken() {
    let db = warns_past(
        64,
        "deeper than 64 hops",
        "isolation checks fail closed and the plugin allowlist fails open",
    );
    // What the warning said: status reports the chain past 64 as broken (and only it).
    let r = db.orgctl(&["status", "-o", "json"]).run();
    r.code(1);
    let j = r.json();
    let c = j["checks"]
        .as_array()
        .and_then(|a| a.iter().find(|c| c["name"] == "parent_chains"))
        .cloned()
        .unwrap_or_default();
    assert_eq!(c["ok"], false, "{c}");
    assert_eq!(c["count"], 1, "{c}");
    assert!(
        c["rows"][0]["id"] == "30000002-0000-4000-8000-000000000064",
        "{c}"
    );
    assert!(
        c["rows"][0]["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("65 steps from its root"),
        "{c}"
    );
    // A rerun has nothing to do and warns about the broken chain, named.
    let r = install(&db, &["--dry-run"]);
    r.code(0);
    assert!(
        r.stderr
            .contains("1 workspace(s) have a broken parent chain (a cycle, or deeper than 64)"),
        "{}",
        r.stderr
    );
}

#[test]
fn the_plan_says_what_former_roots_lose() {
    let db = TestDb::sample();
    let r = install(&db, &["--dry-run", "-o", "json"]);
    r.code(0);
    let loss = &r.json()["root_behaviour_lost"];
    assert_eq!(loss["roots"], 3, "{loss}");
    let effect = loss["effect"].as_str().unwrap_or_default();
    assert!(
        effect.contains("org-wide memories become unreachable")
            && effect.contains("team namespaces merge"),
        "{effect}"
    );
    let r = install(&db, &["--dry-run"]);
    assert!(
        r.stdout.contains("former roots lose root-only behaviour")
            && r.stdout.contains("3 root(s) here"),
        "{}",
        r.stdout
    );
    install(&db, &["--yes"]).code(0);
    // Nothing re-parented: null, and no note.
    let r = install(&db, &["--dry-run", "-o", "json"]);
    assert!(r.json()["root_behaviour_lost"].is_null(), "{}", r.stdout);
    let r = install(&db, &["--dry-run"]);
    assert!(!r.stdout.contains("root-only"), "{}", r.stdout);
}
