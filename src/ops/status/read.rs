//! The reads of `orgctl status`, all in the caller's read-only snapshot: aggregates plus at
//! most `--limit` named rows each.

use sqlx::postgres::PgConnection;
use sqlx::Row;
use uuid::Uuid;

use super::install_would::install_would;
use super::{AgentInfo, Counts, Finding, InstallWould, RootRow, SecretCount, TokenStates};
use crate::db;
use crate::error::{sanitize, Result};
use crate::platform::agent::REMOVED_STATUS;
use crate::platform::keys::SecretBox;
use crate::platform::provision;
use crate::platform::MODEL_KEY;

const ROOT_COUNT_SQL: &str = "SELECT count(*) FROM workspaces WHERE parent_id IS NULL";
/// The roots, oldest first, at most $1.
const ROOT_ROWS_SQL: &str = "SELECT id, name, status::text, kind, tier FROM workspaces
          WHERE parent_id IS NULL
          ORDER BY created_at NULLS LAST, id
          LIMIT $1";
/// Platform agents: how many, how many misplaced, how many without MODEL ($1), how many
/// removed ($2).
const AGENT_COUNTS_SQL: &str = "SELECT count(*),
                count(*) FILTER (WHERE parent_id IS NOT NULL),
                count(*) FILTER (WHERE NOT EXISTS (
                    SELECT 1 FROM workspace_secrets s WHERE s.workspace_id = w.id AND s.key = $1)),
                count(*) FILTER (WHERE status::text = $2)
           FROM workspaces w WHERE kind = 'platform'";
/// Enough platform agents ($2) to name every kind of offender up to the limit (and the agent
/// itself): misplaced first, then those without MODEL ($1).
const AGENT_ROWS_SQL: &str = "SELECT id, name, status::text, tier, parent_id,
                EXISTS (SELECT 1 FROM workspace_secrets s WHERE s.workspace_id = w.id AND s.key = $1)
           FROM workspaces w WHERE kind = 'platform'
          ORDER BY (parent_id IS NOT NULL) DESC,
                   EXISTS (SELECT 1 FROM workspace_secrets s WHERE s.workspace_id = w.id AND s.key = $1),
                   id
          LIMIT $2";
/// A workspace's stored MODEL secret ($1 the workspace, $2 the key).
const MODEL_VALUE_SQL: &str = "SELECT encrypted_value, encryption_version FROM workspace_secrets
                  WHERE workspace_id = $1 AND key = $2";

pub(super) const STATEMENTS: &[(&str, &str)] = &[
    ("status_root_count", ROOT_COUNT_SQL),
    ("status_root_rows", ROOT_ROWS_SQL),
    ("status_agent_counts", AGENT_COUNTS_SQL),
    ("status_agent_rows", AGENT_ROWS_SQL),
    ("status_model_value", MODEL_VALUE_SQL),
];

/// Whether orgctl's own schema is there and readable by this role.
pub(super) struct Access {
    /// Its former roots can be read (they then count in the anchor checks).
    pub former: bool,
    /// The schema exists (some install has run here).
    pub schema: bool,
    /// False when the schema exists but this role may not read it.
    pub readable: bool,
}

pub(super) async fn orgctl_access(conn: &mut PgConnection) -> Result<Access> {
    let former_access = db::orgctl_table(conn, "former_roots").await?;
    let former = former_access == db::Access::Readable;
    let schema = db::orgctl_schema_exists(conn).await?;
    let readable = !schema
        || (former_access == db::Access::Readable
            && db::orgctl_table_readable(conn, "audit_log").await?);
    Ok(Access {
        former,
        schema,
        readable,
    })
}

/// The platform agents, counted.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct AgentCounts {
    pub total: i64,
    /// Not at the root.
    pub misplaced: i64,
    pub without_model: i64,
    pub removed: i64,
}

/// What the MODEL check needs beyond the counts.
#[derive(Clone, Debug, Default)]
pub(super) struct ModelFacts {
    /// Agents without MODEL whose next start goes through the platform's ensure, which seeds it.
    pub seeded_on_provision: i64,
    /// Agents whose MODEL does not decrypt with the key at hand (checked only with a valid key).
    pub unreadable: Vec<AgentInfo>,
    /// SECRETS_ENCRYPTION_KEY is set.
    pub key_set: bool,
}

/// Everything the checks are judged on, read in one snapshot.
pub(super) struct Facts {
    /// `--limit` as a count of rows to name.
    pub limit: usize,
    pub root_count: i64,
    pub root_rows: Vec<RootRow>,
    pub agents: AgentCounts,
    pub agent_rows: Vec<AgentInfo>,
    pub tokens: TokenStates,
    /// Live tokens on a non-root, and any token on a former root.
    pub token_rows: Vec<Finding>,
    pub unanchored_rows: Vec<Finding>,
    pub allow_count: i64,
    pub allow_rows: Vec<Finding>,
    pub broken_count: i64,
    pub broken_rows: Vec<Finding>,
    pub install_would: InstallWould,
    pub secrets: Vec<SecretCount>,
    pub model: ModelFacts,
    /// For the first platform agent that is not running: what `provision::decide` says of it
    /// (`Some(None)`: `--provision` acts on it).
    pub running_decision: Option<Option<&'static str>>,
}

/// Read every fact, in the order the checks were always read.
pub(super) async fn facts(conn: &mut PgConnection, limit: i64, former: bool) -> Result<Facts> {
    let root_count: i64 = db::query_scalar(ROOT_COUNT_SQL)
        .fetch_one(&mut *conn)
        .await?;
    let root_rows = roots(conn, limit).await?;
    let agents = agent_counts(conn).await?;
    let agent_rows = agent_rows(conn, limit).await?;
    let tokens = token_states(conn, former).await?;
    let token_rows = token_rows(conn, former, limit).await?;
    let unanchored_rows = unanchored_rows(conn, limit).await?;
    let (allow_count, allow_rows) = allowlist_off_root(conn, former, limit).await?;
    let (broken_count, broken_rows) = broken_chains(conn, limit).await?;
    let install_would = install_would(conn).await?;
    let secrets = secrets(conn).await?;
    let model = model_facts(conn, &agent_rows).await?;
    let running_decision = running_decision(conn, agents.total, &agent_rows).await?;
    Ok(Facts {
        limit: usize::try_from(limit).unwrap_or(usize::MAX),
        root_count,
        root_rows,
        agents,
        agent_rows,
        tokens,
        token_rows,
        unanchored_rows,
        allow_count,
        allow_rows,
        broken_count,
        broken_rows,
        install_would,
        secrets,
        model,
        running_decision,
    })
}

async fn roots(conn: &mut PgConnection, limit: i64) -> Result<Vec<RootRow>> {
    db::query(ROOT_ROWS_SQL)
        .bind(limit)
        .fetch_all(&mut *conn)
        .await?
        .iter()
        .map(|r| {
            Ok(RootRow {
                id: r.try_get(0)?,
                name: r.try_get(1)?,
                status: r.try_get(2)?,
                kind: r.try_get(3)?,
                tier: r.try_get(4)?,
            })
        })
        .collect::<std::result::Result<_, sqlx::Error>>()
        .map_err(Into::into)
}

async fn agent_counts(conn: &mut PgConnection) -> Result<AgentCounts> {
    let agg = db::query(AGENT_COUNTS_SQL)
        .bind(MODEL_KEY)
        .bind(REMOVED_STATUS)
        .fetch_one(&mut *conn)
        .await?;
    Ok(AgentCounts {
        total: agg.try_get(0)?,
        misplaced: agg.try_get(1)?,
        without_model: agg.try_get(2)?,
        removed: agg.try_get(3)?,
    })
}

async fn agent_rows(conn: &mut PgConnection, limit: i64) -> Result<Vec<AgentInfo>> {
    db::query(AGENT_ROWS_SQL)
        .bind(MODEL_KEY)
        .bind(limit.max(1))
        .fetch_all(&mut *conn)
        .await?
        .iter()
        .map(|r| {
            Ok(AgentInfo {
                id: r.try_get(0)?,
                name: r.try_get(1)?,
                status: r.try_get(2)?,
                tier: r.try_get(3)?,
                parent_id: r.try_get(4)?,
                model: r.try_get(5)?,
            })
        })
        .collect::<std::result::Result<_, sqlx::Error>>()
        .map_err(Into::into)
}

/// Secret rows per table and encryption version (counted, never decrypted).
async fn secrets(conn: &mut PgConnection) -> Result<Vec<SecretCount>> {
    Ok(crate::ops::rekey::count_rows(conn)
        .await?
        .rows()
        .into_iter()
        .map(|(t, v, n)| SecretCount {
            table: t.name(),
            encryption_version: v,
            rows: n,
        })
        .collect())
}

/// Which agents without MODEL get it seeded by the platform (their next start goes through
/// its ensure), and, with a valid key at hand, which agents' MODEL does not decrypt with it.
async fn model_facts(conn: &mut PgConnection, agent_rows: &[AgentInfo]) -> Result<ModelFacts> {
    let mut seeded_on_provision = 0i64;
    for a in agent_rows.iter().filter(|a| !a.model) {
        let state = provision::agent_state(conn, a.id).await?;
        if crate::platform::missing_model_is_seeded(provision::acts_on(state.as_ref())) {
            seeded_on_provision += 1;
        }
    }
    let sb = SecretBox::from_env();
    let mut unreadable = Vec::new();
    if sb.key_set() && sb.ensure_key_valid().is_ok() {
        for a in agent_rows.iter().filter(|a| a.model) {
            let stored: Option<(Vec<u8>, i32)> = db::query_as(MODEL_VALUE_SQL)
                .bind(a.id)
                .bind(MODEL_KEY)
                .fetch_optional(&mut *conn)
                .await?;
            if let Some((value, 1)) = stored {
                if sb.open(&value, 1).is_none() {
                    unreadable.push(a.clone());
                }
            }
        }
    }
    Ok(ModelFacts {
        seeded_on_provision,
        unreadable,
        key_set: sb.key_set(),
    })
}

/// What `provision::decide` says of the first platform agent that is not running, if any.
async fn running_decision(
    conn: &mut PgConnection,
    agents: i64,
    agent_rows: &[AgentInfo],
) -> Result<Option<Option<&'static str>>> {
    match agent_rows.iter().find(|a| !a.running()) {
        Some(a) if agents >= 1 => {
            let state = provision::agent_state(conn, a.id).await?;
            Ok(Some(provision::decide(false, state.as_ref())))
        }
        _ => Ok(None),
    }
}

/// How a token or allowlist row's anchor is classified. `{former_join}` / `{is_former}` are
/// fixed strings chosen by whether orgctl's schema exists; nothing user-given goes in.
fn anchor_sql(table: &str, extra_cols: &str, former: bool) -> String {
    let (join, is_former) = if former {
        (
            "LEFT JOIN orgctl.former_roots f ON f.workspace_id = t.org_id",
            "f.workspace_id IS NOT NULL",
        )
    } else {
        ("", "false")
    };
    format!(
        "SELECT t.id::text AS id, t.org_id, {extra_cols},
                CASE WHEN t.org_id IS NULL THEN 'unanchored'
                     WHEN w.id IS NOT NULL AND w.parent_id IS NULL THEN 'on_root'
                     WHEN {is_former} THEN 'on_former_root'
                     WHEN w.id IS NULL THEN 'on_missing'
                     ELSE 'on_non_root' END AS state
           FROM {table} t
           LEFT JOIN workspaces w ON w.id = t.org_id
           {join}"
    )
}

/// A token's columns for [`anchor_sql`]: `live` as the platform counts it, `revoked` set.
fn token_cols() -> String {
    format!(
        "t.prefix, t.name, {} AS live, t.revoked_at IS NOT NULL AS revoked, t.created_at",
        crate::platform::tokens::live("t")
    )
}

async fn token_states(conn: &mut PgConnection, former: bool) -> Result<TokenStates> {
    let sql = format!(
        "WITH s AS ({})
         SELECT state, count(*) FILTER (WHERE live), count(*) FILTER (WHERE revoked),
                count(*) FILTER (WHERE NOT live AND NOT revoked)
           FROM s GROUP BY state",
        anchor_sql("org_api_tokens", &token_cols(), former)
    );
    let mut states = TokenStates::default();
    for r in db::query(&sql).fetch_all(&mut *conn).await? {
        let state: String = r.try_get(0)?;
        let c = Counts {
            live: r.try_get(1)?,
            revoked: r.try_get(2)?,
            expired: r.try_get(3)?,
        };
        let slot = match state.as_str() {
            "on_root" => &mut states.on_root,
            "unanchored" => &mut states.unanchored,
            "on_former_root" => &mut states.on_former_root,
            // A token on a missing workspace is as stale as one on a non-root.
            _ => &mut states.on_non_root,
        };
        slot.live += c.live;
        slot.revoked += c.revoked;
        slot.expired += c.expired;
    }
    Ok(states)
}

fn state_label(state: &str) -> &'static str {
    match state {
        "on_former_root" => "a former root",
        "on_missing" => "a missing workspace",
        "unanchored" => "no org",
        "on_root" => "a root",
        _ => "a non-root",
    }
}

/// Live tokens on a non-root, and any token on a former root, oldest first.
async fn token_rows(conn: &mut PgConnection, former: bool, limit: i64) -> Result<Vec<Finding>> {
    let sql = format!(
        "WITH s AS ({})
         SELECT id, org_id, prefix, name, live, state, revoked FROM s
          WHERE (state IN ('on_non_root', 'on_missing') AND live) OR state = 'on_former_root'
          ORDER BY created_at NULLS LAST, id
          LIMIT $1",
        anchor_sql("org_api_tokens", &token_cols(), former)
    );
    db::query(&sql)
        .bind(limit)
        .fetch_all(&mut *conn)
        .await?
        .iter()
        .map(|r| {
            let org: Option<Uuid> = r.try_get(1)?;
            let prefix: String = r.try_get(2)?;
            let name: Option<String> = r.try_get(3)?;
            let live: bool = r.try_get(4)?;
            let state: String = r.try_get(5)?;
            let revoked: bool = r.try_get(6)?;
            Ok(Finding {
                table: "org_api_tokens",
                id: r.try_get(0)?,
                detail: format!(
                    "{} token {} \"{}\" on {} {}",
                    match (live, revoked) {
                        (true, _) => "live",
                        (false, true) => "revoked",
                        (false, false) => "expired",
                    },
                    sanitize(&prefix),
                    sanitize(name.as_deref().unwrap_or("")),
                    state_label(&state),
                    org.map(|o| o.to_string()).unwrap_or_default()
                ),
            })
        })
        .collect::<std::result::Result<_, sqlx::Error>>()
        .map_err(Into::into)
}

async fn unanchored_rows(conn: &mut PgConnection, limit: i64) -> Result<Vec<Finding>> {
    db::query(&format!(
        "SELECT id::text, prefix, name, created_by FROM org_api_tokens
              WHERE org_id IS NULL AND {}
              ORDER BY created_at NULLS LAST, id
              LIMIT $1",
        crate::platform::tokens::live("")
    ))
    .bind(limit)
    .fetch_all(&mut *conn)
    .await?
    .iter()
    .map(|r| {
        let prefix: String = r.try_get(1)?;
        let name: Option<String> = r.try_get(2)?;
        let by: Option<String> = r.try_get(3)?;
        Ok(Finding {
            table: "org_api_tokens",
            id: r.try_get(0)?,
            detail: format!(
                "live token {} \"{}\" created by {}, no org",
                sanitize(&prefix),
                sanitize(name.as_deref().unwrap_or("")),
                sanitize(by.as_deref().unwrap_or("-"))
            ),
        })
    })
    .collect::<std::result::Result<_, sqlx::Error>>()
    .map_err(Into::into)
}

async fn allowlist_off_root(
    conn: &mut PgConnection,
    former: bool,
    limit: i64,
) -> Result<(i64, Vec<Finding>)> {
    let base = anchor_sql(
        "org_plugin_allowlist",
        "t.plugin_name, t.enabled_at",
        former,
    );
    let count: i64 = db::query_scalar(&format!(
        "WITH s AS ({base}) SELECT count(*) FROM s WHERE state <> 'on_root'"
    ))
    .fetch_one(&mut *conn)
    .await?;
    let rows = db::query(&format!(
        "WITH s AS ({base})
         SELECT id, org_id, plugin_name, state FROM s WHERE state <> 'on_root'
          ORDER BY enabled_at NULLS LAST, id
          LIMIT $1"
    ))
    .bind(limit)
    .fetch_all(&mut *conn)
    .await?
    .iter()
    .map(|r| {
        let org: Option<Uuid> = r.try_get(1)?;
        let plugin: String = r.try_get(2)?;
        let state: String = r.try_get(3)?;
        Ok(Finding {
            table: "org_plugin_allowlist",
            id: r.try_get(0)?,
            detail: format!(
                "plugin \"{}\" on {} {}",
                sanitize(&plugin),
                state_label(&state),
                org.map(|o| o.to_string()).unwrap_or_default()
            ),
        })
    })
    .collect::<std::result::Result<_, sqlx::Error>>()?;
    Ok((count, rows))
}

/// [`crate::ops::org::broken_chains`] as findings.
pub async fn broken_chains(conn: &mut PgConnection, limit: i64) -> Result<(i64, Vec<Finding>)> {
    let (total, rows) = crate::ops::org::broken_chains(conn, limit).await?;
    let findings = rows
        .into_iter()
        .map(|b| Finding {
            table: "workspaces",
            id: b.id.to_string(),
            detail: format!("\"{}\": {}", sanitize(&b.name), b.why),
        })
        .collect();
    Ok((total, findings))
}
