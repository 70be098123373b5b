//! Ctrl-C. The command future is raced against the signal: an interrupted command is dropped,
//! which closes its connection, so the server rolls its transaction back. The one moment that
//! must not be cut short is a COMMIT on the wire; [`CommitGuard`] marks it, and a Ctrl-C that
//! arrives then waits for the commit to finish so the report is true.

use std::sync::atomic::{AtomicUsize, Ordering};

static COMMITTING: AtomicUsize = AtomicUsize::new(0);

pub struct CommitGuard(());

impl CommitGuard {
    pub fn enter() -> Self {
        COMMITTING.fetch_add(1, Ordering::SeqCst);
        CommitGuard(())
    }
}

impl Drop for CommitGuard {
    fn drop(&mut self) {
        COMMITTING.fetch_sub(1, Ordering::SeqCst);
    }
}

pub fn committing() -> bool {
    COMMITTING.load(Ordering::SeqCst) > 0
}
