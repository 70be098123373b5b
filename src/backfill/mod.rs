//! `orgctl backfill run | rollback | status`: install-platform-agent across a fleet
//! of tenant databases, each in its own transaction with a snapshot of every row it changes, and
//! an exact rollback from that snapshot.
//!
//! - [`tenants`]: the tenants file and the stable shard hash.
//! - [`apply`]: one tenant of a run (and its dry run).
//! - [`rollback`]: one tenant of a rollback (drift check, restore).
//! - [`verify`]: rollback's plan-proof joins and its check of every restored row.
//! - [`status`]: each tenant's state under a run, read-only.
//!
//! Ctrl-C (and SIGTERM, the same as the first Ctrl-C): backfill handles it itself (see [`Cancel`]) instead of having its future dropped:
//! the first Ctrl-C starts no new tenant and lets in-flight ones finish or roll back, then the
//! summary prints and the exit code is 130; a second Ctrl-C abandons the in-flight tenants
//! (closing their connections rolls their transactions back), except one whose COMMIT is on the
//! wire, which is waited for.

pub mod apply;
pub mod digest;
pub mod jsonl;
pub mod rollback;
pub mod status;
pub mod tenants;
pub mod verify;

use std::future::Future;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::cli::BackfillCommand;
use crate::error::{Error, Exit, Result};
use crate::Context;

pub use tenants::{Shard, Tenant};

pub async fn run(ctx: &Context, cmd: &BackfillCommand) -> Result<Exit> {
    // Each tenant has its own audit chain: no single head to print.
    crate::audit::fleet_mode();
    let cancel = Cancel::listen();
    match cmd {
        BackfillCommand::Run(args) => apply::run(ctx, args, &cancel).await,
        BackfillCommand::Rollback(args) => rollback::run(ctx, args, &cancel).await,
        BackfillCommand::Status(args) => status::run(ctx, args, &cancel).await,
    }
}

/// Ctrl-C as a level: 0 none, 1 stop starting tenants, 2 abandon in-flight ones.
#[derive(Clone)]
pub struct Cancel {
    rx: watch::Receiver<u8>,
}

impl Cancel {
    /// Listen for Ctrl-C and SIGTERM for the rest of the command (two signals within about
    /// a second count as one: see [`crate::interrupt::SAME_SIGNAL_WINDOW`]).
    pub fn listen() -> Self {
        Cancel {
            rx: crate::interrupt::level(),
        }
    }

    /// A Cancel that never fires (tests of the modules).
    pub fn never() -> Self {
        let (tx, rx) = watch::channel(0u8);
        std::mem::forget(tx);
        Cancel { rx }
    }

    pub fn level(&self) -> u8 {
        *self.rx.borrow()
    }

    pub fn stopping(&self) -> bool {
        self.level() >= 1
    }

    /// Resolves once Ctrl-C has been pressed `level` times (never if the listener is gone).
    pub async fn reached(&mut self, level: u8) {
        if self.rx.wait_for(|v| *v >= level).await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// What became of one tenant's task.
pub enum Slot<T> {
    /// Never started (Ctrl-C, or a failed canary).
    NotStarted,
    Done(T),
    /// Abandoned by a second Ctrl-C before its COMMIT: its transaction rolled back. How long
    /// it had run, in milliseconds (the report's duration, not 0).
    Abandoned(u64),
    /// Its task panicked (a bug): its connection dropped, so its transaction rolled back.
    Panicked(String),
}

/// The report line of a tenant whose task panicked.
pub fn panicked_message(detail: &str) -> String {
    format!("internal error (a bug in orgctl: {detail}); the tenant's transaction was rolled back")
}

/// Marks the moment a tenant's COMMIT is on the wire: a second Ctrl-C then waits for it.
#[derive(Clone, Default)]
pub struct Committing(Arc<AtomicBool>);

impl Committing {
    pub fn enter(&self) -> CommittingGuard {
        self.0.store(true, Ordering::SeqCst);
        CommittingGuard(self.0.clone())
    }
    fn get(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

pub struct CommittingGuard(Arc<AtomicBool>);

impl Drop for CommittingGuard {
    fn drop(&mut self) {
        self.0.store(false, Ordering::SeqCst);
    }
}

/// Run `work` for each tenant, at most `concurrency` at once, in order of the list. After the
/// first Ctrl-C no new tenant starts; `done` is called as each finishes (for progress).
pub async fn for_each<T, F, Fut>(
    tenants: &[Tenant],
    concurrency: usize,
    cancel: &Cancel,
    work: F,
    mut done: impl FnMut(&T, usize),
) -> Vec<Slot<T>>
where
    T: Send + 'static,
    F: Fn(Tenant, Committing) -> Fut,
    Fut: Future<Output = T> + Send + 'static,
{
    let mut slots: Vec<Slot<T>> = tenants.iter().map(|_| Slot::NotStarted).collect();
    let mut set: JoinSet<(usize, Option<T>, u64)> = JoinSet::new();
    // Which tenant each task serves, so a panicking task is reported on its own tenant.
    let mut task_tenant: std::collections::HashMap<tokio::task::Id, usize> =
        std::collections::HashMap::new();
    let mut next = 0usize;
    let mut cancel_rx = cancel.clone();
    let mut abandon_rx = cancel.clone();
    let mut said_abandon = false;
    loop {
        while set.len() < concurrency.max(1) && next < tenants.len() && !cancel.stopping() {
            let committing = Committing::default();
            let fut = work(tenants[next].clone(), committing.clone());
            let mut abandon = cancel.clone();
            let idx = next;
            let handle = set.spawn(async move {
                let started = std::time::Instant::now();
                tokio::pin!(fut);
                tokio::select! {
                    r = &mut fut => (idx, Some(r), 0),
                    _ = abandon.reached(2) => {
                        if committing.get() {
                            // The COMMIT is on the wire: let it finish so the report is true.
                            (idx, Some(fut.await), 0)
                        } else {
                            (idx, None, crate::output::duration::millis(started.elapsed()))
                        }
                    }
                }
            });
            task_tenant.insert(handle.id(), idx);
            next += 1;
        }
        if set.is_empty() {
            break;
        }
        tokio::select! {
            joined = set.join_next() => {
                match joined {
                    Some(Ok((idx, Some(r), _))) => {
                        done(&r, set.len());
                        slots[idx] = Slot::Done(r);
                    }
                    Some(Ok((idx, None, ms))) => {
                        // The abandoning task can end before the branch below is polled: the
                        // second Ctrl-C is answered either way, once.
                        if !said_abandon {
                            said_abandon = true;
                            say_abandoning(set.len() + 1);
                        }
                        slots[idx] = Slot::Abandoned(ms);
                    }
                    // A panicking task: reported as failed on its tenant; the transaction it
                    // had open was rolled back when its connection dropped.
                    Some(Err(e)) => {
                        if let Some(idx) = task_tenant.get(&e.id()) {
                            slots[*idx] = Slot::Panicked(e.to_string());
                        }
                    }
                    None => break,
                }
            }
            // Wake up to stop starting tenants as soon as Ctrl-C arrives, and say what happens
            // now, so a waiting operator does not press it again.
            _ = cancel_rx.reached(1), if !cancel.stopping() => {
                let n = set.len();
                crate::interrupt::say(&format!(
                    "interrupted: starting no new tenant; finishing {n} in-flight tenant{} (Ctrl-C again to abandon {})",
                    if n == 1 { "" } else { "s" },
                    if n == 1 { "it: its transaction rolls back" } else { "them: their transactions roll back" }
                ));
            }
            // The second Ctrl-C is answered too, so the operator knows it was heard.
            _ = abandon_rx.reached(2), if cancel.stopping() && !said_abandon => {
                said_abandon = true;
                say_abandoning(set.len());
            }
        }
    }
    slots
}

/// The answer to the second Ctrl-C: `n` in-flight tenants are abandoned.
fn say_abandoning(n: usize) {
    crate::interrupt::say(&format!(
        "interrupted again: abandoning {n} in-flight tenant{}: {} (a COMMIT already sent is waited for)",
        if n == 1 { "" } else { "s" },
        if n == 1 { "its transaction rolls back" } else { "their transactions roll back" }
    ));
}

/// A new run id: `bf-` UTC timestamp and 8 random hex digits.
pub fn new_run_id() -> String {
    let mut b = [0u8; 4];
    let _ = getrandom::getrandom(&mut b);
    format!(
        "bf-{}-{:02x}{:02x}{:02x}{:02x}",
        chrono::Utc::now().format("%Y%m%dT%H%M%SZ"),
        b[0],
        b[1],
        b[2],
        b[3]
    )
}

/// Run ids are 1-64 letters, digits, '.', '_', ':' or '-' (they go into messages and files).
pub fn check_run_id(id: &str) -> Result<()> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-'));
    if ok {
        Ok(())
    } else {
        Err(Error::usage(
            "--run-id must be 1 to 64 letters, digits, '.', '_', ':' or '-'",
        ))
    }
}

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

/// An error as the summary shows it: one line, control characters stripped, passwords masked.
pub fn clean(e: &Error) -> String {
    crate::redact::mask(&crate::error::sanitize(&e.message))
}

/// Whether orgctl's backfill tables exist in this tenant (read-only commands never create them).
pub async fn backfill_tables_exist(conn: &mut sqlx::PgConnection) -> Result<bool> {
    crate::db::orgctl_table_readable(conn, "backfill_runs").await
}

/// A run a tenant has a row for: the answer to a run id that no selected tenant knows.
#[derive(Clone, Debug)]
pub struct KnownRun {
    pub run_id: String,
    pub at: chrono::DateTime<chrono::Utc>,
}

/// The runs this tenant knows, newest first (a handful: they go into one message).
pub async fn known_runs(conn: &mut sqlx::PgConnection) -> Result<Vec<KnownRun>> {
    use sqlx::Row;
    let rows = crate::db::query(
        "SELECT run_id, recorded_at FROM orgctl.backfill_runs ORDER BY recorded_at DESC, run_id LIMIT 10",
    )
    .fetch_all(&mut *conn)
    .await?;
    rows.iter()
        .map(|r| {
            Ok(KnownRun {
                run_id: r.try_get(0)?,
                at: r.try_get(1)?,
            })
        })
        .collect()
}

/// The error for a run id that none of the selected tenants has a row for: a mistyped id must
/// not read as "nothing to do". Names the run ids the tenants do know, newest first.
pub fn unknown_run<'a>(run_id: &str, known: impl Iterator<Item = &'a KnownRun>) -> Error {
    let mut newest: std::collections::HashMap<&str, chrono::DateTime<chrono::Utc>> =
        std::collections::HashMap::new();
    for k in known {
        let at = newest.entry(k.run_id.as_str()).or_insert(k.at);
        *at = (*at).max(k.at);
    }
    let mut runs: Vec<(&str, chrono::DateTime<chrono::Utc>)> = newest.into_iter().collect();
    runs.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    const SHOWN: usize = 5;
    let known = if runs.is_empty() {
        "no selected tenant has any backfill run".to_string()
    } else {
        let mut list: Vec<String> = runs
            .iter()
            .take(SHOWN)
            .map(|(id, at)| {
                format!(
                    "{} ({})",
                    crate::error::sanitize(id),
                    at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                )
            })
            .collect();
        if runs.len() > SHOWN {
            list.push(format!("and {} more", runs.len() - SHOWN));
        }
        format!("the runs they know, newest first: {}", list.join(", "))
    };
    Error::failed(format!(
        "no selected tenant knows run id '{run_id}' (is it mistyped?); nothing was changed; {known}"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tenant whose work panics is reported on that tenant, not as "not started", and the
    /// others still finish.
    #[tokio::test]
    async fn a_panicking_tenant_is_reported_on_its_own_tenant() {
        let tenants = match tenants::parse(
            "a postgres://h/a\nb postgres://h/b\nc postgres://h/c\n",
            "test",
        ) {
            Ok(t) => t,
            Err(e) => panic!("{e}"),
        };
        let slots = for_each(
            &tenants,
            2,
            &Cancel::never(),
            |t: Tenant, _c: Committing| async move {
                if t.name == "b" {
                    panic!("boom");
                }
                t.name.clone()
            },
            |_: &String, _| {},
        )
        .await;
        let seen: Vec<String> = slots
            .iter()
            .map(|s| match s {
                Slot::Done(n) => format!("done {n}"),
                Slot::Panicked(d) => format!("panicked {}", d.contains("boom")),
                Slot::NotStarted => "not started".into(),
                Slot::Abandoned(_) => "abandoned".into(),
            })
            .collect();
        assert_eq!(seen, ["done a", "panicked true", "done c"]);
        assert!(panicked_message("x").contains("rolled back"));
    }

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

    #[test]
    fn run_ids() {
        let id = new_run_id();
        assert!(check_run_id(&id).is_ok(), "{id}");
        assert!(id.starts_with("bf-"));
        for bad in ["", "a b", "x/y", &"a".repeat(65), "é"] {
            assert!(check_run_id(bad).is_err(), "{bad}");
        }
    }
}
