//! Output failures, from the built binary: a failing stderr never panics
//! (exit 101), `token mint` refuses a stdout nobody reads, a failing stdout after a commit
//! exits 1 saying the change was committed, and `--report` is written even then.

use std::process::Stdio;

use crate::harness::{ids, Cmd, TestDb};

fn dev_full() -> std::fs::File {
    match std::fs::OpenOptions::new().write(true).open("/dev/full") {
        Ok(f) => f,
        Err(e) => panic!("/dev/full: {e}"),
    }
}

/// Run with the given stdout and stderr; returns the exit code and what was captured.
fn run_with(cmd: &Cmd, stdout: Stdio, stderr: Stdio) -> (i32, String, String) {
    let mut c = cmd.command();
    c.stdin(Stdio::null()).stdout(stdout).stderr(stderr);
    let out = match c.output() {
        Ok(o) => o,
        Err(e) => panic!("could not run orgctl: {e}"),
    };
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

fn temp(name: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("orgctl-out-{}-{name}", std::process::id()))
}

#[test]
fn a_full_or_closed_stderr_never_panics() {
    let db = TestDb::sample();
    // Success after a commit, with every message lost.
    let (code, out, _) = run_with(
        &db.orgctl(&["token", "revoke", "--yes", "--", "sampl001"]),
        Stdio::piped(),
        Stdio::from(dev_full()),
    );
    assert_eq!(code, 0, "{out}");
    assert_eq!(
        db.scalar("SELECT revoked_at IS NOT NULL FROM org_api_tokens WHERE prefix = 'sampl001'"),
        "t"
    );
    // A failure keeps its exit code.
    let (code, _, _) = run_with(
        &db.orgctl(&["token", "revoke", "--", "nosuchtk"]),
        Stdio::piped(),
        Stdio::from(dev_full()),
    );
    assert_eq!(code, 1);
    // A refusal (no --yes) too.
    let (code, _, _) = run_with(
        &db.orgctl(&["install-platform-agent", "--model", "m"]),
        Stdio::piped(),
        Stdio::from(dev_full()),
    );
    assert_eq!(code, 3);
    // stderr a pipe whose reader is gone (EPIPE on every write).
    let mut c = db
        .orgctl(&["install-platform-agent", "--model", "m", "--yes", "-v"])
        .command();
    c.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = match c.spawn() {
        Ok(c) => c,
        Err(e) => panic!("{e}"),
    };
    drop(child.stderr.take());
    let out = match child.wait_with_output() {
        Ok(o) => o,
        Err(e) => panic!("{e}"),
    };
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        db.scalar("SELECT count(*) FROM workspaces WHERE kind = 'platform'"),
        "1"
    );
}

#[test]
fn backfill_with_a_full_stderr_finishes_and_writes_its_report() {
    let db = TestDb::sample();
    let tenants = temp("tenants-stderr.txt");
    let report = temp("report-stderr.json");
    let _ = std::fs::remove_file(&report);
    if let Err(e) = std::fs::write(&tenants, format!("acme {}\n", db.url)) {
        panic!("{e}");
    }
    let (t, r) = (
        tenants.to_str().unwrap_or_default(),
        report.to_str().unwrap_or_default(),
    );
    let (code, _, _) = run_with(
        &Cmd::new(&[
            "backfill",
            "run",
            "--tenants",
            t,
            "--model",
            "m",
            "--yes",
            "--report",
            r,
        ]),
        Stdio::piped(),
        Stdio::from(dev_full()),
    );
    assert_eq!(code, 0);
    let text = std::fs::read_to_string(&report).unwrap_or_default();
    assert!(text.contains("\"applied\""), "{text}");
    let _ = std::fs::remove_file(&tenants);
    let _ = std::fs::remove_file(&report);
}

#[test]
fn token_mint_refuses_a_stdout_nobody_reads() {
    let db = TestDb::sample();
    let before = db.snapshot();
    let (code, _, err) = run_with(
        &db.orgctl(&["token", "mint", "--org", ids::HQ]),
        Stdio::null(),
        Stdio::piped(),
    );
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("stdout is /dev/null"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    // Closed: the runtime reopens fd 1 as /dev/null, which is refused the same way.
    let c = db.orgctl(&["token", "mint", "--org", ids::HQ]).command();
    let prog = c.get_program().to_owned();
    let args: Vec<String> = c
        .get_args()
        .map(|a| a.to_string_lossy().to_string())
        .collect();
    let mut sh = std::process::Command::new("sh");
    sh.arg("-c")
        .arg("exec \"$0\" \"$@\" >&-")
        .arg(prog)
        .args(args)
        .env_clear()
        .envs(
            c.get_envs()
                .filter_map(|(k, v)| v.map(|v| (k.to_owned(), v.to_owned()))),
        );
    let out = match sh.stdin(Stdio::null()).output() {
        Ok(o) => o,
        Err(e) => panic!("{e}"),
    };
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(err.contains("shown to no one"), "{err}");
    // Nothing minted, nothing audited, orgctl's schema not even created.
    assert_eq!(db.snapshot(), before);
    // A full stdout fails the write before the commit: rolled back.
    let (code, _, err) = run_with(
        &db.orgctl(&["token", "mint", "--org", ids::HQ]),
        Stdio::from(dev_full()),
        Stdio::piped(),
    );
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("nothing was minted"), "{err}");
    assert_eq!(
        db.scalar("SELECT count(*) FROM org_api_tokens"),
        db.scalar("SELECT 8")
    );
}

#[test]
fn a_failing_stdout_after_a_commit_says_it_was_committed() {
    let db = TestDb::sample();
    let (code, _, err) = run_with(
        &db.orgctl(&["token", "revoke", "--yes", "--", "sampl001"]),
        Stdio::from(dev_full()),
        Stdio::piped(),
    );
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("the change was committed"), "{err}");
    assert_eq!(
        db.scalar("SELECT revoked_at IS NOT NULL FROM org_api_tokens WHERE prefix = 'sampl001'"),
        "t"
    );
    // backfill: the report is written even then, and the error says what committed.
    let tenants = temp("tenants-stdout.txt");
    let report = temp("report-stdout.json");
    let _ = std::fs::remove_file(&report);
    if let Err(e) = std::fs::write(&tenants, format!("acme {}\n", db.url)) {
        panic!("{e}");
    }
    let (t, r) = (
        tenants.to_str().unwrap_or_default(),
        report.to_str().unwrap_or_default(),
    );
    let (code, _, err) = run_with(
        &Cmd::new(&[
            "backfill",
            "run",
            "--tenants",
            t,
            "--model",
            "m",
            "--yes",
            "--report",
            r,
        ]),
        Stdio::from(dev_full()),
        Stdio::piped(),
    );
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("1 tenant(s) were committed"), "{err}");
    let text = std::fs::read_to_string(&report).unwrap_or_default();
    assert!(text.contains("\"applied\""), "{text}");
    let _ = std::fs::remove_file(&tenants);
    let _ = std::fs::remove_file(&report);
}

#[test]
fn a_rollback_whose_summary_cannot_be_printed_says_it_committed() {
    let db = TestDb::sample();
    let tenants = temp("tenants-rollback.txt");
    if let Err(e) = std::fs::write(&tenants, format!("acme {}\n", db.url)) {
        panic!("{e}");
    }
    let t = tenants.to_str().unwrap_or_default();
    Cmd::new(&[
        "backfill",
        "run",
        "--run-id",
        "r1",
        "--tenants",
        t,
        "--model",
        "m",
        "--yes",
    ])
    .run()
    .code(0);
    let (code, _, err) = run_with(
        &Cmd::new(&[
            "backfill",
            "rollback",
            "--run-id",
            "r1",
            "--tenants",
            t,
            "--yes",
        ]),
        Stdio::from(dev_full()),
        Stdio::piped(),
    );
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("1 tenant(s) were rolled back (committed)"),
        "{err}"
    );
    assert_eq!(
        db.scalar("SELECT status FROM orgctl.backfill_runs WHERE run_id = 'r1'"),
        "rolled_back"
    );
    let _ = std::fs::remove_file(&tenants);
}
