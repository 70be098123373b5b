//! Restarts against the platform's real range of HTTP answers (issue 18, item 7), end to end
//! through the binary and the shared stand-in (tests/stand_in.rs): 2xx other than 200,
//! redirects (the bearer must not follow one), 401/404/409, slow and hung answers, keep-alive
//! connections the server closes, the concurrency cap, the call timeout, and targets whose
//! kind is unknown, removed, paused or with a NULL status.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::{Run, TestDb};
use crate::stand_in::{Reply, StandIn, RESTART_CAP};

const TOKEN: &str = "adm-T0ken-for-http-tests-5c4b3a";
const ROOT: &str = "f0000000-0000-4000-8000-000000000000";

/// A workspace id `f1…NN`.
fn wid(n: u32) -> String {
    format!("f1000000-0000-4000-8000-{n:012}")
}

/// An empty tenant with one online root and `n` online children `f1…01..n`.
fn tenant(n: u32) -> TestDb {
    let db = TestDb::empty();
    db.exec(&format!(
        "INSERT INTO workspaces (id, name, status) VALUES ('{ROOT}', 'root', 'online');
         INSERT INTO workspaces (id, name, status, parent_id)
         SELECT ('f1000000-0000-4000-8000-' || lpad(g::text, 12, '0'))::uuid, 'w' || g,
                'online', '{ROOT}'
           FROM generate_series(1, {n}) g;"
    ));
    db
}

fn set(db: &TestDb, platform: &StandIn, scope: &str, key: &str) -> Run {
    db.orgctl(&["secret", "set", scope, key, "--yes", "-o", "json"])
        .env("MOLECULE_PLATFORM_URL", &platform.url())
        .env("MOLECULE_ADMIN_TOKEN", TOKEN)
        .stdin(b"value-1")
        .run()
}

/// id → (ok, error) from the JSON report.
fn dispatched(r: &Run) -> BTreeMap<String, (bool, Option<String>)> {
    let doc: Value = r.json();
    let mut m = BTreeMap::new();
    for d in doc["restart"]["dispatched"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let id = d["id"].as_str().unwrap_or_default().to_string();
        let ok = d["ok"].as_bool().unwrap_or(false);
        let err = d["error"].as_str().map(str::to_string);
        m.insert(id, (ok, err));
    }
    m
}

fn skipped(r: &Run) -> BTreeMap<String, String> {
    let doc: Value = r.json();
    doc["restart"]["skipped"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|s| {
            (
                s["id"].as_str().unwrap_or_default().to_string(),
                s["reason"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

#[track_caller]
fn no_token(r: &Run) {
    assert!(!r.stdout.contains(TOKEN), "the bearer on stdout");
    assert!(!r.stderr.contains(TOKEN), "the bearer on stderr");
}

/// Every answer class in one fan-out: 2xx is a restart (200, 201, 202, 204, and a slow 200);
/// a redirect is a failure that is never followed (so the bearer never reaches its target);
/// 401/404/409 are failures naming their status, with the echoed bearer masked. Exit 1 after
/// the commit, naming exactly the failed workspaces.
#[test]
fn every_answer_class_is_classified_and_a_redirect_is_never_followed() {
    let db = tenant(12);
    let elsewhere = StandIn::start(Reply::Status(200));
    let rules: Vec<(u32, Reply, bool)> = vec![
        (1, Reply::Status(200), true),
        (2, Reply::Status(201), true),
        (3, Reply::Status(202), true),
        (4, Reply::Status(204), true),
        (5, Reply::Redirect(301, elsewhere.url()), false),
        (6, Reply::Redirect(302, elsewhere.url()), false),
        (7, Reply::Redirect(307, elsewhere.url()), false),
        (8, Reply::Redirect(308, elsewhere.url()), false),
        (9, Reply::Status(401), false),
        (10, Reply::Status(404), false),
        (11, Reply::Status(409), false),
        (
            12,
            Reply::Delay(Duration::from_millis(1500), Box::new(Reply::Status(200))),
            true,
        ),
    ];
    let platform = StandIn::with(
        rules.iter().map(|(n, r, _)| (wid(*n), r.clone())).collect(),
        Reply::Status(200),
        None,
    );
    let r = set(&db, &platform, "--global", "REGION");
    r.code(1).one_line_error("not restarted");
    no_token(&r);
    let d = dispatched(&r);
    assert_eq!(d.len(), 13, "the root and 12 children: {d:?}");
    assert_eq!(d.get(ROOT).map(|x| x.0), Some(true));
    let err_line = r
        .stderr
        .lines()
        .find(|l| l.starts_with("error:"))
        .unwrap_or_default()
        .to_string();
    for (n, reply, ok) in &rules {
        let id = wid(*n);
        let Some((got_ok, err)) = d.get(&id) else {
            panic!("{id} not dispatched: {d:?}")
        };
        assert_eq!(got_ok, ok, "{reply:?}: {err:?}");
        assert_eq!(err_line.contains(&id), !ok, "{reply:?}: {err_line}");
        let code = match reply {
            Reply::Status(c) | Reply::Redirect(c, _) => *c,
            _ => 200,
        };
        if !ok {
            let e = err.clone().unwrap_or_default();
            assert!(e.contains(&code.to_string()), "{reply:?}: {e}");
            assert!(!e.contains(TOKEN), "{e}");
        }
    }
    // The secret is committed whatever the platform answered.
    assert_eq!(
        db.scalar(
            "SELECT convert_from(encrypted_value, 'UTF8') FROM global_secrets WHERE key = 'REGION'"
        ),
        "value-1"
    );
    // Each target called exactly once, with the bearer; nothing reached the redirect target.
    let mut ids: Vec<String> = platform
        .calls()
        .iter()
        .map(|c| StandIn::restart_id(c, TOKEN))
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 13);
    assert_eq!(platform.calls().len(), 13, "a call was retried or repeated");
    assert!(
        elsewhere.calls().is_empty(),
        "a redirect was followed: {:?}",
        elsewhere.calls()
    );
}

/// At most the cap in flight, and the cap is reached (so the fan-out is concurrent).
#[test]
fn the_fan_out_keeps_to_the_concurrency_cap() {
    let db = tenant(30);
    let platform = StandIn::start(Reply::Delay(
        Duration::from_millis(300),
        Box::new(Reply::Status(200)),
    ));
    let started = Instant::now();
    let r = set(&db, &platform, "--global", "REGION");
    r.code(0);
    let elapsed = started.elapsed();
    assert_eq!(platform.calls().len(), 31);
    assert_eq!(platform.max_in_flight(), RESTART_CAP, "in flight at once");
    // 31 calls of 300 ms, 8 at a time: 4 waves, not 31 in a row.
    assert!(elapsed < Duration::from_secs(8), "{elapsed:?}");
    assert!(dispatched(&r).values().all(|(ok, _)| *ok));
}

/// A platform that never answers: the call gives up at orgctl's call timeout (20 s), the
/// workspace is reported failed (exit 1), the secret is committed, and the slow-but-answering
/// call next to it succeeds.
#[test]
fn a_hung_platform_times_out_and_names_the_workspace() {
    let db = tenant(2);
    let platform = StandIn::with(
        vec![
            (wid(1), Reply::Hang),
            (
                wid(2),
                Reply::Delay(Duration::from_secs(2), Box::new(Reply::Status(200))),
            ),
        ],
        Reply::Status(200),
        None,
    );
    let started = Instant::now();
    let r = set(&db, &platform, &wid(1), "K");
    let elapsed = started.elapsed();
    r.code(1).one_line_error(&wid(1));
    no_token(&r);
    let d = dispatched(&r);
    assert_eq!(d.get(&wid(1)).map(|x| x.0), Some(false), "{d:?}");
    assert!(
        elapsed >= Duration::from_secs(19) && elapsed < Duration::from_secs(40),
        "gave up after {elapsed:?}"
    );
    assert_eq!(
        db.scalar("SELECT count(*) FROM workspace_secrets WHERE key = 'K'"),
        "1"
    );
    let r = set(&db, &platform, &wid(2), "K");
    r.code(0);
    assert_eq!(dispatched(&r).get(&wid(2)).map(|x| x.0), Some(true));
}

/// Keep-alive connections that the server closes after each answer or after a short idle
/// time (as a load balancer does): every restart still succeeds, exactly once.
#[test]
fn keep_alive_connections_closed_by_the_server_lose_no_restart() {
    for idle in [Duration::from_millis(1), Duration::from_millis(30)] {
        let db = tenant(40);
        let platform = StandIn::with(
            (1..=40)
                .filter(|n| n % 3 == 0)
                .map(|n| {
                    (
                        wid(n),
                        Reply::Delay(Duration::from_millis(40), Box::new(Reply::Status(200))),
                    )
                })
                .collect(),
            Reply::Status(200),
            Some(idle),
        );
        let r = set(&db, &platform, "--global", "REGION");
        r.code(0);
        let d = dispatched(&r);
        assert_eq!(d.len(), 41);
        assert!(
            d.values().all(|(ok, _)| *ok),
            "idle {idle:?}: {:?}",
            d.iter().filter(|(_, v)| !v.0).collect::<Vec<_>>()
        );
        assert_eq!(platform.calls().len(), 41, "idle {idle:?}");
        eprintln!(
            "keep-alive closed after {idle:?} idle: 41 calls over {} connections",
            platform.connections()
        );
    }
}

/// The restart guard at the integration level: a removed or paused target is skipped with its
/// reason and never called; a target with a NULL status is restarted; a target whose kind
/// cannot be proven (its lookup fails) is not restarted, fails closed, and the exit says so.
#[test]
fn removed_paused_null_status_and_unknown_kind_targets() {
    let db = tenant(4);
    db.exec(&format!(
        "UPDATE workspaces SET status = 'removed' WHERE id = '{}';
         UPDATE workspaces SET status = 'paused' WHERE id = '{}';
         UPDATE workspaces SET status = NULL WHERE id = '{}';",
        wid(1),
        wid(2),
        wid(3)
    ));
    let platform = StandIn::start(Reply::Status(200));
    for (n, reason) in [(1, "removed"), (2, "paused")] {
        let r = set(&db, &platform, &wid(n), "K");
        r.code(0);
        assert_eq!(
            skipped(&r).get(&wid(n)).map(String::as_str),
            Some(reason),
            "{}",
            r.stdout
        );
        assert!(dispatched(&r).is_empty());
    }
    assert!(platform.calls().is_empty(), "{:?}", platform.calls());
    // NULL status is not a skip reason.
    let r = set(&db, &platform, &wid(3), "K");
    r.code(0);
    assert_eq!(dispatched(&r).get(&wid(3)).map(|x| x.0), Some(true));
    assert!(skipped(&r).is_empty(), "{}", r.stdout);
    assert_eq!(platform.calls().len(), 1);

    // The guard's lookup after the commit fails: a trigger (standing in for a concurrent
    // writer) leaves the target's row unreadable in the committed state. The kind is unknown,
    // so no restart, and exit 1 saying it was not restarted.
    db.exec(
        "ALTER TABLE workspaces ALTER COLUMN name DROP NOT NULL;
         CREATE FUNCTION test_unreadable() RETURNS trigger LANGUAGE plpgsql AS $$
           BEGIN UPDATE workspaces SET name = NULL WHERE id = NEW.workspace_id; RETURN NEW; END $$;
         CREATE TRIGGER test_unreadable AFTER INSERT ON workspace_secrets
           FOR EACH ROW WHEN (NEW.key = 'KU') EXECUTE FUNCTION test_unreadable();",
    );
    let r = set(&db, &platform, &wid(4), "KU");
    r.code(1).one_line_error(&wid(4));
    assert_eq!(
        skipped(&r).get(&wid(4)).map(String::as_str),
        Some("kind-unknown"),
        "{}",
        r.stdout
    );
    assert_eq!(
        platform.calls().len(),
        1,
        "a target of unknown kind was called"
    );
    assert_eq!(
        db.scalar(&format!(
            "SELECT count(*) FROM workspace_secrets WHERE workspace_id = '{}' AND key = 'KU'",
            wid(4)
        )),
        "1"
    );

    // The global fan-out follows the platform's own query (README, secret, Decisions): a NULL
    // status does not match `status NOT IN ('removed','paused')`, so that workspace is not
    // restarted by a global change; the removed and paused ones are never called either; the
    // online ones are.
    db.exec(&format!(
        "UPDATE workspaces SET name = 'w4' WHERE id = '{}'",
        wid(4)
    ));
    let platform = StandIn::start(Reply::Status(200));
    let r = set(&db, &platform, "--global", "G");
    let called: Vec<String> = platform
        .calls()
        .iter()
        .map(|c| StandIn::restart_id(c, TOKEN))
        .collect();
    r.code(0);
    let mut called = called;
    called.sort();
    assert_eq!(called, [ROOT.to_string(), wid(4)], "{}", r.stdout);
}
