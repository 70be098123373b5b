//! Appending to the audit chain: rows written in the caller's transaction as links after the
//! chain's head (locked `FOR UPDATE`), the head moved in the same statement, and the record
//! of what happened after a commit in a transaction of its own.

use sqlx::postgres::{PgConnection, PgRow};
use sqlx::Row;

use super::canonical::Link;
use super::Who;
use crate::db::{self, query, query_as, Arg, Binds, Check, Committed, DbUrl, Settings};
use crate::error::{Error, Result};
use crate::output::head::note_appended;

/// Append an audit row in the caller's transaction. `args` must already be free of secret
/// values. The row carries `who`'s `--reason` and is a link of the audit hash chain (see
/// [`append_audit`]). Returns the row's `txid`, a fresh id that names this write transaction:
/// pass it to [`db::commit_or_resolve`] as [`AuditRow`], so a COMMIT whose answer is lost can
/// be checked afterwards.
pub async fn record(
    conn: &mut PgConnection,
    who: &Who,
    command: &str,
    args: &serde_json::Value,
    outcome: &str,
) -> Result<uuid::Uuid> {
    record_checked(conn, who, command, args, outcome, None).await
}

/// [`record`], with `check` read and judged before the row is written ([`Check`]).
pub async fn record_checked(
    conn: &mut PgConnection,
    who: &Who,
    command: &str,
    args: &serde_json::Value,
    outcome: &str,
    check: Option<Check<'_>>,
) -> Result<uuid::Uuid> {
    let txid = uuid::Uuid::new_v4();
    append_audit_checked(
        conn,
        who,
        &[AuditEntry {
            command: command.to_string(),
            args: args.clone(),
            outcome: outcome.to_string(),
            txid: Some(txid),
        }],
        check,
    )
    .await?;
    Ok(txid)
}

/// One audit row to append: what was done (`command`), with which arguments (never a secret
/// value), and how it ended.
#[derive(Clone, Debug)]
pub struct AuditEntry {
    pub command: String,
    pub args: serde_json::Value,
    pub outcome: String,
    /// The write transaction's id, looked for when its COMMIT's answer is lost, on the
    /// change's own row; None on after-commit rows. Not part of the hashed content.
    pub txid: Option<uuid::Uuid>,
}

/// Rows appended per INSERT statement.
const AUDIT_BATCH: usize = 1000;

/// Append audit rows, in order, in the caller's transaction, as links of the hash chain
/// (`seq`, `prev_hash`, `row_hash`, see [`Link`]). The chain's head row is locked
/// `FOR UPDATE` first, which serialises every append of the tenant whatever other lock the
/// caller holds (the tenant lock for a change; nothing for the after-commit outcome rows of
/// [`record_after_commit`]); row locks wait at most `--lock-timeout`. Each row records
/// `who`'s `--reason` ([`Who`]).
pub async fn append_audit(
    conn: &mut PgConnection,
    who: &Who,
    entries: &[AuditEntry],
) -> Result<()> {
    append_audit_checked(conn, who, entries, None).await
}

/// [`append_audit`], with `check` read and judged in the statement that writes the rows.
async fn append_audit_checked(
    conn: &mut PgConnection,
    who: &Who,
    entries: &[AuditEntry],
    check: Option<Check<'_>>,
) -> Result<()> {
    if entries.is_empty() {
        return Ok(());
    }
    let mut b = Binds::default();
    let raw = b.arg(Arg::TextList(audit_head_args(entries)));
    let sql = format!(
        "WITH {AUDIT_HEAD_CTE} SELECT {}",
        audit_head_columns(&raw).join(", ")
    );
    let row = b.bind_to(query(&sql)).fetch_one(&mut *conn).await?;
    let head = AuditHead::decode(&row, 0)?;
    append_after_head(conn, who, head, entries, check).await?;
    Ok(())
}

/// The audit chain's head locked `FOR UPDATE`, as a CTE (`h`) of a statement that reads
/// [`audit_head_columns`]: alone before the rows are written, or in a change's first statement
/// (one round trip less per change).
pub const AUDIT_HEAD_CTE: &str =
    "h AS (SELECT seq, row_hash FROM orgctl.audit_head WHERE one FOR UPDATE)";

/// The first chunk's arguments as sent, to bind for [`audit_head_columns`].
pub fn audit_head_args(entries: &[AuditEntry]) -> Vec<String> {
    entries
        .iter()
        .take(AUDIT_BATCH)
        .map(|e| e.args.to_string())
        .collect()
}

/// What the first rows of an append need, read with the head locked ([`AUDIT_HEAD_CTE`]):
/// the head (NULL when its row is gone), the transaction's time and role, and — only once the
/// head is locked (the arrays are correlated with the locked row, so they are computed after the
/// row lock is had) — the first chunk's ids and normalised arguments (`raw`: the placeholder of
/// [`audit_head_args`]), so ids still grow in chain order.
pub fn audit_head_columns(raw: &str) -> Vec<String> {
    audit_head_columns_merging(raw, None)
}

/// [`audit_head_columns`], with `first_extra` (an SQL expression of a jsonb object, read in the
/// same statement) merged into the first row's arguments: what the statement itself wrote (a
/// backfill snapshot's digest) becomes part of the chained row.
pub fn audit_head_columns_merging(raw: &str, first_extra: Option<&str>) -> Vec<String> {
    let normalised = match first_extra {
        Some(extra) => {
            format!("CASE WHEN n = 1 THEN (a::jsonb || ({extra}))::text ELSE a::jsonb::text END")
        }
        None => "a::jsonb::text".to_string(),
    };
    vec![
        "(SELECT seq FROM h)".to_string(),
        "(SELECT row_hash FROM h)".to_string(),
        "now()".to_string(),
        "current_user::text".to_string(),
        format!(
            "ARRAY(SELECT nextval(pg_get_serial_sequence('orgctl.audit_log', 'id'))
                     FROM h, unnest({raw}::text[]) WITH ORDINALITY AS t(a, n)
                    WHERE h.seq IS NOT NULL ORDER BY n)"
        ),
        format!(
            "ARRAY(SELECT {normalised} FROM h, unnest({raw}::text[]) WITH ORDINALITY AS t(a, n)
                    WHERE h.seq IS NOT NULL ORDER BY n)"
        ),
    ]
}

/// The values of [`audit_head_columns`], read.
pub struct AuditHead {
    seq: i64,
    prev: [u8; 32],
    at: chrono::DateTime<chrono::Utc>,
    db_user: String,
    ids: Vec<i64>,
    args: Vec<String>,
}

impl AuditHead {
    /// From `row`, whose [`audit_head_columns`] start at column `at`.
    pub fn decode(row: &PgRow, at: usize) -> Result<Self> {
        let seq: Option<i64> = row.try_get(at)?;
        let prev: Option<Vec<u8>> = row.try_get(at + 1)?;
        let (Some(seq), Some(prev)) = (seq, prev) else {
            return Err(Error::failed(
                "orgctl.audit_head has no row: the audit chain's head was deleted by hand, so orgctl cannot append to the audit log; nothing was changed: run `orgctl audit verify` and restore the head from the last intact row",
            ));
        };
        let prev: [u8; 32] = prev.as_slice().try_into().map_err(|_| {
            Error::failed(
                "orgctl.audit_head holds a malformed hash: the audit chain's head was altered by hand; nothing was changed: run `orgctl audit verify`",
            )
        })?;
        Ok(AuditHead {
            seq,
            prev,
            at: row.try_get(at + 2)?,
            db_user: row.try_get(at + 3)?,
            ids: row.try_get(at + 4)?,
            args: row.try_get(at + 5)?,
        })
    }
}

/// The values every row of one append shares.
struct Shared {
    at: chrono::DateTime<chrono::Utc>,
    os_user: String,
    db_user: String,
    reason: Option<String>,
    version: &'static str,
}

/// One chunk's rows as they are inserted: column arrays, in chain order.
#[derive(Default)]
struct Chunk {
    ids: Vec<i64>,
    seqs: Vec<i64>,
    prevs: Vec<Vec<u8>>,
    hashes: Vec<Vec<u8>>,
    args: Vec<String>,
    commands: Vec<String>,
    outcomes: Vec<String>,
    txids: Vec<Option<uuid::Uuid>>,
}

/// Append `entries` after `head` (read, locked, in this transaction with
/// [`audit_head_args`] of these same entries), with `check` read and judged in the statement
/// that writes the last rows and moves the head. Every row records `who`'s `--reason`.
pub async fn append_after_head(
    conn: &mut PgConnection,
    who: &Who,
    head: AuditHead,
    entries: &[AuditEntry],
    mut check: Option<Check<'_>>,
) -> Result<(i64, [u8; 32])> {
    let AuditHead {
        seq,
        prev,
        at,
        db_user,
        ids: first_ids,
        args: first_args,
    } = head;
    if first_ids.len() != entries.len().min(AUDIT_BATCH) || first_args.len() != first_ids.len() {
        return Err(Error::failed(
            "internal: the audit head was read for other rows than these",
        ));
    }
    let shared = Shared {
        at,
        os_user: crate::sys::os_user(),
        db_user,
        reason: who.reason.clone(),
        version: env!("CARGO_PKG_VERSION"),
    };
    let mut tip = (seq, prev);
    let chunks = entries.len().div_ceil(AUDIT_BATCH);
    for (i, entries) in entries.chunks(AUDIT_BATCH).enumerate() {
        // Ids from the table's own sequence, and the arguments as PostgreSQL will store and
        // return them (jsonb normalises), so the hash covers exactly what `audit verify` reads.
        let rows: Vec<(i64, String)> = if i == 0 {
            first_ids
                .iter()
                .copied()
                .zip(first_args.iter().cloned())
                .collect()
        } else {
            let raw: Vec<String> = entries.iter().map(|e| e.args.to_string()).collect();
            query_as(NEXT_IDS).bind(&raw).fetch_all(&mut *conn).await?
        };
        let chunk = link(&shared, &mut tip, entries, &rows)?;
        // The last chunk moves the chain's head in the same statement (one round trip less
        // per change: a fleet pays each one once per tenant).
        let last = i + 1 == chunks;
        let check = if last { check.take() } else { None };
        insert(conn, &shared, &chunk, last.then_some(tip), check).await?;
    }
    note_appended(tip.0, tip.1);
    Ok(tip)
}

/// Ids for the rows of a chunk after the first, and their arguments as jsonb normalises them.
const NEXT_IDS: &str =
    "SELECT nextval(pg_get_serial_sequence('orgctl.audit_log', 'id')), a::jsonb::text
                   FROM unnest($1::text[]) WITH ORDINALITY AS t(a, n) ORDER BY n";

/// Hash a chunk's entries into links after `tip`, which moves to the chunk's last link.
fn link(
    shared: &Shared,
    tip: &mut (i64, [u8; 32]),
    entries: &[AuditEntry],
    rows: &[(i64, String)],
) -> Result<Chunk> {
    let mut ids: Vec<i64> = rows.iter().map(|(id, _)| *id).collect();
    ids.sort_unstable();
    let mut c = Chunk::default();
    let (mut seq, mut prev) = *tip;
    for ((e, (_, stored_args)), id) in entries.iter().zip(rows).zip(&ids) {
        seq += 1;
        let link = Link {
            seq,
            id: *id,
            at: shared.at,
            os_user: &shared.os_user,
            db_user: &shared.db_user,
            command: &e.command,
            args: stored_args,
            reason: shared.reason.as_deref(),
            outcome: &e.outcome,
            orgctl_version: shared.version,
        };
        let hash = link.hash(&prev)?;
        c.seqs.push(seq);
        c.prevs.push(prev.to_vec());
        c.hashes.push(hash.to_vec());
        c.args.push(stored_args.clone());
        c.commands.push(e.command.clone());
        c.outcomes.push(e.outcome.clone());
        c.txids.push(e.txid);
        prev = hash;
    }
    c.ids = ids;
    *tip = (seq, prev);
    Ok(c)
}

/// The INSERT of a chunk; with `moves_head`, it also moves the chain's head ($14, $15).
fn insert_sql(moves_head: bool) -> String {
    format!(
        "WITH ins AS (
               INSERT INTO orgctl.audit_log
                      (id, at, os_user, db_user, command, args, reason, outcome, orgctl_version,
                       seq, prev_hash, row_hash, txid)
               SELECT id, $2, $3, $4, c, a::jsonb, $5, o, $6, s, p, h, x
                 FROM unnest($1::bigint[], $7::text[], $8::text[], $9::text[], $10::bigint[],
                             $11::bytea[], $12::bytea[], $13::uuid[]) AS t(id, c, a, o, s, p, h, x)
               RETURNING 1){}
             SELECT (SELECT count(*) FROM ins), {}",
        if moves_head {
            ", head AS (UPDATE orgctl.audit_head SET seq = $14, row_hash = $15 WHERE one RETURNING 1)"
        } else {
            ""
        },
        if moves_head {
            "(SELECT count(*) FROM head)"
        } else {
            "1::bigint"
        }
    )
}

/// Insert a chunk; the last one (`head`: where the chain ends after it) moves the head and
/// reads and judges `check` in the same statement.
async fn insert(
    conn: &mut PgConnection,
    shared: &Shared,
    c: &Chunk,
    head: Option<(i64, [u8; 32])>,
    check: Option<Check<'_>>,
) -> Result<()> {
    let mut sql = insert_sql(head.is_some());
    let mut extra = Binds::after(if head.is_some() { 15 } else { 13 });
    let mut judge = None;
    if let Some(c) = check {
        let ph: Vec<String> = c.args.into_iter().map(|a| extra.arg(a)).collect();
        for col in (c.columns)(&ph) {
            sql.push_str(", ");
            sql.push_str(&col);
        }
        judge = Some(c.judge);
    }
    let mut q = query(&sql)
        .bind(&c.ids)
        .bind(shared.at)
        .bind(&shared.os_user)
        .bind(&shared.db_user)
        .bind(shared.reason.as_deref())
        .bind(shared.version)
        .bind(&c.commands)
        .bind(&c.args)
        .bind(&c.outcomes)
        .bind(&c.seqs)
        .bind(&c.prevs)
        .bind(&c.hashes)
        .bind(&c.txids);
    if let Some((seq, prev)) = head {
        q = q.bind(seq).bind(prev.to_vec());
    }
    let row = extra.bind_to(q).fetch_one(&mut *conn).await?;
    let (inserted, moved): (i64, i64) = (row.try_get(0)?, row.try_get(1)?);
    if let Some(judge) = judge {
        let values = (2..row.len())
            .map(|i| row.try_get::<i64, _>(i))
            .collect::<std::result::Result<Vec<_>, sqlx::Error>>()?;
        judge(&values)?;
    }
    db::ensure_rows(
        "the audit append",
        u64::try_from(inserted).unwrap_or(0),
        c.ids.len() as i64,
    )?;
    db::ensure_rows(
        "the audit head update",
        u64::try_from(moved).unwrap_or(0),
        1,
    )?;
    Ok(())
}

/// Record what happened after a commit (a restart dispatch, a provision request: one row per
/// workspace with its HTTP outcome) in a transaction of its own, creating orgctl's schema when
/// needed. The change itself is committed already, so a failure here is reported by the caller
/// as a warning, never as "nothing changed". The rows record `who`'s `--reason`.
pub async fn record_after_commit(
    conn: &mut PgConnection,
    who: &Who,
    url: &DbUrl,
    settings: &Settings,
    entries: &[AuditEntry],
) -> Result<()> {
    if entries.is_empty() {
        return Ok(());
    }
    db::ensure_orgctl_schema(conn, url, settings).await?;
    // The first row carries a transaction id: a COMMIT whose answer is lost is resolved by
    // looking for it, as the change's own commit is (never said to be rolled back).
    let txid = uuid::Uuid::new_v4();
    let mut entries = entries.to_vec();
    entries[0].txid = Some(txid);
    let mut tx = db::begin_write(conn, settings).await?;
    append_audit(&mut tx, who, &entries).await?;
    match db::commit_or_resolve(tx, url, settings, &AuditRow(txid)).await? {
        Committed::Answered => {}
        Committed::Verified(fresh) => *conn = fresh,
    }
    Ok(())
}

/// The audit row a change wrote, by its `txid` ([`record`]): found after a lost COMMIT, the
/// change was committed.
#[derive(Clone, Debug)]
pub struct AuditRow(pub uuid::Uuid);

/// Whether the audit row with a txid is there.
const AUDIT_ROW_EXISTS: &str = "SELECT EXISTS (SELECT 1 FROM orgctl.audit_log WHERE txid = $1)";

impl db::Evidence for AuditRow {
    fn check(&self) -> String {
        let id = self.0;
        format!(
            "whether orgctl.audit_log has a row with txid {id} (SELECT * FROM orgctl.audit_log WHERE txid = '{id}'): if it has, the change was committed"
        )
    }

    fn probe(&self) -> db::Probe<'_> {
        db::Probe {
            own_table: Some("orgctl.audit_log"),
            sql: AUDIT_ROW_EXISTS,
            args: vec![Arg::Uuid(self.0)],
        }
    }

    fn committed(&self) {
        crate::output::head::note_committed();
    }
}

/// The static statements of this module, by name (the INSERT of a chunk and the head's read
/// are composed at run time).
pub(crate) const STATEMENTS: &[(&str, &str)] = &[
    ("next_ids", NEXT_IDS),
    ("audit_row_exists", AUDIT_ROW_EXISTS),
];
