//! `orgctl secret rekey` (alias `rotate`): re-encrypt every secret row and channel field under
//! a new key, or with `--plaintext-only` encrypt the plaintext ones with the current key, in
//! one transaction under the tenant lock. Keys never come from argv: every key check happens
//! before any connection is made (bad key input: exit 2).

use std::fmt::Write as _;
use std::path::Path;

use serde::Serialize;
use sqlx::postgres::{PgConnection, PgRow};

use super::findings::{channel_note, render_bad};
use crate::cli::SecretRekeyArgs;
use crate::commands::change::{self, Audit, Done, Planned, Shown};
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

/// The rekey as [`change::run`] drives it: the checked input, and whether the tenant has the
/// channel table (its fields are scanned too; learnt with the read-only plan).
struct Rekey<'a> {
    ctx: &'a Context,
    args: &'a SecretRekeyArgs,
    keys: Keys,
    channels: bool,
}

/// check the keys → plan (read-only) → show → confirm → lock → re-plan → apply → audit → commit.
pub(super) async fn run(ctx: &Context, args: &SecretRekeyArgs) -> Result<Exit> {
    let keys = keys(&ctx.out, args)?;
    if let Some(h) = &args.expect_plan {
        change::check_plan_hash(h)?;
    }
    let url = ctx.url()?;
    let mode = change::Mode {
        dry_run: args.dry_run,
        detailed_exitcode: false,
        expect_plan: args.expect_plan.as_deref(),
    };
    let mut rekey = Rekey {
        ctx,
        args,
        keys,
        channels: false,
    };
    change::run(ctx, &url, mode, &mut rekey).await
}

/// A rekey's plan: the counts per table and version, and for a dry run what the scan of every
/// encrypted value found (`None` otherwise: apply scans under the lock).
struct Reviewed {
    plan: Plan,
    bad: Option<BadRows>,
}

impl Planned for Reviewed {
    fn changed(&self) -> bool {
        self.plan.changed()
    }
    fn hash(&self) -> String {
        self.plan.hash()
    }
    /// A dry run refuses what its scan found (values that do not decrypt; rows of unknown
    /// versions are among them); otherwise the refusal that needs no decryption.
    fn refusal(&self) -> Option<Error> {
        match &self.bad {
            Some(bad) => (bad.count > 0).then(|| rekey::undecryptable_error(bad, self.plan.mode)),
            None => self.plan.refusal(),
        }
    }
}

impl change::Change for Rekey<'_> {
    type Plan = Reviewed;
    const REVIEWED: &'static str = "plan";
    const SUBJECT: &'static str = "the secrets";
    const RACED: Option<&'static str> = None;
    const COMPARED_FIRST: bool = true;

    fn command(&self) -> &'static str {
        "secret rekey"
    }

    /// The tables checked scannable, the counts, and for a dry run the scan that checks every
    /// encrypted value decrypts (nothing written).
    async fn plan(&mut self, tx: &mut PgConnection) -> Result<Reviewed> {
        self.channels = rekey::ensure_scannable(tx).await?;
        let keys = &self.keys;
        let plan = rekey::plan(tx, keys.mode).await?;
        if !self.args.dry_run {
            return Ok(Reviewed { plan, bad: None });
        }
        let out = &self.ctx.out;
        let pb = out.progress(u64::try_from(plan.counts.total()).unwrap_or(0), "checking");
        let bad = rekey::check(
            tx,
            keys.mode,
            &keys.current,
            keys.target(),
            self.channels,
            &pb,
        )
        .await?;
        Ok(Reviewed {
            plan,
            bad: Some(bad),
        })
    }

    /// The secret tables locked against writers, then counted again.
    async fn lock_and_plan(
        &mut self,
        tx: &mut PgConnection,
        _tail: Option<Result<Vec<Vec<PgRow>>>>,
    ) -> Result<Reviewed> {
        rekey::lock_tables(tx, self.channels).await?;
        let plan = rekey::plan(tx, self.keys.mode).await?;
        Ok(Reviewed { plan, bad: None })
    }

    fn render(&self, p: &Reviewed, shown: Shown) -> Result<()> {
        let none = BadRows::default();
        let bad = p.bad.as_ref().unwrap_or(&none);
        render_rekey(&self.ctx.out, &p.plan, bad, shown == Shown::DryRun, false)
    }

    fn review(&self, p: &Reviewed) -> Option<String> {
        Some(rekey_text(
            &self.ctx.out,
            &p.plan,
            &BadRows::default(),
            true,
            false,
        ))
    }

    fn question(&self, p: &Reviewed, target: &str) -> String {
        format!(
            "{} {} secret row(s) and channel field(s) on {target}?",
            match self.keys.mode {
                Mode::PlaintextOnly => "Encrypt",
                _ => "Re-encrypt",
            },
            p.plan.rewritten(),
        )
    }

    /// Re-encrypt; a value that does not decrypt renders the plan with it and refuses (the
    /// transaction is rolled back, nothing is written).
    async fn apply(&mut self, tx: &mut PgConnection, p: &Reviewed) -> Result<Audit> {
        let (out, keys, plan) = (&self.ctx.out, &self.keys, &p.plan);
        let pb = out.progress(
            u64::try_from(plan.counts.total()).unwrap_or(0),
            match keys.mode {
                Mode::PlaintextOnly => "encrypting",
                _ => "re-encrypting",
            },
        );
        let applied =
            rekey::apply(tx, plan, &keys.current, keys.target(), self.channels, &pb).await?;
        if let Applied::Undecryptable(bad) = applied {
            render_rekey(out, plan, &bad, false, false)?;
            return Err(rekey::undecryptable_error(&bad, keys.mode));
        }
        Ok(Audit {
            args: rekey::audit_args(
                plan,
                self.args.new_key_file.is_some(),
                self.args.expect_plan.is_some(),
            ),
            check: None,
        })
    }

    /// The plan rendered; after a rotation, what to do next.
    async fn finish(&mut self, _conn: &mut PgConnection, p: &Reviewed, done: Done) -> Result<Exit> {
        let out = &self.ctx.out;
        let applied = done != Done::Nothing;
        render_rekey(out, &p.plan, &BadRows::default(), false, applied)?;
        if applied && self.keys.mode == Mode::Rotate {
            out.info(
                "Next: set the platform's SECRETS_ENCRYPTION_KEY to the new key and restart the platform process now (until then what it writes itself, such as its CODEX_AUTH_JSON refresh, is under the old key), then run `orgctl secret verify` with the new key: it names any row or channel field written under the old one.",
            );
        }
        Ok(Exit::Ok)
    }
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
