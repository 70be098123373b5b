//! `orgctl token` against real PostgreSQL: a minted token works with the platform's own lookup
//! and dies on revoke, its plaintext is stored nowhere, the JSON contracts, default anchoring,
//! every refusal with its exit code and no change, bulk revoke, list ordering and filters.
//!
//! Assertion messages never include a plaintext token.

use std::collections::BTreeSet;
use std::io::Read;
use std::process::Stdio;

use serde::Deserialize;

use crate::harness::{ids, server, TestDb, PASSWORD};

const T1: &str = "70000000-0000-4000-8000-000000000001";
const T2: &str = "70000000-0000-4000-8000-000000000002";
const T3: &str = "70000000-0000-4000-8000-000000000003";
const T4: &str = "70000000-0000-4000-8000-000000000004";
const T5: &str = "70000000-0000-4000-8000-000000000005";
const T6: &str = "70000000-0000-4000-8000-000000000006";
const T7: &str = "70000000-0000-4000-8000-000000000007";
const T8: &str = "70000000-0000-4000-8000-000000000008";

/// `token mint -o json`, rejecting unknown fields.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MintJson {
    /// The audit chain's head a committed change prints (not on a dry run).
    #[allow(dead_code)]
    #[serde(default)]
    audit_head: Option<serde_json::Value>,
    id: String,
    prefix: String,
    name: Option<String>,
    org_id: String,
    created_by: String,
    over_ceiling: bool,
    auth_token: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RevokeJson {
    /// The audit chain's head a committed change prints (not on a dry run).
    #[allow(dead_code)]
    #[serde(default)]
    audit_head: Option<serde_json::Value>,
    revoked: Vec<String>,
    already_revoked: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AnchorJson {
    /// The audit chain's head a committed change prints (not on a dry run).
    #[allow(dead_code)]
    #[serde(default)]
    audit_head: Option<serde_json::Value>,
    id: String,
    prefix: String,
    org_id: String,
    previous_org_id: Option<String>,
    changed: bool,
}

/// `token list -o json` is a bare array of tokens.
#[derive(Debug, Deserialize)]
#[serde(transparent)]
struct ListJson {
    tokens: Vec<ListedJson>,
}

/// A live-token row of `token list` (no revoked_at without --all).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListedJson {
    id: String,
    prefix: String,
    name: Option<String>,
    org_id: Option<String>,
    created_by: Option<String>,
    created_at: String,
    last_used_at: Option<String>,
    expires_at: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(transparent)]
struct ListAllJson {
    tokens: Vec<ListedAllJson>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListedAllJson {
    id: String,
    prefix: String,
    name: Option<String>,
    org_id: Option<String>,
    created_by: Option<String>,
    created_at: String,
    last_used_at: Option<String>,
    expires_at: Option<String>,
    revoked_at: Option<String>,
    state: String,
}

fn parse<T: serde::de::DeserializeOwned>(stdout: &str) -> T {
    match serde_json::from_str(stdout) {
        Ok(p) => p,
        Err(e) => panic!("JSON contract: {e}\n{stdout}"),
    }
}

/// The platform's bearer lookup, with the hash computed by PostgreSQL from the
/// plaintext's UTF-8 bytes — independently of `orgctl::testing::token_hash`, the function under
/// test: if orgctl stored another digest (hex text, another encoding, a salt) the lookup fails.
async fn platform_lookup(db: &TestDb, plaintext: &str) -> Option<(String, String, Option<String>)> {
    let mut conn = db.connect().await;
    let row: Option<(uuid::Uuid, String, Option<uuid::Uuid>)> = match sqlx::query_as(
        "SELECT id, prefix, org_id FROM org_api_tokens
          WHERE token_hash = sha256(convert_to($1, 'UTF8')) AND revoked_at IS NULL",
    )
    .bind(plaintext)
    .fetch_optional(&mut conn)
    .await
    {
        Ok(r) => r,
        Err(e) => panic!("platform lookup: {e}"),
    };
    row.map(|(id, p, o)| (id.to_string(), p, o.map(|o| o.to_string())))
}

/// Every byte the database holds, every schema (orgctl's audit log too), as pg_dump sees it.
fn dump(db: &TestDb) -> String {
    let s = server();
    let out = std::process::Command::new(s.bindir.join("pg_dump"))
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &s.port.to_string(),
            "-U",
            "postgres",
        ])
        .args(["--data-only", "-d", &db.name])
        .env("PGPASSWORD", PASSWORD)
        .output();
    match out {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).to_string(),
        Ok(o) => panic!("pg_dump: {}", String::from_utf8_lossy(&o.stderr)),
        Err(e) => panic!("pg_dump: {e}"),
    }
}

fn install_agent(db: &TestDb) -> String {
    db.orgctl(&["install-platform-agent", "--model", "m", "--yes"])
        .run()
        .code(0);
    db.scalar("SELECT id FROM workspaces WHERE kind = 'platform'")
}

fn is_token(s: &str) -> bool {
    s.len() == 43
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

fn audit_count(db: &TestDb, command: &str) -> i64 {
    if db.audit_rows() == 0 {
        return 0;
    }
    db.scalar(&format!(
        "SELECT count(*) FROM orgctl.audit_log WHERE command = '{command}'"
    ))
    .parse()
    .unwrap_or(-1)
}

fn set(v: &[String]) -> BTreeSet<&str> {
    v.iter().map(|s| s.as_str()).collect()
}

/// Known vectors, pinned: orgctl's hash, PostgreSQL's `sha256(convert_to(…,'UTF8'))` and the
/// published SHA-256 digests all agree (FIPS 180-2 "abc"; a token-shaped value; a non-ASCII
/// value, which must be hashed as its UTF-8 bytes).
#[test]
fn token_hash_matches_pinned_vectors_and_postgresql() {
    let db = TestDb::empty();
    for (plaintext, hex) in [
        (
            "abc",
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
        ),
        (
            "Zm9vYmFyYmF6cXV4LWNpLXRva2VuLTAxMjM0NTY3ODk",
            "f5bec6ea468535c92d401a5aa8df59ab546427b8ee89d916e03761eac75045e1",
        ),
        (
            "\u{e9}",
            "4a99557e4033c3539de2eb65472017cad5f9557f7a0625a09f1c3f6e2ba69c4c",
        ),
    ] {
        let ours: String = orgctl::testing::token_hash(plaintext)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(ours, hex, "orgctl's hash of {plaintext:?}");
        let pg = db.scalar(&format!(
            "SELECT encode(sha256(convert_to('{plaintext}', 'UTF8')), 'hex')"
        ));
        assert_eq!(pg, hex, "PostgreSQL's hash of {plaintext:?}");
    }
}

#[tokio::test]
async fn minted_token_works_on_the_agent_is_stored_nowhere_and_dies_on_revoke() {
    let db = TestDb::sample();
    let agent = install_agent(&db);
    let r = db.orgctl(&["token", "mint", "--name", "ci"]).run();
    r.code(0);
    // stdout is exactly the token and a newline, so TOKEN=$(orgctl token mint) works.
    assert!(r.stdout.ends_with('\n') && r.stdout.matches('\n').count() == 1);
    let token = r.stdout.trim_end_matches('\n').to_string();
    assert!(
        is_token(&token),
        "stdout is not a 43-character base64url token"
    );
    assert!(!r.stderr.contains(&token), "the plaintext leaked to stderr");
    // Captured stdout: no "copy it now", the token went where it was sent.
    assert!(!r.stderr.contains("Copy the token now"), "{}", r.stderr);
    assert!(
        r.stderr.contains("The token was written to stdout, once"),
        "{}",
        r.stderr
    );
    // The revoke hint holds even for a prefix that starts with `-`.
    assert!(
        r.stderr
            .contains(&format!("`orgctl token revoke -- {}`", &token[..8])),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains(&agent), "{}", r.stderr);

    let Some((id, prefix, org)) = platform_lookup(&db, &token).await else {
        panic!("the platform's lookup does not find the minted token");
    };
    assert_eq!(prefix, token[..8]);
    assert_eq!(
        org.as_deref(),
        Some(agent.as_str()),
        "anchored to the agent"
    );
    let row = db.scalar(&format!(
        "SELECT name || '|' || created_by || '|' || (revoked_at IS NULL) FROM org_api_tokens WHERE id = '{id}'"
    ));
    assert_eq!(row, "ci|orgctl:tester|true");

    // Stored nowhere: not in any table of any schema, not in the audit log.
    assert_eq!(audit_count(&db, "token mint"), 1);
    let audit = db.scalar("SELECT args::text FROM orgctl.audit_log WHERE command = 'token mint'");
    assert!(audit.contains(&id) && audit.contains(&prefix), "{audit}");
    assert!(
        !dump(&db).contains(&token),
        "the plaintext is stored in the database"
    );

    // Revoke by prefix: the platform's lookup no longer finds it.
    let before = dump(&db);
    let r = db
        .orgctl(&["token", "revoke", &prefix, "--yes", "-o", "json"])
        .run();
    r.code(0);
    let j: RevokeJson = parse(&r.stdout);
    assert_eq!(j.revoked, std::slice::from_ref(&id));
    assert!(j.already_revoked.is_empty());
    assert!(
        platform_lookup(&db, &token).await.is_none(),
        "still live after revoke"
    );
    assert_eq!(audit_count(&db, "token revoke"), 1);
    assert!(
        !dump(&db).contains(&token) && !before.contains(&token),
        "the plaintext is stored in the database"
    );

    // Again: already revoked, exit 0, nothing written.
    let snap = db.snapshot();
    let r = db.orgctl(&["token", "revoke", &id, "-o", "json"]).run();
    r.code(0);
    let j: RevokeJson = parse(&r.stdout);
    assert!(j.revoked.is_empty());
    assert_eq!(j.already_revoked, [id]);
    assert_eq!(db.snapshot(), snap);
    assert_eq!(audit_count(&db, "token revoke"), 1);
}

#[tokio::test]
async fn mint_json_contract_and_provenance() {
    let db = TestDb::sample();
    let agent = install_agent(&db);
    let r = db
        .orgctl(&["token", "mint", "-o", "json", "--created-by", "incident-42"])
        .run();
    r.code(0);
    let j: MintJson = parse(&r.stdout);
    assert!(is_token(&j.auth_token));
    assert_eq!(j.prefix, j.auth_token[..8]);
    assert_eq!(j.name, None);
    assert_eq!(j.org_id, agent);
    assert_eq!(j.created_by, "incident-42");
    assert!(!j.over_ceiling);
    assert!(
        !r.stderr.contains(&j.auth_token),
        "the plaintext leaked to stderr"
    );
    match platform_lookup(&db, &j.auth_token).await {
        Some((id, _, org)) => {
            assert_eq!(id, j.id);
            assert_eq!(org, Some(agent));
        }
        None => panic!("the platform's lookup does not find the minted token"),
    }
    assert!(
        !dump(&db).contains(&j.auth_token),
        "the plaintext is stored in the database"
    );
}

#[tokio::test]
async fn mint_anchors_to_the_only_root_without_an_agent() {
    let db = TestDb::empty();
    db.exec(
        "INSERT INTO workspaces (id, name, parent_id) VALUES
           ('d0000000-0000-4000-8000-000000000001', 'Solo', NULL);
         INSERT INTO workspaces (id, name, parent_id) VALUES
           ('d0000000-0000-4000-8000-000000000002', 'Child', 'd0000000-0000-4000-8000-000000000001');",
    );
    let r = db.orgctl(&["token", "mint", "-o", "json"]).run();
    r.code(0);
    let j: MintJson = parse(&r.stdout);
    assert_eq!(j.org_id, "d0000000-0000-4000-8000-000000000001");
    match platform_lookup(&db, &j.auth_token).await {
        Some((_, _, org)) => assert_eq!(org, Some(j.org_id.clone())),
        None => panic!("the platform's lookup does not find the minted token"),
    }

    // No root at all: refused, nothing changed.
    let db = TestDb::empty();
    let before = db.snapshot();
    db.orgctl(&["token", "mint"])
        .run()
        .code(3)
        .one_line_error("no root workspace");
    assert_eq!(db.snapshot(), before);
}

#[test]
fn mint_with_several_roots_and_no_agent_needs_org_which_must_be_a_root() {
    let db = TestDb::sample();
    let before = db.snapshot();
    let r = db.orgctl(&["token", "mint", "--name", "x"]).run();
    r.code(2).one_line_error("--org is required");
    assert!(r.stdout.is_empty());
    for root in [ids::HQ, ids::LABS, ids::LEGACY] {
        assert!(r.stderr.contains(root), "lists the roots: {}", r.stderr);
    }
    // Live roots first (the removed tombstone is older but comes last and is
    // marked), and the message says how to choose.
    let at = |id: &str| r.stderr.find(id).unwrap_or(usize::MAX);
    assert!(
        at(ids::HQ) < at(ids::LABS) && at(ids::LABS) < at(ids::LEGACY),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr
            .contains(&format!("{} 'Acme Legacy' (removed)", ids::LEGACY)),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("2 live"), "{}", r.stderr);
    assert!(
        r.stderr.contains(&format!("--org {}", ids::HQ)),
        "says how to choose: {}",
        r.stderr
    );
    // A non-root, an unknown workspace, a malformed UUID.
    db.orgctl(&["token", "mint", "--org", ids::RESEARCH])
        .run()
        .code(3)
        .one_line_error("is not an org root");
    db.orgctl(&[
        "token",
        "mint",
        "--org",
        "d0000000-0000-4000-8000-00000000dead",
    ])
    .run()
    .code(3)
    .one_line_error("names no workspace");
    let r = db.orgctl(&["token", "mint", "--org", "not-a-uuid"]).run();
    r.code(2);
    assert!(r.stdout.is_empty());
    assert_eq!(
        db.snapshot(),
        before,
        "refusals change nothing, not even orgctl's schema"
    );

    // --org naming a root works.
    let r = db
        .orgctl(&["token", "mint", "--org", ids::LABS, "-o", "json"])
        .run();
    r.code(0);
    let j: MintJson = parse(&r.stdout);
    assert_eq!(j.org_id, ids::LABS);
}

#[test]
fn mint_rejects_bad_names_and_labels() {
    let db = TestDb::sample();
    install_agent(&db);
    let before = db.snapshot();
    let long = "n".repeat(101);
    let cases: [(&[&str], &str); 5] = [
        (&["--name", &long], "at most 100 bytes"),
        (&["--name", "   "], "must not be empty"),
        (&["--name", "a\u{1b}[31mb"], "control characters"),
        (&["--created-by", ""], "must not be empty"),
        (&["--created-by", "x\ny"], "control characters"),
    ];
    for (extra, needle) in cases {
        let mut args = vec!["token", "mint"];
        args.extend_from_slice(extra);
        let r = db.orgctl(&args).run();
        r.code(2).one_line_error(needle);
        assert!(r.stdout.is_empty(), "{extra:?}");
    }
    assert_eq!(db.snapshot(), before);
    // Exactly 100 bytes is fine, in any script (the platform counts bytes, not characters:
    // 50 two-byte characters are 100 bytes, 100 of them are 200).
    for hundred in ["n".repeat(100), "é".repeat(50)] {
        let r = db
            .orgctl(&["token", "mint", "--name", &hundred, "-o", "json"])
            .run();
        r.code(0);
        assert_eq!(
            parse::<MintJson>(&r.stdout).name.as_deref(),
            Some(hundred.as_str())
        );
    }
    let before = db.snapshot();
    db.orgctl(&["token", "mint", "--name", &"é".repeat(100)])
        .run()
        .code(2)
        .one_line_error("200 bytes");
    assert_eq!(db.snapshot(), before);
}

#[test]
fn mint_to_a_closed_stdout_mints_nothing() {
    let db = TestDb::sample();
    install_agent(&db);
    let before = db.scalar("SELECT count(*) FROM org_api_tokens");
    let mut cmd = db.orgctl(&["token", "mint"]).command();
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => panic!("{e}"),
    };
    // Close the read end before orgctl gets to write (it connects first).
    drop(child.stdout.take());
    let mut stderr = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut stderr);
    }
    let status = match child.wait() {
        Ok(s) => s,
        Err(e) => panic!("{e}"),
    };
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("nothing was minted"), "{stderr}");
    assert_eq!(db.scalar("SELECT count(*) FROM org_api_tokens"), before);
    assert_eq!(audit_count(&db, "token mint"), 0);
}

#[test]
fn list_is_newest_first_filtered_and_never_shows_hashes() {
    let db = TestDb::sample();
    let before = db.snapshot();
    let ids_of = |args: &[&str]| -> Vec<String> {
        let mut a = vec!["token", "list", "-o", "json"];
        a.extend_from_slice(args);
        let r = db.orgctl(&a).run();
        r.code(0);
        assert!(!r.stdout.contains("hash"), "{}", r.stdout);
        if args.contains(&"--all") {
            let j: ListAllJson = parse(&r.stdout);
            assert!(!r.stderr.contains("more match"), "{}", r.stderr);
            j.tokens.into_iter().map(|t| t.id).collect()
        } else {
            let j: ListJson = parse(&r.stdout);
            assert!(!r.stderr.contains("more match"), "{}", r.stderr);
            j.tokens.into_iter().map(|t| t.id).collect()
        }
    };
    // Live tokens, newest first (created_at: 8, 6, 4, 2, 1, then 5 from 2023).
    assert_eq!(ids_of(&[]), [T8, T6, T4, T2, T1, T5]);
    assert_eq!(ids_of(&["--all"]), [T8, T7, T6, T4, T3, T2, T1, T5]);
    assert_eq!(ids_of(&["--unanchored"]), [T6]);
    assert_eq!(ids_of(&["--unanchored", "--all"]), [T7, T6]);
    assert_eq!(ids_of(&["--org", ids::HQ]), [T2, T1]);
    assert_eq!(ids_of(&["--org", ids::HQ, "--all"]), [T3, T2, T1]);
    assert_eq!(ids_of(&["--created-by", "session"]), [T8, T1, T5]);
    assert_eq!(ids_of(&["--created-by", "sess%"]), Vec::<String>::new());
    assert_eq!(ids_of(&["--limit", "0"]), [T8, T6, T4, T2, T1, T5]);

    // The full row of a live token, and revoked_at with --all.
    let r = db
        .orgctl(&["token", "list", "-o", "json", "--org", ids::LABS])
        .run();
    let j: ListJson = parse(&r.stdout);
    let t = &j.tokens[0];
    assert_eq!(
        (
            t.id.as_str(),
            t.prefix.as_str(),
            t.name.as_deref(),
            t.org_id.as_deref()
        ),
        (T4, "sampl004", Some("labs bot"), Some(ids::LABS))
    );
    assert_eq!(t.created_by.as_deref(), Some("org-token:sampl001"));
    assert!(
        t.created_at.starts_with("2024-03-04T00:00:00"),
        "{}",
        t.created_at
    );
    assert_eq!(t.last_used_at, None);
    assert_eq!(t.expires_at, None);
    let r = db
        .orgctl(&["token", "list", "-o", "json", "--all", "--unanchored"])
        .run();
    let j: ListAllJson = parse(&r.stdout);
    assert_eq!(j.tokens[0].id, T7);
    assert!(j.tokens[0]
        .revoked_at
        .as_deref()
        .is_some_and(|s| s.starts_with("2024-05-01")));
    assert_eq!(j.tokens[1].revoked_at, None);
    assert_eq!(
        (j.tokens[0].state.as_str(), j.tokens[1].state.as_str()),
        ("revoked", "live")
    );
    assert_eq!(j.tokens[0].expires_at, None);
    // The revoked row, whole: every field is the stored one.
    assert_eq!(
        db.scalar(&format!(
            "SELECT prefix || '|' || coalesce(name, '-') || '|' || coalesce(org_id::text, '-')
                    || '|' || coalesce(created_by, '-') || '|' || coalesce(last_used_at::text, '-')
               FROM org_api_tokens WHERE id = '{T7}'"
        )),
        format!(
            "{}|{}|{}|{}|-",
            j.tokens[0].prefix,
            j.tokens[0].name.as_deref().unwrap_or("-"),
            j.tokens[0].org_id.as_deref().unwrap_or("-"),
            j.tokens[0].created_by.as_deref().unwrap_or("-"),
        )
    );
    assert_eq!(j.tokens[0].org_id, None, "listed with --unanchored");
    assert_eq!(j.tokens[0].last_used_at, None);
    assert_eq!(
        db.scalar(&format!(
            "SELECT created_at = '{}'::timestamptz FROM org_api_tokens WHERE id = '{T7}'",
            j.tokens[0].created_at
        )),
        "t",
        "created_at {}",
        j.tokens[0].created_at
    );

    // A limit says on stderr that more exist.
    let r = db
        .orgctl(&["token", "list", "-o", "json", "--limit", "2"])
        .run();
    r.code(0);
    let j: ListJson = parse(&r.stdout);
    assert_eq!(
        j.tokens.iter().map(|t| t.id.as_str()).collect::<Vec<_>>(),
        [T8, T6]
    );
    assert!(r.stderr.contains("more match"), "{}", r.stderr);

    // The table: a header, every live prefix, no revoked one, nothing on stderr but info.
    let r = db.orgctl(&["token", "list"]).run();
    r.code(0);
    assert!(r.stdout.contains("last_used_at") && !r.stdout.contains("revoked_at"));
    assert!(r.stdout.contains("sampl008") && !r.stdout.contains("sampl007"));
    let r = db.orgctl(&["token", "list", "--all"]).run();
    assert!(r.stdout.contains("revoked_at") && r.stdout.contains("sampl007"));
    // Streamed (--limit 0): a tab-separated header and one line per token.
    let r = db.orgctl(&["token", "list", "--limit", "0"]).run();
    r.code(0);
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert_eq!(lines.len(), 7, "{}", r.stdout);
    assert!(lines[0].starts_with("id\tprefix\tname"));
    assert!(lines[1].starts_with(T8));

    // Bad input.
    db.orgctl(&["token", "list", "--org", "nope"]).run().code(2);
    db.orgctl(&["token", "list", "--org", ids::HQ, "--unanchored"])
        .run()
        .code(2);
    db.orgctl(&["token", "list", "--limit", "-1"]).run().code(2);

    assert_eq!(
        db.snapshot(),
        before,
        "list is read-only and creates no schema"
    );
}

#[test]
fn list_streams_into_a_closed_pipe_without_error() {
    let db = TestDb::sample();
    db.exec(
        "INSERT INTO org_api_tokens (token_hash, prefix, name, created_by, org_id)
         SELECT sha256(('bulk-' || g)::bytea), 'bulk' || lpad(g::text, 4, '0'), 'bulk ' || g,
                'bulk', NULL
           FROM generate_series(1, 20000) g",
    );
    for args in [
        &["token", "list", "--limit", "0"][..],
        &["token", "list", "--limit", "0", "-o", "json"][..],
    ] {
        let mut cmd = db.orgctl(args).command();
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => panic!("{e}"),
        };
        // Read a little (like `head`), then close the pipe.
        if let Some(mut out) = child.stdout.take() {
            let mut buf = [0u8; 512];
            let _ = out.read(&mut buf);
        }
        let mut stderr = String::new();
        if let Some(mut e) = child.stderr.take() {
            let _ = e.read_to_string(&mut stderr);
        }
        let status = match child.wait() {
            Ok(s) => s,
            Err(e) => panic!("{e}"),
        };
        assert_eq!(status.code(), Some(0), "{stderr}");
        assert!(
            !stderr.contains("error") && !stderr.contains("panicked"),
            "{stderr}"
        );
    }
    // And all of them, when someone reads.
    let r = db
        .orgctl(&[
            "token",
            "list",
            "--limit",
            "0",
            "--created-by",
            "bulk",
            "-o",
            "json",
        ])
        .run();
    r.code(0);
    let j: ListJson = parse(&r.stdout);
    assert_eq!(j.tokens.len(), 20000);
    assert!(!r.stderr.contains("more match"), "{}", r.stderr);
}

#[test]
fn revoke_refusals_and_bad_input_change_nothing() {
    let db = TestDb::sample();
    db.exec(
        "INSERT INTO org_api_tokens (id, token_hash, prefix, name, created_by)
         VALUES ('70000000-0000-4000-8000-0000000000aa', sha256('q'::bytea), 'ab_dEfGh', 'underscore', 'x')",
    );
    let before = db.snapshot();
    let cases: [(&[&str], i32, &str); 13] = [
        // Ambiguous: exit 2 listing the candidates.
        (&["samp", "--yes"], 2, "ambiguous"),
        // Unknown: exit 1.
        (&["zzzz", "--yes"], 1, "no token has a prefix"),
        (
            &["70000000-0000-4000-8000-0000000000ff", "--yes"],
            1,
            "no token with id",
        ),
        // LIKE metacharacters and quotes match literally: `_` and `%` are no wildcards.
        (&["sampl00_", "--yes"], 1, "no token has a prefix"),
        (&["samp%", "--yes"], 1, "no token has a prefix"),
        (&["%%%%", "--yes"], 1, "no token has a prefix"),
        (&["sa'l", "--yes"], 1, "no token has a prefix"),
        (&["ab%d", "--yes"], 1, "no token has a prefix"),
        // Too short, malformed UUID.
        (&["sam", "--yes"], 2, "too short"),
        (
            &["70000000-0000-4000-8000-00000000000Z", "--yes"],
            2,
            "neither a token id",
        ),
        // No terminal, no --yes.
        (&["sampl001"], 3, "--yes"),
        (&["--created-by", "session"], 3, "3 live token(s)"),
        // Unknown label (exact match, no wildcards).
        (
            &["--created-by", "sess%", "--yes"],
            1,
            "no token has created_by",
        ),
    ];
    for (extra, code, needle) in cases {
        let mut args = vec!["token", "revoke"];
        args.extend_from_slice(extra);
        let r = db.orgctl(&args).run();
        r.code(code).one_line_error(needle);
        assert!(r.stdout.is_empty(), "{extra:?}: {}", r.stdout);
    }
    let r = db.orgctl(&["token", "revoke", "samp", "--yes"]).run();
    for t in [T1, T2, T3, T4, T5, T6, T7, T8] {
        assert!(r.stderr.contains(t), "candidates listed: {}", r.stderr);
    }
    // Usage: both or neither way of naming tokens; an empty label.
    db.orgctl(&["token", "revoke", "sampl001", "--created-by", "x", "--yes"])
        .run()
        .code(2);
    db.orgctl(&["token", "revoke", "--yes"]).run().code(2);
    db.orgctl(&["token", "revoke", "--created-by", "", "--yes"])
        .run()
        .code(2)
        .one_line_error("must not be empty");
    assert_eq!(
        db.snapshot(),
        before,
        "refusals change nothing, not even orgctl's schema"
    );

    // A prefix with `_` matches itself only, escaped.
    let r = db
        .orgctl(&["token", "revoke", "ab_d", "--yes", "-o", "json"])
        .run();
    r.code(0);
    let j: RevokeJson = parse(&r.stdout);
    assert_eq!(j.revoked, ["70000000-0000-4000-8000-0000000000aa"]);
}

#[tokio::test]
async fn revoke_waits_for_the_tenant_lock_and_refuses_when_it_is_held() {
    let db = TestDb::sample();
    // Create orgctl's schema first so the snapshot compares rows only.
    db.orgctl(&["token", "revoke", "sampl006", "--yes"])
        .run()
        .code(0);
    let before = db.snapshot();
    let mut conn = db.connect().await;
    if let Err(e) = sqlx::query("SELECT pg_advisory_lock($1, $2)")
        .bind(orgctl::testing::db::TENANT_LOCK.0)
        .bind(orgctl::testing::db::TENANT_LOCK.1)
        .execute(&mut conn)
        .await
    {
        panic!("{e}");
    }
    let r = db
        .orgctl(&[
            "token",
            "revoke",
            "sampl001",
            "--yes",
            "--lock-timeout",
            "300ms",
        ])
        .run_async()
        .await;
    r.code(3).one_line_error("lock");
    assert_eq!(db.snapshot(), before);
}

#[test]
fn bulk_revoke_by_created_by_kills_exactly_that_provenance() {
    let db = TestDb::sample();
    // Labels with SQL metacharacters match exactly.
    db.exec(
        "INSERT INTO org_api_tokens (id, token_hash, prefix, created_by) VALUES
          ('70000000-0000-4000-8000-0000000000b1', sha256('b1'::bytea), 'bbbb0001', 'o''brien%_'),
          ('70000000-0000-4000-8000-0000000000b2', sha256('b2'::bytea), 'bbbb0002', 'o''brienXY')",
    );
    let r = db
        .orgctl(&[
            "token",
            "revoke",
            "--created-by",
            "session",
            "--yes",
            "-o",
            "json",
        ])
        .run();
    r.code(0);
    let j: RevokeJson = parse(&r.stdout);
    assert_eq!(set(&j.revoked), BTreeSet::from([T1, T5, T8]));
    // T3 has the label too but was revoked in April: reported, not touched.
    assert_eq!(j.already_revoked, [T3]);
    assert_eq!(
        db.scalar(
            "SELECT string_agg(prefix, ',' ORDER BY prefix) FROM org_api_tokens WHERE revoked_at IS NULL"
        ),
        "bbbb0001,bbbb0002,sampl002,sampl004,sampl006",
        "every other token stays live"
    );
    // One revoked_at for the whole incident, and the earlier revocation untouched.
    assert_eq!(
        db.scalar("SELECT count(DISTINCT revoked_at) FROM org_api_tokens WHERE id IN ($$70000000-0000-4000-8000-000000000001$$, $$70000000-0000-4000-8000-000000000005$$, $$70000000-0000-4000-8000-000000000008$$)"),
        "1"
    );
    assert!(db
        .scalar(&format!(
            "SELECT revoked_at FROM org_api_tokens WHERE id = '{T3}'"
        ))
        .starts_with("2024-04-01"));
    assert_eq!(audit_count(&db, "token revoke"), 1);
    let audit =
        db.scalar("SELECT args->>'revoked' FROM orgctl.audit_log WHERE command = 'token revoke'");
    assert_eq!(audit, "3");

    // Again: nothing left to revoke, exit 0, nothing written.
    let before = db.snapshot();
    let r = db
        .orgctl(&["token", "revoke", "--created-by", "session", "-o", "json"])
        .run();
    r.code(0);
    let j: RevokeJson = parse(&r.stdout);
    assert!(j.revoked.is_empty());
    assert_eq!(set(&j.already_revoked), BTreeSet::from([T1, T3, T5, T8]));
    assert_eq!(db.snapshot(), before);

    let r = db
        .orgctl(&[
            "token",
            "revoke",
            "--created-by",
            "o'brien%_",
            "--yes",
            "-o",
            "json",
        ])
        .run();
    r.code(0);
    let j: RevokeJson = parse(&r.stdout);
    assert_eq!(j.revoked, ["70000000-0000-4000-8000-0000000000b1"]);
    // The table output too.
    let r = db
        .orgctl(&["token", "revoke", "--created-by", "o'brienXY", "--yes"])
        .run();
    r.code(0);
    assert!(r.stdout.contains("bbbb0002") && r.stdout.contains("revoked"));
}

#[test]
fn anchor_moves_unanchored_tokens_to_the_root_and_needs_force_to_move_anchored_ones() {
    let db = TestDb::sample();
    // Several roots and no agent: --org is required.
    let before = db.snapshot();
    db.orgctl(&["token", "anchor", "sampl006", "--yes"])
        .run()
        .code(2)
        .one_line_error("--org is required");
    db.orgctl(&[
        "token",
        "anchor",
        "sampl006",
        "--org",
        ids::RESEARCH,
        "--yes",
    ])
    .run()
    .code(3)
    .one_line_error("is not an org root");
    db.orgctl(&["token", "anchor", "sampl006", "--org", ids::HQ])
        .run()
        .code(3)
        .one_line_error("--yes");
    db.orgctl(&["token", "anchor", "zzzz", "--org", ids::HQ, "--yes"])
        .run()
        .code(1)
        .one_line_error("no token");
    db.orgctl(&["token", "anchor", "samp", "--org", ids::HQ, "--yes"])
        .run()
        .code(2)
        .one_line_error("ambiguous");
    db.orgctl(&["token", "anchor", "sam", "--org", ids::HQ, "--yes"])
        .run()
        .code(2)
        .one_line_error("too short");
    assert_eq!(db.snapshot(), before);

    let agent = install_agent(&db);
    // The install left the unanchored token and the one on a child alone.
    assert_eq!(
        db.scalar(&format!(
            "SELECT org_id IS NULL FROM org_api_tokens WHERE id = '{T6}'"
        )),
        "t"
    );
    let r = db
        .orgctl(&["token", "anchor", "sampl006", "--yes", "-o", "json"])
        .run();
    r.code(0);
    let j: AnchorJson = parse(&r.stdout);
    assert_eq!((j.id.as_str(), j.prefix.as_str()), (T6, "sampl006"));
    assert_eq!(j.org_id, agent);
    assert_eq!(j.previous_org_id, None);
    assert!(j.changed);
    assert_eq!(
        db.scalar(&format!(
            "SELECT org_id FROM org_api_tokens WHERE id = '{T6}'"
        )),
        agent
    );
    assert_eq!(audit_count(&db, "token anchor"), 1);

    // Again: nothing to do, exit 0, nothing written.
    let before = db.snapshot();
    let r = db.orgctl(&["token", "anchor", T6, "-o", "json"]).run();
    r.code(0);
    assert!(!parse::<AnchorJson>(&r.stdout).changed);
    assert_eq!(db.snapshot(), before);

    // A token anchored to a non-root needs --force to move.
    db.orgctl(&["token", "anchor", "sampl008", "--yes"])
        .run()
        .code(3)
        .one_line_error("--force");
    assert_eq!(db.snapshot(), before);
    let r = db
        .orgctl(&[
            "token", "anchor", "sampl008", "--force", "--yes", "-o", "json",
        ])
        .run();
    r.code(0);
    let j: AnchorJson = parse(&r.stdout);
    assert_eq!(j.previous_org_id.as_deref(), Some(ids::RESEARCH));
    assert_eq!(j.org_id, agent);
    assert_eq!(audit_count(&db, "token anchor"), 2);
}

/// About 1 token in 64 has a prefix that starts with `-` (base64url). Revoke and anchor take
/// it by prefix with the options before or after it, and after `--` in any case.
#[test]
fn a_prefix_starting_with_a_hyphen_is_a_token_not_a_flag() {
    let db = TestDb::sample();
    // H4's prefix is made only of letters that are short options (-y -q -v -o): only the
    // `--` form (the runbook's) can name it, so that is the form the hints show.
    const H1: &str = "70000000-0000-4000-8000-0000000000c1";
    const H2: &str = "70000000-0000-4000-8000-0000000000c2";
    const H3: &str = "70000000-0000-4000-8000-0000000000c3";
    const H4: &str = "70000000-0000-4000-8000-0000000000c4";
    db.exec(
        "INSERT INTO org_api_tokens (id, token_hash, prefix, name, created_by) VALUES
          ('70000000-0000-4000-8000-0000000000c1', sha256('c1'::bytea), '-Ab_cdef', 'h1', 'x'),
          ('70000000-0000-4000-8000-0000000000c2', sha256('c2'::bytea), '-Zz9_xyz', 'h2', 'x'),
          ('70000000-0000-4000-8000-0000000000c3', sha256('c3'::bytea), '--Qr5tuv', 'h3', 'x'),
          ('70000000-0000-4000-8000-0000000000c4', sha256('c4'::bytea), '-yqvoyqv', 'h4', 'x')",
    );
    let org_of = |id: &str| {
        db.scalar(&format!(
            "SELECT org_id FROM org_api_tokens WHERE id = '{id}'"
        ))
    };

    // anchor: options after the prefix, then before it (--force, --org, -y, -o json).
    let r = db
        .orgctl(&[
            "token",
            "anchor",
            "-Ab_cdef",
            "--org",
            ids::HQ,
            "--yes",
            "-o",
            "json",
        ])
        .run();
    r.code(0);
    let j: AnchorJson = parse(&r.stdout);
    assert_eq!((j.id.as_str(), j.prefix.as_str()), (H1, "-Ab_cdef"));
    assert_eq!(
        (j.org_id.as_str(), j.previous_org_id, j.changed),
        (ids::HQ, None, true)
    );
    let r = db
        .orgctl(&[
            "token",
            "anchor",
            "--force",
            "--org",
            ids::LABS,
            "-y",
            "-o",
            "json",
            "-Ab_c",
        ])
        .run();
    r.code(0);
    let j: AnchorJson = parse(&r.stdout);
    assert_eq!(j.id, H1);
    assert_eq!(j.previous_org_id.as_deref(), Some(ids::HQ));
    assert_eq!(org_of(H1), ids::LABS);
    // Without --force it is still refused: the flag was read as a flag, not as the token.
    db.orgctl(&["token", "anchor", "--org", ids::HQ, "--yes", "-Ab_cdef"])
        .run()
        .code(3)
        .one_line_error("--force");
    // `--` after the options, as the runbook and the help show it.
    db.orgctl(&[
        "token",
        "anchor",
        "--org",
        ids::HQ,
        "--yes",
        "--",
        "-Zz9_xyz",
    ])
    .run()
    .code(0);
    assert_eq!(org_of(H2), ids::HQ);
    db.orgctl(&["token", "anchor", "--yes", "--org", ids::HQ, "-yqvoyqv"])
        .run()
        .code(2);
    db.orgctl(&[
        "token",
        "anchor",
        "--yes",
        "--org",
        ids::HQ,
        "--",
        "-yqvoyqv",
    ])
    .run()
    .code(0);
    assert_eq!(org_of(H4), ids::HQ);
    assert_eq!(audit_count(&db, "token anchor"), 4);

    // revoke: after, before, `--`, a prefix starting with `--`, and already revoked.
    let revoke = |args: &[&str]| -> RevokeJson {
        let mut a = vec!["token", "revoke"];
        a.extend_from_slice(args);
        let r = db.orgctl(&a).run();
        r.code(0);
        parse(&r.stdout)
    };
    let j = revoke(&["-Ab_cdef", "--yes", "-o", "json"]);
    assert_eq!(j.revoked, [H1]);
    let j = revoke(&["--yes", "-o", "json", "-Zz9_xyz"]);
    assert_eq!(j.revoked, [H2]);
    let j = revoke(&["--Qr5tuv", "-o", "json", "-y"]);
    assert_eq!(j.revoked, [H3]);
    let j = revoke(&["-o", "json", "--yes", "--", "-yqvoyqv"]);
    assert_eq!(j.revoked, [H4]);
    let j = revoke(&["-o", "json", "-Ab_cdef"]);
    assert!(j.revoked.is_empty());
    assert_eq!(j.already_revoked, [H1]);
    assert_eq!(
        db.scalar(
            "SELECT count(*) FROM org_api_tokens WHERE created_by = 'x' AND revoked_at IS NULL"
        ),
        "0"
    );
    assert_eq!(audit_count(&db, "token revoke"), 4);

    // Already revoked needs no confirmation: exit 0 without --yes, nothing written.
    let before = db.snapshot();
    let r = db.orgctl(&["token", "revoke", "-Ab_", "-o", "json"]).run();
    r.code(0);
    assert_eq!(parse::<RevokeJson>(&r.stdout).already_revoked, [H1]);
    assert_eq!(db.snapshot(), before);
    // A live token with a hyphen prefix, no --yes and no terminal: the confirmation refusal
    // (exit 3), with the prefix first, and nothing revoked.
    db.exec(
        "INSERT INTO org_api_tokens (id, token_hash, prefix, name, created_by) VALUES
          ('70000000-0000-4000-8000-0000000000c5', sha256('c5'::bytea), '-Nq7_abc', 'h5', 'x')",
    );
    let before = db.snapshot();
    let audits = db.audit_rows();
    let r = db.orgctl(&["token", "revoke", "-Nq7_", "-o", "json"]).run();
    r.code(3).one_line_error("--yes");
    assert!(r.stdout.is_empty(), "{}", r.stdout);
    assert_eq!(db.snapshot(), before);
    assert_eq!(db.audit_rows(), audits);
    db.orgctl(&["token", "revoke", "-Zzz", "--yes"])
        .run()
        .code(1)
        .one_line_error("no token has a prefix starting with '-Zzz'");
    assert_eq!(db.snapshot(), before);
}

/// `token list` never cuts a script short: JSON and a piped table list every match by default.
#[test]
fn list_gives_scripts_every_token_by_default() {
    let db = TestDb::sample();
    db.exec(
        "INSERT INTO org_api_tokens (token_hash, prefix, created_by, created_at, org_id)
         SELECT sha256(('many-' || g)::bytea), 'bulk' || lpad(g::text, 4, '0'), 'many',
                '2025-01-01'::timestamptz + g * interval '1 minute', NULL
           FROM generate_series(1, 150) g",
    );
    let before = db.snapshot();
    // JSON: all 156 live tokens, newest first, nothing said about a cut.
    let r = db.orgctl(&["token", "list", "-o", "json"]).run();
    r.code(0);
    let j: ListJson = parse(&r.stdout);
    assert_eq!(j.tokens.len(), 156);
    assert_eq!(j.tokens[0].prefix, "bulk0150");
    assert_eq!(j.tokens[149].prefix, "bulk0001");
    assert_eq!(j.tokens[155].id, T5);
    assert!(!r.stderr.contains("more match"), "{}", r.stderr);
    // A piped table: every token, streamed as tab-separated lines (header + 156).
    let r = db.orgctl(&["token", "list"]).run();
    r.code(0);
    assert_eq!(r.stdout.lines().count(), 157, "{}", r.stdout);
    assert!(r.stdout.starts_with("id\tprefix\tname"));
    assert!(!r.stderr.contains("more match"), "{}", r.stderr);
    assert_eq!(
        r.stdout,
        db.orgctl(&["token", "list", "--limit", "0"]).run().stdout
    );
    // --limit N still cuts, anywhere, and says so on stderr.
    let r = db
        .orgctl(&["token", "list", "-o", "json", "--limit", "100"])
        .run();
    r.code(0);
    assert_eq!(parse::<ListJson>(&r.stdout).tokens.len(), 100);
    assert!(
        r.stderr
            .contains("Showing the newest 100 live tokens; more match"),
        "{}",
        r.stderr
    );
    let r = db.orgctl(&["token", "list", "--limit", "3"]).run();
    r.code(0);
    assert_eq!(r.stdout.matches("bulk").count(), 3, "{}", r.stdout);
    assert!(r.stdout.contains("bulk0150") && r.stdout.contains("bulk0148"));
    assert!(r.stderr.contains("more match"), "{}", r.stderr);

    // The human table on a terminal keeps a default of 100 and says that more match.
    match on_terminal(&db, "token list") {
        Some(out) => {
            assert_eq!(out.matches("bulk").count(), 100, "{out}");
            assert!(
                out.contains("bulk0150") && !out.contains("bulk0050"),
                "{out}"
            );
            assert!(
                out.contains("Showing the newest 100 live tokens; more match"),
                "{out}"
            );
        }
        None => panic!("no `script` (util-linux) to give a pty: install util-linux"),
    }
    assert_eq!(db.snapshot(), before);
}

/// `orgctl ARGS` with stdin, stdout and stderr on a pseudo-terminal (util-linux `script`), 400
/// columns wide; the merged output, or None when `script` is not installed.
fn on_terminal(db: &TestDb, args: &str) -> Option<String> {
    let line = format!(
        "stty cols 400 rows 50; exec '{}' {args}",
        env!("CARGO_BIN_EXE_orgctl")
    );
    let out = std::process::Command::new("script")
        .args(["-qec", &line, "/dev/null"])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("USER", "tester")
        .env("NO_COLOR", "1")
        .env("DATABASE_URL", &db.url)
        .stdin(Stdio::null())
        .output();
    match out {
        Ok(o) if o.status.success() => Some(String::from_utf8_lossy(&o.stdout).to_string()),
        Ok(o) => panic!(
            "orgctl {args} on a terminal: {:?}\n{}",
            o.status.code(),
            String::from_utf8_lossy(&o.stdout)
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => panic!("script: {e}"),
    }
}

/// `revoke --created-by` reports the label's tokens that were revoked before it ran as
/// `already_revoked`; a label with nothing live left writes nothing.
#[test]
fn bulk_revoke_reports_already_revoked_tokens_and_writes_nothing_when_none_is_live() {
    let db = TestDb::sample();
    // Only revoked tokens with this label, from an earlier incident.
    db.exec(
        "INSERT INTO org_api_tokens (id, token_hash, prefix, name, created_by, created_at, revoked_at) VALUES
          ('70000000-0000-4000-8000-0000000000d1', sha256('d1'::bytea), 'dddd0001', 'old 1', 'incident-7', '2024-06-01', '2024-06-02'),
          ('70000000-0000-4000-8000-0000000000d2', sha256('d2'::bytea), 'dddd0002', 'old 2', 'incident-7', '2024-06-03', '2024-06-04')",
    );
    let before = db.snapshot();
    let r = db
        .orgctl(&[
            "token",
            "revoke",
            "--created-by",
            "incident-7",
            "-o",
            "json",
        ])
        .run();
    r.code(0);
    let j: RevokeJson = parse(&r.stdout);
    assert!(j.revoked.is_empty());
    assert_eq!(
        j.already_revoked,
        [
            "70000000-0000-4000-8000-0000000000d2",
            "70000000-0000-4000-8000-0000000000d1"
        ]
    );
    assert!(
        r.stderr.contains("already revoked; nothing to do"),
        "{}",
        r.stderr
    );
    // The table: the already revoked rows, not an empty table; no --yes needed.
    let r = db
        .orgctl(&["token", "revoke", "--created-by", "incident-7"])
        .run();
    r.code(0);
    assert!(
        r.stdout.contains("dddd0001") && r.stdout.contains("dddd0002"),
        "{}",
        r.stdout
    );
    assert_eq!(
        r.stdout.matches("already revoked (2024-06-0").count(),
        2,
        "{}",
        r.stdout
    );
    assert_eq!(
        db.snapshot(),
        before,
        "nothing written, not even orgctl's schema"
    );
    assert_eq!(audit_count(&db, "token revoke"), 0);

    // Mixed: the live ones are revoked, T3 (revoked in April) is reported as such.
    let r = db
        .orgctl(&[
            "token",
            "revoke",
            "--created-by",
            "session",
            "--yes",
            "-o",
            "json",
        ])
        .run();
    r.code(0);
    let j: RevokeJson = parse(&r.stdout);
    assert_eq!(j.revoked, [T8, T1, T5], "newest first");
    assert_eq!(j.already_revoked, [T3]);
    assert!(
        r.stderr
            .contains("1 other token(s) with this label were already revoked"),
        "{}",
        r.stderr
    );
    assert_eq!(
        db.scalar(&format!(
            "SELECT revoked_at::date FROM org_api_tokens WHERE id = '{T3}'"
        )),
        "2024-04-01",
        "an earlier revocation is left as it was"
    );
    // And again: all four are history now; exit 0, nothing written.
    let before = db.snapshot();
    let r = db
        .orgctl(&["token", "revoke", "--created-by", "session", "-o", "json"])
        .run();
    r.code(0);
    let j: RevokeJson = parse(&r.stdout);
    assert!(j.revoked.is_empty());
    assert_eq!(j.already_revoked, [T8, T3, T1, T5]);
    let r = db
        .orgctl(&["token", "revoke", "--created-by", "session"])
        .run();
    r.code(0);
    assert_eq!(
        r.stdout.matches("already revoked (").count(),
        4,
        "{}",
        r.stdout
    );
    assert_eq!(db.snapshot(), before);
    assert_eq!(audit_count(&db, "token revoke"), 1);

    // The table of a mixed run lists both kinds.
    db.exec(
        "INSERT INTO org_api_tokens (id, token_hash, prefix, created_by, created_at, revoked_at) VALUES
          ('70000000-0000-4000-8000-0000000000d3', sha256('d3'::bytea), 'dddd0003', 'incident-7', '2024-07-01', NULL)",
    );
    let r = db
        .orgctl(&["token", "revoke", "--created-by", "incident-7", "--yes"])
        .run();
    r.code(0);
    let lines: Vec<&str> = r.stdout.lines().filter(|l| l.contains("dddd")).collect();
    assert_eq!(lines.len(), 3, "{}", r.stdout);
    assert!(
        lines[0].contains("dddd0003")
            && lines[0].contains("revoked")
            && !lines[0].contains("already")
    );
    assert!(lines[1].contains("dddd0002") && lines[1].contains("already revoked"));
}

/// The default table fits 80 columns with whole, copyable handles — on a
/// pipe, and on a terminal that reports 0x0 — full ids with --wide; the revoke --created-by
/// confirmation too.
#[test]
fn list_table_fits_80_columns_and_wide_shows_full_ids() {
    let db = TestDb::sample();
    let fits = |text: &str| {
        for l in text.lines() {
            assert!(l.chars().count() <= 80, "wider than 80: {l:?}\n{text}");
        }
    };
    let r = db
        .orgctl(&["token", "list", "--all", "--limit", "50"])
        .run();
    r.code(0);
    fits(&r.stdout);
    assert!(r.stdout.starts_with("PREFIX"), "{}", r.stdout);
    for p in ["sampl001", "sampl004", "sampl007"] {
        assert!(
            r.stdout.contains(&format!("{p}  ")),
            "{p} whole: {}",
            r.stdout
        );
    }
    assert!(!r.stdout.contains("70000000-0000-4000-8000-000000000004"));

    let wide = db
        .orgctl(&["token", "list", "--all", "--limit", "50", "--wide"])
        .run();
    wide.code(0);
    assert!(wide.stdout.contains("70000000-0000-4000-8000-000000000004"));
    assert!(wide.stdout.contains(ids::LABS), "{}", wide.stdout);

    // A terminal that reports 0x0 (script's pty): 80 columns, never 1-character columns.
    let tty = db.orgctl(&["token", "list"]).run_in_pty("");
    tty.code(0);
    fits(&tty.stdout);
    assert!(tty.stdout.contains("sampl004"), "{}", tty.stdout);
    let tty_wide = db.orgctl(&["token", "list", "--wide"]).run_in_pty("");
    tty_wide.code(0);
    assert!(
        tty_wide
            .stdout
            .contains("70000000-0000-4000-8000-000000000004"),
        "{}",
        tty_wide.stdout
    );

    // The revoke --created-by confirmation, answered no: compact, and nothing changes.
    let before = db.snapshot();
    let c = db
        .orgctl(&["token", "revoke", "--created-by", "session"])
        .run_in_pty("n");
    c.code(3);
    assert!(c.stdout.contains("PREFIX"), "{}", c.stdout);
    assert!(c.stdout.contains("sampl001  "), "{}", c.stdout);
    let table: String = c
        .stdout
        .lines()
        .filter(|l| !l.contains("[y/N]") && !l.starts_with("error"))
        .map(|l| format!("{l}\n"))
        .collect();
    fits(&table);
    assert_eq!(db.snapshot(), before);
}

/// `token anchor --stale` moves every stale anchor to the root in one planned,
/// confirmed, audited transaction, and `status` names it.
#[test]
fn anchor_stale_moves_every_stale_anchor_to_the_root() {
    let db = TestDb::sample();
    // Several roots and no agent: the root is ambiguous.
    let before = db.snapshot();
    db.orgctl(&["token", "anchor", "--stale", "--yes"])
        .run()
        .code(2)
        .one_line_error("--org is required");
    assert_eq!(db.snapshot(), before);

    db.orgctl(&["install-platform-agent", "--model", "m", "--yes"])
        .run()
        .code(0);
    let agent = db.scalar("SELECT id FROM workspaces WHERE kind = 'platform'");
    // Written after the install: a revoked token on a former root (stale: status counts it),
    // and a revoked token on an ordinary non-root (not stale: left alone).
    db.exec(&format!(
        "INSERT INTO org_api_tokens (token_hash, prefix, name, created_by, revoked_at, org_id) VALUES
           (sha256('late-1'::bytea), 'late0001', 'late', 'session', now(), '{}'),
           (sha256('late-2'::bytea), 'late0002', 'late', 'session', now(), '{}')",
        ids::LABS,
        ids::RESEARCH
    ));
    let st = db.orgctl(&["status"]).run();
    st.code(1);
    assert!(
        st.stdout.contains("orgctl token anchor --stale"),
        "status names the fix: {}",
        st.stdout
    );

    // Dry run: the plan, nothing changed, no audit row.
    let before = db.snapshot();
    let audits = db.audit_rows();
    let dry = db
        .orgctl(&["token", "anchor", "--stale", "--dry-run", "-o", "json"])
        .run();
    dry.code(0);
    let j = dry.json();
    assert_eq!(j["dry_run"], true);
    // A dry run's `changed`: applying would change something.
    assert_eq!(j["changed"], true);
    assert_eq!(j["to"], agent.as_str());
    assert_eq!(j["tokens"], 2, "{j}");
    assert_eq!(db.snapshot(), before);
    assert_eq!(db.audit_rows(), audits);

    // No terminal, no --yes: refused, nothing changed.
    db.orgctl(&["token", "anchor", "--stale"])
        .run()
        .code(3)
        .one_line_error("confirmation needed");
    assert_eq!(db.snapshot(), before);

    let r = db
        .orgctl(&["token", "anchor", "--stale", "--yes", "-o", "json"])
        .run();
    r.code(0);
    assert_eq!(r.json()["changed"], true);
    assert_eq!(
        db.scalar(&format!(
            "SELECT count(*) FROM org_api_tokens WHERE org_id = '{agent}'
               AND prefix IN ('sampl008', 'late0001')"
        )),
        "2"
    );
    assert_eq!(
        db.scalar("SELECT org_id FROM org_api_tokens WHERE prefix = 'late0002'"),
        ids::RESEARCH,
        "a revoked token on an ordinary non-root is not stale"
    );
    assert_eq!(db.audit_rows(), audits + 1);
    assert_eq!(
        db.scalar("SELECT args->>'tokens' FROM orgctl.audit_log ORDER BY id DESC LIMIT 1"),
        "2"
    );
    let (_, sj) = crate::status::status_json(&db, &[]);
    let check = sj
        .checks
        .iter()
        .find(|c| c.name == "tokens_on_root")
        .map(|c| c.ok);
    assert_eq!(check, Some(true));

    // Again: nothing to do, nothing written.
    let again = db.orgctl(&["token", "anchor", "--stale", "--yes"]).run();
    again.code(0);
    assert!(again.stderr.contains("nothing to do"), "{}", again.stderr);
    assert_eq!(db.audit_rows(), audits + 1);

    // Bad input: a token and --stale, --dry-run without --stale, --stale --force.
    for bad in [
        &["token", "anchor", "sampl006", "--stale"][..],
        &["token", "anchor", "sampl006", "--dry-run"][..],
        &["token", "anchor", "--stale", "--force"][..],
        &["token", "anchor"][..],
    ] {
        db.orgctl(bad).run().code(2);
    }
}
