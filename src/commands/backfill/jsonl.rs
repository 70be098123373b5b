//! `--report FILE.jsonl`: the report as JSON Lines, written as the run goes — one line per
//! tenant as it finishes, flushed at once, and a summary line at the end — so a killed pod or
//! a watcher (`tail -f`) has a usable partial report. Separate from the final JSON report
//! (`write_report`), which is written whole at the end.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::error::{Error, Result};

/// Whether `--report` asks for JSON Lines (the file name ends in `.jsonl`).
pub fn wanted(path: &Path) -> bool {
    path.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("jsonl"))
}

pub struct Jsonl {
    path: PathBuf,
    file: Option<std::fs::File>,
    error: Option<String>,
}

#[derive(Serialize)]
struct Line<'a, T: Serialize> {
    kind: &'static str,
    run_id: &'a str,
    #[serde(flatten)]
    body: &'a T,
}

impl Jsonl {
    /// Create (or truncate) the file before any tenant starts, so a bad path fails the run
    /// up front rather than after the work. Like the JSON report's temporary file: a new file
    /// gets mode 0600 (a report names databases and errors), and a symbolic link at the path
    /// is refused (O_NOFOLLOW), never followed to whatever it points at.
    pub fn create(path: &Path) -> Result<Self> {
        use std::os::unix::fs::OpenOptionsExt;
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)
            .map_err(|e| {
                let why = if e.raw_os_error() == Some(libc::ELOOP) {
                    "it is a symbolic link; give the real path".to_string()
                } else {
                    e.to_string()
                };
                Error::failed(format!(
                    "could not write the report {}: {why}",
                    path.display()
                ))
            })?;
        Ok(Jsonl {
            path: path.to_path_buf(),
            file: Some(file),
            error: None,
        })
    }

    /// Append one line (`kind` is "tenant" or "summary") and flush it. A write error stops
    /// further writes and is returned by `finish`; it never stops the run.
    pub fn line<T: Serialize>(&mut self, kind: &'static str, run_id: &str, body: &T) {
        let Some(file) = self.file.as_mut() else {
            return;
        };
        let res = serde_json::to_string(&Line { kind, run_id, body })
            .map_err(|e| e.to_string())
            .and_then(|text| {
                let mut text = crate::redact::mask(&text);
                text.push('\n');
                file.write_all(text.as_bytes())
                    .and_then(|_| file.flush())
                    .map_err(|e| e.to_string())
            });
        if let Err(e) = res {
            self.error = Some(e);
            self.file = None;
        }
    }

    pub fn finish(mut self) -> Result<()> {
        if let Some(f) = self.file.take() {
            if let Err(e) = f.sync_all() {
                self.error.get_or_insert(e.to_string());
            }
        }
        match self.error {
            None => Ok(()),
            Some(e) => Err(Error::failed(format!(
                "could not write the report {}: {e}",
                self.path.display()
            ))),
        }
    }
}
