//! The chain check: a state machine over the stored rows in id order that names the first
//! break (a row altered, removed or inserted) and counts the others; unit-testable without a
//! database ([`super::read::read_chain`] feeds it).

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::canonical::{Link, GENESIS};
use crate::output::head::hex;

/// What kind of break `verify` found.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ProblemKind {
    /// A row's content (or its hash) no longer matches its hash.
    Altered,
    /// Links are missing: a gap in `seq`, or the newest rows gone (the head records more).
    Removed,
    /// A row that is not where orgctl appended it: no hash after the chain began, a repeated
    /// or earlier `seq`, or a link that does not follow its predecessor or the head.
    Inserted,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Problem {
    pub kind: ProblemKind,
    /// The audit row the break is found at (`null` when the rows after the last one are gone).
    pub id: Option<i64>,
    pub seq: Option<i64>,
    pub message: String,
}

/// A stored audit row, as `verify` reads it.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct StoredRow {
    pub id: i64,
    pub seq: Option<i64>,
    pub at: DateTime<Utc>,
    pub os_user: String,
    pub db_user: String,
    pub command: String,
    pub args: String,
    pub reason: Option<String>,
    pub outcome: String,
    pub orgctl_version: String,
    pub prev_hash: Option<Vec<u8>>,
    pub row_hash: Option<Vec<u8>>,
}

/// The chain check as a state machine over the rows in id order (unit-testable without a
/// database): [`Verifier::row`] for each row, then [`Verifier::finish`] with the head.
#[derive(Debug, Default)]
pub struct Verifier {
    pub rows: u64,
    pub unchained: u64,
    /// What the chain recorded when it began: the number of rows written before it and their
    /// highest id. `None` on a tenant whose chain predates that record.
    pub pre_chain: Option<(i64, Option<i64>)>,
    /// A head recorded outside the database (`--head`), and whether its link was found intact.
    pub anchor: Option<(i64, [u8; 32])>,
    anchor_seen: bool,
    pub chained: u64,
    /// id, seq and hash of the last chained row.
    last: Option<(i64, i64, [u8; 32])>,
    pub first: Option<Problem>,
    pub problems: u64,
}

impl Verifier {
    pub fn problem(
        &mut self,
        kind: ProblemKind,
        id: Option<i64>,
        seq: Option<i64>,
        message: String,
    ) {
        self.problems += 1;
        if self.first.is_none() {
            self.first = Some(Problem {
                kind,
                id,
                seq,
                message,
            });
        }
    }

    pub fn row(&mut self, r: &StoredRow) {
        self.rows += 1;
        let id = r.id;
        let fields = (
            r.seq,
            r.prev_hash
                .as_deref()
                .and_then(|p| <[u8; 32]>::try_from(p).ok()),
            r.row_hash
                .as_deref()
                .and_then(|h| <[u8; 32]>::try_from(h).ok()),
        );
        let (seq, prev, stored) = match fields {
            (None, None, None)
                if r.prev_hash.is_none() && r.row_hash.is_none() && self.chained == 0 =>
            {
                if let Some((n, max_id)) = self.pre_chain {
                    // Beyond the recorded highest id: this row is the forgery. Too many at or
                    // below it: which one is not known, [`Verifier::finish`] says how many.
                    if !max_id.is_some_and(|m| id <= m) {
                        self.problem(
                            ProblemKind::Inserted,
                            Some(id),
                            None,
                            format!("row id {id} has no hash and is not one of the {n} row(s) written before the chain began{}: it was inserted outside orgctl", max_id.map(|m| format!(" (ids up to {m})")).unwrap_or_default()),
                        );
                        return;
                    }
                }
                self.unchained += 1;
                return;
            }
            (None, None, None) if r.prev_hash.is_none() && r.row_hash.is_none() => {
                let after = self.last.map(|(l, _, _)| l).unwrap_or_default();
                self.problem(
                    ProblemKind::Inserted,
                    Some(id),
                    None,
                    format!("row id {id} has no hash although the chain began before it (at or before row id {after}): it was inserted outside orgctl"),
                );
                return;
            }
            (Some(s), Some(p), Some(h)) => (s, p, h),
            _ => {
                self.chained += 1;
                self.problem(
                    ProblemKind::Altered,
                    Some(id),
                    r.seq,
                    format!("row id {id} has incomplete or malformed chain fields (seq, prev_hash, row_hash): it was altered"),
                );
                return;
            }
        };
        self.chained += 1;
        let link = Link {
            seq,
            id,
            at: r.at,
            os_user: &r.os_user,
            db_user: &r.db_user,
            command: &r.command,
            args: &r.args,
            reason: r.reason.as_deref(),
            outcome: &r.outcome,
            orgctl_version: &r.orgctl_version,
        };
        let recomputed = link.hash(&prev).ok();
        if let Some((anchor_seq, anchor_hash)) = self.anchor {
            if anchor_seq == seq && anchor_hash == stored && recomputed == Some(stored) {
                self.anchor_seen = true;
            }
        }
        let previous = self.last.replace((id, seq, stored));
        if recomputed != Some(stored) {
            self.problem(
                ProblemKind::Altered,
                Some(id),
                Some(seq),
                format!(
                    "row id {id} (seq {seq}) was altered: its content no longer matches its hash"
                ),
            );
            return;
        }
        self.follows(id, seq, prev, previous);
    }

    /// Check that an intact link (`id`, `seq`, `prev`) follows `previous`, the last chained
    /// row before it (id, seq, hash), or starts the chain.
    fn follows(
        &mut self,
        id: i64,
        seq: i64,
        prev: [u8; 32],
        previous: Option<(i64, i64, [u8; 32])>,
    ) {
        let (want_seq, want_prev) = previous.map(|(_, s, h)| (s + 1, h)).unwrap_or((1, GENESIS));
        let after = previous
            .map(|(l, _, _)| format!("after row id {l}"))
            .unwrap_or_else(|| "at the start of the chain".into());
        if seq == want_seq && prev == want_prev {
            return;
        }
        if seq > want_seq {
            let gap = if seq - want_seq == 1 {
                format!("seq {want_seq}")
            } else {
                format!("seq {want_seq} to {}", seq - 1)
            };
            self.problem(
                ProblemKind::Removed,
                Some(id),
                Some(seq),
                format!(
                    "{} row(s) were removed {after}, before row id {id} ({gap} missing)",
                    seq - want_seq
                ),
            );
        } else if seq < want_seq {
            self.problem(
                ProblemKind::Inserted,
                Some(id),
                Some(seq),
                format!("row id {id} (seq {seq}) was inserted out of order: it comes {after}, which already reached seq {}", want_seq - 1),
            );
        } else {
            self.problem(
                ProblemKind::Inserted,
                Some(id),
                Some(seq),
                format!("row id {id} (seq {seq}) does not follow the row {after}: that row's hash was rewritten or this row was inserted out of order"),
            );
        }
    }

    /// Compare the last link with the recorded head (`None`: no head table, before the chain).
    pub fn finish(&mut self, head: Option<(i64, Vec<u8>)>) {
        if let Some((n, max_id)) = self.pre_chain {
            if self.unchained as i64 > n {
                self.problem(
                    ProblemKind::Inserted,
                    None,
                    None,
                    format!(
                        "{} row(s) without a hash are more than the {n} written before the chain began{}: rows were inserted outside orgctl",
                        self.unchained,
                        max_id.map(|m| format!(" (ids up to {m})")).unwrap_or_default()
                    ),
                );
            } else if (self.unchained as i64) < n {
                self.problem(
                    ProblemKind::Removed,
                    None,
                    None,
                    format!(
                        "{} of the {n} row(s) written before the chain began were removed",
                        n - self.unchained as i64
                    ),
                );
            }
        }
        if let Some((anchor_seq, anchor_hash)) = self.anchor {
            if !self.anchor_seen {
                self.problem(
                    ProblemKind::Removed,
                    None,
                    Some(anchor_seq),
                    format!(
                        "the head recorded outside the database (seq {anchor_seq}, row_hash {}) is not in the chain: rows up to it were removed or rewritten and the head moved back",
                        hex(&anchor_hash)
                    ),
                );
            }
        }
        let Some((head_seq, head_hash)) = head else {
            if self.chained > 0 {
                self.problem(
                    ProblemKind::Removed,
                    None,
                    None,
                    "the chain's head (orgctl.audit_head) was removed".into(),
                );
            }
            return;
        };
        match self.last {
            None if head_seq > 0 => self.problem(
                ProblemKind::Removed,
                None,
                Some(head_seq),
                format!(
                    "all {head_seq} chained row(s) were removed (the head records seq {head_seq})"
                ),
            ),
            None => {}
            Some((id, seq, hash)) => {
                if head_seq > seq {
                    self.problem(
                        ProblemKind::Removed,
                        None,
                        Some(seq + 1),
                        format!("the newest {} row(s) were removed after row id {id} (the head records seq {head_seq}, the last row is seq {seq})", head_seq - seq),
                    );
                } else if head_seq < seq {
                    self.problem(
                        ProblemKind::Inserted,
                        Some(id),
                        Some(seq),
                        format!("row id {id} (seq {seq}) was appended outside orgctl: the head records seq {head_seq}"),
                    );
                } else if head_hash.as_slice() != hash {
                    self.problem(
                        ProblemKind::Altered,
                        Some(id),
                        Some(seq),
                        format!("row id {id} (seq {seq}) does not match the head orgctl recorded: it or the head was altered"),
                    );
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at() -> DateTime<Utc> {
        match DateTime::parse_from_rfc3339("2026-12-01T07:15:00.123456Z") {
            Ok(t) => t.with_timezone(&Utc),
            Err(e) => panic!("{e}"),
        }
    }

    /// A chain of `n` rows (ids 10, 20, …), hashed as the append does.
    fn chain(n: i64) -> Vec<StoredRow> {
        let mut prev = GENESIS;
        (1..=n)
            .map(|seq| {
                let mut r = StoredRow {
                    id: seq * 10,
                    seq: Some(seq),
                    at: at(),
                    os_user: "alice".into(),
                    db_user: "postgres".into(),
                    command: "token mint".into(),
                    args: format!(r#"{{"n": {seq}, "a": "é\n"}}"#),
                    reason: Some("INC-1".into()),
                    outcome: "applied".into(),
                    orgctl_version: "0.1.0".into(),
                    prev_hash: Some(prev.to_vec()),
                    row_hash: None,
                };
                let h = link_of(&r).hash(&prev).unwrap_or_default();
                r.row_hash = Some(h.to_vec());
                prev = h;
                r
            })
            .collect()
    }

    fn link_of(r: &StoredRow) -> Link<'_> {
        Link {
            seq: r.seq.unwrap_or_default(),
            id: r.id,
            at: r.at,
            os_user: &r.os_user,
            db_user: &r.db_user,
            command: &r.command,
            args: &r.args,
            reason: r.reason.as_deref(),
            outcome: &r.outcome,
            orgctl_version: &r.orgctl_version,
        }
    }

    fn run(rows: &[StoredRow], head: Option<(i64, Vec<u8>)>) -> Verifier {
        let mut v = Verifier::default();
        for r in rows {
            v.row(r);
        }
        v.finish(head);
        v
    }

    fn head_of(rows: &[StoredRow]) -> Option<(i64, Vec<u8>)> {
        rows.last().map(|r| {
            (
                r.seq.unwrap_or_default(),
                r.row_hash.clone().unwrap_or_default(),
            )
        })
    }

    fn unchained(id: i64) -> StoredRow {
        let mut r = chain(1).remove(0);
        r.id = id;
        r.seq = None;
        r.prev_hash = None;
        r.row_hash = None;
        r
    }

    #[test]
    fn an_intact_chain_after_unchained_rows() {
        let mut rows = vec![unchained(1), unchained(2)];
        rows.extend(chain(3));
        let v = run(&rows, head_of(&rows));
        assert_eq!(
            (v.unchained, v.chained, v.first.clone()),
            (2, 3, None),
            "{v:?}"
        );
    }

    #[test]
    fn each_kind_of_tampering_is_named() {
        let rows = chain(5);
        let head = head_of(&rows);
        // Altered.
        let mut t = rows.clone();
        t[2].outcome = "failed".into();
        let v = run(&t, head.clone());
        assert_eq!(
            v.first.map(|p| (p.kind, p.id)),
            Some((ProblemKind::Altered, Some(30)))
        );
        // A middle row deleted.
        let mut t = rows.clone();
        t.remove(2);
        let v = run(&t, head.clone());
        assert_eq!(
            v.first.map(|p| (p.kind, p.id)),
            Some((ProblemKind::Removed, Some(40)))
        );
        // The newest row deleted.
        let mut t = rows.clone();
        t.pop();
        let v = run(&t, head.clone());
        assert_eq!(
            v.first.map(|p| (p.kind, p.id)),
            Some((ProblemKind::Removed, None))
        );
        // A row without hashes inserted after the chain began.
        let mut t = rows.clone();
        t.push(unchained(60));
        let v = run(&t, head.clone());
        assert_eq!(
            v.first.map(|p| (p.kind, p.id)),
            Some((ProblemKind::Inserted, Some(60)))
        );
        // A copy of a row inserted later (a replay).
        let mut t = rows.clone();
        let mut copy = t[1].clone();
        copy.id = 35;
        t.insert(3, copy);
        let v = run(&t, head.clone());
        assert_eq!(v.first.map(|p| p.kind), Some(ProblemKind::Altered));
        // Everything chained deleted.
        let v = run(&[], head);
        assert_eq!(v.first.map(|p| p.kind), Some(ProblemKind::Removed));
    }
}
