//! Ctrl-C and SIGTERM. The command future is raced against the signal: an interrupted command is dropped,
//! which closes its connection, so the server rolls its transaction back. The one moment that
//! must not be cut short is a COMMIT on the wire (or work that only makes sense to finish once
//! something is committed, such as restart calls); [`CommitGuard`] marks it, and a Ctrl-C that
//! arrives then waits for it. Once anything was committed, an interrupt never claims that
//! nothing changed.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

static COMMITTING: AtomicUsize = AtomicUsize::new(0);
static COMMITTED: AtomicBool = AtomicBool::new(false);

pub struct CommitGuard(());

impl CommitGuard {
    pub fn enter() -> Self {
        COMMITTING.fetch_add(1, Ordering::SeqCst);
        CommitGuard(())
    }

    /// The COMMIT went through (answered, or verified after a lost answer): from now on no
    /// message may claim that nothing changed.
    pub fn done(self) {
        COMMITTED.store(true, Ordering::SeqCst);
    }
}

impl Drop for CommitGuard {
    fn drop(&mut self) {
        // Leaving the guarded section. Without `done` the commit failed or is in doubt, and
        // the error says which.
        COMMITTING.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A COMMIT (or post-commit work) is in progress.
pub fn committing() -> bool {
    COMMITTING.load(Ordering::SeqCst) > 0
}

/// This process committed a change.
pub fn committed() -> bool {
    COMMITTED.load(Ordering::SeqCst)
}

/// Two signals closer together than this count as one: `timeout -s INT`, a supervisor that
/// signals the whole process group, or a terminal that delivers Ctrl-C to both orgctl and a
/// wrapper all deliver the same interrupt more than once.
pub const SAME_SIGNAL_WINDOW: std::time::Duration = std::time::Duration::from_secs(1);

static LEVEL: std::sync::OnceLock<tokio::sync::watch::Receiver<u8>> = std::sync::OnceLock::new();

/// How many interrupts arrived (SIGINT or SIGTERM, the ones within [`SAME_SIGNAL_WINDOW`] of
/// the previous counted as one). The listener starts on first use, inside the runtime; SIGTERM
/// (what systemd and Kubernetes send) is handled exactly as the first Ctrl-C.
pub fn level() -> tokio::sync::watch::Receiver<u8> {
    LEVEL.get_or_init(listen).clone()
}

fn listen() -> tokio::sync::watch::Receiver<u8> {
    use tokio::signal::unix::{signal, SignalKind};
    let (tx, rx) = tokio::sync::watch::channel(0u8);
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        // No handler could be installed: the default actions stay (the process dies).
        std::mem::forget(tx);
        return rx;
    };
    tokio::spawn(async move {
        let mut last: Option<tokio::time::Instant> = None;
        let mut n = 0u8;
        loop {
            let got = tokio::select! {
                r = int.recv() => r.is_some(),
                r = term.recv() => r.is_some(),
            };
            if !got {
                break;
            }
            let now = tokio::time::Instant::now();
            if last.is_some_and(|t| now.duration_since(t) < SAME_SIGNAL_WINDOW) {
                continue;
            }
            last = Some(now);
            n = n.saturating_add(1);
            if tx.send(n).is_err() {
                break;
            }
        }
    });
    rx
}

/// Resolves once `n` interrupts have arrived.
pub async fn reached(n: u8) {
    let mut rx = level();
    if rx.wait_for(|v| *v >= n).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// A line on stderr that must never fail the command (a closed stderr is ignored).
pub fn say(msg: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{msg}");
}
