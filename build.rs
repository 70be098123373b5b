//! The commit `orgctl --version` names, fixed at build time. In order: `ORGCTL_COMMIT` (set by
//! the Dockerfile and the release workflow, whose build contexts carry no `.git`), the
//! `.cargo_vcs_info.json` that `cargo package` writes (a crate installed from the registry: it
//! may be unpacked inside some other repository, whose HEAD is not ours), the checkout's
//! `git rev-parse HEAD`, else "unknown". Never the network.

use std::path::Path;
use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let s = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (!s.is_empty()).then_some(s)
}

/// The commit recorded by `cargo package` (`{"git": {"sha1": "…"}}`), read without a JSON parser:
/// build scripts get no dependencies here.
fn packaged_commit(dir: &Path) -> Option<String> {
    let text = std::fs::read_to_string(dir.join(".cargo_vcs_info.json")).ok()?;
    let rest = &text[text.find("\"sha1\"")? + "\"sha1\"".len()..];
    let start = rest.find('"')? + 1;
    let len = rest[start..].find('"')?;
    let sha = &rest[start..start + len];
    sha.chars()
        .all(|c| c.is_ascii_hexdigit())
        .then(|| sha.to_string())
}

fn main() {
    println!("cargo:rerun-if-env-changed=ORGCTL_COMMIT");
    let dir = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| ".".into());
    let dir = Path::new(&dir);
    let from_env = std::env::var("ORGCTL_COMMIT")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty());
    let commit = from_env
        .or_else(|| packaged_commit(dir).map(|s| s.chars().take(12).collect()))
        .or_else(|| {
            // Rebuild when HEAD moves: HEAD itself (a checkout, a worktree's own HEAD) and the
            // branch it points at (loose or packed).
            if let Some(git_dir) = git(&["rev-parse", "--git-dir"]) {
                println!("cargo:rerun-if-changed={git_dir}/HEAD");
                if let (Some(common), Some(head_ref)) = (
                    git(&["rev-parse", "--git-common-dir"]),
                    git(&["symbolic-ref", "-q", "HEAD"]),
                ) {
                    println!("cargo:rerun-if-changed={common}/{head_ref}");
                    println!("cargo:rerun-if-changed={common}/packed-refs");
                }
            }
            git(&["rev-parse", "--short=12", "HEAD"])
        })
        .unwrap_or_else(|| "unknown".to_string());
    println!("cargo:rustc-env=ORGCTL_COMMIT={commit}");
}
