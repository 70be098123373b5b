//! `orgctl dev up / down / seed` against a real server started by the binary itself.

use crate::harness::{Cmd, TestDb};

#[test]
fn dev_up_twice_reuses_and_down_deletes() {
    let dir = std::env::temp_dir().join(format!("orgctl-dev-test-{}", std::process::id()));
    let d = dir.to_string_lossy().to_string();
    let first = Cmd::new(&["dev", "up", "--dir", &d]).run();
    first.code(0);
    let url = first.stdout.trim().to_string();
    assert!(url.starts_with("postgres://postgres@127.0.0.1:"), "{url}");
    assert_eq!(first.stdout.lines().count(), 1, "stdout is the URL alone");

    let second = Cmd::new(&["dev", "up", "--dir", &d]).run();
    second.code(0);
    assert_eq!(second.stdout.trim(), url);
    assert!(second.stderr.contains("reused"), "{}", second.stderr);
    // -o json: a document, not a bare URL.
    let json = Cmd::new(&["dev", "up", "--dir", &d, "-o", "json"]).run();
    json.code(0);
    assert_eq!(json.json(), serde_json::json!({ "database_url": url }));

    // The sample org is there and a dry run works against it.
    let plan = Cmd::new(&[
        "install-platform-agent",
        "--dry-run",
        "--model",
        "m",
        "-o",
        "json",
    ])
    .env("DATABASE_URL", &url)
    .run();
    plan.code(0);
    assert_eq!(
        plan.json()["reparented"].as_array().map(|a| a.len()),
        Some(3)
    );

    Cmd::new(&["dev", "down", "--dir", &d]).run().code(0);
    assert!(!dir.exists());
    // Down again: nothing to do.
    Cmd::new(&["dev", "down", "--dir", &d]).run().code(0);
}

#[test]
fn dev_down_refuses_a_foreign_directory() {
    let dir = std::env::temp_dir().join(format!("orgctl-not-dev-{}", std::process::id()));
    std::fs::create_dir_all(&dir).ok();
    std::fs::write(dir.join("precious.txt"), "keep").ok();
    let r = Cmd::new(&["dev", "down", "--dir", &dir.to_string_lossy()]).run();
    r.code(3)
        .one_line_error("was not created by `orgctl dev up`");
    assert!(dir.join("precious.txt").exists());
    let _ = std::fs::remove_dir_all(&dir);
}

/// A `port` file or a `data/PG_VERSION` is not enough to be deleted.
#[test]
fn dev_down_refuses_lookalikes_and_a_mismatched_marker() {
    let base = std::env::temp_dir().join(format!("orgctl-lookalike-{}", std::process::id()));
    // The reproduction: a port file and something precious.
    let d = base.join("d");
    std::fs::create_dir_all(d.join("sub")).ok();
    std::fs::write(d.join("port"), "5432").ok();
    std::fs::write(d.join("sub/precious"), "x").ok();
    let r = Cmd::new(&["dev", "down", "--dir", &d.to_string_lossy()]).run();
    r.code(3)
        .one_line_error("not stopping or deleting anything");
    assert!(d.join("sub/precious").exists() && d.join("port").exists());

    // Something that looks like a cluster (data/PG_VERSION) but has no marker.
    let pg = base.join("pgsql");
    std::fs::create_dir_all(pg.join("data")).ok();
    std::fs::write(pg.join("data/PG_VERSION"), "15").ok();
    let r = Cmd::new(&["dev", "down", "--dir", &pg.to_string_lossy()]).run();
    r.code(3)
        .one_line_error("was not created by `orgctl dev up`");
    assert!(pg.join("data/PG_VERSION").exists());
    // dev up does not adopt it either.
    let r = Cmd::new(&["dev", "up", "--dir", &pg.to_string_lossy()]).run();
    r.code(3).one_line_error("did not create");
    assert!(pg.join("data/PG_VERSION").exists());

    // A marker copied next to a data directory it does not describe.
    std::fs::write(
        pg.join(orgctl::testing::dev::MARKER),
        "orgctl dev up\nsystem_identifier=7000000000000000001\nport=5432\n",
    )
    .ok();
    let r = Cmd::new(&["dev", "down", "--dir", &pg.to_string_lossy()]).run();
    r.code(3)
        .one_line_error("does not hold the cluster its orgctl-dev.marker names");
    assert!(pg.join("data/PG_VERSION").exists());
    let _ = std::fs::remove_dir_all(&base);
}

/// One default place whatever the current directory, and a failed `dev up`
/// leaves nothing behind.
#[test]
fn dev_default_dir_is_independent_of_cwd_and_failure_leaves_nothing() {
    let tmp = std::env::temp_dir().join(format!("orgctl-devtmp-{}", std::process::id()));
    let a = tmp.join("a");
    let b = tmp.join("b");
    std::fs::create_dir_all(&a).ok();
    std::fs::create_dir_all(&b).ok();
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755));
    }
    let tmpdir = tmp.to_string_lossy().to_string();
    let up = Cmd::new(&["dev", "up"])
        .env("TMPDIR", &tmpdir)
        .cwd(&a)
        .run();
    up.code(0);
    assert_eq!(std::fs::read_dir(&a).map(|d| d.count()).unwrap_or(9), 0);
    let dirs: Vec<_> = std::fs::read_dir(&tmp)
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(
        dirs.iter()
            .any(|n| n.to_string_lossy().starts_with("orgctl-dev-")),
        "{dirs:?}"
    );
    // From elsewhere: the same server is found and stopped.
    let down = Cmd::new(&["dev", "down"])
        .env("TMPDIR", &tmpdir)
        .cwd(&b)
        .run();
    down.code(0);
    assert!(
        down.stderr.contains("stopped the dev server"),
        "{}",
        down.stderr
    );
    let left: Vec<_> = std::fs::read_dir(&tmp)
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert_eq!(left.len(), 2, "only a/ and b/ remain: {left:?}");

    // A port that is taken: dev up fails, and neither its directory nor a server remain.
    let busy = match std::net::TcpListener::bind("127.0.0.1:0") {
        Ok(l) => l,
        Err(e) => panic!("bind: {e}"),
    };
    let port = match busy.local_addr() {
        Ok(a) => a.port().to_string(),
        Err(e) => panic!("addr: {e}"),
    };
    let d = tmp.join("failing");
    let r = Cmd::new(&["dev", "up", "--dir", &d.to_string_lossy(), "--port", &port]).run();
    r.code(1).one_line_error("did not start");
    assert!(!d.exists(), "a failed dev up leaves nothing behind");
    let _ = std::fs::remove_dir_all(&tmp);
}

#[test]
fn dev_seed_generates_a_large_org_and_refuses_real_databases() {
    let db = TestDb::empty();
    // Not marked as a dev database: refused, nothing written.
    let r = db.orgctl(&["dev", "seed", "--roots", "10"]).run();
    r.code(3).one_line_error("not an orgctl dev database");
    assert_eq!(db.scalar("SELECT count(*) FROM workspaces"), "0");

    db.exec(&format!(
        "COMMENT ON DATABASE {} IS '{}'",
        db.name,
        orgctl::testing::dev::DEV_COMMENT
    ));
    db.orgctl(&[
        "dev",
        "seed",
        "--roots",
        "10",
        "--workspaces",
        "100",
        "--tokens",
        "1000",
        "--tokens-on-roots",
        "300",
        "--allowlist",
        "50",
        "--plugins",
        "7",
    ])
    .run()
    .code(0);
    assert_eq!(
        db.scalar("SELECT count(*) FROM workspaces WHERE parent_id IS NULL"),
        "10"
    );
    assert_eq!(db.scalar("SELECT count(*) FROM workspaces"), "100");
    assert_eq!(db.scalar("SELECT count(*) FROM org_api_tokens"), "1000");
    let on_roots = db.scalar(
        "SELECT count(*) FROM org_api_tokens t JOIN workspaces w ON w.id = t.org_id
          WHERE w.parent_id IS NULL",
    );
    assert_eq!(on_roots, "300");
    assert_eq!(db.scalar("SELECT count(*) FROM org_plugin_allowlist"), "50");
    // Collisions across roots exist, so install will merge.
    let dup = db.scalar(
        "SELECT count(*) FROM (SELECT plugin_name FROM org_plugin_allowlist
          GROUP BY 1 HAVING count(*) > 1) x",
    );
    assert_ne!(dup, "0");

    let bad = db.orgctl(&["dev", "seed", "--roots", "0"]).run();
    bad.code(2);
}

/// `dev up --tenants N`: N sample tenants on the dev server and a tenants file that a fleet
/// backfill takes as it is; `dev down` removes them with the server.
#[test]
fn dev_up_tenants_makes_a_sample_fleet_that_backfill_runs_on() {
    let dir = std::env::temp_dir().join(format!("orgctl-dev-fleet-{}", std::process::id()));
    let d = dir.to_string_lossy().to_string();
    // Out of range: a usage error, nothing started.
    let r = Cmd::new(&["dev", "up", "--dir", &d, "--tenants", "0"]).run();
    r.code(2);
    assert!(!dir.exists());
    let up = Cmd::new(&["dev", "up", "--dir", &d, "--tenants", "3", "-o", "json"]).run();
    up.code(0);
    let doc = up.json();
    let file = doc["tenants_file"].as_str().unwrap_or_default().to_string();
    assert_eq!(file, dir.join("tenants.txt").to_string_lossy());
    let text = std::fs::read_to_string(&file).unwrap_or_default();
    let tenants = match orgctl::testing::tenants::parse(&text, "tenants.txt") {
        Ok(t) => t,
        Err(e) => panic!("{e}"),
    };
    let names: Vec<&str> = tenants.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["dev-1", "dev-2", "dev-3"]);
    assert!(tenants.iter().all(|t| t.org_id.is_some()));
    // The runbook's fleet: a backfill applies on every tenant.
    let run = Cmd::new(&[
        "backfill",
        "run",
        "--tenants",
        &file,
        "--model",
        "m",
        "--yes",
        "-o",
        "json",
    ])
    .run();
    run.code(0);
    assert_eq!(run.json()["totals"]["applied"], 3, "{}", run.stdout);
    // Again: the tenants are kept as they are (installed), the file rewritten.
    let again = Cmd::new(&["dev", "up", "--dir", &d, "--tenants", "3"]).run();
    again.code(0);
    assert!(again.stderr.contains("0 new"), "{}", again.stderr);
    Cmd::new(&["dev", "down", "--dir", &d]).run().code(0);
    assert!(!dir.exists(), "the tenants file went with the server");
}
