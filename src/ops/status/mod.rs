//! The org's invariants, read and judged: what `orgctl status` reports, and its CI gate.
//!
//! Everything is read in ONE read-only REPEATABLE READ transaction, so the report is one
//! consistent snapshot and takes no row locks; orgctl's own schema is read when it exists and
//! never created. Every check is an aggregate plus at most `--limit` named rows: nothing
//! transfers a whole table, so status stays fast on a large org. Parent chains are checked with
//! one recursive query bounded by depth (a cycle or a chain deeper than the platform's org-root
//! lookup, 64 steps, can never make it loop). Before an install, the same `install::plan` a dry
//! run uses says what install-platform-agent would fix.
//!
//! The reads (`read`) gather the facts; each check (`checks`) is a verdict on them, with the
//! command that fixes it as data. The report is plain data: `commands::status` renders it.
//! Every invariant (every check of severity `error`) holding is exit 0, any broken one exit 1;
//! warnings are reported but never fail the gate.

mod checks;
mod install_would;
mod read;

use serde::Serialize;
use sqlx::postgres::PgConnection;
use uuid::Uuid;

use crate::error::Result;
use crate::ops::install;

pub use checks::CHECK_NAMES;

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

impl AgentInfo {
    /// Running as the platform counts it: online or degraded (a row is not a running agent).
    fn running(&self) -> bool {
        matches!(self.status.as_deref(), Some("online" | "degraded"))
    }
}

impl Report {
    pub fn failed(&self) -> Vec<&Check> {
        self.checks
            .iter()
            .filter(|c| c.severity == Severity::Error && !c.ok)
            .collect()
    }
}

/// Read the whole report. Read-only: call it inside [`crate::db::begin_read_only`].
pub async fn collect(conn: &mut PgConnection, limit: i64, tenant: &str) -> Result<Report> {
    let access = read::orgctl_access(conn).await?;
    let facts = read::facts(conn, limit, access.former).await?;
    let checks = checks::judge(&facts);
    debug_assert_eq!(
        checks.iter().map(|c| c.name).collect::<Vec<_>>(),
        CHECK_NAMES
    );
    let read::Facts {
        root_count,
        root_rows,
        agents,
        agent_rows,
        tokens,
        install_would,
        secrets,
        ..
    } = facts;
    let platform_agent = if agents.total == 1 {
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
        orgctl_schema: access.schema,
        orgctl_readable: access.readable,
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

/// Every static statement of status, by name (each is prepared against the platform schema
/// by a test; the anchor classifications are built at run time and not listed).
pub(crate) const STATEMENTS: &[(&str, &str)] = read::STATEMENTS;
