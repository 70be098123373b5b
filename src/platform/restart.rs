//! Restarts as the platform does them (SPEC §1, §6): which workspaces a secret change restarts
//! (the platform-root guard, and the rules of the platform's own automatic restart), and the
//! HTTP client for the platform's manual endpoint `POST /workspaces/{id}/restart`.
//!
//! The platform-root restart guard lives in [`target_decision`] (a workspace secret: restart the
//! target only when a successful lookup proves it is not `kind='platform'`) and in
//! [`FANOUT_SQL`] (a global secret: one set-based query for every workspace that inherits the
//! key). Restarting the platform agent mid-turn once cost an org 14 hours; nothing here can.

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
/// Connecting to the platform API, and one whole restart call.
pub const RESTART_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
pub const RESTART_CALL_TIMEOUT: Duration = Duration::from_secs(20);
/// Fan-outs at least this large get a progress bar (on a terminal).
const PROGRESS_MIN: usize = 10;

/// The platform API restarts go to, with the admin token. The token is registered for masking
/// the moment it is read and is never printed.
#[derive(Clone)]
pub struct Platform {
    base: String,
    token: Option<Zeroizing<String>>,
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
                "invalid platform URL: it must not carry a query or fragment (restarts go to {URL}/workspaces/{id}/restart)",
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
        }))
    }

    pub fn restart_url(&self, id: Uuid) -> String {
        format!("{}/workspaces/{id}/restart", self.base)
    }

    /// Whether the admin token is set (provisioning needs it; see `platform::provision`).
    pub fn has_token(&self) -> bool {
        self.token.is_some()
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
    /// The target is `removed` or `paused`, or runs outside the platform (`runtime='external'`):
    /// the same workspaces a global change never restarts.
    Removed,
    Paused,
    External,
}

impl SkipReason {
    pub fn as_str(self) -> &'static str {
        match self {
            SkipReason::PlatformRoot => "platform-root",
            SkipReason::KindUnknown => "kind-unknown",
            SkipReason::NoRestart => "no-restart",
            SkipReason::Removed => "removed",
            SkipReason::Paused => "paused",
            SkipReason::External => "external",
        }
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
    pub runtime: String,
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
        Some("removed") => return skip(name, SkipReason::Removed, None),
        Some("paused") => return skip(name, SkipReason::Paused, None),
        _ => {}
    }
    if row.runtime == "external" {
        return skip(name, SkipReason::External, None);
    }
    if no_restart {
        return skip(name, SkipReason::NoRestart, None);
    }
    RestartPlan {
        planned: vec![Target { id, name }],
        skipped: Vec::new(),
    }
}

const TARGET_SQL: &str = "SELECT name, COALESCE(kind, 'workspace') = 'platform', status::text,
                                 COALESCE(runtime, '')
                            FROM workspaces WHERE id = $1";

/// The global fan-out, one set-based query: every workspace that inherits key $1 — status not
/// in (removed, paused), not external, no workspace-level override — flagged when it is the
/// platform agent (reported as skipped, never restarted).
pub const FANOUT_SQL: &str = "SELECT w.id, w.name, COALESCE(w.kind, 'workspace') = 'platform'
                                FROM workspaces w
                               WHERE w.status NOT IN ('removed', 'paused')
                                 AND COALESCE(w.runtime, '') <> 'external'
                                 AND NOT EXISTS (SELECT 1 FROM workspace_secrets s
                                                  WHERE s.workspace_id = w.id AND s.key = $1)
                               ORDER BY w.id";

pub async fn lookup_target(
    conn: &mut PgConnection,
    id: Uuid,
) -> std::result::Result<Option<TargetRow>, String> {
    let row = crate::db::query(TARGET_SQL)
        .bind(id)
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
    let rows = crate::db::query(FANOUT_SQL)
        .bind(key)
        .fetch_all(&mut *conn)
        .await?;
    let mut plan = RestartPlan::default();
    for r in rows {
        let id: Uuid = r.try_get(0)?;
        let name: String = r.try_get(1)?;
        let is_platform: bool = r.try_get(2)?;
        if is_platform {
            plan.skipped.push(Skip {
                id,
                name: Some(name),
                reason: SkipReason::PlatformRoot,
                detail: None,
            });
        } else if no_restart {
            plan.skipped.push(Skip {
                id,
                name: Some(name),
                reason: SkipReason::NoRestart,
                detail: None,
            });
        } else {
            plan.planned.push(Target {
                id,
                name: Some(name),
            });
        }
    }
    Ok(plan)
}

// ---------------------------------------------------------------------------------------------
// Restart dispatch

/// The result of one restart call.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Dispatched {
    pub id: Uuid,
    pub ok: bool,
    pub error: Option<String>,
}

/// POST a restart for each id, at most [`RESTART_CONCURRENCY`] at once, each bounded by
/// [`RESTART_CALL_TIMEOUT`]; one result per id, in order. A Ctrl-C starts no new call, lets the
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
        .map(|id| (*id, platform.restart_url(*id)))
        .collect();
    let bearer = platform
        .token
        .as_ref()
        .map(|t| Zeroizing::new(format!("Bearer {}", t.as_str())));
    let pb2 = pb.clone();
    let stop2 = stop.clone();
    let job = tokio::task::spawn_blocking(move || {
        dispatch_blocking(&urls, bearer.as_ref().map(|b| b.as_str()), &pb2, &stop2)
    });
    let results = job.await;
    watcher.abort();
    pb.finish_and_clear();
    match results {
        Ok(r) => r,
        Err(e) => ids
            .iter()
            .map(|id| Dispatched {
                id: *id,
                ok: false,
                error: Some(format!("internal: the restart task failed: {e}")),
            })
            .collect(),
    }
}

fn dispatch_blocking(
    urls: &[(Uuid, String)],
    bearer: Option<&str>,
    pb: &indicatif::ProgressBar,
    stop: &AtomicBool,
) -> Vec<Dispatched> {
    let agent = ureq::AgentBuilder::new()
        .timeout_connect(RESTART_CONNECT_TIMEOUT)
        .timeout(RESTART_CALL_TIMEOUT)
        // A restart is not followed anywhere else: no bearer token travels to a redirect target.
        .redirects(0)
        .max_idle_connections_per_host(RESTART_CONCURRENCY)
        .user_agent(concat!("orgctl/", env!("CARGO_PKG_VERSION")))
        .build();
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
                        let result = if stop.load(Ordering::SeqCst) {
                            Dispatched {
                                id: *id,
                                ok: false,
                                error: Some("not attempted: interrupted".into()),
                            }
                        } else {
                            restart_one(&agent, *id, url, bearer)
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
                Err(_) => Dispatched {
                    id: *id,
                    ok: false,
                    error: Some("internal: the restart worker failed".into()),
                },
            },
        )
        .collect()
}

fn restart_one(agent: &ureq::Agent, id: Uuid, url: &str, bearer: Option<&str>) -> Dispatched {
    let mut req = agent.post(url);
    if let Some(b) = bearer {
        req = req.set("Authorization", b);
    }
    let fail = |msg: String| Dispatched {
        id,
        ok: false,
        error: Some(crate::redact::mask(&sanitize(&msg))),
    };
    match req.send_bytes(&[]) {
        Ok(resp) if (200..300).contains(&resp.status()) => Dispatched {
            id,
            ok: true,
            error: None,
        },
        Ok(resp) => fail(format!(
            "HTTP {} {} (a redirect is not followed)",
            resp.status(),
            resp.status_text()
        )),
        Err(ureq::Error::Status(code, resp)) => {
            let status_text = resp.status_text().to_string();
            let body = resp.into_string().unwrap_or_default();
            let body: String = body.trim().chars().take(200).collect();
            if body.is_empty() {
                fail(format!("HTTP {code} {status_text}"))
            } else {
                fail(format!("HTTP {code} {status_text}: {body}"))
            }
        }
        Err(ureq::Error::Transport(t)) => {
            // ureq prefixes the URL, which the result already names by id.
            let msg = t.to_string();
            let prefix = format!("{url}: ");
            fail(msg.strip_prefix(&prefix).unwrap_or(&msg).to_string())
        }
    }
}

/// The outcome of one `POST /workspaces/{id}/restart`: the HTTP status when the platform
/// answered, and an error (masked, one line) unless it answered 2xx.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PostOutcome {
    pub http_status: Option<u16>,
    pub error: Option<String>,
}

/// One restart call for `id` with the same client settings as [`dispatch`] (timeouts, no
/// redirects, the bearer), blocking: call it from `spawn_blocking`. Provisioning the platform
/// agent uses it (SPEC §9).
pub fn post_restart(platform: &Platform, id: Uuid) -> PostOutcome {
    let agent = ureq::AgentBuilder::new()
        .timeout_connect(RESTART_CONNECT_TIMEOUT)
        .timeout(RESTART_CALL_TIMEOUT)
        .redirects(0)
        .user_agent(concat!("orgctl/", env!("CARGO_PKG_VERSION")))
        .build();
    let url = platform.restart_url(id);
    let bearer = platform
        .token
        .as_ref()
        .map(|t| Zeroizing::new(format!("Bearer {}", t.as_str())));
    let mut req = agent.post(&url);
    if let Some(b) = &bearer {
        req = req.set("Authorization", b.as_str());
    }
    let (http_status, error) = match req.send_bytes(&[]) {
        Ok(resp) if (200..300).contains(&resp.status()) => (Some(resp.status()), None),
        Ok(resp) => (
            Some(resp.status()),
            Some(format!(
                "HTTP {} {} (a redirect is not followed)",
                resp.status(),
                resp.status_text()
            )),
        ),
        // The body is not read: a platform may echo the request, bearer included.
        Err(ureq::Error::Status(code, resp)) => (
            Some(code),
            Some(format!("HTTP {code} {}", resp.status_text())),
        ),
        Err(ureq::Error::Transport(t)) => {
            // ureq prefixes the URL, which the caller already names.
            let msg = t.to_string();
            let prefix = format!("{url}: ");
            (
                None,
                Some(msg.strip_prefix(&prefix).unwrap_or(&msg).to_string()),
            )
        }
    };
    PostOutcome {
        http_status,
        error: error.map(|e| crate::redact::mask(&sanitize(&e))),
    }
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
            ("online", "external", SkipReason::External),
        ] {
            let p = target_decision(id(), Ok(Some(row(false, status, runtime))), false);
            assert!(p.planned.is_empty());
            assert_eq!(reasons(&p), [reason]);
        }
        let p = target_decision(id(), Ok(Some(row(false, "online", ""))), true);
        assert_eq!(reasons(&p), [SkipReason::NoRestart]);
    }

    #[test]
    fn platform_urls() {
        let tok = || Some(Zeroizing::new("tok-123".to_string()));
        let p = |u: &str, t| Platform::new(Some(u), t, true).map_err(|e| e.exit);
        match p("http://127.0.0.1:8080/api/", tok()) {
            Ok(Some(pl)) => assert_eq!(
                pl.restart_url(id()),
                "http://127.0.0.1:8080/api/workspaces/a0000000-0000-4000-8000-000000000001/restart"
            ),
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
