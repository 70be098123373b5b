//! The org tree, the one place that says what its parts are:
//!
//! - a **root** is a workspace with no parent (`parent_id IS NULL`); the org's root is the
//!   platform agent when there is one ([`resolve_root`]);
//! - a **chain** is the walk from a workspace up its parents to a root, at most [`MAX_DEPTH`]
//!   steps ([`broken_chains`], [`chain_check`]);
//! - an **anchor** is a row's reference to the root of its org (a token's `org_id`);
//! - a **reference** is any column with a foreign key onto `workspaces(id)`, found in the
//!   catalog ([`references_to_workspaces`], [`rows_referencing`]).
//!
//! How deep the platform's lookups reach down a chain is [`crate::platform::tree`]. Commands
//! (install, status, backfill, token) ask this module; it renders nothing.

use sqlx::postgres::PgConnection;
use sqlx::Row;
use uuid::Uuid;

use crate::db;
use crate::error::{sanitize, Error, Result};
use crate::platform::tree::{self, DepthLimit, DEPTH_LIMITS};

/// A chain longer than this (or a cycle) is outside every org: the platform's org-root lookup
/// gives up on it, so orgctl reports it as broken and never walks further.
pub const MAX_DEPTH: i32 = tree::ORG_ROOT_LOOKUP.hops;
/// How far up the named broken rows are walked to tell a cycle from a long chain.
const CLASSIFY_STEPS: i32 = 2 * MAX_DEPTH;

/// How many workspaces reach no root within [`MAX_DEPTH`] steps ($1): all of them minus those
/// the walk down from the roots reaches.
const BROKEN_COUNT: &str = "WITH RECURSIVE down(id, depth) AS (
              SELECT id, 0 FROM workspaces WHERE parent_id IS NULL
            UNION ALL
              SELECT w.id, d.depth + 1
                FROM workspaces w JOIN down d ON w.parent_id = d.id
               WHERE d.depth < $1
         )
         SELECT (SELECT count(*) FROM workspaces) - (SELECT count(*) FROM down)";

/// The broken workspaces: their total, and up to $1 of them named with why ($2 is
/// [`MAX_DEPTH`], $3 [`CLASSIFY_STEPS`]); see [`broken_chains`].
const BROKEN_NAMED: &str = "WITH RECURSIVE down(id, depth) AS (
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
          ORDER BY n.id";

/// A workspace that reaches no root within [`MAX_DEPTH`] steps, and why (unsanitised name).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BrokenChain {
    pub id: Uuid,
    pub name: String,
    pub why: String,
}

/// Workspaces that reach no root within [`MAX_DEPTH`] steps, in ONE statement: walk down from
/// the roots at most [`MAX_DEPTH`] levels (each workspace has one parent, so every row is visited at most
/// once, and rows in a cycle are never reached); whatever was not reached is broken. The named
/// rows (at most `limit`) are then walked up at most [`CLASSIFY_STEPS`] steps to say why: back
/// at the start means a cycle; a root reached means a chain too deep; neither means the row
/// hangs below a cycle (or off a missing parent).
pub async fn broken_chains(conn: &mut PgConnection, limit: i64) -> Result<(i64, Vec<BrokenChain>)> {
    // Fast path: every workspace has one parent, so the walk down from the roots reaches each
    // at most once and the broken ones number total - reached. No anti-join (5x the cost on
    // 100k workspaces) unless something is actually broken.
    let broken: i64 = crate::db::query_scalar(BROKEN_COUNT)
        .bind(MAX_DEPTH)
        .fetch_one(&mut *conn)
        .await?;
    if broken == 0 {
        return Ok((0, Vec::new()));
    }
    let rows = crate::db::query(BROKEN_NAMED)
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
            format!(
                "{n} steps from its root (more than {MAX_DEPTH}: the platform's org-root lookup gives up)"
            )
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

/// One walk down the org for install: how many workspaces reach no root within [`MAX_DEPTH`]
/// steps now, and how many will sit deeper below the agent than each of the platform's depth
/// limits ([`DEPTH_LIMITS`], in that order) once the install is done: a workspace under a root
/// the install re-parents goes one level down; one already under the agent stays where it is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ChainCheck {
    pub broken: i64,
    pub beyond_after: [i64; DEPTH_LIMITS.len()],
}

/// The walk of [`chain_check`] and [`deeper_after`]: every workspace reached from a root within
/// [`MAX_DEPTH`] levels ($1), with its depth below the agent after the install (`after`: one
/// more under a root in $2, the roots the install re-parents).
const DOWN_AFTER: &str = "WITH RECURSIVE down(id, depth, after) AS (
      SELECT id, 0, CASE WHEN id = ANY($2) THEN 1 ELSE 0 END FROM workspaces WHERE parent_id IS NULL
    UNION ALL
      SELECT w.id, d.depth + 1, d.after + 1
        FROM workspaces w JOIN down d ON w.parent_id = d.id
       WHERE d.depth < $1
 )";

/// [`ChainCheck`] in ONE statement (the same walk as [`broken_chains`]' fast path, so a plan
/// pays for it once).
pub async fn chain_check(conn: &mut PgConnection, reparented: &[Uuid]) -> Result<ChainCheck> {
    let [reach, memory, lookup] = DEPTH_LIMITS.map(|l| l.hops);
    let r = crate::db::query(&format!(
        "{DOWN_AFTER}
         SELECT (SELECT count(*) FROM workspaces) - (SELECT count(*) FROM down),
                count(*) FILTER (WHERE after > $3),
                count(*) FILTER (WHERE after > $4),
                count(*) FILTER (WHERE after > $5)
           FROM down"
    ))
    .bind(MAX_DEPTH)
    .bind(reparented)
    .bind(reach)
    .bind(memory)
    .bind(lookup)
    .fetch_one(&mut *conn)
    .await?;
    Ok(ChainCheck {
        broken: r.try_get(0)?,
        beyond_after: [r.try_get(1)?, r.try_get(2)?, r.try_get(3)?],
    })
}

/// Up to `limit` workspaces deeper than `limit_of.hops` below the agent after the install (see
/// [`ChainCheck`]), deepest first, with that depth. Only called when there are some.
pub async fn deeper_after(
    conn: &mut PgConnection,
    reparented: &[Uuid],
    limit_of: DepthLimit,
    limit: i64,
) -> Result<Vec<(Uuid, String, i32)>> {
    let rows = crate::db::query(&format!(
        "{DOWN_AFTER},
         deep AS (SELECT id, after FROM down WHERE after > $3 ORDER BY after DESC, id LIMIT $4)
         SELECT d.id, w.name, d.after FROM deep d JOIN workspaces w ON w.id = d.id
          ORDER BY d.after DESC, d.id"
    ))
    .bind(MAX_DEPTH)
    .bind(reparented)
    .bind(limit_of.hops)
    .bind(limit)
    .fetch_all(&mut *conn)
    .await?;
    rows.iter()
        .map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?)))
        .collect::<std::result::Result<_, sqlx::Error>>()
        .map_err(Into::into)
}

// ---------------------------------------------------------------------------------------------
// Roots

/// The root a token is anchored to by default or by `--org`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Root {
    pub id: Uuid,
    pub name: String,
    pub status: Option<String>,
    pub is_agent: bool,
}

/// Roots named when the choice is ambiguous.
const ROOTS_SHOWN: i64 = 20;

/// One workspace by id: name, parent, status and whether it is the platform agent.
const WORKSPACE_AS_ROOT: &str =
    "SELECT id, name, parent_id, status::text, COALESCE(kind, 'workspace') = 'platform'
               FROM workspaces WHERE id = $1";

/// The platform agents (one is expected; a few more are read to name them).
const PLATFORM_AGENTS: &str = "SELECT id, name, parent_id, status::text FROM workspaces
          WHERE kind = 'platform' ORDER BY id LIMIT 11";

/// Up to $1 roots with their total and how many are not `removed`: live roots first (oldest
/// first), `removed` tombstones last, so the operator picks from the top of the list.
const ROOTS: &str = "SELECT id, name, status::text, count(*) OVER (),
                count(*) FILTER (WHERE COALESCE(status::text, '') <> 'removed') OVER ()
           FROM workspaces
          WHERE parent_id IS NULL
          ORDER BY COALESCE(status::text, '') = 'removed', created_at NULLS LAST, id
          LIMIT $1";

/// Resolve the org root: `--org` (which must be a root), else the platform agent, else the
/// only root. Several roots and no agent: `--org` is required (exit 2). Read-only.
pub async fn resolve_root(conn: &mut PgConnection, org: Option<Uuid>) -> Result<Root> {
    if let Some(org) = org {
        return given_root(conn, org).await;
    }
    if let Some(agent) = agent_root(conn).await? {
        return Ok(agent);
    }
    only_root(conn).await
}

/// `--org`: it must name a workspace with no parent.
async fn given_root(conn: &mut PgConnection, org: Uuid) -> Result<Root> {
    let row = db::query(WORKSPACE_AS_ROOT)
        .bind(org)
        .fetch_optional(&mut *conn)
        .await?;
    let Some(row) = row else {
        return Err(Error::refused(format!(
            "--org {org} names no workspace in this tenant; pass the id of an org root (a workspace with no parent; see `orgctl status`)"
        )));
    };
    let name: String = row.try_get(1)?;
    let parent: Option<Uuid> = row.try_get(2)?;
    if let Some(parent) = parent {
        return Err(Error::refused(format!(
            "--org {org} ('{}') is not an org root: its parent is {parent}; tokens are anchored to a root, so pass the root's id or omit --org",
            sanitize(&name)
        )));
    }
    Ok(Root {
        id: org,
        name,
        status: row.try_get(3)?,
        is_agent: row.try_get(4)?,
    })
}

/// The platform agent, when the tenant has one; it must be a root. Several: refused.
async fn agent_root(conn: &mut PgConnection) -> Result<Option<Root>> {
    let agents = db::query(PLATFORM_AGENTS).fetch_all(&mut *conn).await?;
    match agents.as_slice() {
        [] => Ok(None),
        [r] => {
            let id: Uuid = r.try_get(0)?;
            let parent: Option<Uuid> = r.try_get(2)?;
            if parent.is_some() {
                return Err(Error::refused(format!(
                    "the platform agent {id} is not a root (its parent_id is set); run `orgctl install-platform-agent` to repair the org, or pass --org ROOT"
                )));
            }
            Ok(Some(Root {
                id,
                name: r.try_get(1)?,
                status: r.try_get(3)?,
                is_agent: true,
            }))
        }
        _ => {
            let ids: Vec<String> = agents
                .iter()
                .filter_map(|r| r.try_get::<Uuid, _>(0).ok())
                .map(|u| u.to_string())
                .collect();
            Err(Error::refused(format!(
                "this tenant has several platform agents ({}), so the org root is ambiguous; fix the data, or pass --org ROOT",
                ids.join(", ")
            )))
        }
    }
}

/// No agent: the tenant's only root. None is refused; several need `--org` (exit 2).
async fn only_root(conn: &mut PgConnection) -> Result<Root> {
    let roots = db::query(ROOTS)
        .bind(ROOTS_SHOWN)
        .fetch_all(&mut *conn)
        .await?;
    let (total, live): (i64, i64) = match roots.first() {
        Some(r) => (r.try_get(3)?, r.try_get(4)?),
        None => (0, 0),
    };
    match (total, roots.first()) {
        (0, _) | (_, None) => Err(Error::refused(
            "this tenant has no root workspace (parent_id IS NULL), so there is no org to anchor a token to; check the tenant with `orgctl status`",
        )),
        (1, Some(r)) => Ok(Root {
            id: r.try_get(0)?,
            name: r.try_get(1)?,
            status: r.try_get(2)?,
            is_agent: false,
        }),
        (n, _) => Err(several_roots(&roots, n, live)),
    }
}

/// `--org` is required: the roots listed (live first), and an example to pass.
fn several_roots(roots: &[sqlx::postgres::PgRow], n: i64, live: i64) -> Error {
    let mut first_live = None;
    let listed: Vec<String> = roots
        .iter()
        .map(|r| {
            let id: Uuid = r.try_get(0).unwrap_or_default();
            let name: String = r.try_get(1).unwrap_or_default();
            let status: Option<String> = r.try_get(2).unwrap_or_default();
            if status.as_deref() == Some("removed") {
                format!("{id} '{}' (removed)", sanitize(&name))
            } else {
                first_live.get_or_insert(id);
                format!("{id} '{}'", sanitize(&name))
            }
        })
        .collect();
    let more = n - roots.len() as i64;
    let more = if more > 0 {
        format!(" and {more} more")
    } else {
        String::new()
    };
    let how = match first_live {
        Some(id) => format!(
            "choose the root of the org the token is for (live roots are listed first, oldest first) and run again with --org, e.g. --org {id}"
        ),
        None => "every root is removed; choose one with --org if you must".to_string(),
    };
    Error::usage(format!(
        "--org is required: this tenant has {n} roots ({live} live) and no platform agent: {}{more}; {how}, or install the platform agent first",
        listed.join(", ")
    ))
}

/// A column that references `workspaces(id)`, found in the catalog (`pg_constraint`) at the
/// moment of asking — never from a list: the platform adds tables, and a tenant may have more.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reference {
    pub schema: String,
    pub table: String,
    pub column: String,
    /// `pg_constraint.confdeltype`: `c` cascade, `n` set null, `d` set default, `r` restrict,
    /// `a` no action.
    pub on_delete: String,
}

impl Reference {
    fn sql_name(&self) -> String {
        format!("{}.{}", quote_ident(&self.schema), quote_ident(&self.table))
    }
}

/// Which rows of a referencing column count (see [`rows_referencing`]).
pub enum Count {
    /// Every row whose column is the workspace.
    All,
    /// Only rows that also match this predicate on alias `x` (a constant from the code, never
    /// user input; `$1` is the workspace id).
    Where(&'static str),
    /// Not this column (the caller accounts for it another way).
    Skip,
}

/// How many rows of one referencing column point at the workspace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Referencing {
    pub reference: Reference,
    pub rows: i64,
}

fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// Every single-column foreign key onto `workspaces(id)`: schema, table, column and
/// `confdeltype`.
const REFERENCES_TO_WORKSPACES: &str =
    "SELECT n.nspname::text, t.relname::text, a.attname::text, c.confdeltype::text
           FROM pg_constraint c
           JOIN pg_class t ON t.oid = c.conrelid
           JOIN pg_namespace n ON n.oid = t.relnamespace
           JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = c.conkey[1]
           JOIN pg_attribute r ON r.attrelid = c.confrelid AND r.attnum = c.confkey[1]
          WHERE c.contype = 'f' AND c.confrelid = to_regclass('workspaces')
            AND cardinality(c.conkey) = 1 AND r.attname = 'id' AND c.conparentid = 0
          ORDER BY 1, 2, 3";

/// Every single-column foreign key onto `workspaces(id)`, in a stable order. Partition children
/// of a partitioned table's key are left out (the parent's constraint counts their rows).
pub async fn references_to_workspaces(conn: &mut PgConnection) -> Result<Vec<Reference>> {
    let rows = crate::db::query(REFERENCES_TO_WORKSPACES)
        .fetch_all(&mut *conn)
        .await?;
    rows.iter()
        .map(|r| {
            Ok(Reference {
                schema: r.try_get(0)?,
                table: r.try_get(1)?,
                column: r.try_get(2)?,
                on_delete: r.try_get(3)?,
            })
        })
        .collect::<std::result::Result<_, sqlx::Error>>()
        .map_err(Into::into)
}

/// Rows of any table that reference workspace `id`, per referencing column with at least one
/// row, as the catalog has them now. `which` decides per column what counts. A workspace's
/// self-reference on its own row (`forwarded_to = id` on row `id`) never counts: it goes with
/// the row. One count per referencing column (about twenty on a real tenant).
pub async fn rows_referencing(
    conn: &mut PgConnection,
    id: Uuid,
    which: impl Fn(&Reference) -> Count,
) -> Result<Vec<Referencing>> {
    let mut found = Vec::new();
    for reference in references_to_workspaces(conn).await? {
        let extra = match which(&reference) {
            Count::Skip => continue,
            Count::All => String::new(),
            Count::Where(p) => format!(" AND ({p})"),
        };
        let own_row = if reference.table == "workspaces" {
            " AND x.id <> $1"
        } else {
            ""
        };
        let sql = format!(
            "SELECT count(*) FROM {} x WHERE x.{} = $1{own_row}{extra}",
            reference.sql_name(),
            quote_ident(&reference.column)
        );
        let rows: i64 = crate::db::query_scalar(&sql)
            .bind(id)
            .fetch_one(&mut *conn)
            .await?;
        if rows > 0 {
            found.push(Referencing { reference, rows });
        }
    }
    Ok(found)
}

/// The statements of this module that are fixed text, by name (prepared against the
/// template schema by a test; statements built at run time are not listed).
pub(crate) const STATEMENTS: &[(&str, &str)] = &[
    ("broken_count", BROKEN_COUNT),
    ("broken_named", BROKEN_NAMED),
    ("workspace_as_root", WORKSPACE_AS_ROOT),
    ("platform_agents", PLATFORM_AGENTS),
    ("roots", ROOTS),
    ("references_to_workspaces", REFERENCES_TO_WORKSPACES),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_are_quoted() {
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
        let r = Reference {
            schema: "audit".into(),
            table: "Log".into(),
            column: "ws".into(),
            on_delete: "c".into(),
        };
        assert_eq!(r.sql_name(), "\"audit\".\"Log\"");
    }
}
