//! `orgctl audit`: who did what to a tenant, when, why, and whether the
//! record is intact.
//!
//! - **reason**: `--reason` / `ORGCTL_REASON` is checked once at start-up ([`check_reason`])
//!   and kept for the run ([`set_reason`]); [`crate::db::append_audit`] stores it on every row
//!   the run writes. With `ORGCTL_REQUIRE_REASON=1` a mutating command without one is refused
//!   before any connection (exit 2).
//! - **the chain**: every row orgctl appends carries `seq`, `prev_hash` and
//!   `row_hash = sha256(prev_hash || canonical content)` ([`Link`]); the head (last `seq` and
//!   hash) lives in `orgctl.audit_head`. The canonical content is defined in [`Link::content`]
//!   and in the README ("Incident review"), so anyone can recompute it.
//! - **list** (`orgctl audit`) and **verify** (`orgctl audit verify`) are read-only: one
//!   REPEATABLE READ READ ONLY transaction, rows read through a server-side cursor in batches
//!   (bounded memory on any log size), nothing created — a tenant orgctl never touched has an
//!   empty log.

use std::fmt::Write as _;
use std::io::IsTerminal as _;
use std::sync::OnceLock;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;
use sha2::{Digest, Sha256};
use sqlx::postgres::PgConnection;
use sqlx::Row;

use crate::cli::{AuditArgs, AuditCommand, AuditVerifyArgs};
use crate::error::{sanitize, Error, Exit, Result};
use crate::output::Sink;
use crate::{db, Context};

/// The longest `--reason` accepted (an incident or change number with a short note).
pub const MAX_REASON_CHARS: usize = 500;
/// Rows per round trip when reading through a cursor.
const FETCH_BATCH: i64 = 1000;
/// `audit` shows this many rows by default, in the table on a terminal only.
pub const DEFAULT_TABLE_LIMIT: u64 = 50;
/// Limits above this (and 0) stream tab-separated lines instead of collecting a table.
const MAX_TABLE_ROWS: u64 = 10_000;
/// The arguments column of the table is cut to this many characters (JSON has them whole).
const TABLE_ARGS_CHARS: usize = 120;
/// `prev_hash` of the first link.
pub const GENESIS: [u8; 32] = [0; 32];
/// Names the canonical-content format; a future format gets a new tag.
pub const CONTENT_TAG: &str = "orgctl-audit-v1";
const CURSOR: &str = "orgctl_audit_cursor";

static REASON: OnceLock<Option<String>> = OnceLock::new();

pub use crate::output::head::{
    committed_head, fleet_mode, hex, note_appended, note_committed, HeadJson,
};

/// `--head SEQ:ROW_HASH` (hex, 64 digits; a `sha256:` before the hash is accepted).
pub fn parse_anchor(raw: &str) -> Result<(i64, [u8; 32])> {
    let bad = || {
        Error::usage(format!(
            "--head '{}' is not SEQ:ROW_HASH (e.g. 41:9f2c…, 64 hex digits), as a change's audit_head or `audit verify` prints it",
            sanitize(raw)
        ))
    };
    let (seq, hash) = raw.trim().split_once(':').ok_or_else(bad)?;
    let seq: i64 = seq.trim().parse().map_err(|_| bad())?;
    let hash = hash.trim();
    let hash = hash.strip_prefix("sha256:").unwrap_or(hash);
    if seq < 1 || hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(bad());
    }
    let mut out = [0u8; 32];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(&hash[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
    }
    Ok((seq, out))
}

/// Keep the run's checked `--reason` for every audit row it writes. Only the first call counts.
pub fn set_reason(reason: Option<String>) {
    let _ = REASON.set(reason);
}

/// The run's `--reason`, if any.
pub fn reason() -> Option<String> {
    REASON.get().cloned().flatten()
}

/// Check `--reason` / `ORGCTL_REASON` against `ORGCTL_REQUIRE_REASON` before anything
/// connects: a reason is one line of at most [`MAX_REASON_CHARS`] characters; a mutating
/// command without one is refused when a reason is required. Exit 2 for all of these.
pub fn check_reason(
    reason: Option<&str>,
    require: Option<&str>,
    mutating: bool,
) -> Result<Option<String>> {
    let required = match require.map(|r| r.trim().to_ascii_lowercase()) {
        None => false,
        Some(r) => match r.as_str() {
            "" | "0" | "false" | "no" | "off" => false,
            "1" | "true" | "yes" | "on" => true,
            _ => {
                return Err(Error::usage(format!(
                "ORGCTL_REQUIRE_REASON is '{}': set it to 1 to require --reason on changes, or 0",
                sanitize(&r)
            )))
            }
        },
    };
    let reason = match reason {
        None => None,
        Some(r) => {
            let r = r.trim();
            if r.is_empty() {
                return Err(Error::usage(
                    "--reason (or ORGCTL_REASON) is empty: give the incident or change number, e.g. --reason INC-1234",
                ));
            }
            if r.chars().any(char::is_control) {
                return Err(Error::usage(
                    "--reason must be one line without control characters",
                ));
            }
            if r.chars().count() > MAX_REASON_CHARS {
                return Err(Error::usage(format!(
                    "--reason is longer than {MAX_REASON_CHARS} characters: give the incident or change number and keep the story in the ticket"
                )));
            }
            Some(r.to_string())
        }
    };
    if required && mutating && reason.is_none() {
        return Err(Error::usage(
            "ORGCTL_REQUIRE_REASON=1: this command changes the tenant and needs a reason: pass --reason TEXT or set ORGCTL_REASON (an incident or change number); nothing was done",
        ));
    }
    Ok(reason)
}

// ---------------------------------------------------------------------------------------------
// The chain

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

// ---------------------------------------------------------------------------------------------
// Reading

pub async fn run(ctx: &Context, args: &AuditArgs) -> Result<Exit> {
    match &args.command {
        Some(AuditCommand::Verify(v)) => verify(ctx, v).await,
        None => list(ctx, args).await,
    }
}

/// Which of the chain's columns the tenant's `orgctl.audit_log` has (none before migration 4).
struct Columns {
    log: bool,
    chain: bool,
    head: bool,
    /// The head records the rows written before the chain began.
    pre_chain: bool,
}

async fn columns(conn: &mut PgConnection) -> Result<Columns> {
    // Through the catalog by name, never `to_regclass('orgctl.…')`, which raises "permission
    // denied for schema orgctl" for a role without USAGE on it.
    let row = db::query(
        "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_class c
                          JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
                         WHERE n.nspname = 'orgctl' AND c.relname = 'audit_log'),
                EXISTS (SELECT 1 FROM pg_catalog.pg_attribute a
                          JOIN pg_catalog.pg_class c ON c.oid = a.attrelid
                          JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
                         WHERE n.nspname = 'orgctl' AND c.relname = 'audit_log'
                           AND a.attname = 'row_hash' AND NOT a.attisdropped),
                EXISTS (SELECT 1 FROM pg_catalog.pg_class c
                          JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
                         WHERE n.nspname = 'orgctl' AND c.relname = 'audit_head'),
                EXISTS (SELECT 1 FROM pg_catalog.pg_attribute a
                          JOIN pg_catalog.pg_class c ON c.oid = a.attrelid
                          JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
                         WHERE n.nspname = 'orgctl' AND c.relname = 'audit_head'
                           AND a.attname = 'pre_chain_rows' AND NOT a.attisdropped)",
    )
    .fetch_one(&mut *conn)
    .await?;
    let cols = Columns {
        log: row.try_get(0)?,
        chain: row.try_get(1)?,
        head: row.try_get(2)?,
        pre_chain: row.try_get(3)?,
    };
    if cols.log && db::orgctl_table(conn, "audit_log").await? == db::Access::NotReadable {
        return Err(Error::refused(
            "orgctl.audit_log exists but this role cannot read it: GRANT USAGE ON SCHEMA orgctl and SELECT ON orgctl.audit_log (and orgctl.audit_head for `audit verify`) to it, or run as a role that can",
        ));
    }
    Ok(cols)
}

/// `--since`: a duration back from now (`90m`, `36h`, `7d`, `2w`), an RFC 3339 timestamp, or
/// a date (`2026-12-01`, midnight UTC).
#[derive(Clone, Debug, PartialEq)]
pub enum Since {
    Ago(std::time::Duration),
    At(DateTime<Utc>),
}

pub fn parse_since(raw: &str) -> std::result::Result<Since, String> {
    let s = raw.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(Since::At(t.with_timezone(&Utc)));
    }
    if let Ok(d) = chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d") {
        if let Some(t) = d.and_hms_opt(0, 0, 0) {
            return Ok(Since::At(t.and_utc()));
        }
    }
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let bad = || {
        format!(
            "'{s}' is neither a duration (30m, 12h, 7d, 2w) nor a timestamp (2026-12-01T07:00:00Z, 2026-12-01)"
        )
    };
    let value: f64 = num.parse().map_err(|_| bad())?;
    let secs = match unit.trim() {
        "ms" => value / 1000.0,
        "" | "s" => value,
        "m" | "min" => value * 60.0,
        "h" => value * 3600.0,
        "d" => value * 86_400.0,
        "w" => value * 7.0 * 86_400.0,
        _ => return Err(bad()),
    };
    // About 100 years back is as far as a duration makes sense.
    if !secs.is_finite() || !(0.0..=3.2e9).contains(&secs) {
        return Err(format!("'{s}' is out of range"));
    }
    Ok(Since::Ago(std::time::Duration::from_secs_f64(secs)))
}

/// The number of rows `audit` shows (None: all, streamed). `--limit N` wins (0 = all); without
/// it a script (JSON, or a stdout that is not a terminal) gets every match and the table on a
/// terminal the newest [`DEFAULT_TABLE_LIMIT`].
pub fn effective_limit(given: Option<u64>, json: bool, stdout_tty: bool) -> Option<u64> {
    match given {
        Some(0) => None,
        Some(n) => Some(n),
        None if json || !stdout_tty => None,
        None => Some(DEFAULT_TABLE_LIMIT),
    }
}

#[derive(Debug, sqlx::FromRow)]
struct ListedRow {
    id: i64,
    at: DateTime<Utc>,
    os_user: String,
    db_user: String,
    command: String,
    args: String,
    reason: Option<String>,
    outcome: String,
    orgctl_version: String,
}

#[derive(Serialize)]
struct ListedJson<'a> {
    id: i64,
    at: String,
    os_user: &'a str,
    db_user: &'a str,
    command: &'a str,
    args: serde_json::Value,
    reason: Option<&'a str>,
    outcome: &'a str,
    orgctl_version: &'a str,
}

const LIST_HEADER: [&str; 8] = [
    "id",
    "time",
    "os_user",
    "db_user",
    "command",
    "reason",
    "outcome",
    "arguments",
];

fn cells(r: &ListedRow, cut: bool) -> Vec<String> {
    let args = compact_args(&r.args);
    let args = if cut && args.chars().count() > TABLE_ARGS_CHARS {
        let mut a: String = args.chars().take(TABLE_ARGS_CHARS - 1).collect();
        a.push('…');
        a
    } else {
        args
    };
    vec![
        r.id.to_string(),
        r.at.to_rfc3339_opts(SecondsFormat::Secs, true),
        sanitize(&r.os_user),
        sanitize(&r.db_user),
        sanitize(&r.command),
        r.reason
            .as_deref()
            .map(sanitize)
            .unwrap_or_else(|| "-".into()),
        sanitize(&r.outcome),
        sanitize(&args),
    ]
}

/// The arguments as compact JSON with sorted keys (jsonb's text has spaces after separators).
fn compact_args(raw: &str) -> String {
    match serde_json::from_str::<serde_json::Value>(raw) {
        Ok(v) => {
            let mut s = String::new();
            canonical_json(&v, &mut s);
            s
        }
        Err(_) => raw.to_string(),
    }
}

async fn list(ctx: &Context, args: &AuditArgs) -> Result<Exit> {
    let since = match &args.since {
        Some(s) => Some(parse_since(s).map_err(|e| Error::usage(format!("--since: {e}")))?),
        None => None,
    };
    let command = match &args.command_name {
        Some(c) if c.trim().is_empty() => {
            return Err(Error::usage(
                "--command must not be empty (e.g. --command 'secret set', or --command secret for the family)",
            ))
        }
        Some(c) => Some(c.trim().to_string()),
        None => None,
    };
    let json = ctx.out.json_mode();
    let limit: Option<i64> = effective_limit(args.limit, json, std::io::stdout().is_terminal())
        .map(|n| i64::try_from(n).unwrap_or(i64::MAX - 1).min(i64::MAX - 1));

    let url = ctx.url()?;
    let mut conn = db::connect(&url, &ctx.settings).await?;
    let mut tx = db::begin_read_only(&mut conn, &ctx.settings).await?;
    let cols = columns(&mut tx).await?;

    let mut sink = Sink::new();
    let stream_text = !json && limit.map_or(true, |l| l as u64 > MAX_TABLE_ROWS);
    let mut table = (!json && !stream_text).then(|| ctx.out.new_table(LIST_HEADER));
    if json {
        sink.write("[")?;
    }
    let mut shown: i64 = 0;
    let mut more = false;
    if cols.log {
        let reason = if cols.chain { "reason" } else { "NULL::text" };
        let (since_at, since_secs) = match since {
            Some(Since::At(t)) => (Some(t), None),
            Some(Since::Ago(d)) => (None, Some(d.as_secs_f64())),
            None => (None, None),
        };
        // The newest first, by id: the order rows were appended in (a clock step cannot reorder
        // them). A command NAME without a space also matches its family ("secret" → "secret set").
        let mut sql = format!(
            "DECLARE {CURSOR} NO SCROLL CURSOR FOR
             SELECT id, at, os_user, db_user, command, args::text AS args, {reason} AS reason,
                    outcome, orgctl_version
               FROM orgctl.audit_log
              WHERE ($1::timestamptz IS NULL OR at >= $1)
                AND ($2::float8 IS NULL OR at >= now() - make_interval(secs => $2))
                AND ($3::text IS NULL OR command = $3
                     OR (strpos($3, ' ') = 0 AND starts_with(command, $3 || ' ')))
              ORDER BY id DESC"
        );
        if limit.is_some() {
            sql.push_str(" LIMIT $4");
        }
        let mut q = db::query(&sql)
            .bind(since_at)
            .bind(since_secs)
            .bind(&command);
        if let Some(l) = limit {
            q = q.bind(l + 1);
        }
        q.execute(&mut *tx).await?;
        let fetch = format!("FETCH {FETCH_BATCH} FROM {CURSOR}");
        'read: loop {
            let rows: Vec<ListedRow> = db::query_as(&fetch).fetch_all(&mut *tx).await?;
            if rows.is_empty() {
                break;
            }
            for r in &rows {
                if limit.is_some_and(|l| shown >= l) {
                    more = true;
                    break 'read;
                }
                if json {
                    let item = ListedJson {
                        id: r.id,
                        at: r.at.to_rfc3339_opts(SecondsFormat::Micros, true),
                        os_user: &r.os_user,
                        db_user: &r.db_user,
                        command: &r.command,
                        args: serde_json::from_str(&r.args).unwrap_or(serde_json::Value::Null),
                        reason: r.reason.as_deref(),
                        outcome: &r.outcome,
                        orgctl_version: &r.orgctl_version,
                    };
                    let text = serde_json::to_string(&item)
                        .map_err(|e| Error::failed(format!("could not render JSON: {e}")))?;
                    sink.write(if shown == 0 { "\n  " } else { ",\n  " })?;
                    sink.write(&text)?;
                } else if let Some(t) = table.as_mut() {
                    t.add_row(cells(r, true));
                } else {
                    if shown == 0 {
                        sink.write(&format!("{}\n", LIST_HEADER.join("\t")))?;
                    }
                    sink.write(&format!("{}\n", cells(r, false).join("\t")))?;
                }
                shown += 1;
            }
            if sink.closed {
                break;
            }
        }
    }
    tx.rollback().await?;
    if json {
        sink.write(if shown > 0 { "\n]\n" } else { "]\n" })?;
    } else if let Some(t) = table {
        if shown > 0 {
            sink.write(&format!("{t}\n"))?;
        }
    }
    sink.flush()?;
    if !cols.log {
        ctx.out
            .info("No audit log: orgctl has never changed this tenant.");
    } else if more {
        ctx.out.info(&format!(
            "Showing the newest {shown} rows; more match: pass --limit N (0 for all) or narrow with --since or --command."
        ));
    } else if shown == 0 {
        ctx.out.info("No audit rows match.");
    }
    Ok(Exit::Ok)
}

// ---------------------------------------------------------------------------------------------
// verify

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

#[derive(Serialize)]
struct VerifyJson {
    intact: bool,
    rows: u64,
    chained: u64,
    unchained: u64,
    head: Option<HeadJson>,
    problems: u64,
    first_problem: Option<Problem>,
}

async fn verify(ctx: &Context, args: &AuditVerifyArgs) -> Result<Exit> {
    let anchor = args.head.as_deref().map(parse_anchor).transpose()?;
    let url = ctx.url()?;
    let mut conn = db::connect(&url, &ctx.settings).await?;
    let mut tx = db::begin_read_only(&mut conn, &ctx.settings).await?;
    let cols = columns(&mut tx).await?;
    let mut v = Verifier {
        anchor,
        ..Verifier::default()
    };
    let mut head = None;
    if cols.log {
        if cols.head {
            head = db::query_as::<(i64, Vec<u8>)>(
                "SELECT seq, row_hash FROM orgctl.audit_head WHERE one",
            )
            .fetch_optional(&mut *tx)
            .await?;
        }
        if cols.pre_chain {
            v.pre_chain = db::query_as::<(Option<i64>, Option<i64>)>(
                "SELECT pre_chain_rows, pre_chain_max_id FROM orgctl.audit_head WHERE one",
            )
            .fetch_optional(&mut *tx)
            .await?
            .and_then(|(n, max_id)| n.map(|n| (n, max_id)));
        }
        let chain = if cols.chain {
            "seq, prev_hash, row_hash, reason"
        } else {
            "NULL::bigint AS seq, NULL::bytea AS prev_hash, NULL::bytea AS row_hash, NULL::text AS reason"
        };
        db::query(&format!(
            "DECLARE {CURSOR} NO SCROLL CURSOR FOR
             SELECT id, at, os_user, db_user, command, args::text AS args, outcome,
                    orgctl_version, {chain}
               FROM orgctl.audit_log ORDER BY id"
        ))
        .execute(&mut *tx)
        .await?;
        let fetch = format!("FETCH {FETCH_BATCH} FROM {CURSOR}");
        loop {
            let rows: Vec<StoredRow> = db::query_as(&fetch).fetch_all(&mut *tx).await?;
            if rows.is_empty() {
                break;
            }
            for r in &rows {
                v.row(r);
            }
        }
        if cols.head || v.chained > 0 || v.anchor.is_some() {
            v.finish(head.clone());
        }
        // The backfill snapshots still held for a rollback must be the ones their runs took.
        if crate::backfill::backfill_tables_exist(&mut tx).await? {
            let runs: Vec<String> = db::query_scalar(
                "SELECT run_id FROM orgctl.backfill_runs WHERE status = 'applied' ORDER BY run_id",
            )
            .fetch_all(&mut *tx)
            .await?;
            for run in runs {
                if let Some(why) =
                    crate::backfill::rollback::snapshot_tampered(&mut tx, &run).await?
                {
                    v.problem(ProblemKind::Altered, None, None, why);
                }
            }
        }
    } else if let Some((seq, _)) = anchor {
        return Err(Error::failed(format!(
            "--head names seq {seq}, but {} has no audit log at all: it was removed",
            url.target()
        )));
    }
    tx.rollback().await?;

    let intact = v.first.is_none();
    let out = &ctx.out;
    if out.json_mode() {
        out.json(&VerifyJson {
            intact,
            rows: v.rows,
            chained: v.chained,
            unchained: v.unchained,
            head: head.as_ref().map(|(s, h)| HeadJson {
                seq: *s,
                row_hash: hex(h),
            }),
            problems: v.problems,
            first_problem: v.first.clone(),
        })?;
    } else {
        let mut s = String::new();
        if !cols.log {
            s.push_str("No audit log: orgctl has never changed this tenant. Nothing to verify.\n");
        } else {
            let _ = writeln!(
                s,
                "Audit log: {} row(s): {} chained, {} unchained (written before the chain existed).",
                v.rows, v.chained, v.unchained
            );
            if let Some((seq, hash)) = &head {
                let _ = writeln!(
                    s,
                    "Head: seq {seq}, row_hash {} (keep {seq}:{} outside the database; a later `audit verify --head` checks it is still there)",
                    hex(hash),
                    hex(hash)
                );
            }
            match &v.first {
                None => s.push_str(
                    "Intact: every chained row matches its hash and follows the one before it.\n",
                ),
                Some(p) => {
                    let _ = writeln!(
                        s,
                        "BROKEN ({} problem(s)); the first: {}",
                        v.problems, p.message
                    );
                }
            }
        }
        out.stdout(&s)?;
    }
    match v.first {
        None => Ok(Exit::Ok),
        Some(p) => Err(Error::failed(format!(
            "the audit log of {} is not intact: {}{}",
            url.target(),
            p.message,
            if v.problems > 1 {
                format!(" ({} more problem(s) after it)", v.problems - 1)
            } else {
                String::new()
            }
        ))),
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
    fn content_is_canonical() {
        let r = &chain(1)[0];
        let c = link_of(r).content().unwrap_or_default();
        assert_eq!(
            c,
            r#"["orgctl-audit-v1",1,10,"2026-12-01T07:15:00.123456Z","alice","postgres","token mint",{"a":"é\n","n":1},"INC-1","applied","0.1.0"]"#
        );
        // jsonb's key order and spacing do not matter.
        let mut other = r.clone();
        other.args = r#"{"a":"é\n",   "n":1}"#.into();
        assert_eq!(link_of(&other).content().unwrap_or_default(), c);
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

    #[test]
    fn reasons() {
        assert_eq!(
            check_reason(None, None, true).map_err(|e| e.exit).ok(),
            Some(None)
        );
        assert_eq!(
            check_reason(Some(" INC-1 "), Some("1"), true)
                .ok()
                .flatten()
                .as_deref(),
            Some("INC-1")
        );
        for (reason, require, mutating) in [
            (None, Some("1"), true),
            (Some("  "), None, false),
            (Some("a\nb"), None, true),
            (None, Some("maybe"), false),
        ] {
            assert_eq!(
                check_reason(reason, require, mutating)
                    .map_err(|e| e.exit)
                    .err(),
                Some(Exit::Usage),
                "{reason:?} {require:?}"
            );
        }
        assert!(check_reason(None, Some("1"), false).is_ok());
        assert!(check_reason(None, Some("0"), true).is_ok());
        let long = "x".repeat(MAX_REASON_CHARS + 1);
        assert!(check_reason(Some(&long), None, true).is_err());
    }

    #[test]
    fn since() {
        assert_eq!(
            parse_since("7d"),
            Ok(Since::Ago(std::time::Duration::from_secs(7 * 86_400)))
        );
        assert_eq!(
            parse_since("90m"),
            Ok(Since::Ago(std::time::Duration::from_secs(5400)))
        );
        assert!(matches!(
            parse_since("2026-12-01T07:00:00+01:00"),
            Ok(Since::At(_))
        ));
        assert!(matches!(parse_since("2026-12-01"), Ok(Since::At(_))));
        assert!(parse_since("yesterday").is_err());
        assert!(parse_since("-1h").is_err());
    }
}
