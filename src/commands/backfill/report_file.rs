//! `--report FILE` as one JSON document, written whole at the end, atomically.

use std::path::Path;

use crate::error::{Error, Result};

/// Write a JSON report atomically (a temporary file renamed into place).
pub fn write_report<T: serde::Serialize>(path: &Path, doc: &T) -> Result<()> {
    let mut text = serde_json::to_string_pretty(doc)
        .map_err(|e| Error::failed(format!("could not render the report: {e}")))?;
    text.push('\n');
    let text = crate::redact::mask(&text);
    let fail = |e: std::io::Error| {
        Error::failed(format!(
            "could not write the report {}: {e}",
            path.display()
        ))
    };
    // A temporary file next to the target (so the rename is atomic), under an unpredictable
    // name, created exclusively and without following a symlink: nobody can plant a file or
    // link there to have the report written elsewhere.
    let (tmp, mut file) = create_temp_next_to(path).map_err(fail)?;
    let written = {
        use std::io::Write;
        file.write_all(text.as_bytes())
            .and_then(|_| file.sync_all())
            .and_then(|_| std::fs::rename(&tmp, path))
    };
    written.map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        fail(e)
    })
}

/// Create `.NAME.RANDOM.tmp` in the directory of `path` with O_CREAT|O_EXCL|O_NOFOLLOW, mode
/// 0600.
fn create_temp_next_to(path: &Path) -> std::io::Result<(std::path::PathBuf, std::fs::File)> {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_else(|| "report".to_string());
    let mut last = None;
    for _ in 0..8 {
        let mut rnd = [0u8; 8];
        getrandom::getrandom(&mut rnd).map_err(|e| std::io::Error::other(e.to_string()))?;
        let suffix: String = rnd.iter().map(|b| format!("{b:02x}")).collect();
        let tmp = dir.join(format!(".{name}.{suffix}.tmp"));
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&tmp)
        {
            Ok(f) => return Ok((tmp, f)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("no free temporary name")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_report_never_goes_through_a_planted_file_or_link() {
        let dir = std::env::temp_dir().join(format!("orgctl-report-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap_or_default();
        let target = dir.join("report.json");
        let victim = dir.join("victim");
        std::fs::write(&victim, "untouched").unwrap_or_default();
        // The old predictable temporary name, planted as a link to the victim.
        let _ = std::os::unix::fs::symlink(&victim, dir.join("report.tmp-orgctl"));
        assert!(write_report(&target, &serde_json::json!({"ok": true})).is_ok());
        assert_eq!(
            std::fs::read_to_string(&victim).unwrap_or_default(),
            "untouched"
        );
        assert!(std::fs::read_to_string(&target)
            .unwrap_or_default()
            .contains("\"ok\": true"));
        // No temporary file is left behind.
        let left: Vec<String> = std::fs::read_dir(&dir)
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().to_string())
                    .filter(|n| n.ends_with(".tmp"))
                    .collect()
            })
            .unwrap_or_default();
        assert!(left.is_empty(), "{left:?}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
