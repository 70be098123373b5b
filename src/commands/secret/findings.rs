//! What `verify` and `rekey` both print under their tables: what the channel fields' counts
//! mean, and the values that do not decrypt.

use std::fmt::Write as _;

use crate::error::sanitize;
use crate::ops::rekey::{BadRows, Counts, Table, NAMED_LIMIT};
use crate::output::{truncated, Output};
use crate::platform::channels;

use super::TABLE_ROWS;

/// Under a table of counts that has channel fields: what their counts mean.
pub(super) fn channel_note(s: &mut String, counts: &Counts) {
    if counts.fields_of_version(0) + counts.fields_of_version(1) == 0 {
        return;
    }
    let _ = writeln!(
        s,
        "({} counts fields ({}): version 1 is {}…, version 0 legacy plaintext.)",
        Table::ChannelFields.name(),
        channels::SECRET_FIELDS.join(", "),
        channels::SEALED_PREFIX
    );
}

/// The values that do not decrypt, as a table of at most [`TABLE_ROWS`] under `title`.
pub(super) fn render_bad(out: &Output, s: &mut String, bad: &BadRows, title: &str) {
    if bad.count == 0 {
        return;
    }
    let _ = writeln!(s, "\n{title} ({}):", bad.count);
    let mut t = out.new_table(["table", "id", "workspace", "key / field", "version"]);
    let (shown, _) = truncated(&bad.rows, TABLE_ROWS);
    for b in shown {
        t.add_row(vec![
            b.table.name().to_string(),
            b.id.to_string(),
            b.workspace_id
                .map(|w| w.to_string())
                .unwrap_or_else(|| "(global)".into()),
            sanitize(&b.key),
            b.encryption_version.to_string(),
        ]);
    }
    let _ = writeln!(s, "{t}");
    let rest = bad.count - shown.len() as i64;
    if rest > 0 {
        let _ = writeln!(
            s,
            "… and {rest} more (--output json names up to {NAMED_LIMIT})"
        );
    }
}
