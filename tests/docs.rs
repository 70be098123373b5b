//! completions/ and man/ are generated from the clap definitions and checked in: fail when
//! they are stale. `ORGCTL_BLESS=1 cargo test docs` rewrites them.

use std::path::Path;

#[test]
fn completions_and_man_pages_are_fresh() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let files = match orgctl::docs::render_all() {
        Ok(f) => f,
        Err(e) => panic!("{e}"),
    };
    let bless = std::env::var_os("ORGCTL_BLESS").is_some();
    let mut stale = Vec::new();
    for (rel, content) in &files {
        let path = root.join(rel);
        let current = std::fs::read(&path).unwrap_or_default();
        if current != *content {
            if bless {
                if let Some(dir) = path.parent() {
                    let _ = std::fs::create_dir_all(dir);
                }
                if let Err(e) = std::fs::write(&path, content) {
                    panic!("{}: {e}", path.display());
                }
            } else {
                stale.push(rel.display().to_string());
            }
        }
    }
    // Pages for commands that no longer exist are stale too.
    if let Ok(rd) = std::fs::read_dir(root.join("man")) {
        for e in rd.flatten() {
            let rel = Path::new("man").join(e.file_name());
            if !files.iter().any(|(p, _)| *p == rel) {
                if bless {
                    let _ = std::fs::remove_file(e.path());
                } else {
                    stale.push(format!("{} (no such command)", rel.display()));
                }
            }
        }
    }
    assert!(
        stale.is_empty(),
        "stale generated files (run `ORGCTL_BLESS=1 cargo test docs` and commit): {stale:?}"
    );
}

/// Every fenced block of the README that is a tenants file (a line whose second field is a
/// PostgreSQL URL) parses as one: an example an operator copies must not be rejected.
#[test]
fn every_tenants_file_example_in_the_readme_parses() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = match std::fs::read_to_string(root.join("README.md")) {
        Ok(t) => t,
        Err(e) => panic!("README.md: {e}"),
    };
    let examples = tenants_file_examples(&readme);
    assert!(
        !examples.is_empty(),
        "no tenants file example found in the README"
    );
    for (line, text) in &examples {
        if let Err(e) = orgctl::backfill::tenants::parse(text, &format!("README.md:{line}")) {
            panic!("the README's tenants file example at line {line} does not parse: {e}");
        }
    }
}

/// (first line of the block in the README, the block's text) for each fenced block that looks
/// like a tenants file.
fn tenants_file_examples(readme: &str) -> Vec<(usize, String)> {
    let is_tenant_line = |l: &str| {
        let f: Vec<&str> = l.split_whitespace().collect();
        f.len() >= 2
            && !f[0].contains('=')
            && f[0] != "orgctl"
            && (f[1].starts_with("postgres://") || f[1].starts_with("postgresql://"))
    };
    let mut out = Vec::new();
    let mut block: Option<(usize, String)> = None;
    for (i, l) in readme.lines().enumerate() {
        if l.trim_start().starts_with("```") {
            match block.take() {
                Some((start, text)) => {
                    if text.lines().any(is_tenant_line) {
                        out.push((start, text));
                    }
                }
                None => block = Some((i + 2, String::new())),
            }
        } else if let Some((_, text)) = block.as_mut() {
            text.push_str(l.trim_start());
            text.push('\n');
        }
    }
    out
}

#[test]
fn the_readme_example_finder_finds_a_tenants_file_and_nothing_else() {
    let md = "```sh\norgctl status postgres://h/db\nDATABASE_URL=postgres://h/db\n```\n\
              text\n```\n# fleet.txt\nacme postgres://h/acme # note\n```\n";
    let found = tenants_file_examples(md);
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].0, 7, "the first line inside the fence");
}
