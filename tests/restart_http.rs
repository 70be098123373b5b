//! Restarts against the platform's real range of HTTP answers, end to end
//! through the binary and the shared stand-in (tests/stand_in.rs): the admin restart route's
//! 202 restart_dispatched and 200 noop, 2xx answers it never gives, redirects (the bearer must
//! not follow one), 401/404/409, slow and hung answers, keep-alive connections the server
//! closes, the concurrency cap, the call timeout, and targets whose kind is unknown, removed,
//! paused, on a runtime the platform never restarts or with a NULL status. The stand-in's
//! `PlatformSim` answers as the platform does, from the tenant's own rows (eligibility,
//! debounce, 404).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::{ids, Run, TestDb};
use crate::stand_in::{PlatformSim, Reply, StandIn, RESTART_CAP};

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

/// id → outcome from the JSON report.
fn outcomes(r: &Run) -> BTreeMap<String, String> {
    let doc: Value = r.json();
    doc["restart"]["dispatched"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|d| {
            (
                d["id"].as_str().unwrap_or_default().to_string(),
                d["outcome"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

/// (workspace, outcome, http_status) of every audit row of the restart phase(s), sorted.
fn audit_outcomes(db: &TestDb) -> Vec<(String, String, String)> {
    let mut v: Vec<(String, String, String)> = db
        .exec(
            "SELECT args->>'workspace_id' || ' ' || outcome || ' ' || COALESCE(args->>'http_status', '-')
               FROM orgctl.audit_log WHERE command = 'restart' AND outcome <> 'skipped'",
        )
        .lines()
        .filter_map(|l| {
            let mut p = l.split(' ');
            Some((
                p.next()?.to_string(),
                p.next()?.to_string(),
                p.next()?.to_string(),
            ))
        })
        .collect();
    v.sort();
    v
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

/// Every answer class in one fan-out: 202 restart_dispatched (also slow) and a 202 with another
/// body are restarts; 200 noop is a no-op (ok, not restarted); a 2xx the admin route never
/// gives (200 with another body, 201, 204) is a failure whose restart is unknown, never a
/// restart; a redirect is a failure that is never followed (so the bearer never reaches its
/// target); 401/409, and a 404 for a workspace the tenant still has, are failures naming their
/// status, with the echoed bearer masked. Exit 1 after the commit, naming exactly the failed
/// workspaces.
#[test]
fn every_answer_class_is_classified_and_a_redirect_is_never_followed() {
    let db = tenant(13);
    let elsewhere = StandIn::start(Reply::dispatched());
    let rules: Vec<(u32, Reply, bool)> = vec![
        (1, Reply::Status(200), false),
        (2, Reply::Status(201), false),
        (3, Reply::Status(202), true),
        (4, Reply::Status(204), false),
        (5, Reply::Redirect(301, elsewhere.url()), false),
        (6, Reply::Redirect(302, elsewhere.url()), false),
        (7, Reply::Redirect(307, elsewhere.url()), false),
        (8, Reply::Redirect(308, elsewhere.url()), false),
        (9, Reply::Status(401), false),
        (10, Reply::Status(404), false),
        (11, Reply::Status(409), false),
        (
            12,
            Reply::Delay(Duration::from_millis(1500), Box::new(Reply::dispatched())),
            true,
        ),
        (13, Reply::noop(), true),
    ];
    let platform = StandIn::with(
        rules.iter().map(|(n, r, _)| (wid(*n), r.clone())).collect(),
        Reply::dispatched(),
        None,
    );
    let r = set(&db, &platform, "--global", "REGION");
    r.code(1).one_line_error("not restarted");
    no_token(&r);
    let d = dispatched(&r);
    assert_eq!(d.len(), 14, "the root and 13 children: {d:?}");
    let o = outcomes(&r);
    for (n, want) in [
        (1, "failed"),
        (3, "restarted"),
        (4, "failed"),
        (10, "failed"),
        (12, "restarted"),
        (13, "noop"),
    ] {
        assert_eq!(o.get(&wid(n)).map(String::as_str), Some(want), "{n}: {o:?}");
    }
    assert_eq!(o.get(ROOT).map(String::as_str), Some("restarted"));
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
            Reply::Status(c) | Reply::Redirect(c, _) | Reply::Json(c, _) => *c,
            _ => 202,
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
        .map(|c| StandIn::admin_restart_id(c, TOKEN))
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 14);
    assert_eq!(platform.calls().len(), 14, "a call was retried or repeated");
    // The 404 is a failure: the tenant still has that workspace, so the call went astray.
    let e404 = d
        .get(&wid(10))
        .and_then(|x| x.1.clone())
        .unwrap_or_default();
    assert!(e404.contains("exists in this tenant"), "{e404}");
    // An unknown 2xx says so.
    let e200 = d.get(&wid(1)).and_then(|x| x.1.clone()).unwrap_or_default();
    assert!(e200.contains("unknown"), "{e200}");
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
        Box::new(Reply::dispatched()),
    ));
    let r = set(&db, &platform, "--global", "REGION");
    r.code(0);
    assert_eq!(platform.calls().len(), 31);
    // 31 calls of 300 ms, 8 at a time (what the stand-in saw in flight at once, not a wall
    // clock, which a loaded machine stretches).
    assert_eq!(platform.max_in_flight(), RESTART_CAP, "in flight at once");
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
                Reply::Delay(Duration::from_secs(2), Box::new(Reply::dispatched())),
            ),
        ],
        Reply::dispatched(),
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
                        Reply::Delay(Duration::from_millis(40), Box::new(Reply::dispatched())),
                    )
                })
                .collect(),
            Reply::dispatched(),
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

/// The restart guard at the integration level: a removed or paused target, and one with a
/// NULL status (the platform's eligibility never restarts it), is skipped with its reason and
/// never called; a target whose kind cannot be proven (its lookup fails) is not restarted,
/// fails closed, and the exit says so.
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
    let platform = StandIn::start(Reply::dispatched());
    for (n, reason) in [(1, "removed"), (2, "paused"), (3, "no-status")] {
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
    assert!(
        platform.calls().is_empty(),
        "a target of unknown kind was called"
    );
    assert_eq!(
        db.scalar(&format!(
            "SELECT count(*) FROM workspace_secrets WHERE workspace_id = '{}' AND key = 'KU'",
            wid(4)
        )),
        "1"
    );

    // The global fan-out: the NULL-status workspace is listed as skipped (no-status), as are
    // the removed and paused ones; none of them is called; the online ones are.
    db.exec(&format!(
        "UPDATE workspaces SET name = 'w4' WHERE id = '{}'",
        wid(4)
    ));
    let platform = StandIn::start(Reply::dispatched());
    let r = set(&db, &platform, "--global", "G");
    let called: Vec<String> = platform
        .calls()
        .iter()
        .map(|c| StandIn::admin_restart_id(c, TOKEN))
        .collect();
    r.code(0);
    let mut called = called;
    called.sort();
    assert_eq!(called, [ROOT.to_string(), wid(4)], "{}", r.stdout);
    let want: BTreeMap<String, String> = [(1, "removed"), (2, "paused"), (3, "no-status")]
        .into_iter()
        .map(|(n, reason)| (wid(n), reason.to_string()))
        .collect();
    assert_eq!(skipped(&r), want, "{}", r.stdout);
}

/// A tenant for the admin route: the root and `f1…01..09` online, then 02 on runtime `kimi`,
/// 03 `kimi-cli`, 04 `mock`, 05 with a NULL status.
fn eligibility_tenant() -> TestDb {
    let db = tenant(9);
    db.exec(&format!(
        "UPDATE workspaces SET runtime = 'kimi' WHERE id = '{}';
         UPDATE workspaces SET runtime = 'kimi-cli' WHERE id = '{}';
         UPDATE workspaces SET runtime = 'mock' WHERE id = '{}';
         UPDATE workspaces SET status = NULL WHERE id = '{}';",
        wid(2),
        wid(3),
        wid(4),
        wid(5)
    ));
    db
}

/// Restarts go to the platform's admin route and each answer is reported as what it is: 202
/// restart_dispatched is `restarted`; 200 noop (the platform restarted it within its 60 s
/// debounce) is `noop` — ok, never restarted, not a failure; a 404 for a workspace removed
/// meanwhile is `gone`; a 500 is `failed` and the only one exit 1 names. orgctl skips the
/// runtimes the platform never restarts and a NULL status itself, with their reasons, and calls
/// none of them. Every outcome is an audit row of its own. A second change within the debounce
/// is all no-ops (exit 0, the table never says restarted), and `secret restart` replays the
/// no-ops: a no-op is not a restart.
#[test]
fn the_admin_route_restarts_noops_and_forgets_and_each_is_reported_as_such() {
    let db = eligibility_tenant();
    let sim = PlatformSim::new(&db.name, TOKEN);
    sim.mark_restarted(&wid(6));
    sim.remove_on_call(&wid(7));
    let platform = StandIn::with(
        vec![(wid(8), Reply::Status(500))],
        Reply::Platform(sim.clone()),
        None,
    );
    let r = set(&db, &platform, "--global", "REGION");
    r.code(1).one_line_error(&wid(8));
    no_token(&r);
    let err_line = r
        .stderr
        .lines()
        .find(|l| l.starts_with("error:"))
        .unwrap_or_default()
        .to_string();
    assert!(
        err_line.contains("1 workspace(s) were not restarted"),
        "{err_line}"
    );
    let want: BTreeMap<String, String> = [
        (ROOT.to_string(), "restarted"),
        (wid(1), "restarted"),
        (wid(6), "noop"),
        (wid(7), "gone"),
        (wid(8), "failed"),
        (wid(9), "restarted"),
    ]
    .into_iter()
    .map(|(id, o)| (id, o.to_string()))
    .collect();
    assert_eq!(outcomes(&r), want, "{}", r.stdout);
    // ok is false exactly for the failure.
    let d = dispatched(&r);
    assert!(
        d.iter().all(|(id, (ok, _))| *ok == (*id != wid(8))),
        "{d:?}"
    );
    assert_eq!(d.get(&wid(6)).map(|x| x.1.clone()), Some(None));
    let skips: BTreeMap<String, String> = [
        (2, "runtime-kimi"),
        (3, "runtime-kimi-cli"),
        (4, "runtime-mock"),
        (5, "no-status"),
    ]
    .into_iter()
    .map(|(n, reason)| (wid(n), reason.to_string()))
    .collect();
    assert_eq!(skipped(&r), skips, "{}", r.stdout);
    // Only the admin route, with the bearer, never a skipped workspace.
    let mut called: Vec<String> = platform
        .calls()
        .iter()
        .map(|c| StandIn::admin_restart_id(c, TOKEN))
        .collect();
    called.sort();
    assert_eq!(called, want.keys().cloned().collect::<Vec<_>>());
    assert_eq!(
        sim.restarted(),
        [ROOT.to_string(), wid(1), wid(6), wid(9)],
        "what the platform restarted (06 before the run)"
    );
    assert!(
        r.stderr
            .contains("1 workspace(s) were not restarted: the platform answered no-op"),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("1 workspace(s) are gone"), "{}", r.stderr);
    assert_eq!(
        audit_outcomes(&db),
        [
            (ROOT.to_string(), "restarted", "202"),
            (wid(1), "restarted", "202"),
            (wid(6), "noop", "200"),
            (wid(7), "gone", "404"),
            (wid(8), "failed", "500"),
            (wid(9), "restarted", "202"),
        ]
        .into_iter()
        .map(|(a, b, c)| (a, b.to_string(), c.to_string()))
        .collect::<Vec<_>>()
    );

    // The same change again within the debounce (the same platform, no 500 this time): the
    // platform restarts only 08, everything else is a no-op; the removed 07 is skipped now.
    let platform = StandIn::start(Reply::Platform(sim.clone()));
    let r = db
        .orgctl(&["secret", "set", "--global", "REGION", "--yes"])
        .env("MOLECULE_PLATFORM_URL", &platform.url())
        .env("MOLECULE_ADMIN_TOKEN", TOKEN)
        .stdin(b"value-2")
        .run();
    r.code(0);
    no_token(&r);
    for id in [ROOT.to_string(), wid(1), wid(6), wid(9)] {
        let line = r
            .stdout
            .lines()
            .find(|l| l.contains(&id))
            .unwrap_or_default();
        assert!(line.contains("no-op"), "{id}: {}", r.stdout);
        assert!(!line.contains("restarted"), "{id}: {}", r.stdout);
    }
    let line8 = r
        .stdout
        .lines()
        .find(|l| l.contains(&wid(8)))
        .unwrap_or_default();
    assert!(line8.contains("restarted"), "{}", r.stdout);
    let line7 = r
        .stdout
        .lines()
        .find(|l| l.contains(&wid(7)))
        .unwrap_or_default();
    assert!(line7.contains("skipped: removed"), "{}", r.stdout);
    assert!(
        r.stderr
            .contains("4 workspace(s) were not restarted: the platform answered no-op"),
        "{}",
        r.stderr
    );

    // secret restart: the no-ops are still owed a restart (08 is recorded restarted).
    let platform = StandIn::start(Reply::Platform(sim.clone()));
    let r = db
        .orgctl(&[
            "secret", "restart", "--global", "REGION", "--yes", "-o", "json",
        ])
        .env("MOLECULE_PLATFORM_URL", &platform.url())
        .env("MOLECULE_ADMIN_TOKEN", TOKEN)
        .run();
    r.code(0);
    let o = outcomes(&r);
    assert_eq!(
        o.keys().cloned().collect::<Vec<_>>(),
        [ROOT.to_string(), wid(1), wid(6), wid(9)],
        "{}",
        r.stdout
    );
    assert!(o.values().all(|v| v == "noop"), "{o:?}");
    assert_eq!(
        skipped(&r).get(&wid(8)).map(String::as_str),
        Some("already-restarted")
    );
}

/// A 404 for a workspace the tenant still has (not removed) is not "gone": the call reached
/// something that is not the platform's admin route (here a platform URL with a wrong prefix,
/// so every call is answered by a router without the route). Each is a failure naming the
/// reason, exit 1 after the commit, and recorded as failed; a fan-out gives up after 10.
#[test]
fn a_404_for_a_workspace_the_tenant_still_has_is_a_failure() {
    let db = tenant(2);
    let sim = PlatformSim::new(&db.name, TOKEN);
    let platform = StandIn::start(Reply::Platform(sim.clone()));
    let r = db
        .orgctl(&["secret", "set", &wid(1), "K", "--yes", "-o", "json"])
        .env("MOLECULE_PLATFORM_URL", &format!("{}/api", platform.url()))
        .env("MOLECULE_ADMIN_TOKEN", TOKEN)
        .stdin(b"v")
        .run();
    r.code(1).one_line_error(&wid(1));
    assert_eq!(
        outcomes(&r).get(&wid(1)).map(String::as_str),
        Some("failed")
    );
    let e = dispatched(&r)
        .get(&wid(1))
        .and_then(|x| x.1.clone())
        .unwrap_or_default();
    assert!(e.contains("404") && e.contains("platform URL"), "{e}");
    assert_eq!(
        audit_outcomes(&db),
        [(wid(1), "failed".to_string(), "404".to_string())]
    );
    assert!(sim.restarted().is_empty());
    assert_eq!(
        db.scalar("SELECT count(*) FROM workspace_secrets WHERE key = 'K'"),
        "1"
    );
    // The same platform at the right URL restarts it.
    let r = set(&db, &platform, &wid(1), "K");
    r.code(0);
    assert_eq!(
        outcomes(&r).get(&wid(1)).map(String::as_str),
        Some("restarted")
    );
    assert_eq!(sim.restarted(), [wid(1)]);

    // A fan-out to the wrong URL stops like any refused one: 404s count towards the give-up
    // after 10 in a row, the rest is not attempted.
    let db = tenant(40);
    let sim = PlatformSim::new(&db.name, TOKEN);
    let platform = StandIn::start(Reply::Platform(sim.clone()));
    let r = db
        .orgctl(&["secret", "set", "--global", "G", "--yes", "-o", "json"])
        .env("MOLECULE_PLATFORM_URL", &format!("{}/api", platform.url()))
        .env("MOLECULE_ADMIN_TOKEN", TOKEN)
        .stdin(b"v")
        .run();
    r.code(1).one_line_error("not attempted");
    let calls = platform.calls().len();
    assert!((10..=18).contains(&calls), "{calls} calls");
    let o = outcomes(&r);
    assert_eq!(o.values().filter(|v| *v == "failed").count(), calls);
    assert_eq!(
        o.values().filter(|v| *v == "not-attempted").count(),
        41 - calls
    );
    assert!(sim.restarted().is_empty());
}

/// A platform (or a proxy in front of it) that echoes the request — here the bearer cut short
/// and upper-cased, where masking cannot find it — never gets its answer into the output or
/// into the chained audit log: a failed call is said by its status code and fixed words.
#[test]
fn an_answer_that_echoes_the_bearer_is_never_shown_or_stored() {
    let token = "echo-me-s3cret-admin-bearer-0123456789";
    let db = TestDb::sample();
    for reply in [
        Reply::Json(
            500,
            format!("upstream said: Bearer {}", token[..20].to_uppercase()),
        ),
        Reply::Json(200, format!("{{\"status\":\"{}\"}}", &token[3..25])),
    ] {
        let platform = StandIn::start(reply);
        let r = db
            .orgctl(&[
                "secret",
                "set",
                ids::RESEARCH,
                "LOG_LEVEL",
                "--yes",
                "-o",
                "json",
            ])
            .env("MOLECULE_PLATFORM_URL", &platform.url())
            .env("MOLECULE_ADMIN_TOKEN", token)
            .stdin(b"debug\n")
            .run();
        r.code(1);
        let audit = db.exec("SELECT args::text FROM orgctl.audit_log");
        for (what, text) in [
            ("stdout", &r.stdout),
            ("stderr", &r.stderr),
            ("audit", &audit),
        ] {
            let upper = text.to_uppercase();
            for piece in [&token[..12], &token[3..15], &token[20..32]] {
                assert!(
                    !upper.contains(&piece.to_uppercase()),
                    "{what} holds part of the bearer ({piece}):\n{text}"
                );
            }
        }
        assert!(r.stdout.contains("HTTP"), "{}", r.stdout);
    }
}
