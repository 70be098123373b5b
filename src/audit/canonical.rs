//! The chain's canonical form: what `row_hash = sha256(prev_hash || content)` covers, defined
//! in [`Link::content`] so anyone can recompute it from the stored rows.

use std::fmt::Write as _;

use chrono::{DateTime, SecondsFormat, Utc};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// `prev_hash` of the first link.
pub const GENESIS: [u8; 32] = [0; 32];
/// Names the canonical-content format; a future format gets a new tag.
pub const CONTENT_TAG: &str = "orgctl-audit-v1";

/// One audit row's chained content: everything `row_hash` covers apart from `prev_hash`.
#[derive(Clone, Debug)]
pub struct Link<'a> {
    pub seq: i64,
    pub id: i64,
    pub at: DateTime<Utc>,
    pub os_user: &'a str,
    pub db_user: &'a str,
    pub command: &'a str,
    /// The arguments as PostgreSQL returns them (`args::text`).
    pub args: &'a str,
    pub reason: Option<&'a str>,
    pub outcome: &'a str,
    pub orgctl_version: &'a str,
}

impl Link<'_> {
    /// The canonical content, as UTF-8 bytes: a compact JSON array
    /// `["orgctl-audit-v1", seq, id, at, os_user, db_user, command, args, reason, outcome,
    /// orgctl_version]` where `at` is UTC RFC 3339 with six fractional digits and `Z`, `args`
    /// is the stored JSON with every object's keys sorted by their UTF-8 bytes, `reason` is
    /// null when absent, and strings are escaped as serde_json escapes them (`"`, `\` and
    /// control characters only). Independent of column order, row order and jsonb's key order.
    pub fn content(&self) -> Result<String> {
        let args: serde_json::Value = serde_json::from_str(self.args).map_err(|e| {
            Error::failed(format!(
                "audit row {}: its arguments are not JSON ({e})",
                self.id
            ))
        })?;
        let mut s = String::with_capacity(256 + self.args.len());
        s.push('[');
        push_str(&mut s, CONTENT_TAG);
        let _ = write!(s, ",{},{},", self.seq, self.id);
        push_str(
            &mut s,
            &self.at.to_rfc3339_opts(SecondsFormat::Micros, true),
        );
        for v in [self.os_user, self.db_user, self.command] {
            s.push(',');
            push_str(&mut s, v);
        }
        s.push(',');
        canonical_json(&args, &mut s);
        s.push(',');
        match self.reason {
            Some(r) => push_str(&mut s, r),
            None => s.push_str("null"),
        }
        for v in [self.outcome, self.orgctl_version] {
            s.push(',');
            push_str(&mut s, v);
        }
        s.push(']');
        Ok(s)
    }

    /// `sha256(prev_hash || content)`.
    pub fn hash(&self, prev: &[u8; 32]) -> Result<[u8; 32]> {
        let mut h = Sha256::new();
        h.update(prev);
        h.update(self.content()?.as_bytes());
        Ok(h.finalize().into())
    }
}

fn push_str(out: &mut String, s: &str) {
    // Serialising a str cannot fail.
    out.push_str(&serde_json::to_string(s).unwrap_or_default());
}

/// Compact JSON with every object's keys sorted by their UTF-8 bytes.
pub fn canonical_json(v: &serde_json::Value, out: &mut String) {
    match v {
        serde_json::Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
            out.push('{');
            for (i, k) in keys.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                push_str(out, k);
                out.push(':');
                if let Some(v) = map.get(*k) {
                    canonical_json(v, out);
                }
            }
            out.push('}');
        }
        serde_json::Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                canonical_json(item, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_is_canonical() {
        let at = match DateTime::parse_from_rfc3339("2026-12-01T07:15:00.123456Z") {
            Ok(t) => t.with_timezone(&Utc),
            Err(e) => panic!("{e}"),
        };
        let link = |args: &'static str| Link {
            seq: 1,
            id: 10,
            at,
            os_user: "alice",
            db_user: "postgres",
            command: "token mint",
            args,
            reason: Some("INC-1"),
            outcome: "applied",
            orgctl_version: "0.1.0",
        };
        let c = link(r#"{"n": 1, "a": "é\n"}"#)
            .content()
            .unwrap_or_default();
        assert_eq!(
            c,
            r#"["orgctl-audit-v1",1,10,"2026-12-01T07:15:00.123456Z","alice","postgres","token mint",{"a":"é\n","n":1},"INC-1","applied","0.1.0"]"#
        );
        // jsonb's key order and spacing do not matter.
        assert_eq!(
            link(r#"{"a":"é\n",   "n":1}"#)
                .content()
                .unwrap_or_default(),
            c
        );
    }
}
