//! The audit chain's head as a committed change's JSON shows it (`audit_head`): the head this
//! process's last append moved the chain to, and the one its last COMMIT made durable.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use serde::Serialize;

/// The chain's head after this process's last append, and after its last COMMIT: what a
/// change prints as `audit_head`, for an operator to keep outside the database.
static PENDING_HEAD: Mutex<Option<(i64, [u8; 32])>> = Mutex::new(None);
static COMMITTED_HEAD: Mutex<Option<(i64, [u8; 32])>> = Mutex::new(None);
/// Several tenants in one run: one process-wide head would name none of them.
static FLEET: AtomicBool = AtomicBool::new(false);

/// The head an append moved the chain to, in a transaction not yet committed.
pub fn note_appended(seq: i64, row_hash: [u8; 32]) {
    if let Ok(mut h) = PENDING_HEAD.lock() {
        *h = Some((seq, row_hash));
    }
}

/// The transaction that appended committed (answered or verified).
pub fn note_committed() {
    let pending = PENDING_HEAD.lock().ok().and_then(|mut h| h.take());
    if let (Some(p), Ok(mut c)) = (pending, COMMITTED_HEAD.lock()) {
        *c = Some(p);
    }
}

/// This run changes several tenants: no single head is printed.
pub fn fleet_mode() {
    FLEET.store(true, Ordering::SeqCst);
}

/// The head this process committed last, as a change's JSON shows it; before its COMMIT, the
/// head it is about to commit (`token mint` delivers its token first, then commits: a failed
/// commit is then its own error).
pub fn committed_head() -> Option<HeadJson> {
    if FLEET.load(Ordering::SeqCst) {
        return None;
    }
    let pending = PENDING_HEAD.lock().ok().and_then(|h| *h);
    let head = pending.or_else(|| COMMITTED_HEAD.lock().ok().and_then(|h| *h))?;
    Some(HeadJson {
        seq: head.0,
        row_hash: hex(&head.1),
    })
}

/// The chain's head as JSON shows it (`audit_head` of a change, `head` of `audit verify`).
#[derive(Clone, Debug, Serialize)]
pub struct HeadJson {
    pub seq: i64,
    pub row_hash: String,
}

/// Lower-case hex of a hash.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}
