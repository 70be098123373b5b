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
        .one_line_error("does not look like an orgctl dev directory");
    assert!(dir.join("precious.txt").exists());
    let _ = std::fs::remove_dir_all(&dir);
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
        orgctl::dev::DEV_COMMENT
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
