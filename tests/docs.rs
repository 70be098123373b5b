//! completions/ and man/ are generated from the clap definitions and checked in: fail when
//! they are stale. `ORGCTL_BLESS=1 cargo test docs` rewrites them.

use std::path::{Path, PathBuf};

#[test]
fn completions_and_man_pages_are_fresh() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let files = match orgctl::testing::render_all() {
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

/// The documentation's Markdown files, relative to the repository: README.md, CONTRIBUTING.md
/// and every `docs/**/*.md`, sorted.
pub(crate) fn doc_files() -> Vec<PathBuf> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<PathBuf>) {
        let rd = match std::fs::read_dir(dir) {
            Ok(rd) => rd,
            Err(e) => panic!("{}: {e}", dir.display()),
        };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(root, &p, out);
            } else if p.extension().is_some_and(|x| x == "md") {
                if let Ok(rel) = p.strip_prefix(root) {
                    out.push(rel.to_path_buf());
                }
            }
        }
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut out = vec![PathBuf::from("README.md"), PathBuf::from("CONTRIBUTING.md")];
    walk(root, &root.join("docs"), &mut out);
    out.sort();
    out
}

pub(crate) fn read_doc(rel: &Path) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(rel);
    match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) => panic!("{}: {e}", path.display()),
    }
}

/// Every fenced block of the README and of docs/ that is a tenants file (a line whose second
/// field is a PostgreSQL URL) parses as one: an example an operator copies must not be rejected.
#[test]
fn every_tenants_file_example_in_the_docs_parses() {
    let mut found = 0;
    for rel in doc_files() {
        let text = read_doc(&rel);
        for (line, block) in tenants_file_examples(&text) {
            found += 1;
            let at = format!("{}:{line}", rel.display());
            if let Err(e) = orgctl::testing::tenants::parse(&block, &at) {
                panic!("the tenants file example at {at} does not parse: {e}");
            }
        }
    }
    assert!(found > 0, "no tenants file example found in the docs");
}

/// Every relative link of the docs (`](path.md)`, `](path.md#heading)`, `](#heading)`) points
/// to a file that exists and, with a fragment into a Markdown file, to one of its headings.
#[test]
fn every_relative_link_in_the_docs_resolves() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut broken = Vec::new();
    let mut checked = 0;
    for rel in doc_files() {
        let text = read_doc(&rel);
        let dir = rel.parent().unwrap_or(Path::new(""));
        for (line, target) in relative_links(&text) {
            checked += 1;
            let (file, frag) = match target.split_once('#') {
                Some((f, h)) => (f, Some(h)),
                None => (target.as_str(), None),
            };
            let file_rel = if file.is_empty() {
                rel.clone()
            } else {
                normalize(&dir.join(file))
            };
            let at = format!("{}:{line}: {target}", rel.display());
            let path = root.join(&file_rel);
            if !path.exists() {
                broken.push(format!("{at} (no such file)"));
                continue;
            }
            if let Some(frag) = frag {
                if file_rel.extension().is_some_and(|x| x == "md") {
                    let slugs = heading_slugs(&read_doc(&file_rel));
                    if !slugs.iter().any(|s| s == frag) {
                        broken.push(format!("{at} (no such heading)"));
                    }
                }
            }
        }
    }
    assert!(checked > 0, "no relative link found in the docs");
    assert!(
        broken.is_empty(),
        "broken links in the docs:\n{}",
        broken.join("\n")
    );
}

/// The README's Documentation section links every page under docs/.
#[test]
fn the_readme_links_every_page_under_docs() {
    let readme = read_doc(Path::new("README.md"));
    let linked: Vec<String> = relative_links(&readme)
        .into_iter()
        .map(|(_, t)| t.split('#').next().unwrap_or("").to_string())
        .collect();
    let missing: Vec<String> = doc_files()
        .into_iter()
        .filter(|p| p.starts_with("docs"))
        .map(|p| p.display().to_string())
        .filter(|p| !linked.iter().any(|l| l == p))
        .collect();
    assert!(
        missing.is_empty(),
        "pages the README does not link: {missing:?}"
    );
}

/// (line, target) of every Markdown link outside code whose target is not a URL.
fn relative_links(md: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut fence = false;
    for (i, l) in md.lines().enumerate() {
        if l.trim_start().starts_with("```") {
            fence = !fence;
            continue;
        }
        if fence {
            continue;
        }
        let mut rest = l;
        while let Some(at) = rest.find("](") {
            let after = &rest[at + 2..];
            let Some(end) = after.find(')') else { break };
            let target = &after[..end];
            if !target.contains("://") && !target.starts_with("mailto:") && !target.is_empty() {
                out.push((i + 1, target.to_string()));
            }
            rest = &after[end..];
        }
    }
    out
}

/// `a/b/../c` → `a/c`, without touching the filesystem.
fn normalize(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::CurDir => {}
            other => out.push(other.as_os_str()),
        }
    }
    out
}

/// The anchors GitHub gives a page's headings: lower case, punctuation dropped, spaces as
/// hyphens, a repeated heading suffixed `-1`, `-2`, ….
fn heading_slugs(md: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut seen: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    let mut fence = false;
    for l in md.lines() {
        if l.trim_start().starts_with("```") {
            fence = !fence;
            continue;
        }
        if fence || !l.starts_with('#') {
            continue;
        }
        let title = l.trim_start_matches('#');
        if !title.starts_with(' ') {
            continue;
        }
        let slug: String = title
            .trim()
            .to_lowercase()
            .chars()
            .filter_map(|c| match c {
                ' ' => Some('-'),
                c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
                _ => None,
            })
            .collect();
        let n = seen.entry(slug.clone()).or_insert(0);
        out.push(if *n == 0 { slug } else { format!("{slug}-{n}") });
        *n += 1;
    }
    out
}

#[test]
fn heading_slugs_are_githubs() {
    let md = "# orgctl\n## Bringing the agent to life (`--provision`, `--wait`)\n```sh\n# not a heading\n```\n## Decisions\n## Decisions\n";
    assert_eq!(
        heading_slugs(md),
        [
            "orgctl",
            "bringing-the-agent-to-life---provision---wait",
            "decisions",
            "decisions-1"
        ]
    );
}

/// (first line of the block in its file, the block's text) for each fenced block that looks
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
fn the_example_finder_finds_a_tenants_file_and_nothing_else() {
    let md = "```sh\norgctl status postgres://h/db\nDATABASE_URL=postgres://h/db\n```\n\
              text\n```\n# fleet.txt\nacme postgres://h/acme # note\n```\n";
    let found = tenants_file_examples(md);
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].0, 7, "the first line inside the fence");
}

/// Every source path the docs name in backticks exists: a `src/…` file or folder, and any
/// `….rs` path. A path is looked up from the repository's root, then under `src/` (the layout
/// table says `platform/keys.rs`); a bare file name (`commit.rs`, in the row of its folder) must
/// be the name of some file under `src/` or `tests/`, or at the root (`build.rs`). A file that is
/// moved or renamed makes this fail until the docs follow it.
#[test]
fn every_source_path_in_the_docs_exists() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut names = Vec::new();
    for dir in ["src", "tests"] {
        file_names(&root.join(dir), &mut names);
    }
    let mut missing = Vec::new();
    let mut checked = 0;
    for rel in doc_files() {
        for (line, path) in source_paths(&read_doc(&rel)) {
            checked += 1;
            let found = if path.contains('/') {
                root.join(&path).exists() || root.join("src").join(&path).exists()
            } else {
                root.join(&path).exists() || names.contains(&path)
            };
            if !found {
                missing.push(format!("{}:{line}: `{path}`", rel.display()));
            }
        }
    }
    assert!(checked > 0, "no source path found in the docs");
    assert!(
        missing.is_empty(),
        "the docs name source files or folders that do not exist:\n{}",
        missing.join("\n")
    );
}

/// The names of the files under `dir`, recursively.
fn file_names(dir: &Path, out: &mut Vec<String>) {
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) => panic!("{}: {e}", dir.display()),
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            file_names(&p, out);
        } else {
            out.push(e.file_name().to_string_lossy().into_owned());
        }
    }
}

/// (line, path) of every inline code span outside fenced blocks that is a source path: one
/// word of path characters that starts with `src/` or ends with `.rs`.
fn source_paths(md: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut fence = false;
    for (i, l) in md.lines().enumerate() {
        if l.trim_start().starts_with("```") {
            fence = !fence;
            continue;
        }
        if fence {
            continue;
        }
        for span in l.split('`').skip(1).step_by(2) {
            let is_path = !span.is_empty()
                && span
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_./-".contains(c));
            if is_path && (span.starts_with("src/") || span.ends_with(".rs")) {
                out.push((i + 1, span.to_string()));
            }
        }
    }
    out
}

#[test]
fn the_source_path_finder_takes_code_spans_that_are_paths() {
    let md = "`src/db/` and `commit.rs`, not `cargo test docs.rs` nor `ops::install`\n\
              ```sh\nls `src/x.rs`\n```\n`tests/docs.rs`";
    assert_eq!(
        source_paths(md),
        [
            (1, "src/db/".to_string()),
            (1, "commit.rs".to_string()),
            (5, "tests/docs.rs".to_string())
        ]
    );
}
