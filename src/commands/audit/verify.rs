//! `orgctl audit verify`: check the audit log's hash chain (and the backfill snapshots still
//! held for a rollback); exit 0 when intact, 1 naming the first break.

use std::fmt::Write as _;

use serde::Serialize;

use crate::audit::{self, hex, HeadJson, Problem, ProblemKind, Verifier};
use crate::cli::AuditVerifyArgs;
use crate::db;
use crate::error::{sanitize, Error, Exit, Result};
use crate::Context;

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

pub async fn run(ctx: &Context, args: &AuditVerifyArgs) -> Result<Exit> {
    let anchor = args.head.as_deref().map(parse_anchor).transpose()?;
    let url = ctx.url()?;
    let mut conn = db::connect(&url, &ctx.settings).await?;
    let mut tx = db::begin_read_only(&mut conn, &ctx.settings).await?;
    let cols = audit::columns(&mut tx).await?;
    let mut v = Verifier::default();
    v.anchor = anchor;
    let mut head = None;
    if cols.log {
        head = audit::read_chain(&mut tx, &cols, &mut v).await?;
        check_snapshots(&mut tx, &mut v).await?;
    } else if let Some((seq, _)) = anchor {
        return Err(Error::failed(format!(
            "--head names seq {seq}, but {} has no audit log at all: it was removed",
            url.target()
        )));
    }
    tx.rollback().await?;
    render(ctx, cols.log, &v, head.as_ref())?;
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

/// The backfill snapshots still held for a rollback must be the ones their runs took.
async fn check_snapshots(tx: &mut sqlx::PgConnection, v: &mut Verifier) -> Result<()> {
    for why in crate::ops::backfill::tampered_snapshots(&mut *tx).await? {
        v.problem(ProblemKind::Altered, None, None, why);
    }
    Ok(())
}

/// The verdict on stdout: a JSON document, or a few lines.
fn render(ctx: &Context, log: bool, v: &Verifier, head: Option<&(i64, Vec<u8>)>) -> Result<()> {
    let intact = v.first.is_none();
    let out = &ctx.out;
    if out.json_mode() {
        out.json(&VerifyJson {
            intact,
            rows: v.rows,
            chained: v.chained,
            unchained: v.unchained,
            head: head.map(|(s, h)| HeadJson {
                seq: *s,
                row_hash: hex(h),
            }),
            problems: v.problems,
            first_problem: v.first.clone(),
        })?;
    } else {
        let mut s = String::new();
        if !log {
            s.push_str("No audit log: orgctl has never changed this tenant. Nothing to verify.\n");
        } else {
            let _ = writeln!(
                s,
                "Audit log: {} row(s): {} chained, {} unchained (written before the chain existed).",
                v.rows, v.chained, v.unchained
            );
            if let Some((seq, hash)) = head {
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
    Ok(())
}
