//! Every shell example of the docs runs. The fenced blocks of README.md, CONTRIBUTING.md and
//! docs/**/*.md whose info string is `sh` are run with bash (`set -euo pipefail`), the freshly
//! built orgctl first on PATH, in a fresh temporary directory (also HOME), against a fresh copy
//! of the sample org (`DATABASE_URL`) and with `ORGCTL_DEV_DIR` inside that directory, so
//! `orgctl dev up` starts its own throwaway server. A block passes when it exits 0, or the code
//! its first line declares (`# exit: 3`). A `<!-- setup: COMMANDS -->` comment on the line
//! before the fence gives the state the example starts from (an installed org, a key): its
//! commands run first, in the same script.
//!
//! A block that cannot run here is fenced `sh-norun` with its reason in an HTML comment on the
//! line before the fence (`<!-- norun: … -->`). The convention is `sh`: a block fenced `bash`,
//! `shell`, `console` or `zsh`, and an `sh-norun` block without a reason, fail the test, so no
//! example is skipped silently.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::docs::{doc_files, read_doc};
use crate::harness::TestDb;

/// How long one example may take (a `dev up --tenants 5` and a backfill included).
const EXAMPLE_TIMEOUT: Duration = Duration::from_secs(180);

#[derive(Debug, PartialEq)]
struct Block {
    /// The line of the opening fence (1-based).
    line: usize,
    info: String,
    /// The text of the `<!-- norun: … -->` comment on the line before the fence.
    norun_reason: Option<String>,
    /// The commands of a `<!-- setup: … -->` comment on the line before the fence: the state
    /// the example starts from, run first in the same script.
    setup: Option<String>,
    /// A `<!-- output of the example above -->` comment on the line before the fence: this
    /// block shows what the previous `sh` block prints.
    shows_output: bool,
    body: String,
}

fn blocks(md: &str) -> Vec<Block> {
    let mut out = Vec::new();
    let lines: Vec<&str> = md.lines().collect();
    let mut i = 0;
    while i < lines.len() {
        let l = lines[i];
        let trimmed = l.trim_start();
        if let Some(info) = trimmed.strip_prefix("```") {
            let indent = l.len() - trimmed.len();
            let comment = |kind: &str| {
                i.checked_sub(1)
                    .map(|p| lines[p].trim())
                    .and_then(|p| p.strip_prefix(kind))
                    .and_then(|p| p.strip_suffix("-->"))
                    .map(|r| r.trim().to_string())
                    .filter(|r| !r.is_empty())
            };
            let mut body = String::new();
            let mut j = i + 1;
            while j < lines.len() && !lines[j].trim_start().starts_with("```") {
                let b = lines[j];
                let cut = b.len() - b.trim_start().len();
                body.push_str(&b[cut.min(indent)..]);
                body.push('\n');
                j += 1;
            }
            out.push(Block {
                line: i + 1,
                info: info.trim().to_string(),
                norun_reason: comment("<!-- norun:"),
                setup: comment("<!-- setup:"),
                shows_output: i.checked_sub(1).map(|p| lines[p].trim())
                    == Some("<!-- output of the example above -->"),
                body,
            });
            i = j + 1;
        } else {
            i += 1;
        }
    }
    out
}

/// The exit code a block declares on its first line (`# exit: N`), else 0.
fn expected_exit(body: &str) -> i32 {
    body.lines()
        .next()
        .and_then(|l| l.trim().strip_prefix("# exit:"))
        .and_then(|c| c.trim().parse().ok())
        .unwrap_or(0)
}

struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Self {
        let p = std::env::temp_dir().join(format!("orgctl-doc-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        if let Err(e) = std::fs::create_dir_all(&p) {
            panic!("{}: {e}", p.display());
        }
        Scratch(p)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        // A block that failed after `dev up` leaves its server running: stop it.
        let _ = Command::new(env!("CARGO_BIN_EXE_orgctl"))
            .args(["dev", "down", "--dir"])
            .arg(self.0.join("dev"))
            .output();
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Run one block: Ok with its stdout and stderr, Err with what to show when it does not pass.
fn run(file: &Path, b: &Block) -> Result<String, String> {
    let db = TestDb::sample();
    let scratch = Scratch::new(&format!("{}", b.line));
    let dir = &scratch.0;
    let script = dir.join("example.sh");
    if let Err(e) = std::fs::write(
        &script,
        format!(
            "set -euo pipefail\n{}\n{}",
            b.setup.as_deref().unwrap_or(""),
            b.body
        ),
    ) {
        return Err(format!("{}: {e}", script.display()));
    }
    let bin = Path::new(env!("CARGO_BIN_EXE_orgctl"));
    let bindir = bin.parent().unwrap_or(Path::new("."));
    let path = format!(
        "{}:{}",
        bindir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = Command::new("timeout")
        .arg(EXAMPLE_TIMEOUT.as_secs().to_string())
        .arg("bash")
        .arg(&script)
        .env_clear()
        .env("PATH", path)
        .env("HOME", dir)
        .env("USER", "tester")
        .env("NO_COLOR", "1")
        .env("DATABASE_URL", &db.url)
        .env("ORGCTL_DEV_DIR", dir.join("dev"))
        .current_dir(dir)
        .output();
    let out = match out {
        Ok(o) => o,
        Err(e) => return Err(format!("could not run bash: {e}")),
    };
    let code = out.status.code().unwrap_or(-1);
    let want = expected_exit(&b.body);
    if code == want {
        return Ok(format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Err(format!(
        "{}:{}: exit {code}, the example declares {want}\n--- setup ---\n{}\n--- example ---\n{}--- stdout ---\n{}--- stderr ---\n{}",
        file.display(),
        b.line,
        b.setup.as_deref().unwrap_or(""),
        b.body,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    ))
}

/// Every `sh` block of the docs runs and exits as it declares; every `sh-norun` block says why.
#[test]
fn every_sh_example_in_the_docs_runs() {
    let (mut ran, mut norun, mut shown) = (0, 0, 0);
    let mut failures = Vec::new();
    for file in doc_files() {
        let mut last_output: Option<String> = None;
        for b in blocks(&read_doc(&file)) {
            let at = format!("{}:{}", file.display(), b.line);
            match b.info.as_str() {
                "sh" => {
                    ran += 1;
                    match run(&file, &b) {
                        Ok(out) => last_output = Some(out),
                        Err(e) => {
                            last_output = None;
                            failures.push(e);
                        }
                    }
                }
                _ if b.shows_output => {
                    shown += 1;
                    match &last_output {
                        Some(out) => {
                            if let Some(line) = missing_line(&b.body, out) {
                                failures.push(format!(
                                    "{at}: the output shown is not what the example above prints: {line:?} is not in\n{out}"
                                ));
                            }
                        }
                        None => failures.push(format!(
                            "{at}: an output block with no passing sh example before it"
                        )),
                    }
                }
                "sh-norun" => {
                    norun += 1;
                    if b.norun_reason.is_none() {
                        failures.push(format!(
                            "{at}: an sh-norun block needs `<!-- norun: REASON -->` on the line before its fence"
                        ));
                    }
                }
                "bash" | "shell" | "console" | "zsh" | "sh-session" => failures.push(format!(
                    "{at}: fenced `{}`: shell examples are fenced `sh` (run by this test) or `sh-norun` (with a reason)",
                    b.info
                )),
                _ => {}
            }
        }
    }
    eprintln!(
        "doc examples: {ran} run, {norun} not run (sh-norun, each with its reason), {shown} output block(s) checked"
    );
    assert!(ran > 0, "no sh example found in the docs");
    assert!(
        failures.is_empty(),
        "{} doc example(s) failed:\n\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}

/// The first line of a shown output that the real output lacks. Blank lines and a line of
/// `…` alone are skipped; a line with `…` in it is matched up to the `…`.
fn missing_line(shown: &str, actual: &str) -> Option<String> {
    shown
        .lines()
        .map(str::trim_end)
        .filter(|l| !l.trim().is_empty() && l.trim() != "…")
        .find(|l| {
            let want = l.split('…').next().unwrap_or("");
            !actual.lines().any(|a| a.contains(want))
        })
        .map(str::to_string)
}

#[test]
fn shown_output_is_matched_line_by_line_up_to_an_ellipsis() {
    let actual = "Plan: create the agent.\nplan_hash: sha256:abc\n";
    assert_eq!(
        missing_line("Plan: create the agent.\n…\nplan_hash: sha256:…\n", actual),
        None
    );
    assert_eq!(
        missing_line("Dry run: nothing was changed.\n", actual).as_deref(),
        Some("Dry run: nothing was changed.")
    );
}

#[test]
fn the_block_reader_finds_fences_reasons_indents_and_exit_codes() {
    let md = "text\n<!-- setup: orgctl dev seed -->\n```sh\n# exit: 3\norgctl status\n```\n<!-- norun: needs docker -->\n```sh-norun\ndocker run x\n```\n1. step\n   ```sh\n   orgctl dev up\n     continued\n   ```\n```\nno info\n```\n";
    let b = blocks(md);
    assert_eq!(b.len(), 4, "{b:?}");
    assert_eq!((b[0].line, b[0].info.as_str()), (3, "sh"));
    assert_eq!(b[0].setup.as_deref(), Some("orgctl dev seed"));
    assert_eq!(b[1].setup, None);
    assert_eq!(expected_exit(&b[0].body), 3);
    assert_eq!(b[1].norun_reason.as_deref(), Some("needs docker"));
    assert_eq!(b[0].norun_reason, None);
    assert_eq!(b[2].body, "orgctl dev up\n  continued\n");
    assert_eq!(expected_exit(&b[2].body), 0);
    assert_eq!(b[3].info, "");
}
