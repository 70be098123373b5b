//! Every static statement orgctl sends prepares against a tenant: the platform's schema (the
//! 2026-08 dump) with orgctl's own schema installed by a real run. Preparing parses, resolves
//! every table and column and infers parameter types, without executing anything.

use sqlx::Executor;

use crate::harness::TestDb;

#[tokio::test(flavor = "multi_thread")]
async fn every_static_statement_prepares_against_the_schema() {
    let db = TestDb::sample();
    // orgctl's schema (audit log, former roots, backfill runs) as a tenant has it after a run.
    let fleet = crate::harness::tenants_file("statements", &format!("t {}\n", db.url));
    let f = fleet.to_string_lossy().to_string();
    db.orgctl(&[
        "backfill",
        "run",
        "--tenants",
        &f,
        "--model",
        "m",
        "--yes",
        "--run-id",
        "s1",
    ])
    .run()
    .code(0);
    let _ = std::fs::remove_file(&fleet);
    let mut conn = db.connect().await;
    let all = orgctl::testing::statements();
    assert!(all.len() > 50, "only {} statements listed", all.len());
    let mut failed = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for (module, name, sql) in &all {
        if !seen.insert((*module, *name)) {
            failed.push(format!("{module} {name}: listed twice"));
        }
        if let Err(e) = conn.prepare(sql).await {
            failed.push(format!("{module} {name}: {e}"));
        }
    }
    assert!(
        failed.is_empty(),
        "{} of {} statements do not prepare:\n{}",
        failed.len(),
        all.len(),
        failed.join("\n")
    );
}
