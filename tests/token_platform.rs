//! Tokens as the platform counts them: live means not revoked and not expired (list, status,
//! `anchor --stale`, the install plan, revoke); the platform's mint ceiling of live tokens per
//! org (refused past it, counted under the tenant lock, `--over-ceiling` audited); the
//! platform's own `org_token_audit_logs` rows for every mint and revoke; names counted in
//! bytes; the platform's reserved `created_by` labels; the warning before revoking the
//! agent's own credential. Every expectation is checked with SQL of its own.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::{hold, ids, Cmd, TestDb};

const CEILING: &str = "ORG_TOKEN_MINT_CEILING";
const T1: &str = "70000000-0000-4000-8000-000000000001";
const T2: &str = "70000000-0000-4000-8000-000000000002";
const T3: &str = "70000000-0000-4000-8000-000000000003";
const T4: &str = "70000000-0000-4000-8000-000000000004";
const T5: &str = "70000000-0000-4000-8000-000000000005";
const T6: &str = "70000000-0000-4000-8000-000000000006";
const T8: &str = "70000000-0000-4000-8000-000000000008";
/// Expired on HQ, live until 2099 on HQ (both `incident-7`), expired on a non-root, expired
/// and unanchored.
const X1: &str = "70000000-0000-4000-8000-0000000000e1";
const X2: &str = "70000000-0000-4000-8000-0000000000e2";
const X3: &str = "70000000-0000-4000-8000-0000000000e3";
const X4: &str = "70000000-0000-4000-8000-0000000000e4";

/// Live tokens on `org`, by the platform's rule, counted independently of orgctl.
fn live_on(db: &TestDb, org: &str) -> i64 {
    db.scalar(&format!(
        "SELECT count(*) FROM org_api_tokens
          WHERE org_id = '{org}' AND revoked_at IS NULL
            AND (expires_at IS NULL OR expires_at > now())"
    ))
    .parse()
    .unwrap_or(-1)
}

fn mint_hq(db: &TestDb, extra: &[&str]) -> Cmd {
    let mut args = vec!["token", "mint", "--org", ids::HQ, "--name", "ceiling test"];
    args.extend_from_slice(extra);
    db.orgctl(&args)
}

fn str_at<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or_default()
}

fn ids_of(v: &Value) -> BTreeSet<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .map(|t| match t.as_str() {
                    Some(s) => s.to_string(),
                    None => str_at(t, "id").to_string(),
                })
                .collect()
        })
        .unwrap_or_default()
}

fn set(v: &[&str]) -> BTreeSet<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// The sample org plus four tokens with an expiry (see [`X1`]).
fn with_expiring_tokens() -> TestDb {
    let db = TestDb::sample();
    db.exec(&format!(
        "INSERT INTO org_api_tokens (id, token_hash, prefix, name, created_by, created_at, expires_at, org_id) VALUES
          ('{X1}', sha256('x1'::bytea), 'expir001', 'expired on hq', 'incident-7', '2024-06-01', now() - interval '1 day', '{hq}'),
          ('{X2}', sha256('x2'::bytea), 'futur002', 'until 2099',    'incident-7', '2024-06-02', '2099-01-01T00:00:00Z', '{hq}'),
          ('{X3}', sha256('x3'::bytea), 'expir003', 'expired child', 'session',    '2024-06-03', now() - interval '1 hour', '{research}'),
          ('{X4}', sha256('x4'::bytea), 'expir004', 'expired loose', 'admin-token','2024-06-04', now() - interval '1 minute', NULL)",
        hq = ids::HQ,
        research = ids::RESEARCH
    ));
    db
}

/// The platform's ceiling, 100 live tokens by default, counted as the
/// platform counts (expired and revoked tokens do not count); 0 or less turns it off; a value
/// that is not an integer is bad input; `--over-ceiling` passes it and both audit trails say so.
#[test]
fn mint_refuses_past_the_platforms_ceiling_of_live_tokens() {
    let db = TestDb::sample();
    // HQ: T1 and T2 live, T3 revoked; 98 more live, 3 expired and 2 revoked ones.
    db.exec(&format!(
        "INSERT INTO org_api_tokens (token_hash, prefix, name, created_by, org_id, revoked_at, expires_at)
         SELECT sha256(('bulk-' || g)::bytea), 'bulk' || lpad(g::text, 4, '0'), 'bulk', 'seed', '{hq}',
                CASE WHEN g > 101 THEN now() END,
                CASE WHEN g BETWEEN 99 AND 101 THEN now() - interval '1 second'
                     WHEN g < 50 THEN now() + interval '30 days' END
           FROM generate_series(1, 103) g",
        hq = ids::HQ
    ));
    assert_eq!(live_on(&db, ids::HQ), 100);

    // At exactly 100 live: refused (exit 3), saying how many and the ceiling; nothing written.
    let before = db.snapshot();
    let r = mint_hq(&db, &[]).run();
    r.code(3).one_line_error("already has 100 live token(s)");
    assert!(
        r.stderr.contains("ORG_TOKEN_MINT_CEILING) is 100") && r.stderr.contains("--over-ceiling"),
        "{}",
        r.stderr
    );
    assert_eq!(r.stdout, "");
    assert_eq!(db.snapshot(), before);

    // One live token fewer: it passes, although 105 tokens on HQ are unrevoked or unexpired.
    db.exec("UPDATE org_api_tokens SET revoked_at = now() WHERE prefix = 'bulk0001'");
    let r = mint_hq(&db, &["-o", "json"]).run();
    r.code(0);
    assert_eq!(r.json().get("over_ceiling"), Some(&Value::Bool(false)));
    assert_eq!(live_on(&db, ids::HQ), 100);

    // Not an integer: bad input before anything is touched.
    let before = db.snapshot();
    for bad in ["ten", "1.5", "100 tokens"] {
        let r = mint_hq(&db, &[]).env(CEILING, bad).run();
        r.code(2).one_line_error(CEILING);
        assert_eq!(r.stdout, "");
    }
    assert_eq!(db.snapshot(), before);

    // 0 or less turns the ceiling off.
    mint_hq(&db, &[]).env(CEILING, "0").run().code(0);
    mint_hq(&db, &[]).env(CEILING, "-5").run().code(0);
    assert_eq!(live_on(&db, ids::HQ), 102);
    // Another ceiling is read from the environment: 103 passes once, then refuses.
    mint_hq(&db, &[]).env(CEILING, " 103 ").run().code(0);
    let before = db.snapshot();
    mint_hq(&db, &[])
        .env(CEILING, "103")
        .run()
        .code(3)
        .one_line_error("already has 103 live token(s)");
    assert_eq!(db.snapshot(), before);

    // Break glass: passes, says so on stderr, and both audit trails record it.
    let r = mint_hq(&db, &["--over-ceiling", "-o", "json"])
        .env(CEILING, "103")
        .run();
    r.code(0);
    let j = r.json();
    assert_eq!(j.get("over_ceiling"), Some(&Value::Bool(true)));
    assert!(r.stderr.contains("--over-ceiling"), "{}", r.stderr);
    let id = str_at(&j, "id");
    assert_eq!(live_on(&db, ids::HQ), 104);
    assert_eq!(
        db.scalar(&format!(
            "SELECT action || '|' || actor || '|' || org_id || '|' || (metadata->>'over_ceiling') || '|'
                    || (metadata->>'live_tokens') || '|' || (metadata->>'ceiling')
               FROM org_token_audit_logs WHERE token_id = '{id}'"
        )),
        format!("mint|orgctl:tester|{}|true|103|103", ids::HQ)
    );
    assert_eq!(
        db.scalar(&format!(
            "SELECT (args->>'over_ceiling') || '|' || (args->>'live_tokens') || '|' || (args->>'ceiling')
               FROM orgctl.audit_log WHERE command = 'token mint' AND args->>'id' = '{id}'"
        )),
        "true|103|103"
    );
    // A mint under the ceiling records no break glass in the platform's row.
    assert_eq!(
        db.scalar(
            "SELECT count(*) FROM org_token_audit_logs WHERE action = 'mint' AND metadata ? 'over_ceiling'"
        ),
        "1"
    );
    // The flag alone, under the ceiling, is no break glass.
    let r = mint_hq(&db, &["--over-ceiling", "-o", "json"])
        .env(CEILING, "0")
        .run();
    r.code(0);
    assert_eq!(r.json().get("over_ceiling"), Some(&Value::Bool(false)));
}

/// The count is taken under the tenant lock: two mints racing for the last place under the
/// ceiling cannot both pass it.
#[tokio::test]
async fn two_concurrent_mints_cannot_both_pass_the_ceiling() {
    let db = TestDb::sample();
    assert_eq!(live_on(&db, ids::HQ), 2);
    // Create orgctl's schema first, so both mints only wait for the lock.
    db.orgctl(&["token", "revoke", "sampl006", "--yes"])
        .run()
        .code(0);
    let lock = format!(
        "SELECT pg_advisory_xact_lock({}, {})",
        orgctl::testing::db::TENANT_LOCK.0,
        orgctl::testing::db::TENANT_LOCK.1
    );
    let holder = hold(&db, &[&lock]).await;
    let race = || {
        mint_hq(&db, &["--lock-timeout", "60s"])
            .env(CEILING, "3")
            .run_async()
    };
    let (a, b) = (tokio::spawn(race()), tokio::spawn(race()));
    // Both past their read-only check (2 < 3), both waiting for the tenant lock.
    let mut admin = db.connect().await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let waiting: i64 = match sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity
              WHERE datname = $1 AND application_name = 'orgctl' AND wait_event_type = 'Lock'",
        )
        .bind(&db.name)
        .fetch_one(&mut admin)
        .await
        {
            Ok(n) => n,
            Err(e) => panic!("{e}"),
        };
        if waiting == 2 {
            break;
        }
        assert!(Instant::now() < deadline, "the mints never both waited");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(holder);
    let (a, b) = match (a.await, b.await) {
        (Ok(a), Ok(b)) => (a, b),
        _ => panic!("a mint task failed"),
    };
    let mut codes = [a.code, b.code];
    codes.sort();
    assert_eq!(codes, [0, 3], "{}\n{}", a.stderr, b.stderr);
    let refused = if a.code == 3 { &a } else { &b };
    refused.one_line_error("already has 3 live token(s)");
    assert_eq!(live_on(&db, ids::HQ), 3);
}

/// Every mint and every revoked token gets the platform's own audit row, in the transaction of
/// the change, with exactly the platform's values; an anchor writes none (the platform has no
/// such action), nor does a revoke of an already revoked token.
#[test]
fn mint_and_revoke_write_the_platforms_own_audit_rows() {
    let db = TestDb::sample();
    let r = db
        .orgctl(&[
            "token",
            "mint",
            "--org",
            ids::HQ,
            "--name",
            "ci",
            "--created-by",
            "incident-9",
            "-o",
            "json",
        ])
        .run();
    r.code(0);
    let j = r.json();
    let (id, prefix, plaintext) = (
        str_at(&j, "id"),
        str_at(&j, "prefix"),
        str_at(&j, "auth_token"),
    );
    assert_eq!(
        db.scalar(&format!(
            "SELECT token_id || '|' || action || '|' || actor || '|' || org_id || '|'
                    || (metadata = jsonb_build_object('name', 'ci', 'prefix', '{prefix}'))
                    || '|' || (ip_address IS NULL AND user_agent IS NULL)
               FROM org_token_audit_logs"
        )),
        format!("{id}|mint|incident-9|{}|true|true", ids::HQ)
    );
    // The plaintext is in no audit row.
    assert_eq!(
        db.scalar(&format!(
            "SELECT count(*) FROM org_token_audit_logs WHERE metadata::text LIKE '%{}%'",
            &plaintext[8..20]
        )),
        "0"
    );
    // A mint without a name: name null, the default actor.
    let r = db
        .orgctl(&["token", "mint", "--org", ids::LABS, "-o", "json"])
        .run();
    r.code(0);
    let j = r.json();
    let (id2, prefix2) = (str_at(&j, "id"), str_at(&j, "prefix"));
    assert_eq!(
        db.scalar(&format!(
            "SELECT actor || '|' || org_id || '|' || (metadata = jsonb_build_object('name', NULL, 'prefix', '{prefix2}'))
               FROM org_token_audit_logs WHERE token_id = '{id2}'"
        )),
        format!("orgctl:tester|{}|true", ids::LABS)
    );

    // Revoke one: (token, 'revoke', the revoker's label, NULL, NULL).
    db.orgctl(&["token", "revoke", "--yes", "--", prefix])
        .run()
        .code(0);
    assert_eq!(
        db.scalar(&format!(
            "SELECT action || '|' || actor || '|' || (org_id IS NULL) || '|' || (metadata IS NULL)
               FROM org_token_audit_logs WHERE token_id = '{id}' AND action <> 'mint'"
        )),
        "revoke|orgctl:tester|true|true"
    );
    // Revoke by label: one row per token this run revoked (T1, T5, T8; T3 was revoked before).
    db.orgctl(&["token", "revoke", "--created-by", "session", "--yes"])
        .env("USER", "bob")
        .run()
        .code(0);
    assert_eq!(
        db.scalar(
            "SELECT string_agg(token_id::text, ',' ORDER BY token_id) FROM org_token_audit_logs
              WHERE action = 'revoke' AND actor = 'orgctl:bob' AND org_id IS NULL AND metadata IS NULL"
        ),
        format!("{T1},{T5},{T8}")
    );
    assert_eq!(
        db.scalar("SELECT count(*) FROM org_token_audit_logs"),
        "6",
        "2 mints, 4 revokes"
    );

    // Already revoked, an anchor, a refused revoke: no platform audit row.
    db.orgctl(&["token", "revoke", "--yes", "--", prefix])
        .run()
        .code(0);
    db.orgctl(&["token", "anchor", "sampl006", "--org", ids::HQ, "--yes"])
        .run()
        .code(0);
    db.orgctl(&["token", "revoke", "sampl002"]).run().code(3);
    assert_eq!(db.scalar("SELECT count(*) FROM org_token_audit_logs"), "6");
    // The revoke and its audit row are one statement: a revoked token always has its row.
    assert_eq!(
        db.scalar(
            "SELECT count(*) FROM org_api_tokens t WHERE revoked_at > now() - interval '1 hour'
                AND NOT EXISTS (SELECT 1 FROM org_token_audit_logs a
                                 WHERE a.token_id = t.id AND a.action = 'revoke')"
        ),
        "0"
    );
    let _ = (T2, T4, T6);
}

/// Expired tokens are dead wherever orgctl counts, lists or gates: left out of `token list`
/// (shown, marked, with `--all`), counted apart in `status` (and not failing its checks), not
/// moved by `anchor --stale`, counted with the revoked ones in the install plan; revoking one
/// is harmless and final.
#[test]
fn expired_tokens_are_dead_in_list_status_stale_anchors_and_the_install_plan() {
    let db = with_expiring_tokens();

    // list: live only, with expires_at.
    let r = db.orgctl(&["token", "list", "-o", "json"]).run();
    r.code(0);
    let j = r.json();
    assert_eq!(ids_of(&j), set(&[T1, T2, T4, T5, T6, T8, X2]));
    let x2 = j
        .as_array()
        .and_then(|a| a.iter().find(|t| str_at(t, "id") == X2))
        .cloned()
        .unwrap_or_default();
    assert!(str_at(&x2, "expires_at").starts_with("2099-01-01"), "{x2}");
    // --all: every token, each with its state.
    let r = db.orgctl(&["token", "list", "--all", "-o", "json"]).run();
    r.code(0);
    let states: BTreeSet<(String, String)> = r
        .json()
        .as_array()
        .map(|a| {
            a.iter()
                .map(|t| (str_at(t, "id").to_string(), str_at(t, "state").to_string()))
                .collect()
        })
        .unwrap_or_default();
    for (id, state) in [
        (X1, "expired"),
        (X3, "expired"),
        (X4, "expired"),
        (X2, "live"),
        (T1, "live"),
        (T3, "revoked"),
    ] {
        assert!(
            states.contains(&(id.to_string(), state.to_string())),
            "{id} {state}: {states:?}"
        );
    }
    // The compact table: EXPIRES for live tokens; with --all a STATE column with its date.
    let r = db.orgctl(&["token", "list", "--limit", "50"]).run();
    r.code(0);
    assert!(r
        .stdout
        .lines()
        .next()
        .unwrap_or_default()
        .ends_with("EXPIRES"));
    assert!(!r.stdout.contains("expir00"), "{}", r.stdout);
    assert!(
        r.stdout
            .lines()
            .any(|l| l.starts_with("futur002") && l.ends_with("2099-01-01")),
        "{}",
        r.stdout
    );
    let r = db
        .orgctl(&["token", "list", "--all", "--limit", "50"])
        .run();
    r.code(0);
    let line = |p: &str| {
        r.stdout
            .lines()
            .find(|l| l.starts_with(p))
            .unwrap_or_default()
            .to_string()
    };
    assert!(line("expir001").contains("expired 20"), "{}", r.stdout);
    assert!(
        line("futur002").ends_with("live to 2099-01-01"),
        "{}",
        r.stdout
    );
    assert!(
        line("sampl003").ends_with("revoked 2024-04-01"),
        "{}",
        r.stdout
    );
    assert!(line("sampl001").ends_with("live"), "{}", r.stdout);
    for l in r.stdout.lines() {
        assert!(l.chars().count() <= 80, "wider than 80: {l}");
    }

    // status: live, expired and revoked apart; expired tokens fail no check.
    let r = db.orgctl(&["status", "-o", "json"]).run();
    let s = r.json();
    let counts = |state: &str| {
        let c = &s["tokens"][state];
        (
            c["live"].as_i64().unwrap_or(-1),
            c["expired"].as_i64().unwrap_or(-1),
            c["revoked"].as_i64().unwrap_or(-1),
        )
    };
    assert_eq!(counts("on_root"), (5, 1, 1), "{s}");
    assert_eq!(counts("on_non_root"), (1, 1, 0), "{s}");
    assert_eq!(counts("unanchored"), (1, 1, 1), "{s}");
    let check = |name: &str| {
        s["checks"]
            .as_array()
            .and_then(|a| a.iter().find(|c| c["name"] == name))
            .map(|c| c["count"].as_i64().unwrap_or(-1))
            .unwrap_or(-1)
    };
    assert_eq!(check("tokens_on_root"), 1, "T8 only, not the expired X3");
    assert_eq!(check("unanchored_tokens"), 1, "T6 only, not the expired X4");
    // anchor --stale moves what status counts: T8, not the expired token on the child.
    let r = db
        .orgctl(&[
            "token",
            "anchor",
            "--stale",
            "--org",
            ids::HQ,
            "--dry-run",
            "-o",
            "json",
        ])
        .run();
    r.code(0);
    assert_eq!(r.json()["tokens"], 1, "{}", r.stdout);

    // The install plan: HQ, Labs and Legacy hold 7 tokens, 5 of them live (T1, T2, X2, T4, T5).
    let r = db
        .orgctl(&["install-platform-agent", "--dry-run", "--model", "m"])
        .run();
    r.code(0);
    assert!(
        r.stdout
            .contains("move 7 token(s) (5 live, 2 revoked or expired)"),
        "{}",
        r.stdout
    );

    // A prefix shared by expired tokens is ambiguous, each candidate marked; anchoring an
    // expired token says it stays dead.
    db.orgctl(&["token", "revoke", "expir"])
        .run()
        .code(2)
        .one_line_error(&format!("{X1} expir001, expired"));
    let r = db
        .orgctl(&["token", "anchor", "expir004", "--org", ids::HQ, "--yes"])
        .run();
    r.code(0);
    assert!(
        r.stderr.contains("expired at") && r.stderr.contains("does not revive it"),
        "{}",
        r.stderr
    );

    // revoke --created-by: every unrevoked token of the label, the expired one too.
    let r = db
        .orgctl(&[
            "token",
            "revoke",
            "--created-by",
            "incident-7",
            "--yes",
            "-o",
            "json",
        ])
        .run();
    r.code(0);
    assert_eq!(ids_of(&r.json()["revoked"]), set(&[X1, X2]));
    assert!(r.stderr.contains("1 live and 1 expired"), "{}", r.stderr);
    // One expired token: revoked (harmless, final), said so, audited.
    let r = db
        .orgctl(&["token", "revoke", "expir004", "--yes", "-o", "json"])
        .run();
    r.code(0);
    assert_eq!(ids_of(&r.json()["revoked"]), set(&[X4]));
    assert!(r.stderr.contains("expired at"), "{}", r.stderr);
    assert_eq!(
        db.scalar(&format!(
            "SELECT (SELECT revoked_at IS NOT NULL FROM org_api_tokens WHERE id = '{X4}')
                    || '|' || (SELECT count(*) FROM org_token_audit_logs WHERE token_id IN ('{X1}', '{X2}', '{X4}') AND action = 'revoke')"
        )),
        "true|3"
    );
}

/// Names are at most 100 bytes, as the platform counts (not characters); the platform's own
/// `created_by` labels are refused on mint (exit 2, saying why), nothing written.
#[test]
fn mint_counts_name_bytes_and_refuses_the_platforms_reserved_labels() {
    let db = TestDb::sample();
    let before = db.snapshot();
    // 40 characters of 3 bytes each: 120 bytes.
    let r = db
        .orgctl(&["token", "mint", "--org", ids::HQ, "--name", &"€".repeat(40)])
        .run();
    r.code(2).one_line_error("120 bytes");
    assert_eq!(r.stdout, "");
    for label in [
        "admin-token",
        "session",
        "session:4f1c",
        "org-token:sampl001",
        "system:concierge:a0000000-0000-4000-8000-000000000001",
        "system:backup",
    ] {
        let r = db
            .orgctl(&["token", "mint", "--org", ids::HQ, "--created-by", label])
            .run();
        r.code(2).one_line_error("reserved by the platform");
        assert_eq!(r.stdout, "", "{label}");
    }
    assert_eq!(db.snapshot(), before);

    // Exactly 100 bytes (50 two-byte characters) is a name; near-miss labels are labels.
    db.orgctl(&["token", "mint", "--org", ids::HQ, "--name", &"é".repeat(50)])
        .run()
        .code(0);
    assert_eq!(
        db.scalar("SELECT octet_length(name) FROM org_api_tokens WHERE name LIKE 'é%'"),
        "100"
    );
    for label in ["sessions", "incident:session", "admin-tokens"] {
        db.orgctl(&["token", "mint", "--org", ids::HQ, "--created-by", label])
            .run()
            .code(0);
    }
}

/// Revoking the platform agent's own auto-rotated credential warns first; on a terminal the
/// question says whose credential it is; `--yes` alone is enough (incident response).
#[test]
fn revoking_the_agents_own_credential_warns_first() {
    let db = TestDb::sample();
    let label = format!("system:concierge:{}", ids::HQ);
    db.exec(&format!(
        "INSERT INTO org_api_tokens (token_hash, prefix, name, created_by, org_id) VALUES
          (sha256('c1'::bytea), 'conci001', 'concierge', '{label}', '{hq}'),
          (sha256('c2'::bytea), 'conci002', 'concierge', '{label}', '{hq}')",
        hq = ids::HQ
    ));
    // orgctl's schema first, so the snapshots compare rows only.
    db.orgctl(&["token", "revoke", "sampl006", "--yes"])
        .run()
        .code(0);
    let before = db.snapshot();
    let r = db.orgctl(&["token", "revoke", "conci001"]).run();
    r.code(3).one_line_error("confirmation needed");
    assert!(
        r.stderr.contains("warning:") && r.stderr.contains("own auto-rotated credential"),
        "{}",
        r.stderr
    );
    let t = db.orgctl(&["token", "revoke", "conci001"]).run_in_pty("n");
    t.code(3);
    assert!(
        t.stdout.contains("own auto-rotated credential")
            && t.stdout
                .lines()
                .any(|l| l.contains("[y/N]") && l.contains("the platform agent's own credential")),
        "{}",
        t.stdout
    );
    assert_eq!(db.snapshot(), before);

    let r = db
        .orgctl(&["token", "revoke", "--yes", "--", "conci001"])
        .run();
    r.code(0);
    assert!(
        r.stderr.contains("own auto-rotated credential"),
        "{}",
        r.stderr
    );
    let r = db
        .orgctl(&["token", "revoke", "--created-by", &label, "--yes"])
        .run();
    r.code(0);
    assert!(
        r.stderr.contains("own auto-rotated credential"),
        "{}",
        r.stderr
    );
    assert_eq!(
        db.scalar(&format!(
            "SELECT count(*) FROM org_api_tokens WHERE created_by = '{label}' AND revoked_at IS NULL"
        )),
        "0"
    );
    // Other labels: no such warning.
    let r = db
        .orgctl(&["token", "revoke", "--yes", "--", "sampl002"])
        .run();
    r.code(0);
    assert!(!r.stderr.contains("credential"), "{}", r.stderr);
}

/// An install (and a backfill) warns when the live tokens it moves bring the agent's org to
/// the platform's ceiling; after it, mint refuses as the platform would.
#[test]
fn install_and_backfill_warn_when_their_token_moves_reach_the_ceiling() {
    let db = TestDb::sample();
    // Live on the roots: T1, T2 (HQ), T4 (Labs), T5 (Legacy).
    let dry = |ceiling: &str| {
        db.orgctl(&["install-platform-agent", "--dry-run", "--model", "m"])
            .env(CEILING, ceiling)
            .run()
    };
    let r = dry("4");
    r.code(0);
    assert!(
        r.stderr.contains("warning:")
            && r.stderr
                .contains("4 live token(s) (4 moved from the old roots")
            && r.stderr
                .contains("mint ceiling (ORG_TOKEN_MINT_CEILING) of 4"),
        "{}",
        r.stderr
    );
    for quiet in ["5", "0"] {
        let r = dry(quiet);
        r.code(0);
        assert!(!r.stderr.contains("ceiling"), "{quiet}: {}", r.stderr);
    }

    let tenants = crate::harness::tenants_file(
        &format!("ceiling-{}", db.name),
        &format!("acme {}\n", db.url),
    );
    let path = tenants.to_str().unwrap_or_default();
    let r = Cmd::new(&[
        "backfill",
        "run",
        "--dry-run",
        "--model",
        "m",
        "--tenants",
        path,
        "-o",
        "json",
    ])
    .env(CEILING, "3")
    .run();
    r.code(0);
    assert!(
        r.stdout
            .contains("mint ceiling (ORG_TOKEN_MINT_CEILING) of 3"),
        "{}",
        r.stdout
    );

    let r = db
        .orgctl(&["install-platform-agent", "--model", "m", "--yes"])
        .env(CEILING, "4")
        .run();
    r.code(0);
    assert!(r.stderr.contains("mint ceiling"), "{}", r.stderr);
    let agent = db.scalar("SELECT id FROM workspaces WHERE kind = 'platform'");
    assert_eq!(live_on(&db, &agent), 4);
    // A second install moves nothing and says nothing of the ceiling.
    let r = db
        .orgctl(&["install-platform-agent", "--model", "m", "--yes"])
        .env(CEILING, "4")
        .run();
    r.code(0);
    assert!(!r.stderr.contains("ceiling"), "{}", r.stderr);
    db.orgctl(&["token", "mint"])
        .env(CEILING, "4")
        .run()
        .code(3)
        .one_line_error("already has 4 live token(s)");
    let _ = std::fs::remove_file(tenants);
}
