//! Two safeguards around `backfill rollback`'s restore statements.
//!
//! - [`plan_proof`]: right after a run, planner statistics are stale (autovacuum has not
//!   analysed the run's changes yet): the planner believes that almost no token points at the
//!   new agent and that the run's snapshot is tiny, while both hold every moved row. With those
//!   estimates it may join the snapshot to a platform table with a nested loop that rescans one
//!   side once per row of the other — quadratic (10k tokens 5 s, 200k tokens over ten minutes)
//!   while the tenant lock and the restored rows' locks block the platform. Every join of the
//!   rollback is an equality on a primary key, so a hash (or merge) join is always available:
//!   turning nested loops off for the rest of the rollback's transaction makes each statement
//!   linear whatever the statistics say.
//! - [`restored`]: after the restore, inside the same transaction, every restored row is compared
//!   with its snapshot, per column, set-based (one query per kind of row). A column that does
//!   not hold its snapshot value is reported with the reason when orgctl can tell it (a platform
//!   trigger that rewrites it on every write), instead of the rollback claiming to be exact.

use serde::Serialize;
use sqlx::postgres::PgConnection;
use sqlx::Row;
use uuid::Uuid;

use crate::db;
use crate::error::Result;
use crate::ops::install::MODEL_KEY;

/// The static statements of the verification.
pub(crate) const STATEMENTS: &[(&str, &str)] = &[
    ("verify: MODEL left", MODEL_LEFT_SQL),
    ("verify: agent left", AGENT_LEFT_SQL),
    ("verify: before triggers", BEFORE_TRIGGERS_SQL),
];

/// Whether the agent ($1) still has a secret $2 (the MODEL the run seeded).
const MODEL_LEFT_SQL: &str =
    "SELECT EXISTS (SELECT 1 FROM workspace_secrets WHERE workspace_id = $1 AND key = $2)";

/// Whether the agent ($1) the run created is still a live platform agent (not status $2, the
/// tombstone).
const AGENT_LEFT_SQL: &str = "SELECT EXISTS (SELECT 1 FROM workspaces
                             WHERE id = $1 AND kind = 'platform' AND status::text IS DISTINCT FROM $2)";

/// The enabled, user-defined BEFORE row triggers of table $1 for the events of bits $2, by name.
/// pg_trigger.tgtype bits: 1 row, 2 before, 4 insert, 8 delete, 16 update.
const BEFORE_TRIGGERS_SQL: &str =
    "SELECT string_agg(t.tgname, ', ' ORDER BY t.tgname) FROM pg_trigger t
          WHERE t.tgrelid = to_regclass($1) AND NOT t.tgisinternal AND t.tgenabled IN ('O', 'A')
            AND t.tgtype & 3 = 3 AND t.tgtype & $2 <> 0";

/// Turn nested-loop joins off for the rest of the caller's transaction (`SET LOCAL`: it ends
/// with the transaction, so nothing leaks to a pooled connection's next client).
///
/// Measured on the large benchmark org (1,000 roots, 100k workspaces, 1M tokens) right after its run, autovacuum off: see the README (backfill,
/// "Rollback right after a run"). Analysing the snapshot table instead is not enough: the stale
/// estimate that hurts is the platform's (`org_id = <new agent>` estimated at a handful of rows),
/// and ANALYZE of a platform table needs its owner and holds a lock until commit.
///
/// The same message
/// - raises `work_mem` to 64 MiB for the transaction when it is lower (the server's default is
///   4 MiB): each join of the snapshot with a platform table hashes up to one row per moved
///   token (300k on that org), which at 4 MiB spills to disk in four batches; in memory the
///   tokens' verification took 1.3 s instead of 1.9 s. A DBA's higher setting stays;
/// - turns JIT compilation off: with nested loops off, any plan that still holds one (a
///   `LATERAL` function scan, an `OR` semi-join) is costed at 10^10, far above `jit_above_cost`,
///   so the server spent ~0.6 s compiling each such statement to run it in 0.06 s;
/// - with `analyse_snapshot` (a write: not in a read-only dry run), analyses orgctl's own
///   snapshot table, when this role owns it (else it is skipped: the estimates stay stale and
///   the joins stay linear). With true counts the planner reads the run's 300k snapshot rows
///   with a sequential scan instead of 300k index probes into a heap whose visibility map no
///   vacuum has set yet (0.25 s instead of 0.7 s for the tokens' drift check; ANALYZE 0.12 s).
pub async fn plan_proof(conn: &mut PgConnection, analyse_snapshot: bool) -> Result<()> {
    let mut sql = String::from(
        "SELECT set_config('enable_nestloop', 'off', true), set_config('jit', 'off', true),
                (SELECT set_config('work_mem', '65536', true) FROM pg_catalog.pg_settings
                  WHERE name = 'work_mem' AND setting::bigint < 65536)",
    );
    if analyse_snapshot {
        sql.push_str(
            ";
             DO $orgctl$ BEGIN
               IF EXISTS (SELECT 1 FROM pg_catalog.pg_class c
                           WHERE c.oid = to_regclass('orgctl.backfill_rows')
                             AND pg_catalog.pg_has_role(c.relowner, 'USAGE')) THEN
                 ANALYZE orgctl.backfill_rows;
               END IF;
             END $orgctl$",
        );
    }
    db::simple_batch(conn, &sql).await?;
    Ok(())
}

/// A column that does not hold its snapshot value after the restore.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct NotRestored {
    pub table: &'static str,
    /// A column name, or `(row)` for a row that is missing (or, for a row the rollback deletes,
    /// still there).
    pub column: String,
    pub rows: i64,
    /// One of those rows (its id), to look at.
    pub example: String,
    pub reason: String,
    /// False when orgctl accepts the difference and commits (a platform trigger rewrote a
    /// bookkeeping column; `--force` left a drifted row as it found it); true rolls the tenant
    /// back.
    #[serde(skip)]
    pub fatal: bool,
}

impl NotRestored {
    pub fn line(&self) -> String {
        format!(
            "{}.{} not restored on {} row(s) (e.g. {}): {}",
            self.table, self.column, self.rows, self.example, self.reason
        )
    }
}

/// The outcome of [`restored`].
#[derive(Clone, Debug, Default, Serialize)]
pub struct Verification {
    /// Snapshot rows (and the agent and its MODEL secret) compared after the restore.
    pub rows_checked: i64,
    /// Every compared column of every restored row equals its snapshot: the rollback is
    /// byte-exact for what the run changed.
    pub exact: bool,
    pub not_restored: Vec<NotRestored>,
}

impl Verification {
    /// Differences that must roll the tenant back.
    pub fn fatal(&self) -> Vec<&NotRestored> {
        self.not_restored.iter().filter(|n| n.fatal).collect()
    }

    /// One line for the summary table: `exact`, or what was not restored.
    pub fn summary(&self) -> String {
        if self.exact {
            "exact".to_string()
        } else {
            self.not_restored
                .iter()
                .map(NotRestored::line)
                .collect::<Vec<_>>()
                .join("; ")
        }
    }
}

/// What the run did, as far as verification needs it.
pub struct RunActions<'a> {
    pub run_id: &'a str,
    pub agent: Uuid,
    /// create, update or unchanged.
    pub agent_action: &'a str,
    /// seeded, replaced, present or missing.
    pub model_action: &'a str,
    pub force: bool,
}

/// Columns whose value orgctl must restore exactly or not commit: the hierarchy and the anchors
/// (what the rollback is for), and the agent's identity. A difference anywhere else is reported;
/// it rolls the tenant back only when orgctl cannot name a platform trigger as its cause.
const STRUCTURAL: &[&str] = &["(row)", "parent_id", "org_id", "kind", "id"];

/// One comparison: `sql` returns one row of `count(*)` then, per column of `cols`, the number
/// of rows that differ and one of their ids; or, with `per_key`, one row per differing column
/// (column, rows, example) plus the total in every row.
struct Check {
    table: &'static str,
    /// The statement that rewrote the rows: `UPDATE`, `INSERT` or `DELETE`, for the trigger
    /// lookup.
    event: &'static str,
    sql: String,
    cols: Vec<&'static str>,
}

/// Typed comparison of snapshot rows of `kind`/`tbl` with the table's rows, column by column.
fn typed(
    table: &'static str,
    kind: &str,
    cols: &[(&'static str, &'static str)],
) -> (String, Vec<&'static str>) {
    let mut select = vec!["count(*)".to_string()];
    let mut names = vec!["(row)"];
    select.push("count(*) FILTER (WHERE x.id IS NULL)".into());
    select.push("min(s.row_id::text) FILTER (WHERE x.id IS NULL)".into());
    for (col, snap) in cols {
        let bad = format!("x.id IS NOT NULL AND x.{col} IS DISTINCT FROM s.{snap}");
        select.push(format!("count(*) FILTER (WHERE {bad})"));
        select.push(format!("min(s.row_id::text) FILTER (WHERE {bad})"));
        names.push(col);
    }
    (
        format!(
            "SELECT {} FROM orgctl.backfill_rows s LEFT JOIN {table} x ON x.id = s.row_id
              WHERE s.run_id = $1 AND s.kind = '{kind}' AND s.tbl = '{table}' AND $2::uuid IS NOT NULL",
            select.join(", ")
        ),
        names,
    )
}

/// Whole-row comparison of `actual` (a row of `table`, alias x, or no row) with `expected` (a
/// jsonb of the snapshot, re-typed through the table's row type so both sides render alike),
/// restricted to `keys` when given. Returns (column, rows, example, total) per differing column.
fn per_key(from: &str, table: &str, expected: &str, keys: Option<&[&str]>) -> String {
    let only = match keys {
        Some(k) => format!(
            " AND e.key IN ({})",
            k.iter()
                .map(|c| format!("'{c}'"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        None => String::new(),
    };
    // Whole rows are compared first, so only a row that differs is taken apart by column.
    let whole = if keys.is_none() {
        " WHERE p.x IS DISTINCT FROM p.want"
    } else {
        ""
    };
    format!(
        "WITH pairs AS (SELECT p.id, p.x, to_jsonb(jsonb_populate_record(NULL::{table}, {expected})) AS want
                          FROM ({from}) p),
              diff AS (
                SELECT CASE WHEN p.x IS NULL THEN '(row)' ELSE e.key END AS col, p.id
                  FROM (SELECT * FROM pairs p{whole}) p
                 CROSS JOIN LATERAL jsonb_each(p.want) e
                 WHERE (p.x IS NULL OR p.x -> e.key IS DISTINCT FROM e.value){only})
         SELECT d.col, count(DISTINCT d.id), min(d.id), (SELECT count(*) FROM pairs)
           FROM diff d GROUP BY d.col
         UNION ALL
         SELECT NULL, 0, NULL, (SELECT count(*) FROM pairs)"
    )
}

/// Compare every restored row with its snapshot, in the caller's transaction, after the restore.
pub async fn restored(conn: &mut PgConnection, run: &RunActions<'_>) -> Result<Verification> {
    let mut v = Verification::default();
    typed_rows(conn, run, &mut v).await?;
    whole_rows(conn, run, &mut v).await?;
    deleted_rows(conn, run, &mut v).await?;
    v.not_restored = merged(v.not_restored);
    v.exact = v.not_restored.is_empty();
    Ok(v)
}

/// The re-parented roots and the moved anchors, column by column.
async fn typed_rows(
    conn: &mut PgConnection,
    run: &RunActions<'_>,
    v: &mut Verification,
) -> Result<()> {
    let mut checks = Vec::new();
    let (sql, cols) = typed(
        "workspaces",
        "root",
        &[
            ("parent_id", "old_parent_id"),
            ("updated_at", "old_updated_at"),
        ],
    );
    checks.push(Check {
        table: "workspaces",
        event: "UPDATE",
        sql,
        cols,
    });
    for table in ["org_api_tokens", "org_plugin_allowlist"] {
        let (sql, cols) = typed(table, "anchor", &[("org_id", "old_org_id")]);
        checks.push(Check {
            table,
            event: "UPDATE",
            sql,
            cols,
        });
    }

    for c in &checks {
        let row = db::query(&c.sql)
            .bind(run.run_id)
            .bind(run.agent)
            .fetch_one(&mut *conn)
            .await?;
        v.rows_checked += row.try_get::<i64, _>(0)?;
        for (i, col) in c.cols.iter().enumerate() {
            let bad: i64 = row.try_get(1 + 2 * i)?;
            if bad > 0 {
                let example: Option<String> = row.try_get(2 + 2 * i)?;
                v.not_restored.push(
                    explain(
                        conn,
                        run,
                        c.table,
                        c.event,
                        col,
                        bad,
                        example.unwrap_or_default(),
                    )
                    .await?,
                );
            }
        }
    }

    Ok(())
}

/// Whole rows: the merged allowlist rows (re-inserted), the prior MODEL secret (re-inserted),
/// the agent's restored fields.
async fn whole_rows(
    conn: &mut PgConnection,
    run: &RunActions<'_>,
    v: &mut Verification,
) -> Result<()> {
    let mut whole: Vec<(&'static str, &'static str, String)> = vec![(
        "org_plugin_allowlist",
        "INSERT",
        per_key(
            "SELECT s.row_id::text AS id, s.row AS snap, to_jsonb(x) AS x
               FROM orgctl.backfill_rows s LEFT JOIN org_plugin_allowlist x ON x.id = s.row_id
              WHERE s.run_id = $1 AND s.kind = 'merged' AND $2::uuid IS NOT NULL",
            "org_plugin_allowlist",
            "p.snap",
            None,
        ),
    )];
    if run.model_action == "replaced" {
        whole.push((
            "workspace_secrets",
            "INSERT",
            per_key(
                &format!(
                    "SELECT b.agent_id::text || '/{MODEL_KEY}' AS id, b.model_prior AS snap, to_jsonb(x) AS x
                       FROM orgctl.backfill_runs b
                       LEFT JOIN workspace_secrets x ON x.workspace_id = $2 AND x.key = '{MODEL_KEY}'
                      WHERE b.run_id = $1 AND b.model_prior IS NOT NULL"
                ),
                "workspace_secrets",
                "p.snap",
                None,
            ),
        ));
    }
    if run.agent_action == "update" {
        whole.push((
            "workspaces",
            "UPDATE",
            per_key(
                "SELECT $2::uuid::text AS id, b.agent_prior AS snap, to_jsonb(x) AS x
                   FROM orgctl.backfill_runs b LEFT JOIN workspaces x ON x.id = $2
                  WHERE b.run_id = $1 AND b.agent_prior IS NOT NULL",
                "workspaces",
                "p.snap",
                // The fields the rollback restores; the rest of the agent is the platform's.
                Some(&[
                    "name",
                    "kind",
                    "parent_id",
                    "tier",
                    "template",
                    "updated_at",
                ]),
            ),
        ));
    }
    for (table, event, sql) in whole {
        let rows = db::query(&sql)
            .bind(run.run_id)
            .bind(run.agent)
            .fetch_all(&mut *conn)
            .await?;
        if let Some(r) = rows.first() {
            v.rows_checked += r.try_get::<i64, _>(3)?;
        }
        for r in &rows {
            let col: Option<String> = r.try_get(0)?;
            let Some(col) = col else { continue };
            let bad: i64 = r.try_get(1)?;
            let example: Option<String> = r.try_get(2)?;
            v.not_restored.push(
                explain(
                    conn,
                    run,
                    table,
                    event,
                    &col,
                    bad,
                    example.unwrap_or_default(),
                )
                .await?,
            );
        }
    }

    Ok(())
}

/// Rows the rollback deletes: the MODEL secret the run seeded, the agent the run created
/// (deleted, or no longer a platform agent).
async fn deleted_rows(
    conn: &mut PgConnection,
    run: &RunActions<'_>,
    v: &mut Verification,
) -> Result<()> {
    if run.model_action == "seeded" {
        v.rows_checked += 1;
        let left: bool = db::query_scalar(MODEL_LEFT_SQL)
            .bind(run.agent)
            .bind(MODEL_KEY)
            .fetch_one(&mut *conn)
            .await?;
        if left {
            v.not_restored.push(NotRestored {
                table: "workspace_secrets",
                column: "(row)".into(),
                rows: 1,
                example: format!("{}/{MODEL_KEY}", run.agent),
                reason: "the MODEL secret the run seeded is still there".into(),
                fatal: true,
            });
        }
    }
    if run.agent_action == "create" {
        v.rows_checked += 1;
        let left: bool = db::query_scalar(AGENT_LEFT_SQL)
            .bind(run.agent)
            .bind(crate::platform::tree::TOMBSTONE_STATUS)
            .fetch_one(&mut *conn)
            .await?;
        if left {
            v.not_restored.push(NotRestored {
                table: "workspaces",
                column: "(row)".into(),
                rows: 1,
                example: run.agent.to_string(),
                reason: "the platform agent the run created is still a live platform agent".into(),
                fatal: true,
            });
        }
    }
    Ok(())
}

/// One entry per table, column and reason (the roots and the agent are both `workspaces`
/// rows), in a stable order.
fn merged(mut list: Vec<NotRestored>) -> Vec<NotRestored> {
    list.sort_by(|a, b| (a.table, &a.column, &a.reason).cmp(&(b.table, &b.column, &b.reason)));
    let mut out: Vec<NotRestored> = Vec::new();
    for n in list {
        match out.last_mut() {
            Some(last)
                if last.table == n.table && last.column == n.column && last.reason == n.reason =>
            {
                last.rows += n.rows;
                last.fatal |= n.fatal;
            }
            _ => out.push(n),
        }
    }
    out
}

/// Why a column of `table` differs from the snapshot after the restore, and whether that is
/// fatal.
async fn explain(
    conn: &mut PgConnection,
    run: &RunActions<'_>,
    table: &'static str,
    event: &str,
    column: &str,
    rows: i64,
    example: String,
) -> Result<NotRestored> {
    let structural = STRUCTURAL.contains(&column);
    let triggers = if column == "(row)" {
        None
    } else {
        before_triggers(conn, table, event).await?
    };
    let (reason, fatal) = match (triggers, run.force) {
        (Some(names), _) if !structural => (
            format!("{column} rewritten by a trigger on {table} ({names}); orgctl does not disable platform triggers"),
            false,
        ),
        (Some(names), false) => (
            format!("{column} differs after the restore; a trigger on {table} ({names}) may have rewritten it"),
            true,
        ),
        (_, true) => (
            if column == "(row)" {
                "the row is gone (drift, left as it is by --force)".to_string()
            } else {
                format!("{column} left as it was (drift, --force)")
            },
            false,
        ),
        (None, false) => (
            if column == "(row)" {
                format!("the row is missing from {table} after the restore")
            } else {
                format!("{column} differs from the snapshot after the restore")
            },
            true,
        ),
    };
    Ok(NotRestored {
        table,
        column: column.to_string(),
        rows,
        example,
        reason,
        fatal,
    })
}

/// The enabled, user-defined row triggers of `table` that fire BEFORE `event` (and may so
/// rewrite the row orgctl writes), by name; None when there are none.
async fn before_triggers(
    conn: &mut PgConnection,
    table: &str,
    event: &str,
) -> Result<Option<String>> {
    // pg_trigger.tgtype bits: 1 row, 2 before, 4 insert, 8 delete, 16 update.
    let bit: i16 = match event {
        "INSERT" => 4,
        "DELETE" => 8,
        _ => 16,
    };
    let names: Option<String> = db::query_scalar(BEFORE_TRIGGERS_SQL)
        .bind(table)
        .bind(bit)
        .fetch_one(&mut *conn)
        .await?;
    Ok(names)
}
