//! `orgctl token list`: read-only. JSON is a bare array streamed as it is read; a terminal
//! gets the compact table (the newest [`crate::ops::token::DEFAULT_TABLE_LIMIT`] by default),
//! `--wide` the full one; past [`MAX_TABLE_ROWS`] (or unlimited) text is streamed as
//! tab-separated lines.

use std::io::IsTerminal as _;

use chrono::{DateTime, Utc};
use comfy_table::Table;
use serde::Serialize;
use uuid::Uuid;

use super::{compact_cells, compact_list, fmt_opt_text, fmt_opt_time, fmt_opt_uuid, fmt_time};
use crate::cli::TokenListArgs;
use crate::error::{sanitize, Error, Exit, Result};
use crate::ops::token::{self as ops, ListFilter, TokenRow};
use crate::output::Sink;
use crate::Context;

/// Limits above this (and 0) stream tab-separated lines instead of collecting a table.
const MAX_TABLE_ROWS: u64 = 10_000;

#[derive(Serialize)]
struct ListedJson<'a> {
    id: Uuid,
    prefix: &'a str,
    name: Option<&'a str>,
    org_id: Option<Uuid>,
    created_by: Option<&'a str>,
    created_at: DateTime<Utc>,
    last_used_at: Option<DateTime<Utc>>,
    expires_at: Option<DateTime<Utc>>,
    /// Present (possibly null) only with --all.
    #[serde(skip_serializing_if = "Option::is_none")]
    revoked_at: Option<Option<DateTime<Utc>>>,
    /// `live`, `expired` or `revoked`; only with --all.
    #[serde(skip_serializing_if = "Option::is_none")]
    state: Option<&'static str>,
}

const LIST_HEADER: [&str; 8] = [
    "id",
    "prefix",
    "name",
    "org_id",
    "created_by",
    "created_at",
    "last_used_at",
    "expires_at",
];

fn list_cells(t: &TokenRow, all: bool) -> Vec<String> {
    let mut v = vec![
        t.id.to_string(),
        sanitize(&t.prefix),
        fmt_opt_text(&t.name),
        fmt_opt_uuid(&t.org_id),
        fmt_opt_text(&t.created_by),
        fmt_time(&t.created_at),
        fmt_opt_time(&t.last_used_at),
        fmt_opt_time(&t.expires_at),
    ];
    if all {
        v.push(fmt_opt_time(&t.revoked_at));
        v.push(t.state().to_string());
    }
    v
}

/// Where the rows go: streamed JSON, the compact table, the wide table, or streamed lines.
enum View {
    Json,
    Compact(Vec<Vec<String>>),
    Wide(Table),
    Lines,
}

/// The rendering of one listing as its rows arrive.
struct Listing<'a> {
    ctx: &'a Context,
    all: bool,
    limit: Option<i64>,
    view: View,
    /// Created, and the document opened, once the cursor is open: an error before it leaves
    /// stdout empty.
    sink: Option<Sink>,
    shown: i64,
    more: bool,
}

impl<'a> Listing<'a> {
    fn new(ctx: &'a Context, args: &TokenListArgs, limit: Option<i64>) -> Self {
        let json = ctx.out.json_mode();
        let stream_text = !json && limit.map_or(true, |l| l as u64 > MAX_TABLE_ROWS);
        let view = if json {
            View::Json
        } else if stream_text {
            View::Lines
        } else if args.wide {
            let mut h: Vec<&str> = LIST_HEADER.to_vec();
            if args.all {
                h.extend(["revoked_at", "state"]);
            }
            View::Wide(ctx.out.new_table(h))
        } else {
            View::Compact(Vec::new())
        };
        Listing {
            ctx,
            all: args.all,
            limit,
            view,
            sink: None,
            shown: 0,
            more: false,
        }
    }

    /// The sink, opened with the document's start (`[`, or the header line) on first use.
    fn sink(&mut self) -> Result<&mut Sink> {
        if self.sink.is_none() {
            let mut sink = Sink::new();
            match self.view {
                View::Json => sink.write("[")?,
                View::Lines => {
                    let mut h = LIST_HEADER.join("\t");
                    if self.all {
                        h.push_str("\trevoked_at\tstate");
                    }
                    h.push('\n');
                    sink.write(&h)?;
                }
                _ => {}
            }
            self.sink = Some(sink);
        }
        match self.sink.as_mut() {
            Some(sink) => Ok(sink),
            None => Err(Error::failed("stdout is not open")),
        }
    }

    /// One batch; whether to read on.
    fn batch(&mut self, rows: &[TokenRow]) -> Result<bool> {
        self.sink()?;
        for t in rows {
            if self.limit.is_some_and(|l| self.shown >= l) {
                self.more = true;
                return Ok(false);
            }
            self.row(t)?;
            self.shown += 1;
        }
        // `orgctl token list | head`: stop reading once nobody listens.
        Ok(!self.sink()?.closed)
    }

    /// One row, into the view; the sink is open ([`Self::batch`]).
    fn row(&mut self, t: &TokenRow) -> Result<()> {
        let (all, first) = (self.all, self.shown == 0);
        let sink = self
            .sink
            .as_mut()
            .ok_or_else(|| Error::failed("stdout is not open"));
        match &mut self.view {
            View::Json => {
                let item = ListedJson {
                    id: t.id,
                    prefix: &t.prefix,
                    name: t.name.as_deref(),
                    org_id: t.org_id,
                    created_by: t.created_by.as_deref(),
                    created_at: t.created_at,
                    last_used_at: t.last_used_at,
                    expires_at: t.expires_at,
                    revoked_at: all.then_some(t.revoked_at),
                    state: all.then(|| t.state()),
                };
                let text = serde_json::to_string(&item)
                    .map_err(|e| Error::failed(format!("could not render JSON: {e}")))?;
                let sink = sink?;
                sink.write(if first { "\n  " } else { ",\n  " })?;
                sink.write(&text)
            }
            View::Compact(rows) => {
                rows.push(compact_cells(t, all));
                Ok(())
            }
            View::Wide(table) => {
                table.add_row(list_cells(t, all));
                Ok(())
            }
            View::Lines => {
                let mut line = list_cells(t, all).join("\t");
                line.push('\n');
                sink?.write(&line)
            }
        }
    }

    /// The end of the document, then on stderr whether more rows match.
    fn finish(mut self) -> Result<()> {
        let shown = self.shown;
        let end = match &self.view {
            // A bare array of tokens; whether more rows match is said on stderr.
            View::Json => Some(if shown > 0 { "\n]\n" } else { "]\n" }.to_string()),
            View::Compact(rows) => Some(compact_list(self.ctx, rows, self.all)),
            View::Wide(table) => Some(format!("{table}\n")),
            View::Lines => None,
        };
        let sink = self.sink()?;
        if let Some(end) = end {
            sink.write(&end)?;
        }
        sink.flush()?;
        let what = if self.all { "tokens" } else { "live tokens" };
        if self.more {
            self.ctx.out.info(&format!(
                "Showing the newest {shown} {what}; more match: pass --limit N (0 for all) or narrow with --org, --unanchored or --created-by."
            ));
        } else if shown == 0 {
            self.ctx.out.info(&format!("No {what} match."));
        } else {
            self.ctx.out.detail(&format!("{shown} {what}."));
        }
        Ok(())
    }
}

pub(super) async fn run(ctx: &Context, args: &TokenListArgs) -> Result<Exit> {
    let filter = ListFilter {
        all: args.all,
        org: args.org,
        unanchored: args.unanchored,
        created_by: match &args.created_by {
            Some(l) => Some(ops::check_match_label(l)?.to_string()),
            None => None,
        },
    };
    // Read one row more than shown to learn whether more exist, without counting them all.
    let limit: Option<i64> = crate::output::listing_limit(
        args.limit,
        ctx.out.json_mode(),
        std::io::stdout().is_terminal(),
        ops::DEFAULT_TABLE_LIMIT,
    )
    .map(|n| i64::try_from(n).unwrap_or(i64::MAX - 1).min(i64::MAX - 1));

    let (_url, mut conn) = super::connect(ctx).await?;
    let mut listing = Listing::new(ctx, args, limit);
    ops::stream_listing(&mut conn, &ctx.settings, &filter, limit, |rows| {
        listing.batch(rows)
    })
    .await?;
    listing.finish()?;
    Ok(Exit::Ok)
}
