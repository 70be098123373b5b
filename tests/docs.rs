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
