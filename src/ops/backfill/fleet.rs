//! The fleet runner: one task per tenant, at most `concurrency` at once, answering Ctrl-C.
//!
//! The first Ctrl-C (or SIGTERM) starts no new tenant and lets in-flight ones finish or roll
//! back; a second abandons the in-flight tenants (closing their connections rolls their
//! transactions back), except one whose COMMIT is on the wire, which is waited for.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::ops::backfill::tenants::Tenant;

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
    #[cfg(test)]
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

/// A tenant's line of a fleet report, as the runner makes it for a task it did not finish.
pub trait TenantLine: Sized {
    /// The line of a tenant never started.
    fn not_started(t: &Tenant) -> Self;
    /// The line of a tenant that failed with `error` after `duration_ms`.
    fn failed(t: &Tenant, error: String, duration_ms: u64) -> Self;
}

impl<T: TenantLine> Slot<T> {
    /// The tenant's line from what became of its task.
    pub fn into_line(self, t: &Tenant) -> T {
        match self {
            Slot::Done(r) => r,
            Slot::NotStarted => T::not_started(t),
            Slot::Abandoned(ms) => T::failed(
                t,
                "abandoned by a second Ctrl-C before its commit: its transaction was rolled back"
                    .into(),
                ms,
            ),
            Slot::Panicked(detail) => T::failed(t, panicked_message(&detail), 0),
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::backfill::tenants;

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
}
