//! Ctrl-C. The command future is raced against the signal: an interrupted command is dropped,
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
