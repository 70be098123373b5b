//! `-o json` is one valid document or nothing a parser could take for a result: a `token list` whose backend is terminated mid-stream exits 1 and leaves stdout
//! that does not parse (the README documents: stdout is not a result when the exit code is
//! not 0). And a terminated backend is not reported as a server shutdown.

use std::io::Read;
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::harness::TestDb;

#[test]
fn a_token_list_cut_off_mid_stream_is_exit_1_and_no_json_document() {
    let db = TestDb::sample();
    // Enough rows that the output fills the pipe while the cursor is still open.
    db.exec(
        "INSERT INTO org_api_tokens (token_hash, prefix, name, created_by)
         SELECT sha256(('bulk-' || g)::bytea), 'bulk' || lpad(g::text, 4, '0'), 'bulk ' || g, 'session'
           FROM generate_series(1, 6000) g",
    );
    let mut c = db.orgctl(&["-o", "json", "token", "list"]).command();
    c.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = match c.spawn() {
        Ok(c) => c,
        Err(e) => panic!("{e}"),
    };
    // orgctl blocks writing to the unread pipe, inside its read-only transaction: end its
    // session then.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut terminated = false;
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
        let n = db.scalar(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
              WHERE application_name = 'orgctl' AND datname = current_database()
                AND state = 'idle in transaction'
                AND state_change < now() - interval '300 milliseconds'",
        );
        if n == "1" {
            terminated = true;
            break;
        }
    }
    assert!(terminated, "orgctl never blocked mid-stream");
    let mut stdout = String::new();
    if let Some(mut so) = child.stdout.take() {
        let _ = so.read_to_string(&mut stdout);
    }
    let mut stderr = String::new();
    if let Some(mut se) = child.stderr.take() {
        let _ = se.read_to_string(&mut stderr);
    }
    let status = match child.wait() {
        Ok(s) => s,
        Err(e) => panic!("{e}"),
    };
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stdout.len() > 1000, "nothing was streamed before the cut");
    assert!(
        serde_json::from_str::<serde_json::Value>(&stdout).is_err(),
        "a cut-off list parsed as a complete document"
    );
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    assert!(!stderr.contains("server shut down"), "{stderr}");
    assert!(
        stderr.contains("terminated it") || stderr.contains("lost the connection"),
        "{stderr}"
    );
}
