//! Restarts as the platform does them: which workspaces a secret change restarts (the
//! platform-root guard, and the platform's own restart eligibility), and the HTTP client for
//! the platform's admin restart route `POST /admin/workspaces/{id}/restart` — the route that
//! applies the platform's eligibility rules, a 60 s debounce and coalescing, and answers
//! 202 `{"status":"restart_dispatched"}` when it restarts, 200 `{"status":"noop"}` when it does
//! not (debounced, coalesced or ineligible on its side), 404 when it has no such workspace.
//!
//! The platform-root restart guard lives in [`target_decision`] (a workspace secret: restart the
//! target only when a successful lookup proves it is not `kind='platform'`) and in
//! [`FANOUT_SQL`] (a global secret: one set-based query for every workspace that inherits the
//! key). Restarting the platform agent mid-turn once cost an org 14 hours; nothing here can.
//! Both also apply the platform's eligibility before any call, so each skip is reported with its
//! reason instead of as a silent no-op: skip a NULL status, `removed`, `paused` and `hibernated`
//! workspaces, external runtimes (`COALESCE(runtime,'langgraph')`), the runtimes in
//! [`SKIPPED_RUNTIMES`], and anything under a `paused` ancestor.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use sqlx::postgres::PgConnection;
use sqlx::Row;
use uuid::Uuid;
use zeroize::Zeroizing;

use crate::error::{sanitize, Error, Result};
use crate::output::Output;

/// Restart calls in flight at once. The platform re-provisions each restarted workspace, so a
/// global change in a large org must not stampede it.
pub const RESTART_CONCURRENCY: usize = 8;
/// Connecting to the platform API (a platform that is up accepts at once; an unreachable one
/// must not cost 8 workers x N calls x a long wait), and one whole restart call.
pub const RESTART_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
pub const RESTART_CALL_TIMEOUT: Duration = Duration::from_secs(20);
/// The default deadline of a whole dispatch (`--restart-timeout`).
pub const RESTART_TOTAL_TIMEOUT: Duration = Duration::from_secs(300);
/// After this many failed calls in a row, start no more: the platform is down or refusing,
/// and every further call would only fail the same way (the rest is reported not attempted).
pub const RESTART_GIVE_UP_AFTER: usize = 10;
/// Fan-outs at least this large get a progress bar (on a terminal).
const PROGRESS_MIN: usize = 10;
/// Runtimes the platform's restart never restarts (it does not run them in a container it can
/// re-provision), each with its skip reason. `external` predates these and keeps its own name.
pub const SKIPPED_RUNTIMES: [(&str, SkipReason); 3] = [
    ("kimi", SkipReason::RuntimeKimi),
    ("kimi-cli", SkipReason::RuntimeKimiCli),
    ("mock", SkipReason::RuntimeMock),
];
/// The platform's debounce of its admin restart: a second restart of a workspace within this
/// time answers `noop` (said in the report, so an operator knows when a replay can help).
pub const RESTART_DEBOUNCE: Duration = Duration::from_secs(60);

/// The platform API restarts go to, with the admin token. The token is registered for masking
/// the moment it is read and is never printed.
#[derive(Clone)]
pub struct Platform {
    base: String,
    token: Option<Zeroizing<String>>,
    /// The whole dispatch's deadline ([`Platform::with_total_timeout`]).
    total_timeout: Duration,
}

impl std::fmt::Debug for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Platform {{ base: {}, token: {} }}",
            crate::redact::mask(&self.base),
            if self.token.is_some() {
                "<set>"
            } else {
                "<unset>"
            }
        )
    }
}

impl Platform {
    /// `--platform-url` / `MOLECULE_PLATFORM_URL` and `MOLECULE_ADMIN_TOKEN`. `None` when no URL
    /// is given. A URL without a token is refused before anything is written (unless nothing
    /// will be dispatched: `--no-restart`, `--dry-run`), so a change cannot commit and then
    /// fail every restart with 401.
    pub fn resolve(url: Option<&str>, needs_token: bool) -> Result<Option<Self>> {
        let token = std::env::var("MOLECULE_ADMIN_TOKEN")
            .ok()
            .map(|t| Zeroizing::new(t.trim().to_string()))
            .filter(|t| !t.is_empty());
        if let Some(t) = &token {
            crate::redact::register(t);
        }
        Self::new(url, token, needs_token)
    }

    pub fn new(
        url: Option<&str>,
        token: Option<Zeroizing<String>>,
        needs_token: bool,
    ) -> Result<Option<Self>> {
        let raw = match url.map(str::trim) {
            None | Some("") => return Ok(None),
            Some(u) => u,
        };
        let parsed = url::Url::parse(raw).map_err(|e| {
            Error::usage(format!(
                "invalid platform URL: {e} (expected http(s)://host[:port][/prefix], from --platform-url or MOLECULE_PLATFORM_URL)"
            ))
        })?;
        if let Some(pw) = parsed.password() {
            crate::redact::register(pw);
        }
        if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
            return Err(Error::usage(format!(
                "invalid platform URL '{}': it must be http:// or https:// with a host",
                crate::redact::mask(raw)
            )));
        }
        if parsed.query().is_some() || parsed.fragment().is_some() {
            return Err(Error::usage(
                "invalid platform URL: it must not carry a query or fragment (restarts go to {URL}/admin/workspaces/{id}/restart)",
            ));
        }
        if let Some(t) = &token {
            if t.chars().any(|c| c.is_control() || c == ' ') {
                return Err(Error::usage(
                    "MOLECULE_ADMIN_TOKEN contains whitespace or control characters; it cannot be sent as a bearer token",
                ));
            }
        }
        if token.is_none() && needs_token {
            return Err(Error::usage(
                "a platform URL is set but MOLECULE_ADMIN_TOKEN is not: restarts need the admin token; set it, or pass --no-restart (nothing was changed)",
            ));
        }
        Ok(Some(Platform {
            base: raw.trim_end_matches('/').to_string(),
            token,
            total_timeout: RESTART_TOTAL_TIMEOUT,
        }))
    }

    /// Bound the whole dispatch: calls not started by then are reported as not attempted.
    pub fn with_total_timeout(mut self, total: Duration) -> Self {
        self.total_timeout = total;
        self
    }

    /// The platform's admin restart route, with its own eligibility, debounce and coalescing:
    /// every secret-change restart goes here.
    pub fn admin_restart_url(&self, id: Uuid) -> String {
        format!("{}/admin/workspaces/{id}/restart", self.base)
    }

    /// Whether the admin token is set (provisioning needs it; see `platform::provision`).
    pub fn has_token(&self) -> bool {
        self.token.is_some()
    }

    /// `{URL}{path}` for another route of the platform API (`path` starts with `/`).
    pub(crate) fn endpoint(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// The `Authorization` header value, when the admin token is set (never printed).
    pub(crate) fn bearer(&self) -> Option<Zeroizing<String>> {
        self.token
            .as_ref()
            .map(|t| Zeroizing::new(format!("Bearer {}", t.as_str())))
    }
}

// ---------------------------------------------------------------------------------------------
// The restart guard

/// Why a workspace that a change affects is not restarted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SkipReason {
    /// It is the platform agent (`kind='platform'`): never restarted by orgctl.
    PlatformRoot,
    /// Its kind could not be proven (lookup failed, or the row is gone): fail closed.
    KindUnknown,
    /// `--no-restart`.
    NoRestart,
    /// The platform's restart eligibility skips these, and orgctl skips them before calling, so
    /// each is reported with its reason rather than as the platform's bare no-op: status
    /// `removed`, `paused` or `hibernated`, `COALESCE(runtime,'langgraph') = 'external'` (the
    /// platform does not run it), or a `paused` ancestor within the chain bound (64 steps).
    Removed,
    Paused,
    Hibernated,
    External,
    PausedAncestor,
    /// The workspace has no status (NULL): the platform's eligibility never restarts it.
    NoStatus,
    /// Runtimes the platform's restart skips ([`SKIPPED_RUNTIMES`]).
    RuntimeKimi,
    RuntimeKimiCli,
    RuntimeMock,
    /// `secret restart`: the audit log records a successful restart of it since the key last
    /// changed (pass --all to restart it again).
    AlreadyRestarted,
}

impl SkipReason {
    pub fn as_str(self) -> &'static str {
        match self {
            SkipReason::PlatformRoot => "platform-root",
            SkipReason::KindUnknown => "kind-unknown",
            SkipReason::NoRestart => "no-restart",
            SkipReason::Removed => "removed",
            SkipReason::Paused => "paused",
            SkipReason::Hibernated => "hibernated",
            SkipReason::External => "external",
            SkipReason::PausedAncestor => "paused-ancestor",
            SkipReason::NoStatus => "no-status",
            SkipReason::RuntimeKimi => "runtime-kimi",
            SkipReason::RuntimeKimiCli => "runtime-kimi-cli",
            SkipReason::RuntimeMock => "runtime-mock",
            SkipReason::AlreadyRestarted => "already-restarted",
        }
    }

    /// The skip reason of a runtime the platform's restart never restarts.
    pub fn of_runtime(runtime: &str) -> Option<Self> {
        if runtime == "external" {
            return Some(SkipReason::External);
        }
        SKIPPED_RUNTIMES
            .iter()
            .find(|(r, _)| *r == runtime)
            .map(|(_, reason)| *reason)
    }

    /// The reason for a value of the fan-out query's `skip` column.
    fn from_sql(s: &str) -> Option<Self> {
        Some(match s {
            "platform-root" => SkipReason::PlatformRoot,
            "removed" => SkipReason::Removed,
            "paused" => SkipReason::Paused,
            "hibernated" => SkipReason::Hibernated,
            "external" => SkipReason::External,
            "paused-ancestor" => SkipReason::PausedAncestor,
            "no-status" => SkipReason::NoStatus,
            "runtime-kimi" => SkipReason::RuntimeKimi,
            "runtime-kimi-cli" => SkipReason::RuntimeKimiCli,
            "runtime-mock" => SkipReason::RuntimeMock,
            _ => return None,
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub id: Uuid,
    pub name: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Skip {
    pub id: Uuid,
    pub name: Option<String>,
    pub reason: SkipReason,
    /// Why the kind is unknown (for the warning), never shown for other reasons.
    pub detail: Option<String>,
}

/// Which workspaces a committed change restarts, and which it deliberately does not.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RestartPlan {
    pub planned: Vec<Target>,
    pub skipped: Vec<Skip>,
}

/// What the guard's lookup of a workspace target found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TargetRow {
    pub name: String,
    pub is_platform: bool,
    pub status: Option<String>,
    /// `COALESCE(runtime, 'langgraph')`.
    pub runtime: String,
    /// A `paused` workspace among its ancestors (at most [`crate::org::MAX_DEPTH`] steps up).
    pub paused_ancestor: bool,
}

/// The guard for a workspace-secret change: restart the target only when a successful lookup
/// proves `COALESCE(kind,'workspace') <> 'platform'`. A failed lookup or a missing row means
/// the kind is unknown: no restart (fail closed).
pub fn target_decision(
    id: Uuid,
    lookup: std::result::Result<Option<TargetRow>, String>,
    no_restart: bool,
) -> RestartPlan {
    let skip = |name: Option<String>, reason, detail| RestartPlan {
        planned: Vec::new(),
        skipped: vec![Skip {
            id,
            name,
            reason,
            detail,
        }],
    };
    let row = match lookup {
        Err(e) => return skip(None, SkipReason::KindUnknown, Some(e)),
        Ok(None) => {
            return skip(
                None,
                SkipReason::KindUnknown,
                Some("the workspace row is gone".into()),
            )
        }
        Ok(Some(row)) => row,
    };
    let name = Some(row.name.clone());
    if row.is_platform {
        return skip(name, SkipReason::PlatformRoot, None);
    }
    match row.status.as_deref() {
        None => return skip(name, SkipReason::NoStatus, None),
        Some("removed") => return skip(name, SkipReason::Removed, None),
        Some("paused") => return skip(name, SkipReason::Paused, None),
        Some("hibernated") => return skip(name, SkipReason::Hibernated, None),
        _ => {}
    }
    if let Some(reason) = SkipReason::of_runtime(&row.runtime) {
        return skip(name, reason, None);
    }
    if row.paused_ancestor {
        return skip(name, SkipReason::PausedAncestor, None);
    }
    if no_restart {
        return skip(name, SkipReason::NoRestart, None);
    }
    RestartPlan {
        planned: vec![Target { id, name }],
        skipped: Vec::new(),
    }
}

/// The target and its ancestors: the walk up stops at a root, a missing parent, or
/// [`crate::org::MAX_DEPTH`] steps (a cycle or a corrupt chain can never make it loop).
/// `status` is compared as text: older tenants have a TEXT column, or an enum without every
/// label (a literal the enum lacks would be an error, not a mismatch).
const TARGET_SQL: &str = "WITH RECURSIVE up(id, steps) AS (
                               SELECT parent_id, 1 FROM workspaces WHERE id = $1 AND parent_id IS NOT NULL
                             UNION ALL
                               SELECT w.parent_id, u.steps + 1
                                 FROM up u JOIN workspaces w ON w.id = u.id
                                WHERE w.parent_id IS NOT NULL AND u.steps < $2
                          )
                          SELECT name, COALESCE(kind, 'workspace') = 'platform', status::text,
                                 COALESCE(runtime, 'langgraph'),
                                 EXISTS (SELECT 1 FROM up JOIN workspaces a ON a.id = up.id
                                          WHERE a.status::text = 'paused')
                            FROM workspaces WHERE id = $1";

/// The global fan-out, ONE set-based statement: every workspace that inherits key $1 (no
/// workspace-level override), each with the reason it is skipped, or NULL when it is
/// restarted. The reasons in order: the platform agent (the guard), a NULL status,
/// `removed`/`paused`/`hibernated`, external runtime, a runtime of $3 (`runtime-<name>`), a
/// paused ancestor — found by walking DOWN from every paused workspace at most
/// [`crate::org::MAX_DEPTH`] levels (the same bound as walking up from each row, in one pass;
/// the walk starts at the paused workspaces themselves, which the CASE already reports as
/// `paused`, so no join is needed to seed it) and hash-joined, so the plan stays linear even
/// with stale statistics. Without a paused workspace the walk is one scan.
pub const FANOUT_SQL: &str = "WITH RECURSIVE below_paused(id, depth) AS (
                                   SELECT p.id, 0 FROM workspaces p WHERE p.status::text = 'paused'
                                 UNION ALL
                                   SELECT w.id, b.depth + 1
                                     FROM below_paused b JOIN workspaces w ON w.parent_id = b.id
                                    WHERE b.depth < $2
                              ),
                              under AS (SELECT DISTINCT id FROM below_paused)
                              SELECT w.id, w.name,
                                     CASE WHEN COALESCE(w.kind, 'workspace') = 'platform' THEN 'platform-root'
                                          WHEN w.status IS NULL THEN 'no-status'
                                          WHEN w.status::text IN ('removed', 'paused', 'hibernated') THEN w.status::text
                                          WHEN COALESCE(w.runtime, 'langgraph') = 'external' THEN 'external'
                                          WHEN COALESCE(w.runtime, 'langgraph') = ANY($3::text[])
                                               THEN 'runtime-' || COALESCE(w.runtime, 'langgraph')
                                          WHEN u.id IS NOT NULL THEN 'paused-ancestor'
                                     END
                                FROM workspaces w
                                LEFT JOIN under u ON u.id = w.id
                               WHERE NOT EXISTS (SELECT 1 FROM workspace_secrets s
                                                  WHERE s.workspace_id = w.id AND s.key = $1)
                               ORDER BY w.id";

pub async fn lookup_target(
    conn: &mut PgConnection,
    id: Uuid,
) -> std::result::Result<Option<TargetRow>, String> {
    let row = crate::db::query(TARGET_SQL)
        .bind(id)
        .bind(crate::org::MAX_DEPTH)
        .fetch_optional(&mut *conn)
        .await
        .map_err(|e| crate::error::classify_sqlx(&e).message)?;
    let Some(r) = row else { return Ok(None) };
    let decode = || -> std::result::Result<TargetRow, sqlx::Error> {
        Ok(TargetRow {
            name: r.try_get(0)?,
            is_platform: r.try_get(1)?,
            status: r.try_get(2)?,
            runtime: r.try_get(3)?,
            paused_ancestor: r.try_get(4)?,
        })
    };
    decode()
        .map(Some)
        .map_err(|e| crate::error::classify_sqlx(&e).message)
}

/// The restart plan of a change to workspace `id`'s secret, from the state `conn` sees.
pub async fn plan_workspace(conn: &mut PgConnection, id: Uuid, no_restart: bool) -> RestartPlan {
    let lookup = lookup_target(conn, id).await;
    target_decision(id, lookup, no_restart)
}

/// The restart plan of a change to global secret `key`, from the state `conn` sees.
pub async fn plan_global(
    conn: &mut PgConnection,
    key: &str,
    no_restart: bool,
) -> Result<RestartPlan> {
    let runtimes: Vec<&str> = SKIPPED_RUNTIMES.iter().map(|(r, _)| *r).collect();
    let rows = crate::db::query(FANOUT_SQL)
        .bind(key)
        .bind(crate::org::MAX_DEPTH)
        .bind(&runtimes)
        .fetch_all(&mut *conn)
        .await?;
    let mut plan = RestartPlan::default();
    for r in rows {
        let id: Uuid = r.try_get(0)?;
        let name: String = r.try_get(1)?;
        let skip: Option<String> = r.try_get(2)?;
        let reason = match skip.as_deref() {
            None if no_restart => Some(SkipReason::NoRestart),
            None => None,
            Some(s) => Some(SkipReason::from_sql(s).ok_or_else(|| {
                Error::failed(format!("internal: unknown restart skip reason '{s}'"))
            })?),
        };
        match reason {
            Some(reason) => plan.skipped.push(Skip {
                id,
                name: Some(name),
                reason,
                detail: None,
            }),
            None => plan.planned.push(Target {
                id,
                name: Some(name),
            }),
        }
    }
    Ok(plan)
}

// ---------------------------------------------------------------------------------------------
// Restart dispatch

/// What one restart call came to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum DispatchOutcome {
    /// 202 `{"status":"restart_dispatched"}`: the platform restarts it.
    Restarted,
    /// 200 `{"status":"noop"}`: the platform did nothing — it restarted the workspace within
    /// its debounce, coalesced the call into a restart in flight, or its own eligibility
    /// excludes it. Not restarted, and not a failure.
    Noop,
    /// 404, and the tenant confirms the workspace is removed or gone ([`confirm_gone`]).
    Gone,
    /// Any other answer, a timeout, an unreachable platform: not restarted.
    Failed,
    /// The call was never made (the deadline, repeated failures, Ctrl-C).
    NotAttempted,
}

impl DispatchOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            DispatchOutcome::Restarted => "restarted",
            DispatchOutcome::Noop => "noop",
            DispatchOutcome::Gone => "gone",
            DispatchOutcome::Failed => "failed",
            DispatchOutcome::NotAttempted => "not-attempted",
        }
    }

    /// Not a failure: the call did what the platform's rules allow.
    pub fn ok(self) -> bool {
        matches!(
            self,
            DispatchOutcome::Restarted | DispatchOutcome::Noop | DispatchOutcome::Gone
        )
    }
}

/// The result of one restart call. `ok` is false exactly for a failure (what exit 1 names);
/// `outcome` tells a restart from a no-op and from a workspace the platform no longer has.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Dispatched {
    pub id: Uuid,
    pub ok: bool,
    pub outcome: DispatchOutcome,
    pub error: Option<String>,
    /// The platform's HTTP status, when it answered (for the audit row; not in the JSON).
    #[serde(skip)]
    pub http_status: Option<u16>,
}

impl Dispatched {
    pub fn new(
        id: Uuid,
        outcome: DispatchOutcome,
        error: Option<String>,
        http_status: Option<u16>,
    ) -> Self {
        Dispatched {
            id,
            ok: outcome.ok(),
            outcome,
            error,
            http_status,
        }
    }

    fn failed(id: Uuid, error: String, http_status: Option<u16>) -> Self {
        Self::new(id, DispatchOutcome::Failed, Some(error), http_status)
    }
}

/// POST the platform's admin restart for each id, at most [`RESTART_CONCURRENCY`] at once, each
/// bounded by [`RESTART_CALL_TIMEOUT`]; one result per id, in order. A Ctrl-C starts no new call, lets the
/// calls in flight finish (they are bounded), and reports the rest as not attempted.
pub async fn dispatch(out: &Output, platform: &Platform, ids: &[Uuid]) -> Vec<Dispatched> {
    if ids.is_empty() {
        return Vec::new();
    }
    let pb = if ids.len() >= PROGRESS_MIN {
        out.progress(ids.len() as u64, "restarting workspaces")
    } else {
        indicatif::ProgressBar::hidden()
    };
    // The secret is committed: a Ctrl-C now must not claim "nothing was changed". Marking the
    // dispatch like a COMMIT on the wire makes the interrupt handler wait for it (bounded by the
    // call timeout) and report "interrupted after the change was committed".
    let _guard = crate::interrupt::CommitGuard::enter();
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = {
        let stop = stop.clone();
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                stop.store(true, Ordering::SeqCst);
            }
        })
    };
    let urls: Vec<(Uuid, String)> = ids
        .iter()
        .map(|id| (*id, platform.admin_restart_url(*id)))
        .collect();
    let bearer = platform
        .token
        .as_ref()
        .map(|t| Zeroizing::new(format!("Bearer {}", t.as_str())));
    let pb2 = pb.clone();
    let stop2 = stop.clone();
    let total = platform.total_timeout;
    let job = tokio::task::spawn_blocking(move || {
        dispatch_blocking(
            &urls,
            bearer.as_ref().map(|b| b.as_str()),
            &pb2,
            &stop2,
            total,
        )
    });
    let results = job.await;
    watcher.abort();
    pb.finish_and_clear();
    match results {
        Ok(r) => r,
        Err(e) => ids
            .iter()
            .map(|id| {
                Dispatched::failed(*id, format!("internal: the restart task failed: {e}"), None)
            })
            .collect(),
    }
}

/// The HTTP client settings of every call to the platform's API: 3 s to connect, 20 s per
/// call, and no redirects (the bearer token never travels to another target).
pub fn api_client() -> ureq::AgentBuilder {
    ureq::AgentBuilder::new()
        .timeout_connect(RESTART_CONNECT_TIMEOUT)
        .timeout(RESTART_CALL_TIMEOUT)
        .redirects(0)
        .user_agent(concat!("orgctl/", env!("CARGO_PKG_VERSION")))
}

fn dispatch_blocking(
    urls: &[(Uuid, String)],
    bearer: Option<&str>,
    pb: &indicatif::ProgressBar,
    stop: &AtomicBool,
    total: Duration,
) -> Vec<Dispatched> {
    let deadline = std::time::Instant::now() + total;
    // Failed calls in a row (a restart or a no-op resets it). A 404 counts: it is "gone" only
    // once the tenant agrees (`confirm_gone`), and a wrong platform URL answers 404 for every
    // workspace, so a run of them must stop the fan-out like any other refusal.
    let failures_in_a_row = AtomicUsize::new(0);
    let agent = api_client()
        .max_idle_connections_per_host(RESTART_CONCURRENCY)
        .build();
    // For the one retry of a call that met a stale keep-alive connection: never pooled, so the
    // retry always opens a new connection.
    let fresh = api_client().max_idle_connections(0).build();
    let next = AtomicUsize::new(0);
    let workers = RESTART_CONCURRENCY.min(urls.len()).max(1);
    let mut indexed: Vec<(usize, Dispatched)> = Vec::with_capacity(urls.len());
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..workers)
            .map(|_| {
                s.spawn(|| {
                    let mut mine = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::SeqCst);
                        let Some((id, url)) = urls.get(i) else { break };
                        let not_attempted = |why: String| {
                            Dispatched::new(
                                *id,
                                DispatchOutcome::NotAttempted,
                                Some(format!("not attempted: {why}")),
                                None,
                            )
                        };
                        let left = deadline.saturating_duration_since(std::time::Instant::now());
                        let result = if stop.load(Ordering::SeqCst) {
                            not_attempted("interrupted".into())
                        } else if failures_in_a_row.load(Ordering::SeqCst) >= RESTART_GIVE_UP_AFTER
                        {
                            not_attempted(format!(
                                "stopped after {RESTART_GIVE_UP_AFTER} failed restarts in a row"
                            ))
                        } else if left.is_zero() {
                            not_attempted(format!(
                                "the restart deadline ({}) passed",
                                crate::output::duration::human(total)
                            ))
                        } else {
                            let r = restart_one(&agent, &fresh, *id, url, bearer, left);
                            if r.ok && r.outcome != DispatchOutcome::Gone {
                                failures_in_a_row.store(0, Ordering::SeqCst);
                            } else {
                                failures_in_a_row.fetch_add(1, Ordering::SeqCst);
                            }
                            r
                        };
                        pb.inc(1);
                        mine.push((i, result));
                    }
                    mine
                })
            })
            .collect();
        for h in handles {
            if let Ok(v) = h.join() {
                indexed.extend(v);
            }
        }
    });
    indexed.sort_by_key(|(i, _)| *i);
    // A worker that died leaves gaps: report those ids as failed, never as restarted.
    urls.iter()
        .enumerate()
        .map(
            |(i, (id, _))| match indexed.binary_search_by_key(&i, |(j, _)| *j) {
                Ok(pos) => indexed[pos].1.clone(),
                Err(_) => {
                    Dispatched::failed(*id, "internal: the restart worker failed".into(), None)
                }
            },
        )
        .collect()
}

/// One restart call, bounded by the call timeout and by what is `left` of the deadline. A
/// call whose connection closed before any status line came back (the platform dropped an idle
/// keep-alive connection just as orgctl reused it: reset, or EOF before the status line) is
/// retried once on a new connection from `fresh`, within the same deadline. Nothing else is
/// retried: a restart is not idempotent, and any response means the platform saw the call.
fn restart_one(
    agent: &ureq::Agent,
    fresh: &ureq::Agent,
    id: Uuid,
    url: &str,
    bearer: Option<&str>,
    left: Duration,
) -> Dispatched {
    let started = std::time::Instant::now();
    let call = |agent: &ureq::Agent, budget: Duration| {
        let mut req = agent.post(url).timeout(RESTART_CALL_TIMEOUT.min(budget));
        if let Some(b) = bearer {
            req = req.set("Authorization", b);
        }
        // Boxed: ureq's error carries a whole response.
        req.send_bytes(&[]).map_err(Box::new)
    };
    let mut result = call(agent, left);
    if let Err(e) = &result {
        let ureq::Error::Transport(t) = e.as_ref() else {
            return status_result(id, url, result);
        };
        let budget = left.saturating_sub(started.elapsed());
        if closed_before_response(t) && !budget.is_zero() {
            result = call(fresh, budget);
        }
    }
    status_result(id, url, result)
}

/// The [`Dispatched`] of a call's outcome.
fn status_result(
    id: Uuid,
    url: &str,
    result: std::result::Result<ureq::Response, Box<ureq::Error>>,
) -> Dispatched {
    let clean = |msg: String| crate::redact::mask(&sanitize(&msg));
    match result {
        Ok(resp) if (200..300).contains(&resp.status()) => {
            let status = resp.status();
            let status_text = resp.status_text().to_string();
            // Read the (small) body to its end so the connection goes back to the pool.
            let mut body = Vec::new();
            let _ = std::io::copy(
                &mut std::io::Read::take(resp.into_reader(), 64 * 1024),
                &mut body,
            );
            let (outcome, error) = classify_answer(status, &status_text, &body);
            Dispatched::new(id, outcome, error.map(clean), Some(status))
        }
        Ok(resp) => {
            let status = resp.status();
            Dispatched::failed(
                id,
                clean(format!(
                    "HTTP {status} {} (a redirect is not followed)",
                    resp.status_text()
                )),
                Some(status),
            )
        }
        Err(e) => match *e {
            // The platform has no such workspace; [`confirm_gone`] checks the tenant agrees
            // before it is reported as gone rather than failed.
            ureq::Error::Status(404, _) => {
                Dispatched::new(id, DispatchOutcome::Gone, None, Some(404))
            }
            ureq::Error::Status(code, _) => {
                // Neither the body nor the reason phrase is shown or stored: a platform or a
                // proxy may echo the request, bearer included (truncated or re-cased, where
                // masking cannot find it). The code and a fixed description say enough.
                Dispatched::failed(id, http_failure(code), Some(code))
            }
            ureq::Error::Transport(t) => {
                // ureq prefixes the URL, which the result already names by id.
                let msg = t.to_string();
                let prefix = format!("{url}: ");
                Dispatched::failed(
                    id,
                    clean(msg.strip_prefix(&prefix).unwrap_or(&msg).to_string()),
                    None,
                )
            }
        },
    }
}

/// What a 2xx answer of the admin restart route means, from its body's `status`:
/// `restart_dispatched` is a restart, `noop` is a no-op (whatever the 2xx code); a 202 whose
/// body says neither is still a restart (202 is the route's dispatch answer). Any other 2xx
/// is not a known answer of the route, so whether anything was restarted is unknown: a failure
/// (never reported as restarted), with the answer in the error.
pub fn classify_answer(
    status: u16,
    status_text: &str,
    body: &[u8],
) -> (DispatchOutcome, Option<String>) {
    let said = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("status").and_then(|s| s.as_str()).map(str::to_owned));
    match said.as_deref() {
        Some("restart_dispatched") => (DispatchOutcome::Restarted, None),
        Some("noop") => (DispatchOutcome::Noop, None),
        _ if status == 202 => (DispatchOutcome::Restarted, None),
        _ => {
            // The body is never shown (it may echo the request); only whether it said anything.
            let _ = status_text;
            let shown = if body.iter().all(u8::is_ascii_whitespace) {
                "an empty body"
            } else {
                "a body that says neither"
            };
            (
                DispatchOutcome::Failed,
                Some(format!(
                    "HTTP {status} with {shown}: not an answer of the admin restart route (202 restart_dispatched or 200 noop), so whether it restarted is unknown"
                )),
            )
        }
    }
}

/// A failed HTTP answer in fixed words: the status code and what it means for a call of the
/// platform's API, never the answer's own text.
pub fn http_failure(code: u16) -> String {
    let what = match code {
        400 => "the platform refused the request as malformed",
        401 => "the platform refused the admin token (MOLECULE_ADMIN_TOKEN)",
        403 => "the admin token may not do this",
        404 => "not found",
        405 => "the route does not take this method: check the platform URL",
        408 | 504 => "the platform or a proxy in front of it timed out",
        409 => "the platform refused: it conflicts with the workspace's state",
        422 => "the platform refused the request's content",
        429 => "the platform is rate-limiting: retry later",
        500 => "the platform failed",
        502 | 503 => "the platform is unavailable (or a proxy in front of it)",
        c if (400..500).contains(&c) => "the platform refused the request",
        _ => "the platform failed",
    };
    format!("HTTP {code}: {what}")
}

/// Workspaces the platform answered 404 for that are NOT gone from this tenant: a row that
/// exists and is not `removed`. The platform answering 404 for a live workspace means the call
/// went somewhere else (a platform URL without its API prefix, another tenant's platform), so
/// those are failures, not "gone". One set-based query, in the caller's (read-only)
/// transaction.
pub async fn confirm_gone(conn: &mut PgConnection, results: &mut [Dispatched]) -> Result<()> {
    let gone: Vec<Uuid> = results
        .iter()
        .filter(|d| d.outcome == DispatchOutcome::Gone)
        .map(|d| d.id)
        .collect();
    if gone.is_empty() {
        return Ok(());
    }
    let live: Vec<Uuid> = crate::db::query_scalar(
        "SELECT id FROM workspaces WHERE id = ANY($1) AND status::text IS DISTINCT FROM 'removed'",
    )
    .bind(&gone)
    .fetch_all(&mut *conn)
    .await?;
    let live: std::collections::HashSet<Uuid> = live.into_iter().collect();
    for d in results.iter_mut() {
        if d.outcome == DispatchOutcome::Gone && live.contains(&d.id) {
            *d = Dispatched::failed(
                d.id,
                "HTTP 404 Not Found, but the workspace exists in this tenant and is not removed: check that the platform URL is the API base that serves /admin/workspaces/{id}/restart".into(),
                d.http_status,
            );
        }
    }
    Ok(())
}

/// When the tenant could not be read to confirm them ([`confirm_gone`] failed), the 404s are
/// failures: "gone" is only said when the tenant agrees.
pub fn unconfirmed_gone(results: &mut [Dispatched], why: &str) {
    for d in results.iter_mut() {
        if d.outcome == DispatchOutcome::Gone {
            *d = Dispatched::failed(
                d.id,
                format!("HTTP 404 Not Found, and the tenant could not be read to confirm the workspace is gone ({why})"),
                d.http_status,
            );
        }
    }
}

/// The connection was closed (reset, or EOF before a status line) with no response: the
/// signature of a stale keep-alive connection.
fn closed_before_response(t: &ureq::Transport) -> bool {
    if t.kind() != ureq::ErrorKind::Io {
        return false;
    }
    let mut source = std::error::Error::source(t);
    while let Some(e) = source {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            return matches!(
                io.kind(),
                std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::ConnectionAborted
                    | std::io::ErrorKind::BrokenPipe
            );
        }
        source = e.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Exit;

    fn id() -> Uuid {
        Uuid::from_u128(0xa000_0000_0000_4000_8000_0000_0000_0001)
    }

    fn row(is_platform: bool, status: &str, runtime: &str) -> TargetRow {
        TargetRow {
            paused_ancestor: false,
            name: "w".into(),
            is_platform,
            status: Some(status.into()),
            runtime: runtime.into(),
        }
    }

    fn reasons(p: &RestartPlan) -> Vec<SkipReason> {
        p.skipped.iter().map(|s| s.reason).collect()
    }

    #[test]
    fn guard_restarts_only_a_proven_ordinary_workspace() {
        let p = target_decision(id(), Ok(Some(row(false, "online", "langgraph"))), false);
        assert_eq!(p.planned.len(), 1);
        assert!(p.skipped.is_empty());

        let p = target_decision(id(), Ok(Some(row(true, "online", "langgraph"))), false);
        assert!(p.planned.is_empty());
        assert_eq!(reasons(&p), [SkipReason::PlatformRoot]);
        // The guard wins over --no-restart in the report.
        let p = target_decision(id(), Ok(Some(row(true, "online", "langgraph"))), true);
        assert_eq!(reasons(&p), [SkipReason::PlatformRoot]);
    }

    #[test]
    fn guard_fails_closed_when_the_kind_is_unknown() {
        let p = target_decision(id(), Err("connection reset".into()), false);
        assert!(p.planned.is_empty());
        assert_eq!(reasons(&p), [SkipReason::KindUnknown]);
        assert_eq!(p.skipped[0].detail.as_deref(), Some("connection reset"));
        let p = target_decision(id(), Ok(None), false);
        assert!(p.planned.is_empty());
        assert_eq!(reasons(&p), [SkipReason::KindUnknown]);
    }

    #[test]
    fn target_not_running_on_the_platform_is_not_restarted() {
        for (status, runtime, reason) in [
            ("removed", "langgraph", SkipReason::Removed),
            ("paused", "langgraph", SkipReason::Paused),
            ("hibernated", "langgraph", SkipReason::Hibernated),
            ("online", "external", SkipReason::External),
            ("online", "kimi", SkipReason::RuntimeKimi),
            ("offline", "kimi-cli", SkipReason::RuntimeKimiCli),
            ("failed", "mock", SkipReason::RuntimeMock),
        ] {
            let p = target_decision(id(), Ok(Some(row(false, status, runtime))), false);
            assert!(p.planned.is_empty());
            assert_eq!(reasons(&p), [reason]);
            // A rule's reason wins over --no-restart.
            let p = target_decision(id(), Ok(Some(row(false, status, runtime))), true);
            assert_eq!(reasons(&p), [reason]);
        }
        // A NULL status: the platform's eligibility never restarts it.
        let mut no_status = row(false, "online", "langgraph");
        no_status.status = None;
        let p = target_decision(id(), Ok(Some(no_status)), false);
        assert!(p.planned.is_empty());
        assert_eq!(reasons(&p), [SkipReason::NoStatus]);
        assert_eq!(SkipReason::NoStatus.as_str(), "no-status");
        // Runtimes are compared exactly, as the platform does; others are restarted.
        for runtime in ["hermes", "langgraph", "Kimi", "kimi-cli2", "claude-code"] {
            let p = target_decision(id(), Ok(Some(row(false, "online", runtime))), false);
            assert_eq!(p.planned.len(), 1, "{runtime}");
        }
        for (runtime, reason) in SKIPPED_RUNTIMES {
            assert_eq!(reason.as_str(), format!("runtime-{runtime}"));
            assert_eq!(SkipReason::from_sql(reason.as_str()), Some(reason));
        }
        let mut under = row(false, "online", "langgraph");
        under.paused_ancestor = true;
        let p = target_decision(id(), Ok(Some(under)), false);
        assert_eq!(reasons(&p), [SkipReason::PausedAncestor]);
        let p = target_decision(id(), Ok(Some(row(false, "online", ""))), true);
        assert_eq!(reasons(&p), [SkipReason::NoRestart]);
    }

    #[test]
    fn admin_restart_answers_are_classified() {
        let c = |status, body: &str| classify_answer(status, "X", body.as_bytes());
        assert_eq!(
            c(202, r#"{"status":"restart_dispatched"}"#),
            (DispatchOutcome::Restarted, None)
        );
        assert_eq!(
            c(200, r#"{"status":"noop"}"#),
            (DispatchOutcome::Noop, None)
        );
        // A noop is a noop whatever the 2xx code, and a reason beside it changes nothing.
        assert_eq!(
            c(202, r#"{"status":"noop","reason":"debounced"}"#).0,
            DispatchOutcome::Noop
        );
        // 202 is the dispatch answer even without the expected body.
        assert_eq!(c(202, "").0, DispatchOutcome::Restarted);
        // Any other 2xx is unknown: never reported as restarted.
        for (status, body) in [
            (200, r#"{"status":"restarting"}"#),
            (200, ""),
            (201, "created"),
            (204, ""),
            (200, "not json"),
        ] {
            let (o, e) = c(status, body);
            assert_eq!(o, DispatchOutcome::Failed, "{status} {body}");
            let e = e.unwrap_or_default();
            assert!(
                e.contains(&status.to_string()) && e.contains("unknown"),
                "{e}"
            );
        }
        assert!(DispatchOutcome::Noop.ok() && DispatchOutcome::Gone.ok());
        assert!(!DispatchOutcome::Failed.ok() && !DispatchOutcome::NotAttempted.ok());
        let d = Dispatched::new(id(), DispatchOutcome::Noop, None, Some(200));
        assert_eq!(
            serde_json::to_value(&d).ok(),
            Some(serde_json::json!({"id": id(), "ok": true, "outcome": "noop", "error": null}))
        );
    }

    #[test]
    fn platform_urls() {
        let tok = || Some(Zeroizing::new("tok-123".to_string()));
        let p = |u: &str, t| Platform::new(Some(u), t, true).map_err(|e| e.exit);
        match p("http://127.0.0.1:8080/api/", tok()) {
            Ok(Some(pl)) => {
                assert_eq!(
                    pl.admin_restart_url(id()),
                    "http://127.0.0.1:8080/api/admin/workspaces/a0000000-0000-4000-8000-000000000001/restart"
                );
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(Platform::new(None, None, true), Ok(None)));
        assert!(matches!(Platform::new(Some("  "), None, true), Ok(None)));
        assert_eq!(p("ftp://h", tok()).err(), Some(Exit::Usage));
        assert_eq!(p("not a url", tok()).err(), Some(Exit::Usage));
        assert_eq!(p("https://h/?x=1", tok()).err(), Some(Exit::Usage));
        assert_eq!(
            p("https://h", None).err(),
            Some(Exit::Usage),
            "URL without a token"
        );
        assert!(matches!(
            Platform::new(Some("https://h"), None, false),
            Ok(Some(_))
        ));
        let bad = Some(Zeroizing::new("a b".to_string()));
        assert_eq!(p("https://h", bad).err(), Some(Exit::Usage));
    }
}
