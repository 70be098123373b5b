//! `orgctl secret verify`: check that every encrypted secret row and channel field decrypts
//! with `SECRETS_ENCRYPTION_KEY`, in one read-only snapshot; name the ones that do not (table,
//! id, workspace, key or field — never a value), and warn about plaintext ones.

use std::fmt::Write as _;

use serde::Serialize;

use super::findings::{channel_note, render_bad};
use crate::cli::SecretVerifyArgs;
use crate::db;
use crate::error::{Error, Exit, Result};
use crate::ops::rekey::{self, BadRows, Table, Verified};
use crate::output::Output;
use crate::platform::channels;
use crate::Context;

#[derive(Serialize)]
struct VerifyJson<'a> {
    ok: bool,
    /// Encrypted values checked against the key (secret rows and channel fields of version 1):
    /// 0 proves nothing about the key.
    verified: i64,
    tables: Vec<VerifyCount>,
    plaintext_rows: i64,
    plaintext_channel_fields: i64,
    undecryptable: &'a BadRows,
}

#[derive(Serialize)]
struct VerifyCount {
    table: Table,
    encryption_version: i32,
    rows: i64,
    undecryptable: i64,
}

pub(super) async fn run(ctx: &Context, args: &SecretVerifyArgs) -> Result<Exit> {
    let key = rekey::current_key_from_env(
        "verify checks the tenant's secrets against it; set it to the key the platform runs with",
    )?;
    let url = ctx.url()?;
    let out = &ctx.out;
    let mut conn = crate::commands::connect_to(ctx, &url).await?;
    let channels = rekey::ensure_scannable(&mut conn).await?;

    let mut tx = db::begin_read_only(&mut conn, &ctx.settings).await?;
    let total = rekey::count_rows(&mut tx).await?.total();
    let pb = out.progress(u64::try_from(total).unwrap_or(0), "verifying");
    let found = rekey::verify(&mut tx, &key, channels, &pb).await?;
    tx.rollback().await?;

    let plaintext = found.counts.rows_of_version(0);
    let plaintext_fields = found.counts.fields_of_version(0);
    // Encrypted values checked: with none, every value "decrypts" and the key is unproven.
    let empty = found.verified() == 0;
    let ok = found.bad.count == 0 && (!empty || args.allow_empty);
    render(out, &found, ok)?;
    if plaintext > 0 {
        out.warn(&format!(
            "{plaintext} secret row(s) are stored in plaintext (encryption_version 0); encrypt them with `orgctl secret rekey --plaintext-only`"
        ));
    }
    if plaintext_fields > 0 {
        out.warn(&format!(
            "{plaintext_fields} channel field(s) of {} are stored in plaintext (no {} prefix); encrypt them with `orgctl secret rekey --plaintext-only`",
            Table::ChannelFields.name(),
            channels::SEALED_PREFIX
        ));
    }
    if ok {
        Ok(Exit::Ok)
    } else if found.bad.count == 0 {
        Err(Error::failed(
            "nothing was verified: the tenant has no encrypted secret or channel field, so SECRETS_ENCRYPTION_KEY was not checked against anything; pass --allow-empty to accept that (a tenant whose secrets are all plaintext: encrypt them with `orgctl secret rekey --plaintext-only`)",
        ))
    } else {
        out.info(&format!(
            "verify: {} value(s) do not decrypt with SECRETS_ENCRYPTION_KEY: {}",
            found.bad.count,
            found.bad.named()
        ));
        Ok(Exit::Failed)
    }
}

/// The JSON document, or the table of counts with the values that do not decrypt.
fn render(out: &Output, found: &Verified, ok: bool) -> Result<()> {
    let verified = found.verified();
    if out.json_mode() {
        return out.json(&VerifyJson {
            ok,
            verified,
            tables: found
                .counts
                .rows()
                .into_iter()
                .map(|(t, v, n)| VerifyCount {
                    table: t,
                    encryption_version: v,
                    rows: n,
                    undecryptable: if v == 0 { 0 } else { found.bad_in(t, v) },
                })
                .collect(),
            plaintext_rows: found.counts.rows_of_version(0),
            plaintext_channel_fields: found.counts.fields_of_version(0),
            undecryptable: &found.bad,
        });
    }
    let mut s = String::new();
    let mut t = out.new_table(["table", "version", "rows", "do not decrypt"]);
    for (table, v, n) in found.counts.rows() {
        t.add_row(vec![
            table.name().to_string(),
            v.to_string(),
            n.to_string(),
            if v == 0 {
                "-".to_string()
            } else {
                found.bad_in(table, v).to_string()
            },
        ]);
    }
    let _ = writeln!(s, "{t}");
    channel_note(&mut s, &found.counts);
    render_bad(
        out,
        &mut s,
        &found.bad,
        "Values that do not decrypt with SECRETS_ENCRYPTION_KEY",
    );
    if verified == 0 {
        let _ = writeln!(
            s,
            "\nNothing was verified: the tenant has no encrypted value (0 secret rows, 0 channel fields) to check SECRETS_ENCRYPTION_KEY against."
        );
    } else if ok {
        let _ = writeln!(
            s,
            "\nEvery encrypted value ({} secret row(s), {} channel field(s)) decrypts with SECRETS_ENCRYPTION_KEY.",
            found.counts.rows_of_version(1),
            found.counts.fields_of_version(1)
        );
    }
    out.stdout(&s)
}
