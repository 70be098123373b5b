//! Bringing the agent to life: `--provision` / `--wait` on install-platform-agent and
//! backfill run, the tenants file's platform URL, and status's `platform_agent_running`, against
//! real PostgreSQL and a loopback stand-in of the platform API.

use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde::Deserialize;

use crate::harness::{Cmd, Run, TestDb};
use crate::stand_in::{EnsureMode, EnsureStandIn, ENSURE_DEFAULT_MODEL, ENSURE_FAIL_REASON};

const TOKEN: &str = "adm-provision-Tok3n-5ecret";

/// The `provision` object, rejecting unknown fields.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProvisionJson {
    requested: bool,
    skipped: Option<String>,
    http_status: Option<u16>,
    final_status: Option<String>,
    waited_ms: u64,
    model_sent: bool,
    platform_status: Option<String>,
    agent_status: Option<String>,
    provisioning: Option<bool>,
    error_code: Option<String>,
    last_error: Option<String>,
}

fn provision_of(r: &Run) -> ProvisionJson {
    let v = r.json();
    match serde_json::from_value(v["provision"].clone()) {
        Ok(p) => p,
        Err(e) => panic!("no provision object ({e}):\n{}\n{}", r.stdout, r.stderr),
    }
}

// ---------------------------------------------------------------------------------------------
// The platform: the shared stand-in of its ensure route (tests/stand_in.rs), which changes the
// agent in the database as the platform does.

fn live(db: &TestDb, ms: u64) -> EnsureStandIn {
    EnsureStandIn::start(&db.name, EnsureMode::Live(Duration::from_millis(ms)), false)
}

/// A URL where nothing listens.
fn absent_url() -> String {
    let l = match TcpListener::bind("127.0.0.1:0") {
        Ok(l) => l,
        Err(e) => panic!("{e}"),
    };
    let addr = match l.local_addr() {
        Ok(a) => a,
        Err(e) => panic!("{e}"),
    };
    drop(l);
    format!("http://{addr}")
}

fn install(db: &TestDb, platform: &str, extra: &[&str]) -> Run {
    let mut args = vec![
        "install-platform-agent",
        "--yes",
        "-o",
        "json",
        "--provision",
    ];
    args.extend_from_slice(extra);
    db.orgctl(&args)
        .env("MOLECULE_PLATFORM_URL", platform)
        .env("MOLECULE_ADMIN_TOKEN", TOKEN)
        .run()
}

fn agent_id(db: &TestDb) -> String {
    db.scalar("SELECT id FROM workspaces WHERE kind = 'platform'")
}

fn agent_status(db: &TestDb) -> String {
    db.scalar("SELECT status FROM workspaces WHERE kind = 'platform'")
}

/// The install is committed: the agent is the single root.
#[track_caller]
fn assert_installed(db: &TestDb) {
    assert_eq!(
        db.scalar("SELECT count(*) FROM workspaces WHERE parent_id IS NULL AND kind = 'platform'"),
        "1"
    );
    assert_eq!(
        db.scalar("SELECT count(*) FROM workspaces WHERE parent_id IS NULL"),
        "1"
    );
}

#[track_caller]
fn assert_no_token(r: &Run) {
    assert!(!r.stdout.contains(TOKEN), "token on stdout");
    assert!(!r.stderr.contains(TOKEN), "token on stderr");
}

// ---------------------------------------------------------------------------------------------
// install-platform-agent --provision

/// The model of the agent's MODEL secret, as the platform stand-in writes it (plain).
fn model_value(db: &TestDb) -> String {
    db.scalar(
        "SELECT COALESCE((SELECT convert_from(encrypted_value, 'UTF8') FROM workspace_secrets s
                           JOIN workspaces w ON w.id = s.workspace_id
                          WHERE w.kind = 'platform' AND s.key = 'MODEL'), '<none>')",
    )
}

#[test]
fn a_created_agent_is_provisioned_through_ensure_and_comes_online() {
    let db = TestDb::sample();
    let platform = live(&db, 700);
    let r = install(&db, &platform.url(), &["--model", "m-1", "--wait", "30s"]);
    r.code(0);
    assert_no_token(&r);
    let p = provision_of(&r);
    assert!(p.requested);
    assert_eq!(p.skipped, None);
    assert_eq!(p.http_status, Some(200));
    assert_eq!(p.final_status.as_deref(), Some("online"));
    assert!(p.model_sent);
    assert_eq!(p.platform_status.as_deref(), Some("repaired"));
    assert_eq!(p.provisioning, Some(true));
    assert!(p.waited_ms >= 500, "{p:?}");
    // The platform's own route, the model in the body, never the manual restart.
    let call = platform.one_ensure(TOKEN);
    assert_eq!(call.body, r#"{"model":"m-1"}"#);
    // The tenant's org id (the harness's MOLECULE_ORG_ID) goes as the platform's org header.
    assert_eq!(call.org_id.as_deref(), Some(crate::harness::TEST_ORG_ID));
    // The platform (not orgctl) wrote MODEL, and the JSON says it is seeded.
    assert_eq!(model_value(&db), "m-1");
    assert_eq!(r.json()["model_secret"], "seeded");
    assert_eq!(agent_status(&db), "online");
    assert_installed(&db);
    // The request is an audit row of its own, with the HTTP outcome the stand-in gave.
    assert_eq!(
        db.exec(
            "SELECT args->>'workspace_id', outcome, args->>'http_status', args->>'route',
                    args->>'model_sent' FROM orgctl.audit_log
              WHERE command = 'provision' ORDER BY id"
        )
        .trim(),
        format!(
            "{}|requested|200|/admin/org/platform-agent/ensure|true",
            agent_id(&db)
        )
    );
    // The measurement the README quotes: time from commit to online against the stand-in
    // (whose own delay is 700ms).
    eprintln!("provision: commit to online in {} ms", p.waited_ms);

    // The table form says so too; a second run never touches the running agent.
    let r = db
        .orgctl(&[
            "install-platform-agent",
            "--yes",
            "--provision",
            "--wait",
            "5s",
        ])
        .env("MOLECULE_PLATFORM_URL", &platform.url())
        .env("MOLECULE_ADMIN_TOKEN", TOKEN)
        .run();
    r.code(0);
    assert!(
        r.stdout.contains("Provision: skipped (online)"),
        "{}",
        r.stdout
    );
    assert_eq!(platform.calls().len(), 1, "the online agent got a request");
}

/// An install that provisions through ensure needs no --model: the platform seeds MODEL. And
/// `--wait` without a value waits the runtime's deadline (here it ends at online).
#[test]
fn an_install_that_provisions_needs_no_model_and_the_platform_seeds_it() {
    let db = TestDb::sample();
    let platform = live(&db, 300);
    let r = install(&db, &platform.url(), &["--wait"]);
    r.code(0);
    let p = provision_of(&r);
    assert!(p.requested);
    assert!(!p.model_sent);
    assert_eq!(p.final_status.as_deref(), Some("online"));
    assert_eq!(platform.one_ensure(TOKEN).body, "{}");
    assert_eq!(model_value(&db), ENSURE_DEFAULT_MODEL);
    assert_eq!(r.json()["model_secret"], "missing");
    assert_installed(&db);
    // The dry run agrees (no refusal), and without --provision the refusal stands.
    let fresh = TestDb::sample();
    let before = fresh.snapshot();
    let r = install(&fresh, &platform.url(), &["--dry-run"]);
    r.code(0);
    let r = fresh.orgctl(&["install-platform-agent", "--yes"]).run();
    r.code(3).one_line_error("--provision");
    assert_eq!(fresh.snapshot(), before);
}

/// The platform marks the agent failed: its recorded reason is shown, not a guess.
#[test]
fn a_failed_agent_shows_the_platforms_last_error() {
    let db = TestDb::sample();
    let platform = EnsureStandIn::start(
        &db.name,
        EnsureMode::Fail(Duration::from_millis(300)),
        false,
    );
    let r = install(&db, &platform.url(), &["--model", "m", "--wait", "30s"]);
    r.code(1).one_line_error(ENSURE_FAIL_REASON);
    assert!(r.stderr.contains("committed"), "{}", r.stderr);
    assert!(!r.stderr.contains("without a MODEL"), "{}", r.stderr);
    let p = provision_of(&r);
    assert!(p.requested);
    assert_eq!(p.final_status.as_deref(), Some("failed"));
    assert_eq!(p.last_error.as_deref(), Some(ENSURE_FAIL_REASON));
    assert_installed(&db);
    assert_eq!(agent_status(&db), "failed");
}

#[test]
fn the_deadline_passes_and_the_change_stays_committed() {
    let db = TestDb::sample();
    let platform = EnsureStandIn::start(&db.name, EnsureMode::Stuck, false);
    let start = Instant::now();
    let r = install(&db, &platform.url(), &["--model", "m", "--wait", "2s"]);
    r.code(1).one_line_error("stays committed");
    assert!(r.stderr.contains("still provisioning"), "{}", r.stderr);
    assert!(start.elapsed() < Duration::from_secs(20));
    let p = provision_of(&r);
    assert!(p.requested);
    assert_eq!(p.final_status.as_deref(), Some("provisioning"));
    assert!(p.waited_ms >= 2000, "{p:?}");
    assert_installed(&db);
    platform.one_ensure(TOKEN);
}

/// `awaiting_agent` is waited through; `hibernating` ends the wait (it will not come online).
#[test]
fn awaiting_agent_is_waited_through_and_hibernating_ends_the_wait() {
    let db = TestDb::sample();
    let platform = EnsureStandIn::start(
        &db.name,
        EnsureMode::Awaiting(Duration::from_millis(300), Duration::from_millis(1500)),
        false,
    );
    let r = install(&db, &platform.url(), &["--model", "m", "--wait", "30s"]);
    r.code(0);
    let p = provision_of(&r);
    assert_eq!(p.final_status.as_deref(), Some("online"));
    assert!(p.waited_ms >= 1500, "{p:?}");

    let db = TestDb::sample();
    let platform = EnsureStandIn::start(
        &db.name,
        EnsureMode::Hibernate(Duration::from_millis(300)),
        false,
    );
    let start = Instant::now();
    let r = install(&db, &platform.url(), &["--model", "m", "--wait", "60s"]);
    r.code(1).one_line_error("hibernating");
    assert!(start.elapsed() < Duration::from_secs(20));
    assert_eq!(
        provision_of(&r).final_status.as_deref(),
        Some("hibernating")
    );
    assert_installed(&db);
}

/// Never a request for an agent that runs or that the platform is starting (online, degraded,
/// provisioning — the platform's own restart, url '' — or awaiting_agent), nor one the platform
/// does not run; offline and failed ones are asked for.
#[test]
fn a_running_or_booting_agent_is_never_sent_a_request() {
    let db = TestDb::sample();
    db.orgctl(&["install-platform-agent", "--yes", "--model", "m"])
        .run()
        .code(0);
    let platform = live(&db, 200);
    for (status, url) in [
        ("online", "'http://a'"),
        ("degraded", "'http://a'"),
        ("provisioning", "''"),
        ("provisioning", "NULL"),
        ("awaiting_agent", "''"),
        ("hibernating", "NULL"),
        ("hibernated", "NULL"),
    ] {
        db.exec(&format!(
            "UPDATE workspaces SET status = '{status}', url = {url} WHERE kind = 'platform'"
        ));
        let r = install(&db, &platform.url(), &[]);
        r.code(0);
        let p = provision_of(&r);
        assert!(!p.requested, "{status}");
        assert_eq!(p.skipped.as_deref(), Some(status));
        assert_eq!(p.http_status, None);
        assert_eq!(p.final_status.as_deref(), Some(status));
    }
    // With --wait: running is fine; the platform starting it is watched (to the deadline here).
    db.exec("UPDATE workspaces SET status = 'online' WHERE kind = 'platform'");
    install(&db, &platform.url(), &["--wait", "3s"]).code(0);
    db.exec("UPDATE workspaces SET status = 'provisioning', url = '' WHERE kind = 'platform'");
    let r = install(&db, &platform.url(), &["--wait", "2s"]);
    r.code(1).one_line_error("still provisioning");
    assert!(!provision_of(&r).requested);
    assert!(platform.calls().is_empty(), "{:?}", platform.calls());

    // A --model for an agent ensure is not called for is refused before anything changes.
    let before = db.snapshot();
    let r = install(&db, &platform.url(), &["--model", "m-1"]);
    r.code(3)
        .one_line_error("cannot be set through the platform");
    let r = install(&db, &platform.url(), &["--model", "m-1", "--dry-run"]);
    r.code(3)
        .one_line_error("cannot be set through the platform");
    // The model it already has: nothing to set, nothing refused, nothing sent.
    let r = install(&db, &platform.url(), &["--model", "m"]);
    r.code(0);
    assert_eq!(provision_of(&r).skipped.as_deref(), Some("provisioning"));
    assert_eq!(db.snapshot(), before);
    assert!(platform.calls().is_empty());

    // An offline agent (already installed, nothing to change) is provisioned.
    db.exec("UPDATE workspaces SET status = 'offline', url = NULL WHERE kind = 'platform'");
    let r = install(&db, &platform.url(), &["--wait", "20s"]);
    r.code(0);
    let p = provision_of(&r);
    assert!(p.requested);
    assert_eq!(p.final_status.as_deref(), Some("online"));
    platform.one_ensure(TOKEN);
}

/// Ctrl-C while waiting: exit 130, the committed change is reported (stdout and stderr).
#[test]
fn ctrl_c_while_waiting_exits_130_and_reports_the_committed_change() {
    let db = TestDb::sample();
    let platform = EnsureStandIn::start(&db.name, EnsureMode::Stuck, false);
    let mut cmd = db
        .orgctl(&[
            "install-platform-agent",
            "--yes",
            "-o",
            "json",
            "--model",
            "m",
            "--provision",
            "--wait",
            "60s",
        ])
        .env("MOLECULE_PLATFORM_URL", &platform.url())
        .env("MOLECULE_ADMIN_TOKEN", TOKEN)
        .command();
    cmd.stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => panic!("{e}"),
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while platform.calls().is_empty() {
        assert!(Instant::now() < deadline, "no provision request was made");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(1500));
    orgctl::testing::sys::kill(child.id() as i32, libc::SIGINT);
    let out = match child.wait_with_output() {
        Ok(o) => o,
        Err(e) => panic!("{e}"),
    };
    let r = Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).to_string(),
        stderr: String::from_utf8_lossy(&out.stderr).to_string(),
    };
    r.code(130).one_line_error("committed");
    assert!(
        r.stderr.contains("waiting for the platform agent"),
        "{}",
        r.stderr
    );
    assert!(!r.stderr.contains("nothing was changed"), "{}", r.stderr);
    let v = r.json();
    assert_eq!(v["changed"], true);
    let p = provision_of(&r);
    assert!(p.requested);
    assert_eq!(p.final_status.as_deref(), Some("provisioning"));
    assert!(p.waited_ms >= 1000 && p.waited_ms < 30_000, "{p:?}");
    assert_installed(&db);
}

/// The platform refuses or is unreachable: exit 1 after the commit, naming the HTTP outcome;
/// its response body (which echoes the bearer here) is never shown.
#[test]
fn a_refused_or_unreachable_platform_is_exit_1_after_the_commit() {
    let fixture = TestDb::sample();
    let cases: Vec<(Option<EnsureMode>, Option<u16>, &str)> = vec![
        (
            Some(EnsureMode::Answer(401, "UNAUTHORIZED")),
            Some(401),
            "HTTP 401",
        ),
        (
            Some(EnsureMode::Answer(404, "NOT_FOUND")),
            Some(404),
            "HTTP 404",
        ),
        (
            Some(EnsureMode::Answer(409, "CONFLICT")),
            Some(409),
            "conflict",
        ),
        (Some(EnsureMode::Answer(500, "X")), Some(500), "HTTP 500"),
        (
            Some(EnsureMode::Answer(503, "X")),
            Some(503),
            "failed the provision request",
        ),
        (None, None, "did not accept"),
    ];
    for (mode, code, needle) in cases {
        let db = fixture.copy_of();
        let standin = mode
            .clone()
            .map(|m| EnsureStandIn::start(&db.name, m, false));
        let url = standin.as_ref().map(|s| s.url()).unwrap_or_else(absent_url);
        let r = install(&db, &url, &["--model", "m", "--wait", "10s"]);
        r.code(1).one_line_error(needle);
        assert!(r.stderr.contains("committed"), "{}", r.stderr);
        assert!(!r.stderr.contains("ensure failed for"), "{}", r.stderr);
        assert_no_token(&r);
        let p = provision_of(&r);
        assert!(p.requested, "{mode:?}");
        assert_eq!(p.http_status, code, "{mode:?}");
        assert_eq!(p.waited_ms, 0, "no wait after a refused request");
        // Nothing claimed: MODEL was to be set by the platform, which did not.
        assert_eq!(r.json()["model_secret"], "missing", "{mode:?}");
        assert_eq!(model_value(&db), "<none>");
        assert_installed(&db);
        // The failed request is audited too, with the status the platform answered.
        assert_eq!(
            db.exec(
                "SELECT outcome, coalesce(args->>'http_status', '-') FROM orgctl.audit_log
                  WHERE command = 'provision'"
            )
            .trim(),
            format!(
                "failed|{}",
                code.map(|c| c.to_string()).unwrap_or("-".into())
            ),
            "{mode:?}"
        );
    }
}

/// A model the platform does not accept for the agent's runtime: exit 3 with the platform's
/// message (control characters made harmless), MODEL not set and not claimed.
#[test]
fn a_model_the_platform_refuses_is_exit_3_and_nothing_is_claimed() {
    let db = TestDb::sample();
    let platform = live(&db, 100);
    let r = install(
        &db,
        &platform.url(),
        &["--model", "claude-sonnet-4-5", "--wait", "10s"],
    );
    r.code(3)
        .one_line_error("is not registered for runtime hermes");
    assert!(!r.stderr.contains('\u{1b}'), "{:?}", r.stderr);
    assert!(
        r.stderr.contains("UNREGISTERED_MODEL_FOR_RUNTIME"),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("MODEL was not set"), "{}", r.stderr);
    let p = provision_of(&r);
    assert_eq!(p.http_status, Some(422));
    assert_eq!(
        p.error_code.as_deref(),
        Some("UNREGISTERED_MODEL_FOR_RUNTIME")
    );
    assert_eq!(r.json()["model_secret"], "missing");
    assert_eq!(model_value(&db), "<none>");
    assert_installed(&db);
    // A runtime the platform gives no model.
    db.exec(
        "UPDATE workspaces SET runtime = 'claude-code', status = 'offline' WHERE kind = 'platform'",
    );
    let r = install(&db, &platform.url(), &["--model", "m"]);
    r.code(3).one_line_error("RUNTIME_UNSUPPORTED");
    assert_eq!(model_value(&db), "<none>");
}

/// A tenant server addressed directly needs the org header: without an org id the platform's
/// 400 is explained; with MOLECULE_ORG_ID the header is sent and the provision goes through.
#[test]
fn the_org_id_header_is_sent_when_known() {
    let db = TestDb::sample();
    let platform =
        EnsureStandIn::start(&db.name, EnsureMode::Live(Duration::from_millis(100)), true);
    // A self-hosted tenant has no org id: no header, and the tenant server's 400 is explained.
    let r = db
        .orgctl(&[
            "install-platform-agent",
            "--yes",
            "-o",
            "json",
            "--provision",
            "--self-hosted",
            "--model",
            "m",
        ])
        .env_remove("MOLECULE_ORG_ID")
        .env("MOLECULE_PLATFORM_URL", &platform.url())
        .env("MOLECULE_ADMIN_TOKEN", TOKEN)
        .run();
    r.code(1).one_line_error("MOLECULE_ORG_ID");
    assert!(
        r.stderr.contains("TENANT_ORG_HEADER_REQUIRED"),
        "{}",
        r.stderr
    );
    assert_eq!(provision_of(&r).http_status, Some(400));
    assert_installed(&db);
    // Nothing started the agent: the platform's install leaves such a row offline (orgctl's
    // row takes the column default until it inserts the same).
    db.exec("UPDATE workspaces SET status = 'offline' WHERE kind = 'platform' AND status = 'provisioning'");
    let r = db
        .orgctl(&[
            "install-platform-agent",
            "--yes",
            "-o",
            "json",
            "--provision",
            "--model",
            "m",
            "--wait",
            "20s",
        ])
        .env("MOLECULE_PLATFORM_URL", &platform.url())
        .env("MOLECULE_ADMIN_TOKEN", TOKEN)
        .env("MOLECULE_ORG_ID", "  org-7f3a  ")
        .run();
    r.code(0);
    assert_eq!(provision_of(&r).final_status.as_deref(), Some("online"));
    let calls = platform.calls();
    assert_eq!(calls.len(), 2);
    assert_eq!(calls[1].org_id.as_deref(), Some("org-7f3a"));
    // An org id that cannot be a header is refused before anything changes.
    let fresh = TestDb::sample();
    let before = fresh.snapshot();
    fresh
        .orgctl(&[
            "install-platform-agent",
            "--yes",
            "--provision",
            "--model",
            "m",
        ])
        .env("MOLECULE_PLATFORM_URL", &platform.url())
        .env("MOLECULE_ADMIN_TOKEN", TOKEN)
        .env("MOLECULE_ORG_ID", "org\u{7}x")
        .run()
        .code(2)
        .one_line_error("MOLECULE_ORG_ID");
    assert_eq!(fresh.snapshot(), before);
    assert_eq!(platform.calls().len(), 2);
}

/// 200 with `provisioning: false`: "the platform did not provision", and why.
#[test]
fn the_platform_not_provisioning_is_said_with_its_reason() {
    let db = TestDb::sample();
    let platform = EnsureStandIn::start(&db.name, EnsureMode::NotProvisioning, false);
    let r = install(&db, &platform.url(), &["--model", "m", "--wait", "10s"]);
    r.code(1).one_line_error("the platform did not provision");
    assert!(r.stderr.contains("'exists'"), "{}", r.stderr);
    let p = provision_of(&r);
    assert_eq!(p.provisioning, Some(false));
    assert_eq!(p.platform_status.as_deref(), Some("exists"));
    assert!(p.agent_status.is_some(), "{p:?}");
    assert_eq!(p.waited_ms, 0);
    assert_installed(&db);
}

/// A platform that accepts the connection and never answers: the call's own timeout (20s)
/// ends it, exit 1 after the commit, no wait.
#[test]
fn a_hanging_platform_times_out_after_the_commit() {
    let db = TestDb::sample();
    let platform = EnsureStandIn::start(&db.name, EnsureMode::Hang, false);
    let start = Instant::now();
    let r = install(&db, &platform.url(), &["--model", "m", "--wait", "60s"]);
    r.code(1).one_line_error("did not accept");
    assert!(
        start.elapsed() < Duration::from_secs(45),
        "{:?}",
        start.elapsed()
    );
    let p = provision_of(&r);
    assert!(p.requested);
    assert_eq!(p.http_status, None);
    assert_eq!(p.waited_ms, 0);
    assert_installed(&db);
}

/// Without --provision orgctl writes MODEL itself: it warns that the value is unvalidated and
/// applies at the next provision, and when a MOLECULE_MODEL secret outranks it.
#[test]
fn writing_model_directly_warns() {
    let db = TestDb::sample();
    let r = db
        .orgctl(&["install-platform-agent", "--yes", "--model", "m"])
        .run();
    r.code(0);
    assert!(r.stderr.contains("has not validated"), "{}", r.stderr);
    assert!(r.stderr.contains("next provision"), "{}", r.stderr);
    assert!(!r.stderr.contains("MOLECULE_MODEL"), "{}", r.stderr);
    db.exec(
        "INSERT INTO global_secrets (key, encrypted_value, encryption_version)
         VALUES ('MOLECULE_MODEL', convert_to('other', 'UTF8'), 0)",
    );
    let r = db
        .orgctl(&[
            "install-platform-agent",
            "--yes",
            "--model",
            "m-1",
            "--dry-run",
        ])
        .run();
    r.code(0);
    assert!(
        r.stderr.contains("MOLECULE_MODEL secret is set globally"),
        "{}",
        r.stderr
    );
    // Through the platform, neither warning.
    let platform = live(&db, 100);
    db.exec("UPDATE workspaces SET status = 'offline' WHERE kind = 'platform'");
    let r = install(&db, &platform.url(), &["--model", "m-1"]);
    r.code(0);
    assert!(!r.stderr.contains("has not validated"), "{}", r.stderr);
}

#[test]
fn bad_provision_inputs_change_nothing() {
    let db = TestDb::sample();
    let before = db.snapshot();
    let platform = live(&db, 0);
    // --wait without --provision: a usage error.
    db.orgctl(&[
        "install-platform-agent",
        "--yes",
        "--model",
        "m",
        "--wait",
        "5s",
    ])
    .run()
    .code(2);
    // No platform URL.
    db.orgctl(&[
        "install-platform-agent",
        "--yes",
        "--model",
        "m",
        "--provision",
    ])
    .env("MOLECULE_ADMIN_TOKEN", TOKEN)
    .run()
    .code(2)
    .one_line_error("--platform-url");
    // No admin token.
    db.orgctl(&[
        "install-platform-agent",
        "--yes",
        "--model",
        "m",
        "--provision",
    ])
    .env("MOLECULE_PLATFORM_URL", &platform.url())
    .run()
    .code(2)
    .one_line_error("MOLECULE_ADMIN_TOKEN");
    // A URL that is not one.
    db.orgctl(&[
        "install-platform-agent",
        "--yes",
        "--model",
        "m",
        "--provision",
        "--platform-url",
        "ftp://x",
    ])
    .env("MOLECULE_ADMIN_TOKEN", TOKEN)
    .run()
    .code(2)
    .one_line_error("platform URL");
    // A bad duration.
    db.orgctl(&[
        "install-platform-agent",
        "--provision",
        "--wait",
        "soon",
        "--platform-url",
        &platform.url(),
    ])
    .env("MOLECULE_ADMIN_TOKEN", TOKEN)
    .run()
    .code(2);
    assert_eq!(db.snapshot(), before);
    assert!(platform.calls().is_empty());

    // A dry run never asks the platform.
    let r = install(&db, &platform.url(), &["--model", "m", "--dry-run"]);
    r.code(0);
    let p = provision_of(&r);
    assert!(!p.requested);
    assert_eq!(p.skipped.as_deref(), Some("dry-run"));
    assert_eq!(db.snapshot(), before);
    assert!(platform.calls().is_empty());
}

// ---------------------------------------------------------------------------------------------
// backfill run --provision

struct TenantsFile(PathBuf);

impl TenantsFile {
    fn new(text: &str) -> Self {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let path = std::env::temp_dir().join(format!(
            "orgctl-provision-{}-{}.txt",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        if let Err(e) = std::fs::write(&path, text) {
            panic!("{e}");
        }
        TenantsFile(path)
    }

    fn arg(&self) -> String {
        self.0.display().to_string()
    }
}

impl Drop for TenantsFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[test]
fn backfill_provisions_tenants_with_a_platform_url_and_skips_the_others() {
    let a = TestDb::sample();
    let b = TestDb::sample();
    let c = TestDb::sample();
    let pa = live(&a, 300);
    let pc = live(&c, 300);
    let fleet = TenantsFile::new(&format!(
        "# a and c carry their platform URL\nacme {} {}\nbeta {}\ngamma\t{}\t{}/\n",
        a.url,
        pa.url(),
        b.url,
        c.url,
        pc.url()
    ));
    let report =
        std::env::temp_dir().join(format!("orgctl-prov-report-{}.json", std::process::id()));
    let r = Cmd::new(&[
        "backfill",
        "run",
        "--tenants",
        &fleet.arg(),
        "--model",
        "m",
        "--yes",
        "--provision",
        "--wait",
        "30s",
        "--report",
        &report.display().to_string(),
    ])
    .env("MOLECULE_ADMIN_TOKEN", TOKEN)
    .env("MOLECULE_ORG_ID", "org-fleet-1")
    .run();
    r.code(0);
    assert_no_token(&r);
    // beta has no platform URL: orgctl writes its MODEL itself, and says it is unvalidated.
    assert!(r.stderr.contains("has not validated"), "{}", r.stderr);
    assert!(r.stdout.contains("provision"), "{}", r.stdout);
    assert!(
        r.stdout.contains("skipped (no platform URL)"),
        "{}",
        r.stdout
    );
    assert!(r.stdout.contains("online after"), "{}", r.stdout);
    // Each tenant's own platform got the model to validate and set, and the org header.
    for p in [&pa, &pc] {
        let call = p.one_ensure(TOKEN);
        assert_eq!(call.body, r#"{"model":"m"}"#);
        assert_eq!(call.org_id.as_deref(), Some("org-fleet-1"));
    }
    for db in [&a, &b, &c] {
        assert_eq!(model_value(db), "m");
    }
    assert_eq!(agent_status(&a), "online");
    // Installed without a platform URL: offline, as the platform inserts it.
    assert_eq!(agent_status(&b), "offline");
    assert_eq!(agent_status(&c), "online");
    for db in [&a, &b, &c] {
        assert_installed(db);
    }
    let text = match std::fs::read_to_string(&report) {
        Ok(t) => t,
        Err(e) => panic!("{e}"),
    };
    let _ = std::fs::remove_file(&report);
    let v: serde_json::Value = match serde_json::from_str(&text) {
        Ok(v) => v,
        Err(e) => panic!("{e}"),
    };
    let by_name = |n: &str| -> ProvisionJson {
        let t = v["tenants"]
            .as_array()
            .and_then(|ts| ts.iter().find(|t| t["tenant"] == n).cloned())
            .unwrap_or_default();
        assert_eq!(t["status"], "applied", "{t}");
        match serde_json::from_value(t["provision"].clone()) {
            Ok(p) => p,
            Err(e) => panic!("{n}: {e}: {t}"),
        }
    };
    let pa_ = by_name("acme");
    assert!(pa_.requested);
    assert_eq!(pa_.final_status.as_deref(), Some("online"));
    let pb = by_name("beta");
    assert!(!pb.requested);
    assert_eq!(pb.skipped.as_deref(), Some("no platform URL"));
    assert_eq!(by_name("gamma").http_status, Some(200));
    assert_eq!(v["totals"]["provision_failed"], 0);
}

/// A tenant whose agent does not come online is reported on its line (exit 1), the others are
/// unaffected and every tenant stays committed.
#[test]
fn backfill_reports_a_tenant_whose_agent_failed() {
    let a = TestDb::sample();
    let b = TestDb::sample();
    let pa = live(&a, 200);
    let pb = EnsureStandIn::start(&b.name, EnsureMode::Answer(500, "X"), false);
    let fleet = TenantsFile::new(&format!(
        "acme {} {}\nbeta {} {}\n",
        a.url,
        pa.url(),
        b.url,
        pb.url()
    ));
    let r = Cmd::new(&[
        "backfill",
        "run",
        "--tenants",
        &fleet.arg(),
        "--model",
        "m",
        "--yes",
        "-o",
        "json",
        "--provision",
        "--wait",
        "30s",
    ])
    .env("MOLECULE_ADMIN_TOKEN", TOKEN)
    .run();
    r.code(1).one_line_error("beta");
    let v = r.json();
    assert_eq!(v["totals"]["applied"], 2);
    assert_eq!(v["totals"]["provision_failed"], 1);
    let beta = &v["tenants"][1];
    assert_eq!(beta["provision"]["http_status"], 500, "{beta}");
    assert!(
        beta["provision_error"]
            .as_str()
            .unwrap_or_default()
            .contains("HTTP 500"),
        "{beta}"
    );
    assert_eq!(agent_status(&a), "online");
    assert_installed(&a);
    assert_installed(&b);
}

/// Per tenant: a model its platform refuses is that tenant's provision error and is not
/// claimed in the report; where orgctl writes MODEL itself and a MOLECULE_MODEL secret
/// outranks it, the tenant's note says so.
#[test]
fn backfill_a_refused_model_is_not_claimed_and_an_outranking_secret_is_noted() {
    let a = TestDb::sample();
    let b = TestDb::sample();
    b.exec(
        "INSERT INTO global_secrets (key, encrypted_value, encryption_version)
         VALUES ('MOLECULE_MODEL', convert_to('other', 'UTF8'), 0)",
    );
    let pa = live(&a, 100);
    let fleet = TenantsFile::new(&format!("acme {} {}\nbeta {}\n", a.url, pa.url(), b.url));
    let r = Cmd::new(&[
        "backfill",
        "run",
        "--tenants",
        &fleet.arg(),
        "--model",
        "not-for-hermes",
        "--yes",
        "-o",
        "json",
        "--provision",
    ])
    .env("MOLECULE_ADMIN_TOKEN", TOKEN)
    .run();
    r.code(1).one_line_error("acme");
    assert_no_token(&r);
    let v = r.json();
    let acme = &v["tenants"][0];
    assert_eq!(acme["status"], "applied", "{acme}");
    assert_eq!(acme["model_secret"], "missing", "{acme}");
    assert_eq!(acme["provision"]["http_status"], 422, "{acme}");
    assert_eq!(
        acme["provision"]["error_code"], "UNREGISTERED_MODEL_FOR_RUNTIME",
        "{acme}"
    );
    assert!(
        acme["provision_error"]
            .as_str()
            .unwrap_or_default()
            .contains("not registered for runtime hermes"),
        "{acme}"
    );
    assert_eq!(model_value(&a), "<none>");
    let beta = &v["tenants"][1];
    assert_eq!(beta["model_secret"], "seeded", "{beta}");
    assert!(
        beta["note"]
            .as_str()
            .unwrap_or_default()
            .contains("MOLECULE_MODEL secret is set globally"),
        "{beta}"
    );
    assert_eq!(model_value(&b), "not-for-hermes");
}

#[test]
fn backfill_bad_platform_urls_and_missing_token_change_nothing() {
    let a = TestDb::sample();
    let before = a.snapshot();
    let platform = live(&a, 0);
    // A malformed third field: exit 2 naming the line.
    for third in ["ftp://h", "not-a-url", "http://h/?x=1"] {
        let fleet = TenantsFile::new(&format!("# fleet\nacme {} {third}\n", a.url));
        Cmd::new(&[
            "backfill",
            "run",
            "--tenants",
            &fleet.arg(),
            "--yes",
            "--model",
            "m",
        ])
        .env("MOLECULE_ADMIN_TOKEN", TOKEN)
        .run()
        .code(2)
        .one_line_error("line 2: the third field is not a platform URL");
    }
    // --provision with a platform URL but no admin token.
    let fleet = TenantsFile::new(&format!("acme {} {}\n", a.url, platform.url()));
    Cmd::new(&[
        "backfill",
        "run",
        "--tenants",
        &fleet.arg(),
        "--yes",
        "--model",
        "m",
        "--provision",
    ])
    .run()
    .code(2)
    .one_line_error("MOLECULE_ADMIN_TOKEN");
    // --wait without --provision.
    Cmd::new(&[
        "backfill",
        "run",
        "--tenants",
        &fleet.arg(),
        "--yes",
        "--wait",
        "5s",
    ])
    .run()
    .code(2);
    // An org id that cannot travel as a header.
    Cmd::new(&[
        "backfill",
        "run",
        "--tenants",
        &fleet.arg(),
        "--yes",
        "--provision",
    ])
    .env("MOLECULE_ADMIN_TOKEN", TOKEN)
    .env("MOLECULE_ORG_ID", "org\u{1b}[2J")
    .run()
    .code(2)
    .one_line_error("MOLECULE_ORG_ID");
    // status sends nothing: the org id is not its business.
    let r = a
        .orgctl(&["status"])
        .env("MOLECULE_ORG_ID", "org\u{1b}[2J")
        .run();
    assert_ne!(r.code, 2, "{}", r.stderr);
    assert_eq!(a.snapshot(), before);
    assert!(platform.calls().is_empty());
}

// ---------------------------------------------------------------------------------------------
// status

#[test]
fn status_warns_while_the_agent_is_not_running_without_failing_the_gate() {
    let db = TestDb::sample();
    // The sample's token on a non-root is a real finding (exit 1) that install leaves alone.
    db.exec(
        "UPDATE org_api_tokens SET org_id = NULL WHERE id = '70000000-0000-4000-8000-000000000008'",
    );
    db.orgctl(&["install-platform-agent", "--yes", "--model", "m"])
        .run()
        .code(0);
    let check = |db: &TestDb| -> (i32, serde_json::Value, serde_json::Value) {
        let r = db.orgctl(&["status", "-o", "json"]).run();
        let v = r.json();
        let c = v["checks"]
            .as_array()
            .and_then(|cs| {
                cs.iter()
                    .find(|c| c["name"] == "platform_agent_running")
                    .cloned()
            })
            .unwrap_or_default();
        (r.code, c, v["platform_agent"]["status"].clone())
    };
    let (code, c, status) = check(&db);
    assert_eq!(code, 0, "a warning never fails the gate");
    assert_eq!(c["severity"], "warning");
    assert_eq!(c["ok"], false);
    assert_eq!(status, "offline");
    let table = db.orgctl(&["status"]).run();
    table.code(0);
    assert!(
        table.stdout.contains("platform_agent_running"),
        "{}",
        table.stdout
    );
    assert!(table.stdout.contains("status offline"), "{}", table.stdout);
    for s in ["online", "degraded"] {
        db.exec(&format!(
            "UPDATE workspaces SET status = '{s}' WHERE kind = 'platform'"
        ));
        let (code, c, status) = check(&db);
        assert_eq!(code, 0);
        assert_eq!(c["ok"], true, "{s}");
        assert_eq!(status, s);
    }
    db.exec("UPDATE workspaces SET status = 'failed' WHERE kind = 'platform'");
    let (code, c, _) = check(&db);
    assert_eq!(code, 0);
    assert_eq!(c["ok"], false);
}

/// `status` recommends --provision only where it acts, and its model_secret check follows the
/// platform: an agent without MODEL that nothing starts is a warning (--provision has the
/// platform seed MODEL); one that would register without it (running or being started) fails.
#[test]
fn status_recommends_provision_only_where_it_acts_and_judges_model_as_the_platform() {
    let db = TestDb::sample();
    db.exec(
        "UPDATE org_api_tokens SET org_id = NULL WHERE id = '70000000-0000-4000-8000-000000000008'",
    );
    db.orgctl(&["install-platform-agent", "--yes", "--model", "m"])
        .run()
        .code(0);
    let check = |db: &TestDb, name: &str| -> (i32, serde_json::Value) {
        let r = db.orgctl(&["status", "-o", "json"]).run();
        let v = r.json();
        let c = v["checks"]
            .as_array()
            .and_then(|cs| cs.iter().find(|c| c["name"] == name).cloned())
            .unwrap_or_default();
        (r.code, c)
    };
    for (status, url, recommends) in [
        ("offline", "NULL", true),
        ("failed", "NULL", true),
        ("provisioning", "''", false),
        ("provisioning", "NULL", false),
        ("awaiting_agent", "''", false),
        ("hibernating", "NULL", false),
        ("paused", "NULL", false),
    ] {
        db.exec(&format!(
            "UPDATE workspaces SET status = '{status}', url = {url} WHERE kind = 'platform'"
        ));
        let (code, c) = check(&db, "platform_agent_running");
        assert_eq!(code, 0, "{status}");
        let msg = c["message"].as_str().unwrap_or_default().to_string();
        assert_eq!(
            msg.contains("--provision --wait"),
            recommends,
            "{status}: {msg}"
        );
    }
    db.exec(
        "DELETE FROM workspace_secrets WHERE key = 'MODEL'
            AND workspace_id = (SELECT id FROM workspaces WHERE kind = 'platform')",
    );
    for (status, code, severity) in [
        ("offline", 0, "warning"),
        ("failed", 0, "warning"),
        ("online", 1, "error"),
        ("provisioning", 1, "error"),
    ] {
        db.exec(&format!(
            "UPDATE workspaces SET status = '{status}' WHERE kind = 'platform'"
        ));
        let (got, c) = check(&db, "model_secret");
        assert_eq!(got, code, "{status}: {c}");
        assert_eq!(c["ok"], false, "{status}");
        assert_eq!(c["severity"], severity, "{status}: {c}");
    }
}

/// Ctrl-C while a backfill waits for an agent: the wait stops, the tenant stays applied and
/// its provision result (the status it was in) is in the summary; exit 130.
#[test]
fn ctrl_c_while_a_backfill_waits_reports_the_applied_tenant() {
    let a = TestDb::sample();
    let pa = EnsureStandIn::start(&a.name, EnsureMode::Stuck, false);
    let fleet = TenantsFile::new(&format!("acme {} {}\n", a.url, pa.url()));
    let mut cmd = Cmd::new(&[
        "backfill",
        "run",
        "--tenants",
        &fleet.arg(),
        "--model",
        "m",
        "--yes",
        "-o",
        "json",
        "--provision",
        "--wait",
        "60s",
    ])
    .env("MOLECULE_ADMIN_TOKEN", TOKEN)
    .command();
    cmd.stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => panic!("{e}"),
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while pa.calls().is_empty() {
        assert!(Instant::now() < deadline, "no provision request was made");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(1200));
    orgctl::testing::sys::kill(child.id() as i32, libc::SIGINT);
    let out = match child.wait_with_output() {
        Ok(o) => o,
        Err(e) => panic!("{e}"),
    };
    let r = Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).to_string(),
        stderr: String::from_utf8_lossy(&out.stderr).to_string(),
    };
    r.code(130);
    let v = r.json();
    let t = &v["tenants"][0];
    assert_eq!(t["status"], "applied", "{t}");
    assert_eq!(t["provision"]["requested"], true, "{t}");
    assert_eq!(t["provision"]["final_status"], "provisioning", "{t}");
    assert!(
        t["provision_error"]
            .as_str()
            .unwrap_or_default()
            .contains("interrupted"),
        "{t}"
    );
    assert_installed(&a);
}

/// The README's runbook: a run made without --provision is resumed with it; the install part is
/// skipped (done under the run id) and the agent is provisioned and comes online.
#[test]
fn resuming_a_run_with_provision_brings_its_agents_to_life() {
    let a = TestDb::sample();
    let pa = live(&a, 200);
    let fleet = TenantsFile::new(&format!("acme {} {}\n", a.url, pa.url()));
    let base = [
        "backfill",
        "run",
        "--tenants",
        &fleet.arg(),
        "--model",
        "m",
        "--yes",
        "--run-id",
        "resume-prov-1",
    ];
    Cmd::new(&base).run().code(0);
    assert!(pa.calls().is_empty());
    assert_eq!(agent_status(&a), "offline");
    let mut args = base.to_vec();
    args.extend_from_slice(&["-o", "json", "--provision", "--wait", "20s"]);
    let r = Cmd::new(&args).env("MOLECULE_ADMIN_TOKEN", TOKEN).run();
    r.code(0);
    let t = &r.json()["tenants"][0];
    assert_eq!(t["status"], "skipped", "{t}");
    assert_eq!(t["provision"]["final_status"], "online", "{t}");
    pa.one_ensure(TOKEN);
}

/// A fleet run with `--provision` whose tenant line names no platform URL cannot provision that
/// tenant, so a missing MODEL is refused — and the refusal says to give the line its platform
/// URL, not to pass the `--provision` already given.
#[test]
fn a_missing_model_on_a_line_without_a_platform_url_says_to_add_the_url() {
    let db = TestDb::sample();
    let before = db.snapshot();
    let fleet = crate::harness::tenants_file("no-platform-url", &format!("alpha {}\n", db.url));
    let f = fleet.to_string_lossy().to_string();
    let r = db
        .orgctl(&[
            "backfill",
            "run",
            "--tenants",
            &f,
            "--provision",
            "--dry-run",
        ])
        .run();
    let _ = std::fs::remove_file(&fleet);
    r.code(1);
    let said = format!("{}\n{}", r.stdout, r.stderr);
    assert!(said.contains("would have no MODEL secret"), "{said}");
    assert!(said.contains("platform URL (the third field)"), "{said}");
    assert!(
        !said.contains("or --provision (the platform seeds"),
        "{said}"
    );
    assert_eq!(db.snapshot(), before, "a dry run changed the tenant");
}
