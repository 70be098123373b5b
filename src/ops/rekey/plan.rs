//! The rekey plan: the mode and the rows per table and version, with its fingerprint (what a
//! dry run prints and `--expect-plan` pins) and the refusals that need no decryption.

use sha2::Digest;
use sqlx::postgres::PgConnection;

use super::counts::{count_rows, BadRows, Counts, Mode};
use crate::error::{Error, Result};
use crate::platform::channels;

/// What a rekey will do: the mode and the rows per table and version.
#[derive(Clone, Debug)]
pub struct Plan {
    pub mode: Mode,
    pub counts: Counts,
}

/// The plan of `mode` from the state `conn` sees: one aggregate per table, no values read.
pub async fn plan(conn: &mut PgConnection, mode: Mode) -> Result<Plan> {
    Ok(Plan {
        mode,
        counts: count_rows(conn).await?,
    })
}

impl Plan {
    pub fn rewritten(&self) -> i64 {
        self.counts.rewritten(self.mode)
    }

    pub fn changed(&self) -> bool {
        self.rewritten() > 0
    }

    /// A fingerprint of the plan: the mode and every (table, version, rows). Never a key.
    pub fn hash(&self) -> String {
        let mut h = sha2::Sha256::new();
        h.update(format!(
            "orgctl-rekey-plan v2\nmode {}\n",
            self.mode.as_str()
        ));
        for (t, v, n) in self.counts.rows() {
            h.update(format!("{} v{v} rows={n}\n", t.name()));
        }
        format!("sha256:{:x}", h.finalize())
    }

    /// The refusal that needs no decryption: rows of a version orgctl cannot read.
    pub fn refusal(&self) -> Option<Error> {
        let n = self.counts.unknown_versions();
        (n > 0).then(|| {
            Error::refused(format!(
                "{n} secret row(s) have an encryption_version other than 0 or 1, which orgctl cannot re-encrypt; nothing was changed (they are named with --dry-run)"
            ))
        })
    }

    pub fn summary(&self) -> String {
        let n = self.rewritten();
        if n == 0 {
            return match self.mode {
                Mode::PlaintextOnly => {
                    "Nothing to do: no secret row or channel field is stored in plaintext."
                        .to_string()
                }
                _ => "Nothing to do: the tenant has no secret rows or encrypted channel fields."
                    .to_string(),
            };
        }
        let c = &self.counts;
        match self.mode {
            Mode::PlaintextOnly => format!(
                "Plan: encrypt {} plaintext row(s) and {} plaintext channel field(s) with the current key (rows as version 1, fields as {}…); encrypted values are left alone.",
                c.rows_of_version(0),
                c.fields_of_version(0),
                channels::SEALED_PREFIX
            ),
            _ => format!(
                "Plan: re-encrypt {} row(s) ({} version 1, {} version 0) and {} channel field(s) ({} encrypted, {} plaintext) under the new key; every one is left encrypted.",
                c.rows_of_version(1) + c.rows_of_version(0),
                c.rows_of_version(1),
                c.rows_of_version(0),
                c.fields_of_version(1) + c.fields_of_version(0),
                c.fields_of_version(1),
                c.fields_of_version(0)
            ),
        }
    }
}

/// The refusal when encrypted values do not decrypt with the current key (exit 3).
pub fn undecryptable_error(bad: &BadRows, mode: Mode) -> Error {
    let why = match mode {
        Mode::PlaintextOnly => "it is not the key the tenant's encrypted values use, so the platform could not read values encrypted with it",
        _ => "re-encrypting would need them",
    };
    Error::refused(format!(
        "{} encrypted secret row(s) or channel field(s) do not decrypt with SECRETS_ENCRYPTION_KEY ({why}): {}; nothing was changed",
        bad.count,
        bad.named()
    ))
}

#[cfg(test)]
mod tests {
    use super::super::counts::Table;
    use super::*;

    #[test]
    fn plan_hash_covers_mode_and_counts_only() {
        let mut c = Counts::default();
        c.add(Table::GlobalSecrets, 1, 3);
        let a = Plan {
            mode: Mode::Rotate,
            counts: c.clone(),
        };
        let b = Plan {
            mode: Mode::PlaintextOnly,
            counts: c.clone(),
        };
        assert_ne!(a.hash(), b.hash());
        let mut c2 = c.clone();
        c2.add(Table::GlobalSecrets, 0, 1);
        assert_ne!(
            a.hash(),
            Plan {
                mode: Mode::Rotate,
                counts: c2
            }
            .hash()
        );
        assert_eq!(
            a.hash(),
            Plan {
                mode: Mode::Rotate,
                counts: c
            }
            .hash()
        );
    }
}
