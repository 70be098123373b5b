//! The org tree (SPEC §1): roots, parent chains and their 32-step bound. Commands (install,
//! status, backfill) ask it; it renders nothing.

use sqlx::postgres::PgConnection;
use sqlx::Row;
use uuid::Uuid;

use crate::error::Result;

/// A chain longer than this (or a cycle) is corrupt data (SPEC §1).
pub const MAX_DEPTH: i32 = 32;
/// How far up the named broken rows are walked to tell a cycle from a long chain.
const CLASSIFY_STEPS: i32 = 64;

/// A workspace that reaches no root within [`MAX_DEPTH`] steps, and why (unsanitised name).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BrokenChain {
    pub id: Uuid,
    pub name: String,
    pub why: String,
}

/// Workspaces that reach no root within [`MAX_DEPTH`] steps, in ONE statement: walk down from
/// the roots at most 32 levels (each workspace has one parent, so every row is visited at most
/// once, and rows in a cycle are never reached); whatever was not reached is broken. The named
/// rows (at most `limit`) are then walked up at most [`CLASSIFY_STEPS`] steps to say why: back
/// at the start means a cycle; a root reached means a chain too deep; neither means the row
/// hangs below a cycle (or off a missing parent).
pub async fn broken_chains(conn: &mut PgConnection, limit: i64) -> Result<(i64, Vec<BrokenChain>)> {
    // Fast path: every workspace has one parent, so the walk down from the roots reaches each
    // at most once and the broken ones number total - reached. No anti-join (5x the cost on
    // 100k workspaces) unless something is actually broken.
    let broken: i64 = crate::db::query_scalar(
        "WITH RECURSIVE down(id, depth) AS (
              SELECT id, 0 FROM workspaces WHERE parent_id IS NULL
            UNION ALL
              SELECT w.id, d.depth + 1
                FROM workspaces w JOIN down d ON w.parent_id = d.id
               WHERE d.depth < $1
         )
         SELECT (SELECT count(*) FROM workspaces) - (SELECT count(*) FROM down)",
    )
    .bind(MAX_DEPTH)
    .fetch_one(&mut *conn)
    .await?;
    if broken == 0 {
        return Ok((0, Vec::new()));
    }
    let rows = crate::db::query(
        "WITH RECURSIVE down(id, depth) AS (
              SELECT id, 0 FROM workspaces WHERE parent_id IS NULL
            UNION ALL
              SELECT w.id, d.depth + 1
                FROM workspaces w JOIN down d ON w.parent_id = d.id
               WHERE d.depth < $2
         ),
         broken AS (
              SELECT w.id, w.name FROM workspaces w
               WHERE NOT EXISTS (SELECT 1 FROM down d WHERE d.id = w.id)
         ),
         named AS (SELECT id, name FROM broken ORDER BY id LIMIT $1),
         up(start, id, steps) AS (
              SELECT id, id, 0 FROM named
            UNION ALL
              SELECT u.start, w.parent_id, u.steps + 1
                FROM up u JOIN workspaces w ON w.id = u.id
               WHERE w.parent_id IS NOT NULL AND u.steps < $3
                 AND (u.steps = 0 OR u.id <> u.start)
         ),
         why AS (
              SELECT u.start,
                     bool_or(u.id = u.start AND u.steps > 0) AS cycle,
                     min(u.steps) FILTER (WHERE w.id IS NOT NULL AND w.parent_id IS NULL) AS to_root
                FROM up u LEFT JOIN workspaces w ON w.id = u.id
               GROUP BY u.start
         )
         SELECT c.total, n.id, n.name, y.cycle, y.to_root
           FROM (SELECT count(*) AS total FROM broken) c
           LEFT JOIN named n ON true
           LEFT JOIN why y ON y.start = n.id
          ORDER BY n.id",
    )
    .bind(limit)
    .bind(MAX_DEPTH)
    .bind(CLASSIFY_STEPS)
    .fetch_all(&mut *conn)
    .await?;
    let mut total = 0;
    let mut findings = Vec::new();
    for r in rows {
        total = r.try_get(0)?;
        let Some(id) = r.try_get::<Option<Uuid>, _>(1)? else {
            continue;
        };
        let name: Option<String> = r.try_get(2)?;
        let cycle: Option<bool> = r.try_get(3)?;
        let to_root: Option<i32> = r.try_get(4)?;
        let why = if cycle == Some(true) {
            "in a parent cycle".to_string()
        } else if let Some(n) = to_root {
            format!("{n} steps from its root (more than {MAX_DEPTH})")
        } else {
            format!(
                "no root within {CLASSIFY_STEPS} steps (below a cycle, a missing parent, or a very deep chain)"
            )
        };
        findings.push(BrokenChain {
            id,
            name: name.unwrap_or_default(),
            why,
        });
    }
    Ok((total, findings))
}
