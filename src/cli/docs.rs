//! Completions and man pages, generated from the clap definitions in [`crate::cli`]. They are
//! checked in under `completions/` and `man/`; a test regenerates them and fails when the
//! checked-in copies are stale (`ORGCTL_BLESS=1 cargo test docs` rewrites them).

use std::path::{Path, PathBuf};

use clap::CommandFactory;

use crate::cli::{Cli, Shell};

/// Every generated file, as (path relative to the repository, contents).
pub fn render_all() -> std::io::Result<Vec<(PathBuf, Vec<u8>)>> {
    let mut files = Vec::new();
    for (shell, name) in [
        (Shell::Bash, "orgctl.bash"),
        (Shell::Zsh, "_orgctl"),
        (Shell::Fish, "orgctl.fish"),
    ] {
        files.push((Path::new("completions").join(name), completions(shell)));
    }
    // The pages carry the version alone: --version's commit line would make every page stale
    // at every commit.
    let mut root = Cli::command().long_version(None::<&str>);
    root.build();
    man_pages(&root, "orgctl", "orgctl", &mut files)?;
    Ok(files)
}

/// `name` is the page (`orgctl-token-mint`), `invocation` how it is typed (`orgctl token mint`).
fn man_pages(
    cmd: &clap::Command,
    name: &str,
    invocation: &str,
    files: &mut Vec<(PathBuf, Vec<u8>)>,
) -> std::io::Result<()> {
    let page = cmd
        .clone()
        .name(name.to_string())
        .bin_name(invocation.to_string());
    let mut buf = Vec::new();
    clap_mangen::Man::new(page).render(&mut buf)?;
    files.push((Path::new("man").join(format!("{name}.1")), buf));
    for sub in cmd.get_subcommands() {
        if sub.is_hide_set() || sub.get_name() == "help" {
            continue;
        }
        man_pages(
            sub,
            &format!("{name}-{}", sub.get_name()),
            &format!("{invocation} {}", sub.get_name()),
            files,
        )?;
    }
    Ok(())
}

/// The completion script for one shell, in memory (clap_complete's generate() panics when its
/// writer fails, so nothing is written straight to a stream).
pub fn completions(shell: Shell) -> Vec<u8> {
    let shell = match shell {
        Shell::Bash => clap_complete::Shell::Bash,
        Shell::Zsh => clap_complete::Shell::Zsh,
        Shell::Fish => clap_complete::Shell::Fish,
    };
    let mut buf = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "orgctl", &mut buf);
    buf
}
