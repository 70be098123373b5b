//! `orgctl secret`: set, delete and list workspace and global secrets
//! the way the platform reads them, then restart the workspaces the change affects — never the
//! platform agent.
//!
//! Flow of `set` and `delete`: check every input (scope, key, platform URL and admin token, the
//! encryption key, the value) before touching the database; plan with read-only queries (what
//! the write does and which workspaces it would restart); `--dry-run` stops there. Otherwise
//! confirm, then in ONE transaction under the tenant lock: re-check the target (and the MODEL
//! gate), write with one upsert or delete, append the audit row, commit. Only after the commit
//! is the restart plan computed again — from the committed state — and dispatched.
//!
//! Which workspaces a change restarts (the platform-root guard and the platform's own restart
//! rules) and the restart calls themselves live in [`crate::platform::restart`].
//!
//! Values are read into [`Zeroizing`] buffers (grown by hand so no stale copy is left behind),
//! sealed by [`crate::platform::keys::SecretBox`] (the one owner of the encryption rules), and never
//! printed, logged or put in the audit row.

use std::fmt::Write as _;
use std::io::Read;
use std::path::{Path, PathBuf};

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;
use sqlx::postgres::PgConnection;
use sqlx::Row;
use uuid::Uuid;
use zeroize::Zeroizing;

use crate::cli::{
    SecretCommand, SecretDeleteArgs, SecretListArgs, SecretRestartArgs, SecretSetArgs,
};
use crate::db;
use crate::error::{sanitize, Error, Exit, Result};
use crate::output::{truncated, Output};
use crate::platform::keys::SecretBox;
use crate::platform::restart::{
    self, DispatchOutcome, Dispatched, Platform, RestartPlan, SkipReason, TargetRow,
};
use crate::platform::MODEL_KEY;
use crate::Context;

/// The largest value accepted (environment values, certificates, small JSON documents).
pub const MAX_VALUE_BYTES: usize = 1 << 20;
/// Rows a table lists before it summarises the rest (JSON always lists all).
const TABLE_ROWS: usize = 50;
/// Workspaces named in a one-line error before it counts the rest.
const ERROR_IDS: usize = 20;

pub async fn run(ctx: &Context, cmd: &SecretCommand) -> Result<Exit> {
    match cmd {
        SecretCommand::Set(args) => set(ctx, args).await,
        SecretCommand::Delete(args) => delete(ctx, args).await,
        SecretCommand::List(args) => list(ctx, args).await,
        SecretCommand::Restart(args) => restart(ctx, args).await,
        SecretCommand::Verify(args) => crate::rekey::verify(ctx, args).await,
        SecretCommand::Rekey(args) => crate::rekey::rekey(ctx, args).await,
    }
}

// ---------------------------------------------------------------------------------------------
// Checked input

/// Where a secret lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    Workspace(Uuid),
    Global,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Workspace(_) => "workspace",
            Scope::Global => "global",
        }
    }

    pub fn workspace_id(self) -> Option<Uuid> {
        match self {
            Scope::Workspace(id) => Some(id),
            Scope::Global => None,
        }
    }

    fn describe(self, key: &str) -> String {
        match self {
            Scope::Workspace(id) => format!("workspace secret {key} of {id}"),
            Scope::Global => format!("global secret {key}"),
        }
    }
}

/// `WORKSPACE_ID KEY`, or `KEY` with `--global`, into a checked scope and key.
pub fn parse_scope(global: bool, positional: &[String]) -> Result<(Scope, String)> {
    let (scope, key) = match (global, positional) {
        (true, [key]) => (Scope::Global, key),
        (true, _) => {
            return Err(Error::usage(format!(
                "with --global give only KEY (got {} arguments); a workspace secret is WORKSPACE_ID KEY without --global",
                positional.len()
            )))
        }
        (false, [ws, key]) => (Scope::Workspace(parse_workspace_id(ws)?), key),
        (false, _) => {
            return Err(Error::usage(
                "give WORKSPACE_ID KEY for a workspace secret, or --global KEY for a global one",
            ))
        }
    };
    check_key(key)?;
    Ok((scope, key.clone()))
}

pub fn parse_workspace_id(raw: &str) -> Result<Uuid> {
    Uuid::parse_str(raw.trim()).map_err(|_| {
        Error::usage(format!(
            "'{}' is not a workspace id (expected a UUID such as a0000000-0000-4000-8000-000000000001)",
            sanitize(raw)
        ))
    })
}

/// The longest secret key (an environment variable name) orgctl writes.
pub const MAX_KEY_CHARS: usize = 256;

/// Keys are environment variable names: `^[A-Za-z_][A-Za-z0-9_]*$`, at most
/// [`MAX_KEY_CHARS`] characters.
pub fn check_key(key: &str) -> Result<()> {
    if key.chars().count() > MAX_KEY_CHARS {
        // Never echoed whole: it may be a value pasted in the wrong place.
        return Err(Error::usage(format!(
            "the secret key is longer than {MAX_KEY_CHARS} characters ({} given; not shown): a key is an environment variable name",
            key.chars().count()
        )));
    }
    let mut chars = key.chars();
    let ok = match chars.next() {
        Some(c) if c.is_ascii_alphabetic() || c == '_' => {
            chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        }
        _ => false,
    };
    if ok {
        Ok(())
    } else if key.contains('=') {
        // KEY=value: the part after '=' is likely the secret itself; never echo it.
        Err(Error::usage(
            "the secret key contains '=' (not shown: it may carry the value); give KEY alone: secret values are never read from the command line, pipe the value on stdin or pass --value-file PATH",
        ))
    } else {
        Err(Error::usage(format!(
            "'{}' is not a valid secret key: use letters, digits and '_', not starting with a digit (^[A-Za-z_][A-Za-z0-9_]*$)",
            sanitize(key)
        )))
    }
}

/// Where a value came from (recorded in the audit row; the value never is).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ValueSource {
    Stdin,
    File,
    Prompt,
}

/// Read `r` to the end into a zeroizing buffer, refusing more than [`MAX_VALUE_BYTES`]. The
/// buffer is grown by hand: `Vec`'s own growth would leave an unzeroed copy in freed memory.
pub fn read_value_from(mut r: impl Read, what: &str) -> Result<Zeroizing<Vec<u8>>> {
    let mut buf = Zeroizing::new(Vec::with_capacity(1024));
    let mut chunk = Zeroizing::new([0u8; 4096]);
    loop {
        let n = match r.read(&mut chunk[..]) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                return Err(Error::usage(format!(
                    "could not read the value from {what}: {e}"
                )))
            }
        };
        // Room for the one trailing newline `finish_value` strips: the limit is on the value.
        if buf.len() + n > MAX_VALUE_BYTES + 2 {
            return Err(Error::usage(format!(
                "the value from {what} is larger than {} KiB; secrets are environment values",
                MAX_VALUE_BYTES / 1024
            )));
        }
        if buf.len() + n > buf.capacity() {
            let mut bigger =
                Zeroizing::new(Vec::with_capacity((buf.capacity() * 2).max(buf.len() + n)));
            bigger.extend_from_slice(&buf);
            buf = bigger;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Ok(buf)
}

/// Strip one trailing newline (`\n` or `\r\n`), then refuse empty values and NUL bytes (an
/// environment value cannot hold one).
pub fn finish_value(mut value: Zeroizing<Vec<u8>>, what: &str) -> Result<Zeroizing<Vec<u8>>> {
    if value.last() == Some(&b'\n') {
        value.pop();
        if value.last() == Some(&b'\r') {
            value.pop();
        }
    }
    if value.is_empty() {
        return Err(Error::usage(format!(
            "the value from {what} is empty; empty secrets are refused (use `orgctl secret delete` to remove one)"
        )));
    }
    if value.len() > MAX_VALUE_BYTES {
        return Err(Error::usage(format!(
            "the value from {what} is larger than {} KiB; secrets are environment values",
            MAX_VALUE_BYTES / 1024
        )));
    }
    if value.contains(&0) {
        return Err(Error::usage(format!(
            "the value from {what} contains a NUL byte, which an environment value cannot hold"
        )));
    }
    Ok(value)
}

/// The value of `secret set`: `--value-file`, else stdin when it is not a terminal, else a
/// hidden prompt. `None` only for a dry run that was given no value (it does not need one).
async fn read_value(
    out: &Output,
    value_file: Option<&Path>,
    key: &str,
    dry_run: bool,
) -> Result<Option<(Zeroizing<Vec<u8>>, ValueSource)>> {
    // Reads run on a blocking thread so Ctrl-C still ends a read that never finishes.
    if let Some(path) = value_file {
        let path: PathBuf = path.to_path_buf();
        let what = format!("--value-file {}", path.display());
        let w = what.clone();
        let raw = blocking(move || {
            let f = std::fs::File::open(&path)
                .map_err(|e| Error::usage(format!("could not read {w}: {e}")))?;
            read_value_from(f, &w)
        })
        .await?;
        return Ok(Some((finish_value(raw, &what)?, ValueSource::File)));
    }
    if dry_run {
        // A dry run needs no value, so it never reads stdin (an open pipe that is never closed
        // would block it forever) and never prompts.
        return Ok(None);
    }
    if !out.stdin_is_terminal() {
        let raw = blocking(|| read_value_from(std::io::stdin().lock(), "stdin")).await?;
        if raw.is_empty() {
            return Err(Error::usage(
                "no value: stdin is empty and not a terminal; pipe the value on stdin, pass --value-file PATH, or run on a terminal to be prompted",
            ));
        }
        return Ok(Some((finish_value(raw, "stdin")?, ValueSource::Stdin)));
    }
    if !out.interactive() {
        return Err(Error::usage(format!(
            "no value and no prompt: {}; pipe the value on stdin or pass --value-file PATH",
            if crate::output::in_ci() {
                "CI is set (orgctl never prompts in CI)"
            } else {
                "stderr is not a terminal to prompt on"
            }
        )));
    }
    let prompt = format!("Value for {key} (hidden)");
    let typed = blocking(move || {
        crate::output::set_prompt_line_open(true);
        dialoguer::Password::new()
            .with_prompt(prompt)
            .with_confirmation("Repeat the value", "the two values differ; try again")
            .interact_on(&dialoguer::console::Term::stderr())
            .inspect(|_| crate::output::set_prompt_line_open(false))
            .map(Zeroizing::new)
            .map_err(|e| Error::failed(format!("could not read the value from the terminal: {e}")))
    })
    .await?;
    let bytes = Zeroizing::new(typed.as_bytes().to_vec());
    Ok(Some((
        finish_value(bytes, "the prompt")?,
        ValueSource::Prompt,
    )))
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::failed(format!("internal: a blocking task failed: {e}")))?
}

// ---------------------------------------------------------------------------------------------
// The restart plan

/// The restart plan of a change to `scope`/`key`, from the state `conn` sees.
pub async fn restart_plan(
    conn: &mut PgConnection,
    scope: Scope,
    key: &str,
    no_restart: bool,
) -> Result<RestartPlan> {
    match scope {
        Scope::Workspace(id) => Ok(restart::plan_workspace(conn, id, no_restart).await),
        Scope::Global => restart::plan_global(conn, key, no_restart).await,
    }
}

// ---------------------------------------------------------------------------------------------
// set and delete

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Action {
    Created,
    Updated,
    Deleted,
    /// `delete` of a key that does not exist: nothing to do.
    NotFound,
    /// `secret restart`: the value is left alone, the restarts are replayed.
    Restart,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Created => "created",
            Action::Updated => "updated",
            Action::Deleted => "deleted",
            Action::NotFound => "not-found",
            Action::Restart => "restart",
        }
    }
    fn changes(self) -> bool {
        self != Action::NotFound
    }
}

/// The existing secret row, if any.
#[derive(Clone, Debug)]
struct Existing {
    version: i32,
    updated_at: Option<DateTime<Utc>>,
}

/// What the read-only planning found.
#[derive(Clone, Debug)]
struct Prior {
    target: Option<TargetRow>,
    existing: Option<Existing>,
    restart: RestartPlan,
}

async fn prior(
    conn: &mut PgConnection,
    scope: Scope,
    key: &str,
    no_restart: bool,
) -> Result<Prior> {
    let target = match scope {
        Scope::Workspace(id) => Some(
            restart::lookup_target(conn, id)
                .await
                .map_err(Error::failed)?
                .ok_or_else(|| unknown_workspace(id))?,
        ),
        Scope::Global => None,
    };
    let existing = existing_row(conn, scope, key).await?;
    let restart = restart_plan(conn, scope, key, no_restart).await?;
    Ok(Prior {
        target,
        existing,
        restart,
    })
}

fn unknown_workspace(id: Uuid) -> Error {
    Error::failed(format!(
        "workspace {id} does not exist in this tenant; nothing was changed: check the id"
    ))
}

async fn existing_row(
    conn: &mut PgConnection,
    scope: Scope,
    key: &str,
) -> Result<Option<Existing>> {
    let row = match scope {
        Scope::Workspace(id) => {
            db::query(
                "SELECT encryption_version, updated_at FROM workspace_secrets
                  WHERE workspace_id = $1 AND key = $2",
            )
            .bind(id)
            .bind(key)
            .fetch_optional(&mut *conn)
            .await?
        }
        Scope::Global => {
            db::query("SELECT encryption_version, updated_at FROM global_secrets WHERE key = $1")
                .bind(key)
                .fetch_optional(&mut *conn)
                .await?
        }
    };
    Ok(match row {
        Some(r) => Some(Existing {
            version: r.try_get(0)?,
            updated_at: r.try_get(1)?,
        }),
        None => None,
    })
}

/// The MODEL gate: the platform marks a platform agent without a MODEL workspace secret failed.
fn model_gate(
    scope: Scope,
    key: &str,
    target_is_platform: bool,
    force: bool,
    out: &Output,
) -> Result<()> {
    if !(matches!(scope, Scope::Workspace(_)) && key == MODEL_KEY && target_is_platform) {
        return Ok(());
    }
    let id = scope
        .workspace_id()
        .map(|i| i.to_string())
        .unwrap_or_default();
    if force {
        out.warn(&format!(
            "deleting MODEL from the platform agent {id} (--force): the platform marks an agent without MODEL failed at its next registration; it is not restarted now"
        ));
        Ok(())
    } else {
        Err(Error::refused(format!(
            "refusing to delete MODEL from the platform agent {id}: the platform marks an agent without it failed; set a new value with `orgctl secret set` instead, or pass --force"
        )))
    }
}

/// The outcome of a set or delete, rendered as its JSON document or a table.
struct Outcome<'a> {
    scope: Scope,
    key: &'a str,
    target_name: Option<&'a str>,
    action: Action,
    encryption_version: Option<i32>,
    restart: RestartPlan,
    dispatched: Vec<Dispatched>,
    dry_run: bool,
    no_restart: bool,
    /// There is no platform URL to send restarts to: the plan is printed instead.
    plan_only: bool,
}

#[derive(Serialize)]
struct JsonOutcome<'a> {
    scope: &'static str,
    workspace_id: Option<Uuid>,
    key: &'a str,
    action: Action,
    encryption_version: Option<i32>,
    restart: JsonRestart,
}

#[derive(Serialize)]
struct JsonRestart {
    planned: Vec<Uuid>,
    skipped: Vec<JsonSkip>,
    dispatched: Vec<Dispatched>,
}

#[derive(Serialize)]
struct JsonSkip {
    id: Uuid,
    reason: SkipReason,
}

impl Outcome<'_> {
    fn failed(&self) -> Vec<Uuid> {
        let mut ids: Vec<Uuid> = self
            .dispatched
            .iter()
            .filter(|d| !d.ok)
            .map(|d| d.id)
            .collect();
        // A target whose kind could not be proven was not restarted either, when restarts were
        // wanted and possible.
        if !self.plan_only && !self.dry_run && !self.no_restart {
            ids.extend(
                self.restart
                    .skipped
                    .iter()
                    .filter(|s| s.reason == SkipReason::KindUnknown)
                    .map(|s| s.id),
            );
        }
        ids
    }

    fn render(&self, out: &Output) -> Result<()> {
        if out.json_mode() {
            return out.json(&JsonOutcome {
                scope: self.scope.as_str(),
                workspace_id: self.scope.workspace_id(),
                key: self.key,
                action: self.action,
                encryption_version: self.encryption_version,
                restart: JsonRestart {
                    planned: self.restart.planned.iter().map(|t| t.id).collect(),
                    skipped: self
                        .restart
                        .skipped
                        .iter()
                        .map(|s| JsonSkip {
                            id: s.id,
                            reason: s.reason,
                        })
                        .collect(),
                    dispatched: self.dispatched.clone(),
                },
            });
        }
        out.stdout(&self.text(out, self.dry_run))
    }

    /// `preview`: before the change (a dry run, or the review before a confirmation).
    fn headline(&self, preview: bool) -> String {
        let what = match self.scope {
            Scope::Workspace(id) => match self.target_name {
                Some(n) => format!("Workspace secret {} of {id} \"{}\"", self.key, sanitize(n)),
                None => format!("Workspace secret {} of {id}", self.key),
            },
            Scope::Global => format!("Global secret {}", self.key),
        };
        let version = match self.encryption_version {
            Some(v) if self.action != Action::Deleted => format!(" (encryption_version {v})"),
            _ => String::new(),
        };
        let verb = match (self.action, preview) {
            (Action::Created, true) => "would be created",
            (Action::Updated, true) => "would be updated",
            (Action::Deleted, true) => "would be deleted",
            (Action::Created, false) => "created",
            (Action::Updated, false) => "updated",
            (Action::Deleted, false) => "deleted",
            (Action::NotFound, _) => "does not exist: nothing to do",
            (Action::Restart, true) => "restarts would be replayed (the value is left alone)",
            (Action::Restart, false) => "restarts replayed (the value was left alone)",
        };
        format!("{what}: {verb}{version}.")
    }

    fn text(&self, out: &Output, preview: bool) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "{}", self.headline(preview));
        let mut rows: Vec<[String; 3]> = Vec::new();
        // By id: a global fan-out can list 100k workspaces.
        let results: std::collections::HashMap<Uuid, &Dispatched> =
            self.dispatched.iter().map(|d| (d.id, d)).collect();
        for t in &self.restart.planned {
            let status = match results.get(&t.id).map(|d| (d.outcome, d)) {
                Some((DispatchOutcome::Restarted, _)) => "restarted".to_string(),
                Some((DispatchOutcome::Noop, _)) => {
                    "no-op (the platform did not restart it)".to_string()
                }
                Some((DispatchOutcome::Gone, _)) => "gone (404; removed)".to_string(),
                Some((_, d)) => {
                    format!("FAILED: {}", d.error.as_deref().unwrap_or("unknown error"))
                }
                None if preview => "would restart".to_string(),
                None => "planned, not restarted (no platform URL)".to_string(),
            };
            rows.push([t.id.to_string(), name_cell(&t.name), status]);
        }
        for k in &self.restart.skipped {
            rows.push([
                k.id.to_string(),
                name_cell(&k.name),
                format!("skipped: {}", k.reason.as_str()),
            ]);
        }
        if !rows.is_empty() {
            let _ = writeln!(s, "\nRestarts ({}):", rows.len());
            let mut t = out.new_table(["workspace", "name", "restart"]);
            let (shown, rest) = truncated(&rows, TABLE_ROWS);
            for r in shown {
                t.add_row(r.to_vec());
            }
            let _ = writeln!(s, "{t}");
            if rest > 0 {
                let _ = writeln!(s, "… and {rest} more (use --output json for all)");
            }
        } else if self.action.changes() {
            let _ = writeln!(s, "No workspace to restart.");
        }
        if self.dry_run && self.action.changes() {
            let _ = writeln!(s, "{}", crate::output::DRY_RUN_LINE);
        }
        s
    }

    /// Human notes on stderr: the guard's skips, and the restarts an operator must do by hand.
    /// `preview`: before the change (a dry run, or the review before a confirmation).
    fn notes(&self, out: &Output, preview: bool) {
        for k in &self.restart.skipped {
            match k.reason {
                SkipReason::PlatformRoot => out.info(&format!(
                    "Not restarting the platform agent {} (platform-root guard): it reads the change at its next restart; restart it by hand when it is idle.",
                    k.id
                )),
                SkipReason::KindUnknown => out.warn(&format!(
                    "could not prove that workspace {} is not the platform agent ({}); it was not restarted (fail closed): check it and restart it by hand",
                    k.id,
                    k.detail.as_deref().unwrap_or("lookup failed")
                )),
                _ => {}
            }
        }
        let count = |o: DispatchOutcome| self.dispatched.iter().filter(|d| d.outcome == o).count();
        let noop = count(DispatchOutcome::Noop);
        if noop > 0 {
            out.info(&format!(
                "{noop} workspace(s) were not restarted: the platform answered no-op (it restarted them less than {}s ago, coalesced the call into a restart in flight, or its own rules exclude them). `orgctl secret restart` calls them again; after the debounce that restarts them if they are eligible.",
                restart::RESTART_DEBOUNCE.as_secs()
            ));
        }
        let gone = count(DispatchOutcome::Gone);
        if gone > 0 {
            out.info(&format!(
                "{gone} workspace(s) are gone: the platform has no such workspace (404) and the tenant has it removed or no longer has it; nothing to restart."
            ));
        }
        if self.plan_only && preview && !self.restart.planned.is_empty() {
            out.info(
                "No platform URL (--platform-url or MOLECULE_PLATFORM_URL): applying would print this restart plan instead of restarting.",
            );
        }
        if self.plan_only && !preview && !self.restart.planned.is_empty() {
            out.info(&format!(
                "No platform URL (--platform-url or MOLECULE_PLATFORM_URL): {} workspace(s) were not restarted; the plan is above. Restart them through the platform, or rerun with a platform URL.",
                self.restart.planned.len()
            ));
        }
    }
}

fn name_cell(name: &Option<String>) -> String {
    name.as_deref().map(sanitize).unwrap_or_else(|| "-".into())
}

/// The common part of set and delete, after their own checks.
struct Request<'a> {
    scope: Scope,
    key: &'a str,
    no_restart: bool,
    dry_run: bool,
    platform: Option<Platform>,
    op: Op,
}

enum Op {
    Set {
        value: Option<(Zeroizing<Vec<u8>>, ValueSource)>,
        sb: SecretBox,
        version: i32,
    },
    Delete {
        force: bool,
    },
}

async fn set(ctx: &Context, args: &SecretSetArgs) -> Result<Exit> {
    let (scope, key) = parse_scope(args.scope.global, &args.positional)?;
    let url = ctx.url()?;
    let platform = Platform::resolve(
        args.platform_url.as_deref(),
        !(args.no_restart || args.dry_run),
    )?
    .map(|p| p.with_total_timeout(args.restart_timeout));
    let sb = SecretBox::from_env();
    // Refusals of the key (bad key: 2; production without a key: 3) before reading a value.
    let version = sb.write_version()?;
    if let Some(w) = sb.plaintext_warning(&format!("the value of {key}")) {
        ctx.out.warn(&w);
    }
    if let Some(w) = crate::platform::vendor_keys::vendor_key_warning(&key, scope.workspace_id()) {
        ctx.out.warn(&w);
    }
    let value = read_value(&ctx.out, args.value_file.as_deref(), &key, args.dry_run).await?;
    let req = Request {
        scope,
        key: &key,
        no_restart: args.no_restart,
        dry_run: args.dry_run,
        platform,
        op: Op::Set { value, sb, version },
    };
    change(ctx, &url, req).await
}

async fn delete(ctx: &Context, args: &SecretDeleteArgs) -> Result<Exit> {
    let (scope, key) = parse_scope(args.scope.global, &args.positional)?;
    let url = ctx.url()?;
    let platform = Platform::resolve(
        args.platform_url.as_deref(),
        !(args.no_restart || args.dry_run),
    )?
    .map(|p| p.with_total_timeout(args.restart_timeout));
    let req = Request {
        scope,
        key: &key,
        no_restart: args.no_restart,
        dry_run: args.dry_run,
        platform,
        op: Op::Delete { force: args.force },
    };
    change(ctx, &url, req).await
}

async fn change(ctx: &Context, url: &db::DbUrl, req: Request<'_>) -> Result<Exit> {
    let out = &ctx.out;
    let (scope, key) = (req.scope, req.key);
    let mut conn = db::connect(url, &ctx.settings).await?;
    db::ensure_compatible(&mut conn).await?;

    // 1. Plan read-only: one snapshot, no locks, no writes.
    let model_on_agent = |is_platform: bool| {
        matches!(req.op, Op::Set { .. }) && is_platform && key == crate::platform::MODEL_KEY
    };
    let (reviewed, outranked) = {
        let mut tx = db::begin_read_only(&mut conn, &ctx.settings).await?;
        let p = prior(&mut tx, scope, key, req.no_restart).await?;
        // Where a MOLECULE_MODEL secret outranks the agent's MODEL (on the agent, or global).
        let outranked: Option<String> = if model_on_agent(
            p.target.as_ref().is_some_and(|t| t.is_platform),
        ) {
            db::query_scalar(
                "SELECT CASE WHEN EXISTS (SELECT 1 FROM workspace_secrets
                                           WHERE workspace_id = $1 AND key = $2) THEN 'on the agent'
                             WHEN EXISTS (SELECT 1 FROM global_secrets WHERE key = $2) THEN 'globally'
                        END",
            )
            .bind(scope.workspace_id())
            .bind(crate::platform::MODEL_OVERRIDE_KEY)
            .fetch_one(&mut *tx)
            .await?
        } else {
            None
        };
        tx.rollback().await?;
        (p, outranked)
    };
    let target_is_platform = reviewed.target.as_ref().is_some_and(|t| t.is_platform);
    if model_on_agent(target_is_platform) {
        // The platform validates a model only when it sets it (install-platform-agent
        // --provision --model); written here it is unchecked until the agent's next start.
        out.warn(
            "MODEL is written straight to the database: the platform has not validated it for the agent's runtime, and it applies at the agent's next provision (`orgctl install-platform-agent --provision --model …` has the platform validate and set it)",
        );
        if let Some(place) = &outranked {
            out.warn(&format!(
                "a {} secret is set {place}: it outranks MODEL, so the agent will not run this model",
                crate::platform::MODEL_OVERRIDE_KEY
            ));
        }
    }
    let action = match (&req.op, &reviewed.existing) {
        (Op::Set { .. }, None) => Action::Created,
        (Op::Set { .. }, Some(_)) => Action::Updated,
        (Op::Delete { .. }, Some(_)) => Action::Deleted,
        (Op::Delete { .. }, None) => Action::NotFound,
    };
    let version = match (&req.op, &reviewed.existing) {
        (Op::Set { version, .. }, _) => Some(*version),
        (Op::Delete { .. }, Some(e)) => Some(e.version),
        (Op::Delete { .. }, None) => None,
    };
    let mut outcome = Outcome {
        scope,
        key,
        target_name: reviewed.target.as_ref().map(|t| t.name.as_str()),
        action,
        encryption_version: version,
        restart: if action.changes() {
            reviewed.restart.clone()
        } else {
            RestartPlan::default()
        },
        dispatched: Vec::new(),
        dry_run: req.dry_run,
        no_restart: req.no_restart,
        plan_only: req.platform.is_none(),
    };
    let gate = match &req.op {
        Op::Delete { force } if action.changes() => {
            model_gate(scope, key, target_is_platform, *force, out)
        }
        _ => Ok(()),
    };

    if req.dry_run {
        outcome.render(out)?;
        outcome.notes(out, true);
        gate?;
        return Ok(Exit::Ok);
    }
    gate?;
    if !action.changes() {
        outcome.render(out)?;
        return Ok(Exit::Ok);
    }

    // 2. Show and confirm (no locks held while a human reads).
    let asked = !ctx.yes;
    if asked && out.interactive() {
        crate::output::stderr(&crate::output::review_text(&outcome.text(out, true)));
        outcome.notes(out, true);
    }
    let question = match action {
        Action::Created => format!("Create the {}?", scope.describe(key)),
        Action::Updated => format!(
            "Replace the {} (last updated {})?",
            scope.describe(key),
            ts(reviewed.existing.as_ref().and_then(|e| e.updated_at))
        ),
        _ => format!("Delete the {}?", scope.describe(key)),
    };
    out.confirm(&format!("{question} ({})", url.target()), ctx.yes)?;

    // 3. Apply in one transaction under the tenant lock: re-check, write, audit, commit.
    let mut tx = db::begin_change(&mut conn, url, &ctx.settings).await?;
    if let Scope::Workspace(id) = scope {
        // FOR SHARE: the target cannot become (or stop being) the platform agent, nor vanish,
        // before we commit.
        let is_platform: Option<bool> = db::query_scalar(
            "SELECT COALESCE(kind, 'workspace') = 'platform' FROM workspaces WHERE id = $1 FOR SHARE",
        )
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?;
        let is_platform = is_platform.ok_or_else(|| unknown_workspace(id))?;
        if let Op::Delete { force } = &req.op {
            if is_platform && !target_is_platform {
                model_gate(scope, key, true, *force, out)?;
            }
        }
    }
    let (applied, source) = match &req.op {
        Op::Set { value, sb, version } => {
            let (value, source) = value
                .as_ref()
                .ok_or_else(|| Error::failed("internal: no value to write"))?;
            if *version == 1 {
                // Under the lock: a rekey that committed meanwhile left no row this key reads.
                crate::rekey::ensure_key_matches_tenant(&mut tx, sb, scope.workspace_id(), key)
                    .await?;
            }
            let (sealed, v) = sb.seal(value)?;
            let sealed = Zeroizing::new(sealed);
            outcome.encryption_version = Some(v);
            let inserted = upsert(&mut tx, scope, key, &sealed, v).await?;
            (
                if inserted {
                    Action::Created
                } else {
                    Action::Updated
                },
                Some(*source),
            )
        }
        Op::Delete { .. } => match delete_row(&mut tx, scope, key).await? {
            Some(v) => {
                outcome.encryption_version = Some(v);
                (Action::Deleted, None)
            }
            None => (Action::NotFound, None),
        },
    };
    if applied == Action::NotFound {
        tx.rollback().await?;
        out.info("The secret was deleted concurrently; nothing to do.");
        outcome.action = Action::NotFound;
        outcome.restart = RestartPlan::default();
        outcome.render(out)?;
        return Ok(Exit::Ok);
    }
    if asked && applied != action {
        // What a human confirmed is exactly what gets applied.
        tx.rollback().await?;
        return Err(Error::refused(format!(
            "the secret changed while you were reading (it would be {} now, not {}); nothing was changed: rerun",
            applied.as_str(),
            action.as_str()
        )));
    }
    outcome.action = applied;
    let audit = serde_json::json!({
        "scope": scope.as_str(),
        "workspace_id": scope.workspace_id(),
        "key": key,
        "action": applied,
        "encryption_version": outcome.encryption_version,
        "value_source": source,
        "no_restart": req.no_restart,
        "force": matches!(req.op, Op::Delete { force: true }),
        "platform_url": req.platform.is_some(),
    });
    let command = match req.op {
        Op::Set { .. } => "secret set",
        Op::Delete { .. } => "secret delete",
    };
    let txid = crate::audit::record(&mut tx, command, &audit, "applied").await?;
    let committed =
        db::commit_guarded(tx, url, &ctx.settings, &crate::audit::AuditRow(txid)).await?;
    if let Some(note) = committed.note() {
        out.info(note);
    }
    // After a verified lost COMMIT the old connection is gone: carry on with the new one.
    committed.reconnected(&mut conn);
    drop(req.op);

    // 4. After the commit: the restart plan from the committed state, then dispatch.
    let committed = format!("the {} was {}", scope.describe(key), applied.as_str());
    // In a read-only transaction of its own: outside one, a transaction pooler may run a
    // statement's Parse and its Bind on two different server connections.
    let plan = async {
        let mut tx = db::begin_read_only(&mut conn, &ctx.settings).await?;
        let p = restart_plan(&mut tx, scope, key, req.no_restart).await?;
        tx.rollback().await?;
        Ok::<_, Error>(p)
    };
    outcome.restart = match plan.await {
        Ok(p) => p,
        Err(e) => {
            outcome.restart = RestartPlan::default();
            outcome.render(out)?;
            return Err(Error::failed(format!(
                "{committed}, but the workspaces to restart could not be determined ({}); restart the affected workspaces by hand",
                e.message
            )));
        }
    };
    let recorded = dispatch_and_record(
        out,
        &mut conn,
        url,
        &ctx.settings,
        req.platform.as_ref(),
        command,
        &mut outcome,
    )
    .await;
    outcome.render(out)?;
    outcome.notes(out, false);
    recorded.map_err(|e| {
        Error::failed(format!(
            "{committed} and its restarts are reported above, but they could not be recorded in orgctl.audit_log: {}",
            e.message
        ))
    })?;
    let failed = outcome.failed();
    if failed.is_empty() {
        return Ok(Exit::Ok);
    }
    let (shown, rest) = truncated(&failed, ERROR_IDS);
    let mut names: Vec<String> = shown.iter().map(Uuid::to_string).collect();
    if rest > 0 {
        names.push(format!("and {rest} more"));
    }
    // Calls never made (deadline, repeated failures, Ctrl-C) are named apart from failed ones.
    let not_attempted = outcome
        .dispatched
        .iter()
        .filter(|d| {
            d.error
                .as_deref()
                .is_some_and(|e| e.starts_with("not attempted"))
        })
        .count();
    let never = if not_attempted > 0 {
        format!(" ({not_attempted} of them not attempted)")
    } else {
        String::new()
    };
    Err(Error::failed(format!(
        "{committed}, but {} workspace(s) were not restarted{never}: {}; restart them by hand (the output lists each error)",
        failed.len(),
        names.join(", ")
    )))
}

/// One upsert; returns whether the row was inserted (not updated).
async fn upsert(
    conn: &mut PgConnection,
    scope: Scope,
    key: &str,
    sealed: &[u8],
    version: i32,
) -> Result<bool> {
    let inserted: bool = match scope {
        Scope::Workspace(id) => db::query_scalar(
            "INSERT INTO workspace_secrets (workspace_id, key, encrypted_value, encryption_version)
                 VALUES ($1, $2, $3, $4)
                 ON CONFLICT (workspace_id, key) DO UPDATE
                    SET encrypted_value = EXCLUDED.encrypted_value,
                        encryption_version = EXCLUDED.encryption_version,
                        updated_at = now()
                 RETURNING (xmax = 0)",
        )
        .bind(id)
        .bind(key)
        .bind(sealed)
        .bind(version)
        .fetch_one(&mut *conn)
        .await?,
        Scope::Global => {
            db::query_scalar(
                "INSERT INTO global_secrets (key, encrypted_value, encryption_version)
                 VALUES ($1, $2, $3)
                 ON CONFLICT (key) DO UPDATE
                    SET encrypted_value = EXCLUDED.encrypted_value,
                        encryption_version = EXCLUDED.encryption_version,
                        updated_at = now()
                 RETURNING (xmax = 0)",
            )
            .bind(key)
            .bind(sealed)
            .bind(version)
            .fetch_one(&mut *conn)
            .await?
        }
    };
    Ok(inserted)
}

/// One delete; returns the deleted row's encryption_version, `None` when there was none.
async fn delete_row(conn: &mut PgConnection, scope: Scope, key: &str) -> Result<Option<i32>> {
    Ok(match scope {
        Scope::Workspace(id) => {
            db::query_scalar(
                "DELETE FROM workspace_secrets WHERE workspace_id = $1 AND key = $2
                 RETURNING encryption_version",
            )
            .bind(id)
            .bind(key)
            .fetch_optional(&mut *conn)
            .await?
        }
        Scope::Global => {
            db::query_scalar(
                "DELETE FROM global_secrets WHERE key = $1 RETURNING encryption_version",
            )
            .bind(key)
            .fetch_optional(&mut *conn)
            .await?
        }
    })
}

// ---------------------------------------------------------------------------------------------
// Restart outcomes in the audit log, and `secret restart`

/// The restart calls, then the 404s checked against the tenant: "gone" only when the tenant
/// has the workspace removed or no longer has it; else the 404 is a failure (a wrong platform
/// URL answers 404 for every workspace).
async fn dispatch(
    out: &Output,
    conn: &mut PgConnection,
    settings: &db::Settings,
    platform: &Platform,
    ids: &[Uuid],
) -> Vec<Dispatched> {
    let mut results = restart::dispatch(out, platform, ids).await;
    if results.iter().any(|d| d.outcome == DispatchOutcome::Gone) {
        // Short and after the commit, like the calls: a Ctrl-C waits for it, so the outcomes
        // are still reported and recorded. A read-only transaction of its own (a transaction
        // pooler needs one per statement).
        let _guard = crate::interrupt::CommitGuard::enter();
        let checked = async {
            let mut tx = db::begin_read_only(conn, settings).await?;
            restart::confirm_gone(&mut tx, &mut results).await?;
            tx.rollback().await?;
            Ok::<_, Error>(())
        };
        if let Err(e) = checked.await {
            restart::unconfirmed_gone(&mut results, &e.message);
        }
    }
    results
}

/// The audit command of a per-workspace restart row.
pub const RESTART_COMMAND: &str = "restart";

/// One audit row per workspace of a restart phase: each dispatch with the platform's answer
/// (`restarted`, `noop`, `gone` or `failed`; a call never made is `failed` with its reason),
/// each planned workspace that was not called (`not-sent`: no platform URL) and each workspace
/// the guard or `--no-restart` skipped (`skipped`), so "which workspaces were never restarted"
/// can be answered from the log later. `trigger` is the
/// command that caused the phase.
pub fn restart_entries(
    trigger: &str,
    scope: Scope,
    key: &str,
    plan: &RestartPlan,
    dispatched: &[Dispatched],
) -> Vec<crate::audit::AuditEntry> {
    let results: std::collections::HashMap<Uuid, &Dispatched> =
        dispatched.iter().map(|d| (d.id, d)).collect();
    let entry = |id: Uuid,
                 outcome: &str,
                 http: Option<u16>,
                 error: Option<&str>,
                 skip: Option<SkipReason>| {
        crate::audit::AuditEntry {
            command: RESTART_COMMAND.to_string(),
            args: serde_json::json!({
                "workspace_id": id,
                "trigger": trigger,
                "scope": scope.as_str(),
                "secret_workspace_id": scope.workspace_id(),
                "key": key,
                "http_status": http,
                "error": error,
                "skip_reason": skip.map(SkipReason::as_str),
            }),
            outcome: outcome.to_string(),
            txid: None,
        }
    };
    let mut rows = Vec::with_capacity(plan.planned.len() + plan.skipped.len());
    for t in &plan.planned {
        rows.push(match results.get(&t.id) {
            Some(d) => {
                let outcome = match d.outcome {
                    DispatchOutcome::NotAttempted => DispatchOutcome::Failed,
                    o => o,
                };
                entry(
                    t.id,
                    outcome.as_str(),
                    d.http_status,
                    d.error.as_deref(),
                    None,
                )
            }
            None => entry(t.id, "not-sent", None, Some("no platform URL"), None),
        });
    }
    // An already-restarted workspace has its row from the restart that succeeded.
    for k in plan
        .skipped
        .iter()
        .filter(|k| k.reason != SkipReason::AlreadyRestarted)
    {
        rows.push(entry(
            k.id,
            "skipped",
            None,
            k.detail.as_deref(),
            Some(k.reason),
        ));
    }
    rows
}

/// Append the restart rows of a finished restart phase after the commit. Marked like a
/// COMMIT, so a Ctrl-C waits for it (it is short) instead of losing the record.
/// Restart calls per recorded batch: each batch's outcomes are committed to the audit log
/// before the next batch is called, so a run killed mid-phase leaves a record of every restart
/// it finished, and `secret restart` replays only what is still owed (at most one batch is
/// restarted twice). Four waves of the call concurrency.
pub const RESTART_RECORD_BATCH: usize = 32;

/// Dispatch the planned restarts (with `platform`; none without one) in batches of
/// [`RESTART_RECORD_BATCH`], recording each batch's outcomes as it completes, then the skipped
/// and unsent workspaces. The outcomes land in `outcome.dispatched`; the result says whether
/// everything could be recorded (the first failure stops further records, never the calls).
async fn dispatch_and_record(
    out: &Output,
    conn: &mut PgConnection,
    url: &db::DbUrl,
    settings: &db::Settings,
    platform: Option<&Platform>,
    trigger: &str,
    outcome: &mut Outcome<'_>,
) -> Result<()> {
    let (scope, key) = (outcome.scope, outcome.key);
    let mut recorded: Result<()> = Ok(());
    let mut dispatched = Vec::new();
    let planned = outcome.restart.planned.clone();
    if let Some(platform) = platform {
        // Why the calls stopped (interrupted, or the platform refused too many in a row): the
        // later batches are not called either, and say so.
        let mut stopped: Option<String> = None;
        for batch in planned.chunks(RESTART_RECORD_BATCH) {
            let ids: Vec<Uuid> = batch.iter().map(|t| t.id).collect();
            if stopped.is_none() && *crate::interrupt::level().borrow() > 0 {
                stopped = Some("not called: interrupted".into());
            }
            let results: Vec<Dispatched> = match &stopped {
                Some(why) => ids
                    .iter()
                    .map(|id| {
                        Dispatched::new(*id, DispatchOutcome::NotAttempted, Some(why.clone()), None)
                    })
                    .collect(),
                None => dispatch(out, conn, settings, platform, &ids).await,
            };
            if stopped.is_none() {
                stopped = results
                    .iter()
                    .find(|d| d.outcome == DispatchOutcome::NotAttempted)
                    .map(|d| d.error.clone().unwrap_or_else(|| "not called".into()));
            }
            let plan = RestartPlan {
                planned: batch.to_vec(),
                skipped: Vec::new(),
            };
            if recorded.is_ok() {
                recorded =
                    record_restarts(conn, url, settings, trigger, scope, key, &plan, &results)
                        .await;
            }
            dispatched.extend(results);
        }
    }
    // The workspaces not called (the guard's skips; without a platform, the whole plan).
    let rest = RestartPlan {
        planned: if platform.is_some() {
            Vec::new()
        } else {
            planned
        },
        skipped: outcome.restart.skipped.clone(),
    };
    if recorded.is_ok() {
        recorded = record_restarts(conn, url, settings, trigger, scope, key, &rest, &[]).await;
    }
    outcome.dispatched = dispatched;
    recorded
}

/// One committed batch of restart rows ([`restart_entries`]); nothing to write is no write.
#[allow(clippy::too_many_arguments)]
async fn record_restarts(
    conn: &mut PgConnection,
    url: &db::DbUrl,
    settings: &db::Settings,
    trigger: &str,
    scope: Scope,
    key: &str,
    plan: &RestartPlan,
    dispatched: &[Dispatched],
) -> Result<()> {
    let entries = restart_entries(trigger, scope, key, plan, dispatched);
    if entries.is_empty() {
        return Ok(());
    }
    let _guard = crate::interrupt::CommitGuard::enter();
    crate::audit::record_after_commit(conn, url, settings, &entries).await
}

/// The workspaces whose restart for this secret the audit log records as successful since
/// orgctl last changed it, and whether orgctl changed it at all. Read in the caller's
/// (read-only) transaction; empty when orgctl's log does not exist.
async fn restarted_since_change(
    conn: &mut PgConnection,
    scope: Scope,
    key: &str,
) -> Result<(std::collections::HashSet<Uuid>, bool)> {
    let log: bool = db::query_scalar("SELECT to_regclass('orgctl.audit_log') IS NOT NULL")
        .fetch_one(&mut *conn)
        .await?;
    if !log {
        return Ok((Default::default(), false));
    }
    let scope_ws = scope.workspace_id().map(|u| u.to_string());
    let changed: Option<i64> = db::query_scalar(
        "SELECT max(id) FROM orgctl.audit_log
          WHERE command IN ('secret set', 'secret delete') AND outcome = 'applied'
            AND args->>'scope' = $1 AND args->>'key' = $2
            AND (args->>'workspace_id') IS NOT DISTINCT FROM $3",
    )
    .bind(scope.as_str())
    .bind(key)
    .bind(&scope_ws)
    .fetch_one(&mut *conn)
    .await?;
    let done: Vec<String> = db::query_scalar(
        "SELECT DISTINCT args->>'workspace_id' FROM orgctl.audit_log
          WHERE command = $1 AND outcome = 'restarted'
            AND args->>'scope' = $2 AND args->>'key' = $3
            AND (args->>'secret_workspace_id') IS NOT DISTINCT FROM $4
            AND id > $5",
    )
    .bind(RESTART_COMMAND)
    .bind(scope.as_str())
    .bind(key)
    .bind(&scope_ws)
    .bind(changed.unwrap_or(0))
    .fetch_all(&mut *conn)
    .await?;
    Ok((
        done.iter()
            .filter_map(|s| Uuid::parse_str(s).ok())
            .collect(),
        changed.is_some(),
    ))
}

/// `orgctl secret restart (WORKSPACE_ID | --global) KEY`: replay the restart phase of a change
/// without touching the value. The plan comes from the current state under the same guard and
/// rules as `set`; by default only the workspaces the audit log does not record as restarted
/// since orgctl last changed the key are called (a failed, interrupted or never-sent restart),
/// `--all` calls every eligible one. No tenant lock: nothing of the tenant is written, and the
/// outcome rows are serialised by the audit chain's head.
async fn restart(ctx: &Context, args: &SecretRestartArgs) -> Result<Exit> {
    let out = &ctx.out;
    let (scope, key) = parse_scope(args.scope.global, &args.positional)?;
    let url = ctx.url()?;
    let platform = Platform::resolve(args.platform_url.as_deref(), !args.dry_run)?;
    let mut conn = db::connect(&url, &ctx.settings).await?;
    db::ensure_compatible(&mut conn).await?;

    let (target, existing, mut plan, done, changed) = {
        let mut tx = db::begin_read_only(&mut conn, &ctx.settings).await?;
        let target = match scope {
            Scope::Workspace(id) => Some(
                restart::lookup_target(&mut tx, id)
                    .await
                    .map_err(Error::failed)?
                    .ok_or_else(|| unknown_workspace(id))?,
            ),
            Scope::Global => None,
        };
        let existing = existing_row(&mut tx, scope, &key).await?;
        let plan = restart_plan(&mut tx, scope, &key, false).await?;
        let (done, changed) = restarted_since_change(&mut tx, scope, &key).await?;
        tx.rollback().await?;
        (target, existing, plan, done, changed)
    };
    if existing.is_none() && !changed {
        return Err(Error::failed(format!(
            "the {} does not exist and orgctl has no record of changing it, so there are no restarts to replay: check the key and the scope",
            scope.describe(&key)
        )));
    }
    if !args.all {
        let (owed, already): (Vec<restart::Target>, Vec<restart::Target>) = plan
            .planned
            .into_iter()
            .partition(|t| !done.contains(&t.id));
        plan.planned = owed;
        plan.skipped
            .extend(already.into_iter().map(|t| restart::Skip {
                id: t.id,
                name: t.name,
                reason: SkipReason::AlreadyRestarted,
                detail: None,
            }));
    }
    let mut outcome = Outcome {
        scope,
        key: &key,
        target_name: target.as_ref().map(|t| t.name.as_str()),
        action: Action::Restart,
        encryption_version: existing.as_ref().map(|e| e.version),
        restart: plan,
        dispatched: Vec::new(),
        dry_run: args.dry_run,
        no_restart: false,
        plan_only: platform.is_none(),
    };
    let Some(platform) = platform.filter(|_| !args.dry_run) else {
        // A dry run, or no platform URL: the plan is the report (as for set).
        outcome.render(out)?;
        outcome.notes(out, args.dry_run);
        return Ok(Exit::Ok);
    };
    if outcome.restart.planned.is_empty() {
        outcome.render(out)?;
        outcome.notes(out, false);
        out.info("Nothing to restart: every eligible workspace is recorded as restarted since the last change (--all restarts them again).");
        return Ok(Exit::Ok);
    }
    if !ctx.yes && out.interactive() {
        crate::output::stderr(&crate::output::review_text(&outcome.text(out, true)));
        outcome.notes(out, true);
    }
    out.confirm(
        &format!(
            "Restart {} workspace(s) for the {} ({})?",
            outcome.restart.planned.len(),
            scope.describe(&key),
            url.target()
        ),
        ctx.yes,
    )?;
    let recorded = dispatch_and_record(
        out,
        &mut conn,
        &url,
        &ctx.settings,
        Some(&platform),
        "secret restart",
        &mut outcome,
    )
    .await;
    outcome.render(out)?;
    outcome.notes(out, false);
    recorded.map_err(|e| {
        Error::failed(format!(
            "the restarts are reported above, but they could not be recorded in orgctl.audit_log: {}",
            e.message
        ))
    })?;
    let failed = outcome.failed();
    if failed.is_empty() {
        return Ok(Exit::Ok);
    }
    let (shown, rest) = truncated(&failed, ERROR_IDS);
    let mut names: Vec<String> = shown.iter().map(Uuid::to_string).collect();
    if rest > 0 {
        names.push(format!("and {rest} more"));
    }
    Err(Error::failed(format!(
        "{} workspace(s) were not restarted: {}; rerun `orgctl secret restart` to retry exactly those (the output lists each error)",
        failed.len(),
        names.join(", ")
    )))
}

// ---------------------------------------------------------------------------------------------
// list

#[derive(Clone, Debug, Serialize)]
struct Listed {
    key: String,
    scope: &'static str,
    encryption_version: i32,
    created_at: Option<DateTime<Utc>>,
    updated_at: Option<DateTime<Utc>>,
    overrides_global: bool,
}

#[derive(Serialize)]
struct JsonList<'a> {
    workspace_id: Option<Uuid>,
    secrets: &'a [Listed],
}

async fn list(ctx: &Context, args: &SecretListArgs) -> Result<Exit> {
    let scope =
        match (args.scope.global, args.workspace.as_deref()) {
            (true, None) => Scope::Global,
            (false, Some(ws)) => Scope::Workspace(parse_workspace_id(ws)?),
            (true, Some(_)) => {
                return Err(Error::usage(
                    "give either WORKSPACE_ID or --global, not both",
                ))
            }
            (false, None) => return Err(Error::usage(
                "give WORKSPACE_ID to list a workspace's secrets (own and inherited), or --global",
            )),
        };
    let url = ctx.url()?;
    let mut conn = db::connect(&url, &ctx.settings).await?;
    db::ensure_compatible(&mut conn).await?;
    // Read-only: never creates orgctl's schema, takes no lock.
    let mut tx = db::begin_read_only(&mut conn, &ctx.settings).await?;
    let rows = match scope {
        Scope::Workspace(id) => {
            let exists: Option<i32> = db::query_scalar("SELECT 1 FROM workspaces WHERE id = $1")
                .bind(id)
                .fetch_optional(&mut *tx)
                .await?;
            if exists.is_none() {
                return Err(Error::failed(format!(
                    "workspace {id} does not exist in this tenant: check the id"
                )));
            }
            db::query(
                "SELECT s.key, 'workspace', s.encryption_version, s.created_at, s.updated_at,
                        EXISTS (SELECT 1 FROM global_secrets g WHERE g.key = s.key)
                   FROM workspace_secrets s WHERE s.workspace_id = $1
                 UNION ALL
                 SELECT g.key, 'inherited', g.encryption_version, g.created_at, g.updated_at, false
                   FROM global_secrets g
                  WHERE NOT EXISTS (SELECT 1 FROM workspace_secrets s
                                     WHERE s.workspace_id = $1 AND s.key = g.key)
                 ORDER BY 1",
            )
            .bind(id)
            .fetch_all(&mut *tx)
            .await?
        }
        Scope::Global => {
            db::query(
                "SELECT key, 'global', encryption_version, created_at, updated_at, false
                   FROM global_secrets ORDER BY key",
            )
            .fetch_all(&mut *tx)
            .await?
        }
    };
    tx.rollback().await?;
    let listed: Vec<Listed> = rows
        .iter()
        .map(|r| {
            let scope: String = r.try_get(1)?;
            Ok(Listed {
                key: r.try_get(0)?,
                scope: match scope.as_str() {
                    "workspace" => "workspace",
                    "inherited" => "inherited",
                    _ => "global",
                },
                encryption_version: r.try_get(2)?,
                created_at: r.try_get(3)?,
                updated_at: r.try_get(4)?,
                overrides_global: r.try_get(5)?,
            })
        })
        .collect::<std::result::Result<_, sqlx::Error>>()?;
    let out = &ctx.out;
    if out.json_mode() {
        out.json(&JsonList {
            workspace_id: scope.workspace_id(),
            secrets: &listed,
        })?;
        return Ok(Exit::Ok);
    }
    if listed.is_empty() {
        out.info("No secrets.");
        return Ok(Exit::Ok);
    }
    let mut t = out.new_table(["key", "scope", "version", "created_at", "updated_at"]);
    for l in &listed {
        let scope = if l.overrides_global {
            "workspace (overrides global)".to_string()
        } else {
            l.scope.to_string()
        };
        t.add_row(vec![
            sanitize(&l.key),
            scope,
            l.encryption_version.to_string(),
            ts(l.created_at),
            ts(l.updated_at),
        ]);
    }
    out.table(&t)?;
    Ok(Exit::Ok)
}

fn ts(t: Option<DateTime<Utc>>) -> String {
    t.map(|t| t.to_rfc3339_opts(SecondsFormat::Secs, true))
        .unwrap_or_else(|| "-".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id() -> Uuid {
        Uuid::from_u128(0xa000_0000_0000_4000_8000_0000_0000_0001)
    }

    #[test]
    fn keys() {
        for good in ["A", "_", "OPENAI_API_KEY", "a1_b2", "_9"] {
            assert!(check_key(good).is_ok(), "{good}");
        }
        for bad in ["", "1A", "A-B", "A B", "Ä", "A.B", "A\n"] {
            assert_eq!(
                check_key(bad).map_err(|e| e.exit).err(),
                Some(Exit::Usage),
                "{bad}"
            );
        }
    }

    #[test]
    fn scopes() {
        let s = |g: bool, p: &[&str]| {
            let p: Vec<String> = p.iter().map(|s| s.to_string()).collect();
            parse_scope(g, &p).map_err(|e| e.exit)
        };
        assert_eq!(s(true, &["K"]), Ok((Scope::Global, "K".into())));
        assert_eq!(
            s(false, &["a0000000-0000-4000-8000-000000000001", "K"]),
            Ok((Scope::Workspace(id()), "K".into()))
        );
        assert_eq!(
            s(true, &["a0000000-0000-4000-8000-000000000001", "K"]),
            Err(Exit::Usage)
        );
        assert_eq!(s(false, &["K"]), Err(Exit::Usage));
        assert_eq!(s(false, &["not-a-uuid", "K"]), Err(Exit::Usage));
        assert_eq!(s(true, &["1BAD"]), Err(Exit::Usage));
    }

    #[test]
    fn values_strip_one_newline_and_refuse_empty_and_nul() {
        let v = |b: &[u8]| {
            read_value_from(b, "t")
                .and_then(|r| finish_value(r, "t"))
                .map(|z| z.to_vec())
                .map_err(|e| e.exit)
        };
        assert_eq!(v(b"abc\n"), Ok(b"abc".to_vec()));
        assert_eq!(v(b"abc\r\n"), Ok(b"abc".to_vec()));
        assert_eq!(v(b"abc\n\n"), Ok(b"abc\n".to_vec()));
        assert_eq!(v(b" x "), Ok(b" x ".to_vec()));
        assert_eq!(v(b"\n"), Err(Exit::Usage));
        assert_eq!(v(b""), Err(Exit::Usage));
        assert_eq!(v(b"a\0b"), Err(Exit::Usage));
        let big = vec![b'x'; MAX_VALUE_BYTES + 1];
        assert_eq!(v(&big), Err(Exit::Usage));
        let ok = vec![b'x'; MAX_VALUE_BYTES];
        assert_eq!(v(&ok).map(|v| v.len()), Ok(MAX_VALUE_BYTES));
    }
}
