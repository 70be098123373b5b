//! `orgctl audit`: the audit log, newest first, as a table on a terminal, tab-separated lines
//! for long listings, or one JSON array, streamed as the rows are read.

use std::io::IsTerminal as _;
use std::ops::ControlFlow;

use chrono::SecondsFormat;
use comfy_table::Table;
use serde::Serialize;

use crate::audit::{self, canonical_json, Filter, ListedRow};
use crate::cli::AuditArgs;
use crate::db;
use crate::error::{sanitize, Error, Exit, Result};
use crate::output::Sink;
use crate::Context;

/// `audit` shows this many rows by default, in the table on a terminal only.
pub const DEFAULT_TABLE_LIMIT: u64 = 50;
/// Limits above this (and 0) stream tab-separated lines instead of collecting a table.
const MAX_TABLE_ROWS: u64 = 10_000;
/// The arguments column of the table is cut to this many characters (JSON has them whole).
const TABLE_ARGS_CHARS: usize = 120;

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

/// The checked filter of `orgctl audit`'s arguments.
fn filter(ctx: &Context, args: &AuditArgs) -> Result<Filter> {
    let since = match &args.since {
        Some(s) => Some(audit::parse_since(s).map_err(|e| Error::usage(format!("--since: {e}")))?),
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
    let limit: Option<i64> = crate::output::listing_limit(
        args.limit,
        json,
        std::io::stdout().is_terminal(),
        DEFAULT_TABLE_LIMIT,
    )
    .map(|n| i64::try_from(n).unwrap_or(i64::MAX - 1).min(i64::MAX - 1));
    Ok(Filter {
        since,
        command,
        limit,
    })
}

/// The listing as it is written: JSON array items, table rows, or tab-separated lines.
struct Listing {
    sink: Sink,
    json: bool,
    table: Option<Table>,
    limit: Option<i64>,
    shown: i64,
    /// More rows match than the limit shows.
    more: bool,
}

impl Listing {
    /// Write one batch; breaks at the limit or once stdout is closed.
    fn batch(&mut self, rows: Vec<ListedRow>) -> Result<ControlFlow<()>> {
        for r in &rows {
            if self.limit.is_some_and(|l| self.shown >= l) {
                self.more = true;
                return Ok(ControlFlow::Break(()));
            }
            self.row(r)?;
            self.shown += 1;
        }
        Ok(if self.sink.closed {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        })
    }

    fn row(&mut self, r: &ListedRow) -> Result<()> {
        if self.json {
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
            self.sink
                .write(if self.shown == 0 { "\n  " } else { ",\n  " })?;
            self.sink.write(&text)?;
        } else if let Some(t) = self.table.as_mut() {
            t.add_row(cells(r, true));
        } else {
            if self.shown == 0 {
                self.sink.write(&format!("{}\n", LIST_HEADER.join("\t")))?;
            }
            self.sink
                .write(&format!("{}\n", cells(r, false).join("\t")))?;
        }
        Ok(())
    }
}

pub async fn run(ctx: &Context, args: &AuditArgs) -> Result<Exit> {
    let filter = filter(ctx, args)?;
    let json = ctx.out.json_mode();

    let url = ctx.url()?;
    let mut conn = db::connect(&url, &ctx.settings).await?;
    let mut tx = db::begin_read_only(&mut conn, &ctx.settings).await?;
    let cols = audit::columns(&mut tx).await?;

    let stream_text = !json && filter.limit.map_or(true, |l| l as u64 > MAX_TABLE_ROWS);
    let mut out = Listing {
        sink: Sink::new(),
        json,
        table: (!json && !stream_text).then(|| ctx.out.new_table(LIST_HEADER)),
        limit: filter.limit,
        shown: 0,
        more: false,
    };
    if json {
        out.sink.write("[")?;
    }
    if cols.log {
        audit::list(&mut tx, &cols, &filter, |rows| out.batch(rows)).await?;
    }
    tx.rollback().await?;
    let Listing {
        mut sink,
        table,
        shown,
        more,
        ..
    } = out;
    if json {
        sink.write(if shown > 0 { "\n]\n" } else { "]\n" })?;
    } else if let Some(t) = table {
        if shown > 0 {
            sink.write(&format!("{}\n", ctx.out.render_table(&t)))?;
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
