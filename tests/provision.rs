//! Bringing the agent to life (SPEC §9): `--provision` / `--wait` on install-platform-agent and
//! backfill run, the tenants file's platform URL, and status's `platform_agent_running`, against
//! real PostgreSQL and a loopback stand-in of the platform API.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::Deserialize;

use crate::harness::{server, Cmd, Run, TestDb};

const TOKEN: &str = "adm-provision-Tok3n-5ecret";

/// The `provision` object (SPEC §9), rejecting unknown fields.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProvisionJson {
    requested: bool,
    skipped: Option<String>,
    http_status: Option<u16>,
    final_status: Option<String>,
    waited_ms: u64,
}

fn provision_of(r: &Run) -> ProvisionJson {
    let v = r.json();
    match serde_json::from_value(v["provision"].clone()) {
        Ok(p) => p,
        Err(e) => panic!("no provision object ({e}):\n{}\n{}", r.stdout, r.stderr),
    }
}

// ---------------------------------------------------------------------------------------------
// The platform stand-in (127.0.0.1 only). On POST /workspaces/{id}/restart it behaves as told:
// `Live` sets the workspace `provisioning`, answers 200, and after `delay` sets it `online` when
// it has a MODEL workspace secret and `failed` when it has none (the registration gate);
// `Stuck` sets it `provisioning` and never moves it on; `Answer(code)` answers that code and
// changes nothing; `Hang` never answers.

#[derive(Clone, Copy, Debug)]
enum Mode {
    Live(Duration),
    Stuck,
    Answer(u16),
    Hang,
}

struct StandIn {
    addr: SocketAddr,
    calls: Arc<Calls>,
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl StandIn {
    fn start(db: &str, mode: Mode) -> Self {
        let listener = match TcpListener::bind("127.0.0.1:0") {
            Ok(l) => l,
            Err(e) => panic!("bind: {e}"),
        };
        let addr = match listener.local_addr() {
            Ok(a) => a,
            Err(e) => panic!("{e}"),
        };
        let calls = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (c, s, db) = (calls.clone(), stop.clone(), db.to_string());
        let handle = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if s.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(stream) = conn else { continue };
                let (c, s, db) = (c.clone(), s.clone(), db.clone());
                std::thread::spawn(move || serve(stream, &c, &s, &db, mode));
            }
        });
        StandIn {
            addr,
            calls,
            stop,
            handle: Some(handle),
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// (method, path, Authorization) of every request.
    fn calls(&self) -> Vec<(String, String, Option<String>)> {
        match self.calls.lock() {
            Ok(c) => c.clone(),
            Err(e) => panic!("{e}"),
        }
    }

    /// Exactly one well-formed provision request, for `id`.
    #[track_caller]
    fn assert_one_request_for(&self, id: &str) {
        let calls = self.calls();
        assert_eq!(calls.len(), 1, "{calls:?}");
        assert_eq!(calls[0].0, "POST");
        assert_eq!(calls[0].1, format!("/workspaces/{id}/restart"));
        assert_eq!(
            calls[0].2.as_deref(),
            Some(format!("Bearer {TOKEN}").as_str())
        );
    }
}

impl Drop for StandIn {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

type Calls = Mutex<Vec<(String, String, Option<String>)>>;

fn serve(mut stream: TcpStream, calls: &Calls, stop: &AtomicBool, db: &str, mode: Mode) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let mut lines = head.split("\r\n");
    let mut first = lines.next().unwrap_or_default().split(' ');
    let method = first.next().unwrap_or_default().to_string();
    let path = first.next().unwrap_or_default().to_string();
    let auth = lines.find_map(|l| {
        l.split_once(':')
            .filter(|(k, _)| k.eq_ignore_ascii_case("authorization"))
            .map(|(_, v)| v.trim().to_string())
    });
    if let Ok(mut c) = calls.lock() {
        c.push((method, path.clone(), auth));
    }
    // Only a UUID ever reaches the SQL below.
    let id = path
        .strip_prefix("/workspaces/")
        .and_then(|p| p.strip_suffix("/restart"))
        .and_then(|p| uuid::Uuid::parse_str(p).ok());
    let respond = |stream: &mut TcpStream, status: &str| {
        let body = "{}";
        let _ = stream.write_all(
            format!(
                "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        );
    };
    let Some(id) = id else {
        return respond(&mut stream, "404 Not Found");
    };
    let set = |status: &str| {
        let _ = server().psql(
            db,
            &format!(
                "UPDATE workspaces SET status = {status}, updated_at = clock_timestamp() WHERE id = '{id}'"
            ),
        );
    };
    match mode {
        Mode::Live(delay) => {
            set("'provisioning'");
            respond(&mut stream, "200 OK");
            std::thread::sleep(delay);
            set("CASE WHEN EXISTS (SELECT 1 FROM workspace_secrets s
                                    WHERE s.workspace_id = workspaces.id AND s.key = 'MODEL')
                      THEN 'online' ELSE 'failed' END::workspace_status");
        }
        Mode::Stuck => {
            set("'provisioning'");
            respond(&mut stream, "200 OK");
        }
        Mode::Answer(code) => {
            let text = match code {
                401 => "401 Unauthorized",
                404 => "404 Not Found",
                409 => "409 Conflict",
                _ => "500 Internal Server Error",
            };
            respond(&mut stream, text);
        }
        Mode::Hang => {
            while !stop.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
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

#[test]
fn a_created_agent_is_provisioned_and_comes_online() {
    let db = TestDb::sample();
    let platform = StandIn::start(&db.name, Mode::Live(Duration::from_millis(700)));
    let r = install(&db, &platform.url(), &["--model", "m-1", "--wait", "30s"]);
    r.code(0);
    assert_no_token(&r);
    let p = provision_of(&r);
    assert!(p.requested);
    assert_eq!(p.skipped, None);
    assert_eq!(p.http_status, Some(200));
    assert_eq!(p.final_status.as_deref(), Some("online"));
    assert!(p.waited_ms >= 500, "{p:?}");
    platform.assert_one_request_for(&agent_id(&db));
    assert_eq!(agent_status(&db), "online");
    assert_installed(&db);
    // SPEC §11: the request is an audit row of its own, with the HTTP outcome the stand-in gave.
    assert_eq!(
        db.exec(
            "SELECT args->>'workspace_id', outcome, args->>'http_status' FROM orgctl.audit_log
              WHERE command = 'provision' ORDER BY id"
        )
        .trim(),
        format!("{}|requested|200", agent_id(&db))
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

#[test]
fn without_model_the_agent_fails_and_the_reason_is_given() {
    let db = TestDb::sample();
    let platform = StandIn::start(&db.name, Mode::Live(Duration::from_millis(300)));
    let r = install(
        &db,
        &platform.url(),
        &["--allow-missing-model", "--wait", "30s"],
    );
    r.code(1)
        .one_line_error("marks an agent without a MODEL secret failed at registration");
    assert!(r.stderr.contains("committed"), "{}", r.stderr);
    let p = provision_of(&r);
    assert!(p.requested);
    assert_eq!(p.final_status.as_deref(), Some("failed"));
    assert_installed(&db);
    assert_eq!(agent_status(&db), "failed");
}

#[test]
fn the_deadline_passes_and_the_change_stays_committed() {
    let db = TestDb::sample();
    let platform = StandIn::start(&db.name, Mode::Stuck);
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
    platform.assert_one_request_for(&agent_id(&db));
}

/// The platform-root guard: an online or degraded agent is never sent a request, with or
/// without --wait; offline and failed ones are.
#[test]
fn a_running_agent_is_never_sent_a_request() {
    let db = TestDb::sample();
    db.orgctl(&["install-platform-agent", "--yes", "--model", "m"])
        .run()
        .code(0);
    let platform = StandIn::start(&db.name, Mode::Live(Duration::from_millis(200)));
    for status in ["online", "degraded"] {
        db.exec(&format!(
            "UPDATE workspaces SET status = '{status}' WHERE kind = 'platform'"
        ));
        for extra in [&[][..], &["--wait", "3s"][..]] {
            let r = install(&db, &platform.url(), extra);
            r.code(0);
            let p = provision_of(&r);
            assert!(!p.requested, "{status}");
            assert_eq!(p.skipped.as_deref(), Some(status));
            assert_eq!(p.http_status, None);
            assert_eq!(p.final_status.as_deref(), Some(status));
        }
    }
    assert!(platform.calls().is_empty(), "{:?}", platform.calls());

    // An offline agent (already installed, nothing to change) is provisioned.
    db.exec("UPDATE workspaces SET status = 'offline' WHERE kind = 'platform'");
    let r = install(&db, &platform.url(), &["--wait", "20s"]);
    r.code(0);
    let p = provision_of(&r);
    assert!(p.requested);
    assert_eq!(p.final_status.as_deref(), Some("online"));
    platform.assert_one_request_for(&agent_id(&db));
}

/// Ctrl-C while waiting: exit 130, the committed change is reported (stdout and stderr).
#[test]
fn ctrl_c_while_waiting_exits_130_and_reports_the_committed_change() {
    let db = TestDb::sample();
    let platform = StandIn::start(&db.name, Mode::Stuck);
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
    orgctl::sys::kill(child.id() as i32, libc::SIGINT);
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

/// The platform refuses or is unreachable: exit 1 after the commit, naming the HTTP outcome.
#[test]
fn a_refused_or_unreachable_platform_is_exit_1_after_the_commit() {
    let fixture = TestDb::sample();
    let cases: Vec<(Option<Mode>, Option<u16>, &str)> = vec![
        (Some(Mode::Answer(401)), Some(401), "HTTP 401"),
        (Some(Mode::Answer(404)), Some(404), "HTTP 404"),
        (Some(Mode::Answer(409)), Some(409), "HTTP 409"),
        (Some(Mode::Answer(500)), Some(500), "HTTP 500"),
        (None, None, "did not accept"),
    ];
    for (mode, code, needle) in cases {
        let db = fixture.copy_of();
        let standin = mode.map(|m| StandIn::start(&db.name, m));
        let url = standin.as_ref().map(|s| s.url()).unwrap_or_else(absent_url);
        let r = install(&db, &url, &["--model", "m", "--wait", "10s"]);
        r.code(1).one_line_error(needle);
        assert!(r.stderr.contains("committed"), "{}", r.stderr);
        assert_no_token(&r);
        let p = provision_of(&r);
        assert!(p.requested, "{mode:?}");
        assert_eq!(p.http_status, code, "{mode:?}");
        assert_eq!(p.waited_ms, 0, "no wait after a refused request");
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

/// A platform that accepts the connection and never answers: the call's own timeout (20s)
/// ends it, exit 1 after the commit, no wait.
#[test]
fn a_hanging_platform_times_out_after_the_commit() {
    let db = TestDb::sample();
    let platform = StandIn::start(&db.name, Mode::Hang);
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

#[test]
fn bad_provision_inputs_change_nothing() {
    let db = TestDb::sample();
    let before = db.snapshot();
    let platform = StandIn::start(&db.name, Mode::Live(Duration::ZERO));
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
    let pa = StandIn::start(&a.name, Mode::Live(Duration::from_millis(300)));
    let pc = StandIn::start(&c.name, Mode::Live(Duration::from_millis(300)));
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
    .run();
    r.code(0);
    assert_no_token(&r);
    assert!(r.stdout.contains("provision"), "{}", r.stdout);
    assert!(
        r.stdout.contains("skipped (no platform URL)"),
        "{}",
        r.stdout
    );
    assert!(r.stdout.contains("online after"), "{}", r.stdout);
    pa.assert_one_request_for(&agent_id(&a));
    pc.assert_one_request_for(&agent_id(&c));
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
    let pa = StandIn::start(&a.name, Mode::Live(Duration::from_millis(200)));
    let pb = StandIn::start(&b.name, Mode::Answer(500));
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

#[test]
fn backfill_bad_platform_urls_and_missing_token_change_nothing() {
    let a = TestDb::sample();
    let before = a.snapshot();
    let platform = StandIn::start(&a.name, Mode::Live(Duration::ZERO));
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

/// Ctrl-C while a backfill waits for an agent: the wait stops, the tenant stays applied and
/// its provision result (the status it was in) is in the summary; exit 130.
#[test]
fn ctrl_c_while_a_backfill_waits_reports_the_applied_tenant() {
    let a = TestDb::sample();
    let pa = StandIn::start(&a.name, Mode::Stuck);
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
    orgctl::sys::kill(child.id() as i32, libc::SIGINT);
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
    let pa = StandIn::start(&a.name, Mode::Live(Duration::from_millis(200)));
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
    pa.assert_one_request_for(&agent_id(&a));
}
