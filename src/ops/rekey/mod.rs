//! Key custody: what `secret verify` checks and `secret rekey` rewrites.
//!
//! Everything the key protects is covered: the rows of both secret tables, and the encrypted
//! fields of `workspace_channels.channel_config` ([`crate::platform::channels`]). A channel
//! field counts like a row: `ec1:` is version 1, a string without the prefix is version 0
//! (legacy plaintext).
//!
//! Verifying reads every secret row and channel field in a read-only REPEATABLE READ
//! transaction and checks that each version-1 value decrypts with `SECRETS_ENCRYPTION_KEY`; it
//! names the ones that do not (table, id, workspace, key or field — never a value).
//!
//! Rekeying re-encrypts every value under a new key (or, in [`Mode::PlaintextOnly`], encrypts
//! the version-0 values with the current key), in ONE transaction under the tenant lock. The
//! plan is the count per table and version (one aggregate per table); the work is a
//! keyset-paginated scan by primary key, each page bounded in rows and bytes, written back with
//! one set-based `UPDATE … FROM unnest(…)` per page, so memory stays bounded on a tenant of any
//! size. Any version-1 value that does not decrypt with the current key stops the writes; the
//! scan goes on only to name every such value, and the transaction is rolled back (exit 3,
//! nothing written). A channel page's UPDATE merges only the rewritten fields into the object
//! (`channel_config || patch`): every other key stays as it is.
//!
//! Concurrency: the tenant advisory lock keeps other orgctl runs out; the secret tables and the
//! channel table are locked `SHARE ROW EXCLUSIVE` ([`lock_tables`]: readers go on, writers wait
//! until the commit), so the pages see tables nobody changes, and the counts the plan promised
//! are what the scan finds. A `secret set` that waited for the lock meets
//! [`ensure_key_matches_tenant`]: with the old key it is refused, so nothing is written under
//! the old key after the commit.
//!
//! Keys never come from argv: the current one from `SECRETS_ENCRYPTION_KEY`, the new one from
//! `SECRETS_ENCRYPTION_KEY_NEW` or the first line of `--new-key-file`; both are parsed by
//! [`crate::platform::crypto::SecretBox`] (the one owner of the key rules) and checked before
//! any connection is made. Plaintext is held in [`zeroize::Zeroizing`] buffers.
//!
//! Files: [`keys`](self::keys) (the keys and the write guard), `counts` (tables, modes, counts),
//! `scan` (the paged scan of the secret tables), `channels` (the channel fields' pages and
//! counts), `plan` (the plan and its hash), `apply` (the locked, batched rewrite), `verify`
//! (checking every row under a key).

mod apply;
mod channels;
mod counts;
mod keys;
mod plan;
mod scan;
mod verify;

pub use apply::{apply, audit_args, check, lock_tables, Applied};
pub use channels::ensure_scannable;
pub use counts::{count_rows, BadRows, Counts, Mode, Table};
pub use keys::{
    current_key_from_env, ensure_key_matches_tenant, new_key, Key, ENV_KEY, ENV_NEW_KEY,
};
pub use plan::{plan, undecryptable_error, Plan};
pub use verify::{verify, Verified};

/// Rows per page of the scan.
pub const PAGE_ROWS: i64 = 1000;
/// Bytes of `encrypted_value` per page (a page holds at least one row whatever its size).
pub const PAGE_BYTES: i64 = 4 << 20;
/// Rows that do not decrypt, named in the output; the rest are counted.
pub const NAMED_LIMIT: usize = 1000;
/// Rows named in a one-line error.
const ERROR_ROWS: usize = 5;

/// Every static statement of key custody, by name.
// Read by the test that prepares every statement against the template schema.
pub(crate) const STATEMENTS: &[(&str, &str)] = &[
    ("rekey.key_sample", keys::KEY_SAMPLE_SQL),
    (
        "rekey.count_workspace_secrets",
        counts::COUNT_WORKSPACE_SECRETS_SQL,
    ),
    (
        "rekey.count_global_secrets",
        counts::COUNT_GLOBAL_SECRETS_SQL,
    ),
    (
        "rekey.update_workspace_secrets",
        scan::UPDATE_WORKSPACE_SECRETS_SQL,
    ),
    (
        "rekey.update_global_secrets",
        scan::UPDATE_GLOBAL_SECRETS_SQL,
    ),
    ("rekey.channel_table", channels::CHANNEL_TABLE_SQL),
    ("rekey.scannable", channels::SCANNABLE_SQL),
    ("rekey.lock_secret_tables", apply::LOCK_SECRET_TABLES_SQL),
    ("rekey.left_plaintext", apply::LEFT_PLAINTEXT_SQL),
];
