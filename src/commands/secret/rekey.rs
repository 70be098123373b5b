//! `orgctl secret rekey` (alias `rotate`): re-encrypt every secret row and channel field under
//! a new key, or with `--plaintext-only` encrypt the plaintext ones with the current key, in
//! one transaction under the tenant lock. Keys never come from argv: every key check happens
//! before any connection is made (bad key input: exit 2).

use std::fmt::Write as _;
use std::path::Path;

use serde::Serialize;
use sqlx::postgres::PgConnection;

use super::findings::{channel_note, render_bad};
use crate::cli::SecretRekeyArgs;
use crate::db;
use crate::error::{Error, Exit, Result};
use crate::ops::rekey::{self, Applied, BadRows, Key, Mode, Plan, Table, ENV_KEY, ENV_NEW_KEY};
use crate::output::Output;
use crate::Context;

/// The checked input of a rekey: the mode and its keys.
struct Keys {
    mode: Mode,
    current: Key,
    /// The new key of a rotation (`None` for plaintext-only).
    new: Option<Key>,
}

impl Keys {
    /// The key values are sealed with: the new one for a rotation, the current one otherwise.
    fn target(&self) -> Option<&Key> {
        match self.mode {
            Mode::Rotate => self.new.as_ref(),
            _ => Some(&self.current),
        }
    }
}

/// A rekey once its input is checked and the tenant's tables are known.
struct Run<'a> {
    args: &'a SecretRekeyArgs,
    keys: Keys,
    /// The tenant has the channel table: its fields are scanned too.
    channels: bool,
}

/// check the keys → plan (read-only) → show → confirm → lock → re-plan → apply → audit → commit.
pub(super) async fn run(ctx: &Context, args: &SecretRekeyArgs) -> Result<Exit> {
    let out = &ctx.out;
    let keys = keys(out, args)?;
    if let Some(h) = &args.expect_plan {
        if !h.starts_with("sha256:") || h.len() != 7 + 64 {
            return Err(Error::usage(format!(
                "--expect-plan '{h}' is not a plan hash (sha256:<64 hex digits>, from a dry run)"
            )));
        }
    }
    let url = ctx.url()?;
    let mut conn = crate::commands::connect_to(ctx, &url).await?;
    let channels = rekey::ensure_scannable(&mut conn).await?;
    let run = Run {
        args,
        keys,
        channels,
    };
    let keys = &run.keys;

    // 1. Plan read-only: counts per table and version.
    if args.dry_run {
        return dry_run(ctx, &mut conn, &run).await;
    }
    let reviewed = {
        let mut tx = db::begin_read_only(&mut conn, &ctx.settings).await?;
        let plan = rekey::plan(&mut tx, keys.mode).await?;
        tx.rollback().await?;
        plan
    };
    let none = BadRows::default();
    if let Some(h) = &args.expect_plan {
        if *h != reviewed.hash() {
            render_rekey(out, &reviewed, &none, false, false)?;
            return Err(Error::refused(format!(
                "the plan differs from the reviewed one ({h} expected, {} now); nothing was changed: review the plan above and rerun",
                reviewed.hash()
            )));
        }
    }
    if let Some(e) = reviewed.refusal() {
        return Err(e);
    }
    if !reviewed.changed() {
        render_rekey(out, &reviewed, &none, false, false)?;
        return Ok(Exit::Ok);
    }

    // 2. Show and confirm; no locks held while a human reads.
    let asked = !ctx.yes;
    if asked && out.interactive() {
        crate::output::stderr(&crate::output::review_text(&rekey_text(
            out, &reviewed, &none, true, false,
        )));
    }
    out.confirm(
        &format!(
            "{} {} secret row(s) and channel field(s) on {}?",
            match keys.mode {
                Mode::PlaintextOnly => "Encrypt",
                _ => "Re-encrypt",
            },
            reviewed.rewritten(),
            url.target()
        ),
        ctx.yes,
    )?;

    // 3. Apply: one transaction, tenant lock, writers of the secret tables held off.
    let strict = args.expect_plan.is_some() || asked;
    apply(ctx, &mut conn, &url, &run, &reviewed, strict).await
}

/// Every key check, before any connection: the mode, the current key and the new one.
fn keys(out: &Output, args: &SecretRekeyArgs) -> Result<Keys> {
    if args.plaintext_only {
        if args.new_key_file.is_some()
            || std::env::var_os(ENV_NEW_KEY).is_some_and(|v| !v.is_empty())
        {
            return Err(Error::usage(format!(
                "--plaintext-only encrypts with the current key ({ENV_KEY}); unset {ENV_NEW_KEY} / drop --new-key-file, or rotate without --plaintext-only"
            )));
        }
        let current = rekey::current_key_from_env(
            "--plaintext-only encrypts the plaintext rows with it; set it to the key the platform runs with",
        )?;
        return Ok(Keys {
            mode: Mode::PlaintextOnly,
            current,
            new: None,
        });
    }
    let current = rekey::current_key_from_env(
        "rekey decrypts the tenant's secrets with it (to encrypt a tenant that never had a key, set it and use --plaintext-only)",
    )?;
    if let Some(p) = &args.new_key_file {
        warn_if_readable_by_others(out, p);
    }
    let new = rekey::new_key(args.new_key_file.as_deref())?;
    if current.same_as(&new)? {
        return Err(Error::usage(format!(
            "the new key is the same key as {ENV_KEY}: nothing would change; give the new key"
        )));
    }
    Ok(Keys {
        mode: Mode::Rotate,
        current,
        new: Some(new),
    })
}

/// Group- or world-readable key files are worth a warning (not a refusal: the operator may
/// have reasons, such as a tmpfs only they can reach).
fn warn_if_readable_by_others(out: &Output, path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = std::fs::metadata(path) {
        if meta.permissions().mode() & 0o077 != 0 {
            out.warn(&format!(
                "{} is readable by other users (mode {:o}); keep key files at 0600",
                path.display(),
                meta.permissions().mode() & 0o777
            ));
        }
    }
}

/// A dry run: one snapshot for the counts and the scan that checks every encrypted row
/// decrypts; nothing written.
async fn dry_run(ctx: &Context, conn: &mut PgConnection, run: &Run<'_>) -> Result<Exit> {
    let (out, args, keys, channels) = (&ctx.out, run.args, &run.keys, run.channels);
    let mut tx = db::begin_read_only(conn, &ctx.settings).await?;
    let plan = rekey::plan(&mut tx, keys.mode).await?;
    let pb = out.progress(u64::try_from(plan.counts.total()).unwrap_or(0), "checking");
    let bad = rekey::check(
        &mut tx,
        keys.mode,
        &keys.current,
        keys.target(),
        channels,
        &pb,
    )
    .await?;
    tx.rollback().await?;
    render_rekey(out, &plan, &bad, true, false)?;
    if bad.count > 0 {
        return Err(rekey::undecryptable_error(&bad, keys.mode));
    }
    if let Some(h) = &args.expect_plan {
        if *h != plan.hash() {
            return Err(Error::refused(format!(
                "the plan differs from the expected one ({h}); it is now {}",
                plan.hash()
            )));
        }
    }
    Ok(Exit::Ok)
}

/// Step 3: lock, re-plan (refused when a human or `--expect-plan` reviewed another plan:
/// `strict`), re-encrypt, audit, commit, report.
async fn apply(
    ctx: &Context,
    conn: &mut PgConnection,
    url: &db::DbUrl,
    run: &Run<'_>,
    reviewed: &Plan,
    strict: bool,
) -> Result<Exit> {
    let (out, args, keys, channels) = (&ctx.out, run.args, &run.keys, run.channels);
    let none = BadRows::default();
    let mut tx = db::begin_change(conn, url, &ctx.settings).await?;
    rekey::lock_tables(&mut tx, channels).await?;
    let plan = rekey::plan(&mut tx, keys.mode).await?;
    if strict && plan.hash() != reviewed.hash() {
        tx.rollback().await?;
        render_rekey(out, &plan, &none, false, false)?;
        return Err(Error::refused(format!(
            "the secrets changed after the plan was reviewed ({} reviewed, {} now); nothing was changed: review the new plan and rerun",
            reviewed.hash(),
            plan.hash()
        )));
    }
    if let Some(e) = plan.refusal() {
        return Err(e);
    }
    if !plan.changed() {
        tx.rollback().await?;
        render_rekey(out, &plan, &none, false, false)?;
        return Ok(Exit::Ok);
    }
    let pb = out.progress(
        u64::try_from(plan.counts.total()).unwrap_or(0),
        match keys.mode {
            Mode::PlaintextOnly => "encrypting",
            _ => "re-encrypting",
        },
    );
    let applied = rekey::apply(&mut tx, &plan, &keys.current, keys.target(), channels, &pb).await?;
    if let Applied::Undecryptable(bad) = applied {
        tx.rollback().await?;
        render_rekey(out, &plan, &bad, false, false)?;
        return Err(rekey::undecryptable_error(&bad, keys.mode));
    }
    let audit = rekey::audit_args(
        &plan,
        args.new_key_file.is_some(),
        args.expect_plan.is_some(),
    );
    let txid = crate::audit::record(&mut tx, &ctx.who, "secret rekey", &audit, "applied").await?;
    let committed =
        db::commit_guarded(tx, url, &ctx.settings, &crate::audit::AuditRow(txid)).await?;
    if let Some(note) = committed.note() {
        out.info(note);
    }
    render_rekey(out, &plan, &none, false, true)?;
    if keys.mode == Mode::Rotate {
        out.info(
            "Next: set the platform's SECRETS_ENCRYPTION_KEY to the new key and restart the platform process now (until then what it writes itself, such as its CODEX_AUTH_JSON refresh, is under the old key), then run `orgctl secret verify` with the new key: it names any row or channel field written under the old one.",
        );
    }
    Ok(Exit::Ok)
}

#[derive(Serialize)]
struct RekeyJson<'a> {
    dry_run: bool,
    changed: bool,
    mode: &'static str,
    tables: Vec<RekeyCount>,
    reencrypt_total: i64,
    undecryptable: &'a BadRows,
    plan_hash: String,
}

#[derive(Serialize)]
struct RekeyCount {
    table: Table,
    encryption_version: i32,
    rows: i64,
    reencrypt: i64,
}

fn render_rekey(
    out: &Output,
    plan: &Plan,
    bad: &BadRows,
    dry_run: bool,
    applied: bool,
) -> Result<()> {
    let changed = (dry_run || applied) && plan.changed() && bad.count == 0;
    if out.json_mode() {
        return out.json(&RekeyJson {
            dry_run,
            changed,
            mode: plan.mode.as_str(),
            tables: plan
                .counts
                .rows()
                .into_iter()
                .map(|(t, v, n)| RekeyCount {
                    table: t,
                    encryption_version: v,
                    rows: n,
                    reencrypt: if plan.mode.rewrites(v) { n } else { 0 },
                })
                .collect(),
            reencrypt_total: plan.rewritten(),
            undecryptable: bad,
            plan_hash: plan.hash(),
        });
    }
    out.stdout(&rekey_text(out, plan, bad, dry_run, applied))
}

fn rekey_text(out: &Output, plan: &Plan, bad: &BadRows, dry_run: bool, applied: bool) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{}:",
        match plan.mode {
            Mode::PlaintextOnly => "Encrypt plaintext secrets with the current key",
            _ => "Re-encrypt secrets under the new key",
        }
    );
    let mut t = out.new_table(["table", "version", "rows", "re-encrypt"]);
    for (table, v, n) in plan.counts.rows() {
        t.add_row(vec![
            table.name().to_string(),
            v.to_string(),
            n.to_string(),
            if plan.mode.rewrites(v) { n } else { 0 }.to_string(),
        ]);
    }
    let _ = writeln!(s, "{t}");
    channel_note(&mut s, &plan.counts);
    render_bad(
        out,
        &mut s,
        bad,
        "Values that do not decrypt with SECRETS_ENCRYPTION_KEY (nothing is written while any remain)",
    );
    let _ = writeln!(s, "\n{}", plan.summary());
    if plan.changed() && bad.count == 0 {
        if dry_run {
            let _ = writeln!(s, "{}", crate::output::DRY_RUN_LINE);
        } else if applied {
            let _ = writeln!(s, "Applied.");
        }
    }
    let _ = writeln!(s, "plan_hash: {}", plan.hash());
    s
}
