//! The source tree's shape, checked: each layer imports only the layers under it, the units
//! of a layer form no cycle, and no hand-written file grows past the size a reader can hold.
//!
//! Layers, top to bottom (a module may use its own layer and the ones below):
//!
//! | layer | modules | what it is |
//! |---|---|---|
//! | 0 | `lib.rs`, `main.rs` | `run()`: parse, runtime, Ctrl-C race, print the error once |
//! | 1 | `commands` | one file per subcommand: arguments → an operation → rendering |
//! | 2 | `cli`, `context` | clap definitions only; what every command gets |
//! | 3 | `ops` | plain-data plans owning their SQL; no clap, no tables |
//! | 4 | `audit` | the audit chain: canonical form, append, read, verify |
//! | 5 | `platform` | the platform's own rules and HTTP routes |
//! | 6 | `db` | PostgreSQL mechanics only |
//! | 7 | `output` | formatting, tables, JSON, progress, prompts |
//! | 8 | `error`, `redact`, `sys`, `interrupt` | what everything may use |

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Longest hand-written source file, in lines.
const MAX_FILE_LINES: usize = 800;
/// Longest function, in lines (signature to closing brace).
const MAX_FN_LINES: usize = 120;

fn layer_of(unit_root: &str) -> Option<u8> {
    Some(match unit_root {
        "lib" | "main" => 0,
        "commands" => 1,
        "cli" | "context" => 2,
        "ops" => 3,
        "audit" => 4,
        "platform" => 5,
        "db" => 6,
        "output" => 7,
        "error" | "redact" | "sys" | "interrupt" => 8,
        _ => return None,
    })
}

/// Items re-exported at the crate root, by the module that owns them.
fn root_item_owner(item: &str) -> Option<&'static str> {
    match item {
        "Context" => Some("context"),
        "run" | "print_error" | "statements" | "testing" => Some("lib"),
        _ => None,
    }
}

fn sources() -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        let Ok(rd) = std::fs::read_dir(dir) else {
            return;
        };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }
    let mut v = Vec::new();
    walk(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"), &mut v);
    v.sort();
    v
}

/// `src/ops/install/plan.rs` → ["ops", "install", "plan"]; `src/db/mod.rs` → ["db"].
fn module_path(file: &Path) -> Vec<String> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let rel = file.strip_prefix(&src).unwrap_or(file);
    let mut parts: Vec<String> = rel
        .iter()
        .map(|c| c.to_string_lossy().trim_end_matches(".rs").to_string())
        .collect();
    if parts.last().is_some_and(|l| l == "mod") {
        parts.pop();
    }
    parts
}

/// A unit for the cycle check: the first component, and for the big layers the second too
/// (`ops::install`, `platform::keys`).
fn unit(path: &[String]) -> String {
    match path {
        [a, b, ..] if matches!(a.as_str(), "ops" | "commands" | "platform" | "cli") => {
            format!("{a}::{b}")
        }
        [a, ..] => a.clone(),
        [] => "lib".into(),
    }
}

/// The code of a file without comments (line comments and doc comments).
fn code(text: &str) -> String {
    text.lines()
        .map(|l| {
            let t = l.trim_start();
            if t.starts_with("//") {
                ""
            } else {
                l
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every `crate::…` path the code names, as its first two components; `use crate::{a, b::c}`
/// groups are expanded.
fn crate_paths(code: &str) -> BTreeSet<Vec<String>> {
    let mut out = BTreeSet::new();
    let bytes = code.as_bytes();
    let mut i = 0;
    while let Some(pos) = code[i..].find("crate::") {
        let start = i + pos;
        i = start + "crate::".len();
        if start > 0 {
            let prev = bytes[start - 1];
            if prev.is_ascii_alphanumeric() || prev == b'_' || prev == b'$' {
                continue;
            }
        }
        if code[i..].starts_with('{') {
            let Some(end) = matching_brace(&code[i..]) else {
                continue;
            };
            for item in split_top(&code[i + 1..i + end]) {
                out.extend(expand(item.trim()));
            }
        } else {
            out.extend(expand(&code[i..]));
        }
    }
    out.retain(|p| !p.is_empty() && !p[0].is_empty());
    out
}

fn matching_brace(s: &str) -> Option<usize> {
    let mut depth = 0;
    for (k, c) in s.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    return Some(k);
                }
            }
            _ => {}
        }
    }
    None
}

fn split_top(s: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut depth, mut last) = (0, 0);
    for (k, c) in s.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&s[last..k]);
                last = k + 1;
            }
            _ => {}
        }
    }
    parts.push(&s[last..]);
    parts
}

/// `a::{b, c::d}` → [a, b], [a, c]; `a::b::C` → [a, b].
fn expand(s: &str) -> Vec<Vec<String>> {
    let first = head(s);
    let Some(a) = first.first() else {
        return Vec::new();
    };
    let rest = s[a.len()..].trim_start();
    if let Some(group) = rest.strip_prefix("::{") {
        let end = matching_brace(&format!("{{{group}")).unwrap_or(group.len() + 1);
        let inner = &group[..end.saturating_sub(1).min(group.len())];
        return split_top(inner)
            .into_iter()
            .filter_map(|item| head(item.trim()).first().cloned())
            .map(|b| vec![a.clone(), b])
            .collect();
    }
    vec![first]
}

fn head(s: &str) -> Vec<String> {
    s.split("::")
        .take(2)
        .map(|p| {
            p.chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect::<String>()
        })
        .take_while(|p| !p.is_empty())
        .collect()
}

/// The module a `crate::` path lands in: root re-exports resolved to their owner.
fn target_of(p: &[String]) -> Vec<String> {
    match root_item_owner(&p[0]) {
        Some(owner) => vec![owner.to_string()],
        None => p.to_vec(),
    }
}

struct Tree {
    /// unit → units it imports, with the file that does
    edges: BTreeMap<String, BTreeMap<String, String>>,
    upward: Vec<String>,
    unplaced: BTreeSet<String>,
    long: Vec<(String, usize)>,
}

fn survey() -> Tree {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut t = Tree {
        edges: BTreeMap::new(),
        upward: Vec::new(),
        unplaced: BTreeSet::new(),
        long: Vec::new(),
    };
    for file in sources() {
        let text = std::fs::read_to_string(&file).unwrap_or_default();
        let rel = file
            .strip_prefix(root)
            .unwrap_or(&file)
            .display()
            .to_string();
        let lines = text.lines().count();
        if lines > MAX_FILE_LINES {
            t.long.push((rel.clone(), lines));
        }
        let me = module_path(&file);
        let my_unit = unit(&me);
        let Some(my_layer) = layer_of(me.first().map(String::as_str).unwrap_or("lib")) else {
            t.unplaced.insert(rel.clone());
            continue;
        };
        for p in crate_paths(&code(&text)) {
            let target = target_of(&p);
            let their_unit = unit(&target);
            let Some(their_layer) = layer_of(&target[0]) else {
                t.unplaced.insert(format!("crate::{}", target[0]));
                continue;
            };
            if their_layer < my_layer {
                t.upward.push(format!("{rel} uses crate::{}", p.join("::")));
            }
            if their_unit != my_unit {
                t.edges
                    .entry(my_unit.clone())
                    .or_default()
                    .entry(their_unit)
                    .or_insert_with(|| rel.clone());
            }
        }
    }
    t
}

/// Every cycle's units, one representative per cycle (a depth-first search per unit).
fn cycles(edges: &BTreeMap<String, BTreeMap<String, String>>) -> Vec<Vec<String>> {
    let mut found: BTreeSet<Vec<String>> = BTreeSet::new();
    for start in edges.keys() {
        let mut stack = vec![(start.clone(), vec![start.clone()])];
        while let Some((at, path)) = stack.pop() {
            for next in edges.get(&at).into_iter().flat_map(|m| m.keys()) {
                if next == start {
                    let mut c = path.clone();
                    let min = c.iter().enumerate().min_by_key(|(_, u)| *u).map(|(k, _)| k);
                    c.rotate_left(min.unwrap_or(0));
                    found.insert(c);
                } else if !path.contains(next) && path.len() < 8 {
                    let mut p = path.clone();
                    p.push(next.clone());
                    stack.push((next.clone(), p));
                }
            }
        }
    }
    found.into_iter().collect()
}

#[test]
fn every_module_is_placed_in_a_layer_and_imports_only_downward() {
    let t = survey();
    assert!(
        t.unplaced.is_empty() && t.upward.is_empty(),
        "modules outside the layers: {:#?}\nupward imports: {:#?}",
        t.unplaced,
        t.upward
    );
}

#[test]
fn no_import_cycles_between_units() {
    let t = survey();
    let c = cycles(&t.edges);
    assert!(c.is_empty(), "import cycles: {c:#?}");
}

#[test]
fn no_hand_written_file_is_longer_than_a_reader_can_hold() {
    let t = survey();
    assert!(
        t.long.is_empty(),
        "files over {MAX_FILE_LINES} lines: {:#?}",
        t.long
    );
}

/// Every `fn` of a file longer than `max` lines: (name, first line, length). A function is its
/// `fn` line to the line where its braces close (string literals with braces are rare enough
/// in this tree not to matter; a false positive shows up as an absurd length).
fn long_functions(text: &str, max: usize) -> Vec<(String, usize, usize)> {
    let lines: Vec<&str> = text.lines().collect();
    let mut found = Vec::new();
    for (k, l) in lines.iter().enumerate() {
        let t = l.trim_start();
        let is_fn = [
            "fn ",
            "pub fn ",
            "async fn ",
            "pub async fn ",
            "pub(crate) fn ",
            "pub(crate) async fn ",
            "pub(super) fn ",
            "pub(super) async fn ",
            "const fn ",
            "pub const fn ",
        ]
        .iter()
        .any(|p| t.starts_with(p));
        if !is_fn {
            continue;
        }
        let name: String = t
            .split("fn ")
            .nth(1)
            .unwrap_or("")
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        let mut depth = 0i64;
        let mut opened = false;
        let mut end = None;
        'scan: for (j, body) in lines.iter().enumerate().skip(k) {
            let code = body.split("//").next().unwrap_or("");
            for c in code.chars() {
                match c {
                    '{' => {
                        depth += 1;
                        opened = true;
                    }
                    '}' => depth -= 1,
                    ';' if !opened && depth == 0 => break 'scan, // a declaration without a body
                    _ => {}
                }
                if opened && depth == 0 {
                    end = Some(j);
                    break 'scan;
                }
            }
        }
        if let Some(end) = end {
            let len = end - k + 1;
            if len > max {
                found.push((name, k + 1, len));
            }
        }
    }
    found
}

#[test]
fn no_function_is_longer_than_a_reader_can_hold() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut long = Vec::new();
    for file in sources() {
        let text = std::fs::read_to_string(&file).unwrap_or_default();
        let rel = file
            .strip_prefix(root)
            .unwrap_or(&file)
            .display()
            .to_string();
        for (name, line, len) in long_functions(&text, MAX_FN_LINES) {
            long.push(format!("{rel}:{line} {name}: {len} lines"));
        }
    }
    assert!(
        long.is_empty(),
        "functions over {MAX_FN_LINES} lines: {long:#?}"
    );
}

#[test]
fn the_function_reader_measures_bodies() {
    let text =
        "fn a() {\n    if x {\n        y();\n    }\n}\nfn b();\npub async fn c() -> X {\n}\n";
    assert!(long_functions(text, 5).is_empty());
    assert_eq!(long_functions(text, 4), [("a".to_string(), 1, 5)]);
}

#[test]
fn the_path_reader_sees_grouped_imports_and_skips_comments() {
    let c = code("use crate::{db, output::Sink, platform::{keys, tree}};\n// crate::cli::X\nlet x = crate::error::Error::usage(\"\");");
    let got: Vec<String> = crate_paths(&c).into_iter().map(|p| p.join("::")).collect();
    assert_eq!(
        got,
        [
            "db",
            "error::Error",
            "output::Sink",
            "platform::keys",
            "platform::tree"
        ]
        .map(String::from),
        "{c}"
    );
}
