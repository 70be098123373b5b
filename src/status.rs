//! `orgctl status`: the org's invariants at a glance, and a CI gate.
//!
//! Everything is read in ONE read-only REPEATABLE READ transaction, so the report is one
//! consistent snapshot and takes no row locks; orgctl's own schema is read when it exists and
//! never created. Every check is an aggregate plus at most `--limit` named rows: nothing
//! transfers a whole table, so status stays fast on a large org. Parent chains are checked with
//! one recursive query bounded by depth (a cycle or a chain deeper than the platform's org-root
//! lookup, 64 steps, can never make it loop). Before an install, the same `install::plan` a dry run uses says what
//! install-platform-agent would fix.
//!
//! Exit 0 when every invariant (every check of severity `error`) holds, 1 otherwise; warnings
//! are reported but never fail the gate.

use std::fmt::Write as _;

use serde::Serialize;
use sqlx::postgres::PgConnection;
use sqlx::Row;
use uuid::Uuid;

use crate::cli::StatusArgs;
use crate::db;
use crate::error::{sanitize, Exit, Result};
use crate::install::{self, InstallInput};
use crate::org;
use crate::output::Output;
use crate::platform::agent::REMOVED_STATUS;
use crate::platform::keys::SecretBox;
use crate::platform::provision;
use crate::platform::MODEL_KEY;
use crate::Context;

pub use crate::org::MAX_DEPTH;

/// The names of the checks, in the order they are reported. Stable: scripts key on them.
pub const CHECK_NAMES: &[&str] = &[
    "single_root",
    "platform_agent_is_root",
    "unique_platform_agent",
    "model_secret",
    "tokens_on_root",
    "allowlist_on_root",
    "parent_chains",
    "unanchored_tokens",
    "platform_agent_running",
    "platform_agent_not_removed",
];

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// An invariant: a failure makes status exit 1.
    Error,
    /// Worth knowing, never fails the gate.
    Warning,
}

/// One offending row a check names.
#[derive(Clone, Debug, Serialize)]
pub struct Finding {
    pub table: &'static str,
    pub id: String,
    pub detail: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct Check {
    pub name: &'static str,
    pub severity: Severity,
    pub ok: bool,
    /// How many rows the check found (the `rows` list stops at `--limit`).
    pub count: i64,
    pub rows: Vec<Finding>,
    pub message: String,
    /// The command that fixes it, when it fails and orgctl has one (null otherwise: a fix by
    /// hand, described in `message`).
    pub fix: Option<String>,
}

/// The fix of the invariants install restores (one root, the agent at it).
const INSTALL_FIX: &str = "orgctl install-platform-agent --dry-run, then without --dry-run";

#[derive(Clone, Debug, Serialize)]
pub struct RootRow {
    pub id: Uuid,
    pub name: String,
    pub status: Option<String>,
    pub kind: Option<String>,
    pub tier: Option<i32>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Roots {
    pub count: i64,
    pub rows: Vec<RootRow>,
}

#[derive(Clone, Debug, Serialize)]
pub struct AgentInfo {
    pub id: Uuid,
    pub name: String,
    pub status: Option<String>,
    pub tier: Option<i32>,
    pub parent_id: Option<Uuid>,
    pub model: bool,
}

#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Counts {
    /// Live as the platform counts it: not revoked and not expired.
    pub live: i64,
    pub revoked: i64,
    /// Expired but not revoked (the platform rejects them as it rejects revoked ones).
    pub expired: i64,
}

/// Tokens by anchor state (live and revoked apart).
#[derive(Clone, Debug, Default, Serialize)]
pub struct TokenStates {
    pub on_root: Counts,
    pub unanchored: Counts,
    pub on_non_root: Counts,
    pub on_former_root: Counts,
}

/// What install-platform-agent (with no --model, so MODEL is only reported) would do now.
#[derive(Clone, Debug, Serialize)]
pub struct InstallWould {
    /// `none` (nothing to do), `install` (it would change something) or `refused`.
    pub action: &'static str,
    pub summary: String,
    pub agent: Option<install::AgentAction>,
    pub reparented: usize,
    pub tokens_moved: i64,
    pub allowlist_moved: i64,
    pub allowlist_merged: usize,
    pub model_secret: Option<install::ModelAction>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub ok: bool,
    /// `host:port/dbname` of the tenant (never the password).
    pub tenant: String,
    /// Whether orgctl's own schema exists (some install has run here).
    pub orgctl_schema: bool,
    /// False when orgctl's schema exists but this role may not read it (no USAGE): its state
    /// (former roots) is then left out of the checks.
    pub orgctl_readable: bool,
    pub roots: Roots,
    /// The platform agent when there is exactly one `kind='platform'` row.
    pub platform_agent: Option<AgentInfo>,
    pub tokens: TokenStates,
    pub checks: Vec<Check>,
    pub install_would: InstallWould,
    /// Secret rows per table and `encryption_version` (counted, never decrypted).
    pub secrets: Vec<SecretCount>,
}

#[derive(Clone, Debug, Serialize)]
pub struct SecretCount {
    pub table: &'static str,
    pub encryption_version: i32,
    pub rows: i64,
}

impl Report {
    pub fn failed(&self) -> Vec<&Check> {
        self.checks
            .iter()
            .filter(|c| c.severity == Severity::Error && !c.ok)
            .collect()
    }
}

pub async fn run(ctx: &Context, args: &StatusArgs) -> Result<Exit> {
    let url = ctx.url()?;
    let mut conn = db::connect(&url, &ctx.settings).await?;
    db::ensure_compatible(&mut conn).await?;
    let report = {
        let mut tx = db::begin_read_only(&mut conn, &ctx.settings).await?;
        let r = collect(&mut tx, i64::from(args.limit), url.target()).await?;
        tx.rollback().await?;
        r
    };
    if !report.orgctl_readable {
        ctx.out.warn(
            "orgctl's own state (schema orgctl) is not readable by this role: the checks leave out the former roots it records; grant USAGE ON SCHEMA orgctl and SELECT on its tables for a complete report",
        );
    }
    render(&ctx.out, &report, args.limit as usize)?;
    let failed = report.failed();
    if failed.is_empty() {
        Ok(Exit::Ok)
    } else {
        ctx.out.info(&format!(
            "status: {} invariant(s) broken: {}",
            failed.len(),
            failed.iter().map(|c| c.name).collect::<Vec<_>>().join(", ")
        ));
        Ok(Exit::Failed)
    }
}

/// Read the whole report. Read-only: call it inside [`db::begin_read_only`].
pub async fn collect(conn: &mut PgConnection, limit: i64, tenant: &str) -> Result<Report> {
    let former_access = db::orgctl_table(conn, "former_roots").await?;
    let former = former_access == db::Access::Readable;
    let orgctl_schema = db::orgctl_schema_exists(conn).await?;
    let orgctl_readable = !orgctl_schema
        || (former_access == db::Access::Readable
            && db::orgctl_table_readable(conn, "audit_log").await?);

    // Roots.
    let root_count: i64 =
        db::query_scalar("SELECT count(*) FROM workspaces WHERE parent_id IS NULL")
            .fetch_one(&mut *conn)
            .await?;
    let root_rows: Vec<RootRow> = db::query(
        "SELECT id, name, status::text, kind, tier FROM workspaces
          WHERE parent_id IS NULL
          ORDER BY created_at NULLS LAST, id
          LIMIT $1",
    )
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
    .collect::<std::result::Result<_, sqlx::Error>>()?;

    // Platform agents: how many, how many misplaced, how many without MODEL.
    let agg = db::query(
        "SELECT count(*),
                count(*) FILTER (WHERE parent_id IS NOT NULL),
                count(*) FILTER (WHERE NOT EXISTS (
                    SELECT 1 FROM workspace_secrets s WHERE s.workspace_id = w.id AND s.key = $1)),
                count(*) FILTER (WHERE status::text = $2)
           FROM workspaces w WHERE kind = 'platform'",
    )
    .bind(MODEL_KEY)
    .bind(REMOVED_STATUS)
    .fetch_one(&mut *conn)
    .await?;
    let agents: i64 = agg.try_get(0)?;
    let misplaced: i64 = agg.try_get(1)?;
    let without_model: i64 = agg.try_get(2)?;
    let removed: i64 = agg.try_get(3)?;
    // Enough rows to name every kind of offender up to the limit (and the agent itself).
    let agent_rows: Vec<AgentInfo> = db::query(
        "SELECT id, name, status::text, tier, parent_id,
                EXISTS (SELECT 1 FROM workspace_secrets s WHERE s.workspace_id = w.id AND s.key = $1)
           FROM workspaces w WHERE kind = 'platform'
          ORDER BY (parent_id IS NOT NULL) DESC,
                   EXISTS (SELECT 1 FROM workspace_secrets s WHERE s.workspace_id = w.id AND s.key = $1),
                   id
          LIMIT $2",
    )
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
    .collect::<std::result::Result<_, sqlx::Error>>()?;

    let tokens = token_states(conn, former).await?;
    let token_findings = token_rows(conn, former, limit).await?;
    let unanchored_rows = unanchored_rows(conn, limit).await?;
    let (allow_count, allow_rows) = allowlist_off_root(conn, former, limit).await?;
    let (broken_count, broken_rows) = broken_chains(conn, limit).await?;
    let install_would = install_would(conn).await?;
    let secrets = crate::rekey::count_rows(conn)
        .await?
        .rows()
        .into_iter()
        .map(|(t, v, n)| SecretCount {
            table: t.name(),
            encryption_version: v,
            rows: n,
        })
        .collect();

    let mut checks = Vec::new();

    // single_root
    checks.push(Check {
        name: "single_root",
        severity: Severity::Error,
        ok: root_count == 1,
        count: root_count,
        rows: if root_count == 1 {
            Vec::new()
        } else {
            root_rows.iter().map(root_finding).collect()
        },
        message: match root_count {
            0 => "no workspace has parent_id NULL: the org has no root".to_string(),
            1 => "exactly one root".to_string(),
            n => format!("{n} roots where the org must have exactly one (the platform agent)"),
        },
        fix: (root_count != 1).then(|| INSTALL_FIX.to_string()),
    });

    // platform_agent_is_root
    // Some agent sits at the root, and it is the only root. (Its tier is the platform's: the
    // platform inserts 0 and a re-install preserves whatever it is.)
    let agent_ok = agents >= 1 && misplaced == 0 && root_count == 1;
    let lim = usize::try_from(limit).unwrap_or(usize::MAX);
    let misplaced_rows: Vec<Finding> = agent_rows
        .iter()
        .filter_map(|a| {
            a.parent_id.map(|p| Finding {
                table: "workspaces",
                id: a.id.to_string(),
                detail: format!(
                    "\"{}\": kind platform but under {p}, not a root",
                    sanitize(&a.name)
                ),
            })
        })
        .take(lim)
        .collect();
    checks.push(Check {
        name: "platform_agent_is_root",
        severity: Severity::Error,
        ok: agent_ok,
        count: misplaced,
        rows: misplaced_rows,
        message: if agents == 0 {
            "no platform agent: no workspace has kind='platform'".to_string()
        } else if misplaced > 0 {
            format!("{misplaced} platform agent(s) not at the root")
        } else if !agent_ok {
            "the platform agent is a root, but not the only one".to_string()
        } else {
            "the platform agent is the root".to_string()
        },
        fix: (!agent_ok && agents <= 1).then(|| INSTALL_FIX.to_string()),
    });

    // unique_platform_agent
    checks.push(Check {
        name: "unique_platform_agent",
        severity: Severity::Error,
        ok: agents <= 1,
        count: if agents > 1 { agents } else { 0 },
        rows: if agents > 1 {
            agent_rows.iter().take(lim).map(agent_finding).collect()
        } else {
            Vec::new()
        },
        message: if agents > 1 {
            format!("{agents} workspaces have kind='platform'; an org has one platform agent")
        } else {
            "at most one workspace has kind='platform'".to_string()
        },
        fix: None,
    });

    // model_secret: an agent without MODEL fails when it registers, unless its next start goes
    // through the platform's ensure (`--provision` acts on it), which seeds MODEL.
    let mut seeded_on_provision = 0i64;
    for a in agent_rows.iter().filter(|a| !a.model) {
        let state = provision::agent_state(conn, a.id).await?;
        if crate::platform::missing_model_is_seeded(provision::acts_on(state.as_ref())) {
            seeded_on_provision += 1;
        }
    }
    let model_fails = without_model - seeded_on_provision;
    // A MODEL the key at hand cannot open was written under another key (the old one after a
    // rotation): the platform cannot read it either. Checked only with a valid key set.
    let sb = SecretBox::from_env();
    let mut unreadable: Vec<&AgentInfo> = Vec::new();
    if sb.key_set() && sb.ensure_key_valid().is_ok() {
        for a in agent_rows.iter().filter(|a| a.model) {
            let stored: Option<(Vec<u8>, i32)> = db::query_as(
                "SELECT encrypted_value, encryption_version FROM workspace_secrets
                  WHERE workspace_id = $1 AND key = $2",
            )
            .bind(a.id)
            .bind(crate::platform::MODEL_KEY)
            .fetch_optional(&mut *conn)
            .await?;
            if let Some((value, 1)) = stored {
                if sb.open(&value, 1).is_none() {
                    unreadable.push(a);
                }
            }
        }
    }
    let unreadable_n = unreadable.len() as i64;
    checks.push(Check {
        name: "model_secret",
        severity: if without_model > 0 && model_fails == 0 && unreadable_n == 0 {
            Severity::Warning
        } else {
            Severity::Error
        },
        ok: agents >= 1 && without_model == 0 && unreadable_n == 0,
        count: without_model + unreadable_n,
        rows: agent_rows
            .iter()
            .filter(|a| !a.model)
            .chain(unreadable.iter().copied())
            .take(lim)
            .map(agent_finding)
            .collect(),
        message: if agents == 0 {
            "no platform agent to hold a MODEL secret".to_string()
        } else if unreadable_n > 0 {
            format!(
                "{unreadable_n} platform agent(s) whose MODEL secret does not decrypt with SECRETS_ENCRYPTION_KEY: it was written under another key (the old one after a rotation?), and the platform cannot read it either; check the key with `orgctl secret verify`, then write MODEL again with the tenant's key"
            )
        } else if without_model > 0 && model_fails == 0 {
            format!(
                "{without_model} platform agent(s) without a MODEL secret, and nothing runs or starts them: orgctl install-platform-agent --provision has the platform seed MODEL as it provisions them (any other start registers them without MODEL, and the platform marks them failed)"
            )
        } else if without_model > 0 {
            format!(
                "{without_model} platform agent(s) without a MODEL secret that would register without one (running or being started): the platform marks them failed; set MODEL (orgctl secret set <agent id> MODEL <a model registered for its runtime>)"
            )
        } else if sb.key_set() {
            "the platform agent has a MODEL secret, and it decrypts with the key given".to_string()
        } else {
            "the platform agent has a MODEL secret (not decrypted: no SECRETS_ENCRYPTION_KEY given)"
                .to_string()
        },
        fix: if agents == 0 {
            Some(INSTALL_FIX.to_string())
        } else if unreadable_n > 0 || (without_model > 0 && model_fails > 0) {
            Some("orgctl secret set <agent id> MODEL (a model registered for its runtime)".to_string())
        } else if without_model > 0 {
            Some("orgctl install-platform-agent --provision".to_string())
        } else {
            None
        },
    });

    // tokens_on_root
    let on_former =
        tokens.on_former_root.live + tokens.on_former_root.revoked + tokens.on_former_root.expired;
    let bad_tokens = tokens.on_non_root.live + on_former;
    checks.push(Check {
        name: "tokens_on_root",
        severity: Severity::Error,
        ok: bad_tokens == 0,
        count: bad_tokens,
        rows: token_findings,
        message: if bad_tokens == 0 {
            "every anchored live token is on a root, none on a former root".to_string()
        } else {
            format!(
                "{} live token(s) anchored to a non-root, {} token(s) on a former root; move them all to the root with `orgctl token anchor --stale` (review with --dry-run first)",
                tokens.on_non_root.live, on_former
            )
        },
        fix: (bad_tokens > 0).then(|| "orgctl token anchor --stale --dry-run, then --stale --yes".to_string()),
    });

    // allowlist_on_root
    checks.push(Check {
        name: "allowlist_on_root",
        severity: Severity::Error,
        ok: allow_count == 0,
        count: allow_count,
        rows: allow_rows,
        message: if allow_count == 0 {
            "every allowlist row is on a root".to_string()
        } else {
            format!("{allow_count} allowlist row(s) anchored to a non-root or former root")
        },
        fix: None,
    });

    // parent_chains
    checks.push(Check {
        name: "parent_chains",
        severity: Severity::Error,
        ok: broken_count == 0,
        count: broken_count,
        rows: broken_rows,
        message: if broken_count == 0 {
            format!("every workspace reaches a root within {MAX_DEPTH} steps")
        } else {
            format!(
                "{broken_count} workspace(s) reach no root within {MAX_DEPTH} steps (a cycle, or a chain so deep that the platform's org-root lookup gives up: isolation checks fail closed and the plugin allowlist fails open)"
            )
        },
        fix: None,
    });

    // unanchored_tokens (warning)
    checks.push(Check {
        name: "unanchored_tokens",
        severity: Severity::Warning,
        ok: tokens.unanchored.live == 0,
        count: tokens.unanchored.live,
        rows: unanchored_rows,
        message: if tokens.unanchored.live == 0 {
            "no live unanchored token".to_string()
        } else {
            format!(
                "{} live token(s) with no org: the platform denies them on org-scoped routes (orgctl token anchor)",
                tokens.unanchored.live
            )
        },
        fix: (tokens.unanchored.live > 0).then(|| "orgctl token anchor <id or prefix> (each token named below)".to_string()),
    });

    // platform_agent_running (warning): a row is not a running agent.
    let running = |a: &AgentInfo| matches!(a.status.as_deref(), Some("online" | "degraded"));
    let not_running: Vec<&AgentInfo> = agent_rows.iter().filter(|a| !running(a)).collect();
    // --provision is named only where it acts.
    let running_fix = match not_running.first() {
        Some(a) if agents >= 1 => {
            let state = provision::agent_state(conn, a.id).await?;
            provision::decide(false, state.as_ref())
                .is_none()
                .then(|| "orgctl install-platform-agent --provision --wait".to_string())
        }
        _ => None,
    };
    checks.push(Check {
        name: "platform_agent_running",
        severity: Severity::Warning,
        ok: agents >= 1 && not_running.is_empty(),
        count: not_running.len() as i64,
        rows: not_running
            .iter()
            .take(lim)
            .map(|a| Finding {
                table: "workspaces",
                id: a.id.to_string(),
                detail: format!(
                    "\"{}\": kind platform, status {}",
                    sanitize(&a.name),
                    a.status.as_deref().unwrap_or("null")
                ),
            })
            .collect(),
        message: match (agents, not_running.first()) {
            (0, _) => "no platform agent: nothing is running as the org's root".to_string(),
            (_, None) => "the platform agent is running (online or degraded)".to_string(),
            (_, Some(a)) => {
                let status = a.status.as_deref().unwrap_or("without a status");
                let state = provision::agent_state(conn, a.id).await?;
                // --provision is recommended only where it acts.
                match provision::decide(false, state.as_ref()) {
                    None => format!(
                        "the platform agent is {status}, not running: orgctl install-platform-agent --provision --wait"
                    ),
                    Some("provisioning" | "awaiting_agent") => format!(
                        "the platform agent is {status}: the platform is starting it (or, left provisioning by an older install, its sweep marks it failed after its deadline); --provision does not act on it now: check again later"
                    ),
                    Some("external") => format!(
                        "the platform agent is {status} on an external runtime: the platform does not provision it; start it where it runs"
                    ),
                    Some(_) => format!(
                        "the platform agent is {status}: the platform does not run it in that state and --provision does not act on it"
                    ),
                }
            }
        },
        fix: running_fix,
    });

    // platform_agent_not_removed: a removed agent is a deleted one; the platform's boot leaves
    // it alone, so nothing serves as the org's concierge.
    checks.push(Check {
        name: "platform_agent_not_removed",
        severity: Severity::Error,
        ok: removed == 0,
        count: removed,
        rows: agent_rows
            .iter()
            .filter(|a| a.status.as_deref() == Some(REMOVED_STATUS))
            .take(lim)
            .map(|a| Finding {
                table: "workspaces",
                id: a.id.to_string(),
                detail: format!("\"{}\": kind platform, status removed", sanitize(&a.name)),
            })
            .collect(),
        message: if removed == 0 {
            "no platform agent is removed".to_string()
        } else {
            format!(
                "{removed} platform agent(s) removed (deleted): the platform leaves a removed agent alone; bring it back with `orgctl install-platform-agent --revive`"
            )
        },
        fix: (removed > 0).then(|| "orgctl install-platform-agent --revive".to_string()),
    });

    debug_assert_eq!(
        checks.iter().map(|c| c.name).collect::<Vec<_>>(),
        CHECK_NAMES
    );

    let platform_agent = if agents == 1 {
        agent_rows.into_iter().next()
    } else {
        None
    };
    let ok = checks
        .iter()
        .all(|c| c.ok || c.severity == Severity::Warning);
    Ok(Report {
        ok,
        tenant: tenant.to_string(),
        orgctl_schema,
        orgctl_readable,
        roots: Roots {
            count: root_count,
            rows: root_rows,
        },
        platform_agent,
        tokens,
        checks,
        install_would,
        secrets,
    })
}

fn root_finding(r: &RootRow) -> Finding {
    Finding {
        table: "workspaces",
        id: r.id.to_string(),
        detail: format!(
            "\"{}\": root, status {}, kind {}",
            sanitize(&r.name),
            sanitize(r.status.as_deref().unwrap_or("null")),
            sanitize(r.kind.as_deref().unwrap_or("workspace"))
        ),
    }
}

fn agent_finding(a: &AgentInfo) -> Finding {
    Finding {
        table: "workspaces",
        id: a.id.to_string(),
        detail: format!(
            "\"{}\": kind platform, {}, MODEL {}",
            sanitize(&a.name),
            match a.parent_id {
                Some(p) => format!("under {p}"),
                None => "root".to_string(),
            },
            if a.model { "present" } else { "missing" }
        ),
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

/// [`org::broken_chains`] as findings.
pub async fn broken_chains(conn: &mut PgConnection, limit: i64) -> Result<(i64, Vec<Finding>)> {
    let (total, rows) = org::broken_chains(conn, limit).await?;
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

/// What install-platform-agent would do, computed by the very code a dry run uses (read-only).
/// No --model: MODEL is reported as present or missing, never written.
///
/// A new agent's id comes from `MOLECULE_ORG_ID` when it is set (as the platform reads it); a
/// tenant with no agent and no org id reports the refusal install would meet.
async fn install_would(conn: &mut PgConnection) -> Result<InstallWould> {
    let org_id = crate::platform::agent::env("MOLECULE_ORG_ID");
    let input = match InstallInput::new(None, None, None, true)?.with_identity(
        org_id.as_deref(),
        false,
        "MOLECULE_ORG_ID",
    ) {
        Ok(i) => match i.with_org_name_from_env() {
            Ok(i) => i,
            Err(e) => return Ok(InstallWould::refused(e.message)),
        },
        Err(e) => return Ok(InstallWould::refused(e.message)),
    };
    let sb = SecretBox::from_env();
    // A plan apply would refuse (two live namesakes under one parent) is reported as refused.
    let planned = install::plan(conn, &input, &sb, install::Orgctl::Probe)
        .await
        .and_then(|p| match p.refusal() {
            Some(e) => Err(e),
            None => Ok(p),
        });
    match planned {
        Ok(p) => {
            let mut summary = p.summary();
            if p.model == install::ModelAction::Missing {
                summary.push_str(
                    " The agent has no MODEL secret: pass --provision (the platform seeds it as it provisions the agent) or --model MODEL.",
                );
            }
            Ok(InstallWould {
                action: if p.changed() { "install" } else { "none" },
                summary,
                agent: Some(p.agent.action),
                reparented: p.reparented.len(),
                tokens_moved: p.tokens_moved(),
                allowlist_moved: p.allowlist_moved(),
                allowlist_merged: p.merged.len(),
                model_secret: Some(p.model),
            })
        }
        // A refusal (several agents, a removed agent, a name clash, no org id for a new
        // agent) is a finding, not a failure of status itself.
        Err(e) if matches!(e.exit, Exit::Refused | Exit::Usage) => {
            Ok(InstallWould::refused(e.message))
        }
        Err(e) => Err(e),
    }
}

impl InstallWould {
    fn refused(summary: String) -> Self {
        InstallWould {
            action: "refused",
            summary,
            agent: None,
            reparented: 0,
            tokens_moved: 0,
            allowlist_moved: 0,
            allowlist_merged: 0,
            model_secret: None,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Rendering

pub fn render(out: &Output, report: &Report, limit: usize) -> Result<()> {
    if out.json_mode() {
        return out.json(report);
    }
    out.stdout(&render_text(out, report, limit))
}

fn render_text(out: &Output, r: &Report, limit: usize) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "Tenant: {}", sanitize(&r.tenant));

    let _ = writeln!(s, "\nRoots ({}):", r.roots.count);
    if r.roots.rows.is_empty() {
        let _ = writeln!(s, "  none");
    } else {
        let mut t = out.new_table(["id", "name", "status", "kind", "tier"]);
        for root in &r.roots.rows {
            t.add_row(vec![
                root.id.to_string(),
                sanitize(&root.name),
                sanitize(root.status.as_deref().unwrap_or("-")),
                sanitize(root.kind.as_deref().unwrap_or("workspace")),
                root.tier
                    .map(|t| t.to_string())
                    .unwrap_or_else(|| "-".into()),
            ]);
        }
        let _ = writeln!(s, "{t}");
        let rest = r.roots.count - r.roots.rows.len() as i64;
        if rest > 0 {
            let _ = writeln!(s, "… and {rest} more");
        }
    }

    match &r.platform_agent {
        Some(a) => {
            let _ = writeln!(
                s,
                "\nPlatform agent: {} \"{}\" — status {}, tier {}, {}, MODEL {}",
                a.id,
                sanitize(&a.name),
                sanitize(a.status.as_deref().unwrap_or("-")),
                a.tier.map(|t| t.to_string()).unwrap_or_else(|| "-".into()),
                match a.parent_id {
                    None => "root".to_string(),
                    Some(p) => format!("under {p}"),
                },
                if a.model { "present" } else { "missing" }
            );
        }
        None => {
            let n = r
                .checks
                .iter()
                .find(|c| c.name == "unique_platform_agent")
                .map(|c| c.count)
                .unwrap_or(0);
            if n > 1 {
                let _ = writeln!(s, "\nPlatform agent: {n} candidates (see below)");
            } else {
                let _ = writeln!(s, "\nPlatform agent: none");
            }
        }
    }

    let _ = writeln!(s, "\nTokens by anchor:");
    let mut t = out.new_table(["anchor", "live", "expired", "revoked"]);
    for (label, c) in [
        ("on a root", r.tokens.on_root),
        ("unanchored", r.tokens.unanchored),
        ("on a non-root", r.tokens.on_non_root),
        ("on a former root", r.tokens.on_former_root),
    ] {
        t.add_row(vec![
            label.to_string(),
            c.live.to_string(),
            c.expired.to_string(),
            c.revoked.to_string(),
        ]);
    }
    let _ = writeln!(s, "{t}");

    let _ = writeln!(s, "\nSecrets by encryption version:");
    let mut t = out.new_table(["table", "version", "rows"]);
    for c in &r.secrets {
        t.add_row(vec![
            c.table.to_string(),
            match c.encryption_version {
                0 => "0 (plaintext)".to_string(),
                1 => "1 (AES-256-GCM)".to_string(),
                v => format!("{v} (unknown)"),
            },
            c.rows.to_string(),
        ]);
    }
    let _ = writeln!(s, "{t}");

    let _ = writeln!(s, "\nChecks:");
    let mut t = out.new_table(["check", "result", "count", "message"]);
    for c in &r.checks {
        t.add_row(vec![
            c.name.to_string(),
            match (c.ok, c.severity) {
                (true, _) => "ok".to_string(),
                (false, Severity::Error) => "FAIL".to_string(),
                (false, Severity::Warning) => "warn".to_string(),
            },
            c.count.to_string(),
            c.message.clone(),
        ]);
    }
    let _ = writeln!(s, "{t}");
    let fixes: Vec<(&str, &str)> = r
        .checks
        .iter()
        .filter(|c| !c.ok)
        .filter_map(|c| c.fix.as_deref().map(|f| (c.name, f)))
        .collect();
    if !fixes.is_empty() {
        let _ = writeln!(s, "\nTo fix:");
        let mut t = out.new_table(["check", "command"]);
        for (name, fix) in fixes {
            t.add_row(vec![name.to_string(), fix.to_string()]);
        }
        let _ = writeln!(s, "{t}");
    }

    for c in r.checks.iter().filter(|c| !c.ok && !c.rows.is_empty()) {
        let _ = writeln!(s, "\n{} ({}):", c.name, c.count);
        let mut t = out.new_table(["table", "id", "detail"]);
        for f in &c.rows {
            t.add_row(vec![f.table.to_string(), f.id.clone(), f.detail.clone()]);
        }
        let _ = writeln!(s, "{t}");
        let rest = c.count - c.rows.len() as i64;
        if rest > 0 {
            let _ = writeln!(
                s,
                "… and {rest} more (raise --limit, now {limit}, to name them)"
            );
        }
    }

    let w = &r.install_would;
    let _ = match w.action {
        "none" => writeln!(s, "\ninstall-platform-agent: nothing to do."),
        "refused" => writeln!(
            s,
            "\ninstall-platform-agent would refuse: {}",
            sanitize(&w.summary)
        ),
        _ => writeln!(
            s,
            "\ninstall-platform-agent would fix: {}",
            sanitize(&w.summary)
        ),
    };

    let failed = r.failed();
    if failed.is_empty() {
        let _ = writeln!(s, "\nAll invariants hold.");
    } else {
        let _ = writeln!(
            s,
            "\n{} of {} invariants broken: {}.",
            failed.len(),
            r.checks
                .iter()
                .filter(|c| c.severity == Severity::Error)
                .count(),
            failed.iter().map(|c| c.name).collect::<Vec<_>>().join(", ")
        );
    }
    s
}
