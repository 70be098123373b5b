//! What an installed orgctl says about itself: `--version` names the version, the commit it was
//! built from and the platform schema it is tested against.

use std::path::Path;

use crate::harness::Cmd;

#[test]
fn version_names_the_commit_and_the_platform_schema() {
    let r = Cmd::new(&["--version"]).run();
    r.code(0);
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert_eq!(
        lines.first().copied(),
        Some(format!("orgctl {}", env!("CARGO_PKG_VERSION")).as_str()),
        "{}",
        r.stdout
    );
    // The commit: hex from git (or ORGCTL_COMMIT), "unknown" only outside a checkout.
    let commit = lines
        .iter()
        .find_map(|l| l.strip_prefix("commit: "))
        .unwrap_or_else(|| panic!("no commit line: {}", r.stdout));
    assert!(
        commit == "unknown" || (commit.len() >= 7 && commit.chars().all(|c| c.is_ascii_hexdigit())),
        "{commit}"
    );
    let in_checkout = std::process::Command::new("git")
        .args(["rev-parse", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    if let (Some(head), None) = (in_checkout, std::env::var_os("ORGCTL_COMMIT")) {
        // Built from this checkout: the commit is HEAD's (or an ancestor's when the build is
        // older than the last commit, which cargo rebuilds on the next build).
        assert!(
            head.starts_with(commit),
            "commit {commit} is not HEAD {head} (rebuild)"
        );
    }
    // The schema range: the dump the tests run on, and the older TEXT-status tenants.
    let schema = lines
        .iter()
        .find_map(|l| l.strip_prefix("platform schema: "))
        .unwrap_or_else(|| panic!("no platform schema line: {}", r.stdout));
    let tested = schema.split(' ').next().unwrap_or("");
    assert!(schema.contains("(tested)"), "{schema}");
    assert!(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join(format!("migrations/platform/schema-{tested}.sql"))
            .is_file(),
        "--version names schema {tested}, which is not the dump in migrations/platform/"
    );
    assert!(schema.contains("TEXT"), "older tenants: {schema}");
    // -V is the version only (the man pages carry it too, and do not change with each commit).
    let r = Cmd::new(&["-V"]).run();
    r.code(0);
    assert_eq!(
        r.stdout.trim(),
        format!("orgctl {}", env!("CARGO_PKG_VERSION"))
    );
}
